//! A dataset's folder in a destination belongs to one source. Two sources
//! with a dataset of one name (two SQLite files `warehouse.db`, two
//! projects' `sales`) would otherwise take turns replacing each other's
//! exports, each run deleting the other's as superseded. The first run
//! into a folder records its source in `_bqdrain/datasets/DATASET.json`;
//! a run of another source into that folder is refused before it publishes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::layout;
use crate::error::ConfigError;
use crate::ports::store::ObjectStore;
use crate::ports::warehouse::Warehouse;

/// The record of who a dataset folder belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetOwner {
    /// The source, as [`source_identity`] names it.
    pub source: String,
    /// The run that first exported it here.
    pub first_run: String,
    pub at: DateTime<Utc>,
}

/// A source's identity: its URI without settings (`?shard_bytes=…`), so
/// the same dataset read with other settings is still the same source.
pub fn source_identity(uri: &str) -> &str {
    uri.split_once('?').map_or(uri, |(base, _)| base)
}

/// Records `warehouse` as the owner of its dataset's folder in `store` if
/// the folder has none, and refuses another owner's folder.
pub async fn claim_dataset_folder(
    warehouse: &dyn Warehouse,
    store: &dyn ObjectStore,
    run_id: &str,
) -> anyhow::Result<()> {
    let dataset = warehouse.dataset();
    let ours = source_identity(warehouse.uri());
    let key = layout::dataset_owner(dataset);
    let claim = DatasetOwner {
        source: ours.to_string(),
        first_run: run_id.to_string(),
        at: Utc::now(),
    };
    let body = serde_json::to_vec_pretty(&claim)?;
    if store.write_if_absent(&key, &body, None).await? {
        return Ok(());
    }
    let owner: DatasetOwner = match store.read(&key).await? {
        Some(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("parsing {key}: {e}"))?
        }
        None => anyhow::bail!("{key} vanished while it was read: try again"),
    };
    if owner.source == ours {
        return Ok(());
    }
    Err(ConfigError::new(
        "--source",
        format!(
            "{root}/{dataset}/ holds the exports of {owner} (since run {first}), and {ours} also \
             has a dataset named {dataset}: its runs would replace those exports",
            root = store.uri(),
            owner = owner.source,
            first = owner.first_run,
        ),
        format!(
            "give {ours} its own --destination; or, if {} is no longer exported, delete \
             {root}/{dataset}/ and {root}/{key} first",
            owner.source,
            root = store.uri(),
        ),
    )
    .into())
}
