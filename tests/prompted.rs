//! Text-prompted models against PyTorch: a tiny CLIPSeg (one logit map per image and prompt)
//! and a tiny OWL-ViT (open-vocabulary boxes), exported from Hugging Face transformers with
//! references computed by PyTorch; then both through the CLI on a scene.

mod common;

use std::path::{Path, PathBuf};

use common::run;
use gdal::Metadata;
use ndarray::Array4;
use serde_json::Value;
use tessera::models::detection::DetectorModel;
use tessera::models::segmentation::SegmentationModel;
use tessera::runtime::{Runtime, SessionOptions};

fn package(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models")
        .join(name)
}

fn reference(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(package(name).join("reference/reference.json"))
            .expect("reference"),
    )
    .expect("json")
}

fn f32s(name: &str, file: &str) -> Vec<f32> {
    let bytes = std::fs::read(package(name).join("reference").join(file)).expect("bin");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn pixels(name: &str) -> Array4<f32> {
    Array4::from_shape_vec((4, 3, 64, 64), f32s(name, "pixels_f32.bin")).expect("pixels")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("str").to_string())
        .collect()
}

#[test]
fn clipseg_maps_match_pytorch() {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let mut model =
        SegmentationModel::load(rt, &package("clipseg-tiny"), &SessionOptions::default())
            .expect("model");
    assert!(model.is_prompted());
    let r = reference("clipseg-tiny");
    let prompts = strings(&r["prompts"]);
    model.set_prompts(&prompts).expect("prompts");
    assert_eq!(model.classes()[0], "background");
    assert_eq!(&model.classes()[1..], &prompts[..]);
    let want = f32s("clipseg-tiny", "probs_f32.bin");
    let px = pixels("clipseg-tiny");
    // All four images at once, and one alone: the same maps.
    let probs = model.predict(px.view()).expect("predict");
    let one = model
        .predict(px.slice(ndarray::s![2..3, .., .., ..]))
        .expect("predict one");
    let np = prompts.len();
    let mut max_err = 0f32;
    for i in 0..4 {
        for q in 0..np {
            let row = i * np + q;
            for y in 0..64 {
                for x in 0..64 {
                    let w = want[(row * 64 + y) * 64 + x];
                    max_err = max_err.max((probs[[i, q + 1, y, x]] - w).abs());
                    if i == 2 {
                        max_err = max_err.max((one[[0, q + 1, y, x]] - w).abs());
                    }
                }
            }
        }
    }
    assert!(max_err < 1e-4, "CLIPSeg probabilities differ by {max_err}");
}

#[test]
fn owlvit_boxes_match_pytorch_post_processing() {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let mut model = DetectorModel::load(rt, &package("owlvit-tiny"), &SessionOptions::default())
        .expect("model");
    assert!(model.is_prompted());
    let r = reference("owlvit-tiny");
    let queries = strings(&r["queries"]);
    model.set_queries(&queries).expect("queries");
    assert_eq!(model.classes(), queries);
    let px = pixels("owlvit-tiny");
    let mut checked = 0;
    for case in r["post_process"]["cases"].as_array().expect("cases") {
        let threshold = case["threshold"].as_f64().expect("threshold") as f32;
        let got = model.detect(px.view(), threshold).expect("detect");
        for (i, det) in case["detections"]
            .as_array()
            .expect("detections")
            .iter()
            .enumerate()
        {
            // HF keeps patch order and does not clip; tessera sorts by score and clips to the input.
            let mut want: Vec<(f32, usize, [f32; 4])> = det["scores"]
                .as_array()
                .expect("scores")
                .iter()
                .zip(det["labels"].as_array().expect("labels"))
                .zip(det["boxes"].as_array().expect("boxes"))
                .map(|((s, l), b)| {
                    let b: Vec<f32> = b
                        .as_array()
                        .expect("box")
                        .iter()
                        .map(|v| (v.as_f64().expect("f") as f32).clamp(0.0, 64.0))
                        .collect();
                    (
                        s.as_f64().expect("score") as f32,
                        l.as_u64().expect("label") as usize,
                        [b[0], b[1], b[2], b[3]],
                    )
                })
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0));
            assert_eq!(got[i].len(), want.len(), "threshold {threshold}, image {i}");
            for (g, w) in got[i].iter().zip(&want) {
                assert!((g.score - w.0).abs() < 1e-4, "score {} vs {}", g.score, w.0);
                assert_eq!(g.class, w.1);
                for (a, b) in [g.x0, g.y0, g.x1, g.y1].iter().zip(w.2) {
                    assert!((a - b).abs() < 1e-3, "box {g:?} vs {w:?}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "{checked} boxes compared");
}

#[test]
fn prompted_models_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scene = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/sentinel2_rgbn_10m.tif");
    let scene = scene.to_str().expect("utf8");
    let seg = package("clipseg-tiny").display().to_string();
    let j = run(
        dir.path(),
        &[
            "segment",
            scene,
            "--model",
            &seg,
            "--prompts",
            "a building,water",
            "--bands",
            "1,2,3",
            "--target-gsd",
            "40",
            "--overlap",
            "16",
            "--probabilities",
            "--out",
            "seg",
            "--json",
            "--quiet",
        ],
    )
    .success()
    .json();
    assert_eq!(
        j["classes"],
        serde_json::json!(["background", "a building", "water"])
    );
    let probs = gdal::Dataset::open(dir.path().join("seg/probabilities.tif")).expect("probs");
    assert_eq!(probs.raster_count(), 2);
    assert_eq!(
        probs
            .rasterband(2)
            .expect("band")
            .description()
            .expect("desc"),
        "water"
    );
    run(
        dir.path(),
        &["segment", scene, "--model", &seg, "--out", "x"],
    )
    .fails_with(&["text-prompted", "--prompts"]);

    let det = package("owlvit-tiny").display().to_string();
    let j = run(
        dir.path(),
        &[
            "detect",
            scene,
            "--model",
            &det,
            "--prompts",
            "a car,a ship",
            "--bands",
            "1,2,3",
            "--target-gsd",
            "40",
            "--overlap",
            "16",
            "--confidence",
            "0.45",
            "--out",
            "det",
            "--json",
            "--quiet",
        ],
    )
    .success()
    .json();
    assert_eq!(j["classes"], serde_json::json!(["a car", "a ship"]));
    assert!(j["raw_detections"].as_u64().expect("raw") >= j["detections"].as_u64().expect("n"));
    run(
        dir.path(),
        &["detect", scene, "--model", &det, "--out", "y"],
    )
    .fails_with(&["open-vocabulary", "--prompts"]);
    let grid = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models/oracles/det-grid-v8")
        .display()
        .to_string();
    run(
        dir.path(),
        &["detect", scene, "--model", &grid, "--prompts", "a car"],
    )
    .fails_with(&["takes no text queries"]);
}
