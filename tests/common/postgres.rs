//! A throwaway PostgreSQL server for tests: `initdb` into a temporary folder, a server on a
//! free port of 127.0.0.1 (and a unix socket in that folder), one database, trust
//! authentication, stopped (and its folder removed) on drop, a failing test included.
//!
//! The Debian `postgresql` package provides the binaries (`scripts/setup.sh` installs it);
//! they are looked for in `$TESSERA_PG_BINDIR`, `/usr/lib/postgresql/<newest>/bin`, then
//! `PATH`. PostgreSQL refuses to run as root, so as root every server command runs as the
//! `postgres` user (`runuser -u postgres`), which owns the folder. [`PgServer::start`] returns
//! `None`, having printed why, when no server can be started here: the caller skips.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A running server; stopped on drop.
pub struct PgServer {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    /// Run server commands as this user (`runuser -u`), when root.
    run_as: Option<String>,
    port: u16,
    /// The role everything connects as (a superuser, no password).
    pub user: String,
    /// The database created for the test.
    pub database: String,
}

/// Where `initdb`, `pg_ctl` and `psql` are.
fn find_bindir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TESSERA_PG_BINDIR") {
        return Some(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl PgServer {
    /// Start a server with one database `tessera` owned by the superuser `tessera`, or `None`
    /// (with a message on stderr) when PostgreSQL is not available here.
    pub fn start() -> Option<PgServer> {
        let Some(bindir) = find_bindir() else {
            eprintln!(
                "skipped: PostgreSQL is not installed (initdb not found; make setup installs it)"
            );
            return None;
        };
        let run_as = if is_root() {
            let known = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .is_ok_and(|o| o.status.success());
            if !known {
                eprintln!(
                    "skipped: running as root and there is no 'postgres' user to run PostgreSQL as"
                );
                return None;
            }
            Some("postgres".to_string())
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("tessera-pg-")
            .tempdir()
            .expect("temporary folder");
        if let Some(user) = &run_as {
            let st = Command::new("chown")
                .args(["-R", user])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown {} to {user}", dir.path().display());
        }
        let server = PgServer {
            dir,
            bindir,
            run_as,
            port: free_port(),
            user: "tessera".into(),
            database: "tessera".into(),
        };
        let data = server.data_dir();
        let init = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                &server.user,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .expect("initdb runs");
        if !init.status.success() {
            eprintln!("skipped: initdb failed: {}", text(&init));
            return None;
        }
        if let Err(e) = server.start_server() {
            eprintln!("skipped: the PostgreSQL server does not start: {e}");
            return None;
        }
        server.psql_db("postgres", &format!("CREATE DATABASE {}", server.database));
        Some(server)
    }

    /// A command of the server's binaries, run as the server's user when root.
    fn command(&self, program: &str) -> Command {
        let exe = self.bindir.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The folder of the server's unix socket (and its log, `server.log`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgresql://tessera@127.0.0.1:PORT/tessera`.
    pub fn url(&self) -> String {
        self.url_for(&self.database)
    }

    /// The URL of another database of this server.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgresql://{}@127.0.0.1:{}/{database}",
            self.user, self.port
        )
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn start_server(&self) -> Result<(), String> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.socket_dir().display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .output()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{} {}", text(&out), self.log()))
        }
    }

    /// Start the server again after [`PgServer::stop`].
    pub fn start_again(&self) {
        if let Err(e) = self.start_server() {
            panic!("PostgreSQL does not start again: {e}");
        }
    }

    /// Stop the server at once (`-m immediate`: like a crash; committed transactions survive
    /// through the write-ahead log).
    pub fn stop(&self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .expect("pg_ctl stop runs");
        assert!(out.status.success(), "pg_ctl stop: {}", text(&out));
    }

    /// Stop and start again: every connection is cut.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Run `sql` with psql in the test's database; its rows, unaligned, `|` between columns.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db(&self.database, sql)
    }

    fn psql_db(&self, database: &str, sql: &str) -> String {
        let started = Instant::now();
        loop {
            let out = Command::new(self.bindir.join("psql"))
                .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"])
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", &self.user, "-d", database, "-c", sql])
                .output()
                .expect("psql runs");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).trim_end().to_string();
            }
            let err = text(&out);
            // A server just started may still refuse connections for a moment.
            if err.contains("starting up") && started.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            panic!("psql -c {sql:?}: {err}");
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
