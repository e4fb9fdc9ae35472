//! The destination as `verify` sees it: read-only, with its calls counted.
//!
//! Every check goes through this wrapper, so `verify` cannot change what it
//! checks (a write is refused, not performed), and its report can say what
//! it cost: listing calls, reads and bytes read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::ports::store::{ObjectInfo, ObjectStore};

pub struct ReadOnly {
    inner: Arc<dyn ObjectStore>,
    listings: AtomicUsize,
    reads: AtomicUsize,
    bytes_read: AtomicU64,
}

/// What the checks asked of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Calls {
    /// Listings (of objects or of folders); Cloud Storage answers each with
    /// one request per 1,000 names.
    pub listing_calls: usize,
    /// Objects read whole: manifests a listing carried no summary for, run
    /// state, and with `--deep` every data file.
    pub reads: usize,
    pub bytes_read: u64,
}

impl ReadOnly {
    pub fn new(inner: Arc<dyn ObjectStore>) -> ReadOnly {
        ReadOnly {
            inner,
            listings: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            bytes_read: AtomicU64::new(0),
        }
    }

    pub fn calls(&self) -> Calls {
        Calls {
            listing_calls: self.listings.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
        }
    }
}

fn refuse(key: &str) -> anyhow::Result<()> {
    anyhow::bail!("bqdrain verify changes nothing in the destination: refused to change {key}")
}

#[async_trait]
impl ObjectStore for ReadOnly {
    fn uri(&self) -> &str {
        self.inner.uri()
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        self.listings.fetch_add(1, Ordering::Relaxed);
        self.inner.list(prefix).await
    }

    async fn folders(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        self.listings.fetch_add(1, Ordering::Relaxed);
        self.inner.folders(prefix).await
    }

    async fn read(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let read = self.inner.read(key).await?;
        if let Some(bytes) = &read {
            self.bytes_read
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        Ok(read)
    }

    async fn write(&self, key: &str, _data: &[u8], _summary: Option<&str>) -> anyhow::Result<()> {
        refuse(key)
    }

    async fn write_if_absent(
        &self,
        key: &str,
        _data: &[u8],
        _summary: Option<&str>,
    ) -> anyhow::Result<bool> {
        refuse(key).map(|()| false)
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        refuse(key)
    }
}
