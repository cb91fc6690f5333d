//! `tessera eval --task detect` on real labels, checked against pycocotools on the same boxes:
//! the DeepForest tree crowns of OSBS_029 (a scene with a label layer, the same boxes as COCO
//! JSON chips and as the Pascal VOC file the wheel ships) and the solaris building footprints
//! (the layer as given and reprojected to EPSG:4326), with the hand-built grid detector. The
//! reference: the boxes `tessera detect` writes for the same scene and options, read with
//! geopandas, the labels converted by tests/python/eval_detect_ref.py (rasterio, geopandas),
//! both scored by pycocotools. Then bad label files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::coco::pycocotools;
use common::{run, venv_python};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn oracle() -> String {
    root()
        .join("sample_data/models/oracles/det-grid-v8")
        .display()
        .to_string()
}

/// Files `make setup` takes from a wheel (step 6), when present.
fn wheel_data(name: &str) -> Option<PathBuf> {
    let dir = root().join(".tessera/data").join(name);
    if dir.is_dir() {
        Some(dir)
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is absent: `make setup` should have made it",
            dir.display()
        );
        eprintln!("skipping: {} is absent (run `make setup`)", dir.display());
        None
    }
}

fn reference_script(py: &Path, args: &[&str]) {
    let out = Command::new(py)
        .arg(root().join("tests/python/eval_detect_ref.py"))
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "eval_detect_ref.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `eval.json`'s metrics of its only model.
fn metrics_of(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("eval.json")).expect("eval.json");
    let v: Value = serde_json::from_str(&text).expect("json");
    let models = v["models"].as_object().expect("models");
    assert_eq!(models.len(), 1);
    models.values().next().expect("model").clone()
}

fn close(what: &str, a: &Value, b: &Value, tol: f64) {
    let (x, y) = (a.as_f64(), b.as_f64());
    assert!(
        matches!((x, y), (Some(x), Some(y)) if (x - y).abs() <= tol),
        "{what}: tessera {a}, pycocotools {b}"
    );
}

/// The eval's numbers equal pycocotools' (`coco_eval.py` output) for every class of `gt`.
fn assert_matches(ours: &Value, theirs: &Value, classes: &[&str]) {
    for key in ["map_50", "map_75", "map_50_95", "precision", "recall", "f1"] {
        close(key, &ours[key], &theirs[key], 1e-9);
    }
    for (a, b) in [
        ("true_positives", "tp"),
        ("false_positives", "fp"),
        ("false_negatives", "fn"),
    ] {
        assert_eq!(ours[a], theirs[b], "{a}");
    }
    for (k, name) in classes.iter().enumerate() {
        let (c, r) = (
            &ours["per_class"][name],
            &theirs["classes"][(k + 1).to_string()],
        );
        for key in ["ap_50", "ap_50_95", "max_recall"] {
            close(&format!("{name} {key}"), &c[key], &r[key], 1e-9);
        }
        let (pa, pb) = (
            c["pr_curve"].as_array().expect("pr"),
            r["pr_curve"].as_array().expect("pr"),
        );
        assert_eq!(pa.len(), 101);
        for (i, (x, y)) in pa.iter().zip(pb).enumerate() {
            close(&format!("{name} pr_curve[{i}]"), x, y, 1e-9);
        }
    }
}

/// pycocotools on the boxes `tessera detect` finds with `extra` options (map coordinates).
fn reference(py: &Path, dir: &Path, scene: &str, gt: &Path, map: &str, extra: &[&str]) -> Value {
    let det = dir.join("det");
    let (model, det_s) = (oracle(), s(&det));
    let mut args = vec!["detect", scene, "--model", &model];
    args.extend(["--confidence", "0.001", "--out", &det_s]);
    args.extend_from_slice(extra);
    run(dir, &args).success();
    let results = dir.join("results.json");
    let (dets, gt_s, res) = (s(&det.join("detections.gpkg")), s(gt), s(&results));
    reference_script(py, &["results", &dets, &gt_s, map, &res]);
    std::fs::remove_dir_all(&det).expect("rm det");
    pycocotools(gt, &results, 100, 0.5).expect("pycocotools")
}

#[test]
fn tree_crowns_scene_coco_and_voc_match_pycocotools() {
    let (Some(data), Some(py)) = (wheel_data("deepforest"), venv_python()) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let tif = data.join("OSBS_029.tif");
    reference_script(
        &py,
        &["csv", &s(&tif), &s(&data.join("OSBS_029.csv")), &s(dir)],
    );
    let map = "red=Tree,green=Tree";
    let want = reference(&py, dir, &s(&tif), &dir.join("gt.json"), map, &[]);
    // Trees are found (green crowns, red soil): a real match, not all zeros.
    assert!(want["tp"].as_u64().unwrap_or(0) >= 5, "{want}");
    assert!(want["map_50"].as_f64().unwrap_or(0.0) > 0.01, "{want}");

    let model = oracle();
    let common = ["--model", &model, "--class-map", map, "--confidence", "0.5"];
    // The scene with its label layer.
    let out = dir.join("scene");
    let mut args = vec!["eval", "--task", "detect", "--scene"];
    let (tif_s, labels, out_s) = (s(&tif), s(&dir.join("labels.geojson")), s(&out));
    args.extend([
        tif_s.as_str(),
        "--labels",
        &labels,
        "--label-field",
        "label",
    ]);
    args.extend(common);
    args.extend(["--out", &out_s]);
    run(dir, &args).success();
    let scene = metrics_of(&out);
    assert_matches(&scene, &want, &["Tree"]);
    assert_eq!(scene["per_class"]["Tree"]["ground_truths"], 61);
    // predictions_1.jsonl: every label with whether it was found, every box scored.
    let text = std::fs::read_to_string(out.join("predictions_1.jsonl")).expect("rows");
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    let labels: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "label").collect();
    assert_eq!(labels.len(), 61);
    let found = labels.iter().filter(|r| r["found"] == true).count();
    assert_eq!(Some(found as u64), want["tp"].as_u64());
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).expect("results"))
            .expect("json");
    let boxes = rows.iter().filter(|r| r["kind"] == "box").count();
    assert_eq!(Some(boxes), results.as_array().map(Vec::len));

    // The same boxes as COCO JSON (pixels, the chip beside it) and as the wheel's VOC XML.
    let chips = dir.join("chips");
    std::fs::create_dir_all(&chips).expect("mkdir");
    std::fs::copy(&tif, chips.join("OSBS_029.tif")).expect("copy");
    std::fs::copy(data.join("OSBS_029.xml"), chips.join("OSBS_029.xml")).expect("copy");
    std::fs::rename(dir.join("coco.json"), chips.join("coco.json")).expect("mv");
    // And as a PNG chip without georeferencing (the labels name it instead).
    let png_dir = dir.join("png");
    std::fs::create_dir_all(&png_dir).expect("mkdir");
    let src = gdal::Dataset::open(&tif).expect("open");
    let png = png_dir.join("OSBS_029.png");
    let driver = gdal::DriverManager::get_driver_by_name("PNG").expect("png driver");
    src.create_copy(
        &driver,
        &png,
        &gdal::raster::RasterCreationOptions::default(),
    )
    .expect("png")
    .close()
    .expect("close");
    let _ = std::fs::remove_file(png_dir.join("OSBS_029.png.aux.xml"));
    let text = std::fs::read_to_string(chips.join("coco.json")).expect("coco");
    std::fs::write(
        png_dir.join("coco.json"),
        text.replace("OSBS_029.tif", "OSBS_029.png"),
    )
    .expect("write");
    for (flag, value, name) in [
        ("--coco", chips.join("coco.json"), "coco"),
        ("--voc", chips.clone(), "voc"),
    ] {
        let out = dir.join(name);
        let (v, o) = (s(&value), s(&out));
        let mut args = vec!["eval", "--task", "detect", flag, &v];
        args.extend(common);
        args.extend(["--out", &o]);
        run(dir, &args).success();
        assert_matches(&metrics_of(&out), &want, &["Tree"]);
    }
    // The PNG has no nodata (the GeoTIFF's 255s are valid pixels there), so its boxes differ:
    // its reference is pycocotools on the COCO file itself and `tessera detect --pixel-coords`.
    let png_coco = png_dir.join("coco.json");
    let (png_s, coco_s) = (s(&png), s(&png_coco));
    let png_want = reference(&py, dir, &png_s, &png_coco, map, &["--pixel-coords"]);
    let out = dir.join("png-eval");
    let o = s(&out);
    let mut args = vec!["eval", "--task", "detect", "--coco", &coco_s];
    args.extend(common);
    args.extend(["--out", &o]);
    run(dir, &args).success();
    assert_matches(&metrics_of(&out), &png_want, &["Tree"]);
}

#[test]
fn building_footprints_reprojected_match_pycocotools() {
    let (Some(data), Some(py)) = (wheel_data("solaris"), venv_python()) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let tif = s(&data.join("sample_geotiff.tif"));
    let labels = data.join("geotiff_labels.geojson");
    let gt = dir.join("gt.json");
    reference_script(&py, &["layer", &s(&labels), "building", &tif, &s(&gt)]);
    let lonlat = dir.join("labels_4326.gpkg");
    reference_script(&py, &["to-crs", &s(&labels), "4326", &s(&lonlat)]);
    // One pan band as red and green: the two classes tie on every cell.
    let bands = ["--bands", "1,1,1"];
    let map = "red=yes,green=yes";
    let want = reference(&py, dir, &tif, &gt, map, &bands);
    let model = oracle();
    for (name, layer) in [("utm", labels), ("lonlat", lonlat)] {
        let out = dir.join(name);
        let (l, o) = (s(&layer), s(&out));
        let mut args = vec!["eval", "--task", "detect", "--scene", &tif, "--labels", &l];
        args.extend([
            "--label-field",
            "building",
            "--model",
            &model,
            "--class-map",
            map,
        ]);
        args.extend(bands);
        args.extend(["--out", &o]);
        run(dir, &args).success();
        let got = metrics_of(&out);
        assert_eq!(got["per_class"]["yes"]["ground_truths"], 43, "{name}");
        assert_matches(&got, &want, &["yes"]);
    }
}

#[test]
fn bad_label_files_fail_with_one_line_and_write_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let scene = dir.join("scene.tif");
    common::SceneSpec {
        width: 64,
        height: 64,
        ..Default::default()
    }
    .write(&scene);
    let layer = dir.join("labels.geojson");
    std::fs::write(
        &layer,
        r#"{"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
           "features": [{"type": "Feature", "properties": {"kind": "car"},
           "geometry": {"type": "Polygon", "coordinates": [[[500010, 4599990], [500100, 4599990], [500100, 4599900], [500010, 4599990]]]}}]}"#,
    )
    .expect("write");
    let garbage = dir.join("garbage.gpkg");
    std::fs::write(&garbage, b"not a geopackage").expect("write");
    let coco = dir.join("bad.json");
    std::fs::write(&coco, r#"{"images": [], "annotations": [}"#).expect("write");
    let no_cats = dir.join("nocats.json");
    std::fs::write(&no_cats, r#"{"images": [], "annotations": []}"#).expect("write");
    let empty_coco = dir.join("empty.json");
    std::fs::write(
        &empty_coco,
        r#"{"images": [], "annotations": [], "categories": [{"id": 1, "name": "car"}]}"#,
    )
    .expect("write");
    let empty = s(&empty_coco);
    let model = oracle();
    let out = dir.join("out");
    let o = s(&out);
    let sc = s(&scene);
    let missing = s(&dir.join("missing.gpkg"));
    let (l, g, c, n) = (s(&layer), s(&garbage), s(&coco), s(&no_cats));
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec![
                "--scene",
                &sc,
                "--labels",
                &missing,
                "--label-field",
                "kind",
            ],
            vec!["missing.gpkg", "no such label file"],
        ),
        (
            vec!["--scene", &sc, "--labels", &g, "--label-field", "kind"],
            vec!["garbage.gpkg", "not a vector layer"],
        ),
        (
            vec!["--scene", &sc, "--labels", &l, "--label-field", "class"],
            vec!["labels.geojson", "no field 'class'", "kind"],
        ),
        (
            vec!["--coco", &c],
            vec!["bad.json", "malformed COCO JSON", "line 1"],
        ),
        (
            vec!["--coco", &n],
            vec!["nocats.json", "missing field `categories`"],
        ),
        (
            vec!["--coco", &empty],
            vec!["empty.json", "lists no images"],
        ),
        (
            vec!["--coco", &n, "--confidence", "0.0001"],
            vec!["--confidence", "below --min-score"],
        ),
        (
            vec![
                "--scene",
                &sc,
                "--labels",
                &l,
                "--label-field",
                "kind",
                "--class-map",
                "red",
            ],
            vec!["--class-map", "'red' is not MODEL=LABEL"],
        ),
        (
            vec!["--scene", &sc, "--labels", &l, "--label-field", "kind"],
            vec![
                "none of its classes (red, green) is a label class (car)",
                "--class-map",
            ],
        ),
    ];
    for (data, needles) in cases {
        let mut args = vec!["eval", "--task", "detect", "--model", &model];
        args.extend(data);
        args.extend(["--out", &o]);
        run(dir, &args).fails_with(&needles);
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
    // A generative package (boxes from generated text) is refused, naming it.
    let generative = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models/florence2-od-tiny")
        .display()
        .to_string();
    let args = [
        "eval",
        "--task",
        "detect",
        "--model",
        &generative,
        "--scene",
        &sc,
        "--labels",
        &l,
        "--label-field",
        "kind",
        "--out",
        &o,
    ];
    run(dir, &args).fails_with(&["florence2-od-tiny", "a generative package"]);
    assert!(!out.exists(), "{args:?} left {}", out.display());
}
