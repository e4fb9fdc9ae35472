//! A sandbox per test: a local dataset, a queue file and an export folder in
//! a temporary directory, plus helpers to run real worker processes and to
//! read back what they exported.
#![allow(dead_code)]

pub mod api_violations;
pub mod discovery_proxy;
pub mod fake_run_api;
pub mod fault_proxy;
pub mod gcp;
pub mod gcp_restore;
pub mod iam_proxy;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bqdrain::adapters::backends;
use bqdrain::adapters::local::dataset::{self, Fault};
use bqdrain::adapters::local::queue::LocalSubscription;
use bqdrain::contract::message::{Envelope, SourceTable};
use bqdrain::engine::layout::{self, TableManifest};
use bqdrain::engine::producer::{produce, ProduceReport, RunId, RunPlan};
use bqdrain::ports::queue::ReceiveSettings;

pub const BIN: &str = env!("CARGO_BIN_EXE_bqdrain");
/// The dataset a sandbox's `warehouse.db` is: its file name's stem.
pub const DATASET: &str = "warehouse";

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn warehouse(&self) -> PathBuf {
        self.path("warehouse.db")
    }

    /// The dataset URI, with an optional query such as `shard_bytes=2000`.
    pub fn source(&self, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("sqlite://{}{}", self.warehouse().display(), q)
    }

    pub fn queue(&self, name: &str) -> String {
        format!("queue://{}#{name}", self.path("queue.db").display())
    }

    /// The work subscription with a dead-letter policy; `extra` adds settings.
    pub fn subscription(&self, extra: &str) -> String {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("&{extra}")
        };
        format!(
            "queue://{}?dead_letter=dead{extra}#work",
            self.path("queue.db").display()
        )
    }

    pub fn destination(&self) -> String {
        format!("file://{}", self.exports().display())
    }

    pub fn exports(&self) -> PathBuf {
        self.path("exports")
    }

    pub fn fault(&self, table: &str, fault: Fault) {
        dataset::set_fault(&self.warehouse(), table, fault).unwrap();
    }

    /// Makes each shard of `table` wait `ms` before it is written.
    pub fn slow(&self, table: &str, ms: u64) {
        self.fault(
            table,
            Fault::Slow {
                per_shard: Duration::from_millis(ms),
            },
        );
    }

    pub fn make_tables(&self, count: usize, rows: u64) -> Vec<String> {
        let names: Vec<String> = (1..=count).map(|i| format!("t_{i:03}")).collect();
        dataset::create_dummy_tables(&self.warehouse(), &names, rows).unwrap();
        names
    }

    pub async fn produce(&self, source_query: &str, run_id: &str) -> ProduceReport {
        self.produce_to("work", source_query, run_id).await
    }

    pub async fn produce_to(&self, queue: &str, source_query: &str, run_id: &str) -> ProduceReport {
        let run = RunId::Given {
            id: run_id.to_string(),
            resume: false,
        };
        self.try_produce(&self.source(source_query), queue, run)
            .await
            .unwrap()
    }

    /// Runs the producer from any dataset to a queue of this sandbox.
    pub async fn try_produce(
        &self,
        source: &str,
        queue: &str,
        run: RunId,
    ) -> anyhow::Result<ProduceReport> {
        self.try_produce_plan(source, queue, &RunPlan::every_table(run))
            .await
    }

    /// Runs the producer with `plan` from any dataset to a queue of this
    /// sandbox.
    pub async fn try_produce_plan(
        &self,
        source: &str,
        queue: &str,
        plan: &RunPlan,
    ) -> anyhow::Result<ProduceReport> {
        self.try_produce_sources(&[source.to_string()], queue, plan)
            .await
    }

    /// Runs the producer with `plan` from several datasets (`--source`
    /// given more than once) to a queue of this sandbox.
    pub async fn try_produce_sources(
        &self,
        sources: &[String],
        queue: &str,
        plan: &RunPlan,
    ) -> anyhow::Result<ProduceReport> {
        let warehouses = backends::open_sources(sources, "--source").await?;
        let topic = backends::open_topic(&self.queue(queue), "--topic").await?;
        let store = backends::open_store(&self.destination(), "--destination").await?;
        produce(plan, &warehouses, topic.as_ref(), store.as_ref()).await
    }

    pub async fn publish_raw(&self, queue: &str, envelopes: Vec<Envelope>) {
        let topic = backends::open_topic(&self.queue(queue), "--topic")
            .await
            .unwrap();
        topic.publish(envelopes).await.unwrap();
    }

    pub async fn depth(&self, queue: &str) -> u64 {
        LocalSubscription::open(&self.queue(queue), "q", &ReceiveSettings::new(1))
            .unwrap()
            .depth()
            .await
            .unwrap()
    }

    /// Starts `bqdrain work` on the work subscription; its log goes to logs/.
    pub fn spawn_worker(&self, subscription: &str, args: &[&str]) -> Child {
        let mut all = vec!["--subscription", subscription];
        all.extend_from_slice(args);
        spawn_worker(&self.path("logs"), &all, Vec::new())
    }

    /// The state `status` reports for one unit of a run.
    pub fn unit_state(&self, run_id: &str, unit: &str) -> String {
        let status = self.status(run_id, &[]);
        let found = status["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["unit"] == unit)
            .unwrap_or_else(|| panic!("{unit} is not a unit of run {run_id}: {status}"));
        found["state"].as_str().unwrap().to_string()
    }

    /// Every worker log so far, for assertion messages.
    pub fn logs(&self) -> String {
        read_logs(&self.path("logs"))
    }

    /// Runs `bqdrain replay --json` from the dead queue to the work queue.
    pub fn replay(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(["replay", "--from", &self.queue("dead")])
            .args(["--to", &self.queue("work"), "--json"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `bqdrain status --json` for `run_id`.
    pub fn status(&self, run_id: &str, args: &[&str]) -> serde_json::Value {
        json_of(
            &Command::new(BIN)
                .args(["status", "--destination", &self.destination()])
                .args(["--run-id", run_id, "--json"])
                .args(args)
                .output()
                .unwrap(),
        )
    }

    pub fn manifest(&self, run_id: &str, unit: &str) -> Option<TableManifest> {
        let path = self
            .exports()
            .join(format!("_bqdrain/runs/{run_id}/done/{unit}.json"));
        std::fs::read(path)
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    pub fn dead_record(&self, run_id: &str, unit: &str) -> Option<serde_json::Value> {
        let path = self
            .exports()
            .join(format!("_bqdrain/runs/{run_id}/dead/{unit}.json"));
        std::fs::read(path)
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    /// The source of a table of this sandbox's dataset, as messages name it.
    pub fn table_source(&self, table: &str) -> SourceTable {
        SourceTable {
            dataset_uri: self.source(""),
            project: "local".into(),
            dataset: DATASET.into(),
            table: table.into(),
            partition: None,
            view: false,
        }
    }

    /// Where run `run_id` exports `table`, relative to the export root.
    pub fn export_folder(&self, table: &str, run_id: &str) -> String {
        layout::export_folder(&self.table_source(table), run_id)
    }

    /// Every file under a table's folder, relative to the export root.
    pub fn files_of(&self, table: &str) -> Vec<String> {
        let mut out = Vec::new();
        let folder = layout::unit_folder(&self.table_source(table));
        walk(&self.exports().join(folder), &self.exports(), &mut out);
        out.sort();
        out
    }
}

/// Starts `bqdrain work --json` with `args` and `envs`, as task number N
/// where N counts the logs in `logs`; its log goes there as worker-N.log.
pub fn spawn_worker(logs: &Path, args: &[&str], envs: Vec<(&str, String)>) -> Child {
    let n = std::fs::read_dir(logs).unwrap().count();
    let log = std::fs::File::create(logs.join(format!("worker-{n}.log"))).unwrap();
    Command::new(BIN)
        .args(["--log-format", "json", "work", "--json"])
        .args(args)
        .envs(envs)
        .env("CLOUD_RUN_TASK_INDEX", n.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start worker")
}

/// Every log file in `logs`, concatenated.
pub fn read_logs(logs: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(logs).unwrap() {
        out += &std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
    }
    out
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, root, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// The JSON a successful `--json` command printed; panics with its stderr
/// when it failed.
pub fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the command prints JSON")
}

/// Waits for a worker and parses the JSON outcome it printed.
pub fn finish(mut child: Child, limit: Duration) -> (ExitStatus, serde_json::Value) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("worker did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let json = serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// Data rows in CSV shards (each shard has a header line), gzip-aware.
pub fn csv_rows(root: &Path, keys: &[String]) -> u64 {
    keys.iter()
        .map(|k| csv_data_rows(k, &std::fs::read(root.join(k)).unwrap()))
        .sum()
}

/// Data rows of one CSV shard named `key`, after its `id,name,age` header.
pub fn csv_data_rows(key: &str, bytes: &[u8]) -> u64 {
    let text = String::from_utf8(gcp::maybe_gunzip(key, bytes)).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("id,name,age"),
        "{key} starts with the header"
    );
    lines.count() as u64
}

/// Asserts a unit was exported exactly once for the run: a completion
/// record, its manifest beside the shards, nothing else in the folder, and
/// the right number of rows read back from the files.
pub fn assert_exported(sb: &Sandbox, run_id: &str, table: &str, rows: u64) -> TableManifest {
    let m = sb
        .manifest(run_id, table)
        .unwrap_or_else(|| panic!("{table} has no completion record\n{}", sb.logs()));
    let keys: Vec<String> = m.files.iter().map(|f| f.key.clone()).collect();
    let mut expected = keys.clone();
    let folder_manifest_key = layout::export_manifest(&sb.table_source(table), run_id);
    expected.push(folder_manifest_key.clone());
    expected.push(layout::export_definition(&sb.table_source(table), run_id));
    expected.sort();
    assert_eq!(
        sb.files_of(table),
        expected,
        "{table}: exactly the shards of this run, its manifest and its definition"
    );
    assert_eq!(
        csv_rows(&sb.exports(), &keys),
        rows,
        "{table}: rows read back"
    );
    assert_eq!(m.rows, Some(rows));
    let folder_manifest = std::fs::read(sb.exports().join(folder_manifest_key)).unwrap();
    let record = std::fs::read(
        sb.exports()
            .join(format!("_bqdrain/runs/{run_id}/done/{table}.json")),
    )
    .unwrap();
    assert_eq!(
        folder_manifest, record,
        "{table}: the export's manifest is its completion record"
    );
    for f in &m.files {
        assert_eq!(
            std::fs::metadata(sb.exports().join(&f.key)).unwrap().len(),
            f.bytes,
            "{}: size",
            f.key
        );
    }
    m
}

/// A run of every table, partitioned ones partition by partition, views
/// through their queries.
pub fn every_unit_plan(run_id: &str) -> RunPlan {
    RunPlan {
        partitions: bqdrain::engine::selection::PartitionPlan {
            split: true,
            window: None,
            min_rows: 0,
        },
        views: true,
        ..RunPlan::every_table(RunId::Given {
            id: run_id.into(),
            resume: false,
        })
    }
}

/// Polls until `cond` holds, or panics after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
