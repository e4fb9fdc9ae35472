//! Change markers: what a table or partition looked like when a run planned
//! it, which `--only-changed` compares across runs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a table or partition looked like when it was planned. Two equal
/// markers mean the data did not change between them; the completion record
/// keeps the marker its export was planned with, read before the export
/// began, so a change made during an export counts as a change next time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeMarker {
    /// Last modification time (BigQuery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<DateTime<Utc>>,
    /// A counter every insert, update and delete raises (the embedded
    /// warehouse's triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Rows were waiting in BigQuery's streaming buffer, which an extract
    /// job does not read: the unit counts as changed next time too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub streaming: bool,
    /// A fingerprint of the table's columns ([`ChangeMarker::schema_of`]).
    /// Dropping or renaming a column (say one holding personal data,
    /// removed on purpose) changes no row, so neither the embedded
    /// warehouse's counters nor a modification time need see it; the
    /// export must still be made again, without the column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

impl ChangeMarker {
    /// The fingerprint of a table's columns, given as (name, declared type)
    /// in their order: 64-bit FNV-1a, in hex. Equal columns give equal
    /// fingerprints on every machine and version; it tells changes apart,
    /// and is no defence against anyone forging one.
    pub fn schema_of<'a>(columns: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (name, declared) in columns {
            // A 0 ends each part, so ("ab", "c") and ("a", "bc") differ.
            for byte in name.bytes().chain([0]).chain(declared.bytes()).chain([0]) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{hash:016x}")
    }

    /// A partition's marker with its table's columns fingerprint, where the
    /// table's marker has one: a partition has its table's columns, and
    /// BigQuery reads them once a dataset, for the tables' markers, not per
    /// partition listing.
    pub fn with_schema_of(self, table: Option<&ChangeMarker>) -> ChangeMarker {
        match table.and_then(|t| t.schema.clone()) {
            Some(schema) => ChangeMarker {
                schema: Some(schema),
                ..self
            },
            None => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_fingerprint_follows_names_types_and_order() {
        let of = |columns: &[(&str, &str)]| ChangeMarker::schema_of(columns.iter().copied());
        let base = of(&[("id", "INT64"), ("name", "STRING")]);
        assert_eq!(base, of(&[("id", "INT64"), ("name", "STRING")]));
        // Fixed for good: records written today are compared with it later.
        assert_eq!(of(&[]), "cbf29ce484222325");
        for other in [
            of(&[("id", "INT64")]),
            of(&[("id", "INT64"), ("full_name", "STRING")]),
            of(&[("id", "INT64"), ("name", "BYTES")]),
            of(&[("name", "STRING"), ("id", "INT64")]),
            of(&[("idn", "ame"), ("INT64", "STRING")]),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn a_partition_takes_its_tables_columns_fingerprint() {
        let marker = |schema: Option<&str>| ChangeMarker {
            modified: None,
            version: Some(3),
            rows: Some(10),
            bytes: None,
            streaming: false,
            schema: schema.map(str::to_string),
        };
        let table = marker(Some("table"));
        assert_eq!(marker(None).with_schema_of(Some(&table)), table);
        assert_eq!(marker(Some("own")).with_schema_of(Some(&table)), table);
        assert_eq!(
            marker(Some("own")).with_schema_of(Some(&marker(None))),
            marker(Some("own")),
            "a table marker without columns leaves the partition's"
        );
        assert_eq!(marker(None).with_schema_of(None), marker(None));
    }
}
