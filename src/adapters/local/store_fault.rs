//! A fault injected into a `file://` store, for showing what a worker
//! killed while it settles a unit leaves behind: its deletes stall.
//!
//! A dataset's faults stop an export (see [`super::dataset`]); this one
//! stops a worker after the export is committed, at its first deletion of
//! a superseded file, and holds it there until the worker is killed (a
//! test kills the process, or aborts an in-process drain) or the fault is
//! cleared. The fault lives in the store's staging folder, which is never
//! listed, so every worker process using the store sees it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;

use super::store::STAGING;

/// Holds how many more deletes may pass before they stall.
const STALL: &str = "fault-stall-deletes";
/// Written while a delete is stalled, so a test knows when to kill.
const HELD: &str = "fault-delete-held";
/// How often a stalled delete looks whether the fault was cleared.
const POLL: Duration = Duration::from_millis(10);

/// The pass count is read and written by the deletes of one process at
/// once; tests run one worker at a time against a stalled store.
static COUNTING: Mutex<()> = Mutex::new(());

fn path(root: &Path, name: &str) -> PathBuf {
    root.join(STAGING).join(name)
}

/// Makes the deletes of the store at `root` stall after `after` more pass.
pub fn stall_deletes(root: &Path, after: u32) -> anyhow::Result<()> {
    let stall = path(root, STALL);
    std::fs::create_dir_all(stall.parent().expect("a staging folder"))?;
    std::fs::write(&stall, after.to_string())
        .with_context(|| format!("writing {}", stall.display()))
}

/// Whether a delete of the store at `root` is stalled now.
pub fn delete_held(root: &Path) -> bool {
    path(root, HELD).exists()
}

/// Lets deletes pass again: a stalled one (in a live process) goes on.
pub fn clear_stall(root: &Path) -> anyhow::Result<()> {
    for name in [STALL, HELD] {
        match std::fs::remove_file(path(root, name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("deleting {name}"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Called before each delete: returns at once without the fault, else
/// counts the delete through or waits while the fault stands. The wait is
/// a future, so an aborted drain drops it and the delete never happens.
pub(crate) async fn before_delete(root: &Path) {
    let stall = path(root, STALL);
    {
        let _counting = COUNTING.lock().expect("stall counter lock poisoned");
        let Ok(left) = std::fs::read_to_string(&stall) else {
            return;
        };
        let left: u32 = left.trim().parse().unwrap_or(0);
        if left > 0 {
            let _ = std::fs::write(&stall, (left - 1).to_string());
            return;
        }
        let _ = std::fs::write(path(root, HELD), "");
    }
    while stall.exists() {
        tokio::time::sleep(POLL).await;
    }
}
