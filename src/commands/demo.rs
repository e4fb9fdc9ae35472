//! `bqdrain demo`: the whole flow on the embedded backends. It makes a
//! dataset of dummy tables, runs the producer, then starts worker processes
//! (like Cloud Run tasks) that drain the queue, and reports what they did.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::adapters::local::dataset::{self, Fault};
use crate::commands::report::{self, ReplayTarget};
use crate::commands::status::run_status;
use crate::engine::producer::{produce, RunId, RunPlan};
use crate::engine::runs::{RunState, UnitState};
use crate::error::ConfigError;

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
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub run_id: String,
    pub tables: usize,
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
    /// Every table exported or dead-lettered as asked, every task exited 0.
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
    std::fs::create_dir_all(&opts.dir)?;
    let dir = std::path::absolute(&opts.dir)?;
    let warehouse_path = dir.join("warehouse.db");
    let queue_path = dir.join("queue.db");
    remove_sqlite(&warehouse_path)?;
    remove_sqlite(&queue_path)?;
    dataset::create_dummy_tables(&warehouse_path, &names, opts.rows)?;
    for table in &opts.fail {
        dataset::set_fault(&warehouse_path, table, Fault::Permanent)?;
    }

    let queue = format!("queue://{}", queue_path.display());
    let work_topic = format!("{queue}#work");
    let subscription = format!("{queue}?dead_letter=dead#work");
    let dead_letter_subscription = format!("{queue}#dead");
    let destination = format!("file://{}", dir.join("exports").display());
    let warehouse = crate::adapters::backends::open_warehouse(
        &format!("sqlite://{}", warehouse_path.display()),
        "--dir",
    )
    .await?;
    let topic = crate::adapters::backends::open_topic(&work_topic, "--dir").await?;
    let store = crate::adapters::backends::open_store(&destination, "--dir").await?;
    let plan = RunPlan::every_table(RunId::New);
    let produced = produce(&plan, warehouse.as_ref(), topic.as_ref(), store.as_ref()).await?;

    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut workers = Vec::with_capacity(opts.tasks);
    for index in 0..opts.tasks {
        let log = std::fs::File::create(logs.join(format!("task-{index}.log")))?;
        let child = tokio::process::Command::new(worker_exe)
            .args([
                "work",
                "--subscription",
                &subscription,
                "--run-id",
                &produced.run_id,
                "--destination",
                &destination,
                "--log-format",
                "json",
            ])
            .env("CLOUD_RUN_TASK_INDEX", index.to_string())
            .env("CLOUD_RUN_TASK_COUNT", opts.tasks.to_string())
            .env("CLOUD_RUN_TASK_ATTEMPT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        workers.push(child);
    }

    let show = opts.progress && std::io::stderr().is_terminal();
    let mut failed_tasks = 0;
    let mut waiting = workers.len();
    let mut exits = wait_all(workers);
    loop {
        tokio::select! {
            exit = exits.recv() => match exit {
                Some(ok) => {
                    failed_tasks += usize::from(!ok);
                    waiting -= 1;
                }
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(200)), if show => {}
        }
        if show {
            if let Ok(Some(state)) = RunState::load(store.as_ref(), &produced.run_id, false).await {
                let t = state.totals();
                eprint!(
                    "\rtasks running: {}/{}; units exported: {}/{}, dead-lettered: {}; {:.1} s   ",
                    waiting,
                    opts.tasks,
                    t.exported,
                    t.expected,
                    t.dead_lettered,
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            }
        }
        if waiting == 0 {
            break;
        }
    }
    if show {
        eprintln!();
    }

    let status = run_status(store.as_ref(), &produced.run_id).await?;
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
        && t.exported == opts.tables - opts.fail.len()
        && t.dead_lettered == opts.fail.len();
    Ok(DemoReport {
        run_id: produced.run_id,
        tables: opts.tables,
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
        ok,
    })
}

/// Waits for every child, sending `true` for each that exited 0.
fn wait_all(children: Vec<tokio::process::Child>) -> tokio::sync::mpsc::Receiver<bool> {
    let (tx, rx) = tokio::sync::mpsc::channel(children.len().max(1));
    for mut child in children {
        let tx = tx.clone();
        tokio::spawn(async move {
            let ok = child.wait().await.map(|s| s.success()).unwrap_or(false);
            let _ = tx.send(ok).await;
        });
    }
    rx
}

impl DemoReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "run {}: {} tables -> {} exported, {} dead-lettered, {} pending; {} files, {} rows, {} bytes; {} tasks in {:.2} s\n",
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
