//! `tessera segment` on oracle scenes and models: shapes painted at known map coordinates,
//! hand-built ONNX graphs whose output is fixed by the pixels; for several tile sizes,
//! overlaps and blending windows (shapes straddling tile corners included) the stitched mask
//! must equal the painted one and the polygons must be the shapes. Then a real fully
//! convolutional model (DBNet from PyPI) tiled against one whole-image pass, Deepness-style
//! models without a manifest, and bad inputs.

mod common;

use std::path::{Path, PathBuf};

use common::{inspect_outputs, run, walk};

const ORIGIN: (f64, f64) = (500_000.0, 4_600_000.0);

fn oracle(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models/oracles")
        .join(name)
        .display()
        .to_string()
}

/// Write a 1 m RGB scene in UTM 33N from a per-pixel colour function.
fn paint(path: &Path, w: usize, h: usize, color: impl Fn(usize, usize) -> [u8; 3]) {
    let gt = [ORIGIN.0, 1.0, 0.0, ORIGIN.1, 0.0, -1.0];
    paint_in(path, w, h, gt, 32633, color);
}

/// Write an RGB scene on the grid `gt` in EPSG:`epsg`.
fn paint_in(
    path: &Path,
    w: usize,
    h: usize,
    gt: [f64; 6],
    epsg: u32,
    color: impl Fn(usize, usize) -> [u8; 3],
) {
    let driver = gdal::DriverManager::get_driver_by_name("GTiff").expect("driver");
    let opts: gdal::raster::RasterCreationOptions =
        "TILED=YES COMPRESS=DEFLATE".parse().expect("opts");
    let mut ds = driver
        .create_with_band_type_with_options::<u8, _>(path, w, h, 3, &opts)
        .expect("create");
    ds.set_geo_transform(&gt).expect("gt");
    ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(epsg).expect("srs"))
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

fn read_u8(path: &Path) -> (usize, usize, Vec<u8>, [f64; 6]) {
    let ds = gdal::Dataset::open(path).expect("open");
    let (w, h) = ds.raster_size();
    let v = ds
        .rasterband(1)
        .expect("band")
        .read_as::<u8>((0, 0), (w, h), (w, h), None)
        .expect("read");
    (w, h, v.data().to_vec(), ds.geo_transform().expect("gt"))
}

/// Shapes of the threshold scene: rectangles and discs, several across tile corners at 128,
/// 96 and 100-pixel grids. Returns (is object at (x, y), number of separate shapes).
fn shapes() -> (impl Fn(usize, usize) -> bool, usize) {
    let rects = [
        (20usize, 30usize, 90usize, 70usize),
        (110, 110, 150, 146),
        (300, 10, 420, 60),
    ];
    let discs = [
        (128.0f64, 256.0f64, 22.0f64),
        (256.0, 128.0, 30.0),
        (200.0, 330.0, 40.0),
        (390.0, 300.0, 25.0),
    ];
    let inside = move |x: usize, y: usize| {
        rects
            .iter()
            .any(|&(x0, y0, x1, y1)| x >= x0 && x < x1 && y >= y0 && y < y1)
            || discs.iter().any(|&(cx, cy, r)| {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                dx * dx + dy * dy < r * r
            })
    };
    (inside, rects.len() + discs.len())
}

fn iou(a: &[bool], b: &[bool]) -> f64 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    inter as f64 / union.max(1) as f64
}

#[test]
fn stitched_threshold_masks_equal_the_painted_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, h) = (450, 380);
    let (inside, n_shapes) = shapes();
    paint(&dir.path().join("scene.tif"), w, h, |x, y| {
        if inside(x, y) {
            [220, 40, 40]
        } else {
            [30, 120, 60]
        }
    });
    let truth: Vec<bool> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| inside(x, y))
        .collect();
    let model = oracle("seg-threshold");
    for (size, overlap, blend) in [
        ("128", "0", "flat"),
        ("128", "32", "cosine"),
        ("96", "24", "linear"),
        ("100", "37", "cosine"),
        ("256", "64", "linear"),
    ] {
        let out = format!("out_{size}_{overlap}_{blend}");
        let res = run(
            dir.path(),
            &[
                "segment",
                "scene.tif",
                "--model",
                &model,
                "--tile-size",
                size,
                "--overlap",
                overlap,
                "--blend",
                blend,
                "--batch-size",
                "4",
                "--out",
                &out,
                "--json",
                "--quiet",
            ],
        );
        let j = res.success().json();
        let (cw, ch, classes, gt) = read_u8(&dir.path().join(&out).join("classes.tif"));
        assert_eq!((cw, ch), (w, h));
        assert_eq!(gt, [ORIGIN.0, 1.0, 0.0, ORIGIN.1, 0.0, -1.0]);
        let got: Vec<bool> = classes.iter().map(|&c| c == 1).collect();
        let score = iou(&got, &truth);
        assert!(score >= 0.999, "{size}/{overlap}/{blend}: IoU {score}");
        // Polygons come from the mosaic: one per shape, whatever the seams.
        assert_eq!(
            j["polygons"].as_u64(),
            Some(n_shapes as u64),
            "{size}/{overlap}/{blend}: {}",
            res.context()
        );
        // Rows are flushed before the end when the scene has several tile rows ahead of the
        // read-ahead queue (not so with two rows of 256-pixel tiles).
        if size != "256" {
            assert!(
                j["peak_rows"].as_u64().expect("rows") < h as u64,
                "{size}/{overlap}: {}",
                j["peak_rows"]
            );
        }
        let ds =
            gdal::Dataset::open(dir.path().join(&out).join("polygons.gpkg")).expect("polygons");
        use gdal::vector::LayerAccess;
        let mut layer = ds.layer(0).expect("layer");
        let area: f64 = layer
            .features()
            .map(|f| f.geometry().expect("geom").area())
            .sum();
        let painted = truth.iter().filter(|&&t| t).count() as f64;
        assert!(
            (area - painted).abs() < 1e-6,
            "{size}/{overlap}/{blend}: polygon area {area} vs {painted} painted pixels"
        );
    }
    // The outputs open in geopandas/rasterio with the right CRS and bounds; rasters are COGs.
    let Some(found) = inspect_outputs(&dir.path().join("out_128_32_cosine")) else {
        return;
    };
    assert_eq!(found["classes.tif"]["epsg"], 32633);
    assert_eq!(
        found["classes.tif"]["cog_valid"], true,
        "{}",
        found["classes.tif"]["cog_errors"]
    );
    assert_eq!(found["classes.tif"]["nodata"], 255.0);
    assert_eq!(
        found["classes.tif"]["bounds"],
        serde_json::json!([ORIGIN.0, ORIGIN.1 - h as f64, ORIGIN.0 + w as f64, ORIGIN.1])
    );
    assert_eq!(found["polygons.gpkg"]["epsg"], 32633);
    assert_eq!(found["polygons.gpkg"]["valid"], true);
    assert_eq!(found["polygons.gpkg"]["rows"], n_shapes as u64);
    let polygons = &found["polygons.gpkg"];
    for (rec, want) in polygons["records"]
        .as_array()
        .expect("records")
        .iter()
        .zip(polygons["geodesic_area_m2"].as_array().expect("areas"))
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

/// The outputs open in QGIS styled by default: the class raster paletted with the class names
/// and colours, the polygons categorised by label in the same colours (GeoPackage
/// `layer_styles`; `.qml` beside a Shapefile).
#[test]
fn qgis_opens_the_outputs_styled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, h) = (96, 64);
    let (inside, _) = shapes();
    paint(&dir.path().join("scene.tif"), w, h, |x, y| {
        if inside(x, y) {
            [220, 40, 40]
        } else {
            [30, 120, 60]
        }
    });
    let model = oracle("seg-threshold");
    for format in ["gpkg", "shp"] {
        let out = format!("out_{format}");
        run(
            dir.path(),
            &[
                "segment",
                "scene.tif",
                "--model",
                &model,
                "--tile-size",
                "32",
                "--format",
                format,
                "--out",
                &out,
                "--quiet",
            ],
        )
        .success();
        let out = dir.path().join(&out);
        if format == "shp" {
            assert!(out.join("polygons.qml").is_file());
        }
        assert!(out.join("classes.qml").is_file());
        let Some(q) = common::qgis_styles(&out) else {
            return;
        };
        let raster = &q["classes.tif"];
        assert_eq!(raster["renderer"], "paletted", "{q}");
        let classes = raster["classes"].as_array().expect("classes");
        let names: Vec<&str> = classes
            .iter()
            .map(|c| c["label"].as_str().expect("label"))
            .collect();
        let toml = std::fs::read_to_string(Path::new(&model).join("model.toml")).expect("toml");
        for n in &names {
            assert!(
                toml.contains(&format!("\"{n}\"")),
                "{n} not a class of the model"
            );
        }
        assert_eq!(classes.len(), names.len());
        let polygons = &q[format!("polygons.{format}").as_str()];
        assert_eq!(polygons["valid"], true);
        assert_eq!(polygons["renderer"], "categorizedSymbol", "{q}");
        assert_eq!(polygons["attribute"], "label");
        let cats = polygons["categories"].as_array().expect("categories");
        assert_eq!(cats.len(), classes.len());
        // The same colour for a class in the raster and the layer.
        for (cat, class) in cats.iter().zip(classes) {
            assert_eq!(cat["value"], class["label"]);
            assert_eq!(cat["fill"], class["color"], "{q}");
            assert_eq!(cat["style"], "solid");
        }
    }
}

/// `area_m2` and `--min-area` are square metres on the ellipsoid even when the scene's CRS is
/// in degrees: two squares of 20 x 20 and 10 x 10 pixels of 1e-4 degrees at 60 N, where a
/// pixel is about 5.6 m x 11.1 m; a threshold between their ground areas keeps the larger.
#[test]
fn areas_and_min_area_are_square_metres_in_degree_scenes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, h) = (96, 64);
    let gt = [10.0, 1e-4, 0.0, 60.0, 0.0, -1e-4];
    let big = |x: usize, y: usize| (10..30).contains(&x) && (10..30).contains(&y);
    let small = |x: usize, y: usize| (60..70).contains(&x) && (20..30).contains(&y);
    paint_in(&dir.path().join("scene.tif"), w, h, gt, 4326, |x, y| {
        if big(x, y) || small(x, y) {
            [220, 40, 40]
        } else {
            [30, 120, 60]
        }
    });
    let model = oracle("seg-threshold");
    let segment = |out: &str, more: &[&str]| {
        let mut args = vec![
            "segment",
            "scene.tif",
            "--model",
            &model,
            "--tile-size",
            "32",
            "--out",
            out,
            "--json",
            "--quiet",
        ];
        args.extend(more);
        run(dir.path(), &args).success().json()
    };
    segment("all", &[]);
    let Some(found) = inspect_outputs(&dir.path().join("all")) else {
        return;
    };
    let layer = &found["polygons.gpkg"];
    assert_eq!(layer["rows"], 2);
    let mut areas: Vec<(f64, f64)> = layer["records"]
        .as_array()
        .expect("records")
        .iter()
        .zip(layer["geodesic_area_m2"].as_array().expect("areas"))
        .map(|(r, a)| {
            (
                r["area_m2"].as_f64().expect("area_m2"),
                a.as_f64().expect("pyproj"),
            )
        })
        .collect();
    areas.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (got, want) in &areas {
        assert!((got - want).abs() / want < 1e-7, "{got} vs pyproj {want}");
    }
    // About 100 pixels of ~62 m^2 and 400 of them; not 1e-6 and 4e-6 square degrees.
    assert!((5_000.0..7_000.0).contains(&areas[0].0), "{areas:?}");
    assert!((20_000.0..28_000.0).contains(&areas[1].0), "{areas:?}");
    let between = format!("{}", (areas[0].0 + areas[1].0) / 2.0);
    let j = segment("big", &["--min-area", &between]);
    assert_eq!(j["polygons"], 1, "{j}");
}

#[test]
fn stride4_logits_are_upsampled_and_blended_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, h) = (320, 256);
    // 8-pixel blocks of pure red, green or blue: every 4x4 output cell is pure.
    let class_at = |x: usize, y: usize| ((x / 8) * 7 + (y / 8) * 3 + (x / 24)) % 3;
    paint(&dir.path().join("scene.tif"), w, h, |x, y| {
        let mut c = [0u8; 3];
        c[class_at(x, y)] = 255;
        c
    });
    let model = oracle("seg-logits-s4");
    for (size, overlap) in [("64", "16"), ("128", "32"), ("96", "0")] {
        let out = format!("out_{size}_{overlap}");
        run(
            dir.path(),
            &[
                "segment",
                "scene.tif",
                "--model",
                &model,
                "--tile-size",
                size,
                "--overlap",
                overlap,
                "--probabilities",
                "--out",
                &out,
                "--quiet",
            ],
        )
        .success();
        let (_, _, classes, _) = read_u8(&dir.path().join(&out).join("classes.tif"));
        for c in 0..3u8 {
            let got: Vec<bool> = classes.iter().map(|&v| v == c).collect();
            let want: Vec<bool> = (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .map(|(x, y)| class_at(x, y) == c as usize)
                .collect();
            let score = iou(&got, &want);
            assert!(score >= 0.99, "{size}/{overlap}: class {c} IoU {score}");
        }
        let probs =
            gdal::Dataset::open(dir.path().join(&out).join("probabilities.tif")).expect("probs");
        assert_eq!(probs.raster_count(), 3);
    }
}

#[test]
fn deepness_models_run_without_a_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (inside, n_shapes) = shapes();
    paint(&dir.path().join("scene.tif"), 450, 380, |x, y| {
        if inside(x, y) {
            [220, 40, 40]
        } else {
            [30, 120, 60]
        }
    });
    let onnx = PathBuf::from(oracle("seg-threshold-deepness")).join("model.onnx");
    let j = run(
        dir.path(),
        &[
            "segment",
            "scene.tif",
            "--model",
            onnx.to_str().expect("utf8"),
            "--out",
            "o",
            "--json",
            "--quiet",
        ],
    )
    .success()
    .json();
    // Tile size, overlap (10 % of 256) and resolution (100 cm/px) come from the metadata.
    assert_eq!(j["tile_size"], 256);
    assert_eq!(j["overlap"], 26);
    assert_eq!(j["target_gsd"], 1.0);
    assert_eq!(j["classes"], serde_json::json!(["background", "object"]));
    assert_eq!(j["polygons"].as_u64(), Some(n_shapes as u64));
    // `models check` accepts a folder holding just that file, too.
    run(
        dir.path(),
        &[
            "segment",
            "scene.tif",
            "--model",
            &oracle("seg-threshold-deepness"),
            "--out",
            "o2",
            "--quiet",
        ],
    )
    .success();
}

#[test]
fn real_dbnet_tiled_matches_one_whole_image_pass() {
    let dbnet = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tessera/models/dbnet");
    if !dbnet.join("model.onnx").is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "make setup should have fetched DBNet"
        );
        eprintln!("skipping: {} is absent (run `make setup`)", dbnet.display());
        return;
    }
    let Some(py) = common::venv_python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, h) = (640, 640);
    // A page of printed words (DBNet detects text): tests/python/text_page.py.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/text_page.py");
    let status = std::process::Command::new(py)
        .arg(script)
        .arg(dir.path().join("page.tif"))
        .arg("640")
        .status()
        .expect("python");
    assert!(status.success());
    let model = dbnet.display().to_string();
    let common_args = [
        "--model",
        model.as_str(),
        "--probabilities",
        "--scale",
        "range:0,255",
        "--quiet",
    ];
    let mut whole = vec![
        "segment",
        "page.tif",
        "--tile-size",
        "640",
        "--out",
        "whole",
    ];
    whole.extend(common_args);
    run(dir.path(), &whole).success();
    let mut tiled = vec![
        "segment",
        "page.tif",
        "--tile-size",
        "256",
        "--overlap",
        "64",
        "--out",
        "tiled",
    ];
    tiled.extend(common_args);
    run(dir.path(), &tiled).success();
    let read = |p: &str| -> Vec<f32> {
        let ds = gdal::Dataset::open(dir.path().join(p).join("probabilities.tif")).expect("probs");
        ds.rasterband(1)
            .expect("b")
            .read_as::<f32>((0, 0), (w, h), (w, h), None)
            .expect("read")
            .data()
            .to_vec()
    };
    let (a, b) = (read("whole"), read("tiled"));
    // Away from the scene edge (32 px, DBNet's stride), tiled and whole agree closely.
    let m = 32;
    let (mut sum, mut n, mut inter, mut union, mut text) = (0.0f64, 0usize, 0usize, 0usize, 0usize);
    for y in m..h - m {
        for x in m..w - m {
            let (p, q) = (a[y * w + x], b[y * w + x]);
            sum += f64::from((p - q).abs());
            n += 1;
            let (tp, tq) = (p >= 0.3, q >= 0.3);
            inter += usize::from(tp && tq);
            union += usize::from(tp || tq);
            text += usize::from(tp);
        }
    }
    let mae = sum / n as f64;
    let iou = inter as f64 / union.max(1) as f64;
    eprintln!("DBNet tiled vs whole: mean abs diff {mae:.5}, IoU {iou:.4}, text pixels {text}");
    assert!(
        text > 1000,
        "the page should look like text to DBNet ({text} pixels)"
    );
    assert!(mae < 0.02, "mean abs diff {mae}");
    assert!(iou > 0.9, "IoU {iou}");
}

#[test]
fn segment_bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    paint(&d.join("scene.tif"), 64, 64, |_, _| [10, 10, 10]);
    // A classifier package is not a segmenter.
    let clip = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models/clip-tiny")
        .display()
        .to_string();
    run(d, &["segment", "scene.tif", "--model", &clip, "--out", "o"])
        .fails_with(&["is not a segmenter"]);
    // A fixed-size model with another tile size.
    let det = oracle("det-grid-v8");
    run(d, &["segment", "scene.tif", "--model", &det, "--out", "o"])
        .fails_with(&["not a segmenter"]);
    // A manifest with an unknown output format, and one without [segmentation].
    let bad = d.join("bad");
    common::copy_dir(Path::new(&oracle("seg-threshold")), &bad);
    let m = std::fs::read_to_string(bad.join("model.toml")).expect("read");
    std::fs::write(
        bad.join("model.toml"),
        m.replace("format = \"probability\"", "format = \"heatmap\""),
    )
    .expect("write");
    run(
        d,
        &[
            "segment",
            "scene.tif",
            "--model",
            bad.to_str().expect("utf8"),
            "--out",
            "o",
        ],
    )
    .fails_with(&["heatmap"]);
    let plain = d.join("plain.onnx");
    std::fs::copy(
        PathBuf::from(oracle("seg-threshold")).join("model.onnx"),
        &plain,
    )
    .expect("copy");
    run(
        d,
        &[
            "segment",
            "scene.tif",
            "--model",
            "plain.onnx",
            "--out",
            "o",
        ],
    )
    .fails_with(&["plain.onnx", "no Deepness metadata"]);
    run(
        d,
        &[
            "segment",
            "scene.tif",
            "--model",
            &oracle("seg-threshold"),
            "--threshold",
            "2",
            "--out",
            "o",
        ],
    )
    .fails_with(&["--threshold"]);
    run(
        d,
        &[
            "segment",
            "scene.tif",
            "--model",
            &oracle("seg-threshold"),
            "--simplify=-1",
            "--out",
            "o",
        ],
    )
    .fails_with(&["--simplify"]);
    assert!(!d.join("o").exists());
    assert!(walk(d)
        .iter()
        .all(|p| !p.to_string_lossy().contains(".tessera-tmp-")));
}
