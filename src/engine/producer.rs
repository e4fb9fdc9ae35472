//! The producer: plan a run (one unit per exportable table, or per
//! partition; with `--only-changed` only the changed ones, see
//! [`crate::engine::selection`]), write the run manifest, publish one message
//! per unit, and mark the run published once every publish is confirmed.
//!
//! The manifest comes first, so no published message ever belongs to a run
//! without one. A run id is used once: a producer given an id that already
//! has a manifest refuses, unless asked to resume it (publish again only its
//! units without a completion record). On Cloud Run the default run id is
//! the execution's name, so a retried execution resumes the run its first
//! attempt started instead of publishing a second one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::contract::message::{check_path_segment, SourceTable, WorkMessage, SCHEMA_VERSION};
use crate::contract::options::ExportOptions;
use crate::engine::export;
use crate::engine::holdable;
use crate::engine::layout::{self, PlannedUnit, RetiredExport, RunManifest, SkippedTable};
use crate::engine::limits;
use crate::engine::ownership;
use crate::engine::retry::RetryPolicy;
use crate::engine::runs;
use crate::engine::selection::{
    self, CurrentExport, PartitionPlan, PartitionWindow, PartitionsSeen,
};
use crate::engine::trigger;
use crate::error::ConfigError;
use crate::ports::queue::Topic;
use crate::ports::store::ObjectStore;
use crate::ports::warehouse::{PartitionInfo, TableInfo, Warehouse};

/// Messages per publish call.
const PUBLISH_BATCH: usize = 1000;
/// Store writes and publishes are retried this way before the producer
/// gives up: a 503 must not turn into a half-published run.
const RETRY: RetryPolicy = RetryPolicy {
    max_retries: 5,
    min_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(10),
};
/// Cloud Run's name of the running job execution.
pub const EXECUTION_VAR: &str = "CLOUD_RUN_EXECUTION";

/// Which run a producer publishes, and what it does if that run exists.
#[derive(Debug, Clone, PartialEq)]
pub enum RunId {
    /// A new id made from the time and a random suffix.
    New,
    /// The operator's `--run-id`: refused if the run exists, unless `resume`.
    Given { id: String, resume: bool },
    /// The Cloud Run execution's name: a retried execution continues the run
    /// (publishing again only if the first attempt did not finish publishing).
    Execution(String),
}

impl RunId {
    /// From `--run-id` and `--resume`; without an id, from the Cloud Run
    /// execution when there is one.
    pub fn from_flags(run_id: Option<String>, resume: bool, execution: Option<String>) -> RunId {
        match (run_id, execution.filter(|e| !e.is_empty())) {
            (Some(id), _) => RunId::Given { id, resume },
            (None, Some(execution)) => RunId::Execution(execution),
            (None, None) => RunId::New,
        }
    }

    fn given(&self) -> Option<&str> {
        match self {
            RunId::New => None,
            RunId::Given { id, .. } | RunId::Execution(id) => Some(id),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunPlan {
    pub run: RunId,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub options: ExportOptions,
    pub partitions: PartitionPlan,
    /// Publish a unit only if its source changed since its current export.
    pub only_changed: bool,
    /// Export views and materialized views through a query (billed), each
    /// dry-run first against `options.max_bytes_billed`.
    pub views: bool,
    /// Retire (delete) the exports of tables gone from the source. Without
    /// it a dropped table keeps its last export, which may be someone's
    /// only copy.
    pub prune_gone: bool,
    /// A new run of the same sources and options within this long of
    /// another is a duplicate trigger: it publishes nothing.
    pub duplicate_window: Option<Duration>,
}

impl RunPlan {
    /// Every table of the dataset, with the default export options.
    pub fn every_table(run: RunId) -> RunPlan {
        RunPlan {
            run,
            include: Vec::new(),
            exclude: Vec::new(),
            options: ExportOptions::default(),
            partitions: PartitionPlan::default(),
            only_changed: false,
            views: false,
            prune_gone: false,
            duplicate_window: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProduceReport {
    pub run_id: String,
    /// Messages published by this call.
    pub published: usize,
    /// Units of the run not yet exported: what workers have to do.
    pub pending: usize,
    /// Whether this call continued an existing run.
    pub resumed: bool,
    pub skipped: Vec<SkippedTable>,
    pub excluded: usize,
    /// Units left out by `--only-changed`: nothing changed since their
    /// current export.
    pub unchanged: usize,
    /// Partitions left out by the partition window.
    pub outside_window: usize,
    /// Units with a current export whose table or partition no longer
    /// exists (found when the producer lists the current exports); their
    /// exports stay.
    pub gone: usize,
    /// Exports retired while planning: partitions gone from live tables of
    /// which the run exports nothing else, and with `--prune-gone` tables
    /// gone from the source.
    pub retired: usize,
    /// What the dry runs of the run's views say their queries will process.
    pub view_bytes_estimated: u64,
    /// Views whose dry run failed: exported with their estimate unknown
    /// (their export queries still carry `--max-bytes-billed`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub views_unestimated: Vec<String>,
    /// The run this one duplicates (a scheduler trigger delivered twice):
    /// it started within `--duplicate-window` with the same sources and
    /// options, so this one published nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    pub seconds: f64,
}

/// Written once every message of a run is confirmed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PublishedMarker {
    run_id: String,
    messages: usize,
    at: chrono::DateTime<Utc>,
}

pub fn new_run_id() -> String {
    format!(
        "{}-{:04x}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        fastrand::u16(..)
    )
}

fn patterns(flag: &str, globs: &[String]) -> Result<Vec<glob::Pattern>, ConfigError> {
    globs
        .iter()
        .map(|g| {
            glob::Pattern::new(g).map_err(|e| {
                ConfigError::new(
                    flag,
                    format!("{g:?} is not a glob: {e}"),
                    "use *, ? and [abc], e.g. 'sales_*'",
                )
            })
        })
        .collect()
}

/// A run id names folders and records: letters, digits, `-_.:` only.
pub fn check_run_id(id: &str) -> Result<(), ConfigError> {
    let allowed = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if check_path_segment(id).is_err() || !allowed {
        return Err(ConfigError::new(
            "--run-id",
            format!("{id:?} is not a usable run id"),
            "use letters, digits, '-', '_', '.' and ':'",
        ));
    }
    Ok(())
}

/// Checks everything that can be checked before anything is published.
pub fn validate(
    plan: &RunPlan,
    warehouses: &[Arc<dyn Warehouse>],
    store: &dyn ObjectStore,
) -> Result<(), ConfigError> {
    if let Some(id) = plan.run.given() {
        check_run_id(id)?;
    }
    Filters::new(&plan.include, &plan.exclude)?;
    plan.options.validate()?;
    if plan.views {
        plan.options.validate_for_views()?;
    } else if plan.options.max_bytes_billed.is_some() {
        return Err(ConfigError::new(
            "--max-bytes-billed",
            "only views' exports are billed queries",
            "add --views, or leave --max-bytes-billed out",
        ));
    }
    if plan.partitions.window.is_some() && !plan.partitions.split {
        return Err(ConfigError::new(
            "--partitions-last-days/--partitions-since",
            "a partition window needs partition units",
            "add --partitions, or leave the window out",
        ));
    }
    if warehouses.is_empty() {
        return Err(ConfigError::new(
            "--source",
            "no source given",
            "give --source",
        ));
    }
    let mut datasets: HashMap<&str, &str> = HashMap::new();
    for warehouse in warehouses {
        if let Some(other) = datasets.insert(warehouse.dataset(), warehouse.uri()) {
            return Err(ConfigError::new(
                "--source",
                format!(
                    "{other} and {} both have a dataset named {}, and the destination keeps one \
                     folder per dataset name",
                    warehouse.uri(),
                    warehouse.dataset()
                ),
                "export them in runs to different --destination roots",
            ));
        }
        warehouse.check_export(&plan.options, store.uri())?;
    }
    Ok(())
}

/// Produces a run of every table (or partition) of `warehouses`, the
/// datasets named by `--source`.
pub async fn produce(
    plan: &RunPlan,
    warehouses: &[Arc<dyn Warehouse>],
    topic: &dyn Topic,
    store: &dyn ObjectStore,
) -> anyhow::Result<ProduceReport> {
    let started = Instant::now();
    validate(plan, warehouses, store)?;
    let run_id = plan.run.given().map_or_else(new_run_id, str::to_string);
    let manifest_key = layout::run_manifest(&run_id);
    let existing = RETRY
        .run_any("reading the run manifest", || store.read(&manifest_key))
        .await?;
    let Some(existing) = existing else {
        return publish_new(plan, run_id, warehouses, topic, store, started).await;
    };
    let manifest: RunManifest = serde_json::from_slice(&existing)
        .map_err(|e| anyhow::anyhow!("parsing {manifest_key}: {e}"))?;
    let again = match &plan.run {
        RunId::Given { resume: true, .. } => true,
        RunId::Execution(_) => {
            let marker = layout::run_published(&run_id);
            RETRY
                .run_any("reading the run's published marker", || store.read(&marker))
                .await?
                .is_none()
        }
        RunId::Given { resume: false, .. } | RunId::New => {
            return Err(ConfigError::new(
                "--run-id",
                format!(
                "run {run_id} already exists in {} (started {}, {} units); a run id is used once, \
                     since its exports are ordered by its start",
                store.uri(),
                manifest.created_at.to_rfc3339(),
                manifest.units.len()
            ),
                "leave --run-id out to start a new run, or add --resume to publish again only \
                 this run's units that have no completion record",
            )
            .into())
        }
    };
    let mut ours: Vec<String> = warehouses.iter().map(|w| w.uri().to_string()).collect();
    let mut theirs = manifest.source_uris();
    ours.sort();
    theirs.sort();
    if ours != theirs {
        let flags: Vec<String> = theirs.iter().map(|s| format!("--source {s}")).collect();
        return Err(ConfigError::new(
            "--source",
            format!(
                "run {run_id} exports {}, not {}",
                theirs.join(" "),
                ours.join(" ")
            ),
            format!("pass {} to resume it", flags.join(" ")),
        )
        .into());
    }
    resume(manifest, again, topic, store, started).await
}

/// What a run would do, planned as `produce` plans it, with nothing
/// published, written or retired (`bqdrain-producer --check`).
#[derive(Debug, Clone, Serialize)]
pub struct RunPreview {
    /// Tables listed in every source, before filters.
    pub tables: usize,
    pub units: usize,
    /// The units' bytes, as the source reports them (unknown counts none).
    pub bytes: u64,
    pub skipped: Vec<SkippedTable>,
    pub excluded: usize,
    pub unchanged: usize,
    pub outside_window: usize,
    pub gone: usize,
    /// Exports the run would retire.
    pub retired: usize,
    pub view_bytes_estimated: u64,
    /// How each source was planned (`--source` URI, path), where it says.
    pub planning: Vec<(String, String)>,
    pub seconds: f64,
}

/// Plans a new run of `warehouses` as [`produce`] would, and stops there.
pub async fn preview(
    plan: &RunPlan,
    warehouses: &[Arc<dyn Warehouse>],
    store: &dyn ObjectStore,
) -> anyhow::Result<RunPreview> {
    let started = Instant::now();
    validate(plan, warehouses, store)?;
    let all = plan_sources(plan, warehouses, store).await?;
    let planning = warehouses
        .iter()
        .filter_map(|w| Some((w.uri().to_string(), w.planned_from()?.to_string())))
        .collect();
    Ok(RunPreview {
        tables: all.listed,
        units: all.units.len(),
        bytes: all.units.iter().filter_map(|u| u.bytes).sum(),
        skipped: all.skipped,
        excluded: all.excluded,
        unchanged: all.unchanged.len(),
        outside_window: all.outside_window,
        gone: all.gone.len(),
        retired: all.retired.len(),
        view_bytes_estimated: all.view_bytes,
        planning,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What one source adds to a new run.
#[derive(Default)]
struct SourcePlan {
    units: Vec<PlannedUnit>,
    skipped: Vec<SkippedTable>,
    excluded: usize,
    listed: usize,
    outside_window: usize,
    unchanged: Vec<CurrentExport>,
    gone: Vec<CurrentExport>,
    /// Views over `--max-bytes-billed`, with their estimates.
    too_costly: Vec<String>,
    /// Tables the format cannot hold, with the columns it cannot hold.
    not_held: Vec<String>,
    view_bytes: u64,
    views_unestimated: Vec<String>,
    partly_covered: Vec<String>,
    retired: Vec<RetiredExport>,
}

impl SourcePlan {
    /// Adds another source's part to this one.
    fn absorb(&mut self, other: SourcePlan) {
        self.units.extend(other.units);
        self.skipped.extend(other.skipped);
        self.excluded += other.excluded;
        self.listed += other.listed;
        self.outside_window += other.outside_window;
        self.unchanged.extend(other.unchanged);
        self.gone.extend(other.gone);
        self.too_costly.extend(other.too_costly);
        self.not_held.extend(other.not_held);
        self.view_bytes += other.view_bytes;
        self.views_unestimated.extend(other.views_unestimated);
        self.partly_covered.extend(other.partly_covered);
        self.retired.extend(other.retired);
    }
}

/// `--include` and `--exclude`, compiled.
pub struct Filters {
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
}

impl Filters {
    /// Compiles the globs, refusing one that is not a glob (naming its flag).
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filters, ConfigError> {
        Ok(Filters {
            include: patterns("--include", include)?,
            exclude: patterns("--exclude", exclude)?,
        })
    }

    /// Whether the run takes this table: a glob names a table as `TABLE` or
    /// as `DATASET.TABLE`.
    pub fn select(&self, dataset: &str, table: &str) -> bool {
        let qualified = format!("{dataset}.{table}");
        let names = |p: &glob::Pattern| p.matches(table) || p.matches(&qualified);
        (self.include.is_empty() || self.include.iter().any(names))
            && !self.exclude.iter().any(names)
    }
}

/// Plans a new run, writes its manifest, publishes it.
async fn publish_new(
    plan: &RunPlan,
    run_id: String,
    warehouses: &[Arc<dyn Warehouse>],
    topic: &dyn Topic,
    store: &dyn ObjectStore,
    started: Instant,
) -> anyhow::Result<ProduceReport> {
    let all = plan_sources(plan, warehouses, store).await?;
    // The run's snapshot, taken after every change marker was read: a change
    // made while planning is then in the data each unit exports, and its
    // marker moves again by the next run, which exports it once more. Taken
    // before, such a change would be in the marker but not in the data, and
    // `--only-changed` would skip it for good.
    let created_at = Utc::now();
    let SourcePlan {
        mut units,
        skipped,
        excluded,
        listed,
        outside_window,
        unchanged,
        gone,
        too_costly,
        not_held,
        view_bytes,
        views_unestimated,
        partly_covered,
        retired,
    } = all;
    if !not_held.is_empty() {
        return Err(holdable::refusal(plan.options.format, &not_held).into());
    }
    if let (false, Some(max)) = (too_costly.is_empty(), plan.options.max_bytes_billed) {
        return Err(ConfigError::new(
            "--max-bytes-billed",
            format!(
                "exporting these views would process more than {max} bytes each: {}",
                too_costly.join(", ")
            ),
            "raise --max-bytes-billed, or leave the views out with --exclude",
        )
        .into());
    }
    limits::check_names(&units, &run_id, &plan.options, store)?;
    limits::check_daily_quota(&units, warehouses)?;
    if let Some(problem) = store.write_problem().await {
        return Err(ConfigError::new(
            "--destination",
            problem,
            "give a destination you can write to, or fix its permissions",
        )
        .into());
    }
    // Nothing is written before this: a run refused above leaves no trace.
    if let Some(window) = plan.duplicate_window {
        let earlier = trigger::claim(
            store,
            &same_run(plan, warehouses),
            &run_id,
            Utc::now(),
            window,
        )
        .await?;
        if let Some(earlier) = earlier {
            tracing::warn!(
                run_id,
                earlier = earlier.run_id,
                earlier_at = %earlier.at.to_rfc3339(),
                window_s = window.as_secs(),
                "a run of the same sources and options started within the duplicate window: \
                 this is a duplicate trigger, nothing published"
            );
            return Ok(ProduceReport {
                run_id,
                published: 0,
                pending: 0,
                resumed: false,
                skipped,
                excluded,
                unchanged: 0,
                outside_window: 0,
                gone: 0,
                retired: 0,
                view_bytes_estimated: 0,
                views_unestimated: Vec::new(),
                duplicate_of: Some(earlier.run_id),
                seconds: started.elapsed().as_secs_f64(),
            });
        }
    }
    for warehouse in warehouses {
        ownership::claim_dataset_folder(warehouse.as_ref(), store, &run_id).await?;
    }
    // Largest first: the longest exports start first, so the run ends sooner.
    units.sort_by(|a, b| {
        (b.bytes, b.rows)
            .cmp(&(a.bytes, a.rows))
            .then_with(|| a.unit.cmp(&b.unit))
    });
    if units.is_empty() {
        tracing::warn!(
            listed,
            excluded,
            skipped = skipped.len(),
            unchanged = unchanged.len(),
            outside_window,
            "nothing to export in this run"
        );
    }
    let sources: Vec<String> = warehouses.iter().map(|w| w.uri().to_string()).collect();
    let manifest = RunManifest {
        v: SCHEMA_VERSION,
        run_id: run_id.clone(),
        created_at,
        source: sources.join(" "),
        sources,
        destination: store.uri().to_string(),
        options: plan.options.clone(),
        units,
        skipped: skipped.clone(),
        unchanged,
        gone,
        partly_covered,
        retired,
    };
    write_run_manifest(&manifest, store).await?;
    for export in &manifest.retired {
        RETRY
            .run_any("retiring an export", || async {
                let listed = store.list(&export.folder).await?;
                let keys = listed.iter().map(|o| o.key.as_str()).collect();
                export::delete_export_files(store, keys).await
            })
            .await?;
        tracing::info!(
            run_id,
            folder = export.folder,
            unit = export.unit,
            "retired"
        );
    }
    let units: Vec<&PlannedUnit> = manifest.units.iter().collect();
    let published = publish(&manifest, &units, topic, store).await?;
    tracing::info!(
        run_id,
        published,
        skipped = skipped.len(),
        excluded,
        unchanged = manifest.unchanged.len(),
        outside_window,
        "run published"
    );
    Ok(ProduceReport {
        run_id,
        published,
        pending: published,
        resumed: false,
        skipped,
        excluded,
        unchanged: manifest.unchanged.len(),
        outside_window,
        gone: manifest.gone.len(),
        retired: manifest.retired.len(),
        view_bytes_estimated: view_bytes,
        views_unestimated,
        duplicate_of: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Why a table's name cannot be a folder of the destination (empty, `.`,
/// `..`, a slash, a backslash, a control character), if it cannot: a worker
/// would refuse its message as malformed.
fn unnamable_reason(table: &str) -> Option<String> {
    check_path_segment(table).err().map(|problem| {
        format!(
            "its name {problem}, so it cannot be a folder of the destination; rename the table \
             to export it"
        )
    })
}

/// Every source's part of a new run, planned in turn.
async fn plan_sources(
    plan: &RunPlan,
    warehouses: &[Arc<dyn Warehouse>],
    store: &dyn ObjectStore,
) -> anyhow::Result<SourcePlan> {
    let today = Utc::now().date_naive();
    let filters = Filters::new(&plan.include, &plan.exclude)?;
    let several = warehouses.len() > 1;
    let mut all = SourcePlan::default();
    for warehouse in warehouses {
        all.absorb(plan_source(plan, &filters, warehouse.as_ref(), store, today, several).await?);
    }
    Ok(all)
}

/// One source's part of a new run: its tables as filtered and skipped,
/// planned into units, less those unchanged since their current export.
/// With several sources, tables are named `DATASET.TABLE` in what is skipped.
async fn plan_source(
    plan: &RunPlan,
    filters: &Filters,
    warehouse: &dyn Warehouse,
    store: &dyn ObjectStore,
    today: chrono::NaiveDate,
    several: bool,
) -> anyhow::Result<SourcePlan> {
    let dataset = warehouse.dataset();
    let mut tables = warehouse.list_tables().await?;
    let listed = tables.len();
    let every_table: HashSet<String> = tables.iter().map(|t| t.name.clone()).collect();
    tables.retain(|t| filters.select(dataset, &t.name));
    let excluded = listed - tables.len();
    let mut skipped = Vec::new();
    tables.retain(|t| {
        let reason = match (unnamable_reason(&t.name), t.kind.unexportable_reason()) {
            (Some(reason), _) => reason,
            (None, None) => return true,
            (None, Some(_)) if plan.views && t.kind.is_view() => return true,
            (None, Some(reason)) => reason.to_string(),
        };
        tracing::info!(dataset, table = %t.name, kind = ?t.kind, reason, "skipping");
        skipped.push(SkippedTable {
            table: run_name(dataset, &t.name, several),
            reason,
        });
        false
    });
    let (view_sizes, too_costly) = size_views(plan, warehouse, &mut tables, several).await;
    let not_held = holdable::tables_not_held(plan.options.format, warehouse, &tables, |t| {
        run_name(dataset, t, several)
    })
    .await?;
    // The current exports: what is unchanged, gone, or exported whole.
    let current = RETRY
        .run_any("listing the current exports", || {
            selection::current_exports(store, dataset)
        })
        .await?;
    let exported_whole: HashSet<&str> = current
        .keys()
        .filter_map(|unit| match layout::table_and_partition(dataset, unit) {
            (table, None) => Some(table),
            _ => None,
        })
        .collect();
    let units = plan_units(plan, warehouse, &tables, today, several, &exported_whole).await?;
    let PlannedUnits {
        mut units,
        outside_window,
        seen: partitions_seen,
        partly_covered,
    } = units;
    let mut unchanged = Vec::new();
    if plan.only_changed {
        units.retain(|u| {
            match selection::unchanged_since(current.get(&u.unit), u.change.as_ref(), &plan.options)
            {
                Some(run) => {
                    tracing::debug!(
                        dataset,
                        unit = u.unit,
                        exported_by = run,
                        "unchanged: not published"
                    );
                    unchanged.push(CurrentExport {
                        unit: u.unit.clone(),
                        exported_by: run.to_string(),
                    });
                    false
                }
                None => true,
            }
        });
    }
    let gone = selection::sources_gone(&current, dataset, &every_table, &partitions_seen);
    let exported_tables: HashSet<&str> = units.iter().map(|u| u.source.table.as_str()).collect();
    let (retired, gone): (Vec<_>, Vec<_>) = gone.into_iter().partition(|g| {
        let (table, partition) = layout::table_and_partition(dataset, &g.unit);
        match partition {
            // A partition gone from a live table: retired now when the run
            // exports nothing else of the table (the rows it held are gone
            // from the source); else by the run's worker that commits the
            // table's last unit, so that rows moved to another partition
            // are never missing from the destination meanwhile.
            // A run whose window left some of the table's partitions out
            // does not judge its others: the rows may have moved there.
            Some(_) => {
                every_table.contains(table)
                    && !exported_tables.contains(table)
                    && !partly_covered
                        .iter()
                        .any(|f| *f == format!("{dataset}/{table}/"))
            }
            None => plan.prune_gone && !every_table.contains(table),
        }
    });
    for g in &gone {
        tracing::info!(
            dataset,
            unit = g.unit,
            exported_by = g.exported_by,
            "source gone: its last export stays"
        );
    }
    let retired = retired
        .into_iter()
        .map(|g| {
            let (table, partition) = layout::table_and_partition(dataset, &g.unit);
            let source = SourceTable {
                dataset_uri: warehouse.uri().to_string(),
                project: warehouse.project().to_string(),
                dataset: dataset.to_string(),
                table: table.to_string(),
                partition: partition.map(str::to_string),
                view: false,
            };
            let why = if partition.is_some() {
                "the partition is gone from the table"
            } else {
                "the table is gone from the source (--prune-gone)"
            };
            RetiredExport {
                folder: layout::unit_folder(&source),
                unit: g.unit,
                exported_by: g.exported_by,
                why: why.to_string(),
            }
        })
        .collect();
    Ok(SourcePlan {
        units,
        skipped,
        excluded,
        listed,
        outside_window,
        unchanged,
        gone,
        too_costly,
        not_held,
        view_bytes: view_sizes.bytes,
        views_unestimated: view_sizes.unestimated,
        partly_covered,
        retired,
    })
}

/// What makes two runs the same run, for [`trigger::claim`]: their sources
/// (in any order) and everything the plan says but the run id.
fn same_run(plan: &RunPlan, warehouses: &[Arc<dyn Warehouse>]) -> String {
    let mut sources: Vec<String> = warehouses
        .iter()
        .map(|w| ownership::source_identity(w.uri()).to_string())
        .collect();
    sources.sort();
    sources.extend([
        format!("{:?}", plan.include),
        format!("{:?}", plan.exclude),
        serde_json::to_string(&plan.options).expect("options serialize"),
        format!("{:?}", plan.partitions),
        format!("{} {} {}", plan.only_changed, plan.views, plan.prune_gone),
    ]);
    trigger::fingerprint(&sources)
}

/// A table's or unit's name in a run: `DATASET.NAME` in a run of `several`
/// datasets, where two datasets may have tables of one name.
pub fn run_name(dataset: &str, name: &str, several: bool) -> String {
    if several {
        format!("{dataset}.{name}")
    } else {
        name.to_string()
    }
}

/// Dry-runs the query that would export each view, which sizes it; returns
/// the bytes they would process and the views over `--max-bytes-billed`.
async fn size_views(
    plan: &RunPlan,
    warehouse: &dyn Warehouse,
    tables: &mut [TableInfo],
    several: bool,
) -> (ViewSizes, Vec<String>) {
    let dataset = warehouse.dataset();
    let (mut sizes, mut too_costly) = (ViewSizes::default(), Vec::new());
    for view in tables.iter_mut().filter(|t| t.kind.is_view()) {
        let name = run_name(dataset, &view.name, several);
        let bytes = match warehouse.view_bytes(&view.name).await {
            Ok(bytes) => bytes,
            Err(err) => {
                // One view's dry run failing (it reads a table the caller
                // may not read, or one that is gone) must not stop the run:
                // its export query still carries the byte guard.
                tracing::warn!(
                    dataset, view = %view.name, error = %format!("{err:#}"),
                    "cannot estimate what exporting this view would process; exporting it with \
                     its estimate unknown (a dry run reads the tables the view reads: grant the \
                     producer bigquery.dataViewer on them, or authorize the view)"
                );
                sizes.unestimated.push(name);
                continue;
            }
        };
        tracing::info!(dataset, view = %view.name, bytes, "view: its export query will process this much");
        view.bytes = Some(bytes);
        sizes.bytes += bytes;
        if plan.options.max_bytes_billed.is_some_and(|max| bytes > max) {
            too_costly.push(format!("{name} ({bytes} bytes)"));
        }
    }
    (sizes, too_costly)
}

/// What the views' dry runs said.
#[derive(Default)]
struct ViewSizes {
    bytes: u64,
    /// Views whose dry run failed.
    unestimated: Vec<String>,
}

/// A source's units, as [`plan_units`] plans them.
struct PlannedUnits {
    units: Vec<PlannedUnit>,
    /// Partitions the window left out.
    outside_window: usize,
    /// The ids of every partition of each table the run split.
    seen: PartitionsSeen,
    /// The folders of tables the window left partly out.
    partly_covered: Vec<String>,
}

/// The run's units: one per table, or with `--partitions` one per partition
/// of each partitioned table (in the window, if one is given), each with its
/// change marker where the warehouse gives one. A table in `exported_whole`
/// (its current export is of the whole table) is split in full whatever the
/// window, once: its export is then replaced by partitions covering all its
/// rows. Units are named `DATASET.TABLE` in a run of `several` datasets.
async fn plan_units(
    plan: &RunPlan,
    warehouse: &dyn Warehouse,
    tables: &[TableInfo],
    today: chrono::NaiveDate,
    several: bool,
    exported_whole: &HashSet<&str>,
) -> anyhow::Result<PlannedUnits> {
    let planned = |table: &TableInfo, partition: Option<String>, rows, bytes, change| {
        let source = SourceTable {
            dataset_uri: warehouse.uri().to_string(),
            project: warehouse.project().to_string(),
            dataset: warehouse.dataset().to_string(),
            table: table.name.clone(),
            view: table.kind.is_view(),
            partition,
        };
        PlannedUnit {
            unit: run_name(&source.dataset, &source.unit(), several),
            source,
            rows,
            bytes,
            change,
            restore: None,
        }
    };
    // Markers first: the embedded warehouse starts counting changes here,
    // and its partitions' markers come from the same counters.
    let mut markers = if plan.only_changed {
        warehouse.change_markers(tables).await?
    } else {
        HashMap::new()
    };
    let mut partitions: HashMap<String, Vec<PartitionInfo>> = HashMap::new();
    if plan.partitions.split {
        for partition in warehouse.list_partitions(tables).await? {
            partitions
                .entry(partition.table.clone())
                .or_default()
                .push(partition);
        }
    }
    let first_day = plan.partitions.window.map(|w| w.first_day(today));
    let mut planned_units = PlannedUnits {
        units: Vec::with_capacity(tables.len()),
        outside_window: 0,
        seen: PartitionsSeen::new(),
        partly_covered: Vec::new(),
    };
    for table in tables {
        let small = table
            .rows
            .is_some_and(|rows| rows < plan.partitions.min_rows);
        if small && partitions.contains_key(&table.name) {
            tracing::debug!(table = %table.name, rows = table.rows, "small: exported whole");
            partitions.remove(&table.name);
        }
        let Some(parts) = partitions.remove(&table.name) else {
            if plan.partitions.window.is_some() && !table.kind.is_view() {
                tracing::info!(table = %table.name, "not partitioned: exported whole, whatever the partition window");
            }
            let change = markers.remove(&table.name);
            planned_units
                .units
                .push(planned(table, None, table.rows, table.bytes, change));
            continue;
        };
        planned_units.seen.insert(
            table.name.clone(),
            parts.iter().map(|p| p.id.clone()).collect(),
        );
        let table_marker = markers.remove(&table.name);
        let first_day = first_day.filter(|_| {
            let whole = exported_whole.contains(table.name.as_str());
            if whole {
                tracing::info!(table = %table.name, "its current export is of the whole table: all its partitions are exported this once, whatever the window");
            }
            !whole
        });
        let mut left_out = false;
        for part in parts {
            if let Some(first_day) = first_day {
                if !PartitionWindow::holds(first_day, part.unit, &part.id) {
                    planned_units.outside_window += 1;
                    left_out = true;
                    continue;
                }
            }
            planned_units.units.push(planned(
                table,
                Some(part.id),
                part.rows,
                part.bytes,
                part.change
                    .map(|change| change.with_schema_of(table_marker.as_ref())),
            ));
        }
        if left_out {
            let folder = planned(table, None, None, None, None);
            planned_units
                .partly_covered
                .push(layout::table_folder(&folder.source));
        }
    }
    Ok(planned_units)
}

/// Continues an existing run as its manifest planned it: with `again`, its
/// units without a completion record are published again (a duplicate of a
/// message still queued is harmless: exports are idempotent).
async fn resume(
    manifest: RunManifest,
    again: bool,
    topic: &dyn Topic,
    store: &dyn ObjectStore,
    started: Instant,
) -> anyhow::Result<ProduceReport> {
    let unfinished = runs::unfinished_units(store, &manifest).await?;
    let published = if again {
        publish(&manifest, &unfinished, topic, store).await?
    } else {
        0
    };
    tracing::info!(
        run_id = manifest.run_id,
        published,
        pending = unfinished.len(),
        "run resumed"
    );
    Ok(ProduceReport {
        pending: unfinished.len(),
        run_id: manifest.run_id.clone(),
        published,
        resumed: true,
        skipped: manifest.skipped.clone(),
        excluded: 0,
        unchanged: manifest.unchanged.len(),
        outside_window: 0,
        gone: manifest.gone.len(),
        retired: manifest.retired.len(),
        view_bytes_estimated: manifest
            .units
            .iter()
            .filter(|u| u.source.view)
            .filter_map(|u| u.bytes)
            .sum(),
        views_unestimated: Vec::new(),
        duplicate_of: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes a run's manifest, before any of its messages is published: no
/// published message ever belongs to a run without one.
pub async fn write_run_manifest(
    manifest: &RunManifest,
    store: &dyn ObjectStore,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec_pretty(manifest)?;
    let manifest_key = layout::run_manifest(&manifest.run_id);
    RETRY
        .run_any("writing the run manifest", || {
            store.write(&manifest_key, &body, None)
        })
        .await
}

/// Publishes one message per unit (a restore message for a unit with a
/// restore target), in batches, each retried until confirmed; then marks
/// the run published.
pub async fn publish(
    manifest: &RunManifest,
    units: &[&PlannedUnit],
    topic: &dyn Topic,
    store: &dyn ObjectStore,
) -> anyhow::Result<usize> {
    let mut published = 0;
    for batch in units.chunks(PUBLISH_BATCH) {
        let envelopes: Vec<_> = batch
            .iter()
            .map(|u| {
                WorkMessage {
                    v: WorkMessage::version_for(&u.restore),
                    run_id: manifest.run_id.clone(),
                    source: u.source.clone(),
                    destination: manifest.destination.clone(),
                    options: manifest.options.clone(),
                    enqueued_at: manifest.created_at,
                    change: u.change.clone(),
                    unit: (u.unit != u.source.unit()).then(|| u.unit.clone()),
                    restore: u.restore.clone(),
                }
                .to_envelope()
            })
            .collect();
        published += RETRY
            .run_any("publishing the run's messages", || {
                topic.publish(envelopes.clone())
            })
            .await?
            .len();
    }
    let marker = serde_json::to_vec_pretty(&PublishedMarker {
        run_id: manifest.run_id.clone(),
        messages: published,
        at: Utc::now(),
    })?;
    let marker_key = layout::run_published(&manifest.run_id);
    RETRY
        .run_any("marking the run published", || {
            store.write(&marker_key, &marker, None)
        })
        .await?;
    Ok(published)
}
