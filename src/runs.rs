//! A run's state, read from the destination store: the run manifest says
//! which units to expect, completion and dead-letter records say which are
//! settled. Workers use it to know when to stop; `status` to report.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::Serialize;

use crate::drain::Progress;
use crate::layout::{self, DeadRecord, RunManifest, TableManifest};
use crate::store::ObjectStore;

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
    pub pending: usize,
}

async fn read_json<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    key: &str,
) -> anyhow::Result<Option<T>> {
    match store.read(key).await? {
        None => Ok(None),
        Some(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {key}"))?,
        )),
    }
}

async fn record_units(store: &dyn ObjectStore, prefix: &str) -> anyhow::Result<HashSet<String>> {
    Ok(store
        .list(prefix)
        .await?
        .iter()
        .filter_map(|o| layout::unit_of_record(prefix, &o.key).map(str::to_string))
        .collect())
}

impl RunState {
    /// `None` when the run has no manifest (yet). With `details`, reads every
    /// record for files, rows and reasons; without, only lists them.
    pub async fn load(
        store: &dyn ObjectStore,
        run_id: &str,
        details: bool,
    ) -> anyhow::Result<Option<RunState>> {
        let Some(manifest) = read_json::<RunManifest>(store, &layout::run_manifest(run_id)).await?
        else {
            return Ok(None);
        };
        let done = record_units(store, &layout::done_prefix(run_id)).await?;
        let dead = record_units(store, &layout::dead_prefix(run_id)).await?;
        let mut units = Vec::with_capacity(manifest.units.len());
        for planned in &manifest.units {
            let unit = &planned.unit;
            // A completion record wins over a dead-letter record: the unit
            // was replayed and exported since.
            let state = if done.contains(unit) {
                let manifest = if details {
                    read_json(store, &layout::done_record(run_id, unit)).await?
                } else {
                    None
                };
                UnitState::Exported { manifest }
            } else if dead.contains(unit) {
                let record = if details {
                    read_json(store, &layout::dead_record(run_id, unit)).await?
                } else {
                    None
                };
                UnitState::DeadLettered { record }
            } else {
                UnitState::Pending
            };
            units.push(UnitStatus {
                unit: unit.clone(),
                state,
            });
        }
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
    complete: bool,
}

impl RunTracker {
    pub fn observe(&self, run_id: &str, store: Arc<dyn ObjectStore>) {
        let mut runs = self.runs.lock().expect("run tracker lock poisoned");
        runs.entry(run_id.to_string()).or_insert(TrackedRun {
            store,
            complete: false,
        });
    }

    /// Complete when at least one run was seen and every run seen has each
    /// expected unit exported or dead-lettered; else the first open run.
    pub async fn progress(&self) -> Progress {
        let open: Vec<(String, Arc<dyn ObjectStore>)> = {
            let runs = self.runs.lock().expect("run tracker lock poisoned");
            if runs.is_empty() {
                return Progress::NoRun;
            }
            runs.iter()
                .filter(|(_, r)| !r.complete)
                .map(|(id, r)| (id.clone(), Arc::clone(&r.store)))
                .collect()
        };
        for (run_id, store) in open {
            match RunState::load(store.as_ref(), &run_id, false).await {
                Ok(Some(state)) if state.totals().pending == 0 => {
                    tracing::info!(run_id, "run complete");
                    if let Some(entry) = self
                        .runs
                        .lock()
                        .expect("run tracker lock poisoned")
                        .get_mut(&run_id)
                    {
                        entry.complete = true;
                    }
                }
                Ok(state) => {
                    let pending = state.map(|s| s.totals().pending);
                    return Progress::Incomplete { run_id, pending };
                }
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
}
