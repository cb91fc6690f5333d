//! `tessera classify` end to end with the committed tiny CLIP model: a scene built from blocks
//! of the reference images must be classified as the PyTorch reference says, every output
//! must open in GDAL/OGR and geopandas with the right CRS and extent, and bad models, labels
//! and devices must fail cleanly.

mod common;

use std::path::Path;

use common::{clip_tiny, copy_dir, inspect_outputs, run, walk};
use serde_json::Value;

fn reference() -> Value {
    let text =
        std::fs::read_to_string(clip_tiny().join("reference/reference.json")).expect("reference");
    serde_json::from_str(&text).expect("json")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("str").to_string())
        .collect()
}

fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f64::MIN), |b, (i, &p)| if p > b.1 { (i, p) } else { b })
        .0
}

fn classify_args<'a>(labels: &'a str, templates: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["classify", "scene.tif", "--model"];
    args.push(Box::leak(
        clip_tiny().display().to_string().into_boxed_str(),
    ));
    args.extend(["--labels", labels, "--no-cache", "--json", "--quiet"]);
    for t in templates {
        args.extend(["--template", t.as_str()]);
    }
    args.extend(extra);
    args
}

#[test]
fn block_scene_is_classified_as_the_reference_says() {
    let r = reference();
    let labels = strings(&r["labels"]);
    let templates = strings(&r["templates"]);
    let probs: Vec<Vec<f64>> = r["probs"]
        .as_array()
        .expect("probs")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_f64().expect("p"))
                .collect()
        })
        .collect();
    // Two reference images the reference labels differently.
    let a = 0;
    let b = (1..probs.len())
        .find(|&i| argmax(&probs[i]) != argmax(&probs[a]))
        .expect("two classes");
    let pick = |row: usize, col: usize| if (row + col) % 2 == 0 { a } else { b };
    let (cols, rows) = (4, 3);
    let dir = tempfile::tempdir().expect("tempdir");
    common::reference::block_scene(
        &clip_tiny(),
        &dir.path().join("scene.tif"),
        cols,
        rows,
        pick,
    );
    let label_list = labels.join(",");
    let res = run(
        dir.path(),
        &classify_args(
            &label_list,
            &templates,
            &["--out", "out", "--batch-size", "5"],
        ),
    );
    let j = res.success().json();
    assert_eq!(j["tiles_read"], 12, "{}", res.context());
    assert_eq!(j["model_trained"], false);
    assert_eq!(j["provider"], "CPUExecutionProvider");
    let count_a = j["label_counts"][&labels[argmax(&probs[a])]]
        .as_u64()
        .expect("count");
    assert_eq!(count_a, 6);

    // Every output opens in GDAL/OGR.
    let out = dir.path().join("out");
    let classes = gdal::Dataset::open(out.join("classes.tif")).expect("classes");
    assert_eq!(classes.raster_size(), (cols, rows));
    assert_eq!(
        classes.geo_transform().expect("gt"),
        [600_000.0, 128.0, 0.0, 5_000_000.0, 0.0, -128.0]
    );
    let cls = classes
        .rasterband(1)
        .expect("band")
        .read_as::<u8>((0, 0), (cols, rows), (cols, rows), None)
        .expect("read");
    let prob_ds = gdal::Dataset::open(out.join("probabilities.tif")).expect("probs");
    assert_eq!(prob_ds.raster_count(), labels.len());
    for row in 0..rows {
        for col in 0..cols {
            let img = pick(row, col);
            assert_eq!(
                cls.data()[row * cols + col] as usize,
                argmax(&probs[img]),
                "tile r{row}c{col}"
            );
            for (k, want) in probs[img].iter().enumerate() {
                let band = prob_ds.rasterband(k + 1).expect("band");
                let v = band
                    .read_as::<f32>((col as isize, row as isize), (1, 1), (1, 1), None)
                    .expect("read");
                assert!(
                    (f64::from(v.data()[0]) - want).abs() < 1e-4,
                    "prob {k} at r{row}c{col}"
                );
            }
        }
    }

    // In QGIS: the class raster paletted with the labels, the layers categorised by label in
    // the raster's colours.
    if let Some(q) = common::qgis_styles(&out) {
        let raster = &q["classes.tif"];
        assert_eq!(raster["renderer"], "paletted", "{q}");
        let classes = raster["classes"].as_array().expect("classes");
        let names: Vec<&str> = classes
            .iter()
            .map(|c| c["label"].as_str().expect("label"))
            .collect();
        assert_eq!(names, labels.iter().map(String::as_str).collect::<Vec<_>>());
        for layer in ["tiles.gpkg", "labels.gpkg"] {
            let l = &q[layer];
            assert_eq!(l["renderer"], "categorizedSymbol", "{layer}: {q}");
            assert_eq!(l["attribute"], "label");
            let cats = l["categories"].as_array().expect("categories");
            assert_eq!(cats.len(), classes.len(), "{layer}");
            for (cat, class) in cats.iter().zip(classes) {
                assert_eq!(cat["value"], class["label"]);
                assert_eq!(cat["fill"], class["color"], "{layer}");
            }
        }
    }

    // And in geopandas / rasterio, with the right CRS and extent; rasters are valid COGs.
    let Some(found) = inspect_outputs(&out) else {
        return;
    };
    let extent = [600_000.0, 5_000_000.0 - 384.0, 600_512.0, 5_000_000.0];
    for name in [
        "classes.tif",
        "probabilities.tif",
        "tiles.gpkg",
        "labels.gpkg",
    ] {
        let f = &found[name];
        assert_eq!(f["epsg"], 32632, "{name}: {f}");
        let bounds: Vec<f64> = f["bounds"]
            .as_array()
            .expect("bounds")
            .iter()
            .map(|v| v.as_f64().expect("f"))
            .collect();
        for (got, want) in bounds.iter().zip(extent) {
            assert!((got - want).abs() < 1e-6, "{name}: bounds {bounds:?}");
        }
    }
    assert_eq!(found["classes.tif"]["cog_valid"], true);
    assert_eq!(found["probabilities.tif"]["cog_valid"], true);
    assert_eq!(
        found["probabilities.tif"]["descriptions"],
        serde_json::json!(labels)
    );
    assert!(found["classes.tif"]["colormap"].as_u64().expect("n") > 0);
    assert_eq!(found["tiles.gpkg"]["rows"], 12);
    let labels_layer = &found["labels.gpkg"];
    assert_eq!(labels_layer["rows"], 2);
    assert_eq!(
        labels_layer["geom_types"],
        serde_json::json!(["MultiPolygon"])
    );
    assert_eq!(labels_layer["valid"], true);
    let geodesic = labels_layer["geodesic_area_m2"].as_array().expect("areas");
    for (rec, want) in labels_layer["records"]
        .as_array()
        .expect("records")
        .iter()
        .zip(geodesic)
    {
        assert_eq!(rec["tiles"], 6);
        // area_m2 is on the ellipsoid (pyproj's value), not the UTM plane's 6 x 128^2 m^2,
        // from which it differs by the zone's scale factor (within 0.2 % here).
        let got = rec["area_m2"].as_f64().expect("area_m2");
        let want = want.as_f64().expect("pyproj area");
        assert!((got - want).abs() / want < 1e-7, "{got} vs pyproj {want}");
        let planar = 6.0 * 128.0 * 128.0;
        assert!(
            (got / planar - 1.0).abs() < 2e-3,
            "{got} vs planar {planar}"
        );
        assert!((got - planar).abs() > 1e-3, "{got}: planar, not geodesic");
    }
    let tiles = &found["tiles.gpkg"]["records"];
    for rec in tiles.as_array().expect("records") {
        let (row, col) = (
            rec["row"].as_u64().expect("r") as usize,
            rec["col"].as_u64().expect("c") as usize,
        );
        let p = &probs[pick(row, col)];
        assert_eq!(rec["label"], labels[argmax(p)].as_str());
        assert!((rec["score"].as_f64().expect("s") - p[argmax(p)]).abs() < 1e-4);
        assert_ne!(rec["top2_label"], rec["label"]);
    }
}

#[test]
fn vector_formats_cache_and_min_score() {
    let r = reference();
    let labels = strings(&r["labels"]).join(",");
    let templates = strings(&r["templates"]);
    let dir = tempfile::tempdir().expect("tempdir");
    common::reference::block_scene(&clip_tiny(), &dir.path().join("scene.tif"), 3, 2, |r, c| {
        (r + c) % 4
    });
    // GeoJSON is RFC 7946 (WGS 84 longitude, latitude) unless --geojson-native-crs.
    for (format, ext, extra, epsg) in [
        ("shp", "shp", None, 32632),
        ("geojson", "geojson", None, 4326),
        ("geojson", "geojson", Some("--geojson-native-crs"), 32632),
        ("fgb", "fgb", None, 32632),
    ] {
        let out = format!("out_{format}_{epsg}");
        let mut more = vec!["--out", &out, "--format", format];
        more.extend(extra);
        run(dir.path(), &classify_args(&labels, &templates, &more)).success();
        let Some(found) = inspect_outputs(&dir.path().join(&out)) else {
            return;
        };
        let tiles = &found[format!("tiles.{ext}").as_str()];
        assert_eq!(tiles["epsg"], epsg, "{format}: {tiles}");
        assert_eq!(tiles["rows"], 6);
        let cols: Vec<String> = strings(&tiles["columns"]);
        for want in [
            "tile_id",
            "label",
            "score",
            "top2_label",
            "top3_score",
            "valid_frac",
        ] {
            assert!(cols.iter().any(|c| c == want), "{format}: {cols:?}");
        }
        let labels_layer = &found[format!("labels.{ext}").as_str()];
        assert_eq!(labels_layer["epsg"], epsg);
        // The same ground areas whatever the format and CRS.
        for (rec, want) in labels_layer["records"]
            .as_array()
            .expect("records")
            .iter()
            .zip(labels_layer["geodesic_area_m2"].as_array().expect("areas"))
        {
            let (got, want) = (
                rec["area_m2"].as_f64().expect("area_m2"),
                want.as_f64().expect("pyproj"),
            );
            assert!(
                (got - want).abs() / want < 1e-6,
                "{format}: {got} vs {want}"
            );
        }
    }

    // The text-embedding cache: the second run with the same model and prompts hits it.
    let cache = dir.path().join("cache");
    let cache_s = cache.display().to_string();
    let mut args: Vec<&str> = classify_args(&labels, &templates, &["--cache-dir", &cache_s]);
    args.retain(|a| *a != "--no-cache");
    assert_eq!(
        run(dir.path(), &args).success().json()["text_cache_hit"],
        false
    );
    assert_eq!(
        run(dir.path(), &args).success().json()["text_cache_hit"],
        true
    );
    assert!(walk(&cache)
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "json")));

    // --min-score above every probability: every tile is "unknown".
    let j = run(
        dir.path(),
        &classify_args(
            &labels,
            &templates,
            &["--min-score", "0.99", "--out", "unk"],
        ),
    )
    .success()
    .json();
    assert_eq!(j["label_counts"]["unknown"], 6);
    let classes = gdal::Dataset::open(dir.path().join("unk/classes.tif")).expect("open");
    let v = classes
        .rasterband(1)
        .expect("b")
        .read_as::<u8>((0, 0), (3, 2), (3, 2), None)
        .expect("read");
    assert!(v.data().iter().all(|&c| c == 4), "unknown is class {}", 4);
}

#[test]
fn multiband_scenes_use_band_mapping_and_scaling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scene = dir.path().join("s2.tif");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/sentinel2_rgbn_10m.tif"),
        &scene,
    )
    .expect("copy");
    let scene_s = scene.display().to_string();
    let model = clip_tiny().display().to_string();
    let j = run(
        dir.path(),
        &[
            "classify",
            &scene_s,
            "--model",
            &model,
            "--labels",
            "forest,water,fields",
            "--bands",
            "4,1,2",
            "--scale",
            "range:0,3000",
            "--target-gsd",
            "20",
            "--no-cache",
            "--json",
            "--quiet",
            "--out",
            "o",
        ],
    )
    .success()
    .json();
    // 640 px at 10 m = 320 px at 20 m = 5 x 5 tiles of 64.
    assert_eq!((j["cols"].as_u64(), j["rows"].as_u64()), (Some(5), Some(5)));
    assert_eq!(j["tiles_read"], 25);
    let total: u64 = j["label_counts"]
        .as_object()
        .expect("counts")
        .values()
        .map(|v| v.as_u64().expect("n"))
        .sum();
    assert_eq!(total, 25);
    // Percentile scaling reads statistics without leaving files next to the scene.
    run(
        dir.path(),
        &[
            "classify",
            &scene_s,
            "--model",
            &model,
            "--labels",
            "a,b",
            "--scale",
            "percentile:2,98",
            "--no-cache",
            "--quiet",
        ],
    )
    .success();
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().ends_with(".aux.xml") && !p.starts_with(dir.path().join("o"))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_models_labels_and_devices_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    common::reference::block_scene(&clip_tiny(), &d.join("scene.tif"), 2, 2, |_, _| 0);
    let model = clip_tiny().display().to_string();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["classify", "scene.tif", "--no-cache", "--quiet"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let go = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(d, &refs)
    };

    // Labels.
    go(base(&["--model", &model, "--labels", "a,,b", "--out", "o"])).fails_with(&["empty label"]);
    go(base(&[
        "--model", &model, "--labels", "a,b,a", "--out", "o",
    ]))
    .fails_with(&["'a'", "twice"]);
    std::fs::write(d.join("empty.txt"), "# nothing\n\n").expect("write");
    go(base(&[
        "--model",
        &model,
        "--labels-file",
        "empty.txt",
        "--out",
        "o",
    ]))
    .fails_with(&["no labels"]);
    go(base(&[
        "--model",
        &model,
        "--labels",
        "a,b",
        "--template",
        "no placeholder",
    ]))
    .fails_with(&["{}"]);

    // Devices: no CUDA in the CPU build of ONNX Runtime.
    go(base(&[
        "--model", &model, "--labels", "a,b", "--device", "cuda", "--out", "o",
    ]))
    .fails_with(&[
        "--device cuda:0",
        "CUDAExecutionProvider",
        "--allow-fallback",
    ]);
    let fallback = go(base(&[
        "--model",
        &model,
        "--labels",
        "a,b",
        "--device",
        "cuda",
        "--allow-fallback",
        "--json",
    ]));
    let j = fallback.success().json();
    assert_eq!(j["provider"], "CPUExecutionProvider");
    assert!(
        j["fallback"]
            .as_str()
            .is_some_and(|f| f.contains("CUDAExecutionProvider")),
        "{j}"
    );
    assert!(
        fallback.stderr().is_empty(),
        "--quiet silences the fallback warning"
    );
    // TensorRT (absent from the CPU build, and from the GPU machine): a clear error, or with
    // --allow-fallback the next providers in order (CUDA, then CPU), reported.
    go(base(&[
        "--model", &model, "--labels", "a,b", "--device", "tensorrt", "--out", "o",
    ]))
    .fails_with(&[
        "--device tensorrt:0",
        "TensorrtExecutionProvider",
        "--allow-fallback",
    ]);
    let trt = go(base(&[
        "--model",
        &model,
        "--labels",
        "a,b",
        "--device",
        "tensorrt",
        "--allow-fallback",
        "--json",
    ]))
    .success()
    .json();
    assert_eq!(trt["provider"], "CPUExecutionProvider");
    let why = trt["fallback"].as_str().unwrap_or_default();
    assert!(why.contains("TensorrtExecutionProvider"), "{trt}");
    assert_eq!(trt["pinned_input"], false, "no pinned memory on the CPU");
    assert_eq!(
        trt["similarity_provider"], "CPUExecutionProvider",
        "the similarity head follows the encoder's fallback"
    );
    // A device clap cannot parse is a usage error (exit 2) naming the choices.
    let tpu = go(base(&[
        "--model", &model, "--labels", "a,b", "--device", "tpu",
    ]));
    assert_eq!(tpu.output.status.code(), Some(2));
    assert!(
        tpu.stderr().contains("cpu, cuda[:N] or tensorrt[:N]"),
        "{}",
        tpu.stderr()
    );

    // Broken packages.
    let broken = |name: &str, edit: &dyn Fn(&Path)| -> String {
        let p = d.join(name);
        copy_dir(&clip_tiny(), &p);
        edit(&p);
        p.display().to_string()
    };
    let missing = d.join("nope").display().to_string();
    go(base(&["--model", &missing, "--labels", "a,b"]))
        .fails_with(&["nope", "no such model package"]);
    let corrupt = broken("corrupt", &|p| {
        std::fs::write(p.join("image_encoder.onnx"), b"not onnx").expect("write")
    });
    go(base(&["--model", &corrupt, "--labels", "a,b"])).fails_with(&[
        "corrupt",
        "image encoder",
        "image_encoder.onnx",
    ]);
    let no_tok = broken("no_tok", &|p| {
        std::fs::remove_file(p.join("tokenizer.json")).expect("rm")
    });
    go(base(&["--model", &no_tok, "--labels", "a,b"]))
        .fails_with(&["tokenizer.json", "no such file"]);
    let typo = broken("typo", &|p| {
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        std::fs::write(
            p.join("model.toml"),
            m.replace("logit_scale", "logit_scael"),
        )
        .expect("write");
    });
    go(base(&["--model", &typo, "--labels", "a,b"])).fails_with(&["model.toml", "logit_scael"]);
    let shape = broken("shape", &|p| {
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        let m = m
            .replace("size = 64", "size = 32")
            .replace("input = \"pixel_values\"", "input = \"pixels\"");
        std::fs::write(p.join("model.toml"), m).expect("write");
    });
    go(base(&["--model", &shape, "--labels", "a,b"])).fails_with(&["no input 'pixels'"]);
    let size = broken("size", &|p| {
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        std::fs::write(p.join("model.toml"), m.replace("size = 64", "size = 48")).expect("write");
    });
    go(base(&["--model", &size, "--labels", "a,b"])).fails_with(&["[B, 3, 48, 48]"]);
    let dtype = broken("dtype", &|p| {
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        let m = m
            .replace(
                "onnx = \"image_encoder.onnx\"",
                "onnx = \"text_encoder.onnx\"",
            )
            .replace("input = \"pixel_values\"", "input = \"input_ids\"");
        std::fs::write(p.join("model.toml"), m).expect("write");
    });
    go(base(&["--model", &dtype, "--labels", "a,b"]))
        .fails_with(&["is int64, but the manifest says input_type = \"float32\""]);
    assert_eq!(
        walk(d)
            .iter()
            .filter(|p| p.starts_with(d.join("o")))
            .count(),
        0,
        "no partial --out"
    );

    // `models check` lists every problem at once.
    let many = broken("many", &|p| {
        std::fs::remove_file(p.join("tokenizer.json")).expect("rm");
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        let m = m
            .replace("output = \"image_embeds\"", "output = \"embeds\"")
            .replace("logit_scale = 14", "logit_scale = -14");
        std::fs::write(p.join("model.toml"), m).expect("write");
    });
    let check = run(d, &["models", "check", &many, "--json"]);
    assert_eq!(check.output.status.code(), Some(1));
    let problems = strings(&check.json()["problems"]);
    assert_eq!(problems.len(), 3, "{problems:?}");
    let ok = run(d, &["models", "check", &model]);
    ok.success();
    assert!(ok.stdout().contains("valid model package"));
}

#[test]
fn bench_model_times_the_image_graph_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = clip_tiny().display().to_string();
    let j = run(
        dir.path(),
        &[
            "bench-model",
            &model,
            "--batch-size",
            "3",
            "--iterations",
            "2",
        ],
    )
    .success()
    .json();
    assert_eq!(j["family"], "clip");
    assert_eq!(j["batch_size"], 3);
    assert_eq!(j["iterations"], 2);
    assert_eq!(j["input_size"], 64);
    assert!(j["images_per_second"].as_f64().expect("rate") > 0.0);
    let j = run(
        dir.path(),
        &[
            "bench-model",
            &model,
            "--device",
            "cuda",
            "--allow-fallback",
            "--iterations",
            "1",
        ],
    )
    .success()
    .json();
    assert_eq!(j["provider"], "CPUExecutionProvider");
    assert!(j["fallback"]
        .as_str()
        .is_some_and(|f| f.contains("CUDAExecutionProvider")));
    run(dir.path(), &["bench-model", &model, "--device", "cuda"])
        .fails_with(&["CUDAExecutionProvider", "--allow-fallback"]);
    let blip = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models/blip2-tiny")
        .display()
        .to_string();
    run(dir.path(), &["bench-model", &blip]).fails_with(&["not 'image-text-decoder'"]);
}
