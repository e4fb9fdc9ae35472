//! `--to` and `--dataset-map`: which dataset each restored dataset goes
//! into, and what those datasets hold already, checked as `--if-exists`
//! says before anything is published.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{IfExists, Unit};
use crate::adapters::backends;
use crate::adapters::local::warehouse::LocalWarehouse;
use crate::engine::layout::SkippedTable;
use crate::error::{ConfigError, UnitError};
use crate::ports::warehouse::Warehouse;

/// `--to` with `--dataset-map`.
pub(super) struct Target {
    uri: String,
    /// The SQLite file of a `sqlite://` target.
    pub local: Option<PathBuf>,
    /// A `bigquery://PROJECT` target: each dataset into its own.
    project: Option<String>,
    map: HashMap<String, String>,
}

impl Target {
    pub fn parse(
        to: &str,
        dataset_map: &[String],
        datasets: &[String],
    ) -> Result<Target, ConfigError> {
        let mut map = HashMap::new();
        for pair in dataset_map {
            let Some((from, to)) = pair.split_once('=') else {
                return Err(ConfigError::new(
                    "--dataset-map",
                    format!("{pair:?} is not FROM=TO"),
                    "write it as FROM=TO, e.g. --dataset-map sales=sales_restored",
                ));
            };
            if !datasets.iter().any(|d| d == from) {
                return Err(ConfigError::new(
                    "--dataset-map",
                    format!("{from:?} is not a dataset this restore takes"),
                    format!("map one of: {}", datasets.join(", ")),
                ));
            }
            let dataset_name =
                !to.is_empty() && to.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !dataset_name {
                return Err(ConfigError::new(
                    "--dataset-map",
                    format!("{to:?} is not a usable dataset name"),
                    "use letters, digits and underscores",
                ));
            }
            map.insert(from.to_string(), to.to_string());
        }
        if LocalWarehouse::is_local(to) {
            if !map.is_empty() {
                return Err(ConfigError::new(
                    "--dataset-map",
                    format!("{to} is one dataset, which every table is restored into"),
                    "leave --dataset-map out, or give each dataset its own restore and file",
                ));
            }
            let path = local_path(to)?;
            return Ok(Target {
                uri: format!("sqlite://{}", path.display()),
                local: Some(path),
                project: None,
                map,
            });
        }
        let Some(rest) = to.strip_prefix("bigquery://") else {
            return Err(ConfigError::new(
                "--to",
                format!("{to:?} is not a warehouse bqdrain restores into"),
                "give sqlite://PATH, bigquery://PROJECT or bigquery://PROJECT/DATASET",
            ));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [project] if !project.is_empty() => Ok(Target {
                uri: to.to_string(),
                local: None,
                project: Some(project.to_string()),
                map,
            }),
            [project, dataset] if !project.is_empty() && !dataset.is_empty() => {
                if !map.is_empty() {
                    return Err(ConfigError::new(
                        "--dataset-map",
                        format!("{to} names one dataset, which every table is restored into"),
                        format!(
                            "give --to bigquery://{project} to restore each dataset into its own"
                        ),
                    ));
                }
                Ok(Target {
                    uri: to.to_string(),
                    local: None,
                    project: None,
                    map,
                })
            }
            _ => Err(ConfigError::new(
                "--to",
                format!("{to:?} is not bigquery://PROJECT or bigquery://PROJECT/DATASET"),
                "e.g. bigquery://my-project/sales_restored",
            )),
        }
    }

    /// The dataset URI a source dataset is restored into.
    pub fn dataset_uri(&self, dataset: &str) -> String {
        match &self.project {
            Some(project) => format!(
                "bigquery://{project}/{}",
                self.map.get(dataset).map_or(dataset, String::as_str)
            ),
            None => self.uri.clone(),
        }
    }
}

/// The file of a `sqlite://` target: it may not exist yet (the restore
/// makes it), but its folder must.
fn local_path(to: &str) -> Result<PathBuf, ConfigError> {
    let path = to
        .strip_prefix("sqlite://")
        .filter(|p| !p.is_empty() && !p.contains('?'))
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p)))
        .ok_or_else(|| {
            ConfigError::new(
                "--to",
                format!("{to:?} is not sqlite://PATH"),
                "write it as sqlite://PATH, e.g. sqlite://restored.db",
            )
        })?;
    if path.is_dir() {
        return Err(ConfigError::new(
            "--to",
            format!("{} is a folder", path.display()),
            "name a SQLite file, new or existing, e.g. sqlite://restored.db",
        ));
    }
    if !path.parent().is_some_and(Path::is_dir) {
        return Err(ConfigError::new(
            "--to",
            format!("{} is in no existing folder", path.display()),
            "make the folder first, or name a file in an existing one",
        ));
    }
    Ok(path)
}

/// Makes the empty SQLite file of a new local target (WAL, as the worker
/// processes write it at once).
pub(super) fn create_dataset_file(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Ok(())
}

/// Checks the target tables of every unit against what each target dataset
/// holds, as `--if-exists` says: refuses, leaves out (returned, with why)
/// or lets the units replace them. Two units of one name from different
/// datasets into one dataset are refused.
pub(super) async fn check_targets(
    target: &Target,
    units: &mut Vec<Unit>,
    if_exists: IfExists,
) -> anyhow::Result<Vec<SkippedTable>> {
    let mut by_target: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for unit in units.iter() {
        by_target
            .entry(&unit.target_dataset_uri)
            .or_default()
            .entry(&unit.source.table)
            .or_default()
            .insert(&unit.dataset);
    }
    let mut existing: BTreeSet<(String, String)> = BTreeSet::new();
    for (uri, tables) in &by_target {
        if let Some((table, datasets)) = tables.iter().find(|(_, d)| d.len() > 1) {
            let names: Vec<&str> = datasets.iter().copied().collect();
            return Err(ConfigError::new(
                "--to",
                format!(
                    "datasets {} each have a table {table}, and {uri} would receive both",
                    names.join(" and ")
                ),
                "restore one dataset at a time (--from DEST/DATASET), or into bigquery://PROJECT \
                 with --dataset-map",
            )
            .into());
        }
        let present = target_tables(uri, target).await?;
        for table in tables.keys() {
            if present.contains(*table) {
                existing.insert((uri.to_string(), table.to_string()));
            }
        }
    }
    if existing.is_empty() {
        return Ok(Vec::new());
    }
    match if_exists {
        IfExists::Replace => {
            for unit in units.iter_mut() {
                let key = (unit.target_dataset_uri.clone(), unit.source.table.clone());
                unit.replaces = existing.contains(&key);
            }
            Ok(Vec::new())
        }
        IfExists::Fail => {
            let mut by_uri: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (uri, table) in &existing {
                by_uri.entry(uri).or_default().push(table);
            }
            let held: Vec<String> = by_uri
                .iter()
                .map(|(uri, tables)| format!("{uri} holds {}", tables.join(", ")))
                .collect();
            Err(ConfigError::new(
                "--if-exists",
                format!(
                    "{} table(s) of this restore exist already: {}",
                    existing.len(),
                    held.join("; ")
                ),
                format!(
                    "add --if-exists replace to replace them, --if-exists skip to leave them as \
                     they are, or {}",
                    if target.local.is_some() {
                        "--to sqlite://ANOTHER.db to restore into a new file"
                    } else {
                        "--dataset-map FROM=TO to restore into a new dataset"
                    }
                ),
            )
            .into())
        }
        IfExists::Skip => {
            units.retain(|u| {
                !existing.contains(&(u.target_dataset_uri.clone(), u.source.table.clone()))
            });
            Ok(existing
                .into_iter()
                .map(|(uri, table)| SkippedTable {
                    reason: format!("it exists in {uri} (--if-exists skip)"),
                    table,
                })
                .collect())
        }
    }
}

/// The tables (and views) of a target dataset; none for a SQLite file that
/// is not there yet.
async fn target_tables(uri: &str, target: &Target) -> anyhow::Result<BTreeSet<String>> {
    if target.local.as_ref().is_some_and(|p| !p.exists()) {
        return Ok(BTreeSet::new());
    }
    let warehouse: Arc<dyn Warehouse> = backends::open_warehouse(uri, "--to").await?;
    let tables = match warehouse.list_tables().await {
        Ok(tables) => tables,
        Err(e)
            if e.downcast_ref::<UnitError>()
                .is_some_and(|e| e.reason == "notFound") =>
        {
            return Err(ConfigError::new(
                "--to",
                format!("the target dataset {uri} does not exist ({e:#})"),
                format!(
                    "create it first, where the exports' data may live (bq mk --dataset \
                     --location=LOCATION {}:{}), or restore into one that exists with \
                     --dataset-map FROM=TO",
                    warehouse.project(),
                    warehouse.dataset()
                ),
            )
            .into())
        }
        Err(e) => return Err(e),
    };
    Ok(tables.into_iter().map(|t| t.name).collect())
}
