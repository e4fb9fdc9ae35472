//! The dead-letter record: what makes a unit count as dead-lettered in its
//! run, written by the worker that gave up on it, or by `status --reconcile`
//! for a message the subscription's own policy dead-lettered.

use chrono::{DateTime, Utc};

use crate::contract::message::{WorkMessage, SCHEMA_VERSION};
use crate::engine::layout::{self, DeadRecord, RecordBody};
use crate::engine::task::TaskIdentity;
use crate::error::UnitError;
use crate::ports::store::ObjectStore;

/// The task that last tried a unit, and when that try began.
pub struct LastTry<'a> {
    pub task: &'a TaskIdentity,
    pub started_at: DateTime<Utc>,
}

/// Writes the record that makes a unit count as dead-lettered; `last_try`
/// is `None` when no worker of this process tried it.
pub async fn write_dead_record(
    store: &dyn ObjectStore,
    msg: &WorkMessage,
    error: &UnitError,
    delivery_attempt: u32,
    last_try: Option<LastTry<'_>>,
) -> anyhow::Result<()> {
    let unit = msg.unit();
    let record = DeadRecord {
        v: SCHEMA_VERSION,
        run_id: msg.run_id.clone(),
        unit: unit.clone(),
        reason: error.reason.clone(),
        message: error.message.clone(),
        delivery_attempt,
        at: Utc::now(),
        task: last_try.as_ref().map(|t| t.task.to_string()),
        task_index: last_try.as_ref().and_then(|t| t.task.index),
        started_at: last_try.as_ref().map(|t| t.started_at),
    };
    let body = RecordBody::of(&record);
    store
        .write(
            &layout::dead_record(&msg.run_id, &unit),
            &body.pretty,
            Some(&body.summary),
        )
        .await
}
