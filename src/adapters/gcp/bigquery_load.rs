//! Restoring one unit into BigQuery: the table made from its exported
//! definition (`tables.insert`), then one load job over the unit's files
//! into the table, or into the one partition `TABLE$ID`, replacing what it
//! held (`WRITE_TRUNCATE`). Jobs are started, re-attached to and followed
//! by successors exactly as exports' are ([`BigQueryWarehouse::run_job`]).

use google_cloud_bigquery_v2::model::{
    range_partitioning::Range, table_field_schema::PolicyTagList, Clustering, Job,
    JobConfiguration, JobConfigurationLoad, MaterializedViewDefinition, ParquetOptions,
    RangePartitioning, Table, TableFieldSchema, TableReference, TableSchema, TimePartitioning,
    ViewDefinition,
};

use super::{classify, metadata_retry, reason, unit_job_id, BigQueryWarehouse};
use crate::adapters::gcp::storage;
use crate::contract::options::Format;
use crate::error::UnitError;
use crate::ports::definition::{Column, TableDefinition};
use crate::ports::warehouse::{Cancel, LoadRequest, LoadResult, TableKind};

impl BigQueryWarehouse {
    /// [`Warehouse::load`](crate::ports::warehouse::Warehouse::load) on
    /// BigQuery: see the module's doc.
    pub(super) async fn restore_unit(
        &self,
        request: &LoadRequest,
        cancel: &Cancel,
    ) -> Result<LoadResult, UnitError> {
        let location = self.location().await?;
        let definition = &request.definition;
        // Dropped only before the unit's first load job: a redelivery after
        // it finds the table made again, and re-attaches to its job.
        if request.replace_table
            && definition.partition.is_none()
            && !self.job_exists(&load_job_id(request, 0), location).await?
        {
            self.drop_table(&request.table).await?;
        }
        self.create_table(request).await?;
        if definition.view_query.is_some() {
            return Ok(LoadResult { rows: None });
        }
        let job = self
            .run_job(
                |successor| load_job_id(request, successor),
                |id| self.load_job(id, location, request),
                location,
                "load",
                cancel,
            )
            .await?;
        let rows = job
            .statistics
            .and_then(|s| s.load)
            .and_then(|load| load.output_rows);
        Ok(LoadResult {
            rows: rows.map(|n| n.max(0) as u64),
        })
    }

    /// `tables.delete`; a table already gone is what was asked for.
    async fn drop_table(&self, table: &str) -> Result<(), UnitError> {
        let what = format!("dropping table {table} to replace it");
        metadata_retry()
            .run(&what, || async {
                let deleted = self
                    .tables
                    .delete_table()
                    .set_project_id(&self.project)
                    .set_dataset_id(&self.dataset)
                    .set_table_id(table)
                    .send()
                    .await;
                already(deleted, 404, "notFound", &what)
            })
            .await
    }

    /// Makes the table from the definition (`tables.insert`) unless it
    /// exists, which a `tables.get` tells first: the partition units of one
    /// table all ask, and only the first need write. A table that exists
    /// is left as it is (a partition restored into it, a redelivery), and
    /// so is one another unit made in between (`409 duplicate`).
    async fn create_table(&self, request: &LoadRequest) -> Result<(), UnitError> {
        let what = format!("creating table {} from its definition", request.table);
        metadata_retry()
            .run(&what, || async {
                let found = self.own_table(&request.table).await;
                match found.map_err(|e| classify(&what, &e)) {
                    Err(e) if e.reason == "notFound" => {}
                    other => return other.map(|_| ()),
                }
                let table = table_of(
                    &request.definition,
                    &self.project,
                    &self.dataset,
                    &request.table,
                );
                let inserted = self
                    .tables
                    .insert_table()
                    .set_project_id(&self.project)
                    .set_dataset_id(&self.dataset)
                    .set_table(table)
                    .send()
                    .await;
                already(inserted, 409, "duplicate", &what)
            })
            .await
    }

    /// The load job of the unit: its files into the table, or into the
    /// unit's partition, replacing what that held; the table must exist.
    fn load_job(
        &self,
        job_id: &str,
        location: &str,
        request: &LoadRequest,
    ) -> Result<Job, UnitError> {
        // The restore's planning checked it, but a message may come from elsewhere.
        let (bucket, prefix) = storage::parse(&request.source_root, "--from")
            .map_err(|e| UnitError::permanent("invalid", e.to_string()))?;
        let table_id = match &request.definition.partition {
            Some(partition) => format!("{}${partition}", request.table),
            None => request.table.clone(),
        };
        let load = JobConfigurationLoad::new()
            .set_source_uris(
                request
                    .files
                    .iter()
                    .map(|key| format!("gs://{bucket}/{prefix}{key}")),
            )
            .set_destination_table(
                TableReference::new()
                    .set_project_id(&self.project)
                    .set_dataset_id(&self.dataset)
                    .set_table_id(table_id),
            )
            .set_write_disposition("WRITE_TRUNCATE")
            .set_create_disposition("CREATE_NEVER");
        let configuration = JobConfiguration::new().set_load(format_options(load, request));
        Ok(self.job_of(job_id, location, configuration))
    }
}

/// A call that made what was asked for, or failed only because it was
/// there already (HTTP `status`, BigQuery's `reason`); its error otherwise.
fn already<T>(
    outcome: Result<T, google_cloud_bigquery_v2::Error>,
    status: u16,
    reason_there: &str,
    what: &str,
) -> Result<(), UnitError> {
    match outcome {
        Err(e) if e.http_status_code() != Some(status) && reason(&e) != Some(reason_there) => {
            Err(classify(what, &e))
        }
        _ => Ok(()),
    }
}

/// The load options of the files' format. Compression is read from the
/// files themselves. Avro and Parquet carry their schema; CSV and JSON are
/// read with the definition's (a column's shape only: its policy tags and
/// default are the table's, set when it was made).
fn format_options(load: JobConfigurationLoad, request: &LoadRequest) -> JobConfigurationLoad {
    let options = &request.options;
    let shapes = || TableSchema::new().set_fields(request.definition.columns.iter().map(shape_of));
    match options.format {
        Format::Avro => load
            .set_source_format("AVRO")
            .set_use_avro_logical_types(true),
        Format::Parquet => load
            .set_source_format("PARQUET")
            .set_parquet_options(ParquetOptions::new().set_enable_list_inference(true)),
        Format::Json => load
            .set_source_format("NEWLINE_DELIMITED_JSON")
            .set_schema(shapes()),
        Format::Csv => load
            .set_source_format("CSV")
            .set_skip_leading_rows(i32::from(options.header))
            .set_field_delimiter(&options.field_delimiter)
            // BigQuery quotes a value holding a newline, and reads it back
            // only when told to.
            .set_allow_quoted_newlines(true)
            .set_schema(shapes()),
    }
}

/// The load job of a restore's unit: see [`unit_job_id`].
fn load_job_id(request: &LoadRequest, successor: u32) -> String {
    let identity = serde_json::to_vec(&(
        "load",
        &request.job_key,
        &request.table,
        &request.definition,
        &request.source_root,
        &request.files,
        &request.options,
    ))
    .expect("requests serialize");
    unit_job_id(&request.job_key, &identity, successor)
}

/// The table `tables.insert` makes from a definition: columns, partitioning,
/// clustering, labels, description; a view or a materialized view from its
/// query.
fn table_of(definition: &TableDefinition, project: &str, dataset: &str, table: &str) -> Table {
    let mut made = Table::new()
        .set_table_reference(
            TableReference::new()
                .set_project_id(project)
                .set_dataset_id(dataset)
                .set_table_id(table),
        )
        .set_labels(definition.labels.clone())
        .set_or_clear_description(definition.description.clone());
    match (&definition.view_query, definition.table_type) {
        (Some(query), TableKind::MaterializedView) => {
            return made.set_materialized_view(MaterializedViewDefinition::new().set_query(query));
        }
        (Some(query), _) => {
            return made.set_view(
                ViewDefinition::new()
                    .set_query(query)
                    .set_use_legacy_sql(false),
            );
        }
        (None, _) => {}
    }
    made = made.set_schema(TableSchema::new().set_fields(definition.columns.iter().map(field_of)));
    if let Some(time) = &definition.time_partitioning {
        made = made.set_time_partitioning(
            TimePartitioning::new()
                .set_type(&time.unit)
                .set_or_clear_field(time.field.clone())
                .set_or_clear_expiration_ms(time.expiration_ms),
        );
    }
    if let Some(range) = &definition.range_partitioning {
        made = made.set_range_partitioning(
            RangePartitioning::new().set_field(&range.field).set_range(
                Range::new()
                    .set_start(range.start.to_string())
                    .set_end(range.end.to_string())
                    .set_interval(range.interval.to_string()),
            ),
        );
    }
    if definition.require_partition_filter {
        made = made.set_require_partition_filter(true);
    }
    if !definition.clustering.is_empty() {
        made = made.set_clustering(Clustering::new().set_fields(definition.clustering.clone()));
    }
    made
}

/// A column as the table is made with it: its shape, description,
/// default value and policy tags.
fn field_of(column: &Column) -> TableFieldSchema {
    let mut field = shape_of(column)
        .set_fields(column.fields.iter().map(field_of))
        .set_or_clear_description(column.description.clone())
        .set_or_clear_default_value_expression(column.default_value.clone());
    if !column.policy_tags.is_empty() {
        field = field.set_policy_tags(PolicyTagList::new().set_names(column.policy_tags.clone()));
    }
    field
}

/// A column's name, type, mode and nested fields' shapes.
fn shape_of(column: &Column) -> TableFieldSchema {
    TableFieldSchema::new()
        .set_name(&column.name)
        .set_type(&column.data_type)
        .set_mode(&column.mode)
        .set_fields(column.fields.iter().map(shape_of))
}

#[cfg(test)]
mod tests {
    use super::{load_job_id, table_of};
    use crate::ports::definition::{Column, RangePartitioning, TableDefinition};
    use crate::ports::warehouse::{LoadRequest, TableKind};

    fn column(name: &str, data_type: &str) -> Column {
        Column {
            name: name.into(),
            data_type: data_type.into(),
            mode: "NULLABLE".into(),
            fields: Vec::new(),
            description: None,
            default_value: None,
            policy_tags: Vec::new(),
        }
    }

    fn definition() -> TableDefinition {
        let mut id = column("id", "INTEGER");
        id.mode = "REQUIRED".into();
        id.description = Some("row id".into());
        id.default_value = Some("0".into());
        id.policy_tags = vec!["projects/p/locations/eu/taxonomies/1/policyTags/2".into()];
        let mut record = column("rec", "RECORD");
        record.mode = "REPEATED".into();
        record.fields = vec![column("a", "STRING")];
        TableDefinition {
            v: 1,
            table: "t".into(),
            partition: Some("0".into()),
            table_type: TableKind::Table,
            columns: vec![id, record],
            time_partitioning: None,
            range_partitioning: Some(RangePartitioning {
                field: "id".into(),
                start: 0,
                end: 100,
                interval: 10,
            }),
            require_partition_filter: true,
            clustering: vec!["id".into()],
            labels: [("team".to_string(), "data".to_string())].into(),
            description: Some("a table".into()),
            view_query: None,
        }
    }

    /// Everything the emulator does not keep (policy tags, default values,
    /// require-partition-filter, range bounds) is asked for all the same.
    #[test]
    fn a_table_is_made_with_all_of_its_definition() {
        let table = serde_json::to_value(table_of(&definition(), "p", "d", "t2")).unwrap();
        let id = &table["schema"]["fields"][0];
        assert_eq!(id["mode"], "REQUIRED", "{table:#}");
        assert_eq!(id["description"], "row id", "{table:#}");
        assert_eq!(id["defaultValueExpression"], "0", "{table:#}");
        assert_eq!(
            id["policyTags"]["names"][0],
            "projects/p/locations/eu/taxonomies/1/policyTags/2"
        );
        let record = &table["schema"]["fields"][1];
        assert_eq!(record["mode"], "REPEATED", "{table:#}");
        assert_eq!(record["fields"][0]["name"], "a", "{table:#}");
        assert_eq!(table["tableReference"]["tableId"], "t2", "{table:#}");
        assert_eq!(
            table["rangePartitioning"],
            serde_json::json!({"field": "id", "range": {"start": "0", "end": "100", "interval": "10"}})
        );
        assert_eq!(table["requirePartitionFilter"], true, "{table:#}");
        assert_eq!(table["clustering"]["fields"][0], "id", "{table:#}");
        assert_eq!(table["labels"]["team"], "data", "{table:#}");
        assert_eq!(table["description"], "a table", "{table:#}");
        assert!(table.get("view").is_none(), "{table:#}");
    }

    #[test]
    fn a_view_or_materialized_view_is_made_from_its_query_alone() {
        let mut view = definition();
        view.table_type = TableKind::View;
        view.view_query = Some("SELECT 1".into());
        let table = serde_json::to_value(table_of(&view, "p", "d", "v")).unwrap();
        assert_eq!(table["view"]["query"], "SELECT 1", "{table:#}");
        assert_eq!(table["view"]["useLegacySql"], false, "{table:#}");
        assert!(table.get("schema").is_none(), "{table:#}");
        assert!(table.get("rangePartitioning").is_none(), "{table:#}");

        view.table_type = TableKind::MaterializedView;
        let table = serde_json::to_value(table_of(&view, "p", "d", "v")).unwrap();
        assert_eq!(table["materializedView"]["query"], "SELECT 1", "{table:#}");
        assert!(table.get("view").is_none(), "{table:#}");
    }

    #[test]
    fn load_job_ids_are_stable_and_differ_from_unit_to_unit() {
        let request = |key: &str, files: &[&str]| LoadRequest {
            job_key: key.into(),
            table: "t".into(),
            definition: definition(),
            source_root: "gs://b/x".into(),
            files: files.iter().map(|f| f.to_string()).collect(),
            options: Default::default(),
            replace_table: false,
        };
        let a = load_job_id(&request("restore_r1_t$0", &["a.csv"]), 0);
        assert!(a.starts_with("restore_r1_t_0_"), "{a}");
        assert_eq!(a, load_job_id(&request("restore_r1_t$0", &["a.csv"]), 0));
        assert_ne!(a, load_job_id(&request("restore_r1_t$0", &["b.csv"]), 0));
        assert_ne!(a, load_job_id(&request("restore_r2_t$0", &["a.csv"]), 0));
        assert_eq!(
            load_job_id(&request("restore_r1_t$0", &["a.csv"]), 3),
            format!("{a}_r3")
        );
    }
}
