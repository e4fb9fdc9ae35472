//! Helpers shared by the benchmarks: sample statistics and output.
#![allow(dead_code)]

use serde_json::{json, Value};

/// Median, min and max of a non-empty sample.
pub fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

pub fn spread_json(v: Vec<f64>) -> Value {
    let (median, min, max) = spread(v);
    json!({"median": median, "min": min, "max": max})
}

pub fn median(v: Vec<f64>) -> f64 {
    spread(v).0
}

pub fn emit(figure: Value, human: String) {
    println!("{figure}");
    println!("  {human}");
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// How well a run's units were spread over its tasks, from the start and
/// end times in their completion records.
pub struct Schedule {
    /// First start to last finish.
    pub makespan: f64,
    pub largest_unit: f64,
    pub total_work: f64,
    /// No schedule can do better: max(largest unit, total work / tasks).
    pub lower_bound: f64,
}

/// The median time of a run's units, and their span (first start to last
/// commit), from their completion records.
pub fn unit_times(records: &[bqdrain::engine::layout::TableManifest]) -> (f64, f64) {
    let seconds = |d: chrono::TimeDelta| d.num_microseconds().expect("short") as f64 / 1e6;
    let started = |r: &bqdrain::engine::layout::TableManifest| {
        r.started_at.expect("records carry their start")
    };
    let first = records.iter().map(started).min().expect("units");
    let last = records.iter().map(|r| r.finished_at).max().expect("units");
    let each = records
        .iter()
        .map(|r| seconds(r.finished_at - started(r)))
        .collect();
    (median(each), seconds(last - first))
}

impl Schedule {
    pub fn of(records: &[bqdrain::engine::layout::TableManifest], tasks: usize) -> Schedule {
        let span = |r: &bqdrain::engine::layout::TableManifest| {
            (
                r.started_at.expect("records carry their start"),
                r.finished_at,
            )
        };
        let first = records.iter().map(|r| span(r).0).min().expect("units");
        let last = records.iter().map(|r| span(r).1).max().expect("units");
        let seconds = |d: chrono::TimeDelta| d.num_microseconds().expect("short") as f64 / 1e6;
        let work: Vec<f64> = records
            .iter()
            .map(|r| seconds(span(r).1 - span(r).0))
            .collect();
        let largest_unit = work.iter().cloned().fold(0.0, f64::max);
        let total_work: f64 = work.iter().sum();
        Schedule {
            makespan: seconds(last - first),
            largest_unit,
            total_work,
            lower_bound: largest_unit.max(total_work / tasks as f64),
        }
    }

    pub fn ratio(&self) -> f64 {
        self.makespan / self.lower_bound
    }
}

/// A full run, then an `--only-changed` run after a few tables changed.
pub struct Incremental {
    pub tables: usize,
    pub changed: usize,
    pub tasks: usize,
    /// Each run's wall time (producer + drain) and its producer's part.
    pub full: (f64, f64),
    pub only_changed: (f64, f64),
    /// Each run's median unit time, from its completion records (a unit's
    /// start to its commit), which leaves the workers' start out.
    pub unit_seconds: (f64, f64),
    /// Each run's first unit start to its last commit, from the same records.
    pub span_seconds: (f64, f64),
}

impl Incremental {
    /// Prints the figures; `extra` joins the JSON line.
    pub fn emit(&self, extra: Value) {
        let ((full, full_producer), (second, second_producer)) = (self.full, self.only_changed);
        let mut figure = json!({
            "bench": "incremental",
            "tables": self.tables,
            "changed": self.changed,
            "tasks": self.tasks,
            "full_seconds": full,
            "full_producer_seconds": full_producer,
            "only_changed_seconds": second,
            "only_changed_producer_seconds": second_producer,
            "ratio": second / full,
            "full_unit_median_seconds": self.unit_seconds.0,
            "only_changed_unit_median_seconds": self.unit_seconds.1,
            "full_units_span_seconds": self.span_seconds.0,
            "only_changed_units_span_seconds": self.span_seconds.1,
        });
        if let (Some(figure), Value::Object(extra)) = (figure.as_object_mut(), extra) {
            figure.extend(extra);
        }
        emit(
            figure,
            format!(
                "incremental, {} tables x 1000 rows, {} changed, {} tasks: full run {full:.2} s \
                 (producer {full_producer:.2} s), --only-changed run {second:.2} s (producer \
                 {second_producer:.2} s): {:.1} % of the full run (producer + drain); median \
                 unit {:.0} ms, then {:.0} ms; first unit start to last commit {:.2} s, then {:.2} s",
                self.tables,
                self.changed,
                self.tasks,
                100.0 * second / full,
                1000.0 * self.unit_seconds.0,
                1000.0 * self.unit_seconds.1,
                self.span_seconds.0,
                self.span_seconds.1
            ),
        );
    }
}
