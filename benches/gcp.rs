//! Figures against the emulators: `cargo bench --bench gcp`.
//!
//! Starts the emulator stack the tests use (`scripts/emulators/`), then
//! measures, as medians of 5 with the spread:
//! - `publish`: 10,000 messages to a Pub/Sub topic, confirmed;
//! - `noop_drain`: 2,000 messages received and acked by one process at
//!   concurrency 10 with no export, and its start-to-first-ack time;
//! - `worker`: one `bqdrain work` process at concurrency 10 draining a run
//!   of 30 tables of 1,000 rows (BigQuery extract jobs, files in Cloud
//!   Storage), its start-to-first-ack time and peak RSS; then one more run
//!   with Cloud Storage behind a counting proxy, for the worker's storage
//!   calls per unit;
//! - `producer`: planning and publishing a dataset of 10,000 empty tables,
//!   with BigQuery behind a counting proxy: wall time and BigQuery calls
//!   (and how long creating the tables in the emulator took); then twice
//!   more, `--format json`, with BigQuery behind `discovery_proxy.py` refusing (403) every
//!   call the permission table does not grant the producer under the
//!   module's default settings: as the table stands (`producer_grants`),
//!   and without its `jobs.query` entries, as a module granting no
//!   `jobs.create` would (`producer_fallback`): calls by method, refused
//!   calls and wall time (the proxy, in Python, adds its own time a call);
//! - `status`: `bqdrain status` of a run of 10,000 exported units whose
//!   records are in Cloud Storage;
//! - `verify`: `bqdrain verify` of a destination of 10,000 committed exports (a
//!   shard, its `_TABLE.json` and its `_MANIFEST.json` each) in Cloud Storage,
//!   from listings: wall time, and its listing calls and Cloud Storage requests
//!   per unit (once more with Cloud Storage behind a counting proxy);
//! - `incremental`: 1,000 tables of 1,000 rows drained by 8 worker
//!   processes, then 50 of them changed and an `--only-changed` run: each
//!   run's producer + drain wall time;
//! - `preflight`: `bqdrain-producer --check` of a dataset of 1,000 tables
//!   (the emulators' `testIamPermissions` answered by the tests' IAM proxy):
//!   wall time;
//! - `skew`: 99 small tables and `events`, as many rows as all of them over
//!   60 daily partitions, drained by 8 tasks as whole tables and as
//!   partition units: makespan against its lower bound (once each);
//! - `round_trip`: 30 tables of 1,000 rows exported (producer and 4 worker
//!   processes of concurrency 1, Avro) and restored into a fresh dataset
//!   (`bqdrain restore` publishing to the work topic, then 4 worker
//!   processes of concurrency 1), each side's wall time, the rows loaded
//!   checked against the rows exported.
//!
//! It checks the work was done (every message acked, every table exported)
//! and asserts nothing about speed. `BQDRAIN_BENCH_QUICK=1` runs each once
//! with smaller sizes (500 tables for `producer`, 500 units for `status`
//! and `verify`,
//! 100 tables with 5 changed for `incremental`, 99 × 50 rows for `skew`,
//! 100 tables for `preflight`, 5 tables for `round_trip`).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use bqdrain::contract::message::{Envelope, SourceTable};
use bqdrain::contract::options::Format;
use bqdrain::engine::layout::{self, PlannedUnit, RecordBody, RunManifest, TableManifest};
use bqdrain::engine::producer::{produce, ProduceReport, RunId, RunPlan};
use bqdrain::ports::queue::Topic;
use bqdrain::ports::store::ObjectStore;
use bqdrain::ports::warehouse::Warehouse;
use common::discovery_proxy::DiscoveryProxy;
use common::fault_proxy::FaultProxy;
use common::gcp::{emulators, GcpSandbox};
use common::iam_proxy::IamProxy;
use support::{emit, median, mib, spread_json, unit_times, Incremental, Schedule};

const NOOP_CHILD: &str = "--noop-child";
const CONCURRENCY: usize = 10;

struct Sizes {
    quick: bool,
    reps: usize,
    publish: usize,
    noop: usize,
    tables: usize,
    /// Tables of the dataset the producer plans.
    dataset_tables: usize,
    /// Units of the run whose `status` is read.
    status_units: usize,
    /// Committed exports of the destination `verify` checks.
    verify_units: usize,
    /// Tables of the incremental runs, and how many change between them.
    incremental_tables: usize,
    incremental_changed: usize,
    /// Rows of each small table of the skewed dataset.
    skew_small_rows: u64,
    /// Tables of the dataset `--check` plans.
    preflight_tables: usize,
    /// Tables exported and restored by `round_trip`.
    round_trip_tables: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == NOOP_CHILD) {
        return noop_child(&args[at + 1], args[at + 2].parse().unwrap());
    }
    let quick = std::env::var("BQDRAIN_BENCH_QUICK").is_ok_and(|v| v == "1");
    let s = if quick {
        Sizes {
            quick,
            reps: 1,
            publish: 1_000,
            noop: 500,
            tables: 5,
            dataset_tables: 500,
            status_units: 500,
            verify_units: 500,
            incremental_tables: 100,
            incremental_changed: 5,
            skew_small_rows: 50,
            preflight_tables: 100,
            round_trip_tables: 5,
        }
    } else {
        Sizes {
            quick,
            reps: 5,
            publish: 10_000,
            noop: 2_000,
            tables: 30,
            dataset_tables: 10_000,
            status_units: 10_000,
            verify_units: 10_000,
            incremental_tables: 1_000,
            incremental_changed: 50,
            skew_small_rows: 1_000,
            preflight_tables: 1_000,
            round_trip_tables: 30,
        }
    };
    // BigQuery's own shard size (1 GB), not the tests' small one.
    std::env::set_var(common::gcp::SHARD_THRESHOLD_VARIABLE, "1000000000");
    // Timings without the tests' validating proxies in every call.
    std::env::set_var(common::gcp::NO_VALIDATION_VARIABLE, "1");
    let stack = emulators();
    // Before any client exists: the in-process adapters read these once.
    std::env::set_var("PUBSUB_EMULATOR_HOST", &stack.pubsub);
    std::env::set_var("BIGQUERY_EMULATOR_HOST", &stack.bigquery);
    std::env::set_var("STORAGE_EMULATOR_HOST", &stack.storage);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let sb = GcpSandbox::new("bench", 5).await;
        emit(
            json!({"bench": "gcp", "quick": s.quick, "reps": s.reps}),
            format!(
                "against the emulators{}",
                if s.quick { ", quick sizes" } else { "" }
            ),
        );
        // `cargo bench --bench gcp -- noop` runs only the measurements whose
        // name contains a given word.
        let only: Vec<String> = args
            .iter()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .cloned()
            .collect();
        let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
        if wanted("publish") {
            publish(&sb, &s).await;
        }
        if wanted("noop_drain") {
            noop_drain(&sb, &s).await;
        }
        if wanted("worker") {
            worker(&sb, &s).await;
        }
        if wanted("producer") {
            producer(&s).await;
        }
        if wanted("status") {
            status(&sb, &s).await;
        }
        if wanted("verify") {
            verify(&sb, &s).await;
        }
        if wanted("incremental") {
            incremental(&s).await;
        }
        if wanted("skew") {
            skew(&s).await;
        }
        if wanted("preflight") {
            preflight(&s).await;
        }
        if wanted("round_trip") {
            round_trip(&s).await;
        }
    });
}

fn envelopes(n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|i| Envelope {
            data: vec![b'x'; 200],
            attributes: [
                ("run_id".to_string(), "bench".to_string()),
                ("table".to_string(), format!("t_{i}")),
            ]
            .into(),
        })
        .collect()
}

async fn publish(sb: &GcpSandbox, s: &Sizes) {
    let topic = bqdrain::adapters::backends::open_topic(&sb.dead_letter_topic(), "bench")
        .await
        .unwrap();
    topic.publish(envelopes(100)).await.unwrap(); // warm the connection
    let mut rates = Vec::new();
    for _ in 0..s.reps {
        let started = Instant::now();
        let ids = topic.publish(envelopes(s.publish)).await.unwrap();
        assert_eq!(ids.len(), s.publish, "every publish confirmed");
        rates.push(s.publish as f64 / started.elapsed().as_secs_f64());
    }
    let m = median(rates.clone());
    emit(
        json!({"bench": "publish", "messages": s.publish, "msg_per_s": spread_json(rates)}),
        format!("publish {} messages: {m:.0} msg/s (median)", s.publish),
    );
}

/// Child process: drain with the no-op handler and print the report.
fn noop_child(subscription: &str, expect: u64) {
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt
        .block_on(bqdrain::adapters::noop::drain_noop(
            subscription,
            CONCURRENCY,
            Some(expect),
            Duration::from_secs(30),
            started,
        ))
        .unwrap();
    println!(
        "{}",
        json!({"acked": report.acked, "seconds": report.seconds,
               "first_ack_after_start_s": report.first_ack_after_start_s,
               "peak_rss_bytes": bqdrain::cli::peak_rss_bytes()})
    );
}

async fn noop_drain(sb: &GcpSandbox, s: &Sizes) {
    let (mut rates, mut cold, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..s.reps {
        sb.resubscribe(&format!("noop{rep}")).await;
        let topic = bqdrain::adapters::backends::open_topic(&sb.topic(), "bench")
            .await
            .unwrap();
        topic.publish(envelopes(s.noop)).await.unwrap();
        let out = Command::new(std::env::current_exe().unwrap())
            .args([NOOP_CHILD, &sb.subscription(), &s.noop.to_string()])
            .envs(sb.env(None))
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(report["acked"], s.noop as u64, "{report}");
        rates.push(s.noop as f64 / report["seconds"].as_f64().unwrap());
        cold.push(report["first_ack_after_start_s"].as_f64().unwrap() * 1000.0);
        rss.push(report["peak_rss_bytes"].as_u64().unwrap_or(0) as f64);
    }
    let (m, c, r) = (
        median(rates.clone()),
        median(cold.clone()),
        median(rss.clone()),
    );
    emit(
        json!({"bench": "noop_drain", "messages": s.noop, "concurrency": CONCURRENCY,
               "msg_per_s": spread_json(rates), "first_ack_ms": spread_json(cold),
               "peak_rss_bytes": spread_json(rss)}),
        format!(
            "no-op drain of {} at concurrency {CONCURRENCY}: {m:.0} msg/s, first ack {c:.1} ms after start, peak RSS {:.1} MiB",
            s.noop,
            mib(r as u64)
        ),
    );
}

/// Plans and publishes a run of every table with the default options.
async fn publish_run(
    run_id: &str,
    warehouse: &std::sync::Arc<dyn bqdrain::ports::warehouse::Warehouse>,
    topic: &dyn bqdrain::ports::queue::Topic,
    store: &dyn bqdrain::ports::store::ObjectStore,
) -> ProduceReport {
    let plan = RunPlan::every_table(RunId::Given {
        id: run_id.to_string(),
        resume: false,
    });
    produce(&plan, std::slice::from_ref(warehouse), topic, store)
        .await
        .unwrap()
}

async fn worker(sb: &GcpSandbox, s: &Sizes) {
    let tables = sb.make_tables(s.tables, 1000).await;
    let warehouse = bqdrain::adapters::backends::open_warehouse(&sb.source(), "bench")
        .await
        .unwrap();
    let store = bqdrain::adapters::backends::open_store(&sb.destination("bench"), "bench")
        .await
        .unwrap();
    let (mut seconds, mut cold, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..s.reps {
        sb.resubscribe(&format!("worker{rep}")).await;
        let topic = bqdrain::adapters::backends::open_topic(&sb.topic(), "bench")
            .await
            .unwrap();
        let run_id = format!("bench{rep}");
        let report = publish_run(&run_id, &warehouse, topic.as_ref(), store.as_ref()).await;
        assert_eq!(report.published, tables.len());
        let destination = sb.destination("bench");
        let concurrency = CONCURRENCY.to_string();
        let child = sb.spawn_worker(
            &[
                "--run-id",
                &run_id,
                "--destination",
                &destination,
                "--concurrency",
                &concurrency,
            ],
            None,
        );
        let (status, outcome) = common::finish(child, Duration::from_secs(300));
        assert!(
            status.success() && outcome["acked"] == tables.len() as u64,
            "{outcome}\n{}",
            sb.logs()
        );
        seconds.push(outcome["seconds"].as_f64().unwrap());
        cold.push(outcome["first_ack_after_start_s"].as_f64().unwrap() * 1000.0);
        rss.push(outcome["peak_rss_bytes"].as_u64().unwrap_or(0) as f64);
    }
    let (m, c, r) = (
        median(seconds.clone()),
        median(cold.clone()),
        median(rss.clone()),
    );
    let storage_calls_per_unit = worker_storage_calls(sb, &warehouse, &store).await;
    emit(
        json!({"bench": "worker", "tables": s.tables, "rows_per_table": 1000,
               "seconds": spread_json(seconds), "first_ack_ms": spread_json(cold),
               "peak_rss_bytes": spread_json(rss),
               "storage_calls_per_unit": storage_calls_per_unit}),
        format!(
            "one worker, {} tables x 1,000 rows: {m:.2} s, first ack {c:.0} ms after start, peak RSS {:.1} MiB, {storage_calls_per_unit:.1} storage calls per unit",
            s.tables,
            mib(r as u64)
        ),
    );
}

/// Runs the whole run once more with the worker's Cloud Storage behind a
/// counting proxy (the emulator's own uploads of extract shards do not
/// pass through it), and returns its calls per unit.
async fn worker_storage_calls(
    sb: &GcpSandbox,
    warehouse: &std::sync::Arc<dyn bqdrain::ports::warehouse::Warehouse>,
    store: &std::sync::Arc<dyn bqdrain::ports::store::ObjectStore>,
) -> f64 {
    sb.resubscribe("worker_counted").await;
    let topic = bqdrain::adapters::backends::open_topic(&sb.topic(), "bench")
        .await
        .unwrap();
    let run_id = "bench_counted";
    let report = publish_run(run_id, warehouse, topic.as_ref(), store.as_ref()).await;
    let proxy = FaultProxy::counting(&sb.emulators.storage);
    let mut env = sb.env(None);
    env.retain(|(name, _)| *name != "STORAGE_EMULATOR_HOST");
    env.push(("STORAGE_EMULATOR_HOST", proxy.addr.clone()));
    let destination = sb.destination("bench");
    let child = sb.spawn_worker_with(&["--run-id", run_id, "--destination", &destination], env);
    let (status, outcome) = common::finish(child, Duration::from_secs(300));
    assert!(
        status.success() && outcome["acked"] == report.published as u64,
        "{outcome}\n{}",
        sb.logs()
    );
    proxy.requests("") as f64 / report.published as f64
}

/// Plans and publishes a dataset of `dataset_tables` empty tables in
/// process, BigQuery behind a counting proxy.
async fn producer(s: &Sizes) {
    let sb: &'static GcpSandbox = Box::leak(Box::new(GcpSandbox::new("scale", 5).await));
    let started = Instant::now();
    let mut creating = tokio::task::JoinSet::new();
    // The emulator serves one request at a time; a few in flight hide the
    // round trips.
    for worker in 0..8 {
        let count = s.dataset_tables;
        creating.spawn(async move {
            for i in (worker..count).step_by(8) {
                sb.create_table(&format!("t_{i:05}"), 0).await;
            }
        });
    }
    while let Some(done) = creating.join_next().await {
        done.unwrap();
    }
    let create_seconds = started.elapsed().as_secs_f64();

    let proxy = FaultProxy::counting(&sb.emulators.bigquery);
    let started = Instant::now();
    let (warehouse, topic, store) = producer_backends(sb, &proxy.addr, "scale").await;
    let report = publish_run("scale", &warehouse, topic.as_ref(), store.as_ref()).await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        report.published, s.dataset_tables,
        "the emulator holds every table"
    );
    let calls = proxy.requests("");
    emit(
        json!({"bench": "producer", "tables": s.dataset_tables, "seconds": seconds,
               "bigquery_calls": calls, "create_tables_seconds": create_seconds}),
        format!(
            "producer, {} tables: planned and published in {seconds:.2} s with {calls} BigQuery calls (creating them in the emulator took {create_seconds:.0} s)",
            s.dataset_tables
        ),
    );

    let table = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(PERMISSION_TABLE);
    plan_under_grants(sb, s, "producer_grants", &table).await;
    let without_queries = tempfile::NamedTempFile::new().unwrap();
    let mut entries: Vec<Value> = serde_json::from_slice(&std::fs::read(&table).unwrap()).unwrap();
    entries.retain(|e| !e["call"].as_str().unwrap().contains("/queries"));
    std::fs::write(
        without_queries.path(),
        serde_json::to_vec(&entries).unwrap(),
    )
    .unwrap();
    plan_under_grants(sb, s, "producer_fallback", without_queries.path()).await;
}

/// What the producer opens: the dataset, its BigQuery client talking to
/// `bigquery` (read when the client is built, so this warehouse alone goes
/// there), the work topic and the store of `folder`.
async fn producer_backends(
    sb: &GcpSandbox,
    bigquery: &str,
    folder: &str,
) -> (Arc<dyn Warehouse>, Arc<dyn Topic>, Arc<dyn ObjectStore>) {
    std::env::set_var("BIGQUERY_EMULATOR_HOST", bigquery);
    let warehouse = bqdrain::adapters::backends::open_warehouse(&sb.source(), "bench")
        .await
        .unwrap();
    std::env::set_var("BIGQUERY_EMULATOR_HOST", &sb.emulators.bigquery);
    let topic = bqdrain::adapters::backends::open_topic(&sb.topic(), "bench")
        .await
        .unwrap();
    let store = bqdrain::adapters::backends::open_store(&sb.destination(folder), "bench")
        .await
        .unwrap();
    (warehouse, topic, store)
}

const PERMISSION_TABLE: &str = "src/adapters/gcp/permissions.json";

/// Plans and publishes the dataset of `producer` in process (`--format
/// json`), BigQuery behind
/// `discovery_proxy.py` refusing what `table` does not grant the producer
/// under the module's default settings (`when` "always"); prints its calls.
async fn plan_under_grants(sb: &GcpSandbox, s: &Sizes, name: &str, table: &std::path::Path) {
    let table = table.to_str().unwrap();
    let who = ["--permissions", table, "--who", "producer", "--when", ""];
    let proxy = DiscoveryProxy::start("bigquery.v2", &sb.emulators.bigquery, &who);
    let started = Instant::now();
    let (warehouse, topic, store) = producer_backends(sb, &proxy.addr, name).await;
    // JSON, whose columns need no check: with CSV the producer also reads
    // INFORMATION_SCHEMA.COLUMNS, a query the fallback's grants refuse.
    let mut plan = RunPlan::every_table(RunId::Given {
        id: name.to_string(),
        resume: false,
    });
    plan.options.format = Format::Json;
    let report = produce(
        &plan,
        std::slice::from_ref(&warehouse),
        topic.as_ref(),
        store.as_ref(),
    )
    .await
    .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(report.published, s.dataset_tables, "every table planned");
    let calls = proxy.calls();
    let total: u64 = calls.values().map(|n| n.as_u64().unwrap()).sum();
    let refused: Vec<String> = proxy
        .records()
        .iter()
        .map(|r| r["method"].to_string())
        .collect();
    let by_method = calls
        .iter()
        .map(|(method, n)| format!("{n} {}", method.trim_start_matches("bigquery.")))
        .collect::<Vec<_>>()
        .join(", ");
    emit(
        json!({"bench": name, "tables": s.dataset_tables, "seconds": seconds,
               "bigquery_calls": total, "by_method": calls, "refused": refused.len()}),
        format!(
            "{name}, {} tables under the module's grants: planned and published in {seconds:.2} s \
             with {total} BigQuery calls ({by_method}), {} refused",
            s.dataset_tables,
            refused.len()
        ),
    );
}

/// `bqdrain status` of a run of `status_units` exported units: the run
/// manifest and one completion record per unit are written to Cloud Storage
/// first, then the release binary reads them all.
async fn status(sb: &GcpSandbox, s: &Sizes) {
    let destination = sb.destination("status");
    let store = bqdrain::adapters::backends::open_store(&destination, "bench")
        .await
        .unwrap();
    let run_id = "status";
    let source = |i: usize| SourceTable {
        dataset_uri: sb.source(),
        project: common::gcp::PROJECT.into(),
        dataset: sb.dataset.clone(),
        table: format!("t_{i:05}"),
        partition: None,
        view: false,
    };
    let manifest = RunManifest {
        v: 1,
        run_id: run_id.into(),
        created_at: chrono::Utc::now(),
        source: sb.source(),
        sources: vec![],
        destination: destination.clone(),
        options: Default::default(),
        units: (0..s.status_units)
            .map(|i| PlannedUnit {
                unit: source(i).unit(),
                source: source(i),
                rows: Some(1000),
                bytes: Some(20_000),
                change: None,
                restore: None,
            })
            .collect(),
        skipped: vec![],
        unchanged: vec![],
        gone: vec![],
        partly_covered: vec![],
        retired: vec![],
    };
    let seeding = Instant::now();
    store
        .write(
            &layout::run_manifest(run_id),
            &serde_json::to_vec(&manifest).unwrap(),
            None,
        )
        .await
        .unwrap();
    let records = futures::stream::iter(&manifest.units).map(|u| {
        let store = &store;
        async move {
            let record = TableManifest {
                v: 1,
                run_id: run_id.into(),
                unit: u.unit.clone(),
                files: vec![],
                bytes: 20_000,
                rows: Some(1000),
                finished_at: chrono::Utc::now(),
                delivery_attempt: 1,
                task: "bench".into(),
                task_index: Some(0),
                started_at: Some(manifest.created_at),
                run_started_at: Some(manifest.created_at),
                change: None,
                as_of: None,
                options: None,
            };
            let body = RecordBody::of(&record);
            store
                .write(
                    &layout::done_record(run_id, &u.unit),
                    &body.pretty,
                    Some(&body.summary),
                )
                .await
                .unwrap();
        }
    });
    records.buffer_unordered(32).collect::<Vec<()>>().await;
    let seed_seconds = seeding.elapsed().as_secs_f64();

    let mut seconds = Vec::new();
    for _ in 0..s.reps {
        let started = Instant::now();
        let report = sb.status("status", run_id, &[]);
        seconds.push(started.elapsed().as_secs_f64());
        assert_eq!(report["totals"]["exported"], s.status_units);
    }
    let m = median(seconds.clone());
    emit(
        json!({"bench": "status", "units": s.status_units, "seconds": spread_json(seconds),
               "seed_seconds": seed_seconds}),
        format!(
            "status of a run of {} exported units: {m:.2} s (writing its records took {seed_seconds:.0} s)",
            s.status_units
        ),
    );
}

/// `bqdrain verify` of a destination of `verify_units` committed exports:
/// each unit's shard (ten CSV rows) is written to Cloud Storage, listed for
/// its size and CRC32C as a worker does, and its `_MANIFEST.json` written
/// with its summary; then the release binary checks them all. Run records
/// are left out: `verify` lists each dataset's folder, not `_bqdrain/`.
/// fake-gcs-server answers a listing in one page however long; Cloud
/// Storage pages at 1,000 objects, so there the 20,000 objects of 10,000
/// units take 20 requests after the folders' one.
async fn verify(sb: &GcpSandbox, s: &Sizes) {
    let folder = "verify";
    let destination = sb.destination(folder);
    let store = bqdrain::adapters::backends::open_store(&destination, "bench")
        .await
        .unwrap();
    let run_id = "verify";
    let started_at = chrono::Utc::now();
    let source = |i: usize| SourceTable {
        dataset_uri: sb.source(),
        project: common::gcp::PROJECT.into(),
        dataset: sb.dataset.clone(),
        table: format!("t_{i:05}"),
        partition: None,
        view: false,
    };
    let shard: Vec<u8> = std::iter::once("id,name,age\n".to_string())
        .chain((1..=10).map(|i| format!("{i},name_{i},{}\n", i % 90)))
        .collect::<String>()
        .into_bytes();
    let seeding = Instant::now();
    futures::stream::iter(0..s.verify_units)
        .map(|i| {
            let (store, shard) = (&store, &shard);
            let key = format!(
                "{}t_{i:05}_000000000000.csv",
                layout::export_folder(&source(i), run_id)
            );
            async move { store.write(&key, shard, None).await.unwrap() }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let listed: std::collections::HashMap<String, bqdrain::ports::store::ObjectInfo> = store
        .list(&format!("{}/", sb.dataset))
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    futures::stream::iter(0..s.verify_units)
        .map(|i| {
            let (store, listed) = (&store, &listed);
            async move {
                let unit = source(i);
                let key = format!(
                    "{}t_{i:05}_000000000000.csv",
                    layout::export_folder(&unit, run_id)
                );
                let object = &listed[&key];
                let record = TableManifest {
                    v: 1,
                    run_id: run_id.into(),
                    unit: unit.unit(),
                    files: vec![layout::ExportedFile {
                        key,
                        bytes: object.size,
                        checksum: object.checksum.clone(),
                    }],
                    bytes: object.size,
                    rows: Some(10),
                    finished_at: chrono::Utc::now(),
                    delivery_attempt: 1,
                    task: "bench".into(),
                    task_index: Some(0),
                    started_at: Some(started_at),
                    run_started_at: Some(started_at),
                    change: None,
                    as_of: None,
                    options: Some(Default::default()),
                };
                let definition =
                    json!({"v": 1, "table": unit.table, "table_type": "TABLE", "columns": []});
                store
                    .write(
                        &layout::export_definition(&unit, run_id),
                        definition.to_string().as_bytes(),
                        None,
                    )
                    .await
                    .unwrap();
                let body = RecordBody::of(&record);
                store
                    .write(
                        &layout::export_manifest(&unit, run_id),
                        &body.pretty,
                        Some(&body.summary),
                    )
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let seed_seconds = seeding.elapsed().as_secs_f64();

    let run_verify = |env: Vec<(&'static str, String)>| {
        let out = Command::new(common::BIN)
            .args(["verify", "--destination", &destination, "--json"])
            .envs(sb.env(None))
            .envs(env)
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert!(
            out.status.success() && report["units"] == s.verify_units,
            "{report}"
        );
        report
    };
    let mut seconds = Vec::new();
    let mut listing_calls = 0;
    for _ in 0..s.reps {
        let started = Instant::now();
        let report = run_verify(Vec::new());
        seconds.push(started.elapsed().as_secs_f64());
        listing_calls = report["calls"]["listing_calls"].as_u64().unwrap();
    }
    let proxy = FaultProxy::counting(&sb.emulators.storage);
    run_verify(vec![("STORAGE_EMULATOR_HOST", proxy.addr.clone())]);
    let requests = proxy.requests("");
    let units = s.verify_units as f64;
    let m = median(seconds.clone());
    emit(
        json!({"bench": "verify", "units": s.verify_units, "seconds": spread_json(seconds),
               "listing_calls": listing_calls, "listing_calls_per_unit": listing_calls as f64 / units,
               "storage_requests": requests, "storage_requests_per_unit": requests as f64 / units,
               "seed_seconds": seed_seconds}),
        format!(
            "verify of {} committed exports: {m:.2} s, {listing_calls} listing calls ({:.4} per unit), \
             {requests} Cloud Storage requests ({:.4} per unit); writing them took {seed_seconds:.0} s",
            s.verify_units,
            listing_calls as f64 / units,
            requests as f64 / units
        ),
    );
}

/// Produces a run of `plan` in process, from a fresh subscription (the
/// emulator keeps offering messages to the streams of exited workers), and
/// drains it with `tasks` worker processes of concurrency 1; returns the
/// producer's report and the wall time of both. The emulator may hand the
/// whole backlog to the first stream that opens, whatever its flow control,
/// so the workers wait for their run however long they receive nothing.
async fn produce_and_drain(
    sb: &GcpSandbox,
    plan: &RunPlan,
    tasks: usize,
    folder: &str,
) -> (ProduceReport, f64) {
    let run_id = match &plan.run {
        RunId::Given { id, .. } => id.clone(),
        _ => unreachable!("benchmark runs are named"),
    };
    sb.resubscribe(&format!("work_{run_id}")).await;
    let started = Instant::now();
    let (warehouse, topic, store) = producer_backends(sb, &sb.emulators.bigquery, folder).await;
    let destination = sb.destination(folder);
    let report = produce(plan, &[warehouse], topic.as_ref(), store.as_ref())
        .await
        .unwrap();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            sb.spawn_worker(
                &[
                    "--run-id",
                    &run_id,
                    "--destination",
                    &destination,
                    "--concurrency",
                    "1",
                    "--idle-timeout",
                    "1800",
                ],
                None,
            )
        })
        .collect();
    for worker in workers {
        let (status, outcome) = common::finish(worker, Duration::from_secs(1800));
        assert!(status.success(), "{outcome}\n{}", sb.logs());
    }
    (report, started.elapsed().as_secs_f64())
}

/// The completion records of a run; every unit it published has one.
async fn run_records(sb: &GcpSandbox, folder: &str, report: &ProduceReport) -> Vec<TableManifest> {
    let prefix = format!("{folder}/{}", layout::done_prefix(&report.run_id));
    let mut records = Vec::new();
    for (key, _) in sb.objects(&prefix).await {
        let bytes = sb.download(&key).await.expect("a record");
        records.push(serde_json::from_slice::<TableManifest>(&bytes).expect("a record"));
    }
    assert_eq!(records.len(), report.published, "every unit was exported");
    records
}

fn named(run_id: &str, plan: RunPlan) -> RunPlan {
    RunPlan {
        run: RunId::Given {
            id: run_id.to_string(),
            resume: false,
        },
        ..plan
    }
}

async fn incremental(s: &Sizes) {
    const TASKS: usize = 8;
    let sb = GcpSandbox::new("incremental", 5).await;
    let started = Instant::now();
    let names = create_tables_in_parallel(&sb, s.incremental_tables, 1000).await;
    let create_seconds = started.elapsed().as_secs_f64();
    let plan = RunPlan {
        only_changed: true,
        ..RunPlan::every_table(RunId::New)
    };
    let (full, full_s) = produce_and_drain(&sb, &named("full", plan.clone()), TASKS, "inc").await;
    assert_eq!(full.published, s.incremental_tables);
    let (full_unit, full_span) = unit_times(&run_records(&sb, "inc", &full).await);
    let step = s.incremental_tables / s.incremental_changed;
    for table in names.iter().step_by(step).take(s.incremental_changed) {
        sb.dml(table, "UPDATE {table} SET age = age + 1 WHERE id = 1")
            .await;
    }
    let (second, second_s) = produce_and_drain(&sb, &named("second", plan), TASKS, "inc").await;
    assert_eq!(
        (second.published, second.unchanged),
        (
            s.incremental_changed,
            s.incremental_tables - s.incremental_changed
        )
    );
    let (second_unit, second_span) = unit_times(&run_records(&sb, "inc", &second).await);
    Incremental {
        tables: s.incremental_tables,
        changed: s.incremental_changed,
        tasks: TASKS,
        full: (full_s, full.seconds),
        only_changed: (second_s, second.seconds),
        unit_seconds: (full_unit, second_unit),
        span_seconds: (full_span, second_span),
    }
    .emit(json!({"create_tables_seconds": create_seconds}));
}

/// Creates `count` tables of `rows` rows, a few requests in flight.
async fn create_tables_in_parallel(sb: &GcpSandbox, count: usize, rows: u64) -> Vec<String> {
    let names: Vec<String> = (1..=count).map(|i| format!("t_{i:04}")).collect();
    futures::stream::iter(names.iter())
        .for_each_concurrent(8, |name| sb.create_table(name, rows))
        .await;
    names
}

async fn skew(s: &Sizes) {
    const TASKS: usize = 8;
    const DAYS: i64 = 60;
    let sb = GcpSandbox::new("skew", 5).await;
    create_tables_in_parallel(&sb, 99, s.skew_small_rows).await;
    let per_day = 99 * s.skew_small_rows / DAYS as u64;
    let first_day = chrono::NaiveDate::from_ymd_opt(2026, 10, 3).expect("a date");
    let days: Vec<String> = (0..DAYS)
        .map(|d| (first_day + chrono::Days::new(d as u64)).to_string())
        .collect();
    let days: Vec<&str> = days.iter().map(String::as_str).collect();
    sb.create_daily_table("events", &days, per_day).await;
    for split in [false, true] {
        let plan = RunPlan {
            partitions: bqdrain::engine::selection::PartitionPlan {
                split,
                ..Default::default()
            },
            ..RunPlan::every_table(RunId::New)
        };
        let run_id = if split { "partitions" } else { "tables" };
        let (report, _) = produce_and_drain(&sb, &named(run_id, plan), TASKS, "skew").await;
        let schedule = Schedule::of(&run_records(&sb, "skew", &report).await, TASKS);
        emit(
            json!({
                "bench": "skew",
                "units": run_id,
                "unit_count": report.published,
                "tasks": TASKS,
                "makespan_seconds": schedule.makespan,
                "largest_unit_seconds": schedule.largest_unit,
                "total_work_seconds": schedule.total_work,
                "lower_bound_seconds": schedule.lower_bound,
                "ratio": schedule.ratio(),
            }),
            format!(
                "skew, 99 tables x {} rows + events ({} rows over {DAYS} days), {TASKS} tasks, {} ({}): \
                 makespan {:.2} s, lower bound {:.2} s (largest unit {:.2} s, total work {:.2} s), ratio {:.2}",
                s.skew_small_rows,
                per_day * DAYS as u64,
                if split { "partition units" } else { "whole tables" },
                report.published,
                schedule.makespan,
                schedule.lower_bound,
                schedule.largest_unit,
                schedule.total_work,
                schedule.ratio()
            ),
        );
    }
}

/// `bqdrain-producer --check` of a dataset of `preflight_tables` tables, as
/// the release binary runs it: planning, permissions, the topic's
/// subscriptions, the bucket.
async fn preflight(s: &Sizes) {
    let sb = GcpSandbox::new("preflight", 5).await;
    create_tables_in_parallel(&sb, s.preflight_tables, 10).await;
    let storage = IamProxy::start(&sb.emulators.storage, &[]);
    let pubsub = IamProxy::start(&sb.emulators.pubsub, &[]);
    let mut times = Vec::new();
    for _ in 0..s.reps {
        let started = Instant::now();
        let out = sb.produce_to(
            &sb.topic(),
            "preflight",
            &["--check"],
            vec![
                ("STORAGE_EMULATOR_HOST", storage.addr.clone()),
                ("PUBSUB_EMULATOR_HOST", pubsub.addr.clone()),
            ],
        );
        times.push(started.elapsed().as_secs_f64());
        let report: Value = serde_json::from_slice(&out.stdout).expect("--check --json");
        assert_eq!(out.status.code(), Some(0), "{report:#}");
        assert_eq!(report["plan"]["units"], s.preflight_tables, "{report:#}");
    }
    let seconds = median(times.clone());
    emit(
        json!({"bench": "preflight", "tables": s.preflight_tables, "seconds": seconds,
               "spread": spread_json(times)}),
        format!(
            "preflight, {} tables: bqdrain-producer --check in {seconds:.2} s",
            s.preflight_tables
        ),
    );
}

/// Restores at once, like the export's tasks.
const RESTORE_CONCURRENCY: usize = 4;

async fn round_trip(s: &Sizes) {
    let sb = GcpSandbox::new("round_trip", 5).await;
    create_tables_in_parallel(&sb, s.round_trip_tables, 1000).await;
    let (mut export_seconds, mut restore_seconds) = (Vec::new(), Vec::new());
    for rep in 0..s.reps {
        let run_id = format!("trip{rep}");
        let mut plan = RunPlan::every_table(RunId::Given {
            id: run_id.clone(),
            resume: false,
        });
        plan.options.format = Format::Avro;
        let (report, exported) = produce_and_drain(&sb, &plan, RESTORE_CONCURRENCY, "trip").await;
        export_seconds.push(exported);

        let restored = format!("{}_{run_id}", sb.dataset);
        sb.create_dataset(&restored).await;
        let exported_rows: u64 = run_records(&sb, "trip", &report)
            .await
            .iter()
            .map(|record| record.rows.unwrap())
            .sum();
        let restore_id = format!("back{rep}");
        sb.resubscribe(&format!("work_{restore_id}")).await;
        let destination = sb.destination("trip");
        let target = format!("bigquery://{}/{restored}", common::gcp::PROJECT);
        let started = Instant::now();
        let out = sb.bqdrain(&[
            "restore",
            "--from",
            &destination,
            "--to",
            &target,
            "--topic",
            &sb.topic(),
            "--run-id",
            &restore_id,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let workers: Vec<_> = (0..RESTORE_CONCURRENCY)
            .map(|_| {
                let args = ["--run-id", &restore_id, "--destination", &destination];
                sb.spawn_worker(&[&args[..], &["--concurrency", "1"]].concat(), None)
            })
            .collect();
        for worker in workers {
            let (status, outcome) = common::finish(worker, Duration::from_secs(1800));
            assert!(status.success(), "{outcome}\n{}", sb.logs());
        }
        restore_seconds.push(started.elapsed().as_secs_f64());
        let status = sb.status("trip", &restore_id, &[]);
        assert_eq!(
            status["totals"]["exported"], s.round_trip_tables,
            "every table restored: {status}"
        );
        assert_eq!(status["rows"], exported_rows, "rows loaded, rows exported");
    }
    let (export, restore) = (
        median(export_seconds.clone()),
        median(restore_seconds.clone()),
    );
    emit(
        json!({"bench": "round_trip", "tables": s.round_trip_tables, "rows_per_table": 1000,
               "format": "avro", "tasks": RESTORE_CONCURRENCY,
               "export_seconds": spread_json(export_seconds),
               "restore_seconds": spread_json(restore_seconds),
               "restore_through": "bqdrain restore, then bqdrain work processes"}),
        format!(
            "round trip of {} tables x 1,000 rows (Avro): export {export:.2} s (producer + {RESTORE_CONCURRENCY} worker processes), \
             restore {restore:.2} s (bqdrain restore, then {RESTORE_CONCURRENCY} worker processes)",
            s.round_trip_tables
        ),
    );
}
