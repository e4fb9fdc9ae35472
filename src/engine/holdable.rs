//! Refusing a run whose format cannot hold a table, before anything is
//! published: BigQuery writes no nested or repeated column to CSV, so each
//! such table's extract job would fail only once a worker ran it, and the
//! run would end with dead letters instead of a clear refusal.

use crate::contract::options::Format;
use crate::error::ConfigError;
use crate::ports::warehouse::{TableInfo, Warehouse};

/// The tables of `tables` that `format` cannot hold, each as its run name
/// (`name`) with the columns it cannot hold:
/// `events (event_params ARRAY<STRUCT<key STRING>>)`. Reads the
/// warehouse's columns (one query on BigQuery) only for a format that
/// refuses some types.
pub async fn tables_not_held(
    format: Format,
    warehouse: &dyn Warehouse,
    tables: &[TableInfo],
    name: impl Fn(&str) -> String,
) -> anyhow::Result<Vec<String>> {
    if !format.refuses_some_types() || tables.is_empty() {
        return Ok(Vec::new());
    }
    let columns = warehouse.column_types().await?;
    let mut refused = Vec::new();
    for table in tables {
        let not_held: Vec<String> = columns
            .get(&table.name)
            .into_iter()
            .flatten()
            .filter(|(_, data_type)| !format.holds(data_type))
            .map(|(column, data_type)| format!("{column} {data_type}"))
            .collect();
        if !not_held.is_empty() {
            refused.push(format!("{} ({})", name(&table.name), not_held.join(", ")));
        }
    }
    Ok(refused)
}

/// Why the run is refused, naming each table and the fix.
pub fn refusal(format: Format, refused: &[String]) -> ConfigError {
    ConfigError::new(
        "--format",
        format!(
            "{} cannot hold nested or repeated columns (BigQuery writes none to it), \
             and these tables have some: {}",
            format.name(),
            refused.join("; ")
        ),
        "export them with --format avro, --format parquet or --format json, \
         or leave them out with --exclude TABLE",
    )
}
