//! A duplicate scheduler trigger. Cloud Scheduler delivers at least once,
//! even with retries off: a duplicate starts a second execution, and so a
//! second full run (the run id is the execution's name). With a window set
//! (`--duplicate-window`), a new run claims its sources and options for
//! that window; a second run of the same sources and options within it is
//! a duplicate trigger and publishes nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::layout::META;
use crate::ports::store::ObjectStore;

/// A run's claim on its schedule's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub run_id: String,
    pub at: DateTime<Utc>,
}

/// Claims `window` for `run_id` among runs whose sources and options are
/// `fingerprint`; returns the earlier run when one started less than
/// `window` ago (this run is then a duplicate). Claims are kept per window
/// slot, each written if absent, so of two triggers at once one wins.
pub async fn claim(
    store: &dyn ObjectStore,
    fingerprint: &str,
    run_id: &str,
    at: DateTime<Utc>,
    window: Duration,
) -> anyhow::Result<Option<Claim>> {
    let seconds = window.as_secs().max(1) as i64;
    let slot = at.timestamp().div_euclid(seconds);
    let key = |slot: i64| format!("{META}/triggers/{fingerprint}/{slot}.json");
    let recent =
        |claim: &Claim| claim.run_id != run_id && (at - claim.at).num_seconds().abs() < seconds;
    if let Some(bytes) = store.read(&key(slot - 1)).await? {
        let earlier: Claim = serde_json::from_slice(&bytes)?;
        if recent(&earlier) {
            return Ok(Some(earlier));
        }
    }
    let ours = Claim {
        run_id: run_id.to_string(),
        at,
    };
    if store
        .write_if_absent(&key(slot), &serde_json::to_vec(&ours)?, None)
        .await?
    {
        return Ok(None);
    }
    let bytes = store
        .read(&key(slot))
        .await?
        .ok_or_else(|| anyhow::anyhow!("{} vanished while it was read: try again", key(slot)))?;
    let earlier: Claim = serde_json::from_slice(&bytes)?;
    Ok((earlier.run_id != run_id).then_some(earlier))
}

/// FNV-1a of what makes two runs the same run: a short stable name.
pub fn fingerprint(parts: &[String]) -> String {
    let hash = parts
        .iter()
        .flat_map(|p| p.bytes().chain([0]))
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}
