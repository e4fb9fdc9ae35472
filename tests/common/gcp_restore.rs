//! Restores on the emulators at the adapter level: a unit's committed
//! export (its completion record and `_TABLE.json`) loaded into a dataset
//! with `Warehouse::load`, and what tables hold read back to compare. The
//! `bqdrain restore` command drives the same loads through the queue.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Once};

use serde_json::{json, Value};

use bqdrain::adapters::backends::open_warehouse;
use bqdrain::error::UnitError;
use bqdrain::ports::definition::TableDefinition;
use bqdrain::ports::warehouse::{LoadRequest, LoadResult};

use super::gcp::{GcpSandbox, PROJECT};

/// What a table is made with, as `tables.get` answers: the parts of a
/// definition a restore must bring back.
pub const DEFINITION_FIELDS: [&str; 7] = [
    "schema",
    "timePartitioning",
    "rangePartitioning",
    "requirePartitionFilter",
    "clustering",
    "labels",
    "description",
];

/// The adapters in this process reach the emulators (through the
/// validating proxies) as the commands do.
fn use_emulators(sb: &GcpSandbox) {
    static SET: Once = Once::new();
    SET.call_once(|| {
        for (variable, value) in sb.env(None) {
            std::env::set_var(variable, value);
        }
    });
}

impl GcpSandbox {
    /// The definition `_TABLE.json` beside the export of `table` (or of
    /// its `partition`) in run `run_id` under `folder`.
    pub async fn exported_definition(
        &self,
        folder: &str,
        run_id: &str,
        table: &str,
        partition: Option<&str>,
    ) -> TableDefinition {
        let unit = partition.map_or(String::new(), |p| format!("partition={p}/"));
        let key = format!(
            "{folder}/{}/{table}/{unit}run={run_id}/_TABLE.json",
            self.dataset
        );
        let bytes = self
            .download(&key)
            .await
            .unwrap_or_else(|| panic!("{key} is missing\n{}", self.logs()));
        serde_json::from_slice(&bytes).unwrap()
    }

    /// The load request restoring the unit `table` (or its `partition`)
    /// of run `run_id` under `folder`, from its completion record.
    pub async fn load_request(
        &self,
        folder: &str,
        run_id: &str,
        table: &str,
        partition: Option<&str>,
    ) -> LoadRequest {
        let unit = partition.map_or(table.to_string(), |p| format!("{table}${p}"));
        let record = self
            .done_record(folder, run_id, &unit)
            .await
            .unwrap_or_else(|| panic!("{unit} has no completion record\n{}", self.logs()));
        LoadRequest {
            job_key: format!("bqdrain_restore_{run_id}_{unit}"),
            table: table.to_string(),
            definition: self
                .exported_definition(folder, run_id, table, partition)
                .await,
            source_root: self.destination(folder),
            files: record.files.iter().map(|f| f.key.clone()).collect(),
            options: record
                .options
                .expect("the record says how its files were written"),
            replace_table: false,
        }
    }

    /// `Warehouse::load` of `request` into `dataset` of the emulator.
    pub async fn load_into(
        &self,
        dataset: &str,
        request: &LoadRequest,
    ) -> Result<LoadResult, UnitError> {
        use_emulators(self);
        let warehouse = open_warehouse(&format!("bigquery://{PROJECT}/{dataset}"), "--to")
            .await
            .unwrap();
        warehouse
            .load(request, Arc::new(AtomicBool::new(false)))
            .await
    }

    /// `tables.get` of `dataset.table`, only what [`DEFINITION_FIELDS`] names.
    pub async fn table_definition(&self, dataset: &str, table: &str) -> Value {
        let found = self
            .bq_call(
                "GET",
                &format!("projects/{PROJECT}/datasets/{dataset}/tables/{table}"),
                None,
            )
            .await;
        let kept = DEFINITION_FIELDS
            .iter()
            .filter_map(|&field| Some((field.to_string(), found.get(field)?.clone())))
            .collect();
        Value::Object(kept)
    }

    /// Every row of `dataset.table` ordered by `id`, as `jobs.query`
    /// answers them (`{"f": [{"v": …}, …]}`, every value a string).
    pub async fn table_rows(&self, dataset: &str, table: &str) -> Vec<Value> {
        let sql = format!("SELECT * FROM `{PROJECT}.{dataset}.{table}` ORDER BY id");
        let answer = self
            .bq_call(
                "POST",
                &format!("projects/{PROJECT}/queries"),
                Some(json!({"query": sql, "useLegacySql": false, "maxResults": 100000})),
            )
            .await;
        assert!(answer.get("errors").is_none(), "{sql}: {answer}");
        answer["rows"].as_array().cloned().unwrap_or_default()
    }
}
