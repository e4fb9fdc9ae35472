//! The work-queue port, shaped after Pub/Sub: topics take messages,
//! subscriptions lease them out until they are acked.
//!
//! The producer publishes one message per unit to a [`Topic`]; workers pull
//! from a [`Subscription`] and ack a message only once its export is
//! committed. An adapter must give Pub/Sub's guarantees: a publish returns
//! once stored, a lease that lapses or is nacked redelivers the message
//! with a higher [`Delivery::delivery_attempt`], and an ack removes it for
//! good. The embedded adapter, a SQLite file
//! ([`LocalTopic`](crate::adapters::local::queue::LocalTopic) and
//! [`LocalSubscription`](crate::adapters::local::queue::LocalSubscription),
//! `queue://PATH#NAME`), shows the contract:
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//!
//! use bqdrain::adapters::local::queue::{LocalSubscription, LocalTopic};
//! use bqdrain::contract::message::Envelope;
//! use bqdrain::ports::queue::{ReceiveSettings, Subscription, Topic};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let uri = format!("queue://{}/queue.db#work", dir.path().display());
//! let message = |body: &str| Envelope {
//!     data: body.as_bytes().to_vec(),
//!     attributes: BTreeMap::from([("table".to_string(), body.to_string())]),
//! };
//!
//! // Publishing makes the queue file; subscribing needs it to exist.
//! let topic = LocalTopic::open(&uri, "--topic")?;
//! let ids = topic.publish(vec![message("orders"), message("users")]).await?;
//! assert_eq!(ids.len(), 2);
//!
//! let work = LocalSubscription::open(&uri, "--subscription", &ReceiveSettings::new(2))?;
//! let first = work.pull(10, Duration::from_secs(1)).await?;
//! assert_eq!(first.len(), 2);
//! assert_eq!(first[0].delivery_attempt, 1);
//!
//! // Acked: gone for good. Nacked: delivered again, one attempt later.
//! work.ack(&[first[0].ack_id.clone()]).await?;
//! work.nack(&first[1].ack_id).await?;
//! let again = work.pull(10, Duration::from_secs(1)).await?;
//! assert_eq!(again.len(), 1);
//! assert_eq!(again[0].data, first[1].data);
//! assert_eq!(again[0].delivery_attempt, 2);
//! work.ack(&[again[0].ack_id.clone()]).await?;
//! assert_eq!(work.depth_if_known().await?, Some(0));
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::contract::message::Envelope;

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

    /// For a [`Sweep`], which holds what it has looked at until it ends.
    pub fn sweep() -> ReceiveSettings {
        ReceiveSettings::new(SWEEP_MAX_HELD)
    }
}

/// Messages a sweep may hold at once: far above any dead-letter backlog
/// (a run of 10,000 tables that all failed, ten times over).
pub const SWEEP_MAX_HELD: usize = 100_000;
/// Messages asked for per pull of a sweep.
const SWEEP_BATCH: usize = 1000;
/// How long a sweep's pull waits; the first waits longer, as a streaming
/// pull needs a moment to open.
const SWEEP_WAIT: Duration = Duration::from_secs(1);
const SWEEP_FIRST_WAIT: Duration = Duration::from_secs(5);
/// Pulls in a row that bring nothing new before a sweep concludes it has
/// seen the whole backlog: one quiet second can be a pause in delivery.
const SWEEP_QUIET_PULLS: u32 = 3;

/// One pass over a subscription's backlog (the dead-letter queue, for
/// `replay` and `status --reconcile`): hands out every message once, while
/// it keeps what was handed out leased, and ends once pulls stop bringing
/// new messages. Whatever the caller does not settle, [`Sweep::release`]
/// gives back.
pub struct Sweep<'a> {
    from: &'a dyn Subscription,
    seen: HashSet<String>,
    /// Messages handed out before whose lease lapsed and came back.
    repeats: Vec<Delivery>,
    pulls: usize,
}

impl<'a> Sweep<'a> {
    pub fn new(from: &'a dyn Subscription) -> Sweep<'a> {
        Sweep {
            from,
            seen: HashSet::new(),
            repeats: Vec::new(),
            pulls: 0,
        }
    }

    /// The next messages not handed out before; `None` once the backlog
    /// is through.
    pub async fn next(&mut self) -> anyhow::Result<Option<Vec<Delivery>>> {
        if self.pulls == 0 && self.from.depth_if_known().await? == Some(0) {
            return Ok(None);
        }
        let mut quiet = 0;
        while quiet < SWEEP_QUIET_PULLS {
            let wait = if self.seen.is_empty() && quiet == 0 {
                SWEEP_FIRST_WAIT
            } else {
                SWEEP_WAIT
            };
            self.pulls += 1;
            let (new, repeats): (Vec<Delivery>, Vec<Delivery>) = self
                .from
                .pull(SWEEP_BATCH, wait)
                .await?
                .into_iter()
                .partition(|d| !self.seen.contains(&d.message_id));
            self.repeats.extend(repeats);
            if !new.is_empty() {
                self.seen.extend(new.iter().map(|d| d.message_id.clone()));
                return Ok(Some(new));
            }
            quiet += 1;
        }
        Ok(None)
    }

    /// Pulls made so far: none when the backlog was known to be empty.
    pub fn pulls(&self) -> usize {
        self.pulls
    }

    /// Messages handed out so far.
    pub fn seen(&self) -> usize {
        self.seen.len()
    }

    /// Gives back `held` and every repeat, and closes the subscription.
    pub async fn release(self, held: Vec<Delivery>) -> anyhow::Result<()> {
        for d in held.iter().chain(&self.repeats) {
            self.from.nack(&d.ack_id).await?;
        }
        self.from.close().await
    }
}

/// Where messages are published; see the [module](self) for the contract
/// and an example.
#[async_trait]
pub trait Topic: Send + Sync {
    fn uri(&self) -> &str;

    /// Publishes and returns only once every message is confirmed stored,
    /// with their ids in order.
    async fn publish(&self, messages: Vec<Envelope>) -> anyhow::Result<Vec<String>>;
}

/// Where workers lease messages from; see the [module](self) for the
/// contract and an example.
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

    /// The topic this subscription receives from: a dead-letter topic or a
    /// replay target that is this topic would feed the subscription its own
    /// messages for ever.
    fn topic(&self) -> String;

    /// The longest the subscription's retry policy holds a nacked message
    /// back before redelivering it; zero without a policy (redelivery at
    /// once). A worker waiting for a run to finish waits at least this long.
    fn max_backoff(&self) -> Duration;

    /// How many messages the subscription holds, leased or not, where the
    /// backend can count them exactly (a local queue; Pub/Sub cannot):
    /// a sweep of an empty one then ends without waiting.
    async fn depth_if_known(&self) -> anyhow::Result<Option<u64>> {
        Ok(None)
    }

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
