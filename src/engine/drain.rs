//! The drain loop: pull with bounded concurrency, keep leases alive while
//! work runs, settle every message (ack, nack or dead-letter), stop when the
//! work is done or the queue stays idle, and shut down gracefully.
//!
//! What is done with a message is the [`Handler`]'s business; the loop is the
//! same for exports and for the no-op benchmark.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

use crate::contract::message::Envelope;
use crate::engine::shutdown::{Phase, Shutdown};
use crate::error::UnitError;
use crate::ports::queue::{Delivery, Subscription, Topic};
use crate::ports::warehouse::Cancel;

/// How long one pull waits for messages before the loop looks around again.
const PULL_WAIT: Duration = Duration::from_millis(500);
/// The same while work is in flight, so that its end (and perhaps the end of
/// the run) is noticed soon.
const BUSY_PULL_WAIT: Duration = Duration::from_millis(50);
/// How often an idle worker asks whether its runs are complete: soon after
/// its last work (another task may be finishing the run's last unit), then
/// less and less often, down to once a second, which bounds the listings
/// idle workers make while a run's last long export goes on.
const DRAINED_CHECK_FIRST: Duration = Duration::from_millis(100);
const DRAINED_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often an idle worker whose run is incomplete asks whether the units
/// left are in other live tasks' hands (it lists their heartbeats).
const HANDOVER_CHECK_EVERY: Duration = Duration::from_secs(5);
/// The shortest pull, so a check that is due does not make the loop spin.
const MIN_PULL_WAIT: Duration = Duration::from_millis(10);
/// Pulls that fail in a row before the worker gives up on the queue (the
/// backoff between them adds up to about 25 s).
pub const MAX_PULL_FAILURES: u32 = 6;

/// Attributes added to a dead-lettered message.
pub const ATTR_ERROR_REASON: &str = "bqdrain_error_reason";
pub const ATTR_ERROR_MESSAGE: &str = "bqdrain_error_message";
pub const ATTR_DELIVERY_ATTEMPT: &str = "bqdrain_delivery_attempt";
pub const ATTR_FAILED_AT: &str = "bqdrain_failed_at";
pub const ATTR_SUBSCRIPTION: &str = "bqdrain_subscription";

/// What to do with a message once handled.
#[derive(Debug)]
pub enum Disposition {
    /// Done (or already done): remove it.
    Ack,
    /// Failed in a way another attempt may fix: redeliver, unless this was
    /// the last allowed attempt, in which case dead-letter it with the error.
    Retry(UnitError),
    /// Failed for good: dead-letter now.
    DeadLetter(UnitError),
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. `cancel` is set when shutdown gives up waiting.
    async fn handle(&self, delivery: &Delivery, cancel: Cancel) -> Disposition;

    /// Called once a message's dead-letter publish is confirmed, to record
    /// why; `started_at` is when its last handling began.
    async fn dead_lettered(
        &self,
        _delivery: &Delivery,
        _error: &UnitError,
        _started_at: chrono::DateTime<chrono::Utc>,
    ) {
    }

    /// Where the work this worker has seen stands: complete lets it exit
    /// without waiting for the idle timeout, incomplete makes it wait longer.
    async fn progress(&self) -> Progress {
        Progress::NoRun
    }

    /// Whether every unit still pending in the runs this worker watches is
    /// being exported by another live task: an idle worker then exits
    /// without waiting out its patience.
    async fn held_elsewhere(&self) -> bool {
        false
    }
}

/// What an idle worker knows of the runs it watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// No run seen or given: nothing to wait for but the idle timeout.
    NoRun,
    /// Every run seen has each unit exported or dead-lettered.
    Complete,
    /// This run still has units pending (`None`: their number is unknown).
    Incomplete {
        run_id: String,
        pending: Option<usize>,
    },
}

#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Messages handled at once by this process.
    pub concurrency: usize,
    /// Exit after this long with nothing received and nothing held, unless
    /// a watched run is incomplete: then wait at least the subscription's
    /// maximum backoff plus its ack deadline, for a nacked message or a
    /// lapsed lease to come back.
    pub idle_timeout: Duration,
    /// When the process started, for `first_ack_after_start_s`.
    pub started: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// Every run this worker saw is complete.
    Drained,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// A watched run stayed incomplete with nothing to receive: its units
    /// are elsewhere (another queue, the dead-letter subscription) or lost.
    Incomplete,
    /// Nothing left to receive, and every unit still pending is being
    /// exported by another live task (its heartbeat is fresh).
    HandedOver,
    /// The queue failed on every pull, [`MAX_PULL_FAILURES`] times in a row.
    QueueFailed,
    /// SIGTERM or SIGINT.
    Signal,
}

impl ExitReason {
    /// Whether the process should exit non-zero (so that Cloud Run retries
    /// the task): it stopped with work it knows of left undone.
    pub fn is_failure(self) -> bool {
        matches!(self, ExitReason::Incomplete | ExitReason::QueueFailed)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    pub received: u64,
    pub acked: u64,
    pub nacked: u64,
    pub dead_lettered: u64,
    pub seconds: f64,
    pub first_ack_after_start_s: Option<f64>,
    pub exit: ExitReason,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    dead_lettered: AtomicU64,
    first_ack: OnceLock<Duration>,
}

struct Context {
    subscription: Arc<dyn Subscription>,
    acks: Acker,
    dead_letter: Option<Arc<dyn Topic>>,
    handler: Arc<dyn Handler>,
    counters: Counters,
    started: Instant,
}

pub async fn drain(
    subscription: Arc<dyn Subscription>,
    dead_letter: Option<Arc<dyn Topic>>,
    handler: Arc<dyn Handler>,
    config: DrainConfig,
    mut shutdown: Shutdown,
) -> DrainReport {
    let began = Instant::now();
    let ctx = Arc::new(Context {
        acks: Acker::spawn(Arc::clone(&subscription)),
        subscription,
        dead_letter,
        handler,
        counters: Counters::default(),
        started: config.started,
    });
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut in_flight = JoinSet::new();
    let mut last_activity = Instant::now();
    let mut next_drained_check = Instant::now();
    let mut progress = Progress::NoRun;
    let mut next_handover_check = Instant::now();
    let patience = config
        .idle_timeout
        .max(ctx.subscription.max_backoff() + ctx.subscription.ack_deadline());
    let mut pull_failures = 0u32;
    // When the first pull of the current run of failed pulls began: a queue
    // that fails is not an idle one.
    let mut failing_since: Option<Instant> = None;

    let exit = loop {
        while let Some(joined) = in_flight.try_join_next() {
            report_panic(joined);
            last_activity = Instant::now();
            next_drained_check = last_activity;
        }
        if shutdown.phase() != Phase::Running {
            break ExitReason::Signal;
        }
        if in_flight.is_empty() {
            if Instant::now() >= next_drained_check {
                progress = ctx.handler.progress().await;
                if progress == Progress::Complete {
                    break ExitReason::Drained;
                }
                let idle = last_activity.elapsed();
                next_drained_check =
                    Instant::now() + idle.clamp(DRAINED_CHECK_FIRST, DRAINED_CHECK_EVERY);
            }
            let idle = last_activity.elapsed();
            if idle >= config.idle_timeout {
                let due = Instant::now() >= next_handover_check;
                if let (Progress::Incomplete { run_id, pending }, true) = (&progress, due) {
                    next_handover_check = Instant::now() + HANDOVER_CHECK_EVERY;
                    if ctx.handler.held_elsewhere().await {
                        tracing::info!(
                            run_id, pending, idle_s = idle.as_secs_f64(),
                            "nothing left to receive: the run's pending units are being exported by other live tasks"
                        );
                        break ExitReason::HandedOver;
                    }
                }
                match &progress {
                    _ if failing_since.is_some_and(|t| t.elapsed() < config.idle_timeout) => {}
                    _ if failing_since.is_some() => {
                        tracing::error!(
                            failures = pull_failures,
                            "the queue failed every pull for the idle timeout: giving up, so \
                             that the task is retried"
                        );
                        break ExitReason::QueueFailed;
                    }
                    Progress::Incomplete { .. } if idle < patience => {}
                    Progress::Incomplete { run_id, pending } => {
                        tracing::error!(
                            run_id, pending, idle_s = idle.as_secs_f64(),
                            "gave up waiting for run {run_id}: units are pending but none arrived; \
                             look for them with `bqdrain status` (and --reconcile) and replay them"
                        );
                        break ExitReason::Incomplete;
                    }
                    _ => break ExitReason::Idle,
                }
            }
        }
        let free = permits.available_permits();
        if free == 0 {
            tokio::select! {
                joined = in_flight.join_next() => {
                    if let Some(joined) = joined {
                        report_panic(joined);
                    }
                    last_activity = Instant::now();
                    next_drained_check = last_activity;
                }
                _ = shutdown.draining() => {}
            }
            continue;
        }
        let wait = if in_flight.is_empty() {
            next_drained_check
                .saturating_duration_since(Instant::now())
                .clamp(MIN_PULL_WAIT, PULL_WAIT)
        } else {
            BUSY_PULL_WAIT
        };
        let pull_started = Instant::now();
        let pulled = tokio::select! {
            pulled = ctx.subscription.pull(free, wait) => pulled,
            _ = shutdown.draining() => continue,
        };
        match pulled {
            Ok(batch) => {
                pull_failures = 0;
                failing_since = None;
                if !batch.is_empty() {
                    last_activity = Instant::now();
                }
                for delivery in batch {
                    let permit = Arc::clone(&permits)
                        .try_acquire_owned()
                        .expect("pulled no more than the free permits");
                    ctx.counters.received.fetch_add(1, Ordering::Relaxed);
                    let ctx = Arc::clone(&ctx);
                    let shutdown = shutdown.clone();
                    in_flight.spawn(async move {
                        process(&ctx, delivery, shutdown).await;
                        drop(permit);
                    });
                }
            }
            Err(err) => {
                pull_failures += 1;
                failing_since.get_or_insert(pull_started);
                if pull_failures >= MAX_PULL_FAILURES {
                    tracing::error!(
                        error = %format!("{err:#}"), failures = pull_failures,
                        "the queue failed on every pull: giving up, so that the task is retried"
                    );
                    break ExitReason::QueueFailed;
                }
                let delay = Duration::from_millis(200 * 2u64.pow(pull_failures.min(6)));
                tracing::warn!(error = %format!("{err:#}"), retry_in_ms = delay.as_millis() as u64, "pull failed");
                tokio::time::sleep(delay).await;
            }
        }
    };

    if !in_flight.is_empty() {
        tracing::info!(in_flight = in_flight.len(), "waiting for in-flight work");
    }
    while let Some(joined) = in_flight.join_next().await {
        report_panic(joined);
    }
    if let Err(err) = ctx.subscription.close().await {
        tracing::warn!(error = %format!("{err:#}"), "closing the subscription failed; unsent acks mean redeliveries");
    }

    let c = &ctx.counters;
    DrainReport {
        received: c.received.load(Ordering::Relaxed),
        acked: c.acked.load(Ordering::Relaxed),
        nacked: c.nacked.load(Ordering::Relaxed),
        dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
        seconds: began.elapsed().as_secs_f64(),
        first_ack_after_start_s: c.first_ack.get().map(Duration::as_secs_f64),
        exit,
    }
}

/// A panicking handler leaves its message unsettled: its lease lapses and
/// the queue redelivers it. Say so, rather than lose the panic.
fn report_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined {
        tracing::error!(error = %err, "a message handler panicked; the message will be redelivered when its lease lapses");
    }
}

/// Handles one delivery while keeping its lease, then settles it.
async fn process(ctx: &Context, delivery: Delivery, mut shutdown: Shutdown) {
    let cancel: Cancel = Arc::new(AtomicBool::new(false));
    let deadline = ctx.subscription.ack_deadline();
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + deadline / 2, deadline / 2);
    let started_at = chrono::Utc::now();
    let work = ctx.handler.handle(&delivery, Arc::clone(&cancel));
    tokio::pin!(work);
    let disposition = loop {
        tokio::select! {
            disposition = &mut work => break Some(disposition),
            _ = renew.tick() => {
                if let Err(err) = ctx.subscription.extend_lease(&delivery.ack_id, deadline).await {
                    tracing::warn!(message_id = %delivery.message_id, error = %format!("{err:#}"), "lease extension failed");
                }
            }
            _ = shutdown.aborted() => {
                cancel.store(true, Ordering::Relaxed);
                break None;
            }
        }
    };
    match disposition {
        Some(Disposition::Ack) => ack(ctx, &delivery).await,
        Some(Disposition::DeadLetter(err)) => dead_letter(ctx, &delivery, err, started_at).await,
        Some(Disposition::Retry(err)) => {
            let last = ctx
                .subscription
                .max_delivery_attempts()
                .is_some_and(|max| delivery.delivery_attempt >= max);
            if last {
                let err = UnitError {
                    message: format!(
                        "gave up after {} delivery attempts; last error: {}",
                        delivery.delivery_attempt, err.message
                    ),
                    ..err
                };
                dead_letter(ctx, &delivery, err, started_at).await;
            } else {
                tracing::warn!(message_id = %delivery.message_id, attempt = delivery.delivery_attempt, error = %err, "giving the message back for redelivery");
                nack(ctx, &delivery).await;
            }
        }
        None => {
            tracing::warn!(message_id = %delivery.message_id, "grace period over: giving the message back");
            nack(ctx, &delivery).await;
        }
    }
}

async fn ack(ctx: &Context, delivery: &Delivery) {
    match ctx.acks.ack(&delivery.ack_id).await {
        Ok(()) => {
            ctx.counters.acked.fetch_add(1, Ordering::Relaxed);
            let _ = ctx.counters.first_ack.set(ctx.started.elapsed());
        }
        // The lease will lapse and the message come back; the completion
        // record makes the second delivery a cheap no-op.
        Err(err) => {
            tracing::error!(message_id = %delivery.message_id, error = %format!("{err:#}"), "ack failed")
        }
    }
}

/// Sends acks in batches: whatever gathered while the previous call ran
/// goes in the next one (group commit), so concurrent acks share one round
/// trip or one transaction.
struct Acker {
    requests: mpsc::UnboundedSender<(String, oneshot::Sender<Result<(), String>>)>,
}

/// The most acks sent in one call (Pub/Sub accepts up to 2,500 ack ids).
const MAX_ACK_BATCH: usize = 1000;

impl Acker {
    fn spawn(subscription: Arc<dyn Subscription>) -> Acker {
        let (requests, mut incoming) =
            mpsc::unbounded_channel::<(String, oneshot::Sender<Result<(), String>>)>();
        tokio::spawn(async move {
            while let Some(first) = incoming.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_ACK_BATCH {
                    match incoming.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
                let result = subscription.ack(&ids).await.map_err(|e| format!("{e:#}"));
                for (_, reply) in batch {
                    let _ = reply.send(result.clone());
                }
            }
        });
        Acker { requests }
    }

    async fn ack(&self, ack_id: &str) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((ack_id.to_string(), reply))
            .map_err(|_| "the acker has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the acker has stopped".to_string())?
    }
}

async fn nack(ctx: &Context, delivery: &Delivery) {
    match ctx.subscription.nack(&delivery.ack_id).await {
        Ok(()) => {
            ctx.counters.nacked.fetch_add(1, Ordering::Relaxed);
        }
        Err(err) => {
            tracing::error!(message_id = %delivery.message_id, error = %format!("{err:#}"), "nack failed; the lease will lapse")
        }
    }
}

/// The message with the attributes that say why it was dead-lettered.
pub fn dead_letter_envelope(delivery: &Delivery, err: &UnitError, subscription: &str) -> Envelope {
    let mut attributes: BTreeMap<String, String> = delivery.attributes.clone();
    attributes.insert(ATTR_ERROR_REASON.into(), err.reason.clone());
    attributes.insert(ATTR_ERROR_MESSAGE.into(), err.message.clone());
    attributes.insert(
        ATTR_DELIVERY_ATTEMPT.into(),
        delivery.delivery_attempt.to_string(),
    );
    attributes.insert(ATTR_FAILED_AT.into(), chrono::Utc::now().to_rfc3339());
    attributes.insert(ATTR_SUBSCRIPTION.into(), subscription.to_string());
    Envelope {
        data: delivery.data.clone(),
        attributes,
    }
}

/// Publishes to the dead-letter topic, and acks only once that is confirmed.
async fn dead_letter(
    ctx: &Context,
    delivery: &Delivery,
    err: UnitError,
    started_at: chrono::DateTime<chrono::Utc>,
) {
    let Some(topic) = &ctx.dead_letter else {
        tracing::error!(message_id = %delivery.message_id, error = %err, "no dead-letter topic: giving the message back");
        return nack(ctx, delivery).await;
    };
    tracing::warn!(message_id = %delivery.message_id, attempt = delivery.delivery_attempt, reason = %err.reason, error = %err.message, "dead-lettering");
    let envelope = dead_letter_envelope(delivery, &err, ctx.subscription.uri());
    match topic.publish(vec![envelope]).await {
        Ok(_) => {
            // Recorded only now: a unit whose message went back to the
            // queue must not count as settled.
            ctx.handler.dead_lettered(delivery, &err, started_at).await;
            if let Err(err) = ctx.acks.ack(&delivery.ack_id).await {
                tracing::error!(message_id = %delivery.message_id, error = %err, "ack after dead-lettering failed; it may be dead-lettered twice");
            } else {
                ctx.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(publish_err) => {
            tracing::error!(message_id = %delivery.message_id, error = %format!("{publish_err:#}"), "dead-letter publish failed; giving the message back");
            nack(ctx, delivery).await;
        }
    }
}
