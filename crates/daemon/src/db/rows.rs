//! Row-level helpers that run inside a transaction on the database thread: reading a VM's
//! row, recording (and pruning) events, finding a vsock CID's owner.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use api::daemon::{Event, State, VmSpec, VmStatus};
use rusqlite::{params, OptionalExtension, Transaction};

use super::{DbError, VmRow};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(super) fn add_event(
    t: &Transaction<'_>,
    path: &Path,
    vm: &str,
    state: State,
    msg: &str,
) -> Result<Event, DbError> {
    let time_ms = now_ms();
    t.execute(
        "INSERT INTO events (time_ms, vm, state, message) VALUES (?1, ?2, ?3, ?4)",
        params![time_ms, vm, state.as_str(), msg],
    )
    .map_err(|source| DbError::Sqlite {
        path: path.to_path_buf(),
        source,
    })?;
    let id = t.last_insert_rowid();
    if id % PRUNE_EVERY == 0 {
        prune_events(t, path, id, KEEP_EVENTS)?;
    }
    Ok(Event {
        id,
        time_ms,
        vm: vm.to_string(),
        state,
        message: msg.to_string(),
    })
}

/// How many events are kept (older ones are pruned; a client resuming from a pruned id gets
/// what is left).
pub const KEEP_EVENTS: i64 = 100_000;
const PRUNE_EVERY: i64 = 1000;

/// Deletes the events older than the `keep` last ones before `last`.
pub fn prune_events(t: &Transaction<'_>, path: &Path, last: i64, keep: i64) -> Result<(), DbError> {
    t.execute(
        "DELETE FROM events WHERE id <= ?1",
        [last.saturating_sub(keep)],
    )
    .map_err(|source| DbError::Sqlite {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// The VM whose definition has vsock CID `cid`, if any.
pub(super) fn cid_owner(
    t: &Transaction<'_>,
    path: &Path,
    cid: u64,
) -> Result<Option<String>, DbError> {
    let sql = |source| DbError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let mut stmt = t.prepare("SELECT name, spec FROM vms").map_err(sql)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(sql)?;
    for row in rows {
        let (name, spec) = row.map_err(sql)?;
        let spec: VmSpec = serde_json::from_str(&spec).map_err(|e| DbError::Corrupt {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        if spec.vsock.is_some_and(|v| v.cid == cid) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Where the VMM of VM `name` serves its vsock device: `vms/NAME/vsock.sock` in the state
/// folder, which holds the database at `db`.
pub fn vsock_socket(db: &Path, name: &str) -> PathBuf {
    let state_dir = db.parent().unwrap_or(Path::new("/"));
    state_dir
        .join("vms")
        .join(name)
        .join(api::daemon::VSOCK_SOCKET)
}

pub(super) fn get_row(t: &Transaction<'_>, path: &Path, name: &str) -> Result<VmRow, DbError> {
    let row = t
        .query_row(
            "SELECT spec, state, pid, start_time, restarts, last_exit, user_stop FROM vms \
             WHERE name = ?1",
            [name],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i32>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, bool>(6)?,
                ))
            },
        )
        .optional()
        .map_err(|source| DbError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| DbError::NoSuchVm(name.to_string()))?;
    let (spec, state, pid, start_time, restarts, last_exit, user_stop) = row;
    let corrupt = |reason: String| DbError::Corrupt {
        name: name.to_string(),
        reason,
    };
    let spec: VmSpec = serde_json::from_str(&spec).map_err(|e| corrupt(e.to_string()))?;
    let state = State::parse(&state).ok_or_else(|| corrupt(format!("unknown state {state:?}")))?;
    let vsock_socket = spec
        .vsock
        .as_ref()
        .map(|_| vsock_socket(path, name).display().to_string());
    Ok(VmRow {
        status: VmStatus {
            spec,
            state,
            pid,
            restarts,
            last_exit,
            vsock_socket,
        },
        start_time: start_time.map(|s| s as u64),
        user_stop,
    })
}
