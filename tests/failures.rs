//! Crashes, signals, poison messages and tables that keep failing: nothing
//! is lost, nothing is acked that was not exported or dead-lettered.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use bqdrain::adapters::local::dataset::{self, Fault};
use bqdrain::adapters::local::queue::peek;
use bqdrain::contract::message::Envelope;
use common::*;

fn first_shard_written(sb: &Sandbox, table: &str, run: &str) -> bool {
    sb.files_of(table)
        .iter()
        .any(|f| f.starts_with(&format!("{}{table}_0", sb.export_folder(table, run))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_export_is_redelivered_and_exported_once() {
    let sb = Sandbox::new();
    sb.make_tables(1, 3000);
    // About 8 shards of ~16 KiB, each delayed: the export takes seconds,
    // longer than the 2 s ack deadline, so leases must be extended too.
    sb.slow("t_001", 400);
    sb.produce("shard_bytes=6000", "r1").await;
    let sub = sb.subscription("ack_deadline=2");

    let victim = sb.spawn_worker(&sub, &[]);
    wait_until(Duration::from_secs(20), "the first shard", || {
        first_shard_written(&sb, "t_001", "r1")
    });
    let mut victim = victim;
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert!(
        sb.manifest("r1", "t_001").is_none(),
        "killed before it could commit"
    );

    let survivor = sb.spawn_worker(&sub, &[]);
    let (status, json) = finish(survivor, Duration::from_secs(60));
    assert!(status.success(), "{}", sb.logs());
    assert_eq!(json["acked"], 1);
    assert_eq!(
        json["received"], 1,
        "its lease was extended: no redelivery during the long export"
    );
    let m = assert_exported(&sb, "r1", "t_001", 3000);
    assert_eq!(m.delivery_attempt, 2, "redelivered after the lapsed lease");
    assert!(
        m.files.len() >= 5,
        "the export is sharded: {} files",
        m.files.len()
    );
    assert_eq!(sb.depth("work").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_their_reason() {
    let sb = Sandbox::new();
    sb.make_tables(1, 10);
    let run = sb.produce("", "r1").await;
    assert_eq!(run.published, 1);
    let valid = peek(&sb.queue("work")).await.unwrap().remove(0);
    let mut future: serde_json::Value = serde_json::from_slice(&valid.data).unwrap();
    future["v"] = 99.into();
    let attrs = BTreeMap::from([("run_id".to_string(), "r1".to_string())]);
    sb.publish_raw(
        "work",
        vec![
            Envelope {
                data: b"{not json".to_vec(),
                attributes: attrs.clone(),
            },
            Envelope {
                data: serde_json::to_vec(&future).unwrap(),
                attributes: attrs,
            },
        ],
    )
    .await;

    let (status, json) = finish(
        sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "2"]),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{}", sb.logs());
    assert_eq!(json["acked"], 1);
    assert_eq!(json["dead_lettered"], 2);
    assert_eq!(json["nacked"], 0, "no pointless redeliveries");
    let dead = peek(&sb.queue("dead")).await.unwrap();
    let mut reasons: Vec<_> = dead
        .iter()
        .map(|e| e.attributes["bqdrain_error_reason"].as_str())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["malformed", "unsupportedVersion"]);
    for e in &dead {
        assert_eq!(
            e.attributes["bqdrain_delivery_attempt"], "1",
            "dead-lettered on the first delivery"
        );
        assert!(!e.attributes["bqdrain_error_message"].is_empty());
    }
    assert!(
        dead.iter().any(|e| e.data == b"{not json"),
        "the body is kept as it was"
    );
    assert_eq!(sb.depth("work").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_always_fails_is_dead_lettered_then_replayed() {
    let sb = Sandbox::new();
    sb.make_tables(3, 100);
    sb.fault("t_002", Fault::Transient { times: None });
    sb.produce("", "r1").await;
    let sub = sb.subscription("max_attempts=3");
    let retries = ["--max-retries", "1", "--retry-delay", "0.01"];

    let (status, json) = finish(sb.spawn_worker(&sub, &retries), Duration::from_secs(60));
    assert!(status.success(), "{}", sb.logs());
    assert_eq!(
        json["exit"], "drained",
        "a dead-lettered unit settles the run"
    );
    assert_eq!(json["nacked"], 2, "attempts 1 and 2 go back to the queue");
    assert_eq!(json["dead_lettered"], 1, "attempt 3 is the last");
    let dead = peek(&sb.queue("dead")).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attributes["table"], "t_002");
    assert_eq!(dead[0].attributes["bqdrain_error_reason"], "backendError");
    assert_eq!(dead[0].attributes["bqdrain_delivery_attempt"], "3");
    let record = sb
        .dead_record("r1", "t_002")
        .expect("a dead-letter record for status");
    assert!(record["message"]
        .as_str()
        .unwrap()
        .contains("gave up after 3 delivery attempts"));

    let report = sb.status("r1", &[]);
    assert_eq!(
        report["totals"],
        serde_json::json!({"expected": 3, "exported": 2, "dead_lettered": 1, "superseded": 0, "pending": 0})
    );

    // The cause is fixed; replay a dry run first, then for real.
    dataset::clear_fault(&sb.warehouse(), "t_002").unwrap();
    let replay = |run_id: &str, extra: &[&str]| {
        json_of(&sb.replay(&[&["--run-id", run_id, "--table", "t_*"][..], extra].concat()))
    };
    let dry = replay("r1", &["--dry-run"]);
    assert_eq!(
        (dry["matched"].as_u64(), dry["replayed"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(sb.depth("dead").await, 1, "a dry run moves nothing");
    let other_run = replay("r2", &[]);
    assert_eq!(other_run["matched"], 0, "the run filter holds");
    let real = replay("r1", &[]);
    assert_eq!(real["replayed"], 1);
    assert_eq!(
        sb.depth("dead").await,
        0,
        "the dead-letter queue ends empty"
    );
    let replayed = peek(&sb.queue("work")).await.unwrap();
    assert!(
        !replayed[0].attributes.contains_key("bqdrain_error_reason"),
        "replayed messages are clean"
    );

    let (status, json) = finish(sb.spawn_worker(&sub, &retries), Duration::from_secs(60));
    assert!(status.success());
    assert_eq!(json["acked"], 1);
    assert_exported(&sb, "r1", "t_002", 100);
    assert!(sb.dead_record("r1", "t_002").is_none());
}

fn sigterm(pid: u32) {
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_back_unfinished_work_within_the_grace_period() {
    let sb = Sandbox::new();
    sb.make_tables(2, 2000);
    for t in ["t_001", "t_002"] {
        sb.slow(t, 1500);
    }
    sb.produce("shard_bytes=4000", "r1").await;
    let sub = sb.subscription("");
    let worker = sb.spawn_worker(&sub, &["--concurrency", "2", "--grace-period", "1"]);
    wait_until(Duration::from_secs(20), "both exports to start", || {
        first_shard_written(&sb, "t_001", "r1") && first_shard_written(&sb, "t_002", "r1")
    });
    let pid = worker.id();
    let signalled = Instant::now();
    sigterm(pid);
    let (status, json) = finish(worker, Duration::from_secs(10));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(143), "128 + SIGTERM");
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM, grace is 1 s"
    );
    assert_eq!(json["exit"], "signal");
    assert_eq!(json["nacked"], 2, "both in-flight messages given back");
    assert_eq!(json["acked"], 0);
    assert_eq!(sb.depth("work").await, 2, "nothing lost");

    // Another task picks the work up at once (nack means redeliver now).
    for t in ["t_001", "t_002"] {
        dataset::clear_fault(&sb.warehouse(), t).unwrap();
    }
    let (status, json) = finish(
        sb.spawn_worker(&sub, &["--concurrency", "2"]),
        Duration::from_secs(60),
    );
    assert!(status.success(), "{}", sb.logs());
    assert_eq!(json["acked"], 2);
    for t in ["t_001", "t_002"] {
        assert_exported(&sb, "r1", t, 2000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_short_work_finish() {
    let sb = Sandbox::new();
    sb.make_tables(1, 500);
    sb.slow("t_001", 400);
    sb.produce("shard_bytes=3000", "r1").await;
    let worker = sb.spawn_worker(&sb.subscription(""), &["--grace-period", "10"]);
    wait_until(Duration::from_secs(20), "the first shard", || {
        first_shard_written(&sb, "t_001", "r1")
    });
    sigterm(worker.id());
    let (status, json) = finish(worker, Duration::from_secs(15));
    assert_eq!(status.code(), Some(143));
    assert_eq!(
        json["acked"], 1,
        "in-flight export finished within the grace period"
    );
    assert_exported(&sb, "r1", "t_001", 500);
    assert_eq!(sb.depth("work").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_out_the_retry_backoff_of_its_run() {
    let sb = Sandbox::new();
    sb.make_tables(1, 100);
    sb.fault("t_001", Fault::Transient { times: Some(1) });
    sb.produce("", "r1").await;
    // The failed first attempt comes back only after 4 s, well past the
    // worker's idle timeout of 1 s.
    let sub = sb.subscription("ack_deadline=1&min_backoff=4&max_backoff=4");
    let worker = sb.spawn_worker(&sub, &["--max-retries", "0", "--idle-timeout", "1"]);
    let (status, json) = finish(worker, Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", sb.logs());
    assert_eq!(json["exit"], "drained", "{json}\n{}", sb.logs());
    assert_eq!(
        (json["nacked"].as_u64(), json["acked"].as_u64()),
        (Some(1), Some(1))
    );
    assert_exported(&sb, "r1", "t_001", 100);
    assert_eq!(sb.depth("work").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_gives_up_on_an_incomplete_run_fails() {
    let sb = Sandbox::new();
    sb.make_tables(2, 10);
    // The run's messages sit in a queue this worker does not drain.
    sb.produce_to("elsewhere", "", "r1").await;
    let sub = sb.subscription("ack_deadline=1");
    let destination = sb.destination();
    let worker = sb.spawn_worker(
        &sub,
        &[
            "--run-id",
            "r1",
            "--destination",
            &destination,
            "--idle-timeout",
            "1",
        ],
    );
    let (status, json) = finish(worker, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{json}\n{}", sb.logs());
    assert_eq!(json["exit"], "incomplete", "{json}");
    let logs = sb.logs();
    assert!(
        logs.contains("gave up waiting for run r1") && logs.contains("\"pending\":2"),
        "the log names the run and its pending units\n{logs}"
    );
    assert_eq!(sb.depth("elsewhere").await, 2, "nothing taken");
}

/// A long export does not fail the tasks that finished their share: an
/// idle task whose run is incomplete exits 0 once every unit left is held
/// by a live task (its heartbeat is fresh). Before, it waited out its
/// patience and exited 1 `incomplete` while the other task was exporting,
/// and Cloud Run counted the execution as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_task_exits_0_while_another_live_task_exports_the_rest() {
    let sb = Sandbox::new();
    sb.make_tables(4, 10);
    sb.slow("t_001", 8000);
    sb.produce("", "r1").await;
    let sub = sb.subscription("ack_deadline=2&min_backoff=1&max_backoff=2");
    let args = ["--idle-timeout", "1", "--heartbeat", "1"];
    let slow = sb.spawn_worker(&sub, &[&args[..], &["--concurrency", "1"]].concat());
    wait_until(Duration::from_secs(30), "the slow unit taken", || {
        sb.logs().contains("worker started")
    });
    std::thread::sleep(Duration::from_millis(500));
    let quick = sb.spawn_worker(&sub, &args);
    let (status, json) = finish(quick, Duration::from_secs(60));
    assert!(status.success(), "{json}\n{}", sb.logs());
    assert_eq!(json["exit"], "handed_over", "{json}\n{}", sb.logs());
    assert_eq!(json["acked"], 3, "{json}");
    assert!(
        sb.manifest("r1", "t_001").is_none(),
        "it left while the slow unit was still exporting"
    );
    let (status, json) = finish(slow, Duration::from_secs(60));
    assert!(status.success(), "{json}\n{}", sb.logs());
    assert_eq!(json["exit"], "drained", "{json}");
    for table in ["t_001", "t_002", "t_003", "t_004"] {
        assert_exported(&sb, "r1", table, 10);
    }
    let active = sb.exports().join("_bqdrain/runs/r1/active");
    let left = std::fs::read_dir(&active).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the heartbeat is deleted when the export ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reconciles_dead_letters_without_consuming_them() {
    let sb = Sandbox::new();
    sb.make_tables(2, 10);
    // As the subscription's policy leaves them: in the dead-letter queue,
    // with no record (their tasks were killed on every attempt).
    sb.produce_to("dead", "", "r1").await;
    assert_eq!(sb.status("r1", &[])["totals"]["pending"], 2);
    let after = sb.status("r1", &["--reconcile", &sb.queue("dead")]);
    assert_eq!(
        after["totals"],
        serde_json::json!({"expected": 2, "exported": 0, "dead_lettered": 2, "superseded": 0, "pending": 0})
    );
    let record = sb.dead_record("r1", "t_001").unwrap();
    assert_eq!(record["reason"], "maxDeliveryAttempts");
    assert_eq!(sb.depth("dead").await, 2, "left in the queue, for replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_finds_the_matching_few_behind_many_held_others() {
    let sb = Sandbox::new();
    let dead_letter = |run: &str, i: usize| Envelope {
        data: format!("{run}-{i}").into_bytes(),
        attributes: BTreeMap::from([
            ("run_id".to_string(), run.to_string()),
            ("table".to_string(), format!("t_{i:03}")),
        ]),
    };
    let mut letters: Vec<Envelope> = (0..150).map(|i| dead_letter("other", i)).collect();
    letters.extend((0..10).map(|i| dead_letter("r1", i)));
    sb.publish_raw("dead", letters).await;
    let report = json_of(&sb.replay(&["--run-id", "r1"]));
    assert_eq!(
        (report["replayed"].as_u64(), report["left"].as_u64()),
        (Some(10), Some(150)),
        "{report}"
    );
    assert_eq!(sb.depth("work").await, 10);
    assert_eq!(sb.depth("dead").await, 150);
}

/// Issue 18, item 5: a queue that cannot be pulled from (its file locked by
/// another process) is a failure, not an idle queue: the worker exits 1
/// `queue_failed`, so Cloud Run retries the task, and takes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_queue_fails_the_worker_instead_of_idling() {
    let sb = Sandbox::new();
    sb.make_tables(5, 5);
    sb.produce("", "r1").await;
    let lock = rusqlite::Connection::open(sb.path("queue.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let worker = sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "1"]);
    let (status, json) = finish(worker, Duration::from_secs(120));
    lock.execute_batch("ROLLBACK").unwrap();
    assert_eq!(status.code(), Some(1), "{json}\n{}", sb.logs());
    assert_eq!(json["exit"], "queue_failed", "{json}");
    assert!(sb.logs().contains("database is locked"), "{}", sb.logs());
    assert_eq!(sb.depth("work").await, 5, "nothing taken");
}
