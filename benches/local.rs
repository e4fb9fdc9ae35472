//! Figures for the embedded backends: `cargo bench --bench local`.
//!
//! Prints one JSON line per measurement, each followed by a human line, and
//! asserts nothing about speed: machines differ too much for a threshold to
//! mean anything, so the figures are for people and for comparing commits.
//! It does check that each measurement did its work (every message acked,
//! every table exported), since a fast run that dropped work proves nothing.
//!
//! - `queue_noop`: publish small messages to a fresh SQLite queue, then drain
//!   them in-process with a handler that acks at once (queue + loop cost).
//! - `export`: one big table exported to CSV and to gzip CSV.
//! - `demo`: `bqdrain demo` end to end with worker processes.
//! - `table_count`: `bqdrain demo` of 10-row tables at two table counts, ten
//!   times apart: the median unit time (from the completion records) should
//!   not grow with the count, only the wall time with the work.
//! - `worker_rss`: peak RSS of one `bqdrain work` process exporting a run.
//! - `incremental`: a full run of a dataset, then 5 % of its tables changed
//!   and a `--only-changed` run: producer + drain wall time of each.
//! - `skew`: one table partitioned by day holding half of all rows, and 99
//!   small tables, drained by 8 tasks as whole tables and as partition
//!   units: makespan against its lower bound, max(largest unit, total work
//!   / slots), from the units' start and finish times in their records.
//!
//! - `restore`: tables of 1,000 rows exported by 8 local worker tasks
//!   (producer and drain, as `bqdrain demo` runs them), then restored into
//!   a fresh SQLite file by `bqdrain restore --workers 8`: both wall times
//!   and the restore's ratio to the export (aim: at most 1.5).
//!
//! `BQDRAIN_BENCH_QUICK=1` shrinks every size and runs each once, to check
//! the bench itself quickly.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;

use bqdrain::adapters::local::dataset::{self, create_dummy_tables};
use bqdrain::adapters::local::partitions;
use bqdrain::adapters::local::queue::LocalTopic;
use bqdrain::adapters::local::warehouse::LocalWarehouse;
use bqdrain::adapters::noop::AckEverything;
use bqdrain::commands::local_workers::LocalWorkers;
use bqdrain::contract::message::{Envelope, SourceTable};
use bqdrain::contract::options::{Compression, ExportOptions, Format};
use bqdrain::engine::drain::{drain, DrainConfig};
use bqdrain::engine::layout::{self, TableManifest};
use bqdrain::engine::producer::{produce, ProduceReport, RunId, RunPlan};
use bqdrain::engine::selection::PartitionPlan;
use bqdrain::ports::queue::Topic;
use bqdrain::ports::warehouse::{Cancel, ExportRequest, Partitioning, Warehouse};
use support::{emit, median, mib, spread, spread_json, unit_times, Incremental, Schedule};

const BIN: &str = env!("CARGO_BIN_EXE_bqdrain");
const BODY_BYTES: usize = 200;
const PUBLISH_BATCH: usize = 1000;

struct Sizes {
    quick: bool,
    messages: usize,
    queue_reps: usize,
    export_rows: u64,
    export_reps: usize,
    demo_tables: usize,
    demo_reps: usize,
    /// The two table counts of `table_count`.
    table_counts: [usize; 2],
    rss_tables: usize,
    incremental_tables: usize,
    incremental_changed: usize,
    skew_small_rows: u64,
    restore_tables: usize,
}

impl Sizes {
    fn from_env() -> Sizes {
        let quick = std::env::var("BQDRAIN_BENCH_QUICK").is_ok_and(|v| v == "1");
        if quick {
            Sizes {
                quick,
                messages: 2_000,
                queue_reps: 1,
                export_rows: 100_000,
                export_reps: 1,
                demo_tables: 100,
                demo_reps: 1,
                table_counts: [100, 1000],
                rss_tables: 50,
                incremental_tables: 100,
                incremental_changed: 5,
                skew_small_rows: 200,
                restore_tables: 100,
            }
        } else {
            Sizes {
                quick,
                messages: 20_000,
                queue_reps: 5,
                export_rows: 1_000_000,
                export_reps: 3,
                demo_tables: 1000,
                demo_reps: 3,
                table_counts: [1000, 10_000],
                rss_tables: 200,
                incremental_tables: 1000,
                incremental_changed: 50,
                skew_small_rows: 20_000,
                restore_tables: 1000,
            }
        }
    }
}

/// One fresh queue: publish `n` messages, drain them. Returns publish and
/// drain seconds.
async fn noop_once(db: &Path, n: usize, concurrency: usize) -> (f64, f64) {
    let uri = format!("queue://{}#work", db.display());
    let topic = LocalTopic::open(&uri, "bench").expect("open topic");
    let started = Instant::now();
    let mut left = n;
    while left > 0 {
        let batch = left.min(PUBLISH_BATCH);
        let messages = (0..batch)
            .map(|_| Envelope {
                data: vec![b'x'; BODY_BYTES],
                attributes: BTreeMap::new(),
            })
            .collect();
        topic.publish(messages).await.expect("publish");
        left -= batch;
    }
    let publish_s = started.elapsed().as_secs_f64();

    let subscription = bqdrain::adapters::backends::open_subscription(
        &uri,
        "bench",
        &bqdrain::ports::queue::ReceiveSettings::new(concurrency),
    )
    .await
    .expect("open sub");
    let handler = Arc::new(AckEverything::new(Some(n as u64)));
    let config = DrainConfig {
        concurrency,
        idle_timeout: Duration::from_secs(10),
        started: Instant::now(),
    };
    let (_trigger, shutdown) = bqdrain::engine::shutdown::channel();
    let report = drain(subscription, None, handler, config, shutdown).await;
    assert_eq!(report.acked, n as u64, "not every message was acked");
    (publish_s, report.seconds)
}

fn queue_noop(rt: &tokio::runtime::Runtime, s: &Sizes) {
    let dir = tempfile::tempdir().expect("tempdir");
    for concurrency in [1, 16] {
        let mut drain_rates = Vec::new();
        let mut publish_rates = Vec::new();
        for rep in 0..s.queue_reps {
            let db = dir.path().join(format!("queue-c{concurrency}-{rep}.db"));
            let (publish_s, drain_s) = rt.block_on(noop_once(&db, s.messages, concurrency));
            publish_rates.push(s.messages as f64 / publish_s);
            drain_rates.push(s.messages as f64 / drain_s);
        }
        let (med, min, max) = spread(drain_rates.clone());
        emit(
            json!({
                "bench": "queue_noop",
                "concurrency": concurrency,
                "messages": s.messages,
                "body_bytes": BODY_BYTES,
                "reps": s.queue_reps,
                "msgs_per_s": spread_json(drain_rates),
                "publish_msgs_per_s": spread_json(publish_rates),
            }),
            format!(
                "queue no-op drain, concurrency {concurrency}: {med:.0} msg/s median (min {min:.0}, max {max:.0}) over {} x {} messages",
                s.queue_reps, s.messages
            ),
        );
    }
}

fn export(rt: &tokio::runtime::Runtime, s: &Sizes) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("warehouse.db");
    let started = Instant::now();
    create_dummy_tables(&db, &["big".to_string()], s.export_rows).expect("dummy table");
    let create_s = started.elapsed().as_secs_f64();
    let warehouse =
        LocalWarehouse::open(&format!("sqlite://{}", db.display()), "bench").expect("warehouse");

    // CSV first: its size is the uncompressed size the gzip rate is given in.
    let mut csv_bytes = 0u64;
    for (label, compression) in [("csv", Compression::None), ("csv_gzip", Compression::Gzip)] {
        let mut seconds = Vec::new();
        let mut out_bytes = 0u64;
        for rep in 0..s.export_reps {
            let root = dir.path().join(format!("out-{label}-{rep}"));
            let request = ExportRequest {
                job_key: format!("bench-{label}-{rep}"),
                source: SourceTable {
                    dataset_uri: warehouse.uri().to_string(),
                    project: warehouse.project().to_string(),
                    dataset: warehouse.dataset().to_string(),
                    table: "big".into(),
                    partition: None,
                    view: false,
                },
                destination_root: format!("file://{}", root.display()),
                folder: "big/".into(),
                options: ExportOptions {
                    format: Format::Csv,
                    compression,
                    ..Default::default()
                },
                snapshot_at: None,
            };
            let cancel: Cancel = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            let result = rt
                .block_on(warehouse.export(&request, cancel))
                .expect("export");
            seconds.push(started.elapsed().as_secs_f64());
            assert_eq!(result.rows, Some(s.export_rows), "not every row exported");
            out_bytes = result
                .files
                .iter()
                .map(|key| std::fs::metadata(root.join(key)).expect("shard").len())
                .sum();
            std::fs::remove_dir_all(&root).expect("clean up");
        }
        if compression == Compression::None {
            csv_bytes = out_bytes;
        }
        let secs = median(seconds.clone());
        let mb_s = csv_bytes as f64 / 1e6 / secs;
        let rows_s = s.export_rows as f64 / secs;
        emit(
            json!({
                "bench": "export",
                "format": label,
                "rows": s.export_rows,
                "reps": s.export_reps,
                "seconds": spread_json(seconds),
                "csv_bytes": csv_bytes,
                "output_bytes": out_bytes,
                "uncompressed_mb_per_s": mb_s,
                "rows_per_s": rows_s,
                "table_create_seconds": create_s,
            }),
            format!(
                "export {label}: {} rows in {secs:.2} s median -> {mb_s:.1} MB/s of CSV, {rows_s:.0} rows/s; output {:.1} MiB ({:.1} MiB as CSV)",
                s.export_rows,
                mib(out_bytes),
                mib(csv_bytes)
            ),
        );
    }
}

/// Runs the binary, returning its one JSON line and the wall time; shows
/// its stderr and stops the bench if it failed.
fn run_json(args: &[&str]) -> (Value, f64) {
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(args)
        .args(["--log-format", "json"])
        .output()
        .expect("start bqdrain");
    let wall = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bqdrain {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    let value = serde_json::from_str(line).expect("bqdrain printed JSON");
    (value, wall)
}

fn demo(s: &Sizes) {
    let tables = s.demo_tables.to_string();
    let mut seconds = Vec::new();
    let mut walls = Vec::new();
    for _ in 0..s.demo_reps {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir_arg = dir.path().to_string_lossy().into_owned();
        let (report, wall) = run_json(&[
            "demo", "--tables", &tables, "--tasks", "8", "--json", "--dir", &dir_arg,
        ]);
        assert_eq!(
            report["ok"], true,
            "demo did not export everything: {report}"
        );
        seconds.push(report["seconds"].as_f64().expect("seconds"));
        walls.push(wall);
    }
    let (secs, wall) = (median(seconds.clone()), median(walls.clone()));
    emit(
        json!({
            "bench": "demo",
            "tables": s.demo_tables,
            "tasks": 8,
            "reps": s.demo_reps,
            "seconds": spread_json(seconds),
            "wall_seconds": spread_json(walls),
        }),
        format!(
            "demo, {} tables x 1000 rows, 8 tasks: {secs:.2} s median by its report, {wall:.2} s wall",
            s.demo_tables
        ),
    );
}

fn table_count(s: &Sizes) {
    for tables in s.table_counts {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir_arg = dir.path().to_string_lossy().into_owned();
        let (report, wall) = run_json(&[
            "demo",
            "--tables",
            &tables.to_string(),
            "--rows",
            "10",
            "--tasks",
            "8",
            "--json",
            "--dir",
            &dir_arg,
        ]);
        assert_eq!(
            report["ok"], true,
            "demo did not export everything: {report}"
        );
        let run_id = report["run_id"].as_str().expect("run_id");
        let done = dir.path().join("exports").join(layout::done_prefix(run_id));
        let records: Vec<TableManifest> = std::fs::read_dir(done)
            .expect("completion records")
            .map(|e| {
                serde_json::from_slice(&std::fs::read(e.expect("entry").path()).expect("record"))
                    .expect("a record")
            })
            .collect();
        assert_eq!(records.len(), tables, "every table has its record");
        let (unit, span) = unit_times(&records);
        emit(
            json!({
                "bench": "table_count",
                "tables": tables,
                "rows_per_table": 10,
                "tasks": 8,
                "unit_median_seconds": unit,
                "units_span_seconds": span,
                "wall_seconds": wall,
            }),
            format!(
                "demo, {tables} tables x 10 rows, 8 tasks: median unit {:.1} ms, first unit \
                 start to last commit {span:.2} s, {wall:.2} s wall",
                1000.0 * unit
            ),
        );
    }
}

fn worker_rss(rt: &tokio::runtime::Runtime, s: &Sizes) {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse_db = dir.path().join("warehouse.db");
    let queue = format!("queue://{}", dir.path().join("queue.db").display());
    let names: Vec<String> = (1..=s.rss_tables).map(|i| format!("t_{i:04}")).collect();
    create_dummy_tables(&warehouse_db, &names, 1000).expect("dummy tables");
    rt.block_on(async {
        let warehouse = bqdrain::adapters::backends::open_warehouse(
            &format!("sqlite://{}", warehouse_db.display()),
            "bench",
        )
        .await
        .expect("warehouse");
        let topic = bqdrain::adapters::backends::open_topic(&format!("{queue}#work"), "bench")
            .await
            .expect("topic");
        let store = bqdrain::adapters::backends::open_store(
            &format!("file://{}", dir.path().join("exports").display()),
            "bench",
        )
        .await
        .expect("store");
        let plan = RunPlan::every_table(RunId::New);
        let produced = produce(&plan, &[warehouse], topic.as_ref(), store.as_ref())
            .await
            .expect("produce");
        assert_eq!(produced.published, s.rss_tables);
    });
    let subscription = format!("{queue}?dead_letter=dead#work");
    let (report, wall) = run_json(&[
        "work",
        "--subscription",
        &subscription,
        "--json",
        "--concurrency",
        "16",
    ]);
    assert_eq!(
        report["acked"].as_u64(),
        Some(s.rss_tables as u64),
        "worker did not export every table: {report}"
    );
    let rss = report["peak_rss_bytes"].as_u64().expect("peak_rss_bytes");
    emit(
        json!({
            "bench": "worker_rss",
            "tables": s.rss_tables,
            "rows_per_table": 1000,
            "concurrency": 16,
            "peak_rss_bytes": rss,
            "peak_rss_mib": mib(rss),
            "seconds": report["seconds"],
            "wall_seconds": wall,
            "exit": report["exit"],
        }),
        format!(
            "worker, {} tables x 1000 rows at concurrency 16: peak RSS {:.1} MiB, {:.2} s ({} exit)",
            s.rss_tables,
            mib(rss),
            report["seconds"].as_f64().unwrap_or(f64::NAN),
            report["exit"].as_str().unwrap_or("?")
        ),
    );
}

/// A dataset, queue and export root in a temporary folder, run the way
/// Cloud Run would: the producer, then worker processes that drain the run.
struct LocalRuns {
    dir: tempfile::TempDir,
}

impl LocalRuns {
    fn new() -> LocalRuns {
        LocalRuns {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn warehouse(&self) -> std::path::PathBuf {
        self.dir.path().join("warehouse.db")
    }

    fn queue(&self) -> String {
        format!("queue://{}", self.dir.path().join("queue.db").display())
    }

    fn destination(&self) -> String {
        format!("file://{}", self.dir.path().join("exports").display())
    }

    /// Produces `plan` into the queue, from the warehouse to the exports.
    fn produce(&self, rt: &tokio::runtime::Runtime, plan: &RunPlan) -> ProduceReport {
        rt.block_on(async {
            let source = format!("sqlite://{}", self.warehouse().display());
            let warehouse = bqdrain::adapters::backends::open_warehouse(&source, "bench")
                .await
                .expect("warehouse");
            let topic =
                bqdrain::adapters::backends::open_topic(&format!("{}#work", self.queue()), "bench")
                    .await
                    .expect("topic");
            let store = bqdrain::adapters::backends::open_store(&self.destination(), "bench")
                .await
                .expect("store");
            produce(plan, &[warehouse], topic.as_ref(), store.as_ref())
                .await
                .expect("produce")
        })
    }

    /// Produces `plan` and drains it with `tasks` worker processes of one
    /// export at a time; returns the producer's report and the wall time of
    /// producer and drain together.
    fn run(
        &self,
        rt: &tokio::runtime::Runtime,
        plan: &RunPlan,
        tasks: usize,
    ) -> (ProduceReport, f64) {
        let started = Instant::now();
        let produced = self.produce(rt, plan);
        let subscription = format!("{}?dead_letter=dead#work", self.queue());
        let workers: Vec<_> = (0..tasks)
            .map(|_| {
                Command::new(BIN)
                    .args([
                        "work",
                        "--subscription",
                        &subscription,
                        "--run-id",
                        &produced.run_id,
                    ])
                    .args(["--destination", &self.destination(), "--concurrency", "1"])
                    .args(["--log-format", "json"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("start a worker")
            })
            .collect();
        for mut worker in workers {
            assert!(worker.wait().expect("worker").success(), "a worker failed");
        }
        (produced, started.elapsed().as_secs_f64())
    }

    /// The completion records of a run, every one of its units exported.
    fn records(&self, report: &ProduceReport) -> Vec<TableManifest> {
        let folder = self
            .dir
            .path()
            .join("exports")
            .join(layout::done_prefix(&report.run_id));
        let records: Vec<TableManifest> = std::fs::read_dir(folder)
            .map(|entries| {
                entries
                    .map(|e| {
                        serde_json::from_slice(
                            &std::fs::read(e.expect("entry").path()).expect("record"),
                        )
                        .expect("a record")
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            records.len(),
            report.published,
            "every unit of the run was exported"
        );
        records
    }
}

fn incremental(rt: &tokio::runtime::Runtime, s: &Sizes) {
    let runs = LocalRuns::new();
    let names: Vec<String> = (1..=s.incremental_tables)
        .map(|i| format!("t_{i:04}"))
        .collect();
    create_dummy_tables(&runs.warehouse(), &names, 1000).expect("dummy tables");
    let plan = RunPlan {
        only_changed: true,
        ..RunPlan::every_table(RunId::New)
    };
    let (full, full_s) = runs.run(rt, &plan, 8);
    assert_eq!(full.published, s.incremental_tables);
    let (full_unit, full_span) = unit_times(&runs.records(&full));
    let step = s.incremental_tables / s.incremental_changed;
    let changes: String = names
        .iter()
        .step_by(step)
        .take(s.incremental_changed)
        .map(|t| format!("UPDATE \"{t}\" SET age = age + 1 WHERE id = 1;\n"))
        .collect();
    dataset::execute(&runs.warehouse(), &changes).expect("changes");
    let (second, second_s) = runs.run(rt, &plan, 8);
    assert_eq!(
        (second.published, second.unchanged),
        (
            s.incremental_changed,
            s.incremental_tables - s.incremental_changed
        )
    );
    let (second_unit, second_span) = unit_times(&runs.records(&second));
    Incremental {
        tables: s.incremental_tables,
        changed: s.incremental_changed,
        tasks: 8,
        full: (full_s, full.seconds),
        only_changed: (second_s, second.seconds),
        unit_seconds: (full_unit, second_unit),
        span_seconds: (full_span, second_span),
    }
    .emit(json!({}));
}

fn skew(rt: &tokio::runtime::Runtime, s: &Sizes) {
    const TASKS: usize = 8;
    const DAYS: u32 = 60;
    let runs = LocalRuns::new();
    let names: Vec<String> = (1..=99).map(|i| format!("t_{i:02}")).collect();
    create_dummy_tables(&runs.warehouse(), &names, s.skew_small_rows).expect("dummy tables");
    let per_day = 99 * s.skew_small_rows / u64::from(DAYS);
    let last_day = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).expect("a date");
    dataset::create_daily_table(&runs.warehouse(), "events", last_day, DAYS, per_day)
        .expect("events");
    partitions::partition_by(&runs.warehouse(), "events", "day", Partitioning::Day)
        .expect("partitioning");
    for split in [false, true] {
        let plan = RunPlan {
            partitions: PartitionPlan {
                split,
                ..PartitionPlan::default()
            },
            ..RunPlan::every_table(RunId::New)
        };
        let (report, _) = runs.run(rt, &plan, TASKS);
        let records = runs.records(&report);
        let schedule = Schedule::of(&records, TASKS);
        let (makespan, largest, total, bound) = (
            schedule.makespan,
            schedule.largest_unit,
            schedule.total_work,
            schedule.lower_bound,
        );
        let units = if split {
            "partition units"
        } else {
            "whole tables"
        };
        emit(
            json!({
                "bench": "skew",
                "units": if split { "partitions" } else { "tables" },
                "unit_count": report.published,
                "tasks": TASKS,
                "makespan_seconds": makespan,
                "largest_unit_seconds": largest,
                "total_work_seconds": total,
                "lower_bound_seconds": bound,
                "ratio": makespan / bound,
            }),
            format!(
                "skew, 99 tables x {} rows + events ({} rows over {DAYS} days), {TASKS} tasks, {units} ({}): \
                 makespan {makespan:.2} s, lower bound {bound:.2} s (largest unit {largest:.2} s, \
                 total work {total:.2} s), ratio {:.2}",
                s.skew_small_rows,
                per_day * u64::from(DAYS),
                report.published,
                makespan / bound
            ),
        );
    }
}

fn restore(rt: &tokio::runtime::Runtime, s: &Sizes) {
    const TASKS: usize = 8;
    const ROWS: u64 = 1000;
    let runs = LocalRuns::new();
    let names: Vec<String> = (1..=s.restore_tables)
        .map(|i| format!("t_{i:04}"))
        .collect();
    create_dummy_tables(&runs.warehouse(), &names, ROWS).expect("dummy tables");
    let started = Instant::now();
    let produced = runs.produce(rt, &RunPlan::every_table(RunId::New));
    let subscription = format!("{}?dead_letter=dead#work", runs.queue());
    let destination = runs.destination();
    let failed = rt.block_on(async {
        let store = bqdrain::adapters::backends::open_store(&destination, "bench")
            .await
            .expect("store");
        LocalWorkers {
            exe: Path::new(BIN),
            subscription: &subscription,
            destination: &destination,
            tasks: TASKS,
            logs: &runs.dir.path().join("logs"),
            progress: false,
            started,
        }
        .drain(store.as_ref(), &produced.run_id, "export-")
        .await
        .expect("drain")
    });
    let export_s = started.elapsed().as_secs_f64();
    assert_eq!(
        (produced.published, failed),
        (s.restore_tables, 0),
        "the export did its work"
    );
    let target = format!("sqlite://{}", runs.dir.path().join("restored.db").display());
    let workers = TASKS.to_string();
    let (report, restore_s) = run_json(&[
        "restore",
        "--from",
        &destination,
        "--to",
        &target,
        "--workers",
        &workers,
        "--json",
    ]);
    assert_eq!(report["ok"], true, "the restore did its work: {report}");
    assert_eq!(
        report["outcome"]["rows"],
        s.restore_tables as u64 * ROWS,
        "every row restored"
    );
    emit(
        json!({
            "bench": "restore",
            "tables": s.restore_tables,
            "rows_per_table": ROWS,
            "tasks": TASKS,
            "export_seconds": export_s,
            "restore_seconds": restore_s,
            "ratio": restore_s / export_s,
        }),
        format!(
            "{} tables x {ROWS} rows, {TASKS} tasks: export {export_s:.2} s, restore \
             {restore_s:.2} s wall: {:.2}x the export",
            s.restore_tables,
            restore_s / export_s
        ),
    );
}

fn main() {
    let s = Sizes::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    emit(
        json!({"bench": "machine", "nproc": nproc, "quick": s.quick}),
        format!("{nproc} CPUs{}", if s.quick { ", quick sizes" } else { "" }),
    );
    // `cargo bench --bench local -- export` runs only the measurements whose
    // name contains a given word.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    if wanted("queue_noop") {
        queue_noop(&rt, &s);
    }
    if wanted("export") {
        export(&rt, &s);
    }
    if wanted("demo") {
        demo(&s);
    }
    if wanted("table_count") {
        table_count(&s);
    }
    if wanted("worker_rss") {
        worker_rss(&rt, &s);
    }
    if wanted("incremental") {
        incremental(&rt, &s);
    }
    if wanted("skew") {
        skew(&rt, &s);
    }
    if wanted("restore") {
        restore(&rt, &s);
    }
}
