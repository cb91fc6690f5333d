//! What a model package declares, honoured: its background class (polygons), a fixed batch
//! axis, and the border a valid-convolution segmenter cuts off its output. The models are
//! generated in each test by `tools/fixtures/make_test_graphs.py` (onnx helper API).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, venv_python};
use gdal::vector::LayerAccess;

const ORIGIN: (f64, f64) = (500_000.0, 4_600_000.0);

/// Write a model package into `dir/name` with `make_test_graphs.py KIND ARGS`; `None` when
/// the project's Python is absent (the test is skipped).
fn make_model(dir: &Path, name: &str, kind: &str, args: &[&str]) -> Option<PathBuf> {
    let py = venv_python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/fixtures/make_test_graphs.py");
    let out = dir.join(name);
    let o = Command::new(py)
        .arg(script)
        .arg(&out)
        .arg(kind)
        .args(args)
        .output()
        .expect("python");
    assert!(
        o.status.success(),
        "make_test_graphs.py failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(out)
}

/// Write a 1 m RGB scene from a per-pixel colour function.
fn paint(path: &Path, w: usize, h: usize, color: impl Fn(usize, usize) -> [u8; 3]) {
    let driver = gdal::DriverManager::get_driver_by_name("GTiff").expect("driver");
    let mut ds = driver
        .create_with_band_type::<u8, _>(path, w, h, 3)
        .expect("create");
    ds.set_geo_transform(&[ORIGIN.0, 1.0, 0.0, ORIGIN.1, 0.0, -1.0])
        .expect("gt");
    ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32633).expect("srs"))
        .expect("srs");
    for b in 0..3 {
        let plane: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| color(x, y)[b])
            .collect();
        ds.rasterband(b + 1)
            .expect("band")
            .write(
                (0, 0),
                (w, h),
                &mut gdal::raster::Buffer::new((w, h), plane),
            )
            .expect("write");
    }
    ds.close().expect("close");
}

/// Pure red, green or blue blocks of `block` pixels: the class (channel) at (x, y).
fn class_at(x: usize, y: usize, block: usize) -> usize {
    ((x / block) * 7 + (y / block) * 3 + (x / (3 * block))) % 3
}

fn paint_classes(path: &Path, w: usize, h: usize, block: usize) {
    paint(path, w, h, |x, y| {
        let mut c = [0u8; 3];
        c[class_at(x, y, block)] = 255;
        c
    });
}

/// Number of polygons of each class (0, 1, 2) in a polygon layer.
fn polygons_per_class(path: &Path) -> [usize; 3] {
    let ds = gdal::Dataset::open(path).expect("polygons");
    let mut layer = ds.layer(0).expect("layer");
    let mut n = [0usize; 3];
    for f in layer.features() {
        let c = f
            .field_as_integer(f.field_index("class").expect("class field"))
            .expect("class")
            .expect("class value");
        n[c as usize] += 1;
    }
    n
}

fn read_u8(path: &Path) -> (usize, usize, Vec<u8>) {
    let ds = gdal::Dataset::open(path).expect("open");
    let (w, h) = ds.raster_size();
    let v = ds
        .rasterband(1)
        .expect("band")
        .read_as::<u8>((0, 0), (w, h), (w, h), None)
        .expect("read");
    (w, h, v.data().to_vec())
}

#[test]
fn class_zero_of_a_multiclass_model_is_an_object_unless_declared_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let Some(plain) = make_model(d, "plain", "seg-logits", &[]) else {
        return;
    };
    let by_name =
        make_model(d, "by_name", "seg-logits", &["--background", "\"red\""]).expect("model");
    let by_index = make_model(d, "by_index", "seg-logits", &["--background", "1"]).expect("model");
    let (w, h) = (96, 80);
    paint_classes(&d.join("scene.tif"), w, h, 8);
    let mut want = [0usize; 3];
    {
        // Painted blocks of each class, counted 4-connected: the polygons a run must make.
        let mut seen = vec![false; w * h];
        for y0 in 0..h {
            for x0 in 0..w {
                if seen[y0 * w + x0] {
                    continue;
                }
                let c = class_at(x0, y0, 8);
                want[c] += 1;
                let mut stack = vec![(x0, y0)];
                seen[y0 * w + x0] = true;
                while let Some((x, y)) = stack.pop() {
                    let mut next = vec![];
                    if x > 0 {
                        next.push((x - 1, y));
                    }
                    if y > 0 {
                        next.push((x, y - 1));
                    }
                    if x + 1 < w {
                        next.push((x + 1, y));
                    }
                    if y + 1 < h {
                        next.push((x, y + 1));
                    }
                    for (nx, ny) in next {
                        if !seen[ny * w + nx] && class_at(nx, ny, 8) == c {
                            seen[ny * w + nx] = true;
                            stack.push((nx, ny));
                        }
                    }
                }
            }
        }
    }
    assert!(want.iter().all(|&n| n > 0), "{want:?}");
    let segment = |model: &Path, out: &str| {
        let j = run(
            d,
            &[
                "segment",
                "scene.tif",
                "--model",
                model.to_str().expect("utf8"),
                "--tile-size",
                "32",
                "--overlap",
                "8",
                "--out",
                out,
                "--json",
                "--quiet",
            ],
        )
        .success()
        .json();
        let n = polygons_per_class(&d.join(out).join("polygons.gpkg"));
        assert_eq!(j["polygons"].as_u64(), Some(n.iter().sum::<usize>() as u64));
        n
    };
    // No background declared: every class, class 0 included, has its polygons.
    assert_eq!(segment(&plain, "out_plain"), want);
    // A declared background (by name, or by index) has none; the others are unchanged.
    assert_eq!(segment(&by_name, "out_by_name"), [0, want[1], want[2]]);
    assert_eq!(segment(&by_index, "out_by_index"), [want[0], 0, want[2]]);

    // A background that is not one of the classes: the manifest is refused, naming it.
    let bad = make_model(d, "bad", "seg-logits", &["--background", "\"sky\""]).expect("model");
    run(d, &["segment", "scene.tif", "--model", "bad", "--out", "o"]).fails_with(&[
        "bad",
        "segmentation.background",
        "'sky'",
    ]);
    let bad3 = make_model(d, "bad3", "seg-logits", &["--background", "3"]).expect("model");
    run(
        d,
        &["segment", "scene.tif", "--model", "bad3", "--out", "o"],
    )
    .fails_with(&["bad3", "segmentation.background", "class 3"]);
    assert!(bad.is_dir() && bad3.is_dir() && !d.join("o").exists());
}

#[test]
fn fixed_batch_axis_segmenter_runs_with_the_default_batch_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let Some(fixed) = make_model(d, "fixed", "seg-logits", &["--batch", "1", "--size", "32"])
    else {
        return;
    };
    let fixed2 =
        make_model(d, "fixed2", "seg-logits", &["--batch", "2", "--size", "32"]).expect("model");
    // 5 x 4 tiles of 32 (an odd count: a batch of 2 ends padded).
    let (w, h) = (150, 120);
    paint_classes(&d.join("scene.tif"), w, h, 4);
    for (model, out) in [(&fixed, "o1"), (&fixed2, "o2")] {
        // The default batch size (no --batch-size), and an explicit one the graph overrides.
        for (extra, sub) in [(None, "default"), (Some("8"), "eight")] {
            let out = format!("{out}_{sub}");
            let mut args = vec![
                "segment",
                "scene.tif",
                "--model",
                model.to_str().expect("utf8"),
                "--out",
                &out,
                "--quiet",
            ];
            if let Some(b) = extra {
                args.extend(["--batch-size", b]);
            }
            run(d, &args).success();
            let (cw, ch, classes) = read_u8(&d.join(&out).join("classes.tif"));
            assert_eq!((cw, ch), (w, h));
            for y in 0..h {
                for x in 0..w {
                    assert_eq!(
                        classes[y * w + x] as usize,
                        class_at(x, y, 4),
                        "{out}: ({x}, {y})"
                    );
                }
            }
        }
    }
}

/// (label, envelope) of every detection, sorted.
fn boxes(path: &Path) -> Vec<(String, [i64; 4])> {
    let ds = gdal::Dataset::open(path).expect("open");
    let mut layer = ds.layer(0).expect("layer");
    let mut out: Vec<(String, [i64; 4])> = layer
        .features()
        .map(|f| {
            let label = f
                .field_as_string(f.field_index("label").expect("idx"))
                .expect("f")
                .unwrap_or_default();
            let e = f.geometry().expect("geom").envelope();
            let r = |v: f64| (v * 1000.0).round() as i64;
            (label, [r(e.MinX), r(e.MinY), r(e.MaxX), r(e.MaxY)])
        })
        .collect();
    out.sort();
    out
}

#[test]
fn fixed_batch_axis_detector_runs_with_the_default_batch_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let Some(fixed) = make_model(d, "fixed", "det-v8", &["--batch", "1"]) else {
        return;
    };
    // Red 16-pixel squares on the 16-pixel grid of the oracle detector, over 3 x 2 tiles.
    let squares = [(32usize, 32usize), (176, 176), (448, 16), (320, 288)];
    paint(&d.join("scene.tif"), 600, 400, |x, y| {
        let on = squares
            .iter()
            .any(|&(x0, y0)| x >= x0 && x < x0 + 16 && y >= y0 && y < y0 + 16);
        if on {
            [255, 0, 60]
        } else {
            [0, 0, 60]
        }
    });
    let dynamic =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/oracles/det-grid-v8");
    for (model, out) in [(&fixed, "out_fixed"), (&dynamic, "out_dynamic")] {
        run(
            d,
            &[
                "detect",
                "scene.tif",
                "--model",
                model.to_str().expect("utf8"),
                "--overlap",
                "64",
                "--scale",
                "range:0,255",
                "--out",
                out,
                "--quiet",
            ],
        )
        .success();
    }
    let got = boxes(&d.join("out_fixed").join("detections.gpkg"));
    assert_eq!(got.len(), squares.len(), "{got:?}");
    assert_eq!(got, boxes(&d.join("out_dynamic").join("detections.gpkg")));
}

/// Segment `scene.tif` in `d` with `model` (64-pixel tiles) into `out`; the class raster.
fn segment_classes(d: &Path, model: &Path, overlap: &str, out: &str) -> (usize, usize, Vec<u8>) {
    run(
        d,
        &[
            "segment",
            "scene.tif",
            "--model",
            model.to_str().expect("utf8"),
            "--tile-size",
            "64",
            "--overlap",
            overlap,
            "--blend",
            "cosine",
            "--out",
            out,
            "--quiet",
        ],
    )
    .success();
    read_u8(&d.join(out).join("classes.tif"))
}

#[test]
fn valid_convolution_outputs_are_placed_at_the_tile_centre() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Output = the input's centre: 64 -> 36 (14 a side, inferred: 64 / 36 is no stride) and
    // 64 -> 32 (16 a side, which would read as stride 2: declared with `margin = 16`).
    let Some(inferred) = make_model(d, "inferred", "seg-logits", &["--crop", "14"]) else {
        return;
    };
    let declared = make_model(
        d,
        "declared",
        "seg-logits",
        &["--crop", "16", "--margin", "16"],
    )
    .expect("m");
    // 3-pixel blocks: an output stretched over the tile, or shifted by a pixel, is wrong.
    let (w, h) = (200, 150);
    paint_classes(&d.join("scene.tif"), w, h, 3);
    for (model, m, overlap) in [
        (&inferred, 14usize, "28"),
        (&inferred, 14, "40"),
        (&declared, 16, "32"),
    ] {
        let out = format!("out_{m}_{overlap}");
        let (cw, ch, classes) = segment_classes(d, model, overlap, &out);
        assert_eq!((cw, ch), (w, h));
        let mut covered = 0;
        for y in 0..h {
            for x in 0..w {
                let got = classes[y * w + x];
                let want = class_at(x, y, 3) as u8;
                let inner = x >= m && y >= m && x + m < w && y + m < h;
                if inner {
                    // Overlap >= 2 * margin: every pixel away from the scene's edge is some
                    // tile's valid centre, and the model's answer there is exact.
                    assert_eq!(got, want, "{out}: ({x}, {y})");
                    covered += 1;
                } else if x < m || y < m {
                    // No tile's centre reaches the top and left margins: no vote, nodata.
                    assert_eq!(got, 255, "{out}: ({x}, {y}) has no vote");
                } else {
                    assert!(got == want || got == 255, "{out}: ({x}, {y}) = {got}");
                }
            }
        }
        assert!(covered > 0);
    }

    // A declared margin the output does not have: the run fails, naming the model.
    let wrong = make_model(
        d,
        "wrong",
        "seg-logits",
        &["--crop", "14", "--margin", "10"],
    )
    .expect("m");
    run(
        d,
        &[
            "segment",
            "scene.tif",
            "--model",
            "wrong",
            "--out",
            "o",
            "--quiet",
        ],
    )
    .fails_with(&["model.onnx", "segmentation.margin = 10"]);
    // A margin that leaves nothing of the tile is refused with the package.
    let huge = make_model(d, "huge", "seg-logits", &["--crop", "14", "--margin", "32"]).expect("m");
    run(
        d,
        &["segment", "scene.tif", "--model", "huge", "--out", "o"],
    )
    .fails_with(&["huge", "segmentation.margin 32"]);
    assert!(wrong.is_dir() && huge.is_dir() && !d.join("o").exists());
}
