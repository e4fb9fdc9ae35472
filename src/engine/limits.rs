//! Documented limits, checked when a run is planned: a unit whose objects
//! the store could not name, or a run that alone would pass its project's
//! daily export quota, is refused (exit 2) before anything is written or
//! published, instead of failing unit by unit for ever. Limits the engine
//! keeps by construction are not checked here: job ids are cut to fit
//! (adapters/gcp/bigquery.rs), record summaries above Cloud Storage's custom
//! metadata limits are not kept (ports/store.rs), and no labels are set.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::contract::options::ExportOptions;
use crate::engine::layout::{self, PlannedUnit};
use crate::error::ConfigError;
use crate::ports::store::ObjectStore;
use crate::ports::warehouse::{ExportQuota, ExportRequest, Warehouse};

/// Units named in an error at most; the rest are counted.
const NAMED: usize = 5;

/// Every object a unit of run `run_id` may write: its shards (they all have
/// the longest name's length: indexes are 12 digits), its export manifest
/// and its run records.
fn unit_keys(unit: &PlannedUnit, run_id: &str, options: &ExportOptions) -> [String; 6] {
    let request = ExportRequest {
        job_key: String::new(),
        source: unit.source.clone(),
        destination_root: String::new(),
        folder: layout::export_folder(&unit.source, run_id),
        options: options.clone(),
        snapshot_at: None,
    };
    [
        request.shard_key(0),
        layout::export_manifest(&unit.source, run_id),
        layout::done_record(run_id, &unit.unit),
        layout::dead_record(run_id, &unit.unit),
        layout::superseded_record(run_id, &unit.unit),
        layout::active_record(run_id, &unit.unit),
    ]
}

/// Refuses a run with a unit whose objects the store could not name (Cloud
/// Storage: 1,024 bytes; a folder: 255 bytes a file name, 4,096 a path).
pub fn check_names(
    units: &[PlannedUnit],
    run_id: &str,
    options: &ExportOptions,
    store: &dyn ObjectStore,
) -> Result<(), ConfigError> {
    let refused: Vec<(&PlannedUnit, String)> = units
        .iter()
        .filter_map(|unit| {
            let keys = unit_keys(unit, run_id, options);
            Some((unit, keys.iter().find_map(|key| store.name_problem(key))?))
        })
        .collect();
    let Some((first, _)) = refused.first() else {
        return Ok(());
    };
    let problems: Vec<String> = refused
        .iter()
        .map(|(unit, problem)| format!("{}: {problem}", unit.unit))
        .collect();
    Err(ConfigError::new(
        "--destination",
        format!(
            "{} unit(s) have names too long for {}: {}",
            problems.len(),
            store.uri(),
            named(&problems)
        ),
        format!(
            "leave them out with --exclude '{}', rename the tables, or choose a shorter \
             destination (prefix or path)",
            first.source.table
        ),
    ))
}

/// Refuses a run that alone would pass a daily export quota of a project it
/// exports from: its extract jobs (one per unit; views are exported by
/// queries) or its bytes.
pub fn check_daily_quota(
    units: &[PlannedUnit],
    warehouses: &[Arc<dyn Warehouse>],
) -> Result<(), ConfigError> {
    let quotas: Vec<DatasetQuota> = warehouses
        .iter()
        .filter_map(|w| {
            Some(DatasetQuota {
                project: w.project(),
                dataset_uri: w.uri(),
                quota: w.daily_export_quota()?,
            })
        })
        .collect();
    check_quotas(units, &quotas)
}

/// A dataset of the run and its project's daily export quota.
struct DatasetQuota<'a> {
    project: &'a str,
    dataset_uri: &'a str,
    quota: ExportQuota,
}

fn check_quotas(units: &[PlannedUnit], quotas: &[DatasetQuota]) -> Result<(), ConfigError> {
    let mut per_project: BTreeMap<&str, (ExportQuota, u64, u64)> = BTreeMap::new();
    for dataset in quotas {
        let used = per_project
            .entry(dataset.project)
            .or_insert((dataset.quota, 0, 0));
        for unit in units
            .iter()
            .filter(|u| !u.source.view && u.source.dataset_uri == dataset.dataset_uri)
        {
            used.1 += 1;
            used.2 += unit.bytes.unwrap_or(0);
        }
    }
    for (project, (quota, jobs, bytes)) in per_project {
        let over = if jobs > quota.jobs {
            Some(format!(
                "{jobs} extract jobs, above the {} a day",
                quota.jobs
            ))
        } else if bytes > quota.bytes {
            Some(format!("{bytes} bytes, above the {} a day", quota.bytes))
        } else {
            None
        };
        if let Some(over) = over {
            return Err(ConfigError::new(
                "--source",
                format!(
                    "this run alone would export {over} that project {project} may export \
                     ({}), so its last units would fail",
                    quota.source
                ),
                "split it: export some tables today (--include/--exclude) and the rest \
                 tomorrow, or have Google raise the project's quota",
            ));
        }
    }
    Ok(())
}

fn named(items: &[String]) -> String {
    let mut text = items[..items.len().min(NAMED)].join("; ");
    if items.len() > NAMED {
        text.push_str(&format!("; and {} more", items.len() - NAMED));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::message::SourceTable;

    const QUOTA: ExportQuota = ExportQuota {
        jobs: 3,
        bytes: 1000,
        source: "https://cloud.google.com/bigquery/quotas#export_jobs",
    };

    fn unit(dataset_uri: &str, table: &str, bytes: u64, view: bool) -> PlannedUnit {
        PlannedUnit {
            unit: table.to_string(),
            source: SourceTable {
                dataset_uri: dataset_uri.to_string(),
                project: "p".into(),
                dataset: "d".into(),
                table: table.to_string(),
                partition: None,
                view,
            },
            rows: None,
            bytes: Some(bytes),
            change: None,
            restore: None,
        }
    }

    fn quota(project: &'static str, dataset_uri: &'static str) -> DatasetQuota<'static> {
        DatasetQuota {
            project,
            dataset_uri,
            quota: QUOTA,
        }
    }

    #[test]
    fn a_run_passing_a_daily_export_quota_alone_is_refused() {
        let a = "bigquery://p/a";
        let b = "bigquery://p/b";
        let three = [
            unit(a, "t1", 10, false),
            unit(a, "t2", 10, false),
            unit(b, "t3", 10, false),
        ];
        check_quotas(&three, &[quota("p", a), quota("p", b)]).unwrap();

        let mut four = three.to_vec();
        four.push(unit(b, "t4", 10, false));
        let err = check_quotas(&four, &[quota("p", a), quota("p", b)]).unwrap_err();
        assert_eq!(err.flag, "--source");
        assert!(
            err.problem.contains("4 extract jobs, above the 3 a day"),
            "{err}"
        );
        assert!(err.problem.contains("project p"), "{err}");
        assert!(err.fix.contains("--include"), "{err}");
        // Views are exported by queries, and another project has its own quota.
        four[3].source.view = true;
        check_quotas(&four, &[quota("p", a), quota("p", b)]).unwrap();
        four[3].source.view = false;
        check_quotas(&four, &[quota("p", a), quota("q", b)]).unwrap();

        let big = [unit(a, "t1", 600, false), unit(a, "t2", 600, false)];
        let err = check_quotas(&big, &[quota("p", a)]).unwrap_err();
        assert!(
            err.problem.contains("1200 bytes, above the 1000 a day"),
            "{err}"
        );
    }
}
