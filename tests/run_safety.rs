//! Runs as an operator meets them after a while: run ids used again,
//! resumed runs, runs that overlap, and several datasets sharing one
//! destination. None of them may lose or duplicate an export.

mod common;

use std::time::Duration;

use bqdrain::adapters::local::dataset::{self, Fault};
use bqdrain::contract::message::WorkMessage;
use bqdrain::engine::producer::{ProduceReport, RunId};
use bqdrain::error::ConfigError;
use common::*;

/// Runs the producer on the sandbox's dataset and work queue.
async fn produce_run(sb: &Sandbox, run: RunId) -> anyhow::Result<ProduceReport> {
    sb.try_produce(&sb.source(""), "work", run).await
}

fn given(id: &str, resume: bool) -> RunId {
    RunId::Given {
        id: id.into(),
        resume,
    }
}

/// Drains the work queue with one worker that must exit 0.
fn drain(sb: &Sandbox) -> serde_json::Value {
    let worker = sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "1"]);
    let (status, json) = finish(worker, Duration::from_secs(60));
    assert!(status.success(), "worker failed: {status}\n{}", sb.logs());
    json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_run_id_is_refused_and_the_newest_export_survives() {
    let sb = Sandbox::new();
    sb.make_tables(1, 200);
    produce_run(&sb, given("run-a", false)).await.unwrap();
    drain(&sb);
    produce_run(&sb, given("run-b", false)).await.unwrap();
    drain(&sb);
    assert_exported(&sb, "run-b", "t_001", 200);

    let refused = produce_run(&sb, given("run-a", false)).await;
    let err = refused.expect_err("a run id that has a manifest is used once");
    let config = err
        .downcast_ref::<ConfigError>()
        .unwrap_or_else(|| panic!("not a configuration error: {err:#}"));
    assert_eq!(config.flag, "--run-id");
    assert!(config.fix.contains("--resume"), "{config}");
    assert_eq!(sb.depth("work").await, 0, "nothing was published");

    // Resuming it publishes nothing: its one unit has a completion record.
    let resumed = produce_run(&sb, given("run-a", true)).await.unwrap();
    assert_eq!((resumed.published, resumed.resumed), (0, true));
    drain(&sb);
    assert_exported(&sb, "run-b", "t_001", 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_of_a_replaced_export_does_not_bring_its_manifest_back() {
    let sb = Sandbox::new();
    sb.make_tables(1, 200);
    produce_run(&sb, given("run-a", false)).await.unwrap();
    let first = bqdrain::adapters::local::queue::peek(&sb.queue("work"))
        .await
        .unwrap();
    drain(&sb);
    produce_run(&sb, given("run-b", false)).await.unwrap();
    drain(&sb);
    // Run A's message delivered once more, after run B replaced its export.
    sb.publish_raw("work", first).await;
    let json = drain(&sb);
    assert_eq!(json["acked"], 1, "the duplicate is acked");
    assert_exported(&sb, "run-b", "t_001", 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_run_publishes_only_its_unfinished_units() {
    let sb = Sandbox::new();
    sb.make_tables(3, 100);
    sb.fault("t_002", Fault::Permanent);
    produce_run(&sb, given("r1", false)).await.unwrap();
    let json = drain(&sb);
    assert_eq!(json["dead_lettered"], 1, "{}", sb.logs());
    assert_eq!(sb.unit_state("r1", "t_002"), "dead_lettered");

    dataset::clear_fault(&sb.warehouse(), "t_002").unwrap();
    let resumed = produce_run(&sb, given("r1", true)).await.unwrap();
    assert_eq!((resumed.published, resumed.pending), (1, 1));
    let published = bqdrain::adapters::local::queue::peek(&sb.queue("work"))
        .await
        .unwrap();
    let msg = WorkMessage::decode(&published[0].data).unwrap();
    assert_eq!(msg.source.table, "t_002");
    drain(&sb);
    for table in ["t_001", "t_002", "t_003"] {
        assert_exported(&sb, "r1", table, 100);
    }
    assert_eq!(sb.status("r1", &[])["totals"]["pending"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_cloud_run_execution_continues_its_run() {
    let sb = Sandbox::new();
    sb.make_tables(4, 10);
    let execution = RunId::Execution("bqdrain-producer-x7k2p".into());
    let first = produce_run(&sb, execution.clone()).await.unwrap();
    assert_eq!(first.run_id, "bqdrain-producer-x7k2p");
    assert_eq!(first.published, 4);
    // The execution is retried (its launch failed, say) after publishing.
    let retried = produce_run(&sb, execution).await.unwrap();
    assert_eq!(retried.run_id, first.run_id);
    assert_eq!((retried.published, retried.pending), (0, 4));
    assert_eq!(sb.depth("work").await, 4, "no second run, no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_run_still_exporting_is_superseded_not_broken() {
    let sb = Sandbox::new();
    sb.make_tables(1, 1000);
    sb.slow("t_001", 300);
    sb.produce_to("old", "shard_bytes=4000", "r1").await;
    let old = format!(
        "queue://{}?dead_letter=dead#old",
        sb.path("queue.db").display()
    );
    let slow_worker = sb.spawn_worker(&old, &["--idle-timeout", "1"]);
    wait_until(Duration::from_secs(30), "run 1's first shard", || {
        sb.files_of("t_001").iter().any(|f| f.contains("run=r1/"))
    });

    // A newer run exports and commits the same table meanwhile.
    dataset::clear_fault(&sb.warehouse(), "t_001").unwrap();
    sb.produce_to("work", "shard_bytes=4000", "r2").await;
    drain(&sb);
    assert!(
        sb.files_of("t_001").iter().any(|f| f.contains("run=r1/")),
        "the newer run left the older run's unfinished export alone"
    );

    let (status, json) = finish(slow_worker, Duration::from_secs(60));
    assert!(status.success(), "{}", sb.logs());
    assert_eq!(
        (json["acked"].as_u64(), json["nacked"].as_u64()),
        (Some(1), Some(0)),
        "{json}\n{}",
        sb.logs()
    );
    assert!(
        !sb.logs().contains("files but"),
        "the older run's export was never cut short\n{}",
        sb.logs()
    );
    assert_eq!(sb.unit_state("r1", "t_001"), "superseded");
    assert_eq!(sb.status("r1", &[])["units"][0]["record"]["by_run"], "r2");
    assert_exported(&sb, "r2", "t_001", 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_datasets_with_the_same_table_names_share_a_destination() {
    let sb = Sandbox::new();
    sb.make_tables(1, 100);
    let other = sb.path("other.db");
    dataset::create_dummy_tables(&other, &["t_001".into()], 50).unwrap();
    produce_run(&sb, given("r1", false)).await.unwrap();
    drain(&sb);
    let other_source = format!("sqlite://{}", other.display());
    sb.try_produce(&other_source, "work", given("r2", false))
        .await
        .unwrap();
    drain(&sb);
    assert_exported(&sb, "r1", "t_001", 100);
    let theirs = "other/t_001/run=r2/t_001_000000000000.csv".to_string();
    assert_eq!(
        csv_rows(&sb.exports(), &[theirs]),
        50,
        "the other dataset's t_001"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_cannot_be_opened_now_is_retried_not_dead_lettered() {
    let sb = Sandbox::new();
    sb.make_tables(1, 10);
    produce_run(&sb, given("r1", false)).await.unwrap();
    // The same unit, for a Cloud Storage destination this worker cannot
    // open: its credentials are of a kind the client does not support.
    let mut envelope = bqdrain::adapters::local::queue::peek(&sb.queue("work"))
        .await
        .unwrap()[0]
        .clone();
    let mut msg = WorkMessage::decode(&envelope.data).unwrap();
    msg.destination = "gs://bqdrain-test-bucket/exports".into();
    envelope.data = serde_json::to_vec(&msg).unwrap();
    let sub = sb.subscription("max_attempts=2");
    let drained = finish(
        sb.spawn_worker(&sub, &["--idle-timeout", "1"]),
        Duration::from_secs(60),
    );
    assert!(drained.0.success());
    sb.publish_raw("work", vec![envelope]).await;
    let worker = spawn_worker(
        &sb.path("logs"),
        &[
            "--subscription",
            &sub,
            "--idle-timeout",
            "1",
            "--max-retries",
            "0",
        ],
        vec![(
            "GOOGLE_APPLICATION_CREDENTIALS_JSON",
            r#"{"type":"bqdrain_unsupported"}"#.to_string(),
        )],
    );
    let (status, json) = finish(worker, Duration::from_secs(60));
    assert!(status.success(), "{}", sb.logs());
    assert_eq!(
        (json["nacked"].as_u64(), json["dead_lettered"].as_u64()),
        (Some(1), Some(1)),
        "retried once, dead-lettered on its last attempt\n{json}\n{}",
        sb.logs()
    );
    assert!(
        sb.logs().contains("gave up after 2 delivery attempts"),
        "{}",
        sb.logs()
    );
}
