//! The object-store port: objects by key under one root URI.

use async_trait::async_trait;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store's root, `/`-separated.
    pub key: String,
    pub size: u64,
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The root URI, as given in `--destination`.
    fn uri(&self) -> &str;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>>;

    async fn read(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>>;

    /// Writes whole: a reader never sees part of the object.
    async fn write(&self, key: &str, data: &[u8]) -> anyhow::Result<()>;

    /// Writes only if no object has the key. Returns whether this call wrote
    /// it: of several racing writers exactly one gets `true`.
    async fn write_if_absent(&self, key: &str, data: &[u8]) -> anyhow::Result<bool>;

    /// Deletes; a missing object is not an error.
    async fn delete(&self, key: &str) -> anyhow::Result<()>;
}
