//! The warehouse port: list a dataset's tables and their partitions, say
//! what changed, export one table or partition.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// Set when the worker gives up on an export (shutdown): adapters stop early.
pub type Cancel = Arc<AtomicBool>;

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
    /// their sizes and change markers.
    async fn list_partitions(&self, tables: &[TableInfo]) -> anyhow::Result<Vec<PartitionInfo>>;

    /// The bytes a query reading all of this view would process, and so
    /// bill: a dry run, which costs nothing.
    async fn view_bytes(&self, view: &str) -> anyhow::Result<u64>;

    async fn export(
        &self,
        request: &ExportRequest,
        cancel: Cancel,
    ) -> Result<ExportResult, UnitError>;
}
