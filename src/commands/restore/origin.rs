//! `--from`: which store holds the exports, and which of its datasets,
//! tables and partitions the restore takes, each at its current export.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::Unit;
use crate::adapters::backends;
use crate::contract::message::SourceTable;
use crate::engine::layout::{self, TableManifest};
use crate::engine::ownership::DatasetOwner;
use crate::error::ConfigError;
use crate::ports::store::ObjectStore;

/// `--from`: the store root, and the dataset, table and partition it may
/// name after the root.
pub(super) struct Origin {
    pub store: Arc<dyn ObjectStore>,
    /// The datasets restored, sorted.
    pub datasets: Vec<String>,
    /// Each dataset's source, from its owner record.
    pub owners: BTreeMap<String, String>,
    table: Option<String>,
    partition: Option<String>,
}

impl Origin {
    /// Finds the root: the longest of `--from`, less up to its last two
    /// segments, whose store records which datasets it holds.
    pub async fn locate(uri: &str) -> anyhow::Result<Origin> {
        let trimmed = uri.trim_end_matches('/');
        let mut root = trimmed.to_string();
        let mut rest: Vec<String> = Vec::new();
        for _ in 0..3 {
            let store = backends::open_store(&root, "--from").await?;
            let owners = owners(store.as_ref()).await?;
            if !owners.is_empty() {
                return Origin::named(store, owners, rest, uri);
            }
            let Some((parent, last)) = root.rsplit_once('/') else {
                break;
            };
            if parent.ends_with(':') || parent.ends_with('/') {
                break;
            }
            rest.insert(0, last.to_string());
            root = parent.to_string();
        }
        Err(ConfigError::new(
            "--from",
            format!("{uri} holds no exports: no _bqdrain/datasets/ records in it or its parents"),
            "give the --destination the exports were written to, e.g. file://demo/exports, \
             optionally followed by /DATASET or /DATASET/TABLE",
        )
        .into())
    }

    fn named(
        store: Arc<dyn ObjectStore>,
        owners: BTreeMap<String, String>,
        rest: Vec<String>,
        uri: &str,
    ) -> anyhow::Result<Origin> {
        let mut datasets: Vec<String> = owners.keys().cloned().collect();
        let mut table = None;
        let mut partition = None;
        if let Some(dataset) = rest.first() {
            if !owners.contains_key(dataset) {
                return Err(ConfigError::new(
                    "--from",
                    format!("{uri}: {} holds no dataset {dataset}", store.uri()),
                    format!("name one of: {}", datasets.join(", ")),
                )
                .into());
            }
            datasets = vec![dataset.clone()];
        }
        if let Some(unit) = rest.get(1) {
            let (t, p) = layout::table_and_partition("", unit);
            table = Some(t.to_string());
            partition = p.map(str::to_string);
        }
        Ok(Origin {
            store,
            owners: owners
                .into_iter()
                .filter(|(d, _)| datasets.contains(d))
                .collect(),
            datasets,
            table,
            partition,
        })
    }

    pub fn selects(&self, source: &SourceTable) -> bool {
        self.table.as_ref().is_none_or(|t| *t == source.table)
            && self
                .partition
                .as_ref()
                .is_none_or(|p| source.partition.as_ref() == Some(p))
    }

    /// Refuses a `--from` table or partition with no current export.
    pub fn check_found(&self, units: &[Unit]) -> Result<(), ConfigError> {
        let Some(table) = &self.table else {
            return Ok(());
        };
        if !units.is_empty() {
            return Ok(());
        }
        let what = match &self.partition {
            Some(p) => format!("partition {p} of table {table}"),
            None => format!("table {table}"),
        };
        Err(ConfigError::new(
            "--from",
            format!(
                "{} has no current export of {what} in dataset {} (or --include/--exclude leave \
                 it out)",
                self.store.uri(),
                self.datasets.join(", ")
            ),
            "check the name: `bqdrain verify --destination DEST` lists what the destination holds",
        ))
    }
}

/// The datasets a store holds, by name, with their source URIs.
async fn owners(store: &dyn ObjectStore) -> anyhow::Result<BTreeMap<String, String>> {
    let prefix = format!("{}/datasets/", layout::META);
    let mut owners = BTreeMap::new();
    for object in store.list(&prefix).await? {
        let Some(dataset) = layout::unit_of_record(&prefix, &object.key) else {
            continue;
        };
        let source = match store.read(&object.key).await? {
            Some(bytes) => serde_json::from_slice::<DatasetOwner>(&bytes)
                .map(|o| o.source)
                .unwrap_or_default(),
            None => continue,
        };
        owners.insert(dataset.to_string(), source);
    }
    Ok(owners)
}

/// A dataset's current exports as the units to restore: each table's
/// newest export, a whole table's or its partitions' (for a moment after
/// a table switched, both stand: the newer run's wins).
pub(super) fn current_units(
    from: &Origin,
    dataset: &str,
    current: HashMap<String, TableManifest>,
) -> Vec<(SourceTable, TableManifest)> {
    let dataset_uri = from.owners.get(dataset).cloned().unwrap_or_default();
    let mut by_table: BTreeMap<String, Vec<(Option<String>, TableManifest)>> = BTreeMap::new();
    for (unit, manifest) in current {
        let (table, partition) = layout::table_and_partition(dataset, &unit);
        by_table
            .entry(table.to_string())
            .or_default()
            .push((partition.map(str::to_string), manifest));
    }
    let mut units = Vec::new();
    for (table, mut exports) in by_table {
        let newest = |m: &TableManifest| (m.run_started_at, m.run_id.clone());
        let whole = exports
            .iter()
            .filter(|(p, _)| p.is_none())
            .map(|(_, m)| newest(m))
            .max();
        let parts = exports
            .iter()
            .filter(|(p, _)| p.is_some())
            .map(|(_, m)| newest(m))
            .max();
        let keep_whole = match (whole, parts) {
            (Some(w), Some(p)) => w > p,
            (whole, _) => whole.is_some(),
        };
        exports.retain(|(p, _)| p.is_none() == keep_whole);
        exports.sort_by(|a, b| a.0.cmp(&b.0));
        for (partition, manifest) in exports {
            let source = SourceTable {
                dataset_uri: dataset_uri.clone(),
                project: String::new(),
                dataset: dataset.to_string(),
                table: table.clone(),
                partition,
                view: false,
            };
            units.push((source, manifest));
        }
    }
    units
}
