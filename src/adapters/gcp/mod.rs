//! Google Cloud adapters behind the engine's ports: Pub/Sub queues,
//! BigQuery warehouses, Cloud Storage stores; and the Cloud Run Admin API,
//! through which the producer starts the worker job ([`run`]).
//!
//! In the cloud they use Application Default Credentials. When an emulator
//! variable is set (`PUBSUB_EMULATOR_HOST`, `BIGQUERY_EMULATOR_HOST`,
//! `STORAGE_EMULATOR_HOST`) the matching client talks plain HTTP to it with
//! anonymous credentials: none of the client crates reads these itself.

/// Builds a client from its builder: against the emulator named by
/// `$variable` when it is set, with Application Default Credentials
/// otherwise. Returns from the calling function when the client fails.
macro_rules! connect {
    ($builder:expr, $service:literal, $variable:expr) => {{
        let builder = $builder;
        let builder = match $crate::adapters::gcp::emulator_endpoint($variable) {
            Some(endpoint) => builder
                .with_endpoint(endpoint)
                .with_credentials($crate::adapters::gcp::anonymous_credentials()),
            None => builder,
        };
        builder.build().await.map_err(|e| {
            $crate::adapters::gcp::startup_error(
                concat!("creating the ", $service, " client"),
                $variable,
                e,
            )
        })?
    }};
}

pub mod bigquery;
pub mod permissions;
pub mod preflight;
pub mod pubsub;
pub mod run;
pub mod storage;

use google_cloud_auth::credentials::{anonymous, Credentials};

/// `http://HOST:PORT` for an emulator variable holding `HOST:PORT` or a URL.
fn emulator_endpoint(variable: &str) -> Option<String> {
    let value = std::env::var(variable).ok()?;
    let host = value.trim().trim_end_matches('/');
    match host {
        "" => None,
        h if h.contains("://") => Some(h.to_string()),
        h => Some(format!("http://{h}")),
    }
}

fn anonymous_credentials() -> Credentials {
    anonymous::Builder::new().build()
}

/// A failure to reach a service at startup, with what usually fixes it.
fn startup_error(what: &str, variable: &str, err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: {err}; outside Google Cloud run \
         `gcloud auth application-default login`, or set {variable} to use an emulator"
    )
}
