//! Progress on stderr: with `--progress` every phase of a run is named (loading, reading, the
//! model, stitching, COG assembly, polygonizing, writing), as plain lines where stderr is not a
//! terminal; without it, a run whose stderr is a pipe prints nothing there.

mod common;

use std::path::Path;

use common::{clip_tiny, run};

fn oracle(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models/oracles")
        .join(name)
        .display()
        .to_string()
}

/// A 1 m RGB scene in UTM 33N, a red square on green.
fn paint(path: &Path, w: usize, h: usize) {
    common::rgb_scene(path, (w, h), |x, y| {
        if (40..120).contains(&x) && (30..90).contains(&y) {
            [220, 30, 30]
        } else {
            [30, 120, 30]
        }
    });
}

/// Every phase's start and end line, in order of start, with the tile counts.
fn assert_phases(stderr: &str, phases: &[&str]) {
    let mut at = 0;
    for p in phases {
        let start = stderr[at..]
            .find(&format!("{p}: started"))
            .unwrap_or_else(|| panic!("no start of {p:?} (after byte {at}) in:\n{stderr}"));
        at += start;
        assert!(
            stderr.contains(&format!("{p}: done")),
            "{p} never done:\n{stderr}"
        );
    }
    // Plain lines: no cursor movement or carriage returns in a pipe.
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "{stderr:?}"
    );
}

#[test]
fn every_phase_is_named_with_progress_and_nothing_without() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    paint(&d.join("scene.tif"), 160, 128);
    let model = oracle("seg-threshold");
    let seg = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "segment",
            "scene.tif",
            "--model",
            &model,
            "--tile-size",
            "32",
        ];
        args.extend(["--out", out]);
        args.extend(extra);
        run(d, &args)
    };
    let r = seg("a", &["--progress"]);
    r.success();
    let err = r.stderr();
    assert_phases(
        &err,
        &[
            "loading model",
            "reading",
            "model (segmenting)",
            "stitching",
            "assembling COGs",
            "polygonizing",
            "writing polygons.gpkg",
        ],
    );
    assert!(err.contains("reading: done, 20/20 tiles"), "{err}");
    assert!(err.contains("stitching: done, 20/20 tiles"), "{err}");
    // Off: stderr is a pipe here, so nothing unless asked; --quiet too.
    let r = seg("b", &[]);
    r.success();
    assert_eq!(r.stderr(), "", "progress in a pipe without --progress");
    let r = seg("c", &["--quiet"]);
    r.success();
    assert_eq!(r.stderr(), "");
    // Both: clap's usage error.
    let r = seg("e", &["--quiet", "--progress"]);
    assert!(!r.output.status.success());
    assert!(
        r.stderr()
            .contains("'--quiet' cannot be used with '--progress'"),
        "{}",
        r.stderr()
    );
    assert!(!d.join("e").exists());

    let r = run(
        d,
        &[
            "classify",
            "scene.tif",
            "--model",
            &clip_tiny().display().to_string(),
            "--labels",
            "red,green",
            "--no-cache",
            "--out",
            "cls",
            "--progress",
        ],
    );
    r.success();
    assert_phases(
        &r.stderr(),
        &[
            "loading model",
            "embedding labels",
            "reading",
            "model (classifying)",
            "results",
            "assembling COGs",
            "writing tiles.gpkg",
            "polygonizing",
            "writing labels.gpkg",
        ],
    );

    let r = run(
        d,
        &[
            "tiles",
            "scene.tif",
            "--tile-size",
            "64",
            "--out",
            "t.gpkg",
            "--progress",
        ],
    );
    r.success();
    assert_phases(&r.stderr(), &["reading"]);
}
