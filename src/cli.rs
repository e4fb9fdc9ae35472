//! What the binaries share: exit codes, error printing, JSON outcomes.

use std::process::ExitCode;

use serde::Serialize;

use crate::error::ConfigError;

/// Exit code for bad configuration or input.
pub const EXIT_CONFIG: u8 = 2;

/// Prints the error chain and picks the exit code: 2 when the user must fix
/// a flag, 1 for anything else.
pub fn fail(err: anyhow::Error) -> ExitCode {
    if let Some(config) = err.downcast_ref::<ConfigError>() {
        eprintln!("error: {config}");
        return ExitCode::from(EXIT_CONFIG);
    }
    eprintln!("error: {err:#}");
    ExitCode::FAILURE
}

/// The one JSON object a `--json` command prints on stdout.
pub fn print_json<T: Serialize>(outcome: &T) {
    println!(
        "{}",
        serde_json::to_string(outcome).expect("outcomes serialize")
    );
}

/// The process's peak resident set size, from `/proc/self/status` (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
