//! A proxy in front of an emulator that answers IAM's `testIamPermissions`
//! itself, as Google would for a caller granted every permission but the
//! refused ones. The emulators enforce no IAM and do not implement it:
//! fake-gcs-server answers `GET /storage/v1/b/B/iam/testPermissions` with
//! 404, the Pub/Sub emulator `POST /v1/{topic}:testIamPermissions` with 501
//! UNIMPLEMENTED. Every other request passes through unchanged.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::fault_proxy::{forward, listen, read_request};

pub struct IamProxy {
    /// `127.0.0.1:PORT`, for `STORAGE_EMULATOR_HOST` and the like.
    pub addr: String,
}

impl IamProxy {
    pub fn start(upstream: &str, refused: &[&str]) -> IamProxy {
        let upstream = Arc::new(upstream.to_string());
        let refused: Arc<Vec<String>> = Arc::new(refused.iter().map(|p| p.to_string()).collect());
        let addr = listen(move |client| serve(client, Arc::clone(&upstream), Arc::clone(&refused)));
        IamProxy { addr }
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: Arc<String>,
    refused: Arc<Vec<String>>,
) -> std::io::Result<()> {
    let Some((head, body)) = read_request(&mut client).await? else {
        return Ok(());
    };
    let target = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let asked: Vec<String> = if target.contains("/iam/testPermissions?") {
        // Cloud Storage: one `permissions=` query parameter each.
        let query = target.split_once('?').map_or("", |(_, q)| q);
        query
            .split('&')
            .filter_map(|pair| pair.strip_prefix("permissions="))
            .map(str::to_string)
            .collect()
    } else if target.ends_with(":testIamPermissions") {
        // Pub/Sub, Cloud Run: the list in the body.
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        request["permissions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect()
    } else {
        return forward(client, &upstream, &head, &body).await;
    };
    let held: Vec<&String> = asked.iter().filter(|p| !refused.contains(p)).collect();
    let body = serde_json::json!({ "permissions": held }).to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}
