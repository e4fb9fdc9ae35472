//! An HTTP proxy in front of an emulator that misbehaves on purpose: the
//! first requests matching a rule get an error status, a dropped connection
//! or a delay; all others pass through. It counts the requests it sees, so
//! tests and benchmarks can tell how many calls a process made.
//!
//! Every forwarded request is sent upstream with `Connection: close`, so the
//! client opens a new connection per request and each one is inspected.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Answer with this status (503, 429, ...) and close.
    Status(u16),
    /// Close the connection without answering.
    Drop,
    /// Forward, but only after this long.
    Delay(Duration),
}

pub struct FaultProxy {
    /// `127.0.0.1:PORT`, for `BIGQUERY_EMULATOR_HOST` and the like.
    pub addr: String,
    plan: Arc<Plan>,
}

struct Plan {
    upstream: String,
    /// Faults, in order, for requests whose request line contains the
    /// rule's text; the first rule that matches and has faults left wins.
    rules: Mutex<Vec<(String, VecDeque<Fault>)>>,
    served: AtomicUsize,
    /// Request line (`GET /path?query HTTP/1.1`) of every request seen.
    seen: Mutex<Vec<String>>,
}

impl FaultProxy {
    pub fn start(upstream: &str, matching: &str, faults: Vec<Fault>) -> FaultProxy {
        FaultProxy::with_rules(upstream, vec![(matching, faults)])
    }

    /// A proxy that only forwards and counts.
    pub fn counting(upstream: &str) -> FaultProxy {
        FaultProxy::with_rules(upstream, Vec::new())
    }

    pub fn with_rules(upstream: &str, rules: Vec<(&str, Vec<Fault>)>) -> FaultProxy {
        let plan = Arc::new(Plan {
            upstream: upstream.to_string(),
            rules: Mutex::new(
                rules
                    .into_iter()
                    .map(|(m, f)| (m.to_string(), f.into()))
                    .collect(),
            ),
            served: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let serving = Arc::clone(&plan);
        let addr = listen(move |client| serve(client, Arc::clone(&serving)));
        FaultProxy { addr, plan }
    }

    /// Faults served so far.
    pub fn served(&self) -> usize {
        self.plan.served.load(Ordering::SeqCst)
    }

    /// Requests seen so far whose request line contains `text` ("" for all).
    pub fn requests(&self, text: &str) -> usize {
        let seen = self.plan.seen.lock().unwrap();
        seen.iter().filter(|line| line.contains(text)).count()
    }

    /// Forgets the requests seen so far.
    pub fn reset_count(&self) {
        self.plan.seen.lock().unwrap().clear();
    }
}

/// Listens on a free port of 127.0.0.1, on a thread of its own, and hands
/// each connection to `serve`; returns `127.0.0.1:PORT`.
pub fn listen<F, Fut>(serve: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client));
            }
        });
    });
    addr
}

async fn serve(mut client: TcpStream, plan: Arc<Plan>) -> std::io::Result<()> {
    let Some((head, body)) = read_request(&mut client).await? else {
        return Ok(());
    };
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let fault = plan
        .rules
        .lock()
        .unwrap()
        .iter_mut()
        .filter(|(matching, _)| request_line.contains(matching.as_str()))
        .find_map(|(_, faults)| faults.pop_front());
    plan.seen.lock().unwrap().push(request_line);
    if fault.is_some() {
        plan.served.fetch_add(1, Ordering::SeqCst);
    }
    match fault {
        Some(Fault::Status(code)) => {
            let body = format!(
                r#"{{"error":{{"code":{code},"message":"injected by the test proxy","errors":[{{"reason":"{}","message":"injected"}}]}}}}"#,
                match code {
                    429 => "rateLimitExceeded",
                    403 => "accessDenied",
                    _ => "backendError",
                }
            );
            let response = format!(
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(response.as_bytes()).await?;
            return client.shutdown().await;
        }
        Some(Fault::Drop) => return Ok(()),
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    forward(client, &plan.upstream, &head, &body).await
}

/// Sends a request read from `client` on to `upstream`, one connection per
/// request, and copies the answer back.
pub async fn forward(
    mut client: TcpStream,
    upstream: &str,
    head: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut upstream = TcpStream::connect(upstream).await?;
    upstream
        .write_all(format!("{}Connection: close\r\n\r\n", without_connection(head)).as_bytes())
        .await?;
    upstream.write_all(body).await?;
    // The answer says `Connection: close` too, whatever upstream said: a
    // client that pooled this connection would send its next request into
    // one this proxy has closed ("connection closed before message
    // completed").
    let Some((head, rest)) = read_head(&mut upstream).await? else {
        return client.shutdown().await;
    };
    client
        .write_all(format!("{}Connection: close\r\n\r\n", without_connection(&head)).as_bytes())
        .await?;
    client.write_all(&rest).await?;
    tokio::io::copy(&mut upstream, &mut client).await?;
    client.shutdown().await
}

/// A message head's lines, each ending in CRLF, but its `Connection` header.
fn without_connection(head: &str) -> String {
    head.split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect()
}

/// A message head (without its final blank line) and the bytes read after
/// it; `None` if the stream ended first.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            return Ok(Some((head, buf[i + 4..].to_vec())));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The request head (without its final blank line) and its body.
pub async fn read_request(client: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let Some((head, mut body)) = read_head(client).await? else {
        return Ok(None);
    };
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut chunk = [0u8; 8192];
    while body.len() < length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, body)))
}
