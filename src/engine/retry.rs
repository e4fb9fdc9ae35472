//! In-process retries of transient failures: jittered exponential backoff.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::error::{ConfigError, UnitError};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first try; 0 leaves every retry to the queue.
    pub max_retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Runs `attempt` until it succeeds, fails permanently, or the retries
    /// are spent; returns the last error.
    pub async fn run<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, UnitError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, UnitError>>,
    {
        attempt
            .retry(self.backoff())
            .when(UnitError::is_transient)
            .notify(|err, delay| tracing::warn!(what, error = %err, retry_in_ms = delay.as_millis() as u64, "transient failure, retrying"))
            .await
    }

    /// The same for calls whose failures are not classified (store writes,
    /// publishes): everything but a configuration error is retried.
    pub async fn run_any<T, F, Fut>(&self, what: &str, attempt: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        attempt
            .retry(self.backoff())
            .when(|err: &anyhow::Error| !err.is::<ConfigError>())
            .notify(|err, delay| tracing::warn!(what, error = %format!("{err:#}"), retry_in_ms = delay.as_millis() as u64, "failed, retrying"))
            .await
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fast(max_retries: usize) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn retries_transient_until_success() {
        let calls = AtomicUsize::new(0);
        let out = fast(3)
            .run("t", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(UnitError::transient("backendError", "x"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn never_retries_permanent_and_stops_at_the_limit() {
        let calls = AtomicUsize::new(0);
        let out: Result<(), _> = fast(3)
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(UnitError::permanent("notFound", "x"))
            })
            .await;
        assert_eq!(out.unwrap_err().reason, "notFound");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        calls.store(0, Ordering::SeqCst);
        let out: Result<(), _> = fast(2)
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(UnitError::transient("backendError", "x"))
            })
            .await;
        assert!(out.unwrap_err().is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
