//! `bqdrain-producer --check` on the local backends: it plans as a run
//! would, checks what applies (source readable, queue and destination
//! writable, dead-letter policy), and publishes and writes nothing.

mod common;
#[path = "../../tests/common/discovery_proxy.rs"]
mod discovery_proxy;
#[path = "../../tests/common/fake_run_api.rs"]
mod fake_run_api;
use common::Setup;
use fake_run_api::{FakeRunApi, JOB};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_check_plans_the_run_and_writes_nothing() {
    let s = Setup::new();
    let subscription = format!(
        "queue://{}?dead_letter=dead#work",
        s.dir.path().join("q.db").display()
    );
    let out = s.produce(&["--check", "--subscription", &subscription]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ok       plan: the sources are readable: 5 table(s)"),
        "{text}"
    );
    assert!(text.contains("plan: 5 table(s), 4 unit(s)"), "{text}");
    assert!(
        text.contains(&format!(
            "ok       dead-letter policy of {subscription}: to dead"
        )),
        "{text}"
    );
    assert!(text.contains("ok       destination file://"), "{text}");
    assert!(text.contains("ok       queue queue://"), "{text}");
    assert!(text.ends_with("check passed\n"), "{text}");
    assert!(!s.dir.path().join("q.db").exists(), "the queue was created");
    assert!(
        !s.dir.path().join("out").exists(),
        "the destination was written"
    );
    assert_eq!(s.published().await, 0);
}

#[test]
fn a_subscription_without_dead_letter_policy_fails_the_check_with_its_fix() {
    let s = Setup::new();
    let subscription = format!("queue://{}#work", s.dir.path().join("q.db").display());
    let out = s.produce(&["--check", "--subscription", &subscription, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let failed: Vec<&serde_json::Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "missing")
        .collect();
    assert_eq!(failed.len(), 1, "{report:#}");
    assert_eq!(
        failed[0]["check"],
        format!("dead-letter policy of {subscription}")
    );
    assert_eq!(
        failed[0]["fix"],
        "add ?dead_letter=NAME to the workers' --subscription"
    );
    assert_eq!(report["plan"]["units"], 4);
    assert!(!s.dir.path().join("q.db").exists());
}

#[test]
fn an_unreadable_source_fails_the_plan_check() {
    let s = Setup::new();
    let out = std::process::Command::new(common::BIN)
        .args([
            "--source",
            &format!("sqlite://{}", s.dir.path().join("none.db").display()),
        ])
        .args([
            "--topic",
            &s.queue(),
            "--destination",
            &s.destination(),
            "--check",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("missing  plan: "), "{text}");
    assert!(text.contains("check failed"), "{text}");
}

/// With `--launch-workers`, the worker job's permissions are asked of the
/// Cloud Run Admin API (`testIamPermissions`, here its stand-in), and the
/// task count the run would start is printed; nothing is started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_asks_cloud_run_for_the_launch_permissions_and_starts_nothing() {
    let s = Setup::new();
    let api = FakeRunApi::start(vec![(
        200,
        serde_json::json!({"permissions": ["run.jobs.run"]}),
    )])
    .await;
    let out = s.produce(&[
        "--check",
        "--launch-workers",
        JOB,
        "--run-api-endpoint",
        &api.endpoint,
        "--units-per-task",
        "3",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("ok       permission run.jobs.run on {JOB}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "missing  permission run.jobs.runWithOverrides on {JOB}; fix: gcloud run jobs \
             add-iam-policy-binding {JOB} --member=MEMBER --role=roles/run.jobsExecutorWithOverrides\n"
        )),
        "{text}"
    );
    assert!(text.contains("tasks: 2\n"), "4 units, 3 per task: {text}");
    let requests = api.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].path, format!("/v2/{JOB}:testIamPermissions"));
    assert_eq!(
        requests[0].body["permissions"],
        serde_json::json!(["run.jobs.run", "run.jobs.runWithOverrides"])
    );
}
