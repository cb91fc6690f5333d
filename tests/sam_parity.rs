//! Parity of the promptable-segmenter family (SAM) with Hugging Face, on the committed tiny
//! `SamModel` and `Sam2Model` (`sample_data/models/sam-tiny`, `sam2-tiny`, written by
//! `export.py sam --tiny` and `export.py sam2 --tiny`) and the references their export computed
//! with `SamProcessor` / `Sam2Processor` + the model (`multimask_output=False`) +
//! `post_process_masks`: tiles at the model size, smaller (upscaled), bigger (antialiased
//! downscale) and not square (padded), boxes with 0, 1 and 2 points. The image embedding within
//! 1e-4 (relative), every mask with IoU >= 0.99 and every score within 1e-4 of HF's; broken
//! packages and a package that is not promptable refused with one line naming them.

mod common;

use std::path::{Path, PathBuf};

use common::reference::{rel_err, strings};
use common::{copy_dir, run};
use ndarray::{Array2, Array4};
use serde_json::Value;
use tessera::models::promptable::{
    require_promptable, Prompt, PromptPoint, PromptableSegmenter, TileEmbedding,
};
use tessera::runtime::{Runtime, SessionOptions};

/// The SAM and SAM 2 fixtures (`export.py sam --tiny`, `export.py sam2 --tiny`).
const PACKAGES: [&str; 2] = ["sam-tiny", "sam2-tiny"];

fn package_of(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models")
        .join(name)
}

fn package() -> PathBuf {
    package_of("sam-tiny")
}

fn reference(pkg: &Path) -> Value {
    let text =
        std::fs::read_to_string(pkg.join("reference/reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

fn runtime() -> &'static Runtime {
    Runtime::load(None).expect("ONNX Runtime (run `make setup`)")
}

fn bin(pkg: &Path, name: &str) -> Vec<u8> {
    std::fs::read(pkg.join("reference").join(name)).expect("reference bin")
}

fn floats(pkg: &Path, name: &str) -> Vec<f32> {
    bin(pkg, name)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn num(v: &Value) -> f32 {
    v.as_f64().expect("number") as f32
}

/// The tile `[1, 3, H, W]` as tessera hands it to the model: `v / 255`, then normalised.
fn tile(sam: &PromptableSegmenter, t: &Value) -> Array4<f32> {
    let pkg = sam.package().dir.clone();
    let (h, w) = (
        t["height"].as_u64().expect("h") as usize,
        t["width"].as_u64().expect("w") as usize,
    );
    let hwc = bin(&pkg, t["image"]["file"].as_str().expect("file"));
    let mut x = Array4::<f32>::zeros((1, 3, h, w));
    for y in 0..h {
        for c in 0..w {
            for k in 0..3 {
                x[[0, k, y, c]] = f32::from(hwc[(y * w + c) * 3 + k]) / 255.0;
            }
        }
    }
    let valid = vec![1u8; h * w];
    sam.normalizer()
        .apply(x.as_slice_mut().expect("contiguous"), &valid);
    x
}

fn prompts(t: &Value) -> Vec<Prompt> {
    t["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| {
            let b: Vec<f32> = p["box"].as_array().expect("box").iter().map(num).collect();
            Prompt {
                bbox: [b[0], b[1], b[2], b[3]],
                points: p["points"]
                    .as_array()
                    .expect("points")
                    .iter()
                    .map(|q| PromptPoint {
                        xy: [num(&q["xy"][0]), num(&q["xy"][1])],
                        positive: q["label"].as_i64() == Some(1),
                    })
                    .collect(),
            }
        })
        .collect()
}

fn iou(a: &Array2<bool>, b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut inter, mut union) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        let y = y != 0;
        inter += usize::from(x && y);
        union += usize::from(x || y);
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Masks and scores of one tile's prompts against HF's.
fn check_tile(sam: &mut PromptableSegmenter, t: &Value, emb: &TileEmbedding) {
    let pkg = sam.package().dir.clone();
    let name = format!(
        "{}/{}",
        pkg.file_name().expect("name").to_string_lossy(),
        t["name"].as_str().expect("name")
    );
    let (h, w) = (
        t["height"].as_u64().expect("h") as usize,
        t["width"].as_u64().expect("w") as usize,
    );
    assert_eq!(emb.tile_size(), (h, w), "{name}");
    let want_emb = floats(&pkg, t["embedding"]["file"].as_str().expect("file"));
    let got_emb = emb.tensors().last().expect("image_embeddings");
    let e = rel_err(got_emb.as_slice().expect("contiguous"), &want_emb);
    assert!(e < 1e-4, "{name}: image embedding rel err {e}");
    let want_masks = bin(&pkg, t["masks"]["file"].as_str().expect("file"));
    let scores: Vec<f32> = t["iou_scores"]
        .as_array()
        .expect("scores")
        .iter()
        .map(num)
        .collect();
    let masks = sam.masks(emb, &prompts(t)).expect("masks");
    assert_eq!(masks.len(), scores.len(), "{name}");
    let (mut worst_iou, mut worst_score) = (1f64, 0f32);
    for (i, (m, want)) in masks.iter().zip(&scores).enumerate() {
        assert_eq!(m.mask.dim(), (h, w), "{name} prompt {i}");
        let j = iou(&m.mask, &want_masks[i * h * w..(i + 1) * h * w]);
        worst_iou = worst_iou.min(j);
        worst_score = worst_score.max((m.score - want).abs());
        assert!(j >= 0.99, "{name} prompt {i}: mask IoU {j} with HF");
        assert!(
            (m.score - want).abs() <= 1e-4,
            "{name} prompt {i}: score {} vs HF {want}",
            m.score
        );
    }
    eprintln!("{name}: embedding rel err {e:.1e}, lowest mask IoU {worst_iou:.5}, largest score diff {worst_score:.1e}");
}

#[test]
fn masks_and_scores_equal_hugging_face_for_every_tile_size() {
    for name in PACKAGES {
        check_package(&package_of(name));
    }
}

fn check_package(pkg: &Path) {
    let r = reference(pkg);
    let mut sam = PromptableSegmenter::load(runtime(), pkg, &SessionOptions::default())
        .expect("load the package");
    assert_eq!(sam.input_size(), 128);
    let tiles = r["tiles"].as_array().expect("tiles");
    assert_eq!(tiles.len(), 5);
    for t in tiles {
        let x = tile(&sam, t);
        let emb = sam.embed(x.view()).expect("embed");
        assert_eq!(emb.len(), 1);
        let resized: Vec<usize> = t["resized"]
            .as_array()
            .expect("resized")
            .iter()
            .map(|v| v.as_u64().expect("n") as usize)
            .collect();
        assert_eq!(
            sam.resized_size(emb[0].tile_size()),
            (resized[0], resized[1])
        );
        check_tile(&mut sam, t, &emb[0]);
    }
    // The two model-size tiles as one batch: each embedding as alone.
    let (a, b) = (tile(&sam, &tiles[0]), tile(&sam, &tiles[1]));
    let batch = ndarray::concatenate(ndarray::Axis(0), &[a.view(), b.view()]).expect("batch");
    let embs = sam.embed(batch.view()).expect("embed batch");
    assert_eq!(embs.len(), 2);
    check_tile(&mut sam, &tiles[0], &embs[0]);
    check_tile(&mut sam, &tiles[1], &embs[1]);
    // One prompt alone gets the mask it gets among the others.
    let t = &tiles[3];
    let x = tile(&sam, t);
    let emb = sam.embed(x.view()).expect("embed");
    let all = sam.masks(&emb[0], &prompts(t)).expect("all");
    let last = prompts(t).pop().expect("prompt");
    let alone = sam.masks(&emb[0], &[last]).expect("alone");
    assert_eq!(alone[0].mask, all[4].mask);
    assert!((alone[0].score - all[4].score).abs() < 1e-5);
    assert!(sam.masks(&emb[0], &[]).expect("none").is_empty());
    let e = sam
        .masks(&emb[0], &[Prompt::from_box([1.0, f32::NAN, 3.0, 4.0])])
        .expect_err("NaN box");
    assert!(e.to_string().contains("not a finite number"), "{e}");
}

#[test]
fn models_check_accepts_the_package_and_names_what_is_broken() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let good = package().display().to_string();
    let j = run(d, &["models", "check", &good, "--json"])
        .success()
        .json();
    assert_eq!(j["valid"], true, "{j}");
    let broken = |name: &str, edit: &dyn Fn(&Path)| -> String {
        let p = d.join(name);
        copy_dir(&package(), &p);
        edit(&p);
        p.display().to_string()
    };
    let edit = |p: &Path, from: &str, to: &str| {
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        assert!(m.contains(from), "manifest has {from}");
        std::fs::write(p.join("model.toml"), m.replacen(from, to, 1)).expect("write");
    };
    let check = |pkg: &str, needles: &[&str]| {
        let res = run(d, &["models", "check", pkg, "--json"]);
        assert_eq!(res.output.status.code(), Some(1), "{}", res.context());
        let j = res.json();
        assert_eq!(j["valid"], false);
        let problems = strings(&j["problems"]);
        assert!(
            problems
                .iter()
                .any(|p| needles.iter().all(|n| p.contains(n))),
            "a problem mentions {needles:?}: {problems:?}"
        );
    };
    let no_decoder = broken("no-decoder", &|p| {
        std::fs::remove_file(p.join("mask_decoder.onnx")).expect("rm");
    });
    check(
        &no_decoder,
        &["mask_decoder", "no such file", "mask_decoder.onnx"],
    );
    let no_section = broken("no-section", &|p| {
        edit(p, "[promptable]", "[unused]");
    });
    check(&no_section, &["unknown field `unused`"]);
    let wrong_output = broken("wrong-output", &|p| {
        edit(p, "scores = \"iou_scores\"", "scores = \"iou\"");
    });
    check(&wrong_output, &["mask_decoder", "no output 'iou'"]);
    let swapped = broken("swapped", &|p| {
        std::fs::copy(p.join("image_encoder.onnx"), p.join("mask_decoder.onnx")).expect("cp");
    });
    check(&swapped, &["mask_decoder", "no input 'input_boxes'"]);
    let resize = broken("resize", &|p| {
        edit(p, "resize = \"longest\"", "resize = \"crop\"");
    });
    check(&resize, &["promptable.resize 'crop'"]);
    let size = broken("size", &|p| {
        edit(p, "size = 128", "size = 256");
    });
    check(&size, &["image_encoder", "preprocess.size is 256"]);
}

#[test]
fn a_refiner_that_is_not_promptable_is_one_line_naming_it() {
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/clip-tiny");
    let e = require_promptable(runtime(), &clip).expect_err("clip is not promptable");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(
        msg.starts_with(&clip.display().to_string())
            && msg.contains("'clip' model, not a promptable segmenter")
            && msg.contains("'promptable-segmenter'"),
        "{msg}"
    );
    let e =
        PromptableSegmenter::load(runtime(), &clip, &SessionOptions::default()).expect_err("load");
    assert_eq!(e.to_string(), msg);
    let missing = Path::new("no/such/sam");
    let e = require_promptable(runtime(), missing).expect_err("missing");
    assert!(e.to_string().contains("no/such/sam"), "{e}");
    assert!(require_promptable(runtime(), &package()).is_ok());
}
