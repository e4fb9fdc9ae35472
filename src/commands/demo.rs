//! `bqdrain demo`: the whole flow on the embedded backends. It makes a
//! dataset of dummy tables, runs the producer, then starts worker processes
//! (like Cloud Run tasks) that drain the queue, and reports what they did.
//! With `--incremental` the dataset also has a table partitioned by day,
//! exported partition by partition; a few rows change after the first run,
//! and a second run with `--only-changed` exports only what they touched.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::adapters::local::dataset::{self, Fault};
use crate::adapters::local::partitions;
use crate::commands::local_workers::LocalWorkers;
use crate::commands::report::{self, ReplayTarget};
use crate::commands::status::{run_status, StatusReport};
use crate::engine::producer::{produce, ProduceReport, RunId, RunPlan};
use crate::engine::runs::UnitState;
use crate::engine::selection::PartitionPlan;
use crate::error::ConfigError;
use crate::ports::store::ObjectStore;
use crate::ports::warehouse::Partitioning;

/// The partitioned table of `--incremental`, and its days of data.
const EVENTS_TABLE: &str = "events";
const EVENT_DAYS: u32 = 7;
/// `--incremental`'s view: exported through a query, and every run, since
/// nothing tells whether what a view reads changed.
const LATEST_EVENTS_VIEW: &str = "latest_events";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub tables: usize,
    pub rows: u64,
    pub tasks: usize,
    pub dir: PathBuf,
    /// Tables made unexportable, to show dead-lettering and replay.
    pub fail: Vec<String>,
    /// Where to write the run report, if anywhere.
    pub html: Option<PathBuf>,
    /// Show a live progress line on stderr.
    pub progress: bool,
    /// Run twice, the second time exporting only what changed.
    pub incremental: bool,
    /// Use `dir` even when it holds what the demo did not make.
    pub force: bool,
}

/// The second run of `--incremental`.
#[derive(Debug, Clone, Serialize)]
pub struct IncrementalRun {
    pub run_id: String,
    /// Rows changed between the runs, as `UNIT: what`.
    pub changes: Vec<String>,
    /// The units the second run published: those the changes touched (and
    /// the failing tables, which have no export to compare with).
    pub published_units: Vec<String>,
    /// Units left out because nothing changed since the first run.
    pub unchanged: usize,
    pub failed_tasks: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub run_id: String,
    pub tables: usize,
    /// Units of the first run: one per table, or per partition of the
    /// partitioned table with `--incremental`.
    pub units: usize,
    pub exported: usize,
    pub dead_lettered: usize,
    /// The units dead-lettered, to name in the fix hint.
    pub dead_lettered_units: Vec<String>,
    pub pending: usize,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    pub tasks: usize,
    pub failed_tasks: usize,
    pub seconds: f64,
    pub dir: PathBuf,
    pub destination: String,
    pub dead_letter_subscription: String,
    pub work_topic: String,
    pub subscription: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalRun>,
    /// Every table exported or dead-lettered as asked, every task exited 0
    /// (and with `--incremental`, the second run exported exactly the
    /// changed units).
    pub ok: bool,
}

pub fn table_names(count: usize) -> Vec<String> {
    let width = count.to_string().len().max(2);
    (1..=count).map(|i| format!("dummy_{i:0width$}")).collect()
}

fn remove_sqlite(path: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(PathBuf::from(p)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// What the demo makes in its folder.
const DEMO_ENTRIES: [&str; 8] = [
    "warehouse.db",
    "warehouse.db-wal",
    "warehouse.db-shm",
    "queue.db",
    "queue.db-wal",
    "queue.db-shm",
    "exports",
    "logs",
];

/// Whether the demo made a table of this name: its dummy tables, the
/// partitioned table, and the local warehouse's own bookkeeping.
fn made_by_the_demo(table: &str) -> bool {
    let dummy = table
        .strip_prefix("dummy_")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    dummy || table == EVENTS_TABLE || table.starts_with("_bqdrain_")
}

/// Refuses a folder holding anything the demo did not make (files, or
/// tables in its `warehouse.db` and `queue.db`), unless `--force`: the demo
/// replaces both databases, and a user's table in them would be gone.
fn check_dir(opts: &DemoOptions) -> Result<(), ConfigError> {
    let dir = &opts.dir;
    if dir.exists() && !dir.is_dir() {
        return Err(ConfigError::new(
            "--dir",
            format!("{} is a file, not a folder", dir.display()),
            "give a new folder, or one an earlier demo made",
        ));
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    if opts.force {
        return Ok(());
    }
    let html = opts.html.as_ref().and_then(|h| h.file_name());
    let mut foreign: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| Some(name.as_os_str()) != html)
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !DEMO_ENTRIES.contains(&name.as_str()))
        .collect();
    let tables_of =
        |file: &str| crate::adapters::local::sqlite_file::tables(&dir.join(file), "--dir");
    for table in tables_of("warehouse.db")?.unwrap_or_default() {
        if !made_by_the_demo(&table) {
            foreign.push(format!("table {table} in warehouse.db"));
        }
    }
    for table in tables_of("queue.db")?.unwrap_or_default() {
        if table != "messages" {
            foreign.push(format!("table {table} in queue.db"));
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    Err(ConfigError::new(
        "--dir",
        format!(
            "{} holds what the demo did not make ({}), and the demo replaces its warehouse.db \
             and queue.db",
            dir.display(),
            foreign.join(", ")
        ),
        "give a new or empty folder, or add --force to use this one anyway",
    ))
}

pub async fn run(opts: &DemoOptions, worker_exe: &Path) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    if opts.tables == 0 {
        return Err(ConfigError::new("--tables", "is 0", "give at least 1").into());
    }
    if opts.tasks == 0 {
        return Err(ConfigError::new("--tasks", "is 0", "give at least 1").into());
    }
    let names = table_names(opts.tables);
    if let Some(unknown) = opts.fail.iter().find(|f| !names.contains(f)) {
        return Err(ConfigError::new(
            "--fail",
            format!("{unknown:?} is not one of the demo's tables"),
            format!("name one of {} .. {}", names[0], names[names.len() - 1]),
        )
        .into());
    }
    check_dir(opts)?;
    std::fs::create_dir_all(&opts.dir)?;
    let dir = std::path::absolute(&opts.dir)?;
    let warehouse_path = dir.join("warehouse.db");
    let queue_path = dir.join("queue.db");
    remove_sqlite(&warehouse_path)?;
    remove_sqlite(&queue_path)?;
    dataset::create_dummy_tables(&warehouse_path, &names, opts.rows)?;
    if opts.incremental {
        let last_day = chrono::Utc::now().date_naive();
        dataset::create_daily_table(
            &warehouse_path,
            EVENTS_TABLE,
            last_day,
            EVENT_DAYS,
            opts.rows,
        )?;
        partitions::partition_by(&warehouse_path, EVENTS_TABLE, "day", Partitioning::Day)?;
        dataset::execute(
            &warehouse_path,
            &format!(
                "CREATE VIEW {LATEST_EVENTS_VIEW} AS SELECT * FROM {EVENTS_TABLE} \
                 WHERE day = (SELECT max(day) FROM {EVENTS_TABLE});"
            ),
        )?;
    }
    for table in &opts.fail {
        dataset::set_fault(&warehouse_path, table, Fault::Permanent)?;
    }

    let queue = format!("queue://{}", queue_path.display());
    let work_topic = format!("{queue}#work");
    let subscription = format!("{queue}?dead_letter=dead#work");
    let dead_letter_subscription = format!("{queue}#dead");
    let destination = format!("file://{}", dir.join("exports").display());
    let demo_run = DemoRun {
        opts,
        worker_exe,
        warehouse: format!("sqlite://{}", warehouse_path.display()),
        work_topic: work_topic.clone(),
        subscription: subscription.clone(),
        destination: destination.clone(),
        logs: dir.join("logs"),
        started,
    };
    let store = crate::adapters::backends::open_store(&destination, "--dir").await?;
    let (produced, failed_tasks) = demo_run.drain(store.as_ref(), "").await?;
    let status = run_status(store.as_ref(), &produced.run_id).await?;
    let incremental = if opts.incremental {
        let changes = change_a_few_rows(&warehouse_path, &names, opts)?;
        let second_started = Instant::now();
        let (second, failed_tasks) = demo_run.drain(store.as_ref(), "second-").await?;
        let second_status = run_status(store.as_ref(), &second.run_id).await?;
        Some(IncrementalRun {
            run_id: second.run_id,
            changes,
            published_units: units_of(&second_status),
            unchanged: second.unchanged,
            failed_tasks,
            seconds: second_started.elapsed().as_secs_f64(),
        })
    } else {
        None
    };
    if let Some(path) = &opts.html {
        let replay = ReplayTarget {
            from: dead_letter_subscription.clone(),
            to: work_topic.clone(),
        };
        report::write(&status, &replay, path)?;
    }
    let t = status.totals;
    let dead_lettered_units = status
        .units
        .iter()
        .filter(|u| matches!(u.state, UnitState::DeadLettered { .. }))
        .map(|u| u.unit.clone())
        .collect();
    let ok = failed_tasks == 0
        && t.exported == produced.published - opts.fail.len()
        && t.dead_lettered == opts.fail.len()
        && incremental.as_ref().is_none_or(|second| {
            let mut changed: Vec<String> = second
                .changes
                .iter()
                .map(|c| unit_of_change(c).to_string())
                .collect();
            changed.extend(opts.fail.iter().cloned());
            changed.push(LATEST_EVENTS_VIEW.to_string());
            changed.sort();
            second.failed_tasks == 0 && second.published_units == changed
        });
    Ok(DemoReport {
        run_id: produced.run_id,
        tables: opts.tables + 2 * usize::from(opts.incremental),
        units: produced.published,
        exported: t.exported,
        dead_lettered: t.dead_lettered,
        dead_lettered_units,
        pending: t.pending,
        files: status.files,
        rows: status.rows,
        bytes: status.bytes,
        tasks: opts.tasks,
        failed_tasks,
        seconds: started.elapsed().as_secs_f64(),
        dir,
        destination,
        dead_letter_subscription,
        work_topic,
        subscription,
        incremental,
        ok,
    })
}

/// What one run of the demo needs, the same for both runs of `--incremental`.
struct DemoRun<'a> {
    opts: &'a DemoOptions,
    worker_exe: &'a Path,
    warehouse: String,
    work_topic: String,
    subscription: String,
    destination: String,
    logs: PathBuf,
    started: Instant,
}

impl DemoRun<'_> {
    /// Produces a run and drains it with worker processes; returns what the
    /// producer did and how many tasks failed. Task logs go to
    /// `logs/{log_prefix}task-N.log`.
    async fn drain(
        &self,
        store: &dyn ObjectStore,
        log_prefix: &str,
    ) -> anyhow::Result<(ProduceReport, usize)> {
        let opts = self.opts;
        let warehouse = crate::adapters::backends::open_warehouse(&self.warehouse, "--dir").await?;
        let topic = crate::adapters::backends::open_topic(&self.work_topic, "--dir").await?;
        let mut plan = RunPlan::every_table(RunId::New);
        if opts.incremental {
            plan.partitions = PartitionPlan {
                split: true,
                ..PartitionPlan::default()
            };
            plan.only_changed = true;
            plan.views = true;
        }
        let produced = produce(&plan, &[warehouse], topic.as_ref(), store).await?;

        let workers = LocalWorkers {
            exe: self.worker_exe,
            subscription: &self.subscription,
            destination: &self.destination,
            tasks: opts.tasks,
            logs: &self.logs,
            progress: opts.progress,
            started: self.started,
        };
        let failed_tasks = workers.drain(store, &produced.run_id, log_prefix).await?;
        Ok((produced, failed_tasks))
    }
}

/// Between the two runs of `--incremental`: a few rows of two tables
/// updated, and rows added to the newest day of the partitioned table.
/// Returns each change as `UNIT: what`.
fn change_a_few_rows(
    warehouse: &Path,
    names: &[String],
    opts: &DemoOptions,
) -> anyhow::Result<Vec<String>> {
    let mut changes = Vec::new();
    let mut sql = String::new();
    for name in [&names[0], &names[names.len() / 2]] {
        if changes
            .iter()
            .any(|c: &String| unit_of_change(c) == name.as_str())
        {
            continue;
        }
        sql += &format!("UPDATE \"{name}\" SET age = age + 1 WHERE id <= 3;\n");
        changes.push(format!("{name}: 3 rows updated"));
    }
    let today = chrono::Utc::now().date_naive();
    sql += &format!(
        "INSERT INTO {EVENTS_TABLE} (id, day, amount) VALUES ({0} + 1, '{today}', 1), ({0} + 2, '{today}', 2);\n",
        u64::from(EVENT_DAYS) * opts.rows
    );
    changes.push(format!(
        "{EVENTS_TABLE}${}: 2 rows added",
        today.format("%Y%m%d")
    ));
    dataset::execute(warehouse, &sql)?;
    Ok(changes)
}

fn unit_of_change(change: &str) -> &str {
    change.split_once(':').map_or(change, |(unit, _)| unit)
}

fn units_of(status: &StatusReport) -> Vec<String> {
    let mut units: Vec<String> = status.units.iter().map(|u| u.unit.clone()).collect();
    units.sort();
    units
}

impl DemoReport {
    pub fn render(&self) -> String {
        let units = if self.units == self.tables {
            String::new()
        } else {
            format!(" in {} units", self.units)
        };
        let mut out = format!(
            "run {}: {} tables{units} -> {} exported, {} dead-lettered, {} pending; {} files, {} rows, {} bytes; {} tasks in {:.2} s\n",
            self.run_id, self.tables, self.exported, self.dead_lettered, self.pending, self.files, self.rows, self.bytes,
            self.tasks, self.seconds
        );
        out += &format!("exports: {}\n", self.destination);
        out += &format!(
            "status:  bqdrain status --destination {} --run-id {}\n",
            self.destination, self.run_id
        );
        if self.dead_lettered > 0 {
            out += "to fix the dead-lettered tables, export them and see the dead-letter queue empty:\n";
            for table in &self.dead_lettered_units {
                out += &format!(
                    "  bqdrain fault --source sqlite://{} --table {table} --kind clear\n",
                    self.dir.join("warehouse.db").display()
                );
            }
            out += &format!(
                "  bqdrain replay --from '{}' --to '{}' --run-id {}\n",
                self.dead_letter_subscription, self.work_topic, self.run_id
            );
            out += &format!("  bqdrain work --subscription '{}'\n", self.subscription);
        }
        if let Some(second) = &self.incremental {
            out += &format!(
                "second run {} (--only-changed): exported {} unit(s), left {} unchanged; {:.2} s\n",
                second.run_id,
                second.published_units.len(),
                second.unchanged,
                second.seconds
            );
            for change in &second.changes {
                out += &format!("  changed {change}\n");
            }
            out += &format!("  exported {}\n", second.published_units.join(", "));
            out += &format!(
                "  ({LATEST_EVENTS_VIEW} is a view: exported through a query, every run)\n"
            );
        }
        if self.failed_tasks > 0 {
            out += &format!(
                "{} task(s) failed; their logs are in {}\n",
                self.failed_tasks,
                self.dir.join("logs").display()
            );
        }
        out
    }
}
