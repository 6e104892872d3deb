//! The daemon's database: one thread owns the SQLite connection (WAL, `synchronous=FULL`);
//! every change runs in one transaction together with the event that records it.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use api::daemon::{Event, RestartPolicy, State, VmSpec, VmStatus};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::oneshot;

mod rows;
mod schema;

use rows::{add_event, cid_owner, get_row};
pub use rows::{prune_events, vsock_socket, KEEP_EVENTS};
use schema::migrate;
pub use schema::SCHEMA_VERSION;

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("no VM named {0:?}")]
    NoSuchVm(String),
    #[error("a VM named {0:?} already exists")]
    Exists(String),
    #[error("vsock.cid: CID {cid} is already VM {vm:?}'s")]
    CidTaken { cid: u64, vm: String },
    #[error("stored row of VM {name:?} is unreadable: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("the database thread has stopped")]
    Gone,
    #[error("cannot start the database thread: {0}")]
    Thread(std::io::Error),
}

/// What the runtime keeps about a VM besides its spec and state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmRow {
    pub status: VmStatus,
    /// The VMM's start time (/proc stat field 22), to tell a recycled pid apart.
    pub start_time: Option<u64>,
    /// The user asked for the stop (no restart policy applies).
    pub user_stop: bool,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle to the database thread.
#[derive(Clone)]
pub struct Db {
    tx: mpsc::Sender<Job>,
    path: PathBuf,
}

impl Db {
    /// Opens (creating) the database at `path` (in the state folder: VMs' folders, as in
    /// [`vsock_socket`], are beside it) and starts its thread.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let sql = |source| DbError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        migrate(&conn, path)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("db".into())
            .spawn(move || {
                let mut conn = conn;
                for job in rx {
                    job(&mut conn);
                }
            })
            .map_err(DbError::Thread)?;
        Ok(Db {
            tx,
            path: path.to_path_buf(),
        })
    }

    /// Runs `f` on the database thread inside one transaction, committed if `f` succeeds.
    pub async fn tx<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let (reply, answer) = oneshot::channel();
        let path = self.path.clone();
        let job: Job = Box::new(move |conn| {
            let result = (|| {
                let sql = |source| DbError::Sqlite {
                    path: path.clone(),
                    source,
                };
                let t = conn.transaction().map_err(sql)?;
                let v = f(&t)?;
                t.commit().map_err(sql)?;
                Ok(v)
            })();
            let _ = reply.send(result);
        });
        self.tx.send(job).map_err(|_| DbError::Gone)?;
        answer.await.map_err(|_| DbError::Gone)?
    }

    /// Stores a new VM in state `defined`.
    pub async fn insert(&self, spec: VmSpec) -> Result<(VmRow, Event), DbError> {
        let path = self.path.clone();
        self.tx(move |t| {
            let sql = |source| DbError::Sqlite {
                path: path.clone(),
                source,
            };
            let exists: Option<String> = t
                .query_row("SELECT name FROM vms WHERE name = ?1", [&spec.name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(sql)?;
            if exists.is_some() {
                return Err(DbError::Exists(spec.name));
            }
            if let Some(v) = &spec.vsock {
                if let Some(vm) = cid_owner(t, &path, v.cid)? {
                    return Err(DbError::CidTaken { cid: v.cid, vm });
                }
            }
            let json = serde_json::to_string(&spec).map_err(|e| DbError::Corrupt {
                name: spec.name.clone(),
                reason: e.to_string(),
            })?;
            t.execute(
                "INSERT INTO vms (name, spec, state) VALUES (?1, ?2, ?3)",
                params![spec.name, json, State::Defined.as_str()],
            )
            .map_err(sql)?;
            let ev = add_event(t, &path, &spec.name, State::Defined, "defined")?;
            Ok((get_row(t, &path, &spec.name)?, ev))
        })
        .await
    }

    /// One VM.
    pub async fn get(&self, name: &str) -> Result<VmRow, DbError> {
        let (path, name) = (self.path.clone(), name.to_string());
        self.tx(move |t| get_row(t, &path, &name)).await
    }

    /// Every VM, by name.
    pub async fn list(&self) -> Result<Vec<VmRow>, DbError> {
        let path = self.path.clone();
        self.tx(move |t| {
            let sql = |source| DbError::Sqlite {
                path: path.clone(),
                source,
            };
            let mut stmt = t
                .prepare("SELECT name FROM vms ORDER BY name")
                .map_err(sql)?;
            let names: Vec<String> = stmt
                .query_map([], |r| r.get(0))
                .map_err(sql)?
                .collect::<Result<_, _>>()
                .map_err(sql)?;
            names.iter().map(|n| get_row(t, &path, n)).collect()
        })
        .await
    }

    /// Changes a VM's state (and process fields) and records the event, in one transaction.
    pub async fn update(&self, name: &str, change: Change) -> Result<(VmRow, Event), DbError> {
        let (path, name) = (self.path.clone(), name.to_string());
        self.tx(move |t| {
            let sql = |source| DbError::Sqlite {
                path: path.clone(),
                source,
            };
            let mut row = get_row(t, &path, &name)?;
            row.status.state = change.state;
            if let Some(p) = change.process {
                row.status.pid = p.map(|(pid, _)| pid);
                row.start_time = p.map(|(_, st)| st);
            }
            if let Some(r) = change.restarts {
                row.status.restarts = r;
            }
            if let Some(e) = change.last_exit {
                row.status.last_exit = Some(e);
            }
            if let Some(u) = change.user_stop {
                row.user_stop = u;
            }
            t.execute(
                "UPDATE vms SET state = ?2, pid = ?3, start_time = ?4, restarts = ?5, \
                 last_exit = ?6, user_stop = ?7 WHERE name = ?1",
                params![
                    name,
                    row.status.state.as_str(),
                    row.status.pid,
                    row.start_time.map(|s| s as i64),
                    row.status.restarts,
                    row.status.last_exit,
                    row.user_stop,
                ],
            )
            .map_err(sql)?;
            let ev = add_event(t, &path, &name, change.state, &change.message)?;
            Ok((row, ev))
        })
        .await
    }

    /// Deletes a VM if `allowed` accepts its current state; records the event.
    pub async fn delete(
        &self,
        name: &str,
        allowed: fn(State) -> bool,
    ) -> Result<Result<Event, State>, DbError> {
        let (path, name) = (self.path.clone(), name.to_string());
        self.tx(move |t| {
            let row = get_row(t, &path, &name)?;
            if !allowed(row.status.state) {
                return Ok(Err(row.status.state));
            }
            t.execute("DELETE FROM vms WHERE name = ?1", [&name])
                .map_err(|source| DbError::Sqlite {
                    path: path.clone(),
                    source,
                })?;
            Ok(Ok(add_event(t, &path, &name, State::Stopped, "deleted")?))
        })
        .await
    }

    /// Stored events with an id above `after`, oldest first (at most `limit`).
    pub async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>, DbError> {
        let path = self.path.clone();
        self.tx(move |t| {
            let sql = |source| DbError::Sqlite {
                path: path.clone(),
                source,
            };
            let mut stmt = t
                .prepare(
                    "SELECT id, time_ms, vm, state, message FROM events WHERE id > ?1 \
                     ORDER BY id LIMIT ?2",
                )
                .map_err(sql)?;
            let rows = stmt
                .query_map(params![after, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, time_ms, vm, state, message) = row.map_err(sql)?;
                let state = State::parse(&state).ok_or_else(|| DbError::Corrupt {
                    name: vm.clone(),
                    reason: format!("event {id} has unknown state {state:?}"),
                })?;
                out.push(Event {
                    id,
                    time_ms,
                    vm,
                    state,
                    message,
                });
            }
            Ok(out)
        })
        .await
    }
}

/// A state change and the fields that change with it (`None` = unchanged).
#[derive(Clone, Debug)]
pub struct Change {
    pub state: State,
    pub message: String,
    /// `Some(None)` clears the process; `Some(Some((pid, start_time)))` sets it.
    pub process: Option<Option<(i32, u64)>>,
    pub restarts: Option<u32>,
    pub last_exit: Option<String>,
    pub user_stop: Option<bool>,
}

impl Change {
    /// Only the state, with a message.
    pub fn to(state: State, message: impl Into<String>) -> Self {
        Change {
            state,
            message: message.into(),
            process: None,
            restarts: None,
            last_exit: None,
            user_stop: None,
        }
    }
}

/// The policy says whether to restart after an end of this kind.
pub fn should_restart(policy: RestartPolicy, failure: bool) -> bool {
    match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => failure,
        RestartPolicy::Always => true,
    }
}

#[cfg(test)]
#[path = "db_tests.rs"]
mod tests;
