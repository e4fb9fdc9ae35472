//! The producer: plan a run (one unit per exportable table), publish one
//! message per unit, wait for every publish to be confirmed, then write the
//! run manifest that workers and `status` read.

use std::time::Instant;

use chrono::Utc;
use serde::Serialize;

use crate::error::ConfigError;
use crate::layout::{self, PlannedUnit, RunManifest, SkippedTable};
use crate::message::{check_path_segment, ExportOptions, SourceTable, WorkMessage, SCHEMA_VERSION};
use crate::queue::Topic;
use crate::store::ObjectStore;
use crate::warehouse::Warehouse;

/// Messages per publish call.
const PUBLISH_BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct RunPlan {
    /// `None` makes one from the time and a random suffix.
    pub run_id: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub options: ExportOptions,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProduceReport {
    pub run_id: String,
    pub published: usize,
    pub skipped: Vec<SkippedTable>,
    pub excluded: usize,
    pub seconds: f64,
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

/// Checks everything that can be checked before anything is published.
pub fn validate(
    plan: &RunPlan,
    warehouse: &dyn Warehouse,
    store: &dyn ObjectStore,
) -> Result<(), ConfigError> {
    if let Some(id) = &plan.run_id {
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
    }
    patterns("--include", &plan.include)?;
    patterns("--exclude", &plan.exclude)?;
    plan.options.validate()?;
    warehouse.check_export(&plan.options, store.uri())
}

pub async fn produce(
    plan: &RunPlan,
    warehouse: &dyn Warehouse,
    topic: &dyn Topic,
    store: &dyn ObjectStore,
) -> anyhow::Result<ProduceReport> {
    let started = Instant::now();
    validate(plan, warehouse, store)?;
    let include = patterns("--include", &plan.include)?;
    let exclude = patterns("--exclude", &plan.exclude)?;
    let run_id = plan.run_id.clone().unwrap_or_else(new_run_id);
    let created_at = Utc::now();

    let mut tables = warehouse.list_tables().await?;
    let listed = tables.len();
    tables.retain(|t| {
        (include.is_empty() || include.iter().any(|p| p.matches(&t.name)))
            && !exclude.iter().any(|p| p.matches(&t.name))
    });
    let excluded = listed - tables.len();
    let mut skipped = Vec::new();
    tables.retain(|t| match t.kind.unexportable_reason() {
        None => true,
        Some(reason) => {
            tracing::info!(table = %t.name, kind = ?t.kind, reason, "skipping");
            skipped.push(SkippedTable {
                table: t.name.clone(),
                reason: reason.to_string(),
            });
            false
        }
    });
    // Largest first: the longest exports start first, so the run ends sooner.
    tables.sort_by(|a, b| {
        (b.bytes, b.rows)
            .cmp(&(a.bytes, a.rows))
            .then_with(|| a.name.cmp(&b.name))
    });

    let mut units = Vec::with_capacity(tables.len());
    let mut envelopes = Vec::with_capacity(tables.len());
    for t in &tables {
        let source = SourceTable {
            dataset_uri: warehouse.uri().to_string(),
            project: warehouse.project().to_string(),
            dataset: warehouse.dataset().to_string(),
            table: t.name.clone(),
            partition: None,
        };
        let msg = WorkMessage {
            v: SCHEMA_VERSION,
            run_id: run_id.clone(),
            source: source.clone(),
            destination: store.uri().to_string(),
            options: plan.options.clone(),
            enqueued_at: created_at,
        };
        envelopes.push(msg.to_envelope());
        units.push(PlannedUnit {
            unit: source.unit(),
            source,
            rows: t.rows,
            bytes: t.bytes,
        });
    }
    if units.is_empty() {
        tracing::warn!(
            listed,
            excluded,
            skipped = skipped.len(),
            "nothing to export in this run"
        );
    }
    let mut published = 0;
    for batch in envelopes.chunks(PUBLISH_BATCH) {
        published += topic.publish(batch.to_vec()).await?.len();
    }
    let manifest = RunManifest {
        v: SCHEMA_VERSION,
        run_id: run_id.clone(),
        created_at,
        source: warehouse.uri().to_string(),
        destination: store.uri().to_string(),
        options: plan.options.clone(),
        units,
        skipped: skipped.clone(),
    };
    store
        .write(
            &layout::run_manifest(&run_id),
            &serde_json::to_vec_pretty(&manifest)?,
        )
        .await?;
    tracing::info!(
        run_id,
        published,
        skipped = skipped.len(),
        excluded,
        "run published"
    );
    Ok(ProduceReport {
        run_id,
        published,
        skipped,
        excluded,
        seconds: started.elapsed().as_secs_f64(),
    })
}
