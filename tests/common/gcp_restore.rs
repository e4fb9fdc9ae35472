//! Restores on the emulators at the adapter level: a unit's committed
//! export (its completion record and `_TABLE.json`) loaded into a dataset
//! with `Warehouse::load`, and what tables hold read back to compare. The
//! `bqdrain restore` command drives the same loads through the queue. And
//! the "type zoo" the round trips export and restore (docs/formats.md).

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
pub const DEFINITION_FIELDS: [&str; 9] = [
    "type",
    "view",
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

/// A policy tag on one of the zoo's columns (the emulator keeps it, and
/// checks no taxonomy).
pub const POLICY_TAG: &str = "projects/test-project/locations/us/taxonomies/1/policyTags/2";

/// The zoo's scalar columns, as `tables.insert` takes them: one
/// `REQUIRED` and described, one with a default value, one with a policy
/// tag.
pub fn scalar_columns() -> Vec<Value> {
    let column = |name: &str, kind: &str| json!({"name": name, "type": kind});
    vec![
        json!({"name": "id", "type": "INTEGER", "mode": "REQUIRED", "description": "row id"}),
        column("day", "DATE"),
        json!({"name": "s", "type": "STRING", "defaultValueExpression": "'none'"}),
        column("b", "BYTES"),
        json!({"name": "i", "type": "INTEGER", "policyTags": {"names": [POLICY_TAG]}}),
        column("f", "FLOAT"),
        column("n", "NUMERIC"),
        column("ok", "BOOLEAN"),
        column("d", "DATE"),
        column("dt", "DATETIME"),
        column("tm", "TIME"),
        column("ts", "TIMESTAMP"),
        column("g", "GEOGRAPHY"),
        column("j", "JSON"),
        column("iv", "INTERVAL"),
    ]
}

/// The zoo's nested and repeated columns.
pub fn nested_columns() -> Vec<Value> {
    vec![
        json!({"name": "rec", "type": "RECORD", "fields": [
            {"name": "a", "type": "STRING"}, {"name": "b", "type": "INTEGER"}]}),
        json!({"name": "tags", "type": "STRING", "mode": "REPEATED"}),
        json!({"name": "items", "type": "RECORD", "mode": "REPEATED", "fields": [
            {"name": "k", "type": "STRING"}, {"name": "v", "type": "FLOAT"}]}),
    ]
}

/// Rows holding every edge the zoo is for, on two days.
pub fn zoo_rows(nested: bool) -> Vec<Value> {
    let text = "héllo 世界 🎉 a,b;c|d\tq \"quoted\" 'single'\nline2\r\nline3";
    let mut rows = vec![
        json!({"id": 1, "day": "2026-12-01"}),
        json!({"id": 2, "day": "2026-12-01", "s": "", "b": "", "i": 0, "f": 0.0, "n": "0",
               "ok": false, "g": "POINT(0 0)", "j": "{}"}),
        json!({"id": 3, "day": "2026-12-02", "s": text, "b": "AAEC/w==",
               "i": i64::MAX, "f": f64::MAX, "n": "99999999999999999999999999999.999999999",
               "ok": true, "d": "9999-12-31", "dt": "9999-12-31T23:59:59.999999",
               "tm": "23:59:59.999999", "ts": "9999-12-31T23:59:59.999999Z",
               "g": "POINT(-122.35 47.62)", "j": "{\"a\":[1,2,{\"b\":null}],\"u\":\"é\"}",
               "iv": "1-2 3 4:5:6.789"}),
        json!({"id": 4, "day": "2026-12-02", "s": "NULL", "i": i64::MIN, "f": 5e-324,
               "n": "-99999999999999999999999999999.999999999", "d": "0001-01-01",
               "dt": "0001-01-01T00:00:00", "tm": "00:00:00", "ts": "0001-01-01T00:00:00Z"}),
    ];
    if nested {
        rows[1]["rec"] = json!({"a": "", "b": 0});
        rows[1]["tags"] = json!([]);
        rows[2]["rec"] = json!({"a": "x,y", "b": -1});
        rows[2]["tags"] = json!(["a", "", "c,d"]);
        rows[2]["items"] = json!([{"k": "p", "v": 1.5}, {"k": null, "v": null}]);
    }
    rows
}

/// Creates the zoo `table` in the sandbox's dataset: partitioned by `day`
/// (with an expiration, queries required to filter on it), clustered,
/// labelled, described; with the nested
/// columns or without (CSV cannot hold them).
pub async fn create_zoo(sb: &GcpSandbox, table: &str, nested: bool) {
    let mut columns = scalar_columns();
    if nested {
        columns.extend(nested_columns());
    }
    let settings = json!({
        "timePartitioning": {"type": "DAY", "field": "day", "expirationMs": "864000000000"},
        "clustering": {"fields": ["s", "i"]},
        "requirePartitionFilter": true,
        "labels": {"zoo": "types"},
        "description": "every type",
    });
    sb.new_table(table, Value::Array(columns), settings, zoo_rows(nested))
        .await;
}

/// Each cell where `restored` differs from `source`, as
/// `(row id, column, source value, restored value)`.
pub fn differences(
    columns: &[Value],
    source: &[Value],
    restored: &[Value],
) -> Vec<(String, String, Value, Value)> {
    assert_eq!(source.len(), restored.len(), "rows restored");
    let mut found = Vec::new();
    for (a, b) in source.iter().zip(restored) {
        let id = a["f"][0]["v"].as_str().unwrap().to_string();
        for (i, column) in columns.iter().enumerate() {
            let (x, y) = (&a["f"][i]["v"], &b["f"][i]["v"]);
            if x != y {
                let name = column["name"].as_str().unwrap().to_string();
                found.push((id.clone(), name, x.clone(), y.clone()));
            }
        }
    }
    found
}
