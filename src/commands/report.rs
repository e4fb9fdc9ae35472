//! The run report: one self-contained HTML page per run, for the operator's
//! questions after it: did everything land, what failed and why, which task
//! did what, where the time went, and whether more tasks would have helped.
//!
//! This module is the page model (which bar goes in which lane, the drain's
//! lower bound, each task's idle time); its `html` module draws it.

mod html;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::commands::status::StatusReport;
use crate::engine::runs::{UnitState, UnitStatus};

/// How many of the slowest units the page lists.
pub const SLOWEST: usize = 10;

/// Writes the page for `status` to `path`.
pub fn write(
    status: &StatusReport,
    replay: &ReplayTarget,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let page = html::render(&RunReport::new(status, replay));
    std::fs::write(path, page)
        .map_err(|e| {
            anyhow::anyhow!(
                "--html: cannot write the run report to {}: {e}; give a file in a folder that exists and is writable",
                path.display()
            )
        })
}

/// Where a dead-lettered unit's message is and where it goes back to: what
/// the page's `bqdrain replay` commands name.
#[derive(Debug, Clone)]
pub struct ReplayTarget {
    pub from: String,
    pub to: String,
}

impl ReplayTarget {
    /// For a run whose queues the caller does not know: the command names
    /// what to fill in.
    pub fn unknown() -> ReplayTarget {
        ReplayTarget {
            from: "DEAD_LETTER_SUBSCRIPTION".into(),
            to: "WORK_TOPIC".into(),
        }
    }

    /// The command that puts `unit` of `run_id` back on the work topic.
    pub fn command(&self, run_id: &str, unit: &str) -> String {
        // Dead letters are matched on their table, partitions included.
        let table = unit.split_once('$').map_or(unit, |(table, _)| table);
        format!(
            "bqdrain replay --from '{}' --to '{}' --run-id {run_id} --table {table}",
            self.from, self.to
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exported,
    DeadLettered,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Exported => "exported",
            Outcome::DeadLettered => "dead-lettered",
        }
    }
}

/// One unit's last try, from its start to its commit (or dead-lettering),
/// in seconds from the first start of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub unit: String,
    pub lane: usize,
    /// Row within the lane: a task exports several units at once, and bars
    /// that overlap in time go on different rows.
    pub row: usize,
    pub start: f64,
    pub end: f64,
    pub outcome: Outcome,
    /// The delivery attempt: above 1 the message was redelivered.
    pub attempt: u32,
    pub bytes: Option<u64>,
    pub rows: Option<u64>,
}

impl Bar {
    pub fn seconds(&self) -> f64 {
        self.end - self.start
    }
}

/// One task's lane.
#[derive(Debug, Clone, PartialEq)]
pub struct Lane {
    pub task: String,
    /// Rows the lane needs: the most units the task had in flight at once.
    pub rows: usize,
    /// From the task's last commit to the drain's end: how long it had
    /// nothing left to do while others still worked.
    pub idle_after: f64,
}

/// The drain on one time axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// The first unit's start: second 0 of the axis.
    pub origin: Option<DateTime<Utc>>,
    pub lanes: Vec<Lane>,
    pub bars: Vec<Bar>,
    /// From the first start to the last commit.
    pub makespan: f64,
    /// No drain of these units with these tasks could be shorter:
    /// max(longest unit, total unit time / parallel slots), where the slots
    /// are each task's most units in flight at once (the task count when
    /// each task exports one unit at a time).
    pub lower_bound: f64,
    /// Settled units whose records carry no start (written by an earlier
    /// version, or by `status --reconcile`, or superseded): not drawn.
    pub untimed: Vec<String>,
}

/// A timed try read from a record, before it has a place.
struct Span<'a> {
    unit: &'a str,
    task: (Option<u32>, &'a str),
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
    outcome: Outcome,
    attempt: u32,
    bytes: Option<u64>,
    rows: Option<u64>,
}

fn span(u: &UnitStatus) -> Option<Span<'_>> {
    match &u.state {
        UnitState::Exported { manifest: Some(m) } => Some(Span {
            unit: &u.unit,
            task: (m.task_index, &m.task),
            started_at: m.started_at?,
            ended_at: m.finished_at,
            outcome: Outcome::Exported,
            attempt: m.delivery_attempt,
            bytes: Some(m.bytes),
            rows: m.rows,
        }),
        UnitState::DeadLettered { record: Some(r) } => Some(Span {
            unit: &u.unit,
            task: (r.task_index, r.task.as_deref()?),
            started_at: r.started_at?,
            ended_at: r.at,
            outcome: Outcome::DeadLettered,
            attempt: r.delivery_attempt,
            bytes: None,
            rows: None,
        }),
        _ => None,
    }
}

impl Timeline {
    pub fn new(units: &[UnitStatus]) -> Timeline {
        let mut spans = Vec::new();
        let mut untimed = Vec::new();
        for u in units {
            match span(u) {
                Some(s) => spans.push(s),
                None if !matches!(u.state, UnitState::Pending) => untimed.push(u.unit.clone()),
                None => {}
            }
        }
        let origin = spans.iter().map(|s| s.started_at).min();
        let at = |t: DateTime<Utc>| {
            origin.map_or(0.0, |o| {
                (t - o).num_microseconds().unwrap_or(0) as f64 / 1e6
            })
        };
        // Lanes in task order: Cloud Run indexes numerically, then the rest.
        let mut by_task: BTreeMap<(Option<u32>, &str), Vec<&Span>> = BTreeMap::new();
        for s in &spans {
            let key = match s.task {
                (Some(i), _) => (Some(i), ""),
                (None, name) => (None, name),
            };
            by_task.entry(key).or_default().push(s);
        }
        let mut bars = Vec::with_capacity(spans.len());
        let mut lanes = Vec::with_capacity(by_task.len());
        let mut last_ends = Vec::with_capacity(by_task.len());
        for (lane, ((index, name), mut spans)) in by_task.into_iter().enumerate() {
            spans.sort_by_key(|s| (s.started_at, s.unit));
            let mut row_ends: Vec<f64> = Vec::new();
            for s in spans {
                let (start, end) = (at(s.started_at), at(s.ended_at).max(at(s.started_at)));
                let row = match row_ends.iter().position(|&e| e <= start) {
                    Some(r) => r,
                    None => {
                        row_ends.push(0.0);
                        row_ends.len() - 1
                    }
                };
                row_ends[row] = end;
                bars.push(Bar {
                    unit: s.unit.to_string(),
                    lane,
                    row,
                    start,
                    end,
                    outcome: s.outcome,
                    attempt: s.attempt,
                    bytes: s.bytes,
                    rows: s.rows,
                });
            }
            last_ends.push(row_ends.iter().copied().fold(0.0, f64::max));
            lanes.push(Lane {
                task: match index {
                    Some(i) => format!("task {i}"),
                    None => name.to_string(),
                },
                rows: row_ends.len(),
                idle_after: 0.0,
            });
        }
        let makespan = bars.iter().map(|b| b.end).fold(0.0, f64::max);
        for (lane, last_end) in lanes.iter_mut().zip(last_ends) {
            lane.idle_after = makespan - last_end;
        }
        let longest = bars.iter().map(Bar::seconds).fold(0.0, f64::max);
        let total: f64 = bars.iter().map(Bar::seconds).sum();
        let slots: usize = lanes.iter().map(|l| l.rows).sum();
        let lower_bound = if slots == 0 {
            0.0
        } else {
            longest.max(total / slots as f64)
        };
        Timeline {
            origin,
            lanes,
            bars,
            makespan,
            lower_bound,
            untimed,
        }
    }

    /// The slowest units, slowest first.
    pub fn slowest(&self, n: usize) -> Vec<&Bar> {
        let mut bars: Vec<&Bar> = self.bars.iter().collect();
        bars.sort_by(|a, b| {
            b.seconds()
                .total_cmp(&a.seconds())
                .then(a.unit.cmp(&b.unit))
        });
        bars.truncate(n);
        bars
    }
}

/// A dead-lettered unit and how to bring it back.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadUnit {
    pub unit: String,
    pub reason: String,
    pub error: String,
    pub attempt: Option<u32>,
    pub replay: String,
}

/// Everything on the page.
#[derive(Debug, Clone)]
pub struct RunReport<'a> {
    pub status: &'a StatusReport,
    /// The last record written: when the run's last unit settled.
    pub finished: Option<DateTime<Utc>>,
    pub timeline: Timeline,
    pub dead: Vec<DeadUnit>,
}

impl<'a> RunReport<'a> {
    pub fn new(status: &'a StatusReport, replay: &ReplayTarget) -> RunReport<'a> {
        let finished = status
            .units
            .iter()
            .filter_map(|u| match &u.state {
                UnitState::Exported { manifest: Some(m) } => Some(m.finished_at),
                UnitState::DeadLettered { record: Some(r) } => Some(r.at),
                UnitState::Superseded { record: Some(r) } => Some(r.at),
                _ => None,
            })
            .max();
        let dead = status
            .units
            .iter()
            .filter_map(|u| match &u.state {
                UnitState::DeadLettered { record } => Some(DeadUnit {
                    unit: u.unit.clone(),
                    reason: record.as_ref().map_or("?".into(), |r| r.reason.clone()),
                    error: record.as_ref().map_or(String::new(), |r| r.message.clone()),
                    attempt: record.as_ref().map(|r| r.delivery_attempt),
                    replay: replay.command(&status.run_id, &u.unit),
                }),
                _ => None,
            })
            .collect();
        RunReport {
            status,
            finished,
            timeline: Timeline::new(&status.units),
            dead,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::layout::{DeadRecord, TableManifest};

    fn t(seconds: f64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
            + chrono::Duration::microseconds((seconds * 1e6) as i64)
    }

    fn exported(unit: &str, task: Option<u32>, start: f64, end: f64) -> UnitStatus {
        UnitStatus {
            unit: unit.into(),
            state: UnitState::Exported {
                manifest: Some(TableManifest {
                    v: 1,
                    run_id: "r".into(),
                    unit: unit.into(),
                    files: vec![],
                    bytes: 100,
                    rows: Some(10),
                    finished_at: t(end),
                    delivery_attempt: 1,
                    task: format!("task {}", task.map_or(4242, |i| i)),
                    task_index: task,
                    started_at: Some(t(start)),
                    run_started_at: None,
                    change: None,
                    as_of: None,
                    options: None,
                }),
            },
        }
    }

    fn dead(unit: &str, task: u32, start: f64, end: f64) -> UnitStatus {
        UnitStatus {
            unit: unit.into(),
            state: UnitState::DeadLettered {
                record: Some(DeadRecord {
                    v: 1,
                    run_id: "r".into(),
                    unit: unit.into(),
                    reason: "invalid".into(),
                    message: "no such table".into(),
                    delivery_attempt: 3,
                    at: t(end),
                    task: Some(format!("task {task}")),
                    task_index: Some(task),
                    started_at: Some(t(start)),
                }),
            },
        }
    }

    #[test]
    fn one_lane_per_task_in_index_order_with_overlapping_units_on_rows() {
        let units = [
            exported("a", Some(10), 0.0, 4.0),
            exported("b", Some(2), 1.0, 3.0),
            exported("c", Some(2), 2.0, 5.0),
            exported("d", Some(2), 3.0, 6.0),
            exported("e", None, 0.5, 1.0),
        ];
        let tl = Timeline::new(&units);
        let tasks: Vec<&str> = tl.lanes.iter().map(|l| l.task.as_str()).collect();
        assert_eq!(tasks, ["task 4242", "task 2", "task 10"]);
        let place = |u: &str| {
            let b = tl.bars.iter().find(|b| b.unit == u).unwrap();
            (b.lane, b.row)
        };
        // b runs 1-3 and c 2-5 at once; d starts when b has ended.
        assert_eq!(
            [place("b"), place("c"), place("d")],
            [(1, 0), (1, 1), (1, 0)]
        );
        assert_eq!(tl.lanes[1].rows, 2);
        assert_eq!(place("a"), (2, 0));
        assert_eq!(tl.origin, Some(t(0.0)));
    }

    #[test]
    fn lower_bound_is_the_longest_unit_or_the_work_spread_over_the_slots() {
        // Two tasks, one unit at a time: 8 s of work spread over 2 slots is
        // 4 s, and no unit is longer; the drain took 6 s.
        let tl = Timeline::new(&[
            exported("a", Some(0), 0.0, 2.0),
            exported("b", Some(0), 2.0, 4.0),
            exported("c", Some(0), 4.0, 6.0),
            exported("d", Some(1), 0.0, 2.0),
        ]);
        assert_eq!((tl.makespan, tl.lower_bound), (6.0, 4.0));

        // One long unit bounds the drain however many tasks there are.
        let tl = Timeline::new(&[
            exported("long", Some(0), 1.0, 11.0),
            exported("s1", Some(1), 1.0, 2.0),
            exported("s2", Some(2), 1.0, 2.0),
        ]);
        assert_eq!((tl.makespan, tl.lower_bound), (10.0, 10.0));
    }

    #[test]
    fn idle_time_runs_from_a_tasks_last_commit_to_the_drains_end() {
        let tl = Timeline::new(&[
            exported("a", Some(0), 0.0, 9.0),
            exported("b", Some(1), 0.0, 2.0),
            dead("c", 1, 2.0, 3.5),
        ]);
        let idle: Vec<f64> = tl.lanes.iter().map(|l| l.idle_after).collect();
        assert_eq!(idle, [0.0, 5.5]);
        let c = tl.bars.iter().find(|b| b.unit == "c").unwrap();
        assert_eq!(
            (c.outcome, c.attempt, c.seconds()),
            (Outcome::DeadLettered, 3, 1.5)
        );
    }

    #[test]
    fn units_without_a_start_are_listed_not_drawn() {
        let mut old = exported("old", Some(0), 0.0, 1.0);
        if let UnitState::Exported { manifest: Some(m) } = &mut old.state {
            m.started_at = None;
        }
        let pending = UnitStatus {
            unit: "p".into(),
            state: UnitState::Pending,
        };
        let tl = Timeline::new(&[old, pending, exported("new", Some(0), 0.0, 1.0)]);
        assert_eq!(tl.untimed, ["old"]);
        assert_eq!(tl.bars.len(), 1);
        assert_eq!(Timeline::new(&[]).lower_bound, 0.0);
    }

    #[test]
    fn slowest_units_come_first() {
        let units: Vec<UnitStatus> = (0..15)
            .map(|i| exported(&format!("u{i:02}"), Some(0), 0.0, f64::from(i)))
            .collect();
        let tl = Timeline::new(&units);
        let slowest: Vec<&str> = tl
            .slowest(SLOWEST)
            .iter()
            .map(|b| b.unit.as_str())
            .collect();
        assert_eq!(slowest.len(), 10);
        assert_eq!(&slowest[..3], ["u14", "u13", "u12"]);
    }

    #[test]
    fn replay_names_the_table_of_a_partition() {
        let target = ReplayTarget {
            from: "queue://q.db#dead".into(),
            to: "queue://q.db#work".into(),
        };
        assert_eq!(
            target.command("r1", "sales$20260101"),
            "bqdrain replay --from 'queue://q.db#dead' --to 'queue://q.db#work' --run-id r1 --table sales"
        );
    }
}
