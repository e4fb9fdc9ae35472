//! What lands in the destination: duplicates are harmless, a failed
//! re-export keeps the previous export, and a new run replaces the old one
//! without leaving stale shards.

mod common;

use std::time::Duration;

use bqdrain::adapters::local::dataset::Fault;
use bqdrain::adapters::local::queue::peek;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_exported_concurrently_commit_once() {
    let sb = Sandbox::new();
    sb.make_tables(1, 2000);
    // Slow shards make the two exports of the same table overlap.
    sb.slow("t_001", 200);
    sb.produce("shard_bytes=8000", "r1").await;
    let original = peek(&sb.queue("work")).await.unwrap();
    sb.publish_raw("work", vec![original[0].clone(), original[0].clone()])
        .await;
    assert_eq!(sb.depth("work").await, 3, "the same unit three times");

    let sub = sb.subscription("");
    let workers: Vec<_> = (0..3)
        .map(|_| sb.spawn_worker(&sub, &["--concurrency", "1"]))
        .collect();
    let mut acked = 0;
    for w in workers {
        let (status, json) = finish(w, Duration::from_secs(60));
        assert!(status.success(), "{}", sb.logs());
        acked += json["acked"].as_u64().unwrap();
    }
    assert_eq!(acked, 3, "every copy acked\n{}", sb.logs());
    assert_exported(&sb, "r1", "t_001", 2000);
    let done = std::fs::read_dir(sb.exports().join("_bqdrain/runs/r1/done"))
        .unwrap()
        .count();
    assert_eq!(done, 1);
    let logs = sb.logs();
    assert_eq!(
        logs.matches("\"message\":\"exported\"").count(),
        1,
        "one export committed\n{logs}"
    );
    assert_eq!(sb.depth("work").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reexport_keeps_the_previous_export() {
    let sb = Sandbox::new();
    sb.make_tables(2, 300);
    sb.produce("", "r1").await;
    let sub = sb.subscription("");
    let (status, _) = finish(sb.spawn_worker(&sub, &[]), Duration::from_secs(60));
    assert!(status.success());
    let before = assert_exported(&sb, "r1", "t_001", 300);

    sb.fault("t_001", Fault::Permanent);
    sb.produce("", "r2").await;
    let (status, json) = finish(sb.spawn_worker(&sub, &[]), Duration::from_secs(60));
    assert!(status.success());
    assert_eq!(
        (json["acked"].as_u64(), json["dead_lettered"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(sb.dead_record("r2", "t_001").is_some(), "{}", sb.logs());
    assert_eq!(
        assert_exported(&sb, "r1", "t_001", 300),
        before,
        "run 1's export of t_001 is untouched"
    );
    assert_exported(&sb, "r2", "t_002", 300);
    assert!(
        sb.files_of("t_002").iter().all(|f| f.contains("run=r2/")),
        "t_002's old export was replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_run_replaces_the_old_export_even_with_fewer_files() {
    let sb = Sandbox::new();
    sb.make_tables(1, 1000);
    sb.produce("shard_bytes=2000", "r1").await;
    let sub = sb.subscription("");
    let (status, _) = finish(sb.spawn_worker(&sub, &[]), Duration::from_secs(60));
    assert!(status.success());
    let first = assert_exported(&sb, "r1", "t_001", 1000);
    assert!(first.files.len() > 5);

    // A partial export of run 2 left behind by a crash must not count either.
    let stale = sb
        .exports()
        .join(sb.export_folder("t_001", "r2"))
        .join("t_001_000000000099.csv");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, "id,name,age\n1,x,1\n").unwrap();

    sb.produce("", "r2").await;
    let (status, _) = finish(sb.spawn_worker(&sub, &[]), Duration::from_secs(60));
    assert!(status.success());
    let second = assert_exported(&sb, "r2", "t_001", 1000);
    assert_eq!(second.files.len(), 1);
    assert!(!stale.exists());
    // assert_exported checked the table folder holds run 2's files only.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_outliving_its_run_records_is_still_replaced() {
    let sb = Sandbox::new();
    sb.make_tables(1, 100);
    sb.produce("", "r1").await;
    let sub = sb.subscription("");
    let (status, _) = finish(sb.spawn_worker(&sub, &[]), Duration::from_secs(60));
    assert!(status.success());
    assert_exported(&sb, "r1", "t_001", 100);
    // Run records expire (the module's lifecycle rule) while an export that
    // `--only-changed` keeps current stays: its folder's manifest still
    // says it was committed, and when.
    std::fs::remove_dir_all(sb.exports().join("_bqdrain/runs/r1")).unwrap();

    sb.produce("", "r2").await;
    let (status, _) = finish(sb.spawn_worker(&sub, &[]), Duration::from_secs(60));
    assert!(status.success(), "{}", sb.logs());
    // assert_exported checks the table folder holds run 2's export only.
    assert_exported(&sb, "r2", "t_001", 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_run_finishing_late_does_not_replace_a_newer_export() {
    let sb = Sandbox::new();
    sb.make_tables(1, 200);
    sb.produce_to("old", "", "r1").await;
    sb.produce("", "r2").await;
    // The newer run commits first, then the older one finishes late.
    let (status, _) = finish(
        sb.spawn_worker(&sb.subscription(""), &[]),
        Duration::from_secs(60),
    );
    assert!(status.success());
    let late = format!(
        "queue://{}?dead_letter=dead#old",
        sb.path("queue.db").display()
    );
    let (status, json) = finish(sb.spawn_worker(&late, &[]), Duration::from_secs(60));
    assert!(status.success());
    assert_eq!(json["acked"], 1);
    assert_eq!(
        sb.unit_state("r1", "t_001"),
        "superseded",
        "run 1 records that run 2's export stands"
    );
    assert_exported(&sb, "r2", "t_001", 200);
}

/// Item 13 of issue 18: temporary files piled up in `DEST/.bqdrain-tmp/`
/// after a killed write (a 49 MB `.tmp` stayed after a successful
/// re-export). What a dead writer left goes; a live writer's file stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writers_temporary_file_is_cleaned_up() {
    let sb = Sandbox::new();
    sb.make_tables(1, 10);
    sb.produce("", "r1").await;
    let staging = sb.exports().join(".bqdrain-tmp");
    std::fs::create_dir_all(&staging).unwrap();
    // A killed writer leaves its file and, with its process, its lock.
    let dead = staging.join("0123456789abcdef.tmp");
    std::fs::write(&dead, vec![b'x'; 4096]).unwrap();
    let live = staging.join("fedcba9876543210.tmp");
    let held = std::fs::File::create(&live).unwrap();
    held.lock().unwrap();

    let worker = sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "1"]);
    let (status, _) = finish(worker, Duration::from_secs(60));
    assert!(status.success(), "{}", sb.logs());
    assert_exported(&sb, "r1", "t_001", 10);
    assert!(!dead.exists(), "the dead writer's file is still there");
    assert!(live.exists(), "a live writer's file was deleted");
    drop(held);
}
