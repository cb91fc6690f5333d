//! Parity checks shared by the FLAVA and Chinese-CLIP tests (`tests/flava_parity.rs`,
//! `tests/chinese_clip_parity.rs`): the committed tiny package and the references its export
//! computed with PyTorch (`sample_data/models/<name>/reference/`). Every expected number comes
//! from `reference.json`, never from the code under test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::{s, Array2, Array4};
use serde_json::Value;
use tessera::models::dual_encoder::DualEncoderModel;
use tessera::runtime::{Runtime, SessionOptions};

use crate::common::reference;
pub use crate::common::reference::{argmax, ints, matrix, max_abs, rel_err, strings};
use crate::common::{run, Run};

/// A committed package and its reference.
pub struct Fixture {
    pub dir: PathBuf,
    pub r: Value,
}

pub fn fixture(name: &str) -> Fixture {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models")
        .join(name);
    let text =
        std::fs::read_to_string(dir.join("reference/reference.json")).expect("reference.json");
    let r = serde_json::from_str(&text).expect("json");
    Fixture { dir, r }
}

impl Fixture {
    pub fn model(&self) -> DualEncoderModel {
        DualEncoderModel::load(runtime(), &self.dir, &SessionOptions::default()).expect("model")
    }
    pub fn labels(&self) -> Vec<String> {
        strings(&self.r["labels"])
    }
    pub fn templates(&self) -> Vec<String> {
        strings(&self.r["templates"])
    }
    pub fn prompts(&self) -> Vec<String> {
        strings(&self.r["prompts"])
    }
    pub fn probs(&self) -> Array2<f32> {
        matrix(&self.r["probs"])
    }
    pub fn pixels(&self) -> Array4<f32> {
        let shp: Vec<usize> = self.r["pixels_f32"]["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        let bytes = std::fs::read(self.dir.join("reference/pixels_f32.bin")).expect("bin");
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Array4::from_shape_vec((shp[0], shp[1], shp[2], shp[3]), v).expect("pixels")
    }
}

pub fn runtime() -> &'static Runtime {
    Runtime::load(None).expect("ONNX Runtime (run `make setup`)")
}

/// Token ids and masks of every reference prompt and tokenizer case, identical.
pub fn token_ids_are_identical(f: &Fixture) {
    let model = f.model();
    let tokens = model.tokenize(&f.prompts()).expect("tokenize");
    assert_eq!(
        tokens.context,
        f.r["context_length"].as_u64().expect("L") as usize
    );
    assert_eq!(tokens.ids, ints(&f.r["token_ids"]));
    assert_eq!(tokens.mask, ints(&f.r["attention_mask"]));
    for case in f.r["tokenizer_cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text").to_string();
        let got = model
            .tokenize(std::slice::from_ref(&text))
            .expect("tokenize");
        assert_eq!(got.ids, ints(&case["token_ids"]), "{text:?}");
        assert_eq!(got.mask, ints(&case["attention_mask"]), "{text:?}");
    }
}

/// Image and text embeddings (batch and one by one), label embeddings, host probabilities and
/// the scoring head's probabilities (batch and one image) against PyTorch. Returns the worst
/// errors seen: (image rel, text rel, label rel, host probs abs, head probs abs).
pub fn embeddings_and_probabilities_match(f: &Fixture) -> [f32; 5] {
    let mut model = f.model();
    let pixels = f.pixels();
    let n = pixels.shape()[0];

    let want_img = matrix(&f.r["image_embeds"]);
    let img = model.encode_images(pixels.view()).expect("images");
    let mut e_img = rel_err(img.as_slice().expect("c"), want_img.as_slice().expect("c"));
    for i in 0..n {
        let one = model
            .encode_images(pixels.slice(s![i..i + 1, .., .., ..]))
            .expect("one");
        let e = rel_err(
            one.as_slice().expect("c"),
            want_img.row(i).as_slice().expect("c"),
        );
        e_img = e_img.max(e);
    }
    assert!(e_img < 1e-4, "image embeds rel err {e_img}");

    let prompts = f.prompts();
    let want_txt = matrix(&f.r["text_embeds"]);
    let txt = model.encode_text(&prompts).expect("text");
    let mut e_txt = rel_err(txt.as_slice().expect("c"), want_txt.as_slice().expect("c"));
    // Batch equals one by one (padding rows of other prompts change nothing).
    for k in [0, prompts.len() / 2, prompts.len() - 1] {
        let one = model
            .encode_text(std::slice::from_ref(&prompts[k]))
            .expect("one");
        let e = rel_err(
            one.as_slice().expect("c"),
            want_txt.row(k).as_slice().expect("c"),
        );
        e_txt = e_txt.max(e);
    }
    assert!(e_txt < 1e-4, "text embeds rel err {e_txt}");

    let (labels, templates) = (f.labels(), f.templates());
    let (lab, hit) = model
        .label_embeddings(&labels, &templates, None)
        .expect("labels");
    assert!(!hit);
    let want_lab = matrix(&f.r["label_embeds"]);
    let e_lab = rel_err(lab.as_slice().expect("c"), want_lab.as_slice().expect("c"));
    assert!(e_lab < 1e-4, "label embeds rel err {e_lab}");
    let scale = f.r["logit_scale"].as_f64().expect("scale") as f32;
    assert!((model.logit_scale() - scale).abs() < 1e-5 * scale);
    assert!(!model.multi_label(), "softmax family");

    let want = f.probs();
    let probs = model.probabilities(img, &lab);
    let e_host = max_abs(&probs, &want);
    assert!(e_host < 1e-4, "host probs abs err {e_host}");

    let there = model.device_labels(&lab).expect("device labels");
    let head = model.classify_images(pixels.view(), &there).expect("head");
    let mut e_head = max_abs(&head, &want);
    assert!(e_head < 1e-4, "head probs abs err {e_head}");
    // The head agrees with the host scoring, and an image alone with the batch.
    assert!(max_abs(&head, &probs) < 1e-4);
    for i in 0..n {
        let one = model
            .classify_images(pixels.slice(s![i..i + 1, .., .., ..]), &there)
            .expect("one");
        for (a, b) in one.iter().zip(want.row(i)) {
            e_head = e_head.max((a - b).abs());
            assert!(
                (a - b).abs() < 1e-4,
                "head probs of image {i} alone: {a} vs {b}"
            );
        }
    }
    let top1 = strings(&f.r["top1"]);
    for (i, row) in probs.outer_iter().enumerate() {
        assert_eq!(labels[argmax(row.as_slice().expect("c"))], top1[i]);
    }
    [e_img, e_txt, e_lab, e_host, e_head]
}

/// [`reference::block_scene`] of the fixture's reference images.
pub fn block_scene(
    f: &Fixture,
    path: &Path,
    cols: usize,
    rows: usize,
    pick: impl Fn(usize, usize) -> usize,
) {
    reference::block_scene(&f.dir, path, cols, rows, pick);
}

/// The checkerboard of two reference images the reference labels differently.
pub fn two_classes(f: &Fixture) -> (usize, usize) {
    let p = f.probs();
    let a = 0;
    let b = (1..p.nrows())
        .find(|&i| {
            argmax(p.row(i).as_slice().expect("c")) != argmax(p.row(a).as_slice().expect("c"))
        })
        .expect("two classes");
    (a, b)
}

/// `tessera classify` on a 4 x 3 checkerboard scene of two reference images in `dir`: every
/// tile's class and probabilities must be the per-tile reference. `templates`: passed as
/// `--template` flags, or none (the package's default ensemble). Returns the run.
pub fn classify_block_scene(
    f: &Fixture,
    dir: &Path,
    labels_arg: &str,
    templates: Option<&[String]>,
    extra: &[&str],
) -> Run {
    let (a, b) = two_classes(f);
    let pick = |row: usize, col: usize| if (row + col) % 2 == 0 { a } else { b };
    let (cols, rows) = (4, 3);
    block_scene(f, &dir.join("scene.tif"), cols, rows, pick);
    let model = f.dir.display().to_string();
    let mut args: Vec<&str> = vec![
        "classify",
        "scene.tif",
        "--model",
        &model,
        "--labels",
        labels_arg,
        "--no-cache",
        "--json",
        "--quiet",
        "--batch-size",
        "5",
    ];
    for t in templates.unwrap_or(&[]) {
        args.extend(["--template", t.as_str()]);
    }
    args.extend(extra);
    let res = run(dir, &args);
    let j = res.success().json();
    assert_eq!(j["tiles_read"], 12, "{}", res.context());
    assert_eq!(j["model_trained"], false);
    assert_eq!(j["scoring"], "softmax");
    assert_eq!(j["templates"], serde_json::json!(f.templates()));
    let labels = f.labels();
    let want = f.probs();
    let la = &labels[argmax(want.row(a).as_slice().expect("c"))];
    assert_eq!(j["label_counts"][la.as_str()], 6, "{}", res.context());

    let out = extra
        .iter()
        .position(|a| *a == "--out")
        .map(|k| dir.join(extra[k + 1]))
        .expect("--out in extra");
    let classes = gdal::Dataset::open(out.join("classes.tif")).expect("classes");
    assert_eq!(classes.raster_size(), (cols, rows));
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
            let p = want.row(img);
            assert_eq!(
                cls.data()[row * cols + col] as usize,
                argmax(p.as_slice().expect("c")),
                "tile r{row}c{col}"
            );
            for (k, w) in p.iter().enumerate() {
                let v = prob_ds
                    .rasterband(k + 1)
                    .expect("band")
                    .read_as::<f32>((col as isize, row as isize), (1, 1), (1, 1), None)
                    .expect("read");
                assert!(
                    (v.data()[0] - w).abs() < 1e-4,
                    "prob {k} at r{row}c{col}: {} vs {w}",
                    v.data()[0]
                );
            }
        }
    }
    res
}
