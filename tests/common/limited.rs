//! Running tessera under an address-space limit and a wall-clock limit, for the hostile-input
//! tests: a regression that allocates without bound or blocks fails the test instead of
//! exhausting the machine; and the check that a refusal was clean.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{walk, Run};

/// Address-space limit for every tessera run here (bytes).
pub const ADDRESS_LIMIT: u64 = 6 << 30;

/// A tessera command under [`ADDRESS_LIMIT`], in `dir`, stdin closed.
pub fn limited(dir: &Path, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: ADDRESS_LIMIT,
                rlim_max: ADDRESS_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Wait for `child`, killing it after two minutes (a hang fails the test).
pub fn wait_limited(child: std::process::Child, dir: &Path, args: &[&str]) -> Run {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        // SAFETY: signalling the child we spawned.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let output = waiter.join().expect("join").expect("wait");
    Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        dir: dir.to_path_buf(),
        output,
    }
}

/// Run tessera in `dir` under the limits, stdout and stderr captured.
pub fn run_limited(dir: &Path, args: &[&str]) -> Run {
    run_limited_env(dir, args, &[])
}

/// [`run_limited`] with `env` added.
pub fn run_limited_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let child = limited(dir, args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera");
    wait_limited(child, dir, args)
}

/// Temporary or partial entries left anywhere below `dir`.
pub fn leftovers(dir: &Path) -> Vec<String> {
    walk(dir)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.contains("tessera-tmp") || n.contains('~') || n.ends_with(".partial"))
        .collect()
}

/// Assert a clean failure: exit `code`, one `tessera: error:` line naming every needle, no
/// panic, nothing partial left in the run's folder.
pub fn assert_refused(r: &Run, code: i32, needles: &[&str]) {
    assert_eq!(
        r.output.status.code(),
        Some(code),
        "exit code{}",
        r.context()
    );
    let err = r.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line expected{}", r.context());
    assert!(lines[0].starts_with("tessera: error: "), "{}", r.context());
    assert!(!err.contains("panicked"), "{}", r.context());
    for n in needles {
        assert!(
            lines[0].contains(n),
            "error should mention {n:?}{}",
            r.context()
        );
    }
    assert!(
        leftovers(&r.dir).is_empty(),
        "partial output left{}",
        r.context()
    );
}
