//! Issue 18, "errors that name the thing and the fix": each bad input a new
//! user met gets a message naming what is wrong, the flag (or variable, or
//! path) and the fix, with exit 2, and nothing is written or published.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use bqdrain::adapters::local::dataset;
use common::*;

fn bqdrain(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(["--log-format", "text"])
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn assert_refused(out: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for w in words {
        assert!(stderr.contains(w), "no {w:?} in: {stderr}");
    }
}

/// `--concurrency -1` said "unexpected argument '-1' found", naming no flag.
#[test]
fn a_negative_count_names_its_flag() {
    let sb = Sandbox::new();
    let out = bqdrain(
        &[
            "work",
            "--subscription",
            &sb.subscription(""),
            "--concurrency",
            "-1",
        ],
        &[],
    );
    assert_refused(&out, &["--concurrency", "1 or more"]);
}

/// A number too large for `--idle-timeout` was printed with its 300 digits,
/// and the fix said "give a non-negative number".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seconds_too_large_name_the_most_allowed() {
    let sb = Sandbox::new();
    sb.make_tables(1, 5);
    sb.produce("", "r1").await;
    let out = bqdrain(
        &[
            "work",
            "--subscription",
            &sb.subscription(""),
            "--idle-timeout",
            "1e300",
        ],
        &[],
    );
    assert_refused(&out, &["--idle-timeout", "at most"]);
    assert!(
        out.stderr.len() < 300,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A variable's bad value was reported as the flag's, which the user never
/// typed.
#[test]
fn a_variables_bad_value_names_the_variable() {
    let sb = Sandbox::new();
    let out = bqdrain(
        &["work", "--subscription", &sb.subscription("")],
        &[("BQDRAIN_CONCURRENCY", "x")],
    );
    assert_refused(&out, &["BQDRAIN_CONCURRENCY", "--concurrency"]);
}

/// `BQDRAIN_JSON=1` was refused ("possible values: true, false").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boolean_variables_take_1_and_0() {
    let sb = Sandbox::new();
    sb.make_tables(1, 5);
    sb.produce("", "r1").await;
    let out = bqdrain(
        &[
            "work",
            "--subscription",
            &sb.subscription(""),
            "--idle-timeout",
            "1",
        ],
        &[("BQDRAIN_JSON", "1")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_of(&out)["acked"], 1);
}

/// A destination that is a file was retried for 11 s before `Not a
/// directory`, exit 1; `file:///` wrote `/_bqdrain/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_cannot_be_a_folder_is_refused() {
    let sb = Sandbox::new();
    sb.make_tables(1, 5);
    let file = sb.path("exports.txt");
    std::fs::write(&file, "x").unwrap();
    let file_uri = format!("file://{}", file.display());
    let status = ["status", "--run-id", "r1", "--destination"];
    let out = bqdrain(&[&status[..], &[file_uri.as_str()]].concat(), &[]);
    assert_refused(&out, &["--destination", "is a file"]);
    let out = bqdrain(&[&status[..], &["file:///"]].concat(), &[]);
    assert_refused(&out, &["--destination", "root"]);
    for destination in [file_uri.as_str(), "file:///"] {
        let err = bqdrain::adapters::backends::open_store(destination, "--destination")
            .await
            .err()
            .unwrap_or_else(|| panic!("{destination} opened"));
        assert!(
            err.downcast_ref::<bqdrain::error::ConfigError>().is_some(),
            "{destination}: {err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    assert!(!sb.path("queue.db").exists(), "nothing published");
}

/// `status` printed control characters in names raw, and padded every line
/// to the longest name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_escapes_control_characters_and_pads_sensibly() {
    let sb = Sandbox::new();
    let odd = "bell\u{7}name";
    let long = "l".repeat(200);
    dataset::create_dummy_tables(&sb.warehouse(), &[odd.to_string(), long.clone()], 2).unwrap();
    sb.make_tables(1, 2);
    sb.produce("", "r1").await;
    let out = bqdrain(
        &[
            "status",
            "--destination",
            &sb.destination(),
            "--run-id",
            "r1",
        ],
        &[],
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains('\u{7}'), "{text:?}");
    assert!(text.contains("bell\\u{7}name"), "{text}");
    let t_001 = text.lines().find(|l| l.contains("t_001")).unwrap();
    assert!(
        t_001.len() < 100,
        "padded to the 200-character name: {t_001:?}"
    );
}

/// A producer stopped before publishing left a run `status` called
/// "pending", with no hint that `--resume` publishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_to_resume_a_run_never_fully_published() {
    let sb = Sandbox::new();
    sb.make_tables(2, 2);
    sb.produce("", "r1").await;
    std::fs::remove_file(sb.exports().join("_bqdrain/runs/r1/published.json")).unwrap();
    let out = bqdrain(
        &[
            "status",
            "--destination",
            &sb.destination(),
            "--run-id",
            "r1",
        ],
        &[],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("--run-id r1 --resume"), "{text}");
}

/// A table named `dollar$1` was shown as table `dollar`, partition `$1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dollar_in_a_table_name_is_no_partition() {
    let sb = Sandbox::new();
    dataset::create_dummy_tables(&sb.warehouse(), &["dollar$1".to_string()], 2).unwrap();
    sb.produce("", "r1").await;
    let worker = sb.spawn_worker(&sb.subscription(""), &["--idle-timeout", "1"]);
    let (status, _) = finish(worker, Duration::from_secs(60));
    assert!(status.success(), "{}", sb.logs());
    let out = bqdrain(
        &[
            "status",
            "--destination",
            &sb.destination(),
            "--run-id",
            "r1",
        ],
        &[],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("partition"), "{text}");
    assert!(text.contains("dollar$1  exported"), "{text}");
}

/// A read-only destination was retried for 7.5 s before `Operation not
/// permitted`, exit 1. (`/sys` refuses new folders even to root, where
/// permissions would not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_cannot_be_written_is_refused_before_publishing() {
    let sb = Sandbox::new();
    sb.make_tables(1, 5);
    let out = Command::new(std::path::Path::new(BIN).with_file_name("bqdrain-producer"))
        .args(["--source", &sb.source(""), "--topic", &sb.queue("work")])
        .args(["--destination", "file:///sys/bqdrain-exports"])
        .output()
        .unwrap();
    assert_refused(&out, &["--destination", "cannot be written", "permissions"]);
    assert_eq!(sb.depth("work").await, 0, "nothing published");
}

/// `replay` with nothing to replay took 7 s: a sweep waited for pulls to
/// come back empty. A queue that can count its messages is not pulled when
/// it holds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_an_empty_dead_letter_queue_does_not_wait() {
    let sb = Sandbox::new();
    sb.make_tables(1, 5);
    sb.produce("", "r1").await;
    sb.produce_to("dead", "", "r2").await;
    let replay = || {
        let out = sb.replay(&[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_of(&out)
    };
    let report = replay();
    assert_eq!(
        (report["replayed"].as_u64(), report["pulls"].as_u64()),
        (Some(1), Some(4))
    );
    let report = replay();
    assert_eq!(
        (report["replayed"].as_u64(), report["pulls"].as_u64()),
        (Some(0), Some(0))
    );
}
