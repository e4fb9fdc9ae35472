//! BigQuery datasets (`bigquery://PROJECT/DATASET`): list tables, export one
//! with an extract job, or a view with an `EXPORT DATA` query job.
//!
//! Job ids are derived from the run and the unit, so a redelivered message
//! re-attaches to the job an earlier delivery started instead of starting a
//! second one. A failed job is followed by a numbered successor (`…_r1`,
//! `…_r2`), found the same way by later deliveries: a delivery skips to the
//! latest successor with a few `jobs.get` probes, so a unit can fail and be
//! replayed any number of times.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use google_cloud_bigquery_v2::client::{DatasetService, JobService, TableService};
use google_cloud_bigquery_v2::model::{
    ErrorProto, Job, JobConfiguration, JobConfigurationExtract, JobConfigurationQuery,
    JobReference, ListFormatTable, QueryRequest, QueryResponse, Table, TableFieldSchema,
    TableReference,
};
use google_cloud_gax::error::rpc::StatusDetails;
use google_cloud_gax::retry_policy::NeverRetry;
use tokio::sync::OnceCell;

use super::storage;
use crate::contract::change::ChangeMarker;
use crate::contract::message::SourceTable;
use crate::contract::options::{Compression, ExportOptions, Format};
use crate::engine::retry::RetryPolicy;
use crate::error::{ConfigError, ErrorKind, UnitError};
use crate::ports::definition::{
    Column, RangePartitioning, TableDefinition, TimePartitioning, DEFINITION_VERSION,
};
use crate::ports::warehouse::{
    Cancel, ExportQuota, ExportRequest, ExportResult, LoadRequest, LoadResult, PartitionInfo,
    Partitioning, TableInfo, TableKind, Warehouse,
};

#[path = "bigquery_load.rs"]
mod load;

pub const SCHEME: &str = "bigquery://";
const EMULATOR: &str = "BIGQUERY_EMULATOR_HOST";
/// Jobs one export attempt starts or re-attaches to before it gives up;
/// failed jobs of earlier deliveries are skipped, not counted.
const MAX_JOBS_PER_ATTEMPT: u32 = 5;
/// Successor numbers probed at most: far more than retries and replays
/// ever make, and found in about 40 probes.
const MAX_SUCCESSOR: u32 = 1 << 20;
/// Tables whose size is read at once when planning without the query.
const METADATA_CONCURRENCY: usize = 16;
/// Rows a page of the planning query's results holds.
const QUERY_PAGE_ROWS: u32 = 10_000;
/// Tables named in one `INFORMATION_SCHEMA.PARTITIONS` query.
const PARTITIONS_PER_QUERY: usize = 1000;
/// The partition id of rows still in the streaming buffer.
const STREAMING_PARTITION: &str = "__STREAMING_UNPARTITIONED__";
/// How long one call waits for the planning query to finish.
const QUERY_WAIT: Duration = Duration::from_secs(10);
/// Consecutive failed polls of a running job before the export gives up.
const MAX_POLL_FAILURES: u32 = 5;

/// Reasons that a later try can get past, whatever the HTTP status.
const TRANSIENT_REASONS: &[&str] = &[
    "backendError",
    "internalError",
    "jobBackendError",
    "jobInternalError",
    "rateLimitExceeded",
    "jobRateLimitExceeded",
    "quotaExceeded",
    "tableUnavailable",
];

/// Reasons that no retry can fix. Every other job failure is retried.
const PERMANENT_REASONS: &[&str] = &[
    "notFound",
    "invalid",
    "invalidQuery",
    "accessDenied",
    "billingNotEnabled",
    "blocked",
    "duplicate",
    "bytesBilledLimitExceeded",
];

pub fn is_bigquery(uri: &str) -> bool {
    uri.starts_with(SCHEME)
}

/// Whether `uri` names a whole project (`bigquery://PROJECT`).
pub fn is_project(uri: &str) -> bool {
    uri.strip_prefix(SCHEME)
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
}

/// The URI of every dataset of the project `bigquery://PROJECT`, from
/// `datasets.list`.
pub async fn project_datasets(uri: &str, flag: &str) -> anyhow::Result<Vec<String>> {
    let project = uri.strip_prefix(SCHEME).unwrap_or_default();
    let datasets = connect!(
        DatasetService::builder().with_retry_policy(NeverRetry),
        "BigQuery",
        EMULATOR
    );
    let what = format!("listing the datasets of {uri}");
    let mut uris: Vec<String> = every_page(&what, |page_token| {
        let datasets = &datasets;
        async move {
            let page = datasets
                .list_datasets()
                .set_project_id(project)
                .set_max_results(1000u32)
                .set_page_token(page_token)
                .send()
                .await?;
            Ok((page.datasets, page.next_page_token))
        }
    })
    .await?
    .into_iter()
    .filter_map(|d| d.dataset_reference)
    .map(|r| format!("{SCHEME}{project}/{}", r.dataset_id))
    .collect();
    if uris.is_empty() {
        return Err(ConfigError::new(
            flag,
            format!("project {project} has no datasets"),
            "check the project id, or name a dataset: bigquery://PROJECT/DATASET",
        )
        .into());
    }
    uris.sort();
    Ok(uris)
}

pub struct BigQueryWarehouse {
    uri: String,
    project: String,
    dataset: String,
    datasets: DatasetService,
    tables: TableService,
    jobs: JobService,
    /// Read from the dataset on first use: jobs must run where the data is.
    location: OnceCell<String>,
    /// Delay before the first poll of a running job, doubling up to
    /// `max_poll`: extract jobs rarely finish within a second. Each delay
    /// is jittered, so that jobs started together are not polled together.
    first_poll: Duration,
    max_poll: Duration,
    /// Which way `list_tables` planned, once it has.
    planned_from: std::sync::OnceLock<&'static str>,
    /// Tables read by `exported_rows` after their export, by name, until
    /// `definition` takes them: one `tables.get` per whole-table unit
    /// serves both.
    read_after_export: std::sync::Mutex<HashMap<String, Table>>,
}

/// The planning paths, as the preflight prints them.
const FAST_PATH: &str = "fast (one INFORMATION_SCHEMA query)";
const FALLBACK_PATH: &str = "fallback (tables.list, then one tables.get per table)";

impl BigQueryWarehouse {
    pub async fn open(uri: &str, flag: &str) -> anyhow::Result<BigQueryWarehouse> {
        let rest = uri.strip_prefix(SCHEME).unwrap_or_default();
        let valid_id = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        };
        let Some((project, dataset)) = rest
            .split_once('/')
            .filter(|(p, d)| valid_id(p) && valid_id(d) && !d.contains([':', '.', '-']))
        else {
            return Err(ConfigError::new(
                flag,
                format!("{uri:?} is not a BigQuery dataset URI"),
                "write it as bigquery://PROJECT/DATASET",
            )
            .into());
        };
        Ok(BigQueryWarehouse {
            uri: uri.to_string(),
            project: project.to_string(),
            dataset: dataset.to_string(),
            datasets: connect!(
                DatasetService::builder().with_retry_policy(NeverRetry),
                "BigQuery",
                EMULATOR
            ),
            tables: connect!(
                TableService::builder().with_retry_policy(NeverRetry),
                "BigQuery",
                EMULATOR
            ),
            jobs: connect!(
                JobService::builder().with_retry_policy(NeverRetry),
                "BigQuery",
                EMULATOR
            ),
            location: OnceCell::new(),
            first_poll: Duration::from_secs(1),
            max_poll: Duration::from_secs(5),
            planned_from: std::sync::OnceLock::new(),
            read_after_export: Default::default(),
        })
    }

    async fn location(&self) -> Result<&str, UnitError> {
        self.location
            .get_or_try_init(|| async {
                let dataset = self
                    .datasets
                    .get_dataset()
                    .set_project_id(&self.project)
                    .set_dataset_id(&self.dataset)
                    .send()
                    .await
                    .map_err(|e| classify("reading the dataset's location", &e))?;
                Ok(dataset.location)
            })
            .await
            .map(String::as_str)
    }

    /// The job exporting the request's unit: an extract job, or for a view
    /// an `EXPORT DATA` query job capped at `max_bytes_billed`. Both write
    /// the same shard names.
    fn export_job(
        &self,
        job_id: &str,
        location: &str,
        request: &ExportRequest,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Job, UnitError> {
        // The producer checked it, but a message may come from elsewhere.
        let (bucket, prefix) = storage::parse(&request.destination_root, "destination")
            .map_err(|e| UnitError::permanent("invalid", e.to_string()))?;
        let wildcard = request.shard_key(0).replace(&format!("_{:012}.", 0), "_*.");
        let uri = format!("gs://{bucket}/{prefix}{wildcard}");
        let configuration = if request.source.view {
            let mut query = JobConfigurationQuery::new()
                .set_query(export_data_sql(request, &uri))
                .set_use_legacy_sql(false);
            if let Some(max) = request.options.max_bytes_billed {
                query = query.set_maximum_bytes_billed(max as i64);
            }
            JobConfiguration::new().set_query(query)
        } else {
            JobConfiguration::new().set_extract(extract_config(request, as_of, uri))
        };
        Ok(self.job_of(job_id, location, configuration))
    }

    /// Job `job_id` of this project, run in `location`.
    fn job_of(&self, job_id: &str, location: &str, configuration: JobConfiguration) -> Job {
        Job::new()
            .set_job_reference(
                JobReference::new()
                    .set_project_id(&self.project)
                    .set_job_id(job_id)
                    .set_location(location),
            )
            .set_configuration(configuration)
    }

    async fn get_job(&self, job_id: &str, location: &str) -> Result<Job, UnitError> {
        self.jobs
            .get_job()
            .set_project_id(&self.project)
            .set_job_id(job_id)
            .set_location(location)
            .send()
            .await
            .map_err(|e| classify(&format!("reading job {job_id}"), &e))
    }

    /// `tables.get` of a table of this warehouse's dataset.
    async fn own_table(&self, table: &str) -> Result<Table, google_cloud_bigquery_v2::Error> {
        self.tables
            .get_table()
            .set_project_id(&self.project)
            .set_dataset_id(&self.dataset)
            .set_table_id(table)
            .send()
            .await
    }

    /// Whether job `job_id` was ever started.
    async fn job_exists(&self, job_id: &str, location: &str) -> Result<bool, UnitError> {
        match self.get_job(job_id, location).await {
            Ok(_) => Ok(true),
            Err(e) if e.reason == "notFound" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Starts `job` (an `extract` or `load` job, as `kind` says), or finds
    /// it if an earlier delivery started it. Returns the job and whether
    /// this call created it.
    async fn start_or_attach(
        &self,
        job: Job,
        job_id: &str,
        location: &str,
        kind: &str,
    ) -> Result<(Job, bool), UnitError> {
        let inserted = self
            .jobs
            .insert_job()
            .set_project_id(&self.project)
            .set_job(job)
            .send()
            .await;
        match inserted {
            Ok(job) => Ok((job, true)),
            Err(e) if e.http_status_code() == Some(409) || reason(&e) == Some("duplicate") => {
                tracing::info!(
                    job_id,
                    kind,
                    "re-attaching to the {kind} job of an earlier delivery"
                );
                Ok((self.get_job(job_id, location).await?, false))
            }
            Err(e) => Err(classify(&format!("starting job {job_id}"), &e)),
        }
    }

    async fn wait_done(
        &self,
        mut job: Job,
        job_id: &str,
        location: &str,
        cancel: &Cancel,
    ) -> Result<Job, UnitError> {
        let mut delay = self.first_poll;
        let mut failures = 0;
        while state(&job) != "DONE" {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(UnitError::transient(
                    "cancelled",
                    format!("stopped waiting for job {job_id}; a redelivery re-attaches to it"),
                ));
            }
            tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64())).await;
            delay = (delay * 2).min(self.max_poll);
            match self.get_job(job_id, location).await {
                Ok(polled) => {
                    job = polled;
                    failures = 0;
                }
                Err(e) if e.is_transient() && failures + 1 < MAX_POLL_FAILURES => {
                    failures += 1;
                    tracing::warn!(job_id, error = %e, "polling the job failed; polling on");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(job)
    }

    /// The highest successor number that has a job, knowing that
    /// `known` has one. Successors are started in order, so the jobs form
    /// an unbroken sequence: probe at doubling distances, then bisect.
    async fn latest_successor(
        &self,
        id: &impl Fn(u32) -> String,
        location: &str,
        known: u32,
    ) -> Result<u32, UnitError> {
        let exists = |successor| async move { self.job_exists(&id(successor), location).await };
        let (mut present, mut step) = (known, 1);
        let mut absent = loop {
            let probe = present.saturating_add(step);
            if probe > MAX_SUCCESSOR {
                return Err(UnitError::permanent(
                    "invalid",
                    format!("more than {MAX_SUCCESSOR} jobs of this unit failed"),
                ));
            }
            if !exists(probe).await? {
                break probe;
            }
            (present, step) = (probe, step * 2);
        };
        while absent - present > 1 {
            let middle = present + (absent - present) / 2;
            if exists(middle).await? {
                present = middle;
            } else {
                absent = middle;
            }
        }
        Ok(present)
    }

    /// Runs a unit's job to its successful end: starts job `id(0)` (made
    /// by `build` from its id), or re-attaches to an earlier delivery's,
    /// and goes on to numbered successors of jobs that failed before.
    /// `kind` names the jobs in errors (`extract`, `load`).
    async fn run_job(
        &self,
        id: impl Fn(u32) -> String,
        build: impl Fn(&str) -> Result<Job, UnitError>,
        location: &str,
        kind: &str,
        cancel: &Cancel,
    ) -> Result<Job, UnitError> {
        let mut successor = 0;
        for _ in 0..MAX_JOBS_PER_ATTEMPT {
            let job_id = id(successor);
            let (job, created) = self
                .start_or_attach(build(&job_id)?, &job_id, location, kind)
                .await?;
            let job = self.wait_done(job, &job_id, location, cancel).await?;
            let Some(error) = job.status.as_ref().and_then(|s| s.error_result.as_ref()) else {
                return Ok(job);
            };
            if created {
                return Err(job_failure(&job_id, error));
            }
            // An earlier delivery's job failed: this delivery (a retry, or
            // a replay after the cause was fixed) goes on from the latest
            // successor, or starts the next one.
            let latest = self.latest_successor(&id, location, successor).await?;
            successor = if latest > successor {
                latest
            } else {
                successor + 1
            };
        }
        Err(UnitError::transient(
            "backendError",
            format!("{MAX_JOBS_PER_ATTEMPT} {kind} jobs of this attempt failed"),
        ))
    }

    /// Exports the unit as of `as_of` (a time-travel read), or as it is now.
    async fn extract(
        &self,
        request: &ExportRequest,
        location: &str,
        as_of: Option<DateTime<Utc>>,
        cancel: &Cancel,
    ) -> Result<ExportResult, UnitError> {
        let job = self
            .run_job(
                |successor| job_id(request, as_of, successor),
                |id| self.export_job(id, location, request, as_of),
                location,
                "extract",
                cancel,
            )
            .await?;
        let (files, rows) = match written(&job) {
            (files, Some(rows)) => (files, Some(rows)),
            (files, None) => (files, self.exported_rows(request, as_of).await),
        };
        Ok(ExportResult {
            files: (0..files).map(|i| request.shard_key(i)).collect(),
            rows,
            as_of,
        })
    }

    /// The rows an export of a whole table holds: the table's count now,
    /// which is the snapshot's when the table has not changed since. Unknown
    /// otherwise, and for partitions; the export stands without it.
    async fn exported_rows(
        &self,
        request: &ExportRequest,
        as_of: Option<DateTime<Utc>>,
    ) -> Option<u64> {
        if request.source.partition.is_some() || request.source.view {
            return None;
        }
        let table = &request.source.table;
        match self.own_table(table).await {
            Ok(found) => {
                let unchanged = as_of.is_none_or(|at| {
                    i64::try_from(found.last_modified_time)
                        .is_ok_and(|ms| ms <= at.timestamp_millis())
                });
                let rows = found.num_rows.filter(|_| unchanged);
                self.read_after_export
                    .lock()
                    .unwrap()
                    .insert(table.clone(), found);
                rows
            }
            Err(e) => {
                tracing::warn!(table, error = %e, "cannot read the row count");
                None
            }
        }
    }

    /// The partitioning of every table of the dataset that has one, from
    /// `tables.list` (a page per 1,000 tables).
    async fn partitioning(&self) -> anyhow::Result<HashMap<String, Partitioning>> {
        let mut units = HashMap::new();
        for table in self.list_all_tables().await? {
            let name = table
                .table_reference
                .map(|r| r.table_id)
                .unwrap_or_default();
            let unit = match (&table.time_partitioning, &table.range_partitioning) {
                (Some(time), _) => match time.r#type.as_str() {
                    "HOUR" => Partitioning::Hour,
                    "MONTH" => Partitioning::Month,
                    "YEAR" => Partitioning::Year,
                    _ => Partitioning::Day,
                },
                (None, Some(_)) => Partitioning::IntegerRange,
                (None, None) => continue,
            };
            units.insert(name, unit);
        }
        Ok(units)
    }

    /// Every page of `tables.list`.
    async fn list_all_tables(&self) -> Result<Vec<ListFormatTable>, UnitError> {
        let what = format!("listing the tables of {}", self.uri);
        every_page(&what, |page_token| async move {
            let page = self
                .tables
                .list_tables()
                .set_project_id(&self.project)
                .set_dataset_id(&self.dataset)
                .set_max_results(1000u32)
                .set_page_token(page_token)
                .send()
                .await?;
            Ok((page.tables, page.next_page_token))
        })
        .await
    }

    /// Rows of `INFORMATION_SCHEMA.PARTITIONS` for these tables, one query
    /// per 1,000 of them: a partitioned table's partitions, and one row with
    /// no id for a table that is not partitioned.
    async fn partitions_of(&self, tables: &[String]) -> Result<Vec<PartitionRow>, UnitError> {
        let mut rows = Vec::new();
        for batch in tables.chunks(PARTITIONS_PER_QUERY) {
            let names: Vec<String> = batch
                .iter()
                .map(|t| format!("'{}'", t.replace('\\', "\\\\").replace('\'', "\\'")))
                .collect();
            let sql = format!(
                "SELECT table_name, partition_id, total_rows, total_logical_bytes, last_modified_time \
                 FROM `{}.{}.INFORMATION_SCHEMA.PARTITIONS` WHERE table_name IN ({})",
                self.project,
                self.dataset,
                names.join(", ")
            );
            for row in self
                .query(sql, "querying INFORMATION_SCHEMA.PARTITIONS")
                .await?
            {
                let cell = |i| cell(&row, i);
                rows.push(PartitionRow {
                    table: cell(0).unwrap_or_default().to_string(),
                    id: cell(1).map(str::to_string),
                    rows: cell(2).and_then(|v| v.parse().ok()),
                    bytes: cell(3).and_then(|v| v.parse().ok()),
                    modified: cell(4).and_then(parse_timestamp),
                });
            }
        }
        Ok(rows)
    }

    /// The fingerprint of each table's columns, by table, from one query of
    /// the dataset's `INFORMATION_SCHEMA.COLUMNS` (see [`columns_sql`]).
    async fn column_fingerprints(&self) -> Result<HashMap<String, String>, UnitError> {
        Ok(fingerprints(&self.column_rows().await?))
    }

    /// The rows of [`columns_sql`]: one query of the dataset's
    /// `INFORMATION_SCHEMA.COLUMNS`.
    async fn column_rows(
        &self,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, UnitError> {
        let sql = columns_sql(&self.project, &self.dataset);
        self.query(sql, "querying INFORMATION_SCHEMA.COLUMNS").await
    }

    /// Every table of the dataset with its kind, rows and bytes, from one
    /// query (see [`planning_sql`]).
    async fn tables_from_query(&self) -> Result<Vec<TableInfo>, UnitError> {
        let sql = planning_sql(&self.project, &self.dataset);
        let rows = self.query(sql, "querying INFORMATION_SCHEMA").await?;
        Ok(rows.iter().map(table_from_row).collect())
    }

    /// Runs a metadata query and reads every page of its rows. Not free:
    /// on-demand pricing bills an `INFORMATION_SCHEMA` query at least 10 MB.
    async fn query(
        &self,
        sql: String,
        what: &str,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, UnitError> {
        let location = self.location().await?;
        let request = QueryRequest::new()
            .set_query(sql)
            .set_use_legacy_sql(false)
            .set_location(location)
            .set_max_results(QUERY_PAGE_ROWS)
            .set_timeout_ms(QUERY_WAIT.as_millis() as u32);
        let first = self.jobs_query(request, what).await?;
        let job_id = first.job_reference.map(|r| r.job_id).unwrap_or_default();
        let mut all = Vec::new();
        let (mut rows, mut page_token, mut complete) = (
            first.rows,
            first.page_token,
            first.job_complete.unwrap_or(false),
        );
        let reading = format!("reading the results of {what}");
        loop {
            all.extend(rows);
            if complete && page_token.is_empty() {
                return Ok(all);
            }
            let page = metadata_retry()
                .run(&reading, || async {
                    self.jobs
                        .get_query_results()
                        .set_project_id(&self.project)
                        .set_job_id(&job_id)
                        .set_location(location)
                        .set_page_token(&page_token)
                        .set_max_results(QUERY_PAGE_ROWS)
                        .set_timeout_ms(QUERY_WAIT.as_millis() as u32)
                        .send()
                        .await
                        .map_err(|e| classify(&reading, &e))
                })
                .await?;
            if let Some(error) = page.errors.first() {
                return Err(job_failure(&job_id, error));
            }
            complete = page.job_complete.unwrap_or(false);
            // An unfinished query returns no rows yet: ask again.
            rows = if complete { page.rows } else { Vec::new() };
            page_token = page.page_token;
        }
    }

    /// `jobs.query`, retried.
    async fn jobs_query(
        &self,
        request: QueryRequest,
        what: &str,
    ) -> Result<QueryResponse, UnitError> {
        metadata_retry()
            .run(what, || {
                let request = request.clone();
                async move {
                    self.jobs
                        .query()
                        .set_project_id(&self.project)
                        .set_query_request(request)
                        .send()
                        .await
                        .map_err(|e| classify(what, &e))
                }
            })
            .await
    }

    /// The fallback: `tables.list`, then one `tables.get` per table for
    /// its size (list items carry none).
    async fn tables_from_api(&self) -> anyhow::Result<Vec<TableInfo>> {
        let mut tables: Vec<TableInfo> = self
            .list_all_tables()
            .await?
            .into_iter()
            .map(|table| TableInfo {
                name: table
                    .table_reference
                    .map(|r| r.table_id)
                    .unwrap_or_default(),
                kind: table_kind(&table.r#type),
                bytes: None,
                rows: None,
            })
            .collect();

        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(METADATA_CONCURRENCY));
        let mut sizes = tokio::task::JoinSet::new();
        for (index, table) in tables.iter().enumerate() {
            if table.kind.unexportable_reason().is_some() {
                continue;
            }
            let (tables, limit, name) = (self.tables.clone(), limit.clone(), table.name.clone());
            let (project, dataset) = (self.project.clone(), self.dataset.clone());
            sizes.spawn(async move {
                let _permit = limit.acquire().await;
                let what = format!("reading the size of table {name}");
                let found = metadata_retry()
                    .run(&what, || async {
                        tables
                            .get_table()
                            .set_project_id(&project)
                            .set_dataset_id(&dataset)
                            .set_table_id(&name)
                            .send()
                            .await
                            .map_err(|e| classify(&what, &e))
                    })
                    .await;
                (index, name, found)
            });
        }
        while let Some(joined) = sizes.join_next().await {
            let (index, name, found) = joined?;
            match found {
                Ok(found) => {
                    tables[index].rows = found.num_rows;
                    tables[index].bytes = found.num_bytes.map(|b| b.max(0) as u64);
                }
                // Dropped since it was listed: the worker will report it.
                Err(e) if e.reason == "notFound" => {
                    tracing::warn!(table = name, error = %e, "cannot read table size")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(tables)
    }
}

/// Every item of a paged list call, each page retried: `fetch` takes a
/// page token and returns the page's items and the next token (empty after
/// the last page).
async fn every_page<T, F, Fut>(what: &str, fetch: F) -> Result<Vec<T>, UnitError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), google_cloud_bigquery_v2::Error>>,
{
    let mut items = Vec::new();
    let mut page_token = String::new();
    loop {
        let (page, next) = metadata_retry()
            .run(what, || {
                let page = fetch(page_token.clone());
                async move { page.await.map_err(|e| classify(what, &e)) }
            })
            .await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        page_token = next;
    }
}

/// One row of `INFORMATION_SCHEMA.PARTITIONS`.
struct PartitionRow {
    table: String,
    /// `None` for a table that is not partitioned.
    id: Option<String>,
    rows: Option<u64>,
    bytes: Option<u64>,
    modified: Option<DateTime<Utc>>,
}

/// The names of the tables an extract job can read.
fn exportable(tables: &[TableInfo]) -> impl Iterator<Item = String> + '_ {
    tables
        .iter()
        .filter(|t| t.kind.unexportable_reason().is_none())
        .map(|t| t.name.clone())
}

/// The extract job of a table or partition, read `as_of` a snapshot time.
fn extract_config(
    request: &ExportRequest,
    as_of: Option<DateTime<Utc>>,
    uri: String,
) -> JobConfigurationExtract {
    let source = &request.source;
    let mut table_id = match &source.partition {
        Some(p) => format!("{}${p}", source.table),
        None => source.table.clone(),
    };
    if let Some(at) = as_of {
        table_id.push_str(&format!("@{}", at.timestamp_millis()));
    }
    let options = &request.options;
    let extract = JobConfigurationExtract::new()
        .set_source_table(
            TableReference::new()
                .set_project_id(&source.project)
                .set_dataset_id(&source.dataset)
                .set_table_id(table_id),
        )
        .set_destination_uris([uri])
        .set_destination_format(match options.format {
            Format::Csv => "CSV",
            Format::Json => "NEWLINE_DELIMITED_JSON",
            Format::Avro => "AVRO",
            Format::Parquet => "PARQUET",
        })
        .set_compression(options.compression.name().to_ascii_uppercase());
    if options.format == Format::Csv {
        extract
            .set_print_header(options.header)
            .set_field_delimiter(&options.field_delimiter)
    } else {
        extract
    }
}

/// The `EXPORT DATA` statement that writes a view to `uri` (one `*`), as an
/// extract job would write a table: same names, format and options.
/// `overwrite`: a retry writes over what an earlier try left.
fn export_data_sql(request: &ExportRequest, uri: &str) -> String {
    let options = &request.options;
    let mut settings = vec![
        format!("uri = {}", sql_string(uri)),
        format!(
            "format = '{}'",
            match options.format {
                Format::Json => "JSON",
                other => other.name(),
            }
            .to_ascii_uppercase()
        ),
        "overwrite = true".to_string(),
    ];
    if options.compression != Compression::None {
        settings.push(format!(
            "compression = '{}'",
            options.compression.name().to_ascii_uppercase()
        ));
    }
    if options.format == Format::Csv {
        settings.push(format!("header = {}", options.header));
        settings.push(format!(
            "field_delimiter = {}",
            sql_string(&options.field_delimiter)
        ));
    }
    let source = &request.source;
    format!(
        "EXPORT DATA OPTIONS ({}) AS {}",
        settings.join(", "),
        select_all(&source.project, &source.dataset, &source.table)
    )
}

/// `SELECT * FROM` a table or view, its path quoted.
fn select_all(project: &str, dataset: &str, table: &str) -> String {
    let path = format!("{project}.{dataset}.{table}");
    format!(
        "SELECT * FROM `{}`",
        path.replace('\\', "\\\\").replace('`', "\\`")
    )
}

/// A GoogleSQL string literal.
fn sql_string(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('\'', "\\'")
        .replace('\n', "\\n")
        .replace('\t', "\\t");
    format!("'{escaped}'")
}

/// The files a finished export job wrote, and for a query job the rows.
fn written(job: &Job) -> (u64, Option<u64>) {
    let Some(statistics) = job.statistics.as_ref() else {
        return (0, None);
    };
    if let Some(exported) = statistics
        .query
        .as_ref()
        .and_then(|q| q.export_data_statistics.as_ref())
    {
        let count = |n: Option<i64>| n.map(|n| n.max(0) as u64);
        return (
            count(exported.file_count).unwrap_or(0),
            count(exported.row_count),
        );
    }
    let files = statistics
        .extract
        .as_ref()
        .map(|x| {
            x.destination_uri_file_counts
                .iter()
                .map(|&n| n.max(0) as u64)
                .sum()
        })
        .unwrap_or(0);
    (files, None)
}

/// A TIMESTAMP cell of a query result: BigQuery writes seconds as a float
/// (`1.7963105530718E9`); the emulator writes microseconds.
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if text.contains(['.', 'E', 'e']) {
        let seconds: f64 = text.parse().ok()?;
        return DateTime::from_timestamp_micros((seconds * 1e6).round() as i64);
    }
    let number: i64 = text.parse().ok()?;
    if number.abs() > 100_000_000_000_000 {
        DateTime::from_timestamp_micros(number)
    } else {
        DateTime::from_timestamp(number, 0)
    }
}

fn state(job: &Job) -> &str {
    job.status.as_ref().map_or("", |s| s.state.as_str())
}

/// The export job of the request's unit: see [`unit_job_id`]. A snapshot
/// read and a read of the current state are different jobs.
fn job_id(request: &ExportRequest, as_of: Option<DateTime<Utc>>, successor: u32) -> String {
    let identity = serde_json::to_vec(&(
        &request.job_key,
        &request.source,
        &request.destination_root,
        &request.folder,
        &request.options,
        as_of.map(|at| at.timestamp_millis()),
    ))
    .expect("requests serialize");
    unit_job_id(&request.job_key, &identity, successor)
}

/// A unit's job key in `[A-Za-z0-9_-]`, as BigQuery requires, cut to
/// 900 characters so that the id stays within BigQuery's 1,024
/// (<https://cloud.google.com/bigquery/docs/running-jobs#generate-jobid>)
/// whatever the table's name, plus a hash of `identity`, everything the
/// job does: job ids are unique per project, and runs of other datasets
/// or to other destinations may share a run id.
fn unit_job_id(job_key: &str, identity: &[u8], successor: u32) -> String {
    let mut id: String = job_key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(900)
        .collect();
    let hash = identity.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    id.push_str(&format!("_{hash:016x}"));
    if successor > 0 {
        id.push_str(&format!("_r{successor}"));
    }
    id
}

/// BigQuery's reason code of a failed call (`notFound`, `duplicate`, …).
fn reason(err: &google_cloud_bigquery_v2::Error) -> Option<&str> {
    err.status()?.details.iter().find_map(|d| match d {
        StatusDetails::ErrorInfo(info) if !info.reason.is_empty() => Some(info.reason.as_str()),
        _ => None,
    })
}

fn classify(context: &str, err: &google_cloud_bigquery_v2::Error) -> UnitError {
    let message = format!("{context}: {err}");
    if err.is_io() || err.is_connect() || err.is_timeout() || err.is_transport() {
        return UnitError::transient("network", message);
    }
    failure(reason(err), err.http_status_code(), message)
}

fn failure(reason: Option<&str>, status: Option<u16>, message: String) -> UnitError {
    let (kind, reason) = decide(reason, status);
    UnitError {
        kind,
        reason: reason.to_string(),
        message,
    }
}

/// Whether a failed call is worth retrying, and the reason to report.
///
/// BigQuery's reason says more than the HTTP status: it sends
/// `backendError` or `rateLimitExceeded` with a 400 or 403 as well.
fn decide(reason: Option<&str>, status: Option<u16>) -> (ErrorKind, &str) {
    use ErrorKind::{Permanent, Transient};
    match (reason, status) {
        (Some(r), _) if PERMANENT_REASONS.contains(&r) => (Permanent, r),
        (Some(r), _) if TRANSIENT_REASONS.contains(&r) => (Transient, r),
        (_, Some(404)) => (Permanent, reason.unwrap_or("notFound")),
        (_, Some(429)) => (Transient, reason.unwrap_or("rateLimitExceeded")),
        (_, Some(408 | 500..=599)) => (Transient, reason.unwrap_or("backendError")),
        (_, Some(_)) => (Permanent, reason.unwrap_or("invalid")),
        (_, None) => (Transient, reason.unwrap_or("backendError")),
    }
}

fn job_failure(job_id: &str, error: &ErrorProto) -> UnitError {
    // A job's error has no HTTP status: an unknown reason is retried.
    let message = format!("job {job_id}: {}", error.message);
    failure(
        Some(error.reason.as_str()).filter(|r| !r.is_empty()),
        None,
        message,
    )
}

/// Retries of a metadata call: BigQuery throttles metadata methods, and a
/// table whose size could not be read would be planned last.
fn metadata_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 6,
        min_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(10),
    }
}

/// The query a run is planned from: every table of the dataset with its
/// type from the dataset's `INFORMATION_SCHEMA.TABLES` (it names every table
/// now), and its rows and logical bytes summed over its partitions from the
/// dataset's `INFORMATION_SCHEMA.PARTITIONS` (an unpartitioned table is one
/// row there). Both views are the dataset's own, so what a dataset-level
/// grant reads (`bigquery.tables.list`, `bigquery.tables.get`: the module's
/// `metadataViewer`) plus `bigquery.jobs.create` on the project
/// (`jobUser`) runs it. A region-qualified view (`region-LOC.…
/// TABLE_STORAGE`) would need permissions on the whole project, which the
/// module rightly never grants.
fn planning_sql(project: &str, dataset: &str) -> String {
    format!(
        "SELECT t.table_name, t.table_type, p.total_rows, p.total_logical_bytes \
         FROM `{project}.{dataset}.INFORMATION_SCHEMA.TABLES` AS t \
         LEFT JOIN (SELECT table_name, SUM(total_rows) AS total_rows, \
         SUM(total_logical_bytes) AS total_logical_bytes \
         FROM `{project}.{dataset}.INFORMATION_SCHEMA.PARTITIONS` GROUP BY table_name) AS p \
         ON p.table_name = t.table_name"
    )
}

/// The query behind the columns' fingerprints: every column of every
/// table of the dataset, with what the fingerprint is made of. The
/// dataset's own view, so the planning query's grants run it
/// (`bigquery.tables.get` and `bigquery.tables.list` on the dataset). A
/// nested field's change shows in its column's `data_type`
/// (`STRUCT<a INT64, b ARRAY<STRING>>`); pseudo-columns
/// (`_PARTITIONTIME`) have no position and are left out.
fn columns_sql(project: &str, dataset: &str) -> String {
    format!(
        "SELECT table_name, ordinal_position, column_name, data_type, is_nullable \
         FROM `{project}.{dataset}.INFORMATION_SCHEMA.COLUMNS` \
         WHERE ordinal_position IS NOT NULL"
    )
}

/// Each table's columns from the rows of [`columns_sql`], in their order:
/// name, type, and whether the column is `REQUIRED`.
fn columns_by_table(
    rows: &[serde_json::Map<String, serde_json::Value>],
) -> HashMap<&str, Vec<(&str, &str, bool)>> {
    let mut columns: HashMap<&str, Vec<(u64, &str, &str, bool)>> = HashMap::new();
    for row in rows {
        let text = |i| cell(row, i).unwrap_or_default();
        let Ok(position) = text(1).parse::<u64>() else {
            continue;
        };
        columns
            .entry(text(0))
            .or_default()
            .push((position, text(2), text(3), text(4) == "NO"));
    }
    columns
        .into_iter()
        .map(|(table, mut of_table)| {
            of_table.sort_by_key(|(position, ..)| *position);
            let ordered = of_table
                .into_iter()
                .map(|(_, name, data_type, required)| (name, data_type, required))
                .collect();
            (table, ordered)
        })
        .collect()
}

/// Each table's fingerprint ([`ChangeMarker::schema_of`]) from the rows of
/// [`columns_sql`]: its columns in their order, each as its name and type,
/// `NOT NULL` added for a `REQUIRED` one (as DDL declares it), so a column
/// dropped, added, renamed, moved, retyped or relaxed changes it.
fn fingerprints(rows: &[serde_json::Map<String, serde_json::Value>]) -> HashMap<String, String> {
    columns_by_table(rows)
        .into_iter()
        .map(|(table, columns)| {
            let declared: Vec<(&str, String)> = columns
                .iter()
                .map(|(name, data_type, required)| {
                    let not_null = if *required { " NOT NULL" } else { "" };
                    (*name, format!("{data_type}{not_null}"))
                })
                .collect();
            let fingerprint = ChangeMarker::schema_of(
                declared
                    .iter()
                    .map(|(name, declared)| (*name, declared.as_str())),
            );
            (table.to_string(), fingerprint)
        })
        .collect()
}

/// A table's definition from `tables.get`, for the unit `source`.
fn definition_of(table: Table, source: &SourceTable) -> TableDefinition {
    let columns = table
        .schema
        .map(|schema| schema.fields.into_iter().map(column_of).collect())
        .unwrap_or_default();
    let view_query = match (table.view, table.materialized_view) {
        (Some(view), _) => Some(view.query),
        (None, Some(materialized)) => Some(materialized.query),
        (None, None) => None,
    };
    let mut labels: Vec<(String, String)> = table.labels.into_iter().collect();
    labels.sort();
    TableDefinition {
        v: DEFINITION_VERSION,
        table: source.table.clone(),
        partition: source.partition.clone(),
        table_type: table_kind(&table.r#type),
        columns,
        time_partitioning: table.time_partitioning.map(|time| TimePartitioning {
            unit: time.r#type,
            field: time.field,
            expiration_ms: time.expiration_ms,
        }),
        range_partitioning: table.range_partitioning.map(|range| {
            let bounds = range.range.unwrap_or_default();
            let number = |text: &str| text.parse().unwrap_or_default();
            RangePartitioning {
                field: range.field,
                start: number(&bounds.start),
                end: number(&bounds.end),
                interval: number(&bounds.interval),
            }
        }),
        require_partition_filter: table.require_partition_filter.unwrap_or(false),
        clustering: table.clustering.map(|c| c.fields).unwrap_or_default(),
        labels: labels.into_iter().collect(),
        description: table.description.filter(|d| !d.is_empty()),
        view_query,
    }
}

/// One column of `tables.get`'s schema, its fields nested.
fn column_of(field: TableFieldSchema) -> Column {
    Column {
        name: field.name,
        data_type: field.r#type,
        mode: if field.mode.is_empty() {
            "NULLABLE".to_string()
        } else {
            field.mode
        },
        fields: field.fields.into_iter().map(column_of).collect(),
        description: field.description.filter(|d| !d.is_empty()),
        default_value: field.default_value_expression.filter(|d| !d.is_empty()),
        policy_tags: field.policy_tags.map(|t| t.names).unwrap_or_default(),
    }
}

/// Cell `i` of a query's result row (`{"f": [{"v": …}, …]}`), as text.
fn cell(row: &serde_json::Map<String, serde_json::Value>, i: usize) -> Option<&str> {
    row.get("f")
        .and_then(|f| f.get(i))
        .and_then(|c| c.get("v"))
        .and_then(|v| v.as_str())
}

/// One row of the planning query: name, type, rows, bytes, each `{"v": …}`.
fn table_from_row(row: &serde_json::Map<String, serde_json::Value>) -> TableInfo {
    let text = |i| cell(row, i).unwrap_or_default();
    let number = |i| text(i).parse::<u64>().ok();
    TableInfo {
        name: text(0).to_string(),
        kind: table_kind(text(1)),
        rows: number(2),
        bytes: number(3),
    }
}

/// A table type as `tables.list` (`MATERIALIZED_VIEW`) or
/// `INFORMATION_SCHEMA` (`BASE TABLE`, `MATERIALIZED VIEW`) spells it.
fn table_kind(kind: &str) -> TableKind {
    match kind {
        "VIEW" => TableKind::View,
        "MATERIALIZED_VIEW" | "MATERIALIZED VIEW" => TableKind::MaterializedView,
        "EXTERNAL" => TableKind::External,
        "SNAPSHOT" => TableKind::Snapshot,
        _ => TableKind::Table,
    }
}

#[async_trait]
impl Warehouse for BigQueryWarehouse {
    fn uri(&self) -> &str {
        &self.uri
    }

    /// Export jobs' quotas: 100,000 extract jobs and 50 TiB per project per
    /// day (<https://cloud.google.com/bigquery/quotas#export_jobs>).
    fn daily_export_quota(&self) -> Option<ExportQuota> {
        Some(ExportQuota {
            jobs: 100_000,
            bytes: 50 << 40,
            source: "https://cloud.google.com/bigquery/quotas#export_jobs",
        })
    }

    fn project(&self) -> &str {
        &self.project
    }

    fn dataset(&self) -> &str {
        &self.dataset
    }

    fn check_export(
        &self,
        _options: &ExportOptions,
        destination_root: &str,
    ) -> Result<(), ConfigError> {
        // Format, compression and delimiter follow BigQuery's own rules,
        // checked for every warehouse by `ExportOptions::validate`.
        storage::parse(destination_root, "--destination").map_err(|_| {
            ConfigError::new(
                "--destination",
                format!("BigQuery exports only to Cloud Storage, not {destination_root:?}"),
                "give --destination gs://BUCKET/PREFIX",
            )
        })?;
        Ok(())
    }

    async fn change_markers(
        &self,
        tables: &[TableInfo],
    ) -> anyhow::Result<HashMap<String, ChangeMarker>> {
        let names: Vec<String> = exportable(tables).collect();
        let mut markers: HashMap<String, ChangeMarker> = HashMap::new();
        for row in self.partitions_of(&names).await? {
            let marker = markers.entry(row.table).or_insert(ChangeMarker {
                modified: None,
                version: None,
                rows: Some(0),
                bytes: Some(0),
                streaming: false,
                schema: None,
            });
            marker.modified = marker.modified.max(row.modified);
            marker.rows = marker.rows.zip(row.rows).map(|(a, b)| a + b);
            marker.bytes = marker.bytes.zip(row.bytes).map(|(a, b)| a + b);
            marker.streaming |= row.id.as_deref() == Some(STREAMING_PARTITION);
        }
        // Dropping a column is a metadata-only change, which need move no
        // modification time: the columns themselves are compared.
        let mut fingerprints = self.column_fingerprints().await?;
        for (table, marker) in &mut markers {
            marker.schema = fingerprints.remove(table);
        }
        Ok(markers)
    }

    /// The same markers: reading them writes nothing here (one
    /// `INFORMATION_SCHEMA.PARTITIONS` query per 1,000 tables, and one
    /// `INFORMATION_SCHEMA.COLUMNS` query).
    async fn tracked_markers(
        &self,
        tables: &[TableInfo],
    ) -> anyhow::Result<HashMap<String, ChangeMarker>> {
        self.change_markers(tables).await
    }

    async fn list_partitions(&self, tables: &[TableInfo]) -> anyhow::Result<Vec<PartitionInfo>> {
        let wanted: HashSet<String> = exportable(tables).collect();
        let units: HashMap<String, Partitioning> = self
            .partitioning()
            .await?
            .into_iter()
            .filter(|(name, _)| wanted.contains(name))
            .collect();
        let mut names: Vec<String> = units.keys().cloned().collect();
        names.sort();
        let mut partitions = Vec::new();
        for row in self.partitions_of(&names).await? {
            let (Some(id), Some(&unit)) = (row.id, units.get(&row.table)) else {
                continue;
            };
            if id == STREAMING_PARTITION {
                tracing::info!(
                    table = row.table,
                    rows = row.rows,
                    "rows in the streaming buffer have no partition yet: an extract job does not read them"
                );
                continue;
            }
            partitions.push(PartitionInfo {
                change: Some(ChangeMarker {
                    modified: row.modified,
                    version: None,
                    rows: row.rows,
                    bytes: row.bytes,
                    streaming: false,
                    schema: None,
                }),
                table: row.table,
                id,
                unit,
                rows: row.rows,
                bytes: row.bytes,
            });
        }
        Ok(partitions)
    }

    async fn list_tables(&self) -> anyhow::Result<Vec<TableInfo>> {
        // A dataset that is not there (or not readable) is said as such,
        // not taken for a query the caller may not run.
        self.location().await?;
        match self.tables_from_query().await {
            Ok(tables) => {
                tracing::info!(
                    tables = tables.len(),
                    "planned from one INFORMATION_SCHEMA query"
                );
                let _ = self.planned_from.set(FAST_PATH);
                Ok(tables)
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "the INFORMATION_SCHEMA query failed; planning from tables.list and \
                     one tables.get per table instead (the query needs bigquery.jobs.create \
                     on the project, roles/bigquery.jobUser, and bigquery.tables.list and \
                     bigquery.tables.get on the dataset, roles/bigquery.metadataViewer)"
                );
                let _ = self.planned_from.set(FALLBACK_PATH);
                self.tables_from_api().await
            }
        }
    }

    fn planned_from(&self) -> Option<&'static str> {
        self.planned_from.get().copied()
    }

    async fn view_bytes(&self, view: &str) -> anyhow::Result<u64> {
        let location = self.location().await?;
        let sql = select_all(&self.project, &self.dataset, view);
        let request = QueryRequest::new()
            .set_query(sql)
            .set_use_legacy_sql(false)
            .set_location(location)
            .set_dry_run(true);
        let what = format!("dry-running an export of view {view}");
        let response = self.jobs_query(request, &what).await?;
        Ok(response.total_bytes_processed.unwrap_or(0).max(0) as u64)
    }

    async fn export(
        &self,
        request: &ExportRequest,
        cancel: Cancel,
    ) -> Result<ExportResult, UnitError> {
        let location = self.location().await?;
        // BigQuery's time travel reads tables: a view is read as it is now.
        if let Some(at) = request.snapshot_at.filter(|_| !request.source.view) {
            match self.extract(request, location, Some(at), &cancel).await {
                Err(e) if e.reason == "invalid" => tracing::warn!(
                    unit = request.source.unit(), snapshot = %at, error = %e,
                    "the run's snapshot cannot be read (its time-travel window has passed, \
                     the table is newer, or a partition cannot be read at a time): \
                     exporting the current state, and recording it so"
                ),
                done => return done,
            }
        }
        self.extract(request, location, None, &cancel).await
    }

    /// One `tables.get` per unit, in the worker (for a whole table, the one
    /// its row count was read with after the export): the planning
    /// queries' `INFORMATION_SCHEMA` views hold no labels, policy tags or
    /// range bounds, and a unit exported hours after planning records the
    /// table as it was exported.
    async fn definition(&self, source: &SourceTable) -> Result<TableDefinition, UnitError> {
        let read = self.read_after_export.lock().unwrap().remove(&source.table);
        if let Some(table) = read {
            return Ok(definition_of(table, source));
        }
        let what = format!("reading the definition of table {}", source.table);
        let table = metadata_retry()
            .run(&what, || async {
                self.own_table(&source.table)
                    .await
                    .map_err(|e| classify(&what, &e))
            })
            .await?;
        Ok(definition_of(table, source))
    }

    /// Creates the table from its definition when absent, then runs one
    /// load job (see `bigquery_load.rs`).
    async fn load(&self, request: &LoadRequest, cancel: Cancel) -> Result<LoadResult, UnitError> {
        self.restore_unit(request, &cancel).await
    }

    /// From one query of the dataset's `INFORMATION_SCHEMA.COLUMNS`, whose
    /// `data_type` spells a nested or repeated column `STRUCT<…>` or
    /// `ARRAY<…>`.
    async fn column_types(&self) -> anyhow::Result<HashMap<String, Vec<(String, String)>>> {
        let rows = self.column_rows().await?;
        Ok(columns_by_table(&rows)
            .into_iter()
            .map(|(table, columns)| {
                let typed = columns
                    .into_iter()
                    .map(|(name, data_type, _)| (name.to_string(), data_type.to_string()))
                    .collect();
                (table.to_string(), typed)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::{
        columns_sql, decide, export_data_sql, fingerprints, job_id, parse_timestamp, planning_sql,
    };
    use crate::contract::change::ChangeMarker;
    use crate::contract::message::SourceTable;
    use crate::contract::options::{Compression, Format};
    use crate::error::ErrorKind::{self, Permanent, Transient};
    use crate::ports::warehouse::ExportRequest;

    /// The module grants the producer dataset-level reads and the right to
    /// run jobs, never project-wide metadata: the planning query must read
    /// the dataset's own INFORMATION_SCHEMA views only.
    #[test]
    fn the_planning_query_reads_only_the_datasets_own_views() {
        let sql = planning_sql("p", "sales");
        let views: Vec<&str> = sql.split('`').skip(1).step_by(2).collect();
        assert_eq!(
            views,
            [
                "p.sales.INFORMATION_SCHEMA.TABLES",
                "p.sales.INFORMATION_SCHEMA.PARTITIONS"
            ],
            "{sql}"
        );
        assert!(!sql.contains("region-"), "{sql}");
        let sql = columns_sql("p", "sales");
        let views: Vec<&str> = sql.split('`').skip(1).step_by(2).collect();
        assert_eq!(views, ["p.sales.INFORMATION_SCHEMA.COLUMNS"], "{sql}");
    }

    /// Rows as `jobs.query` returns them: every cell a string or null.
    fn columns_rows(rows: &[[Option<&str>; 5]]) -> Vec<serde_json::Map<String, serde_json::Value>> {
        rows.iter()
            .map(|cells| {
                let f: Vec<serde_json::Value> = cells
                    .iter()
                    .map(|v| serde_json::json!({ "v": v }))
                    .collect();
                serde_json::json!({ "f": f }).as_object().unwrap().clone()
            })
            .collect()
    }

    #[test]
    fn a_tables_fingerprint_is_its_columns_in_order_with_required_ones_marked() {
        let found = fingerprints(&columns_rows(&[
            [
                Some("t"),
                Some("2"),
                Some("tags"),
                Some("ARRAY<STRING>"),
                Some("NO"),
            ],
            [Some("u"), Some("1"), Some("id"), Some("INT64"), Some("YES")],
            [Some("t"), Some("1"), Some("id"), Some("INT64"), Some("NO")],
            // A pseudo-column has no position.
            [
                Some("t"),
                None,
                Some("_PARTITIONTIME"),
                Some("TIMESTAMP"),
                Some("YES"),
            ],
        ]));
        let expected =
            ChangeMarker::schema_of([("id", "INT64 NOT NULL"), ("tags", "ARRAY<STRING> NOT NULL")]);
        assert_eq!(found.get("t"), Some(&expected));
        assert_eq!(
            found.get("u"),
            Some(&ChangeMarker::schema_of([("id", "INT64")]))
        );
        assert_eq!(found.len(), 2);
    }

    fn request(key: &str, dataset: &str) -> ExportRequest {
        ExportRequest {
            job_key: key.to_string(),
            source: SourceTable {
                dataset_uri: format!("bigquery://p/{dataset}"),
                project: "p".into(),
                dataset: dataset.into(),
                table: "events".into(),
                partition: Some("20240101".into()),
                view: false,
            },
            destination_root: "gs://b/x".into(),
            folder: "events/partition=20240101/run=run:1/".into(),
            options: Default::default(),
            snapshot_at: None,
        }
    }

    #[test]
    fn a_view_is_written_by_export_data_with_the_extract_jobs_options() {
        let mut view = request("r1/v", "d");
        view.source.partition = None;
        view.source.view = true;
        view.options.field_delimiter = "\t".into();
        assert_eq!(
            export_data_sql(&view, "gs://b/x/v_*.csv"),
            "EXPORT DATA OPTIONS (uri = 'gs://b/x/v_*.csv', format = 'CSV', overwrite = true, \
             header = true, field_delimiter = '\\t') AS SELECT * FROM `p.d.events`"
        );
        view.options.format = Format::Json;
        view.options.compression = Compression::Gzip;
        view.source.table = "it's`odd".into();
        assert_eq!(
            export_data_sql(&view, "gs://b/x/it's_*.json.gz"),
            "EXPORT DATA OPTIONS (uri = 'gs://b/x/it\\'s_*.json.gz', format = 'JSON', \
             overwrite = true, compression = 'GZIP') AS SELECT * FROM `p.d.it's\\`odd`"
        );
    }

    #[test]
    fn job_ids_are_valid_stable_and_distinct() {
        let id = |key, dataset, successor| job_id(&request(key, dataset), None, successor);
        let a = id("bqdrain_run:1_events$20240101", "d", 0);
        assert!(a.starts_with("bqdrain_run_1_events_20240101_"), "{a}");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)));
        assert_eq!(a, id("bqdrain_run:1_events$20240101", "d", 0));
        assert_ne!(a, id("bqdrain_run_1_events_20240101", "d", 0));
        assert_ne!(a, id("bqdrain_run:1_events$20240101", "other", 0));
        assert_eq!(id("k", "d", 2), format!("{}_r2", id("k", "d", 0)));
        let snapshot = chrono::DateTime::from_timestamp(1_796_000_000, 0);
        assert_ne!(
            a,
            job_id(&request("bqdrain_run:1_events$20240101", "d"), snapshot, 0)
        );
    }

    #[test]
    fn timestamps_read_as_bigquery_and_the_emulator_write_them() {
        let at = chrono::DateTime::from_timestamp_micros(1_796_310_553_071_829).unwrap();
        assert_eq!(parse_timestamp("1796310553071829"), Some(at));
        assert_eq!(parse_timestamp("1.796310553071829E9"), Some(at));
        assert_eq!(
            parse_timestamp("1796310553"),
            chrono::DateTime::from_timestamp(1_796_310_553, 0)
        );
        assert_eq!(parse_timestamp("soon"), None);
    }

    #[test]
    fn failures_are_classified_by_reason_first_then_status() {
        let cases: &[(Option<&str>, Option<u16>, ErrorKind, &str)] = &[
            // BigQuery sends transient reasons with a 400 as well.
            (Some("backendError"), Some(400), Transient, "backendError"),
            (Some("internalError"), Some(400), Transient, "internalError"),
            (
                Some("jobBackendError"),
                Some(400),
                Transient,
                "jobBackendError",
            ),
            (
                Some("jobInternalError"),
                Some(400),
                Transient,
                "jobInternalError",
            ),
            (
                Some("rateLimitExceeded"),
                Some(403),
                Transient,
                "rateLimitExceeded",
            ),
            (
                Some("rateLimitExceeded"),
                Some(400),
                Transient,
                "rateLimitExceeded",
            ),
            (Some("quotaExceeded"), Some(403), Transient, "quotaExceeded"),
            (
                Some("tableUnavailable"),
                Some(400),
                Transient,
                "tableUnavailable",
            ),
            (Some("backendError"), Some(503), Transient, "backendError"),
            // Permanent reasons stay permanent whatever the status.
            (Some("notFound"), Some(404), Permanent, "notFound"),
            (Some("invalid"), Some(400), Permanent, "invalid"),
            (Some("accessDenied"), Some(403), Permanent, "accessDenied"),
            (Some("notFound"), Some(500), Permanent, "notFound"),
            // Without a known reason the status decides.
            (None, Some(404), Permanent, "notFound"),
            (None, Some(400), Permanent, "invalid"),
            (Some("somethingNew"), Some(400), Permanent, "somethingNew"),
            (None, Some(429), Transient, "rateLimitExceeded"),
            (None, Some(408), Transient, "backendError"),
            (None, Some(502), Transient, "backendError"),
            (Some("somethingNew"), Some(503), Transient, "somethingNew"),
            (None, None, Transient, "backendError"),
        ];
        for &(reason, status, kind, reported) in cases {
            assert_eq!(
                decide(reason, status),
                (kind, reported),
                "reason {reason:?}, HTTP {status:?}"
            );
        }
    }
}
