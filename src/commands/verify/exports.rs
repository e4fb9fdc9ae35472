//! The destination side of `verify`: a dataset's listing grouped into
//! tables, units and export folders; each folder's record; the committed
//! export that stands for each unit; and what is wrong with the rest.
//!
//! A folder is a committed export when it has a `_MANIFEST.json`, or when
//! its run has a completion record for its unit (the manifest is written
//! after the record, so a crash in between leaves a committed export
//! without one). Of a unit's committed exports the newest stands, ordered
//! as the engine orders them (the run's start, then its id); a folder that
//! is neither is an unfinished export, which only its run, while it runs,
//! may still commit or delete.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};

use super::{reexport, unit_name, Filters, Findings, Kind, NoteKind, Where};
use crate::contract::options::{Compression, ExportOptions, Format};
use crate::engine::layout::{self, ExportPath, RunManifest, TableManifest};
use crate::engine::runs::{RunState, UnitState};
use crate::ports::store::{ObjectInfo, ObjectStore};

/// Manifests read at once where the listing carried no summary (the local
/// store keeps none).
const READ_CONCURRENCY: usize = 32;

/// One run's export folder of a unit: `DATASET/TABLE/[partition=P/]run=RUN/`.
#[derive(Debug, Clone)]
pub struct Folder {
    pub key: String,
    pub run: String,
    /// Its objects, the manifest and the definition left out.
    pub files: Vec<ObjectInfo>,
    pub manifest: Option<ObjectInfo>,
    /// Its `_TABLE.json`.
    pub definition: Option<ObjectInfo>,
}

/// A table's folder in the destination, as listed.
#[derive(Debug, Default)]
pub struct ListedTable {
    /// Export folders by unit (`None`: the whole table; else the
    /// partition), then by run.
    pub units: BTreeMap<Option<String>, BTreeMap<String, Folder>>,
    /// Objects under the table's folder that are in no export folder.
    pub strays: Vec<ObjectInfo>,
}

/// A dataset's folder in the destination, as listed.
#[derive(Debug, Default)]
pub struct ListedDataset {
    pub name: String,
    pub tables: BTreeMap<String, ListedTable>,
    /// Objects right in the dataset's folder, in no table's.
    pub strays: Vec<ObjectInfo>,
    /// Every object listed, by key: where manifests' files are looked up.
    pub objects: HashMap<String, ObjectInfo>,
}

impl ListedDataset {
    /// Groups the listing of `DATASET/`, keeping the tables `filters` select.
    pub fn group(name: &str, listed: Vec<ObjectInfo>, filters: &Filters) -> ListedDataset {
        let mut dataset = ListedDataset {
            name: name.to_string(),
            ..ListedDataset::default()
        };
        let folder = format!("{name}/");
        for object in listed {
            let Some(rest) = object.key.strip_prefix(&folder) else {
                continue;
            };
            let Some((table, _)) = rest.split_once('/') else {
                if filters.is_empty() {
                    dataset.strays.push(object);
                }
                continue;
            };
            if !filters.select(name, table) {
                continue;
            }
            let listed_table = dataset.tables.entry(table.to_string()).or_default();
            dataset.objects.insert(object.key.clone(), object.clone());
            let Some(path) = ExportPath::parse(name, &object.key) else {
                listed_table.strays.push(object);
                continue;
            };
            let folder = listed_table
                .units
                .entry(path.partition.map(str::to_string))
                .or_default()
                .entry(path.run.to_string())
                .or_insert_with(|| Folder {
                    key: object.key[..object.key.len() - path.file.len()].to_string(),
                    run: path.run.to_string(),
                    files: Vec::new(),
                    manifest: None,
                    definition: None,
                });
            if path.is_manifest() {
                folder.manifest = Some(object);
            } else if path.is_definition() {
                folder.definition = Some(object);
            } else {
                folder.files.push(object);
            }
        }
        dataset
    }

    /// Whether anything in it is laid out as bqdrain lays out exports: a
    /// folder that is not (`logs/` beside the datasets) is no dataset's.
    pub fn has_exports(&self) -> bool {
        self.tables.values().any(|t| !t.units.is_empty())
    }
}

/// A committed export: a folder and the record its files were committed with.
#[derive(Debug, Clone)]
pub struct Export {
    pub table: String,
    pub partition: Option<String>,
    pub folder: Folder,
    pub record: TableManifest,
    /// The run's completion record, read because the folder has no
    /// `_MANIFEST.json`.
    pub record_key: Option<String>,
    /// How its files were written: its record's options, or for a record of
    /// an earlier version its run's; `None` when neither is known.
    pub options: Option<ExportOptions>,
    /// Every file its record names is there, with its size and checksum.
    pub intact: bool,
}

impl Export {
    /// The engine's order of exports of one unit: the newest is greatest.
    fn order(&self) -> (Option<DateTime<Utc>>, &str) {
        (self.record.run_started_at, &self.record.run_id)
    }

    pub fn run(&self) -> &str {
        &self.folder.run
    }
}

/// A table of the destination once checked: what stands for it.
#[derive(Debug)]
pub struct CheckedTable {
    pub name: String,
    /// The export that stands for each current unit: the whole table's, or
    /// each partition's.
    pub current: Vec<Export>,
    /// Exported per partition.
    pub split: bool,
    /// A run still in progress is writing an export of it.
    pub in_progress: bool,
}

/// Run state and run manifests of the runs a check needs, each read once.
pub struct Runs<'a> {
    store: &'a dyn ObjectStore,
    states: HashMap<String, Option<RunState>>,
    manifests: HashMap<String, Option<RunManifest>>,
}

/// A run's progress: units settled of units expected.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub settled: usize,
    pub expected: usize,
}

impl<'a> Runs<'a> {
    pub fn new(store: &'a dyn ObjectStore) -> Runs<'a> {
        Runs {
            store,
            states: HashMap::new(),
            manifests: HashMap::new(),
        }
    }

    /// The run's state (one read of its manifest and three listings of its
    /// records); `None` when it has no run manifest (expired, or never).
    async fn state(&mut self, run: &str) -> anyhow::Result<Option<&RunState>> {
        if !self.states.contains_key(run) {
            let state = RunState::load(self.store, run, false).await?;
            self.states.insert(run.to_string(), state);
        }
        Ok(self.states[run].as_ref())
    }

    /// Where the run stands if it is still in progress: some unit it
    /// planned is neither exported, dead-lettered nor superseded.
    async fn in_progress(&mut self, run: &str) -> anyhow::Result<Option<Progress>> {
        Ok(self.state(run).await?.and_then(|state| {
            let totals = state.totals();
            (totals.pending > 0).then_some(Progress {
                settled: totals.expected - totals.pending,
                expected: totals.expected,
            })
        }))
    }

    /// The options of the run (for records of earlier versions, which do not
    /// keep their own): one read of its manifest.
    async fn options(&mut self, run: &str) -> anyhow::Result<Option<ExportOptions>> {
        if let Some(Some(state)) = self.states.get(run) {
            return Ok(Some(state.manifest.options.clone()));
        }
        if !self.manifests.contains_key(run) {
            let manifest = self
                .store
                .read(&layout::run_manifest(run))
                .await?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            self.manifests.insert(run.to_string(), manifest);
        }
        Ok(self.manifests[run].as_ref().map(|m| m.options.clone()))
    }
}

/// The record of a folder's `_MANIFEST.json`: from the listing's summary,
/// else read. `Err` says why it is not a usable record.
async fn folder_record(
    store: &dyn ObjectStore,
    folder: &Folder,
    manifest: &ObjectInfo,
) -> anyhow::Result<Result<TableManifest, String>> {
    let parsed = match &manifest.summary {
        Some(summary) => serde_json::from_str::<TableManifest>(summary).map_err(|e| e.to_string()),
        None => match store.read(&manifest.key).await? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
            None => Err("it was deleted while verify ran".to_string()),
        },
    };
    Ok(parsed.and_then(|record| {
        if record.run_id == folder.run {
            Ok(record)
        } else {
            Err(format!(
                "it names run {}, not the folder's run {}",
                record.run_id, folder.run
            ))
        }
    }))
}

/// What one folder turned out to be.
enum Found {
    Committed(Box<Export>),
    /// Being written by a run in progress.
    InProgress,
    /// Reported: a bad manifest, or an export no run will commit.
    Reported,
}

/// Checks one dataset's folder: every export folder, the export that
/// stands for each unit, each table's layout and format, every file the
/// standing exports' records name. Returns the tables with what stands.
pub async fn check(
    store: &dyn ObjectStore,
    listed: &ListedDataset,
    runs: &mut Runs<'_>,
    at: &Where,
    findings: &mut Findings,
) -> anyhow::Result<Vec<CheckedTable>> {
    let dataset = &listed.name;
    for stray in &listed.strays {
        stray_object(stray, "right in the dataset's folder", at, findings);
    }
    let mut checked = Vec::new();
    for (table, listed_table) in &listed.tables {
        for stray in &listed_table.strays {
            stray_object(stray, "in no export folder of the table", at, findings);
        }
        // Manifests first, several at a time; folders without one need
        // their run's state, read once per run.
        let folders: Vec<(&Option<String>, &Folder)> = listed_table
            .units
            .iter()
            .flat_map(|(unit, folders)| folders.values().map(move |f| (unit, f)))
            .collect();
        let records: Vec<Option<Result<TableManifest, String>>> = stream::iter(&folders)
            .map(|(_, folder)| async move {
                match &folder.manifest {
                    Some(manifest) => folder_record(store, folder, manifest).await.map(Some),
                    None => Ok(None),
                }
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut units: BTreeMap<Option<String>, Vec<Export>> = BTreeMap::new();
        let mut in_progress = false;
        for ((partition, folder), record) in folders.into_iter().zip(records) {
            let unit = unit_name(dataset, table, partition.as_deref());
            let found = match record {
                Some(Ok(record)) => Found::Committed(Box::new(Export {
                    table: table.clone(),
                    partition: partition.clone(),
                    folder: folder.clone(),
                    record,
                    record_key: None,
                    options: None,
                    intact: false,
                })),
                Some(Err(why)) => {
                    findings.add(
                        Kind::BadManifest,
                        &folder.key,
                        format!("run {}'s export of {unit} has a _MANIFEST.json that is no usable record: {why}", folder.run),
                        reexport(dataset, table, partition.is_some()),
                    );
                    Found::Reported
                }
                None => {
                    without_manifest(store, runs, dataset, table, partition, folder, at, findings)
                        .await?
                }
            };
            match found {
                Found::Committed(export) => {
                    units.entry(partition.clone()).or_default().push(*export)
                }
                Found::InProgress => in_progress = true,
                Found::Reported => {}
            }
        }
        let mut current =
            standing(runs, dataset, table, units, at, findings, &mut in_progress).await?;
        for export in &mut current {
            export.options = match &export.record.options {
                Some(options) => Some(options.clone()),
                None => runs.options(export.run()).await?,
            };
            // A run writes an export's manifest right after its completion
            // record: while it runs, one may be missing for a moment.
            let settling = match export.record_key {
                Some(_) => runs.in_progress(export.run()).await?,
                None => None,
            };
            export.intact = check_files(export, listed, dataset, settling, at, findings);
        }
        check_format(dataset, table, &current, findings);
        checked.push(CheckedTable {
            name: table.clone(),
            split: current.iter().any(|e| e.partition.is_some()),
            current,
            in_progress,
        });
    }
    Ok(checked)
}

fn stray_object(object: &ObjectInfo, where_: &str, at: &Where, findings: &mut Findings) {
    findings.add(
        Kind::StrayObject,
        &object.key,
        format!("an object {where_}: no export holds it"),
        format!("delete object {}", at.uri(&object.key)),
    );
}

/// A folder without `_MANIFEST.json`: a committed export that lost it (its
/// run has a completion record for the unit), an export its run is still
/// writing, or one no run will commit.
#[allow(clippy::too_many_arguments)]
async fn without_manifest(
    store: &dyn ObjectStore,
    runs: &mut Runs<'_>,
    dataset: &str,
    table: &str,
    partition: &Option<String>,
    folder: &Folder,
    at: &Where,
    findings: &mut Findings,
) -> anyhow::Result<Found> {
    let unit = unit_name(dataset, table, partition.as_deref());
    let run = &folder.run;
    let progress = runs.in_progress(run).await?;
    let Some(state) = runs.state(run).await? else {
        findings.add(
            Kind::UnfinishedExport,
            &folder.key,
            format!(
                "an export of {unit} with no _MANIFEST.json, by run {run}, which has no run \
                 manifest (expired or never written): nothing will commit it"
            ),
            format!("delete folder {}", at.uri(&folder.key)),
        );
        return Ok(Found::Reported);
    };
    let planned = state
        .manifest
        .units
        .iter()
        .zip(&state.units)
        .find(|(p, _)| {
            p.source.dataset == dataset
                && p.source.table == table
                && p.source.partition.as_deref() == partition.as_deref()
        });
    let (settled_as, done_key) = match planned {
        Some((planned, status)) => (Some(&status.state), layout::done_record(run, &planned.unit)),
        None => (None, String::new()),
    };
    if let Some(UnitState::Exported { .. }) = settled_as {
        let record = store
            .read(&done_key)
            .await?
            .and_then(|bytes| serde_json::from_slice::<TableManifest>(&bytes).ok());
        if let Some(record) = record {
            return Ok(Found::Committed(Box::new(Export {
                table: table.to_string(),
                partition: partition.clone(),
                folder: folder.clone(),
                record,
                record_key: Some(done_key),
                options: None,
                intact: false,
            })));
        }
    }
    if let Some(progress) = progress {
        findings.note(
            NoteKind::InProgress,
            &folder.key,
            format!(
                "run {run} is still in progress ({} of {} units settled) and has not committed \
                 this export of {unit} yet; verify again once it completes",
                progress.settled, progress.expected
            ),
        );
        return Ok(Found::InProgress);
    }
    let why = match settled_as {
        None => format!("run {run} did not plan {unit}"),
        Some(UnitState::DeadLettered { .. }) => format!("run {run} dead-lettered {unit}"),
        Some(UnitState::Superseded { .. }) => {
            format!("a newer run's export of {unit} superseded run {run}'s")
        }
        Some(_) => format!("run {run} has ended"),
    };
    findings.add(
        Kind::UnfinishedExport,
        &folder.key,
        format!("an export of {unit} with no _MANIFEST.json nor completion record: {why}, so nothing will commit it"),
        format!("delete folder {}", at.uri(&folder.key)),
    );
    Ok(Found::Reported)
}

/// The export that stands for each current unit of a table: the newest
/// committed export of each unit, of the layout (whole or partitions) of
/// the newest of them. Reports the others, unless the run that replaces
/// them is still in progress (it deletes what it replaces as it settles).
async fn standing(
    runs: &mut Runs<'_>,
    dataset: &str,
    table: &str,
    units: BTreeMap<Option<String>, Vec<Export>>,
    at: &Where,
    findings: &mut Findings,
    in_progress: &mut bool,
) -> anyhow::Result<Vec<Export>> {
    let mut newest: Vec<Export> = Vec::new();
    for (partition, mut exports) in units {
        exports.sort_by(|a, b| a.order().cmp(&b.order()));
        let Some(last) = exports.pop() else {
            continue;
        };
        let unit = unit_name(dataset, table, partition.as_deref());
        for older in exports {
            if let Some(progress) = runs.in_progress(last.run()).await? {
                *in_progress = true;
                findings.note(
                    NoteKind::InProgress,
                    &older.folder.key,
                    format!(
                        "run {}'s export of {unit} is replaced by run {}'s, which is still in \
                         progress ({} of {} units settled) and deletes it as it settles",
                        older.run(),
                        last.run(),
                        progress.settled,
                        progress.expected
                    ),
                );
                continue;
            }
            let formats = match (&older.record.options, &last.record.options) {
                (Some(a), Some(b)) if a != b => format!(
                    " (written as {}, the standing one as {})",
                    describe(a),
                    describe(b)
                ),
                _ => String::new(),
            };
            findings.add(
                Kind::LeftoverExport,
                &older.folder.key,
                format!(
                    "run {}'s export of {unit} stands beside run {}'s, which replaces it{formats}",
                    older.run(),
                    last.run()
                ),
                format!(
                    "delete folder {} (a leftover of run {})",
                    at.uri(&older.folder.key),
                    older.run()
                ),
            );
        }
        newest.push(last);
    }
    let (whole, parts): (Vec<Export>, Vec<Export>) =
        newest.into_iter().partition(|e| e.partition.is_none());
    if whole.is_empty() || parts.is_empty() {
        return Ok(if whole.is_empty() { parts } else { whole });
    }
    // Both layouts stand: the newest export says which the table has now.
    let latest_part = parts
        .iter()
        .max_by(|a, b| a.order().cmp(&b.order()))
        .expect("parts is not empty");
    let whole_is_newer = whole[0].order() > latest_part.order();
    let winner = if whole_is_newer {
        &whole[0]
    } else {
        latest_part
    };
    let winner_run = winner.run().to_string();
    let (keep, drop) = if whole_is_newer {
        (whole, parts)
    } else {
        (parts, whole)
    };
    let progress = runs.in_progress(&winner_run).await?;
    for old in &drop {
        // A partition's folder holds all its runs' exports; the whole
        // table's holds the partitions' too, so only its run folder goes.
        let (folder, what) = match &old.partition {
            Some(p) => (
                format!("{dataset}/{table}/partition={p}/"),
                format!("partition {p}, exported by run {}", old.run()),
            ),
            None => (
                old.folder.key.clone(),
                format!("the whole table, exported by run {}", old.run()),
            ),
        };
        let layout = if whole_is_newer {
            "whole"
        } else {
            "per partition"
        };
        if let Some(progress) = progress {
            *in_progress = true;
            findings.note(
                NoteKind::InProgress,
                &folder,
                format!(
                    "{dataset}.{table} has {what}, and run {winner_run}, still in progress ({} of \
                     {} units settled), is exporting it {layout}",
                    progress.settled, progress.expected
                ),
            );
            continue;
        }
        findings.add(
            Kind::MixedLayout,
            &folder,
            format!(
                "{dataset}.{table} has {what}, beside the export{} run {winner_run} made of it \
                 {layout} since: its files hold some rows twice",
                if whole_is_newer { "" } else { "s" }
            ),
            format!(
                "delete folder {} (a leftover of the table's earlier layout)",
                at.uri(&folder)
            ),
        );
    }
    Ok(keep)
}

/// Checks the standing export's files against its record: each one there
/// with its size, and its checksum where both have one; nothing else in
/// its folder; its manifest beside them. Returns whether its files are
/// intact.
fn check_files(
    export: &Export,
    listed: &ListedDataset,
    dataset: &str,
    settling: Option<Progress>,
    at: &Where,
    findings: &mut Findings,
) -> bool {
    let unit = unit_name(dataset, &export.table, export.partition.as_deref());
    let run = export.run();
    let named_by = if export.record_key.is_some() {
        "its completion record (its folder has no _MANIFEST.json)"
    } else {
        "its _MANIFEST.json"
    };
    let fix = reexport(dataset, &export.table, export.partition.is_some());
    let mut intact = true;
    for file in &export.record.files {
        let Some(object) = listed.objects.get(&file.key) else {
            intact = false;
            findings.add(
                Kind::MissingFile,
                &file.key,
                format!("run {run}'s export of {unit} lacks this file, which {named_by} names"),
                fix.clone(),
            );
            continue;
        };
        if object.size != file.bytes {
            intact = false;
            findings.add(
                Kind::SizeMismatch,
                &file.key,
                format!(
                    "{} bytes, where {named_by} (run {run}'s export of {unit}) says {}",
                    object.size, file.bytes
                ),
                fix.clone(),
            );
        } else if let (Some(listed), Some(recorded)) = (&object.checksum, &file.checksum) {
            if listed != recorded {
                intact = false;
                findings.add(
                    Kind::ChecksumMismatch,
                    &file.key,
                    format!(
                        "its CRC32C is {listed}, where {named_by} (run {run}'s export of {unit}) \
                         says {recorded}: same size, other bytes"
                    ),
                    fix.clone(),
                );
            }
        }
    }
    if export.folder.definition.is_none() {
        findings.add(
            Kind::MissingDefinition,
            &format!("{}_TABLE.json", export.folder.key),
            format!(
                "run {run}'s export of {unit} has no _TABLE.json: a restore would not know the \
                 table's columns, partitioning or clustering"
            ),
            fix.clone(),
        );
    }
    let named: HashSet<&str> = export.record.files.iter().map(|f| f.key.as_str()).collect();
    for object in &export.folder.files {
        if !named.contains(object.key.as_str()) {
            findings.add(
                Kind::UnlistedFile,
                &object.key,
                format!(
                    "a file in run {run}'s export of {unit} that {named_by} does not name: readers \
                     of the folder would take its rows for the table's"
                ),
                format!("delete object {}", at.uri(&object.key)),
            );
        }
    }
    match (&export.record_key, intact, settling) {
        (Some(_), true, Some(progress)) => findings.note(
            NoteKind::InProgress,
            &export.folder.key,
            format!(
                "run {run} committed this export of {unit} and, still in progress ({} of {} \
                 units settled), has yet to write its _MANIFEST.json",
                progress.settled, progress.expected
            ),
        ),
        (Some(record_key), true, None) => missing_manifest(export, record_key, &unit, at, findings),
        _ => {}
    }
    intact
}

/// A committed export with every file, whose folder lost its manifest: the
/// completion record is the same document.
fn missing_manifest(
    export: &Export,
    record_key: &str,
    unit: &str,
    at: &Where,
    findings: &mut Findings,
) {
    let run = export.run();
    let manifest = format!("{}_MANIFEST.json", export.folder.key);
    findings.add(
        Kind::MissingManifest,
        &export.folder.key,
        format!(
            "run {run}'s committed export of {unit} has every file its completion record \
             names, but no _MANIFEST.json"
        ),
        format!(
            "copy {} to {} (the completion record is the manifest)",
            at.uri(record_key),
            at.uri(&manifest)
        ),
    );
}

/// How files were written, as people read it: what tells two tables'
/// exports apart (a view's byte cap does not).
pub fn describe(options: &ExportOptions) -> String {
    let mut out = options.format.name().to_string();
    if options.compression != Compression::None {
        out += &format!(" {}", options.compression.name());
    }
    if options.format == Format::Csv {
        out += if options.header {
            " with header"
        } else {
            " without header"
        };
        out += &format!(", delimiter {:?}", options.field_delimiter);
    }
    out
}

/// One format per table: its current exports all written the same way.
fn check_format(dataset: &str, table: &str, current: &[Export], findings: &mut Findings) {
    let mut ways: BTreeMap<String, Vec<&Export>> = BTreeMap::new();
    for export in current {
        if let Some(options) = &export.options {
            ways.entry(describe(options)).or_default().push(export);
        }
    }
    if ways.len() < 2 {
        return;
    }
    let listed: Vec<String> = ways
        .iter()
        .map(|(way, exports)| {
            let e = exports[0];
            format!(
                "{way} ({} unit(s), such as run {}'s export of {})",
                exports.len(),
                e.run(),
                unit_name(dataset, table, e.partition.as_deref())
            )
        })
        .collect();
    let split = current.iter().any(|e| e.partition.is_some());
    findings.add(
        Kind::MixedFormat,
        &format!("{dataset}/{table}/"),
        format!(
            "the current exports of {dataset}.{table} were written in {} ways: {}",
            ways.len(),
            listed.join("; ")
        ),
        format!(
            "re-export {dataset}.{table} with one set of options: run the producer with \
             --include {dataset}.{table}{} and the format every export of it should have, \
             without --only-changed",
            if split { " --partitions" } else { "" }
        ),
    );
}
