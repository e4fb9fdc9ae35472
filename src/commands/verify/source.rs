//! The source side of `verify` (`--source`): what the destination should
//! hold of the tables the source has now.
//!
//! - Every exportable table of the source has a committed export, or a run
//!   in progress is writing one (`missing_export`); a view or materialized
//!   view only where the destination has an export of it (the producer
//!   exports them only when asked, with `--views`).
//! - A table the destination has and the source no longer has is `gone`:
//!   its last export stays, as the producer leaves it. A note, not a
//!   discrepancy.
//! - A partition export of a table exported per partition, whose partition
//!   the source no longer has (its rows were deleted or moved), should be
//!   retired (`retired_partition`): the table's files hold rows the table
//!   does not.
//! - Row counts, only where they are known without a query and the source
//!   is known unchanged since the export: the record keeps the change
//!   marker its run planned the unit with, and the source's marker now is
//!   the same (`crate::engine::selection::same_data`, as
//!   `--only-changed` decides). Then the record's rows must be the rows
//!   the source lists now (`row_count_mismatch`). That is:
//!   - a whole table, when a run with `--only-changed` planned its export
//!     (only those keep a marker) and the warehouse has a marker for it now
//!     without writing anything (`Warehouse::tracked_markers`): on the
//!     embedded warehouse only while the table's change triggers are in
//!     place (an `--only-changed` run installs them; `verify` never does,
//!     and never calls `change_markers`, which would); on BigQuery always;
//!   - a partition, when its record has rows and a marker and the partition
//!     listing gives the same marker now; on the embedded warehouse only
//!     while its table's triggers are in place. BigQuery's records of
//!     partitions keep no row count (it is not known without a query), so
//!     their counts are compared only by `--deep`, against the source's.
//!
//!   Everywhere else counts are not compared: the export of a table that
//!   changed since holds its rows as they were, which the source no longer
//!   lists, and that is no discrepancy.
//!
//! Cost. The embedded warehouse is read through a read-only connection. On
//! BigQuery the listings are the producer's: the tables are one
//! `INFORMATION_SCHEMA` query (`TABLES` joined with the dataset's `PARTITIONS`
//! summed per table); the partitions, asked only for tables exported per
//! partition, a `tables.list` page per 1,000 tables and one
//! `INFORMATION_SCHEMA.PARTITIONS` query per 1,000 of them; the markers, asked
//! only for tables whose records can be compared, one more `PARTITIONS` query
//! per 1,000 and one `INFORMATION_SCHEMA.COLUMNS` query (the columns'
//! fingerprint, which a partition's marker takes from its table's).
//! `INFORMATION_SCHEMA` queries are billed (on demand, at least 10 MB each and
//! never cached:
//! <https://cloud.google.com/bigquery/docs/information-schema-intro>,
//! "Pricing"), a few tenths of a GB for 10,000 tables; `tables.list` and
//! `tables.get` are metadata operations, free.
//!
//! No `SELECT COUNT(*) … FOR SYSTEM_TIME AS OF` is issued. Each would be a
//! query job, and on-demand pricing bills "a minimum 10 MB data processed
//! per table referenced by the query, and with a minimum 10 MB data
//! processed per query" (<https://cloud.google.com/bigquery/pricing>,
//! on-demand query pricing): 10 MB a table, 100 GB and 10,000 jobs of the
//! project's quota for 10,000 tables. A plain `COUNT(*)` of a native table
//! can be answered from metadata (its dry run estimates 0 bytes), but the
//! documentation promises nothing of the kind for a snapshot read, so it is
//! taken as billed. The records and markers give the counts that matter
//! (those of units unchanged since their export) for nothing.

use std::collections::{HashMap, HashSet};

use super::exports::{CheckedTable, Export};
use super::{reexport, unit_name, Filters, Findings, Kind, NoteKind, Where};
use crate::contract::change::ChangeMarker;
use crate::engine::selection::same_data;
use crate::ports::warehouse::{PartitionInfo, TableInfo, Warehouse};

/// What the source says of the rows of the units it did not change.
#[derive(Debug, Default)]
pub struct SourceRows {
    /// The rows the source has now, by export folder, for the standing
    /// exports whose unit is known unchanged since.
    pub by_folder: HashMap<String, u64>,
    /// Units whose record's rows were compared with the source's.
    pub compared: usize,
}

/// Checks the destination's tables of `warehouse`'s dataset against it.
/// With `deep`, also finds the source's rows of unchanged units whose
/// record keeps none, for `--deep` to compare its counts with.
pub async fn check(
    warehouse: &dyn Warehouse,
    tables: &[CheckedTable],
    filters: &Filters,
    deep: bool,
    at: &Where,
    findings: &mut Findings,
) -> anyhow::Result<SourceRows> {
    let dataset = warehouse.dataset();
    let listed = warehouse.list_tables().await?;
    let source: HashMap<&str, &TableInfo> = listed.iter().map(|t| (t.name.as_str(), t)).collect();
    let destination: HashMap<&str, &CheckedTable> =
        tables.iter().map(|t| (t.name.as_str(), t)).collect();

    for table in tables {
        if !source.contains_key(table.name.as_str()) {
            let last = table
                .current
                .iter()
                .map(|e| format!("run {}'s", e.run()))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ");
            findings.note(
                NoteKind::Gone,
                &format!("{dataset}/{}/", table.name),
                format!(
                    "{} has no table {} any more: its last export stays ({})",
                    warehouse.uri(),
                    table.name,
                    if last.is_empty() { "none" } else { &last }
                ),
            );
        }
    }
    for info in &listed {
        if !filters.select(dataset, &info.name) || info.kind.unexportable_reason().is_some() {
            continue;
        }
        let exported = destination
            .get(info.name.as_str())
            .is_some_and(|t| !t.current.is_empty() || t.in_progress);
        if !exported {
            findings.add(
                Kind::MissingExport,
                &format!("{dataset}/{}/", info.name),
                format!(
                    "{} has table {}, and the destination no committed export of it",
                    warehouse.uri(),
                    info.name
                ),
                format!(
                    "export it: run the producer with --source {} --include {dataset}.{}",
                    warehouse.uri(),
                    info.name
                ),
            );
        }
    }

    // Partitions: asked only of the tables exported per partition.
    let split: Vec<TableInfo> = tables
        .iter()
        .filter(|t| t.split)
        .filter_map(|t| source.get(t.name.as_str()).map(|&info| info.clone()))
        .collect();
    let mut partitions: HashMap<String, HashMap<String, PartitionInfo>> = split
        .iter()
        .map(|t| (t.name.clone(), HashMap::new()))
        .collect();
    if !split.is_empty() {
        for partition in warehouse.list_partitions(&split).await? {
            if let Some(ids) = partitions.get_mut(&partition.table) {
                ids.insert(partition.id.clone(), partition);
            }
        }
    }
    let mut retired: HashSet<&str> = HashSet::new();
    for table in tables.iter().filter(|t| t.split) {
        let Some(ids) = partitions.get(&table.name) else {
            continue; // gone
        };
        for export in &table.current {
            let Some(id) = &export.partition else {
                continue;
            };
            if ids.contains_key(id) {
                continue;
            }
            retired.insert(&export.folder.key);
            let folder = format!("{dataset}/{}/partition={id}/", table.name);
            findings.add(
                Kind::RetiredPartition,
                &folder,
                format!(
                    "{}.{} has no partition {id} any more, yet run {}'s export of it stays: the \
                     table's files hold rows the table does not",
                    dataset,
                    table.name,
                    export.run()
                ),
                format!("delete folder {}", at.uri(&folder)),
            );
        }
    }

    // Row counts, where the record's marker says what the source had.
    let comparable = |e: &&Export| {
        e.record.change.is_some()
            && (e.record.rows.is_some() || deep)
            && !retired.contains(e.folder.key.as_str())
    };
    let wanted: Vec<TableInfo> = tables
        .iter()
        .filter(|t| t.current.iter().any(|e| comparable(&e)))
        .filter_map(|t| source.get(t.name.as_str()).map(|&info| info.clone()))
        .collect();
    let mut rows = SourceRows::default();
    if wanted.is_empty() {
        return Ok(rows);
    }
    let markers = warehouse.tracked_markers(&wanted).await?;
    for table in tables {
        let (Some(info), Some(marker)) =
            (source.get(table.name.as_str()), markers.get(&table.name))
        else {
            continue;
        };
        for export in table.current.iter().filter(comparable) {
            let (now, source_rows): (Option<ChangeMarker>, Option<u64>) = match &export.partition {
                None => (Some(marker.clone()), info.rows.or(marker.rows)),
                Some(id) => match partitions.get(&table.name).and_then(|p| p.get(id)) {
                    Some(p) => (
                        p.change.clone().map(|c| c.with_schema_of(Some(marker))),
                        p.rows,
                    ),
                    None => (None, None),
                },
            };
            let (true, Some(source_rows)) = (same_data(&export.record, now.as_ref()), source_rows)
            else {
                continue;
            };
            rows.by_folder
                .insert(export.folder.key.clone(), source_rows);
            let Some(recorded) = export.record.rows else {
                continue;
            };
            rows.compared += 1;
            if recorded != source_rows {
                let unit = unit_name(dataset, &table.name, export.partition.as_deref());
                findings.add(
                    Kind::RowCountMismatch,
                    &export.folder.key,
                    format!(
                        "run {}'s record of {unit} says {recorded} rows; the source has \
                         {source_rows}, and has not changed since (same change marker)",
                        export.run()
                    ),
                    reexport(dataset, &table.name, export.partition.is_some()),
                );
            }
        }
    }
    Ok(rows)
}
