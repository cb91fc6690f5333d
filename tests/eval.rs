//! `tessera eval` on generated chips and scenes with the committed tiny packages: the
//! metrics against scikit-learn and pycocoevalcap on the same predictions (to 1e-6), the
//! chips mosaic against classifying a chip alone, tile labels from polygons, the per-model
//! record (order, size, memory, agreement), the charts, and bad inputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, venv_python, walk};
use serde_json::Value;

const ORIGIN: (f64, f64) = (500_000.0, 4_600_000.0);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model(name: &str) -> String {
    root()
        .join("sample_data/models")
        .join(name)
        .display()
        .to_string()
}

/// An RGB image of `w x h` from a colour function, written with GDAL's `driver` (PNG, JPEG
/// and GTiff), georeferenced (1 m, UTM 33N) when `geo`.
fn image(
    path: &Path,
    driver: &str,
    w: usize,
    h: usize,
    geo: bool,
    color: impl Fn(usize, usize) -> [u8; 3],
) {
    let mem = gdal::DriverManager::get_driver_by_name("MEM").expect("mem");
    let mut ds = mem
        .create_with_band_type::<u8, _>("", w, h, 3)
        .expect("create");
    if geo {
        ds.set_geo_transform(&[ORIGIN.0, 1.0, 0.0, ORIGIN.1, 0.0, -1.0])
            .expect("gt");
        ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32633).expect("srs"))
            .expect("srs");
    }
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
    let out = gdal::DriverManager::get_driver_by_name(driver).expect("driver");
    ds.create_copy(&out, path, &Default::default())
        .expect("copy");
}

/// A pseudo-random value in 0..=255 (no RNG dependency).
fn noise(seed: usize, x: usize, y: usize) -> u8 {
    let mut v = (seed * 7919 + x * 104_729 + y * 1_299_709) as u32;
    v ^= v << 13;
    v ^= v >> 17;
    v ^= v << 5;
    (v % 256) as u8
}

/// Three class folders of chips in mixed sizes and formats (one 64x64 PNG per class: the
/// clip-tiny input size), each chip its own colours and pattern so that the random tiny
/// models' answers vary from chip to chip.
fn chips(dir: &Path) -> Vec<&'static str> {
    let classes = ["Forest", "River", "Urban"];
    for (c, name) in classes.iter().enumerate() {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).expect("mkdir");
        for i in 0..5 {
            let (size, driver, ext) = [
                (64, "PNG", "png"),
                (48, "JPEG", "jpg"),
                (80, "GTiff", "tif"),
                (56, "PNG", "png"),
                (64, "GTiff", "tif"),
            ][i];
            let seed = c * 10 + i + 3;
            let base = [0, 1, 2].map(|b| noise(seed, b, 7));
            let period = 4 + usize::from(noise(seed, 3, 3) % 12);
            image(
                &folder.join(format!("{name}_{i}.{ext}")),
                driver,
                size,
                size,
                false,
                |x, y| {
                    let stripe = if (x / period + y / period) % 2 == 0 {
                        60
                    } else {
                        0
                    };
                    base.map(|v| {
                        v.saturating_add(stripe)
                            .saturating_sub(noise(seed, x, y) / 8)
                    })
                },
            );
        }
    }
    classes.to_vec()
}

fn reference(args: &[&str]) -> Option<Value> {
    let py = venv_python()?;
    let out = Command::new(py)
        .arg(root().join("tests/python/eval_reference.py"))
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "eval_reference.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("json"))
}

fn close(a: &Value, b: &Value, what: &str) {
    let (x, y) = (
        a.as_f64().unwrap_or(f64::NAN),
        b.as_f64().unwrap_or(f64::NAN),
    );
    assert!((x - y).abs() < 1e-6, "{what}: tessera {a} vs reference {b}");
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect()
}

fn folder_bytes(dir: &Path) -> u64 {
    walk(dir)
        .iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::metadata(p).expect("meta").len())
        .sum()
}

/// Nothing was written: no output folder, no temporary folder beside it.
fn nothing_written(parent: &Path, out: &Path) {
    assert!(!out.exists(), "{} was written", out.display());
    let left: Vec<_> = std::fs::read_dir(parent)
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tessera-tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// Classification metrics of `record` against scikit-learn on `predictions`.
fn check_classification(record: &Value, predictions: &Path, classes: &[&str]) {
    let names = serde_json::to_string(classes).expect("json");
    let Some(r) = reference(&["classify", &predictions.display().to_string(), &names]) else {
        return;
    };
    for k in ["top1", "top5", "precision", "recall", "f1"] {
        close(&record[k], &r[k], k);
    }
    // Not a degenerate case: some right, some wrong.
    let top1 = record["top1"].as_f64().expect("top1");
    assert!(top1 > 0.0 && top1 < 1.0, "{record}");
    for c in classes {
        for k in ["precision", "recall", "f1"] {
            close(
                &record["per_class"][c][k],
                &r["per_class"][c][k],
                &format!("{c} {k}"),
            );
        }
        assert_eq!(
            record["per_class"][c]["support"],
            r["per_class"][c]["support"]
        );
    }
    assert_eq!(record["confusion"]["matrix"], r["confusion"]);
}

#[test]
fn classify_chips_matches_scikit_learn_and_records_every_model() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("chips");
    let classes = chips(&dir);
    let out = tmp.path().join("eval");
    let (m1, m2) = (model("clip-tiny"), model("siglip-tiny"));
    run(
        tmp.path(),
        &[
            "eval", "--task", "classify", "--model", &m1, "--model", &m2, "--chips", "chips",
            "--out", "eval", "-q",
        ],
    )
    .success();
    let ev = read_json(&out.join("eval.json"));
    assert_eq!(ev["task"], "classify");
    let keys: Vec<&String> = ev["models"].as_object().expect("models").keys().collect();
    // In the order given, keyed by the package path as given.
    let text = std::fs::read_to_string(out.join("eval.json")).expect("read");
    assert!(
        text.find(&format!("\"{m1}\"")) < text.find(&format!("\"{m2}\"")),
        "order"
    );
    assert_eq!(keys.len(), 2);
    let mut preds = Vec::new();
    for (i, m) in [&m1, &m2].iter().enumerate() {
        let rec = &ev["models"][m.as_str()];
        for k in [
            "top1",
            "top5",
            "precision",
            "recall",
            "f1",
            "tiles_per_second",
            "size_bytes",
            "peak_rss_bytes",
            "agreement",
        ] {
            assert!(rec[k].is_number(), "{m}: {k} missing in {rec}");
        }
        assert_eq!(rec["tiles"], 15);
        assert!(rec["tiles_per_second"].as_f64().expect("tps") > 0.0);
        assert!(rec["peak_rss_bytes"].as_u64().expect("rss") > 10 << 20);
        assert_eq!(
            rec["size_bytes"].as_u64(),
            Some(folder_bytes(Path::new(m.as_str())))
        );
        let p = out.join(format!("predictions_{}.jsonl", i + 1));
        check_classification(rec, &p, &classes);
        let rows = jsonl(&p);
        assert_eq!(rows.len(), 15);
        // Every chip, named below the chips folder, labelled by its folder.
        for r in &rows {
            let unit = r["unit"].as_str().expect("unit");
            assert!(unit.starts_with(r["truth"].as_str().expect("truth")), "{r}");
        }
        preds.push(
            rows.iter()
                .map(|r| r["predicted"].clone())
                .collect::<Vec<_>>(),
        );
    }
    let same = preds[0]
        .iter()
        .zip(&preds[1])
        .filter(|(a, b)| a == b)
        .count();
    close(
        &ev["models"][m1.as_str()]["agreement"],
        &Value::from(1.0),
        "agreement of the first",
    );
    close(
        &ev["models"][m2.as_str()]["agreement"],
        &Value::from(same as f64 / 15.0),
        "agreement",
    );
    // Charts: real PNGs, one confusion matrix per model.
    let charts: Vec<&str> = ev["charts"]
        .as_array()
        .expect("charts")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        charts,
        [
            "accuracy_vs_speed.png",
            "confusion_1.png",
            "confusion_2.png"
        ]
    );
    for c in &charts {
        let bytes = std::fs::read(out.join(c)).expect("png");
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 2000,
            "{c}"
        );
    }
    let md = std::fs::read_to_string(out.join("eval.md")).expect("md");
    assert!(
        md.contains(&format!("| `{m1}` |")) && md.contains("![confusion_2.png]"),
        "{md}"
    );

    // A chip at the model's input size scores in the mosaic as it does alone.
    let labels = tmp.path().join("labels.txt");
    std::fs::write(&labels, classes.join("\n")).expect("labels");
    let alone = tmp.path().join("alone");
    let chip = dir.join("River/River_0.png");
    run(
        tmp.path(),
        &[
            "classify",
            &chip.display().to_string(),
            "--model",
            &m1,
            "--labels-file",
            "labels.txt",
            "--pixel-coords",
            "--out",
            "alone",
            "-q",
        ],
    )
    .success();
    let ds = gdal::Dataset::open(alone.join("probabilities.tif")).expect("open");
    let got: Vec<f32> = (1..=3)
        .map(|b| {
            ds.rasterband(b)
                .expect("band")
                .read_as::<f32>((0, 0), (1, 1), (1, 1), None)
                .expect("read")
                .data()[0]
        })
        .collect();
    let rows = jsonl(&out.join("predictions_1.jsonl"));
    let row = rows
        .iter()
        .find(|r| r["unit"] == "River/River_0.png")
        .expect("row");
    for (b, g) in got.iter().enumerate() {
        let m = row["scores"][b].as_f64().expect("score");
        assert!(
            (m - f64::from(*g)).abs() < 1e-5,
            "band {b}: mosaic {m} alone {g}"
        );
    }
}

/// A 128x128 scene (four clip-tiny tiles) and label polygons in map coordinates.
fn labelled_scene(dir: &Path) -> (PathBuf, PathBuf) {
    let scene = dir.join("scene.tif");
    image(&scene, "GTiff", 128, 128, true, |x, y| {
        [noise(1, x, y), noise(2, x, y), (x + y) as u8]
    });
    let (x0, y0) = ORIGIN;
    let rect = |a: f64, b: f64, c: f64, d: f64| {
        format!(
            "[[[{},{}],[{},{}],[{},{}],[{},{}],[{},{}]]]",
            x0 + a,
            y0 - b,
            x0 + c,
            y0 - b,
            x0 + c,
            y0 - d,
            x0 + a,
            y0 - d,
            x0 + a,
            y0 - b
        )
    };
    // Tile (0,0): water covers all of it. Tile (0,1): water 20%, field 80%.
    // Tile (1,0): field 30% (the rest unlabelled: still field). Tile (1,1): nothing.
    let features = [
        ("water", rect(0.0, 0.0, 76.8, 64.0)),
        ("field", rect(76.8, 0.0, 128.0, 64.0)),
        ("field", rect(0.0, 64.0, 64.0, 83.2)),
    ];
    let body: Vec<String> = features
        .iter()
        .map(|(c, g)| format!("{{\"type\":\"Feature\",\"properties\":{{\"cover\":\"{c}\"}},\"geometry\":{{\"type\":\"Polygon\",\"coordinates\":{g}}}}}"))
        .collect();
    let labels = dir.join("labels.geojson");
    std::fs::write(
        &labels,
        format!("{{\"type\":\"FeatureCollection\",\"crs\":{{\"type\":\"name\",\"properties\":{{\"name\":\"EPSG:32633\"}}}},\"features\":[{}]}}", body.join(",")),
    )
    .expect("geojson");
    (scene, labels)
}

#[test]
fn classify_scene_tiles_take_the_class_covering_most_of_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_scene, _labels) = labelled_scene(tmp.path());
    std::fs::write(
        tmp.path().join("prompts.txt"),
        "water\ta river or lake\nfield=farmland\n",
    )
    .expect("prompts");
    let m1 = model("clip-tiny");
    run(
        tmp.path(),
        &[
            "eval",
            "--task",
            "classify",
            "--model",
            &m1,
            "--scene",
            "scene.tif",
            "--labels",
            "labels.geojson",
            "--label-field",
            "cover",
            "--prompts",
            "prompts.txt",
            "--out",
            "eval",
            "-q",
        ],
    )
    .success();
    let out = tmp.path().join("eval");
    let rows = jsonl(&out.join("predictions_1.jsonl"));
    let truth: Vec<(String, Value)> = rows
        .iter()
        .map(|r| {
            (
                r["unit"].as_str().expect("unit").to_string(),
                r["truth"].clone(),
            )
        })
        .collect();
    assert_eq!(
        truth,
        [
            ("r0000c0000".to_string(), Value::from("water")),
            ("r0000c0001".to_string(), Value::from("field")),
            ("r0001c0000".to_string(), Value::from("field")),
            ("r0001c0001".to_string(), Value::Null),
        ]
    );
    let ev = read_json(&out.join("eval.json"));
    let rec = &ev["models"][m1.as_str()];
    assert_eq!(rec["tiles_evaluated"], 3);
    // Classes are the field's values, sorted.
    check_classification(rec, &out.join("predictions_1.jsonl"), &["field", "water"]);
}

fn paint_segmentation(dir: &Path) -> Vec<u8> {
    // Class of each pixel: red left, green middle, blue right, green bottom band.
    let class = |x: usize, y: usize| -> u8 {
        if y >= 200 {
            1
        } else if x < 100 {
            0
        } else if x < 180 {
            1
        } else {
            2
        }
    };
    image(&dir.join("scene.tif"), "GTiff", 256, 256, true, |x, y| {
        let mut c = [20u8; 3];
        c[usize::from(class(x, y))] = 200;
        c
    });
    // Labels: the painted classes with a wrong patch and an unlabelled band (nodata 255).
    let labels: Vec<u8> = (0..256 * 256)
        .map(|i| {
            let (x, y) = (i % 256, i / 256);
            if (100..110).contains(&y) {
                255
            } else if x < 50 && y < 20 {
                2
            } else {
                class(x, y)
            }
        })
        .collect();
    let driver = gdal::DriverManager::get_driver_by_name("GTiff").expect("gtiff");
    let mut ds = driver
        .create_with_band_type::<u8, _>(dir.join("labels.tif"), 256, 256, 1)
        .expect("create");
    ds.set_geo_transform(&[ORIGIN.0, 1.0, 0.0, ORIGIN.1, 0.0, -1.0])
        .expect("gt");
    let mut band = ds.rasterband(1).expect("band");
    band.set_no_data_value(Some(255.0)).expect("nodata");
    band.write(
        (0, 0),
        (256, 256),
        &mut gdal::raster::Buffer::new((256, 256), labels.clone()),
    )
    .expect("write");
    labels
}

#[test]
fn segment_metrics_match_scikit_learn_on_the_class_mosaic() {
    let tmp = tempfile::tempdir().expect("tmp");
    paint_segmentation(tmp.path());
    let seg = root()
        .join("sample_data/models/oracles/seg-logits-s4")
        .display()
        .to_string();
    let copy = tmp.path().join("seg-copy");
    common::copy_dir(Path::new(&seg), &copy);
    run(
        tmp.path(),
        &[
            "eval",
            "--task",
            "segment",
            "--model",
            &seg,
            "--model",
            "seg-copy",
            "--scene",
            "scene.tif",
            "--labels",
            "labels.tif",
            "--out",
            "eval",
            "-q",
        ],
    )
    .success();
    // The same predictions: the segment job alone on the same scene (the oracle is exact).
    run(
        tmp.path(),
        &[
            "segment",
            "scene.tif",
            "--model",
            &seg,
            "--out",
            "seg",
            "-q",
        ],
    )
    .success();
    let ev = read_json(&tmp.path().join("eval/eval.json"));
    let rec = &ev["models"][seg.as_str()];
    let labels = tmp.path().join("labels.tif").display().to_string();
    let classes = tmp.path().join("seg/classes.tif").display().to_string();
    let Some(r) = reference(&["segment", &labels, &classes, "3"]) else {
        return;
    };
    for k in ["miou", "f1", "pixel_accuracy"] {
        close(&rec[k], &r[k], k);
    }
    for (i, c) in ["red", "green", "blue"].iter().enumerate() {
        close(
            &rec["iou"][c],
            &r["iou"][i.to_string()],
            &format!("iou {c}"),
        );
    }
    assert_eq!(rec["pixels_evaluated"], r["pixels"]);
    assert!(
        rec["miou"].as_f64().expect("miou") < 0.99,
        "the wrong patch must cost: {rec}"
    );
    close(
        &ev["models"]["seg-copy"]["agreement"],
        &Value::from(1.0),
        "a copy agrees",
    );
    assert_eq!(ev["models"]["seg-copy"]["miou"], rec["miou"]);
    assert_eq!(ev["charts"].as_array().map(Vec::len), Some(3));

    // Label polygons, by class name, burnt on the mosaic's grid.
    let (x0, y0) = ORIGIN;
    let rect = |c: &str, a: f64, b: f64, w: f64, h: f64| {
        format!(
            "{{\"type\":\"Feature\",\"properties\":{{\"kind\":\"{c}\"}},\"geometry\":{{\"type\":\"Polygon\",\"coordinates\":[[[{},{}],[{},{}],[{},{}],[{},{}],[{},{}]]]}}}}",
            x0 + a, y0 - b, x0 + a + w, y0 - b, x0 + a + w, y0 - b - h, x0 + a, y0 - b - h, x0 + a, y0 - b
        )
    };
    let features = [
        rect("red", 0.0, 0.0, 100.0, 190.0),
        rect("green", 100.3, 0.0, 79.4, 256.0),
        rect("blue", 180.0, 10.5, 76.0, 150.0),
        rect("red", 20.0, 190.0, 40.0, 40.0),
    ];
    std::fs::write(
        tmp.path().join("labels.geojson"),
        format!("{{\"type\":\"FeatureCollection\",\"crs\":{{\"type\":\"name\",\"properties\":{{\"name\":\"EPSG:32633\"}}}},\"features\":[{}]}}", features.join(",")),
    )
    .expect("geojson");
    run(
        tmp.path(),
        &[
            "eval",
            "--task",
            "segment",
            "--model",
            &seg,
            "--scene",
            "scene.tif",
            "--labels",
            "labels.geojson",
            "--label-field",
            "kind",
            "--out",
            "eval-poly",
            "-q",
        ],
    )
    .success();
    let ev = read_json(&tmp.path().join("eval-poly/eval.json"));
    let rec = &ev["models"][seg.as_str()];
    let poly = tmp.path().join("labels.geojson").display().to_string();
    let Some(r) = reference(&[
        "segment-poly",
        &poly,
        "kind",
        &classes,
        "[\"red\",\"green\",\"blue\"]",
    ]) else {
        return;
    };
    for k in ["miou", "f1", "pixel_accuracy"] {
        close(&rec[k], &r[k], k);
    }
    assert_eq!(rec["pixels_evaluated"], r["pixels"]);
    assert!(rec["pixel_accuracy"].as_f64().expect("acc") < 0.99, "{rec}");
}

/// Real labels: the RGI 6.0 glacier outlines (EPSG:4326) over the Everest Landsat 7 scene
/// (EPSG:32645) in `../shared/data`: the outlines are reprojected onto the scene's grid by
/// tessera (OGR) and by the reference (pyproj through geopandas), then burnt and compared.
#[test]
fn glacier_outlines_over_everest_landsat_match_scikit_learn() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    let scene = shared.join("geoutils_Everest_LE7_RGB.tif");
    let outlines = shared.join("geoutils_Everest_rgi60_glacier_outlines.gpkg");
    if !scene.is_file() || !outlines.is_file() {
        eprintln!("skipping: the Everest scene or its glacier outlines are absent");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    // Every outline is a glacier: give them the oracle's class name with ogr2ogr (GDAL's SQL).
    let status = Command::new("ogr2ogr")
        .arg("-f")
        .arg("GPKG")
        .arg(tmp.path().join("glaciers.gpkg"))
        .arg(&outlines)
        .args([
            "-nln",
            "glaciers",
            "-sql",
            "SELECT geom, 'object' AS kind FROM glacier_outlines",
        ])
        .status()
        .expect("ogr2ogr");
    assert!(status.success(), "ogr2ogr");
    let seg = model("oracles/seg-threshold");
    let scene = scene.display().to_string();
    run(
        tmp.path(),
        &[
            "eval",
            "--task",
            "segment",
            "--model",
            &seg,
            "--scene",
            &scene,
            "--labels",
            "glaciers.gpkg",
            "--label-field",
            "kind",
            "--out",
            "eval",
            "-q",
        ],
    )
    .success();
    run(
        tmp.path(),
        &["segment", &scene, "--model", &seg, "--out", "seg", "-q"],
    )
    .success();
    let ev = read_json(&tmp.path().join("eval/eval.json"));
    let rec = &ev["models"][seg.as_str()];
    let labels = tmp.path().join("glaciers.gpkg").display().to_string();
    let classes = tmp.path().join("seg/classes.tif").display().to_string();
    let Some(r) = reference(&[
        "segment-poly",
        &labels,
        "kind",
        &classes,
        "[\"background\",\"object\"]",
    ]) else {
        return;
    };
    for k in ["miou", "f1", "pixel_accuracy"] {
        close(&rec[k], &r[k], k);
    }
    assert_eq!(rec["pixels_evaluated"], r["pixels"]);
    // The outlines cover a real part of the scene and the oracle gets some of it wrong.
    let pixels = rec["pixels_evaluated"].as_u64().expect("pixels");
    assert!(pixels > 20_000, "{rec}");
    let acc = rec["pixel_accuracy"].as_f64().expect("acc");
    assert!(acc > 0.05 && acc < 0.999, "{rec}");
}

#[test]
fn caption_bleu_and_cider_match_pycocoevalcap() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("chips");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    let names = ["a.png", "b.jpg", "sub/c.tif"];
    for (i, n) in names.iter().enumerate() {
        let driver = ["PNG", "JPEG", "GTiff"][i];
        image(&dir.join(n), driver, 40 + 8 * i, 40, false, |x, y| {
            [noise(i, x, y), noise(i + 5, x, y), 90]
        });
    }
    let blip = model("blip-tiny");
    let refs = tmp.path().join("refs.jsonl");
    let write_refs =
        |lines: &[String]| std::fs::write(&refs, lines.join("\n") + "\n").expect("refs");
    // First pass: references with punctuation and clitics, tokenised as PTB does.
    let raw = [
        "A dog's house, by the River.",
        "It isn't \"big\"!",
        "Two planes... parked (left); 3 cars",
    ];
    write_refs(
        &names
            .iter()
            .zip(raw)
            .map(|(n, r)| serde_json::json!({"chip": n, "caption": r}).to_string())
            .collect::<Vec<_>>(),
    );
    run(
        tmp.path(),
        &[
            "eval",
            "--task",
            "caption",
            "--model",
            &blip,
            "--chips",
            "chips",
            "--references",
            "refs.jsonl",
            "--out",
            "eval",
            "-q",
        ],
    )
    .success();
    let rows = jsonl(&tmp.path().join("eval/predictions_1.jsonl"));
    assert_eq!(rows.len(), 3);
    if Command::new("java").arg("-version").output().is_ok() {
        let sentences = serde_json::to_string(&raw).expect("json");
        if let Some(ptb) = reference(&["ptb", &sentences]) {
            for (i, n) in names.iter().enumerate() {
                let row = rows.iter().find(|r| r["unit"] == *n).expect("row");
                assert_eq!(row["references"][0], ptb[i], "tokens of {:?}", raw[i]);
            }
        }
    }
    // Second pass: references sharing n-grams with what the model says, so the scores are
    // not zero (the tiny model's captions are random tokens).
    let lines: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let words: Vec<&str> = r["tokens"]
                .as_str()
                .expect("tokens")
                .split_whitespace()
                .collect();
            let cut = words.len().saturating_sub(i + 1).max(1);
            let mut other: Vec<&str> = words.iter().rev().copied().collect();
            other.push("field");
            let refs = if i == 2 {
                vec!["houses and roads".to_string(), words[..cut].join(" ")]
            } else {
                vec![words[..cut].join(" "), other.join(" ")]
            };
            serde_json::json!({"chip": r["unit"], "captions": refs}).to_string()
        })
        .collect();
    write_refs(&lines);
    run(
        tmp.path(),
        &[
            "eval",
            "--task",
            "caption",
            "--model",
            &blip,
            "--model",
            &model("blip2-tiny"),
            "--chips",
            "chips",
            "--references",
            "refs.jsonl",
            "--out",
            "eval",
            "--overwrite",
            "-q",
        ],
    )
    .success();
    let ev = read_json(&tmp.path().join("eval/eval.json"));
    let again = jsonl(&tmp.path().join("eval/predictions_1.jsonl"));
    for (a, b) in rows.iter().zip(&again) {
        assert_eq!(a["caption"], b["caption"], "captions are deterministic");
    }
    let rec = &ev["models"][blip.as_str()];
    assert!(rec["cider"].as_f64().expect("cider") > 0.5, "{rec}");
    assert!(rec["bleu4"].as_f64().expect("bleu") > 0.05, "{rec}");
    for (i, m) in [blip.clone(), model("blip2-tiny")].iter().enumerate() {
        let p = tmp.path().join(format!("eval/predictions_{}.jsonl", i + 1));
        let Some(r) = reference(&["caption", &p.display().to_string()]) else {
            return;
        };
        let rec = &ev["models"][m.as_str()];
        close(&rec["bleu4"], &r["bleu4"], "bleu4");
        close(&rec["cider"], &r["cider"], "cider");
    }
    assert_eq!(rec["tiles"], 3);

    // Tiles of a scene, by tile id (blip-tiny's tiles are 32 pixels: 2 tiles here).
    image(
        &tmp.path().join("scene.tif"),
        "GTiff",
        64,
        32,
        true,
        |x, y| [noise(9, x, y), 80, 20],
    );
    let first = rows[0]["tokens"].as_str().expect("tokens").to_string();
    std::fs::write(
        &refs,
        serde_json::json!({"tile_id": "r0000c0001", "captions": [first, "a field"]}).to_string(),
    )
    .expect("refs");
    run(
        tmp.path(),
        &[
            "eval",
            "--task",
            "caption",
            "--model",
            &blip,
            "--scene",
            "scene.tif",
            "--references",
            "refs.jsonl",
            "--out",
            "eval-scene",
            "-q",
        ],
    )
    .success();
    let ev = read_json(&tmp.path().join("eval-scene/eval.json"));
    let rec = &ev["models"][blip.as_str()];
    assert_eq!(
        (rec["tiles"].as_u64(), rec["tiles_evaluated"].as_u64()),
        (Some(2), Some(1))
    );
    let p = tmp.path().join("eval-scene/predictions_1.jsonl");
    assert_eq!(jsonl(&p)[0]["unit"], "r0000c0001");
    if let Some(r) = reference(&["caption", &p.display().to_string()]) {
        close(&rec["bleu4"], &r["bleu4"], "bleu4 (scene)");
        close(&rec["cider"], &r["cider"], "cider (scene)");
    }
}

#[test]
fn bad_inputs_fail_in_one_line_and_write_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let out = t.join("eval");
    let clip = model("clip-tiny");
    run(
        t,
        &[
            "eval", "--task", "classify", "--model", &clip, "--chips", "nope", "--out", "eval",
        ],
    )
    .fails_with(&["nope", "no such chips folder"]);
    nothing_written(t, &out);
    labelled_scene(t);
    run(
        t,
        &[
            "eval",
            "--task",
            "classify",
            "--model",
            &clip,
            "--scene",
            "scene.tif",
            "--labels",
            "labels.geojson",
            "--label-field",
            "kind",
            "--out",
            "eval",
        ],
    )
    .fails_with(&["labels.geojson", "no field 'kind'", "cover"]);
    nothing_written(t, &out);
    let seg = root()
        .join("sample_data/models/oracles/seg-logits-s4")
        .display()
        .to_string();
    std::fs::create_dir_all(t.join("chips/a")).expect("mkdir");
    std::fs::create_dir_all(t.join("chips/b")).expect("mkdir");
    image(&t.join("chips/a/1.png"), "PNG", 8, 8, false, |_, _| {
        [1, 2, 3]
    });
    image(&t.join("chips/b/1.png"), "PNG", 8, 8, false, |_, _| {
        [3, 2, 1]
    });
    run(
        t,
        &[
            "eval", "--task", "classify", "--model", &clip, "--model", &seg, "--chips", "chips",
            "--out", "eval",
        ],
    )
    .fails_with(&["seg-logits-s4", "not a classify model"]);
    nothing_written(t, &out);
    std::fs::create_dir_all(t.join("chips/c")).expect("mkdir");
    run(
        t,
        &[
            "eval", "--task", "classify", "--model", &clip, "--chips", "chips", "--out", "eval",
        ],
    )
    .fails_with(&["chips/c", "class folder has no chips"]);
    nothing_written(t, &out);
    std::fs::write(
        t.join("refs.jsonl"),
        "{\"chip\": \"a/2.png\", \"caption\": \"x\"}\n",
    )
    .expect("refs");
    std::fs::remove_dir(t.join("chips/c")).expect("rm");
    run(
        t,
        &[
            "eval",
            "--task",
            "caption",
            "--model",
            &model("blip-tiny"),
            "--chips",
            "chips",
            "--references",
            "refs.jsonl",
            "--out",
            "eval",
        ],
    )
    .fails_with(&["refs.jsonl", "a/2.png"]);
    nothing_written(t, &out);
    // An output folder holding the data is refused, even with --overwrite.
    run(
        t,
        &[
            "eval",
            "--task",
            "classify",
            "--model",
            &clip,
            "--chips",
            "chips/a/..",
            "--out",
            "chips",
            "--overwrite",
        ],
    )
    .fails_with(&["chips", "would replace the input"]);
    assert!(t.join("chips/a/1.png").is_file());
    run(
        t,
        &[
            "eval",
            "--task",
            "segment",
            "--model",
            &seg,
            "--scene",
            "scene.tif",
            "--out",
            "eval",
        ],
    )
    .fails_with(&["--labels", "required"]);
    nothing_written(t, &out);
    // Detection-only options are refused by the other tasks, not silently ignored.
    for (flag, value) in [
        ("--confidence", "0.5"),
        ("--min-score", "0.1"),
        ("--max-dets", "10"),
        ("--class-map", "a=b"),
    ] {
        run(
            t,
            &[
                "eval", "--task", "classify", "--model", &clip, "--chips", "chips", "--out",
                "eval", flag, value,
            ],
        )
        .fails_with(&[flag, "is not taken by --task classify"]);
        nothing_written(t, &out);
    }
}
