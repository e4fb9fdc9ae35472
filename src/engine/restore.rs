//! Turns one restore message into one loaded unit: the unit's committed
//! export (its `_MANIFEST.json` and `_TABLE.json`, in the run folder of the
//! run that exported it) is loaded into the target warehouse, its rows
//! counted against the rows the export recorded, and the restore run's
//! completion record written, in the same store as the export, so that
//! `status`, the run report and `replay` read a restore run as any other.
//!
//! A load replaces (the whole table's rows, or the one partition's), never
//! appends, so a redelivery loads the same rows again. A missing export or
//! definition, and a row count that differs, are permanent: the unit is
//! dead-lettered with the reason.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use crate::adapters::backends::OpenBackends;
use crate::contract::message::{RestoreTarget, WorkMessage, SCHEMA_VERSION};
use crate::engine::export::open_failure;
use crate::engine::layout::{self, RecordBody, TableManifest};
use crate::engine::retry::RetryPolicy;
use crate::engine::task::TaskIdentity;
use crate::error::UnitError;
use crate::ports::definition::TableDefinition;
use crate::ports::store::ObjectStore;
use crate::ports::warehouse::{Cancel, LoadRequest};

/// What a worker needs to restore units: the backends it has open, its
/// retry policy, and its identity for the records.
pub struct Restorer<'a> {
    pub backends: &'a OpenBackends,
    pub retry: &'a RetryPolicy,
    pub task: &'a TaskIdentity,
}

/// One delivery of a restore message.
pub struct RestoreDelivery<'a> {
    pub msg: &'a WorkMessage,
    pub target: &'a RestoreTarget,
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
}

impl Restorer<'_> {
    pub async fn restore(
        &self,
        delivery: &RestoreDelivery<'_>,
        store: &dyn ObjectStore,
        cancel: Cancel,
    ) -> Result<(), UnitError> {
        let RestoreDelivery { msg, target, .. } = *delivery;
        let unit = msg.unit();
        let done_key = layout::done_record(&msg.run_id, &unit);
        // A redelivery of a unit already loaded and recorded loads nothing
        // again: the table may have changed since, and that is its owner's.
        if delivery.attempt > 1 && read_store(store, &done_key, "the completion record").await? {
            return Ok(());
        }
        let export = |what| format!("{what} of run {}", target.exported_by);
        let manifest_key = layout::export_manifest(&msg.source, &target.exported_by);
        let manifest: TableManifest = read_json(store, &manifest_key)
            .await?
            .ok_or_else(|| missing(&manifest_key, &export("the committed export"), msg))?;
        let definition_key = layout::export_definition(&msg.source, &target.exported_by);
        let definition: TableDefinition = read_json(store, &definition_key)
            .await?
            .ok_or_else(|| missing(&definition_key, &export("the table's definition"), msg))?;
        let request = LoadRequest {
            job_key: msg.job_key(),
            table: target.table.clone(),
            definition,
            source_root: msg.destination.clone(),
            files: manifest.files.iter().map(|f| f.key.clone()).collect(),
            options: manifest.options.clone().unwrap_or(msg.options.clone()),
            replace_table: target.replace_table,
        };
        let started = std::time::Instant::now();
        let loaded = self
            .retry
            .run("load", || async {
                let warehouse = self
                    .backends
                    .warehouse(&target.dataset_uri, "restore.dataset_uri")
                    .await
                    .map_err(|e| open_failure("restore.dataset_uri", e))?;
                warehouse
                    .load(&request, std::sync::Arc::clone(&cancel))
                    .await
            })
            .await?;
        let is_view = request.definition.view_query.is_some();
        if !is_view && manifest.rows.is_none() {
            tracing::warn!(
                run_id = %msg.run_id, unit, rows = loaded.rows,
                "the export recorded no row count (BigQuery knows none for a table changed \
                 since the run's start, or for a partition read as it was at export time): \
                 the rows loaded are not checked"
            );
        }
        if let (false, Some(loaded), Some(exported)) = (is_view, loaded.rows, manifest.rows) {
            if loaded != exported {
                return Err(UnitError::permanent(
                    "rowCountMismatch",
                    format!(
                        "loaded {loaded} rows into {} but the export of {unit} by run {} \
                         recorded {exported}: its files differ from what was exported; \
                         export the table again, or restore it from another run",
                        target.table, target.exported_by
                    ),
                ));
            }
        }
        let record = TableManifest {
            v: SCHEMA_VERSION,
            run_id: msg.run_id.clone(),
            unit: unit.clone(),
            rows: if is_view { None } else { loaded.rows },
            finished_at: Utc::now(),
            delivery_attempt: delivery.attempt,
            task: self.task.to_string(),
            task_index: self.task.index,
            started_at: Some(delivery.started_at),
            run_started_at: Some(msg.enqueued_at),
            change: None,
            ..manifest
        };
        let body = RecordBody::of(&record);
        store
            .write_if_absent(&done_key, &body.pretty, Some(&body.summary))
            .await
            .map_err(|e| UnitError::io("writing the completion record", e))?;
        tracing::info!(
            run_id = %msg.run_id, unit, table = %target.table, rows = record.rows,
            seconds = started.elapsed().as_secs_f64(), "restored"
        );
        Ok(())
    }
}

/// Whether `key` is in the store.
async fn read_store(store: &dyn ObjectStore, key: &str, what: &str) -> Result<bool, UnitError> {
    Ok(store
        .read(key)
        .await
        .map_err(|e| UnitError::io(&format!("reading {what}"), e))?
        .is_some())
}

/// A record of the export, parsed: a store that fails may answer next time,
/// a record that does not parse will not.
async fn read_json<T: DeserializeOwned>(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<T>, UnitError> {
    layout::read_json(store, key).await.map_err(|e| {
        if e.downcast_ref::<serde_json::Error>().is_some() {
            UnitError::permanent("invalid", format!("{key} is not readable: {e:#}"))
        } else {
            UnitError::io(&format!("reading {key}"), e)
        }
    })
}

fn missing(key: &str, what: &str, msg: &WorkMessage) -> UnitError {
    UnitError::permanent(
        "notFound",
        format!(
            "{what} is not in {}: {key} is missing; restore from a run whose export of the \
             unit is committed with its definition (exports made before definitions were \
             written have none: export the table again)",
            msg.destination
        ),
    )
}
