//! Opens an adapter from its URI. Adding a backend means adding a scheme
//! here; nothing else in the engine changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::ConfigError;
use crate::local::queue::{LocalSubscription, LocalTopic, QueueUri};
use crate::local::store::FsStore;
use crate::local::warehouse::LocalWarehouse;
use crate::queue::{Subscription, Topic};
use crate::store::ObjectStore;
use crate::warehouse::Warehouse;

fn unsupported(flag: &str, uri: &str, local: &str) -> ConfigError {
    let cloud = ["bigquery://", "pubsub://", "gs://"];
    let problem = if cloud.iter().any(|s| uri.starts_with(s)) {
        format!("{uri:?} needs the Google Cloud adapters, which this build does not have yet")
    } else {
        format!("{uri:?} has a scheme bqdrain does not know")
    };
    ConfigError::new(flag, problem, format!("use a local URI such as {local}"))
}

pub fn open_topic(uri: &str, flag: &str) -> anyhow::Result<Arc<dyn Topic>> {
    if QueueUri::is_local(uri) {
        return Ok(Arc::new(LocalTopic::open(uri, flag)?));
    }
    Err(unsupported(flag, uri, "queue://demo/queue.db#work").into())
}

pub fn open_subscription(uri: &str, flag: &str) -> anyhow::Result<Arc<dyn Subscription>> {
    if QueueUri::is_local(uri) {
        return Ok(Arc::new(LocalSubscription::open(uri, flag)?));
    }
    Err(unsupported(flag, uri, "queue://demo/queue.db?dead_letter=dead#work").into())
}

pub fn open_warehouse(uri: &str, flag: &str) -> anyhow::Result<Arc<dyn Warehouse>> {
    if LocalWarehouse::is_local(uri) {
        return Ok(Arc::new(LocalWarehouse::open(uri, flag)?));
    }
    Err(unsupported(flag, uri, "sqlite://demo/warehouse.db").into())
}

pub fn open_store(uri: &str, flag: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    if FsStore::is_local(uri) {
        return Ok(Arc::new(FsStore::open(uri, flag)?));
    }
    Err(unsupported(flag, uri, "file://demo/exports").into())
}

/// Warehouses and stores a worker has opened, by URI: messages name them,
/// and a worker sees the same few again and again.
#[derive(Default)]
pub struct OpenBackends {
    warehouses: Mutex<HashMap<String, Arc<dyn Warehouse>>>,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

fn cached<T: ?Sized>(
    cache: &Mutex<HashMap<String, Arc<T>>>,
    uri: &str,
    open: impl FnOnce() -> anyhow::Result<Arc<T>>,
) -> anyhow::Result<Arc<T>> {
    let mut cache = cache.lock().expect("backend cache lock poisoned");
    if let Some(found) = cache.get(uri) {
        return Ok(Arc::clone(found));
    }
    let opened = open()?;
    cache.insert(uri.to_string(), Arc::clone(&opened));
    Ok(opened)
}

impl OpenBackends {
    pub fn warehouse(&self, uri: &str) -> anyhow::Result<Arc<dyn Warehouse>> {
        cached(&self.warehouses, uri, || {
            open_warehouse(uri, "source.dataset_uri")
        })
    }

    pub fn store(&self, uri: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
        cached(&self.stores, uri, || open_store(uri, "destination"))
    }
}
