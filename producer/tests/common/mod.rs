//! A local dataset, queue and export root for running the real producer.
//! Shared by several test crates, each of which uses part of it.
#![allow(dead_code)]

use std::process::{Command, Output};

use bqdrain::adapters::local::dataset;
use bqdrain::adapters::local::queue::peek;

pub const BIN: &str = env!("CARGO_BIN_EXE_bqdrain-producer");

/// Four exportable tables (a_2 of 50 rows, a_3 of 20, a_1 and b_1 of 5) and a
/// view, a queue, and an export root in a temporary folder.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("wh.db");
        dataset::create_dummy_tables(&db, &["a_1".into(), "b_1".into()], 5).unwrap();
        dataset::create_dummy_tables(&db, &["a_2".into()], 50).unwrap();
        dataset::create_dummy_tables(&db, &["a_3".into()], 20).unwrap();
        dataset::execute(&db, "CREATE VIEW a_view AS SELECT * FROM a_1").unwrap();
        Setup { dir }
    }

    pub fn queue(&self) -> String {
        format!("queue://{}#work", self.dir.path().join("q.db").display())
    }

    pub fn destination(&self) -> String {
        format!("file://{}", self.dir.path().join("out").display())
    }

    /// Runs the producer on this setup with `args` added.
    pub fn produce(&self, args: &[&str]) -> Output {
        let source = format!("sqlite://{}", self.dir.path().join("wh.db").display());
        Command::new(BIN)
            .args(["--source", &source, "--topic", &self.queue()])
            .args(["--destination", &self.destination()])
            .args(["--log-format", "text"])
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    /// Runs the producer with `--json` and `args`, which must succeed, and
    /// returns its report.
    pub fn report(&self, args: &[&str]) -> serde_json::Value {
        let out = self.produce(&[&["--json"], args].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Messages waiting on the queue.
    pub async fn published(&self) -> usize {
        peek(&self.queue()).await.unwrap().len()
    }
}
