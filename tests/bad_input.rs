//! Bad input, one row each: a command line, the exit code it must give and
//! words its error must contain. Every row runs in a fresh sandbox holding a
//! published run, and must leave it as it found it: no message published,
//! acked or moved, no file written or created (a typo in a path must not
//! make a new file). A new bad input costs one row of `CASES`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bqdrain::adapters::local::queue::peek;
use common::*;

/// Which binary a row runs.
#[derive(Clone, Copy)]
enum Bin {
    Bqdrain,
    Producer,
}

/// One bad input. In `args`, `{dir}` stands for the sandbox's folder, which
/// holds `warehouse.db` (tables t_001 and t_002 of 5 rows), `queue.db` (run
/// r1's 2 messages on queue `work`, run r2's 2 on queue `dead`) and
/// `exports/` (both runs' manifests).
struct Case {
    name: &'static str,
    bin: Bin,
    args: &'static [&'static str],
    /// Environment variables set for the command (`{dir}` replaced too).
    env: &'static [(&'static str, &'static str)],
    /// Makes what the row needs beyond the common sandbox.
    prepare: fn(&Sandbox),
    exit: i32,
    /// Words the error on stderr must contain.
    says: &'static [&'static str],
}

fn nothing(_: &Sandbox) {}

/// The common parts of a row, for `..ROW`.
const ROW: Case = Case {
    name: "",
    bin: Bin::Bqdrain,
    args: &[],
    env: &[],
    prepare: nothing,
    exit: 2,
    says: &[],
};

const CASES: &[Case] = &[
    Case {
        name: "a worker with no dead-letter topic anywhere",
        args: &["work", "--subscription", "queue://{dir}/queue.db#work"],
        says: &["--dead-letter-topic"],
        ..ROW
    },
    Case {
        name: "avro with gzip",
        bin: Bin::Producer,
        args: &[
            "--source",
            "sqlite://{dir}/warehouse.db",
            "--topic",
            "queue://{dir}/queue.db#work",
            "--destination",
            "file://{dir}/exports",
            "--format",
            "avro",
            "--compression",
            "gzip",
        ],
        says: &["--compression", "deflate"],
        ..ROW
    },
    // Issue 18, item 1: a dead-letter queue that is the work queue.
    Case {
        name: "a subscription whose dead-letter queue is itself",
        args: &[
            "work",
            "--subscription",
            "queue://{dir}/queue.db?dead_letter=work#work",
        ],
        says: &["--subscription", "dead_letter=work", "dead_letter=dead"],
        ..ROW
    },
    Case {
        name: "a dead-letter topic that is the work queue",
        args: &[
            "work",
            "--subscription",
            "queue://{dir}/queue.db#work",
            "--dead-letter-topic",
            "queue://{dir}/queue.db#work",
        ],
        says: &["--dead-letter-topic", "the work queue"],
        ..ROW
    },
    // Item 2: replay to the queue it reads.
    Case {
        name: "replay from a queue to itself",
        args: &[
            "replay",
            "--from",
            "queue://{dir}/queue.db#dead",
            "--to",
            "queue://{dir}/queue.db#dead",
        ],
        says: &["--to", "--from", "work topic"],
        ..ROW
    },
    // Item 6: an idle timeout of 0.
    Case {
        name: "an idle timeout of 0",
        args: &[
            "work",
            "--subscription",
            "queue://{dir}/queue.db?dead_letter=dead#work",
            "--idle-timeout",
            "0",
        ],
        says: &["--idle-timeout", "above 0"],
        ..ROW
    },
    Case {
        name: "an idle timeout of 0 from the environment",
        args: &[
            "work",
            "--subscription",
            "queue://{dir}/queue.db?dead_letter=dead#work",
        ],
        env: &[("BQDRAIN_IDLE_TIMEOUT", "0")],
        says: &["--idle-timeout", "above 0"],
        ..ROW
    },
    Case {
        name: "queue settings written after the queue's name",
        args: &[
            "work",
            "--subscription",
            "queue://{dir}/queue.db#work?dead_letter=dead",
        ],
        says: &["--subscription", "before '#'", "queue://PATH?SETTINGS#NAME"],
        ..ROW
    },
    // Item 7: only the producer makes a queue file.
    Case {
        name: "a worker on a mistyped queue path",
        args: &[
            "work",
            "--subscription",
            "queue://{dir}/typo/queue.db?dead_letter=dead#work",
        ],
        says: &["--subscription", "typo/queue.db", "does not exist"],
        ..ROW
    },
    Case {
        name: "replay from a mistyped queue path",
        args: &[
            "replay",
            "--from",
            "queue://{dir}/typo.db#dead",
            "--to",
            "queue://{dir}/queue.db#work",
        ],
        says: &["--from", "typo.db", "does not exist"],
        ..ROW
    },
    Case {
        name: "replay to a mistyped queue path",
        args: &[
            "replay",
            "--from",
            "queue://{dir}/queue.db#dead",
            "--to",
            "queue://{dir}/typo.db#work",
        ],
        says: &["--to", "typo.db", "does not exist"],
        ..ROW
    },
    Case {
        name: "status reconciling a mistyped queue path",
        args: &[
            "status",
            "--destination",
            "file://{dir}/exports",
            "--run-id",
            "r1",
            "--reconcile",
            "queue://{dir}/typo.db#dead",
        ],
        says: &["--reconcile", "typo.db", "does not exist"],
        ..ROW
    },
    // Item 8: names that match nothing.
    Case {
        name: "clearing the fault of a table that does not exist",
        args: &[
            "fault",
            "--source",
            "sqlite://{dir}/warehouse.db",
            "--table",
            "nosuch",
            "--kind",
            "clear",
        ],
        says: &["--table", "nosuch", "t_001"],
        ..ROW
    },
    Case {
        name: "a worker watching a run that does not exist",
        args: &[
            "work",
            "--subscription",
            "queue://{dir}/queue.db?dead_letter=dead#work",
            "--run-id",
            "nosuch",
            "--destination",
            "file://{dir}/exports",
        ],
        says: &["--run-id", "nosuch", "no run"],
        ..ROW
    },
    // Item 9: the demo's folder holding a user's files.
    Case {
        name: "the demo in a folder holding a user's file",
        args: &["demo", "--tables", "1", "--dir", "{dir}/mine"],
        prepare: users_folder,
        says: &["--dir", "notes.txt", "--force"],
        ..ROW
    },
    Case {
        name: "the demo in a file",
        args: &["demo", "--tables", "1", "--dir", "{dir}/notes.txt"],
        prepare: text_file,
        says: &["--dir", "is a file"],
        ..ROW
    },
    // Item 10: a delimiter CSV cannot carry.
    Case {
        name: "a quote as the CSV delimiter",
        bin: Bin::Producer,
        args: &[
            "--source",
            "sqlite://{dir}/warehouse.db",
            "--topic",
            "queue://{dir}/queue.db#work",
            "--destination",
            "file://{dir}/exports",
            "--field-delimiter",
            "\"",
        ],
        says: &["--field-delimiter", "CSV"],
        ..ROW
    },
    // Item 11: the warehouse as the queue.
    Case {
        name: "the warehouse file as the queue",
        bin: Bin::Producer,
        args: &[
            "--source",
            "sqlite://{dir}/warehouse.db",
            "--topic",
            "queue://{dir}/warehouse.db#work",
            "--destination",
            "file://{dir}/exports",
        ],
        says: &["--topic", "is a source of this run"],
        ..ROW
    },
    Case {
        name: "a worker on the warehouse file",
        args: &[
            "work",
            "--subscription",
            "queue://{dir}/warehouse.db?dead_letter=dead#work",
        ],
        says: &["--subscription", "t_001", "not a queue's"],
        ..ROW
    },
    // Errors that name the thing and the fix.
    Case {
        name: "a source that is not SQLite",
        bin: Bin::Producer,
        args: &[
            "--source",
            "sqlite://{dir}/notes.txt",
            "--topic",
            "queue://{dir}/queue.db#work",
            "--destination",
            "file://{dir}/exports",
        ],
        prepare: text_file,
        says: &["--source", "not a SQLite database"],
        ..ROW
    },
    Case {
        name: "a queue that is not SQLite",
        args: &[
            "work",
            "--subscription",
            "queue://{dir}/notes.txt?dead_letter=dead#work",
        ],
        prepare: text_file,
        says: &["--subscription", "not a SQLite database"],
        ..ROW
    },
    Case {
        name: "a destination that is a file",
        bin: Bin::Producer,
        args: &[
            "--source",
            "sqlite://{dir}/warehouse.db",
            "--topic",
            "queue://{dir}/queue.db#work",
            "--destination",
            "file://{dir}/notes.txt",
        ],
        prepare: text_file,
        says: &["--destination", "is a file"],
        ..ROW
    },
    Case {
        name: "a destination that cannot be written",
        bin: Bin::Producer,
        args: &[
            "--source",
            "sqlite://{dir}/warehouse.db",
            "--topic",
            "queue://{dir}/queue.db#work",
            "--destination",
            "file:///sys/bqdrain-exports",
        ],
        says: &["--destination", "cannot be written"],
        ..ROW
    },
    Case {
        name: "the file system's root as the destination",
        args: &["status", "--destination", "file:///", "--run-id", "r1"],
        says: &["--destination", "root"],
        ..ROW
    },
    Case {
        name: "a negative concurrency",
        args: &[
            "work",
            "--subscription",
            "queue://{dir}/queue.db?dead_letter=dead#work",
            "--concurrency",
            "-1",
        ],
        says: &["--concurrency", "1 or more"],
        ..ROW
    },
    Case {
        name: "an idle timeout of more than a year",
        args: &[
            "work",
            "--subscription",
            "queue://{dir}/queue.db?dead_letter=dead#work",
            "--idle-timeout",
            "1e300",
        ],
        says: &["--idle-timeout", "at most"],
        ..ROW
    },
    // Issue 17, item 3: a name the store cannot hold.
    Case {
        name: "a table name too long for a file",
        bin: Bin::Producer,
        args: &[
            "--source",
            "sqlite://{dir}/warehouse.db",
            "--topic",
            "queue://{dir}/queue.db#work",
            "--destination",
            "file://{dir}/exports",
        ],
        prepare: long_table,
        says: &["--destination", "limit of 255", "--exclude"],
        ..ROW
    },
];

/// A folder of the user's: `mine/notes.txt`.
fn users_folder(sb: &Sandbox) {
    std::fs::create_dir_all(sb.path("mine")).unwrap();
    std::fs::write(sb.path("mine/notes.txt"), "mine").unwrap();
}

/// `notes.txt`: a file that is no database and no folder.
fn text_file(sb: &Sandbox) {
    std::fs::write(sb.path("notes.txt"), "not a database, only some text").unwrap();
}

/// A table whose shards' names would pass a file name's 255 bytes.
fn long_table(sb: &Sandbox) {
    let name = "t".repeat(240);
    bqdrain::adapters::local::dataset::create_dummy_tables(&sb.warehouse(), &[name], 1).unwrap();
}

#[test]
fn bad_inputs_exit_with_their_code_and_error_and_change_nothing() {
    let mut failures = Vec::new();
    for case in CASES {
        if let Err(failure) = check(case) {
            failures.push(format!("{}: {failure}", case.name));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// Runs one row in a fresh sandbox; what went wrong, if anything.
fn check(case: &Case) -> Result<(), String> {
    let sb = prepared_sandbox();
    (case.prepare)(&sb);
    let before = snapshot(&sb);
    let dir = sb.dir.path().display().to_string();
    let args: Vec<String> = case.args.iter().map(|a| a.replace("{dir}", &dir)).collect();
    let env: Vec<(&str, String)> = case
        .env
        .iter()
        .map(|(k, v)| (*k, v.replace("{dir}", &dir)))
        .collect();
    let (code, stderr) = run(case.bin, &args, &env)?;
    let mut wrong = Vec::new();
    if code != Some(case.exit) {
        wrong.push(format!("exit {code:?}, not {}", case.exit));
    }
    for word in case.says {
        if !stderr.contains(word) {
            wrong.push(format!("the error does not say {word:?}"));
        }
    }
    wrong.extend(changes(&before, &snapshot(&sb)));
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n  stderr: {stderr}", wrong.join("; ")))
    }
}

fn prepared_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.make_tables(2, 5);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        sb.produce("", "r1").await;
        sb.produce_to("dead", "", "r2").await;
    });
    sb
}

/// Longest a row may take: a bad input must be refused, not waited on.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs the binary with `args` and `env`; its exit code and stderr.
fn run(bin: Bin, args: &[String], env: &[(&str, String)]) -> Result<(Option<i32>, String), String> {
    let program = match bin {
        Bin::Bqdrain => Path::new(BIN).to_path_buf(),
        Bin::Producer => Path::new(BIN).with_file_name("bqdrain-producer"),
    };
    let out = tempfile::tempdir().unwrap();
    let stderr_path = out.path().join("stderr");
    let mut child = Command::new(&program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .map_err(|e| format!("cannot start {program:?} (run `cargo test --workspace`): {e}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            child.kill().unwrap();
            child.wait().unwrap();
            return Err(format!("still running after {LIMIT:?}; killed"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    Ok((status.code(), stderr))
}

/// What a row must not change: the messages of both queues, and every file
/// of the sandbox (SQLite files by name, others with their contents).
#[derive(Debug, PartialEq)]
struct Snapshot {
    queues: BTreeMap<&'static str, Vec<String>>,
    files: BTreeMap<String, Option<Vec<u8>>>,
}

fn snapshot(sb: &Sandbox) -> Snapshot {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut queues = BTreeMap::new();
    for name in ["work", "dead"] {
        let messages = rt.block_on(peek(&sb.queue(name))).unwrap();
        let bodies = messages
            .iter()
            .map(|m| String::from_utf8_lossy(&m.data).into_owned())
            .collect();
        queues.insert(name, bodies);
    }
    let mut files = BTreeMap::new();
    collect_files(sb.dir.path(), sb.dir.path(), &mut files);
    Snapshot { queues, files }
}

/// What differs between two snapshots, one line each.
fn changes(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (queue, messages) in &before.queues {
        if after.queues[queue] != *messages {
            out.push(format!(
                "queue {queue} held {messages:?}, now {:?}",
                after.queues[queue]
            ));
        }
    }
    for (name, contents) in &after.files {
        match before.files.get(name) {
            None => out.push(format!("{name} was made")),
            Some(old) if old != contents => out.push(format!("{name} was changed")),
            _ => {}
        }
    }
    for name in before
        .files
        .keys()
        .filter(|n| !after.files.contains_key(*n))
    {
        out.push(format!("{name} was removed"));
    }
    out
}

fn collect_files(dir: &Path, root: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.strip_prefix(root).unwrap().display().to_string();
        if path.is_dir() {
            out.insert(format!("{name}/"), None);
            collect_files(&path, root, out);
        } else if name.ends_with(".db") {
            out.insert(name, None);
        } else if !name.ends_with("-wal") && !name.ends_with("-shm") {
            out.insert(name, Some(std::fs::read(&path).unwrap()));
        }
    }
}

/// A replay target that feeds the queue replay reads (a Pub/Sub topic can
/// be both, unseen by the check of `--to`): replay takes what the queue held
/// when it began, once, and ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_onto_the_queue_it_reads_moves_each_message_once() {
    use bqdrain::adapters::backends;
    use bqdrain::commands::replay::{replay, ReplayFilter};
    use bqdrain::ports::queue::ReceiveSettings;

    let sb = Sandbox::new();
    sb.make_tables(2, 5);
    sb.produce_to("dead", "", "r1").await;
    let from = backends::open_subscription(&sb.queue("dead"), "--from", &ReceiveSettings::sweep())
        .await
        .unwrap();
    let to = backends::open_topic(&sb.queue("dead"), "--to")
        .await
        .unwrap();
    let replayed = tokio::time::timeout(
        LIMIT,
        replay(from.as_ref(), to.as_ref(), &ReplayFilter::default()),
    )
    .await
    .expect("replay ends")
    .unwrap();
    assert_eq!(replayed.replayed, 2);
    assert_eq!(sb.depth("dead").await, 2, "each message once, nothing more");
}
