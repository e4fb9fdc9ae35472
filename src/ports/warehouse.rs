//! The warehouse port: list a dataset's tables and their partitions, say
//! what changed, export one table or partition.
//!
//! The producer plans a run from [`Warehouse::list_tables`] (and the
//! partitions and change markers); a worker calls [`Warehouse::export`] once
//! per message, which writes the unit's shards into a folder of the
//! destination and says which files and how many rows. An export must be
//! safe to repeat: a redelivered message exports again under the same
//! [`ExportRequest::job_key`]. The embedded adapter, a SQLite file as a
//! dataset ([`LocalWarehouse`](crate::adapters::local::warehouse::LocalWarehouse),
//! `sqlite://PATH`), shows the contract:
//!
//! ```
//! use std::sync::Arc;
//!
//! use bqdrain::adapters::local::dataset::create_dummy_tables;
//! use bqdrain::adapters::local::warehouse::LocalWarehouse;
//! use bqdrain::contract::message::SourceTable;
//! use bqdrain::contract::options::ExportOptions;
//! use bqdrain::ports::warehouse::{ExportRequest, TableKind, Warehouse};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let file = dir.path().join("sales.db");
//! create_dummy_tables(&file, &["orders".into(), "users".into()], 3)?;
//! let sales = LocalWarehouse::open(&format!("sqlite://{}", file.display()), "--source")?;
//!
//! let tables = sales.list_tables().await?;
//! let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
//! assert_eq!(names, ["orders", "users"]);
//! assert_eq!((tables[0].kind, tables[0].rows), (TableKind::Table, Some(3)));
//!
//! let exports = dir.path().join("exports");
//! let request = ExportRequest {
//!     job_key: "run1_orders".into(),
//!     source: SourceTable {
//!         dataset_uri: sales.uri().into(),
//!         project: sales.project().into(),
//!         dataset: sales.dataset().into(),
//!         table: "orders".into(),
//!         partition: None,
//!         view: false,
//!     },
//!     destination_root: format!("file://{}", exports.display()),
//!     folder: "sales/orders/run=1/".into(),
//!     options: ExportOptions::default(), // CSV with a header row
//!     snapshot_at: None,
//! };
//! let result = sales.export(&request, Arc::default()).await?;
//! assert_eq!(result.files, ["sales/orders/run=1/orders_000000000000.csv"]);
//! assert_eq!(result.rows, Some(3));
//! let csv = std::fs::read_to_string(exports.join(&result.files[0]))?;
//! assert_eq!(csv.lines().count(), 1 + 3);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::contract::change::ChangeMarker;
use crate::contract::message::SourceTable;
use crate::contract::options::ExportOptions;
use crate::error::{ConfigError, UnitError};
use crate::ports::definition::TableDefinition;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TableKind {
    Table,
    View,
    MaterializedView,
    External,
    Snapshot,
}

impl TableKind {
    /// Why a table of this kind cannot be exported, if it cannot.
    pub fn unexportable_reason(self) -> Option<&'static str> {
        match self {
            TableKind::Table | TableKind::Snapshot => None,
            TableKind::View => {
                Some("views hold no data to extract (--views exports them through a query)")
            }
            TableKind::MaterializedView => Some(
                "materialized views cannot be extracted (--views exports them through a query)",
            ),
            TableKind::External => Some("external tables live outside the warehouse"),
        }
    }

    /// Views and materialized views: `--views` exports them through a query.
    pub fn is_view(self) -> bool {
        matches!(self, TableKind::View | TableKind::MaterializedView)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableInfo {
    pub name: String,
    pub kind: TableKind,
    /// Stored size, where the warehouse knows it.
    pub bytes: Option<u64>,
    pub rows: Option<u64>,
}

/// The unit of a partitioned table's partitions, which fixes their ids:
/// `20261201` (day), `2026120113` (hour), `202612` (month), `2026` (year),
/// or the range's start (integer range); plus `__NULL__` and
/// `__UNPARTITIONED__` as BigQuery names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Partitioning {
    Hour,
    Day,
    Month,
    Year,
    IntegerRange,
}

/// One partition of a table, as the warehouse lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionInfo {
    pub table: String,
    /// The partition id, as in `table$ID`.
    pub id: String,
    /// How the table is partitioned, which gives ids their meaning.
    pub unit: Partitioning,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    pub change: Option<ChangeMarker>,
}

/// The most a project may export in a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportQuota {
    /// Export (extract) jobs.
    pub jobs: u64,
    /// Bytes of table data exported.
    pub bytes: u64,
    /// Where the quota is documented.
    pub source: &'static str,
}

/// One export to perform.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// Stable per run and unit, so a retried export can find its earlier job.
    pub job_key: String,
    pub source: SourceTable,
    /// Root URI of the destination store.
    pub destination_root: String,
    /// Folder under the root that receives the shards, ending in `/`.
    pub folder: String,
    pub options: ExportOptions,
    /// Export the data as it was at this time (the run's start), where the
    /// warehouse can: every unit of a run then comes from one snapshot.
    pub snapshot_at: Option<DateTime<Utc>>,
}

impl ExportRequest {
    /// The name of shard `index`, like BigQuery's wildcard output:
    /// `TABLE_000000000000.csv`.
    pub fn shard_key(&self, index: u64) -> String {
        format!(
            "{}{}_{:012}.{}",
            self.folder,
            self.source.table,
            index,
            self.options.format.extension(self.options.compression)
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExportResult {
    /// Keys (relative to the destination root) of every shard written.
    pub files: Vec<String>,
    /// Rows of the exported data, where they can be known.
    pub rows: Option<u64>,
    /// The snapshot time the data is from; `None` when it is the state at
    /// export time (no time travel, or its window had passed).
    pub as_of: Option<DateTime<Utc>>,
}

/// One unit of a restore: a committed export loaded back into a table of
/// this warehouse's dataset.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// Stable per restore run and unit, so a retried load finds its
    /// earlier job.
    pub job_key: String,
    /// The table to write, in this warehouse's dataset.
    pub table: String,
    /// The table's definition as it was exported (`_TABLE.json`): the
    /// table is created from it when absent. Its `partition` names the one
    /// partition a partition unit replaces (`TABLE$ID`, truncated), leaving
    /// the table's other partitions as they are; a view is re-created from
    /// its `view_query` and no file is loaded.
    pub definition: TableDefinition,
    /// Root URI of the store holding the export (`gs://…`, `file://…`).
    pub source_root: String,
    /// Keys, relative to `source_root`, of the export's data files.
    pub files: Vec<String>,
    /// How the files were written: format, compression, header, delimiter.
    pub options: ExportOptions,
    /// A whole-table unit drops the table first if it exists and makes it
    /// again from the definition (`--if-exists replace`); otherwise a
    /// table that exists is loaded with its data replaced. Whether a table
    /// may be written at all is decided before the restore is published.
    pub replace_table: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadResult {
    /// Rows the load wrote into the table (or partition): the load job's
    /// statistics, or a count; `None` for a view.
    pub rows: Option<u64>,
}

/// Set when the worker gives up on an export (shutdown): adapters stop early.
pub type Cancel = Arc<AtomicBool>;

/// One dataset's tables, listed and exported; see the [module](self) for
/// the contract and an example.
#[async_trait]
pub trait Warehouse: Send + Sync {
    fn uri(&self) -> &str;
    fn project(&self) -> &str;
    fn dataset(&self) -> &str;

    /// Rejects options or destinations this warehouse cannot export to,
    /// before anything is published.
    fn check_export(
        &self,
        options: &ExportOptions,
        destination_root: &str,
    ) -> Result<(), ConfigError>;

    /// What the warehouse's project may export in a day, where it has a
    /// quota: a run that alone would pass it is refused when planned.
    fn daily_export_quota(&self) -> Option<ExportQuota> {
        None
    }

    async fn list_tables(&self) -> anyhow::Result<Vec<TableInfo>>;

    /// How the last `list_tables` planned, for the preflight: BigQuery's
    /// fast path (one query) or its fallback (a call per table). `None`
    /// where there is one way only.
    fn planned_from(&self) -> Option<&'static str> {
        None
    }

    /// The change markers of these tables as of now, by name; a table
    /// left out has none and always counts as changed. Changes made from now
    /// on raise them (the embedded warehouse installs its triggers here).
    async fn change_markers(
        &self,
        tables: &[TableInfo],
    ) -> anyhow::Result<HashMap<String, ChangeMarker>>;

    /// The change markers these tables have now, read without writing
    /// anything: a table whose changes nothing tracks yet (where
    /// `change_markers` would start tracking it) has none. For `bqdrain
    /// verify`, which must leave the source as it found it.
    async fn tracked_markers(
        &self,
        tables: &[TableInfo],
    ) -> anyhow::Result<HashMap<String, ChangeMarker>>;

    /// The partitions of those of these tables that are partitioned, with
    /// their sizes and change markers. A partition's marker may leave out
    /// the columns' fingerprint (`ChangeMarker::schema`): callers take it
    /// from the table's marker (`change_markers`), so a warehouse that
    /// reads columns at a cost reads them once, and only for those.
    async fn list_partitions(&self, tables: &[TableInfo]) -> anyhow::Result<Vec<PartitionInfo>>;

    /// The bytes a query reading all of this view would process, and so
    /// bill: a dry run, which costs nothing.
    async fn view_bytes(&self, view: &str) -> anyhow::Result<u64>;

    async fn export(
        &self,
        request: &ExportRequest,
        cancel: Cancel,
    ) -> Result<ExportResult, UnitError>;

    /// The definition of the unit's table as it is now, written beside the
    /// unit's export as `_TABLE.json`, so a restore makes the table as it was.
    async fn definition(&self, source: &SourceTable) -> Result<TableDefinition, UnitError>;

    /// Loads one unit of a restore (see [`LoadRequest`]): creates the table
    /// from its definition if absent, then replaces the data of the whole
    /// table or of the one partition. Safe to repeat: a redelivery writes
    /// the same rows again, never twice.
    async fn load(&self, request: &LoadRequest, cancel: Cancel) -> Result<LoadResult, UnitError>;

    /// Every table's columns as `(name, type)`, by table, the types as the
    /// warehouse's SQL spells them (`STRUCT<a INT64>`, `ARRAY<STRING>`), so
    /// a format that cannot hold a table is refused before anything is
    /// published.
    async fn column_types(&self) -> anyhow::Result<HashMap<String, Vec<(String, String)>>>;
}
