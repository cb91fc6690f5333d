//! Grounded detection with the prefix-decoder VLMs: PaliGemma (`detect ship`, `<locYYYY>`
//! boxes), Qwen2-VL (`<|box_start|>(x0,y0),(x1,y1)<|box_end|>` in thousandths) and Qwen2.5-VL
//! (a `bbox_2d` JSON list in input pixels), on `sample_data/models/{paligemma,qwen2-vl,
//! qwen2.5-vl}-det-tiny` (written by `export.py ... --tiny --grounding-fixture`: the tiny random
//! models with lm_head changed so that greedy decoding writes real box answers on reference
//! image 0; the other reference images get whatever the random model writes).
//!
//! Against Hugging Face: the tokens greedy `generate` chose, their log-probabilities, the text
//! decoded with special tokens, and the boxes and phrases of each model's official recipe
//! (big-vision's `extract_objs`, Qwen-VL's `_fetch_all_box_with_ref`, the Qwen2.5-VL cookbook),
//! scores as the geometric mean of the HF probabilities of each box's coordinate tokens. End to
//! end: `tessera detect --prompts ship` on a GeoTIFF of reference images writes the boxes at the
//! map coordinates computed here from the geotransform. Bad packages and prompts fail in one
//! line with nothing written.

mod common;

use std::path::{Path, PathBuf};

use gdal::vector::LayerAccess;
use ndarray::Array4;
use serde_json::Value;
use tessera::models::grounding::detector::GroundedDetector;
use tessera::runtime::{Runtime, SessionOptions};

const PACKAGES: [&str; 3] = [
    "paligemma-det-tiny",
    "qwen2-vl-det-tiny",
    "qwen2.5-vl-det-tiny",
];

fn package(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models")
        .join(name)
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(package(name).join("reference/reference.json"))
        .expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

fn pixels(name: &str, r: &Value) -> Array4<f32> {
    let shape: Vec<usize> = r["pixels_f32"]["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let bytes = std::fs::read(package(name).join("reference/pixels_f32.bin")).expect("pixels");
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data).expect("array")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("numbers")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// The HF score of a recipe box: exp(mean log-probability) of its coordinate tokens.
fn hf_score(b: &Value, logprobs: &[f64]) -> f64 {
    let idx: Vec<usize> = b["coordinate_tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|k| k.as_u64().expect("k") as usize)
        .collect();
    assert!(!idx.is_empty(), "{b}");
    (idx.iter().map(|&k| logprobs[k]).sum::<f64>() / idx.len() as f64).exp()
}

fn cases(r: &Value) -> &Vec<Value> {
    r["grounding"]["cases"].as_array().expect("cases")
}

#[test]
fn tokens_log_probabilities_and_boxes_equal_hf_and_the_recipes() {
    let runtime = Runtime::load(None).expect("ort");
    for name in PACKAGES {
        let r = reference(name);
        let px = pixels(name, &r);
        let mut det = GroundedDetector::load(runtime, &package(name), &SessionOptions::default())
            .expect("load");
        let g = &r["grounding"];
        assert_eq!(
            det.params().max_new_tokens as u64,
            g["generation"]["max_new_tokens"].as_u64().expect("max"),
            "{name}"
        );
        assert_eq!(det.params().num_beams, 1, "{name}");
        let mut boxes_checked = 0;
        for case in cases(&r) {
            let cname = format!("{name} {}", case["name"].as_str().expect("name"));
            let entry = case["entry"].as_str().expect("entry").to_string();
            det.set_prompts(std::slice::from_ref(&entry))
                .expect("prompts");
            assert_eq!(
                det.prompts(),
                vec![case["prompt"].as_str().expect("prompt").to_string()],
                "{cname}"
            );
            let i = case["image"].as_u64().expect("image") as usize;
            let batch = px.slice(ndarray::s![i..i + 1, .., .., ..]).to_owned();
            let got = det.detect(batch.view(), 0.0).expect("detect");
            let answer = &got.answers[0][0];
            assert_eq!(answer.tokens, ids(&case["new_tokens"]), "{cname}: tokens");
            assert_eq!(answer.text, case["text"].as_str().expect("text"), "{cname}");
            let hf_lp = floats(&case["logprobs"]);
            assert_eq!(answer.logprobs.len(), hf_lp.len(), "{cname}");
            // The forced lm_head has logits in the hundreds: on the free answers of the other
            // images the float32 difference of ONNX Runtime and PyTorch grows with them.
            let tol = if case["forced"] == true { 1e-4 } else { 1e-2 };
            for (a, b) in answer.logprobs.iter().zip(&hf_lp) {
                assert!(
                    (f64::from(*a) - b).abs() < tol,
                    "{cname}: log-probabilities {a} != HF {b}"
                );
            }
            let want = case["boxes"].as_array().expect("boxes");
            let mine = &got.boxes[0];
            assert_eq!(mine.len(), want.len(), "{cname}: {mine:?} != {want:?}");
            for (b, w) in mine.iter().zip(want) {
                let wb = floats(&w["bbox"]);
                for (g, w) in [b.x0, b.y0, b.x1, b.y1].iter().zip(&wb) {
                    assert!(
                        (f64::from(*g) - w).abs() <= 1e-4,
                        "{cname}: {b:?} != recipe {wb:?}"
                    );
                }
                assert_eq!(b.phrase, w["phrase"].as_str().expect("phrase"), "{cname}");
                assert_eq!(b.label, entry, "{cname}");
                let s = hf_score(w, &hf_lp);
                assert!(
                    (f64::from(b.score) - s).abs() <= 1e-4 * (1.0 + s),
                    "{cname}: score {} != {s}",
                    b.score
                );
                boxes_checked += 1;
            }
        }
        // the forced answers: PaliGemma 2 + 1 boxes, Qwen2-VL 2, Qwen2.5-VL 1
        let forced = match name {
            "paligemma-det-tiny" => 3,
            "qwen2-vl-det-tiny" => 2,
            _ => 1,
        };
        assert!(boxes_checked >= forced, "{name}: {boxes_checked} boxes");
    }
}

/// Geotransform of the test scene: 2 m by 3 m pixels, origin (400 000, 6 000 000).
const GT: [f64; 6] = [400_000.0, 2.0, 0.0, 6_000_000.0, 0.0, -3.0];
const COLS: usize = 3;
const ROWS: usize = 2;

/// The reference image of tile (row, col): image 0 (the forced answers) three times.
fn image_of(row: usize, col: usize) -> usize {
    [[0, 1, 0], [2, 0, 3]][row][col]
}

/// A GeoTIFF of `COLS x ROWS` reference images of `name` (of size `s`).
fn scene(name: &str, path: &Path, s: usize) {
    let size = common::reference::block_scene_on(
        &package(name),
        path,
        (COLS, ROWS),
        (&GT, 32633),
        image_of,
    );
    assert_eq!(size, s, "reference image size");
}

type Det = (String, String, f64, [f64; 4]);

/// (label, phrase, score, [min_x, min_y, max_x, max_y]) of every output detection.
fn detections(path: &Path) -> Vec<Det> {
    let ds = gdal::Dataset::open(path).expect("open");
    let mut layer = ds.layer(0).expect("layer");
    layer
        .features()
        .map(|f| {
            let s = |n: &str| {
                f.field_as_string(f.field_index(n).expect("field"))
                    .expect("f")
                    .unwrap_or_default()
            };
            let score = f
                .field_as_double(f.field_index("score").expect("score"))
                .expect("f")
                .expect("score");
            let e = f.geometry().expect("geom").envelope();
            (
                s("label"),
                s("phrase"),
                score,
                [e.MinX, e.MinY, e.MaxX, e.MaxY],
            )
        })
        .collect()
}

/// Each tile's expected detections for `--prompts ship`: the recipe boxes of the HF case
/// `ship_img{k}` of its image, mapped by hand: x = GT0 + GT1 * (S col + px), y = GT3 + GT5 *
/// (S row + py) (GT5 < 0: the box's bottom is the map's min y).
fn expected(r: &Value, s: usize) -> Vec<Det> {
    let mut out = Vec::new();
    for row in 0..ROWS {
        for col in 0..COLS {
            let img = image_of(row, col) as u64;
            let case = cases(r)
                .iter()
                .find(|c| c["entry"] == "ship" && c["image"] == img)
                .expect("case");
            let lp = floats(&case["logprobs"]);
            for b in case["boxes"].as_array().expect("boxes") {
                let v = floats(&b["bbox"]);
                let (ox, oy) = ((col * s) as f64, (row * s) as f64);
                let x = |px: f64| GT[0] + GT[1] * (ox + px);
                let y = |py: f64| GT[3] + GT[5] * (oy + py);
                out.push((
                    "ship".to_string(),
                    b["phrase"].as_str().expect("phrase").to_string(),
                    hf_score(b, &lp),
                    [x(v[0]), y(v[3]), x(v[2]), y(v[1])],
                ));
            }
        }
    }
    out
}

fn assert_same(name: &str, mut got: Vec<Det>, mut want: Vec<Det>) {
    let key = |d: &Det| ((d.3[0] * 100.0) as i64, (d.3[1] * 100.0) as i64);
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got.len(), want.len(), "{name}: {got:?}\n!=\n{want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((&g.0, &g.1), (&w.0, &w.1), "{name}: {g:?} != {w:?}");
        for (a, b) in g.3.iter().zip(&w.3) {
            assert!((a - b).abs() < 1e-3, "{name}: {g:?} != {w:?}");
        }
        assert!(
            (g.2 - w.2).abs() <= 1e-4 * (1.0 + w.2.abs()),
            "{name}: score {g:?} != {w:?}"
        );
    }
}

#[test]
fn detect_writes_the_boxes_at_their_map_coordinates() {
    for name in PACKAGES {
        let r = reference(name);
        let s = r["grounding"]["image_size"][0].as_u64().expect("size") as usize;
        let dir = tempfile::tempdir().expect("tempdir");
        scene(name, &dir.path().join("scene.tif"), s);
        let pkg = package(name).display().to_string();
        common::run(
            dir.path(),
            &[
                "detect",
                "scene.tif",
                "--model",
                &pkg,
                "--prompts",
                "ship",
                "--overlap",
                "0",
                "-q",
                "--out",
                "out",
            ],
        )
        .success();
        let want = expected(&r, s);
        // three tiles of image 0 carry the forced boxes
        assert!(want.len() >= 3, "{name}: {want:?}");
        assert_same(
            name,
            detections(&dir.path().join("out/detections.gpkg")),
            want,
        );
    }
}

#[test]
fn bad_packages_and_prompts_fail_in_one_line_with_nothing_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = "qwen2-vl-det-tiny";
    scene(name, &dir.path().join("scene.tif"), 32);
    // A [grounding] output no parser reads.
    let bad = dir.path().join("bad-pkg");
    std::fs::create_dir(&bad).expect("mkdir");
    for f in common::walk(&package(name)) {
        let rel = f.strip_prefix(package(name)).expect("rel");
        if rel.starts_with("reference") {
            continue;
        }
        std::fs::copy(&f, bad.join(rel)).expect("copy");
    }
    let toml = std::fs::read_to_string(bad.join("model.toml")).expect("toml");
    std::fs::write(
        bad.join("model.toml"),
        toml.replace("\"qwen2_vl_boxes\"", "\"qwen_boxes\""),
    )
    .expect("write");
    let bad_s = bad.display().to_string();
    let pkg = package(name).display().to_string();
    let long = "ship ".repeat(300);
    for (model, prompt, needles) in [
        (
            bad_s.as_str(),
            "ship",
            vec!["bad-pkg", "'qwen_boxes'", "qwen2_vl_boxes"],
        ),
        (
            pkg.as_str(),
            long.trim(),
            vec!["exceeds the model's context"],
        ),
    ] {
        common::run(
            dir.path(),
            &[
                "detect",
                "scene.tif",
                "--model",
                model,
                "--prompts",
                prompt,
                "--out",
                "out",
            ],
        )
        .fails_with(&needles);
        assert!(
            !dir.path().join("out").exists(),
            "{needles:?}: nothing written"
        );
    }
}

#[test]
fn fixtures_are_small() {
    for name in PACKAGES {
        let total: u64 = common::walk(&package(name))
            .iter()
            .map(|p| p.metadata().expect("meta").len())
            .sum();
        assert!(total < 2_500_000, "{name} is {total} bytes");
    }
}
