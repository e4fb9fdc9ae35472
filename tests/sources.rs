//! Runs of several datasets: `--source` given more than once (a whole
//! BigQuery project is tested against the emulators, in tests/gcp.rs).

mod common;

use std::time::Duration;

use bqdrain::adapters::local::dataset;
use bqdrain::engine::producer::{RunId, RunPlan};
use bqdrain::error::ConfigError;
use common::*;

fn run(id: &str) -> RunPlan {
    RunPlan::every_table(RunId::Given {
        id: id.into(),
        resume: false,
    })
}

/// CSV data rows of every shard under `folder` of the export root.
fn rows_under(sb: &Sandbox, folder: &str) -> u64 {
    let shards: Vec<String> = std::fs::read_dir(sb.exports().join(folder))
        .unwrap_or_else(|e| panic!("{folder}: {e}\n{}", sb.logs()))
        .map(|e| format!("{folder}{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|k| k.ends_with(".csv"))
        .collect();
    csv_rows(&sb.exports(), &shards)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_datasets_in_one_run_export_into_their_own_folders() {
    let sb = Sandbox::new();
    sb.make_tables(2, 30);
    let other = sb.path("other.db");
    dataset::create_dummy_tables(&other, &["t_001".to_string(), "u_001".to_string()], 7).unwrap();
    let sources = vec![sb.source(""), format!("sqlite://{}", other.display())];
    let mut plan = run("r1");
    plan.exclude = vec!["other.u_*".into()];
    let report = sb
        .try_produce_sources(&sources, "work", &plan)
        .await
        .unwrap();
    assert_eq!((report.published, report.excluded), (3, 1), "{report:?}");

    let worker = sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "1"]);
    let (status, _) = finish(worker, Duration::from_secs(60));
    assert!(status.success(), "{}", sb.logs());
    // Both datasets have a t_001: a run of several datasets names its
    // units DATASET.TABLE, so their records stay apart too.
    for (unit, folder, rows) in [
        ("warehouse.t_001", "warehouse/t_001/run=r1/", 30),
        ("warehouse.t_002", "warehouse/t_002/run=r1/", 30),
        ("other.t_001", "other/t_001/run=r1/", 7),
    ] {
        let record = sb
            .manifest("r1", unit)
            .unwrap_or_else(|| panic!("{unit}\n{}", sb.logs()));
        assert_eq!(record.rows, Some(rows), "{unit}");
        assert!(
            record.files.iter().all(|f| f.key.starts_with(folder)),
            "{unit}: {record:?}"
        );
        assert_eq!(rows_under(&sb, folder), rows, "{unit}");
        assert!(
            sb.exports().join(folder).join("_MANIFEST.json").is_file(),
            "{unit}"
        );
    }
    assert!(
        !sb.exports().join("other/u_001").exists(),
        "excluded as other.u_*"
    );
    let status = sb.status("r1", &[]);
    assert_eq!(status["totals"]["exported"], 3, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sources_with_one_dataset_name_are_refused() {
    let sb = Sandbox::new();
    sb.make_tables(1, 5);
    let twin = sb.path("elsewhere/warehouse.db");
    dataset::create_dummy_tables(&twin, &["t_001".to_string()], 5).unwrap();
    let sources = vec![sb.source(""), format!("sqlite://{}", twin.display())];
    let err = sb
        .try_produce_sources(&sources, "work", &run("r1"))
        .await
        .expect_err("one folder per dataset name");
    let config = err
        .downcast_ref::<ConfigError>()
        .expect("a configuration error");
    assert_eq!(config.flag, "--source");
    assert!(
        config
            .problem
            .contains("both have a dataset named warehouse"),
        "{config}"
    );
    assert_eq!(sb.depth("work").await, 0, "nothing was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_two_datasets_resumes_with_the_same_sources_in_any_order() {
    let sb = Sandbox::new();
    sb.make_tables(2, 10);
    let other = sb.path("other.db");
    dataset::create_dummy_tables(&other, &["t_001".to_string()], 4).unwrap();
    let sources = vec![sb.source(""), format!("sqlite://{}", other.display())];
    let first = sb
        .try_produce_sources(&sources, "work", &run("r1"))
        .await
        .unwrap();
    assert_eq!(first.published, 3);

    let resume = RunPlan::every_table(RunId::Given {
        id: "r1".into(),
        resume: true,
    });
    // Only one of its sources: refused, naming both.
    let err = sb
        .try_produce_sources(&sources[..1], "work", &resume)
        .await
        .expect_err("a resumed run keeps its sources");
    let config = err
        .downcast_ref::<ConfigError>()
        .expect("a configuration error");
    assert_eq!(config.flag, "--source");
    assert!(config.fix.contains(&sources[1]), "{config}");

    // The same sources in another order: nothing exported yet, so all
    // three are published again (a duplicate of a queued one is harmless).
    let reversed: Vec<String> = sources.iter().rev().cloned().collect();
    let again = sb
        .try_produce_sources(&reversed, "work", &resume)
        .await
        .unwrap();
    assert_eq!((again.resumed, again.published), (true, 3), "{again:?}");
    let worker = sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "1"]);
    let (status, _) = finish(worker, Duration::from_secs(60));
    assert!(status.success(), "{}", sb.logs());
    for (unit, rows) in [
        ("warehouse.t_001", 10),
        ("warehouse.t_002", 10),
        ("other.t_001", 4),
    ] {
        let record = sb.manifest("r1", unit).unwrap_or_else(|| panic!("{unit}"));
        assert_eq!(record.rows, Some(rows), "{unit}");
    }

    // Done: resuming publishes nothing.
    let done = sb
        .try_produce_sources(&reversed, "work", &resume)
        .await
        .unwrap();
    assert_eq!((done.published, done.pending), (0, 0), "{done:?}");
}
