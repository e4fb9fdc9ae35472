//! The command-line contract: the demo, exit codes, help, log format.

mod common;

use std::process::Command;

use common::*;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Runs `bqdrain demo --json` in `dir` with `args`; it must succeed.
fn demo(dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = run(&[&["demo", "--json", "--dir", dir.to_str().unwrap()], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn demo_exports_every_table_with_its_defaults() {
    let sb = Sandbox::new();
    let dir = sb.path("demo");
    let out = run(&["demo", "--json", "--dir", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tables"], 30);
    assert_eq!(report["exported"], 30);
    assert_eq!(report["dead_lettered"], 0);
    assert_eq!(report["files"], 30);
    assert_eq!(report["rows"], 30_000);
    assert_eq!(report["tasks"], 4);
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
    let run_id = report["run_id"].as_str().unwrap();
    let csv = std::fs::read_to_string(dir.join(format!(
        "exports/warehouse/dummy_01/run={run_id}/dummy_01_000000000000.csv"
    )))
    .unwrap();
    assert_eq!(csv.lines().count(), 1001);
    assert_eq!(csv.lines().nth(1), Some("1,user_1,19"));
}

#[test]
fn demo_incremental_exports_partitions_then_only_what_changed() {
    let sb = Sandbox::new();
    let dir = sb.path("demo");
    let report = demo(&dir, &["--incremental", "--tables", "4", "--rows", "10"]);
    // 4 tables whole, events in 7 daily partitions, and a view.
    assert_eq!(
        (report["units"].as_u64(), report["exported"].as_u64()),
        (Some(12), Some(12))
    );
    let second = &report["incremental"];
    let today = chrono::Utc::now().date_naive().format("%Y%m%d").to_string();
    assert_eq!(
        second["published_units"],
        serde_json::json!([
            "dummy_01",
            "dummy_03",
            format!("events${today}"),
            "latest_events"
        ])
    );
    assert_eq!(second["unchanged"], 8);
    let run_id = second["run_id"].as_str().unwrap();
    let csv = std::fs::read_to_string(dir.join(format!(
        "exports/warehouse/events/partition={today}/run={run_id}/events_000000000000.csv"
    )))
    .unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + 10 + 2,
        "header, a day's rows, the 2 added"
    );
    let view = std::fs::read_to_string(dir.join(format!(
        "exports/warehouse/latest_events/run={run_id}/latest_events_000000000000.csv"
    )))
    .unwrap();
    let sorted = |text: &str| {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&view), sorted(&csv), "the view holds the newest day");
}

#[test]
fn demo_dead_letters_the_tables_asked_to_fail() {
    let sb = Sandbox::new();
    let dir = sb.path("demo");
    let report = demo(
        &dir,
        &[
            "--tables", "5", "--rows", "10", "--tasks", "2", "--fail", "dummy_02",
        ],
    );
    assert_eq!(
        (
            report["exported"].as_u64(),
            report["dead_lettered"].as_u64()
        ),
        (Some(4), Some(1))
    );
    assert_eq!(report["ok"], true);
}

#[test]
fn demo_fix_hint_names_the_table_it_broke() {
    let sb = Sandbox::new();
    let dir = sb.path("demo");
    let out = run(&[
        "demo",
        "--tables",
        "3",
        "--rows",
        "5",
        "--tasks",
        "1",
        "--fail",
        "dummy_02",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let warehouse = dir.join("warehouse.db");
    let clear = format!(
        "bqdrain fault --source sqlite://{} --table dummy_02 --kind clear",
        warehouse.display()
    );
    assert!(stdout.contains(&clear), "no `{clear}` in:\n{stdout}");
    assert!(
        !stdout.contains("TABLE"),
        "a placeholder left in:\n{stdout}"
    );
}

#[test]
fn bad_input_exits_2_naming_the_flag() {
    let sb = Sandbox::new();
    let dir = sb.path("demo");
    let out = run(&["demo", "--fail", "nope", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fail"));

    let out = run(&[
        "work",
        "--subscription",
        "queue://x.db?ack_deadline=9000#work",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ack_deadline"));

    let out = run(&[
        "status",
        "--destination",
        &sb.destination(),
        "--run-id",
        "missing",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--run-id"));

    let out = run(&["work", "--subscription", "pubsub://projects/p/topics/t"]);
    assert_eq!(out.status.code(), Some(2), "a topic is no subscription");
    assert!(String::from_utf8_lossy(&out.stderr).contains("projects/PROJECT/subscriptions/NAME"));
}

#[test]
fn every_flag_has_an_environment_twin() {
    for cmd in ["work", "replay", "status", "demo", "fault"] {
        let help = String::from_utf8(run(&[cmd, "--help"]).stdout).unwrap();
        let flags = help
            .lines()
            .filter(|l| l.trim_start().starts_with("--") && !l.contains("--help"))
            .count();
        let twins = help.matches("[env: BQDRAIN_").count();
        assert_eq!(
            flags, twins,
            "{cmd}: every option shows its BQDRAIN_ variable\n{help}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_with_severity_when_not_on_a_terminal() {
    let sb = Sandbox::new();
    sb.make_tables(1, 5);
    sb.produce("", "r1").await;
    let out = Command::new(BIN)
        .args(["work", "--subscription", &sb.subscription("")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2);
    assert!(lines
        .iter()
        .all(|l| l["severity"].is_string() && l["message"].is_string()));
    assert!(lines
        .iter()
        .any(|l| l["message"] == "exported" && l["unit"] == "t_001"));
}

/// Item 9 of issue 18: the demo replaced a folder's `warehouse.db` and
/// `queue.db` without asking, and a user's table in it was gone.
#[test]
fn demo_refuses_a_dir_holding_what_it_did_not_make() {
    let sb = Sandbox::new();
    let dir = sb.path("mine");
    std::fs::create_dir_all(&dir).unwrap();
    let warehouse = dir.join("warehouse.db");
    bqdrain::adapters::local::dataset::execute(
        &warehouse,
        "CREATE TABLE customers (id INT); INSERT INTO customers VALUES (7);",
    )
    .unwrap();
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    let args = ["demo", "--tables", "2", "--rows", "3", "--tasks", "1"];
    let out = run(&[&args[..], &["--dir", dir.to_str().unwrap()]].concat());
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for words in ["--dir", "notes.txt", "--force"] {
        assert!(stderr.contains(words), "no {words:?} in: {stderr}");
    }
    std::fs::remove_file(&notes).unwrap();
    let out = run(&[&args[..], &["--dir", dir.to_str().unwrap()]].concat());
    assert_eq!(out.status.code(), Some(2), "a table the demo did not make");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("customers"), "{stderr}");
    assert_eq!(
        rusqlite_count(&warehouse, "customers"),
        1,
        "the user's table is kept"
    );

    // Its own folder it runs in again; --force takes any folder.
    let demo = sb.path("demo");
    demo_ok(&demo, &args);
    demo_ok(&demo, &args);
    let out = run(&[&args[..], &["--force", "--dir", dir.to_str().unwrap()]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `demo --dir` on a file said `File exists (os error 17)`, exit 1.
#[test]
fn demo_dir_that_is_a_file_exits_2_naming_it() {
    let sb = Sandbox::new();
    let file = sb.path("afile");
    std::fs::write(&file, "x").unwrap();
    let out = run(&["demo", "--tables", "1", "--dir", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--dir") && stderr.contains("is a file"),
        "{stderr}"
    );
}

fn demo_ok(dir: &std::path::Path, args: &[&str]) {
    let out = run(&[args, &["--dir", dir.to_str().unwrap()]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rusqlite_count(db: &std::path::Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}
