//! The two kinds of failure: a [`ConfigError`] in what the user asked for
//! (the binaries exit 2, before anything is published or written), and a
//! [`UnitError`] of one unit of work, which the worker retries when it is
//! [`ErrorKind::Transient`] and dead-letters when it is
//! [`ErrorKind::Permanent`].

use std::fmt;

/// A mistake in what the user asked for. Binaries print it and exit 2.
///
/// It names the flag (or field) at fault and how to fix it, so that the
/// user never has to read the source to find out what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {problem}; {fix}")]
pub struct ConfigError {
    pub flag: String,
    pub problem: String,
    pub fix: String,
}

impl ConfigError {
    pub fn new(flag: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError {
            flag: flag.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// Whether trying the same unit again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// Worth retrying: overload, a dropped connection, a lock.
    Transient,
    /// Retrying cannot help: a missing table, an invalid request, a bad message.
    Permanent,
}

/// Why one unit of work failed.
///
/// `reason` is a short machine-readable code (BigQuery's own where one
/// exists: `notFound`, `invalid`, `backendError`, `rateLimitExceeded`);
/// it travels as a message attribute to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitError {
    pub kind: ErrorKind,
    pub reason: String,
    pub message: String,
}

impl UnitError {
    pub fn permanent(reason: &str, message: impl Into<String>) -> Self {
        UnitError {
            kind: ErrorKind::Permanent,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    pub fn transient(reason: &str, message: impl Into<String>) -> Self {
        UnitError {
            kind: ErrorKind::Transient,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    /// Failures of the queue, the store or the local file system: the next
    /// attempt may well succeed, unless a name is longer than the file
    /// system allows ("File name too long"), which no retry changes.
    pub fn io(context: &str, err: impl Into<anyhow::Error>) -> Self {
        let err = err.into();
        let name_too_long = err.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::InvalidFilename)
        });
        if name_too_long {
            UnitError::permanent(
                "invalid",
                format!(
                    "{context}: {err}; a name is too long for the destination's file system: \
                     rename the table, or export to Cloud Storage"
                ),
            )
        } else {
            UnitError::transient("backendError", format!("{context}: {err}"))
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for UnitError {}
