//! The ingest state in PostgreSQL (`--state postgresql://user@host/db`), for instances on any
//! number of hosts: the statuses, attempts, retries with backoff and notes of the SQLite state
//! ([`super::state::StateDb`], whose documentation describes each operation), in two tables,
//! `tessera_ingest_scenes` and `tessera_ingest_meta` (the schema version), created on first use.
//!
//! A scene is claimed with `SELECT ... FOR UPDATE SKIP LOCKED` in a transaction, so instances
//! claiming at once never wait for each other nor get the same scene. A claim is a lease: the
//! instance renews it while the scene runs ([`StateStore::renew`]), and any instance takes over
//! a `running` scene whose claim is older than its `lease_seconds` (its owner presumed dead).
//! Unlike the SQLite state, whose instances share a host or a file system, a dead process is
//! not recognised by its pid here: host names and pids do not identify a process across
//! containers and hosts, the lease alone does.
//!
//! Every statement's error names the database URL without its password, and the cause.

use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row};

use super::state::{
    checked_row, size_to_sql, Claim, Fingerprint, Owner, RawRow, Result, RetryPolicy, SceneRow,
    SceneStatus, StateError, StateStore, ROW_COLUMNS, SCHEMA_VERSION,
};

/// How long connecting waits when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Key of the advisory lock that serialises schema creation by instances starting together.
const SCHEMA_LOCK: i64 = 0x5453_5354;

/// Transactions aborted by a deadlock or a serialisation failure are tried again this often.
const RETRIES: u32 = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tessera_ingest_meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tessera_ingest_scenes (
    path            TEXT PRIMARY KEY,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'running', 'done', 'retry', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    size            BIGINT NOT NULL,
    mtime_ns        BIGINT NOT NULL,
    queued_at       DOUBLE PRECISION NOT NULL,
    owner           TEXT,
    claimed_at      DOUBLE PRECISION,
    finished_at     DOUBLE PRECISION,
    seconds         DOUBLE PRECISION,
    error           TEXT,
    next_attempt_at DOUBLE PRECISION,
    output          TEXT
);
CREATE INDEX IF NOT EXISTS tessera_ingest_scenes_by_status
    ON tessera_ingest_scenes (status, queued_at, path);
";

/// `url` without its password (in the user part or a `password=` parameter): what messages
/// show.
#[must_use]
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let (main, query) = match rest.find('?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    // The user part ends at the last '@' before the path.
    let authority_end = main
        .rfind('@')
        .map_or(main.find('/').unwrap_or(main.len()), |at| {
            main[at..].find('/').map_or(main.len(), |s| at + s)
        });
    let (authority, path) = main.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (user, host) = authority.split_at(at);
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{user}{host}")
        }
        None => authority.to_owned(),
    };
    let query = query.map(|q| {
        q.split('&')
            .filter(|kv| {
                !kv.split('=')
                    .next()
                    .is_some_and(|k| k.eq_ignore_ascii_case("password"))
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) if !q.is_empty() => format!("{scheme}{authority}{path}?{q}"),
        _ => format!("{scheme}{authority}{path}"),
    }
}

/// An error and its causes on one line.
fn cause(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace('\n', "; ")
}

/// Whether a transaction failed only because of another one (worth trying again).
fn is_conflict(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
            || *c == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// One connection to a PostgreSQL state. Each thread or process opens its own.
pub struct PgState {
    client: Mutex<Client>,
    /// The URL without its password.
    url: String,
}

impl fmt::Debug for PgState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgState").field("url", &self.url).finish()
    }
}

impl PgState {
    /// Connect to the database at `url` (no TLS) and create the schema if missing.
    ///
    /// # Errors
    /// [`StateError::Open`] for a malformed URL or a database that cannot be reached or
    /// refuses the connection; [`StateError::Version`] for a schema of a newer tessera;
    /// [`StateError::Sql`] for any statement that fails.
    pub fn open(url: &str) -> Result<PgState> {
        let shown = redact(url);
        let open_err = |reason: String| StateError::Open {
            path: shown.clone(),
            reason,
        };
        let mut config = Config::from_str(url).map_err(|e| open_err(cause(&e)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tessera ingest");
        }
        let client = config.connect(NoTls).map_err(|e| open_err(cause(&e)))?;
        let db = PgState {
            client: Mutex::new(client),
            url: shown,
        };
        db.ensure_schema()?;
        Ok(db)
    }

    fn sql(&self, e: &postgres::Error) -> StateError {
        StateError::Sql {
            path: self.url.clone(),
            reason: cause(e),
        }
    }

    fn corrupt(&self, reason: String) -> StateError {
        StateError::Corrupt {
            path: self.url.clone(),
            reason,
        }
    }

    fn client(&self) -> MutexGuard<'_, Client> {
        // A panic while holding the connection leaves nothing half-done in it that the next
        // transaction would see (an open transaction is rolled back when dropped).
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run `f` in a transaction, committed when it returns `Ok`; tried again when aborted by a
    /// deadlock or serialisation failure.
    fn transaction<T>(
        &self,
        mut f: impl FnMut(&mut postgres::Transaction<'_>) -> std::result::Result<T, TxError>,
    ) -> Result<T> {
        let mut client = self.client();
        let mut tries = 0;
        loop {
            let mut run = || -> std::result::Result<T, TxError> {
                let mut tx = client.transaction()?;
                let value = f(&mut tx)?;
                tx.commit()?;
                Ok(value)
            };
            match run() {
                Ok(v) => return Ok(v),
                Err(TxError::Pg(e)) if is_conflict(&e) && tries < RETRIES => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20 * u64::from(tries)));
                }
                Err(TxError::Pg(e)) => return Err(self.sql(&e)),
                Err(TxError::State(e)) => return Err(e),
            }
        }
    }

    fn ensure_schema(&self) -> Result<()> {
        let version = self.transaction(|tx| {
            // Without CREATE rights on an existing schema, the tables' presence is enough.
            let have: Option<String> = tx
                .query_one("SELECT to_regclass('tessera_ingest_meta')::text", &[])?
                .try_get(0)?;
            if have.is_none() {
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
                tx.batch_execute(SCHEMA)?;
                tx.execute(
                    "INSERT INTO tessera_ingest_meta (key, value) VALUES ('schema_version', $1)
                     ON CONFLICT (key) DO NOTHING",
                    &[&SCHEMA_VERSION],
                )?;
            }
            let version: Option<i64> = tx
                .query_opt(
                    "SELECT value FROM tessera_ingest_meta WHERE key = 'schema_version'",
                    &[],
                )?
                .map(|r| r.try_get(0))
                .transpose()?;
            Ok(version)
        })?;
        match version {
            Some(v) if v > SCHEMA_VERSION => Err(StateError::Version {
                path: self.url.clone(),
                found: v,
                supported: SCHEMA_VERSION,
            }),
            Some(_) => Ok(()),
            None => Err(self.corrupt("tessera_ingest_meta has no schema_version".into())),
        }
    }

    /// Update `claim`'s scene, provided it is still running under `owner` at this attempt;
    /// `set` is the SQL `SET` list, whose parameters start at `$4`.
    fn update_claimed(
        &self,
        claim: &Claim,
        owner: &Owner,
        set: &str,
        extra: &[&(dyn ToSql + Sync)],
    ) -> Result<()> {
        let owner_s = owner.to_string();
        let attempt = i64::from(claim.attempt);
        let sql = format!(
            "UPDATE tessera_ingest_scenes SET {set}
             WHERE path = $1 AND status = 'running' AND owner = $2 AND attempts = $3"
        );
        let mut all: Vec<&(dyn ToSql + Sync)> = vec![&claim.path, &owner_s, &attempt];
        all.extend_from_slice(extra);
        let n = self.transaction(|tx| Ok(tx.execute(sql.as_str(), &all)?))?;
        if n == 1 {
            Ok(())
        } else {
            Err(StateError::ClaimLost {
                scene: claim.path.clone(),
                owner: owner_s,
                attempt: claim.attempt,
            })
        }
    }

    fn raw(row: &Row) -> std::result::Result<RawRow, postgres::Error> {
        Ok(RawRow {
            path: row.try_get(0)?,
            status: row.try_get(1)?,
            attempts: row.try_get(2)?,
            size: row.try_get(3)?,
            mtime_ns: row.try_get(4)?,
            owner: row.try_get(5)?,
            claimed_at: row.try_get(6)?,
            finished_at: row.try_get(7)?,
            seconds: row.try_get(8)?,
            error: row.try_get(9)?,
            next_attempt_at: row.try_get(10)?,
            output: row.try_get(11)?,
        })
    }
}

/// What fails inside a transaction: a statement, or a check of ours.
enum TxError {
    Pg(postgres::Error),
    State(StateError),
}

impl From<postgres::Error> for TxError {
    fn from(e: postgres::Error) -> TxError {
        TxError::Pg(e)
    }
}

impl StateStore for PgState {
    fn location(&self) -> String {
        self.url.clone()
    }

    fn observe_all(&self, files: &[(String, Fingerprint)], now: f64) -> Result<()> {
        // One statement per chunk of files (arrays), not one round trip per file; paths in a
        // fixed order so that instances observing at once lock rows in the same order.
        let mut sorted: Vec<&(String, Fingerprint)> = files.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        sorted.dedup_by(|a, b| a.0 == b.0);
        let mut chunks = Vec::new();
        for chunk in sorted.chunks(5000) {
            let paths: Vec<String> = chunk.iter().map(|(p, _)| p.clone()).collect();
            let sizes = chunk
                .iter()
                .map(|(p, f)| size_to_sql(p, f.size))
                .collect::<Result<Vec<i64>>>()?;
            let mtimes: Vec<i64> = chunk.iter().map(|(_, f)| f.mtime_ns).collect();
            chunks.push((paths, sizes, mtimes));
        }
        self.transaction(|tx| {
            for (paths, sizes, mtimes) in &chunks {
                // New files. DO NOTHING leaves known rows unlocked: an upsert would lock every
                // known row until commit, and claims (SKIP LOCKED) would pass them over.
                tx.execute(
                    "INSERT INTO tessera_ingest_scenes
                         (path, status, attempts, size, mtime_ns, queued_at)
                     SELECT f.path, 'pending', 0, f.size, f.mtime_ns, $4
                     FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                          WITH ORDINALITY AS f(path, size, mtime_ns, n)
                     ORDER BY f.n
                     ON CONFLICT (path) DO NOTHING",
                    &[paths, sizes, mtimes, &now],
                )?;
                // Changed files (only those rows are locked), unless running.
                tx.execute(
                    "UPDATE tessera_ingest_scenes AS s SET
                         status = 'pending', attempts = 0,
                         size = f.size, mtime_ns = f.mtime_ns, queued_at = $4,
                         owner = NULL, claimed_at = NULL, finished_at = NULL, seconds = NULL,
                         error = NULL, next_attempt_at = NULL, output = NULL
                     FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS f(path, size, mtime_ns)
                     WHERE s.path = f.path AND s.status <> 'running'
                       AND (s.size <> f.size OR s.mtime_ns <> f.mtime_ns)",
                    &[paths, sizes, mtimes, &now],
                )?;
            }
            Ok(())
        })
    }

    fn claim_next(&self, owner: &Owner, now: f64, lease_seconds: f64) -> Result<Option<Claim>> {
        let owner_s = owner.to_string();
        let chosen = self.transaction(|tx| {
            let Some(row) = tx.query_opt(
                "SELECT path, status, owner, size, mtime_ns, attempts
                 FROM tessera_ingest_scenes
                 WHERE status = 'pending'
                    OR (status = 'retry' AND coalesce(next_attempt_at, 0) <= $1)
                    OR (status = 'running' AND (claimed_at IS NULL OR $1 - claimed_at > $2))
                 ORDER BY queued_at, path
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED",
                &[&now, &lease_seconds],
            )?
            else {
                return Ok(None);
            };
            let path: String = row.try_get(0)?;
            let status: String = row.try_get(1)?;
            let prev_owner: Option<String> = row.try_get(2)?;
            let size: i64 = row.try_get(3)?;
            let mtime_ns: i64 = row.try_get(4)?;
            let attempts: i64 = row.try_get(5)?;
            let size = u64::try_from(size)
                .map_err(|_| TxError::State(self.corrupt(format!("{path}: size {size}"))))?;
            let attempt = u32::try_from(attempts)
                .ok()
                .and_then(|a| a.checked_add(1))
                .ok_or_else(|| {
                    TxError::State(self.corrupt(format!("{path}: attempts {attempts}")))
                })?;
            // A claim taken over from a dead instance says so until this attempt finishes.
            let note = (status == "running").then(|| {
                format!(
                    "attempt {} by {} was interrupted",
                    attempt - 1,
                    prev_owner.as_deref().unwrap_or("an unknown instance")
                )
            });
            tx.execute(
                "UPDATE tessera_ingest_scenes SET status = 'running', owner = $2, claimed_at = $3,
                     attempts = $4, next_attempt_at = NULL, error = coalesce($5, error)
                 WHERE path = $1",
                &[&path, &owner_s, &now, &i64::from(attempt), &note],
            )?;
            Ok(Some(Claim {
                path,
                fingerprint: Fingerprint { size, mtime_ns },
                attempt,
            }))
        })?;
        Ok(chosen)
    }

    fn finish_ok(
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
            "status = 'done', finished_at = $4, seconds = $5, output = $6, error = NULL,
             next_attempt_at = NULL, size = $7, mtime_ns = $8",
            &[&now, &seconds, &output, &size, &claim.fingerprint.mtime_ns],
        )
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
        let size = size_to_sql(&claim.path, claim.fingerprint.size)?;
        let (status, next) = policy.after_failure(claim.attempt, transient, now);
        self.update_claimed(
            claim,
            owner,
            "status = $4, finished_at = $5, seconds = $6, error = $7, next_attempt_at = $8,
             output = NULL, size = $9, mtime_ns = $10",
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

    fn release(&self, claim: &Claim, owner: &Owner) -> Result<()> {
        self.update_claimed(
            claim,
            owner,
            "status = 'pending', attempts = greatest(attempts - 1, 0), owner = NULL,
             claimed_at = NULL",
            &[],
        )
    }

    fn defer(&self, claim: &Claim, owner: &Owner, not_before: f64, note: &str) -> Result<()> {
        self.update_claimed(
            claim,
            owner,
            "status = 'retry', attempts = greatest(attempts - 1, 0), owner = NULL,
             claimed_at = NULL, next_attempt_at = $4, error = $5",
            &[&not_before, &note],
        )
    }

    fn renew(&self, claim: &Claim, owner: &Owner, now: f64) -> Result<()> {
        self.update_claimed(claim, owner, "claimed_at = $4", &[&now])
    }

    fn get(&self, path: &str) -> Result<Option<SceneRow>> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM tessera_ingest_scenes WHERE path = $1");
        let raw = self
            .client()
            .query_opt(sql.as_str(), &[&path])
            .and_then(|r| r.as_ref().map(Self::raw).transpose())
            .map_err(|e| self.sql(&e))?;
        raw.map(|r| checked_row(&self.url, r)).transpose()
    }

    fn list(&self) -> Result<Vec<SceneRow>> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM tessera_ingest_scenes ORDER BY path");
        let rows = self
            .client()
            .query(sql.as_str(), &[])
            .map_err(|e| self.sql(&e))?;
        rows.iter()
            .map(|r| {
                let raw = Self::raw(r).map_err(|e| self.sql(&e))?;
                checked_row(&self.url, raw)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_removed_from_urls() {
        assert_eq!(
            redact("postgresql://ingest:s3cr%40t@db.example:5433/tessera"),
            "postgresql://ingest@db.example:5433/tessera"
        );
        assert_eq!(
            redact("postgres://ingest:p@ss@db/x?sslmode=disable&password=hunter2"),
            "postgres://ingest@db/x?sslmode=disable"
        );
        assert_eq!(
            redact("postgresql://db.example/tessera?password=x"),
            "postgresql://db.example/tessera"
        );
        assert_eq!(
            redact("postgresql://me@localhost/tessera"),
            "postgresql://me@localhost/tessera"
        );
        assert_eq!(redact("postgresql://localhost"), "postgresql://localhost");
    }

    #[test]
    fn an_unreachable_database_is_an_open_error_naming_the_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let url = format!("postgresql://tessera:secret@127.0.0.1:{port}/tessera");
        let err = PgState::open(&url).unwrap_err();
        assert!(matches!(err, StateError::Open { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("postgresql://tessera@127.0.0.1:{port}/tessera: ")),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("refused"), "{text}");
        assert!(!text.contains('\n'), "{text}");

        let err = PgState::open("postgresql://h/db?sslmode=bogus").unwrap_err();
        assert!(matches!(err, StateError::Open { .. }), "{err}");
    }
}
