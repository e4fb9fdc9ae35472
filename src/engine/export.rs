//! Turns one work message into one committed export; a restore message
//! (one with `restore`) is handed to [`crate::engine::restore`].
//!
//! The order of steps is what makes retries, crashes, duplicates and
//! overlapping runs safe:
//! 1. a commit already there means the unit is exported: settle again
//!    (step 4), write the completion record if it is missing (a delivery
//!    killed after its commit) and ack. Looked for on redeliveries and
//!    retries; a first delivery's duplicate shares its export job and finds
//!    the commit when it commits;
//! 2. export into the run's own folder (older exports are untouched), and
//!    list it for the files' sizes; nothing is deleted yet, since another
//!    delivery of the unit may be writing there too;
//! 3. commit: write the folder's manifest if absent. The first writer wins;
//!    from here the folder counts as committed for every reader;
//! 4. settle, from a listing of the table's folder taken after the commit:
//!    if a newer run has committed an export holding this unit's rows, this
//!    run's export is superseded: record that and delete this run's folder.
//!    Otherwise delete what the folder holds besides the committed files
//!    (shards of a crashed or losing attempt), and older runs' *committed*
//!    exports of the unit. An older run's uncommitted folder may still be
//!    filling: that run deletes it itself when it settles;
//! 5. a partition unit whose run holds every unit of the table committed
//!    also retires the older exports the table's units replace together:
//!    the whole table's (it switched to partitions) and those of partitions
//!    the table no longer has. A whole-table unit replaces every older
//!    export of its table in step 4;
//! 6. write the completion record (a copy of the manifest), last: a run
//!    counts as complete only once each of its units is settled, so the
//!    tasks watching it wait for the redelivery of a unit whose delivery
//!    was killed between its commit and its record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::adapters::backends::OpenBackends;
use crate::contract::message::{SourceTable, WorkMessage, SCHEMA_VERSION};
use crate::engine::dead_letter::{write_dead_record, LastTry};
use crate::engine::definition;
use crate::engine::drain::{Disposition, Handler, Progress};
use crate::engine::heartbeat::{self, Heartbeat};
use crate::engine::layout::{
    self, ExportedFile, RecordBody, RunManifest, SupersededRecord, TableManifest,
};
use crate::engine::restore::{RestoreDelivery, Restorer};
use crate::engine::retry::RetryPolicy;
use crate::engine::runs::RunTracker;
use crate::engine::task::TaskIdentity;
use crate::error::UnitError;
use crate::ports::queue::Delivery;
use crate::ports::store::{ObjectInfo, ObjectStore};
use crate::ports::warehouse::{Cancel, ExportRequest, ExportResult, Warehouse};

pub struct ExportHandler {
    backends: OpenBackends,
    retry: RetryPolicy,
    runs: RunTracker,
    task: TaskIdentity,
    /// Start times of other runs, read from their run manifests only for
    /// completion records of earlier versions, which do not carry them.
    run_starts: Mutex<HashMap<String, Option<DateTime<Utc>>>>,
    /// How often a long export's heartbeat is written.
    heartbeat: Duration,
}

impl ExportHandler {
    pub fn new(retry: RetryPolicy, task: TaskIdentity) -> ExportHandler {
        ExportHandler {
            backends: OpenBackends::default(),
            retry,
            runs: RunTracker::default(),
            task,
            run_starts: Mutex::new(HashMap::new()),
            heartbeat: heartbeat::EVERY,
        }
    }

    /// Writes a long export's heartbeat every `every` instead of
    /// [`heartbeat::EVERY`].
    pub fn with_heartbeat(self, every: Duration) -> ExportHandler {
        ExportHandler {
            heartbeat: every,
            ..self
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

    async fn warehouse_for(&self, msg: &WorkMessage) -> Result<Arc<dyn Warehouse>, UnitError> {
        self.backends
            .warehouse(&msg.source.dataset_uri, "source.dataset_uri")
            .await
            .map_err(|e| open_failure("source.dataset_uri", e))
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
        let manifest_key = layout::export_manifest(&msg.source, &msg.run_id);
        let folder = layout::export_folder(&msg.source, &msg.run_id);
        let request = ExportRequest {
            job_key: msg.job_key(),
            source: msg.source.clone(),
            destination_root: msg.destination.clone(),
            folder: folder.clone(),
            options: msg.options.clone(),
            snapshot_at: Some(msg.enqueued_at),
        };
        let started = std::time::Instant::now();
        // A redelivery, and every try after the first, first looks for a
        // commit: a task that crashed after its commit, or won a race while
        // this one was backing off, ends here. A first delivery's first try
        // goes straight to the export: a duplicate of it (a resumed run, a
        // publish retried) is given the first export's job, as BigQuery
        // gives a job id inserted twice, and finds the commit when it
        // commits.
        let tries = std::sync::atomic::AtomicU32::new(0);
        let outcome = self
            .retry
            .run("export", || async {
                let first = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
                if attempt > 1 || !first {
                    if let Some(commit) = find_commit(msg, store).await? {
                        return Ok(Tried::AlreadyCommitted(commit));
                    }
                }
                let warehouse = self.warehouse_for(msg).await?;
                warehouse
                    .export(&request, Arc::clone(&cancel))
                    .await
                    .map(Tried::Exported)
            })
            .await?;
        let result = match outcome {
            Tried::Exported(result) => result,
            Tried::AlreadyCommitted(commit) => {
                tracing::info!(run_id = %msg.run_id, unit, recorded = commit.recorded, "already committed: settling the duplicate");
                return self.finish(msg, store, commit).await;
            }
        };

        // Sizes and checksums of what this delivery wrote. Nothing is
        // deleted before the commit: another delivery of this unit may be
        // writing beside this one, and its files are not this one's to judge.
        let listed = store
            .list(&folder)
            .await
            .map_err(|e| UnitError::io("listing the export folder", e))?;
        let by_key: HashMap<&str, &ObjectInfo> =
            listed.iter().map(|o| (o.key.as_str(), o)).collect();
        let files: Vec<ExportedFile> = result
            .files
            .iter()
            .filter_map(|key| by_key.get(key.as_str()))
            .map(|object| ExportedFile {
                key: object.key.clone(),
                bytes: object.size,
                checksum: object.checksum.clone(),
            })
            .collect();
        if files.len() != result.files.len() {
            return Err(UnitError::transient(
                "backendError",
                format!(
                    "export reported {} files but {} are in {folder}",
                    result.files.len(),
                    files.len()
                ),
            ));
        }
        // Before the commit: a committed folder always holds it.
        definition::write_beside_export(self.warehouse_for(msg).await?.as_ref(), msg, store)
            .await?;
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
            .write_if_absent(&manifest_key, &body.pretty, Some(&body.summary))
            .await
            .map_err(|e| UnitError::io("writing the export manifest", e))?;
        if !committed {
            tracing::info!(run_id = %msg.run_id, unit, "another delivery committed this unit first");
            let record = store
                .read(&manifest_key)
                .await
                .map_err(|e| UnitError::io("reading the export manifest", e))?
                .ok_or_else(|| {
                    // The winner's settling deleted it (a newer run's export
                    // stands): its completion record follows.
                    UnitError::transient(
                        "backendError",
                        format!("{manifest_key} was committed by another delivery and is gone: its completion record is awaited"),
                    )
                })?;
            let commit = Commit {
                record,
                recorded: false,
            };
            return self.finish(msg, store, commit).await;
        }
        tracing::info!(
            run_id = %msg.run_id, unit, files = manifest.files.len(), bytes = manifest.bytes,
            rows = manifest.rows, seconds = started.elapsed().as_secs_f64(), "exported"
        );
        let commit = Commit {
            record: body.pretty,
            recorded: false,
        };
        self.finish(msg, store, commit).await
    }

    /// Settles a committed unit, then writes its completion record (a copy
    /// of the commit) unless it is there: last, so that the run is not
    /// complete while an older export of the unit still stands.
    async fn finish(
        &self,
        msg: &WorkMessage,
        store: &dyn ObjectStore,
        commit: Commit,
    ) -> Result<(), UnitError> {
        self.settle(msg, store, &commit.record).await?;
        if commit.recorded {
            return Ok(());
        }
        let summary = serde_json::from_slice::<TableManifest>(&commit.record)
            .ok()
            .map(|m| RecordBody::of(&m).summary);
        store
            .write_if_absent(
                &layout::done_record(&msg.run_id, &msg.unit()),
                &commit.record,
                summary.as_deref(),
            )
            .await
            .map_err(|e| UnitError::io("writing completion record", e))?;
        Ok(())
    }

    /// What follows a commit, safe to repeat (a redelivered duplicate does it
    /// again); `record` is this run's commit of the unit (its manifest, or
    /// its completion record). It decides from a listing of the table's
    /// folder taken after the commit: of two runs committing one unit at
    /// once, the later listing then sees the other's commit, so exactly one
    /// export stands.
    async fn settle(
        &self,
        msg: &WorkMessage,
        store: &dyn ObjectStore,
        record: &[u8],
    ) -> Result<(), UnitError> {
        let io = |what| move |e| UnitError::io(what, e);
        let unit = msg.unit();
        let listed = store
            .list(&layout::table_folder(&msg.source))
            .await
            .map_err(io("listing the table's folder"))?;
        let exports = ExportFolders::of(&msg.source.dataset, &listed);
        let ours = (msg.enqueued_at, msg.run_id.as_str());
        let own_partition = msg.source.partition.as_deref();
        // Other runs' committed exports this one replaces now, and (for a
        // partition) those it retires once the table's every unit of this
        // run is committed: whole-table exports, and partitions now gone.
        let (mut older, mut retire_with_table) = (Vec::new(), Vec::new());
        for (id, objects) in exports.folders() {
            if id.run == msg.run_id {
                continue;
            }
            let overlaps =
                own_partition.is_none() || id.partition.is_none() || id.partition == own_partition;
            let Some(other) = committed_record(msg, store, objects, id).await? else {
                // Uncommitted: a run still exporting, which settles it.
                continue;
            };
            let Some(started) = self.run_started(store, id.run, &other).await? else {
                tracing::warn!(
                    folder = id.folder(msg),
                    "leaving a folder of a run with no manifest"
                );
                continue;
            };
            let newer = (started, id.run) > ours;
            if newer && overlaps {
                return self.supersede(msg, store, &exports, id.run).await;
            }
            if newer {
                continue;
            }
            match (own_partition, id.partition) {
                (Some(_), None) => retire_with_table.push(id),
                (Some(own), Some(other)) if own != other => retire_with_table.push(id),
                _ => older.push(id),
            }
        }

        let own = FolderId {
            partition: own_partition,
            run: &msg.run_id,
        };
        let committed: Option<TableManifest> = serde_json::from_slice(record).ok();
        let ours_listed: HashSet<&str> = exports.keys(own).into_iter().collect();
        let intact = committed
            .as_ref()
            .is_some_and(|m| m.files.iter().all(|f| ours_listed.contains(f.key.as_str())));
        let Some(committed) = committed.filter(|_| intact) else {
            // Never recreate a manifest over files that are gone.
            tracing::warn!(run_id = %msg.run_id, unit, "this run's export is no longer complete in {}: leaving it as it is", own.folder(msg));
            return Ok(());
        };
        let manifest_key = layout::export_manifest(&msg.source, &msg.run_id);
        if !ours_listed.contains(manifest_key.as_str()) {
            // A unit committed by an earlier version, which wrote the
            // completion record first, killed before its manifest. With its
            // summary, the next run's `--only-changed` plans from a listing
            // of the destination.
            let summary = RecordBody::of(&committed).summary;
            store
                .write_if_absent(&manifest_key, record, Some(&summary))
                .await
                .map_err(io("writing the export manifest"))?;
        }
        // What a crashed attempt, or a delivery that lost the commit, left
        // beside the committed files.
        let mut named: HashSet<&str> = committed.files.iter().map(|f| f.key.as_str()).collect();
        let definition_key = layout::export_definition(&msg.source, &msg.run_id);
        named.extend([manifest_key.as_str(), definition_key.as_str()]);
        for key in ours_listed {
            if !named.contains(key) {
                store
                    .delete(key)
                    .await
                    .map_err(io("deleting a stale shard"))?;
            }
        }
        for id in older {
            exports.delete(store, id).await?;
            tracing::info!(folder = id.folder(msg), "deleted superseded export");
        }
        if !retire_with_table.is_empty() {
            self.retire_with_table(msg, store, &exports, retire_with_table)
                .await?;
        }
        Ok(())
    }

    /// For a partition unit: once every unit this run exports of the table
    /// is committed, deletes the older exports that stand beside them: the
    /// whole table's, and those of partitions the table no longer has (when
    /// the run took all its partitions). Before that, they still hold rows
    /// no committed export of this run holds.
    async fn retire_with_table(
        &self,
        msg: &WorkMessage,
        store: &dyn ObjectStore,
        exports: &ExportFolders<'_>,
        candidates: Vec<FolderId<'_>>,
    ) -> Result<(), UnitError> {
        let io = |what| move |e| UnitError::io(what, e);
        let manifest = self
            .runs
            .manifest(&msg.run_id, store)
            .await
            .map_err(io("reading the run manifest"))?
            .ok_or_else(|| {
                UnitError::transient(
                    "backendError",
                    format!("run {} has no manifest", msg.run_id),
                )
            })?;
        let table = manifest.table_plan(&msg.source);
        let current: HashSet<&str> = table.partitions.iter().map(String::as_str).collect();
        let doomed: Vec<FolderId> = candidates
            .into_iter()
            .filter(|id| match id.partition {
                None => table.covered,
                Some(p) => table.covered && !current.contains(p),
            })
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        // This run's units of the table with a manifest in the listing
        // (this one's included) are committed; the listing was taken after
        // this unit's commit, so of two units committing at once the later
        // sees the other. Their completion records are written after they
        // settle; those also count units a newer run's export superseded.
        let done_prefix = layout::done_prefix(&msg.run_id);
        let mut committed: HashSet<String> = store
            .list(&format!("{done_prefix}{}$", table_unit_prefix(msg)))
            .await
            .map_err(io("listing the run's completion records"))?
            .iter()
            .filter_map(|o| layout::unit_of_record(&done_prefix, &o.key).map(str::to_string))
            .collect();
        for (id, objects) in exports.folders() {
            let manifest = layout::export_manifest(&id.source(msg), id.run);
            if id.run == msg.run_id && objects.iter().any(|o| o.key == manifest) {
                committed.insert(id.unit(msg));
            }
        }
        if !table.units.iter().all(|u| committed.contains(u)) {
            // A unit of the table is still to commit: it retires them.
            return Ok(());
        }
        for id in doomed {
            exports.delete(store, id).await?;
            tracing::info!(
                folder = id.folder(msg),
                "retired: the table's units of this run replace it"
            );
        }
        Ok(())
    }

    /// A newer run committed this unit first: say so, and delete this run's
    /// export, which must not stand beside (or be taken for) the newer one.
    async fn supersede(
        &self,
        msg: &WorkMessage,
        store: &dyn ObjectStore,
        exports: &ExportFolders<'_>,
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
        let own = FolderId {
            partition: msg.source.partition.as_deref(),
            run: &msg.run_id,
        };
        exports.delete(store, own).await?;
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

/// The name this run gives the table's units before `$`: `TABLE`, or
/// `DATASET.TABLE` in a run of several datasets.
fn table_unit_prefix(msg: &WorkMessage) -> String {
    match &msg.unit {
        Some(_) => format!("{}.{}", msg.source.dataset, msg.source.table),
        None => msg.source.table.clone(),
    }
}

/// One run's export folder of a table: the whole table's, or a partition's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FolderId<'a> {
    partition: Option<&'a str>,
    run: &'a str,
}

impl FolderId<'_> {
    fn source(&self, msg: &WorkMessage) -> SourceTable {
        SourceTable {
            partition: self.partition.map(str::to_string),
            ..msg.source.clone()
        }
    }

    fn folder(&self, msg: &WorkMessage) -> String {
        layout::export_folder(&self.source(msg), self.run)
    }

    /// The unit's name in a run that names its units as `msg`'s run does.
    fn unit(&self, msg: &WorkMessage) -> String {
        let unit = self.source(msg).unit();
        match &msg.unit {
            Some(_) => format!("{}.{unit}", msg.source.dataset),
            None => unit,
        }
    }
}

/// A table's folder as listed, grouped into export folders.
struct ExportFolders<'a> {
    folders: BTreeMap<FolderId<'a>, Vec<&'a ObjectInfo>>,
}

impl<'a> ExportFolders<'a> {
    fn of(dataset: &str, listed: &'a [ObjectInfo]) -> ExportFolders<'a> {
        let mut folders: BTreeMap<FolderId, Vec<&ObjectInfo>> = BTreeMap::new();
        for object in listed {
            if let Some(path) = layout::ExportPath::parse(dataset, &object.key) {
                let id = FolderId {
                    partition: path.partition,
                    run: path.run,
                };
                folders.entry(id).or_default().push(object);
            }
        }
        ExportFolders { folders }
    }

    fn folders(&self) -> impl Iterator<Item = (FolderId<'a>, &[&'a ObjectInfo])> + '_ {
        self.folders
            .iter()
            .map(|(id, objects)| (*id, objects.as_slice()))
    }

    fn keys(&self, id: FolderId<'_>) -> Vec<&'a str> {
        self.folders
            .get(&id)
            .into_iter()
            .flatten()
            .map(|o| o.key.as_str())
            .collect()
    }

    /// Deletes every listed object of one export folder, its manifest last.
    async fn delete(&self, store: &dyn ObjectStore, id: FolderId<'_>) -> Result<(), UnitError> {
        delete_export_files(store, self.keys(id))
            .await
            .map_err(|e| UnitError::io("deleting an export's files", e))
    }
}

/// Deletes the objects `keys` of one export folder, its manifest last: a
/// task killed half-way leaves the folder committed, so whoever settles or
/// retires it next still sees an export to delete, not an export that some
/// run is still writing.
pub(crate) async fn delete_export_files(
    store: &dyn ObjectStore,
    mut keys: Vec<&str>,
) -> anyhow::Result<()> {
    keys.sort_by_key(|key| layout::is_export_manifest(key));
    for key in keys {
        store.delete(key).await?;
    }
    Ok(())
}

/// The commit of another run's export folder `id` of this table, if that
/// run committed it. The folder's manifest is the commit, kept with the
/// export, so it outlives the run records (which a lifecycle rule may
/// expire while `--only-changed` keeps the export current); a listing may
/// carry it as the summary. Without one, the run's completion record (an
/// earlier version wrote it first).
async fn committed_record(
    msg: &WorkMessage,
    store: &dyn ObjectStore,
    objects: &[&ObjectInfo],
    id: FolderId<'_>,
) -> Result<Option<Vec<u8>>, UnitError> {
    let io = |what| move |e| UnitError::io(what, e);
    let manifest_key = layout::export_manifest(&id.source(msg), id.run);
    if let Some(manifest) = objects.iter().find(|o| o.key == manifest_key) {
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
        .read(&layout::done_record(id.run, &id.unit(msg)))
        .await
        .map_err(io("reading another run's completion record"))
}

/// What one try of an export found or did.
enum Tried {
    Exported(ExportResult),
    AlreadyCommitted(Commit),
}

/// A unit's committed export, as a delivery holds it.
struct Commit {
    /// The folder's manifest, or the completion record (the same document).
    record: Vec<u8>,
    /// Whether the completion record is written.
    recorded: bool,
}

/// A commit of the unit by an earlier delivery: its completion record, or
/// its folder's manifest alone when that delivery was killed before it
/// settled.
async fn find_commit(
    msg: &WorkMessage,
    store: &dyn ObjectStore,
) -> Result<Option<Commit>, UnitError> {
    let done = store
        .read(&layout::done_record(&msg.run_id, &msg.unit()))
        .await
        .map_err(|e| UnitError::io("reading completion record", e))?;
    if let Some(record) = done {
        return Ok(Some(Commit {
            record,
            recorded: true,
        }));
    }
    let manifest = store
        .read(&layout::export_manifest(&msg.source, &msg.run_id))
        .await
        .map_err(|e| UnitError::io("reading the export manifest", e))?;
    Ok(manifest.map(|record| Commit {
        record,
        recorded: false,
    }))
}

/// Deletes what a failed export of this run left in its folder, unless the
/// unit was committed meanwhile (by another delivery): no file outlives a
/// failed export.
async fn remove_uncommitted(msg: &WorkMessage, store: &dyn ObjectStore) -> Result<(), UnitError> {
    if find_commit(msg, store).await?.is_some() {
        return Ok(());
    }
    store
        .delete_all(&layout::export_folder(&msg.source, &msg.run_id))
        .await
        .map_err(|e| UnitError::io("deleting the failed export's files", e))
}

/// A URI the message names that no adapter accepts is the message's fault;
/// a client that cannot start (credentials, network) is not.
pub(crate) fn open_failure(field: &str, err: anyhow::Error) -> UnitError {
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
        let beat = Heartbeat::start(
            Arc::clone(&store),
            &msg,
            self.task.to_string(),
            self.heartbeat,
        );
        let exported = match &msg.restore {
            Some(target) => {
                let restorer = Restorer {
                    backends: &self.backends,
                    retry: &self.retry,
                    task: &self.task,
                };
                let restore = RestoreDelivery {
                    msg: &msg,
                    target,
                    attempt: delivery.delivery_attempt,
                    started_at,
                };
                restorer.restore(&restore, store.as_ref(), cancel).await
            }
            None => {
                self.export(
                    &msg,
                    store.as_ref(),
                    delivery.delivery_attempt,
                    started_at,
                    cancel,
                )
                .await
            }
        };
        beat.stop().await;
        match exported {
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
        let Some(msg) = WorkMessage::decode_for_record(&delivery.data) else {
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
        // A message refused for its names made no files, and its folder
        // would be a path outside the unit's; a restore writes no files.
        if msg.check_names().is_err() || msg.restore.is_some() {
            return;
        }
        if let Err(err) = remove_uncommitted(&msg, store.as_ref()).await {
            tracing::warn!(run_id = %msg.run_id, unit, error = %err, "cannot delete the failed export's files");
        }
    }

    async fn progress(&self) -> Progress {
        self.runs.progress().await
    }

    async fn held_elsewhere(&self) -> bool {
        let fresh = self.heartbeat * heartbeat::STALE_AFTER;
        match self.runs.held_elsewhere(fresh).await {
            Ok(held) => held,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "cannot read the run's heartbeats");
                false
            }
        }
    }
}
