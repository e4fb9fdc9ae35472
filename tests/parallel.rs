//! The two cases the naive "task N exports table N" design gets wrong: more
//! tasks than tables, and more tables than tasks.

mod common;

use std::time::Duration;

use common::*;

/// With `watch`, workers are told the run up front (`--run-id`), so even
/// those that get no message stop as soon as the run is complete.
async fn drain_with(tables: usize, workers: usize, watch: bool) {
    let sb = Sandbox::new();
    let names = sb.make_tables(tables, 1000);
    let run = sb.produce("", "r1").await;
    assert_eq!(run.published, tables);
    let sub = sb.subscription("");
    let destination = sb.destination();
    let mut args = vec!["--concurrency", "2"];
    if watch {
        args.extend(["--run-id", "r1", "--destination", &destination]);
    }
    let children: Vec<_> = (0..workers).map(|_| sb.spawn_worker(&sub, &args)).collect();
    let mut acked = 0;
    for child in children {
        let (status, json) = finish(child, Duration::from_secs(120));
        assert!(status.success(), "worker failed: {status}\n{}", sb.logs());
        assert_eq!(json["dead_lettered"], 0);
        // A worker that got a message stops when the run is complete; one
        // that got none knows of no run and stops on the idle timeout.
        let expected_exit = if json["received"] == 0 && !watch {
            "idle"
        } else {
            "drained"
        };
        assert_eq!(json["exit"], expected_exit, "{json}");
        acked += json["acked"].as_u64().unwrap();
    }
    assert_eq!(
        acked, tables as u64,
        "each message acked once across all workers"
    );
    for name in &names {
        assert_exported(&sb, "r1", name, 1000);
    }
    let done = std::fs::read_dir(sb.exports().join("_bqdrain/runs/r1/done"))
        .unwrap()
        .count();
    assert_eq!(done, tables, "one completion record per table");
    assert_eq!(sb.depth("work").await, 0);
    assert_eq!(sb.depth("dead").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_tables_thirty_workers() {
    drain_with(10, 30, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_tables_ten_workers() {
    drain_with(30, 10, false).await;
}
