//! Figures against the emulators: `cargo bench --bench gcp`.
//!
//! Starts the emulator stack the tests use (`scripts/emulators/`), then
//! measures, as medians of 5 with the spread:
//! - `publish`: 10,000 messages to a Pub/Sub topic, confirmed;
//! - `noop_drain`: 2,000 messages received and acked by one process at
//!   concurrency 10 with no export, and its start-to-first-ack time;
//! - `worker`: one `bqdrain work` process at concurrency 10 draining a run
//!   of 30 tables of 1,000 rows (BigQuery extract jobs, files in Cloud
//!   Storage), its start-to-first-ack time and peak RSS.
//!
//! It checks the work was done (every message acked, every table exported)
//! and asserts nothing about speed. `BQDRAIN_BENCH_QUICK=1` runs each once
//! with smaller sizes.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use bqdrain::message::Envelope;
use bqdrain::producer::{produce, RunId, RunPlan};
use common::gcp::{emulators, GcpSandbox};
use support::{emit, median, mib, spread_json};

const NOOP_CHILD: &str = "--noop-child";
const CONCURRENCY: usize = 10;

struct Sizes {
    quick: bool,
    reps: usize,
    publish: usize,
    noop: usize,
    tables: usize,
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
        }
    } else {
        Sizes {
            quick,
            reps: 5,
            publish: 10_000,
            noop: 2_000,
            tables: 30,
        }
    };
    // BigQuery's own shard size (1 GB), not the tests' small one.
    std::env::set_var(common::gcp::SHARD_THRESHOLD_VARIABLE, "1000000000");
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
    let topic = bqdrain::backends::open_topic(&sb.dead_letter_topic(), "bench")
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
        .block_on(bqdrain::noop::drain_noop(
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
        let topic = bqdrain::backends::open_topic(&sb.topic(), "bench")
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

async fn worker(sb: &GcpSandbox, s: &Sizes) {
    let tables = sb.make_tables(s.tables, 1000).await;
    let warehouse = bqdrain::backends::open_warehouse(&sb.source(), "bench")
        .await
        .unwrap();
    let store = bqdrain::backends::open_store(&sb.destination("bench"), "bench")
        .await
        .unwrap();
    let (mut seconds, mut cold, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..s.reps {
        sb.resubscribe(&format!("worker{rep}")).await;
        let topic = bqdrain::backends::open_topic(&sb.topic(), "bench")
            .await
            .unwrap();
        let run_id = format!("bench{rep}");
        let plan = RunPlan {
            run: RunId::Given {
                id: run_id.clone(),
                resume: false,
            },
            include: vec![],
            exclude: vec![],
            options: Default::default(),
        };
        let report = produce(&plan, warehouse.as_ref(), topic.as_ref(), store.as_ref())
            .await
            .unwrap();
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
    emit(
        json!({"bench": "worker", "tables": s.tables, "rows_per_table": 1000,
               "seconds": spread_json(seconds), "first_ack_ms": spread_json(cold),
               "peak_rss_bytes": spread_json(rss)}),
        format!(
            "one worker, {} tables x 1,000 rows: {m:.2} s, first ack {c:.0} ms after start, peak RSS {:.1} MiB",
            s.tables,
            mib(r as u64)
        ),
    );
}
