//! `bqdrain status`: a run's units and totals, for people and machines.

use std::fmt::Write;

use serde::Serialize;

use crate::engine::layout;
use crate::engine::runs::{RunState, Totals, UnitState};
use crate::error::ConfigError;
use crate::ports::store::ObjectStore;

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub run_id: String,
    pub source: String,
    pub destination: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub totals: Totals,
    pub files: usize,
    pub bytes: u64,
    pub rows: u64,
    pub units: Vec<crate::engine::runs::UnitStatus>,
}

pub async fn run_status(store: &dyn ObjectStore, run_id: &str) -> anyhow::Result<StatusReport> {
    let Some(state) = RunState::load(store, run_id, true).await? else {
        return Err(ConfigError::new(
            "--run-id",
            format!(
                "no run manifest at {}/{}",
                store.uri(),
                layout::run_manifest(run_id)
            ),
            "check --destination and --run-id (the producer prints the run id)",
        )
        .into());
    };
    let (mut files, mut bytes, mut rows) = (0, 0, 0);
    for u in &state.units {
        if let UnitState::Exported { manifest: Some(m) } = &u.state {
            files += m.files.len();
            bytes += m.bytes;
            rows += m.rows.unwrap_or(0);
        }
    }
    Ok(StatusReport {
        run_id: run_id.to_string(),
        source: state.manifest.source.clone(),
        destination: state.manifest.destination.clone(),
        created_at: state.manifest.created_at,
        totals: state.totals(),
        files,
        bytes,
        rows,
        units: state.units,
    })
}

impl StatusReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "run {} ({} -> {}), started {}",
            self.run_id, self.source, self.destination, self.created_at
        );
        let width = self
            .units
            .iter()
            .map(|u| u.unit.len())
            .max()
            .unwrap_or(4)
            .max(4);
        for u in &self.units {
            let detail = match &u.state {
                UnitState::Pending => "pending".to_string(),
                UnitState::Exported { manifest: Some(m) } => format!(
                    "exported       {} file(s), {} bytes, {} rows",
                    m.files.len(),
                    m.bytes,
                    m.rows.map_or("?".to_string(), |r| r.to_string())
                ),
                UnitState::Exported { manifest: None } => "exported".to_string(),
                UnitState::DeadLettered { record: Some(r) } => {
                    format!("dead-lettered  {}: {}", r.reason, r.message)
                }
                UnitState::DeadLettered { record: None } => "dead-lettered".to_string(),
                UnitState::Superseded { record: Some(r) } => format!(
                    "superseded     run {} exported it later; its export stands",
                    r.by_run
                ),
                UnitState::Superseded { record: None } => "superseded".to_string(),
            };
            let _ = writeln!(out, "  {:width$}  {detail}", u.unit);
        }
        let t = &self.totals;
        let _ = writeln!(
            out,
            "{} units: {} exported, {} dead-lettered, {} superseded, {} pending; {} files, {} bytes, {} rows",
            t.expected,
            t.exported,
            t.dead_lettered,
            t.superseded,
            t.pending,
            self.files,
            self.bytes,
            self.rows
        );
        out
    }
}
