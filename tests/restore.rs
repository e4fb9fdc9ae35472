//! `bqdrain restore` on the embedded backends: a dataset exported (whole
//! tables, partition units, a view) in every format the local warehouse
//! writes comes back into a fresh SQLite file with the same declared types,
//! partitioning and rows; existing tables are refused, skipped or
//! replaced as asked; one partition goes back into a live table alone;
//! a unit whose files or definition do not match its export is
//! dead-lettered with the reason; bad input publishes nothing.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use bqdrain::adapters::local::{dataset, partitions};
use bqdrain::contract::options::{Compression, ExportOptions, Format};
use bqdrain::engine::producer::RunPlan;
use bqdrain::ports::warehouse::Partitioning;
use common::*;
use rusqlite::types::Value;
use rusqlite::Connection;

/// Every kind of value the local warehouse exports, in typed columns: NULL
/// and the empty string, Unicode, delimiters, quotes and newlines inside
/// strings, extreme integers and floats, infinities; a table partitioned
/// by day with rows of no date and of no valid date; a table of several
/// shards; a view.
const ZOO: &str = r#"
CREATE TABLE zoo (
    id INTEGER NOT NULL,
    i BIGINT,
    r REAL,
    n NUMERIC,
    t TEXT DEFAULT 'none',
    d DATE
);
INSERT INTO zoo VALUES
    (1, 0, 0.1, 1, NULL, '2026-12-01'),
    (2, 9223372036854775807, -2.0, 2.5, '', NULL),
    (3, -9223372036854775808, 1e300, NULL, 'héllo ✓ 日本', '2026-12-02'),
    (4, -1, 9e999, 7, 'a,b|c	d', '2026-12-03'),
    (5, NULL, -9e999, NULL, 'say "hi"', '2026-12-03'),
    (6, 42, 1.5e-7, 3, 'two
lines', '2026-12-04'),
    (7, 43, NULL, 4, 'cr
lf and "quotes", too', '2026-12-04'),
    (8, 44, 3.25, 5, '  spaces  ', '2026-12-04'),
    (9, 45, 6.0, 6, 'Infinity', '2026-12-04'),
    (10, 46, 7.0, 8, '123', '2026-12-04');
CREATE TABLE events (id INTEGER, day DATE, amount REAL, note TEXT);
INSERT INTO events VALUES
    (1, '2026-12-01', 1.5, 'first'),
    (2, '2026-12-01', 2.5, ''),
    (3, '2026-12-02', NULL, NULL),
    (4, NULL, 4.5, 'no day'),
    (5, 'soon', 5.5, 'no valid day');
CREATE VIEW big_spenders AS SELECT id, amount FROM events WHERE amount > 2;
"#;

/// Makes the zoo in the sandbox's warehouse, exports it with `options`
/// (partition units, views), and returns the export run's id.
async fn export_zoo(sb: &Sandbox, options: ExportOptions) -> String {
    dataset::execute(&sb.warehouse(), ZOO).unwrap();
    dataset::create_dummy_tables(&sb.warehouse(), &["big".to_string()], 300).unwrap();
    partitions::partition_by(&sb.warehouse(), "events", "day", Partitioning::Day).unwrap();
    let plan = RunPlan {
        options,
        ..every_unit_plan("exported")
    };
    sb.try_produce_plan(&sb.source("shard_bytes=2000"), "work", &plan)
        .await
        .unwrap();
    drain(sb);
    "exported".to_string()
}

/// A sandbox whose `count` tables of `rows` rows are exported by run
/// `exported`.
async fn exported_tables(count: usize, rows: u64) -> Sandbox {
    let sb = Sandbox::new();
    sb.make_tables(count, rows);
    sb.produce("", "exported").await;
    drain(&sb);
    sb
}

fn drain(sb: &Sandbox) {
    let worker = sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "1"]);
    let (status, _) = finish(worker, Duration::from_secs(60));
    assert!(status.success(), "worker failed: {status}\n{}", sb.logs());
}

/// Runs `bqdrain restore --json` with `args`.
fn restore(sb: &Sandbox, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["restore", "--json"])
        .args(args)
        .current_dir(sb.dir.path())
        .output()
        .unwrap()
}

/// The report of a restore that must have succeeded.
fn restored(sb: &Sandbox, args: &[&str]) -> serde_json::Value {
    let report = json_of(&restore(sb, args));
    assert_eq!(report["ok"], true, "{report}");
    report
}

fn fresh(sb: &Sandbox) -> String {
    format!("sqlite://{}", sb.path("fresh.db").display())
}

/// A table's columns as SQLite declares them: name, type, NOT NULL, default.
fn columns(db: &Path, table: &str) -> Vec<(String, String, bool, Option<String>)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT name, type, \"notnull\", dflt_value FROM pragma_table_xinfo(?1)")
        .unwrap();
    stmt.query_map([table], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

/// Every row of a table or view, each value with its storage class, sorted.
fn rows(db: &Path, table: &str) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
    let width = stmt.column_count();
    let mut all: Vec<String> = stmt
        .query_map([], |r| {
            (0..width)
                .map(|i| r.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .unwrap()
        .map(|row| format!("{:?}", row.unwrap()))
        .collect();
    all.sort();
    all
}

fn sql_rows(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let width = stmt.column_count();
    stmt.query_map([], |r| {
        (0..width)
            .map(|i| r.get::<_, Value>(i).map(|v| format!("{v:?}")))
            .collect::<rusqlite::Result<Vec<_>>>()
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

fn run_count(sb: &Sandbox) -> usize {
    std::fs::read_dir(sb.exports().join("_bqdrain/runs"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_comes_back_exactly_in_every_format_the_local_warehouse_writes() {
    let formats = [
        ExportOptions::default(),
        ExportOptions {
            header: false,
            field_delimiter: "|".into(),
            ..Default::default()
        },
        ExportOptions {
            field_delimiter: "\t".into(),
            compression: Compression::Gzip,
            ..Default::default()
        },
        ExportOptions {
            format: Format::Json,
            ..Default::default()
        },
        ExportOptions {
            format: Format::Json,
            compression: Compression::Gzip,
            ..Default::default()
        },
    ];
    for options in formats {
        let described = format!("{options:?}");
        let sb = Sandbox::new();
        export_zoo(&sb, options).await;
        let report = restored(&sb, &["--from", &sb.destination(), "--to", &fresh(&sb)]);
        // zoo, big, big_spenders, and events in its 4 partitions.
        assert_eq!(
            (&report["tables"], &report["units"]),
            (&4.into(), &7.into()),
            "{described}: {report}"
        );
        let rows_loaded: u64 = 10 + 300 + 5;
        assert_eq!(report["outcome"]["rows"], rows_loaded, "{described}");
        let (source, copy) = (sb.warehouse(), sb.path("fresh.db"));
        for table in ["zoo", "events", "big", "big_spenders"] {
            assert_eq!(
                columns(&copy, table),
                columns(&source, table),
                "{described}: {table}'s columns"
            );
            assert_eq!(
                rows(&copy, table),
                rows(&source, table),
                "{described}: {table}'s rows"
            );
        }
        let declared = "SELECT * FROM _bqdrain_partitioning";
        assert_eq!(
            sql_rows(&copy, declared),
            sql_rows(&source, declared),
            "{described}"
        );
        let kinds = "SELECT name, type FROM sqlite_master WHERE name = 'big_spenders'";
        assert_eq!(sql_rows(&copy, kinds), sql_rows(&source, kinds));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_tables_are_refused_skipped_or_replaced_as_asked() {
    let sb = exported_tables(3, 20).await;
    let to = fresh(&sb);
    let from = sb.destination();
    restored(&sb, &["--from", &from, "--to", &to]);
    let copy = sb.path("fresh.db");
    dataset::execute(&copy, "DELETE FROM t_001 WHERE id > 5").unwrap();
    let runs = run_count(&sb);

    let refused = restore(&sb, &["--from", &from, "--to", &to]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for table in ["t_001", "t_002", "t_003"] {
        assert!(stderr.contains(table), "{stderr}");
    }
    assert!(stderr.contains("--if-exists replace"), "{stderr}");
    assert_eq!(run_count(&sb), runs, "a refused restore publishes nothing");

    let skipped = restored(&sb, &["--from", &from, "--to", &to, "--if-exists", "skip"]);
    assert_eq!(skipped["units"], 0, "{skipped}");
    assert_eq!(skipped["skipped"].as_array().unwrap().len(), 3, "{skipped}");
    assert_eq!(
        rows(&copy, "t_001").len(),
        5,
        "a skipped table is left alone"
    );

    let replaced = restored(
        &sb,
        &["--from", &from, "--to", &to, "--if-exists", "replace"],
    );
    assert_eq!(replaced["outcome"]["restored"], 3, "{replaced}");
    assert_eq!(rows(&copy, "t_001"), rows(&sb.warehouse(), "t_001"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partition_goes_back_into_a_live_table_alone() {
    let sb = Sandbox::new();
    export_zoo(&sb, ExportOptions::default()).await;
    let to = fresh(&sb);
    restored(&sb, &["--from", &sb.destination(), "--to", &to]);
    let copy = sb.path("fresh.db");
    dataset::execute(
        &copy,
        "DELETE FROM events WHERE day = '2026-12-01';
         UPDATE events SET note = 'changed since' WHERE day = '2026-12-02';",
    )
    .unwrap();
    let one = format!("{}/warehouse/events$20261201", sb.destination());
    let report = restored(
        &sb,
        &["--from", &one, "--to", &to, "--if-exists", "replace"],
    );
    assert_eq!(report["units"], 1, "{report}");
    let notes = sql_rows(&copy, "SELECT id, note FROM events ORDER BY id");
    let expected: Vec<Vec<String>> = [
        (1, "first"),
        (2, ""),
        (3, "changed since"),
        (4, "no day"),
        (5, "no valid day"),
    ]
    .iter()
    .map(|(id, note)| {
        vec![
            format!("{:?}", Value::Integer(*id)),
            format!("{:?}", Value::Text(note.to_string())),
        ]
    })
    .collect();
    assert_eq!(
        notes, expected,
        "20261201 is back; 20261202 keeps its change"
    );
}

/// The report of a restore that dead-lettered units (exit 1), and each
/// dead-lettered unit with its reason.
fn dead_lettered(sb: &Sandbox, args: &[&str]) -> (serde_json::Value, Vec<(String, String)>) {
    let out = restore(sb, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dead = report["outcome"]["dead"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["table"].as_str().unwrap().to_string(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (report, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_whose_files_lost_a_row_is_dead_lettered_with_both_counts() {
    let sb = exported_tables(2, 50).await;
    let m = sb.manifest("exported", "t_002").unwrap();
    let shard = sb.exports().join(&m.files[0].key);
    let text = std::fs::read_to_string(&shard).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(7);
    std::fs::write(&shard, lines.join("\n") + "\n").unwrap();

    let (report, dead) = dead_lettered(&sb, &["--from", &sb.destination(), "--to", &fresh(&sb)]);
    assert_eq!(dead.len(), 1, "{report}");
    assert_eq!(dead[0].0, "t_002");
    assert!(
        dead[0].1.contains("loaded 49 rows") && dead[0].1.contains("recorded 50"),
        "{}",
        dead[0].1
    );
    assert_eq!(report["outcome"]["restored"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_without_its_definition_is_dead_lettered_naming_it_and_replayed_once_fixed() {
    let sb = exported_tables(2, 5).await;
    let definition =
        bqdrain::engine::layout::export_definition(&sb.table_source("t_001"), "exported");
    let kept = std::fs::read(sb.exports().join(&definition)).unwrap();
    std::fs::remove_file(sb.exports().join(&definition)).unwrap();

    let from = sb.destination();
    let (report, dead) = dead_lettered(
        &sb,
        &["--from", &from, "--to", &fresh(&sb), "--run-id", "back"],
    );
    assert_eq!(dead.len(), 1, "{report}");
    assert!(dead[0].1.contains("_TABLE.json"), "{}", dead[0].1);

    // The restore run reads in `bqdrain status` as any other run.
    let status = sb.status("back", &[]);
    assert_eq!(status["totals"]["expected"], 2, "{status}");
    assert_eq!(status["totals"]["exported"], 1, "{status}");
    assert_eq!(status["totals"]["dead_lettered"], 1, "{status}");
    assert_eq!(sb.unit_state("back", "t_002"), "exported");
    assert_eq!(sb.unit_state("back", "t_001"), "dead_lettered");

    // Once the cause is fixed, the commands the report gives load it.
    std::fs::write(sb.exports().join(&definition), kept).unwrap();
    for command in report["outcome"]["retry"].as_array().unwrap() {
        let out = Command::new("sh")
            .args(["-c", command.as_str().unwrap()])
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    Path::new(BIN).parent().unwrap().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(sb.unit_state("back", "t_001"), "exported");
    assert_eq!(
        rows(&sb.path("fresh.db"), "t_001"),
        rows(&sb.warehouse(), "t_001")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_flag_and_publishes_nothing() {
    let sb = exported_tables(1, 5).await;
    let from = sb.destination();
    let to = fresh(&sb);
    let runs = run_count(&sb);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![format!("{from}/nope"), to.clone()], "--from"),
        (vec![format!("{from}/warehouse/nope"), to.clone()], "--from"),
        (
            vec![sb.path("empty").display().to_string(), to.clone()],
            "--from",
        ),
        (vec![from.clone(), "postgres://x/y".into()], "--to"),
        (vec![from.clone(), "bigquery://p/d/t".into()], "--to"),
        (
            vec![from.clone(), "sqlite:///no/such/folder/x.db".into()],
            "--to",
        ),
        (vec![from.clone(), "bigquery://p".into()], "--topic"),
    ];
    let mut cases: Vec<(Vec<String>, &str)> = cases
        .into_iter()
        .map(|(args, flag)| {
            (
                vec![
                    "--from".into(),
                    args[0].clone(),
                    "--to".into(),
                    args[1].clone(),
                ],
                flag,
            )
        })
        .collect();
    for map in ["sales", "nope=x", "warehouse=a/b"] {
        let args = [
            "--from",
            &from,
            "--to",
            "bigquery://p",
            "--dataset-map",
            map,
        ];
        cases.push((args.map(String::from).to_vec(), "--dataset-map"));
    }
    for (args, flag) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = restore(&sb, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("error: {flag}")),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(run_count(&sb), runs, "nothing was published");
    assert!(!sb.path("fresh.db").exists(), "no target file was made");
}

/// A redelivered restore message loads its unit again: the rows are
/// replaced, never appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_a_unit_twice_writes_its_rows_once() {
    use bqdrain::adapters::local::warehouse::LocalWarehouse;
    use bqdrain::engine::layout;
    use bqdrain::ports::warehouse::{LoadRequest, Warehouse};

    let sb = exported_tables(1, 20).await;
    let copy = sb.path("copy.db");
    dataset::execute(&copy, "PRAGMA user_version = 1;").unwrap();
    let warehouse = LocalWarehouse::open(&format!("sqlite://{}", copy.display()), "--to").unwrap();
    let source = sb.table_source("t_001");
    let manifest = sb.manifest("exported", "t_001").unwrap();
    let definition = std::fs::read(
        sb.exports()
            .join(layout::export_definition(&source, "exported")),
    )
    .unwrap();
    let request = LoadRequest {
        job_key: "twice".into(),
        table: "t_001".into(),
        definition: serde_json::from_slice(&definition).unwrap(),
        source_root: sb.destination(),
        files: manifest.files.iter().map(|f| f.key.clone()).collect(),
        options: manifest.options.clone().unwrap(),
        replace_table: false,
    };
    for _ in 0..2 {
        let loaded = warehouse.load(&request, Default::default()).await.unwrap();
        assert_eq!(loaded.rows, Some(20));
    }
    assert_eq!(rows(&copy, "t_001"), rows(&sb.warehouse(), "t_001"));
}
