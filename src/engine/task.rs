//! Which task this process is, for logs only: work is never assigned by it.

use std::fmt;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskIdentity {
    pub index: Option<u32>,
    pub count: Option<u32>,
    pub attempt: Option<u32>,
}

impl TaskIdentity {
    /// Reads Cloud Run's `CLOUD_RUN_TASK_INDEX`, `_COUNT` and `_ATTEMPT`.
    pub fn from_env() -> TaskIdentity {
        let read = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        TaskIdentity {
            index: read("CLOUD_RUN_TASK_INDEX"),
            count: read("CLOUD_RUN_TASK_COUNT"),
            attempt: read("CLOUD_RUN_TASK_ATTEMPT"),
        }
    }
}

impl fmt::Display for TaskIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.index, self.count) {
            (Some(i), Some(n)) => write!(f, "task {i}/{n}")?,
            (Some(i), None) => write!(f, "task {i}")?,
            _ => write!(f, "task {}", std::process::id())?,
        }
        if let Some(a) = self.attempt {
            write!(f, " attempt {a}")?;
        }
        Ok(())
    }
}
