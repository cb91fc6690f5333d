//! The state of `tessera ingest` / `tessera watch` behind [`StateStore`], chosen by
//! [`StateLocation`] (`--state`): this file's SQLite [`StateDb`] (the default, one host), or
//! PostgreSQL ([`super::state_postgres`], several hosts).
//!
//! The SQLite state database: one file that records every
//! scene a scan has seen, whether it is waiting, being processed, done, waiting to be retried or
//! failed for good, and who processed it, when, for how long and with what result.
//!
//! Several instances (threads, processes, or processes on several hosts sharing a filesystem)
//! may work on the same database at once. Every change is one SQLite transaction, and a scene is
//! handed out by [`StateDb::claim_next`] inside a `BEGIN IMMEDIATE` transaction, so two
//! instances never claim the same scene. Every transaction is committed before the call returns,
//! so a process killed at any point (SIGKILL included) loses nothing: its claims stay `running`
//! under its name and are taken over by the next instance that finds them stale (the owner's
//! process is gone on this host, or its lease ran out on another host).
//!
//! Times are `f64` seconds since the Unix epoch, passed in by the caller.
//!
//! The journal is SQLite's write-ahead log ([`JournalMode::Wal`]), which needs every process
//! that opens the database to run on the same host. Instances on several hosts sharing a network
//! filesystem must all open it with [`JournalMode::Delete`] (and the filesystem must implement
//! POSIX advisory locks faithfully).

use super::{host_name, pid_alive};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior,
};
use serde::Serialize;
use thiserror::Error;

/// Version of the schema written by this build, stored in SQLite's `user_version`.
pub const SCHEMA_VERSION: i64 = 1;

/// SQLite `application_id` of a tessera state database ("TSST").
const APPLICATION_ID: i64 = 0x5453_5354;

/// How long a call waits for another instance's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema of version [`SCHEMA_VERSION`].
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS scenes (
    path            TEXT PRIMARY KEY NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'running', 'done', 'retry', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    queued_at       REAL NOT NULL,
    owner           TEXT,
    claimed_at      REAL,
    finished_at     REAL,
    seconds         REAL,
    error           TEXT,
    next_attempt_at REAL,
    output          TEXT
);
CREATE INDEX IF NOT EXISTS scenes_by_status ON scenes (status, queued_at, path);
";

/// Columns read into a [`SceneRow`], in its field order.
pub(super) const ROW_COLUMNS: &str = "path, status, attempts, size, mtime_ns, owner, claimed_at, \
                           finished_at, seconds, error, next_attempt_at, output";

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("{path}: cannot open the state database: {reason}")]
    Open { path: String, reason: String },
    #[error("{path}: state database error: {reason}")]
    Sql { path: String, reason: String },
    #[error("{path}: not a tessera state database")]
    NotStateDb { path: String },
    #[error(
        "{path}: state database has schema version {found}, this tessera supports up to \
         {supported} (upgrade tessera)"
    )]
    Version {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("{path}: corrupt state database: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{scene}: claim lost: no longer running under {owner} attempt {attempt}")]
    ClaimLost {
        scene: String,
        owner: String,
        attempt: u32,
    },
    #[error("{scene}: {reason}")]
    Value { scene: String, reason: String },
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// What identifies one version of a scene file: a changed size or modification time means the
/// scene is new again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Fingerprint {
    pub size: u64,
    pub mtime_ns: i64,
}

/// Where a scene stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SceneStatus {
    /// Seen, waiting to be claimed.
    Pending,
    /// Claimed by an instance that is processing it.
    Running,
    /// Processed successfully.
    Done,
    /// Failed with a transient error; claimable again from `next_attempt_at`.
    Retry,
    /// Failed for good; not retried until the file changes.
    Failed,
}

impl SceneStatus {
    /// The name stored in the database and shown by `--status`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SceneStatus::Pending => "pending",
            SceneStatus::Running => "running",
            SceneStatus::Done => "done",
            SceneStatus::Retry => "retry",
            SceneStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for SceneStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SceneStatus {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<SceneStatus, String> {
        match s {
            "pending" => Ok(SceneStatus::Pending),
            "running" => Ok(SceneStatus::Running),
            "done" => Ok(SceneStatus::Done),
            "retry" => Ok(SceneStatus::Retry),
            "failed" => Ok(SceneStatus::Failed),
            other => Err(format!("unknown scene status '{other}'")),
        }
    }
}

/// The instance holding a claim: a process on a host. Stored as `host:pid`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
}

impl Owner {
    /// This process on this host.
    #[must_use]
    pub fn current() -> Owner {
        Owner {
            host: host_name(),
            pid: std::process::id(),
        }
    }

    /// Whether this owner is a process on this host that no longer exists.
    ///
    /// A pid reused by an unrelated process since the owner died reads as alive, so such a claim
    /// is held until that process exits too.
    #[must_use]
    pub fn is_dead_local_process(&self) -> bool {
        self.host == host_name() && !pid_alive(self.pid)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.pid)
    }
}

impl FromStr for Owner {
    type Err = String;

    /// Parse `host:pid` (the host may itself contain colons; the pid follows the last one).
    fn from_str(s: &str) -> std::result::Result<Owner, String> {
        let (host, pid) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("owner '{s}' is not host:pid"))?;
        let pid = pid
            .parse::<u32>()
            .map_err(|_| format!("owner '{s}' has no valid pid"))?;
        if host.is_empty() {
            return Err(format!("owner '{s}' has no host"));
        }
        Ok(Owner {
            host: host.to_owned(),
            pid,
        })
    }
}

/// One scene as stored, for `tessera ingest --status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SceneRow {
    pub path: String,
    pub status: SceneStatus,
    /// Claims so far of this version of the file (a claim given back does not count).
    pub attempts: u32,
    pub size: u64,
    pub mtime_ns: i64,
    /// `host:pid` of the latest claim (kept after it finishes).
    pub owner: Option<String>,
    pub claimed_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// Processing time of the latest finished attempt.
    pub seconds: Option<f64>,
    /// Error of the latest failed attempt (cleared when one succeeds or the file changes).
    pub error: Option<String>,
    /// When a `retry` scene becomes claimable.
    pub next_attempt_at: Option<f64>,
    /// What the latest successful attempt produced.
    pub output: Option<String>,
}

/// A scene handed to one instance by [`StateDb::claim_next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub path: String,
    /// The fingerprint recorded when the scene was claimed. The caller should check that the
    /// file still has it, and [`StateDb::release`] the claim if not.
    pub fingerprint: Fingerprint,
    /// Which attempt this is, from 1. Claims taken over from dead instances count too, so a
    /// caller may give up (with a permanent [`StateDb::finish_err`]) on a scene that keeps
    /// killing its process.
    pub attempt: u32,
}

/// How transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; a transient failure of the last one is permanent.
    pub max_attempts: u32,
    /// Delay before the second attempt; it doubles for each later one.
    pub backoff_seconds: f64,
}

impl RetryPolicy {
    /// Seconds to wait after failed attempt `attempt` (from 1): `backoff * 2^(attempt-1)`.
    #[must_use]
    pub fn delay_after(&self, attempt: u32) -> f64 {
        let exponent = i32::try_from(attempt.saturating_sub(1))
            .unwrap_or(i32::MAX)
            .min(1023);
        self.backoff_seconds * 2f64.powi(exponent)
    }

    /// What failed attempt `attempt` at time `now` becomes: `retry` at
    /// `now + delay_after(attempt)` when the failure is `transient` and attempts are left,
    /// else `failed` (no next attempt). Every state store records failures by this rule.
    #[must_use]
    pub fn after_failure(
        &self,
        attempt: u32,
        transient: bool,
        now: f64,
    ) -> (SceneStatus, Option<f64>) {
        if transient && attempt < self.max_attempts {
            (SceneStatus::Retry, Some(now + self.delay_after(attempt)))
        } else {
            (SceneStatus::Failed, None)
        }
    }
}

/// SQLite journal mode, fixed for a database file by whoever opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournalMode {
    /// Write-ahead log: readers never block the writer. All instances on one host.
    #[default]
    Wal,
    /// Rollback journal: for instances on several hosts sharing a network filesystem.
    Delete,
}

impl JournalMode {
    fn pragma_value(self) -> &'static str {
        match self {
            JournalMode::Wal => "wal",
            JournalMode::Delete => "delete",
        }
    }
}

/// Where the ingest state is kept, as given to `--state`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateLocation {
    /// A SQLite file: one host (or hosts sharing a network file system, with
    /// [`JournalMode::Delete`]).
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its URL (`postgresql://` or `postgres://`): instances on
    /// any number of hosts ([`super::state_postgres`]).
    Postgres(String),
}

impl StateLocation {
    /// The location named by `--state`: a `postgresql://` or `postgres://` URL, else a file.
    #[must_use]
    pub fn parse(text: &str) -> StateLocation {
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("postgresql://") || lower.starts_with("postgres://") {
            StateLocation::Postgres(text.to_owned())
        } else {
            StateLocation::Sqlite(PathBuf::from(text))
        }
    }

    /// Whether the state has been created (`--status` refuses a missing SQLite file; a
    /// database is asked).
    #[must_use]
    pub fn exists(&self) -> bool {
        match self {
            StateLocation::Sqlite(path) => path.exists(),
            StateLocation::Postgres(_) => true,
        }
    }

    /// Open (creating it if missing) the state; each thread or process opens its own.
    /// `journal` applies to a SQLite file.
    ///
    /// # Errors
    /// As for [`StateDb::open_with`].
    pub fn open(&self, journal: JournalMode) -> Result<Box<dyn StateStore>> {
        match self {
            StateLocation::Sqlite(path) => Ok(Box::new(StateDb::open_with(path, journal)?)),
            StateLocation::Postgres(url) => {
                Ok(Box::new(super::state_postgres::PgState::open(url)?))
            }
        }
    }
}

impl fmt::Display for StateLocation {
    /// The file, or the database URL without its password: what messages name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateLocation::Sqlite(path) => write!(f, "{}", path.display()),
            StateLocation::Postgres(url) => f.write_str(&super::state_postgres::redact(url)),
        }
    }
}

/// The operations of an ingest state, whatever keeps it. Every call is atomic with respect to
/// every other instance using the same state, and committed before it returns. The SQLite
/// implementation ([`StateDb`]) documents the semantics of each.
pub trait StateStore: Send + fmt::Debug {
    /// What messages name: the file, or the database URL without its password.
    fn location(&self) -> String;

    /// See [`StateDb::observe`].
    ///
    /// # Errors
    /// A database error.
    fn observe(&self, path: &str, fp: Fingerprint, now: f64) -> Result<()> {
        self.observe_all(&[(path.to_owned(), fp)], now)
    }

    /// See [`StateDb::observe_all`]: many files in one transaction.
    ///
    /// # Errors
    /// A database error; nothing is recorded then.
    fn observe_all(&self, files: &[(String, Fingerprint)], now: f64) -> Result<()>;

    /// See [`StateDb::claim_next`]. Stores differ only in which `running` claims are stale:
    /// SQLite also takes over, at once, the claims of dead processes on this host;
    /// PostgreSQL goes by the lease alone.
    ///
    /// # Errors
    /// A database error.
    fn claim_next(&self, owner: &Owner, now: f64, lease_seconds: f64) -> Result<Option<Claim>>;

    /// See [`StateDb::finish_ok`].
    ///
    /// # Errors
    /// [`StateError::ClaimLost`], or a database error.
    fn finish_ok(
        &self,
        claim: &Claim,
        owner: &Owner,
        now: f64,
        seconds: f64,
        output: &str,
    ) -> Result<()>;

    /// See [`StateDb::finish_err`].
    ///
    /// # Errors
    /// [`StateError::ClaimLost`], or a database error.
    #[allow(clippy::too_many_arguments)]
    fn finish_err(
        &self,
        claim: &Claim,
        owner: &Owner,
        now: f64,
        seconds: f64,
        error: &str,
        transient: bool,
        policy: &RetryPolicy,
    ) -> Result<SceneStatus>;

    /// See [`StateDb::release`].
    ///
    /// # Errors
    /// [`StateError::ClaimLost`], or a database error.
    fn release(&self, claim: &Claim, owner: &Owner) -> Result<()>;

    /// See [`StateDb::defer`].
    ///
    /// # Errors
    /// [`StateError::ClaimLost`], or a database error.
    fn defer(&self, claim: &Claim, owner: &Owner, not_before: f64, note: &str) -> Result<()>;

    /// See [`StateDb::renew`].
    ///
    /// # Errors
    /// [`StateError::ClaimLost`], or a database error.
    fn renew(&self, claim: &Claim, owner: &Owner, now: f64) -> Result<()>;

    /// One scene, if known.
    ///
    /// # Errors
    /// A database error.
    fn get(&self, path: &str) -> Result<Option<SceneRow>>;

    /// Every scene, ordered by path.
    ///
    /// # Errors
    /// A database error.
    fn list(&self) -> Result<Vec<SceneRow>>;
}

impl StateStore for StateDb {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn observe_all(&self, files: &[(String, Fingerprint)], now: f64) -> Result<()> {
        StateDb::observe_all(self, files.iter().map(|(p, f)| (p.as_str(), *f)), now)
    }

    fn claim_next(&self, owner: &Owner, now: f64, lease_seconds: f64) -> Result<Option<Claim>> {
        StateDb::claim_next(self, owner, now, lease_seconds)
    }

    fn finish_ok(
        &self,
        claim: &Claim,
        owner: &Owner,
        now: f64,
        seconds: f64,
        output: &str,
    ) -> Result<()> {
        StateDb::finish_ok(self, claim, owner, now, seconds, output)
    }

    fn finish_err(
        &self,
        claim: &Claim,
        owner: &Owner,
        now: f64,
        seconds: f64,
        error: &str,
        transient: bool,
        policy: &RetryPolicy,
    ) -> Result<SceneStatus> {
        StateDb::finish_err(self, claim, owner, now, seconds, error, transient, policy)
    }

    fn release(&self, claim: &Claim, owner: &Owner) -> Result<()> {
        StateDb::release(self, claim, owner)
    }

    fn defer(&self, claim: &Claim, owner: &Owner, not_before: f64, note: &str) -> Result<()> {
        StateDb::defer(self, claim, owner, not_before, note)
    }

    fn renew(&self, claim: &Claim, owner: &Owner, now: f64) -> Result<()> {
        StateDb::renew(self, claim, owner, now)
    }

    fn get(&self, path: &str) -> Result<Option<SceneRow>> {
        StateDb::get(self, path)
    }

    fn list(&self) -> Result<Vec<SceneRow>> {
        StateDb::list(self)
    }
}

/// A connection to the state database. Each thread or process opens its own.
#[derive(Debug)]
pub struct StateDb {
    conn: Connection,
    path: PathBuf,
}

impl StateDb {
    /// Open (creating it and its schema if missing) the state database at `path`, in
    /// write-ahead-log mode.
    ///
    /// # Errors
    /// The file cannot be opened or created, is not a tessera state database, or was written by
    /// a newer tessera.
    pub fn open(path: &Path) -> Result<StateDb> {
        Self::open_with(path, JournalMode::Wal)
    }

    /// As [`StateDb::open`], with the given journal mode.
    ///
    /// # Errors
    /// As for [`StateDb::open`].
    pub fn open_with(path: &Path, journal: JournalMode) -> Result<StateDb> {
        let open_err = |e: &dyn fmt::Display| StateError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_err(&e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| open_err(&e))?;
        let db = StateDb {
            conn,
            path: path.to_owned(),
        };
        db.set_journal_mode(journal)?;
        // FULL: a commit survives power loss too, not only a killed process.
        db.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| db.sql(&e))?;
        db.ensure_schema()?;
        Ok(db)
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, e: &dyn fmt::Display) -> StateError {
        StateError::Sql {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> StateError {
        StateError::Corrupt {
            path: self.path.display().to_string(),
            reason: reason.into(),
        }
    }

    fn set_journal_mode(&self, journal: JournalMode) -> Result<()> {
        let want = journal.pragma_value();
        // Switching the mode needs the database to itself; another instance switching it at the
        // same moment can make this fail without waiting, so try again for a while.
        let started = std::time::Instant::now();
        loop {
            let got = self
                .conn
                .pragma_update_and_check(None, "journal_mode", want, |row| row.get::<_, String>(0));
            match got {
                Ok(mode) if mode.eq_ignore_ascii_case(want) => return Ok(()),
                Ok(mode) => {
                    return Err(self.sql(&format!(
                        "cannot use journal mode {want} (still {mode}); is another instance using \
                         the other mode, or the filesystem unable to?"
                    )))
                }
                Err(e) if is_busy(&e) && started.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(self.sql(&e)),
            }
        }
    }

    fn begin(&self) -> Result<Transaction<'_>> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.sql(&e))
    }

    fn ensure_schema(&self) -> Result<()> {
        let tx = self.begin()?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.sql(&e))?;
        let app_id: i64 = tx
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(|e| self.sql(&e))?;
        if app_id != 0 && app_id != APPLICATION_ID {
            return Err(StateError::NotStateDb {
                path: self.path.display().to_string(),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(StateError::Version {
                path: self.path.display().to_string(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION && app_id == APPLICATION_ID {
            return Ok(());
        }
        let tables: i64 = tx
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(&e))?;
        if tables > 0 {
            // Tables, but not ours: some other SQLite file.
            return Err(StateError::NotStateDb {
                path: self.path.display().to_string(),
            });
        }
        tx.execute_batch(SCHEMA).map_err(|e| self.sql(&e))?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(|e| self.sql(&e))?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| self.sql(&e))?;
        tx.commit().map_err(|e| self.sql(&e))
    }

    /// A scan saw `path` with fingerprint `fp` (the caller reports only files that are
    /// stable). A new path becomes `pending`. A known path whose fingerprint changed becomes
    /// `pending` again with no attempts and no error or results, whatever its status, except
    /// `running`: a running claim is left alone, its finish records the fingerprint it
    /// processed, and the next observation after that resets it. An unchanged path is left as
    /// it is.
    ///
    /// # Errors
    /// A database error, or a size beyond SQLite's integers.
    pub fn observe(&self, path: &str, fp: Fingerprint, now: f64) -> Result<()> {
        self.observe_all([(path, fp)], now)
    }

    /// [`StateDb::observe`] for many files in one transaction (one disk sync for a whole scan).
    ///
    /// # Errors
    /// As for [`StateDb::observe`]; nothing is recorded then.
    pub fn observe_all<'a, I>(&self, files: I, now: f64) -> Result<()>
    where
        I: IntoIterator<Item = (&'a str, Fingerprint)>,
    {
        let tx = self.begin()?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO scenes (path, status, attempts, size, mtime_ns, queued_at)
                     VALUES (?1, 'pending', 0, ?2, ?3, ?4)
                     ON CONFLICT (path) DO UPDATE SET
                         status = 'pending', attempts = 0,
                         size = excluded.size, mtime_ns = excluded.mtime_ns,
                         queued_at = excluded.queued_at,
                         owner = NULL, claimed_at = NULL, finished_at = NULL, seconds = NULL,
                         error = NULL, next_attempt_at = NULL, output = NULL
                     WHERE scenes.status <> 'running'
                       AND (scenes.size <> excluded.size OR scenes.mtime_ns <> excluded.mtime_ns)",
                )
                .map_err(|e| self.sql(&e))?;
            for (path, fp) in files {
                let size = size_to_sql(path, fp.size)?;
                stmt.execute(params![path, size, fp.mtime_ns, now])
                    .map_err(|e| self.sql(&e))?;
            }
        }
        tx.commit().map_err(|e| self.sql(&e))
    }

    /// Claim one eligible scene, the longest queued first, atomically with respect to every
    /// other instance: a `pending` scene; a `retry` scene whose `next_attempt_at` has come; or a
    /// `running` scene whose claim is stale — its owner is a process on this host that no longer
    /// exists, or, for an owner on another host, it was claimed more than `lease_seconds` ago
    /// (see [`StateDb::renew`]). The scene becomes `running` under `owner`, with one more
    /// attempt. `None` when no scene is eligible.
    ///
    /// A live process on this host keeps its claims however long it takes.
    ///
    /// # Errors
    /// A database error.
    pub fn claim_next(&self, owner: &Owner, now: f64, lease_seconds: f64) -> Result<Option<Claim>> {
        let tx = self.begin()?;
        let here = host_name();
        let mut liveness: HashMap<String, bool> = HashMap::new();
        let chosen = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT path, status, owner, claimed_at, size, mtime_ns, attempts
                     FROM scenes
                     WHERE status = 'pending'
                        OR (status = 'retry' AND coalesce(next_attempt_at, 0) <= ?1)
                        OR status = 'running'
                     ORDER BY queued_at, path",
                )
                .map_err(|e| self.sql(&e))?;
            let mut rows = stmt.query(params![now]).map_err(|e| self.sql(&e))?;
            let mut chosen = None;
            while let Some(row) = rows.next().map_err(|e| self.sql(&e))? {
                let path: String = row.get(0).map_err(|e| self.sql(&e))?;
                let status: String = row.get(1).map_err(|e| self.sql(&e))?;
                let eligible = if status == "running" {
                    let prev: Option<String> = row.get(2).map_err(|e| self.sql(&e))?;
                    let claimed_at: Option<f64> = row.get(3).map_err(|e| self.sql(&e))?;
                    let prev_owner = prev.as_deref().and_then(|s| s.parse::<Owner>().ok());
                    match prev_owner {
                        Some(o) if o.host == here => *liveness
                            .entry(o.to_string())
                            .or_insert_with(|| !pid_alive(o.pid)),
                        // Another host (or an owner we cannot read): only the lease tells.
                        _ => claimed_at.map_or(true, |t| now - t > lease_seconds),
                    }
                } else {
                    true
                };
                if eligible {
                    let size: i64 = row.get(4).map_err(|e| self.sql(&e))?;
                    let mtime_ns: i64 = row.get(5).map_err(|e| self.sql(&e))?;
                    let attempts: i64 = row.get(6).map_err(|e| self.sql(&e))?;
                    let prev: Option<String> = row.get(2).map_err(|e| self.sql(&e))?;
                    chosen = Some((path, status, prev, size, mtime_ns, attempts));
                    break;
                }
            }
            chosen
        };
        let Some((path, status, prev_owner, size, mtime_ns, attempts)) = chosen else {
            return Ok(None);
        };
        let size = u64::try_from(size).map_err(|_| self.corrupt(format!("{path}: size {size}")))?;
        let attempt = u32::try_from(attempts)
            .ok()
            .and_then(|a| a.checked_add(1))
            .ok_or_else(|| self.corrupt(format!("{path}: attempts {attempts}")))?;
        // A claim taken over from a dead instance says so until this attempt finishes.
        let note = (status == "running").then(|| {
            format!(
                "attempt {} by {} was interrupted",
                attempt - 1,
                prev_owner.as_deref().unwrap_or("an unknown instance")
            )
        });
        tx.execute(
            "UPDATE scenes SET status = 'running', owner = ?2, claimed_at = ?3, attempts = ?4,
                 next_attempt_at = NULL, error = coalesce(?5, error)
             WHERE path = ?1",
            params![path, owner.to_string(), now, attempt, note],
        )
        .map_err(|e| self.sql(&e))?;
        tx.commit().map_err(|e| self.sql(&e))?;
        Ok(Some(Claim {
            path,
            fingerprint: Fingerprint { size, mtime_ns },
            attempt,
        }))
    }

    /// Update `claim`'s scene, provided it is still running under `owner` at this attempt;
    /// `set` is the SQL `SET` list, whose parameters start at `?4`.
    fn update_claimed(
        &self,
        claim: &Claim,
        owner: &Owner,
        set: &str,
        extra: &[&dyn rusqlite::ToSql],
    ) -> Result<()> {
        let owner_s = owner.to_string();
        let sql = format!(
            "UPDATE scenes SET {set}
             WHERE path = ?1 AND status = 'running' AND owner = ?2 AND attempts = ?3"
        );
        let mut all: Vec<&dyn rusqlite::ToSql> = vec![&claim.path, &owner_s, &claim.attempt];
        all.extend_from_slice(extra);
        let tx = self.begin()?;
        let n = tx.execute(&sql, all.as_slice()).map_err(|e| self.sql(&e))?;
        if n != 1 {
            return Err(StateError::ClaimLost {
                scene: claim.path.clone(),
                owner: owner_s,
                attempt: claim.attempt,
            });
        }
        tx.commit().map_err(|e| self.sql(&e))
    }

    /// Record that `claim` succeeded after `seconds`, producing `output`. The scene keeps the
    /// fingerprint it was claimed with, so a file changed meanwhile is queued again by the next
    /// observation.
    ///
    /// # Errors
    /// [`StateError::ClaimLost`] when the scene is no longer running under `owner` at this
    /// attempt (it was taken over as stale); a database error.
    pub fn finish_ok(
        &self,
        claim: &Claim,
        owner: &Owner,
        now: f64,
        seconds: f64,
        output: &str,
    ) -> Result<()> {
        let size = size_to_sql(&claim.path, claim.fingerprint.size)?;
        self.update_claimed(
            claim,
            owner,
            "status = 'done', finished_at = ?4, seconds = ?5, output = ?6, error = NULL,
             next_attempt_at = NULL, size = ?7, mtime_ns = ?8",
            &[&now, &seconds, &output, &size, &claim.fingerprint.mtime_ns],
        )
    }

    /// Record that `claim` failed after `seconds` with `error`. A `transient` failure of an
    /// attempt below `policy.max_attempts` becomes `retry`, claimable again after
    /// [`RetryPolicy::delay_after`]; any other failure is `failed`, not retried until the file
    /// changes. Returns the new status.
    ///
    /// # Errors
    /// As for [`StateDb::finish_ok`].
    #[allow(clippy::too_many_arguments)]
    pub fn finish_err(
        &self,
        claim: &Claim,
        owner: &Owner,
        now: f64,
        seconds: f64,
        error: &str,
        transient: bool,
        policy: &RetryPolicy,
    ) -> Result<SceneStatus> {
        let size = size_to_sql(&claim.path, claim.fingerprint.size)?;
        let (status, next) = policy.after_failure(claim.attempt, transient, now);
        self.update_claimed(
            claim,
            owner,
            "status = ?4, finished_at = ?5, seconds = ?6, error = ?7, next_attempt_at = ?8,
             output = NULL, size = ?9, mtime_ns = ?10",
            &[
                &status.as_str(),
                &now,
                &seconds,
                &error,
                &next,
                &size,
                &claim.fingerprint.mtime_ns,
            ],
        )?;
        Ok(status)
    }

    /// Give `claim` back untouched (say the file changed since it was claimed): the scene is
    /// `pending` again and this attempt does not count.
    ///
    /// # Errors
    /// As for [`StateDb::finish_ok`].
    pub fn release(&self, claim: &Claim, owner: &Owner) -> Result<()> {
        self.update_claimed(
            claim,
            owner,
            "status = 'pending', attempts = max(attempts - 1, 0), owner = NULL, claimed_at = NULL",
            &[],
        )
    }

    /// Put `claim` back without using an attempt because its file changed while it was
    /// processed (still being written): not eligible before `not_before`, and the next scan that
    /// sees the new size or time queues it afresh. Not a failure: the file was not what was
    /// observed.
    ///
    /// # Errors
    /// As for [`StateDb::finish_ok`].
    pub fn defer(&self, claim: &Claim, owner: &Owner, not_before: f64, note: &str) -> Result<()> {
        self.update_claimed(
            claim,
            owner,
            "status = 'retry', attempts = max(attempts - 1, 0), owner = NULL, claimed_at = NULL,
             next_attempt_at = ?4, error = ?5",
            &[&not_before, &note],
        )
    }

    /// Extend `claim`'s lease: it counts as claimed at `now`. Instances on other hosts take a
    /// claim over once it is older than their lease, so a long job renews well within it.
    ///
    /// # Errors
    /// As for [`StateDb::finish_ok`].
    pub fn renew(&self, claim: &Claim, owner: &Owner, now: f64) -> Result<()> {
        self.update_claimed(claim, owner, "claimed_at = ?4", &[&now])
    }

    /// One scene, if known.
    ///
    /// # Errors
    /// A database error.
    pub fn get(&self, path: &str) -> Result<Option<SceneRow>> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM scenes WHERE path = ?1");
        let raw = self
            .conn
            .query_row(&sql, params![path], RawRow::read)
            .optional()
            .map_err(|e| self.sql(&e))?;
        raw.map(|r| self.row(r)).transpose()
    }

    /// Every scene, ordered by path.
    ///
    /// # Errors
    /// A database error.
    pub fn list(&self) -> Result<Vec<SceneRow>> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM scenes ORDER BY path");
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.sql(&e))?;
        let raws = stmt
            .query_map([], RawRow::read)
            .map_err(|e| self.sql(&e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql(&e))?;
        raws.into_iter().map(|r| self.row(r)).collect()
    }

    fn row(&self, r: RawRow) -> Result<SceneRow> {
        checked_row(&self.path.display().to_string(), r)
    }
}

/// A stored row checked into a [`SceneRow`]; `location` names the state in errors.
pub(super) fn checked_row(location: &str, r: RawRow) -> Result<SceneRow> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: location.to_owned(),
        reason,
    };
    let status = r
        .status
        .parse::<SceneStatus>()
        .map_err(|e| corrupt(format!("{}: {e}", r.path)))?;
    let attempts = u32::try_from(r.attempts)
        .map_err(|_| corrupt(format!("{}: attempts {}", r.path, r.attempts)))?;
    let size =
        u64::try_from(r.size).map_err(|_| corrupt(format!("{}: size {}", r.path, r.size)))?;
    Ok(SceneRow {
        path: r.path,
        status,
        attempts,
        size,
        mtime_ns: r.mtime_ns,
        owner: r.owner,
        claimed_at: r.claimed_at,
        finished_at: r.finished_at,
        seconds: r.seconds,
        error: r.error,
        next_attempt_at: r.next_attempt_at,
        output: r.output,
    })
}

/// A row as the database returns it, checked by [`checked_row`].
pub(super) struct RawRow {
    pub(super) path: String,
    pub(super) status: String,
    pub(super) attempts: i64,
    pub(super) size: i64,
    pub(super) mtime_ns: i64,
    pub(super) owner: Option<String>,
    pub(super) claimed_at: Option<f64>,
    pub(super) finished_at: Option<f64>,
    pub(super) seconds: Option<f64>,
    pub(super) error: Option<String>,
    pub(super) next_attempt_at: Option<f64>,
    pub(super) output: Option<String>,
}

impl RawRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            path: row.get(0)?,
            status: row.get(1)?,
            attempts: row.get(2)?,
            size: row.get(3)?,
            mtime_ns: row.get(4)?,
            owner: row.get(5)?,
            claimed_at: row.get(6)?,
            finished_at: row.get(7)?,
            seconds: row.get(8)?,
            error: row.get(9)?,
            next_attempt_at: row.get(10)?,
            output: row.get(11)?,
        })
    }
}

pub(super) fn size_to_sql(path: &str, size: u64) -> Result<i64> {
    i64::try_from(size).map_err(|_| StateError::Value {
        scene: path.to_owned(),
        reason: format!("size {size} is too large to record"),
    })
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn fp(size: u64, mtime_ns: i64) -> Fingerprint {
        Fingerprint { size, mtime_ns }
    }

    fn temp_db() -> (tempfile::TempDir, StateDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).unwrap();
        (dir, db)
    }

    fn me() -> Owner {
        Owner::current()
    }

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff_seconds: 10.0,
    };

    fn status(db: &StateDb, path: &str) -> SceneStatus {
        db.get(path).unwrap().unwrap().status
    }

    /// A pid that existed a moment ago and exists no more.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn owner_round_trips_through_its_string() {
        let o = Owner {
            host: "node-7.example".into(),
            pid: 4242,
        };
        assert_eq!(o.to_string(), "node-7.example:4242");
        assert_eq!("node-7.example:4242".parse::<Owner>().unwrap(), o);
        assert_eq!("fe80::1:17".parse::<Owner>().unwrap().pid, 17);
        assert!("nopid".parse::<Owner>().is_err());
        assert!("host:x".parse::<Owner>().is_err());
        assert!(":12".parse::<Owner>().is_err());
        let cur = Owner::current();
        assert_eq!(cur.pid, std::process::id());
        assert!(!cur.host.is_empty());
        assert!(!cur.is_dead_local_process());
    }

    #[test]
    fn reopening_keeps_rows_and_rejects_foreign_or_newer_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = StateDb::open(&path).unwrap();
            db.observe("a.tif", fp(1, 1), 0.0).unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.list().unwrap().len(), 1);
        db.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(db);
        let err = StateDb::open(&path).unwrap_err();
        assert!(
            matches!(err, StateError::Version { found: 99, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("state.db"));

        let other = dir.path().join("other.db");
        let c = Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE t (x INTEGER);").unwrap();
        drop(c);
        let err = StateDb::open(&other).unwrap_err();
        assert!(matches!(err, StateError::NotStateDb { .. }), "{err}");

        let err = StateDb::open(&dir.path().join("missing/dir/state.db")).unwrap_err();
        assert!(matches!(err, StateError::Open { .. }), "{err}");
        assert!(err.to_string().contains("missing/dir/state.db"));
    }

    #[test]
    fn observe_new_changed_and_unchanged() {
        let (_dir, db) = temp_db();
        db.observe("a.tif", fp(10, 100), 1.0).unwrap();
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!(row.status, SceneStatus::Pending);
        assert_eq!((row.attempts, row.size, row.mtime_ns), (0, 10, 100));

        // Unchanged: nothing moves, not even once it is done.
        let c = db.claim_next(&me(), 2.0, 60.0).unwrap().unwrap();
        db.finish_ok(&c, &me(), 3.0, 1.0, "out/a.gpkg").unwrap();
        db.observe("a.tif", fp(10, 100), 4.0).unwrap();
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!(row.status, SceneStatus::Done);
        assert_eq!(row.attempts, 1);
        assert_eq!(row.output.as_deref(), Some("out/a.gpkg"));
        assert_eq!(row.finished_at, Some(3.0));
        assert_eq!(row.seconds, Some(1.0));
        assert_eq!(row.owner, Some(me().to_string()));

        // Changed: a done scene is pending again, from scratch.
        db.observe("a.tif", fp(11, 100), 5.0).unwrap();
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!(row.status, SceneStatus::Pending);
        assert_eq!((row.attempts, row.size, row.mtime_ns), (0, 11, 100));
        assert_eq!(row.output, None);
        assert_eq!(row.error, None);
        assert_eq!(row.finished_at, None);

        // A changed mtime alone counts too.
        let c = db.claim_next(&me(), 6.0, 60.0).unwrap().unwrap();
        assert_eq!(c.fingerprint, fp(11, 100));
        db.finish_ok(&c, &me(), 7.0, 1.0, "o").unwrap();
        db.observe("a.tif", fp(11, 101), 8.0).unwrap();
        assert_eq!(status(&db, "a.tif"), SceneStatus::Pending);
    }

    #[test]
    fn observe_leaves_a_running_claim_alone_then_resets_after_it_finishes() {
        let (_dir, db) = temp_db();
        db.observe("a.tif", fp(10, 100), 1.0).unwrap();
        let c = db.claim_next(&me(), 2.0, 60.0).unwrap().unwrap();
        db.observe("a.tif", fp(20, 200), 3.0).unwrap();
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!(row.status, SceneStatus::Running);
        assert_eq!((row.size, row.mtime_ns, row.attempts), (10, 100, 1));

        db.finish_ok(&c, &me(), 4.0, 2.0, "o").unwrap();
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!(row.status, SceneStatus::Done);
        assert_eq!((row.size, row.mtime_ns), (10, 100));

        db.observe("a.tif", fp(20, 200), 5.0).unwrap();
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!(row.status, SceneStatus::Pending);
        assert_eq!((row.size, row.mtime_ns, row.attempts), (20, 200, 0));
    }

    #[test]
    fn observe_all_records_a_whole_scan() {
        let (_dir, db) = temp_db();
        let names: Vec<String> = (0..20).map(|i| format!("s{i:02}.tif")).collect();
        db.observe_all(names.iter().map(|n| (n.as_str(), fp(1, 1))), 1.0)
            .unwrap();
        let rows = db.list().unwrap();
        assert_eq!(rows.len(), 20);
        assert!(rows.iter().all(|r| r.status == SceneStatus::Pending));
        let listed: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(listed, sorted);
    }

    #[test]
    fn claims_go_oldest_first_and_only_to_eligible_scenes() {
        let (_dir, db) = temp_db();
        db.observe("c.tif", fp(1, 1), 1.0).unwrap();
        db.observe("a.tif", fp(1, 1), 2.0).unwrap();
        db.observe("b.tif", fp(1, 1), 2.0).unwrap();
        let order: Vec<String> = (0..3)
            .map(|_| db.claim_next(&me(), 10.0, 60.0).unwrap().unwrap().path)
            .collect();
        assert_eq!(order, ["c.tif", "a.tif", "b.tif"]);
        // All running under a live owner: nothing left.
        assert_eq!(db.claim_next(&me(), 11.0, 60.0).unwrap(), None);
        let rows = db.list().unwrap();
        assert!(rows
            .iter()
            .all(|r| r.status == SceneStatus::Running && r.attempts == 1));
        assert!(rows.iter().all(|r| r.claimed_at == Some(10.0)));
    }

    #[test]
    fn done_and_failed_scenes_are_not_claimed() {
        let (_dir, db) = temp_db();
        db.observe("a.tif", fp(1, 1), 1.0).unwrap();
        db.observe("b.tif", fp(1, 1), 1.0).unwrap();
        let a = db.claim_next(&me(), 2.0, 60.0).unwrap().unwrap();
        let b = db.claim_next(&me(), 2.0, 60.0).unwrap().unwrap();
        db.finish_ok(&a, &me(), 3.0, 1.0, "o").unwrap();
        let st = db
            .finish_err(&b, &me(), 3.0, 1.0, "bad file", false, &POLICY)
            .unwrap();
        assert_eq!(st, SceneStatus::Failed);
        assert_eq!(db.claim_next(&me(), 1e9, 60.0).unwrap(), None);
    }

    #[test]
    fn transient_failures_back_off_then_fail_for_good() {
        let (_dir, db) = temp_db();
        db.observe("a.tif", fp(1, 1), 0.0).unwrap();

        let c = db.claim_next(&me(), 100.0, 60.0).unwrap().unwrap();
        assert_eq!(c.attempt, 1);
        let st = db
            .finish_err(&c, &me(), 101.0, 1.0, "timeout", true, &POLICY)
            .unwrap();
        assert_eq!(st, SceneStatus::Retry);
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!(row.next_attempt_at, Some(111.0));
        assert_eq!(row.error.as_deref(), Some("timeout"));
        assert_eq!(db.claim_next(&me(), 110.9, 60.0).unwrap(), None);

        let c = db.claim_next(&me(), 111.0, 60.0).unwrap().unwrap();
        assert_eq!(c.attempt, 2);
        let st = db
            .finish_err(&c, &me(), 112.0, 1.0, "timeout", true, &POLICY)
            .unwrap();
        assert_eq!(st, SceneStatus::Retry);
        // Second delay doubles.
        assert_eq!(
            db.get("a.tif").unwrap().unwrap().next_attempt_at,
            Some(132.0)
        );
        assert_eq!(db.claim_next(&me(), 131.0, 60.0).unwrap(), None);

        let c = db.claim_next(&me(), 132.0, 60.0).unwrap().unwrap();
        assert_eq!(c.attempt, 3);
        let st = db
            .finish_err(&c, &me(), 133.0, 1.0, "timeout again", true, &POLICY)
            .unwrap();
        assert_eq!(st, SceneStatus::Failed);
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!(row.status, SceneStatus::Failed);
        assert_eq!(row.attempts, 3);
        assert_eq!(row.next_attempt_at, None);
        assert_eq!(row.error.as_deref(), Some("timeout again"));
        assert_eq!(db.claim_next(&me(), 1e9, 60.0).unwrap(), None);
    }

    #[test]
    fn a_failed_scene_waits_for_its_file_to_change() {
        let (_dir, db) = temp_db();
        db.observe("a.tif", fp(1, 1), 0.0).unwrap();
        let c = db.claim_next(&me(), 1.0, 60.0).unwrap().unwrap();
        db.finish_err(&c, &me(), 2.0, 1.0, "corrupt", false, &POLICY)
            .unwrap();
        db.observe("a.tif", fp(1, 1), 3.0).unwrap();
        assert_eq!(status(&db, "a.tif"), SceneStatus::Failed);
        assert_eq!(db.claim_next(&me(), 1e6, 60.0).unwrap(), None);

        db.observe("a.tif", fp(2, 2), 4.0).unwrap();
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!(row.status, SceneStatus::Pending);
        assert_eq!((row.attempts, row.error), (0, None));
        let c = db.claim_next(&me(), 5.0, 60.0).unwrap().unwrap();
        assert_eq!((c.attempt, c.fingerprint), (1, fp(2, 2)));
    }

    #[test]
    fn retry_delays_double() {
        assert_eq!(POLICY.delay_after(1), 10.0);
        assert_eq!(POLICY.delay_after(2), 20.0);
        assert_eq!(POLICY.delay_after(4), 80.0);
        assert!(POLICY.delay_after(u32::MAX).is_infinite());
    }

    #[test]
    fn a_dead_local_owners_claim_is_taken_over() {
        let (_dir, db) = temp_db();
        db.observe("a.tif", fp(1, 1), 0.0).unwrap();
        let dead = Owner {
            host: me().host,
            pid: dead_pid(),
        };
        assert!(dead.is_dead_local_process());
        let lost = db.claim_next(&dead, 1.0, 3600.0).unwrap().unwrap();
        // Well within the lease, but the owner is gone.
        let c = db.claim_next(&me(), 2.0, 3600.0).unwrap().unwrap();
        assert_eq!((c.path.as_str(), c.attempt), ("a.tif", 2));
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!(row.owner, Some(me().to_string()));
        assert_eq!(row.claimed_at, Some(2.0));
        assert!(row.error.unwrap().contains(&dead.to_string()));
        let err = db.finish_ok(&lost, &dead, 3.0, 1.0, "o").unwrap_err();
        assert!(matches!(err, StateError::ClaimLost { .. }), "{err}");
        db.finish_ok(&c, &me(), 3.0, 1.0, "o").unwrap();
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!((row.status, row.error), (SceneStatus::Done, None));
    }

    #[test]
    fn a_live_local_owner_keeps_its_claim() {
        let (_dir, db) = temp_db();
        db.observe("a.tif", fp(1, 1), 0.0).unwrap();
        let c = db.claim_next(&me(), 1.0, 60.0).unwrap().unwrap();
        let other = Owner {
            host: me().host,
            pid: 1,
        };
        assert_eq!(db.claim_next(&other, 30.0, 60.0).unwrap(), None);
        // Past the lease too: a live process on this host is never preempted.
        assert_eq!(db.claim_next(&other, 1e6, 60.0).unwrap(), None);
        db.finish_ok(&c, &me(), 1e6, 1.0, "o").unwrap();
    }

    #[test]
    fn another_hosts_claim_is_taken_over_after_its_lease() {
        let (_dir, db) = temp_db();
        db.observe("a.tif", fp(1, 1), 0.0).unwrap();
        let remote = Owner {
            host: "some-other-host.invalid".into(),
            pid: std::process::id(),
        };
        let rc = db.claim_next(&remote, 100.0, 60.0).unwrap().unwrap();
        assert_eq!(db.claim_next(&me(), 160.0, 60.0).unwrap(), None);
        // Renewing moves the lease on.
        db.renew(&rc, &remote, 150.0).unwrap();
        assert_eq!(db.claim_next(&me(), 200.0, 60.0).unwrap(), None);
        let c = db.claim_next(&me(), 210.5, 60.0).unwrap().unwrap();
        assert_eq!(c.attempt, 2);
        assert!(db.renew(&rc, &remote, 211.0).is_err());
        let err = db
            .finish_err(&rc, &remote, 212.0, 1.0, "x", true, &POLICY)
            .unwrap_err();
        assert!(matches!(err, StateError::ClaimLost { .. }), "{err}");
        db.finish_ok(&c, &me(), 213.0, 1.0, "o").unwrap();
    }

    #[test]
    fn only_the_owner_can_finish_or_release() {
        let (_dir, db) = temp_db();
        db.observe("a.tif", fp(1, 1), 0.0).unwrap();
        let c = db.claim_next(&me(), 1.0, 60.0).unwrap().unwrap();
        let other = Owner {
            host: "elsewhere".into(),
            pid: 7,
        };
        let err = db.finish_ok(&c, &other, 2.0, 1.0, "o").unwrap_err();
        assert!(matches!(err, StateError::ClaimLost { .. }), "{err}");
        assert!(err.to_string().contains("a.tif"));
        assert!(db.release(&c, &other).is_err());
        assert_eq!(status(&db, "a.tif"), SceneStatus::Running);
        // A stale copy of the claim (an earlier attempt) is refused as well.
        let stale = Claim {
            attempt: 0,
            ..c.clone()
        };
        assert!(db.finish_ok(&stale, &me(), 2.0, 1.0, "o").is_err());
        db.finish_ok(&c, &me(), 2.0, 1.0, "o").unwrap();
        // Finished: finishing again is refused.
        assert!(db.finish_ok(&c, &me(), 3.0, 1.0, "o").is_err());
    }

    #[test]
    fn release_gives_a_claim_back_uncounted() {
        let (_dir, db) = temp_db();
        db.observe("a.tif", fp(1, 1), 0.0).unwrap();
        let c = db.claim_next(&me(), 1.0, 60.0).unwrap().unwrap();
        db.release(&c, &me()).unwrap();
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!(
            (row.status, row.attempts, row.owner),
            (SceneStatus::Pending, 0, None)
        );
        let c = db.claim_next(&me(), 2.0, 60.0).unwrap().unwrap();
        assert_eq!(c.attempt, 1);
    }

    #[test]
    fn rows_serialize_for_status_output() {
        let (_dir, db) = temp_db();
        db.observe("a.tif", fp(5, 6), 0.0).unwrap();
        let json = serde_json::to_value(db.list().unwrap()).unwrap();
        assert_eq!(json[0]["status"], "pending");
        assert_eq!(json[0]["size"], 5);
        assert!(json[0]["owner"].is_null());
    }

    /// Workers claim and finish until nothing is left; returns the paths each claimed.
    fn drain(path: &Path, journal: JournalMode, owner: &Owner) -> Vec<String> {
        let db = StateDb::open_with(path, journal).unwrap();
        let mut claimed = Vec::new();
        while let Some(c) = db.claim_next(owner, 10.0, 3600.0).unwrap() {
            db.finish_ok(&c, owner, 11.0, 0.0, "o").unwrap();
            claimed.push(c.path);
        }
        claimed
    }

    fn check_drained(db: &StateDb, claimed: &[String], n: usize) {
        let unique: HashSet<&String> = claimed.iter().collect();
        assert_eq!(claimed.len(), n, "every scene claimed exactly once");
        assert_eq!(unique.len(), n);
        let rows = db.list().unwrap();
        assert_eq!(rows.len(), n);
        assert!(rows
            .iter()
            .all(|r| r.status == SceneStatus::Done && r.attempts == 1));
    }

    fn concurrent_threads(journal: JournalMode) {
        const SCENES: usize = 50;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = StateDb::open_with(&path, journal).unwrap();
        for i in 0..SCENES {
            db.observe(&format!("scene-{i:03}.tif"), fp(1, 1), 1.0)
                .unwrap();
        }
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                // Every thread opens the file itself, as separate processes would.
                std::thread::spawn(move || drain(&path, journal, &Owner::current()))
            })
            .collect();
        let claimed: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        check_drained(&db, &claimed, SCENES);
    }

    #[test]
    fn concurrent_threads_claim_each_scene_once() {
        concurrent_threads(JournalMode::Wal);
    }

    #[test]
    fn concurrent_threads_claim_each_scene_once_with_a_rollback_journal() {
        concurrent_threads(JournalMode::Delete);
    }

    #[test]
    fn instances_starting_together_create_the_database_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let db = StateDb::open(&path).unwrap();
                    db.observe(&format!("t{i}.tif"), fp(1, 1), 1.0).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(StateDb::open(&path).unwrap().list().unwrap().len(), 8);
    }

    /// Run as a child process by the tests below (does nothing in a normal test run):
    /// `TESSERA_STATE_CHILD=drain|hang`, `TESSERA_STATE_DB`, `TESSERA_STATE_OUT`.
    #[test]
    fn state_child_process() {
        let (Ok(mode), Ok(db_path), Ok(out)) = (
            std::env::var("TESSERA_STATE_CHILD"),
            std::env::var("TESSERA_STATE_DB"),
            std::env::var("TESSERA_STATE_OUT"),
        ) else {
            return;
        };
        let owner = Owner::current();
        match mode.as_str() {
            "drain" => {
                let claimed = drain(Path::new(&db_path), JournalMode::Wal, &owner);
                std::fs::write(&out, claimed.join("\n")).unwrap();
            }
            "hang" => {
                let db = StateDb::open(Path::new(&db_path)).unwrap();
                let c = db.claim_next(&owner, 1.0, 3600.0).unwrap().unwrap();
                std::fs::write(&out, c.path).unwrap();
                std::thread::sleep(Duration::from_secs(120));
            }
            other => panic!("unknown child mode {other}"),
        }
    }

    fn spawn_child(mode: &str, db: &Path, out: &Path) -> std::process::Child {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "batch::state::tests::state_child_process"])
            .args(["--test-threads", "1", "--quiet"])
            .env("TESSERA_STATE_CHILD", mode)
            .env("TESSERA_STATE_DB", db)
            .env("TESSERA_STATE_OUT", out)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    #[test]
    fn concurrent_processes_claim_each_scene_once() {
        const SCENES: usize = 50;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = StateDb::open(&path).unwrap();
        for i in 0..SCENES {
            db.observe(&format!("scene-{i:03}.tif"), fp(1, 1), 1.0)
                .unwrap();
        }
        let outs: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("out{i}"))).collect();
        let children: Vec<_> = outs
            .iter()
            .map(|o| spawn_child("drain", &path, o))
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let claimed: Vec<String> = outs
            .iter()
            .flat_map(|o| {
                let text = std::fs::read_to_string(o).unwrap();
                text.lines().map(str::to_owned).collect::<Vec<_>>()
            })
            .collect();
        check_drained(&db, &claimed, SCENES);
        let owners: HashSet<String> = db
            .list()
            .unwrap()
            .into_iter()
            .filter_map(|r| r.owner)
            .collect();
        assert!(!owners.is_empty() && owners.len() <= 2);
    }

    #[test]
    fn a_claim_of_a_killed_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let out = dir.path().join("claimed");
        let db = StateDb::open(&path).unwrap();
        db.observe("a.tif", fp(1, 1), 0.0).unwrap();
        let mut child = spawn_child("hang", &path, &out);
        let started = std::time::Instant::now();
        while !out.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "child never claimed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Running under the child: not ours to take.
        assert_eq!(db.claim_next(&me(), 2.0, 3600.0).unwrap(), None);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let row = db.get("a.tif").unwrap().unwrap();
        assert_eq!(row.status, SceneStatus::Running);
        assert_eq!(row.owner, Some(format!("{}:{}", me().host, child.id())));
        let c = db.claim_next(&me(), 3.0, 3600.0).unwrap().unwrap();
        assert_eq!((c.path.as_str(), c.attempt), ("a.tif", 2));
    }
}
