//! A restore unit loaded into the embedded warehouse: the exact inverse of
//! its export. The table is made from its definition when absent (declared
//! types, `NOT NULL`, defaults, and the partitioning in
//! `_bqdrain_partitioning`), then the rows of the whole table, or of the
//! one partition by the id rule exports use, are replaced by the export's
//! rows, all in one transaction: a redelivery writes the same rows again,
//! never twice, and a failed load leaves the table as it was. The files are
//! read first, into a temporary table, so that the dataset's write lock is
//! held for one `INSERT … SELECT` only, not while files are parsed.
//!
//! Values go back with the storage class the export wrote them from: CSV
//! holds text only, so a field is read as a number where the column's
//! affinity (SQLite's rule on its declared type) made it one; JSON keeps
//! numbers and strings apart. An unquoted empty CSV field is NULL, a quoted
//! one the empty string.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::csv_records::CsvRecords;
use super::partitions;
use super::warehouse::{quote_ident, sqlite_error};
use crate::contract::options::{Compression, Format};
use crate::error::UnitError;
use crate::ports::definition::{Column, TableDefinition};
use crate::ports::warehouse::{Cancel, LoadRequest, LoadResult, Partitioning};

/// Rows loaded between two looks at `cancel`.
const CANCEL_EVERY: u64 = 4096;

/// Loads `request` into the dataset `conn` is open on, reading its files
/// under the store folder `root`.
pub fn load(
    conn: &mut Connection,
    root: &Path,
    request: &LoadRequest,
    cancel: &Cancel,
) -> Result<LoadResult, UnitError> {
    let sql = |context: &'static str| move |e| sqlite_error(context, e);
    conn.busy_handler(Some(wait_briefly))
        .map_err(sql("setting the lock wait"))?;
    // In WAL mode, NORMAL syncs the log at checkpoints rather than at each
    // commit: a commit survives a crash of any process, as the store's
    // records beside it do (they are renamed into place, not synced).
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql("setting synchronous"))?;
    let definition = &request.definition;
    let table = &request.table;
    let rows = match definition.view_query {
        Some(_) => None,
        None => Some(stage(conn, root, request, cancel)?),
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("starting the load"))?;
    if let Some(query) = &definition.view_query {
        make_view(&tx, table, query, request.replace_table)?;
        tx.commit().map_err(sql("committing the view"))?;
        return Ok(LoadResult { rows: None });
    }
    let mut exists = kind_of(&tx, table)?.is_some();
    if exists && request.replace_table && definition.partition.is_none() {
        drop_table(&tx, table)?;
        exists = false;
    }
    if !exists {
        create_table(&tx, table, definition)?;
    }
    clear_rows(&tx, table, definition.partition.as_deref())?;
    let columns = column_list(definition);
    tx.execute_batch(&format!(
        "INSERT INTO {} ({columns}) SELECT {columns} FROM temp.{STAGING}; DROP TABLE temp.{STAGING};",
        quote_ident(table)
    ))
    .map_err(sql("inserting the rows"))?;
    tx.commit().map_err(sql("committing the load"))?;
    Ok(LoadResult { rows })
}

/// The temporary table a load reads its rows into.
const STAGING: &str = "_bqdrain_load";

/// Waits for the dataset's write lock in short sleeps: loads hold it for
/// one `INSERT … SELECT` each, and SQLite's own busy timeout sleeps up to
/// 100 ms at a time, far longer than such a hold. Gives up after about 30 s.
fn wait_briefly(tries: i32) -> bool {
    std::thread::sleep(Duration::from_millis(if tries < 100 { 1 } else { 5 }));
    tries < 6_000
}

/// The definition's columns, quoted, joined by commas.
fn column_list(definition: &TableDefinition) -> String {
    definition
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the export's rows into a temporary table of this connection and
/// counts them. Temporary tables are the connection's own, so no lock on
/// the dataset is held while files are read and parsed, and other units
/// load meanwhile. Its columns have no type: values keep the storage class
/// they are read with until the table's columns take them.
fn stage(
    conn: &mut Connection,
    root: &Path,
    request: &LoadRequest,
    cancel: &Cancel,
) -> Result<u64, UnitError> {
    let sql = |context: &'static str| move |e| sqlite_error(context, e);
    let definition = &request.definition;
    let columns = column_list(definition);
    let tx = conn
        .transaction()
        .map_err(sql("starting to read the rows"))?;
    tx.execute_batch(&format!(
        "DROP TABLE IF EXISTS temp.{STAGING}; CREATE TEMP TABLE {STAGING} ({columns});"
    ))
    .map_err(sql("making the staging table"))?;
    let mut insert = tx
        .prepare(&format!(
            "INSERT INTO temp.{STAGING} VALUES ({})",
            vec!["?"; definition.columns.len()].join(", ")
        ))
        .map_err(sql("preparing the insert"))?;
    let names: Vec<&str> = definition.columns.iter().map(|c| c.name.as_str()).collect();
    let affinities: Vec<Affinity> = definition
        .columns
        .iter()
        .map(|c| Affinity::of(&c.data_type))
        .collect();
    let mut rows = 0u64;
    for key in &request.files {
        let path = root.join(key);
        let mut write = |values: Vec<Value>| -> Result<(), UnitError> {
            insert
                .execute(rusqlite::params_from_iter(values))
                .map_err(sql("reading a row"))?;
            rows += 1;
            if rows.is_multiple_of(CANCEL_EVERY) && cancel.load(Ordering::Relaxed) {
                return Err(UnitError::transient(
                    "cancelled",
                    "load cancelled by shutdown",
                ));
            }
            Ok(())
        };
        read_file(&path, request, &names, &affinities, &mut write)?;
    }
    drop(insert);
    tx.commit().map_err(sql("staging the rows"))?;
    Ok(rows)
}

/// Makes, in one transaction, those of these tables (by name, from their
/// definitions) that the dataset at `path` lacks, before a restore's loads
/// begin: a table made while other loads wait for the write lock makes each
/// of them read the whole schema again while it holds the lock, which at a
/// thousand tables takes longer than loading a small table. A definition
/// the local warehouse cannot make (its partitioning) is left to its load,
/// which dead-letters the unit saying why. Returns how many were made.
pub fn create_absent_tables(
    path: &Path,
    definitions: &[(String, TableDefinition)],
) -> anyhow::Result<usize> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut made = 0;
    for (table, definition) in definitions {
        if definition.view_query.is_some() || kind_of(&tx, table)?.is_some() {
            continue;
        }
        let attempt = tx.savepoint()?;
        if create_table(&attempt, table, definition).is_ok() {
            attempt.commit()?;
            made += 1;
        }
    }
    tx.commit()?;
    Ok(made)
}

/// `table`'s kind in `sqlite_master` (`table`, `view`), if it is there.
fn kind_of(conn: &Connection, table: &str) -> Result<Option<String>, UnitError> {
    conn.query_row(
        "SELECT type FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?1",
        [table],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| sqlite_error("reading the schema", e))
}

/// Makes the view again from its query; a table in its place is dropped
/// only when the restore may replace tables.
fn make_view(conn: &Connection, view: &str, query: &str, replace: bool) -> Result<(), UnitError> {
    match kind_of(conn, view)?.as_deref() {
        Some("table") if !replace => {
            return Err(UnitError::permanent(
                "duplicate",
                format!(
                    "a table {view} stands where the view {view} is restored; restore with \
                     --if-exists replace to drop it"
                ),
            ))
        }
        Some("table") => drop_table(conn, view)?,
        _ => {}
    }
    conn.execute_batch(&format!(
        "DROP VIEW IF EXISTS {0}; CREATE VIEW {0} AS {query}",
        quote_ident(view)
    ))
    .map_err(|e| sqlite_error(&format!("making the view {view} again"), e))
}

/// Drops a table and its partitioning declaration, which its definition
/// declares again.
fn drop_table(conn: &Connection, table: &str) -> Result<(), UnitError> {
    conn.execute_batch(&format!("DROP TABLE {}", quote_ident(table)))
        .map_err(|e| sqlite_error("dropping the table", e))?;
    if kind_of(conn, partitions::PARTITIONING_TABLE)?.is_some() {
        conn.execute(
            &format!(
                "DELETE FROM {} WHERE table_name = ?1",
                partitions::PARTITIONING_TABLE
            ),
            [table],
        )
        .map_err(|e| sqlite_error("dropping the table's partitioning", e))?;
    }
    Ok(())
}

/// Makes the table from its definition: the inverse of what
/// [`super::definition::read`] reads.
fn create_table(
    conn: &Connection,
    table: &str,
    definition: &TableDefinition,
) -> Result<(), UnitError> {
    let columns: Vec<String> = definition.columns.iter().map(column_sql).collect();
    conn.execute_batch(&format!(
        "CREATE TABLE {} ({})",
        quote_ident(table),
        columns.join(", ")
    ))
    .map_err(|e| sqlite_error(&format!("making the table {table}"), e))?;
    if let Some(range) = &definition.range_partitioning {
        return Err(UnitError::permanent(
            "invalid",
            format!(
                "table {table} is partitioned by integer ranges of {}, which the local warehouse \
                 cannot declare (it partitions by a date or time column)",
                range.field
            ),
        ));
    }
    let Some(time) = &definition.time_partitioning else {
        return Ok(());
    };
    let unit: Option<Partitioning> = serde_json::from_value(time.unit.clone().into()).ok();
    let (Some(field), Some(unit)) = (&time.field, unit) else {
        return Err(UnitError::permanent(
            "invalid",
            format!(
                "table {table} is partitioned by {} {:?}, which the local warehouse cannot \
                 declare (it partitions by a date or time column by HOUR, DAY, MONTH or YEAR)",
                time.unit,
                time.field.as_deref().unwrap_or("ingestion time")
            ),
        ));
    };
    partitions::declare(conn, table, field, unit).map_err(|e| {
        UnitError::permanent(
            "invalid",
            format!("declaring {table}'s partitioning: {e:#}"),
        )
    })
}

/// A column's SQL in `CREATE TABLE`: its declared type, `NOT NULL` for a
/// `REQUIRED` one, and its default value's expression.
fn column_sql(column: &Column) -> String {
    let mut sql = quote_ident(&column.name);
    if !column.data_type.is_empty() {
        sql.push(' ');
        sql.push_str(&column.data_type);
    }
    if column.mode == "REQUIRED" {
        sql.push_str(" NOT NULL");
    }
    if let Some(default) = &column.default_value {
        sql.push_str(&format!(" DEFAULT {default}"));
    }
    sql
}

/// Deletes the rows the load replaces: the whole table's, or those of one
/// partition by the partition-id rule exports select them with.
fn clear_rows(conn: &Connection, table: &str, partition: Option<&str>) -> Result<(), UnitError> {
    let quoted = quote_ident(table);
    let Some(partition) = partition else {
        return conn
            .execute(&format!("DELETE FROM {quoted}"), [])
            .map(drop)
            .map_err(|e| sqlite_error("deleting the table's rows", e));
    };
    let declared = if kind_of(conn, partitions::PARTITIONING_TABLE)?.is_some() {
        partitions::declared_of(conn, table).map_err(|e| sqlite_error("reading partitioning", e))?
    } else {
        None
    };
    let Some(partitioning) = declared else {
        return Err(UnitError::permanent(
            "invalid",
            format!(
                "table {table} is not partitioned here, so its partition {partition} cannot be \
                 replaced alone; restore the whole table, or into a new dataset"
            ),
        ));
    };
    conn.execute(
        &format!(
            "DELETE FROM {quoted} WHERE {} = ?1",
            partitioning.id_sql("")
        ),
        [partition],
    )
    .map(drop)
    .map_err(|e| sqlite_error("deleting the partition's rows", e))
}

/// SQLite's type affinity of a declared type (its documented rules), which
/// tells what storage class a column's values had before they became text.
#[derive(Clone, Copy, PartialEq)]
enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    fn of(declared: &str) -> Affinity {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if ["CHAR", "CLOB", "TEXT"].iter().any(|k| t.contains(k)) {
            Affinity::Text
        } else if t.is_empty() || t.contains("BLOB") {
            Affinity::Blob
        } else if ["REAL", "FLOA", "DOUB"].iter().any(|k| t.contains(k)) {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }

    /// A CSV field's value: a number where the export wrote one (a text
    /// column's values are always text; a column without a type keeps
    /// numbers as numbers), and the words BigQuery writes for infinities
    /// in a numeric column.
    fn csv_value(self, text: String) -> Value {
        if self == Affinity::Text {
            return Value::Text(text);
        }
        if let Ok(i) = text.parse::<i64>() {
            return Value::Integer(i);
        }
        let numeric = self != Affinity::Blob;
        match text.as_str() {
            "Infinity" if numeric => return Value::Real(f64::INFINITY),
            "-Infinity" if numeric => return Value::Real(f64::NEG_INFINITY),
            _ => {}
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() && text.bytes().all(|b| !b.is_ascii_alphabetic()) => {
                Value::Real(f)
            }
            _ => Value::Text(text),
        }
    }

    /// A JSON value: numbers and strings as written; the infinities'
    /// words in a numeric column as the floats they spell.
    fn json_value(self, value: Option<&serde_json::Value>) -> Value {
        match value {
            None | Some(serde_json::Value::Null) => Value::Null,
            Some(serde_json::Value::Number(n)) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Some(serde_json::Value::String(s)) => {
                let numeric = !matches!(self, Affinity::Text | Affinity::Blob);
                match s.as_str() {
                    "Infinity" if numeric => Value::Real(f64::INFINITY),
                    "-Infinity" if numeric => Value::Real(f64::NEG_INFINITY),
                    _ => Value::Text(s.clone()),
                }
            }
            Some(serde_json::Value::Bool(b)) => Value::Integer(i64::from(*b)),
            Some(other) => Value::Text(other.to_string()),
        }
    }
}

/// Reads one export file and hands each row's values, in `columns`' order,
/// to `write`.
fn read_file(
    path: &Path,
    request: &LoadRequest,
    columns: &[&str],
    affinities: &[Affinity],
    write: &mut dyn FnMut(Vec<Value>) -> Result<(), UnitError>,
) -> Result<(), UnitError> {
    let io = |what: &str, e| UnitError::io(&format!("{what} {}", path.display()), e);
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            UnitError::permanent(
                "notFound",
                format!(
                    "{} is gone: the export its manifest names is incomplete",
                    path.display()
                ),
            )
        } else {
            io("opening", e)
        }
    })?;
    let options = &request.options;
    let reader: Box<dyn Read> = match options.compression {
        Compression::Gzip => Box::new(MultiGzDecoder::new(file)),
        Compression::None => Box::new(file),
        other => {
            return Err(UnitError::permanent(
                "invalid",
                format!("the local warehouse reads no {} files", other.name()),
            ))
        }
    };
    let reader = BufReader::with_capacity(256 * 1024, reader);
    let bad_row = |row: u64, problem: String| {
        UnitError::permanent(
            "invalid",
            format!("row {row} of {}: {problem}", path.display()),
        )
    };
    match options.format {
        Format::Csv => {
            let mut records = CsvRecords::new(reader, options.field_delimiter.as_bytes());
            let mut row = 0u64;
            while let Some(fields) = records.next_record().map_err(|e| io("reading", e))? {
                row += 1;
                if row == 1 && options.header {
                    continue;
                }
                if fields.len() != columns.len() {
                    return Err(bad_row(
                        row,
                        format!(
                            "{} fields where the table has {} columns",
                            fields.len(),
                            columns.len()
                        ),
                    ));
                }
                let values = fields
                    .into_iter()
                    .zip(affinities)
                    .map(|(field, affinity)| match field {
                        None => Value::Null,
                        Some(text) => affinity.csv_value(text),
                    })
                    .collect();
                write(values)?;
            }
        }
        Format::Json => {
            for (index, line) in reader.lines().enumerate() {
                let line = line.map_err(|e| io("reading", e))?;
                if line.is_empty() {
                    continue;
                }
                let row = index as u64 + 1;
                let object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&line)
                        .map_err(|e| bad_row(row, format!("not a JSON object: {e}")))?;
                let values = columns
                    .iter()
                    .zip(affinities)
                    .map(|(name, affinity)| affinity.json_value(object.get(*name)))
                    .collect();
                write(values)?;
            }
        }
        other => {
            return Err(UnitError::permanent(
                "invalid",
                format!(
                    "the local warehouse loads csv and json files, not {}",
                    other.name()
                ),
            ))
        }
    }
    Ok(())
}
