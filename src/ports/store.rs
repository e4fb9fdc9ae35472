//! The object-store port: objects by key under one root URI (the
//! `--destination`), where the exports, their completion and dead-letter
//! records and the run manifests live.
//!
//! An adapter implements [`ObjectStore`]: whole-object writes that no reader
//! sees half done, a write-if-absent that exactly one of racing writers wins
//! (the engine's commit), and listings in key order. The embedded adapter,
//! a folder ([`FsStore`](crate::adapters::local::store::FsStore), `file://`),
//! shows the contract:
//!
//! ```
//! use bqdrain::adapters::local::store::FsStore;
//! use bqdrain::ports::store::ObjectStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let store = FsStore::open(&format!("file://{}", dir.path().display()), "--destination")?;
//!
//! let shard = "sales/orders/run=1/orders_000000000000.csv";
//! store.write(shard, b"id\n1\n2\n", None).await?;
//! // The commit: of two writers of one key, only the first writes.
//! let manifest = "sales/orders/run=1/_MANIFEST.json";
//! assert!(store.write_if_absent(manifest, b"{}", Some("run 1")).await?);
//! assert!(!store.write_if_absent(manifest, b"{}", None).await?);
//!
//! let listed = store.list("sales/orders/").await?;
//! let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
//! assert_eq!(keys, [manifest, shard]);
//! assert_eq!(listed[1].size, 7);
//! assert_eq!(store.folders("sales/orders/").await?, ["run=1"]);
//! assert_eq!(store.read(shard).await?.as_deref(), Some(&b"id\n1\n2\n"[..]));
//! # Ok(())
//! # }
//! ```

use async_trait::async_trait;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store's root, `/`-separated.
    pub key: String,
    pub size: u64,
    /// The one-line summary the object was written with, where the store
    /// keeps summaries (Cloud Storage: in the object's custom metadata).
    /// Listings return it, so `status` reads a run's 10,000 records from a
    /// few listing pages instead of 10,000 reads. The object stays the truth.
    pub summary: Option<String>,
    /// The object's checksum as the store reports it in listings (Cloud
    /// Storage: CRC32C, base64), so an export's files can be checked
    /// against its manifest without reading them; `None` where the store
    /// keeps none.
    pub checksum: Option<String>,
}

/// Longer summaries are not kept, so no record can cross Cloud Storage's
/// limits on custom metadata: 4 KiB per value and 8 KiB per object
/// (<https://cloud.google.com/storage/docs/reference/rpc/google.storage.v1>,
/// `ServiceConstants`); their readers read the object instead.
pub const SUMMARY_LIMIT: usize = 4096;

/// Objects by key under one root; see the [module](self) for the contract
/// and an example.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The root URI, as given in `--destination`.
    fn uri(&self) -> &str;

    /// Why the store could not hold an object named `key`, if it could not
    /// (a name above its limits), in words that name the limit. Checked
    /// when a run is planned, so that no unit is published that could
    /// never be written.
    fn name_problem(&self, _key: &str) -> Option<String> {
        None
    }

    /// Why nothing can be written to the store, if that is known before
    /// trying (a read-only folder): checked before a run writes anything.
    async fn write_problem(&self) -> Option<String> {
        None
    }

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>>;

    /// The names of the folders right under `prefix` (empty, or ending in
    /// `/`): `a` for the objects `PREFIX a/…`, in order. Stores that list
    /// by delimiter (Cloud Storage) answer without listing every object;
    /// this default does list them.
    async fn folders(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list(prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                let rest = o.key.strip_prefix(prefix)?;
                rest.split_once('/').map(|(folder, _)| folder.to_string())
            })
            .collect();
        names.dedup();
        Ok(names)
    }

    async fn read(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>>;

    /// Writes whole: a reader never sees part of the object. `summary`:
    /// see [`ObjectInfo::summary`]; a store may keep none.
    async fn write(&self, key: &str, data: &[u8], summary: Option<&str>) -> anyhow::Result<()>;

    /// Writes only if no object has the key. Returns whether this call wrote
    /// it: of several racing writers exactly one gets `true`.
    async fn write_if_absent(
        &self,
        key: &str,
        data: &[u8],
        summary: Option<&str>,
    ) -> anyhow::Result<bool>;

    /// Deletes; a missing object is not an error.
    async fn delete(&self, key: &str) -> anyhow::Result<()>;

    /// Deletes every object whose key starts with `prefix`.
    async fn delete_all(&self, prefix: &str) -> anyhow::Result<()> {
        for object in self.list(prefix).await? {
            self.delete(&object.key).await?;
        }
        Ok(())
    }
}
