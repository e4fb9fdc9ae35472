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

/// Parses the command line and the environment twins of its flags. A bad
/// value that came from a variable is reported under the variable's name
/// (the user typed no flag), exit 2.
pub fn parse<C: clap::Parser>() -> C {
    C::try_parse().unwrap_or_else(|err| {
        if let Some(message) = from_variable(&err, &C::command()) {
            eprintln!("error: {message}");
            std::process::exit(i32::from(EXIT_CONFIG));
        }
        err.exit()
    })
}

/// The message for a bad value that came from a flag's variable, if it did.
fn from_variable(err: &clap::Error, command: &clap::Command) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split_whitespace().next()?;
    let long = flag.strip_prefix("--")?;
    let typed = std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if typed {
        return None;
    }
    let variable = every_arg(command)
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_string_lossy()
        .into_owned();
    let value = std::env::var_os(&variable)?;
    let reason = err.to_string();
    let reason = reason
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ");
    Some(format!(
        "{variable}={value:?} (the variable of {flag}): {reason}; fix the variable or unset it"
    ))
}

fn every_arg(command: &clap::Command) -> Box<dyn Iterator<Item = &clap::Arg> + '_> {
    Box::new(
        command
            .get_arguments()
            .chain(command.get_subcommands().flat_map(every_arg)),
    )
}

/// A count of at least 1, such as `--concurrency`.
pub fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{value:?} is not a whole number of 1 or more; give e.g. 4"
        )),
    }
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
