//! Partitions and change markers of the embedded warehouse.
//!
//! A table is partitioned by a date or time column once it is declared in
//! `_bqdrain_partitioning` ([`partition_by`]); a row's partition id follows
//! from that column as BigQuery derives it (`20261201` for a day, `__NULL__`
//! for a null, `__UNPARTITIONED__` for a value that is not a date).
//!
//! Change markers are counters in `_bqdrain_changes`, one per table and one
//! per partition, which triggers raise on every insert, update and delete.
//! [`track`] installs the triggers; a table that had none (never tracked, or
//! dropped and made again) has its counters raised when they are installed,
//! since nobody counted what happened to it before. Schema changes
//! (`ALTER TABLE`) fire no trigger: the markers carry a fingerprint of the
//! columns for them (see the warehouse's `change_markers`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::warehouse::quote_ident;
use crate::ports::warehouse::Partitioning;

pub const PARTITIONING_TABLE: &str = "_bqdrain_partitioning";
pub const CHANGES_TABLE: &str = "_bqdrain_changes";
/// The counter of a whole table has this partition id.
const WHOLE_TABLE: &str = "";

/// How one table is partitioned.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionColumn {
    pub column: String,
    pub unit: Partitioning,
}

impl PartitionColumn {
    /// SQL for the partition id of a row, from a column reference such as
    /// `"day"` or `NEW."day"`.
    pub fn id_sql(&self, row: &str) -> String {
        let column = format!("{row}{}", quote_ident(&self.column));
        let format = match self.unit {
            Partitioning::Hour => "%Y%m%d%H",
            Partitioning::Day => "%Y%m%d",
            Partitioning::Month => "%Y%m",
            Partitioning::Year => "%Y",
            Partitioning::IntegerRange => unreachable!("refused by partition_by"),
        };
        format!(
            "(CASE WHEN {column} IS NULL THEN '__NULL__' \
             WHEN julianday({column}) IS NULL THEN '__UNPARTITIONED__' \
             ELSE strftime('{format}', {column}) END)"
        )
    }
}

/// Declares `table` partitioned by the date or time in `column`, and
/// indexes its rows by partition id, so that exporting one partition reads
/// that partition, not the whole table.
pub fn partition_by(
    path: &Path,
    table: &str,
    column: &str,
    unit: Partitioning,
) -> anyhow::Result<()> {
    declare(&Connection::open(path)?, table, column, unit)
}

/// [`partition_by`] on an open connection (a restore declares the table it
/// makes in the transaction that makes it).
pub fn declare(
    conn: &Connection,
    table: &str,
    column: &str,
    unit: Partitioning,
) -> anyhow::Result<()> {
    if unit == Partitioning::IntegerRange {
        anyhow::bail!("the embedded warehouse partitions by a date or time column only");
    }
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {PARTITIONING_TABLE} (
            table_name TEXT PRIMARY KEY,
            column_name TEXT NOT NULL,
            unit TEXT NOT NULL
        )"
    ))?;
    let id = PartitionColumn {
        column: column.to_string(),
        unit,
    }
    .id_sql("");
    let index = quote_ident(&format!("_bqdrain_partition_{table}"));
    conn.execute_batch(&format!(
        "DROP INDEX IF EXISTS {index}; CREATE INDEX {index} ON {} ({id});",
        quote_ident(table)
    ))?;
    let unit = serde_json::to_value(unit)?;
    conn.execute(
        &format!("INSERT OR REPLACE INTO {PARTITIONING_TABLE} VALUES (?1, ?2, ?3)"),
        params![table, column, unit.as_str()],
    )?;
    Ok(())
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )
}

/// Every declared partitioning, by table.
pub fn declared(conn: &Connection) -> rusqlite::Result<HashMap<String, PartitionColumn>> {
    if !has_table(conn, PARTITIONING_TABLE)? {
        return Ok(HashMap::new());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT table_name, column_name, unit FROM {PARTITIONING_TABLE}"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut declared = HashMap::new();
    for row in rows {
        let (table, column, unit) = row?;
        declared.insert(table, partition_column(column, unit)?);
    }
    Ok(declared)
}

/// How `table` is partitioned, if it is; `_bqdrain_partitioning` must
/// exist. One row read, where [`declared`] reads them all.
pub fn declared_of(conn: &Connection, table: &str) -> rusqlite::Result<Option<PartitionColumn>> {
    conn.prepare_cached(&format!(
        "SELECT column_name, unit FROM {PARTITIONING_TABLE} WHERE table_name = ?1"
    ))?
    .query_row([table], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()?
    .map(|(column, unit)| partition_column(column, unit))
    .transpose()
}

fn partition_column(column: String, unit: String) -> rusqlite::Result<PartitionColumn> {
    let unit = serde_json::from_value(unit.clone().into())
        .map_err(|_| rusqlite::Error::InvalidColumnType(2, unit, rusqlite::types::Type::Text))?;
    Ok(PartitionColumn { column, unit })
}

/// The change counters: by table, then by partition id (the whole table's
/// under `""`).
pub fn counters(conn: &Connection) -> rusqlite::Result<HashMap<String, HashMap<String, u64>>> {
    if !has_table(conn, CHANGES_TABLE)? {
        return Ok(HashMap::new());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT table_name, partition_id, version FROM {CHANGES_TABLE}"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, u64>(2)?,
        ))
    })?;
    let mut counters: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for row in rows {
        let (table, partition, version) = row?;
        counters
            .entry(table)
            .or_default()
            .insert(partition, version);
    }
    Ok(counters)
}

/// The counter of a whole table in `counters`.
pub fn table_counter(counters: &HashMap<String, HashMap<String, u64>>, table: &str) -> Option<u64> {
    counters.get(table)?.get(WHOLE_TABLE).copied()
}

/// Installs (or, where the partitioning changed, replaces) the triggers of
/// every table in `tables`, raising the counters of each table that had none.
pub fn track(conn: &mut Connection, tables: &[String]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {CHANGES_TABLE} (
            table_name TEXT NOT NULL,
            partition_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            PRIMARY KEY (table_name, partition_id)
        )"
    ))?;
    let declared = declared(&tx)?;
    let installed = installed_triggers(&tx)?;
    for table in tables {
        let partitioning = declared.get(table);
        let mut replaced = false;
        for (name, sql) in triggers(table, partitioning) {
            if installed.get(&name) != Some(&sql) {
                tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {};", quote_ident(&name)))?;
                tx.execute_batch(&sql)?;
                replaced = true;
            }
        }
        if replaced {
            tx.execute(
                &format!("INSERT OR IGNORE INTO {CHANGES_TABLE} VALUES (?1, '{WHOLE_TABLE}', 0)"),
                [table],
            )?;
            tx.execute(
                &format!("UPDATE {CHANGES_TABLE} SET version = version + 1 WHERE table_name = ?1"),
                [table],
            )?;
            if let Some(p) = partitioning {
                let id = p.id_sql("");
                tx.execute(
                    &format!(
                        "INSERT OR IGNORE INTO {CHANGES_TABLE}
                         SELECT DISTINCT ?1, {id}, 1 FROM {}",
                        quote_ident(table)
                    ),
                    [table],
                )?;
            }
        }
    }
    tx.commit()
}

/// Every trigger, by name, with its SQL. Read once: one lookup per trigger
/// scans sqlite_master, which has a row per table and per trigger (4,000 at
/// 1,000 tables).
fn installed_triggers(conn: &Connection) -> rusqlite::Result<HashMap<String, String>> {
    conn.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// The name and SQL of the three triggers that count `table`'s changes.
fn triggers(table: &str, partitioning: Option<&PartitionColumn>) -> [(String, String); 3] {
    [
        ("INSERT", &["NEW."][..]),
        ("UPDATE", &["OLD.", "NEW."][..]),
        ("DELETE", &["OLD."][..]),
    ]
    .map(|(event, rows)| {
        let name = format!("_bqdrain_track_{table}_{}", event.to_ascii_lowercase());
        let sql = trigger_sql(&name, event, table, partitioning, rows);
        (name, sql)
    })
}

/// A trigger that raises the whole table's counter and that of the
/// partition of each row it sees (`NEW.`, `OLD.` or both).
fn trigger_sql(
    name: &str,
    event: &str,
    table: &str,
    partitioning: Option<&PartitionColumn>,
    rows: &[&str],
) -> String {
    let literal = format!("'{}'", table.replace('\'', "''"));
    let mut ids = vec![format!("'{WHOLE_TABLE}'")];
    if let Some(p) = partitioning {
        ids.extend(rows.iter().map(|row| p.id_sql(row)));
    }
    let mut body = String::new();
    for id in ids {
        body.push_str(&format!(
            " INSERT OR IGNORE INTO {CHANGES_TABLE} VALUES ({literal}, {id}, 0);\
             \n UPDATE {CHANGES_TABLE} SET version = version + 1 \
             WHERE table_name = {literal} AND partition_id = {id};\n"
        ));
    }
    format!(
        "CREATE TRIGGER {} AFTER {event} ON {} BEGIN\n{body}END",
        quote_ident(name),
        quote_ident(table)
    )
}

/// Those of `tables` whose counters can be trusted now: their triggers are
/// installed as [`track`] installs them for the current partitioning. A
/// table made again since (its triggers went with it), or partitioned
/// otherwise, is not: its counters missed changes. Reads only.
pub fn tracked(conn: &Connection, tables: &[String]) -> rusqlite::Result<HashSet<String>> {
    let declared = declared(conn)?;
    let installed = installed_triggers(conn)?;
    Ok(tables
        .iter()
        .filter(|table| {
            triggers(table, declared.get(*table))
                .iter()
                .all(|(name, sql)| installed.get(name) == Some(sql))
        })
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters_of(conn: &Connection, table: &str) -> HashMap<String, u64> {
        counters(conn).unwrap().remove(table).unwrap_or_default()
    }

    #[test]
    fn triggers_count_the_changes_of_each_partition_and_tracking_again_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE ev (id INT, day DATE);
             INSERT INTO ev VALUES (1, '2026-12-01'), (2, '2026-12-02'), (3, NULL), (4, 'soon');",
        )
        .unwrap();
        partition_by(&path, "ev", "day", Partitioning::Day).unwrap();
        track(&mut conn, &["ev".to_string()]).unwrap();
        let id = declared(&conn).unwrap()["ev"].id_sql("");
        let plan: String = conn
            .query_row(
                &format!("EXPLAIN QUERY PLAN SELECT * FROM ev WHERE {id} = '20261201'"),
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(
            plan.contains("USING INDEX"),
            "a partition is read through its index: {plan}"
        );
        let first = counters_of(&conn, "ev");
        let ids: Vec<&str> = {
            let mut ids: Vec<&str> = first.keys().map(String::as_str).collect();
            ids.sort();
            ids
        };
        assert_eq!(
            ids,
            ["", "20261201", "20261202", "__NULL__", "__UNPARTITIONED__"]
        );

        track(&mut conn, &["ev".to_string()]).unwrap();
        assert_eq!(
            counters_of(&conn, "ev"),
            first,
            "tracking twice raises nothing"
        );

        conn.execute_batch("UPDATE ev SET id = 20 WHERE id = 2; DELETE FROM ev WHERE id = 3;")
            .unwrap();
        let after = counters_of(&conn, "ev");
        assert!(after[""] > first[""]);
        assert!(after["20261202"] > first["20261202"]);
        assert!(after["__NULL__"] > first["__NULL__"]);
        assert_eq!(after["20261201"], first["20261201"]);
        assert_eq!(after["__UNPARTITIONED__"], first["__UNPARTITIONED__"]);

        // Made again: its triggers went with it, so nobody counted the new
        // rows; tracking it again counts it as changed.
        conn.execute_batch(
            "DROP TABLE ev; CREATE TABLE ev (id INT, day DATE);
             INSERT INTO ev VALUES (1, '2026-12-01');",
        )
        .unwrap();
        let ev = ["ev".to_string()];
        assert!(
            tracked(&conn, &ev).unwrap().is_empty(),
            "its counters are not trusted until tracked again"
        );
        track(&mut conn, &ev).unwrap();
        assert!(tracked(&conn, &ev).unwrap().contains("ev"));
        let again = counters_of(&conn, "ev");
        assert!(again["20261201"] > after["20261201"]);
        assert!(again[""] > after[""]);
    }
}
