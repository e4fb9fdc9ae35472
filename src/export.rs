//! Turns one work message into one committed export.
//!
//! The order of steps is what makes retries, crashes and duplicates safe:
//! 1. a completion record already there means the unit is done: ack;
//! 2. export into the run's own folder (older exports are untouched);
//! 3. delete whatever else is in that folder (shards of a crashed attempt);
//! 4. write the export's manifest, then the completion record if absent:
//!    the first writer wins, later ones find it and ack;
//! 5. only then delete older runs' folders of the same unit.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;

use crate::backends::OpenBackends;
use crate::drain::{Disposition, Handler, Progress};
use crate::error::UnitError;
use crate::layout::{self, ExportedFile, RunManifest, TableManifest, RUN_FOLDER_PREFIX};
use crate::message::{WorkMessage, SCHEMA_VERSION};
use crate::queue::Delivery;
use crate::reconcile::write_dead_record;
use crate::retry::RetryPolicy;
use crate::runs::RunTracker;
use crate::store::ObjectStore;
use crate::task::TaskIdentity;
use crate::warehouse::{Cancel, ExportRequest};

pub struct ExportHandler {
    backends: OpenBackends,
    retry: RetryPolicy,
    runs: RunTracker,
    task: TaskIdentity,
}

impl ExportHandler {
    pub fn new(retry: RetryPolicy, task: TaskIdentity) -> ExportHandler {
        ExportHandler {
            backends: OpenBackends::default(),
            retry,
            runs: RunTracker::default(),
            task,
        }
    }

    /// Counts a run as seen before any of its messages arrives.
    pub fn watch(&self, run_id: &str, store: Arc<dyn ObjectStore>) {
        self.runs.observe(run_id, store);
    }

    async fn store_for(&self, msg: &WorkMessage) -> Result<Arc<dyn ObjectStore>, UnitError> {
        self.backends
            .store(&msg.destination)
            .await
            .map_err(|e| open_failure("destination", e))
    }

    async fn export(
        &self,
        msg: &WorkMessage,
        store: &dyn ObjectStore,
        attempt: u32,
        cancel: Cancel,
    ) -> Result<(), UnitError> {
        let unit = msg.source.unit();
        let done_key = layout::done_record(&msg.run_id, &unit);
        let folder = layout::export_folder(&msg.source, &msg.run_id);
        let request = ExportRequest {
            job_key: format!("bqdrain_{}_{}", msg.run_id, unit),
            source: msg.source.clone(),
            destination_root: msg.destination.clone(),
            folder: folder.clone(),
            options: msg.options.clone(),
        };
        let started = std::time::Instant::now();
        // Every try first looks for a completion record: a duplicate, or a
        // task that won a race while this one was backing off, ends here.
        let outcome = self
            .retry
            .run("export", || async {
                let done = store
                    .read(&done_key)
                    .await
                    .map_err(|e| UnitError::io("reading completion record", e))?;
                if done.is_some() {
                    return Ok(None);
                }
                let warehouse = self
                    .backends
                    .warehouse(&msg.source.dataset_uri)
                    .await
                    .map_err(|e| open_failure("source.dataset_uri", e))?;
                warehouse
                    .export(&request, Arc::clone(&cancel))
                    .await
                    .map(Some)
            })
            .await?;
        let Some(result) = outcome else {
            tracing::info!(run_id = %msg.run_id, unit, "already exported: acking the duplicate");
            return self.finish_committed(msg, store, None).await;
        };

        let written: HashSet<&str> = result.files.iter().map(String::as_str).collect();
        let manifest_key = layout::export_manifest(&msg.source, &msg.run_id);
        let listed = store
            .list(&folder)
            .await
            .map_err(|e| UnitError::io("listing export folder", e))?;
        let mut files = Vec::with_capacity(written.len());
        for object in listed {
            if written.contains(object.key.as_str()) {
                files.push(ExportedFile {
                    key: object.key,
                    bytes: object.size,
                });
            } else if object.key == manifest_key {
                // Only ever a copy of the completion record: keep it.
            } else {
                store
                    .delete(&object.key)
                    .await
                    .map_err(|e| UnitError::io("deleting stale object", e))?;
            }
        }
        if files.len() != written.len() {
            return Err(UnitError::transient(
                "backendError",
                format!(
                    "export reported {} files but {} are in {folder}",
                    written.len(),
                    files.len()
                ),
            ));
        }
        let manifest = TableManifest {
            v: SCHEMA_VERSION,
            run_id: msg.run_id.clone(),
            unit: unit.clone(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            files,
            rows: result.rows,
            finished_at: Utc::now(),
            delivery_attempt: attempt,
            task: self.task.to_string(),
        };
        let body = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
        let committed = store
            .write_if_absent(&done_key, &body)
            .await
            .map_err(|e| UnitError::io("writing completion record", e))?;
        let known_record = committed.then_some(body.as_slice());
        if committed {
            tracing::info!(
                run_id = %msg.run_id, unit, files = manifest.files.len(), bytes = manifest.bytes,
                rows = manifest.rows, seconds = started.elapsed().as_secs_f64(), "exported"
            );
            let _ = store.delete(&layout::dead_record(&msg.run_id, &unit)).await;
        } else {
            tracing::info!(run_id = %msg.run_id, unit, "another task committed this unit first");
        }
        self.finish_committed(msg, store, known_record).await
    }

    /// What follows a commit, safe to repeat (a redelivered duplicate does it
    /// again): the export's folder gets the completion record as its
    /// manifest, and older runs' folders go. `record` is the completion
    /// record when this task has just written it, sparing two reads.
    async fn finish_committed(
        &self,
        msg: &WorkMessage,
        store: &dyn ObjectStore,
        record: Option<&[u8]>,
    ) -> Result<(), UnitError> {
        let io = |e| UnitError::io("writing the export manifest", e);
        let manifest_key = layout::export_manifest(&msg.source, &msg.run_id);
        if let Some(record) = record {
            store
                .write_if_absent(&manifest_key, record)
                .await
                .map_err(io)?;
        } else if store.read(&manifest_key).await.map_err(io)?.is_none() {
            let done_key = layout::done_record(&msg.run_id, &msg.source.unit());
            if let Some(record) = store.read(&done_key).await.map_err(io)? {
                store
                    .write_if_absent(&manifest_key, &record)
                    .await
                    .map_err(io)?;
            }
        }
        self.remove_superseded(msg, store).await
    }

    /// Deletes the folders of this unit's older runs, now that this run's
    /// export is committed; and this run's own folder if a newer run has
    /// already committed the unit (runs that overlapped). Runs whose age
    /// cannot be told (no run manifest) are left alone.
    async fn remove_superseded(
        &self,
        msg: &WorkMessage,
        store: &dyn ObjectStore,
    ) -> Result<(), UnitError> {
        let unit_folder = layout::unit_folder(&msg.source);
        let listed = store
            .list(&unit_folder)
            .await
            .map_err(|e| UnitError::io("listing unit folder", e))?;
        let mut runs: Vec<&str> = listed
            .iter()
            .filter_map(|o| o.key[unit_folder.len()..].strip_prefix(RUN_FOLDER_PREFIX))
            .filter_map(|rest| rest.split_once('/').map(|(run, _)| run))
            .collect();
        runs.dedup();
        let ours = (msg.enqueued_at, msg.run_id.as_str());
        let mut doomed = Vec::new();
        let mut superseded = false;
        for run in runs.into_iter().filter(|r| *r != msg.run_id) {
            let other = store
                .read(&layout::run_manifest(run))
                .await
                .map_err(|e| UnitError::io("reading run manifest", e))?
                .and_then(|b| serde_json::from_slice::<RunManifest>(&b).ok());
            let Some(other) = other else {
                tracing::warn!(
                    unit_folder,
                    run,
                    "leaving a folder of a run with no manifest"
                );
                continue;
            };
            if (other.created_at, other.run_id.as_str()) < ours {
                doomed.push(layout::export_folder(&msg.source, run));
            } else {
                let committed = layout::export_manifest(&msg.source, run);
                superseded |= listed.iter().any(|o| o.key == committed);
            }
        }
        if superseded {
            doomed.push(layout::export_folder(&msg.source, &msg.run_id));
        }
        for folder in doomed {
            for object in listed.iter().filter(|o| o.key.starts_with(&folder)) {
                store
                    .delete(&object.key)
                    .await
                    .map_err(|e| UnitError::io("deleting superseded export", e))?;
            }
            tracing::info!(folder, "deleted superseded export");
        }
        Ok(())
    }
}

/// A URI the message names that no adapter accepts is the message's fault;
/// a client that cannot start (credentials, network) is not.
fn open_failure(field: &str, err: anyhow::Error) -> UnitError {
    if err.is::<crate::error::ConfigError>() {
        UnitError::permanent("invalid", format!("{err:#}"))
    } else {
        UnitError::transient("backendError", format!("opening {field}: {err:#}"))
    }
}

#[async_trait]
impl Handler for ExportHandler {
    async fn handle(&self, delivery: &Delivery, cancel: Cancel) -> Disposition {
        let msg = match WorkMessage::decode(&delivery.data) {
            Ok(msg) => msg,
            Err(err) => return Disposition::DeadLetter(err),
        };
        let store = match self.store_for(&msg).await {
            Ok(store) => store,
            Err(err) => return Disposition::DeadLetter(err),
        };
        self.runs.observe(&msg.run_id, Arc::clone(&store));
        match self
            .export(&msg, store.as_ref(), delivery.delivery_attempt, cancel)
            .await
        {
            Ok(()) => Disposition::Ack,
            Err(err) if err.is_transient() => Disposition::Retry(err),
            Err(err) => Disposition::DeadLetter(err),
        }
    }

    async fn dead_lettered(&self, delivery: &Delivery, error: &UnitError) {
        let Ok(msg) = WorkMessage::decode(&delivery.data) else {
            return;
        };
        let Ok(store) = self.store_for(&msg).await else {
            return;
        };
        if let Err(err) =
            write_dead_record(store.as_ref(), &msg, error, delivery.delivery_attempt).await
        {
            tracing::error!(run_id = %msg.run_id, unit = msg.source.unit(), error = %format!("{err:#}"), "cannot write dead-letter record");
        }
    }

    async fn progress(&self) -> Progress {
        self.runs.progress().await
    }
}
