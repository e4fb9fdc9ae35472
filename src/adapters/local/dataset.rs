//! Making local datasets: dummy tables for the demo and benchmarks, and
//! faults injected per table for showing retries and dead-lettering.
//!
//! Faults live in the dataset itself, in the table `_bqdrain_faults`, so
//! every worker process sees them and a fix (clearing the fault) is seen by
//! the next attempt, as fixing a real table would be.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::UnitError;

pub const FAULTS_TABLE: &str = "_bqdrain_faults";

/// What an export of a faulty table does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails with a transient error the next `times` exports (forever if `None`).
    Transient { times: Option<u32> },
    /// Fails with a permanent `invalid` error on every export.
    Permanent,
    /// Sleeps this long before each shard: an export that is slow to finish.
    Slow { per_shard: Duration },
}

fn ensure_faults_table(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {FAULTS_TABLE} (
            table_name TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('transient', 'permanent', 'slow')),
            remaining INTEGER,
            delay_ms INTEGER
        )"
    ))
}

fn open(path: &Path) -> anyhow::Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Ok(conn)
}

/// Creates (or replaces) tables `id INT64, name STRING, age INT64` with
/// `rows` rows each.
pub fn create_dummy_tables(path: &Path, names: &[String], rows: u64) -> anyhow::Result<()> {
    let mut conn = open(path)?;
    let tx = conn.transaction()?;
    for name in names {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        tx.execute_batch(&format!(
            "DROP TABLE IF EXISTS {quoted}; CREATE TABLE {quoted} (id INT64, name STRING, age INT64);"
        ))?;
        let mut insert = tx.prepare(&format!(
            "INSERT INTO {quoted} (id, name, age) VALUES (?1, ?2, ?3)"
        ))?;
        for id in 1..=rows {
            insert.execute(params![
                id as i64,
                format!("user_{id}"),
                (18 + id % 70) as i64
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Creates (or replaces) a table `id INT64, day DATE, amount INT64` with
/// `rows_per_day` rows on each of the `days` days up to `last_day`.
pub fn create_daily_table(
    path: &Path,
    name: &str,
    last_day: chrono::NaiveDate,
    days: u32,
    rows_per_day: u64,
) -> anyhow::Result<()> {
    let mut conn = open(path)?;
    let tx = conn.transaction()?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    tx.execute_batch(&format!(
        "DROP TABLE IF EXISTS {quoted}; CREATE TABLE {quoted} (id INT64, day DATE, amount INT64);"
    ))?;
    let mut insert = tx.prepare(&format!(
        "INSERT INTO {quoted} (id, day, amount) VALUES (?1, ?2, ?3)"
    ))?;
    let mut id = 0i64;
    for back in (0..days).rev() {
        let day = last_day - chrono::Days::new(u64::from(back));
        for n in 0..rows_per_day {
            id += 1;
            insert.execute(params![id, day.to_string(), (n % 100) as i64])?;
        }
    }
    drop(insert);
    tx.commit()?;
    Ok(())
}

/// Runs SQL against the dataset: views, dropped tables, odd schemas.
pub fn execute(path: &Path, sql: &str) -> anyhow::Result<()> {
    open(path)?.execute_batch(sql)?;
    Ok(())
}

/// The dataset's tables and views, as `fault --table` may name them.
pub fn table_names(path: &Path) -> anyhow::Result<Vec<String>> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')
           AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_bqdrain\\_%' ESCAPE '\\'
         ORDER BY name",
    )?;
    let names = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(names)
}

pub fn set_fault(path: &Path, table: &str, fault: Fault) -> anyhow::Result<()> {
    let conn = open(path)?;
    ensure_faults_table(&conn)?;
    let (kind, remaining, delay_ms) = match fault {
        Fault::Transient { times } => ("transient", times.map(i64::from), None),
        Fault::Permanent => ("permanent", None, None),
        Fault::Slow { per_shard } => ("slow", None, Some(per_shard.as_millis() as i64)),
    };
    conn.execute(
        &format!("INSERT OR REPLACE INTO {FAULTS_TABLE} (table_name, kind, remaining, delay_ms) VALUES (?1, ?2, ?3, ?4)"),
        params![table, kind, remaining, delay_ms],
    )?;
    Ok(())
}

pub fn clear_fault(path: &Path, table: &str) -> anyhow::Result<()> {
    let conn = open(path)?;
    ensure_faults_table(&conn)?;
    conn.execute(
        &format!("DELETE FROM {FAULTS_TABLE} WHERE table_name = ?1"),
        [table],
    )?;
    Ok(())
}

impl Fault {
    /// Applies the table's fault to one export: an error to fail with, or a
    /// stall to wait before each shard. The faults table must exist; only a
    /// fault that counts down its failures writes to the dataset.
    pub(crate) fn take(
        conn: &Connection,
        table: &str,
    ) -> rusqlite::Result<Result<Option<Duration>, UnitError>> {
        let row: Option<(String, Option<i64>, Option<i64>)> = conn
            .query_row(
                &format!(
                    "SELECT kind, remaining, delay_ms FROM {FAULTS_TABLE} WHERE table_name = ?1"
                ),
                [table],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(match row {
            None => Ok(None),
            Some((kind, _, delay)) if kind == "slow" => {
                Ok(Some(Duration::from_millis(delay.unwrap_or(0) as u64)))
            }
            Some((kind, _, _)) if kind == "permanent" => Err(UnitError::permanent(
                "invalid",
                format!(
                    "table {table} is marked unexportable (injected fault); clear it and replay"
                ),
            )),
            Some((_, Some(0), _)) => Ok(None),
            Some((_, remaining, _)) => {
                if remaining.is_some() {
                    conn.execute(
                        &format!("UPDATE {FAULTS_TABLE} SET remaining = remaining - 1 WHERE table_name = ?1"),
                        [table],
                    )?;
                }
                Err(UnitError::transient(
                    "backendError",
                    format!("table {table} failed transiently (injected fault)"),
                ))
            }
        })
    }
}
