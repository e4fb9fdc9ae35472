//! A folder as an object store: `file://PATH`.
//!
//! Writes go to a hidden temporary file first and are renamed into place,
//! so a reader never sees half an object; write-if-absent links the
//! temporary file to its key, which the file system refuses atomically when
//! the key exists.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use async_trait::async_trait;

use super::{absolute, store_fault, LocalUri};
use crate::error::ConfigError;
use crate::ports::store::{ObjectInfo, ObjectStore};

pub struct FsStore {
    uri: String,
    root: PathBuf,
}

impl FsStore {
    pub fn is_local(uri: &str) -> bool {
        uri.starts_with("file://")
    }

    /// The folder a `file://` URI names.
    pub fn root_of(uri: &str, flag: &str) -> Result<PathBuf, ConfigError> {
        let parsed = LocalUri::parse(uri, "file").ok_or_else(|| {
            ConfigError::new(
                flag,
                format!("{uri:?} is not a file:// URI"),
                "write it as file://PATH, e.g. file://demo/exports",
            )
        })?;
        Ok(absolute(&parsed.path))
    }

    pub fn open(uri: &str, flag: &str) -> Result<FsStore, ConfigError> {
        let root = Self::root_of(uri, flag)?;
        let example = "name a folder, e.g. file:///data/exports or file://demo/exports";
        if root.parent().is_none() {
            return Err(ConfigError::new(
                flag,
                format!("{uri} is the file system's root, and exports would land beside /etc"),
                example,
            ));
        }
        if root.exists() && !root.is_dir() {
            return Err(ConfigError::new(
                flag,
                format!("{} is a file, not a folder", root.display()),
                example,
            ));
        }
        sweep_staging(&root);
        Ok(FsStore {
            uri: format!("file://{}", root.display()),
            root,
        })
    }

    fn path_of(&self, key: &str) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            !key.split('/').any(|s| s == ".." || s == "."),
            "object key {key:?} has a relative segment"
        );
        Ok(self.root.join(key))
    }
}

/// Where files are written before they are renamed into place: outside every
/// folder that is listed, so a listing never sees half-written files and
/// concurrent writers never delete each other's.
pub(crate) const STAGING: &str = ".bqdrain-tmp";

/// A file being written in the staging folder. Its writer holds an
/// exclusive lock on it until the file is placed, and the lock goes with the
/// writer's process: a staged file nobody holds was left by a dead writer.
pub(crate) struct Staged {
    pub path: PathBuf,
    pub file: std::fs::File,
}

/// A fresh staging file under `root`, locked (the folder exists once this
/// returns).
pub(crate) fn staging_file(root: &Path) -> std::io::Result<Staged> {
    let dir = root.join(STAGING);
    std::fs::create_dir_all(&dir)?;
    loop {
        let path = dir.join(format!("{:016x}.tmp", fastrand::u64(..)));
        let file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.lock()?;
        // A sweep may have taken the file between its creation and the
        // lock: then start again with another.
        if path.exists() {
            return Ok(Staged { path, file });
        }
    }
}

/// Deletes what dead writers left in the staging folder: every staged file
/// (`*.tmp`) whose lock nobody holds. The folder also keeps the embedded
/// jobs' locks and results and the store's faults, which are not a
/// writer's leftovers.
fn sweep_staging(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join(STAGING)) else {
        return;
    };
    let staged = |entry: &std::fs::DirEntry| entry.path().extension().is_some_and(|e| e == "tmp");
    for entry in entries.flatten().filter(staged) {
        let Ok(file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        if file.try_lock().is_ok() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Moves a staged file to its key with `op` (rename or link). Another
/// process may drop a folder it just emptied between our creating it and
/// moving into it, so a missing folder is made again and the move retried.
pub(crate) fn place(
    tmp: &Path,
    path: &Path,
    op: fn(&Path, &Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match op(tmp, path) {
            Err(e) if e.kind() == ErrorKind::NotFound && tries < 5 => {
                tries += 1;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
            }
            other => return other,
        }
    }
}

fn write_temp(root: &Path, path: &Path, data: &[u8]) -> anyhow::Result<Staged> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut tmp = staging_file(root)?;
    tmp.file
        .write_all(data)
        .with_context(|| format!("writing {}", tmp.path.display()))?;
    Ok(tmp)
}

fn walk(dir: &Path, root: &Path, prefix: &str, out: &mut Vec<ObjectInfo>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            if entry.file_name() != STAGING {
                walk(&path, root, prefix, out)?;
            }
        } else if kind.is_file() {
            let key = path
                .strip_prefix(root)
                .expect("walked paths lie under the root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if key.starts_with(prefix) {
                // Deleted since the folder was read (another task replacing
                // an export): not listed, as an object store would not.
                let size = match entry.metadata() {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                out.push(ObjectInfo {
                    key,
                    size,
                    summary: None,
                    checksum: None,
                });
            }
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Linux's limits: a file name of 255 bytes (`NAME_MAX`), a path of 4,096
/// with its closing NUL (`PATH_MAX`).
const MAX_FILE_NAME_BYTES: usize = 255;
const MAX_PATH_BYTES: usize = 4095;

/// Why the file system would refuse a file at `path`, if it would.
fn path_problem(path: &Path) -> Option<String> {
    let bytes = path.as_os_str().len();
    if bytes > MAX_PATH_BYTES {
        return Some(format!(
            "its path would be {bytes} bytes, above the file system's limit of 4,096 ({})",
            path.display()
        ));
    }
    path.components()
        .map(|c| c.as_os_str())
        .find(|name| name.len() > MAX_FILE_NAME_BYTES)
        .map(|name| {
            format!(
                "its file name would be {} bytes, above the file system's limit of \
                 {MAX_FILE_NAME_BYTES} ({})",
                name.len(),
                name.to_string_lossy()
            )
        })
}

#[async_trait]
impl ObjectStore for FsStore {
    fn name_problem(&self, key: &str) -> Option<String> {
        path_problem(&self.root.join(key))
    }

    /// Makes the folder and a staging file in it: a folder that is
    /// read-only, or under one, fails here at once, rather than after the
    /// retries of a write.
    async fn write_problem(&self) -> Option<String> {
        let root = self.root.clone();
        blocking(move || {
            std::fs::create_dir_all(&root)?;
            let staged = staging_file(&root)?;
            std::fs::remove_file(&staged.path)?;
            Ok(())
        })
        .await
        .err()
        .map(|e| format!("{} cannot be written: {e:#}", self.root.display()))
    }

    fn uri(&self) -> &str {
        &self.uri
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        // Walk only the folder the prefix lies in.
        let dir_key = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let dir = self.path_of(dir_key)?;
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = Vec::new();
            walk(&dir, &root, &prefix, &mut out)
                .with_context(|| format!("listing {}", dir.display()))?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    /// The sub-folders on disk (an emptied one is removed when its last
    /// file is deleted), less the staging folder.
    async fn folders(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let dir = self.path_of(prefix)?;
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
            };
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() && entry.file_name() != STAGING {
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn read(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self.path_of(key)?;
        blocking(move || match std::fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        })
        .await
    }

    /// Keeps no summary: reading a local file costs what listing it does.
    async fn write(&self, key: &str, data: &[u8], _summary: Option<&str>) -> anyhow::Result<()> {
        let path = self.path_of(key)?;
        let data = data.to_vec();
        let root = self.root.clone();
        blocking(move || {
            let tmp = write_temp(&root, &path, &data)?;
            place(&tmp.path, &path, |from, to| std::fs::rename(from, to))
                .with_context(|| format!("renaming into {}", path.display()))
        })
        .await
    }

    async fn write_if_absent(
        &self,
        key: &str,
        data: &[u8],
        _summary: Option<&str>,
    ) -> anyhow::Result<bool> {
        let path = self.path_of(key)?;
        let data = data.to_vec();
        let root = self.root.clone();
        blocking(move || {
            let tmp = write_temp(&root, &path, &data)?;
            let linked = place(&tmp.path, &path, |from, to| std::fs::hard_link(from, to));
            let _ = std::fs::remove_file(&tmp.path);
            match linked {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e).with_context(|| format!("linking {}", path.display())),
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let path = self.path_of(key)?;
        store_fault::before_delete(&self.root).await;
        let root = self.root.clone();
        blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("deleting {}", path.display())),
            }
            // Object stores have no folders: drop the ones left empty.
            let mut dir = path.parent();
            while let Some(d) = dir {
                if d == root || std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_and_paths_are_held_to_the_file_systems_limits() {
        let root = Path::new("/exports");
        assert_eq!(path_problem(&root.join("a".repeat(255))), None);
        let problem = path_problem(&root.join("a".repeat(256))).unwrap();
        assert!(
            problem.contains("file name would be 256 bytes"),
            "{problem}"
        );
        let deep: PathBuf = (0..17).map(|_| "b".repeat(250)).collect();
        let problem = path_problem(&root.join(deep)).unwrap();
        assert!(problem.contains("limit of 4,096"), "{problem}");
    }
    use std::sync::Arc;

    #[tokio::test]
    async fn write_if_absent_has_exactly_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(FsStore::open(&format!("file://{}", dir.path().display()), "d").unwrap());
        let racers: Vec<_> = (0..16)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    store
                        .write_if_absent("a/done.json", format!("{i}").as_bytes(), None)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for r in racers {
            winners += usize::from(r.await.unwrap());
        }
        assert_eq!(winners, 1);
        assert_eq!(
            store.list("a/").await.unwrap().len(),
            1,
            "no temporary files left behind"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listing_while_files_are_deleted_skips_them() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(FsStore::open(&format!("file://{}", dir.path().display()), "d").unwrap());
        let churn = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for round in 0..300 {
                    let keys: Vec<_> = (0..20).map(|i| format!("t/run={round}/{i}.csv")).collect();
                    for key in &keys {
                        store.write(key, b"x", None).await.unwrap();
                    }
                    for key in &keys {
                        store.delete(key).await.unwrap();
                    }
                }
            })
        };
        while !churn.is_finished() {
            store.list("t/").await.expect("a listing during deletes");
        }
        churn.await.unwrap();
    }

    #[tokio::test]
    async fn lists_by_prefix_and_deletes_empty_folders() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(&format!("file://{}", dir.path().display()), "d").unwrap();
        for key in ["t/run=1/a.csv", "t/run=2/b.csv", "t2/run=1/c.csv"] {
            store.write(key, b"x", None).await.unwrap();
        }
        let keys: Vec<_> = store
            .list("t/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["t/run=1/a.csv", "t/run=2/b.csv"]);
        assert_eq!(store.folders("").await.unwrap(), ["t", "t2"]);
        assert_eq!(store.folders("t/").await.unwrap(), ["run=1", "run=2"]);
        assert_eq!(
            store.read("t/run=1/a.csv").await.unwrap().as_deref(),
            Some(&b"x"[..])
        );
        assert_eq!(store.read("nope").await.unwrap(), None);
        store.delete("t/run=1/a.csv").await.unwrap();
        store.delete("t/run=1/a.csv").await.unwrap();
        assert!(!dir.path().join("t/run=1").exists());
        assert!(store.read("../escape").await.is_err());
    }
}
