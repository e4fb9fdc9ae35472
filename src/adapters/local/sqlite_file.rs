//! What an existing SQLite file holds, read without changing it: the
//! embedded backends check a file before they use it, so that a text file,
//! a warehouse given as a queue or a user's database is refused with its
//! name instead of failing later (`file is not a database`) or being written
//! into.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::error::ConfigError;

/// The tables in the SQLite file at `path` (`sqlite_*` left out), sorted;
/// `None` when there is no file. A file that is not SQLite is refused,
/// naming `flag`.
pub fn tables(path: &Path, flag: &str) -> Result<Option<Vec<String>>, ConfigError> {
    if !path.exists() {
        return Ok(None);
    }
    if path.is_dir() {
        return Err(ConfigError::new(
            flag,
            format!("{} is a folder, not a SQLite file", path.display()),
            "name a file in it, e.g. demo/queue.db",
        ));
    }
    read_tables(path).map(Some).map_err(|e| {
        ConfigError::new(
            flag,
            format!("{} is not a SQLite database ({e})", path.display()),
            "check the path: it names another kind of file",
        )
    })
}

fn read_tables(path: &Path) -> rusqlite::Result<Vec<String>> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    let names = stmt.query_map([], |r| r.get(0))?.collect();
    names
}
