//! Pub/Sub is gRPC, which the proxies in front of the emulators do not see
//! (they hold BigQuery's and Cloud Storage's REST calls to the permission
//! table, `src/adapters/gcp/permissions.json`): this test reads the Pub/Sub
//! adapter instead. Each client call it makes stands for the gRPC methods
//! the client library sends for it (google-cloud-pubsub 1.7.0: a
//! subscription's stream is StreamingPull plus unary Acknowledge and
//! ModifyAckDeadline); each must be in the table, and each Pub/Sub method
//! the table lists for the producer, the worker or replay must be one the
//! adapter makes.

use std::collections::BTreeSet;

const ADAPTER: &str = include_str!("../src/adapters/gcp/pubsub.rs");
const TABLE: &str = include_str!("../src/adapters/gcp/permissions.json");

/// (what the adapter's source says, the gRPC methods that sends)
const CALLS: [(&str, &[&str]); 3] = [
    (".publish(", &["google.pubsub.v1.Publisher/Publish"]),
    (
        ".get_subscription()",
        &["google.pubsub.v1.Subscriber/GetSubscription"],
    ),
    (
        ".subscribe(",
        &[
            "google.pubsub.v1.Subscriber/StreamingPull",
            "google.pubsub.v1.Subscriber/Acknowledge",
            "google.pubsub.v1.Subscriber/ModifyAckDeadline",
        ],
    ),
];

/// Pub/Sub methods of the table made by bqdrain's own commands through the
/// adapter (`check` reads Pub/Sub over REST, the agents are Google's).
fn table_methods() -> BTreeSet<String> {
    let table: Vec<serde_json::Value> = serde_json::from_str(TABLE).unwrap();
    table
        .iter()
        .filter(|e| e["call"].as_str().unwrap().starts_with("google.pubsub.v1."))
        .filter(|e| {
            e["who"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| ["producer", "worker", "replay"].contains(&w.as_str().unwrap()))
        })
        .map(|e| e["call"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_pubsub_method_the_adapter_calls_is_in_the_permission_table_and_no_other() {
    let made: BTreeSet<String> = CALLS
        .iter()
        .filter(|(code, _)| ADAPTER.contains(code))
        .flat_map(|(_, methods)| methods.iter().map(|m| m.to_string()))
        .collect();
    assert_eq!(
        made.len(),
        5,
        "the adapter publishes, reads its subscription and streams it: {made:?}"
    );
    assert_eq!(
        table_methods(),
        made,
        "the permission table's Pub/Sub calls for producer, worker and replay \
         (left) against what src/adapters/gcp/pubsub.rs makes (right): add the \
         missing ones to src/adapters/gcp/permissions.json, or teach CALLS here \
         the adapter's new client call"
    );
}
