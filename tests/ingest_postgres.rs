//! `tessera ingest --state postgresql://...` against a real PostgreSQL server started by the
//! test (`common::postgres`; skipped with a message where PostgreSQL is not installed): the
//! state operations behave as the SQLite state's do, several instances process each scene
//! exactly once, a killed instance's claim is taken over once its lease runs out, a database
//! restart loses nothing, and an unreachable database is one line naming its URL.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::postgres::{free_port, PgServer};
use common::{crop, run, tessera};
use tessera::batch::state::{
    Claim, Fingerprint, Owner, RetryPolicy, SceneStatus, StateDb, StateError, StateLocation,
    StateStore,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// --- the state operations, on both stores ------------------------------------------------

fn fp(size: u64, mtime_ns: i64) -> Fingerprint {
    Fingerprint { size, mtime_ns }
}

fn me() -> Owner {
    Owner::current()
}

fn remote(name: &str) -> Owner {
    Owner {
        host: format!("{name}.invalid"),
        pid: 7,
    }
}

const POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    backoff_seconds: 10.0,
};

fn status(db: &dyn StateStore, path: &str) -> SceneStatus {
    db.get(path).expect("get").expect("row").status
}

/// The same sequence of operations and expectations as the SQLite state's unit tests; `open`
/// gives a fresh, empty store each time.
fn behaves_as_documented(open: &dyn Fn() -> Box<dyn StateStore>) {
    // New, unchanged, changed.
    let db = open();
    db.observe("a.tif", fp(10, 100), 1.0).expect("observe");
    let row = db.get("a.tif").expect("get").expect("row");
    assert_eq!(row.status, SceneStatus::Pending);
    assert_eq!((row.attempts, row.size, row.mtime_ns), (0, 10, 100));
    let c = db
        .claim_next(&me(), 2.0, 60.0)
        .expect("claim")
        .expect("a.tif");
    assert_eq!(
        (c.path.as_str(), c.attempt, c.fingerprint),
        ("a.tif", 1, fp(10, 100))
    );
    // A running claim is left alone by an observation of a changed file.
    db.observe("a.tif", fp(20, 200), 2.5).expect("observe");
    assert_eq!(status(&*db, "a.tif"), SceneStatus::Running);
    db.finish_ok(&c, &me(), 3.0, 1.0, "out/a").expect("finish");
    let row = db.get("a.tif").expect("get").expect("row");
    assert_eq!(row.status, SceneStatus::Done);
    assert_eq!((row.size, row.mtime_ns), (10, 100));
    assert_eq!(row.output.as_deref(), Some("out/a"));
    assert_eq!((row.finished_at, row.seconds), (Some(3.0), Some(1.0)));
    assert_eq!(row.owner, Some(me().to_string()));
    db.observe("a.tif", fp(10, 100), 4.0).expect("observe");
    assert_eq!(status(&*db, "a.tif"), SceneStatus::Done);
    db.observe("a.tif", fp(20, 200), 5.0).expect("observe");
    let row = db.get("a.tif").expect("get").expect("row");
    assert_eq!(row.status, SceneStatus::Pending);
    assert_eq!((row.attempts, row.output, row.finished_at), (0, None, None));

    // Oldest first; only eligible scenes.
    let db = open();
    db.observe_all(
        &[("c.tif".into(), fp(1, 1)), ("a.tif".into(), fp(1, 1))],
        1.0,
    )
    .expect("observe");
    db.observe("b.tif", fp(1, 1), 2.0).expect("observe");
    let order: Vec<String> = (0..3)
        .map(|_| {
            db.claim_next(&me(), 10.0, 60.0)
                .expect("claim")
                .expect("one")
                .path
        })
        .collect();
    assert_eq!(order, ["a.tif", "c.tif", "b.tif"]);
    assert_eq!(
        db.claim_next(&remote("x"), 11.0, 60.0).expect("claim"),
        None
    );
    let rows = db.list().expect("list");
    let listed: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(listed, ["a.tif", "b.tif", "c.tif"]);

    // Transient failures back off, doubling, then fail for good; a failed scene waits for its
    // file to change.
    let db = open();
    db.observe("a.tif", fp(1, 1), 0.0).expect("observe");
    let c = db
        .claim_next(&me(), 100.0, 60.0)
        .expect("claim")
        .expect("a");
    let st = db
        .finish_err(&c, &me(), 101.0, 1.0, "timeout", true, &POLICY)
        .expect("finish");
    assert_eq!(st, SceneStatus::Retry);
    let row = db.get("a.tif").expect("get").expect("row");
    assert_eq!(
        (row.next_attempt_at, row.error.as_deref()),
        (Some(111.0), Some("timeout"))
    );
    assert_eq!(db.claim_next(&me(), 110.9, 60.0).expect("claim"), None);
    let c = db
        .claim_next(&me(), 111.0, 60.0)
        .expect("claim")
        .expect("a");
    assert_eq!(c.attempt, 2);
    db.finish_err(&c, &me(), 112.0, 1.0, "timeout", true, &POLICY)
        .expect("finish");
    assert_eq!(
        db.get("a.tif").expect("get").expect("row").next_attempt_at,
        Some(132.0)
    );
    let c = db
        .claim_next(&me(), 132.0, 60.0)
        .expect("claim")
        .expect("a");
    assert_eq!(c.attempt, 3);
    let st = db
        .finish_err(&c, &me(), 133.0, 1.0, "timeout again", true, &POLICY)
        .expect("finish");
    assert_eq!(st, SceneStatus::Failed);
    let row = db.get("a.tif").expect("get").expect("row");
    assert_eq!((row.attempts, row.next_attempt_at), (3, None));
    assert_eq!(db.claim_next(&me(), 1e9, 60.0).expect("claim"), None);
    db.observe("a.tif", fp(1, 1), 134.0).expect("observe");
    assert_eq!(status(&*db, "a.tif"), SceneStatus::Failed);
    db.observe("a.tif", fp(2, 2), 135.0).expect("observe");
    let row = db.get("a.tif").expect("get").expect("row");
    assert_eq!(
        (row.status, row.attempts, row.error),
        (SceneStatus::Pending, 0, None)
    );

    // Another host's claim is taken over once older than the lease, renewing moves it on, and
    // the note says which attempt was interrupted; the lost claim cannot finish.
    let db = open();
    db.observe("a.tif", fp(1, 1), 0.0).expect("observe");
    let other = remote("node-2");
    let rc = db
        .claim_next(&other, 100.0, 60.0)
        .expect("claim")
        .expect("a");
    assert_eq!(db.claim_next(&me(), 160.0, 60.0).expect("claim"), None);
    db.renew(&rc, &other, 150.0).expect("renew");
    assert_eq!(db.claim_next(&me(), 210.0, 60.0).expect("claim"), None);
    let c = db
        .claim_next(&me(), 210.5, 60.0)
        .expect("claim")
        .expect("a");
    assert_eq!(c.attempt, 2);
    let row = db.get("a.tif").expect("get").expect("row");
    assert_eq!(
        row.error.as_deref(),
        Some("attempt 1 by node-2.invalid:7 was interrupted")
    );
    assert!(db.renew(&rc, &other, 211.0).is_err());
    let err = db
        .finish_err(&rc, &other, 212.0, 1.0, "x", true, &POLICY)
        .expect_err("lost");
    assert!(matches!(err, StateError::ClaimLost { .. }), "{err}");
    assert!(err.to_string().contains("a.tif"), "{err}");
    // A stale copy of the claim (an earlier attempt) is refused as well.
    let stale = Claim {
        attempt: 1,
        ..c.clone()
    };
    assert!(db.finish_ok(&stale, &me(), 213.0, 1.0, "o").is_err());
    db.finish_ok(&c, &me(), 213.0, 1.0, "o").expect("finish");
    let row = db.get("a.tif").expect("get").expect("row");
    assert_eq!((row.status, row.error), (SceneStatus::Done, None));
    assert!(
        db.finish_ok(&c, &me(), 214.0, 1.0, "o").is_err(),
        "finished twice"
    );

    // Release gives a claim back uncounted; defer does too, until its time.
    let db = open();
    db.observe("a.tif", fp(1, 1), 0.0).expect("observe");
    let c = db.claim_next(&me(), 1.0, 60.0).expect("claim").expect("a");
    assert!(
        db.release(&c, &remote("y")).is_err(),
        "only the owner releases"
    );
    db.release(&c, &me()).expect("release");
    let row = db.get("a.tif").expect("get").expect("row");
    assert_eq!(
        (row.status, row.attempts, row.owner),
        (SceneStatus::Pending, 0, None)
    );
    let c = db.claim_next(&me(), 2.0, 60.0).expect("claim").expect("a");
    assert_eq!(c.attempt, 1);
    db.defer(&c, &me(), 50.0, "still being written")
        .expect("defer");
    let row = db.get("a.tif").expect("get").expect("row");
    assert_eq!((row.status, row.attempts), (SceneStatus::Retry, 0));
    assert_eq!(row.error.as_deref(), Some("still being written"));
    assert_eq!(db.claim_next(&me(), 49.0, 60.0).expect("claim"), None);
    assert_eq!(
        db.claim_next(&me(), 50.0, 60.0)
            .expect("claim")
            .map(|c| c.attempt),
        Some(1)
    );
    assert_eq!(db.get("missing.tif").expect("get"), None);
}

#[test]
fn the_postgres_state_behaves_as_the_sqlite_state_does() {
    let dir = tempfile::tempdir().expect("tmp");
    let n = std::cell::Cell::new(0);
    let sqlite = || -> Box<dyn StateStore> {
        n.set(n.get() + 1);
        Box::new(StateDb::open(&dir.path().join(format!("s{}.db", n.get()))).expect("sqlite"))
    };
    behaves_as_documented(&sqlite);

    let Some(pg) = PgServer::start() else {
        return;
    };
    let fresh = || -> Box<dyn StateStore> {
        pg.psql("DROP TABLE IF EXISTS tessera_ingest_scenes, tessera_ingest_meta");
        StateLocation::parse(&pg.url())
            .open(Default::default())
            .expect("postgres state")
    };
    behaves_as_documented(&fresh);
    // The tables are where the documentation says, with the rows above.
    assert_eq!(
        pg.psql("SELECT path || ' ' || status || ' ' || attempts FROM tessera_ingest_scenes"),
        "a.tif running 1"
    );
    assert_eq!(
        pg.psql("SELECT value FROM tessera_ingest_meta WHERE key = 'schema_version'"),
        "1"
    );

    // Instances opening at once create the schema once; threads claiming at once (each its
    // own connection) get each scene exactly once.
    pg.psql("DROP TABLE tessera_ingest_scenes, tessera_ingest_meta");
    let url = pg.url();
    let barrier = std::sync::Barrier::new(6);
    let claimed: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (url, barrier) = (&url, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let db = StateLocation::parse(url)
                        .open(Default::default())
                        .expect("open");
                    let names: Vec<(String, Fingerprint)> = (0..60)
                        .map(|j| (format!("scene-{j:03}.tif"), fp(1, 1)))
                        .collect();
                    db.observe_all(&names, 1.0).expect("observe");
                    let owner = Owner {
                        host: format!("host-{i}"),
                        pid: 1,
                    };
                    let mut mine = Vec::new();
                    while let Some(c) = db.claim_next(&owner, 10.0, 3600.0).expect("claim") {
                        db.finish_ok(&c, &owner, 11.0, 0.0, "o").expect("finish");
                        mine.push(c.path);
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    let unique: HashSet<&String> = claimed.iter().collect();
    assert_eq!(
        (claimed.len(), unique.len()),
        (60, 60),
        "each scene claimed once"
    );
    assert_eq!(
        pg.psql(
            "SELECT count(*) FROM tessera_ingest_scenes WHERE status = 'done' AND attempts = 1"
        ),
        "60"
    );

    // The same state through the server's unix socket (a percent-encoded folder as host).
    let socket: String = pg.socket_dir().display().to_string().replace('/', "%2F");
    let by_socket = format!(
        "postgresql://{}@{socket}:{}/{}",
        pg.user,
        pg.port(),
        pg.database
    );
    let db = StateLocation::parse(&by_socket)
        .open(Default::default())
        .expect("open through the socket");
    assert_eq!(db.list().expect("list").len(), 60);
    drop(db);

    // A schema of a newer tessera is refused, naming the database.
    pg.psql("UPDATE tessera_ingest_meta SET value = 99");
    let err = StateLocation::parse(&url)
        .open(Default::default())
        .expect_err("newer schema");
    assert!(
        matches!(err, StateError::Version { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().starts_with(&url), "{err}");
}

// --- the binary: several instances, kills, restarts ---------------------------------------

/// `n` scenes of 64 x 64 pixels (one tile each) in `dir`.
fn scenes(dir: &Path, n: usize) -> Vec<String> {
    std::fs::create_dir_all(dir).expect("mkdir");
    (0..n)
        .map(|i| {
            let name = format!("s{i:02}");
            crop(
                &dir.join(format!("{name}.tif")),
                (i % 7) * 64,
                (i / 7) * 64,
                64,
            );
            name
        })
        .collect()
}

/// Classification with the bundled tiny CLIP: one 64 px tile per small scene.
fn pipeline(dir: &Path) -> String {
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        format!(
            "[input]\nbands = [1, 2, 3]\n[tiling]\nthreads = 1\n[[stage]]\nname = \"landcover\"\n\
             task = \"classify\"\nmodel = \"{}\"\nlabels = [\"forest\", \"water\"]\n",
            root().join("sample_data/models/clip-tiny").display()
        ),
    )
    .expect("write pipeline");
    p.display().to_string()
}

fn spawn_ingest(d: &Path, p: &str, url: &str, extra: &[&str]) -> Child {
    tessera()
        .args([
            "ingest",
            "in",
            "--pipeline",
            p,
            "--out",
            "out",
            "--state",
            url,
        ])
        .args(["--settle", "0", "--json", "--quiet"])
        .args(extra)
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera ingest")
}

/// The state's rows by scene file name: (status, attempts, owner).
fn rows(pg: &PgServer) -> BTreeMap<String, (String, u32, String)> {
    // Empty until the first instance has created the schema.
    if pg
        .psql("SELECT to_regclass('tessera_ingest_scenes')")
        .is_empty()
    {
        return BTreeMap::new();
    }
    pg.psql("SELECT path, status, attempts, coalesce(owner, '') FROM tessera_ingest_scenes")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let name = Path::new(f[0])
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            (
                name,
                (
                    f[1].to_owned(),
                    f[2].parse().expect("attempts"),
                    f[3].to_owned(),
                ),
            )
        })
        .collect()
}

/// Each scene's output folder holds its record and its class raster.
fn assert_outputs(d: &Path, names: &[String]) {
    for n in names {
        let folder = d.join("out").join(n);
        assert!(
            folder.join("record.json").is_file(),
            "{} has its record",
            folder.display()
        );
        let classes = folder.join("landcover/classes.tif");
        let info = Command::new("gdalinfo")
            .arg(&classes)
            .output()
            .expect("gdalinfo runs");
        assert!(
            info.status.success(),
            "{} opens with GDAL",
            classes.display()
        );
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_instances_process_thirty_scenes_exactly_once() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let names = scenes(&d.join("in"), 30);
    let p = pipeline(d);
    let children: Vec<Child> = (0..3)
        .map(|_| spawn_ingest(d, &p, &pg.url(), &[]))
        .collect();
    let pids: HashSet<u32> = children.iter().map(Child::id).collect();
    let mut processed = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(report["state"], pg.url(), "{report}");
        for s in report["processed"].as_array().expect("processed") {
            processed.push(s["name"].as_str().expect("name").to_owned());
        }
    }
    processed.sort();
    assert_eq!(processed, names, "every scene processed, none twice");
    let rows = rows(&pg);
    assert_eq!(rows.keys().cloned().collect::<Vec<_>>(), names);
    for (name, (status, attempts, owner)) in &rows {
        assert_eq!((status.as_str(), *attempts), ("done", 1), "{name}");
        let pid: u32 = owner
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("pid");
        assert!(
            pids.contains(&pid),
            "{name} owned by one of the instances: {owner}"
        );
    }
    assert_outputs(d, &names);

    // --status reads the same state.
    let r = run(
        d,
        &[
            "ingest",
            "--status",
            "--out",
            "out",
            "--state",
            &pg.url(),
            "--json",
        ],
    );
    let status = r.success().json();
    assert_eq!(status["counts"]["done"], 30, "{status}");
    assert_eq!(status["state"], pg.url());
    let r = run(
        d,
        &["ingest", "--status", "--out", "out", "--state", &pg.url()],
    );
    assert!(
        r.success()
            .stdout()
            .starts_with(&format!("{}: 30 done\n", pg.url())),
        "{}",
        r.context()
    );
    // A later pass finds nothing new.
    let again = spawn_ingest(d, &p, &pg.url(), &[])
        .wait_with_output()
        .expect("wait");
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(
        report["processed"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
}

#[test]
fn a_killed_instance_loses_its_lease_and_another_finishes_its_scene() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).expect("mkdir");
    // The first scene in order (by path), larger: 16 tiles, so it is killed mid-scene.
    crop(&d.join("in/a_big.tif"), 0, 0, 256);
    crop(&d.join("in/b_small.tif"), 256, 256, 64);
    let p = pipeline(d);
    let mut a = spawn_ingest(d, &p, &pg.url(), &["--lease", "2"]);
    let a_owner = format!(":{}", a.id());
    wait_until(
        "the first instance's claim",
        Duration::from_secs(60),
        || {
            rows(&pg)
                .get("a_big")
                .is_some_and(|(s, _, o)| s == "running" && o.ends_with(&a_owner))
        },
    );
    a.kill().expect("SIGKILL");
    a.wait().expect("reap");
    let row = rows(&pg)["a_big"].clone();
    assert_eq!(
        (row.0.as_str(), row.1),
        ("running", 1),
        "killed mid-scene: {row:?}"
    );
    assert!(
        !d.join("out/a_big").exists(),
        "no output of the killed attempt"
    );

    // Within the lease the claim holds, even for an instance on the same host: another
    // instance takes only the other scene.
    let b = spawn_ingest(d, &p, &pg.url(), &["--lease", "3600"])
        .wait_with_output()
        .expect("b");
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let rows_b = rows(&pg);
    assert_eq!(rows_b["a_big"].0, "running", "{rows_b:?}");
    assert!(rows_b["a_big"].2.ends_with(&a_owner), "{rows_b:?}");
    assert_eq!(rows_b["b_small"].0, "done", "{rows_b:?}");

    // Once the claim is older than the lease, the next instance takes it over and finishes it.
    let claimed_at: f64 = pg
        .psql("SELECT claimed_at FROM tessera_ingest_scenes WHERE path LIKE '%a_big.tif'")
        .parse()
        .expect("claimed_at");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    while now() - claimed_at <= 2.5 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = spawn_ingest(d, &p, &pg.url(), &["--lease", "2"]);
    let c_pid = c.id();
    let out = c.wait_with_output().expect("c");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = report["processed"]
        .as_array()
        .expect("processed")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["a_big"], "{report}");
    let (status, attempts, owner) = rows(&pg)["a_big"].clone();
    assert_eq!((status.as_str(), attempts), ("done", 2));
    assert!(owner.ends_with(&format!(":{c_pid}")), "{owner}");
    assert_outputs(d, &["a_big".into(), "b_small".into()]);
}

#[test]
fn a_database_restart_mid_run_loses_nothing() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let names = scenes(&d.join("in"), 5);
    let p = pipeline(d);
    let a = spawn_ingest(d, &p, &pg.url(), &["--lease", "2"]);
    let done = || rows(&pg).values().filter(|(s, _, _)| s == "done").count();
    wait_until("two scenes done", Duration::from_secs(120), || done() >= 2);
    pg.restart();
    let out = a.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the pass fails: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with(&format!("tessera: error: {}: ", pg.url())),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Scenes recorded before the restart are still done.
    let before = rows(&pg);
    let done_before = before.values().filter(|(s, _, _)| s == "done").count();
    assert!(done_before >= 2, "{before:?}");

    // The next pass (after the lease of a claim the failed pass left) completes the rest.
    std::thread::sleep(Duration::from_millis(2500));
    let out = spawn_ingest(d, &p, &pg.url(), &["--lease", "2"])
        .wait_with_output()
        .expect("b");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = rows(&pg);
    assert_eq!(after.keys().cloned().collect::<Vec<_>>(), names);
    for (name, (status, attempts, _)) in &after {
        assert_eq!(status, "done", "{name}: {after:?}");
        if before[name].0 == "done" {
            assert_eq!(*attempts, before[name].1, "{name} was not processed again");
        }
        assert!(*attempts <= 2, "{name}: {after:?}");
    }
    assert_outputs(d, &names);
}

#[test]
fn an_unreachable_database_is_one_line_naming_the_url() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    scenes(&d.join("in"), 1);
    let p = pipeline(d);
    let port = free_port();
    let url = format!("postgresql://ingest:hunter2@127.0.0.1:{port}/tessera");
    let shown = format!("postgresql://ingest@127.0.0.1:{port}/tessera");
    let args = [
        "ingest",
        "in",
        "--pipeline",
        &p,
        "--out",
        "out",
        "--state",
        &url,
        "--settle",
        "0",
    ];
    let r = run(d, &args);
    r.fails_with(&[&shown, "cannot open the state database", "refused"]);
    assert!(!r.stderr().contains("hunter2"), "{}", r.context());
    assert!(!d.join("out").exists(), "nothing written{}", r.context());
    run(d, &["ingest", "--status", "--out", "out", "--state", &url])
        .fails_with(&[&shown, "refused"]);
    // postgres:// is a PostgreSQL URL too, not a file name.
    let other = format!("postgres://127.0.0.1:{port}/tessera");
    run(
        d,
        &["ingest", "--status", "--out", "out", "--state", &other],
    )
    .fails_with(&[&other]);
    assert!(!d.join("postgres:").exists());
    run(d, &[&args[..], &["--shared-fs"]].concat()).fails_with(&["--shared-fs"]);
}

#[test]
fn the_throwaway_server_answers_and_is_stopped_on_drop() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    assert_eq!(pg.psql("SELECT 1 + 1"), "2");
    assert_eq!(pg.psql("SELECT current_database()"), "tessera");
    let port = pg.port();
    let socket = pg.socket_dir().to_path_buf();
    assert!(socket.join(format!(".s.PGSQL.{port}")).exists());
    pg.restart();
    assert_eq!(pg.psql("SELECT 2 + 2"), "4");
    drop(pg);
    assert!(!socket.exists(), "the server's folder is removed");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on the port any more"
    );
}
