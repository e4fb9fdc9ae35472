//! Where things live in the destination store, and the records kept there.
//!
//! ```text
//! DATASET/TABLE/run=RUN_ID/TABLE_000000000000.csv   shards of one run's export
//! DATASET/TABLE/run=RUN_ID/_MANIFEST.json           that export's manifest: its commit, written if absent
//! DATASET/TABLE/run=RUN_ID/_TABLE.json              the table's definition as the unit was exported
//! DATASET/TABLE/partition=P/run=RUN_ID/...          the same, per partition
//! _bqdrain/runs/RUN_ID/manifest.json                the run manifest (expected units), written before publishing
//! _bqdrain/runs/RUN_ID/published.json               written once every message of the run is confirmed
//! _bqdrain/runs/RUN_ID/done/UNIT.json               completion record (a copy of the manifest), written once the unit is settled
//! _bqdrain/runs/RUN_ID/dead/UNIT.json               dead-letter record with the reason
//! _bqdrain/runs/RUN_ID/superseded/UNIT.json         a newer run's export replaced this run's
//! _bqdrain/runs/RUN_ID/active/UNIT.json             a task's heartbeat while it exports a long unit
//! _bqdrain/datasets/DATASET.json                    the source DATASET/ belongs to
//! ```
//!
//! Each run exports into its own folder, so a failed or partial export never
//! touches the previous complete one; only after a run's export of a table is
//! committed are older runs' committed folders of that table deleted. The
//! dataset is part of the path, so two datasets can share a destination.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::contract::change::ChangeMarker;
use crate::contract::message::{check_path_segment, RestoreTarget, SourceTable};
use crate::contract::options::ExportOptions;
use crate::engine::selection::CurrentExport;
use crate::ports::store::ObjectStore;

/// The record at `key`, parsed; `None` if there is none.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    key: &str,
) -> anyhow::Result<Option<T>> {
    match store.read(key).await? {
        None => Ok(None),
        Some(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {key}"))?,
        )),
    }
}

/// Reserved top-level folder for bqdrain's own records.
pub const META: &str = "_bqdrain";
const TABLE_MANIFEST: &str = "_MANIFEST.json";
const TABLE_DEFINITION: &str = "_TABLE.json";
const RUN_FOLDER_PREFIX: &str = "run=";
const PARTITION_FOLDER_PREFIX: &str = "partition=";

/// The folder of a unit across runs: `DATASET/TABLE/` or
/// `DATASET/TABLE/partition=P/`.
pub fn unit_folder(source: &SourceTable) -> String {
    match &source.partition {
        Some(p) => format!(
            "{}/{}/{PARTITION_FOLDER_PREFIX}{p}/",
            source.dataset, source.table
        ),
        None => format!("{}/{}/", source.dataset, source.table),
    }
}

/// The folder of a table across runs and units: `DATASET/TABLE/`.
pub fn table_folder(source: &SourceTable) -> String {
    format!("{}/{}/", source.dataset, source.table)
}

/// The folder of one run's export of a unit.
pub fn export_folder(source: &SourceTable, run_id: &str) -> String {
    format!("{}{RUN_FOLDER_PREFIX}{run_id}/", unit_folder(source))
}

/// The manifest inside one run's export folder of a unit.
pub fn export_manifest(source: &SourceTable, run_id: &str) -> String {
    format!("{}{TABLE_MANIFEST}", export_folder(source, run_id))
}

/// The table's definition inside one run's export folder of a unit.
pub fn export_definition(source: &SourceTable, run_id: &str) -> String {
    format!("{}{TABLE_DEFINITION}", export_folder(source, run_id))
}

/// Who a dataset's folder belongs to (see [`crate::engine::ownership`]).
pub fn dataset_owner(dataset: &str) -> String {
    format!("{META}/datasets/{dataset}.json")
}

pub fn run_manifest(run_id: &str) -> String {
    format!("{META}/runs/{run_id}/manifest.json")
}

pub fn run_published(run_id: &str) -> String {
    format!("{META}/runs/{run_id}/published.json")
}

pub fn done_prefix(run_id: &str) -> String {
    format!("{META}/runs/{run_id}/done/")
}

pub fn dead_prefix(run_id: &str) -> String {
    format!("{META}/runs/{run_id}/dead/")
}

pub fn superseded_prefix(run_id: &str) -> String {
    format!("{META}/runs/{run_id}/superseded/")
}

pub fn active_prefix(run_id: &str) -> String {
    format!("{META}/runs/{run_id}/active/")
}

pub fn active_record(run_id: &str, unit: &str) -> String {
    format!("{}{}.json", active_prefix(run_id), record_name(unit))
}

pub fn done_record(run_id: &str, unit: &str) -> String {
    format!("{}{}.json", done_prefix(run_id), record_name(unit))
}

pub fn dead_record(run_id: &str, unit: &str) -> String {
    format!("{}{}.json", dead_prefix(run_id), record_name(unit))
}

pub fn superseded_record(run_id: &str, unit: &str) -> String {
    format!("{}{}.json", superseded_prefix(run_id), record_name(unit))
}

/// The longest unit name a record's file is named after: with `.json`, a
/// file system's 255-byte limit on a file name.
const RECORD_NAME_MAX: usize = 250;
/// Marks a record named after its unit's hash.
const HASHED_RECORD: char = '~';

/// The file name (less `.json`) of a unit's records: the unit itself, or,
/// for a name no file can carry (too long, empty, `..`, a separator), `~`
/// and a hash of it, so that a record is always writable and the unit that
/// cannot be exported is still counted as dead-lettered. Listings map
/// names back to units through this function.
pub fn record_name(unit: &str) -> String {
    let writable = unit.len() <= RECORD_NAME_MAX
        && !unit.starts_with(HASHED_RECORD)
        && check_path_segment(unit).is_ok();
    if writable {
        unit.to_string()
    } else {
        format!("{HASHED_RECORD}{:016x}", stable_hash(unit))
    }
}

/// FNV-1a: the same on every machine and release, unlike std's hasher.
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether `key` is the manifest of an export folder.
pub fn is_export_manifest(key: &str) -> bool {
    key.strip_suffix(TABLE_MANIFEST)
        .and_then(|folder| folder.strip_suffix('/'))
        .and_then(|folder| folder.rsplit('/').next())
        .is_some_and(|last| last.starts_with(RUN_FOLDER_PREFIX))
}

/// The run whose export folder holds `key`, for a key under `unit_folder`.
pub fn run_of_key<'a>(unit_folder: &str, key: &'a str) -> Option<&'a str> {
    let rest = key
        .strip_prefix(unit_folder)?
        .strip_prefix(RUN_FOLDER_PREFIX)?;
    rest.split_once('/').map(|(run, _)| run)
}

/// Where an object of a dataset's folder lies: the table, partition and
/// run whose export holds it, and its name in that export's folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportPath<'a> {
    pub table: &'a str,
    pub partition: Option<&'a str>,
    pub run: &'a str,
    /// The file's name inside the export folder (a shard, or the manifest).
    pub file: &'a str,
}

impl<'a> ExportPath<'a> {
    /// Parses `DATASET/TABLE/run=RUN/FILE` or
    /// `DATASET/TABLE/partition=P/run=RUN/FILE`; `None` for any other key.
    pub fn parse(dataset: &str, key: &'a str) -> Option<ExportPath<'a>> {
        let rest = key.strip_prefix(dataset)?.strip_prefix('/')?;
        let (table, rest) = rest.split_once('/')?;
        let (partition, rest) = match rest.strip_prefix(PARTITION_FOLDER_PREFIX) {
            Some(rest) => {
                let (partition, rest) = rest.split_once('/')?;
                (Some(partition), rest)
            }
            None => (None, rest),
        };
        let (run, file) = rest.strip_prefix(RUN_FOLDER_PREFIX)?.split_once('/')?;
        (!file.is_empty() && !file.contains('/')).then_some(ExportPath {
            table,
            partition,
            run,
            file,
        })
    }

    /// Whether this is the export folder's manifest.
    pub fn is_manifest(&self) -> bool {
        self.file == TABLE_MANIFEST
    }

    /// Whether this is the export folder's table definition.
    pub fn is_definition(&self) -> bool {
        self.file == TABLE_DEFINITION
    }
}

/// The table and partition a unit of `dataset` names: `TABLE`,
/// `TABLE$PARTITION`, or either behind `DATASET.` in a run of several
/// datasets.
pub fn table_and_partition<'a>(dataset: &str, unit: &'a str) -> (&'a str, Option<&'a str>) {
    let bare = unit
        .strip_prefix(dataset)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or(unit);
    match bare.split_once('$') {
        Some((table, partition)) => (table, Some(partition)),
        None => (bare, None),
    }
}

/// The record name (see [`record_name`]) in a record key under `prefix`.
pub fn unit_of_record<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(prefix)?.strip_suffix(".json")
}

/// What the producer planned: written before the first message is published,
/// so that no published run is ever without one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub v: u32,
    pub run_id: String,
    pub created_at: DateTime<Utc>,
    /// The run's sources, for people: their URIs joined by spaces.
    pub source: String,
    /// The run's sources; absent in manifests of runs of one source made by
    /// earlier versions (see [`RunManifest::source_uris`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    pub destination: String,
    pub options: ExportOptions,
    /// Largest first, as published.
    pub units: Vec<PlannedUnit>,
    pub skipped: Vec<SkippedTable>,
    /// Units left out by `--only-changed`: their current export holds
    /// their data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<CurrentExport>,
    /// Units with a current export whose table or partition is gone from
    /// the source (`--only-changed` looks): their last export stays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<CurrentExport>,
    /// Tables (their folders, `DATASET/TABLE/`) whose partitions the run's
    /// window left partly out: their other partitions' exports are not this
    /// run's to retire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partly_covered: Vec<String>,
    /// Exports the producer retired while planning: partitions gone from
    /// live tables of which the run exports nothing else, and with
    /// `--prune-gone` the exports of tables gone from the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredExport>,
}

/// An export the producer retired while planning a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetiredExport {
    pub unit: String,
    /// The run whose export was current.
    pub exported_by: String,
    /// The folder deleted, every run's export in it.
    pub folder: String,
    pub why: String,
}

impl RunManifest {
    /// What the run holds of one table: the units it exports of it, and the
    /// partitions current after it (those it exports and those it left
    /// unchanged).
    pub fn table_plan(&self, source: &SourceTable) -> TablePlan {
        let folder = table_folder(source);
        let of_table = |s: &SourceTable| s.dataset == source.dataset && s.table == source.table;
        let mut plan = TablePlan {
            units: Vec::new(),
            partitions: Vec::new(),
            covered: !self.partly_covered.contains(&folder),
        };
        for unit in self.units.iter().filter(|u| of_table(&u.source)) {
            plan.units.push(unit.unit.clone());
            plan.partitions.extend(unit.source.partition.clone());
        }
        for kept in &self.unchanged {
            let (table, partition) = table_and_partition(&source.dataset, &kept.unit);
            if table == source.table {
                plan.partitions.extend(partition.map(str::to_string));
            }
        }
        plan
    }

    /// The URI of every dataset the run exports.
    pub fn source_uris(&self) -> Vec<String> {
        if self.sources.is_empty() {
            vec![self.source.clone()]
        } else {
            self.sources.clone()
        }
    }
}

/// One table's part of a run: see [`RunManifest::table_plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct TablePlan {
    /// The run's units of the table, by name.
    pub units: Vec<String>,
    /// The partitions with a current export after the run.
    pub partitions: Vec<String>,
    /// Whether the run took every partition of the table (no window left
    /// any out), so that it may retire exports of partitions now gone.
    pub covered: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedUnit {
    pub unit: String,
    pub source: SourceTable,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    /// The source's change marker when the run was planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeMarker>,
    /// In a restore run: where the unit's export is loaded, which makes
    /// its message a restore message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreTarget>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedTable {
    pub table: String,
    pub reason: String,
}

/// A run record as written: its JSON pretty-printed for people, and on one
/// line as the object's summary, which listings return
/// ([`crate::ports::store::ObjectInfo::summary`]).
pub struct RecordBody {
    pub pretty: Vec<u8>,
    pub summary: String,
}

impl RecordBody {
    pub fn of<T: Serialize>(record: &T) -> RecordBody {
        RecordBody {
            pretty: serde_json::to_vec_pretty(record).expect("records serialize"),
            summary: serde_json::to_string(record).expect("records serialize"),
        }
    }
}

/// One exported file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedFile {
    pub key: String,
    pub bytes: u64,
    /// The file's checksum as the store listed it at commit (Cloud Storage:
    /// CRC32C, base64), for `bqdrain verify`; absent where the store keeps
    /// none, and in records of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// An export's manifest; the same document is the completion record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableManifest {
    pub v: u32,
    pub run_id: String,
    pub unit: String,
    pub files: Vec<ExportedFile>,
    pub bytes: u64,
    pub rows: Option<u64>,
    pub finished_at: DateTime<Utc>,
    pub delivery_attempt: u32,
    pub task: String,
    /// The task's Cloud Run index, when it has one: the run report's lane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_index: Option<u32>,
    /// When this delivery's export began, so the run report can draw it
    /// from start to commit. Absent in records of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the run started (its manifest's `created_at`): orders this
    /// export against other runs' without reading their run manifests.
    /// Absent in records of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_started_at: Option<DateTime<Utc>>,
    /// The source's change marker as the run planned it, read before the
    /// export began: `--only-changed` compares the next run's with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeMarker>,
    /// The snapshot time the exported data is from (the run's start);
    /// absent when it is the state at export time: the warehouse keeps no
    /// history, or the time-travel window had passed (a late replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<DateTime<Utc>>,
    /// How the files were written: `--only-changed` exports a unit again
    /// when the run's options differ, so a table never mixes formats.
    /// Absent in records of earlier versions (such an export counts as
    /// changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<ExportOptions>,
}

/// A task's heartbeat while it exports a unit for longer than a heartbeat
/// interval, refreshed every interval and deleted when the export ends: an
/// idle task tells a unit another live task holds from one nobody holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveRecord {
    pub v: u32,
    pub run_id: String,
    pub unit: String,
    pub task: String,
    /// When the export began.
    pub since: DateTime<Utc>,
    /// When the heartbeat was last written.
    pub at: DateTime<Utc>,
}

/// Written by a run that committed a unit after a newer run had: its own
/// export was deleted, and the newer run's stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupersededRecord {
    pub v: u32,
    pub run_id: String,
    pub unit: String,
    /// The newer run whose export replaced this run's.
    pub by_run: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadRecord {
    pub v: u32,
    pub run_id: String,
    pub unit: String,
    pub reason: String,
    pub message: String,
    pub delivery_attempt: u32,
    pub at: DateTime<Utc>,
    /// The task that gave up, as in completion records; absent when
    /// `status --reconcile` wrote the record, and in earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_index: Option<u32>,
    /// When the last export try began; absent where `task` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_named_after_its_unit_unless_no_file_can_carry_the_name() {
        for unit in [
            "t_001",
            "events$20261201",
            "d.t",
            &"x".repeat(RECORD_NAME_MAX),
        ] {
            assert_eq!(record_name(unit), unit);
        }
        let long = "x".repeat(RECORD_NAME_MAX + 1);
        for unit in ["", ".", "..", "a/b", "a\\b", "a\nb", "~t", long.as_str()] {
            let name = record_name(unit);
            assert!(
                name.starts_with('~') && name.len() == 17,
                "{unit:?}: {name}"
            );
            assert_eq!(record_name(unit), name, "the same name every time");
        }
        assert_ne!(record_name(".."), record_name("."));
        assert_eq!(
            dead_record("r1", "a/b"),
            format!("_bqdrain/runs/r1/dead/{}.json", record_name("a/b"))
        );
    }

    #[test]
    fn export_keys_parse_into_table_partition_run_and_file() {
        let whole = ExportPath::parse("d", "d/t/run=r1/t_000000000000.csv").unwrap();
        assert_eq!(
            (whole.table, whole.partition, whole.run, whole.file),
            ("t", None, "r1", "t_000000000000.csv")
        );
        let part = ExportPath::parse("d", "d/t/partition=20261201/run=r2/_MANIFEST.json").unwrap();
        assert_eq!((part.partition, part.run), (Some("20261201"), "r2"));
        assert!(part.is_manifest());
        for other in [
            "d/t/t.csv",
            "d/t/run=r1/",
            "d/t/run=r1/x/y.csv",
            "e/t/run=r1/a.csv",
            "dx/t/run=r1/a.csv",
            "d/t/partition=p/a.csv",
        ] {
            assert_eq!(ExportPath::parse("d", other), None, "{other}");
        }
    }

    /// Records as the previous version wrote them, without the run report's
    /// fields: they must still read.
    #[test]
    fn records_of_the_previous_version_still_read() {
        let done: TableManifest = serde_json::from_str(
            r#"{"v":1,"run_id":"r1","unit":"t","files":[{"key":"d/t/run=r1/t_000000000000.csv","bytes":10}],
                "bytes":10,"rows":2,"finished_at":"2026-11-28T23:46:12Z","delivery_attempt":1,
                "task":"task 0/4 attempt 0","run_started_at":"2026-11-28T23:46:00Z"}"#,
        )
        .unwrap();
        assert_eq!((done.started_at, done.task_index), (None, None));
        assert_eq!(done.rows, Some(2));
        let dead: DeadRecord = serde_json::from_str(
            r#"{"v":1,"run_id":"r1","unit":"t","reason":"invalid","message":"no such table",
                "delivery_attempt":5,"at":"2026-11-28T23:46:12Z"}"#,
        )
        .unwrap();
        assert_eq!(
            (dead.task, dead.task_index, dead.started_at),
            (None, None, None)
        );
        assert_eq!(dead.delivery_attempt, 5);
    }
}
