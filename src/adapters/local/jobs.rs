//! Export jobs of the embedded warehouse, named by their job key as
//! BigQuery's are. Two deliveries of one unit at once (a lease that lapsed
//! during a long export, a run resumed while it was exporting) must not
//! write one folder together: the later one could overwrite files the
//! earlier one has committed with rows read at another time. So, as a
//! BigQuery job id inserted twice answers with the first job, a second
//! export under a key waits for the first and takes its result. A result
//! whose files are gone (a later run replaced them) is not taken: the
//! export runs again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::store::STAGING;
use crate::engine::layout::stable_hash;
use crate::error::UnitError;
use crate::ports::warehouse::{Cancel, ExportResult};

/// How often a waiting export looks whether the running one is done.
const POLL: Duration = Duration::from_millis(20);

/// A running export job: holds its key's lock until dropped.
pub struct Job {
    _lock: File,
    result: PathBuf,
}

/// What a finished job returns to a later export under its key.
#[derive(Serialize, Deserialize)]
struct Finished {
    job_key: String,
    files: Vec<String>,
    rows: Option<u64>,
}

/// Takes the job `job_key` under the destination `root`, waiting while
/// another export holds it; with the result of a finished job whose files
/// are all still there.
pub fn start(
    root: &Path,
    job_key: &str,
    cancel: &Cancel,
) -> Result<(Job, Option<ExportResult>), UnitError> {
    let io = |what: &str, path: &Path, e| UnitError::io(&format!("{what} {}", path.display()), e);
    let dir = root.join(STAGING);
    std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
    let name = format!("job-{:016x}", stable_hash(job_key));
    let lock_path = dir.join(format!("{name}.lock"));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io("opening", &lock_path, e))?;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                if cancel.load(Ordering::Relaxed) {
                    return Err(UnitError::transient(
                        "cancelled",
                        "export cancelled by shutdown",
                    ));
                }
                std::thread::sleep(POLL);
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("locking", &lock_path, e)),
        }
    }
    let job = Job {
        _lock: lock,
        result: dir.join(format!("{name}.json")),
    };
    let finished = std::fs::read(&job.result)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Finished>(&bytes).ok())
        .filter(|f| f.job_key == job_key && f.files.iter().all(|k| root.join(k).is_file()))
        .map(|f| ExportResult {
            files: f.files,
            rows: f.rows,
            as_of: None,
        });
    Ok((job, finished))
}

impl Job {
    /// Keeps the job's result for later exports under its key.
    pub fn finish(self, job_key: &str, result: &ExportResult) -> Result<(), UnitError> {
        let finished = Finished {
            job_key: job_key.to_string(),
            files: result.files.clone(),
            rows: result.rows,
        };
        let body = serde_json::to_vec(&finished).expect("a job result serializes");
        let tmp = self.result.with_extension("json.tmp");
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, &self.result))
            .map_err(|e| UnitError::io(&format!("writing {}", self.result.display()), e))
    }
}

/// FNV-1a: a stable short name for a job key, which may be longer than a
/// file name may be.
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn a_second_export_under_a_key_waits_and_takes_the_first_result() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("d/t/run=r")).unwrap();
        std::fs::write(root.path().join("d/t/run=r/t_0.csv"), "a\n").unwrap();
        let cancel: Cancel = Arc::new(AtomicBool::new(false));
        let (first, none) = start(root.path(), "k", &cancel).unwrap();
        assert!(none.is_none());
        let waiting = {
            let (root, cancel) = (root.path().to_path_buf(), Arc::clone(&cancel));
            std::thread::spawn(move || start(&root, "k", &cancel).map(|(_, found)| found))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiting.is_finished(), "the second export waits");
        let result = ExportResult {
            files: vec!["d/t/run=r/t_0.csv".into()],
            rows: Some(1),
            as_of: None,
        };
        first.finish("k", &result).unwrap();
        assert_eq!(waiting.join().unwrap().unwrap(), Some(result));

        std::fs::remove_file(root.path().join("d/t/run=r/t_0.csv")).unwrap();
        let (_, gone) = start(root.path(), "k", &cancel).unwrap();
        assert_eq!(gone, None, "a result whose files are gone is not taken");
    }
}
