//! `bqdrain replay --launch-workers`: the replayed runs get their worker
//! job started, with the producer's task-count rule. A contract test
//! against the recording stand-in for the Cloud Run Admin API (see
//! producer/tests/launch_workers.rs for what it can and cannot show).

mod common;

use std::process::Output;

use serde_json::json;

use common::fake_run_api::{api_error, env_of, operation, FakeRunApi, JOB};
use common::*;

/// `bqdrain replay` launching against `api`.
fn replay(sb: &Sandbox, api: &FakeRunApi, extra: &[&str]) -> Output {
    let launch = ["--launch-workers", JOB, "--run-api-endpoint", &api.endpoint];
    sb.replay(&[&launch[..], extra].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_starts_the_workers_of_each_replayed_run() {
    let sb = Sandbox::new();
    sb.make_tables(3, 10);
    sb.produce_to("dead", "", "r1").await;
    sb.produce_to("dead", "", "r2").await;
    let api = FakeRunApi::start(vec![operation(2)]).await;
    let out = replay(&sb, &api, &["--units-per-task", "2", "--table", "t_00[12]"]);
    let report = json_of(&out);
    assert_eq!(report["replayed"], 4, "{report}");
    assert_eq!(sb.depth("work").await, 4);

    let requests = api.requests();
    assert_eq!(requests.len(), 2, "one execution per run: {requests:#?}");
    for (request, run) in requests.iter().zip(["r1", "r2"]) {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, format!("/v2/{JOB}:run"));
        assert_eq!(
            request.body["overrides"]["taskCount"], 1,
            "2 units, 2 per task"
        );
        let env = env_of(&request.body);
        assert_eq!(env["BQDRAIN_RUN_ID"], run);
        assert_eq!(env["BQDRAIN_DESTINATION"], sb.destination());
    }
    assert_eq!(report["launches"][0]["status"], "started", "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_launch_fails_after_replaying_and_says_how_to_start_workers() {
    let sb = Sandbox::new();
    sb.make_tables(3, 10);
    sb.produce_to("dead", "", "r1").await;
    let api = FakeRunApi::start(vec![api_error(403, "PERMISSION_DENIED", "denied")]).await;
    let out = replay(&sb, &api, &["--units-per-task", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gcloud run jobs execute") && stderr.contains("--tasks 3"),
        "{stderr}"
    );
    assert_eq!(sb.depth("work").await, 3, "the replay itself stands");
    assert_eq!(sb.depth("dead").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_starts_nothing() {
    let sb = Sandbox::new();
    sb.make_tables(1, 10);
    sb.produce_to("dead", "", "r1").await;
    let api = FakeRunApi::start(vec![operation(1)]).await;
    let out = replay(&sb, &api, &["--dry-run"]);
    json_of(&out);
    assert!(api.requests().is_empty());
}

/// The stand-in's answers are ours: the proxy in front of it holds them to
/// Cloud Run v2's API description as it holds the requests, so a canned
/// answer Cloud Run would not send fails the test that uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canned_answer_cloud_run_would_not_send_is_named_with_its_field() {
    let sb = Sandbox::new();
    sb.make_tables(1, 10);
    sb.produce_to("dead", "", "r1").await;
    let (status, mut answer) = operation(1);
    answer["done"] = json!("no");
    answer["doneTime"] = json!("2026-01-01T00:00:00Z");
    let api = FakeRunApi::start(vec![(status, answer)]).await;
    replay(&sb, &api, &["--units-per-task", "1"]);
    assert_eq!(api.requests().len(), 1, "the request passed the proxy");
    let found = api.take_violations();
    let call = "response of run.projects.locations.jobs.run (POST /v2/{name}:run)";
    assert_eq!(
        found,
        [
            format!("{call}: done: a string \"no\", the API has a boolean"),
            format!("{call}: doneTime: unknown field: GoogleLongrunningOperation has done, error, metadata, name, response"),
        ],
    );
}
