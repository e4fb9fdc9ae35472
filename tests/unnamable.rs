//! Units whose names no file can carry (issue 18, items 3 and 4): `..`, a
//! slash, or longer than a file name may be. A worker cannot export them,
//! and says so once: dead-lettered on the first delivery with a record that
//! is always writable, so the run completes instead of staying pending for
//! ever.

mod common;

use std::time::Duration;

use bqdrain::adapters::local::dataset;
use bqdrain::adapters::local::queue::peek;
use bqdrain::contract::message::Envelope;
use common::*;

/// Adds a unit named `table` to run `run_id` as an earlier producer
/// planned it (its manifest lists it) and publishes its message to `queue`,
/// made from the first message there.
async fn add_unit(sb: &Sandbox, queue: &str, run_id: &str, table: &str) {
    let manifest_path = sb
        .exports()
        .join(format!("_bqdrain/runs/{run_id}/manifest.json"));
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let mut unit = manifest["units"][0].clone();
    unit["unit"] = table.into();
    manifest["units"].as_array_mut().unwrap().push(unit);
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();

    let first = peek(&sb.queue(queue)).await.unwrap().remove(0);
    let mut body: serde_json::Value = serde_json::from_slice(&first.data).unwrap();
    body["source"]["table"] = table.into();
    let mut attributes = first.attributes.clone();
    attributes.insert("table".into(), table.into());
    sb.publish_raw(
        queue,
        vec![Envelope {
            data: serde_json::to_vec(&body).unwrap(),
            attributes,
        }],
    )
    .await;
}

/// Drains run r1 holding t_001 and a unit named after each of `tables`
/// (made in the dataset when `exist`); the worker must finish it with exit
/// 0 and each of `tables` dead-lettered on its first delivery, with its
/// reason.
async fn each_is_dead_lettered_at_once(tables: &[String], exist: bool, reason: &str) {
    let sb = Sandbox::new();
    sb.make_tables(1, 5);
    sb.produce("", "r1").await;
    if exist {
        dataset::create_dummy_tables(&sb.warehouse(), tables, 5).unwrap();
    }
    for table in tables {
        add_unit(&sb, "work", "r1", table).await;
    }
    let sub = sb.subscription("ack_deadline=1&max_attempts=5");
    let worker = sb.spawn_worker(&sub, &["--idle-timeout", "2", "--retry-delay", "0"]);
    let (status, json) = finish(worker, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{json}\n{}", sb.logs());
    assert_eq!(json["dead_lettered"], tables.len(), "{json}");
    assert_eq!(json["nacked"], 0, "nothing retried: {json}");
    let report = sb.status("r1", &[]);
    let expected = 1 + tables.len();
    assert_eq!(
        report["totals"],
        serde_json::json!({"expected": expected, "exported": 1, "dead_lettered": tables.len(), "superseded": 0, "pending": 0}),
        "{report}"
    );
    for table in tables {
        let unit = report["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["unit"] == table.as_str())
            .unwrap_or_else(|| panic!("{table:?} is not in {report}"));
        assert!(
            unit.to_string().contains(reason),
            "{table:?} dead-lettered with {reason}: {unit}"
        );
    }
    let dead = peek(&sb.queue("dead")).await.unwrap();
    assert_eq!(dead.len(), tables.len(), "each dead-lettered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_cannot_be_paths_are_dead_lettered_with_their_record() {
    let names = ["", ".", "..", "a/b", "back\\slash", "new\nline"];
    each_is_dead_lettered_at_once(&names.map(String::from), false, "malformed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_too_long_for_a_file_are_dead_lettered_at_once_with_their_record() {
    // 245 bytes: the folder can be made, its shard's name cannot; 300: not
    // even the folder, nor a record named after the unit.
    let names = [
        format!("t{}", "x".repeat(244)),
        format!("t{}", "y".repeat(299)),
    ];
    each_is_dead_lettered_at_once(&names, true, "too long").await;
}

/// `status --reconcile` records such units too when the subscription's own
/// policy took their messages (no worker wrote a record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_records_units_no_file_can_name() {
    let sb = Sandbox::new();
    sb.make_tables(1, 5);
    sb.produce_to("dead", "", "r1").await;
    for table in ["..".to_string(), format!("t{}", "z".repeat(299))] {
        add_unit(&sb, "dead", "r1", &table).await;
    }
    let after = sb.status("r1", &["--reconcile", &sb.queue("dead")]);
    assert_eq!(
        after["totals"],
        serde_json::json!({"expected": 3, "exported": 0, "dead_lettered": 3, "superseded": 0, "pending": 0})
    );
}
