//! A handler that acks every message at once, to measure the queue and the
//! drain loop apart from any export (the `noop_drain` example, the benchmark).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::adapters::backends::open_subscription;
use crate::engine::drain::{drain, Disposition, DrainConfig, DrainReport, Handler, Progress};
use crate::ports::queue::{Delivery, ReceiveSettings};
use crate::ports::warehouse::Cancel;

pub struct AckEverything {
    handled: AtomicU64,
    /// Count as drained once this many were handled; `None` waits for idleness.
    expect: Option<u64>,
}

impl AckEverything {
    pub fn new(expect: Option<u64>) -> AckEverything {
        AckEverything {
            handled: AtomicU64::new(0),
            expect,
        }
    }
}

#[async_trait]
impl Handler for AckEverything {
    async fn handle(&self, _delivery: &Delivery, _cancel: Cancel) -> Disposition {
        self.handled.fetch_add(1, Ordering::Relaxed);
        Disposition::Ack
    }

    // The loop asks only when nothing is in flight, so every message handled
    // by then has been settled.
    async fn progress(&self) -> Progress {
        if self
            .expect
            .is_some_and(|n| self.handled.load(Ordering::Relaxed) >= n)
        {
            Progress::Complete
        } else {
            Progress::NoRun
        }
    }
}

/// Drains `subscription` acking every message: the queue path alone.
/// Stops once `expect` messages were handled, or after `idle_timeout`.
pub async fn drain_noop(
    subscription: &str,
    concurrency: usize,
    expect: Option<u64>,
    idle_timeout: Duration,
    started: Instant,
) -> anyhow::Result<DrainReport> {
    let receive = ReceiveSettings::new(concurrency);
    let subscription = open_subscription(subscription, "--subscription", &receive).await?;
    let config = DrainConfig {
        concurrency,
        idle_timeout,
        started,
    };
    // Nothing here shuts down early; the trigger is held for the whole drain
    // so that stays explicit rather than resting on how a closed channel acts.
    let (_trigger, shutdown) = crate::engine::shutdown::channel();
    let handler = Arc::new(AckEverything::new(expect));
    Ok(drain(subscription, None, handler, config, shutdown).await)
}
