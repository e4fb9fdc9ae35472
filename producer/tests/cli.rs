//! The producer's contract: filters, skipped kinds, order, and refusing bad
//! options before anything is published.

use std::process::Command;

use bqdrain::adapters::local::queue::peek;
use bqdrain::adapters::local::{dataset, partitions, sqlite_file};
use bqdrain::ports::warehouse::Partitioning;

mod common;
use common::{Setup, BIN};

#[tokio::test]
async fn publishes_matching_tables_largest_first_and_skips_views() {
    let s = Setup::new();
    let report = s.report(&["--include", "a_*", "--exclude", "a_3", "--run-id", "r1"]);
    assert_eq!(report["run_id"], "r1");
    assert_eq!(report["published"], 2);
    assert_eq!(report["excluded"], 2, "b_1 and a_3");
    assert_eq!(report["skipped"][0]["table"], "a_view");
    let published: Vec<String> = peek(&s.queue())
        .await
        .unwrap()
        .iter()
        .map(|e| e.attributes["table"].clone())
        .collect();
    assert_eq!(published, ["a_2", "a_1"], "largest first");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.dir.path().join("out/_bqdrain/runs/r1/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["units"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_options_exit_2_and_publish_nothing() {
    let s = Setup::new();
    for (args, flag) in [
        (
            &["--format", "avro", "--compression", "gzip"][..],
            "--compression",
        ),
        (&["--format", "avro"][..], "--format"),
        (&["--field-delimiter", "ab"][..], "--field-delimiter"),
        (&["--include", "[a"][..], "--include"),
        (&["--run-id", "a/b"][..], "--run-id"),
        (&["--partitions-last-days", "3"][..], "--partitions"),
        (&["--partitions-min-rows", "3"][..], "--partitions"),
        (
            &["--partitions", "--partitions-last-days", "0"][..],
            "--partitions-last-days",
        ),
        (
            &["--partitions", "--partitions-since", "2026-13-01"][..],
            "--partitions-since",
        ),
    ] {
        let out = s.produce(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    assert_eq!(s.published().await, 0);
}

#[tokio::test]
async fn a_partition_window_that_selects_nothing_publishes_nothing_and_says_so() {
    let s = Setup::new();
    let db = s.dir.path().join("wh.db");
    let last_day = "2026-12-03".parse().unwrap();
    dataset::create_daily_table(&db, "ev", last_day, 3, 5).unwrap();
    partitions::partition_by(&db, "ev", "day", Partitioning::Day).unwrap();
    let out = s.produce(&[
        "--include",
        "ev",
        "--partitions",
        "--partitions-since",
        "2030-01-01",
        "--only-changed",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("published 0 message(s)"), "{stdout}");
    assert!(
        stdout.contains("outside the partition window 3"),
        "{stdout}"
    );
    assert!(stdout.contains("nothing to export"), "{stdout}");
    assert_eq!(s.published().await, 0);

    let out = s.produce(&[
        "--json",
        "--include",
        "ev",
        "--partitions",
        "--only-changed",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["published"].as_u64(), report["unchanged"].as_u64()),
        (Some(3), Some(0))
    );
    let published: Vec<String> = peek(&s.queue())
        .await
        .unwrap()
        .iter()
        .map(|e| e.attributes["partition"].clone())
        .collect();
    assert_eq!(published.len(), 3);
    assert!(published.contains(&"20261201".to_string()), "{published:?}");
}

#[tokio::test]
async fn views_are_published_under_the_byte_guard_and_refused_above_it() {
    let s = Setup::new();
    let refused = [
        (&["--views", "--max-bytes-billed", "1"][..], "a_view ("),
        (&["--max-bytes-billed", "1000000"][..], "add --views"),
        (
            &["--views", "--format", "parquet", "--compression", "zstd"][..],
            "EXPORT DATA",
        ),
    ];
    for (args, says) in refused {
        let out = s.produce(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        let flag = if args.contains(&"zstd") {
            "--compression"
        } else {
            "--max-bytes-billed"
        };
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    assert_eq!(s.published().await, 0);

    let report = s.report(&[
        "--views",
        "--max-bytes-billed",
        "1000000",
        "--include",
        "a_*",
    ]);
    assert_eq!(report["published"], 4, "{report}");
    assert_eq!(report["skipped"].as_array().unwrap().len(), 0, "{report}");
    let estimated = report["view_bytes_estimated"].as_u64().unwrap();
    assert!(estimated > 1, "a_view reads 5 rows: {report}");
    let view = peek(&s.queue())
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.attributes["table"] == "a_view")
        .expect("a_view published");
    let body: serde_json::Value = serde_json::from_slice(&view.data).unwrap();
    assert_eq!(body["source"]["view"], true, "{body}");
    assert_eq!(body["options"]["max_bytes_billed"], 1_000_000, "{body}");
}

#[test]
fn every_flag_has_an_environment_twin() {
    let help = String::from_utf8(Command::new(BIN).arg("--help").output().unwrap().stdout).unwrap();
    let flags = help
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("--") && !l.contains("--help") && !l.contains("--version")
        })
        .count();
    assert!(flags >= 12, "{help}");
    assert_eq!(help.matches("[env: BQDRAIN_").count(), flags, "{help}");
}

/// Cloud Scheduler delivers at least once: a second trigger within
/// `--duplicate-window` minutes of a run of the same sources and options
/// publishes nothing, names the run it duplicates and exits 0; a run with
/// other options, or without the window, is not a duplicate.
#[tokio::test]
async fn a_duplicate_trigger_within_the_window_publishes_nothing() {
    let s = Setup::new();
    let json = |args: &[&str]| s.report(args);
    let first = json(&["--duplicate-window", "10", "--run-id", "r1"]);
    assert_eq!(first["published"], 4);
    assert!(first.get("duplicate_of").is_none(), "{first}");

    let second = json(&["--duplicate-window", "10", "--run-id", "r2"]);
    assert_eq!(second["duplicate_of"], "r1", "{second}");
    assert_eq!(second["published"], 0);
    assert_eq!(s.published().await, 4, "only the first run's messages");
    assert!(
        !s.dir.path().join("out/_bqdrain/runs/r2").exists(),
        "the duplicate leaves no run behind"
    );

    let other = json(&[
        "--duplicate-window",
        "10",
        "--run-id",
        "r3",
        "--format",
        "json",
    ]);
    assert_eq!(other["published"], 4, "other options: another run");
    let unguarded = json(&["--run-id", "r4"]);
    assert_eq!(unguarded["published"], 4, "no window: no check");
}

/// Item 10 of issue 18: a quote or a line break as the delimiter was
/// accepted, and the CSV could not be read back (3 rows in the manifest, 4
/// to a CSV reader).
#[tokio::test]
async fn delimiters_csv_cannot_carry_are_refused() {
    let s = Setup::new();
    for delimiter in ["\"", "\n", "\r"] {
        let out = s.produce(&["--field-delimiter", delimiter]);
        assert_eq!(out.status.code(), Some(2), "{delimiter:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--field-delimiter") && stderr.contains("CSV"),
            "{delimiter:?}: {stderr}"
        );
    }
    assert_eq!(s.published().await, 0);
    assert!(!s.dir.path().join("out").exists(), "nothing written");
}

/// Item 11 of issue 18: the warehouse file given as the queue got the
/// queue's tables inside the source, and its own `messages` table published
/// as a unit.
#[tokio::test]
async fn a_queue_file_that_is_a_source_or_no_queue_is_refused() {
    let s = Setup::new();
    let source = s.dir.path().join("wh.db");
    let tables_before = sqlite_file::tables(&source, "t").unwrap();
    let other = s.dir.path().join("other.db");
    dataset::execute(&other, "CREATE TABLE notes (id INT)").unwrap();
    for (queue, words) in [(&source, "is a source of this run"), (&other, "notes")] {
        let topic = format!("queue://{}#work", queue.display());
        let out = Command::new(BIN)
            .args(["--source", &format!("sqlite://{}", source.display())])
            .args(["--topic", &topic, "--destination", &s.destination()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{topic}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--topic") && stderr.contains(words),
            "{topic}: {stderr}"
        );
    }
    assert_eq!(sqlite_file::tables(&source, "t").unwrap(), tables_before);
    assert_eq!(
        sqlite_file::tables(&other, "t").unwrap().unwrap(),
        ["notes"],
        "no queue tables added"
    );
    assert!(!s.dir.path().join("out").exists(), "nothing written");
}

/// A source or queue that is not SQLite said `file is not a database:
/// Error code 26`, exit 1.
#[tokio::test]
async fn files_that_are_not_sqlite_exit_2_naming_the_flag() {
    let s = Setup::new();
    let text = s.dir.path().join("notes.txt");
    std::fs::write(&text, "not a database, just some text that is long enough").unwrap();
    let source = format!("sqlite://{}", s.dir.path().join("wh.db").display());
    let text_uri =
        |scheme: &str, fragment: &str| format!("{scheme}://{}{fragment}", text.display());
    for (source, topic, flag) in [
        (text_uri("sqlite", ""), s.queue(), "--source"),
        (source, text_uri("queue", "#work"), "--topic"),
    ] {
        let out = Command::new(BIN)
            .args(["--source", &source, "--topic", &topic])
            .args(["--destination", &s.destination()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains("not a SQLite database"),
            "{flag}: {stderr}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        "not a database, just some text that is long enough"
    );
}

/// Issue 17 item 3 / issue 18 item 4: a name too long for the store was
/// published, then failed as "File name too long" (retried as transient,
/// and at 300 characters even its dead-letter record could not be written).
/// It is refused when planning, naming the limit and the fix.
#[tokio::test]
async fn names_too_long_for_the_store_are_refused_when_planning() {
    let s = Setup::new();
    let long = "t".repeat(240);
    dataset::create_dummy_tables(&s.dir.path().join("wh.db"), std::slice::from_ref(&long), 3)
        .unwrap();
    let out = s.produce(&[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for words in [
        "--destination",
        "limit of 255",
        &format!("--exclude '{long}'"),
    ] {
        assert!(stderr.contains(words), "no {words:?} in: {stderr}");
    }
    assert_eq!(s.published().await, 0);
    assert!(!s.dir.path().join("out").exists(), "nothing written");
    // Left out, the rest of the dataset is exported.
    let out = s.produce(&["--exclude", &long]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.published().await, 4);
}

/// Issue 18, item 3: a table whose name cannot be a folder is skipped with
/// the reason, as a view is, instead of published for a worker to refuse.
#[tokio::test]
async fn tables_whose_names_cannot_be_folders_are_skipped_with_the_reason() {
    let s = Setup::new();
    let db = s.dir.path().join("wh.db");
    let names = ["", ".", "..", "a/b", "back\\slash", "new\nline"];
    let names: Vec<String> = names.map(String::from).to_vec();
    dataset::create_dummy_tables(&db, &names, 5).unwrap();
    let report = s.report(&["--run-id", "r1"]);
    assert_eq!(report["published"], 4, "a_1, a_2, a_3, b_1: {report}");
    let published: Vec<String> = peek(&s.queue())
        .await
        .unwrap()
        .iter()
        .map(|e| e.attributes["table"].clone())
        .collect();
    assert!(
        published.iter().all(|t| names.iter().all(|n| n != t)),
        "{published:?}"
    );
    for name in &names {
        let skipped = report["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["table"] == name.as_str())
            .unwrap_or_else(|| panic!("{name:?} is not skipped: {report}"));
        assert!(
            skipped["reason"]
                .as_str()
                .unwrap()
                .contains("cannot be a folder of the destination"),
            "{skipped}"
        );
    }
}
