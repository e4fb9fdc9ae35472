//! `--launch-workers`: after publishing a run, the producer starts the worker
//! Cloud Run job with a task count that follows the units published.
//!
//! These are contract tests against the documented request shape of the
//! Cloud Run Admin API v2 `projects.locations.jobs.run` method
//! (<https://cloud.google.com/run/docs/reference/rest/v2/projects.locations.jobs/run>:
//! `POST /v2/{name}:run` with a JSON `RunJobRequest` whose `overrides` hold
//! `taskCount` and `containerOverrides[].env`, answered with a long-running
//! `Operation` whose metadata is the `Execution`). Google ships no emulator
//! for the Admin API, and a real call would start billed tasks in a real
//! project, so a small HTTP/1.1 server on 127.0.0.1 stands in for it: it
//! records every request and answers canned responses. The real
//! `bqdrain-producer` binary runs against it (`--run-api-endpoint
//! http://127.0.0.1:PORT`, anonymous credentials) and against the local
//! sqlite source and queue. What these tests cannot show is that Google
//! accepts the request; they pin down what the producer sends and how it
//! reads the answers, including refusals and transient failures.

use std::process::Output;

use serde_json::Value;

mod common;
#[path = "../../tests/common/discovery_proxy.rs"]
mod discovery_proxy;
#[path = "../../tests/common/fake_run_api.rs"]
mod fake_run_api;
use common::Setup;
use fake_run_api::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_the_job_with_a_task_count_that_follows_the_units() {
    // (producer flags, units published, tasks asked for)
    let cases: [(&[&str], usize, u32); 5] = [
        (&["--units-per-task", "1"], 4, 4),
        (&["--units-per-task", "3"], 4, 2),
        (&["--units-per-task", "1", "--max-tasks", "3"], 4, 3),
        (&[], 4, 1),
        (&["--include", "a_*", "--units-per-task", "2"], 3, 2),
    ];
    for (i, (flags, units, tasks)) in cases.into_iter().enumerate() {
        let s = Setup::new();
        let api = FakeRunApi::start(vec![operation(tasks)]).await;
        let run_id = format!("r{i}");
        let out = s.produce(
            &[
                &["--json", "--run-id", &run_id, "--launch-workers", JOB][..],
                &["--run-api-endpoint", &api.endpoint],
                flags,
            ]
            .concat(),
        );
        assert!(out.status.success(), "{flags:?}: {}", stderr(&out));
        assert_eq!(s.published().await, units, "{flags:?}");

        let requests = api.requests();
        assert_eq!(requests.len(), 1, "{flags:?}: {requests:#?}");
        let r = &requests[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, format!("/v2/{JOB}:run"));
        assert!(
            r.headers["content-type"].starts_with("application/json"),
            "{:?}",
            r.headers
        );
        assert!(
            !r.headers.contains_key("authorization"),
            "an http:// endpoint gets anonymous credentials"
        );
        assert_eq!(
            r.body["overrides"]["taskCount"], tasks,
            "{flags:?}: {}",
            r.body
        );
        let env = env_of(&r.body);
        assert_eq!(env.len(), 2, "{env:?}");
        assert_eq!(env["BQDRAIN_RUN_ID"], run_id);
        assert_eq!(env["BQDRAIN_DESTINATION"], s.destination());
        assert!(
            r.body.get("name").is_none(),
            "the job name travels in the path only: {}",
            r.body
        );

        let report = report(&out);
        assert_eq!(report["run_id"], run_id.as_str());
        assert_eq!(report["published"], units);
        let launch = &report["launch"];
        assert_eq!(launch["status"], "started", "{launch}");
        assert_eq!(launch["job"], JOB);
        assert_eq!(launch["task_count"], tasks);
        assert_eq!(launch["execution"], EXECUTION);
        assert_eq!(launch["operation"], OPERATION);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_output_names_the_execution() {
    let s = Setup::new();
    let api = FakeRunApi::start(vec![operation(4)]).await;
    let out = s.produce(&[
        "--run-id",
        "rt",
        "--launch-workers",
        JOB,
        "--run-api-endpoint",
        &api.endpoint,
        "--units-per-task",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "workers: started {EXECUTION} with 4 task(s) (operation {OPERATION})"
        )),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_published_starts_no_worker() {
    let s = Setup::new();
    let api = FakeRunApi::start(vec![operation(1)]).await;
    let out = s.produce(&[
        "--json",
        "--include",
        "nothing_*",
        "--launch-workers",
        JOB,
        "--run-api-endpoint",
        &api.endpoint,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(api.requests().is_empty());
    let launch = &report(&out)["launch"];
    assert_eq!(launch["status"], "skipped", "{launch}");
    assert_eq!(launch["task_count"], 0);
    assert_eq!(launch["reason"], "nothing was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_launch_fails_after_publishing_and_says_how_to_start_workers() {
    for (status, refusal) in [
        api_error(
            403,
            "PERMISSION_DENIED",
            "Permission 'run.jobs.runWithOverrides' denied on resource",
        ),
        api_error(
            404,
            "NOT_FOUND",
            "Resource 'w' of kind 'JOB' does not exist.",
        ),
    ] {
        let s = Setup::new();
        let api = FakeRunApi::start(vec![(status, refusal)]).await;
        let run_id = format!("r{status}");
        let out = s.produce(&[
            "--json",
            "--run-id",
            &run_id,
            "--launch-workers",
            JOB,
            "--run-api-endpoint",
            &api.endpoint,
            "--units-per-task",
            "1",
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{status}: {err}");
        assert_eq!(s.published().await, 4, "the run stays published");
        assert_eq!(api.requests().len(), 1, "{status} is not retried");
        assert!(
            err.contains(&format!("run {run_id} is published (4 message(s)")),
            "{err}"
        );
        let command = format!(
            "gcloud run jobs execute w --project p --region europe-west1 --tasks 4 \
             --update-env-vars BQDRAIN_RUN_ID={run_id},BQDRAIN_DESTINATION={}",
            s.destination()
        );
        assert!(err.contains(&command), "{err}");
        let launch = &report(&out)["launch"];
        assert_eq!(launch["status"], "failed", "{launch}");
        assert_eq!(launch["command"], command.as_str());
        assert!(
            launch["reason"]
                .as_str()
                .unwrap()
                .contains(&status.to_string()),
            "{launch}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_api_is_tried_again() {
    let s = Setup::new();
    let api = FakeRunApi::start(vec![
        api_error(503, "UNAVAILABLE", "try again"),
        operation(1),
    ])
    .await;
    let out = s.produce(&[
        "--json",
        "--launch-workers",
        JOB,
        "--run-api-endpoint",
        &api.endpoint,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let requests = api.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0].body, requests[1].body, "the same request again");
    assert_eq!(report(&out)["launch"]["execution"], EXECUTION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_launch_options_exit_2_and_publish_nothing() {
    let s = Setup::new();
    let api = FakeRunApi::start(vec![operation(1)]).await;
    for (args, flag) in [
        (&["--launch-workers", "w"][..], "--launch-workers"),
        (
            &[
                "--launch-workers",
                "projects/p/locations/europe-west1/jobs/Bad_Name",
            ][..],
            "--launch-workers",
        ),
        (
            &[
                "--launch-workers",
                "projects/p/locations/europe-west1/services/w",
            ][..],
            "--launch-workers",
        ),
        (
            &["--launch-workers", JOB, "--max-tasks", "0"][..],
            "--max-tasks",
        ),
        (
            &["--launch-workers", JOB, "--max-tasks", "10001"][..],
            "--max-tasks",
        ),
        (
            &["--launch-workers", JOB, "--units-per-task", "0"][..],
            "--units-per-task",
        ),
        (
            &["--launch-workers", JOB, "--run-api-endpoint", "localhost:1"][..],
            "--run-api-endpoint",
        ),
        // Without --launch-workers they would be ignored: refused instead.
        (&["--max-tasks", "5"][..], "--launch-workers"),
    ] {
        let mut args = args.to_vec();
        if args.contains(&"--launch-workers") && !args.contains(&"--run-api-endpoint") {
            args.extend(["--run-api-endpoint", &api.endpoint]);
        }
        let out = s.produce(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    assert_eq!(s.published().await, 0);
    assert!(api.requests().is_empty());
}
