//! Dead letters bqdrain did not record. A message that Pub/Sub's own
//! dead-letter policy forwarded (its task was killed by OOM or timeout on
//! every attempt) leaves no dead-letter record, so its run would stay
//! pending for ever. Reconciling reads the dead-letter subscription without
//! consuming it (every message is given back, for replay) and writes the
//! records that are missing.

use serde::Serialize;

use crate::contract::message::WorkMessage;
use crate::engine::dead_letter::write_dead_record;
use crate::engine::drain::{ATTR_DELIVERY_ATTEMPT, ATTR_ERROR_MESSAGE, ATTR_ERROR_REASON};
use crate::engine::layout;
use crate::error::UnitError;
use crate::ports::queue::{Delivery, Subscription, Sweep};
use crate::ports::store::ObjectStore;

/// The attribute Pub/Sub adds to a message its policy dead-lettered.
const ATTR_SOURCE_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";
/// The reason recorded for such a message.
const REASON_MAX_ATTEMPTS: &str = "maxDeliveryAttempts";

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    /// Dead letters looked at, of any run.
    pub seen: usize,
    /// Units of the run given a dead-letter record they lacked.
    pub recorded: Vec<String>,
}

/// Why a dead letter is there and after how many attempts: bqdrain's
/// attributes when a worker dead-lettered it, else Pub/Sub's.
fn cause(d: &Delivery) -> (UnitError, u32) {
    let attr = |name: &str| d.attributes.get(name);
    let attempts = attr(ATTR_DELIVERY_ATTEMPT)
        .or(attr(ATTR_SOURCE_DELIVERY_COUNT))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let error = match attr(ATTR_ERROR_REASON) {
        Some(reason) => UnitError::permanent(
            reason,
            attr(ATTR_ERROR_MESSAGE).cloned().unwrap_or_default(),
        ),
        None => UnitError::permanent(
            REASON_MAX_ATTEMPTS,
            format!(
                "the subscription's dead-letter policy took it after {attempts} delivery \
                 attempts without an ack (the task was killed or stalled each time)"
            ),
        ),
    };
    (error, attempts)
}

/// Gives every dead letter of `run_id` in `from` that has neither a
/// completion nor a dead-letter record in `store` a dead-letter record.
pub async fn reconcile(
    from: &dyn Subscription,
    store: &dyn ObjectStore,
    run_id: &str,
) -> anyhow::Result<ReconcileReport> {
    let mut sweep = Sweep::new(from);
    let mut held = Vec::new();
    let mut report = ReconcileReport::default();
    let outcome = async {
        while let Some(batch) = sweep.next().await? {
            for d in batch {
                if let Some(msg) = WorkMessage::decode_for_record(&d.data) {
                    if msg.run_id == run_id && !settled(store, &msg).await? {
                        let (error, attempts) = cause(&d);
                        write_dead_record(store, &msg, &error, attempts, None).await?;
                        report.recorded.push(msg.unit());
                    }
                }
                held.push(d);
            }
        }
        anyhow::Ok(())
    }
    .await;
    report.seen = sweep.seen();
    sweep.release(held).await?;
    outcome?;
    if !report.recorded.is_empty() {
        tracing::info!(run_id, units = ?report.recorded, "recorded dead letters the workers had not");
    }
    Ok(report)
}

async fn settled(store: &dyn ObjectStore, msg: &WorkMessage) -> anyhow::Result<bool> {
    let unit = msg.unit();
    for key in [
        layout::done_record(&msg.run_id, &unit),
        layout::dead_record(&msg.run_id, &unit),
    ] {
        if store.read(&key).await?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}
