//! The work-queue port, shaped after Pub/Sub: topics take messages,
//! subscriptions lease them out until they are acked.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::message::Envelope;

/// A leased message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Handle for ack, nack and lease extension; valid while the lease holds.
    pub ack_id: String,
    pub message_id: String,
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    /// 1 on the first delivery; rises on every redelivery.
    pub delivery_attempt: u32,
    pub published_at: Option<DateTime<Utc>>,
}

impl Delivery {
    pub fn envelope(&self) -> Envelope {
        Envelope {
            data: self.data.clone(),
            attributes: self.attributes.clone(),
        }
    }
}

/// How a worker wants to receive. Adapters that stream messages (Pub/Sub)
/// size their flow control and lease management from it; others ignore it.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveSettings {
    /// Messages leased at once: the worker's concurrency, so that a task
    /// never hoards messages it cannot start.
    pub max_outstanding: usize,
    /// How long a message's lease may be extended in all: the task timeout.
    pub max_lease: Duration,
}

impl ReceiveSettings {
    pub fn new(max_outstanding: usize) -> ReceiveSettings {
        ReceiveSettings {
            max_outstanding,
            max_lease: Duration::from_secs(3600),
        }
    }
}

#[async_trait]
pub trait Topic: Send + Sync {
    fn uri(&self) -> &str;

    /// Publishes and returns only once every message is confirmed stored,
    /// with their ids in order.
    async fn publish(&self, messages: Vec<Envelope>) -> anyhow::Result<Vec<String>>;
}

#[async_trait]
pub trait Subscription: Send + Sync {
    fn uri(&self) -> &str;

    /// How long a lease lasts unless extended.
    fn ack_deadline(&self) -> Duration;

    /// The delivery attempt after which the subscription's own dead-letter
    /// policy takes the message away; `None` when it has no such policy.
    fn max_delivery_attempts(&self) -> Option<u32>;

    /// The topic the subscription's dead-letter policy forwards to, if any.
    fn dead_letter_topic(&self) -> Option<String>;

    /// The longest the subscription's retry policy holds a nacked message
    /// back before redelivering it; zero without a policy (redelivery at
    /// once). A worker waiting for a run to finish waits at least this long.
    fn max_backoff(&self) -> Duration;

    /// Leases up to `max` messages, waiting at most `wait` for the first.
    async fn pull(&self, max: usize, wait: Duration) -> anyhow::Result<Vec<Delivery>>;

    /// Removes messages for good. Acks of lapsed leases are ignored, as
    /// Pub/Sub ignores them.
    async fn ack(&self, ack_ids: &[String]) -> anyhow::Result<()>;

    /// Gives a message back for redelivery, now or after the backoff.
    async fn nack(&self, ack_id: &str) -> anyhow::Result<()>;

    /// Keeps a lease for `by` from now.
    async fn extend_lease(&self, ack_id: &str, by: Duration) -> anyhow::Result<()>;

    /// Returns once every ack and nack given so far has reached the queue.
    /// Messages still leased are given back.
    async fn close(&self) -> anyhow::Result<()> {
        Ok(())
    }
}
