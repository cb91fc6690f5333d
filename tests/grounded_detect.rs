//! Grounded detection from generated text with Florence-2 (`sample_data/models/florence2-od-tiny`,
//! written by `tools/export/export.py florence2 --tiny --shape od`: the tiny random Florence-2
//! with position embeddings and head rows biased so that it writes two boxes of `<loc_k>`
//! tokens; the image and the random weights still pick the locations and the probabilities).
//!
//! Against Hugging Face: the tokens `generate` chose (beams 3 with Florence-2's defaults, and
//! greedy), their log-probabilities (`compute_transition_scores`), the text decoded with its
//! special tokens, and the boxes and labels `Florence2Processor.post_process_generation` parses
//! from it, for `<OD>`, `<OPEN_VOCABULARY_DETECTION>`, `<CAPTION_TO_PHRASE_GROUNDING>` (one
//! phrase banned) and `<REGION_PROPOSAL>`. End to end: `tessera detect` on a generated GeoTIFF
//! of reference images writes each tile's boxes at the map coordinates computed here from the
//! geotransform, with the labels, phrases and scores (the geometric mean of the HF
//! probabilities of each box's location tokens). Unsupported prompts fail in one line.

mod common;

use std::path::{Path, PathBuf};

use gdal::vector::LayerAccess;
use ndarray::Array4;
use serde_json::Value;
use tessera::models::grounding::detector::GroundedDetector;
use tessera::runtime::{Runtime, SessionOptions};

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/florence2-od-tiny")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(package().join("reference/reference.json"))
        .expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

fn pixels(r: &Value) -> Array4<f32> {
    let shape: Vec<usize> = r["pixels_f32"]["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let bytes = std::fs::read(package().join("reference/pixels_f32.bin")).expect("pixels");
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data).expect("array")
}

fn batch_of(px: &Array4<f32>, images: &[usize]) -> Array4<f32> {
    let mut b = Array4::<f32>::zeros((images.len(), px.shape()[1], px.shape()[2], px.shape()[3]));
    for (k, &i) in images.iter().enumerate() {
        b.slice_mut(ndarray::s![k, .., .., ..])
            .assign(&px.slice(ndarray::s![i, .., .., ..]));
    }
    b
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("numbers")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// The processor's boxes and labels of one answer (`bboxes` with `labels` or `bboxes_labels`).
fn hf_boxes(post: &Value) -> Vec<([f32; 4], String)> {
    let labels = if post["labels"].is_array() {
        &post["labels"]
    } else {
        &post["bboxes_labels"]
    };
    post["bboxes"]
        .as_array()
        .expect("bboxes")
        .iter()
        .zip(labels.as_array().expect("labels"))
        .map(|(b, l)| {
            let v = floats(b);
            (
                [v[0], v[1], v[2], v[3]],
                l.as_str().expect("label").to_string(),
            )
        })
        .collect()
}

/// The HF score of each box in token order: the geometric mean of the probabilities of its four
/// location tokens (ids from `first` on, four at a time along each run of them).
fn hf_scores(tokens: &[u32], logprobs: &[f32], first: u32) -> Vec<f32> {
    let mut out = Vec::new();
    let mut run: Vec<f32> = Vec::new();
    for (t, lp) in tokens
        .iter()
        .zip(logprobs)
        .chain(std::iter::once((&0, &0.0)))
    {
        if (first..first + 1000).contains(t) {
            run.push(*lp);
            continue;
        }
        for c in run.chunks_exact(4) {
            out.push((c.iter().sum::<f32>() / 4.0).exp());
        }
        run.clear();
    }
    out
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn tokens_log_probabilities_and_boxes_equal_the_hf_processor() {
    let r = reference();
    let px = pixels(&r);
    let first = r["loc_first_token_id"].as_u64().expect("loc") as u32;
    let runtime = Runtime::load(None).expect("ort");
    let mut det =
        GroundedDetector::load(runtime, &package(), &SessionOptions::default()).expect("load");
    let defaults = det.params().clone();
    let (mut boxes_checked, mut banned_seen) = (0, false);
    for case in r["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let items = case["items"].as_array().expect("items");
        let prompt = items[0]["prompt"].as_str().expect("prompt").to_string();
        // "<OPEN_VOCABULARY_DETECTION>ship" is what the --prompts entry "ship" becomes.
        let (entry, label) = match prompt.strip_prefix("<OPEN_VOCABULARY_DETECTION>") {
            Some(p) => (p.to_string(), Some(p.to_string())),
            None => (prompt.clone(), None),
        };
        det.set_prompts(&[entry]).expect("prompts");
        assert_eq!(det.prompts(), vec![prompt.clone()], "{name}");
        let params = common::reference::generation_params(&case["generation"]);
        if case["generation"]["num_beams"] == 3 {
            assert_eq!(params, defaults, "{name}: the package's [generation]");
        }
        det.set_params(params);
        let images: Vec<usize> = items
            .iter()
            .map(|i| i["image"].as_u64().expect("image") as usize)
            .collect();
        let got = det
            .detect(batch_of(&px, &images).view(), 0.0)
            .expect("detect");
        for (k, item) in items.iter().enumerate() {
            let answer = &got.answers[k][0];
            let want = ids(&item["new_tokens"]);
            assert_eq!(answer.tokens, want, "{name} item {k}: tokens");
            assert_eq!(
                answer.text,
                item["new_text"].as_str().expect("text"),
                "{name} item {k}"
            );
            let hf_lp = floats(&item["logprobs"]);
            assert_eq!(answer.logprobs.len(), hf_lp.len(), "{name}");
            for (a, b) in answer.logprobs.iter().zip(&hf_lp) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{name} item {k}: log-probabilities {:?} != HF {hf_lp:?}",
                    answer.logprobs
                );
            }
            let hf = hf_boxes(&item["post_processed"]);
            let mut scores = hf_scores(&want, &hf_lp, first);
            if item["task"] == "<CAPTION_TO_PHRASE_GROUNDING>" {
                // "the image" is banned: HF keeps the first box only.
                assert_eq!((hf.len(), scores.len()), (1, 2), "{name}");
                scores.truncate(1);
                banned_seen = true;
            }
            let mine = &got.boxes[k];
            assert_eq!(
                mine.len(),
                hf.len(),
                "{name} item {k}: {mine:?} != HF {hf:?}"
            );
            for ((b, (hb, hl)), s) in mine.iter().zip(&hf).zip(&scores) {
                for (g, w) in [b.x0, b.y0, b.x1, b.y1].iter().zip(hb) {
                    assert!((g - w).abs() <= 1e-4, "{name} item {k}: {b:?} != HF {hb:?}");
                }
                assert_eq!(&b.phrase, hl, "{name} item {k}");
                assert_eq!(
                    b.label,
                    label.clone().unwrap_or_else(|| hl.clone()),
                    "{name}"
                );
                assert!(
                    close(b.score, *s),
                    "{name} item {k}: score {} != {s}",
                    b.score
                );
                boxes_checked += 1;
            }
        }
    }
    assert!(banned_seen);
    assert!(boxes_checked >= 25, "{boxes_checked} boxes checked");
}

/// Geotransform of the test scene: 2.5 m by 4 m pixels, origin (300 000, 5 000 000).
const GT: [f64; 6] = [300_000.0, 2.5, 0.0, 5_000_000.0, 0.0, -4.0];
const COLS: usize = 3;
const ROWS: usize = 2;

/// The image of tile (row, col).
fn image_of(row: usize, col: usize) -> usize {
    (row * COLS + col) % 4
}

/// A GeoTIFF of `COLS x ROWS` reference images (of size `s`).
fn scene(path: &Path, s: usize) {
    let size =
        common::reference::block_scene_on(&package(), path, (COLS, ROWS), (&GT, 32632), image_of);
    assert_eq!(size, s, "reference image size");
}

/// (label, phrase, score, [min_x, min_y, max_x, max_y]) of every output detection.
fn detections(path: &Path) -> Vec<(String, String, f64, [f64; 4])> {
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

/// Each tile's expected detections: the HF case `{case}_img{k}` of its image, boxes mapped by
/// hand: x = GT0 + GT1 * (64 col + px), y = GT3 + GT5 * (64 row + py).
fn expected(r: &Value, case: &str, label: Option<&str>) -> Vec<(String, String, f64, [f64; 4])> {
    let first = r["loc_first_token_id"].as_u64().expect("loc") as u32;
    let s = r["image_size"][0].as_u64().expect("size") as f64;
    let mut out = Vec::new();
    for row in 0..ROWS {
        for col in 0..COLS {
            let name = format!("{case}_img{}", image_of(row, col));
            let c = r["cases"]
                .as_array()
                .expect("cases")
                .iter()
                .find(|c| c["name"] == name.as_str())
                .expect("case");
            let item = &c["items"][0];
            let scores = hf_scores(&ids(&item["new_tokens"]), &floats(&item["logprobs"]), first);
            for ((b, phrase), score) in hf_boxes(&item["post_processed"]).into_iter().zip(scores) {
                let (ox, oy) = (col as f64 * s, row as f64 * s);
                let x = |px: f32| GT[0] + GT[1] * (ox + f64::from(px));
                let y = |py: f32| GT[3] + GT[5] * (oy + f64::from(py));
                out.push((
                    label.map_or(phrase.clone(), str::to_string),
                    phrase,
                    f64::from(score),
                    [x(b[0]), y(b[3]), x(b[2]), y(b[1])],
                ));
            }
        }
    }
    out
}

fn assert_same(
    mut got: Vec<(String, String, f64, [f64; 4])>,
    mut want: Vec<(String, String, f64, [f64; 4])>,
) {
    let key = |d: &(String, String, f64, [f64; 4])| {
        (
            d.0.clone(),
            d.1.clone(),
            (d.3[0] * 100.0) as i64,
            (d.3[1] * 100.0) as i64,
        )
    };
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got.len(), want.len(), "{got:?}\n!=\n{want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((&g.0, &g.1), (&w.0, &w.1), "{g:?} != {w:?}");
        for (a, b) in g.3.iter().zip(&w.3) {
            assert!((a - b).abs() < 1e-3, "{g:?} != {w:?}");
        }
        assert!(
            (g.2 - w.2).abs() <= 1e-4 * (1.0 + w.2.abs()),
            "score {g:?} != {w:?}"
        );
    }
}

#[test]
fn detect_writes_each_tiles_boxes_at_their_map_coordinates() {
    let r = reference();
    let dir = tempfile::tempdir().expect("tempdir");
    scene(&dir.path().join("scene.tif"), 64);
    let pkg = package().display().to_string();
    let args = |out: &'static str| {
        vec![
            "detect",
            "scene.tif",
            "--model",
            &pkg,
            "--overlap",
            "0",
            "-q",
            "--out",
            out,
        ]
    };
    // No prompts: the package's grounding.task, <OD>; labels are the phrases the model wrote.
    common::run(dir.path(), &args("od")).success();
    let got = detections(&dir.path().join("od/detections.gpkg"));
    assert_same(got, expected(&r, "od", None));
    // A prompt: <OPEN_VOCABULARY_DETECTION>ship, its boxes labelled "ship".
    let mut a = args("ship");
    a.extend(["--prompts", "ship"]);
    common::run(dir.path(), &a).success();
    let got = detections(&dir.path().join("ship/detections.gpkg"));
    assert_same(got, expected(&r, "ovd_ship", Some("ship")));
    // A task prompt runs as it is: phrase grounding, "the image" banned.
    let mut a = args("grounding");
    a.extend([
        "--prompts",
        "<CAPTION_TO_PHRASE_GROUNDING>the image and a ROAD",
    ]);
    let run = common::run(dir.path(), &a);
    run.success();
    let got = detections(&dir.path().join("grounding/detections.gpkg"));
    assert!(got.iter().all(|d| d.1 == "ROAD"), "{got:?}");
    assert_same(got, expected(&r, "grounding", None));
}

#[test]
fn prompts_the_package_cannot_answer_with_boxes_fail_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    scene(&dir.path().join("scene.tif"), 64);
    let pkg = package().display().to_string();
    for (prompt, needles) in [
        (
            "<CAPTION>",
            vec!["<CAPTION>", "pure_text, not boxes", "<OD>"],
        ),
        (
            "<REFERRING_EXPRESSION_SEGMENTATION>a ship",
            vec!["polygons, not boxes"],
        ),
        ("<OD> ship", vec!["<OD> must be the whole prompt"]),
        (" ,ship", vec!["non-empty"]),
    ] {
        common::run(
            dir.path(),
            &[
                "detect",
                "scene.tif",
                "--model",
                &pkg,
                "--prompts",
                prompt,
                "--out",
                "out",
            ],
        )
        .fails_with(&needles);
        assert!(
            !dir.path().join("out").exists(),
            "{prompt}: nothing written"
        );
    }
    // A generative package without [grounding] does not detect.
    let blip = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/blip-tiny");
    common::run(
        dir.path(),
        &[
            "detect",
            "scene.tif",
            "--model",
            &blip.display().to_string(),
            "--out",
            "out",
        ],
    )
    .fails_with(&["blip-tiny", "[grounding]"]);
    assert!(!dir.path().join("out").exists());
}

#[test]
fn a_broken_grounding_section_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pkg = dir.path().join("pkg");
    common::copy_dir(&package(), &pkg);
    let toml = pkg.join("model.toml");
    let text = std::fs::read_to_string(&toml).expect("model.toml");
    let broken = text.replace(
        "prompt = \"<OPEN_VOCABULARY_DETECTION>{prompt}\"",
        "prompt = \"<CAPTION>\"",
    );
    assert_ne!(broken, text);
    std::fs::write(&toml, broken).expect("write");
    scene(&dir.path().join("scene.tif"), 64);
    let p = pkg.display().to_string();
    let needles = [
        "grounding.prompt \"<CAPTION>\" has no {prompt}",
        "answers with 'pure_text', which no box parser reads",
    ];
    // `models check` lists every problem on stdout.
    let check = common::run(dir.path(), &["models", "check", p.as_str()]);
    assert!(!check.output.status.success(), "{}", check.context());
    for n in needles {
        assert!(check.stdout().contains(n), "{n}{}", check.context());
    }
    let mut one_line = vec!["pkg: invalid model package"];
    one_line.extend(needles);
    common::run(
        dir.path(),
        &["detect", "scene.tif", "--model", p.as_str(), "--out", "out"],
    )
    .fails_with(&one_line);
    assert!(!dir.path().join("out").exists());
}

#[test]
fn fixture_is_small() {
    let total: u64 = common::walk(&package())
        .iter()
        .map(|p| p.metadata().expect("meta").len())
        .sum();
    assert!(total < 3_000_000, "florence2-od-tiny is {total} bytes");
}
