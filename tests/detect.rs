//! `tessera detect` on oracle scenes and models: squares painted at known map coordinates and
//! a hand-built grid detector whose boxes are fixed by the pixels. For several overlaps,
//! output layouts and merge methods, every painted object is detected exactly once with its
//! box, including objects on tile seams and corners. Then a real YOLOX detector (ddddocr from
//! PyPI) on a tiled page of words, a Deepness detector without a manifest, and bad inputs.

mod common;

use std::path::{Path, PathBuf};

use common::{inspect_outputs, run, walk};
use gdal::vector::LayerAccess;

const ORIGIN: (f64, f64) = (500_000.0, 4_600_000.0);

fn oracle(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models/oracles")
        .join(name)
        .display()
        .to_string()
}

/// Red and green 16 x 16 squares on the 16-pixel grid (top-left pixel), several on the seams
/// and corners of 192- and 128-pixel tile strides.
const RED: [(usize, usize); 7] = [
    (32, 32),
    (176, 176),
    (192, 80),
    (240, 240),
    (320, 352),
    (448, 16),
    (128, 128),
];
const GREEN: [(usize, usize); 3] = [(96, 288), (384, 160), (256, 256)];

fn paint(path: &Path, w: usize, h: usize) {
    let driver = gdal::DriverManager::get_driver_by_name("GTiff").expect("driver");
    let mut ds = driver
        .create_with_band_type::<u8, _>(path, w, h, 3)
        .expect("create");
    ds.set_geo_transform(&[ORIGIN.0, 1.0, 0.0, ORIGIN.1, 0.0, -1.0])
        .expect("gt");
    ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32633).expect("srs"))
        .expect("srs");
    for (b, squares) in [(1usize, &RED[..]), (2, &GREEN[..])] {
        let mut plane = vec![0u8; w * h];
        for &(x0, y0) in squares {
            for y in y0..y0 + 16 {
                for x in x0..x0 + 16 {
                    plane[y * w + x] = 255;
                }
            }
        }
        ds.rasterband(b)
            .expect("band")
            .write(
                (0, 0),
                (w, h),
                &mut gdal::raster::Buffer::new((w, h), plane),
            )
            .expect("write");
    }
    ds.rasterband(3)
        .expect("band")
        .write(
            (0, 0),
            (w, h),
            &mut gdal::raster::Buffer::new((w, h), vec![60u8; w * h]),
        )
        .expect("write");
    ds.close().expect("close");
}

/// (label, min_x, min_y, max_x, max_y) of every output detection.
fn boxes(path: &Path) -> Vec<(String, [f64; 4])> {
    let ds = gdal::Dataset::open(path).expect("open");
    let mut layer = ds.layer(0).expect("layer");
    layer
        .features()
        .map(|f| {
            let label = f
                .field_as_string(f.field_index("label").expect("idx"))
                .expect("f")
                .unwrap_or_default();
            let e = f.geometry().expect("geom").envelope();
            (label, [e.MinX, e.MinY, e.MaxX, e.MaxY])
        })
        .collect()
}

/// The oracle's box for a square at (x0, y0): 48 x 48 centred on it, clipped to the scene.
/// Without overlap the model only ever sees the square's own tile, so the box is also clipped
/// to that tile (`tile` = Some(size)); with enough overlap some tile sees it whole.
fn expected(x0: usize, y0: usize, w: usize, h: usize, tile: Option<usize>) -> [f64; 4] {
    let (cx, cy) = (x0 as f64 + 8.0, y0 as f64 + 8.0);
    let (mut lx, mut ly, mut hx, mut hy) = (0.0, 0.0, w as f64, h as f64);
    if let Some(t) = tile {
        let (tx, ty) = ((x0 / t * t) as f64, (y0 / t * t) as f64);
        (lx, ly, hx, hy) = (tx, ty, (tx + t as f64).min(hx), (ty + t as f64).min(hy));
    }
    let (px0, py0) = ((cx - 24.0).max(lx), (cy - 24.0).max(ly));
    let (px1, py1) = ((cx + 24.0).min(hx), (cy + 24.0).min(hy));
    [
        ORIGIN.0 + px0,
        ORIGIN.1 - py1,
        ORIGIN.0 + px1,
        ORIGIN.1 - py0,
    ]
}

#[test]
fn every_painted_object_is_detected_once_with_its_box() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, h) = (500, 420);
    paint(&dir.path().join("scene.tif"), w, h);
    let mut runs = 0;
    for model in ["det-grid-v8", "det-grid-v5"] {
        for overlap in ["0", "64", "128"] {
            for method in ["nms", "wbf"] {
                let out = format!("out_{model}_{overlap}_{method}");
                let res = run(
                    dir.path(),
                    &[
                        "detect",
                        "scene.tif",
                        "--model",
                        &oracle(model),
                        "--overlap",
                        overlap,
                        "--merge",
                        method,
                        "--scale",
                        "range:0,255",
                        "--out",
                        &out,
                        "--json",
                        "--quiet",
                    ],
                );
                let j = res.success().json();
                let got = boxes(&dir.path().join(&out).join("detections.gpkg"));
                assert_eq!(
                    got.len(),
                    RED.len() + GREEN.len(),
                    "{model} {overlap} {method}: {got:?}\n{}",
                    res.context()
                );
                assert_eq!(j["counts"]["red"], RED.len());
                for (label, squares) in [("red", &RED[..]), ("green", &GREEN[..])] {
                    for &(x0, y0) in squares {
                        let want = expected(x0, y0, w, h, (overlap == "0").then_some(256));
                        let hits: Vec<_> = got
                            .iter()
                            .filter(|(l, b)| {
                                l == label && (0..4).all(|k| (b[k] - want[k]).abs() < 1e-6)
                            })
                            .collect();
                        assert_eq!(hits.len(), 1, "{model} {overlap} {method}: {label} square at ({x0},{y0}) -> {want:?} in {got:?}");
                    }
                }
                runs += 1;
            }
        }
    }
    assert_eq!(runs, 12);
    let Some(found) = inspect_outputs(&dir.path().join("out_det-grid-v8_64_nms")) else {
        return;
    };
    assert_eq!(found["detections.gpkg"]["epsg"], 32633);
    assert_eq!(
        found["detections.gpkg"]["rows"],
        (RED.len() + GREEN.len()) as u64
    );
    let cols = &found["detections.gpkg"]["columns"];
    assert_eq!(
        cols,
        &serde_json::json!(["class", "label", "score", "tile_id", "area_m2"])
    );
    let layer = &found["detections.gpkg"];
    for (rec, want) in layer["records"]
        .as_array()
        .expect("records")
        .iter()
        .zip(layer["geodesic_area_m2"].as_array().expect("areas"))
    {
        let (got, want) = (
            rec["area_m2"].as_f64().expect("area_m2"),
            want.as_f64().expect("pyproj"),
        );
        // pyproj joins the vertices by geodesics; tessera first splits the long edges,
        // which are straight in the map CRS: the two differ by ~1e-8 of the area.
        assert!(
            (got - want).abs() / want < 1e-7,
            "area_m2 {got} vs pyproj {want}"
        );
    }
}

/// Detections open in QGIS as outlines in a colour per label, labelled with it.
#[test]
fn qgis_draws_detections_as_labelled_outlines() {
    let dir = tempfile::tempdir().expect("tempdir");
    paint(&dir.path().join("scene.tif"), 500, 420);
    let model = oracle("det-grid-v8");
    for format in ["gpkg", "fgb"] {
        let out = format!("out_{format}");
        run(
            dir.path(),
            &[
                "detect",
                "scene.tif",
                "--model",
                &model,
                "--format",
                format,
                "--out",
                &out,
                "--quiet",
            ],
        )
        .success();
        let Some(q) = common::qgis_styles(&dir.path().join(&out)) else {
            return;
        };
        let layer = &q[format!("detections.{format}").as_str()];
        assert_eq!(layer["valid"], true, "{q}");
        assert_eq!(layer["renderer"], "categorizedSymbol", "{q}");
        assert_eq!(layer["attribute"], "label");
        assert_eq!(layer["labels_enabled"], true);
        assert_eq!(layer["label_field"], "label");
        let cats = layer["categories"].as_array().expect("categories");
        let toml = std::fs::read_to_string(Path::new(&model).join("model.toml")).expect("toml");
        assert!(!cats.is_empty());
        let mut outlines = std::collections::BTreeSet::new();
        for c in cats {
            assert!(toml.contains(c["value"].as_str().expect("value")), "{c}");
            assert_eq!(c["style"], "no", "{c}");
            assert_eq!(c["fill_alpha"], 0, "{c}");
            outlines.insert(c["outline"].as_str().expect("outline").to_string());
        }
        assert_eq!(outlines.len(), cats.len(), "one colour per label: {q}");
    }
}

#[test]
fn deepness_detector_runs_without_a_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    paint(&dir.path().join("scene.tif"), 500, 420);
    let onnx = PathBuf::from(oracle("det-grid-v8-deepness")).join("model.onnx");
    let onnx = onnx.to_str().expect("utf8");
    // Class names, thresholds and the overlap (10 % of 256) come from the metadata.
    let j = run(
        dir.path(),
        &[
            "detect",
            "scene.tif",
            "--model",
            onnx,
            "--scale",
            "range:0,255",
            "--json",
            "--quiet",
        ],
    )
    .success()
    .json();
    assert_eq!(j["classes"], serde_json::json!(["red", "green"]));
    assert_eq!(j["overlap"], 26);
    // A stride on the oracle's 16-pixel grid finds every square once.
    let j = run(
        dir.path(),
        &[
            "detect",
            "scene.tif",
            "--model",
            onnx,
            "--overlap",
            "64",
            "--scale",
            "range:0,255",
            "--json",
            "--quiet",
        ],
    )
    .success()
    .json();
    assert_eq!(j["detections"], (RED.len() + GREEN.len()) as u64);
    // `models check` reads the metadata too, from the file or its folder.
    run(dir.path(), &["models", "check", onnx]).success();
    run(
        dir.path(),
        &["models", "check", &oracle("det-grid-v8-deepness")],
    )
    .success();
}

#[test]
fn real_yolox_boxes_do_not_overlap_and_seams_are_joined() {
    let det = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tessera/models/ddddocr-det");
    if !det.join("model.onnx").is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "make setup should have fetched the YOLOX detector"
        );
        eprintln!("skipping: {} is absent (run `make setup`)", det.display());
        return;
    }
    let Some(py) = common::venv_python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/text_page.py");
    let ok = std::process::Command::new(py)
        .arg(script)
        .arg(dir.path().join("page.tif"))
        .arg("736")
        .status()
        .expect("python");
    assert!(ok.success());
    let model = det.display().to_string();
    let j = run(
        dir.path(),
        &[
            "detect",
            "page.tif",
            "--model",
            &model,
            "--overlap",
            "96",
            "--scale",
            "range:0,255",
            "--out",
            "o",
            "--json",
            "--quiet",
        ],
    )
    .success()
    .json();
    let iou_threshold = 0.45;
    let got = boxes(&dir.path().join("o/detections.gpkg"));
    eprintln!(
        "YOLOX: {} boxes from {} raw",
        got.len(),
        j["raw_detections"]
    );
    assert!(
        got.len() >= 10,
        "the detector finds the printed words: {got:?}"
    );
    assert!(
        j["raw_detections"].as_u64().expect("raw") > got.len() as u64,
        "merging removed duplicates"
    );
    let area = |b: &[f64; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    for i in 0..got.len() {
        for k in i + 1..got.len() {
            let (a, b) = (&got[i].1, &got[k].1);
            let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
            let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
            let inter = iw * ih;
            let iou = inter / (area(a) + area(b) - inter);
            assert!(
                iou <= iou_threshold + 1e-9,
                "boxes {a:?} and {b:?} overlap with IoU {iou}"
            );
            // A fragment cut by the seam would sit inside its whole box: none is left.
            let ios = inter / area(a).min(area(b));
            assert!(
                ios < 0.9,
                "box {a:?} lies inside {b:?} (a seam fragment left unjoined)"
            );
        }
    }
}

#[test]
fn detect_bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    paint(&d.join("scene.tif"), 500, 420);
    run(
        d,
        &[
            "detect",
            "scene.tif",
            "--model",
            &oracle("seg-threshold"),
            "--out",
            "o",
        ],
    )
    .fails_with(&["is not a detector"]);
    run(
        d,
        &[
            "detect",
            "scene.tif",
            "--model",
            &oracle("det-grid-v8"),
            "--tile-size",
            "128",
            "--out",
            "o",
        ],
    )
    .fails_with(&["input size 256"]);
    run(
        d,
        &[
            "detect",
            "scene.tif",
            "--model",
            &oracle("det-grid-v8"),
            "--confidence",
            "1.5",
        ],
    )
    .fails_with(&["--confidence"]);
    run(
        d,
        &[
            "detect",
            "scene.tif",
            "--model",
            &oracle("det-grid-v8"),
            "--iou",
            "1.5",
        ],
    )
    .fails_with(&["--iou"]);
    run(
        d,
        &[
            "detect",
            "scene.tif",
            "--model",
            &oracle("det-grid-v8"),
            "--cut-ios",
            "2",
        ],
    )
    .fails_with(&["--cut-ios"]);
    let bad = d.join("bad");
    common::copy_dir(Path::new(&oracle("det-grid-v8")), &bad);
    let m = std::fs::read_to_string(bad.join("model.toml")).expect("read");
    std::fs::write(
        bad.join("model.toml"),
        m.replace("format = \"yolov8\"", "format = \"detr\""),
    )
    .expect("write");
    run(
        d,
        &[
            "detect",
            "scene.tif",
            "--model",
            bad.to_str().expect("utf8"),
            "--out",
            "o",
        ],
    )
    .fails_with(&["detr"]);
    // A model whose classes do not match its output: a clear shape error, no output left.
    let wrong = d.join("wrong");
    common::copy_dir(Path::new(&oracle("det-grid-v8")), &wrong);
    let m = std::fs::read_to_string(wrong.join("model.toml")).expect("read");
    std::fs::write(
        wrong.join("model.toml"),
        m.replace(
            "classes = [\"red\", \"green\"]",
            "classes = [\"red\", \"green\", \"blue\"]",
        ),
    )
    .expect("write");
    run(
        d,
        &[
            "detect",
            "scene.tif",
            "--model",
            wrong.to_str().expect("utf8"),
            "--out",
            "o",
        ],
    )
    .fails_with(&["does not fit yolov8 with 3 classes"]);
    assert!(!d.join("o").exists());
    assert!(walk(d)
        .iter()
        .all(|p| !p.to_string_lossy().contains(".tessera-tmp-")));
}
