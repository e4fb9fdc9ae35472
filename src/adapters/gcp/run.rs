//! Cloud Run Admin API v2: start one execution of the worker job
//! (`jobs.run`) with a task count and environment overrides.
//!
//! This is Google's `google-cloud-run-v2` client rather than hand-written
//! REST calls: it comes from the same generator as the BigQuery client,
//! shares its `google-cloud-gax`/`google-cloud-auth` versions (it added one
//! crate to the lock file and about 13 s to a cold debug build on two
//! cores), and speaks HTTP/1.1 JSON, so a local HTTP server can stand in for
//! the API in contract tests.
//!
//! - Retries are ours, not the client's: the client never retries (a
//!   `jobs.run` POST is not idempotent, so its default policy would not
//!   either) and [`WorkerJobs::run`] retries transient failures (429, 5xx,
//!   network) through [`RetryPolicy`]. A retry after a request that did take
//!   effect starts a second execution; that is harmless, as its tasks drain
//!   the same queue and, watching the same run, exit once it is complete.
//! - The call returns as soon as Cloud Run has accepted the execution: the
//!   long-running operation it returns lasts as long as the run, so it is
//!   recorded (operation and execution names), never polled.
//! - A plain `http://` endpoint gets anonymous credentials (the convention of
//!   the emulators, see the module above); any other uses Application
//!   Default Credentials.

use std::fmt;
use std::time::Duration;

use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_run_v2::client::Jobs;
use google_cloud_run_v2::model::run_job_request::overrides::ContainerOverride;
use google_cloud_run_v2::model::run_job_request::Overrides;
use google_cloud_run_v2::model::{EnvVar, Execution};

use crate::engine::retry::RetryPolicy;
use crate::error::{ConfigError, UnitError};

/// Cloud Run's documented limit on the tasks of one job execution.
pub const MAX_TASKS_PER_EXECUTION: u32 = 10_000;
/// Longest wait for one `jobs.run` attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// A Cloud Run job: `projects/PROJECT/locations/REGION/jobs/JOB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobName {
    pub project: String,
    pub location: String,
    pub job: String,
}

impl JobName {
    /// Parses and checks a full job name; `flag` names the option in errors.
    pub fn parse(name: &str, flag: &str) -> Result<JobName, ConfigError> {
        let lower = |s: &str, extra: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
        };
        let parts: Vec<&str> = name.trim().split('/').collect();
        match parts.as_slice() {
            ["projects", project, "locations", location, "jobs", job]
                if lower(project, "-.:")
                    && lower(location, "-")
                    && lower(job, "-")
                    && job.len() <= 63
                    && job.starts_with(|c: char| c.is_ascii_lowercase())
                    && !job.ends_with('-') =>
            {
                Ok(JobName {
                    project: project.to_string(),
                    location: location.to_string(),
                    job: job.to_string(),
                })
            }
            _ => Err(ConfigError::new(
                flag,
                format!("{name:?} is not a Cloud Run job name"),
                "write it as projects/PROJECT/locations/REGION/jobs/JOB, \
                 e.g. projects/my-project/locations/europe-west1/jobs/bqdrain-worker",
            )),
        }
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "projects/{}/locations/{}/jobs/{}",
            self.project, self.location, self.job
        )
    }
}

/// Checks an API endpoint: `http://HOST[:PORT]` or `https://HOST[:PORT]`.
pub fn check_endpoint(endpoint: &str, flag: &str) -> Result<(), ConfigError> {
    let host = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"));
    match host {
        Some(h) if !h.trim_end_matches('/').is_empty() && !h.contains(char::is_whitespace) => {
            Ok(())
        }
        _ => Err(ConfigError::new(
            flag,
            format!("{endpoint:?} is not an API endpoint"),
            "use https://run.googleapis.com, or http://HOST:PORT for a local stand-in",
        )),
    }
}

/// What Cloud Run answered: the long-running operation and, as its
/// metadata, the execution it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub operation: String,
    pub execution: Option<String>,
}

/// Starts executions of Cloud Run jobs.
pub struct WorkerJobs {
    client: Jobs,
    retry: RetryPolicy,
}

impl WorkerJobs {
    /// A client for the Admin API at `endpoint` (checked by [`check_endpoint`]).
    pub async fn connect(endpoint: &str) -> anyhow::Result<WorkerJobs> {
        let endpoint = endpoint.trim_end_matches('/');
        let builder = Jobs::builder()
            .with_endpoint(endpoint)
            .with_retry_policy(NeverRetry)
            .with_attempt_timeout(ATTEMPT_TIMEOUT);
        let builder = if endpoint.starts_with("http://") {
            builder.with_credentials(super::anonymous_credentials())
        } else {
            builder
        };
        let client = builder.build().await.map_err(|e| {
            anyhow::anyhow!(
                "creating the Cloud Run client for {endpoint}: {e}; outside Google Cloud run \
                 `gcloud auth application-default login`"
            )
        })?;
        Ok(WorkerJobs {
            client,
            retry: RetryPolicy {
                max_retries: 3,
                min_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(10),
            },
        })
    }

    /// Starts one execution of `job` with `task_count` tasks, `env` set in
    /// its (only) container. Transient failures are retried; the error is
    /// the last one.
    pub async fn run(
        &self,
        job: &JobName,
        task_count: u32,
        env: &[(&str, &str)],
    ) -> Result<Started, UnitError> {
        let overrides = Overrides::new()
            .set_task_count(i32::try_from(task_count).unwrap_or(i32::MAX))
            .set_container_overrides([ContainerOverride::new().set_env(
                env.iter()
                    .map(|(name, value)| EnvVar::new().set_name(*name).set_value(*value)),
            )]);
        let name = job.to_string();
        self.retry
            .run("starting the worker job", || async {
                let operation = self
                    .client
                    .run_job()
                    .set_name(&name)
                    .set_overrides(overrides.clone())
                    .send()
                    .await
                    .map_err(|e| classify(&e))?;
                if let Some(status) = operation.error() {
                    return Err(UnitError::permanent(
                        "executionFailed",
                        format!(
                            "operation {} failed with code {}: {}",
                            operation.name, status.code, status.message
                        ),
                    ));
                }
                let execution = operation
                    .metadata
                    .as_ref()
                    .and_then(|m| m.to_msg::<Execution>().ok())
                    .map(|e| e.name)
                    .filter(|n| !n.is_empty());
                Ok(Started {
                    operation: operation.name,
                    execution,
                })
            })
            .await
    }
}

/// Transient: rate limits, server errors, timeouts and failures to connect
/// or to fetch a token that may come back. Permanent: everything the caller
/// must fix (400, 401, 403, 404, ...).
fn classify(err: &google_cloud_run_v2::Error) -> UnitError {
    let message = match err.http_status_code() {
        Some(code) => format!("HTTP {code}: {err}"),
        None => err.to_string(),
    };
    match err.http_status_code() {
        Some(429) => UnitError::transient("rateLimitExceeded", message),
        Some(408 | 500..=599) => UnitError::transient("backendError", message),
        Some(403) => UnitError::permanent("accessDenied", message),
        Some(404) => UnitError::permanent("notFound", message),
        Some(code) => UnitError::permanent(&format!("http{code}"), message),
        None if err.is_authentication() && !err.is_transient_and_before_rpc() => {
            UnitError::permanent("unauthenticated", message)
        }
        None if err.is_timeout()
            || err.is_connect()
            || err.is_io()
            || err.is_transport()
            || err.is_authentication() =>
        {
            UnitError::transient("network", message)
        }
        None => UnitError::permanent("invalid", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_job_names_and_rejects_others() {
        let j = JobName::parse(
            "projects/my-proj/locations/europe-west1/jobs/worker-1",
            "--f",
        )
        .unwrap();
        assert_eq!(
            (j.project.as_str(), j.location.as_str(), j.job.as_str()),
            ("my-proj", "europe-west1", "worker-1")
        );
        assert_eq!(
            j.to_string(),
            "projects/my-proj/locations/europe-west1/jobs/worker-1"
        );
        assert!(
            JobName::parse("projects/example.com:p/locations/us-central1/jobs/w", "--f").is_ok()
        );
        for bad in [
            "",
            "worker",
            "projects/p/locations/l/jobs/",
            "projects/p/locations/l/jobs/j/extra",
            "projects/p/regions/l/jobs/j",
            "projects/P/locations/l/jobs/j",
            "projects/p/locations/l/jobs/Worker",
            "projects/p/locations/l/jobs/1worker",
            "projects/p/locations/l/jobs/worker-",
            "projects/p/locations/l/jobs/w_1",
            "https://run.googleapis.com/v2/projects/p/locations/l/jobs/j",
        ] {
            let err = JobName::parse(bad, "--launch-workers").unwrap_err();
            assert_eq!(err.flag, "--launch-workers", "{bad}");
        }
        let long = format!("projects/p/locations/l/jobs/w{}", "x".repeat(63));
        assert!(JobName::parse(&long, "--f").is_err());
    }

    #[test]
    fn endpoints_are_http_urls() {
        for ok in [
            "https://run.googleapis.com",
            "http://127.0.0.1:8080/",
            "https://europe-west1-run.googleapis.com",
        ] {
            assert!(check_endpoint(ok, "--e").is_ok(), "{ok}");
        }
        for bad in ["", "run.googleapis.com", "http://", "ftp://x", "http://a b"] {
            assert!(check_endpoint(bad, "--e").is_err(), "{bad}");
        }
    }

    #[test]
    fn classifies_http_failures() {
        use google_cloud_gax::error::Error;
        let http = |code| Error::http(code, Default::default(), "nope".into());
        for code in [429, 500, 502, 503, 504, 408] {
            assert!(classify(&http(code)).is_transient(), "{code}");
        }
        for code in [400, 401, 403, 404, 409] {
            assert!(!classify(&http(code)).is_transient(), "{code}");
        }
        assert_eq!(classify(&http(403)).reason, "accessDenied");
        assert!(classify(&Error::io("reset")).is_transient());
        assert!(classify(&Error::connect("refused")).is_transient());
    }
}
