//! Restores on the emulators, at the adapter level: a "type zoo" table (every
//! BigQuery type the emulator holds, NULLs, empty strings, Unicode,
//! delimiters, quotes and newlines inside strings, extreme numbers and
//! times, nested and repeated records; partitioned and clustered) exported
//! by real `bqdrain-producer` and `bqdrain work` processes in each format,
//! then loaded into fresh datasets with `Warehouse::load` and compared with
//! the source: definition and every row. docs/formats.md publishes the
//! outcome; each of its cells is an assertion here.

mod common;

use std::time::Duration;

use serde_json::json;

use bqdrain::error::ErrorKind;
use common::finish;
use common::gcp::GcpSandbox;
use common::gcp_restore::{create_zoo, differences, nested_columns, scalar_columns, POLICY_TAG};

const LIMIT: Duration = Duration::from_secs(180);

/// Exports run `run_id` of `table` to folder `run_id` with `args`, its
/// `units` drained by one worker on a subscription of its own (the Pub/Sub
/// emulator goes on streaming to a subscriber that has exited).
async fn export(sb: &GcpSandbox, run_id: &str, table: &str, args: &[&str], units: u64) {
    sb.resubscribe(run_id).await;
    let base = ["--run-id", run_id, "--include", table];
    let out = sb.produce(run_id, &[&base[..], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let destination = sb.destination(run_id);
    let worker = sb.spawn_worker(&["--run-id", run_id, "--destination", &destination], None);
    let (status, outcome) = finish(worker, LIMIT);
    assert!(status.success(), "{outcome}\n{}", sb.logs());
    assert_eq!(outcome["acked"], units, "{outcome}\n{}", sb.logs());
}

#[tokio::test]
async fn the_type_zoo_round_trips_through_every_format() {
    let sb = GcpSandbox::new("restore_zoo", 5).await;
    create_zoo(&sb, "zoo", true).await;
    create_zoo(&sb, "zoo_flat", false).await;

    let refused = sb.produce("csv_nested", &["--run-id", "r0", "--include", "zoo"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let runs: [(&str, &str, &[&str]); 4] = [
        (
            "csv",
            "zoo_flat",
            &["--format", "csv", "--compression", "gzip"],
        ),
        (
            "json",
            "zoo",
            &["--format", "json", "--compression", "gzip"],
        ),
        ("avro", "zoo", &["--format", "avro"]),
        (
            "parquet",
            "zoo",
            &["--format", "parquet", "--compression", "snappy"],
        ),
    ];
    let mut report = Vec::new();
    for (format, table, args) in runs {
        export(&sb, format, table, args, 1).await;
        let restored = format!("{}_{format}", sb.dataset);
        sb.create_dataset(&restored).await;
        let request = sb.load_request(format, format, table, None).await;
        let loaded = sb.load_into(&restored, &request).await.expect("the load");
        assert_eq!(loaded.rows, Some(4), "{format}: rows the load wrote");
        let source = sb.table_definition(&sb.dataset, table).await;
        assert_eq!(
            sb.table_definition(&restored, table).await,
            source,
            "{format}: the table's definition"
        );
        // What the definitions hold: nothing of it is left out of the comparison.
        let fields = &source["schema"]["fields"];
        assert_eq!(fields[0]["mode"], "REQUIRED", "{source}");
        assert_eq!(fields[2]["defaultValueExpression"], "'none'", "{source}");
        assert_eq!(
            fields[4]["policyTags"]["names"],
            json!([POLICY_TAG]),
            "{source}"
        );
        assert_eq!(source["requirePartitionFilter"], true, "{source}");
        assert_eq!(
            source["timePartitioning"]["expirationMs"], "864000000000",
            "{source}"
        );
        assert_eq!(
            source["clustering"]["fields"],
            json!(["s", "i"]),
            "{source}"
        );
        assert_eq!(source["labels"], json!({"zoo": "types"}), "{source}");
        assert_eq!(source["description"], "every type", "{source}");
        let mut columns = scalar_columns();
        if table == "zoo" {
            columns.extend(nested_columns());
        }
        let diff = differences(
            &columns,
            &sb.table_rows(&sb.dataset, table).await,
            &sb.table_rows(&restored, table).await,
        );
        report.push((format, diff));
    }
    for (format, diff) in report {
        if format != "json" {
            assert_eq!(diff, [], "{format}: every value round-trips exactly");
            continue;
        }
        // JSON's one loss (on the emulators: see docs/formats.md): a JSON
        // column's value comes back as a JSON string holding its text.
        let ids: Vec<&str> = diff.iter().map(|(id, ..)| id.as_str()).collect();
        assert_eq!(ids, ["2", "3"], "{format}: {diff:?}");
        for (_, column, source, restored) in &diff {
            assert_eq!(column, "j", "{format}: {diff:?}");
            let text = source.as_str().unwrap();
            assert_eq!(
                restored,
                &json!(serde_json::to_string(text).unwrap()),
                "{format}"
            );
        }
    }
}

/// A partition unit replaces its one partition (`TABLE$ID`, truncated) and
/// leaves the others as they are; its sibling units create the table once;
/// a whole table restored with `replace_table` is made again from its
/// definition, and its redelivery re-attaches to its load job instead of
/// dropping the table again; a file holding rows of another partition is
/// refused; a missing dataset or file fails the unit for good with
/// BigQuery's reason; a view is made again from its query.
#[tokio::test]
async fn partitions_are_restored_one_by_one_and_whole_tables_replaced() {
    let sb = GcpSandbox::new("restore_units", 5).await;
    let days = ["2026-12-01", "2026-12-02"];
    sb.create_daily_table("events", &days, 3).await;
    export(
        &sb,
        "parts",
        "events",
        &["--partitions", "--format", "avro"],
        2,
    )
    .await;
    export(&sb, "whole", "events", &["--format", "parquet"], 1).await;

    let restored = format!("{}_restored", sb.dataset);
    sb.create_dataset(&restored).await;
    for day in ["20261201", "20261202"] {
        let request = sb.load_request("parts", "parts", "events", Some(day)).await;
        let loaded = sb.load_into(&restored, &request).await.expect("the load");
        assert_eq!(loaded.rows, Some(3), "{day}: the rows this load wrote");
    }
    assert_eq!(
        sb.table_definition(&restored, "events").await,
        sb.table_definition(&sb.dataset, "events").await
    );
    assert_eq!(
        sb.table_rows(&restored, "events").await,
        sb.table_rows(&sb.dataset, "events").await
    );

    // One day restored again over a changed table: the other day keeps
    // its change.
    let qualified = format!("`{}.{restored}.events`", common::gcp::PROJECT);
    sb.dml("events", &format!("DELETE FROM {qualified} WHERE TRUE"))
        .await;
    sb.dml(
        "events",
        &format!("INSERT INTO {qualified} (id, day, amount) VALUES (99, '2026-12-02', 0)"),
    )
    .await;
    let mut again = sb
        .load_request("parts", "parts", "events", Some("20261201"))
        .await;
    again.job_key.push_str("_again");
    assert_eq!(sb.load_into(&restored, &again).await.unwrap().rows, Some(3));
    let ids: Vec<String> = sb
        .table_rows(&restored, "events")
        .await
        .iter()
        .map(|row| row["f"][0]["v"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        ["1", "2", "3", "99"],
        "day 1 restored, day 2 untouched"
    );

    // The file of one day loaded into the other: refused, nothing written.
    let mut elsewhere = again.clone();
    elsewhere.job_key.push_str("_elsewhere");
    elsewhere.definition.partition = Some("20261202".into());
    let refused = sb.load_into(&restored, &elsewhere).await.unwrap_err();
    assert_eq!(refused.reason, "invalid", "{refused:?}");
    assert!(refused.message.contains("partition"), "{refused:?}");
    assert_eq!(sb.table_rows(&restored, "events").await.len(), 4);

    // The whole table, replaced: made again, then redelivered.
    let mut whole = sb.load_request("whole", "whole", "events", None).await;
    whole.replace_table = true;
    assert_eq!(sb.load_into(&restored, &whole).await.unwrap().rows, Some(6));
    assert_eq!(
        sb.table_rows(&restored, "events").await,
        sb.table_rows(&sb.dataset, "events").await
    );
    assert_eq!(sb.load_into(&restored, &whole).await.unwrap().rows, Some(6));
    assert_eq!(
        sb.table_rows(&restored, "events").await.len(),
        6,
        "not dropped again"
    );

    // Failures are permanent with BigQuery's reason: a dataset that does
    // not exist, a file gone.
    let nowhere = sb.load_into("ds_nowhere", &whole).await.unwrap_err();
    assert_eq!(
        (nowhere.kind, nowhere.reason.as_str()),
        (ErrorKind::Permanent, "notFound"),
        "{nowhere:?}"
    );
    let mut gone = whole.clone();
    gone.job_key.push_str("_gone");
    gone.replace_table = false;
    gone.files = vec!["whole/nowhere_000000000000.parquet".into()];
    let gone = sb.load_into(&restored, &gone).await.unwrap_err();
    assert_eq!(
        (gone.kind, gone.reason.as_str()),
        (ErrorKind::Permanent, "notFound"),
        "{gone:?}"
    );
    assert!(
        gone.message.contains("nowhere_000000000000.parquet"),
        "{gone:?}"
    );
    assert_eq!(
        sb.table_rows(&restored, "events").await.len(),
        6,
        "left as it was"
    );

    // A view: made from its query, no file loaded.
    let mut view = whole.clone();
    view.table = "recent".into();
    view.files.clear();
    view.definition.table = "recent".into();
    view.definition.table_type = bqdrain::ports::warehouse::TableKind::View;
    view.definition.time_partitioning = None;
    view.definition.clustering.clear();
    let query = format!("SELECT id FROM {qualified} WHERE amount > 0");
    view.definition.view_query = Some(query.clone());
    assert_eq!(sb.load_into(&restored, &view).await.unwrap().rows, None);
    let found = sb
        .bq_call(
            "GET",
            &format!(
                "projects/{}/datasets/{restored}/tables/recent",
                common::gcp::PROJECT
            ),
            None,
        )
        .await;
    assert_eq!(found["type"], "VIEW", "{found}");
    assert_eq!(found["view"]["query"], json!(query), "{found}");
}

/// `bqdrain restore` end to end on the emulators: a dataset exported in
/// Avro (whole tables, a table's partitions, a view) is published as a
/// restore run on the work topic, drained by `bqdrain work`, and comes back
/// into another dataset (`--dataset-map`) with every row; `status` counts
/// the restore run; restoring again into tables that now exist is refused
/// before anything is published; a target dataset that does not exist is
/// refused with the fix.
#[tokio::test]
async fn bqdrain_restore_brings_a_dataset_back_through_the_queue() {
    let sb = GcpSandbox::new("restore_cli", 5).await;
    sb.make_tables(2, 100).await;
    sb.create_daily_table("events", &["2026-12-01", "2026-12-02"], 5)
        .await;
    sb.create_view("t_001_view", "t_001").await;
    let args = [
        "--partitions",
        "--views",
        "--max-bytes-billed",
        "100000000",
        "--format",
        "avro",
    ];
    export(&sb, "r1", "*", &args, 5).await;

    let from = sb.destination("r1");
    let back = format!("{}_back", sb.dataset);
    let to = format!("bigquery://{}", common::gcp::PROJECT);
    let map = format!("{}={back}", sb.dataset);
    let topic = sb.topic();
    let restore = |run_id: &str| {
        sb.bqdrain(&[
            "restore",
            "--from",
            &from,
            "--to",
            &to,
            "--dataset-map",
            &map,
            "--topic",
            &topic,
            "--run-id",
            run_id,
            "--json",
        ])
    };

    let missing = restore("rr0");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&back) && stderr.contains("--to"),
        "{stderr}"
    );

    sb.create_dataset(&back).await;
    sb.resubscribe("rr1").await;
    let out = restore("rr1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["units"], 5, "{report}");
    let worker = sb.spawn_worker(&["--run-id", "rr1", "--destination", &from], None);
    let (status, outcome) = finish(worker, LIMIT);
    assert!(status.success(), "{outcome}\n{}", sb.logs());
    assert_eq!(outcome["acked"], 5, "{outcome}\n{}", sb.logs());

    for table in ["t_001", "t_002", "events", "t_001_view"] {
        let rows = sb.table_rows(&sb.dataset, table).await;
        assert!(!rows.is_empty(), "{table}");
        assert_eq!(sb.table_rows(&back, table).await, rows, "{table}");
        assert_eq!(
            sb.table_definition(&back, table).await,
            sb.table_definition(&sb.dataset, table).await,
            "{table}"
        );
    }
    // The view is made again from its query as it was: it still reads the
    // source dataset's table (a restore rewrites no query).
    let view = sb.table_definition(&back, "t_001_view").await;
    let source_table = format!("{}.t_001", sb.dataset);
    assert!(
        view["view"]["query"]
            .as_str()
            .is_some_and(|q| q.contains(&source_table)),
        "{view}"
    );
    let status = sb.status("r1", "rr1", &[]);
    assert_eq!(status["totals"]["exported"], 5, "{status}");

    let again = restore("rr2");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--if-exists") && stderr.contains("t_001"),
        "{stderr}"
    );
}
