//! Pipelines, batches and ingestion through the binary: many scenes, bad scenes among good ones,
//! reruns that skip finished work, shards, SIGKILL at several points, concurrent ingestion.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{crop, run, tessera, walk};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sample() -> PathBuf {
    root().join("sample_data").join("sentinel2_rgbn_10m.tif")
}

/// A classification pipeline over the bundled CLIP model (fast: 64 px tiles).
fn land_cover(dir: &Path) -> PathBuf {
    let p = dir.join("land-cover.toml");
    let model = root().join("sample_data/models/clip-tiny");
    std::fs::write(
        &p,
        format!(
            "[input]\nbands = [1, 2, 3]\nscale = \"percentile:2,98\"\n[tiling]\ntarget_gsd = 20.0\nthreads = 1\n\
             [[stage]]\nname = \"landcover\"\ntask = \"classify\"\nmodel = \"{}\"\nlabels = [\"forest\", \"water\", \"city\"]\n",
            model.display()
        ),
    )
    .expect("write pipeline");
    p
}

/// Hidden work-in-progress entries left in an output folder.
fn leftovers(out: &Path) -> Vec<String> {
    walk(out)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.contains('~') || n.contains("tessera-tmp") || n.ends_with(".partial"))
        .collect()
}

/// The rasters of an output tree with their bytes, relative paths.
fn rasters(out: &Path) -> Vec<(String, Vec<u8>)> {
    walk(out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tif"))
        .map(|p| {
            (
                p.strip_prefix(out).expect("below").display().to_string(),
                std::fs::read(&p).expect("read"),
            )
        })
        .collect()
}

/// Relative paths of every file, without the ingest database.
fn files(out: &Path) -> Vec<String> {
    walk(out)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| p.strip_prefix(out).expect("below").display().to_string())
        .filter(|p| !p.starts_with(".tessera-state"))
        .collect()
}

fn statuses(report: &serde_json::Value) -> Vec<(String, String)> {
    report["scenes"]
        .as_array()
        .expect("scenes")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name").to_string(),
                s["status"].as_str().expect("status").to_string(),
            )
        })
        .collect()
}

#[test]
fn shipped_pipelines_validate_and_bad_ones_name_file_and_line() {
    let dir = tempfile::tempdir().expect("tmp");
    for entry in std::fs::read_dir(root().join("pipelines")).expect("pipelines/") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|e| e == "toml") {
            let r = run(dir.path(), &["run", "--check", &p.display().to_string()]);
            r.success();
            assert!(r.stdout().contains("valid pipeline"), "{}", r.context());
        }
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[tiling]\ntile_size = 64\nstrid = 32\n").expect("write");
    run(dir.path(), &["run", "--check", "bad.toml"])
        .fails_with(&["bad.toml:3", "unknown field `strid`"]);
    std::fs::write(
        &bad,
        "[[stage]]\ntask = \"segment\"\nmodel = \"missing-model\"\n",
    )
    .expect("write");
    run(dir.path(), &["run", "--check", "bad.toml"]).fails_with(&["bad.toml:1", "does not exist"]);
}

#[test]
fn a_batch_with_bad_scenes_finishes_the_good_ones_and_reruns_skip() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let scenes = d.join("scenes");
    std::fs::create_dir(&scenes).expect("mkdir");
    for (i, (x, y)) in [(0, 0), (320, 0), (0, 320)].iter().enumerate() {
        crop(&scenes.join(format!("good{i}.tif")), *x, *y, 256);
    }
    // A truncated GeoTIFF and a file that is not a raster at all.
    let good = std::fs::read(scenes.join("good0.tif")).expect("read");
    std::fs::write(scenes.join("corrupt.tif"), &good[..good.len() / 3]).expect("write");
    std::fs::write(scenes.join("notes.tif"), b"this is not a GeoTIFF").expect("write");
    let pipeline = land_cover(d);
    let p = pipeline.display().to_string();
    let args = [
        "run",
        &p,
        "scenes",
        "missing.tif",
        "--out",
        "out",
        "--json",
        "--quiet",
    ];
    let r = run(d, &args);
    assert_eq!(
        r.output.status.code(),
        Some(3),
        "some failed{}",
        r.context()
    );
    let report = r.json();
    assert_eq!(report["done"], 3, "{}", r.context());
    assert_eq!(report["failed"], 3, "{}", r.context());
    for s in report["scenes"].as_array().expect("scenes") {
        if s["status"] == "failed" {
            let e = s["error"].as_str().expect("error");
            let name = s["name"].as_str().expect("name");
            assert!(e.contains(name), "the error names the file: {e}");
            assert!(!d.join("out").join(name).exists());
        } else {
            let folder = d.join(s["output"].as_str().expect("output"));
            for f in ["record.json", "item.json", "landcover/classes.tif"] {
                assert!(folder.join(f).is_file(), "{f} in {}", folder.display());
            }
        }
    }
    assert!(
        leftovers(&d.join("out")).is_empty(),
        "{:?}",
        leftovers(&d.join("out"))
    );
    // The STAC Items validate (core + projection extension, offline schemas) and name files
    // that exist.
    match common::venv_python() {
        Some(py) => {
            let items: Vec<PathBuf> = walk(&d.join("out"))
                .into_iter()
                .filter(|p| p.file_name().is_some_and(|n| n == "item.json"))
                .collect();
            assert_eq!(items.len(), 3);
            let out = Command::new(py)
                .arg(root().join("tests/python/validate_stac.py"))
                .args(&items)
                .output()
                .expect("run the validator");
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => eprintln!("skipped STAC validation: no .venv (run make setup)"),
    }
    let first = rasters(&d.join("out"));

    // Rerun: the good scenes are complete and skipped.
    let r = run(d, &args);
    let report = r.json();
    assert_eq!(report["skipped"], 3, "{}", r.context());
    assert_eq!(report["done"], 0);
    // Touched but unchanged: still skipped. Changed content: redone.
    let later = std::time::SystemTime::now() + Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(scenes.join("good1.tif"))
        .and_then(|f| f.set_modified(later))
        .expect("touch");
    crop(&scenes.join("good2.tif"), 100, 100, 256);
    let report = run(d, &args).json();
    let st = statuses(&report);
    assert!(st.contains(&("good0".into(), "skipped".into())), "{st:?}");
    assert!(st.contains(&("good1".into(), "skipped".into())), "{st:?}");
    assert!(st.contains(&("good2".into(), "done".into())), "{st:?}");
    // --force redoes everything, with identical results for unchanged scenes.
    let mut forced = args.to_vec();
    forced.push("--force");
    let report = run(d, &forced).json();
    assert_eq!(report["done"], 3);
    let again = rasters(&d.join("out"));
    for (name, bytes) in &first {
        if name.starts_with("good0") || name.starts_with("good1") {
            let other = again.iter().find(|(n, _)| n == name).expect("same file");
            assert!(&other.1 == bytes, "{name} differs after --force");
        }
    }
}

#[test]
fn one_read_pass_gives_the_same_results_as_separate_stages() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    crop(&d.join("scene.tif"), 64, 64, 320);
    let shipped = std::fs::read_to_string(root().join("pipelines/multi-model.toml")).expect("read");
    let models = root().join("sample_data/models");
    let text = shipped.replace("../sample_data/models", &models.display().to_string());
    std::fs::write(d.join("shared.toml"), &text).expect("write");
    std::fs::write(
        d.join("separate.toml"),
        text.replace("shared_pass = true", "shared_pass = false"),
    )
    .expect("write");
    for (p, out) in [("shared.toml", "a"), ("separate.toml", "b")] {
        run(d, &["run", p, "scene.tif", "--out", out, "--quiet"]).success();
    }
    let (a, b) = (rasters(&d.join("a")), rasters(&d.join("b")));
    assert_eq!(
        a.len(),
        3,
        "landcover classes and probabilities, mask classes"
    );
    assert_eq!(
        a, b,
        "rasters of the shared pass equal those of separate passes"
    );
    let (ra, rb): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&std::fs::read(d.join("a/scene/record.json")).expect("a"))
            .expect("json"),
        serde_json::from_slice(&std::fs::read(d.join("b/scene/record.json")).expect("b"))
            .expect("json"),
    );
    assert_eq!(
        ra["stages"]["objects"]["detections"], rb["stages"]["objects"]["detections"],
        "same detections"
    );
    assert_eq!(
        ra["stages"]["masks"]["polygons"],
        rb["stages"]["masks"]["polygons"]
    );
    // The records name every output where it ended up, not the temporary folder.
    for (record, out) in [(&ra, "a"), (&rb, "b")] {
        let stages = record["stages"].as_object().expect("stages");
        assert_eq!(stages.len(), 3, "{record}");
        for (name, stage) in stages {
            let outputs = stage["outputs"].as_array().expect("outputs");
            assert!(!outputs.is_empty(), "{name}: {stage}");
            let stage_dir = d.join(out).join("scene").join(name);
            for o in outputs {
                let o = d.join(o.as_str().expect("path"));
                assert!(o.starts_with(&stage_dir), "{name}: {}", o.display());
                assert!(o.exists(), "{}", o.display());
            }
            assert!(
                stage["provider"].is_string() && stage["tiles_total"].is_u64(),
                "{stage}"
            );
        }
    }
}

#[test]
fn shards_together_produce_exactly_one_runs_outputs() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let scenes = d.join("scenes");
    std::fs::create_dir(&scenes).expect("mkdir");
    for i in 0..6 {
        crop(&scenes.join(format!("s{i}.tif")), 64 * i, 32 * i, 192);
    }
    let p = land_cover(d).display().to_string();
    run(d, &["run", &p, "scenes", "--out", "one", "--quiet"]).success();
    let mut taken = 0;
    for i in 0..3 {
        let shard = format!("{i}/3");
        let mut cmd = tessera();
        cmd.args(["run", &p, "scenes", "--out", "sharded", "--quiet", "--json"])
            .current_dir(d);
        // Shard 2 comes from a Slurm array's environment instead of the flag.
        if i == 2 {
            cmd.env("SLURM_ARRAY_TASK_ID", "7")
                .env("SLURM_ARRAY_TASK_MIN", "5")
                .env("SLURM_ARRAY_TASK_COUNT", "3");
        } else {
            cmd.args(["--shard", &shard]);
        }
        let out = cmd.output().expect("run");
        assert!(out.status.success());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(report["shard"]["index"], i);
        taken += report["done"].as_u64().expect("done");
    }
    assert_eq!(taken, 6, "every scene in exactly one shard");
    // Each shard indexes its own scenes (index-I-of-N.html); the unsharded run has index.html.
    let indexes = |out: &Path| -> Vec<String> {
        files(out)
            .into_iter()
            .filter(|f| f.starts_with("index") && f.ends_with(".html"))
            .collect()
    };
    assert_eq!(indexes(&d.join("one")), ["index.html"]);
    let mut sharded = indexes(&d.join("sharded"));
    sharded.sort();
    assert_eq!(
        sharded,
        [
            "index-0-of-3.html",
            "index-1-of-3.html",
            "index-2-of-3.html"
        ]
    );
    let scene_files = |out: &Path| -> Vec<String> {
        files(out).into_iter().filter(|f| f.contains('/')).collect()
    };
    assert_eq!(scene_files(&d.join("one")), scene_files(&d.join("sharded")));
    assert_eq!(rasters(&d.join("one")), rasters(&d.join("sharded")));
}

#[test]
fn sigkill_at_any_point_then_rerun_gives_the_uninterrupted_outputs() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let scenes = d.join("scenes");
    std::fs::create_dir(&scenes).expect("mkdir");
    for i in 0..4 {
        crop(&scenes.join(format!("k{i}.tif")), 96 * i, 64 * i, 256);
    }
    let p = land_cover(d).display().to_string();
    let t = Instant::now();
    run(d, &["run", &p, "scenes", "--out", "reference", "--quiet"]).success();
    let full = t.elapsed();
    let reference = rasters(&d.join("reference"));
    let reference_files = files(&d.join("reference"));
    for (k, fraction) in [0.1, 0.3, 0.5, 0.7, 0.9].iter().enumerate() {
        let out = format!("killed{k}");
        let mut child = tessera()
            .args(["run", &p, "scenes", "--out", &out, "--quiet"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(full.mul_f64(*fraction));
        // SIGKILL: no chance to clean up.
        let _ = child.kill();
        let _ = child.wait();
        let r = run(
            d,
            &["run", &p, "scenes", "--out", &out, "--json", "--quiet"],
        );
        r.success();
        let report = r.json();
        assert_eq!(
            report["done"].as_u64().unwrap_or(0) + report["skipped"].as_u64().unwrap_or(0),
            4,
            "{}",
            r.context()
        );
        let out = d.join(&out);
        assert!(
            leftovers(&out).is_empty(),
            "kill at {fraction}: {:?}",
            leftovers(&out)
        );
        assert_eq!(files(&out), reference_files, "kill at {fraction}");
        assert!(
            rasters(&out) == reference,
            "kill at {fraction}: rasters differ"
        );
    }
}

/// `n` small scenes in `dir`.
fn scene_folder(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for i in 0..n {
        crop(
            &dir.join(format!("scene{i:02}.tif")),
            (i % 5) * 96,
            (i / 5) * 96,
            128,
        );
    }
}

/// The ingest state as JSON.
fn ingest_status(d: &Path, out: &str) -> serde_json::Value {
    run(d, &["ingest", "--status", "--out", out, "--json"])
        .success()
        .json()
}

#[test]
fn two_concurrent_ingest_runs_process_each_scene_exactly_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    scene_folder(&d.join("incoming"), 20);
    let p = land_cover(d).display().to_string();
    let spawn = || {
        tessera()
            .args([
                "ingest",
                "incoming",
                "--pipeline",
                &p,
                "--out",
                "out",
                "--settle",
                "0",
                "--json",
                "--quiet",
            ])
            .current_dir(d)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn(), spawn());
    let mut seen: Vec<String> = Vec::new();
    let mut per_instance = Vec::new();
    for child in [a, b] {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let names: Vec<String> = report["processed"]
            .as_array()
            .expect("processed")
            .iter()
            .map(|s| s["name"].as_str().expect("name").to_string())
            .collect();
        per_instance.push(names.len());
        seen.extend(names);
    }
    seen.sort();
    let total = seen.len();
    seen.dedup();
    assert_eq!(total, 20, "20 scenes processed in all ({per_instance:?})");
    assert_eq!(seen.len(), 20, "no scene processed twice");
    let status = ingest_status(d, "out");
    assert_eq!(status["counts"]["done"], 20, "{status}");
    for s in status["scenes"].as_array().expect("scenes") {
        assert_eq!(s["attempts"], 1, "{s}");
    }
    // A later pass finds nothing new.
    let r = run(
        d,
        &[
            "ingest",
            "incoming",
            "--pipeline",
            &p,
            "--out",
            "out",
            "--settle",
            "0",
            "--json",
        ],
    );
    assert_eq!(
        r.success().json()["processed"].as_array().map(Vec::len),
        Some(0)
    );
}

#[test]
fn ingest_waits_for_files_being_written_and_records_failures() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let incoming = d.join("incoming");
    scene_folder(&incoming, 2);
    let p = land_cover(d).display().to_string();
    let ingest = |settle: &str| {
        run(
            d,
            &[
                "ingest",
                "incoming",
                "--pipeline",
                &p,
                "--out",
                "out",
                "--settle",
                settle,
                "--retry-after",
                "0",
                "--json",
                "--quiet",
            ],
        )
    };
    // Just written: modified within the settle time, so still "being written".
    let r = ingest("30");
    r.success();
    let report = r.json();
    assert_eq!(
        report["waiting"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(report["processed"].as_array().map(Vec::len), Some(0));
    // A growing file: written in pieces while ingest passes run.
    let whole = std::fs::read(incoming.join("scene00.tif")).expect("read");
    let growing = incoming.join("growing.tif");
    std::fs::write(&growing, &whole[..whole.len() / 2]).expect("write");
    let report = ingest("30").json();
    let waiting: Vec<&str> = report["waiting"]
        .as_array()
        .expect("waiting")
        .iter()
        .filter_map(|w| w.as_str())
        .collect();
    assert!(
        waiting.iter().any(|w| w.ends_with("growing.tif")),
        "{report}"
    );
    std::fs::write(&growing, &whole).expect("write");
    // A corrupt scene fails permanently: recorded, not retried until it changes.
    std::fs::write(incoming.join("broken.tif"), b"not a raster").expect("write");
    // Every file settled: last modified a minute ago (set, rather than waited for, so that a
    // loaded machine cannot make the passes above see them settled).
    let past = std::time::SystemTime::now() - Duration::from_secs(60);
    for e in std::fs::read_dir(&incoming).expect("incoming").flatten() {
        let f = std::fs::File::options()
            .write(true)
            .open(e.path())
            .expect("open");
        f.set_modified(past).expect("set mtime");
    }
    let r = ingest("30");
    assert_eq!(r.output.status.code(), Some(3), "{}", r.context());
    let report = r.json();
    assert_eq!(report["done"], 3, "{report}");
    assert_eq!(report["failed"], 1, "{report}");
    let status = ingest_status(d, "out");
    let broken = status["scenes"]
        .as_array()
        .expect("scenes")
        .iter()
        .find(|s| {
            s["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("broken.tif"))
        })
        .expect("broken recorded")
        .clone();
    assert_eq!(broken["status"], "failed", "{broken}");
    assert!(broken["error"]
        .as_str()
        .is_some_and(|e| e.contains("broken.tif")));
    let report = ingest("2").json();
    assert_eq!(
        report["processed"].as_array().map(Vec::len),
        Some(0),
        "not retried: {report}"
    );
    // Fixed (the file changes): processed.
    std::fs::copy(incoming.join("scene01.tif"), incoming.join("broken.tif")).expect("copy");
    std::fs::File::options()
        .write(true)
        .open(incoming.join("broken.tif"))
        .and_then(|f| f.set_modified(past))
        .expect("set mtime");
    let report = ingest("2").json();
    assert_eq!(report["done"], 1, "{report}");
    let status = ingest_status(d, "out");
    assert_eq!(status["counts"]["done"], 4, "{status}");
}

#[test]
fn ingest_retries_transient_failures_with_backoff() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    scene_folder(&d.join("incoming"), 1);
    let p = land_cover(d).display().to_string();
    // A pipeline asking for TensorRT, which this machine lacks (CI has no GPU): the runtime
    // fails to start, a failure that may go away (a device back online), so it is retried.
    let text = std::fs::read_to_string(&p).expect("read");
    std::fs::write(&p, format!("[runtime]\ndevice = \"tensorrt\"\n{text}")).expect("write");
    let ingest = || {
        run(
            d,
            &[
                "ingest",
                "incoming",
                "--pipeline",
                &p,
                "--out",
                "out",
                "--settle",
                "0",
                "--retry-after",
                "600",
                "--max-attempts",
                "2",
                "--json",
                "--quiet",
            ],
        )
    };
    let r = ingest();
    if r.output.status.success() {
        eprintln!("skipped: this machine runs TensorRT, so nothing fails");
        return;
    }
    assert_eq!(r.output.status.code(), Some(1), "{}", r.context());
    let status = ingest_status(d, "out");
    assert_eq!(status["scenes"][0]["status"], "retry", "{status}");
    assert!(
        status["scenes"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("TensorRT")),
        "{status}"
    );
    // Within the backoff: not tried again.
    let r = ingest();
    assert_eq!(
        r.json()["processed"].as_array().map(Vec::len),
        Some(0),
        "{}",
        r.context()
    );
    // The backoff over (moved into the past in the state database rather than waited for, so
    // that a loaded machine cannot make the run above fall outside it).
    let db = rusqlite::Connection::open(d.join("out/.tessera-state.sqlite")).expect("state db");
    let moved = db
        .execute(
            "UPDATE scenes SET next_attempt_at = 0 WHERE status = 'retry'",
            [],
        )
        .expect("update");
    assert_eq!(moved, 1);
    drop(db);
    // Second and last attempt fails too: now permanent.
    assert_eq!(ingest().output.status.code(), Some(1));
    let status = ingest_status(d, "out");
    assert_eq!(status["scenes"][0]["status"], "failed", "{status}");
    assert_eq!(status["scenes"][0]["attempts"], 2, "{status}");
}

#[test]
fn watch_processes_new_scenes_until_stopped() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir(d.join("incoming")).expect("mkdir");
    let p = land_cover(d).display().to_string();
    let mut child = tessera()
        .args([
            "watch",
            "incoming",
            "--pipeline",
            &p,
            "--out",
            "out",
            "--settle",
            "0",
            "--interval",
            "0.3",
            "--quiet",
        ])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    crop(&d.join("scene.tif"), 0, 0, 128);
    std::fs::rename(d.join("scene.tif"), d.join("incoming/scene.tif")).expect("move in");
    let record = d.join("out/scene/record.json");
    let t = Instant::now();
    while !record.exists() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(record.exists(), "watch processed the new scene");
    // SIGTERM: a clean stop.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "watch stops on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn a_long_scene_keeps_its_claim_alive() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir(d.join("incoming")).expect("mkdir");
    // 3600 tiles of 64 px: long enough for several renewals at --lease 2 (every second).
    let status = Command::new("gdal_translate")
        .args(["-q", "-outsize", "3840", "3840"])
        .arg(sample())
        .arg(d.join("incoming/big.tif"))
        .status()
        .expect("gdal_translate");
    assert!(status.success());
    let model = root().join("sample_data/models/clip-tiny");
    std::fs::write(
        d.join("p.toml"),
        format!(
            "[input]\nbands = [1, 2, 3]\n[[stage]]\ntask = \"classify\"\nmodel = \"{}\"\nlabels = [\"a\", \"b\"]\n",
            model.display()
        ),
    )
    .expect("write");
    run(
        d,
        &[
            "ingest",
            "incoming",
            "--pipeline",
            "p.toml",
            "--out",
            "out",
            "--settle",
            "0",
            "--lease",
            "2",
            "--quiet",
        ],
    )
    .success();
    let status = ingest_status(d, "out");
    let row = &status["scenes"][0];
    assert_eq!(row["status"], "done", "{status}");
    let (claimed, finished, seconds) = (
        row["claimed_at"].as_f64().expect("claimed_at"),
        row["finished_at"].as_f64().expect("finished_at"),
        row["seconds"].as_f64().expect("seconds"),
    );
    assert!(
        seconds > 1.5,
        "the scene took {seconds} s: too short to see a renewal"
    );
    // Renewed while it ran: the claim time moved past the start of the scene.
    assert!(
        claimed > finished - seconds + 0.9,
        "claimed_at {claimed}, started {}, finished {finished}",
        finished - seconds
    );
}

#[test]
fn bad_batch_and_ingest_arguments_fail_cleanly_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    crop(&d.join("scene.tif"), 0, 0, 128);
    let p = land_cover(d).display().to_string();
    run(
        d,
        &["run", &p, "scene.tif", "--out", "out", "--shard", "3/3"],
    )
    .fails_with(&["--shard '3/3'", "0 <= I < N"]);
    run(d, &["run", &p, "scene.tif", "--out", "out", "--jobs", "0"])
        .fails_with(&["--jobs must be at least 1"]);
    run(d, &["run", &p, "--out", "out", "nothing-*.tif"])
        .fails_with(&["nothing-*.tif", "no file matches"]);
    std::fs::write(d.join("bad.toml"), "[tiling]\noverlap = -1\n").expect("write");
    run(d, &["run", "bad.toml", "scene.tif", "--out", "out"]).fails_with(&["bad.toml:2"]);
    run(
        d,
        &["ingest", "scene.tif", "--pipeline", &p, "--out", "out"],
    )
    .fails_with(&["scene.tif", "not a folder"]);
    run(d, &["ingest", "--status", "--out", "out"]).fails_with(&["no state database here"]);
    assert!(!d.join("out").exists(), "nothing written for bad arguments");
}
