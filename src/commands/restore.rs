//! `bqdrain restore`: a destination's current exports loaded back into a
//! warehouse, through the same queue and workers as exports. It plans from
//! the exports (one unit per committed export: a whole table, a partition,
//! a view), checks the target before anything is published (an existing
//! table is refused unless `--if-exists` says otherwise), writes a run
//! manifest and publishes one restore message per unit. On the embedded
//! backends it also drains the run with local worker processes, so that
//! one command restores.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;

mod local_drain;
mod origin;
mod target;

use local_drain::LocalDrain;
use origin::{current_units, Origin};
use target::{check_targets, create_dataset_file, Target};

use crate::adapters::backends;
use crate::adapters::local::load;
use crate::adapters::local::queue::QueueUri;
use crate::adapters::local::store::FsStore;
use crate::contract::message::{RestoreTarget, SourceTable, SCHEMA_VERSION};
use crate::engine::layout::{self, PlannedUnit, RunManifest, SkippedTable, TableManifest};
use crate::engine::producer::{self, Filters};
use crate::engine::selection;
use crate::error::ConfigError;
use crate::ports::definition::TableDefinition;
use crate::ports::store::ObjectStore;

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
