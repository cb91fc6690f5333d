//! Open-vocabulary detector packages against Hugging Face: a tiny Grounding DINO and a tiny
//! OWLv2 (`tools/export/open_vocab_export.py`), whose references are the boxes, scores and
//! labels (phrases) of HF's own post-processing; then both through `tessera detect` on a
//! GeoTIFF, and broken packages.

mod common;

use std::path::{Path, PathBuf};

use common::run;
use gdal::vector::LayerAccess;
use ndarray::Array4;
use serde_json::Value;
use tessera::models::detection::{DetectorModel, PixelBox};
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

fn pixels(name: &str, n: usize, s: usize) -> Array4<f32> {
    Array4::from_shape_vec((n, 3, s, s), f32s(name, "pixels_f32.bin")).expect("pixels")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("str").to_string())
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("f64") as f32)
        .collect()
}

fn load(name: &str) -> DetectorModel {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    DetectorModel::load(rt, &package(name), &SessionOptions::default()).expect("model")
}

/// One HF detection: score, label (query index), box clipped to the input (tessera clips,
/// HF does not), phrase.
type Want = (f32, usize, [f32; 4], Option<String>);

fn wanted(det: &Value, size: f32) -> Vec<Want> {
    let scores = floats(&det["scores"]);
    let labels: Vec<usize> = det["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| l.as_u64().expect("label") as usize)
        .collect();
    let phrases = det.get("phrases").map(strings);
    let mut want: Vec<Want> = det["boxes"]
        .as_array()
        .expect("boxes")
        .iter()
        .enumerate()
        .map(|(k, b)| {
            let b: Vec<f32> = floats(b).iter().map(|v| v.clamp(0.0, size)).collect();
            (
                scores[k],
                labels[k],
                [b[0], b[1], b[2], b[3]],
                phrases.as_ref().map(|p| p[k].clone()),
            )
        })
        .collect();
    // HF keeps query order; tessera sorts by score (stable).
    want.sort_by(|a, b| b.0.total_cmp(&a.0));
    want
}

/// Boxes equal to 1e-4 (relative to max(1, |value|)), same labels and phrases, scores to 1e-4.
fn compare(got: &[PixelBox], want: &[Want], phrases: &[String], what: &str) -> usize {
    assert_eq!(got.len(), want.len(), "{what}: box count");
    for (g, w) in got.iter().zip(want) {
        assert!((g.score - w.0).abs() < 1e-4, "{what}: score {g:?} vs {w:?}");
        assert_eq!(g.class, w.1, "{what}: label {g:?} vs {w:?}");
        for (a, b) in [g.x0, g.y0, g.x1, g.y1].iter().zip(w.2) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{what}: box {g:?} vs {w:?}"
            );
        }
        let phrase = g.phrase.map(|k| phrases[k as usize].clone());
        assert_eq!(phrase, w.3, "{what}: phrase");
    }
    got.len()
}

#[test]
fn grounding_dino_boxes_and_phrases_match_hf_post_processing() {
    let mut model = load("grounding-dino-tiny");
    assert!(model.is_prompted() && model.has_phrases());
    let r = reference("grounding-dino-tiny");
    let size = r["pixels_f32"]["shape"][2].as_u64().expect("size") as usize;
    let px = pixels("grounding-dino-tiny", 4, size);
    let mut checked = 0;
    for set in r["prompt_sets"].as_array().expect("sets") {
        let prompts = strings(&set["prompts"]);
        model.set_queries(&prompts).expect("queries");
        assert_eq!(model.classes(), prompts);
        assert_eq!(
            tessera::models::detection::grounding_text(&prompts).0,
            set["text"].as_str().expect("text")
        );
        for case in set["cases"].as_array().expect("cases") {
            let t = case["box_threshold"].as_f64().expect("t") as f32;
            let tt = case["text_threshold"].as_f64().expect("tt") as f32;
            model.set_text_threshold(Some(tt)).expect("text threshold");
            let got = model.detect(px.view(), t).expect("detect");
            for (i, det) in case["detections"]
                .as_array()
                .expect("detections")
                .iter()
                .enumerate()
            {
                let want = wanted(det, size as f32);
                let what = format!("{prompts:?} box {t} text {tt} image {i}");
                checked += compare(&got[i], &want, model.phrases(), &what);
            }
        }
    }
    assert!(checked > 100, "{checked} boxes compared");
    // One image alone gives the same boxes as in the batch.
    let set = &r["prompt_sets"][0];
    model
        .set_queries(&strings(&set["prompts"]))
        .expect("queries");
    let case = &set["cases"][0];
    model
        .set_text_threshold(Some(case["text_threshold"].as_f64().expect("tt") as f32))
        .expect("tt");
    let one = model
        .detect(
            px.slice(ndarray::s![2..3, .., .., ..]),
            case["box_threshold"].as_f64().expect("t") as f32,
        )
        .expect("one");
    let want = wanted(&case["detections"][2], size as f32);
    compare(&one[0], &want, model.phrases(), "image 2 alone");
    // 130 prompts make 262 tokens: more than the 256 text positions.
    let e = model
        .set_queries(&vec!["ship".to_string(); 130])
        .expect_err("too long");
    assert!(
        e.to_string()
            .contains("the queries make 262 tokens, more than the model's 256 text positions"),
        "{e}"
    );
}

#[test]
fn owlv2_boxes_match_hf_post_processing_and_edge_tiles_are_padded_as_hf() {
    let mut model = load("owlv2-tiny");
    assert!(model.is_prompted() && !model.has_phrases());
    let r = reference("owlv2-tiny");
    let size = r["pixels_f32"]["shape"][2].as_u64().expect("size") as usize;
    let px = pixels("owlv2-tiny", 4, size);
    let edge_rows = r["edge_tile"]["rows"].as_u64().expect("rows") as usize;
    let mut checked = 0;
    for set in r["prompt_sets"].as_array().expect("sets") {
        let prompts = strings(&set["prompts"]);
        model.set_queries(&prompts).expect("queries");
        for case in set["cases"].as_array().expect("cases") {
            let t = case["threshold"].as_f64().expect("t") as f32;
            let got = model.detect(px.view(), t).expect("detect");
            for (i, det) in case["detections"]
                .as_array()
                .expect("detections")
                .iter()
                .enumerate()
            {
                let what = format!("{prompts:?} threshold {t} image {i}");
                checked += compare(&got[i], &wanted(det, size as f32), &[], &what);
            }
        }
        // Image 0 cut by the scene edge after `edge_rows` rows: tessera's padding of the tile
        // and its boxes equal Owlv2ImageProcessor's square padding and post-processing.
        let edge = &set["edge_tile"];
        let t = edge["threshold"].as_f64().expect("t") as f32;
        let mut tile = px.slice(ndarray::s![0..1, .., .., ..]).to_owned();
        // what the scene read leaves outside the scene (invalid pixels: 0 after normalising)
        tile.slice_mut(ndarray::s![.., .., edge_rows.., ..])
            .fill(0.0);
        let got = model
            .detect_tiles(tile.view(), &[(size, edge_rows)], t)
            .expect("edge tile");
        let want = wanted(edge, size as f32);
        assert!(!want.is_empty());
        checked += compare(&got[0], &want, &[], "edge tile");
        // Without the padding the boxes differ: the case tests something.
        let plain = model.detect(tile.view(), t).expect("plain");
        assert_ne!(plain[0], got[0], "black padding changes nothing");
    }
    assert!(checked > 60, "{checked} boxes compared");
}

/// `detections.gpkg` rows: (label, score, phrase when the layer has one).
fn rows(path: &Path) -> Vec<(String, f64, Option<String>)> {
    let ds = gdal::Dataset::open(path).expect("open");
    let mut layer = ds.layer(0).expect("layer");
    layer
        .features()
        .map(|f| {
            let s = |name: &str| {
                f.field_index(name)
                    .ok()
                    .map(|i| f.field_as_string(i).expect("f").unwrap_or_default())
            };
            let score = f
                .field_as_double(f.field_index("score").expect("score"))
                .expect("f")
                .expect("score");
            (s("label").expect("label"), score, s("phrase"))
        })
        .collect()
}

#[test]
fn open_vocab_detectors_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scene = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/sentinel2_rgbn_10m.tif");
    let scene = scene.to_str().expect("utf8");
    let gdino = package("grounding-dino-tiny").display().to_string();
    let owlv2 = package("owlv2-tiny").display().to_string();
    let detect = |model: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "detect",
            scene,
            "--model",
            model,
            "--prompts",
            "ship,storage tank",
            "--bands",
            "1,2,3",
            "--target-gsd",
            "40",
            "--overlap",
            "16",
            "--edge",
            "pad",
            "--out",
            out,
            "--json",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        run(dir.path(), &args)
    };
    let j = detect(
        &gdino,
        "gd",
        &["--confidence", "0.9", "--text-threshold", "0.25"],
    )
    .success()
    .json();
    assert_eq!(j["classes"], serde_json::json!(["ship", "storage tank"]));
    let got = rows(&dir.path().join("gd/detections.gpkg"));
    assert_eq!(got.len() as u64, j["detections"].as_u64().expect("n"));
    assert!(!got.is_empty() && got.len() as u64 <= j["raw_detections"].as_u64().expect("raw"));
    for (label, score, phrase) in &got {
        assert!(label == "ship" || label == "storage tank", "{label}");
        assert!(*score > 0.9, "{score}");
        let phrase = phrase.as_deref().expect("a phrase column");
        assert!(!phrase.is_empty());
    }

    let j = detect(&owlv2, "ow", &["--confidence", "0.3"])
        .success()
        .json();
    let got = rows(&dir.path().join("ow/detections.gpkg"));
    assert_eq!(got.len() as u64, j["detections"].as_u64().expect("n"));
    assert!(!got.is_empty());
    for (label, score, phrase) in &got {
        assert!(label == "ship" || label == "storage tank", "{label}");
        assert!(*score >= 0.3);
        assert!(phrase.is_none(), "OWLv2 layers have no phrase column");
    }
    // --text-threshold is for Grounding DINO only; a bad value names the flag.
    detect(&owlv2, "x", &["--text-threshold", "0.3"]).fails_with(&["no text threshold"]);
    assert!(!dir.path().join("x").exists());
    detect(&gdino, "y", &["--text-threshold", "1.5"]).fails_with(&["--text-threshold"]);
    let grid = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models/oracles/det-grid-v8")
        .display()
        .to_string();
    run(
        dir.path(),
        &["detect", scene, "--model", &grid, "--text-threshold", "0.3"],
    )
    .fails_with(&["no text threshold"]);
    run(
        dir.path(),
        &[
            "detect",
            scene,
            "--model",
            &gdino,
            "--prompts",
            "a.b",
            "--out",
            "z",
        ],
    )
    .fails_with(&["holds a '.'"]);
}

/// A copy of `name` in `dir` with `edit` applied to its model.toml.
fn broken(dir: &Path, name: &str, edit: impl Fn(&str) -> String) -> String {
    let to = dir.join(name);
    common::copy_dir(&package(name), &to);
    let toml = std::fs::read_to_string(to.join("model.toml")).expect("toml");
    std::fs::write(to.join("model.toml"), edit(&toml)).expect("write");
    to.display().to_string()
}

#[test]
fn broken_open_vocab_packages_fail_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let scene = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/sentinel2_rgbn_10m.tif");
    let scene = scene.to_str().expect("utf8");
    let cases: [(&str, &str, &str, &str, &str); 4] = [
        (
            "grounding-dino-tiny",
            "boxes = \"pred_boxes\"",
            "boxes = \"boxes\"",
            "no output 'boxes'",
            "d1",
        ),
        (
            "owlv2-tiny",
            "input_ids = \"input_ids\"",
            "input_ids = \"ids\"",
            "no input 'ids'",
            "d2",
        ),
        (
            "owlv2-tiny",
            "iou = 0.3",
            "iou = 0.3\ntext_threshold = 0.2",
            "text_threshold is for the grounding-dino format",
            "d3",
        ),
        (
            "grounding-dino-tiny",
            "[prompted]",
            "[unprompted]",
            "unprompted",
            "d4",
        ),
    ];
    for (name, from, to, message, sub) in cases {
        std::fs::create_dir_all(d.join(sub)).expect("dir");
        let pkg = broken(&d.join(sub), name, |t| {
            assert!(t.contains(from), "{from}");
            t.replace(from, to)
        });
        run(
            d,
            &[
                "detect",
                scene,
                "--model",
                &pkg,
                "--prompts",
                "ship",
                "--out",
                "o",
            ],
        )
        .fails_with(&[message]);
        assert!(!d.join("o").exists(), "{sub}: partial output");
    }
    // `models check` reports every problem of a package at once.
    std::fs::create_dir_all(d.join("d5")).expect("dir");
    let pkg = broken(&d.join("d5"), "grounding-dino-tiny", |t| {
        t.replace("boxes = \"pred_boxes\"", "boxes = \"boxes\"")
            .replace("input_ids = \"input_ids\"", "input_ids = \"ids\"")
    });
    let out = common::tessera()
        .args(["models", "check", &pkg])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("2 problem(s)")
            && text.contains("no output 'boxes' (prompted.boxes)")
            && text.contains("no input 'ids' (prompted.input_ids)"),
        "{text}"
    );
}
