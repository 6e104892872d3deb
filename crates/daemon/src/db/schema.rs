//! The database schema and its migration.

use std::path::Path;

use rusqlite::Connection;

use super::DbError;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS vms (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    start_time INTEGER,
    restarts INTEGER NOT NULL DEFAULT 0,
    last_exit TEXT,
    user_stop INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    vm TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL
);";

/// The schema this daemon writes (`PRAGMA user_version`). Version 1 is the first versioned
/// one; a database without a version (0) has the same tables (network cards were added inside
/// the stored spec JSON, where an old row reads as having none) and is stamped 1. Version 2
/// adds `vsock` and `balloon` inside the spec JSON (an old row reads as having neither; no
/// table changes): a version 1 daemon would read a row using them as corrupt, so it refuses
/// the whole database instead.
pub const SCHEMA_VERSION: i64 = 2;

/// Brings the schema to [`SCHEMA_VERSION`], refusing a database of a newer daemon.
pub(super) fn migrate(conn: &Connection, path: &Path) -> Result<(), DbError> {
    let sql = |source| DbError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if version > SCHEMA_VERSION {
        return Err(DbError::Corrupt {
            name: path.display().to_string(),
            reason: format!(
                "schema version {version} is newer than this daemon's {SCHEMA_VERSION}"
            ),
        });
    }
    conn.execute_batch(SCHEMA).map_err(sql)?;
    if version < SCHEMA_VERSION {
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql)?;
    }
    Ok(())
}
