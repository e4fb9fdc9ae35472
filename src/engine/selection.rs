//! Which units a run exports: whole tables, or one unit per partition of a
//! partitioned table (within a window of days, if one is given); and with
//! `--only-changed`, only units whose change marker differs from the one
//! their current export was planned with.

use std::collections::{HashMap, HashSet};

use chrono::{Months, NaiveDate};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::contract::change::ChangeMarker;
use crate::contract::options::ExportOptions;
use crate::engine::layout::{self, TableManifest};
use crate::ports::store::ObjectStore;
use crate::ports::warehouse::Partitioning;

/// Folder manifests read at once where the listing carried no summary.
const READ_CONCURRENCY: usize = 32;

/// How partitioned tables are cut into units.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartitionPlan {
    /// One unit per partition (`table$ID`) instead of one per table.
    pub split: bool,
    /// Only partitions with a day in this window.
    pub window: Option<PartitionWindow>,
    /// Partitioned tables of fewer rows stay whole: a few small units
    /// cost more than one.
    pub min_rows: u64,
}

/// Which partitions a run takes, by their dates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PartitionWindow {
    /// The run's day (UTC) and the N - 1 days before it.
    LastDays(u32),
    /// This day and every later one.
    Since(NaiveDate),
}

impl PartitionWindow {
    /// The window's first day, for a run that starts on `today`.
    pub fn first_day(self, today: NaiveDate) -> NaiveDate {
        match self {
            PartitionWindow::LastDays(n) => today - chrono::Days::new(u64::from(n.max(1) - 1)),
            PartitionWindow::Since(day) => day,
        }
    }

    /// Whether partition `id` of a table partitioned by `unit` has a day on
    /// or after `first_day`. `__UNPARTITIONED__` (rows not yet assigned a
    /// partition: recent ones) is always in; `__NULL__` never. Integer-range
    /// partitions have no dates: the window does not apply to them.
    pub fn holds(first_day: NaiveDate, unit: Partitioning, id: &str) -> bool {
        match id {
            "__UNPARTITIONED__" => return true,
            "__NULL__" => return false,
            _ => {}
        }
        match last_day(unit, id) {
            Some(last) => last >= first_day,
            None => unit == Partitioning::IntegerRange,
        }
    }
}

/// The last day a dated partition covers, from its id.
fn last_day(unit: Partitioning, id: &str) -> Option<NaiveDate> {
    let digits = |range: std::ops::Range<usize>| id.get(range)?.parse::<u32>().ok();
    match (unit, id.len()) {
        (Partitioning::Hour, 10) | (Partitioning::Day, 8) => {
            NaiveDate::from_ymd_opt(digits(0..4)? as i32, digits(4..6)?, digits(6..8)?)
        }
        (Partitioning::Month, 6) => {
            let first = NaiveDate::from_ymd_opt(digits(0..4)? as i32, digits(4..6)?, 1)?;
            first.checked_add_months(Months::new(1))?.pred_opt()
        }
        (Partitioning::Year, 4) => NaiveDate::from_ymd_opt(digits(0..4)? as i32, 12, 31),
        _ => None,
    }
}

/// A unit and the run whose export of it is current: what a run leaves out
/// because it did not change, or because its source is gone.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
pub struct CurrentExport {
    pub unit: String,
    /// The run whose export of the unit is current.
    pub exported_by: String,
}

/// The current export of every unit of `dataset` under the store: the
/// folder manifests (copies of completion records) found there, the newest
/// run's where two runs' folders stand for a moment.
pub async fn current_exports(
    store: &dyn ObjectStore,
    dataset: &str,
) -> anyhow::Result<HashMap<String, TableManifest>> {
    let listed = store.list(&format!("{dataset}/")).await?;
    let manifests: Vec<TableManifest> = stream::iter(
        listed
            .into_iter()
            .filter(|o| layout::is_export_manifest(&o.key)),
    )
    .map(|object| async move {
        let summarised = object
            .summary
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        if let Some(manifest) = summarised {
            return anyhow::Ok(Some(manifest));
        }
        Ok(match store.read(&object.key).await? {
            Some(bytes) => serde_json::from_slice(&bytes).ok(),
            None => None,
        })
    })
    .buffer_unordered(READ_CONCURRENCY)
    .try_filter_map(|m| async move { Ok(m) })
    .try_collect()
    .await?;
    let mut current: HashMap<String, TableManifest> = HashMap::new();
    for manifest in manifests {
        let newer = current.get(&manifest.unit).is_none_or(|seen| {
            (manifest.run_started_at, &manifest.run_id) > (seen.run_started_at, &seen.run_id)
        });
        if newer {
            current.insert(manifest.unit.clone(), manifest);
        }
    }
    Ok(current)
}

/// Table -> the ids of its partitions, for the tables a run split.
pub type PartitionsSeen = HashMap<String, HashSet<String>>;

/// The current exports of `dataset` whose source is gone: their table is not
/// among `tables` (every table the dataset lists), or their partition is not
/// among those listed for a table the run split. By unit.
pub fn sources_gone(
    current: &HashMap<String, TableManifest>,
    dataset: &str,
    tables: &HashSet<String>,
    partitions: &PartitionsSeen,
) -> Vec<CurrentExport> {
    let mut gone: Vec<CurrentExport> = current
        .iter()
        .filter(|(unit, _)| {
            let (table, partition) = layout::table_and_partition(dataset, unit);
            !tables.contains(table)
                || partition
                    .is_some_and(|p| partitions.get(table).is_some_and(|ids| !ids.contains(p)))
        })
        .map(|(unit, export)| CurrentExport {
            unit: unit.clone(),
            exported_by: export.run_id.clone(),
        })
        .collect();
    gone.sort_by(|a, b| a.unit.cmp(&b.unit));
    gone
}

/// The run whose current export already holds this data as this run
/// would write it, if one does: the unit's marker now equals the one that
/// export was planned with, and its files were written with `options`. A
/// unit without a marker (the warehouse cannot tell) always counts as
/// changed, and so does one whose export missed rows in the streaming
/// buffer, or whose record does not say how its files were written (records
/// of earlier versions).
pub fn unchanged_since<'a>(
    current: Option<&'a TableManifest>,
    marker: Option<&ChangeMarker>,
    options: &ExportOptions,
) -> Option<&'a str> {
    let current = current?;
    let written_alike = current
        .options
        .as_ref()
        .is_some_and(|o| o.writes_like(options));
    (same_data(current, marker) && written_alike).then_some(current.run_id.as_str())
}

/// Whether the export holds the source's data as it is now: the unit's
/// marker equals the one the export was planned with (both known), and no
/// row was left in the streaming buffer.
pub fn same_data(current: &TableManifest, marker: Option<&ChangeMarker>) -> bool {
    match (current.change.as_ref(), marker) {
        (Some(exported), Some(marker)) => exported == marker && !exported.streaming,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn windows_hold_the_partitions_with_a_day_in_them() {
        let first = PartitionWindow::LastDays(3).first_day(day("2026-12-03"));
        assert_eq!(first, day("2026-12-01"));
        let holds = |unit, id| PartitionWindow::holds(first, unit, id);
        assert!(holds(Partitioning::Day, "20261201"));
        assert!(!holds(Partitioning::Day, "20261130"));
        assert!(holds(Partitioning::Hour, "2026120100"));
        assert!(!holds(Partitioning::Hour, "2026113023"));
        // November's last day is before the window, December's is in it.
        assert!(!holds(Partitioning::Month, "202611"));
        assert!(holds(Partitioning::Month, "202612"));
        assert!(holds(Partitioning::Year, "2026"));
        assert!(!holds(Partitioning::Year, "2025"));
        assert!(holds(Partitioning::Day, "__UNPARTITIONED__"));
        assert!(!holds(Partitioning::Day, "__NULL__"));
        assert!(holds(Partitioning::IntegerRange, "100"));
        assert!(!holds(Partitioning::Day, "not-a-day"));
        assert_eq!(
            PartitionWindow::Since(day("2026-11-01")).first_day(day("2026-12-03")),
            day("2026-11-01")
        );
        assert_eq!(
            PartitionWindow::LastDays(1).first_day(day("2026-12-03")),
            day("2026-12-03")
        );
    }

    #[test]
    fn a_unit_is_unchanged_only_when_both_markers_are_known_and_equal() {
        let marker = |version| ChangeMarker {
            modified: None,
            version: Some(version),
            rows: Some(10),
            bytes: None,
            streaming: false,
            schema: None,
        };
        let export: TableManifest = serde_json::from_value(serde_json::json!({
            "v": 1, "run_id": "r1", "unit": "t", "files": [], "bytes": 0, "rows": 10,
            "finished_at": "2026-12-01T00:00:00Z", "delivery_attempt": 1, "task": "t",
            "change": {"version": 4, "rows": 10},
            "options": {"format": "csv", "compression": "none", "header": true, "field_delimiter": ","}
        }))
        .unwrap();
        let csv = ExportOptions::default();
        let (four, five) = (marker(4), marker(5));
        assert_eq!(
            unchanged_since(Some(&export), Some(&four), &csv),
            Some("r1")
        );
        assert_eq!(unchanged_since(Some(&export), Some(&five), &csv), None);
        assert_eq!(unchanged_since(Some(&export), None, &csv), None);
        let fingerprinted = ChangeMarker {
            schema: Some("cbf29ce484222325".into()),
            ..marker(4)
        };
        assert_eq!(
            unchanged_since(Some(&export), Some(&fingerprinted), &csv),
            None,
            "a record without the columns' fingerprint cannot tell a column went: changed once"
        );
        assert_eq!(unchanged_since(None, Some(&four), &csv), None);
        let gzip = ExportOptions {
            compression: crate::contract::options::Compression::Gzip,
            ..ExportOptions::default()
        };
        assert_eq!(
            unchanged_since(Some(&export), Some(&four), &gzip),
            None,
            "written another way"
        );
        let capped = ExportOptions {
            max_bytes_billed: Some(10),
            ..ExportOptions::default()
        };
        assert_eq!(
            unchanged_since(Some(&export), Some(&four), &capped),
            Some("r1"),
            "the byte guard writes no file"
        );
        let unwritten = TableManifest {
            options: None,
            ..export.clone()
        };
        assert_eq!(unchanged_since(Some(&unwritten), Some(&four), &csv), None);
        let streaming = TableManifest {
            change: Some(ChangeMarker {
                streaming: true,
                ..marker(4)
            }),
            ..export.clone()
        };
        assert_eq!(unchanged_since(Some(&streaming), Some(&four), &csv), None);
        let unmarked = TableManifest {
            change: None,
            ..export
        };
        assert_eq!(unchanged_since(Some(&unmarked), Some(&four), &csv), None);
    }
}
