//! Graceful shutdown in two phases, shared by every task through a watch
//! channel: on SIGTERM or SIGINT the worker stops pulling (`Draining`); when
//! the grace period runs out, in-flight work is given back (`Abort`).

use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    Draining,
    Abort,
}

/// A handle every task holds to learn of shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Phase>,
}

/// The side that starts the shutdown.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<Phase>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(Phase::Running);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    /// Stops pulling now and aborts what is still in flight after `grace`.
    pub fn begin(&self, grace: Duration) {
        self.tx.send_if_modified(|p| {
            let changed = *p == Phase::Running;
            if changed {
                *p = Phase::Draining;
            }
            changed
        });
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tx.send(Phase::Abort);
        });
    }
}

impl Shutdown {
    pub fn phase(&self) -> Phase {
        *self.rx.borrow()
    }

    async fn reached(&mut self, phase: Phase) {
        // An error means the trigger is gone: no shutdown will come.
        if self.rx.wait_for(|p| *p >= phase).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub async fn draining(&mut self) {
        self.reached(Phase::Draining).await
    }

    pub async fn aborted(&mut self) {
        self.reached(Phase::Abort).await
    }
}

/// Starts shutdown on SIGTERM (Cloud Run's stop signal) or SIGINT, and
/// returns the signal number that arrived first through `on_signal`.
pub fn on_signals(trigger: Trigger, grace: Duration) -> tokio::sync::oneshot::Receiver<i32> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM/SIGINT; shutdown will not be graceful");
            return;
        };
        let number = tokio::select! {
            _ = term.recv() => 15,
            _ = int.recv() => 2,
        };
        tracing::warn!(
            signal = number,
            grace_s = grace.as_secs_f64(),
            "stopping: no new work, finishing or giving back in-flight work"
        );
        trigger.begin(grace);
        let _ = tx.send(number);
        // Keep the trigger's channel open until the process ends.
        std::future::pending::<()>().await;
    });
    rx
}
