//! Pub/Sub topics and subscriptions: `pubsub://projects/P/topics/T` and
//! `pubsub://projects/P/subscriptions/S`.
//!
//! Receiving is a streaming pull: the client library leases messages,
//! extends their leases while they are held (up to the maximum lease) and
//! batches acks. The adapter keeps each message's handler under a
//! synthetic ack id until the engine settles it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior, ShutdownToken};
use tokio::sync::mpsc;

use super::startup_error;
use crate::contract::message::Envelope;
use crate::error::ConfigError;
use crate::ports::queue::{Delivery, ReceiveSettings, Subscription, Topic};

pub const SCHEME: &str = "pubsub://";
const EMULATOR: &str = "PUBSUB_EMULATOR_HOST";
/// Time for a cancelled stream's reset to go out before the process exits.
const STREAM_CLOSE: Duration = Duration::from_millis(50);
/// A retry policy's maximum backoff when it sets none (Pub/Sub's default).
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Stream failures in a row (no message between) before giving up.
const MAX_STREAM_FAILURES: u32 = 5;
/// The wait before the first reopening; it doubles with each failure.
const REOPEN_DELAY: Duration = Duration::from_secs(1);
/// Pub/Sub's own limit on messages per publish request.
const MAX_BATCH: u32 = 1000;

pub fn is_pubsub(uri: &str) -> bool {
    uri.starts_with(SCHEME)
}

/// `projects/P/{collection}/NAME` from `pubsub://projects/P/{collection}/NAME`.
fn resource_name(uri: &str, flag: &str, collection: &str) -> Result<String, ConfigError> {
    let name = uri.strip_prefix(SCHEME).unwrap_or(uri);
    let parts: Vec<&str> = name.split('/').collect();
    let valid = matches!(
        parts.as_slice(),
        ["projects", project, c, id] if !project.is_empty() && *c == collection && !id.is_empty()
    );
    if !valid {
        return Err(ConfigError::new(
            flag,
            format!("{uri:?} is not a Pub/Sub {collection} URI"),
            format!("write it as {SCHEME}projects/PROJECT/{collection}/NAME"),
        ));
    }
    Ok(name.to_string())
}

pub struct PubSubTopic {
    uri: String,
    publisher: Publisher,
}

impl PubSubTopic {
    pub async fn open(uri: &str, flag: &str) -> anyhow::Result<PubSubTopic> {
        let name = resource_name(uri, flag, "topics")?;
        let builder = Publisher::builder(name)
            .set_message_count_threshold(MAX_BATCH)
            .set_delay_threshold(Duration::from_millis(5));
        let publisher = connect!(builder, "Pub/Sub", EMULATOR);
        Ok(PubSubTopic {
            uri: uri.to_string(),
            publisher,
        })
    }
}

#[async_trait]
impl Topic for PubSubTopic {
    fn uri(&self) -> &str {
        &self.uri
    }

    async fn publish(&self, messages: Vec<Envelope>) -> anyhow::Result<Vec<String>> {
        // Every publish is handed to the batcher before the first wait.
        let pending: Vec<_> = messages
            .into_iter()
            .map(|m| {
                self.publisher
                    .publish(Message::new().set_data(m.data).set_attributes(m.attributes))
            })
            .collect();
        let mut ids = Vec::with_capacity(pending.len());
        for confirmation in pending {
            ids.push(
                confirmation
                    .await
                    .with_context(|| format!("publishing to {}", self.uri))?,
            );
        }
        Ok(ids)
    }
}

type Received = google_cloud_pubsub::Result<(Message, Handler)>;

pub struct PubSubSubscription {
    uri: String,
    ack_deadline: Duration,
    max_delivery_attempts: Option<u32>,
    dead_letter_topic: Option<String>,
    topic: String,
    /// The retry policy's maximum backoff; zero without a retry policy.
    max_backoff: Duration,
    received: tokio::sync::Mutex<mpsc::Receiver<Received>>,
    /// The current stream's token; a reopened stream brings a new one.
    stop: Arc<Mutex<ShutdownToken>>,
    /// The task that owns the stream; it ends once the stream is dropped.
    forwarder: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Handlers of the messages the engine holds, by the ack id it was given.
    leased: Mutex<HashMap<String, Handler>>,
    next_ack_id: AtomicU64,
}

impl PubSubSubscription {
    pub async fn open(
        uri: &str,
        flag: &str,
        settings: &ReceiveSettings,
    ) -> anyhow::Result<PubSubSubscription> {
        let name = resource_name(uri, flag, "subscriptions")?;
        let admin = connect!(SubscriptionAdmin::builder(), "Pub/Sub", EMULATOR);
        let config = admin
            .get_subscription()
            .set_subscription(&name)
            .send()
            .await
            .map_err(|e| match e.http_status_code() {
                Some(404) => ConfigError::new(
                    flag,
                    format!("subscription {name} does not exist"),
                    "create it (terraform/ does) or fix the name",
                )
                .into(),
                _ => startup_error(&format!("reading subscription {name}"), EMULATOR, e),
            })?;
        let subscriber = connect!(Subscriber::builder(), "Pub/Sub", EMULATOR);
        let ack_deadline = Duration::from_secs(config.ack_deadline_seconds.clamp(10, 600) as u64);
        let opener = StreamOpener {
            subscriber,
            name,
            settings: *settings,
            ack_deadline,
        };
        let stream = opener.open();
        let stop = Arc::new(Mutex::new(stream.shutdown_token()));
        let (tx, rx) = mpsc::channel(settings.max_outstanding.max(1));
        let forwarder = tokio::spawn(forward(opener, stream, tx, Arc::clone(&stop)));
        let max_backoff = config.retry_policy.as_ref().map_or(Duration::ZERO, |r| {
            r.maximum_backoff.as_ref().map_or(DEFAULT_MAX_BACKOFF, |d| {
                Duration::from_secs(d.seconds().max(0) as u64)
            })
        });
        let policy = config
            .dead_letter_policy
            .filter(|p| !p.dead_letter_topic.is_empty());
        Ok(PubSubSubscription {
            uri: uri.to_string(),
            ack_deadline,
            max_delivery_attempts: policy
                .as_ref()
                .map(|p| p.max_delivery_attempts.max(5) as u32),
            dead_letter_topic: policy.map(|p| format!("{SCHEME}{}", p.dead_letter_topic)),
            topic: format!("{SCHEME}{}", config.topic),
            max_backoff,
            received: tokio::sync::Mutex::new(rx),
            stop,
            forwarder: Mutex::new(Some(forwarder)),
            leased: Mutex::new(HashMap::new()),
            next_ack_id: AtomicU64::new(0),
        })
    }

    fn lease(&self, (message, handler): (Message, Handler)) -> Delivery {
        let ack_id = self.next_ack_id.fetch_add(1, Ordering::Relaxed).to_string();
        let delivery = Delivery {
            ack_id: ack_id.clone(),
            message_id: message.message_id,
            data: message.data.to_vec(),
            attributes: message.attributes.into_iter().collect::<BTreeMap<_, _>>(),
            // Pub/Sub counts attempts only on subscriptions with a
            // dead-letter policy; without one every delivery reads as first.
            delivery_attempt: handler.delivery_attempt().map_or(1, |n| n.max(1) as u32),
            published_at: message
                .publish_time
                .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds(), t.nanos() as u32)),
        };
        self.leased_handlers().insert(ack_id, handler);
        delivery
    }

    fn leased_handlers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handler>> {
        self.leased.lock().expect("lease map lock poisoned")
    }

    fn take(&self, ack_id: &str) -> Option<Handler> {
        self.leased_handlers().remove(ack_id)
    }
}

/// What it takes to open the streaming pull, again after a failure.
struct StreamOpener {
    subscriber: Subscriber,
    name: String,
    settings: ReceiveSettings,
    ack_deadline: Duration,
}

impl StreamOpener {
    fn open(&self) -> MessageStream {
        self.subscriber
            .subscribe(&self.name)
            .set_max_outstanding_messages(self.settings.max_outstanding as i64)
            .set_max_lease(self.settings.max_lease)
            .set_max_lease_extension(self.ack_deadline)
            .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
            .build()
    }
}

/// Moves messages from the stream into a channel, whose `recv` (unlike the
/// stream's `next`) is safe to abandon when a pull times out.
///
/// The client library retries transient errors itself; an error that
/// reaches here ended the stream (the subscription is gone, access was
/// revoked). The stream is reopened with backoff, in case that is
/// repaired; after [`MAX_STREAM_FAILURES`] failures with no message in
/// between, the error is passed on and the channel closes, so that every
/// pull fails and the worker gives up.
async fn forward(
    opener: StreamOpener,
    mut stream: MessageStream,
    tx: mpsc::Sender<Received>,
    stop: Arc<Mutex<ShutdownToken>>,
) {
    let mut failures = 0u32;
    loop {
        let err = match stream.next().await {
            None => return,
            Some(Ok(item)) => {
                failures = 0;
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
                continue;
            }
            Some(Err(err)) => err,
        };
        failures += 1;
        if failures >= MAX_STREAM_FAILURES {
            let _ = tx.send(Err(err)).await;
            return;
        }
        let delay = REOPEN_DELAY * 2u32.pow(failures - 1);
        tracing::warn!(
            error = %err, failures, retry_in_s = delay.as_secs_f64(),
            "the Pub/Sub stream failed: reopening the Pub/Sub stream"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
        stream = opener.open();
        *stop.lock().expect("stop token lock poisoned") = stream.shutdown_token();
    }
}

#[async_trait]
impl Subscription for PubSubSubscription {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn ack_deadline(&self) -> Duration {
        self.ack_deadline
    }

    fn max_delivery_attempts(&self) -> Option<u32> {
        self.max_delivery_attempts
    }

    fn dead_letter_topic(&self) -> Option<String> {
        self.dead_letter_topic.clone()
    }

    fn topic(&self) -> String {
        self.topic.clone()
    }

    fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    async fn pull(&self, max: usize, wait: Duration) -> anyhow::Result<Vec<Delivery>> {
        let mut received = self.received.lock().await;
        let first = match tokio::time::timeout(wait, received.recv()).await {
            Err(_elapsed) => return Ok(Vec::new()),
            Ok(None) => anyhow::bail!(
                "the stream from {} has closed after failing {MAX_STREAM_FAILURES} times in a row",
                self.uri
            ),
            Ok(Some(item)) => item.with_context(|| {
                format!(
                    "receiving from {} (the stream failed {MAX_STREAM_FAILURES} times in a row)",
                    self.uri
                )
            })?,
        };
        let mut deliveries = vec![self.lease(first)];
        while deliveries.len() < max {
            match received.try_recv() {
                Ok(Ok(item)) => deliveries.push(self.lease(item)),
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "the Pub/Sub stream failed for good: every pull from now on fails");
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(deliveries)
    }

    async fn ack(&self, ack_ids: &[String]) -> anyhow::Result<()> {
        for id in ack_ids {
            if let Some(handler) = self.take(id) {
                handler.ack();
            }
        }
        Ok(())
    }

    async fn nack(&self, ack_id: &str) -> anyhow::Result<()> {
        if let Some(handler) = self.take(ack_id) {
            handler.nack();
        }
        Ok(())
    }

    /// The client library extends every held lease itself.
    async fn extend_lease(&self, _ack_id: &str, _by: Duration) -> anyhow::Result<()> {
        Ok(())
    }

    /// Nacks what is still held or buffered and waits until the library has
    /// sent every ack and nack: a process that exits sooner loses its acks.
    async fn close(&self) -> anyhow::Result<()> {
        let held: Vec<Handler> = self.leased_handlers().drain().map(|(_, h)| h).collect();
        held.into_iter().for_each(Handler::nack);
        let mut received = self.received.lock().await;
        received.close();
        while let Ok(item) = received.try_recv() {
            if let Ok((_, handler)) = item {
                handler.nack();
            }
        }
        let stop = self.stop.lock().expect("stop token lock poisoned").clone();
        stop.shutdown().await;
        // Drop the stream and let its cancellation reach the server before
        // the process exits: the emulator otherwise goes on sending new
        // messages into the dead stream until their leases lapse.
        let forwarder = self
            .forwarder
            .lock()
            .expect("forwarder lock poisoned")
            .take();
        if let Some(forwarder) = forwarder {
            let _ = forwarder.await;
            tokio::time::sleep(STREAM_CLOSE).await;
        }
        Ok(())
    }
}
