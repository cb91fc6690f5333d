//! Hostile use of the command line, one table per class of defect: absurd option values,
//! stdout closed or full, messages that must name the file and the cause, output names that
//! disagree with the format or replace the input, and exit codes and logs. Every input is
//! generated here; every run happens under an address-space limit (like `tests/hostile.rs`),
//! so an absurd value that allocates fails the test instead of exhausting the machine.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::limited::{assert_refused, limited, run_limited, run_limited_env, wait_limited};
use common::Run;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sample() -> String {
    root()
        .join("sample_data/sentinel2_rgbn_10m.tif")
        .display()
        .to_string()
}

fn clip() -> String {
    root()
        .join("sample_data/models/clip-tiny")
        .display()
        .to_string()
}

/// A `size` x `size` crop of the sample scene's corner.
fn crop(path: &Path, size: usize) {
    common::crop(path, 0, 0, size);
}

/// A classification pipeline over the bundled CLIP model.
fn land_cover(dir: &Path) -> String {
    let p = dir.join("land-cover.toml");
    std::fs::write(
        &p,
        format!(
            "[input]\nbands = [1, 2, 3]\n[tiling]\nthreads = 1\n\
             [[stage]]\nname = \"landcover\"\ntask = \"classify\"\nmodel = \"{}\"\nlabels = [\"forest\", \"water\"]\n",
            clip()
        ),
    )
    .expect("write pipeline");
    p.display().to_string()
}

// ---- 3. absurd options ---------------------------------------------------------------------

/// A copy of a bundled model package with its `[preprocess] size` replaced.
fn package_with_size(dir: &Path, name: &str, size: &str) -> String {
    let to = dir.join(format!("{name}-{size}"));
    common::copy_dir(&root().join("sample_data/models").join(name), &to);
    let manifest = to.join("model.toml");
    let text = std::fs::read_to_string(&manifest).expect("read");
    let mut replaced = false;
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if !replaced && l.starts_with("size = ") {
                replaced = true;
                format!("size = {size}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(replaced, "no size in {}", manifest.display());
    std::fs::write(&manifest, text.join("\n")).expect("write");
    to.display().to_string()
}

/// A pipeline file with `tiling` lines and `stages` classification stages.
fn pipeline(dir: &Path, name: &str, tiling: &str, stages: usize) -> String {
    let p = dir.join(format!("{name}.toml"));
    let mut text = format!("[tiling]\n{tiling}\n");
    for i in 0..stages {
        text.push_str(&format!(
            "[[stage]]\nname = \"s{i}\"\ntask = \"classify\"\nmodel = \"{}\"\nlabels = [\"a\", \"b\"]\n",
            clip()
        ));
    }
    std::fs::write(&p, text).expect("write pipeline");
    p.display().to_string()
}

/// Arguments, environment added, what the error line names.
type Case<'a> = (Vec<String>, &'a [(&'a str, &'a str)], Vec<&'a str>);

/// Values far out of range are refused up front, naming the option (flag or key), on the
/// command line, in `run --check` and `run`, and in model packages (`models check` too).
#[test]
fn absurd_options() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let s = sample();
    let m = clip();
    let small = [("TESSERA_MEMORY_BUDGET", "64M")];
    let huge_clip = package_with_size(d, "clip-tiny", "9223372036854775807");
    let huge_seg = package_with_size(d, "clipseg-tiny", "1000000000");
    let huge_cap = package_with_size(d, "blip2-tiny", "1000000000");
    let classify = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "classify", &s, "--model", &m, "--labels", "a,b", "--out", "o",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let strings = |v: &[&str]| -> Vec<String> { v.iter().map(|x| x.to_string()).collect() };
    let mut cases: Vec<Case> = vec![
        (
            classify(&["--batch-size", "1000000000"]),
            &[],
            vec!["--batch-size", "1000000000", "65536"],
        ),
        (
            classify(&["--batch-size", "2000"]),
            &small,
            vec!["--batch-size", "memory budget"],
        ),
        (
            strings(&["tiles", &s, "--tile-size", "1000000000", "--out", "g.gpkg"]),
            &[],
            vec!["--tile-size", "16384"],
        ),
        (
            strings(&["tiles", &s, "--tile-size", "100000", "--chips", "chips"]),
            &[],
            vec!["--tile-size", "16384"],
        ),
        (
            strings(&["tiles", &s, "--tile-size", "64", "--target-gsd", "1e-9"]),
            &[],
            vec!["--target-gsd"],
        ),
        (
            classify(&["--target-gsd", "1e-9"]),
            &[],
            vec!["--target-gsd"],
        ),
        (
            strings(&["bench-model", &m, "--batch-size", "1000000000"]),
            &[],
            vec!["--batch-size"],
        ),
        (
            strings(&["bench-model", &m, "--batch-size", "2000"]),
            &small,
            vec!["--batch-size", "memory budget"],
        ),
        (
            strings(&["bench-read", &s, "--tile-size", "100000"]),
            &[],
            vec!["--tile-size"],
        ),
        (
            strings(&["bench-model", &huge_clip]),
            &[],
            vec!["model.toml", "input size"],
        ),
        (
            strings(&["bench-model", &huge_seg]),
            &[],
            vec!["model.toml", "input size"],
        ),
        (
            strings(&[
                "classify", &s, "--model", &huge_clip, "--labels", "a", "--out", "o",
            ]),
            &[],
            vec!["model.toml", "input size"],
        ),
        (
            strings(&["caption", &s, "--model", &huge_cap, "--out", "o"]),
            &[],
            vec!["model.toml", "input size"],
        ),
    ];
    // Pipeline files: `run --check` and `run` refuse the same values.
    for (name, tiling, stages, env, needles) in [
        (
            "stages",
            "",
            300,
            &[][..],
            vec!["stages.toml", "300 stages", "32"],
        ),
        (
            "batch",
            "batch_size = 1000000000",
            1,
            &[][..],
            vec!["batch_size", "65536"],
        ),
        (
            "tile",
            "tile_size = 1000000000",
            1,
            &[][..],
            vec!["tile_size", "16384"],
        ),
        ("gsd", "target_gsd = 1e-9", 1, &[][..], vec!["target_gsd"]),
        (
            "budget",
            "batch_size = 2000",
            1,
            &small[..],
            vec!["batch_size", "memory budget"],
        ),
    ] {
        let p = pipeline(d, name, tiling, stages);
        crop(&d.join("scene.tif"), 64);
        for check in [true, false] {
            let mut args = strings(&["run", &p, "scene.tif", "--out", "out", "--quiet"]);
            if check {
                args.push("--check".into());
            }
            cases.push((args, env, needles.clone()));
        }
    }
    for (args, env, needles) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run_limited_env(d, &args, env);
        assert_refused(&r, 1, needles);
        for out in ["o", "g.gpkg", "chips", "out"] {
            assert!(!d.join(out).exists(), "{out} written{}", r.context());
        }
    }
    // `models check` lists the problem (exit 1, no panic).
    for package in [&huge_clip, &huge_seg, &huge_cap] {
        let r = run_limited(d, &["models", "check", package]);
        assert_eq!(r.output.status.code(), Some(1), "{}", r.context());
        assert!(
            r.stdout().contains("model.toml") && r.stdout().contains("input size"),
            "{}",
            r.context()
        );
        assert!(!r.stderr().contains("panicked"), "{}", r.context());
    }
}

// ---- 12. messages ---------------------------------------------------------------------------

/// Complex pixel types are named as GDAL names them (not a debug dump) by every command, in
/// one line; `bench-model` on a package it does not time names the package.
#[test]
fn messages_name_types_and_packages() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    for t in ["CInt16", "CFloat32"] {
        let status = Command::new("gdal_translate")
            .args(["-q", "-ot", t, "-srcwin", "0", "0", "64", "64"])
            .arg(sample())
            .arg(d.join(format!("{t}.tif")))
            .status()
            .expect("gdal_translate runs");
        assert!(status.success());
    }
    let m = clip();
    let blip = root()
        .join("sample_data/models/blip2-tiny")
        .display()
        .to_string();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["info", "CInt16.tif"],
            vec!["CInt16.tif", "band 1", "CInt16", "complex"],
        ),
        (
            vec!["info", "CFloat32.tif", "--json"],
            vec!["CFloat32.tif", "CFloat32"],
        ),
        (
            vec![
                "tiles",
                "CInt16.tif",
                "--tile-size",
                "32",
                "--out",
                "g.gpkg",
            ],
            vec!["CInt16.tif", "CInt16"],
        ),
        (
            vec![
                "classify",
                "CFloat32.tif",
                "--model",
                &m,
                "--labels",
                "a",
                "--out",
                "o",
            ],
            vec!["CFloat32.tif", "CFloat32"],
        ),
        (vec!["bench-model", &blip], vec![&blip, "bench-model times"]),
    ];
    for (args, needles) in &cases {
        let r = run_limited(d, args);
        assert_refused(&r, 1, needles);
        assert!(
            !r.stderr().contains("GdalTypeDescriptor"),
            "{}",
            r.context()
        );
        assert!(!d.join("g.gpkg").exists() && !d.join("o").exists());
    }
}

/// Run tessera with files limited to `bytes` (SIGXFSZ ignored, so a write past it fails with
/// EFBIG, as a full disk fails with ENOSPC).
fn run_file_limited(dir: &Path, args: &[&str], bytes: u64) -> Run {
    use std::os::unix::process::CommandExt;
    let mut cmd = limited(dir, args);
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs before exec, and
    // an ignored signal stays ignored across exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera");
    wait_limited(child, dir, args)
}

/// Writes that fail part way (a full disk; here a file size limit) are one error line naming
/// the output, with nothing committed: no truncated chip or GeoJSON reported as written, and
/// no hang when the writer fails while readers are still sending tiles.
#[test]
fn failed_writes_are_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let s = sample();
    let cases: [(Vec<&str>, &[&str]); 4] = [
        (
            vec![
                "tiles",
                &s,
                "--tile-size",
                "128",
                "--chips",
                "chips",
                "--queue",
                "1",
            ],
            &["chips", "File too large"],
        ),
        (
            vec!["tiles", &s, "--tile-size", "8", "--out", "g.geojson"],
            &["g.geojson", "incomplete"],
        ),
        (
            vec!["tiles", &s, "--tile-size", "8", "--out", "g.fgb"],
            &["g.fgb", "I/O"],
        ),
        (
            vec!["tiles", &s, "--tile-size", "8", "--out", "g.parquet"],
            &["g.parquet", "File too large"],
        ),
    ];
    for (args, needles) in &cases {
        let r = run_file_limited(d, args, 16 << 10);
        assert_refused(&r, 1, needles);
        for out in ["chips", "g.geojson", "g.fgb", "g.parquet"] {
            assert!(!d.join(out).exists(), "{out} committed{}", r.context());
        }
    }
}

// ---- 13. output names ----------------------------------------------------------------------

/// An output extension that disagrees with the format (or names none) is refused, and so is
/// an output that is the input scene or a folder holding it, even with `--overwrite`; the
/// input is left untouched.
#[test]
fn output_names() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir(d.join("in")).expect("mkdir");
    crop(&d.join("in/scene.tif"), 128);
    // A GeoTIFF named .gpkg (GDAL goes by content): `--out` the same file passes the
    // extension check and must still be refused.
    std::fs::copy(d.join("in/scene.tif"), d.join("scene.gpkg")).expect("copy");
    let m = clip();
    let tiles = |rest: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["tiles", "in/scene.tif", "--tile-size", "32"];
        v.extend_from_slice(rest);
        v
    };
    // (args, what the error names, files that must not exist afterwards)
    let cases: Vec<(Vec<&str>, Vec<&str>, Vec<&str>)> = vec![
        (
            tiles(&["--out", "grid.xyz"]),
            vec!["grid.xyz", "'.xyz'", "names no vector format"],
            vec!["grid.xyz"],
        ),
        (
            tiles(&["--format", "gpkg", "--out", "x.shp"]),
            vec!["x.shp", "'.shp'", "--format gpkg"],
            vec!["x.shp"],
        ),
        (
            tiles(&["--format", "shp", "--out", "x.gpkg"]),
            vec!["x.gpkg", "'.gpkg'", "--format shp"],
            vec!["x.gpkg"],
        ),
        (
            vec![
                "tiles",
                "scene.gpkg",
                "--tile-size",
                "32",
                "--out",
                "./scene.gpkg",
                "--overwrite",
            ],
            vec!["./scene.gpkg", "replace the input"],
            vec![],
        ),
        (
            tiles(&["--chips", "in", "--overwrite"]),
            vec!["in", "replace the input", "in/scene.tif"],
            vec![],
        ),
        (
            vec![
                "classify",
                "in/scene.tif",
                "--model",
                &m,
                "--labels",
                "a,b",
                "--out",
                "./in/../in",
                "--overwrite",
            ],
            vec!["./in/../in", "replace the input"],
            vec![],
        ),
    ];
    let before = std::fs::read(d.join("in/scene.tif")).expect("read");
    let before_gpkg = std::fs::read(d.join("scene.gpkg")).expect("read");
    for (args, needles, absent) in &cases {
        let r = run_limited(d, args);
        assert_refused(&r, 1, needles);
        for a in absent {
            assert!(!d.join(a).exists(), "{a} written{}", r.context());
        }
        assert_eq!(
            std::fs::read(d.join("in/scene.tif")).ok().as_ref(),
            Some(&before)
        );
        assert_eq!(
            std::fs::read(d.join("scene.gpkg")).ok().as_ref(),
            Some(&before_gpkg)
        );
    }
    // What agrees is written: the extension's format, or GeoPackage without one.
    for out in ["grid.shp", "grid.fgb", "plain"] {
        run_limited(d, &tiles(&["--out", out])).success();
        assert!(d.join(out).exists(), "{out}");
    }
    run_limited(d, &tiles(&["--format", "geojson", "--out", "g.json"])).success();
}

// ---- 11. stdout closed or full --------------------------------------------------------------

/// A reader that closes the pipe is a quiet stop (exit 0, nothing on stderr); a full stdout
/// is one error line. Both never panic.
#[test]
fn stdout_closed_or_full() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let s = sample();
    let cases: [&[&str]; 4] = [
        &["info", &s, "--json"],
        &["info", &s],
        &["doctor"],
        &["tiles", &s, "--tile-size", "64", "--json"],
    ];
    for args in cases {
        // Closed before tessera writes anything (it needs a while to start GDAL).
        let mut child = limited(d, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take());
        let r = wait_limited(child, d, args);
        assert_eq!(
            r.output.status.code(),
            Some(0),
            "closed pipe{}",
            r.context()
        );
        assert!(
            r.stderr().is_empty(),
            "a closed pipe is quiet{}",
            r.context()
        );

        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let child = limited(d, args)
            .stdout(full)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let r = wait_limited(child, d, args);
        assert_refused(&r, 1, &["standard output", "No space left"]);
    }
}

// ---- 15. exit codes and logs ----------------------------------------------------------------

/// A batch in which every scene failed exits 1; 3 is for some failed while others completed.
#[test]
fn batch_exit_codes() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let p = land_cover(d);
    std::fs::create_dir(d.join("bad")).expect("mkdir");
    std::fs::write(d.join("bad/a.tif"), b"not a raster").expect("write");
    std::fs::write(d.join("bad/b.tif"), b"II*\0nor this").expect("write");
    std::fs::create_dir(d.join("mixed")).expect("mkdir");
    std::fs::write(d.join("mixed/a.tif"), b"not a raster").expect("write");
    crop(&d.join("mixed/good.tif"), 128);
    // (args, exit code)
    let cases: [(Vec<&str>, i32); 4] = [
        (vec!["run", &p, "bad", "--out", "out1", "--quiet"], 1),
        (vec!["run", &p, "mixed", "--out", "out2", "--quiet"], 3),
        (
            vec![
                "ingest",
                "bad",
                "--pipeline",
                &p,
                "--out",
                "out3",
                "--settle",
                "0",
                "--quiet",
            ],
            1,
        ),
        (
            vec![
                "ingest",
                "mixed",
                "--pipeline",
                &p,
                "--out",
                "out4",
                "--settle",
                "0",
                "--quiet",
            ],
            3,
        ),
    ];
    for (args, code) in cases {
        let r = run_limited(d, &args);
        assert_eq!(r.output.status.code(), Some(code), "{}", r.context());
        assert!(!r.stderr().contains("panicked"), "{}", r.context());
    }
}

/// `-v` logs the main steps of a single-scene job, without colours when stderr is not a
/// terminal; the untrained-weights note goes to stderr, not into the report on stdout.
#[test]
fn logs_and_notes_on_stderr() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let s = sample();
    let m = clip();
    // (args, what stderr logs)
    let cases: [(Vec<&str>, &[&str]); 2] = [
        (
            vec![
                "-v",
                "tiles",
                &s,
                "--tile-size",
                "128",
                "--out",
                "grid.gpkg",
            ],
            &["scene opened", "width=640", "tiles read", "grid.gpkg"],
        ),
        (
            vec![
                "-v", "classify", &s, "--model", &m, "--labels", "a,b", "--out", "cls", "--quiet",
            ],
            &[
                "scene opened",
                "model loaded",
                "CPUExecutionProvider",
                "tiles classified",
                "written",
                "untrained",
            ],
        ),
    ];
    for (args, logged) in cases {
        let r = run_limited(d, &args);
        r.success();
        let err = r.stderr();
        assert!(
            !err.contains('\u{1b}'),
            "ANSI escapes in logs{}",
            r.context()
        );
        for l in logged {
            assert!(err.contains(l), "stderr should log {l:?}{}", r.context());
        }
        assert!(!r.stdout().contains("untrained"), "{}", r.context());
    }
}
