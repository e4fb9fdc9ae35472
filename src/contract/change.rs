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
}
