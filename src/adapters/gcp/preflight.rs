//! What `bqdrain-producer --check` asks Google, over the services' JSON
//! APIs: which permissions the caller holds (`testIamPermissions`), and the
//! settings a run depends on (the bucket's location and soft delete, the
//! dead-letter policy of every subscription on the work topic).
//!
//! Plain REST rather than the client crates: the Pub/Sub and BigQuery
//! clients have no `testIamPermissions`, and the Cloud Storage one does not
//! read a bucket's soft delete policy. The emulator variables are honoured
//! as by the clients (plain HTTP, no credentials).

use anyhow::Context;
use google_cloud_auth::credentials::{Builder, CacheableResource, Credentials};
use serde_json::{json, Value};

use super::{emulator_endpoint, startup_error};

/// An answer that is not a success: the status and Google's message.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

/// One Google API, at its endpoint or its emulator's.
pub struct Api {
    base: String,
    credentials: Option<Credentials>,
    http: reqwest::Client,
}

impl Api {
    /// `base` is the API's root on Google (`https://storage.googleapis.com`);
    /// `$variable`, when set, names the emulator used instead.
    pub fn connect(base: &str, variable: &str) -> anyhow::Result<Api> {
        let (base, credentials) = match emulator_endpoint(variable) {
            Some(endpoint) => (endpoint, None),
            None => {
                let credentials = Builder::default()
                    .build()
                    .map_err(|e| startup_error("reading the credentials", variable, e))?;
                (base.to_string(), Some(credentials))
            }
        };
        Ok(Api {
            base,
            credentials,
            http: reqwest::Client::new(),
        })
    }

    /// Sends one call; `Err(Refused)` inside `Ok` for an answer that is not
    /// a success, so that a caller can tell "not allowed" from "unreachable".
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Result<Value, Refused>> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(credentials) = &self.credentials {
            if let CacheableResource::New { data, .. } =
                credentials.headers(http::Extensions::new()).await?
            {
                request = request.headers(data);
            }
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {url}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(Ok(value));
        }
        let message = value["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| text.trim().chars().take(200).collect());
        Ok(Err(Refused { status, message }))
    }

    /// The subset of `permissions` the caller holds on the resource at
    /// `path`, through its `testIamPermissions` method: a POST with the
    /// list in the body (Pub/Sub, Cloud Run), or with `get_query` a GET
    /// with one `permissions=` query parameter each (Cloud Storage).
    pub async fn held(
        &self,
        path: &str,
        permissions: &[String],
        get_query: bool,
    ) -> anyhow::Result<Result<Vec<String>, Refused>> {
        let answer = if get_query {
            let query: Vec<String> = permissions
                .iter()
                .map(|p| format!("permissions={p}"))
                .collect();
            let path = format!("{path}?{}", query.join("&"));
            self.call(reqwest::Method::GET, &path, None).await?
        } else {
            let body = json!({ "permissions": permissions });
            self.call(reqwest::Method::POST, path, Some(body)).await?
        };
        Ok(answer.map(|value| {
            value["permissions"]
                .as_array()
                .map(|held| {
                    held.iter()
                        .filter_map(|p| p.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        }))
    }
}

/// Cloud Storage's JSON API.
pub fn storage() -> anyhow::Result<Api> {
    Api::connect("https://storage.googleapis.com", "STORAGE_EMULATOR_HOST")
}

/// Pub/Sub's REST API.
pub fn pubsub() -> anyhow::Result<Api> {
    Api::connect("https://pubsub.googleapis.com", "PUBSUB_EMULATOR_HOST")
}

/// BigQuery's REST API.
pub fn bigquery() -> anyhow::Result<Api> {
    Api::connect("https://bigquery.googleapis.com", "BIGQUERY_EMULATOR_HOST")
}

/// The Cloud Run Admin API at `endpoint` (`--run-api-endpoint`); a plain
/// `http://` one is a test double and gets no credentials.
pub fn run(endpoint: &str) -> anyhow::Result<Api> {
    let endpoint = endpoint.trim_end_matches('/');
    let credentials =
        if endpoint.starts_with("http://") {
            None
        } else {
            Some(Builder::default().build().map_err(|e| {
                startup_error("reading the credentials", "BQDRAIN_RUN_API_ENDPOINT", e)
            })?)
        };
    Ok(Api {
        base: endpoint.to_string(),
        credentials,
        http: reqwest::Client::new(),
    })
}
