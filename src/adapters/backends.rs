//! Opens an adapter from its URI. Adding a backend means adding a scheme
//! here; nothing else in the engine changes.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::adapters::gcp::bigquery::{self, BigQueryWarehouse};
use crate::adapters::gcp::pubsub::{self, PubSubSubscription, PubSubTopic};
use crate::adapters::gcp::storage::{self, GcsStore};
use crate::adapters::local::queue::{LocalSubscription, LocalTopic, QueueUri};
use crate::adapters::local::store::FsStore;
use crate::adapters::local::warehouse::LocalWarehouse;
use crate::error::ConfigError;
use crate::ports::queue::{ReceiveSettings, Subscription, Topic};
use crate::ports::store::ObjectStore;
use crate::ports::warehouse::Warehouse;

fn unknown(flag: &str, uri: &str, examples: &str) -> anyhow::Error {
    ConfigError::new(
        flag,
        format!("{uri:?} has a scheme bqdrain does not know"),
        format!("use a URI such as {examples}"),
    )
    .into()
}

pub async fn open_topic(uri: &str, flag: &str) -> anyhow::Result<Arc<dyn Topic>> {
    if QueueUri::is_local(uri) {
        Ok(Arc::new(LocalTopic::open(uri, flag)?))
    } else if pubsub::is_pubsub(uri) {
        Ok(Arc::new(PubSubTopic::open(uri, flag).await?))
    } else {
        Err(unknown(
            flag,
            uri,
            "pubsub://projects/P/topics/T or queue://demo/queue.db#work",
        ))
    }
}

/// The topic of a queue that must exist already, as a replay target does:
/// only the producer makes a local queue file.
pub async fn open_existing_topic(uri: &str, flag: &str) -> anyhow::Result<Arc<dyn Topic>> {
    if QueueUri::is_local(uri) {
        QueueUri::parse(uri, flag)?.require_file(flag)?;
    }
    open_topic(uri, flag).await
}

/// Whether two topic URIs name the same queue: for `queue://`, the same
/// file and queue name whatever the settings or the path's spelling.
pub fn same_topic(a: &str, b: &str) -> bool {
    let canonical = |uri: &str| match QueueUri::parse(uri, "") {
        Ok(q) => q.sibling(&q.name),
        Err(_) => uri.trim_end_matches('/').to_string(),
    };
    canonical(a) == canonical(b)
}

pub async fn open_subscription(
    uri: &str,
    flag: &str,
    settings: &ReceiveSettings,
) -> anyhow::Result<Arc<dyn Subscription>> {
    if QueueUri::is_local(uri) {
        Ok(Arc::new(LocalSubscription::open(uri, flag, settings)?))
    } else if pubsub::is_pubsub(uri) {
        Ok(Arc::new(
            PubSubSubscription::open(uri, flag, settings).await?,
        ))
    } else {
        Err(unknown(
            flag,
            uri,
            "pubsub://projects/P/subscriptions/S or queue://demo/queue.db?dead_letter=dead#work",
        ))
    }
}

pub async fn open_warehouse(uri: &str, flag: &str) -> anyhow::Result<Arc<dyn Warehouse>> {
    if LocalWarehouse::is_local(uri) {
        Ok(Arc::new(LocalWarehouse::open(uri, flag)?))
    } else if bigquery::is_bigquery(uri) {
        Ok(Arc::new(BigQueryWarehouse::open(uri, flag).await?))
    } else {
        Err(unknown(
            flag,
            uri,
            "bigquery://PROJECT/DATASET, bigquery://PROJECT or sqlite://demo/warehouse.db",
        ))
    }
}

/// Every dataset `--source` names: each URI as it is, a whole BigQuery
/// project (`bigquery://PROJECT`) as each of its datasets.
pub async fn open_sources(uris: &[String], flag: &str) -> anyhow::Result<Vec<Arc<dyn Warehouse>>> {
    let mut warehouses = Vec::new();
    for uri in uris {
        let datasets = if bigquery::is_project(uri) {
            bigquery::project_datasets(uri, flag).await?
        } else {
            vec![uri.clone()]
        };
        for dataset in datasets {
            warehouses.push(open_warehouse(&dataset, flag).await?);
        }
    }
    Ok(warehouses)
}

pub async fn open_store(uri: &str, flag: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    if FsStore::is_local(uri) {
        Ok(Arc::new(FsStore::open(uri, flag)?))
    } else if storage::is_gcs(uri) {
        Ok(Arc::new(GcsStore::open(uri, flag).await?))
    } else {
        Err(unknown(
            flag,
            uri,
            "gs://BUCKET/PREFIX or file://demo/exports",
        ))
    }
}

/// Warehouses and stores a worker has opened, by URI: messages name them,
/// and a worker sees the same few again and again.
#[derive(Default)]
pub struct OpenBackends {
    warehouses: Mutex<HashMap<String, Arc<dyn Warehouse>>>,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

async fn cached<T: ?Sized>(
    cache: &Mutex<HashMap<String, Arc<T>>>,
    uri: &str,
    open: impl std::future::Future<Output = anyhow::Result<Arc<T>>>,
) -> anyhow::Result<Arc<T>> {
    let mut cache = cache.lock().await;
    if let Some(found) = cache.get(uri) {
        return Ok(Arc::clone(found));
    }
    let opened = open.await?;
    cache.insert(uri.to_string(), Arc::clone(&opened));
    Ok(opened)
}

impl OpenBackends {
    /// The warehouse at `uri`, which the message's `field` names (for
    /// errors).
    pub async fn warehouse(&self, uri: &str, field: &str) -> anyhow::Result<Arc<dyn Warehouse>> {
        cached(&self.warehouses, uri, open_warehouse(uri, field)).await
    }

    pub async fn store(&self, uri: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
        cached(&self.stores, uri, open_store(uri, "destination")).await
    }
}
