//! `bqdrain verify` on the embedded backends: destinations that real runs
//! (producer and worker processes) wrote verify clean; then each is damaged
//! on purpose the way a defect or an accident leaves it, and `verify` must
//! exit 1 naming the damage, where it is and its fix.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bqdrain::adapters::local::{dataset, partitions};
use bqdrain::contract::options::{Compression, ExportOptions, Format};
use bqdrain::engine::layout::TableManifest;
use bqdrain::engine::producer::{RunId, RunPlan};
use bqdrain::engine::selection::{PartitionPlan, PartitionWindow};
use bqdrain::ports::warehouse::Partitioning;
use chrono::NaiveDate;
use serde_json::Value;

use common::*;

const EVENTS: &str = "events";

/// `t_001..t_00N` of `rows` rows, and `events`, partitioned by day: 10 rows
/// on each of the three days up to 2026-12-03.
fn make_dataset(sb: &Sandbox, tables: usize, rows: u64) -> Vec<String> {
    let names = sb.make_tables(tables, rows);
    let last = NaiveDate::from_ymd_opt(2026, 12, 3).unwrap();
    dataset::create_daily_table(&sb.warehouse(), EVENTS, last, 3, 10).unwrap();
    partitions::partition_by(&sb.warehouse(), EVENTS, "day", Partitioning::Day).unwrap();
    names
}

fn plan(run_id: &str) -> RunPlan {
    RunPlan::every_table(RunId::Given {
        id: run_id.into(),
        resume: false,
    })
}

fn split(plan: RunPlan) -> RunPlan {
    RunPlan {
        partitions: PartitionPlan {
            split: true,
            ..PartitionPlan::default()
        },
        ..plan
    }
}

/// Produces `plan` from the sandbox's dataset (with `query` in its URI)
/// and drains it with one worker.
async fn run(sb: &Sandbox, query: &str, plan: &RunPlan) {
    sb.try_produce_plan(&sb.source(query), "work", plan)
        .await
        .unwrap();
    let worker = sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "1"]);
    let (status, _) = finish(worker, Duration::from_secs(60));
    assert!(status.success(), "worker failed: {status}\n{}", sb.logs());
}

/// Runs `bqdrain verify --json` on the sandbox's destination with `args`;
/// returns its exit code and report.
fn verify(sb: &Sandbox, args: &[&str]) -> (i32, Value) {
    let out = Command::new(BIN)
        .args(["verify", "--destination", &sb.destination(), "--json"])
        .args(args)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "verify printed no report (exit {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

/// The same, asserting every check holds.
fn verifies(sb: &Sandbox, args: &[&str]) -> Value {
    let (code, report) = verify(sb, args);
    assert_eq!(
        (code, &report["discrepancies"]),
        (0, &Value::Array(vec![])),
        "{report:#}"
    );
    assert_eq!(report["ok"], true);
    report
}

/// The same, asserting it fails; returns the discrepancies.
fn fails(sb: &Sandbox, args: &[&str]) -> Vec<Value> {
    let (code, report) = verify(sb, args);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false);
    let found = report["discrepancies"].as_array().unwrap().clone();
    let total: u64 = report["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, found.len() as u64, "counts per kind add up");
    found
}

/// The discrepancies of `kind`, as (path, detail, fix).
fn of_kind(found: &[Value], kind: &str) -> Vec<(String, String, String)> {
    found
        .iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| {
            let s = |f: &str| d[f].as_str().unwrap().to_string();
            (s("path"), s("detail"), s("fix"))
        })
        .collect()
}

fn kinds(found: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = found
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    kinds
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Keeps a copy of an export folder, to put back after a run deleted it.
fn keep(sb: &Sandbox, folder: &str) -> tempfile::TempDir {
    let kept = tempfile::tempdir().unwrap();
    copy_dir(&sb.exports().join(folder), kept.path());
    kept
}

fn put_back(sb: &Sandbox, kept: &tempfile::TempDir, folder: &str) {
    copy_dir(kept.path(), &sb.exports().join(folder));
}

/// Rewrites an export's record (its completion record and `_MANIFEST.json`).
fn forge(
    sb: &Sandbox,
    run_id: &str,
    unit: &str,
    folder: &str,
    change: impl Fn(&mut TableManifest),
) {
    let mut record = sb.manifest(run_id, unit).unwrap();
    change(&mut record);
    let body = serde_json::to_vec_pretty(&record).unwrap();
    let done = sb
        .exports()
        .join(format!("_bqdrain/runs/{run_id}/done/{unit}.json"));
    std::fs::write(done, &body).unwrap();
    std::fs::write(sb.exports().join(folder).join("_MANIFEST.json"), &body).unwrap();
}

fn uri(sb: &Sandbox, key: &str) -> String {
    format!("{}/{key}", sb.destination())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_destination_verifies_with_its_source_and_its_rows_counted() {
    let sb = Sandbox::new();
    make_dataset(&sb, 3, 50);
    run(&sb, "shard_bytes=300", &split(plan("r1"))).await;

    let report = verifies(&sb, &[]);
    // Three whole tables and the three days of `events`.
    assert_eq!(
        (&report["datasets"], &report["tables"], &report["units"]),
        (&1.into(), &4.into(), &6.into())
    );
    assert!(report["files"].as_u64().unwrap() > 6, "{report}");
    assert_eq!(report["counts"], serde_json::json!({}));
    assert_eq!(report["notes"], serde_json::json!([]));
    assert_eq!(report["sources"], serde_json::json!([]));
    let calls = &report["calls"];
    assert_eq!(
        calls["listing_calls"], 2,
        "the datasets, then the dataset's folder: {calls}"
    );
    assert!(
        calls["reads"].as_u64().unwrap() >= 6,
        "local manifests are read"
    );
    for field in ["bytes", "rows_compared", "rows_counted", "seconds", "deep"] {
        assert!(report.get(field).is_some(), "{field} in {report}");
    }

    // No run planned with change markers yet: no count is compared.
    let source = sb.source("");
    let report = verifies(&sb, &["--source", &source]);
    assert_eq!(report["rows_compared"], 0);
    let report = verifies(&sb, &["--deep"]);
    assert_eq!(report["rows_counted"], 6);

    // An --only-changed run keeps markers, so counts are compared.
    let only_changed = RunPlan {
        only_changed: true,
        ..split(plan("r2"))
    };
    run(&sb, "shard_bytes=300", &only_changed).await;
    let report = verifies(&sb, &["--source", &source, "--deep"]);
    assert_eq!(
        (&report["rows_compared"], &report["rows_counted"]),
        (&6.into(), &6.into())
    );

    // JSON, gzipped: counted through the decompression.
    let json = RunPlan {
        options: ExportOptions {
            format: Format::Json,
            compression: Compression::Gzip,
            ..ExportOptions::default()
        },
        ..split(plan("r3"))
    };
    run(&sb, "shard_bytes=300", &json).await;
    let report = verifies(&sb, &["--deep", "--include", "t_*"]);
    assert_eq!(
        (&report["tables"], &report["rows_counted"]),
        (&3.into(), &3.into())
    );

    // For people: one line saying it all holds.
    let out = Command::new(BIN)
        .args(["verify", "--destination", &sb.destination()])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.ends_with("every check holds\n"), "{text}");
}

/// (a) A table with a whole export and partition exports side by side,
/// one way and the other: the earlier layout is the leftover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_and_partition_exports_of_one_table_side_by_side() {
    let sb = Sandbox::new();
    make_dataset(&sb, 1, 20);
    run(&sb, "", &plan("r1")).await;
    let whole = "warehouse/events/run=r1/";
    let kept = keep(&sb, whole);
    run(&sb, "", &split(plan("r2"))).await;
    put_back(&sb, &kept, whole); // in case a run ever deletes it

    let found = fails(&sb, &[]);
    assert_eq!(kinds(&found), ["mixed_layout"], "{found:#?}");
    let (path, detail, fix) = &of_kind(&found, "mixed_layout")[0];
    assert_eq!(path, whole);
    assert!(
        detail.contains("whole table, exported by run r1"),
        "{detail}"
    );
    assert!(detail.contains("run r2"), "{detail}");
    assert_eq!(
        fix,
        &format!(
            "delete folder {} (a leftover of the table's earlier layout)",
            uri(&sb, whole)
        )
    );

    // Exported whole again: now the partitions are the leftovers.
    let days = ["20261201", "20261202", "20261203"];
    let kept: Vec<_> = days
        .iter()
        .map(|d| {
            let folder = format!("warehouse/events/partition={d}/run=r2/");
            (keep(&sb, &folder), folder)
        })
        .collect();
    run(&sb, "", &plan("r3")).await;
    for (copy, folder) in &kept {
        put_back(&sb, copy, folder);
    }
    let found = fails(&sb, &[]);
    let paths: Vec<String> = of_kind(&found, "mixed_layout")
        .into_iter()
        .map(|(path, _, _)| path)
        .collect();
    let expected: Vec<String> = days
        .iter()
        .map(|d| format!("warehouse/events/partition={d}/"))
        .collect();
    assert_eq!(paths, expected, "{found:#?}");
    assert_eq!(found.len(), 3, "{found:#?}");
}

/// (b) Two committed exports of one unit, written in different formats: an
/// older run's folder copied back beside the newer one's. And a table whose
/// current exports mix formats: a partition window re-exported one day as
/// JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_exports_of_one_unit_and_a_table_of_two_formats() {
    let sb = Sandbox::new();
    make_dataset(&sb, 2, 20);
    run(&sb, "", &split(plan("r1"))).await;
    let older = "warehouse/t_001/run=r1/";
    let kept = keep(&sb, older);
    let json = ExportOptions {
        format: Format::Json,
        ..ExportOptions::default()
    };
    let last_day = RunPlan {
        options: json,
        partitions: PartitionPlan {
            split: true,
            window: Some(PartitionWindow::Since(
                NaiveDate::from_ymd_opt(2026, 12, 3).unwrap(),
            )),
            min_rows: 0,
        },
        ..plan("r2")
    };
    run(&sb, "", &last_day).await;
    assert!(
        !sb.exports().join(older).exists(),
        "r2 replaced r1's export"
    );
    put_back(&sb, &kept, older);

    let found = fails(&sb, &[]);
    assert_eq!(
        kinds(&found),
        ["leftover_export", "mixed_format"],
        "{found:#?}"
    );
    let (path, detail, fix) = &of_kind(&found, "leftover_export")[0];
    assert_eq!(path, older);
    assert!(
        detail.contains("run r1's export of warehouse.t_001 stands beside run r2's")
            && detail
                .contains("written as csv with header, delimiter \",\", the standing one as json"),
        "{detail}"
    );
    assert_eq!(
        fix,
        &format!("delete folder {} (a leftover of run r1)", uri(&sb, older))
    );
    let (path, detail, fix) = &of_kind(&found, "mixed_format")[0];
    assert_eq!(path, "warehouse/events/");
    assert!(
        detail.contains("2 ways") && detail.contains("json (1 unit(s)"),
        "{detail}"
    );
    assert!(
        fix.contains("--include warehouse.events --partitions"),
        "{fix}"
    );
}

/// (c) With --source: a partition export of a day the source no longer has,
/// a table the destination lacks, a table the source dropped (gone: a note).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_source_retired_partitions_missing_and_gone_tables() {
    let sb = Sandbox::new();
    make_dataset(&sb, 2, 20);
    run(&sb, "", &split(plan("r1"))).await;
    let source = sb.source("");
    verifies(&sb, &["--source", &source]);

    dataset::execute(
        &sb.warehouse(),
        "DELETE FROM events WHERE day = '2026-12-01';
         DROP TABLE t_002;
         CREATE TABLE t_new (id INT64);
         CREATE VIEW v AS SELECT * FROM t_001;",
    )
    .unwrap();
    // Without the source, the destination alone is as it was.
    verifies(&sb, &[]);

    let (code, report) = verify(&sb, &["--source", &source]);
    assert_eq!(code, 1, "{report:#}");
    let found = report["discrepancies"].as_array().unwrap().clone();
    assert_eq!(
        kinds(&found),
        ["missing_export", "retired_partition"],
        "a view is not expected unless exported: {found:#?}"
    );
    let (path, detail, fix) = &of_kind(&found, "retired_partition")[0];
    let day = "warehouse/events/partition=20261201/";
    assert_eq!(path, day);
    assert!(detail.contains("no partition 20261201"), "{detail}");
    assert_eq!(fix, &format!("delete folder {}", uri(&sb, day)));
    let (path, _, fix) = &of_kind(&found, "missing_export")[0];
    assert_eq!(path, "warehouse/t_new/");
    assert!(fix.contains("--include warehouse.t_new"), "{fix}");
    let notes = report["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert_eq!(
        (&notes[0]["kind"], &notes[0]["path"]),
        (&"gone".into(), &"warehouse/t_002/".into())
    );
    assert!(
        notes[0]["detail"].as_str().unwrap().contains("run r1's"),
        "{notes:#?}"
    );

    // --include narrows both sides.
    let (code, report) = verify(&sb, &["--source", &source, "--include", "warehouse.t_*"]);
    assert_eq!(code, 1);
    assert_eq!(report["counts"], serde_json::json!({"missing_export": 1}));
}

/// (d) A committed export whose files and manifest were deleted: its
/// completion record names 11 files, 4 are left. Then the other ways a
/// folder goes wrong: a manifest lost over intact files, a file no manifest
/// names, one of the wrong size, an object in no export folder, a folder
/// no run will commit, and one a run in progress is still writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_folders_are_named_with_their_fix() {
    let sb = Sandbox::new();
    make_dataset(&sb, 3, 100);
    run(&sb, "shard_bytes=150", &plan("r1")).await;
    let record = sb.manifest("r1", "t_001").unwrap();
    assert_eq!(record.files.len(), 11, "the shard size makes 11 files");
    let folder = "warehouse/t_001/run=r1/";
    for file in &record.files[4..] {
        std::fs::remove_file(sb.exports().join(&file.key)).unwrap();
    }
    std::fs::remove_file(sb.exports().join(folder).join("_MANIFEST.json")).unwrap();

    let found = fails(&sb, &[]);
    assert_eq!(kinds(&found), ["missing_file"; 7], "{found:#?}");
    let missing = of_kind(&found, "missing_file");
    let expected: Vec<String> = record.files[4..].iter().map(|f| f.key.clone()).collect();
    let paths: Vec<String> = missing.iter().map(|(p, _, _)| p.clone()).collect();
    assert_eq!(paths, expected);
    let (_, detail, fix) = &missing[0];
    assert!(
        detail.contains("its completion record (its folder has no _MANIFEST.json)"),
        "{detail}"
    );
    assert!(
        fix.starts_with("re-export warehouse.t_001: run the producer with --include warehouse.t_001 and without --only-changed"),
        "{fix}"
    );

    // A manifest lost over intact files: copying the record back fixes it.
    let t2 = "warehouse/t_002/run=r1/";
    std::fs::remove_file(sb.exports().join(t2).join("_MANIFEST.json")).unwrap();
    // A file the manifest does not name, one cut short, and a stray.
    let t3 = sb.manifest("r1", "t_003").unwrap();
    let extra = "warehouse/t_003/run=r1/t_003_000000000099.csv";
    std::fs::write(sb.exports().join(extra), "id,name,age\n1,x,2\n").unwrap();
    let short = &t3.files[0].key;
    let bytes = std::fs::read(sb.exports().join(short)).unwrap();
    std::fs::write(sb.exports().join(short), &bytes[..bytes.len() - 3]).unwrap();
    let stray = "warehouse/t_003/notes.txt";
    std::fs::write(sb.exports().join(stray), "hello").unwrap();
    // A folder of a run that has no record at all, and one of a run that
    // is published but not drained.
    let unknown = "warehouse/t_002/run=r0/";
    std::fs::create_dir_all(sb.exports().join(unknown)).unwrap();
    std::fs::write(
        sb.exports().join(unknown).join("t_002_000000000000.csv"),
        "id\n",
    )
    .unwrap();
    sb.try_produce_plan(&sb.source(""), "work", &plan("r2"))
        .await
        .unwrap();
    let writing = "warehouse/t_003/run=r2/";
    std::fs::create_dir_all(sb.exports().join(writing)).unwrap();
    std::fs::write(
        sb.exports().join(writing).join("t_003_000000000000.csv"),
        "id,name,age\n",
    )
    .unwrap();

    let (code, report) = verify(&sb, &[]);
    assert_eq!(code, 1);
    let found = report["discrepancies"].as_array().unwrap().clone();
    assert_eq!(
        report["counts"],
        serde_json::json!({
            "missing_file": 7, "missing_manifest": 1, "size_mismatch": 1,
            "unlisted_file": 1, "stray_object": 1, "unfinished_export": 1,
        }),
        "{found:#?}"
    );
    let (path, _, fix) = &of_kind(&found, "missing_manifest")[0];
    assert_eq!(path, t2);
    let done = "_bqdrain/runs/r1/done/t_002.json";
    assert_eq!(
        fix,
        &format!(
            "copy {} to {} (the completion record is the manifest)",
            uri(&sb, done),
            uri(&sb, &format!("{t2}_MANIFEST.json"))
        )
    );
    let (path, detail, _) = &of_kind(&found, "size_mismatch")[0];
    assert_eq!(path, short);
    assert!(
        detail.starts_with(&format!(
            "{} bytes, where its _MANIFEST.json",
            bytes.len() - 3
        )),
        "{detail}"
    );
    let (path, _, fix) = &of_kind(&found, "unlisted_file")[0];
    assert_eq!(
        (path.as_str(), fix.clone()),
        (extra, format!("delete object {}", uri(&sb, extra)))
    );
    assert_eq!(of_kind(&found, "stray_object")[0].0, stray);
    let (path, detail, _) = &of_kind(&found, "unfinished_export")[0];
    assert_eq!(path, unknown);
    assert!(
        detail.contains("run r0, which has no run manifest"),
        "{detail}"
    );
    let notes = report["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert_eq!(
        (&notes[0]["kind"], &notes[0]["path"]),
        (&"in_progress".into(), &writing.into())
    );
    assert!(
        notes[0]["detail"]
            .as_str()
            .unwrap()
            .contains("run r2 is still in progress (0 of 4 units settled)"),
        "{notes:#?}"
    );

    // For people: a line per discrepancy, each with its fix.
    let out = Command::new(BIN)
        .args(["verify", "--destination", &sb.destination()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!("missing_file: {}", uri(&sb, &record.files[4].key))),
        "{text}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("; fix: ")).count(),
        12,
        "{text}"
    );
    assert!(text.ends_with(
        "12 discrepancies: 1 unfinished_export, 1 missing_manifest, 7 missing_file, 1 size_mismatch, 1 unlisted_file, 1 stray_object\n"
    ), "{text}");

    // The fix a discrepancy gives works: with the record copied back as
    // the manifest, t_002 holds.
    std::fs::copy(
        sb.exports().join(done),
        sb.exports().join(t2).join("_MANIFEST.json"),
    )
    .unwrap();
    let (_, report) = verify(&sb, &["--include", "t_002"]);
    assert_eq!(
        report["counts"],
        serde_json::json!({"unfinished_export": 1}),
        "{report:#}"
    );
}

/// --deep counts the rows in the files: a shard cut short whose record
/// was forged to its new size passes every listing check, not the count.
/// With --source, a record's row count is compared with the source's only
/// where the source did not change since the export.
/// Every committed export holds its table's definition: a restore reads
/// it. One without it, whole or per partition, is a discrepancy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_without_its_tables_definition_is_a_discrepancy() {
    let sb = Sandbox::new();
    make_dataset(&sb, 2, 10);
    run(&sb, "", &split(plan("r1"))).await;
    verifies(&sb, &[]);
    let whole = "warehouse/t_001/run=r1/_TABLE.json";
    let partition = "warehouse/events/partition=20261202/run=r1/_TABLE.json";
    for key in [whole, partition] {
        std::fs::remove_file(sb.exports().join(key)).unwrap();
    }

    let found = fails(&sb, &[]);
    assert_eq!(kinds(&found), ["missing_definition"; 2], "{found:#?}");
    let missing = of_kind(&found, "missing_definition");
    let paths: Vec<&str> = missing.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(paths, [partition, whole]);
    let (_, detail, fix) = &missing[1];
    assert!(
        detail.contains("run r1's export of warehouse.t_001 has no _TABLE.json"),
        "{detail}"
    );
    assert!(
        fix.starts_with(
            "re-export warehouse.t_001: run the producer with --include warehouse.t_001"
        ),
        "{fix}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_records_are_caught_by_counting_rows() {
    let sb = Sandbox::new();
    make_dataset(&sb, 3, 100);
    let only_changed = RunPlan {
        only_changed: true,
        ..plan("r1")
    };
    run(&sb, "shard_bytes=500", &only_changed).await;

    let folder = "warehouse/t_001/run=r1/";
    let record = sb.manifest("r1", "t_001").unwrap();
    let shard = &record.files[1].key;
    let text = std::fs::read_to_string(sb.exports().join(shard)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = format!("{}\n", lines[..lines.len() - 2].join("\n"));
    std::fs::write(sb.exports().join(shard), &cut).unwrap();
    forge(&sb, "r1", "t_001", folder, |m| {
        m.files[1].bytes = cut.len() as u64;
        m.bytes = m.files.iter().map(|f| f.bytes).sum();
    });
    verifies(&sb, &[]);
    let found = fails(&sb, &["--deep"]);
    assert_eq!(kinds(&found), ["file_row_count_mismatch"], "{found:#?}");
    let (path, detail, _) = &of_kind(&found, "file_row_count_mismatch")[0];
    assert_eq!(path, folder);
    assert_eq!(
        detail,
        "run r1's export of warehouse.t_001 holds 98 rows in its files; its record says 100"
    );

    // A record's count forged on an unchanged table; another table
    // changed since its export, which is no discrepancy.
    forge(&sb, "r1", "t_002", "warehouse/t_002/run=r1/", |m| {
        m.rows = Some(99)
    });
    dataset::execute(&sb.warehouse(), "DELETE FROM t_003 WHERE id = 1;").unwrap();
    let source = sb.source("");
    let (code, report) = verify(&sb, &["--source", &source, "--include", "t_00[23]"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        report["counts"],
        serde_json::json!({"row_count_mismatch": 1}),
        "{report:#}"
    );
    assert_eq!(report["rows_compared"], 1, "t_003 changed: not compared");
    let found = report["discrepancies"].as_array().unwrap();
    assert_eq!(found[0]["path"], "warehouse/t_002/run=r1/");
    assert!(
        found[0]["detail"]
            .as_str()
            .unwrap()
            .contains("says 99 rows; the source has 100, and has not changed since"),
        "{found:#?}"
    );
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let sb = Sandbox::new();
    for (args, flag) in [
        (
            vec!["--include", "t_[", "--destination", "file:///tmp"],
            "--include",
        ),
        (vec!["--destination", "s3://bucket"], "--destination"),
        (
            vec![
                "--destination",
                "file:///tmp",
                "--source",
                "sqlite:///no/such.db",
            ],
            "--source",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("verify")
            .args(&args)
            .current_dir(sb.dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(&format!("error: {flag}:")), "{stderr}");
    }
}
