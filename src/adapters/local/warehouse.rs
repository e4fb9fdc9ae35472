//! A SQLite database as a dataset: `sqlite://PATH?shard_bytes=N`.
//!
//! Its tables are the dataset's tables, its views are views and its virtual
//! tables count as external. Exports write CSV or newline-delimited JSON,
//! optionally gzip-compressed, into shards of at most `shard_bytes`
//! uncompressed bytes named like BigQuery's wildcard output. A control table
//! (see [`super::dataset`]) can make chosen tables fail or stall, which is
//! how the demo and the tests show retries and dead-lettering.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flate2::write::GzEncoder;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::dataset::{Fault, FAULTS_TABLE};
use super::partitions::{self, PARTITIONING_TABLE};
use super::store::{place, staging_file, FsStore};
use super::{absolute, sqlite_file, LocalUri};
use super::{definition, jobs, load};
use crate::contract::change::ChangeMarker;
use crate::contract::message::SourceTable;
use crate::contract::options::{Compression, ExportOptions, Format};
use crate::error::{ConfigError, UnitError};
use crate::ports::definition::TableDefinition;
use crate::ports::warehouse::{
    Cancel, ExportRequest, ExportResult, LoadRequest, LoadResult, PartitionInfo, TableInfo,
    TableKind, Warehouse,
};

/// BigQuery's own limit on one exported file.
const DEFAULT_SHARD_BYTES: u64 = 1 << 30;

pub struct LocalWarehouse {
    uri: String,
    path: PathBuf,
    dataset: String,
    shard_bytes: u64,
    connections: Arc<Pool>,
}

impl LocalWarehouse {
    pub fn is_local(uri: &str) -> bool {
        uri.starts_with("sqlite://")
    }

    /// The dataset file a `sqlite://` URI names; it must exist.
    pub fn path_of(uri: &str, flag: &str) -> Result<PathBuf, ConfigError> {
        Ok(Self::open(uri, flag)?.path)
    }

    pub fn open(uri: &str, flag: &str) -> Result<LocalWarehouse, ConfigError> {
        let fix = "write it as sqlite://PATH, e.g. sqlite://demo/warehouse.db";
        let parsed = LocalUri::parse(uri, "sqlite").ok_or_else(|| {
            ConfigError::new(flag, format!("{uri:?} is not a sqlite:// URI"), fix)
        })?;
        let mut shard_bytes = DEFAULT_SHARD_BYTES;
        for (key, value) in &parsed.query {
            match (key.as_str(), value.parse::<u64>()) {
                ("shard_bytes", Ok(n)) if n > 0 => shard_bytes = n,
                _ => {
                    return Err(ConfigError::new(
                        flag,
                        format!("{key}={value:?} in {uri:?} is not a known setting"),
                        "the one setting is shard_bytes=N (N > 0)",
                    ))
                }
            }
        }
        let path = absolute(&parsed.path);
        if !path.is_file() {
            return Err(ConfigError::new(
                flag,
                format!("no dataset file at {}", path.display()),
                "check the path, or run `bqdrain demo` to make one",
            ));
        }
        sqlite_file::tables(&path, flag)?;
        let dataset = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let query = if shard_bytes == DEFAULT_SHARD_BYTES {
            String::new()
        } else {
            format!("?shard_bytes={shard_bytes}")
        };
        Ok(LocalWarehouse {
            uri: format!("sqlite://{}{}", path.display(), query),
            connections: Arc::new(Pool {
                path: path.clone(),
                idle: Mutex::new(Idle::default()),
            }),
            path,
            dataset,
            shard_bytes,
        })
    }

    /// Runs `f` on a connection of the pool, on a blocking thread.
    async fn with_connection<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let pool = Arc::clone(&self.connections);
        tokio::task::spawn_blocking(move || pool.with(|kept| f(&mut kept.conn))?).await?
    }
}

/// Whether reading change markers may install the triggers that keep them.
#[derive(Clone, Copy)]
enum Markers {
    /// Install them (`--only-changed` planning): counting starts now.
    Install,
    /// Only read (`verify`): tables without their triggers have no marker.
    ReadOnly,
}

impl LocalWarehouse {
    /// The markers of these tables, by name.
    async fn table_markers(
        &self,
        tables: &[TableInfo],
        mode: Markers,
    ) -> anyhow::Result<HashMap<String, ChangeMarker>> {
        let tables: Vec<(String, Option<u64>)> = tables
            .iter()
            .filter(|t| t.kind == TableKind::Table)
            .map(|t| (t.name.clone(), t.rows))
            .collect();
        self.with_connection(move |conn| {
            let names: Vec<String> = tables.iter().map(|(name, _)| name.clone()).collect();
            let tracked = match mode {
                Markers::Install => {
                    partitions::track(conn, &names)?;
                    None
                }
                Markers::ReadOnly => Some(partitions::tracked(conn, &names)?),
            };
            let counters = partitions::counters(conn)?;
            let mut markers = HashMap::with_capacity(tables.len());
            for (name, rows) in tables {
                if tracked.as_ref().is_some_and(|t| !t.contains(&name)) {
                    continue;
                }
                let Some(version) = partitions::table_counter(&counters, &name) else {
                    continue;
                };
                markers.insert(name.clone(), table_marker(conn, &name, version, rows)?);
            }
            Ok(markers)
        })
        .await
    }
}

/// Connections to the dataset file, kept open between operations. Opening
/// one reads and parses the whole schema, which grows with the table count
/// (40 ms at 10,000 tables, more than exporting a small table), so a worker
/// that opened one per export spent most of each unit doing that.
///
/// Keeping them is safe while other processes change the file: each
/// statement checks SQLite's schema cookie and reloads a schema that
/// changed (a table dropped and made again, a fault set), and sees the
/// rows committed before it began. A file replaced at its path (deleted and
/// made again) is a new database, which no kept connection would see: they
/// are dropped when the path names another file than when they were opened.
struct Pool {
    path: PathBuf,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// The file (device, inode) the connections are open on.
    file: Option<(u64, u64)>,
    connections: Vec<Kept>,
}

/// A connection, and what it last read of the schema.
struct Kept {
    conn: Connection,
    names: Option<Names>,
}

/// What each table and view is (`table` or `view`), as of a schema version.
struct Names {
    version: i64,
    kinds: HashMap<String, String>,
}

impl Kept {
    /// What `name` is (`table`, virtual ones too, or `view`), if anything.
    /// SQLite looks a name up only by scanning `sqlite_master`, a row per
    /// table and trigger: so it is read once per schema version, which
    /// changes with every table made, dropped or altered, by any process.
    fn kind_of(&mut self, name: &str) -> rusqlite::Result<Option<&str>> {
        let tx = self.conn.unchecked_transaction()?;
        let version: i64 = tx.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        if self.names.as_ref().is_none_or(|n| n.version != version) {
            let kinds = tx
                .prepare("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view')")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            self.names = Some(Names { version, kinds });
        }
        tx.finish()?;
        Ok(self
            .names
            .as_ref()
            .and_then(|n| n.kinds.get(name))
            .map(String::as_str))
    }
}

impl Pool {
    /// `f`'s result, or the error of opening a connection for it.
    fn with<T, E>(
        &self,
        f: impl FnOnce(&mut Kept) -> Result<T, E>,
    ) -> rusqlite::Result<Result<T, E>> {
        use std::os::unix::fs::MetadataExt;
        // No file: nothing kept, and opening says why.
        let file = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let kept = {
            let mut idle = self.idle();
            if idle.file != file {
                idle.connections.clear();
                idle.file = file;
            }
            idle.connections.pop()
        };
        let mut kept = match kept {
            Some(kept) => kept,
            None => Kept {
                conn: connect(&self.path)?,
                names: None,
            },
        };
        let result = f(&mut kept);
        // A connection left inside a transaction (an error mid-way) is not
        // kept; neither is one opened on a file since replaced.
        let mut idle = self.idle();
        if kept.conn.is_autocommit() && file.is_some() && idle.file == file {
            idle.connections.push(kept);
        }
        Ok(result)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().expect("connection pool lock poisoned")
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}

pub(super) fn sqlite_error(context: &str, e: rusqlite::Error) -> UnitError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            UnitError::transient("backendError", format!("{context}: {e}"))
        }
        _ => UnitError::permanent("invalid", format!("{context}: {e}")),
    }
}

#[async_trait]
impl Warehouse for LocalWarehouse {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn project(&self) -> &str {
        "local"
    }

    fn dataset(&self) -> &str {
        &self.dataset
    }

    fn check_export(
        &self,
        options: &ExportOptions,
        destination_root: &str,
    ) -> Result<(), ConfigError> {
        if !matches!(options.format, Format::Csv | Format::Json) {
            return Err(ConfigError::new(
                "--format",
                format!("the local warehouse cannot write {}", options.format.name()),
                "use csv or json locally; avro and parquet need BigQuery",
            ));
        }
        if !matches!(options.compression, Compression::None | Compression::Gzip) {
            return Err(ConfigError::new(
                "--compression",
                format!(
                    "the local warehouse cannot write {} compression",
                    options.compression.name()
                ),
                "use none or gzip",
            ));
        }
        if !FsStore::is_local(destination_root) {
            return Err(ConfigError::new(
                "--destination",
                format!(
                    "the local warehouse exports only to file:// folders, not {destination_root:?}"
                ),
                "give --destination file://PATH",
            ));
        }
        Ok(())
    }

    async fn change_markers(
        &self,
        tables: &[TableInfo],
    ) -> anyhow::Result<HashMap<String, ChangeMarker>> {
        self.table_markers(tables, Markers::Install).await
    }

    async fn tracked_markers(
        &self,
        tables: &[TableInfo],
    ) -> anyhow::Result<HashMap<String, ChangeMarker>> {
        self.table_markers(tables, Markers::ReadOnly).await
    }

    async fn list_tables(&self) -> anyhow::Result<Vec<TableInfo>> {
        self.with_connection(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT name, type, sql FROM sqlite_master
                 WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
                   AND name NOT LIKE '\\_bqdrain\\_%' ESCAPE '\\'
                 ORDER BY name",
            )?;
            let listed = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut tables = Vec::with_capacity(listed.len());
            for (name, kind, sql) in listed {
                let virtual_table = sql
                    .unwrap_or_default()
                    .to_ascii_uppercase()
                    .starts_with("CREATE VIRTUAL");
                let kind = match kind.as_str() {
                    "view" => TableKind::View,
                    _ if virtual_table => TableKind::External,
                    _ => TableKind::Table,
                };
                let rows = if kind == TableKind::Table {
                    Some(conn.query_row(
                        &format!("SELECT count(*) FROM {}", quote_ident(&name)),
                        [],
                        |r| r.get::<_, u64>(0),
                    )?)
                } else {
                    None
                };
                tables.push(TableInfo {
                    name,
                    kind,
                    bytes: None,
                    rows,
                });
            }
            Ok(tables)
        })
        .await
    }

    async fn list_partitions(&self, tables: &[TableInfo]) -> anyhow::Result<Vec<PartitionInfo>> {
        let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
        self.with_connection(move |conn| {
            let declared = partitions::declared(conn)?;
            let counters = partitions::counters(conn)?;
            let mut listed = Vec::new();
            for table in names {
                let Some(partitioning) = declared.get(&table) else {
                    continue;
                };
                let mut stmt = conn.prepare(&format!(
                    "SELECT {} AS bqdrain_partition_id, count(*) FROM {} \
                     GROUP BY bqdrain_partition_id ORDER BY bqdrain_partition_id",
                    partitioning.id_sql(""),
                    quote_ident(&table)
                ))?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let schema = schema_fingerprint(conn, &table)?;
                for (id, rows) in rows {
                    let version = counters.get(&table).and_then(|c| c.get(&id)).copied();
                    listed.push(PartitionInfo {
                        table: table.clone(),
                        unit: partitioning.unit,
                        change: version.map(|version| ChangeMarker {
                            version: Some(version),
                            rows: Some(rows),
                            modified: None,
                            bytes: None,
                            streaming: false,
                            schema: Some(schema.clone()),
                        }),
                        id,
                        rows: Some(rows),
                        bytes: None,
                    });
                }
            }
            Ok(listed)
        })
        .await
    }

    /// Free here; estimated the way the BigQuery emulator does, 8 bytes a
    /// column a row, so the byte guard can be tried out locally.
    async fn view_bytes(&self, view: &str) -> anyhow::Result<u64> {
        let select = format!("SELECT * FROM {}", quote_ident(view));
        self.with_connection(move |conn| {
            let columns = conn.prepare(&select)?.column_count() as u64;
            let rows: u64 =
                conn.query_row(&format!("SELECT count(*) FROM ({select})"), [], |r| {
                    r.get(0)
                })?;
            Ok(rows * columns * 8)
        })
        .await
    }

    async fn export(
        &self,
        request: &ExportRequest,
        cancel: Cancel,
    ) -> Result<ExportResult, UnitError> {
        let root = FsStore::root_of(&request.destination_root, "destination")
            .map_err(|e| UnitError::permanent("invalid", e.to_string()))?;
        let pool = Arc::clone(&self.connections);
        let shard_bytes = self.shard_bytes;
        let request = request.clone();
        tokio::task::spawn_blocking(move || {
            let (job, finished) = jobs::start(&root, &request.job_key, &cancel)?;
            if let Some(result) = finished {
                return Ok(result);
            }
            let result = pool
                .with(|kept| export_blocking(kept, &root, shard_bytes, &request, &cancel))
                .map_err(|e| sqlite_error("opening dataset", e))??;
            job.finish(&request.job_key, &result)?;
            Ok(result)
        })
        .await
        .map_err(|e| UnitError::transient("backendError", format!("export task failed: {e}")))?
    }

    async fn definition(&self, source: &SourceTable) -> Result<TableDefinition, UnitError> {
        let pool = Arc::clone(&self.connections);
        let wanted = source.clone();
        let read = tokio::task::spawn_blocking(move || {
            pool.with(|kept| definition::read(&kept.conn, &wanted))
        })
        .await
        .map_err(|e| {
            UnitError::transient("backendError", format!("definition task failed: {e}"))
        })?;
        let found = read
            .map_err(|e| sqlite_error("opening dataset", e))?
            .map_err(|e| sqlite_error("reading the table's definition", e))?;
        found.ok_or_else(|| {
            UnitError::permanent(
                "notFound",
                format!("Not found: Table local:{}.{}", source.dataset, source.table),
            )
        })
    }

    async fn load(&self, request: &LoadRequest, cancel: Cancel) -> Result<LoadResult, UnitError> {
        if !FsStore::is_local(&request.source_root) {
            return Err(UnitError::permanent(
                "invalid",
                format!(
                    "the local warehouse loads exports from file:// folders only, not {}",
                    request.source_root
                ),
            ));
        }
        let root = FsStore::root_of(&request.source_root, "source_root")
            .map_err(|e| UnitError::permanent("invalid", e.to_string()))?;
        let pool = Arc::clone(&self.connections);
        let request = request.clone();
        tokio::task::spawn_blocking(move || {
            pool.with(|kept| load::load(&mut kept.conn, &root, &request, &cancel))
                .map_err(|e| sqlite_error("opening dataset", e))?
        })
        .await
        .map_err(|e| UnitError::transient("backendError", format!("load task failed: {e}")))?
    }

    /// SQLite's declared types: none is nested or repeated, so no format
    /// the local warehouse writes (CSV, JSON) is refused for its types. A
    /// view whose tables are gone has no columns to read: it is left out,
    /// and its export fails in the worker as before.
    async fn column_types(&self) -> anyhow::Result<HashMap<String, Vec<(String, String)>>> {
        self.with_connection(move |conn| {
            let names = conn
                .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut types = HashMap::new();
            for name in names {
                let columns = conn
                    .prepare_cached("SELECT name, type FROM pragma_table_xinfo(?1) ORDER BY cid")?
                    .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<(String, String)>>>();
                if let Ok(columns) = columns {
                    types.insert(name, columns);
                }
            }
            Ok(types)
        })
        .await
    }
}

/// A whole table's marker: its counter and its rows.
/// A whole table's marker: its change counter, rows and columns.
fn table_marker(
    conn: &Connection,
    table: &str,
    version: u64,
    rows: Option<u64>,
) -> rusqlite::Result<ChangeMarker> {
    Ok(ChangeMarker {
        version: Some(version),
        rows,
        modified: None,
        bytes: None,
        streaming: false,
        schema: Some(schema_fingerprint(conn, table)?),
    })
}

pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The fingerprint of a table's columns (names and declared types, in
/// order) for its change markers: `ALTER TABLE` fires no trigger, so a
/// column dropped or renamed shows nowhere else.
fn schema_fingerprint(conn: &Connection, table: &str) -> rusqlite::Result<String> {
    let columns = conn
        .prepare_cached("SELECT name, type FROM pragma_table_xinfo(?1) ORDER BY cid")?
        .query_map([table], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ChangeMarker::schema_of(columns.iter().map(
        |(name, declared)| (name.as_str(), declared.as_str()),
    )))
}

fn export_blocking(
    kept: &mut Kept,
    root: &Path,
    shard_bytes: u64,
    request: &ExportRequest,
    cancel: &Cancel,
) -> Result<ExportResult, UnitError> {
    let table = &request.source.table;
    let mut kind = |name: &str| {
        kept.kind_of(name)
            .map(|k| k.map(str::to_string))
            .map_err(|e| sqlite_error("reading the schema", e))
    };
    let faults = kind(FAULTS_TABLE)?.is_some();
    let found = kind(table)?;
    let partitioned = request.source.partition.is_some() && kind(PARTITIONING_TABLE)?.is_some();
    let conn = &kept.conn;
    let stall = if faults {
        Fault::take(conn, table).map_err(|e| sqlite_error("reading faults", e))??
    } else {
        None
    };
    let want = if request.source.view { "view" } else { "table" };
    if found.as_deref() != Some(want) || table.starts_with(FAULTS_TABLE) {
        return Err(UnitError::permanent(
            "notFound",
            format!(
                "Not found: Table local:{}.{}",
                request.source.dataset, table
            ),
        ));
    }
    let mut select = format!("SELECT * FROM {}", quote_ident(table));
    let mut filter = Vec::new();
    if let Some(partition) = &request.source.partition {
        let declared = if partitioned {
            partitions::declared_of(conn, table)
                .map_err(|e| sqlite_error("reading partitioning", e))?
        } else {
            None
        };
        let Some(partitioning) = declared else {
            return Err(UnitError::permanent(
                "invalid",
                format!("table {table} is not partitioned, so it has no partition {partition}"),
            ));
        };
        select.push_str(&format!(" WHERE {} = ?1", partitioning.id_sql("")));
        filter.push(partition.clone());
    }
    let mut stmt = conn
        .prepare(&select)
        .map_err(|e| sqlite_error("reading table", e))?;
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let mut shards = ShardWriter::new(root, request, shard_bytes, stall, cancel, &columns)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(&filter))
        .map_err(|e| sqlite_error("reading table", e))?;
    let mut line = Vec::with_capacity(256);
    let mut count = 0u64;
    while let Some(row) = rows.next().map_err(|e| sqlite_error("reading table", e))? {
        line.clear();
        match request.options.format {
            Format::Json => render_json(row, &columns, &mut line)?,
            _ => render_csv(
                row,
                &columns,
                request.options.field_delimiter.as_bytes(),
                &mut line,
            )?,
        }
        shards.write_row(&line)?;
        count += 1;
        if count.is_multiple_of(4096) && cancel.load(Ordering::Relaxed) {
            return Err(UnitError::transient(
                "cancelled",
                "export cancelled by shutdown",
            ));
        }
    }
    // SQLite keeps no history: the export is of the state it read.
    Ok(ExportResult {
        files: shards.finish()?,
        rows: Some(count),
        as_of: None,
    })
}

fn blob_error(column: &str) -> UnitError {
    UnitError::permanent(
        "invalid",
        format!("column {column} holds BLOB values, which the local warehouse does not export"),
    )
}

/// How BigQuery spells a float that is not a number a file can hold: its
/// JSON encoding of FLOAT64 is the string "Infinity", "-Infinity" or "NaN"
/// (<https://cloud.google.com/bigquery/docs/reference/standard-sql/json_functions#json_encodings>),
/// and its CSV exports write the same words. SQLite stores no NaN (it reads
/// back as NULL), so only the infinities reach an export here.
fn non_finite(v: f64) -> Option<&'static str> {
    match v {
        f64::INFINITY => Some("Infinity"),
        f64::NEG_INFINITY => Some("-Infinity"),
        v if v.is_nan() => Some("NaN"),
        _ => None,
    }
}

fn render_csv(
    row: &rusqlite::Row,
    columns: &[String],
    delimiter: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), UnitError> {
    for (i, name) in columns.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(delimiter);
        }
        match row.get_ref(i).map_err(|e| sqlite_error("reading row", e))? {
            ValueRef::Null => {}
            ValueRef::Integer(v) => out.extend_from_slice(v.to_string().as_bytes()),
            ValueRef::Real(v) => match non_finite(v) {
                Some(word) => out.extend_from_slice(word.as_bytes()),
                None => out.extend_from_slice(v.to_string().as_bytes()),
            },
            ValueRef::Text(t) => {
                // An empty string is quoted: unquoted, it would read as NULL.
                let needs_quotes = t.is_empty()
                    || t.iter().any(|&b| b == b'"' || b == b'\n' || b == b'\r')
                    || t.windows(delimiter.len()).any(|w| w == delimiter);
                if needs_quotes {
                    out.push(b'"');
                    for &b in t {
                        if b == b'"' {
                            out.push(b'"');
                        }
                        out.push(b);
                    }
                    out.push(b'"');
                } else {
                    out.extend_from_slice(t);
                }
            }
            ValueRef::Blob(_) => return Err(blob_error(name)),
        }
    }
    out.push(b'\n');
    Ok(())
}

fn render_json(
    row: &rusqlite::Row,
    columns: &[String],
    out: &mut Vec<u8>,
) -> Result<(), UnitError> {
    let mut object = serde_json::Map::with_capacity(columns.len());
    for (i, name) in columns.iter().enumerate() {
        let value = match row.get_ref(i).map_err(|e| sqlite_error("reading row", e))? {
            ValueRef::Null => serde_json::Value::Null,
            ValueRef::Integer(v) => v.into(),
            ValueRef::Real(v) => match non_finite(v) {
                Some(word) => word.into(),
                None => v.into(),
            },
            ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
            ValueRef::Blob(_) => return Err(blob_error(name)),
        };
        object.insert(name.clone(), value);
    }
    serde_json::to_writer(&mut *out, &object).expect("writing JSON to memory cannot fail");
    out.push(b'\n');
    Ok(())
}

/// Writes rows into numbered shards, each renamed into place when complete.
struct ShardWriter<'a> {
    root: &'a Path,
    request: &'a ExportRequest,
    shard_bytes: u64,
    stall: Option<Duration>,
    cancel: &'a Cancel,
    header: Option<Vec<u8>>,
    open: Option<OpenShard>,
    written: Vec<String>,
}

struct OpenShard {
    key: String,
    tmp: PathBuf,
    sink: Sink,
    bytes: u64,
    rows: u64,
}

enum Sink {
    Plain(BufWriter<File>),
    Gzip(Box<GzEncoder<BufWriter<File>>>),
}

impl Sink {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.write_all(data),
            Sink::Gzip(w) => w.write_all(data),
        }
    }

    /// Writes the gzip trailer and flushes, reporting what `Drop` would
    /// hide; returns the file, whose lock must be held until it is placed.
    fn finish(self) -> std::io::Result<File> {
        let file = match self {
            Sink::Plain(w) => w,
            Sink::Gzip(w) => (*w).finish()?,
        };
        file.into_inner().map_err(|e| e.into_error())
    }
}

fn io_error(context: &str, path: &Path, e: std::io::Error) -> UnitError {
    UnitError::io(&format!("{context} {}", path.display()), e)
}

impl<'a> ShardWriter<'a> {
    fn new(
        root: &'a Path,
        request: &'a ExportRequest,
        shard_bytes: u64,
        stall: Option<Duration>,
        cancel: &'a Cancel,
        columns: &[String],
    ) -> Result<Self, UnitError> {
        let o = &request.options;
        let header = (o.format == Format::Csv && o.header).then(|| {
            let mut h = columns.join(&o.field_delimiter).into_bytes();
            h.push(b'\n');
            h
        });
        let mut writer = ShardWriter {
            root,
            request,
            shard_bytes,
            stall,
            cancel,
            header,
            open: None,
            written: Vec::new(),
        };
        writer.start_shard()?;
        Ok(writer)
    }

    fn start_shard(&mut self) -> Result<(), UnitError> {
        if let Some(stall) = self.stall {
            let until = std::time::Instant::now() + stall;
            while std::time::Instant::now() < until {
                if self.cancel.load(Ordering::Relaxed) {
                    return Err(UnitError::transient(
                        "cancelled",
                        "export cancelled by shutdown",
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let key = self.request.shard_key(self.written.len() as u64);
        let path = self.root.join(&key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
        }
        let staged = staging_file(self.root).map_err(|e| io_error("staging", self.root, e))?;
        let tmp = staged.path;
        let file = BufWriter::with_capacity(256 * 1024, staged.file);
        let mut sink = match self.request.options.compression {
            Compression::Gzip => Sink::Gzip(Box::new(GzEncoder::new(
                file,
                flate2::Compression::default(),
            ))),
            _ => Sink::Plain(file),
        };
        let mut bytes = 0;
        if let Some(h) = &self.header {
            sink.write_all(h)
                .map_err(|e| io_error("writing", &tmp, e))?;
            bytes = h.len() as u64;
        }
        self.open = Some(OpenShard {
            key,
            tmp,
            sink,
            bytes,
            rows: 0,
        });
        Ok(())
    }

    fn write_row(&mut self, line: &[u8]) -> Result<(), UnitError> {
        let full = self
            .open
            .as_ref()
            .is_some_and(|s| s.rows > 0 && s.bytes + line.len() as u64 > self.shard_bytes);
        if full {
            self.close_shard()?;
            self.start_shard()?;
        }
        let shard = self
            .open
            .as_mut()
            .expect("a shard is always open while writing");
        shard
            .sink
            .write_all(line)
            .map_err(|e| io_error("writing", &shard.tmp, e))?;
        shard.bytes += line.len() as u64;
        shard.rows += 1;
        Ok(())
    }

    fn close_shard(&mut self) -> Result<(), UnitError> {
        if let Some(shard) = self.open.take() {
            let locked = shard
                .sink
                .finish()
                .map_err(|e| io_error("finishing", &shard.tmp, e))?;
            let path = self.root.join(&shard.key);
            place(&shard.tmp, &path, |from, to| std::fs::rename(from, to))
                .map_err(|e| io_error("renaming", &path, e))?;
            drop(locked);
            self.written.push(shard.key);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<String>, UnitError> {
        self.close_shard()?;
        Ok(std::mem::take(&mut self.written))
    }
}

impl Drop for ShardWriter<'_> {
    fn drop(&mut self) {
        if let Some(shard) = self.open.take() {
            drop(shard.sink);
            let _ = std::fs::remove_file(&shard.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::local::dataset;
    use crate::contract::message::SourceTable;
    use std::io::Read;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn request(out: &Path, table: &str, options: ExportOptions) -> ExportRequest {
        ExportRequest {
            // A job of its own per export: one key is one job, taken again.
            job_key: format!("j_{table}_{:x}", fastrand::u64(..)),
            source: SourceTable {
                dataset_uri: String::new(),
                project: "local".into(),
                dataset: "wh".into(),
                table: table.into(),
                partition: None,
                view: false,
            },
            destination_root: format!("file://{}", out.display()),
            folder: format!("{table}/run=r/"),
            options,
            snapshot_at: None,
        }
    }

    async fn export(
        wh: &LocalWarehouse,
        out: &Path,
        table: &str,
        options: ExportOptions,
    ) -> Result<(ExportResult, Vec<String>), UnitError> {
        let result = wh
            .export(
                &request(out, table, options),
                Arc::new(AtomicBool::new(false)),
            )
            .await?;
        let texts = result
            .files
            .iter()
            .map(|f| {
                let bytes = std::fs::read(out.join(f)).unwrap();
                let mut s = String::new();
                if f.ends_with(".gz") {
                    flate2::read::GzDecoder::new(&bytes[..])
                        .read_to_string(&mut s)
                        .unwrap();
                } else {
                    s = String::from_utf8(bytes).unwrap();
                }
                s
            })
            .collect();
        Ok((result, texts))
    }

    fn setup() -> (tempfile::TempDir, LocalWarehouse) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("wh.db");
        dataset::create_dummy_tables(&db, &["big".into()], 100).unwrap();
        dataset::execute(
            &db,
            "CREATE TABLE odd (a INTEGER, b TEXT, c REAL);
             INSERT INTO odd VALUES (1, 'x|y', 1.5), (NULL, 'say \"hi\"', NULL), (3, 'two
lines', -2.0);
             CREATE TABLE empty (a INTEGER);
             CREATE VIEW v AS SELECT * FROM big;",
        )
        .unwrap();
        let wh = LocalWarehouse::open(&format!("sqlite://{}?shard_bytes=500", db.display()), "s")
            .unwrap();
        (dir, wh)
    }

    #[tokio::test]
    async fn lists_tables_with_kind_and_rows() {
        let (_dir, wh) = setup();
        let tables = wh.list_tables().await.unwrap();
        let summary: Vec<_> = tables
            .iter()
            .map(|t| (t.name.as_str(), t.kind, t.rows))
            .collect();
        assert_eq!(
            summary,
            [
                ("big", TableKind::Table, Some(100)),
                ("empty", TableKind::Table, Some(0)),
                ("odd", TableKind::Table, Some(3)),
                ("v", TableKind::View, None)
            ]
        );
    }

    #[tokio::test]
    async fn tracked_markers_read_only_what_change_markers_started() {
        let (dir, wh) = setup();
        let tables = wh.list_tables().await.unwrap();
        assert!(wh.tracked_markers(&tables).await.unwrap().is_empty());
        let conn = Connection::open(dir.path().join("wh.db")).unwrap();
        let objects = |kind: &str| -> u64 {
            conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = ?1",
                [kind],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(
            (objects("trigger"), objects("table")),
            (0, 3),
            "reading markers installs nothing"
        );
        let started = wh.change_markers(&tables).await.unwrap();
        assert_eq!(started.len(), 3);
        assert_eq!(wh.tracked_markers(&tables).await.unwrap(), started);
    }

    #[tokio::test]
    async fn shards_csv_with_a_header_in_each_and_bigquery_names() {
        let (dir, wh) = setup();
        let out = dir.path().join("out");
        let (result, texts) = export(&wh, &out, "big", ExportOptions::default())
            .await
            .unwrap();
        assert_eq!(result.rows, Some(100));
        assert!(result.files.len() > 2, "500-byte shards");
        assert_eq!(result.files[0], "big/run=r/big_000000000000.csv");
        assert_eq!(result.files[1], "big/run=r/big_000000000001.csv");
        let mut rows = 0;
        for (file, text) in result.files.iter().zip(&texts) {
            assert!(std::fs::metadata(out.join(file)).unwrap().len() <= 500);
            assert!(text.starts_with("id,name,age\n"));
            rows += text.lines().count() - 1;
        }
        assert_eq!(rows, 100);
        let leftovers = std::fs::read_dir(out.join("big/run=r")).unwrap().count();
        assert_eq!(leftovers, result.files.len(), "no temporary files left");
    }

    #[tokio::test]
    async fn quotes_csv_and_types_json_and_compresses() {
        let (dir, wh) = setup();
        let out = dir.path().join("out");
        let piped = ExportOptions {
            field_delimiter: "|".into(),
            header: false,
            ..Default::default()
        };
        let (_, texts) = export(&wh, &out, "odd", piped).await.unwrap();
        assert_eq!(
            texts.concat(),
            "1|\"x|y\"|1.5\n|\"say \"\"hi\"\"\"|\n3|\"two\nlines\"|-2\n"
        );

        let json = ExportOptions {
            format: Format::Json,
            compression: Compression::Gzip,
            ..Default::default()
        };
        let (result, texts) = export(&wh, &out, "odd", json).await.unwrap();
        assert!(result.files[0].ends_with("odd_000000000000.json.gz"));
        let rows: Vec<serde_json::Value> = texts
            .concat()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows[0], serde_json::json!({"a": 1, "b": "x|y", "c": 1.5}));
        assert_eq!(
            rows[1],
            serde_json::json!({"a": null, "b": "say \"hi\"", "c": null})
        );
    }

    #[tokio::test]
    async fn an_empty_table_gives_one_file_and_a_missing_one_not_found() {
        let (dir, wh) = setup();
        let out = dir.path().join("out");
        let (result, texts) = export(&wh, &out, "empty", ExportOptions::default())
            .await
            .unwrap();
        assert_eq!(
            (result.files.len(), texts[0].as_str(), result.rows),
            (1, "a\n", Some(0))
        );
        let err = export(&wh, &out, "gone", ExportOptions::default())
            .await
            .unwrap_err();
        assert_eq!(
            (err.reason.as_str(), err.is_transient()),
            ("notFound", false)
        );
    }

    #[tokio::test]
    async fn kept_connections_see_what_other_connections_change() {
        let (dir, wh) = setup();
        let out = dir.path().join("out");
        let db = dir.path().join("wh.db");
        let (first, _) = export(&wh, &out, "odd", ExportOptions::default())
            .await
            .unwrap();
        assert_eq!(first.rows, Some(3));
        // Made again with other columns, as another process would.
        dataset::execute(
            &db,
            "DROP TABLE odd; CREATE TABLE odd (z TEXT); INSERT INTO odd VALUES ('new');",
        )
        .unwrap();
        let (_, texts) = export(&wh, &out, "odd", ExportOptions::default())
            .await
            .unwrap();
        assert_eq!(texts.concat(), "z\nnew\n");
        // The file replaced by another: a new database at the same path.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        dataset::create_dummy_tables(&db, &["odd".into()], 1).unwrap();
        let (_, texts) = export(&wh, &out, "odd", ExportOptions::default())
            .await
            .unwrap();
        assert_eq!(texts.concat(), "id,name,age\n1,user_1,19\n");
    }

    #[tokio::test]
    async fn injected_faults_fail_as_asked() {
        let (dir, wh) = setup();
        let out = dir.path().join("out");
        let db = dir.path().join("wh.db");
        dataset::set_fault(&db, "big", Fault::Transient { times: Some(1) }).unwrap();
        assert!(export(&wh, &out, "big", ExportOptions::default())
            .await
            .unwrap_err()
            .is_transient());
        export(&wh, &out, "big", ExportOptions::default())
            .await
            .expect("the fault was used up");
        dataset::set_fault(&db, "big", Fault::Permanent).unwrap();
        assert_eq!(
            export(&wh, &out, "big", ExportOptions::default())
                .await
                .unwrap_err()
                .reason,
            "invalid"
        );
        dataset::clear_fault(&db, "big").unwrap();
        export(&wh, &out, "big", ExportOptions::default())
            .await
            .unwrap();
    }

    /// Item 12 of issue 18: infinity was written as `null` in JSON and
    /// `inf` in CSV, silently.
    #[tokio::test]
    async fn infinity_is_spelled_as_bigquery_spells_it() {
        let (dir, wh) = setup();
        dataset::execute(
            &dir.path().join("wh.db"),
            "CREATE TABLE far (x REAL); INSERT INTO far VALUES (9e999), (-9e999), (0.5);",
        )
        .unwrap();
        let out = dir.path().join("out");
        let (_, csv) = export(&wh, &out, "far", ExportOptions::default())
            .await
            .unwrap();
        assert_eq!(csv.concat(), "x\nInfinity\n-Infinity\n0.5\n");
        let json = ExportOptions {
            format: Format::Json,
            ..Default::default()
        };
        let (_, json) = export(&wh, &out, "far", json).await.unwrap();
        assert_eq!(
            json.concat(),
            "{\"x\":\"Infinity\"}\n{\"x\":\"-Infinity\"}\n{\"x\":0.5}\n"
        );
    }

    /// A BLOB's error named the column by its number in CSV.
    #[tokio::test]
    async fn a_blob_column_is_named_in_its_error() {
        let (dir, wh) = setup();
        dataset::execute(
            &dir.path().join("wh.db"),
            "CREATE TABLE pics (id INT, photo BLOB); INSERT INTO pics VALUES (1, x'00ff');",
        )
        .unwrap();
        let out = dir.path().join("out");
        for format in [Format::Csv, Format::Json] {
            let options = ExportOptions {
                format,
                ..Default::default()
            };
            let err = export(&wh, &out, "pics", options).await.unwrap_err();
            assert!(err.message.contains("column photo"), "{err}");
        }
    }
}
