//! A task's heartbeat while it exports one unit: written once the export
//! has run for an interval, refreshed every interval, deleted when it ends.
//! An idle task whose run is incomplete reads them to tell units another
//! live task is exporting (wait no more: exit 0) from units nobody holds
//! (wait for a redelivery, then fail where someone sees it). Exports shorter
//! than an interval, most of them, write nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::contract::message::{WorkMessage, SCHEMA_VERSION};
use crate::engine::layout::{self, ActiveRecord, RecordBody};
use crate::ports::store::ObjectStore;

/// The default interval; a heartbeat older than [`STALE_AFTER`] intervals
/// is a task's that died.
pub const EVERY: Duration = Duration::from_secs(60);
pub const STALE_AFTER: u32 = 3;

pub struct Heartbeat {
    beating: tokio::task::JoinHandle<()>,
    /// Set before the first write begins, so that a write cut short by
    /// `stop` is still deleted.
    written: Arc<AtomicBool>,
    key: String,
    store: Arc<dyn ObjectStore>,
}

impl Heartbeat {
    pub fn start(
        store: Arc<dyn ObjectStore>,
        msg: &WorkMessage,
        task: String,
        every: Duration,
    ) -> Heartbeat {
        let written = Arc::new(AtomicBool::new(false));
        let key = layout::active_record(&msg.run_id, &msg.unit());
        let beating = {
            let (store, written, key) = (Arc::clone(&store), Arc::clone(&written), key.clone());
            let mut record = ActiveRecord {
                v: SCHEMA_VERSION,
                run_id: msg.run_id.clone(),
                unit: msg.unit(),
                task,
                since: Utc::now(),
                at: Utc::now(),
            };
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    record.at = Utc::now();
                    let body = RecordBody::of(&record);
                    written.store(true, Ordering::SeqCst);
                    if let Err(err) = store.write(&key, &body.pretty, Some(&body.summary)).await {
                        tracing::warn!(key, error = %format!("{err:#}"), "cannot write the export's heartbeat");
                    }
                }
            })
        };
        Heartbeat {
            beating,
            written,
            key,
            store,
        }
    }

    /// Stops beating and deletes the heartbeat, if one was written.
    pub async fn stop(self) {
        self.beating.abort();
        let _ = self.beating.await;
        if self.written.load(Ordering::SeqCst) {
            if let Err(err) = self.store.delete(&self.key).await {
                tracing::warn!(key = self.key, error = %format!("{err:#}"), "cannot delete the export's heartbeat; it goes stale");
            }
        }
    }
}
