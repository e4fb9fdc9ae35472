//! The table's definition beside every export (`_TABLE.json`) on the
//! embedded backends: a table with a declared partitioning exported
//! partition by partition, a plain table with a default and a `NOT NULL`
//! column, and a view exported through its query.

mod common;

use std::time::Duration;

use bqdrain::adapters::local::{dataset, partitions};
use bqdrain::contract::message::SourceTable;
use bqdrain::engine::layout;
use bqdrain::ports::warehouse::Partitioning;
use common::*;
use serde_json::json;

fn drain(sb: &Sandbox) {
    let worker = sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "1"]);
    let (status, _) = finish(worker, Duration::from_secs(60));
    assert!(status.success(), "worker failed: {status}\n{}", sb.logs());
}

/// `_TABLE.json` of one run's export of `source`, parsed.
fn definition(sb: &Sandbox, source: &SourceTable, run_id: &str) -> serde_json::Value {
    let key = layout::export_definition(source, run_id);
    let text = std::fs::read_to_string(sb.exports().join(&key))
        .unwrap_or_else(|e| panic!("{key}: {e}\n{}", sb.logs()));
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_export_holds_its_tables_definition() {
    let sb = Sandbox::new();
    dataset::execute(
        &sb.warehouse(),
        "CREATE TABLE accounts (id INTEGER NOT NULL, name TEXT DEFAULT 'none', opened DATE);
         INSERT INTO accounts (id, name, opened) VALUES (1, 'a', '2026-12-01'), (2, 'b', '2026-12-02');
         CREATE VIEW early AS SELECT id, name FROM accounts WHERE id < 2;",
    )
    .unwrap();
    partitions::partition_by(&sb.warehouse(), "accounts", "opened", Partitioning::Day).unwrap();
    dataset::create_dummy_tables(&sb.warehouse(), &["plain".to_string()], 3).unwrap();
    let plan = every_unit_plan("r1");
    let report = sb
        .try_produce_plan(&sb.source(""), "work", &plan)
        .await
        .unwrap();
    assert_eq!(report.published, 4, "{report:?}");
    drain(&sb);

    let accounts = |partition: &str| SourceTable {
        partition: Some(partition.into()),
        ..sb.table_source("accounts")
    };
    let columns = json!([
        {"name": "id", "type": "INTEGER", "mode": "REQUIRED"},
        {"name": "name", "type": "TEXT", "mode": "NULLABLE", "default_value": "'none'"},
        {"name": "opened", "type": "DATE", "mode": "NULLABLE"},
    ]);
    for day in ["20261201", "20261202"] {
        assert_eq!(
            definition(&sb, &accounts(day), "r1"),
            json!({
                "v": 1,
                "table": "accounts",
                "partition": day,
                "table_type": "TABLE",
                "columns": columns,
                "time_partitioning": {"type": "DAY", "field": "opened"},
                "require_partition_filter": false,
            })
        );
    }
    let plain = definition(&sb, &sb.table_source("plain"), "r1");
    assert_eq!(plain["table"], "plain");
    assert!(plain.get("partition").is_none(), "{plain}");
    assert!(plain.get("time_partitioning").is_none(), "{plain}");
    assert_eq!(
        plain["columns"],
        json!([
            {"name": "id", "type": "INT64", "mode": "NULLABLE"},
            {"name": "name", "type": "STRING", "mode": "NULLABLE"},
            {"name": "age", "type": "INT64", "mode": "NULLABLE"},
        ])
    );
    let early = definition(
        &sb,
        &SourceTable {
            view: true,
            ..sb.table_source("early")
        },
        "r1",
    );
    assert_eq!(early["table_type"], "VIEW");
    assert_eq!(
        early["view_query"],
        "SELECT id, name FROM accounts WHERE id < 2"
    );
    assert_eq!(early["columns"][1]["name"], "name");
}
