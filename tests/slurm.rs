//! `deploy/slurm/tessera-array.sbatch` on a real Slurm cluster: one node on this machine
//! (Debian `slurm-wlm` and `munge`), its own munge key and socket, ports, state, spool, pid and
//! log files in a temporary folder. The array's outputs are those of one local `tessera run`
//! byte for byte; a task cancelled mid-scene with `scancel` stays cancelled (Slurm never
//! requeues a cancelled job, `--requeue` or not), `scontrol requeue` puts it back, and the array
//! completes, the requeued task redoing only its unfinished scenes. The Kubernetes Indexed Job
//! of `deploy/kubernetes/` takes the same shards. Every daemon the test starts is stopped when
//! it ends, passed or failed ([`Cluster`]'s `Drop`).
//!
//! Needs root (slurmd launches jobs as their user) and the Slurm and MUNGE daemons; skips with
//! a message otherwise.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{crop, walk};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `prog` is an executable on PATH (or /usr/sbin, where Debian puts the daemons).
fn program(prog: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file());
    found
}

const PROGRAMS: [&str; 10] = [
    "munged",
    "mungekey",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "scontrol",
    "scancel",
    "srun",
    "sinfo",
];

/// Why this machine cannot run the cluster, if it cannot.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (slurmd must run as root to launch jobs)".into());
    }
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| program(p).is_none())
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "{} not installed (Debian packages slurm-wlm and munge; make setup)",
            missing.join(", ")
        ));
    }
    None
}

/// A free TCP port on localhost (bound, then released for the daemon to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A one-node Slurm cluster of its own: munged, slurmctld and slurmd in the foreground as
/// children of the test, everything they write under `dir`. Dropping it cancels the cluster's
/// jobs, stops the daemons and kills whatever process is still using `dir` (step daemons and
/// job processes that outlived slurmd).
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    socket: PathBuf,
    daemons: Vec<(&'static str, Child)>,
    stopped: bool,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        for sub in ["munge", "state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            conf: dir.join("slurm.conf"),
            socket: dir.join("munge/munge.socket"),
            daemons: Vec::new(),
            stopped: false,
        };
        // MUNGE: a key of our own and a socket of our own (AuthInfo socket= below), so the
        // cluster authenticates without the machine's munged or its /etc/munge key.
        let key = dir.join("munge/munge.key");
        let status = Command::new(program("mungekey").expect("mungekey"))
            .args(["--create", "--bits", "1024", "--keyfile"])
            .arg(&key)
            .status()
            .expect("mungekey runs");
        assert!(status.success(), "mungekey --create");
        cluster.spawn(
            "munged",
            Command::new(program("munged").expect("munged"))
                .args(["--foreground", "--force"])
                .arg(format!("--key-file={}", key.display()))
                .arg(format!("--socket={}", cluster.socket.display()))
                .arg(format!(
                    "--pid-file={}",
                    dir.join("munge/munged.pid").display()
                ))
                .arg(format!(
                    "--log-file={}",
                    dir.join("log/munged.log").display()
                ))
                .arg(format!(
                    "--seed-file={}",
                    dir.join("munge/munged.seed").display()
                )),
        );
        cluster.wait_for("munged's socket", Duration::from_secs(10), |c| {
            c.socket.exists()
        });

        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .expect("hostname")
            .trim()
            .to_string();
        let d = dir.display();
        let conf = format!(
            "# A one-node cluster for tests/slurm.rs, everything under {d}.
ClusterName=tessera-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays a requeued job's restart (120 s by default).
AuthInfo=socket={socket},cred_expire=5
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: processes tracked by their parent ids, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# The node as declared (the array script's --cpus-per-task=8 --mem=16G for 3 tasks), not as
# probed: this machine may have 2 cores.
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=2
MinJobAge=600
NodeName=tessera-node NodeHostname={host} NodeAddr=127.0.0.1 CPUs=32 RealMemory=65536 State=UNKNOWN
PartitionName=test Nodes=tessera-node Default=YES MaxTime=INFINITE State=UP
",
            ctld = free_port(),
            slurmd = free_port(),
            socket = cluster.socket.display(),
        );
        std::fs::write(&cluster.conf, conf).expect("write slurm.conf");
        let conf_path = cluster.conf.clone();
        cluster.spawn(
            "slurmctld",
            Command::new(program("slurmctld").expect("slurmctld"))
                .args(["-D", "-i", "-f"])
                .arg(&conf_path),
        );
        cluster.spawn(
            "slurmd",
            Command::new(program("slurmd").expect("slurmd"))
                .args(["-D", "-N", "tessera-node", "-f"])
                .arg(&conf_path),
        );
        cluster.wait_for("the node to be idle", Duration::from_secs(30), |c| {
            c.output("sinfo", &["-h", "-N", "-o", "%T"]).trim() == "idle"
        });
        cluster
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) {
        let log = |suffix: &str| {
            File::create(self.dir.join(format!("log/{name}.{suffix}"))).expect("log file")
        };
        let child = cmd
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.daemons.push((name, child));
    }

    /// A client command (sbatch, squeue, ...) talking to this cluster.
    fn command(&self, prog: &str) -> Command {
        let mut cmd = Command::new(program(prog).unwrap_or_else(|| panic!("{prog}")));
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    /// Run a client command, its stdout; panics with the cluster's logs on failure.
    fn output(&self, prog: &str, args: &[&str]) -> String {
        let out = self.command(prog).args(args).output().expect(prog);
        assert!(
            out.status.success(),
            "{prog} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `scontrol show job ID`'s `Key=Value` fields (the first record: one array task).
    fn job(&self, id: &str) -> BTreeMap<String, String> {
        self.output("scontrol", &["show", "job", "-o", id])
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn wait_for(&self, what: &str, limit: Duration, mut done: impl FnMut(&Cluster) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemons' logs, for failure messages.
    fn logs(&self) -> String {
        let mut s = String::new();
        for p in walk(&self.dir.join("log")) {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            s.push_str(&format!("\n--- {} ---\n{tail}", p.display()));
        }
        s
    }

    /// Processes other than this one whose working folder or an open file is under `dir`.
    fn processes_using_dir(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        let under = |p: &Path| std::fs::read_link(p).is_ok_and(|t| t.starts_with(&self.dir));
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                let proc = PathBuf::from(format!("/proc/{pid}"));
                under(&proc.join("cwd"))
                    || std::fs::read_dir(proc.join("fd"))
                        .map(|fds| fds.flatten().any(|fd| under(&fd.path())))
                        .unwrap_or(false)
            })
            .collect()
    }

    /// Cancel the jobs, stop the daemons, end what is left. Idempotent.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let alive = |c: &mut Child| matches!(c.try_wait(), Ok(None));
        if self
            .daemons
            .iter_mut()
            .any(|(n, c)| *n == "slurmctld" && alive(c))
        {
            let _ = self
                .command("scancel")
                .args(["--full", "--user=root"])
                .output();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                let out = self.command("squeue").args(["-h", "-o", "%i"]).output();
                if out.map_or(true, |o| !o.status.success() || o.stdout.is_empty()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // slurmd, then slurmctld, then munged: SIGTERM, then SIGKILL after 5 s.
        while let Some((_, mut child)) = self.daemons.pop() {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while alive(&mut child) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Step daemons and job processes hold files in `dir` (spool sockets, logs, outputs).
        for pid in self.processes_using_dir() {
            // SAFETY: a pid that has a working folder or file in this test's folder.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every file under `out` with its bytes, by relative path.
fn tree(out: &Path) -> BTreeMap<String, Vec<u8>> {
    walk(out)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let rel = p.strip_prefix(out).expect("below").display().to_string();
            (rel, std::fs::read(&p).expect("read"))
        })
        .collect()
}

/// A record without what differs at every run by design: times, durations, host, memory.
fn without_times(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if [
                    "started",
                    "finished",
                    "host",
                    "peak_rss_bytes",
                    "tiles_per_second",
                ]
                .contains(&k.as_str())
                    || k.contains("seconds")
                {
                    *x = serde_json::Value::Null;
                } else {
                    without_times(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(without_times),
        _ => {}
    }
}

/// Scene name -> status in a `tessera run --json` report.
fn statuses(report: &serde_json::Value) -> BTreeMap<String, String> {
    report["scenes"]
        .as_array()
        .expect("scenes")
        .iter()
        .map(|s| {
            let name = s["name"].as_str().expect("name").to_string();
            (name, s["status"].as_str().expect("status").to_string())
        })
        .collect()
}

/// The scene and pid of each temporary folder `.{scene}~tmp~{host}~{pid}~...` in `out`.
fn scenes_in_progress(out: &Path) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let parts: Vec<&str> = name.strip_prefix('.')?.split('~').collect();
            match parts[..] {
                [scene, "tmp", _host, pid, ..] => Some((scene.to_string(), pid.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// A variable of a running process's environment.
fn environ(pid: u32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        kv.strip_prefix(&format!("{key}=")).map(|v| v.to_string())
    })
}

/// The array's tasks, as `--array=0-4:2` makes them: shards 0, 1 and 2 of 3.
const TASK_IDS: [usize; 3] = [0, 2, 4];
const TASKS: usize = TASK_IDS.len();
const SCENES: usize = 6;

#[test]
fn slurm_array_writes_one_runs_outputs_and_a_cancelled_task_requeued_completes() {
    if let Some(why) = cannot_run() {
        eprintln!("skipping the Slurm cluster test: {why}");
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let mut cluster = Cluster::start(&d.join("cluster"));
    let mut phases = vec![("cluster up", started.elapsed())];

    let scenes = d.join("scenes");
    std::fs::create_dir(&scenes).expect("mkdir");
    for i in 0..SCENES {
        crop(&scenes.join(format!("s{i}.tif")), 61 * i, 47 * i, 256);
    }
    // Vectors as GeoJSON: a GeoPackage stores the time it was written.
    let pipeline = d.join("land-cover.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[input]\nbands = [1, 2, 3]\nscale = \"percentile:2,98\"\n[tiling]\ntarget_gsd = 20.0\nthreads = 1\n\
             [output]\nformat = \"geojson\"\n\
             [[stage]]\nname = \"landcover\"\ntask = \"classify\"\nmodel = \"{}\"\nlabels = [\"forest\", \"water\", \"city\"]\n",
            root().join("sample_data/models/clip-tiny").display()
        ),
    )
    .expect("write pipeline");
    // The same spellings for the local run and the array (absolute paths, as on a cluster's
    // shared file system), and the same output folder: the local run's is moved aside.
    let work = d.join("work");
    std::fs::create_dir_all(work.join("logs")).expect("mkdir");
    let out = d.join("out");
    let (p, s, o) = (
        pipeline.display().to_string(),
        scenes.display().to_string(),
        out.display().to_string(),
    );
    let local = common::run(
        &work,
        &["run", &p, &s, "--out", &o, "--jobs", "2", "--quiet"],
    );
    local.success();
    phases.push(("local run", started.elapsed()));
    std::fs::rename(&out, d.join("local")).expect("move the local run aside");

    // The shipped script, unchanged but for the array (a stepped range: tasks 0, 2, 4);
    // tessera from this build.
    let bin = Path::new(env!("CARGO_BIN_EXE_tessera"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = root().join("deploy/slurm/tessera-array.sbatch");
    let submitted = cluster
        .command("sbatch")
        .args(["--parsable", "--array=0-4:2"])
        .arg(&script)
        .current_dir(&work)
        .env("PATH", &path)
        .env("PIPELINE", &p)
        .env("SCENES", &s)
        .env("OUT", &o)
        .output()
        .expect("sbatch");
    assert!(
        submitted.status.success(),
        "sbatch: {}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let job = String::from_utf8_lossy(&submitted.stdout)
        .trim()
        .split(';')
        .next()
        .expect("job id")
        .to_string();

    // Cancel a task in the middle of its scenes, after it finished one: the pid in a
    // temporary folder's name is a task's tessera, whose environment names the array task.
    // (With these names, shard 2 of 3, task 4, has three scenes, run two at a time.)
    let mut seen: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    let mut victim = None;
    let complete = |scene: &str| out.join(scene).join("record.json").exists();
    cluster.wait_for(
        "a task with a scene in progress and one complete",
        Duration::from_secs(90),
        |_| {
            for (scene, pid) in scenes_in_progress(&out) {
                let before = seen.entry(pid).or_default();
                let one_complete = before.iter().any(|y| *y != scene && complete(y));
                before.insert(scene);
                if one_complete && environ(pid, "SLURM_ARRAY_JOB_ID").as_ref() == Some(&job) {
                    victim = environ(pid, "SLURM_ARRAY_TASK_ID").map(|t| (t, pid));
                    return victim.is_some();
                }
            }
            false
        },
    );
    let (task, pid) = victim.expect("victim");
    let task_id = format!("{job}_{task}");
    cluster.output("scancel", &[&task_id]);
    cluster.wait_for("the task to be cancelled", Duration::from_secs(20), |c| {
        c.job(&task_id).get("JobState").map(String::as_str) == Some("CANCELLED")
    });
    cluster.wait_for("the task's tessera to end", Duration::from_secs(20), |_| {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    // Slurm does not requeue a cancelled task, even with --requeue: it stays cancelled.
    std::thread::sleep(Duration::from_secs(1));
    let cancelled = cluster.job(&task_id);
    assert_eq!(cancelled["JobState"], "CANCELLED", "{cancelled:?}");
    assert_eq!(cancelled["Requeue"], "1", "--requeue from the script");
    let complete_at_kill: BTreeSet<String> = (0..SCENES)
        .map(|i| format!("s{i}"))
        .filter(|n| complete(n))
        .collect();
    // Killed in the middle of a scene: its temporary folder is left (the next run removes it).
    let interrupted: Vec<String> = scenes_in_progress(&out)
        .into_iter()
        .filter(|(_, p)| *p == pid)
        .map(|(scene, _)| scene)
        .collect();
    // The scene it was in may still have finished between choosing it and the signal (the
    // window is scancel's latency): then the task was cancelled between scenes, and the
    // checks below still hold for what it had finished; the redo check needs a scene cut off.
    if interrupted.is_empty() {
        eprintln!(
            "note: task {task_id} (tessera pid {pid}) finished its scene before the signal: \
             cancelled between scenes"
        );
    }
    eprintln!(
        "cancelled task {task_id} during {interrupted:?} (complete then: {complete_at_kill:?}); requeueing it"
    );
    phases.push(("task cancelled", started.elapsed()));
    cluster.output("scontrol", &["requeue", &task_id]);
    cluster.wait_for("the array to finish", Duration::from_secs(120), |c| {
        c.output("squeue", &["-h", "-j", &job, "-o", "%i"])
            .trim()
            .is_empty()
    });
    phases.push(("array complete", started.elapsed()));
    let mut reports = BTreeMap::new();
    for (shard, t) in TASK_IDS.into_iter().enumerate() {
        let id = format!("{job}_{t}");
        let info = cluster.job(&id);
        let log = std::fs::read_to_string(work.join(format!("logs/tessera-{id}.log")))
            .unwrap_or_default();
        assert_eq!(
            (info["JobState"].as_str(), info["ExitCode"].as_str()),
            ("COMPLETED", "0:0"),
            "task {id}: {info:?}\n{log}{}",
            cluster.logs()
        );
        let restarts = if t.to_string() == task { "1" } else { "0" };
        assert_eq!(info["Restarts"], restarts, "task {id}");
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(work.join(format!("logs/tessera-{id}.json"))).expect("report"),
        )
        .unwrap_or_else(|e| panic!("logs/tessera-{id}.json: {e}\n{log}"));
        assert_eq!(
            report["shard"]["index"], shard,
            "task {id}: (ID - MIN) / STEP"
        );
        assert_eq!(report["shard"]["count"], TASKS);
        reports.insert(t.to_string(), statuses(&report));
    }
    // The requeued task skipped what it had finished and redid the rest, the cancelled scene
    // among them; the other tasks did all of theirs; each scene is in exactly one task.
    for (t, st) in &reports {
        for (scene, status) in st {
            let expect = if *t == task && complete_at_kill.contains(scene) {
                "skipped"
            } else {
                "done"
            };
            assert_eq!(status, expect, "task {t}, scene {scene}: {reports:?}");
        }
    }
    for scene in &interrupted {
        assert_eq!(reports[&task][scene], "done", "{scene} was redone");
    }
    assert!(
        reports[&task].values().any(|v| v == "skipped"),
        "the requeued task skipped its complete scenes: {reports:?}"
    );
    let mut all: Vec<&String> = reports.values().flat_map(|st| st.keys()).collect();
    all.sort();
    let expected: Vec<String> = (0..SCENES).map(|i| format!("s{i}")).collect();
    assert_eq!(all, expected.iter().collect::<Vec<_>>(), "{reports:?}");

    // Every file byte for byte; record.json but for times, host and memory.
    let (mut a, mut b) = (tree(&d.join("local")), tree(&out));
    // The HTML pages hold their run's timings and command line, so no two runs write the same
    // bytes: each scene has its report in both, and the index is one page locally and one per
    // shard on the cluster (`index-I-of-N.html`); the rest is compared byte for byte.
    for i in 0..SCENES {
        let report = format!("s{i}/report.html");
        assert!(a.remove(&report).is_some(), "local {report}");
        assert!(b.remove(&report).is_some(), "cluster {report}");
    }
    assert!(a.remove("index.html").is_some(), "local index.html");
    for shard in 0..TASKS {
        let index = format!("index-{shard}-of-{TASKS}.html");
        assert!(b.remove(&index).is_some(), "cluster {index}");
    }
    let names: Vec<&String> = a.keys().collect();
    assert_eq!(names, b.keys().collect::<Vec<_>>(), "the same files");
    for name in a
        .keys()
        .filter(|n| n.ends_with("record.json"))
        .cloned()
        .collect::<Vec<_>>()
    {
        let mut ra: serde_json::Value = serde_json::from_slice(&a[&name]).expect("json");
        let mut rb: serde_json::Value = serde_json::from_slice(&b[&name]).expect("json");
        without_times(&mut ra);
        without_times(&mut rb);
        assert_eq!(ra, rb, "{name}");
        a.remove(&name);
        b.remove(&name);
    }
    assert!(
        a.keys().any(|n| n.ends_with("classes.tif")),
        "{:?}",
        a.keys()
    );
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs from the local run's");
    }

    // The Kubernetes Indexed Job's command with its variables takes the same shards: over the
    // finished output, index I finds the scenes of shard I (Slurm task 2I) complete.
    let flags = kubernetes_job().map_or_else(
        || vec!["--quiet".to_string(), "--json".to_string()],
        |k| k.flags,
    );
    assert!(flags.iter().any(|f| f == "--json"), "{flags:?}");
    for (index, t) in TASK_IDS.into_iter().enumerate() {
        let again = common::tessera()
            .args(["run", &p, &s, "--out", &o])
            .args(&flags)
            .current_dir(&work)
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env("JOB_COMPLETION_INDEX", index.to_string())
            .env("TESSERA_SHARD_COUNT", TASKS.to_string())
            .output()
            .expect("tessera");
        assert!(
            again.status.success(),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
        let st = statuses(&report);
        assert_eq!(
            st.keys().collect::<Vec<_>>(),
            reports[&t.to_string()].keys().collect::<Vec<_>>(),
            "index {index}"
        );
        assert!(st.values().all(|v| v == "skipped"), "index {index}: {st:?}");
    }

    cluster.stop();
    let left = cluster.processes_using_dir();
    assert!(left.is_empty(), "processes left after stopping: {left:?}");
    phases.push(("stopped", started.elapsed()));
    eprintln!("the Slurm cluster test, seconds from its start: {phases:?}");
}

/// The Kubernetes Indexed Job example, as PyYAML reads it.
struct KubernetesJob {
    completions: u64,
    parallelism: u64,
    /// `TESSERA_SHARD_COUNT` in the container's environment.
    shard_count: String,
    /// The container's `command` after `tessera run PIPELINE SCENES --out OUT`.
    flags: Vec<String>,
    /// `resources.requests`: `cpu` and `memory`.
    cpu: String,
    memory: String,
}

const READ_JOB: &str = r#"
import json, sys, yaml
job = yaml.safe_load(open(sys.argv[1]))
spec = job["spec"]
assert job["kind"] == "Job" and spec["completionMode"] == "Indexed", "not an Indexed Job"
c = spec["template"]["spec"]["containers"][0]
env = {e["name"]: e.get("value") for e in c.get("env", [])}
print(json.dumps({"completions": spec["completions"], "parallelism": spec["parallelism"],
                  "shard_count": env.get("TESSERA_SHARD_COUNT"), "command": c["command"],
                  "requests": c["resources"]["requests"]}))
"#;

/// The example's fields, or None without the project's Python (`make setup`).
fn kubernetes_job() -> Option<KubernetesJob> {
    let py = common::venv_python()?;
    let path = root().join("deploy/kubernetes/tessera-indexed-job.yaml");
    let out = Command::new(py)
        .args(["-c", READ_JOB])
        .arg(&path)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let command: Vec<String> = j["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|a| a.as_str().expect("a string").to_string())
        .collect();
    assert_eq!(&command[..2], ["tessera", "run"], "{command:?}");
    assert_eq!(command[4], "--out", "{command:?}");
    Some(KubernetesJob {
        completions: j["completions"].as_u64().expect("completions"),
        parallelism: j["parallelism"].as_u64().expect("parallelism"),
        shard_count: j["shard_count"]
            .as_str()
            .expect("TESSERA_SHARD_COUNT")
            .to_string(),
        flags: command[6..].to_vec(),
        cpu: j["requests"]["cpu"].as_str().expect("cpu").to_string(),
        memory: j["requests"]["memory"]
            .as_str()
            .expect("memory")
            .to_string(),
    })
}

/// The Slurm and Kubernetes examples shard the same way: as many shards as array tasks and
/// Job completions, the same `tessera run` flags and the same resources per shard.
#[test]
fn the_slurm_and_kubernetes_examples_agree() {
    let script = std::fs::read_to_string(root().join("deploy/slurm/tessera-array.sbatch"))
        .expect("the Slurm example");
    let range = script
        .lines()
        .find_map(|l| l.strip_prefix("#SBATCH --array="))
        .expect("#SBATCH --array=");
    let (lo, hi) = range.split_once('-').expect("a range A-B");
    let tasks = hi.parse::<u64>().expect("B") - lo.parse::<u64>().expect("A") + 1;
    let Some(k8s) = kubernetes_job() else {
        eprintln!("skipping: no .venv with PyYAML to read the Kubernetes example (make setup)");
        return;
    };
    assert_eq!(k8s.completions, tasks, "completions vs the array's tasks");
    assert_eq!(k8s.parallelism, tasks, "parallelism vs the array's tasks");
    assert_eq!(
        k8s.shard_count,
        tasks.to_string(),
        "TESSERA_SHARD_COUNT vs completions"
    );
    let line = script
        .lines()
        .find(|l| l.trim_start().starts_with("tessera run"))
        .expect("the srun ... tessera run line");
    let flags: Vec<&str> = line
        .split_whitespace()
        .skip_while(|w| *w != "\"$OUT\"")
        .skip(1)
        .take_while(|w| *w != "\\")
        .collect();
    assert_eq!(flags, k8s.flags, "the same tessera run flags");
    let directive = |key: &str| {
        script
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#SBATCH --{key}=")))
            .unwrap_or_else(|| panic!("#SBATCH --{key}="))
            .to_string()
    };
    assert_eq!(directive("cpus-per-task"), k8s.cpu, "CPUs per shard");
    // Slurm's G is 1024^3 bytes: Kubernetes' Gi.
    assert_eq!(
        directive("mem").replace('G', "Gi"),
        k8s.memory,
        "memory per shard"
    );
}
