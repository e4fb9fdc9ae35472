//! Worker processes started on this machine, like Cloud Run tasks, to
//! drain one run of a `queue://` queue: what `bqdrain demo` and `bqdrain
//! restore` do so that a local user needs one command.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::engine::runs::RunState;
use crate::ports::store::ObjectStore;

pub struct LocalWorkers<'a> {
    /// The `bqdrain` binary, run as `bqdrain work`.
    pub exe: &'a Path,
    pub subscription: &'a str,
    /// The store holding the run's records.
    pub destination: &'a str,
    pub tasks: usize,
    /// Each task's log goes to `logs/PREFIXtask-N.log`.
    pub logs: &'a Path,
    /// Show a live progress line on stderr (on a terminal only).
    pub progress: bool,
    /// When the command began, for the progress line.
    pub started: Instant,
}

impl LocalWorkers<'_> {
    /// Starts the tasks, each watching `run_id` until it is complete, and
    /// waits for all of them; returns how many failed.
    pub async fn drain(
        &self,
        store: &dyn ObjectStore,
        run_id: &str,
        log_prefix: &str,
    ) -> anyhow::Result<usize> {
        std::fs::create_dir_all(self.logs)?;
        let mut workers = Vec::with_capacity(self.tasks);
        for index in 0..self.tasks {
            let log =
                std::fs::File::create(self.logs.join(format!("{log_prefix}task-{index}.log")))?;
            let child = tokio::process::Command::new(self.exe)
                .args([
                    "work",
                    "--subscription",
                    self.subscription,
                    "--run-id",
                    run_id,
                    "--destination",
                    self.destination,
                    "--log-format",
                    "json",
                ])
                .env("CLOUD_RUN_TASK_INDEX", index.to_string())
                .env("CLOUD_RUN_TASK_COUNT", self.tasks.to_string())
                .env("CLOUD_RUN_TASK_ATTEMPT", "0")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()?;
            workers.push(child);
        }

        let show = self.progress && std::io::stderr().is_terminal();
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
                if let Ok(Some(state)) = RunState::load(store, run_id, false).await {
                    let t = state.totals();
                    eprint!(
                        "\rtasks running: {}/{}; units done: {}/{}, dead-lettered: {}; {:.1} s   ",
                        waiting,
                        self.tasks,
                        t.exported,
                        t.expected,
                        t.dead_lettered,
                        self.started.elapsed().as_secs_f64()
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
        Ok(failed_tasks)
    }
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
