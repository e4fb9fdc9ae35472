//! A table's definition as the warehouse reads it when a unit is exported:
//! what `_TABLE.json` beside every committed export holds, so that a
//! restore can make the table again as it was, not as `--autodetect`
//! guesses it. Its JSON form is a contract (docs/destination.md, "The
//! table's definition"): fields are only ever added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ports::warehouse::TableKind;

/// The version of `_TABLE.json`'s format.
pub const DEFINITION_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDefinition {
    pub v: u32,
    pub table: String,
    /// The partition id of a partition unit (`20261201`); absent for a
    /// whole table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    pub table_type: TableKind,
    pub columns: Vec<Column>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_partitioning: Option<TimePartitioning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_partitioning: Option<RangePartitioning>,
    /// Whether queries must filter on the partitioning column.
    #[serde(default)]
    pub require_partition_filter: bool,
    /// The clustering columns, in their order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clustering: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// For a view or materialized view, the query that defines it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_query: Option<String>,
}

/// One column, or one field of a `RECORD` column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The type as the warehouse names it: BigQuery's legacy type names
    /// (`INTEGER`, `RECORD`, …) as `tables.get` gives them; SQLite's
    /// declared type locally.
    #[serde(rename = "type")]
    pub data_type: String,
    /// `NULLABLE`, `REQUIRED` or `REPEATED`.
    pub mode: String,
    /// A `RECORD`'s fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Column>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The default value's expression, as written in the DDL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<String>,
    /// Policy tags' resource names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_tags: Vec<String>,
}

/// Partitioning by a time column, or by ingestion time without a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimePartitioning {
    /// `HOUR`, `DAY`, `MONTH` or `YEAR`.
    #[serde(rename = "type")]
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_ms: Option<i64>,
}

/// Partitioning by ranges of an integer column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangePartitioning {
    pub field: String,
    pub start: i64,
    pub end: i64,
    pub interval: i64,
}
