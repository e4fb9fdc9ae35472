//! `scripts/emulators/discovery_proxy.py` started on its own, in front of
//! one server: the Cloud Run stand-in (fake_run_api.rs), or the BigQuery
//! emulator with the permission table of one command (benches). The emulator
//! stack starts its own two (gcp.rs).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("scripts/emulators/install.sh").exists())
        .expect("the repository holding scripts/emulators/")
}

/// The emulator venv's python, installed (`scripts/emulators/install.sh`)
/// if missing or stale.
pub fn python() -> PathBuf {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let install = Command::new("bash")
            .arg(repo().join("scripts/emulators/install.sh"))
            .status()
            .expect("run scripts/emulators/install.sh");
        assert!(install.success(), "scripts/emulators/install.sh failed");
    });
    repo().join(".venv/emulators/bin/python")
}

pub struct DiscoveryProxy {
    /// `127.0.0.1:PORT`, to use instead of the upstream's.
    pub addr: String,
    pub violations: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl DiscoveryProxy {
    /// A proxy holding calls to `upstream` to the discovery document `api`
    /// (`run.v2`, `bigquery.v2`, `storage.v1`), with `extra` flags
    /// (`--permissions FILE --who COMMAND`).
    pub fn start(api: &str, upstream: &str, extra: &[&str]) -> DiscoveryProxy {
        let dir = tempfile::tempdir().unwrap();
        let violations = dir.path().join("api-violations.jsonl");
        let mut child = Command::new(python())
            .arg(repo().join("scripts/emulators/discovery_proxy.py"))
            .args(["--api", api, "--upstream", upstream, "--violations"])
            .arg(&violations)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start scripts/emulators/discovery_proxy.py");
        let mut line = Vec::new();
        let mut byte = [0u8];
        let mut out = child.stdout.take().unwrap();
        while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let ready: Value = serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("discovery_proxy.py did not start ({e}); see its stderr"));
        DiscoveryProxy {
            addr: format!("127.0.0.1:{}", ready["port"]),
            violations,
            child,
            _dir: dir,
        }
    }

    /// Every record so far: `message` names the call and the field.
    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.violations)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn messages(&self) -> Vec<String> {
        self.records()
            .iter()
            .map(|r| r["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Calls forwarded or refused so far, by method id (`bigquery.tables.get`).
    pub fn calls(&self) -> serde_json::Map<String, Value> {
        let mut stream = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(
            stream,
            "GET /__discovery_proxy/calls HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let body = answer.split_once("\r\n\r\n").expect("an HTTP answer").1;
        serde_json::from_str(body).unwrap()
    }
}

impl Drop for DiscoveryProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
