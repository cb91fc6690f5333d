//! Shared checks of the prefix-decoder parity tests (tests/minigpt4_parity.rs,
//! tests/mobilevlm_parity.rs): a tiny image-text-decoder package against the Hugging Face
//! `generate` references in its `reference/reference.json`, and `tessera caption` on a scene
//! whose tiles are the reference images. Included with `#[path]` (not part of `common`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::Array4;
use serde_json::Value;
use tessera::models::decoder::DecoderModel;
use tessera::runtime::{Runtime, SessionOptions};

pub fn package(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models")
        .join(name)
}

pub fn reference(dir: &Path) -> Value {
    let text =
        std::fs::read_to_string(dir.join("reference/reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

fn pixels(dir: &Path, r: &Value) -> Array4<f32> {
    let shape: Vec<usize> = r["pixels_f32"]["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("d") as usize)
        .collect();
    let bytes = std::fs::read(dir.join("reference/pixels_f32.bin")).expect("pixels");
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data).expect("array")
}

fn tokens(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("row")
        .iter()
        .map(|t| t.as_u64().expect("t") as u32)
        .collect()
}

/// Every reference case: the prompt ids the template builds equal the ones fed to PyTorch
/// (padding removed), and the generated tokens equal HF `generate`'s. Returns the number of
/// (greedy, beam) cases and whether a batch was among them.
pub fn check_generate(dir: &Path) -> (usize, usize, bool) {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let mut model = DecoderModel::load(rt, dir, &SessionOptions::default()).expect("model");
    let r = reference(dir);
    let px = pixels(dir, &r);
    let (mut greedy, mut beams, mut batched) = (0, 0, false);
    for case in r["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let images: Vec<usize> = case["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|v| v.as_u64().expect("i") as usize)
            .collect();
        let prompts: Vec<String> = case["prompts"]
            .as_array()
            .expect("prompts")
            .iter()
            .map(|v| v.as_str().expect("s").to_string())
            .collect();
        let g = &case["generation"];
        let params = crate::common::reference::generation_params(g);
        assert_eq!(g["early_stopping"], false, "{name}");
        if params.num_beams > 1 {
            beams += 1;
        } else {
            greedy += 1;
        }
        batched |= images.len() > 1;
        let mut batch =
            Array4::<f32>::zeros((images.len(), px.shape()[1], px.shape()[2], px.shape()[3]));
        for (k, &i) in images.iter().enumerate() {
            batch
                .slice_mut(ndarray::s![k, .., .., ..])
                .assign(&px.slice(ndarray::s![i, .., .., ..]));
        }
        let want_ids = &case["input_ids"];
        let want_mask = &case["attention_mask"];
        for (k, p) in prompts.iter().enumerate() {
            let ids = model.prompt_ids(p).expect("ids");
            let row: Vec<i64> = want_ids[k]
                .as_array()
                .expect("row")
                .iter()
                .zip(want_mask[k].as_array().expect("mask"))
                .filter(|(_, m)| m.as_i64() == Some(1))
                .map(|(v, _)| v.as_i64().expect("id"))
                .collect();
            assert_eq!(ids, row, "{name}: prompt ids of item {k}");
        }
        let got = model
            .generate(batch.view(), &prompts, &params)
            .expect("generate");
        let want = case["new_tokens"].as_array().expect("new_tokens");
        assert_eq!(got.len(), want.len(), "{name}");
        for (k, t) in got.iter().enumerate() {
            assert_eq!(t, &tokens(&want[k]), "{name}: item {k} with {params:?}");
        }
    }
    (greedy, beams, batched)
}

/// The greedy references of single images with `prompt` and no penalty: image -> tokens.
pub fn greedy_by_image(
    r: &Value,
    prompt: &str,
    max_new: u64,
) -> std::collections::BTreeMap<usize, Vec<u64>> {
    let mut out = std::collections::BTreeMap::new();
    for case in r["cases"].as_array().expect("cases") {
        let g = &case["generation"];
        let images = case["images"].as_array().expect("images");
        if images.len() == 1
            && g["num_beams"] == 1
            && g["repetition_penalty"] == 1.0
            && g["min_new_tokens"] == 0
            && g["max_new_tokens"] == max_new
            && case["prompts"][0] == prompt
        {
            let toks = case["new_tokens"][0]
                .as_array()
                .expect("t")
                .iter()
                .map(|v| v.as_u64().expect("t"))
                .collect();
            out.insert(images[0].as_u64().expect("i") as usize, toks);
        }
    }
    out
}
