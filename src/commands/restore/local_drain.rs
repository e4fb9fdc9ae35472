//! A restore run drained at once by local worker processes on its
//! `queue://` topic, and what its records say after.

use std::path::Path;
use std::time::Instant;

use super::RestoreOutcome;
use crate::adapters::local::queue::QueueUri;
use crate::commands::local_workers::LocalWorkers;
use crate::commands::status::run_status;
use crate::engine::layout::SkippedTable;
use crate::engine::runs::UnitState;
use crate::ports::store::ObjectStore;

/// A restore run drained by local worker processes on its `queue://` topic.
pub(super) struct LocalDrain<'a> {
    pub exe: &'a Path,
    pub store: &'a dyn ObjectStore,
    pub run_id: &'a str,
    pub topic: &'a str,
    /// Where the tasks' logs go; kept only when something failed.
    pub logs: &'a Path,
}

impl LocalDrain<'_> {
    /// Drains the run with `tasks` workers; returns how many failed, and
    /// what the run's records say.
    pub async fn run(
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
