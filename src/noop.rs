//! A handler that acks every message at once, to measure the queue and the
//! drain loop apart from any export (the `noop_drain` example, the benchmark).

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::drain::{Disposition, Handler};
use crate::queue::Delivery;
use crate::warehouse::Cancel;

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
    async fn drained(&self) -> bool {
        self.expect
            .is_some_and(|n| self.handled.load(Ordering::Relaxed) >= n)
    }
}
