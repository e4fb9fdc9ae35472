//! A stand-in for the Cloud Run Admin API v2 `projects.locations.jobs.run`
//! method, for contract tests of `--launch-workers` (the producer's and
//! `bqdrain replay`'s): a small HTTP/1.1 server on 127.0.0.1 that records
//! every request and answers canned responses. It is reached through
//! `discovery_proxy.py`, which holds each request and each canned answer to
//! Cloud Run v2's API description; a test fails on what breaks it.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::discovery_proxy::DiscoveryProxy;

pub const JOB: &str = "projects/p/locations/europe-west1/jobs/w";
pub const EXECUTION: &str = "projects/p/locations/europe-west1/jobs/w/executions/w-x7k2q";
pub const OPERATION: &str = "projects/p/locations/europe-west1/operations/6f1c2d3e";

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

/// The stand-in Admin API: answers `responses` in order, the last one again
/// once they run out.
pub struct FakeRunApi {
    /// The proxy's URL, in front of the stand-in.
    pub endpoint: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    proxy: DiscoveryProxy,
}

impl FakeRunApi {
    pub async fn start(responses: Vec<(u16, Value)>) -> FakeRunApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy =
            DiscoveryProxy::start("run.v2", &listener.local_addr().unwrap().to_string(), &[]);
        let endpoint = format!("http://{}", proxy.addr);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let queue = Arc::new(Mutex::new(VecDeque::from(responses)));
        let recorded = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                let queue = queue.clone();
                tokio::spawn(async move {
                    serve(stream, recorded, queue).await;
                });
            }
        });
        FakeRunApi {
            endpoint,
            requests,
            proxy,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// What broke Cloud Run's API description so far, then forgets it (a
    /// test that breaks it on purpose reads it here instead of failing).
    pub fn take_violations(&self) -> Vec<String> {
        let found = self.proxy.messages();
        std::fs::write(&self.proxy.violations, "").unwrap();
        found
    }
}

impl Drop for FakeRunApi {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let found = self.proxy.messages();
        assert!(
            found.is_empty(),
            "calls to the Cloud Run stand-in broke Cloud Run v2's API description:\n{}",
            found.join("\n")
        );
    }
}

/// Serves requests on one connection until the client closes it.
async fn serve(
    mut stream: TcpStream,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    queue: Arc<Mutex<VecDeque<(u16, Value)>>>,
) {
    let mut buf = Vec::new();
    loop {
        // Headers.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap().split(' ');
        let method = request_line.next().unwrap().to_string();
        let target = request_line.next().unwrap().to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        assert!(
            !headers.contains_key("transfer-encoding"),
            "the stand-in reads Content-Length bodies only: {headers:?}"
        );
        let length: usize = headers
            .get("content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        // Body.
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head_end + length).skip(head_end).collect();
        recorded.lock().unwrap().push(Recorded {
            method,
            path: target.split('?').next().unwrap().to_string(),
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        let (status, answer) = {
            let mut q = queue.lock().unwrap();
            if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q.front().cloned().expect("a canned response")
            }
        };
        let answer = answer.to_string();
        let response = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json; charset=UTF-8\r\n\
             content-length: {}\r\n\r\n{answer}",
            reason(status),
            answer.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// The answer of a successful `jobs.run`: the operation, not yet done, with
/// the new execution as its metadata.
pub fn operation(task_count: u32) -> (u16, Value) {
    (
        200,
        json!({
            "name": OPERATION,
            "metadata": {
                "@type": "type.googleapis.com/google.cloud.run.v2.Execution",
                "name": EXECUTION,
                "job": "w",
                "taskCount": task_count,
                "createTime": "2026-01-01T00:00:00Z",
            },
            "done": false,
        }),
    )
}

/// A Google API error body (AIP-193).
pub fn api_error(code: u16, status: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"error": {"code": code, "message": message, "status": status}}),
    )
}

pub fn env_of(body: &Value) -> HashMap<String, String> {
    let overrides = &body["overrides"]["containerOverrides"];
    assert_eq!(overrides.as_array().map(Vec::len), Some(1), "{body}");
    overrides[0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
