//! The warehouse port: list a dataset's tables, export one of them.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::engine::message::{ExportOptions, SourceTable};
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
            TableKind::View => Some("views hold no data to extract"),
            TableKind::MaterializedView => Some("materialized views cannot be extracted"),
            TableKind::External => Some("external tables live outside the warehouse"),
        }
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
    pub rows: Option<u64>,
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

    async fn export(
        &self,
        request: &ExportRequest,
        cancel: Cancel,
    ) -> Result<ExportResult, UnitError>;
}
