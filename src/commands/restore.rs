//! `bqdrain restore`: a destination's current exports loaded back into a
//! warehouse, through the same queue and workers as exports. It plans from
//! the exports (one unit per committed export: a whole table, a partition,
//! a view), checks the target before anything is published (an existing
//! table is refused unless `--if-exists` says otherwise), writes a run
//! manifest and publishes one restore message per unit. On the embedded
//! backends it also drains the run with local worker processes, so that
//! one command restores.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;

use crate::adapters::backends;
use crate::adapters::local::load;
use crate::adapters::local::queue::QueueUri;
use crate::adapters::local::store::FsStore;
use crate::adapters::local::warehouse::LocalWarehouse;
use crate::commands::local_workers::LocalWorkers;
use crate::commands::status::run_status;
use crate::contract::message::{RestoreTarget, SourceTable, SCHEMA_VERSION};
use crate::engine::layout::{self, PlannedUnit, RunManifest, SkippedTable, TableManifest};
use crate::engine::ownership::DatasetOwner;
use crate::engine::producer::{self, Filters};
use crate::engine::runs::UnitState;
use crate::engine::selection;
use crate::error::ConfigError;
use crate::ports::definition::TableDefinition;
use crate::ports::store::ObjectStore;
use crate::ports::warehouse::Warehouse;

/// What to do with a target table that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IfExists {
    /// Refuse the whole restore, naming every such table.
    #[default]
    Fail,
    /// Leave it as it is, and restore the others.
    Skip,
    /// Replace it: a whole table is dropped and made again from its
    /// definition; a partition unit replaces that partition's rows only.
    Replace,
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// `DEST[/DATASET[/TABLE[$PARTITION]]]`.
    pub from: String,
    /// `sqlite://PATH`, `bigquery://PROJECT` or `bigquery://PROJECT/DATASET`.
    pub to: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// `FROM=TO` dataset renames, for a `bigquery://PROJECT` target.
    pub dataset_map: Vec<String>,
    pub if_exists: IfExists,
    /// Where to publish; without it, a queue of the restore's own that
    /// local workers drain.
    pub topic: Option<String>,
    pub run_id: Option<String>,
    /// Local worker processes that drain the run (`queue://` only); `None`
    /// is 4 without `--topic`, none with one.
    pub workers: Option<usize>,
    /// Show a live progress line while local workers drain.
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub run_id: String,
    pub from: String,
    pub to: String,
    /// The store holding the exports and the restore run's records.
    pub destination: String,
    /// Tables (and views) the run restores.
    pub tables: usize,
    pub units: usize,
    /// Tables left out, with why (`--if-exists skip`).
    pub skipped: Vec<SkippedTable>,
    /// Where the messages went.
    pub topic: String,
    /// Local worker processes that drained the run (0: none here).
    pub tasks: usize,
    pub failed_tasks: usize,
    /// What the drain did, when local workers drained the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RestoreOutcome>,
    pub seconds: f64,
    /// Every unit restored (or, when published only, published).
    pub ok: bool,
}

/// What local workers did with the run.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    pub restored: usize,
    pub dead_lettered: usize,
    pub pending: usize,
    pub rows: u64,
    /// Each dead-lettered unit with its reason.
    pub dead: Vec<SkippedTable>,
    /// The task logs, kept when something failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<PathBuf>,
    /// The commands that load the dead-lettered units again once their
    /// cause is fixed: replay them, then drain them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retry: Vec<String>,
}

/// One unit to restore, as planned.
struct Unit {
    dataset: String,
    /// The exported unit's source, which names its folder.
    source: SourceTable,
    exported: TableManifest,
    target_dataset_uri: String,
    /// Its table exists in the target and `--if-exists replace` replaces it.
    replaces: bool,
}

pub async fn run(opts: &RestoreOptions, worker_exe: &Path) -> anyhow::Result<RestoreReport> {
    let started = Instant::now();
    let run_id = match &opts.run_id {
        Some(id) => {
            producer::check_run_id(id)?;
            id.clone()
        }
        None => producer::new_run_id(),
    };
    let filters = Filters::new(&opts.include, &opts.exclude)?;
    let from = Origin::locate(&opts.from).await?;
    let store = from.store.as_ref();
    if store.read(&layout::run_manifest(&run_id)).await?.is_some() {
        return Err(ConfigError::new(
            "--run-id",
            format!("run {run_id} already exists in {}", store.uri()),
            "leave --run-id out to start a new run, or give another id",
        )
        .into());
    }
    let target = Target::parse(&opts.to, &opts.dataset_map, &from.datasets)?;
    if target.local.is_some() && !FsStore::is_local(store.uri()) {
        return Err(ConfigError::new(
            "--to",
            format!(
                "a sqlite:// target loads exports from file:// folders only, not {}",
                store.uri()
            ),
            "restore into bigquery://PROJECT[/DATASET], or copy the exports to a folder first",
        )
        .into());
    }
    let topic_uri = match &opts.topic {
        Some(topic) => topic.clone(),
        None if target.local.is_some() => String::new(),
        None => {
            return Err(ConfigError::new(
                "--topic",
                "a BigQuery restore is published to the work topic its workers drain",
                "give --topic pubsub://projects/P/topics/T",
            )
            .into())
        }
    };
    let workers = opts
        .workers
        .unwrap_or(if opts.topic.is_none() { 4 } else { 0 });
    if workers > 0 && !topic_uri.is_empty() && !QueueUri::is_local(&topic_uri) {
        return Err(ConfigError::new(
            "--workers",
            format!("local workers drain queue:// topics only, not {topic_uri}"),
            "leave --workers out and start the worker job (bqdrain work) on the subscription",
        )
        .into());
    }

    let mut units = Vec::new();
    for dataset in &from.datasets {
        let current = selection::current_exports(store, dataset).await?;
        for (source, exported) in current_units(&from, dataset, current) {
            if !filters.select(dataset, &source.table) || !from.selects(&source) {
                continue;
            }
            units.push(Unit {
                dataset: dataset.clone(),
                target_dataset_uri: target.dataset_uri(dataset),
                source,
                exported,
                replaces: false,
            });
        }
    }
    from.check_found(&units)?;
    let several = from.datasets.len() > 1;
    let skipped = check_targets(&target, &mut units, opts.if_exists).await?;

    // Nothing is written before this point but the restore's scratch
    // folder: its own queue, if it has one, and its tasks' logs.
    let scratch = std::env::temp_dir().join(format!("bqdrain-restore-{run_id}"));
    let topic_uri = match opts.topic {
        None => format!("queue://{}#work", scratch.join("queue.db").display()),
        Some(_) => topic_uri,
    };
    let topic = backends::open_topic(&topic_uri, "--topic").await?;
    if let Some(path) = &target.local {
        create_dataset_file(path)?;
        let definitions = definitions(store, &units).await?;
        load::create_absent_tables(path, &definitions)?;
    }
    let created_at = Utc::now();
    let tables: BTreeSet<(String, String)> = units
        .iter()
        .map(|u| (u.dataset.clone(), u.source.table.clone()))
        .collect();
    let manifest = RunManifest {
        v: SCHEMA_VERSION,
        run_id: run_id.clone(),
        created_at,
        source: format!("restore of {} into {}", opts.from, opts.to),
        sources: from.owners.values().cloned().collect(),
        destination: store.uri().to_string(),
        options: Default::default(),
        units: planned_units(&units, several),
        skipped: skipped.clone(),
        unchanged: Vec::new(),
        gone: Vec::new(),
        partly_covered: Vec::new(),
        retired: Vec::new(),
    };
    producer::write_run_manifest(&manifest, store).await?;
    let planned: Vec<&PlannedUnit> = manifest.units.iter().collect();
    let published = producer::publish(&manifest, &planned, topic.as_ref(), store).await?;
    tracing::info!(run_id, published, "restore published");

    let mut report = RestoreReport {
        run_id: run_id.clone(),
        from: opts.from.clone(),
        to: opts.to.clone(),
        destination: store.uri().to_string(),
        tables: tables.len(),
        units: published,
        skipped,
        topic: topic_uri.clone(),
        tasks: workers,
        failed_tasks: 0,
        outcome: None,
        seconds: 0.0,
        ok: true,
    };
    // No more tasks than units: the others would find nothing to do.
    report.tasks = workers.min(published);
    if report.tasks > 0 {
        let logs = scratch.join("logs");
        let drain = LocalDrain {
            exe: worker_exe,
            store,
            run_id: &run_id,
            topic: &topic_uri,
            logs: &logs,
        };
        let (failed_tasks, outcome) = drain.run(report.tasks, opts.progress, started).await?;
        report.failed_tasks = failed_tasks;
        report.ok = failed_tasks == 0 && outcome.restored == published;
        report.outcome = Some(outcome);
    }
    // The scratch folder is done with, unless its logs tell of a failure
    // and its queue holds the dead letters to replay.
    if report.ok {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A restore run drained by local worker processes on its `queue://` topic.
struct LocalDrain<'a> {
    exe: &'a Path,
    store: &'a dyn ObjectStore,
    run_id: &'a str,
    topic: &'a str,
    /// Where the tasks' logs go; kept only when something failed.
    logs: &'a Path,
}

impl LocalDrain<'_> {
    /// Drains the run with `tasks` workers; returns how many failed, and
    /// what the run's records say.
    async fn run(
        &self,
        tasks: usize,
        progress: bool,
        started: Instant,
    ) -> anyhow::Result<(usize, RestoreOutcome)> {
        let (store, run_id) = (self.store, self.run_id);
        let queue = QueueUri::parse(self.topic, "--topic")?;
        let subscription = format!(
            "queue://{}?dead_letter=dead#{}",
            queue.path.display(),
            queue.name
        );
        let workers = LocalWorkers {
            exe: self.exe,
            subscription: &subscription,
            destination: store.uri(),
            tasks,
            logs: self.logs,
            progress,
            started,
        };
        let failed_tasks = workers.drain(store, run_id, "").await?;
        let status = run_status(store, run_id).await?;
        let t = status.totals;
        let dead: Vec<SkippedTable> = status
            .units
            .iter()
            .filter_map(|u| match &u.state {
                UnitState::DeadLettered { record } => Some(SkippedTable {
                    table: u.unit.clone(),
                    reason: record
                        .as_ref()
                        .map_or_else(|| "dead-lettered".to_string(), |r| r.message.clone()),
                }),
                _ => None,
            })
            .collect();
        let retry = if dead.is_empty() {
            Vec::new()
        } else {
            vec![
                format!(
                    "bqdrain replay --from '{}' --to '{}' --run-id {run_id}",
                    queue.sibling("dead"),
                    self.topic
                ),
                format!(
                    "bqdrain work --subscription '{subscription}' --run-id {run_id} \
                     --destination {}",
                    store.uri()
                ),
            ]
        };
        let failed = failed_tasks > 0 || t.exported < t.expected;
        Ok((
            failed_tasks,
            RestoreOutcome {
                restored: t.exported,
                dead_lettered: t.dead_lettered,
                pending: t.pending,
                rows: status.rows,
                dead,
                logs: failed.then(|| self.logs.to_path_buf()),
                retry,
            },
        ))
    }
}

/// `--from`: the store root, and the dataset, table and partition it may
/// name after the root.
struct Origin {
    store: Arc<dyn ObjectStore>,
    /// The datasets restored, sorted.
    datasets: Vec<String>,
    /// Each dataset's source, from its owner record.
    owners: BTreeMap<String, String>,
    table: Option<String>,
    partition: Option<String>,
}

impl Origin {
    /// Finds the root: the longest of `--from`, less up to its last two
    /// segments, whose store records which datasets it holds.
    async fn locate(uri: &str) -> anyhow::Result<Origin> {
        let trimmed = uri.trim_end_matches('/');
        let mut root = trimmed.to_string();
        let mut rest: Vec<String> = Vec::new();
        for _ in 0..3 {
            let store = backends::open_store(&root, "--from").await?;
            let owners = owners(store.as_ref()).await?;
            if !owners.is_empty() {
                return Origin::named(store, owners, rest, uri);
            }
            let Some((parent, last)) = root.rsplit_once('/') else {
                break;
            };
            if parent.ends_with(':') || parent.ends_with('/') {
                break;
            }
            rest.insert(0, last.to_string());
            root = parent.to_string();
        }
        Err(ConfigError::new(
            "--from",
            format!("{uri} holds no exports: no _bqdrain/datasets/ records in it or its parents"),
            "give the --destination the exports were written to, e.g. file://demo/exports, \
             optionally followed by /DATASET or /DATASET/TABLE",
        )
        .into())
    }

    fn named(
        store: Arc<dyn ObjectStore>,
        owners: BTreeMap<String, String>,
        rest: Vec<String>,
        uri: &str,
    ) -> anyhow::Result<Origin> {
        let mut datasets: Vec<String> = owners.keys().cloned().collect();
        let mut table = None;
        let mut partition = None;
        if let Some(dataset) = rest.first() {
            if !owners.contains_key(dataset) {
                return Err(ConfigError::new(
                    "--from",
                    format!("{uri}: {} holds no dataset {dataset}", store.uri()),
                    format!("name one of: {}", datasets.join(", ")),
                )
                .into());
            }
            datasets = vec![dataset.clone()];
        }
        if let Some(unit) = rest.get(1) {
            let (t, p) = layout::table_and_partition("", unit);
            table = Some(t.to_string());
            partition = p.map(str::to_string);
        }
        Ok(Origin {
            store,
            owners: owners
                .into_iter()
                .filter(|(d, _)| datasets.contains(d))
                .collect(),
            datasets,
            table,
            partition,
        })
    }

    fn selects(&self, source: &SourceTable) -> bool {
        self.table.as_ref().is_none_or(|t| *t == source.table)
            && self
                .partition
                .as_ref()
                .is_none_or(|p| source.partition.as_ref() == Some(p))
    }

    /// Refuses a `--from` table or partition with no current export.
    fn check_found(&self, units: &[Unit]) -> Result<(), ConfigError> {
        let Some(table) = &self.table else {
            return Ok(());
        };
        if !units.is_empty() {
            return Ok(());
        }
        let what = match &self.partition {
            Some(p) => format!("partition {p} of table {table}"),
            None => format!("table {table}"),
        };
        Err(ConfigError::new(
            "--from",
            format!(
                "{} has no current export of {what} in dataset {} (or --include/--exclude leave \
                 it out)",
                self.store.uri(),
                self.datasets.join(", ")
            ),
            "check the name: `bqdrain verify --destination DEST` lists what the destination holds",
        ))
    }
}

/// The datasets a store holds, by name, with their source URIs.
async fn owners(store: &dyn ObjectStore) -> anyhow::Result<BTreeMap<String, String>> {
    let prefix = format!("{}/datasets/", layout::META);
    let mut owners = BTreeMap::new();
    for object in store.list(&prefix).await? {
        let Some(dataset) = layout::unit_of_record(&prefix, &object.key) else {
            continue;
        };
        let source = match store.read(&object.key).await? {
            Some(bytes) => serde_json::from_slice::<DatasetOwner>(&bytes)
                .map(|o| o.source)
                .unwrap_or_default(),
            None => continue,
        };
        owners.insert(dataset.to_string(), source);
    }
    Ok(owners)
}

/// A dataset's current exports as the units to restore: each table's
/// newest export, a whole table's or its partitions' (for a moment after
/// a table switched, both stand: the newer run's wins).
fn current_units(
    from: &Origin,
    dataset: &str,
    current: HashMap<String, TableManifest>,
) -> Vec<(SourceTable, TableManifest)> {
    let dataset_uri = from.owners.get(dataset).cloned().unwrap_or_default();
    let mut by_table: BTreeMap<String, Vec<(Option<String>, TableManifest)>> = BTreeMap::new();
    for (unit, manifest) in current {
        let (table, partition) = layout::table_and_partition(dataset, &unit);
        by_table
            .entry(table.to_string())
            .or_default()
            .push((partition.map(str::to_string), manifest));
    }
    let mut units = Vec::new();
    for (table, mut exports) in by_table {
        let newest = |m: &TableManifest| (m.run_started_at, m.run_id.clone());
        let whole = exports
            .iter()
            .filter(|(p, _)| p.is_none())
            .map(|(_, m)| newest(m))
            .max();
        let parts = exports
            .iter()
            .filter(|(p, _)| p.is_some())
            .map(|(_, m)| newest(m))
            .max();
        let keep_whole = match (whole, parts) {
            (Some(w), Some(p)) => w > p,
            (whole, _) => whole.is_some(),
        };
        exports.retain(|(p, _)| p.is_none() == keep_whole);
        exports.sort_by(|a, b| a.0.cmp(&b.0));
        for (partition, manifest) in exports {
            let source = SourceTable {
                dataset_uri: dataset_uri.clone(),
                project: String::new(),
                dataset: dataset.to_string(),
                table: table.clone(),
                partition,
                view: false,
            };
            units.push((source, manifest));
        }
    }
    units
}

/// `--to` with `--dataset-map`.
struct Target {
    uri: String,
    /// The SQLite file of a `sqlite://` target.
    local: Option<PathBuf>,
    /// A `bigquery://PROJECT` target: each dataset into its own.
    project: Option<String>,
    map: HashMap<String, String>,
}

impl Target {
    fn parse(to: &str, dataset_map: &[String], datasets: &[String]) -> Result<Target, ConfigError> {
        let mut map = HashMap::new();
        for pair in dataset_map {
            let Some((from, to)) = pair.split_once('=') else {
                return Err(ConfigError::new(
                    "--dataset-map",
                    format!("{pair:?} is not FROM=TO"),
                    "write it as FROM=TO, e.g. --dataset-map sales=sales_restored",
                ));
            };
            if !datasets.iter().any(|d| d == from) {
                return Err(ConfigError::new(
                    "--dataset-map",
                    format!("{from:?} is not a dataset this restore takes"),
                    format!("map one of: {}", datasets.join(", ")),
                ));
            }
            let dataset_name =
                !to.is_empty() && to.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !dataset_name {
                return Err(ConfigError::new(
                    "--dataset-map",
                    format!("{to:?} is not a usable dataset name"),
                    "use letters, digits and underscores",
                ));
            }
            map.insert(from.to_string(), to.to_string());
        }
        if LocalWarehouse::is_local(to) {
            if !map.is_empty() {
                return Err(ConfigError::new(
                    "--dataset-map",
                    format!("{to} is one dataset, which every table is restored into"),
                    "leave --dataset-map out, or give each dataset its own restore and file",
                ));
            }
            let path = local_path(to)?;
            return Ok(Target {
                uri: format!("sqlite://{}", path.display()),
                local: Some(path),
                project: None,
                map,
            });
        }
        let Some(rest) = to.strip_prefix("bigquery://") else {
            return Err(ConfigError::new(
                "--to",
                format!("{to:?} is not a warehouse bqdrain restores into"),
                "give sqlite://PATH, bigquery://PROJECT or bigquery://PROJECT/DATASET",
            ));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [project] if !project.is_empty() => Ok(Target {
                uri: to.to_string(),
                local: None,
                project: Some(project.to_string()),
                map,
            }),
            [project, dataset] if !project.is_empty() && !dataset.is_empty() => {
                if !map.is_empty() {
                    return Err(ConfigError::new(
                        "--dataset-map",
                        format!("{to} names one dataset, which every table is restored into"),
                        format!(
                            "give --to bigquery://{project} to restore each dataset into its own"
                        ),
                    ));
                }
                Ok(Target {
                    uri: to.to_string(),
                    local: None,
                    project: None,
                    map,
                })
            }
            _ => Err(ConfigError::new(
                "--to",
                format!("{to:?} is not bigquery://PROJECT or bigquery://PROJECT/DATASET"),
                "e.g. bigquery://my-project/sales_restored",
            )),
        }
    }

    /// The dataset URI a source dataset is restored into.
    fn dataset_uri(&self, dataset: &str) -> String {
        match &self.project {
            Some(project) => format!(
                "bigquery://{project}/{}",
                self.map.get(dataset).map_or(dataset, String::as_str)
            ),
            None => self.uri.clone(),
        }
    }
}

/// The file of a `sqlite://` target: it may not exist yet (the restore
/// makes it), but its folder must.
fn local_path(to: &str) -> Result<PathBuf, ConfigError> {
    let path = to
        .strip_prefix("sqlite://")
        .filter(|p| !p.is_empty() && !p.contains('?'))
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p)))
        .ok_or_else(|| {
            ConfigError::new(
                "--to",
                format!("{to:?} is not sqlite://PATH"),
                "write it as sqlite://PATH, e.g. sqlite://restored.db",
            )
        })?;
    if path.is_dir() {
        return Err(ConfigError::new(
            "--to",
            format!("{} is a folder", path.display()),
            "name a SQLite file, new or existing, e.g. sqlite://restored.db",
        ));
    }
    if !path.parent().is_some_and(Path::is_dir) {
        return Err(ConfigError::new(
            "--to",
            format!("{} is in no existing folder", path.display()),
            "make the folder first, or name a file in an existing one",
        ));
    }
    Ok(path)
}

/// The definition of each table the units restore, by table, read from
/// the first unit of each; one that cannot be read is left out (its units'
/// loads say why).
async fn definitions(
    store: &dyn ObjectStore,
    units: &[Unit],
) -> anyhow::Result<Vec<(String, TableDefinition)>> {
    let mut seen = BTreeSet::new();
    let mut definitions = Vec::new();
    for unit in units {
        if !seen.insert(&unit.source.table) {
            continue;
        }
        let key = layout::export_definition(&unit.source, &unit.exported.run_id);
        let read = store.read(&key).await?;
        if let Some(definition) = read.and_then(|b| serde_json::from_slice(&b).ok()) {
            definitions.push((unit.source.table.clone(), definition));
        }
    }
    Ok(definitions)
}

/// Makes the empty SQLite file of a new local target (WAL, as the worker
/// processes write it at once).
fn create_dataset_file(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Ok(())
}

/// Checks the target tables of every unit against what each target dataset
/// holds, as `--if-exists` says: refuses, leaves out (returned, with why)
/// or lets the units replace them. Two units of one name from different
/// datasets into one dataset are refused.
async fn check_targets(
    target: &Target,
    units: &mut Vec<Unit>,
    if_exists: IfExists,
) -> anyhow::Result<Vec<SkippedTable>> {
    let mut by_target: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for unit in units.iter() {
        by_target
            .entry(&unit.target_dataset_uri)
            .or_default()
            .entry(&unit.source.table)
            .or_default()
            .insert(&unit.dataset);
    }
    let mut existing: BTreeSet<(String, String)> = BTreeSet::new();
    for (uri, tables) in &by_target {
        if let Some((table, datasets)) = tables.iter().find(|(_, d)| d.len() > 1) {
            let names: Vec<&str> = datasets.iter().copied().collect();
            return Err(ConfigError::new(
                "--to",
                format!(
                    "datasets {} each have a table {table}, and {uri} would receive both",
                    names.join(" and ")
                ),
                "restore one dataset at a time (--from DEST/DATASET), or into bigquery://PROJECT \
                 with --dataset-map",
            )
            .into());
        }
        let present = target_tables(uri, target).await?;
        for table in tables.keys() {
            if present.contains(*table) {
                existing.insert((uri.to_string(), table.to_string()));
            }
        }
    }
    if existing.is_empty() {
        return Ok(Vec::new());
    }
    match if_exists {
        IfExists::Replace => {
            for unit in units.iter_mut() {
                let key = (unit.target_dataset_uri.clone(), unit.source.table.clone());
                unit.replaces = existing.contains(&key);
            }
            Ok(Vec::new())
        }
        IfExists::Fail => {
            let mut by_uri: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (uri, table) in &existing {
                by_uri.entry(uri).or_default().push(table);
            }
            let held: Vec<String> = by_uri
                .iter()
                .map(|(uri, tables)| format!("{uri} holds {}", tables.join(", ")))
                .collect();
            Err(ConfigError::new(
                "--if-exists",
                format!(
                    "{} table(s) of this restore exist already: {}",
                    existing.len(),
                    held.join("; ")
                ),
                format!(
                    "add --if-exists replace to replace them, --if-exists skip to leave them as \
                     they are, or {}",
                    if target.local.is_some() {
                        "--to sqlite://ANOTHER.db to restore into a new file"
                    } else {
                        "--dataset-map FROM=TO to restore into a new dataset"
                    }
                ),
            )
            .into())
        }
        IfExists::Skip => {
            units.retain(|u| {
                !existing.contains(&(u.target_dataset_uri.clone(), u.source.table.clone()))
            });
            Ok(existing
                .into_iter()
                .map(|(uri, table)| SkippedTable {
                    reason: format!("it exists in {uri} (--if-exists skip)"),
                    table,
                })
                .collect())
        }
    }
}

/// The tables (and views) of a target dataset; none for a SQLite file that
/// is not there yet.
async fn target_tables(uri: &str, target: &Target) -> anyhow::Result<BTreeSet<String>> {
    if target.local.as_ref().is_some_and(|p| !p.exists()) {
        return Ok(BTreeSet::new());
    }
    let warehouse: Arc<dyn Warehouse> = backends::open_warehouse(uri, "--to").await?;
    Ok(warehouse
        .list_tables()
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect())
}

/// The run's units, largest first as exports are published.
fn planned_units(units: &[Unit], several: bool) -> Vec<PlannedUnit> {
    let mut planned: Vec<PlannedUnit> = units
        .iter()
        .map(|u| PlannedUnit {
            unit: producer::run_name(&u.dataset, &u.source.unit(), several),
            source: u.source.clone(),
            rows: u.exported.rows,
            bytes: Some(u.exported.bytes),
            change: None,
            restore: Some(RestoreTarget {
                dataset_uri: u.target_dataset_uri.clone(),
                table: u.source.table.clone(),
                exported_by: u.exported.run_id.clone(),
                replace_table: u.replaces,
            }),
        })
        .collect();
    planned.sort_by(|a, b| {
        (b.bytes, b.rows)
            .cmp(&(a.bytes, a.rows))
            .then_with(|| a.unit.cmp(&b.unit))
    });
    planned
}

impl RestoreReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "restore {}: {} tables in {} units from {} into {}\n",
            self.run_id, self.tables, self.units, self.from, self.to
        );
        for s in &self.skipped {
            out += &format!("  skipped {}: {}\n", s.table, s.reason);
        }
        match &self.outcome {
            Some(o) => {
                out += &format!(
                    "{} restored, {} dead-lettered, {} pending; {} rows; {} tasks in {:.2} s\n",
                    o.restored, o.dead_lettered, o.pending, o.rows, self.tasks, self.seconds
                );
                for d in &o.dead {
                    out += &format!("  dead-lettered {}: {}\n", d.table, d.reason);
                }
                if let Some(logs) = &o.logs {
                    out += &format!("task logs: {}\n", logs.display());
                }
                if !o.retry.is_empty() {
                    out += "to load the dead-lettered units again once their cause is fixed:\n";
                    for command in &o.retry {
                        out += &format!("  {command}\n");
                    }
                }
            }
            None => {
                out += &format!(
                    "published to {}; drain it with bqdrain work, then see:\n",
                    self.topic
                );
            }
        }
        out += &format!(
            "status:  bqdrain status --destination {} --run-id {}\n",
            self.destination, self.run_id
        );
        out
    }
}
