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
