use super::schema::SCHEMA;
use super::*;

fn spec(name: &str) -> VmSpec {
    VmSpec {
        name: name.into(),
        cpus: 1,
        memory: 32 << 20,
        kernel: "/k".into(),
        initrd: None,
        cmdline: None,
        disks: vec![],
        nets: vec![],
        rng: false,
        vsock: None,
        balloon: None,
        restart: RestartPolicy::OnFailure,
        autostart: false,
    }
}

pub fn temp_db(tag: &str) -> (PathBuf, Db) {
    let dir = std::env::temp_dir().join(format!("thinvmd-db-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = Db::open(&dir.join("state.db")).unwrap();
    (dir, db)
}

#[tokio::test]
async fn rows_and_events_persist_across_reopen() {
    let (dir, db) = temp_db("persist");
    let (row, ev1) = db.insert(spec("a")).await.unwrap();
    assert_eq!(row.status.state, State::Defined);
    assert!(matches!(
        db.insert(spec("a")).await,
        Err(DbError::Exists(_))
    ));
    let mut c = Change::to(State::Running, "started");
    c.process = Some(Some((1234, 99)));
    c.restarts = Some(2);
    let (row, ev2) = db.update("a", c).await.unwrap();
    assert_eq!(
        (row.status.pid, row.start_time, row.status.restarts),
        (Some(1234), Some(99), 2)
    );
    assert!(ev2.id > ev1.id);
    db.insert(spec("b")).await.unwrap();
    drop(db);
    let db = Db::open(&dir.join("state.db")).unwrap();
    let all = db.list().await.unwrap();
    let names: Vec<_> = all.iter().map(|r| r.status.spec.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(all[0].status.state, State::Running);
    assert_eq!(all[0].status.pid, Some(1234));
    let evs = db.events_after(0, 100).await.unwrap();
    assert_eq!(evs.len(), 3);
    assert!(evs.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(db.events_after(ev2.id, 100).await.unwrap().len(), 1);
    let journal: String = db
        .tx(|t| {
            Ok(t.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap())
        })
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn delete_only_in_allowed_states_and_missing_vms() {
    let (dir, db) = temp_db("delete");
    db.insert(spec("a")).await.unwrap();
    db.update("a", Change::to(State::Running, "x"))
        .await
        .unwrap();
    let refused = db.delete("a", |s| !s.has_process()).await.unwrap();
    assert_eq!(refused, Err(State::Running));
    assert_eq!(db.get("a").await.unwrap().status.state, State::Running);
    db.update("a", Change::to(State::Stopped, "x"))
        .await
        .unwrap();
    assert!(db.delete("a", |s| !s.has_process()).await.unwrap().is_ok());
    assert!(matches!(db.get("a").await, Err(DbError::NoSuchVm(_))));
    assert!(matches!(
        db.update("a", Change::to(State::Running, "x")).await,
        Err(DbError::NoSuchVm(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn restart_policy_table() {
    assert!(!should_restart(RestartPolicy::Never, true));
    assert!(should_restart(RestartPolicy::OnFailure, true));
    assert!(!should_restart(RestartPolicy::OnFailure, false));
    assert!(should_restart(RestartPolicy::Always, false));
}

#[tokio::test]
async fn a_full_database_is_an_error_not_a_corruption() {
    let (dir, db) = temp_db("full");
    // A tiny page budget stands in for a full disk: SQLite answers SQLITE_FULL.
    db.tx(|t| {
        t.execute_batch("PRAGMA max_page_count = 12")
            .map_err(|source| DbError::Sqlite {
                path: "x".into(),
                source,
            })
    })
    .await
    .unwrap();
    let mut stored = 0;
    let mut failure = None;
    for i in 0..10_000 {
        let mut s = spec(&format!("vm-{i}"));
        s.cmdline = Some("x".repeat(500));
        match db.insert(s).await {
            Ok(_) => stored += 1,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("the database must fill up");
    assert!(failure.to_string().contains("full"), "{failure}");
    // Nothing half-written: every acknowledged VM is there with its event, and the file is sound.
    assert_eq!(db.list().await.unwrap().len(), stored);
    assert_eq!(db.events_after(0, 100_000).await.unwrap().len(), stored);
    let check: String = db
        .tx(|t| {
            Ok(t.query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap())
        })
        .await
        .unwrap();
    assert_eq!(check, "ok");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn old_events_are_pruned() {
    let (dir, db) = temp_db("prune");
    for i in 0..10 {
        db.insert(spec(&format!("v{i}"))).await.unwrap();
    }
    let path = dir.join("state.db");
    db.tx(move |t| prune_events(t, &path, 10, 3)).await.unwrap();
    let ids: Vec<i64> = db
        .events_after(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, [8, 9, 10]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_unversioned_database_with_old_rows_is_migrated() {
    let dir = std::env::temp_dir().join(format!("thinvmd-db-migrate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.db");
    {
        // A database as the daemon before versioning and network cards wrote it.
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.execute(
            "INSERT INTO vms (name, spec, state) VALUES ('old', ?1, 'stopped')",
            [r#"{"name":"old","cpus":1,"memory":33554432,"kernel":"/k","initrd":null,"cmdline":null,"rng":false,"restart":"never","autostart":false}"#],
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    let row = db.get("old").await.unwrap();
    assert_eq!(row.status.spec.nets, []);
    assert_eq!(row.status.state, State::Stopped);
    let v: i64 = db
        .tx(|t| {
            Ok(t.query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap())
        })
        .await
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    drop(db);
    // A newer daemon's database is refused, not misread.
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let e = Db::open(&path).err().expect("refused");
    assert!(e.to_string().contains("newer"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_version_1_database_loads_without_vsock_or_balloon() {
    let dir = std::env::temp_dir().join(format!("thinvmd-db-v1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.db");
    {
        // A database as the daemon with network cards (schema 1) wrote it.
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute(
            "INSERT INTO vms (name, spec, state) VALUES ('v1', ?1, 'defined')",
            [r#"{"name":"v1","cpus":1,"memory":33554432,"kernel":"/k","nets":[{"tap":"t0","mac":"02:00:00:00:00:01"}],"rng":false,"restart":"never","autostart":false}"#],
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    let row = db.get("v1").await.unwrap();
    assert_eq!(
        (row.status.spec.vsock, row.status.spec.balloon),
        (None, None)
    );
    assert_eq!(row.status.vsock_socket, None);
    assert_eq!(row.status.spec.nets.len(), 1);
    let v: i64 = db
        .tx(|t| {
            Ok(t.query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap())
        })
        .await
        .unwrap();
    assert_eq!(v, 2);
    // A CID is one VM's: the second definition with it is refused and not stored.
    let mut a = spec("a");
    a.vsock = Some(api::daemon::VsockSpec { cid: 7 });
    db.insert(a.clone()).await.unwrap();
    let got = db.get("a").await.unwrap().status.vsock_socket.unwrap();
    assert_eq!(got, dir.join("vms/a/vsock.sock").display().to_string());
    a.name = "b".into();
    assert!(matches!(
        db.insert(a).await,
        Err(DbError::CidTaken { cid: 7, ref vm }) if vm == "a"
    ));
    assert!(matches!(db.get("b").await, Err(DbError::NoSuchVm(_))));
    drop(db);
    std::fs::remove_dir_all(&dir).unwrap();
}
