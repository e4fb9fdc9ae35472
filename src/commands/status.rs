//! `bqdrain status`: a run's units and totals, for people and machines.

use std::collections::HashMap;
use std::fmt::Write;

use serde::Serialize;

use crate::engine::layout::{self, RetiredExport};
use crate::engine::runs::{RunState, Totals, UnitState, UnitStatus};
use crate::engine::selection::CurrentExport;
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
    /// Exported units whose row count is unknown, left out of `rows`.
    pub rows_unknown: usize,
    pub units: Vec<UnitStatus>,
    /// Units the run left out because their current export holds their data.
    pub unchanged: Vec<CurrentExport>,
    /// Units whose source was gone when the run was planned; their last
    /// export stays.
    pub gone: Vec<CurrentExport>,
    /// Exports the producer retired while planning: partitions gone from
    /// live tables, and with `--prune-gone` tables gone from the source.
    pub retired: Vec<RetiredExport>,
    /// Whether every message of the run was confirmed published (taken as
    /// so when no unit is pending); a run whose producer stopped before is
    /// finished by `--resume`.
    pub published: bool,
    /// The partition of each partition unit, from the run manifest: a
    /// table's name may hold a `$` too.
    #[serde(skip)]
    pub partitions: HashMap<String, String>,
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
    // Read only while units are pending, when it decides the hint: a
    // complete run's status reads its manifest alone.
    let published =
        state.totals().pending == 0 || store.read(&layout::run_published(run_id)).await?.is_some();
    let partitions = state
        .manifest
        .units
        .iter()
        .filter_map(|u| Some((u.unit.clone(), u.source.partition.clone()?)))
        .collect();
    let (mut files, mut bytes, mut rows, mut rows_unknown) = (0, 0, 0, 0);
    for u in &state.units {
        if let UnitState::Exported { manifest: Some(m) } = &u.state {
            files += m.files.len();
            bytes += m.bytes;
            match m.rows {
                Some(r) => rows += r,
                None => rows_unknown += 1,
            }
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
        rows_unknown,
        unchanged: state.manifest.unchanged.clone(),
        gone: state.manifest.gone.clone(),
        retired: state.manifest.retired.clone(),
        units: state.units,
        published,
        partitions,
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
        // Longer names do not widen the column: one long name would pad
        // every line.
        let width = self
            .units
            .iter()
            .map(|u| u.unit.chars().count())
            .filter(|&n| n <= MAX_NAME_COLUMN)
            .max()
            .unwrap_or(4)
            .max(4);
        for group in group_by_table(&self.units, &self.partitions) {
            match group {
                Group::Table(u) => {
                    let _ = writeln!(
                        out,
                        "  {:width$}  {}",
                        printable(&u.unit),
                        describe(&u.state)
                    );
                }
                Group::Partitions(table, parts) => {
                    let _ = writeln!(out, "  {} ({} partition(s))", printable(table), parts.len());
                    for (id, u) in parts {
                        let _ = writeln!(
                            out,
                            "    ${:w$}  {}",
                            printable(id),
                            describe(&u.state),
                            w = width.saturating_sub(3)
                        );
                    }
                }
            }
        }
        for g in &self.gone {
            let _ = writeln!(
                out,
                "  {:width$}  source gone  its table or partition no longer exists; run {}'s export stays",
                printable(&g.unit), g.exported_by
            );
        }
        for r in &self.retired {
            let _ = writeln!(
                out,
                "  {:width$}  retired      {}: run {}'s export was deleted",
                printable(&r.unit),
                r.why,
                r.exported_by
            );
        }
        if !self.unchanged.is_empty() {
            let _ = writeln!(
                out,
                "{} unit(s) left out: unchanged since their current export (--only-changed)",
                self.unchanged.len()
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            out,
            "{} units: {} exported, {} dead-lettered, {} superseded, {} pending; {} files, {} bytes, {} rows{}",
            t.expected,
            t.exported,
            t.dead_lettered,
            t.superseded,
            t.pending,
            self.files,
            self.bytes,
            self.rows,
            if self.rows_unknown > 0 {
                format!(" (and {} unit(s) of unknown row count)", self.rows_unknown)
            } else {
                String::new()
            }
        );
        if !self.published && t.pending > 0 {
            let _ = writeln!(
                out,
                "the run was never fully published: its producer stopped before every message \
                 was confirmed. Publish what is missing by running the producer again with the \
                 same flags and --run-id {} --resume",
                self.run_id
            );
        }
        out
    }
}

/// Names wider than this do not widen the name column.
const MAX_NAME_COLUMN: usize = 40;

/// A name with its control characters escaped (`\u{7}`, `\n`), so that a
/// table's name cannot ring the terminal or forge lines.
fn printable(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn describe(state: &UnitState) -> String {
    match state {
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
    }
}

/// A whole table's unit, or the partitions of one table.
enum Group<'a> {
    Table(&'a UnitStatus),
    Partitions(&'a str, Vec<(&'a str, &'a UnitStatus)>),
}

/// The units in their order, with each table's partitions gathered where
/// its first partition stands; `partitions` names each partition unit's id.
fn group_by_table<'a>(
    units: &'a [UnitStatus],
    partitions: &'a HashMap<String, String>,
) -> Vec<Group<'a>> {
    let mut groups: Vec<Group> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for u in units {
        let split = partitions.get(&u.unit).and_then(|id| {
            let table = u.unit.strip_suffix(id.as_str())?.strip_suffix('$')?;
            Some((table, id.as_str()))
        });
        let Some((table, id)) = split else {
            groups.push(Group::Table(u));
            continue;
        };
        match at.get(table) {
            Some(&i) => {
                if let Group::Partitions(_, parts) = &mut groups[i] {
                    parts.push((id, u));
                }
            }
            None => {
                at.insert(table, groups.len());
                groups.push(Group::Partitions(table, vec![(id, u)]));
            }
        }
    }
    for group in &mut groups {
        if let Group::Partitions(_, parts) = group {
            parts.sort_by_key(|(id, _)| *id);
        }
    }
    groups
}
