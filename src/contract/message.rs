//! The work message contract: one message per unit of work (a table, or one
//! partition of it). Producers and workers of different versions meet here,
//! so the body carries a schema version and decoding is strict about it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::contract::change::ChangeMarker;
use crate::contract::options::ExportOptions;
use crate::error::UnitError;

/// The body schema version of an export's messages, which this build
/// writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The body schema version of a restore's messages (those with `restore`):
/// a worker that knows only exports refuses them as an unsupported version,
/// and dead-letters them, instead of exporting their source.
pub const RESTORE_SCHEMA_VERSION: u32 = 2;

/// Attribute names. `run_id` and `table` let replay and subscription filters
/// select messages without parsing bodies.
pub const ATTR_RUN_ID: &str = "run_id";
pub const ATTR_TABLE: &str = "table";
pub const ATTR_PARTITION: &str = "partition";

/// The JSON body of a work message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkMessage {
    /// Schema version; a worker rejects versions it does not know.
    pub v: u32,
    pub run_id: String,
    pub source: SourceTable,
    /// URI of the export root (`file:///...`, `gs://BUCKET/PREFIX`).
    pub destination: String,
    pub options: ExportOptions,
    /// When the producer started the run; orders runs of the same table.
    pub enqueued_at: DateTime<Utc>,
    /// The source's change marker when the run was planned, which the
    /// completion record keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeMarker>,
    /// The unit's name in its run where it is not `source.unit()`: a run of
    /// several datasets names its units `DATASET.TABLE`, so that two
    /// datasets' tables of one name keep apart records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Present in a restore run's messages: load the unit's export, found in
    /// `destination` under `source`'s folder, into this table instead of
    /// exporting `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreTarget>,
}

/// Where a restore unit's export is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreTarget {
    /// URI of the dataset to restore into (`bigquery://P/D`, `sqlite://PATH`).
    pub dataset_uri: String,
    /// The table to write there.
    pub table: String,
    /// The run whose committed export of the unit is loaded.
    pub exported_by: String,
    /// Drop a whole table that exists and make it again from its definition
    /// (`--if-exists replace`).
    #[serde(default)]
    pub replace_table: bool,
}

/// The table (or partition) to export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceTable {
    /// URI of the dataset, so a worker needs no flag naming the warehouse.
    pub dataset_uri: String,
    pub project: String,
    pub dataset: String,
    pub table: String,
    /// A partition decorator such as `20240101`, exported as `table$20240101`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// A view or materialized view: it holds no data an extract job can
    /// read, so it is exported through a query (billed; `--views`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub view: bool,
}

impl SourceTable {
    /// The unit's name: `table` or `table$partition`.
    pub fn unit(&self) -> String {
        match &self.partition {
            Some(p) => format!("{}${}", self.table, p),
            None => self.table.clone(),
        }
    }
}

/// A message as it travels: body plus attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
}

impl WorkMessage {
    /// The unit's name in its run: what its records are named after.
    pub fn unit(&self) -> String {
        self.unit.clone().unwrap_or_else(|| self.source.unit())
    }

    /// The key of the unit's warehouse job (an export's or a load's), the
    /// same on every delivery, so a retry finds the job an earlier one
    /// started.
    pub fn job_key(&self) -> String {
        format!("bqdrain_{}_{}", self.run_id, self.unit())
    }

    pub fn to_envelope(&self) -> Envelope {
        let mut attributes = BTreeMap::new();
        attributes.insert(ATTR_RUN_ID.to_string(), self.run_id.clone());
        attributes.insert(ATTR_TABLE.to_string(), self.source.table.clone());
        if let Some(p) = &self.source.partition {
            attributes.insert(ATTR_PARTITION.to_string(), p.clone());
        }
        Envelope {
            data: serde_json::to_vec(self).expect("a work message always serializes"),
            attributes,
        }
    }

    /// Decodes and checks a body. Every failure is permanent: the same bytes
    /// will fail the same way on every delivery, so they go to the dead-letter
    /// queue at once with the reason.
    pub fn decode(data: &[u8]) -> Result<WorkMessage, UnitError> {
        let value: serde_json::Value = serde_json::from_slice(data)
            .map_err(|e| UnitError::permanent("malformed", format!("body is not JSON: {e}")))?;
        let version = value.get("v").and_then(|v| v.as_u64());
        match version {
            Some(v) if v == u64::from(SCHEMA_VERSION) || v == u64::from(RESTORE_SCHEMA_VERSION) => {
            }
            Some(v) => {
                return Err(UnitError::permanent(
                    "unsupportedVersion",
                    format!(
                        "schema version {v} is not supported by this worker (it reads \
                         v{SCHEMA_VERSION} and v{RESTORE_SCHEMA_VERSION}); upgrade the worker or \
                         replay with a matching one"
                    ),
                ))
            }
            None => {
                return Err(UnitError::permanent(
                    "malformed",
                    "body has no numeric \"v\" (schema version) field",
                ))
            }
        }
        let msg: WorkMessage = serde_json::from_value(value).map_err(|e| {
            UnitError::permanent("malformed", format!("body does not match schema v1: {e}"))
        })?;
        let restore_version = version == Some(u64::from(RESTORE_SCHEMA_VERSION));
        if restore_version != msg.restore.is_some() {
            return Err(UnitError::permanent(
                "malformed",
                format!(
                    "a v{SCHEMA_VERSION} body is an export and has no \"restore\"; a \
                     v{RESTORE_SCHEMA_VERSION} body is a restore and has one"
                ),
            ));
        }
        msg.check_names()?;
        Ok(msg)
    }

    /// The body schema version for this message: restores have their own.
    pub fn version_for(restore: &Option<RestoreTarget>) -> u32 {
        if restore.is_some() {
            RESTORE_SCHEMA_VERSION
        } else {
            SCHEMA_VERSION
        }
    }

    /// A body that [`WorkMessage::decode`] refuses for its names only (a
    /// table named `..`, or with a slash), read for its dead-letter record:
    /// the run and destination it names are still good, and the unit must
    /// count as dead-lettered there, not stay pending for ever. Such a
    /// message is never exported: its names would make paths outside its
    /// folder.
    pub fn decode_for_record(data: &[u8]) -> Option<WorkMessage> {
        let msg: WorkMessage = serde_json::from_slice(data).ok()?;
        (msg.v == WorkMessage::version_for(&msg.restore) && check_path_segment(&msg.run_id).is_ok())
            .then_some(msg)
    }

    /// Names become object keys: refuse anything that could escape a folder.
    pub fn check_names(&self) -> Result<(), UnitError> {
        let fields = [
            ("run_id", Some(&self.run_id)),
            ("source.dataset", Some(&self.source.dataset)),
            ("source.table", Some(&self.source.table)),
            ("source.partition", self.source.partition.as_ref()),
            ("unit", self.unit.as_ref()),
            ("restore.table", self.restore.as_ref().map(|r| &r.table)),
            (
                "restore.exported_by",
                self.restore.as_ref().map(|r| &r.exported_by),
            ),
        ];
        for (field, value) in fields {
            if let Some(value) = value {
                if let Err(problem) = check_path_segment(value) {
                    return Err(UnitError::permanent(
                        "malformed",
                        format!("{field} {value:?} {problem}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A name used as one path segment: non-empty, no separators, not `.`/`..`.
pub fn check_path_segment(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        Err("is empty")
    } else if value == "." || value == ".." {
        Err("is a relative path")
    } else if value.contains(['/', '\\', '\n', '\r', '\0']) {
        Err("contains a path separator or control character")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WorkMessage {
        WorkMessage {
            v: 1,
            run_id: "r1".into(),
            source: SourceTable {
                dataset_uri: "sqlite:///tmp/d.db".into(),
                project: "local".into(),
                dataset: "d".into(),
                table: "t".into(),
                partition: None,
                view: false,
            },
            destination: "file:///tmp/out".into(),
            options: ExportOptions::default(),
            enqueued_at: Utc::now(),
            change: None,
            unit: None,
            restore: None,
        }
    }

    #[test]
    fn round_trips_with_attributes() {
        let m = sample();
        let env = m.to_envelope();
        assert_eq!(env.attributes["run_id"], "r1");
        assert_eq!(env.attributes["table"], "t");
        assert_eq!(WorkMessage::decode(&env.data).unwrap(), m);
    }

    #[test]
    fn rejects_unknown_version_and_garbage() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["v"] = 3.into();
        let err = WorkMessage::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(err.reason, "unsupportedVersion");
        assert!(!err.is_transient());
        assert_eq!(
            WorkMessage::decode(b"{nope").unwrap_err().reason,
            "malformed"
        );
        assert_eq!(
            WorkMessage::decode(b"{\"v\":1}").unwrap_err().reason,
            "malformed"
        );
    }

    #[test]
    fn restores_carry_their_own_version() {
        let mut m = sample();
        m.restore = Some(RestoreTarget {
            dataset_uri: "sqlite:///tmp/back.db".into(),
            table: "t".into(),
            exported_by: "r0".into(),
            replace_table: false,
        });
        let as_export = WorkMessage::decode(&serde_json::to_vec(&m).unwrap()).unwrap_err();
        assert_eq!(as_export.reason, "malformed", "{}", as_export.message);
        m.v = RESTORE_SCHEMA_VERSION;
        assert_eq!(WorkMessage::decode(&m.to_envelope().data).unwrap(), m);
        m.restore = None;
        let bare = WorkMessage::decode(&serde_json::to_vec(&m).unwrap()).unwrap_err();
        assert_eq!(bare.reason, "malformed", "{}", bare.message);
    }

    #[test]
    fn rejects_names_that_escape_folders() {
        let mut m = sample();
        m.source.table = "../etc".into();
        let err = WorkMessage::decode(&serde_json::to_vec(&m).unwrap()).unwrap_err();
        assert!(err.message.contains("source.table"), "{}", err.message);
    }
}
