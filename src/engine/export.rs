//! Turns one work message into one committed export.
//!
//! The order of steps is what makes retries, crashes, duplicates and
//! overlapping runs safe:
//! 1. a completion record already there means the unit is done: settle again
//!    (step 5) and ack;
//! 2. export into the run's own folder (older exports are untouched);
//! 3. delete whatever else is in that folder (shards of a crashed attempt);
//! 4. write the completion record if absent: the first writer wins;
//! 5. settle: if a newer run has committed the unit, this run's export is
//!    superseded: record that and delete this run's folder. Otherwise write
//!    the folder's manifest (only over files that are all there) and delete
//!    older runs' *committed* folders. An older run's uncommitted folder may
//!    still be filling: that run deletes it itself when it settles.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::adapters::backends::OpenBackends;
use crate::contract::message::{WorkMessage, SCHEMA_VERSION};
use crate::engine::dead_letter::{write_dead_record, LastTry};
use crate::engine::drain::{Disposition, Handler, Progress};
use crate::engine::layout::{
    self, ExportedFile, RecordBody, RunManifest, SupersededRecord, TableManifest,
};
use crate::engine::retry::RetryPolicy;
use crate::engine::runs::RunTracker;
use crate::engine::task::TaskIdentity;
use crate::error::UnitError;
use crate::ports::queue::Delivery;
use crate::ports::store::{ObjectInfo, ObjectStore};
use crate::ports::warehouse::{Cancel, ExportRequest, ExportResult};

pub struct ExportHandler {
    backends: OpenBackends,
    retry: RetryPolicy,
    runs: RunTracker,
    task: TaskIdentity,
    /// Start times of other runs, read from their run manifests only for
    /// completion records of earlier versions, which do not carry them.
    run_starts: Mutex<HashMap<String, Option<DateTime<Utc>>>>,
}

impl ExportHandler {
    pub fn new(retry: RetryPolicy, task: TaskIdentity) -> ExportHandler {
        ExportHandler {
            backends: OpenBackends::default(),
            retry,
            runs: RunTracker::default(),
            task,
            run_starts: Mutex::new(HashMap::new()),
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
        started_at: DateTime<Utc>,
        cancel: Cancel,
    ) -> Result<(), UnitError> {
        let unit = msg.unit();
        let done_key = layout::done_record(&msg.run_id, &unit);
        let folder = layout::export_folder(&msg.source, &msg.run_id);
        let request = ExportRequest {
            job_key: format!("bqdrain_{}_{}", msg.run_id, unit),
            source: msg.source.clone(),
            destination_root: msg.destination.clone(),
            folder: folder.clone(),
            options: msg.options.clone(),
            snapshot_at: Some(msg.enqueued_at),
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
                if let Some(record) = done {
                    return Ok(Tried::AlreadyCommitted(record));
                }
                let warehouse = self
                    .backends
                    .warehouse(&msg.source.dataset_uri)
                    .await
                    .map_err(|e| open_failure("source.dataset_uri", e))?;
                warehouse
                    .export(&request, Arc::clone(&cancel))
                    .await
                    .map(Tried::Exported)
            })
            .await?;
        let result = match outcome {
            Tried::Exported(result) => result,
            Tried::AlreadyCommitted(record) => {
                tracing::info!(run_id = %msg.run_id, unit, "already exported: settling the duplicate");
                let listed = self.list_unit(msg, store).await?;
                return self.settle(msg, store, &listed, &record).await;
            }
        };

        // One listing serves the stale-shard cleanup and settling.
        let mut listed = self.list_unit(msg, store).await?;
        let written: HashSet<&str> = result.files.iter().map(String::as_str).collect();
        let mut files = Vec::with_capacity(written.len());
        let mut stale = Vec::new();
        for object in listed.iter().filter(|o| o.key.starts_with(&folder)) {
            if written.contains(object.key.as_str()) {
                files.push(ExportedFile {
                    key: object.key.clone(),
                    bytes: object.size,
                    checksum: object.checksum.clone(),
                });
            } else {
                stale.push(object.key.clone());
            }
        }
        for key in &stale {
            store
                .delete(key)
                .await
                .map_err(|e| UnitError::io("deleting stale object", e))?;
        }
        listed.retain(|o| !stale.contains(&o.key));
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
            task_index: self.task.index,
            started_at: Some(started_at),
            run_started_at: Some(msg.enqueued_at),
            change: msg.change.clone(),
            as_of: result.as_of,
            options: Some(msg.options.clone()),
        };
        let body = RecordBody::of(&manifest);
        let committed = store
            .write_if_absent(&done_key, &body.pretty, Some(&body.summary))
            .await
            .map_err(|e| UnitError::io("writing completion record", e))?;
        if !committed {
            tracing::info!(run_id = %msg.run_id, unit, "another task committed this unit first");
            let record = store
                .read(&done_key)
                .await
                .map_err(|e| UnitError::io("reading completion record", e))?
                .unwrap_or_default();
            return self.settle(msg, store, &listed, &record).await;
        }
        tracing::info!(
            run_id = %msg.run_id, unit, files = manifest.files.len(), bytes = manifest.bytes,
            rows = manifest.rows, seconds = started.elapsed().as_secs_f64(), "exported"
        );
        self.settle(msg, store, &listed, &body.pretty).await
    }

    async fn list_unit(
        &self,
        msg: &WorkMessage,
        store: &dyn ObjectStore,
    ) -> Result<Vec<ObjectInfo>, UnitError> {
        store
            .list(&layout::unit_folder(&msg.source))
            .await
            .map_err(|e| UnitError::io("listing unit folder", e))
    }

    /// What follows a commit, safe to repeat (a redelivered duplicate does it
    /// again). `listed` is the unit's folder as listed after this run's
    /// files were written; `record` is this run's completion record.
    async fn settle(
        &self,
        msg: &WorkMessage,
        store: &dyn ObjectStore,
        listed: &[ObjectInfo],
        record: &[u8],
    ) -> Result<(), UnitError> {
        let io = |what| move |e| UnitError::io(what, e);
        let unit = msg.unit();
        let unit_folder = layout::unit_folder(&msg.source);
        let mut runs: Vec<&str> = listed
            .iter()
            .filter_map(|o| layout::run_of_key(&unit_folder, &o.key))
            .filter(|run| *run != msg.run_id)
            .collect();
        runs.dedup();
        let ours = (msg.enqueued_at, msg.run_id.as_str());
        let mut older = Vec::new();
        for run in runs {
            // Only a committed export counts: an uncommitted folder may belong
            // to a run that is still exporting, and is that run's to delete.
            let Some(other) = committed_record(msg, store, listed, run).await? else {
                continue;
            };
            let Some(started) = self.run_started(store, run, &other).await? else {
                tracing::warn!(
                    unit_folder,
                    run,
                    "leaving a folder of a run with no manifest"
                );
                continue;
            };
            if (started, run) > ours {
                return self.supersede(msg, store, listed, run).await;
            }
            older.push(run);
        }

        let folder = layout::export_folder(&msg.source, &msg.run_id);
        let manifest_key = layout::export_manifest(&msg.source, &msg.run_id);
        let ours_listed: HashSet<&str> = listed
            .iter()
            .filter(|o| o.key.starts_with(&folder))
            .map(|o| o.key.as_str())
            .collect();
        let committed: Option<TableManifest> = serde_json::from_slice(record).ok();
        let intact = committed
            .as_ref()
            .is_some_and(|m| m.files.iter().all(|f| ours_listed.contains(f.key.as_str())));
        if !intact {
            // Never recreate a manifest over files that are gone.
            tracing::warn!(run_id = %msg.run_id, unit, "this run's export is no longer complete in {folder}: leaving it as it is");
            return Ok(());
        }
        if !ours_listed.contains(manifest_key.as_str()) {
            // With its summary, the next run's `--only-changed` plans from
            // a listing of the destination.
            let summary = committed.as_ref().map(|m| RecordBody::of(m).summary);
            store
                .write_if_absent(&manifest_key, record, summary.as_deref())
                .await
                .map_err(io("writing the export manifest"))?;
        }
        for run in older {
            let doomed = layout::export_folder(&msg.source, run);
            delete_listed(store, listed, &doomed).await?;
            tracing::info!(folder = doomed, "deleted superseded export");
        }
        Ok(())
    }

    /// A newer run committed this unit first: say so, and delete this run's
    /// export, which must not stand beside (or be taken for) the newer one.
    async fn supersede(
        &self,
        msg: &WorkMessage,
        store: &dyn ObjectStore,
        listed: &[ObjectInfo],
        newer: &str,
    ) -> Result<(), UnitError> {
        let unit = msg.unit();
        let record = SupersededRecord {
            v: SCHEMA_VERSION,
            run_id: msg.run_id.clone(),
            unit: unit.clone(),
            by_run: newer.to_string(),
            at: Utc::now(),
        };
        let body = RecordBody::of(&record);
        store
            .write(
                &layout::superseded_record(&msg.run_id, &unit),
                &body.pretty,
                Some(&body.summary),
            )
            .await
            .map_err(|e| UnitError::io("writing the superseded record", e))?;
        delete_listed(
            store,
            listed,
            &layout::export_folder(&msg.source, &msg.run_id),
        )
        .await?;
        tracing::info!(run_id = %msg.run_id, unit, newer, "superseded by a newer run's export: deleted this run's");
        Ok(())
    }

    /// When `run` started: from its completion record, or for records of
    /// earlier versions from its run manifest (read once per run).
    async fn run_started(
        &self,
        store: &dyn ObjectStore,
        run: &str,
        record: &[u8],
    ) -> Result<Option<DateTime<Utc>>, UnitError> {
        if let Some(at) = serde_json::from_slice::<TableManifest>(record)
            .ok()
            .and_then(|m| m.run_started_at)
        {
            return Ok(Some(at));
        }
        if let Some(known) = self.starts().get(run) {
            return Ok(*known);
        }
        let started = store
            .read(&layout::run_manifest(run))
            .await
            .map_err(|e| UnitError::io("reading run manifest", e))?
            .and_then(|b| serde_json::from_slice::<RunManifest>(&b).ok())
            .map(|m| m.created_at);
        self.starts().insert(run.to_string(), started);
        Ok(started)
    }

    fn starts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<DateTime<Utc>>>> {
        self.run_starts
            .lock()
            .expect("run start cache lock poisoned")
    }
}

/// The completion record of another run's export of this unit, if that run
/// committed it. The export's folder manifest is a copy written after the
/// commit and kept with the export, so it outlives the run records (which a
/// lifecycle rule may expire while `--only-changed` keeps the export
/// current); a listing may carry it as the summary. Without one, the run's
/// completion record.
async fn committed_record(
    msg: &WorkMessage,
    store: &dyn ObjectStore,
    listed: &[ObjectInfo],
    run: &str,
) -> Result<Option<Vec<u8>>, UnitError> {
    let io = |what| move |e| UnitError::io(what, e);
    let manifest_key = layout::export_manifest(&msg.source, run);
    if let Some(manifest) = listed.iter().find(|o| o.key == manifest_key) {
        if let Some(summary) = &manifest.summary {
            return Ok(Some(summary.clone().into_bytes()));
        }
        let read = store
            .read(&manifest_key)
            .await
            .map_err(io("reading another run's export manifest"))?;
        if read.is_some() {
            return Ok(read);
        }
    }
    store
        .read(&layout::done_record(run, &msg.unit()))
        .await
        .map_err(io("reading another run's completion record"))
}

/// What one try of an export found or did.
enum Tried {
    Exported(ExportResult),
    /// The unit has a completion record already (this body).
    AlreadyCommitted(Vec<u8>),
}

/// Deletes every listed object under `folder`.
async fn delete_listed(
    store: &dyn ObjectStore,
    listed: &[ObjectInfo],
    folder: &str,
) -> Result<(), UnitError> {
    for object in listed.iter().filter(|o| o.key.starts_with(folder)) {
        store
            .delete(&object.key)
            .await
            .map_err(|e| UnitError::io("deleting an export's files", e))?;
    }
    Ok(())
}

/// Deletes what a failed export of this run left in its folder, unless the
/// unit was committed meanwhile (by another delivery): no file outlives a
/// failed export.
async fn remove_uncommitted(msg: &WorkMessage, store: &dyn ObjectStore) -> Result<(), UnitError> {
    let done = layout::done_record(&msg.run_id, &msg.unit());
    if store
        .read(&done)
        .await
        .map_err(|e| UnitError::io("reading completion record", e))?
        .is_some()
    {
        return Ok(());
    }
    let folder = layout::export_folder(&msg.source, &msg.run_id);
    let listed = store
        .list(&folder)
        .await
        .map_err(|e| UnitError::io("listing export folder", e))?;
    delete_listed(store, &listed, &folder).await
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
        let started_at = Utc::now();
        let msg = match WorkMessage::decode(&delivery.data) {
            Ok(msg) => msg,
            Err(err) => return Disposition::DeadLetter(err),
        };
        let store = match self.store_for(&msg).await {
            Ok(store) => store,
            Err(err) if err.is_transient() => return Disposition::Retry(err),
            Err(err) => return Disposition::DeadLetter(err),
        };
        self.runs.observe(&msg.run_id, Arc::clone(&store));
        match self
            .export(
                &msg,
                store.as_ref(),
                delivery.delivery_attempt,
                started_at,
                cancel,
            )
            .await
        {
            Ok(()) => Disposition::Ack,
            Err(err) if err.is_transient() => Disposition::Retry(err),
            Err(err) => Disposition::DeadLetter(err),
        }
    }

    async fn dead_lettered(
        &self,
        delivery: &Delivery,
        error: &UnitError,
        started_at: DateTime<Utc>,
    ) {
        let Ok(msg) = WorkMessage::decode(&delivery.data) else {
            return;
        };
        let Ok(store) = self.store_for(&msg).await else {
            return;
        };
        let unit = msg.unit();
        let last_try = LastTry {
            task: &self.task,
            started_at,
        };
        if let Err(err) = write_dead_record(
            store.as_ref(),
            &msg,
            error,
            delivery.delivery_attempt,
            Some(last_try),
        )
        .await
        {
            tracing::error!(run_id = %msg.run_id, unit, error = %format!("{err:#}"), "cannot write dead-letter record");
        }
        if let Err(err) = remove_uncommitted(&msg, store.as_ref()).await {
            tracing::warn!(run_id = %msg.run_id, unit, error = %err, "cannot delete the failed export's files");
        }
    }

    async fn progress(&self) -> Progress {
        self.runs.progress().await
    }
}
