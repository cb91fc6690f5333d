//! TinyLLaVA (HF LLaVA layout with a Phi-2-style or a Qwen2 language model and a SigLIP tower)
//! against PyTorch `generate`: tiny random exports whose references were computed by Hugging
//! Face transformers (`export.py tinyllava --tiny`). The packages use the generic
//! `image-text-decoder` runner unchanged: token-for-token equality, greedy and 3 beams, batch
//! of 1 and batches of tiles with different prompts, then `tessera caption` end to end on a
//! scene whose tiles are the reference images.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::reference::{block_scene, strings};
use common::run;
use ndarray::Array4;
use serde_json::Value;
use tessera::models::decoder::{DecoderModel, GenerationParams};
use tessera::runtime::{Runtime, SessionOptions};

const PACKAGES: [&str; 2] = ["tinyllava-phi-tiny", "tinyllava-qwen2-tiny"];

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

fn shape_of(r: &Value, key: &str) -> Vec<usize> {
    r[key]["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("d") as usize)
        .collect()
}

fn pixels(name: &str, r: &Value) -> Array4<f32> {
    let shape = shape_of(r, "pixels_f32");
    let bytes = std::fs::read(package(name).join("reference/pixels_f32.bin")).expect("pixels");
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data).expect("array")
}

fn rows(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|t| t.as_i64().expect("int"))
                .collect()
        })
        .collect()
}

fn params_of(g: &Value) -> GenerationParams {
    assert_eq!(
        g["early_stopping"], false,
        "the runner implements early_stopping=False"
    );
    crate::common::reference::generation_params(g)
}

/// Every reference case: the template's prompt ids equal HF's processor ids (padding removed),
/// and `generate` yields HF's tokens. Returns (cases, beam cases, batched cases with distinct prompts).
fn check_package(name: &str) -> (usize, usize, usize) {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let mut model =
        DecoderModel::load(rt, &package(name), &SessionOptions::default()).expect("model");
    let r = reference(name);
    let px = pixels(name, &r);
    let (mut n, mut beams, mut batched) = (0, 0, 0);
    for case in r["cases"].as_array().expect("cases") {
        let case_name = case["name"].as_str().expect("name");
        let images: Vec<usize> = case["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|v| v.as_u64().expect("i") as usize)
            .collect();
        let prompts = strings(&case["prompts"]);
        let params = params_of(&case["generation"]);
        assert_eq!(
            case["checks"]["template_ids_equal_processor_ids_without_padding"], true,
            "{name} {case_name}: the exporter's own check"
        );
        let want_ids = rows(&case["input_ids"]);
        let want_mask = rows(&case["attention_mask"]);
        for (k, p) in prompts.iter().enumerate() {
            let ids = model.prompt_ids(p).expect("ids");
            let row: Vec<i64> = want_ids[k]
                .iter()
                .zip(&want_mask[k])
                .filter(|(_, m)| **m == 1)
                .map(|(v, _)| *v)
                .collect();
            assert_eq!(ids, row, "{name} {case_name}: prompt ids of item {k}");
        }
        let mut batch =
            Array4::<f32>::zeros((images.len(), px.shape()[1], px.shape()[2], px.shape()[3]));
        for (k, &i) in images.iter().enumerate() {
            batch
                .slice_mut(ndarray::s![k, .., .., ..])
                .assign(&px.slice(ndarray::s![i, .., .., ..]));
        }
        let got = model
            .generate(batch.view(), &prompts, &params)
            .expect("generate");
        let want = rows(&case["new_tokens"]);
        assert_eq!(got.len(), want.len(), "{name} {case_name}: batch size");
        for (k, tokens) in got.iter().enumerate() {
            let w: Vec<u32> = want[k].iter().map(|&t| t as u32).collect();
            assert_eq!(tokens, &w, "{name} {case_name}: item {k} with {params:?}");
        }
        n += 1;
        beams += usize::from(params.num_beams == 3);
        let distinct: std::collections::BTreeSet<&String> = prompts.iter().collect();
        batched += usize::from(images.len() > 1 && distinct.len() > 1);
    }
    (n, beams, batched)
}

#[test]
fn tinyllava_phi_generates_the_pytorch_tokens() {
    let (n, beams, batched) = check_package("tinyllava-phi-tiny");
    assert!(
        n >= 8 && beams >= 2 && batched >= 3,
        "{n} {beams} {batched}"
    );
}

#[test]
fn tinyllava_qwen2_generates_the_pytorch_tokens() {
    let (n, beams, batched) = check_package("tinyllava-qwen2-tiny");
    assert!(
        n >= 8 && beams >= 2 && batched >= 3,
        "{n} {beams} {batched}"
    );
}

/// What the fixtures are: a Phi and a Qwen2 language model behind a SigLIP tower (all patches,
/// no CLS), tokenizers that add no BOS, and references that are not degenerate.
#[test]
fn tinyllava_fixtures_are_what_they_claim() {
    for (name, lm) in PACKAGES.iter().zip(["phi", "qwen2"]) {
        let m = std::fs::read_to_string(package(name).join("model.toml")).expect("manifest");
        assert!(
            m.contains(&format!("architecture = \"tinyllava-{lm}\"")),
            "{name}"
        );
        assert!(m.contains("add_bos = false"), "{name}");
        assert!(m.contains("tokens = 16"), "{name}: (32/8)^2 SigLIP patches");
        let r = reference(name);
        assert_eq!(r["language_model"], lm, "{name}");
        assert_eq!(r["vision"], "siglip", "{name}");
        assert_eq!(r["degeneracy_check"]["ok"], true, "{name}");
        // Different images give different greedy captions, and some end with EOS.
        let greedy: Vec<Vec<i64>> = r["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .filter(|c| {
                c["name"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("greedy_img"))
            })
            .map(|c| rows(&c["new_tokens"]).remove(0))
            .collect();
        assert_eq!(greedy.len(), 3, "{name}");
        assert!(greedy[0] != greedy[1] && greedy[1] != greedy[2] && greedy[0] != greedy[2]);
    }
}

/// `tessera caption` on a 3x2 scene of reference images: every tile whose image has a greedy
/// single-image reference (with that prompt) gets exactly HF's tokens.
fn caption_end_to_end(name: &str) {
    let r = reference(name);
    let dir = tempfile::tempdir().expect("tempdir");
    let n_images = shape_of(&r, "images_u8")[0];
    let pick = |row: usize, col: usize| (row * 3 + col) % n_images;
    block_scene(&package(name), &dir.path().join("scene.tif"), 3, 2, pick);
    let mut prompt = None;
    let mut greedy: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for case in r["cases"].as_array().expect("cases") {
        let g = &case["generation"];
        let images = case["images"].as_array().expect("images");
        if images.len() == 1 && g["num_beams"] == 1 && g["repetition_penalty"] == 1.0 {
            let p = case["prompts"][0].as_str().expect("prompt").to_string();
            assert!(prompt.get_or_insert_with(|| p.clone()) == &p);
            let toks = rows(&case["new_tokens"])[0]
                .iter()
                .map(|&t| t as u64)
                .collect();
            greedy.insert(images[0].as_u64().expect("i") as usize, toks);
        }
    }
    let prompt = prompt.expect("a greedy single-image case");
    let model = package(name).display().to_string();
    let res = run(
        dir.path(),
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--prompt",
            &prompt,
            "--max-new-tokens",
            "12",
            "--batch-size",
            "4",
            "--out",
            "out",
            "--json",
            "--quiet",
        ],
    );
    let j = res.success().json();
    assert_eq!(j["tiles_captioned"], 6, "{}", res.context());
    assert_eq!(j["model_trained"], false);
    let jsonl = std::fs::read_to_string(dir.path().join("out/captions.jsonl")).expect("jsonl");
    let mut checked = 0;
    for l in jsonl.lines() {
        let l: Value = serde_json::from_str(l).expect("line");
        let (row, col) = (
            l["row"].as_u64().expect("r") as usize,
            l["col"].as_u64().expect("c") as usize,
        );
        let img = pick(row, col);
        if let Some(want) = greedy.get(&img) {
            let got: Vec<u64> = l["tokens"]
                .as_array()
                .expect("tokens")
                .iter()
                .map(|v| v.as_u64().expect("t"))
                .collect();
            assert_eq!(&got, want, "{name}: tile r{row}c{col} (image {img})");
            checked += 1;
        }
    }
    assert!(checked >= 3, "{name}: {checked} tiles checked");
}

#[test]
fn tinyllava_phi_caption_command_matches_the_references() {
    caption_end_to_end("tinyllava-phi-tiny");
}

#[test]
fn tinyllava_qwen2_caption_command_matches_the_references() {
    caption_end_to_end("tinyllava-qwen2-tiny");
}
