//! The destination equals the source: each way it drifted after weeks of
//! changing data and flags, reproduced on the embedded backends.
//!
//! The rule: after a run, for every table that still exists and that the
//! run covered in full, the data files under `DATASET/TABLE/` are exactly
//! one committed export per current unit, all written with the run's
//! options, and together they hold exactly the table's rows.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bqdrain::adapters::backends;
use bqdrain::adapters::local::queue::peek;
use bqdrain::adapters::local::{dataset, partitions, store_fault};
use bqdrain::contract::change::ChangeMarker;
use bqdrain::contract::options::{Compression, ExportOptions, Format};
use bqdrain::engine::layout::{self, RunManifest};
use bqdrain::engine::producer::{produce, RunId, RunPlan};
use bqdrain::engine::selection::PartitionPlan;
use bqdrain::error::{ConfigError, UnitError};
use bqdrain::ports::warehouse::{
    Cancel, ExportRequest, ExportResult, PartitionInfo, Partitioning, TableInfo, Warehouse,
};
use chrono::{DateTime, NaiveDate, Utc};
use common::*;

const EVENTS: &str = "events";

fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn run(id: &str) -> RunId {
    RunId::Given {
        id: id.into(),
        resume: false,
    }
}

/// `events`, partitioned by day: 10 rows on each of 2026-12-01..03.
fn make_events(sb: &Sandbox) {
    dataset::create_daily_table(&sb.warehouse(), EVENTS, day("2026-12-03"), 3, 10).unwrap();
    partitions::partition_by(&sb.warehouse(), EVENTS, "day", Partitioning::Day).unwrap();
}

fn split(run_id: &str, min_rows: u64) -> RunPlan {
    RunPlan {
        partitions: PartitionPlan {
            split: true,
            window: None,
            min_rows,
        },
        ..RunPlan::every_table(run(run_id))
    }
}

async fn produce_plan(sb: &Sandbox, plan: &RunPlan) {
    sb.try_produce_plan(&sb.source(""), "work", plan)
        .await
        .unwrap();
}

fn drain(sb: &Sandbox, args: &[&str]) {
    let mut all = vec!["--idle-timeout", "2"];
    all.extend_from_slice(args);
    let worker = sb.spawn_worker(&sb.subscription(""), &all);
    let (status, _) = finish(worker, Duration::from_secs(120));
    assert!(status.success(), "worker failed: {status}\n{}", sb.logs());
}

/// The export folders under a table's folder (`…/run=R/`), each with the
/// files in it.
fn export_folders(sb: &Sandbox, table: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for key in sb.files_of(table) {
        let (folder, file) = key.rsplit_once('/').unwrap();
        folders
            .entry(format!("{folder}/"))
            .or_default()
            .insert(file.to_string());
    }
    folders
}

/// The first column of every data row in a table's folder, sorted: the
/// ids the destination holds for it, read back from every file there.
fn exported_ids(sb: &Sandbox, table: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    for key in sb.files_of(table) {
        if key.ends_with("_MANIFEST.json") || key.ends_with("_TABLE.json") {
            continue;
        }
        let bytes = std::fs::read(sb.exports().join(&key)).unwrap();
        let text = String::from_utf8(common::gcp::maybe_gunzip(&key, &bytes)).unwrap();
        if key.contains(".json") {
            for line in text.lines() {
                let row: serde_json::Value = serde_json::from_str(line).unwrap();
                ids.push(row["id"].as_i64().unwrap());
            }
        } else {
            for line in text.lines().skip(1) {
                ids.push(line.split(',').next().unwrap().parse().unwrap());
            }
        }
    }
    ids.sort();
    ids
}

fn source_ids(sb: &Sandbox, table: &str) -> Vec<i64> {
    let conn = rusqlite::Connection::open(sb.warehouse()).unwrap();
    let mut stmt = conn
        .prepare(&format!("SELECT id FROM \"{table}\" ORDER BY id"))
        .unwrap();
    let ids = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<i64>>>()
        .unwrap();
    ids
}

/// Every export folder of the table is one of `expected`, each committed,
/// and the files hold exactly the table's rows.
fn assert_equals_source(sb: &Sandbox, table: &str, expected: &[String]) {
    let folders = export_folders(sb, table);
    let found: Vec<&String> = folders.keys().collect();
    let mut want: Vec<&String> = expected.iter().collect();
    want.sort();
    assert_eq!(found, want, "{table}: the export folders\n{}", sb.logs());
    for (folder, files) in &folders {
        assert!(
            files.contains("_MANIFEST.json"),
            "{folder} is committed: {files:?}"
        );
    }
    assert_eq!(
        exported_ids(sb, table),
        source_ids(sb, table),
        "{table}: the rows exported are the table's"
    );
    let verified = std::process::Command::new(BIN)
        .args(["verify", "--destination", &sb.destination()])
        .args(["--source", &sb.source(""), "--include", table])
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "bqdrain verify agrees: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}

fn whole(sb: &Sandbox, table: &str, run_id: &str) -> String {
    sb.export_folder(table, run_id)
}

fn partition(sb: &Sandbox, table: &str, id: &str, run_id: &str) -> String {
    let source = bqdrain::contract::message::SourceTable {
        partition: Some(id.into()),
        ..sb.table_source(table)
    };
    layout::export_folder(&source, run_id)
}

/// Item 1: a table exported whole and then split keeps one export, and so
/// does the reverse; here the switch comes from crossing `min_rows` with
/// unchanged flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_switching_between_whole_and_partitions_keeps_one_export() {
    let sb = Sandbox::new();
    make_events(&sb);
    produce_plan(&sb, &split("r1", 40)).await;
    drain(&sb, &[]);
    assert_equals_source(&sb, EVENTS, &[whole(&sb, EVENTS, "r1")]);

    // 10 more rows: 40 rows, no longer under min_rows, so it is split.
    dataset::execute(
        &sb.warehouse(),
        "INSERT INTO events SELECT id + 100, day, amount FROM events WHERE day = '2026-12-03';",
    )
    .unwrap();
    produce_plan(&sb, &split("r2", 40)).await;
    drain(&sb, &[]);
    let days = ["20261201", "20261202", "20261203"];
    let parts: Vec<String> = days
        .iter()
        .map(|d| partition(&sb, EVENTS, d, "r2"))
        .collect();
    assert_equals_source(&sb, EVENTS, &parts);

    // Back under min_rows: exported whole again.
    dataset::execute(&sb.warehouse(), "DELETE FROM events WHERE id > 100;").unwrap();
    produce_plan(&sb, &split("r3", 40)).await;
    drain(&sb, &[]);
    assert_equals_source(&sb, EVENTS, &[whole(&sb, EVENTS, "r3")]);
}

/// Item 2: `--only-changed` exports a unit again when the run writes files
/// another way, so a table never mixes formats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_changed_exports_again_when_the_options_change() {
    let sb = Sandbox::new();
    sb.make_tables(2, 20);
    let first = RunPlan {
        only_changed: true,
        ..RunPlan::every_table(run("r1"))
    };
    produce_plan(&sb, &first).await;
    drain(&sb, &[]);
    let second = RunPlan {
        only_changed: true,
        options: ExportOptions {
            format: Format::Json,
            compression: Compression::Gzip,
            ..ExportOptions::default()
        },
        ..RunPlan::every_table(run("r2"))
    };
    produce_plan(&sb, &second).await;
    drain(&sb, &[]);
    for table in ["t_001", "t_002"] {
        let folder = whole(&sb, table, "r2");
        assert_equals_source(&sb, table, std::slice::from_ref(&folder));
        let shards: Vec<String> = export_folders(&sb, table)[&folder]
            .iter()
            .filter(|f| *f != "_MANIFEST.json" && *f != "_TABLE.json")
            .cloned()
            .collect();
        assert!(
            shards.iter().all(|f| f.ends_with(".json.gz")),
            "{table}: {shards:?}"
        );
    }
}

/// Item 3: rows moved to another day, and a day emptied, leave the old
/// partitions' exports; with and without `--only-changed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_leaving_a_partition_leave_its_export() {
    for only_changed in [false, true] {
        let sb = Sandbox::new();
        make_events(&sb);
        let plan = |id: &str| RunPlan {
            only_changed,
            ..split(id, 0)
        };
        produce_plan(&sb, &plan("r1")).await;
        drain(&sb, &[]);
        dataset::execute(
            &sb.warehouse(),
            "UPDATE events SET day = '2026-11-30' WHERE day = '2026-12-01';
             DELETE FROM events WHERE day = '2026-12-02';",
        )
        .unwrap();
        produce_plan(&sb, &plan("r2")).await;
        drain(&sb, &[]);
        let mut expected = vec![partition(&sb, EVENTS, "20261130", "r2")];
        expected.push(partition(
            &sb,
            EVENTS,
            "20261203",
            if only_changed { "r1" } else { "r2" },
        ));
        assert_equals_source(&sb, EVENTS, &expected);
    }
}

/// Item 3, the last partition of a table emptied while the others are
/// unchanged: no unit of the table is in the `--only-changed` run, and its
/// export is retired all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_partition_is_retired_when_nothing_else_changed() {
    let sb = Sandbox::new();
    make_events(&sb);
    let plan = |id: &str| RunPlan {
        only_changed: true,
        ..split(id, 0)
    };
    produce_plan(&sb, &plan("r1")).await;
    drain(&sb, &[]);
    dataset::execute(
        &sb.warehouse(),
        "DELETE FROM events WHERE day = '2026-12-02';",
    )
    .unwrap();
    produce_plan(&sb, &plan("r2")).await;
    drain(&sb, &[]);
    let expected: Vec<String> = ["20261201", "20261203"]
        .iter()
        .map(|d| partition(&sb, EVENTS, d, "r1"))
        .collect();
    assert_equals_source(&sb, EVENTS, &expected);
}

/// Item 4: a unit published again while it is still exporting (`--resume`)
/// is exported by two deliveries at once, here of different data (rows
/// were deleted between their reads): whichever commits, the folder holds
/// exactly the files its record names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliveries_at_once_leave_one_intact_export() {
    let sb = Sandbox::new();
    sb.make_tables(1, 100);
    sb.slow("t_001", 150);
    sb.produce("shard_bytes=200", "r1").await;
    let first = sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "2"]);
    wait_until(Duration::from_secs(30), "the first shard", || {
        !sb.files_of("t_001").is_empty()
    });
    // The first delivery read 100 rows; the second will read 30.
    dataset::execute(&sb.warehouse(), "DELETE FROM t_001 WHERE id > 30;").unwrap();
    let resumed = RunId::Given {
        id: "r1".into(),
        resume: true,
    };
    let report = sb
        .try_produce(&sb.source("shard_bytes=200"), "work", resumed)
        .await
        .unwrap();
    assert_eq!(report.published, 1);
    let second = sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "2"]);
    for worker in [first, second] {
        let (status, _) = finish(worker, Duration::from_secs(120));
        assert!(status.success(), "{}", sb.logs());
    }
    let record = sb.manifest("r1", "t_001").expect("a completion record");
    let rows = record.rows.unwrap();
    assert!(rows == 30 || rows == 100, "{rows}");
    assert_exported(&sb, "r1", "t_001", rows);
    assert_eq!(sb.unit_state("r1", "t_001"), "exported");
}

/// Issue 16: a worker killed after it committed a unit's export but before
/// it settled it (deleted the older export, wrote the completion record)
/// leaves the run incomplete, so the task watching the run waits for the
/// redelivery, which settles the unit: one export stands, and `verify`
/// agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_commit_and_settle_leaves_one_export() {
    let sb = Sandbox::new();
    sb.make_tables(1, 10);
    sb.produce("", "r1").await;
    drain(&sb, &[]);
    dataset::execute(&sb.warehouse(), "DELETE FROM t_001 WHERE id > 7;").unwrap();
    sb.produce("", "r2").await;
    store_fault::stall_deletes(&sb.exports(), 0).unwrap();
    let subscription = sb.subscription("ack_deadline=2");
    let mut victim = sb.spawn_worker(&subscription, &[]);
    wait_until(Duration::from_secs(30), "a delete of the settle", || {
        store_fault::delete_held(&sb.exports())
    });
    victim.kill().unwrap();
    victim.wait().unwrap();
    store_fault::clear_stall(&sb.exports()).unwrap();
    assert!(
        sb.files_of("t_001")
            .contains(&format!("{}_MANIFEST.json", whole(&sb, "t_001", "r2"))),
        "killed after r2's export of t_001 was committed: {:?}",
        sb.files_of("t_001")
    );
    assert!(
        sb.manifest("r2", "t_001").is_none(),
        "the completion record comes after the settling"
    );

    // A task of the run's launch watches it (`--run-id`), as every task
    // `bqdrain launch` starts does.
    let destination = sb.destination();
    let watching = ["--run-id", "r2", "--destination", &destination];
    let survivor = sb.spawn_worker(&subscription, &watching);
    let (status, report) = finish(survivor, Duration::from_secs(60));
    assert!(status.success(), "{}", sb.logs());
    assert_eq!(report["acked"], 1, "the redelivery is settled: {report}");
    assert_equals_source(&sb, "t_001", &[whole(&sb, "t_001", "r2")]);
    assert_eq!(sb.unit_state("r2", "t_001"), "exported");
}

/// Issue 16: a worker killed half-way through deleting the older export
/// it replaces leaves that export still committed (its manifest goes
/// last), so the redelivery finishes deleting it, even once the older
/// run's records have expired (a lifecycle rule on `_bqdrain/runs/`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_deleting_the_older_export_leaves_one_export() {
    let sb = Sandbox::new();
    sb.make_tables(1, 10);
    sb.produce("", "r1").await;
    drain(&sb, &[]);
    std::fs::remove_dir_all(sb.exports().join("_bqdrain/runs/r1")).unwrap();
    sb.produce("", "r2").await;
    store_fault::stall_deletes(&sb.exports(), 1).unwrap();
    let subscription = sb.subscription("ack_deadline=2");
    let mut victim = sb.spawn_worker(&subscription, &[]);
    wait_until(Duration::from_secs(30), "the second delete", || {
        store_fault::delete_held(&sb.exports())
    });
    victim.kill().unwrap();
    victim.wait().unwrap();
    store_fault::clear_stall(&sb.exports()).unwrap();
    assert_eq!(
        export_folders(&sb, "t_001").len(),
        2,
        "killed with part of r1's export deleted"
    );

    let survivor = sb.spawn_worker(&subscription, &["--idle-timeout", "4"]);
    let (status, report) = finish(survivor, Duration::from_secs(60));
    assert!(status.success(), "{}", sb.logs());
    assert_eq!(report["acked"], 1, "the redelivery is settled: {report}");
    assert_equals_source(&sb, "t_001", &[whole(&sb, "t_001", "r2")]);
}

/// Item 6: two runs of one dataset overlapping in one worker keep one
/// export per table, whichever commits first: their messages are queued
/// pairwise (each table's two runs side by side) and exported at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_runs_keep_one_export_per_table() {
    let sb = Sandbox::new();
    let tables = sb.make_tables(30, 5);
    sb.produce_to("stage", "", "r1").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    sb.produce_to("stage", "", "r2").await;
    let staged = peek(&sb.queue("stage")).await.unwrap();
    let (r1, r2) = staged.split_at(tables.len());
    let pairs = r1.iter().zip(r2).flat_map(|(a, b)| [a.clone(), b.clone()]);
    sb.publish_raw("work", pairs.collect()).await;
    drain(&sb, &["--concurrency", "32"]);
    for table in &tables {
        let folders = export_folders(&sb, table);
        assert_eq!(
            folders.len(),
            1,
            "{table}: one export, not {:?}\n{}",
            folders.keys(),
            sb.logs()
        );
        assert_eq!(exported_ids(&sb, table), source_ids(&sb, table));
    }
}

/// Item 8: a dataset folder in a destination belongs to one source; another
/// source with a dataset of the same name is refused before it publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_folder_belongs_to_one_source() {
    let sb = Sandbox::new();
    sb.make_tables(1, 10);
    sb.produce("", "ra").await;
    drain(&sb, &[]);
    let other = sb.path("b/warehouse.db");
    dataset::create_dummy_tables(&other, &["t_001".to_string()], 3).unwrap();
    let err = sb
        .try_produce(&format!("sqlite://{}", other.display()), "work", run("rb"))
        .await
        .unwrap_err();
    let config = err
        .downcast_ref::<ConfigError>()
        .unwrap_or_else(|| panic!("a configuration error (exit 2), not {err:#}"));
    assert_eq!(config.flag, "--source", "{config}");
    assert!(
        config
            .problem
            .contains(&sb.warehouse().display().to_string()),
        "names the source that owns the folder: {config}"
    );
    assert_eq!(sb.depth("work").await, 0, "nothing published");
    assert_exported(&sb, "ra", "t_001", 10);
    assert!(peek(&sb.queue("work")).await.unwrap().is_empty());
}

/// Item 5: a run's snapshot time is taken after every change marker is
/// read, so a change made while planning is never in the data but not in
/// the marker (which would let `--only-changed` skip it for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_is_taken_after_the_markers_are_read() {
    let sb = Sandbox::new();
    sb.make_tables(2, 5);
    make_events(&sb);
    let inner = backends::open_sources(&[sb.source("")], "--source")
        .await
        .unwrap()
        .remove(0);
    let timed = Arc::new(Timed {
        inner,
        last_read: Mutex::new(None),
    });
    let plan = RunPlan {
        only_changed: true,
        ..split("r1", 0)
    };
    let topic = backends::open_topic(&sb.queue("work"), "--topic")
        .await
        .unwrap();
    let store = backends::open_store(&sb.destination(), "--destination")
        .await
        .unwrap();
    let warehouses: Vec<Arc<dyn Warehouse>> = vec![timed.clone()];
    produce(&plan, &warehouses, topic.as_ref(), store.as_ref())
        .await
        .unwrap();
    let manifest: RunManifest = serde_json::from_slice(
        &std::fs::read(sb.exports().join(layout::run_manifest("r1"))).unwrap(),
    )
    .unwrap();
    let last_read = timed.last_read.lock().unwrap().expect("markers were read");
    assert!(
        manifest.created_at >= last_read,
        "snapshot {} is before the last marker read {last_read}",
        manifest.created_at
    );
}

/// A warehouse that notes when it last answered a planning read.
struct Timed {
    inner: Arc<dyn Warehouse>,
    last_read: Mutex<Option<DateTime<Utc>>>,
}

impl Timed {
    fn read<T>(&self, result: T) -> T {
        *self.last_read.lock().unwrap() = Some(Utc::now());
        result
    }
}

#[async_trait]
impl Warehouse for Timed {
    fn uri(&self) -> &str {
        self.inner.uri()
    }
    fn project(&self) -> &str {
        self.inner.project()
    }
    fn dataset(&self) -> &str {
        self.inner.dataset()
    }
    fn check_export(&self, options: &ExportOptions, root: &str) -> Result<(), ConfigError> {
        self.inner.check_export(options, root)
    }
    async fn list_tables(&self) -> anyhow::Result<Vec<TableInfo>> {
        let tables = self.inner.list_tables().await;
        self.read(tables)
    }
    async fn change_markers(
        &self,
        tables: &[TableInfo],
    ) -> anyhow::Result<std::collections::HashMap<String, ChangeMarker>> {
        let markers = self.inner.change_markers(tables).await;
        self.read(markers)
    }
    async fn tracked_markers(
        &self,
        tables: &[TableInfo],
    ) -> anyhow::Result<std::collections::HashMap<String, ChangeMarker>> {
        self.inner.tracked_markers(tables).await
    }
    async fn list_partitions(&self, tables: &[TableInfo]) -> anyhow::Result<Vec<PartitionInfo>> {
        let partitions = self.inner.list_partitions(tables).await;
        self.read(partitions)
    }
    async fn view_bytes(&self, view: &str) -> anyhow::Result<u64> {
        let bytes = self.inner.view_bytes(view).await;
        self.read(bytes)
    }
    async fn export(
        &self,
        request: &ExportRequest,
        cancel: Cancel,
    ) -> Result<ExportResult, UnitError> {
        self.inner.export(request, cancel).await
    }
    async fn definition(
        &self,
        source: &bqdrain::contract::message::SourceTable,
    ) -> Result<bqdrain::ports::definition::TableDefinition, UnitError> {
        self.inner.definition(source).await
    }
    async fn load(
        &self,
        request: &bqdrain::ports::warehouse::LoadRequest,
        cancel: Cancel,
    ) -> Result<bqdrain::ports::warehouse::LoadResult, UnitError> {
        self.inner.load(request, cancel).await
    }
    async fn column_types(
        &self,
    ) -> anyhow::Result<std::collections::HashMap<String, Vec<(String, String)>>> {
        self.inner.column_types().await
    }
}

/// A producer killed while it retires an export leaves that export still
/// committed (its manifest goes last), so the next `--prune-gone` run
/// retires the rest of it instead of leaving files no run owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_killed_retiring_an_export_leaves_it_to_the_next_run() {
    let sb = Sandbox::new();
    sb.make_tables(2, 10);
    sb.produce("", "r1").await;
    drain(&sb, &[]);
    dataset::execute(&sb.warehouse(), "DROP TABLE t_002;").unwrap();
    let pruning = |id| RunPlan {
        prune_gone: true,
        ..RunPlan::every_table(run(id))
    };
    store_fault::stall_deletes(&sb.exports(), 1).unwrap();
    let (source, plan) = (sb.source(""), pruning("r2"));
    let mut producing = Box::pin(sb.try_produce_plan(&source, "work", &plan));
    let held = async {
        while !store_fault::delete_held(&sb.exports()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        done = &mut producing => panic!("the retiring should stall: {done:?}"),
        () = held => {}
    }
    drop(producing); // killed at its second delete
    store_fault::clear_stall(&sb.exports()).unwrap();

    let pruned = sb
        .try_produce_plan(&sb.source(""), "work", &pruning("r3"))
        .await
        .unwrap();
    drain(&sb, &[]);
    assert_eq!(pruned.retired, 1, "{pruned:?}");
    assert!(
        sb.files_of("t_002").is_empty(),
        "{:?}",
        sb.files_of("t_002")
    );
}

/// A dropped table keeps its last export until `--prune-gone` retires it;
/// the run manifest and `status` say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_gone_retires_the_exports_of_dropped_tables() {
    let sb = Sandbox::new();
    sb.make_tables(2, 10);
    sb.produce("", "r1").await;
    drain(&sb, &[]);
    dataset::execute(&sb.warehouse(), "DROP TABLE t_002;").unwrap();
    let kept = sb
        .try_produce_plan(&sb.source(""), "work", &RunPlan::every_table(run("r2")))
        .await
        .unwrap();
    drain(&sb, &[]);
    assert_eq!((kept.gone, kept.retired), (1, 0), "{kept:?}");
    assert_exported(&sb, "r1", "t_002", 10);

    let pruned = sb
        .try_produce_plan(
            &sb.source(""),
            "work",
            &RunPlan {
                prune_gone: true,
                ..RunPlan::every_table(run("r3"))
            },
        )
        .await
        .unwrap();
    drain(&sb, &[]);
    assert_eq!((pruned.gone, pruned.retired), (0, 1), "{pruned:?}");
    assert!(
        sb.files_of("t_002").is_empty(),
        "{:?}",
        sb.files_of("t_002")
    );
    let status = sb.status("r3", &[]);
    assert_eq!(status["retired"][0]["unit"], "t_002", "{status}");
    assert_eq!(status["retired"][0]["exported_by"], "r1", "{status}");
    assert_equals_source(&sb, "t_001", &[whole(&sb, "t_001", "r3")]);
}
