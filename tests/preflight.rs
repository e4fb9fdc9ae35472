//! `bqdrain-producer --check` against the emulators: it asks each service
//! which of the producer's permissions (the permission table's) the caller
//! holds, checks the work topic's subscriptions for a dead-letter policy
//! and the bucket's location, plans the run, and publishes and writes
//! nothing. The emulators enforce no IAM and implement no
//! `testIamPermissions`: `common::iam_proxy` answers it in front of them,
//! refusing what a test says.

mod common;

use serde_json::Value;

use common::gcp::GcpSandbox;
use common::iam_proxy::IamProxy;

fn checks_with(report: &Value, status: &str) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == status)
        .map(|c| c["check"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_the_permission_refused_exits_1_and_publishes_nothing() {
    let sb = GcpSandbox::new("preflight_refused", 5).await;
    sb.make_tables(3, 10).await;
    let pubsub = IamProxy::start(&sb.emulators.pubsub, &[]);
    let check = |storage: &IamProxy| {
        sb.produce_to(
            &sb.topic(),
            "exports",
            &["--check"],
            vec![
                ("STORAGE_EMULATOR_HOST", storage.addr.clone()),
                ("PUBSUB_EMULATOR_HOST", pubsub.addr.clone()),
            ],
        )
    };

    let granted = check(&IamProxy::start(&sb.emulators.storage, &[]));
    let report: Value = serde_json::from_slice(&granted.stdout).unwrap();
    assert_eq!(granted.status.code(), Some(0), "{report:#}");
    let bucket = format!("gs://{}", sb.bucket);
    let ok = checks_with(&report, "ok");
    for wanted in [
        format!("permission storage.objects.delete on {bucket}"),
        format!("permission pubsub.topics.publish on {}", sb.topic()),
        format!(
            "permission bigquery.jobs.create on project {}",
            common::gcp::PROJECT
        ),
        format!("dead-letter policy of {}", sb.subscription()),
        format!("location of {bucket}"),
    ] {
        assert!(ok.contains(&wanted), "{wanted} is not ok: {report:#}");
    }
    assert_eq!(report["plan"]["units"], 3, "{report:#}");
    assert_eq!(report["calls"]["publish"], 1);

    let refused = check(&IamProxy::start(
        &sb.emulators.storage,
        &["storage.objects.delete"],
    ));
    let report: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(refused.status.code(), Some(1), "{report:#}");
    assert_eq!(
        checks_with(&report, "missing"),
        [format!("permission storage.objects.delete on {bucket}")]
    );
    let missing = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "missing")
        .unwrap();
    assert_eq!(
        missing["fix"],
        format!(
            "gcloud storage buckets add-iam-policy-binding {bucket} --member=MEMBER \
             --role=roles/storage.objectUser"
        )
    );

    assert!(sb.pull_all("work").await.is_empty(), "a check published");
    assert_eq!(
        sb.objects("").await,
        Vec::new(),
        "a check wrote to the bucket"
    );
}
