//! Partition units, `--only-changed` and `--views` on the embedded backends:
//! partitions exported and replaced one by one, windows of days, runs that
//! export only what changed since the current export, and views exported
//! through a query.

mod common;

use std::time::Duration;

use bqdrain::adapters::local::{dataset, partitions};
use bqdrain::contract::message::SourceTable;
use bqdrain::engine::layout;
use bqdrain::engine::producer::{ProduceReport, RunId, RunPlan};
use bqdrain::engine::selection::{PartitionPlan, PartitionWindow};
use bqdrain::ports::warehouse::Partitioning;
use chrono::NaiveDate;
use common::*;

const EVENTS: &str = "events";

fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// `t_001..` of `rows` rows, and `events` partitioned by day: `per_day`
/// rows on each of the three days up to 2026-12-03, plus two rows with no
/// day.
fn make_dataset(sb: &Sandbox, tables: usize, rows: u64, per_day: u64) -> Vec<String> {
    let names = sb.make_tables(tables, rows);
    dataset::create_daily_table(&sb.warehouse(), EVENTS, day("2026-12-03"), 3, per_day).unwrap();
    dataset::execute(
        &sb.warehouse(),
        "INSERT INTO events (id, day, amount) VALUES (-1, NULL, 0), (-2, NULL, 0);",
    )
    .unwrap();
    partitions::partition_by(&sb.warehouse(), EVENTS, "day", Partitioning::Day).unwrap();
    names
}

fn plan(run_id: &str, window: Option<PartitionWindow>, only_changed: bool) -> RunPlan {
    RunPlan {
        partitions: PartitionPlan {
            split: true,
            window,
            min_rows: 0,
        },
        only_changed,
        ..RunPlan::every_table(RunId::Given {
            id: run_id.into(),
            resume: false,
        })
    }
}

async fn produce(sb: &Sandbox, plan: &RunPlan) -> ProduceReport {
    sb.try_produce_plan(&sb.source(""), "work", plan)
        .await
        .unwrap()
}

fn drain(sb: &Sandbox) {
    let worker = sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "1"]);
    let (status, _) = finish(worker, Duration::from_secs(60));
    assert!(status.success(), "worker failed: {status}\n{}", sb.logs());
}

fn partition_source(sb: &Sandbox, id: &str) -> SourceTable {
    SourceTable {
        partition: Some(id.into()),
        ..sb.table_source(EVENTS)
    }
}

/// The `day` column of every row a run exported for one partition of
/// `events`, read back from its files; checks the export's folder too.
fn exported_days(sb: &Sandbox, run_id: &str, id: &str) -> Vec<String> {
    let unit = format!("{EVENTS}${id}");
    let record = sb
        .manifest(run_id, &unit)
        .unwrap_or_else(|| panic!("{unit} has no completion record\n{}", sb.logs()));
    let folder = layout::export_folder(&partition_source(sb, id), run_id);
    let mut days = Vec::new();
    for file in &record.files {
        assert!(file.key.starts_with(&folder), "{} is in {folder}", file.key);
        let text = std::fs::read_to_string(sb.exports().join(&file.key)).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("id,day,amount"));
        days.extend(lines.map(|l| l.split(',').nth(1).unwrap().to_string()));
    }
    assert_eq!(record.rows, Some(days.len() as u64));
    assert!(
        sb.exports()
            .join(layout::export_manifest(&partition_source(sb, id), run_id))
            .is_file(),
        "{unit}: the export's manifest"
    );
    days
}

fn units_of(status: &serde_json::Value) -> Vec<String> {
    let mut units: Vec<String> = status["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["unit"].as_str().unwrap().to_string())
        .collect();
    units.sort();
    units
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_tables_are_exported_partition_by_partition() {
    let sb = Sandbox::new();
    make_dataset(&sb, 1, 20, 10);
    let report = produce(&sb, &plan("r1", None, false)).await;
    assert_eq!(report.published, 5, "{report:?}");
    drain(&sb);

    let status = sb.status("r1", &[]);
    assert_eq!(
        units_of(&status),
        [
            "events$20261201",
            "events$20261202",
            "events$20261203",
            "events$__NULL__",
            "t_001"
        ]
    );
    assert_eq!(status["totals"]["exported"], 5, "{status}");
    for (id, date) in [
        ("20261201", "2026-12-01"),
        ("20261202", "2026-12-02"),
        ("20261203", "2026-12-03"),
    ] {
        assert_eq!(exported_days(&sb, "r1", id), vec![date.to_string(); 10]);
    }
    assert_eq!(exported_days(&sb, "r1", "__NULL__"), ["", ""]);
    assert_exported(&sb, "r1", "t_001", 20);

    // Grouped by table for people.
    let text = std::process::Command::new(BIN)
        .args([
            "status",
            "--destination",
            &sb.destination(),
            "--run-id",
            "r1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("  events (4 partition(s))\n    $20261201"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_window_takes_its_days_and_keeps_other_tables_whole() {
    let sb = Sandbox::new();
    make_dataset(&sb, 1, 20, 10);
    let since = Some(PartitionWindow::Since(day("2026-12-02")));
    let report = produce(&sb, &plan("r1", since, false)).await;
    // 20261201 and __NULL__ are outside; the unpartitioned table is whole.
    assert_eq!((report.published, report.outside_window), (3, 2));
    drain(&sb);
    assert_eq!(
        units_of(&sb.status("r1", &[])),
        ["events$20261202", "events$20261203", "t_001"]
    );
    assert_exported(&sb, "r1", "t_001", 20);
    assert_eq!(exported_days(&sb, "r1", "20261203").len(), 10);

    // A window that selects nothing publishes nothing, and is no error.
    let mut empty = plan("r2", Some(PartitionWindow::Since(day("2030-01-01"))), false);
    empty.include = vec![EVENTS.into()];
    let report = produce(&sb, &empty).await;
    assert_eq!(
        (report.published, report.pending, report.outside_window),
        (0, 0, 4)
    );
    assert_eq!(sb.depth("work").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_under_the_row_threshold_stays_whole() {
    let sb = Sandbox::new();
    make_dataset(&sb, 1, 20, 10);
    let mut small = plan("r1", None, false);
    small.partitions.min_rows = 33;
    let report = produce(&sb, &small).await;
    assert_eq!(report.published, 2, "t_001, and events (32 rows) whole");
    let mut large = plan("r2", None, false);
    large.partitions.min_rows = 32;
    let report = produce(&sb, &large).await;
    assert_eq!(report.published, 5, "t_001, and events' 4 partitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_changed_publishes_what_changed_since_the_current_export() {
    let sb = Sandbox::new();
    make_dataset(&sb, 3, 20, 10);
    let first = produce(&sb, &plan("r1", None, true)).await;
    assert_eq!((first.published, first.unchanged), (7, 0));
    drain(&sb);
    let record = sb.manifest("r1", "t_001").unwrap();
    let marker = record
        .change
        .expect("the completion record keeps the change marker");
    assert_eq!(marker.rows, Some(20));
    assert!(marker.version.is_some());

    dataset::execute(
        &sb.warehouse(),
        "UPDATE t_002 SET age = 99 WHERE id = 1;
         DELETE FROM t_003 WHERE id = 20;
         INSERT INTO events (id, day, amount) VALUES (1000, '2026-12-02', 5);",
    )
    .unwrap();
    let second = produce(&sb, &plan("r2", None, true)).await;
    assert_eq!((second.published, second.unchanged), (3, 4), "{second:?}");
    drain(&sb);
    let status = sb.status("r2", &[]);
    assert_eq!(
        units_of(&status),
        ["events$20261202", "t_002", "t_003"],
        "{status}"
    );
    assert_eq!(status["unchanged"].as_array().unwrap().len(), 4);
    assert_exported(&sb, "r2", "t_002", 20);
    assert_exported(&sb, "r2", "t_003", 19);
    assert_eq!(exported_days(&sb, "r2", "20261202").len(), 11);
    // What did not change keeps its export from the first run.
    assert_exported(&sb, "r1", "t_001", 20);
    assert_eq!(exported_days(&sb, "r1", "20261201").len(), 10);
    // The replaced exports of the first run are gone.
    assert_eq!(
        sb.files_of("t_002")
            .iter()
            .filter(|f| f.contains("run=r1/"))
            .count(),
        0
    );

    // Nothing changed since: nothing to do.
    let third = produce(&sb, &plan("r3", None, true)).await;
    assert_eq!((third.published, third.unchanged), (0, 7), "{third:?}");
    assert_eq!(sb.depth("work").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_are_exported_through_a_query_and_always_count_as_changed() {
    let sb = Sandbox::new();
    sb.make_tables(2, 20);
    dataset::execute(
        &sb.warehouse(),
        "CREATE VIEW first_five AS SELECT * FROM t_001 WHERE id <= 5;",
    )
    .unwrap();
    let with_views = |id: &str| RunPlan {
        only_changed: true,
        views: true,
        ..RunPlan::every_table(RunId::Given {
            id: id.into(),
            resume: false,
        })
    };
    let first = produce(&sb, &with_views("r1")).await;
    assert_eq!(first.published, 3, "{first:?}");
    assert!(first.skipped.is_empty(), "{first:?}");
    assert!(first.view_bytes_estimated > 0, "{first:?}");
    drain(&sb);
    assert_exported(&sb, "r1", "first_five", 5);

    // Nothing changed, but a view has no change marker: what it reads may
    // have changed, so it is exported again; its tables are not.
    let second = produce(&sb, &with_views("r2")).await;
    assert_eq!((second.published, second.unchanged), (1, 2), "{second:?}");
    drain(&sb);
    assert_exported(&sb, "r2", "first_five", 5);
    assert_exported(&sb, "r1", "t_001", 20);

    // Without --views a view is skipped, with its reason.
    let plain = produce(
        &sb,
        &RunPlan::every_table(RunId::Given {
            id: "r3".into(),
            resume: false,
        }),
    )
    .await;
    assert_eq!(plain.published, 2);
    assert!(plain.skipped[0].reason.contains("--views"), "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_made_again_counts_as_changed() {
    let sb = Sandbox::new();
    sb.make_tables(2, 20);
    let only_changed = |id: &str| RunPlan {
        only_changed: true,
        ..RunPlan::every_table(RunId::Given {
            id: id.into(),
            resume: false,
        })
    };
    produce(&sb, &only_changed("r1")).await;
    drain(&sb);
    // Dropped and created again with the same rows: its change triggers went
    // with it, so no counter saw it; it must not be taken as unchanged.
    dataset::create_dummy_tables(&sb.warehouse(), &["t_002".to_string()], 20).unwrap();
    let second = produce(&sb, &only_changed("r2")).await;
    assert_eq!((second.published, second.unchanged), (1, 1), "{second:?}");
    drain(&sb);
    assert_exported(&sb, "r2", "t_002", 20);
}

/// A dropped table keeps its last export (it may be someone's only copy);
/// a partition gone from a live table is retired, since its rows are gone
/// from the table (or moved to another partition). `status` says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_gone_keeps_its_export_and_a_gone_partition_is_retired() {
    let sb = Sandbox::new();
    make_dataset(&sb, 2, 20, 10);
    produce(&sb, &plan("r1", None, true)).await;
    drain(&sb);
    dataset::execute(
        &sb.warehouse(),
        "DROP TABLE t_002; DELETE FROM events WHERE day = '2026-12-01';",
    )
    .unwrap();
    let second = produce(&sb, &plan("r2", None, true)).await;
    assert_eq!(
        (second.published, second.gone, second.retired),
        (0, 1, 1),
        "{second:?}"
    );
    let status = sb.status("r2", &[]);
    let units = |key: &str| -> Vec<String> {
        status[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["unit"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(units("gone"), ["t_002"]);
    assert_eq!(units("retired"), ["events$20261201"]);
    // The dropped table's last export stays; the partition's is gone.
    assert_exported(&sb, "r1", "t_002", 20);
    let folder = layout::unit_folder(&partition_source(&sb, "20261201"));
    assert!(!sb.exports().join(folder).exists(), "{}", sb.logs());
}

/// A view whose dry run fails (it reads a table the producer may not read,
/// or one that is gone) no longer stops the run: it is published with its
/// estimate unknown, and the report names it. Before, the producer failed
/// the whole run on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_whose_dry_run_fails_is_exported_with_its_estimate_unknown() {
    let sb = Sandbox::new();
    sb.make_tables(2, 20);
    dataset::execute(
        &sb.warehouse(),
        "CREATE TABLE scratch (id INT64);
         CREATE VIEW broken AS SELECT * FROM scratch;
         CREATE VIEW first_five AS SELECT * FROM t_001 WHERE id <= 5;
         DROP TABLE scratch;",
    )
    .unwrap();
    let report = produce(
        &sb,
        &RunPlan {
            views: true,
            ..RunPlan::every_table(RunId::Given {
                id: "r1".into(),
                resume: false,
            })
        },
    )
    .await;
    assert_eq!(report.published, 4, "{report:?}");
    assert_eq!(report.views_unestimated, ["broken"], "{report:?}");
    assert!(report.view_bytes_estimated > 0, "first_five was sized");
    drain(&sb);
    assert_exported(&sb, "r1", "first_five", 5);
    assert_eq!(sb.unit_state("r1", "broken"), "dead_lettered");
}

/// The first line of each file a run exported for `unit`.
fn headers(sb: &Sandbox, run_id: &str, unit: &str) -> Vec<String> {
    let record = sb
        .manifest(run_id, unit)
        .unwrap_or_else(|| panic!("{unit} has no completion record\n{}", sb.logs()));
    record
        .files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(sb.exports().join(&f.key)).unwrap();
            text.lines().next().unwrap_or_default().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_dropped_or_renamed_counts_as_changed() {
    let sb = Sandbox::new();
    make_dataset(&sb, 3, 20, 10);
    produce(&sb, &plan("r1", None, true)).await;
    drain(&sb);
    // No row changes: a column dropped on purpose (say one holding personal
    // data) must leave the exports too, and a renamed one must show its new
    // name. ALTER TABLE fires no trigger.
    dataset::execute(
        &sb.warehouse(),
        "ALTER TABLE t_001 DROP COLUMN age;
         ALTER TABLE t_002 RENAME COLUMN name TO full_name;
         ALTER TABLE events DROP COLUMN amount;",
    )
    .unwrap();
    let second = produce(&sb, &plan("r2", None, true)).await;
    assert_eq!((second.published, second.unchanged), (6, 1), "{second:?}");
    drain(&sb);
    assert_eq!(
        units_of(&sb.status("r2", &[])),
        [
            "events$20261201",
            "events$20261202",
            "events$20261203",
            "events$__NULL__",
            "t_001",
            "t_002"
        ]
    );
    assert_eq!(headers(&sb, "r2", "t_001"), ["id,name"]);
    assert_eq!(headers(&sb, "r2", "t_002"), ["id,full_name,age"]);
    for id in ["20261201", "20261202", "20261203", "__NULL__"] {
        assert_eq!(headers(&sb, "r2", &format!("{EVENTS}${id}")), ["id,day"]);
    }
    // The first run's exports, with the old columns, are gone.
    assert!(
        sb.files_of("t_001").iter().all(|f| f.contains("run=r2/")),
        "{:?}",
        sb.files_of("t_001")
    );

    // Nothing changed since: nothing to do.
    let third = produce(&sb, &plan("r3", None, true)).await;
    assert_eq!((third.published, third.unchanged), (0, 7), "{third:?}");
}
