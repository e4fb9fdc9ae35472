//! The emulator stack (Pub/Sub, BigQuery, Cloud Storage) for end-to-end
//! tests, started once per test binary by the project's own scripts, and a
//! sandbox per test: its own dataset, bucket, topics and subscriptions.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{json, Value};

use bqdrain::engine::layout::TableManifest;

use super::BIN;

pub const PROJECT: &str = "test-project";
/// The emulator's shard size, unless the variable is set: small, so that
/// test tables are spread over several files.
pub const SHARD_THRESHOLD_BYTES: &str = "8000";
pub const SHARD_THRESHOLD_VARIABLE: &str = "BQEMU_EXPORT_SHARD_THRESHOLD_BYTES";
/// Set to 1 (the benches do, for timings), the stack starts without its
/// validating proxies: "bigquery" and "storage" are the emulators.
pub const NO_VALIDATION_VARIABLE: &str = "BQDRAIN_EMULATORS_NO_VALIDATION";

/// Where the three emulators listen, as `127.0.0.1:PORT`: BigQuery and
/// Cloud Storage through `scripts/emulators/discovery_proxy.py`, which
/// holds every call to Google's API description of it.
#[derive(Debug, serde::Deserialize)]
pub struct Emulators {
    pub pubsub: String,
    pub bigquery: String,
    pub storage: String,
    /// Where the proxies append what they refused or found, a JSON line each.
    pub violations: std::path::PathBuf,
    /// The emulators themselves, behind the proxies, by name ("bigquery",
    /// "storage"): for calls typed by hand, which the permission table does
    /// not list.
    #[serde(default)]
    pub direct: std::collections::HashMap<String, String>,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Installs what is missing (`scripts/emulators/install.sh`) and starts the
/// stack. It stops by itself when this test process exits: it watches the
/// pipe this process holds open to its stdin.
pub fn emulators() -> &'static Emulators {
    static STACK: OnceLock<Emulators> = OnceLock::new();
    STACK.get_or_init(|| {
        let install = Command::new("bash")
            .arg(repo().join("scripts/emulators/install.sh"))
            .status()
            .expect("run scripts/emulators/install.sh");
        assert!(install.success(), "scripts/emulators/install.sh failed");
        let logs = repo()
            .join("target/emulator-logs")
            .join(std::process::id().to_string());
        let mut child = Command::new(repo().join(".venv/emulators/bin/python"))
            .arg(repo().join("scripts/emulators/stack.py"))
            .arg("--log-dir")
            .arg(&logs)
            .args(
                std::env::var(NO_VALIDATION_VARIABLE)
                    .is_ok_and(|v| v == "1")
                    .then_some("--no-validate"),
            )
            .env(
                SHARD_THRESHOLD_VARIABLE,
                std::env::var(SHARD_THRESHOLD_VARIABLE).unwrap_or(SHARD_THRESHOLD_BYTES.into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start scripts/emulators/stack.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim().is_empty() {
            let status = child.wait().unwrap();
            panic!(
                "the emulator stack did not start ({status}); see its message above and {logs:?}"
            );
        }
        // Never dropped: the stdin pipe stays open until this process ends.
        std::mem::forget(child);
        serde_json::from_str(&line).expect("stack.py prints its endpoints as JSON")
    })
}

/// Marks the sandbox's own calls (set-up, reading outcomes): the proxies
/// hold them to Google's API description but not to the permission table,
/// which lists bqdrain's calls only.
fn harness_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "x-bqdrain-test-harness",
        reqwest::header::HeaderValue::from_static("1"),
    );
    headers
}

/// A message pulled from a subscription through the emulator's REST API.
#[derive(Debug)]
pub struct Pulled {
    pub ack_id: String,
    pub data: Vec<u8>,
    pub attributes: serde_json::Map<String, Value>,
    pub delivery_attempt: u64,
}

impl Pulled {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).and_then(Value::as_str)
    }
}

pub struct GcpSandbox {
    pub name: String,
    /// Length of the violations file when the sandbox was made: the
    /// violations after it are this test's to answer for.
    violations_from: u64,
    pub emulators: &'static Emulators,
    pub dataset: String,
    pub bucket: String,
    pub dir: tempfile::TempDir,
    http: reqwest::Client,
    /// Role of the subscription workers drain (see `resubscribe`).
    work: std::sync::Mutex<String>,
    max_attempts: u32,
}

impl GcpSandbox {
    /// A dataset, a bucket, a work topic and subscription (ack deadline
    /// 10 s, dead-letter policy with `max_attempts`), a dead-letter topic
    /// and its subscription, all named after the test.
    pub async fn new(name: &str, max_attempts: u32) -> GcpSandbox {
        let emulators = emulators();
        let sb = GcpSandbox {
            name: name.to_string(),
            violations_from: std::fs::metadata(&emulators.violations).map_or(0, |m| m.len()),
            emulators,
            dataset: format!("ds_{name}"),
            bucket: format!("bqdrain-{}", name.replace('_', "-")),
            dir: tempfile::tempdir().unwrap(),
            // No pooled connections: the emulators close idle ones after a
            // few seconds, and a request racing that close fails.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .default_headers(harness_headers())
                .build()
                .unwrap(),
            work: std::sync::Mutex::new("work".into()),
            max_attempts,
        };
        std::fs::create_dir_all(sb.dir.path().join("logs")).unwrap();
        sb.create_dataset(&sb.dataset).await;
        sb.call(
            "POST",
            &format!(
                "http://{}/storage/v1/b?project={PROJECT}",
                sb.emulators.storage
            ),
            Some(json!({"name": sb.bucket})),
        )
        .await;
        for topic in [sb.topic_name("work"), sb.topic_name("dead")] {
            sb.pubsub_call("PUT", &topic, None).await;
        }
        sb.create_work_subscription("work").await;
        sb.pubsub_call(
            "PUT",
            &sb.subscription_name("dead"),
            Some(json!({"topic": sb.topic_name("dead"), "ackDeadlineSeconds": 10})),
        )
        .await;
        sb
    }

    /// Creates subscription `role` of the work topic, with the dead-letter
    /// policy, without moving workers to it.
    pub async fn create_work_subscription(&self, role: &str) {
        self.create_subscription(
            role,
            json!({
                "deadLetterPolicy": {"deadLetterTopic": self.topic_name("dead"), "maxDeliveryAttempts": self.max_attempts},
            }),
        )
        .await;
    }

    /// Creates subscription `role` of the work topic (ack deadline 10 s)
    /// with the settings in `policies` (e.g. a dead-letter or retry policy).
    pub async fn create_subscription(&self, role: &str, policies: Value) {
        let mut body = json!({"topic": self.topic_name("work"), "ackDeadlineSeconds": 10});
        body.as_object_mut()
            .unwrap()
            .extend(policies.as_object().unwrap().clone());
        self.pubsub_call("PUT", &self.subscription_name(role), Some(body))
            .await;
    }

    pub async fn delete_subscription(&self, role: &str) {
        self.pubsub_call("DELETE", &self.subscription_name(role), None)
            .await;
    }

    /// `pubsub://` URI of subscription `role`.
    pub fn subscription_of(&self, role: &str) -> String {
        format!("pubsub://{}", self.subscription_name(role))
    }

    /// Workers drain a new subscription of the work topic from now on.
    ///
    /// The Pub/Sub emulator goes on streaming new messages to a subscriber
    /// that has just exited, where they wait 10-70 s for their lease to
    /// lapse; a test that starts workers again after others exited uses a
    /// fresh subscription instead of waiting.
    pub async fn resubscribe(&self, role: &str) {
        self.create_work_subscription(role).await;
        self.drain_from(role);
    }

    /// Workers drain subscription `role`, which exists, from now on.
    pub fn drain_from(&self, role: &str) {
        *self.work.lock().unwrap() = role.to_string();
    }

    fn work_role(&self) -> String {
        self.work.lock().unwrap().clone()
    }

    /// The subscription role `role` names: "work" means the current one.
    fn resolve(&self, role: &str) -> String {
        if role == "work" {
            self.work_role()
        } else {
            role.to_string()
        }
    }

    async fn call(&self, method: &str, url: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method.parse().unwrap(), url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {url}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub async fn bq_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://{}/bigquery/v2/{path}", self.emulators.bigquery);
        self.call(method, &url, body).await
    }

    async fn pubsub_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://{}/v1/{path}", self.emulators.pubsub);
        self.call(method, &url, body).await
    }

    fn topic_name(&self, role: &str) -> String {
        format!("projects/{PROJECT}/topics/{role}-{}", self.name)
    }

    fn subscription_name(&self, role: &str) -> String {
        format!("projects/{PROJECT}/subscriptions/{role}-{}", self.name)
    }

    pub fn source(&self) -> String {
        format!("bigquery://{PROJECT}/{}", self.dataset)
    }

    pub fn topic(&self) -> String {
        format!("pubsub://{}", self.topic_name("work"))
    }

    pub fn subscription(&self) -> String {
        self.subscription_of(&self.work_role())
    }

    pub fn dead_letter_topic(&self) -> String {
        format!("pubsub://{}", self.topic_name("dead"))
    }

    pub fn dead_letter_subscription(&self) -> String {
        format!("pubsub://{}", self.subscription_name("dead"))
    }

    /// The export root; `folder` keeps runs of different tests apart.
    pub fn destination(&self, folder: &str) -> String {
        format!("gs://{}/{folder}", self.bucket)
    }

    /// Creates a dataset (location US) in the emulator's project.
    pub async fn create_dataset(&self, dataset: &str) {
        self.bq_call(
            "POST",
            &format!("projects/{PROJECT}/datasets"),
            Some(json!({"datasetReference": {"projectId": PROJECT, "datasetId": dataset}, "location": "US"})),
        )
        .await;
    }

    /// Creates `table` (id, name, age) holding `rows` rows.
    pub async fn create_table(&self, table: &str, rows: u64) {
        let rows = (1..=rows)
            .map(|i| json!({"id": i, "name": format!("name_{i}"), "age": i % 90}))
            .collect();
        let schema = json!([["id", "INTEGER"], ["name", "STRING"], ["age", "INTEGER"]]);
        self.new_table(table, schema, json!({}), rows).await;
    }

    /// Creates `table` (id, day, amount) partitioned by the DATE `day`,
    /// with `per_day` rows on each of `days`.
    pub async fn create_daily_table(&self, table: &str, days: &[&str], per_day: u64) {
        let rows = days
            .iter()
            .enumerate()
            .flat_map(|(d, day)| {
                (0..per_day).map(
                    move |i| json!({"id": d as u64 * per_day + i + 1, "day": day, "amount": i}),
                )
            })
            .collect();
        let partitioning = json!({"timePartitioning": {"type": "DAY", "field": "day"}});
        let schema = json!([["id", "INTEGER"], ["day", "DATE"], ["amount", "INTEGER"]]);
        self.new_table(table, schema, partitioning, rows).await;
    }

    /// Creates `table` shaped like a day of a Google Analytics export
    /// (`events_YYYYMMDD`): `id`, `event_name`, and `event_params`, a
    /// repeated record of a key and a record value; `rows` rows of two
    /// parameters each.
    pub async fn create_analytics_table(&self, table: &str, rows: u64) {
        let value = json!({"name": "value", "type": "RECORD", "fields": [
            {"name": "string_value", "type": "STRING"},
            {"name": "int_value", "type": "INTEGER"},
        ]});
        let params = json!({"name": "event_params", "type": "RECORD", "mode": "REPEATED",
            "fields": [{"name": "key", "type": "STRING"}, value]});
        let schema = json!([["id", "INTEGER"], ["event_name", "STRING"], params]);
        let rows = (1..=rows)
            .map(|i| {
                json!({"id": i, "event_name": "page_view", "event_params": [
                    {"key": "page", "value": {"string_value": format!("/p{i}")}},
                    {"key": "seconds", "value": {"int_value": i}},
                ]})
            })
            .collect();
        self.new_table(table, schema, json!({}), rows).await;
    }

    /// Creates `table` (id, day, amount) like [`Self::create_daily_table`],
    /// with the table settings in `extra` (clustering, labels, …).
    pub async fn create_daily_table_with(&self, table: &str, day: &str, rows: u64, extra: Value) {
        let rows = (1..=rows)
            .map(|i| json!({"id": i, "day": day, "amount": i}))
            .collect();
        let schema = json!([["id", "INTEGER"], ["day", "DATE"], ["amount", "INTEGER"]]);
        self.new_table(table, schema, extra, rows).await;
    }

    /// Creates `table` with the columns in `schema` (`[[name, type], …]`,
    /// or a field as `tables.insert` takes it; `id` first) and the table
    /// settings in `extra`; inserts `rows`.
    pub async fn new_table(&self, table: &str, schema: Value, extra: Value, rows: Vec<Value>) {
        let tables = format!("projects/{PROJECT}/datasets/{}/tables", self.dataset);
        let fields: Vec<Value> = schema
            .as_array()
            .unwrap()
            .iter()
            .map(|f| match f.as_array() {
                Some(pair) => json!({"name": pair[0], "type": pair[1]}),
                None => f.clone(),
            })
            .collect();
        let mut definition = json!({
            "tableReference": {"projectId": PROJECT, "datasetId": self.dataset, "tableId": table},
            "schema": {"fields": fields},
        });
        definition
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        self.bq_call("POST", &tables, Some(definition)).await;
        let rows: Vec<Value> = rows
            .into_iter()
            .map(|row| json!({"insertId": row["id"].to_string(), "json": row}))
            .collect();
        for chunk in rows.chunks(5000) {
            let body = self
                .bq_call(
                    "POST",
                    &format!("{tables}/{table}/insertAll"),
                    Some(json!({"rows": chunk})),
                )
                .await;
            let errors = body["insertErrors"].as_array().map_or(0, Vec::len);
            assert_eq!(errors, 0, "insertAll: {body}");
        }
    }

    /// Runs a statement (DML) through `jobs.query`; `{table}` in `sql`
    /// stands for the fully qualified `table`.
    pub async fn dml(&self, table: &str, sql: &str) {
        let qualified = format!("`{PROJECT}.{}.{table}`", self.dataset);
        let body = self
            .bq_call(
                "POST",
                &format!("projects/{PROJECT}/queries"),
                Some(json!({"query": sql.replace("{table}", &qualified), "useLegacySql": false})),
            )
            .await;
        assert!(body.get("error").is_none(), "{sql}: {body}");
    }

    pub async fn make_tables(&self, count: usize, rows: u64) -> Vec<String> {
        let names: Vec<String> = (1..=count).map(|i| format!("t_{i:03}")).collect();
        for name in &names {
            self.create_table(name, rows).await;
        }
        names
    }

    /// Every job the BigQuery emulator ran in the project.
    pub async fn extract_jobs(&self) -> Vec<Value> {
        let list = self
            .bq_call(
                "GET",
                &format!("projects/{PROJECT}/jobs?maxResults=1000"),
                None,
            )
            .await;
        list["jobs"].as_array().cloned().unwrap_or_default()
    }

    pub async fn drop_table(&self, table: &str) {
        let path = format!(
            "projects/{PROJECT}/datasets/{}/tables/{table}",
            self.dataset
        );
        self.bq_call("DELETE", &path, None).await;
    }

    /// The emulator variables, with BigQuery reached through `bigquery`.
    pub fn env(&self, bigquery: Option<&str>) -> Vec<(&'static str, String)> {
        vec![
            ("PUBSUB_EMULATOR_HOST", self.emulators.pubsub.clone()),
            (
                "BIGQUERY_EMULATOR_HOST",
                bigquery.unwrap_or(&self.emulators.bigquery).to_string(),
            ),
            ("STORAGE_EMULATOR_HOST", self.emulators.storage.clone()),
        ]
    }

    /// Runs `bqdrain-producer` from this dataset to the work topic.
    pub fn produce(&self, folder: &str, args: &[&str]) -> Output {
        self.produce_to(&self.topic(), folder, args, Vec::new())
    }

    /// Runs `bqdrain-producer`, reaching BigQuery through `bigquery`.
    pub fn produce_through(&self, bigquery: &str, folder: &str, args: &[&str]) -> Output {
        let bigquery = ("BIGQUERY_EMULATOR_HOST", bigquery.to_string());
        self.produce_to(&self.topic(), folder, args, vec![bigquery])
    }

    /// The same to any topic, with `envs` set over the emulators' variables.
    pub fn produce_to(
        &self,
        topic: &str,
        folder: &str,
        args: &[&str],
        envs: Vec<(&str, String)>,
    ) -> Output {
        self.produce_from(&self.source(), topic, folder, args, envs)
    }

    /// Runs `bqdrain-producer` from any `--source`.
    pub fn produce_from(
        &self,
        source: &str,
        topic: &str,
        folder: &str,
        args: &[&str],
        envs: Vec<(&str, String)>,
    ) -> Output {
        let producer = Path::new(BIN).with_file_name("bqdrain-producer");
        assert!(
            producer.exists(),
            "{producer:?} is missing: run the tests with `cargo test --workspace`"
        );
        Command::new(producer)
            .args(["--source", source, "--topic", topic])
            .args(["--destination", &self.destination(folder), "--json"])
            .args(args)
            .envs(self.env(None))
            .envs(envs)
            .output()
            .expect("run bqdrain-producer")
    }

    /// Runs `bqdrain status --json` for `run_id` in `folder`, with `extra` flags.
    pub fn status(&self, folder: &str, run_id: &str, extra: &[&str]) -> Value {
        self.status_with(folder, run_id, extra, Vec::new())
    }

    /// The same, with `envs` set over the emulators' variables.
    pub fn status_with(
        &self,
        folder: &str,
        run_id: &str,
        extra: &[&str],
        envs: Vec<(&'static str, String)>,
    ) -> Value {
        let destination = self.destination(folder);
        let args = [
            "status",
            "--destination",
            &destination,
            "--run-id",
            run_id,
            "--json",
        ];
        let output = Command::new(BIN)
            .args([&args[..], extra].concat())
            .envs(self.env(None))
            .envs(envs)
            .output()
            .expect("run bqdrain");
        super::json_of(&output)
    }

    /// Runs a `bqdrain` command to completion.
    pub fn bqdrain(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .envs(self.env(None))
            .output()
            .expect("run bqdrain")
    }

    /// Starts `bqdrain work` on the work subscription; its log goes to logs/.
    pub fn spawn_worker(&self, args: &[&str], bigquery: Option<&str>) -> Child {
        self.spawn_worker_with(args, self.env(bigquery))
    }

    /// Starts `bqdrain work` like `spawn_worker`, with these variables.
    pub fn spawn_worker_with(&self, args: &[&str], env: Vec<(&'static str, String)>) -> Child {
        let subscription = self.subscription();
        let mut all = vec!["--subscription", subscription.as_str()];
        all.extend_from_slice(args);
        super::spawn_worker(&self.dir.path().join("logs"), &all, env)
    }

    /// Every worker log so far, for assertion messages.
    pub fn logs(&self) -> String {
        super::read_logs(&self.dir.path().join("logs"))
    }

    /// Names and sizes of the bucket's objects under `prefix`, sorted.
    pub async fn objects(&self, prefix: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let mut url = reqwest::Url::parse(&format!(
                "http://{}/storage/v1/b/{}/o",
                self.emulators.storage, self.bucket
            ))
            .unwrap();
            url.query_pairs_mut().append_pair("prefix", prefix);
            if !page_token.is_empty() {
                url.query_pairs_mut().append_pair("pageToken", &page_token);
            }
            let page = self.call("GET", url.as_str(), None).await;
            for item in page["items"].as_array().into_iter().flatten() {
                let size = item["size"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                out.push((item["name"].as_str().unwrap().to_string(), size));
            }
            match page["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => page_token = t.to_string(),
                _ => break,
            }
        }
        out.sort();
        out
    }

    pub async fn download(&self, object: &str) -> Option<Vec<u8>> {
        let mut url = reqwest::Url::parse(&format!(
            "http://{}/storage/v1/b/{}/o/",
            self.emulators.storage, self.bucket
        ))
        .unwrap();
        url.path_segments_mut().unwrap().pop().push(object);
        url.query_pairs_mut().append_pair("alt", "media");
        let response = self.http.get(url).send().await.unwrap();
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(
            response.status().is_success(),
            "download {object}: {}",
            response.status()
        );
        Some(response.bytes().await.unwrap().to_vec())
    }

    /// Writes `object` with `bytes`, replacing any object of that name.
    pub async fn upload(&self, object: &str, bytes: Vec<u8>) {
        let mut url = reqwest::Url::parse(&format!(
            "http://{}/upload/storage/v1/b/{}/o",
            self.emulators.storage, self.bucket
        ))
        .unwrap();
        url.query_pairs_mut()
            .append_pair("uploadType", "media")
            .append_pair("name", object);
        let response = self.http.post(url).body(bytes).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "upload {object}: {}",
            response.status()
        );
    }

    /// Deletes every object under `prefix`, as a lifecycle rule would.
    pub async fn delete_objects(&self, prefix: &str) {
        for (object, _) in self.objects(prefix).await {
            let mut url = reqwest::Url::parse(&format!(
                "http://{}/storage/v1/b/{}/o/",
                self.emulators.storage, self.bucket
            ))
            .unwrap();
            url.path_segments_mut().unwrap().pop().push(&object);
            let response = self.http.delete(url).send().await.unwrap();
            assert!(response.status().is_success(), "delete {object}");
        }
    }

    pub async fn done_record(
        &self,
        folder: &str,
        run_id: &str,
        unit: &str,
    ) -> Option<TableManifest> {
        let key = format!("{folder}/_bqdrain/runs/{run_id}/done/{unit}.json");
        let bytes = self.download(&key).await?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    pub async fn dead_record(&self, folder: &str, run_id: &str, unit: &str) -> Option<Value> {
        let key = format!("{folder}/_bqdrain/runs/{run_id}/dead/{unit}.json");
        let bytes = self.download(&key).await?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    /// Publishes one raw message to the work topic.
    pub async fn publish_raw(&self, data: &[u8], attributes: Value) {
        self.publish_to("work", vec![(data.to_vec(), attributes)])
            .await;
    }

    /// Publishes raw messages (body, attributes) to topic `role`.
    pub async fn publish_to(&self, role: &str, messages: Vec<(Vec<u8>, Value)>) {
        let path = format!("{}:publish", self.topic_name(role));
        for chunk in messages.chunks(1000) {
            let messages: Vec<Value> = chunk
                .iter()
                .map(|(data, attributes)| {
                    let data = base64::engine::general_purpose::STANDARD.encode(data);
                    json!({"data": data, "attributes": attributes})
                })
                .collect();
            self.pubsub_call("POST", &path, Some(json!({"messages": messages})))
                .await;
        }
    }

    /// Gives pulled messages of subscription `role` back at once.
    pub async fn nack(&self, role: &str, pulled: &[Pulled]) {
        let ids: Vec<&str> = pulled.iter().map(|p| p.ack_id.as_str()).collect();
        let sub = self.subscription_name(&self.resolve(role));
        self.pubsub_call(
            "POST",
            &format!("{sub}:modifyAckDeadline"),
            Some(json!({"ackIds": ids, "ackDeadlineSeconds": 0})),
        )
        .await;
    }

    /// Pulls and acks every message subscription `role` delivers until a
    /// pull comes back empty; returns them.
    pub async fn pull_all(&self, role: &str) -> Vec<Pulled> {
        let mut all = Vec::new();
        loop {
            let batch = self.pull(role, 1000, true).await;
            if batch.is_empty() {
                return all;
            }
            all.extend(batch);
        }
    }

    /// Pulls (without waiting) up to `max` messages of the work or dead
    /// subscription, and acks them when `ack`.
    pub async fn pull(&self, role: &str, max: u32, ack: bool) -> Vec<Pulled> {
        let sub = self.subscription_name(&self.resolve(role));
        let body = self
            .pubsub_call(
                "POST",
                &format!("{sub}:pull"),
                Some(json!({"maxMessages": max, "returnImmediately": true})),
            )
            .await;
        let pulled: Vec<Pulled> = body["receivedMessages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| Pulled {
                ack_id: m["ackId"].as_str().unwrap().to_string(),
                data: base64::engine::general_purpose::STANDARD
                    .decode(m["message"]["data"].as_str().unwrap_or_default())
                    .unwrap(),
                attributes: m["message"]["attributes"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                delivery_attempt: m["deliveryAttempt"].as_u64().unwrap_or(0),
            })
            .collect();
        if ack && !pulled.is_empty() {
            let ids: Vec<&str> = pulled.iter().map(|p| p.ack_id.as_str()).collect();
            self.pubsub_call(
                "POST",
                &format!("{sub}:acknowledge"),
                Some(json!({"ackIds": ids})),
            )
            .await;
        }
        pulled
    }

    /// Asserts a table was exported exactly once by the run: its completion
    /// record, the same document beside the shards as `_MANIFEST.json`,
    /// nothing else in the table's folder, sizes as listed, and `rows` CSV
    /// rows read back from the downloaded shards.
    pub async fn assert_exported(
        &self,
        folder: &str,
        run_id: &str,
        table: &str,
        rows: u64,
    ) -> TableManifest {
        let record = self
            .done_record(folder, run_id, table)
            .await
            .unwrap_or_else(|| panic!("{table} has no completion record\n{}", self.logs()));
        let mut expected: Vec<(String, u64)> = record
            .files
            .iter()
            .map(|f| (format!("{folder}/{}", f.key), f.bytes))
            .collect();
        let table_folder = format!("{folder}/{}/{table}/", self.dataset);
        let manifest_key = format!("{table_folder}run={run_id}/_MANIFEST.json");
        let manifest = self
            .download(&manifest_key)
            .await
            .expect("the export's manifest");
        expected.push((manifest_key, manifest.len() as u64));
        let definition_key = format!("{table_folder}run={run_id}/_TABLE.json");
        let definition = self
            .download(&definition_key)
            .await
            .expect("the export's table definition");
        expected.push((definition_key, definition.len() as u64));
        expected.sort();
        assert_eq!(
            self.objects(&table_folder).await,
            expected,
            "{table}: exactly the shards of this run, its manifest and its definition"
        );
        let done_key = format!("{folder}/_bqdrain/runs/{run_id}/done/{table}.json");
        assert_eq!(
            self.download(&done_key).await.unwrap(),
            manifest,
            "{table}: the export's manifest is its completion record"
        );
        let mut read_back = 0;
        for f in &record.files {
            let bytes = self.download(&format!("{folder}/{}", f.key)).await.unwrap();
            read_back += super::csv_data_rows(&f.key, &bytes);
        }
        assert_eq!(read_back, rows, "{table}: rows read back from its shards");
        assert_eq!(record.rows, Some(rows), "{table}: rows in the manifest");
        record
    }
}

/// Decompresses a gzip shard, or returns the bytes as they are.
pub fn maybe_gunzip(name: &str, bytes: &[u8]) -> Vec<u8> {
    if !name.ends_with(".gz") {
        return bytes.to_vec();
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

impl GcpSandbox {
    /// The extract jobs whose destination is in this sandbox's bucket.
    pub async fn own_extract_jobs(&self) -> Vec<Value> {
        let bucket = format!("gs://{}/", self.bucket);
        let mut jobs = self.extract_jobs().await;
        jobs.retain(|j| {
            j["configuration"]["extract"]["destinationUris"][0]
                .as_str()
                .is_some_and(|u| u.starts_with(&bucket))
        });
        jobs
    }

    /// Inserts jobs `JOB_r1` to `JOB_rCOUNT` configured like `job`: the
    /// numbered successors that as many earlier deliveries would have run.
    pub async fn insert_successor_jobs(&self, job: &Value, count: u32) {
        let reference = &job["jobReference"];
        let id = reference["jobId"].as_str().expect("a job id");
        for successor in 1..=count {
            let body = json!({
                "jobReference": {
                    "projectId": PROJECT,
                    "jobId": format!("{id}_r{successor}"),
                    "location": reference["location"],
                },
                "configuration": job["configuration"],
            });
            self.bq_call("POST", &format!("projects/{PROJECT}/jobs"), Some(body))
                .await;
        }
    }
}

impl GcpSandbox {
    /// The run manifest the producer wrote under `folder`.
    pub async fn run_manifest(
        &self,
        folder: &str,
        run_id: &str,
    ) -> bqdrain::engine::layout::RunManifest {
        let key = format!("{folder}/{}", bqdrain::engine::layout::run_manifest(run_id));
        let bytes = self.download(&key).await.expect("the run manifest");
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Creates a view of `table`: a table that is not exported.
    pub async fn create_view(&self, view: &str, table: &str) {
        let tables = format!("projects/{PROJECT}/datasets/{}/tables", self.dataset);
        let query = format!("SELECT * FROM `{PROJECT}.{}.{table}`", self.dataset);
        self.bq_call(
            "POST",
            &tables,
            Some(json!({
                "tableReference": {"projectId": PROJECT, "datasetId": self.dataset, "tableId": view},
                "view": {"query": query, "useLegacySql": false},
            })),
        )
        .await;
    }
}

/// A test fails when a call it made, or an answer it got, breaks Google's
/// API description: the proxy refuses such a request with the 400 Google
/// would answer, which the command may survive (a dead-lettered unit, a
/// retried call), so the record decides, not the command's outcome.
impl Drop for GcpSandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let found = super::api_violations::since(
            &self.emulators.violations,
            self.violations_from,
            &[&self.dataset, &self.bucket],
        );
        assert!(
            found.is_empty(),
            "{}: {} call(s) broke Google's API description (all of them: {:?}):\n{}",
            self.name,
            found.len(),
            self.emulators.violations,
            found.join("\n")
        );
    }
}
