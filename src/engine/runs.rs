//! A run's state, read from the destination store: the run manifest says
//! which units to expect, completion and dead-letter records say which are
//! settled. Workers use it to know when to stop; `status` to report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::engine::drain::Progress;
use crate::engine::layout::{
    self, read_json, ActiveRecord, DeadRecord, PlannedUnit, RunManifest, SupersededRecord,
    TableManifest,
};
use crate::engine::retry::RetryPolicy;
use crate::ports::store::ObjectStore;

/// Records read at once for `status` where the listing carried no summary
/// (the local store, records of earlier versions, long ones).
const READ_CONCURRENCY: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum UnitState {
    Pending,
    Exported {
        /// Present when details were read.
        #[serde(skip_serializing_if = "Option::is_none")]
        manifest: Option<TableManifest>,
    },
    DeadLettered {
        #[serde(skip_serializing_if = "Option::is_none")]
        record: Option<DeadRecord>,
    },
    /// A newer run committed the unit first; its export stands instead.
    Superseded {
        #[serde(skip_serializing_if = "Option::is_none")]
        record: Option<SupersededRecord>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct UnitStatus {
    pub unit: String,
    #[serde(flatten)]
    pub state: UnitState,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunState {
    pub manifest: RunManifest,
    pub units: Vec<UnitStatus>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub expected: usize,
    pub exported: usize,
    pub dead_lettered: usize,
    pub superseded: usize,
    pub pending: usize,
}

/// Which units of a run have which records, from three listings, with the
/// records' summaries where the store keeps them.
struct Records {
    done: Summaries,
    dead: Summaries,
    superseded: Summaries,
}

/// Record name (see [`layout::record_name`]) -> its record's summary, if
/// the listing carried one.
type Summaries = HashMap<String, Option<String>>;

#[derive(Clone, Copy)]
enum Settled {
    Pending,
    Exported,
    DeadLettered,
    Superseded,
}

impl Records {
    async fn list(store: &dyn ObjectStore, run_id: &str) -> anyhow::Result<Records> {
        let units = |prefix: String| async move {
            anyhow::Ok(
                RetryPolicy::default()
                    .run_any("listing a run's records", || store.list(&prefix))
                    .await?
                    .into_iter()
                    .filter_map(|o| {
                        let name = layout::unit_of_record(&prefix, &o.key)?.to_string();
                        Some((name, o.summary))
                    })
                    .collect::<Summaries>(),
            )
        };
        let (done, dead, superseded) = tokio::try_join!(
            units(layout::done_prefix(run_id)),
            units(layout::dead_prefix(run_id)),
            units(layout::superseded_prefix(run_id)),
        )?;
        Ok(Records {
            done,
            dead,
            superseded,
        })
    }

    /// A unit's record of `kind`, when details are asked for: from the
    /// listing's summary, else read.
    async fn detail<T: serde::de::DeserializeOwned>(
        &self,
        details: bool,
        store: &dyn ObjectStore,
        run_id: &str,
        unit: &str,
        kind: Settled,
    ) -> anyhow::Result<Option<T>> {
        let (listed, key) = match kind {
            _ if !details => return Ok(None),
            Settled::Pending => return Ok(None),
            Settled::Exported => (&self.done, layout::done_record(run_id, unit)),
            Settled::DeadLettered => (&self.dead, layout::dead_record(run_id, unit)),
            Settled::Superseded => (&self.superseded, layout::superseded_record(run_id, unit)),
        };
        match listed.get(&layout::record_name(unit)) {
            Some(Some(summary)) => {
                Ok(Some(serde_json::from_str(summary).with_context(|| {
                    format!("parsing the summary of {key}")
                })?))
            }
            _ => read_json(store, &key).await,
        }
    }

    /// A superseded record wins (the unit was committed, then found a newer
    /// export); then a completion record (a dead-lettered unit may have been
    /// replayed and exported since).
    fn of(&self, unit: &str) -> Settled {
        let name = layout::record_name(unit);
        if self.superseded.contains_key(&name) {
            Settled::Superseded
        } else if self.done.contains_key(&name) {
            Settled::Exported
        } else if self.dead.contains_key(&name) {
            Settled::DeadLettered
        } else {
            Settled::Pending
        }
    }
}

impl RunState {
    /// `None` when the run has no manifest (yet). With `details`, takes every
    /// record's files, rows and reasons from its summary in the listing, or
    /// reads the record, several at a time; without, only lists them.
    pub async fn load(
        store: &dyn ObjectStore,
        run_id: &str,
        details: bool,
    ) -> anyhow::Result<Option<RunState>> {
        let Some(manifest) = read_json::<RunManifest>(store, &layout::run_manifest(run_id)).await?
        else {
            return Ok(None);
        };
        let records = &Records::list(store, run_id).await?;
        let units = stream::iter(&manifest.units)
            .map(|planned| {
                let settled = records.of(&planned.unit);
                async move {
                    let unit = &planned.unit;
                    let state = match settled {
                        Settled::Pending => UnitState::Pending,
                        Settled::Exported => UnitState::Exported {
                            manifest: records
                                .detail(details, store, run_id, unit, settled)
                                .await?,
                        },
                        Settled::DeadLettered => UnitState::DeadLettered {
                            record: records
                                .detail(details, store, run_id, unit, settled)
                                .await?,
                        },
                        Settled::Superseded => UnitState::Superseded {
                            record: records
                                .detail(details, store, run_id, unit, settled)
                                .await?,
                        },
                    };
                    anyhow::Ok(UnitStatus {
                        unit: unit.clone(),
                        state,
                    })
                }
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(Some(RunState { manifest, units }))
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            expected: self.units.len(),
            ..Totals::default()
        };
        for u in &self.units {
            match u.state {
                UnitState::Pending => t.pending += 1,
                UnitState::Exported { .. } => t.exported += 1,
                UnitState::DeadLettered { .. } => t.dead_lettered += 1,
                UnitState::Superseded { .. } => t.superseded += 1,
            }
        }
        t
    }
}

/// The runs a worker has seen, and which of them are complete.
#[derive(Default)]
pub struct RunTracker {
    runs: Mutex<HashMap<String, TrackedRun>>,
}

struct TrackedRun {
    store: Arc<dyn ObjectStore>,
    /// Read once, when first needed.
    manifest: Option<Arc<RunManifest>>,
    /// Units not yet settled at the last check; `None` before the first.
    pending: Option<usize>,
    /// Listing a large run's records is not free: it is not done again
    /// before this.
    next_check: Instant,
}

/// Seconds between two completion checks of a run, per 1,000 units.
const CHECK_PAUSE_PER_1000_UNITS: Duration = Duration::from_secs(1);

impl RunTracker {
    pub fn observe(&self, run_id: &str, store: Arc<dyn ObjectStore>) {
        let mut runs = self.runs.lock().expect("run tracker lock poisoned");
        runs.entry(run_id.to_string()).or_insert(TrackedRun {
            store,
            manifest: None,
            pending: None,
            next_check: Instant::now(),
        });
    }

    /// Complete when at least one run was seen and every run seen has each
    /// expected unit settled (exported, dead-lettered or superseded); else
    /// the first open run.
    pub async fn progress(&self) -> Progress {
        let due: Vec<(String, Arc<dyn ObjectStore>)> = {
            let runs = self.runs.lock().expect("run tracker lock poisoned");
            if runs.is_empty() {
                return Progress::NoRun;
            }
            let now = Instant::now();
            let open = runs.iter().filter(|(_, r)| r.pending != Some(0));
            if let Some((run_id, run)) = open.clone().find(|(_, r)| r.next_check > now) {
                return Progress::Incomplete {
                    run_id: run_id.clone(),
                    pending: run.pending,
                };
            }
            open.map(|(id, r)| (id.clone(), Arc::clone(&r.store)))
                .collect()
        };
        for (run_id, store) in due {
            match self.check(&run_id, store.as_ref()).await {
                Ok(Some(0)) => tracing::info!(run_id, "run complete"),
                Ok(pending) => return Progress::Incomplete { run_id, pending },
                Err(err) => {
                    tracing::warn!(run_id, error = %format!("{err:#}"), "cannot read run state");
                    return Progress::Incomplete {
                        run_id,
                        pending: None,
                    };
                }
            }
        }
        Progress::Complete
    }

    /// Whether every unit still pending in the runs seen is being exported
    /// by a live task: each has a heartbeat written within `fresh`. Then an
    /// idle task may exit: the rest is in other hands, and if those hands
    /// die their leases lapse and their tasks fail, which someone sees.
    pub async fn held_elsewhere(&self, fresh: Duration) -> anyhow::Result<bool> {
        let open: Vec<(String, Arc<dyn ObjectStore>)> = {
            let runs = self.runs.lock().expect("run tracker lock poisoned");
            runs.iter()
                .filter(|(_, r)| r.pending != Some(0))
                .map(|(id, r)| (id.clone(), Arc::clone(&r.store)))
                .collect()
        };
        let now = chrono::Utc::now();
        for (run_id, store) in open {
            let Some(manifest) = self.manifest(&run_id, store.as_ref()).await? else {
                return Ok(false);
            };
            let records = Records::list(store.as_ref(), &run_id).await?;
            let prefix = layout::active_prefix(&run_id);
            let active: HashMap<String, Option<String>> = store
                .list(&prefix)
                .await?
                .into_iter()
                .filter_map(|o| {
                    Some((
                        layout::unit_of_record(&prefix, &o.key)?.to_string(),
                        o.summary,
                    ))
                })
                .collect();
            for unit in manifest.units.iter().map(|u| &u.unit) {
                if !matches!(records.of(unit), Settled::Pending) {
                    continue;
                }
                let beat: Option<ActiveRecord> = match active.get(&layout::record_name(unit)) {
                    None => return Ok(false),
                    Some(Some(summary)) => serde_json::from_str(summary).ok(),
                    Some(None) => {
                        read_json(store.as_ref(), &layout::active_record(&run_id, unit)).await?
                    }
                };
                let alive =
                    beat.is_some_and(|b| (now - b.at).to_std().is_ok_and(|age| age <= fresh));
                if !alive {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The manifest of a run this tracker has seen, read once; `None`
    /// while the run has none.
    pub async fn manifest(
        &self,
        run_id: &str,
        store: &dyn ObjectStore,
    ) -> anyhow::Result<Option<Arc<RunManifest>>> {
        let known = {
            let runs = self.runs.lock().expect("run tracker lock poisoned");
            runs.get(run_id).and_then(|r| r.manifest.clone())
        };
        if known.is_some() {
            return Ok(known);
        }
        let Some(manifest) = read_json::<RunManifest>(store, &layout::run_manifest(run_id)).await?
        else {
            return Ok(None);
        };
        let manifest = Arc::new(manifest);
        self.update(run_id, |r| r.manifest = Some(Arc::clone(&manifest)));
        Ok(Some(manifest))
    }

    /// The run's pending units now; `None` while it has no manifest.
    async fn check(&self, run_id: &str, store: &dyn ObjectStore) -> anyhow::Result<Option<usize>> {
        let Some(manifest) = self.manifest(run_id, store).await? else {
            return Ok(None);
        };
        let records = Records::list(store, run_id).await?;
        let pending = manifest
            .units
            .iter()
            .filter(|u| matches!(records.of(&u.unit), Settled::Pending))
            .count();
        let pause = CHECK_PAUSE_PER_1000_UNITS.mul_f64(manifest.units.len() as f64 / 1000.0);
        self.update(run_id, |r| {
            r.pending = Some(pending);
            r.next_check = Instant::now() + pause;
        });
        Ok(Some(pending))
    }

    fn update(&self, run_id: &str, change: impl FnOnce(&mut TrackedRun)) {
        if let Some(run) = self
            .runs
            .lock()
            .expect("run tracker lock poisoned")
            .get_mut(run_id)
        {
            change(run);
        }
    }
}

/// The units of a run that have no completion (or superseded) record: what
/// resuming the run publishes again.
pub async fn unfinished_units<'a>(
    store: &dyn ObjectStore,
    manifest: &'a RunManifest,
) -> anyhow::Result<Vec<&'a PlannedUnit>> {
    let records = Records::list(store, &manifest.run_id).await?;
    Ok(manifest
        .units
        .iter()
        .filter(|u| {
            matches!(
                records.of(&u.unit),
                Settled::Pending | Settled::DeadLettered
            )
        })
        .collect())
}
