//! Encoder-decoder language models on the cross-attention decoder runtime, against PyTorch:
//! tiny random `Blip2ForConditionalGeneration` with a T5 (`export.py blip2 --tiny
//! --language-model t5`) and `InstructBlipForConditionalGeneration` with a T5 (`export.py
//! instructblip --tiny`), with references from Hugging Face `generate` (greedy, beams,
//! penalties; one tile and batches of different prompts, with and without a prompt).
//! Token-for-token equality (the prompt's encoder and Q-Former tokens too); then `tessera
//! caption` end to end, and bad packages.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, run, walk};
use ndarray::Array4;
use serde_json::Value;
use tessera::generation::GenerationParams;
use tessera::models::cross_decoder::CrossDecoderModel;
use tessera::runtime::{Runtime, SessionOptions};

const BLIP2_T5: &str = "blip2-t5-tiny";
const INSTRUCTBLIP: &str = "instructblip-tiny";

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
    let shape = dims(&r["pixels_f32"]["shape"]);
    let bytes = std::fs::read(package(name).join("reference/pixels_f32.bin")).expect("pixels");
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data).expect("array")
}

fn dims(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|d| d.as_u64().expect("uint") as usize)
        .collect()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|t| t.as_i64().expect("id"))
        .collect()
}

fn params(g: &Value) -> GenerationParams {
    common::reference::generation_params(g)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("strings")
        .iter()
        .map(|s| s.as_str().expect("str").to_string())
        .collect()
}

/// Every reference case of the package `name`: the prompt's tokens, then the generated ones.
fn generates_the_pytorch_tokens(name: &str) {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let mut model =
        CrossDecoderModel::load(rt, &package(name), &SessionOptions::default()).expect("model");
    let r = reference(name);
    let px = pixels(name, &r);
    let eos = r["eos_token_id"].as_u64().expect("eos") as u32;
    // The decoder starts from HF's decoder_start_token_id alone: the manifest's start_token_id.
    let start = r["decoder_start_token_id"].as_i64().expect("start");
    let manifest = std::fs::read_to_string(package(name).join("model.toml")).expect("manifest");
    assert!(
        manifest.contains(&format!("\nstart_token_id = {start} ")),
        "{name}: [prompt] start_token_id = {start}"
    );
    let instruct = name == INSTRUCTBLIP;
    let (mut beams, mut batches, mut prompted, mut bare, mut ended, mut long) =
        (false, false, false, false, false, false);
    let mut compared = 0;
    for case in r["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let images = dims(&case["images"]);
        let prompts = strings(&case["prompts"]);
        let g = &case["generation"];
        assert_eq!(g["early_stopping"], false, "{name}");
        assert_eq!(
            case["checks"]["batch_equals_items"], true,
            "{name}: HF itself"
        );
        let p = params(g);
        let mut batch =
            Array4::<f32>::zeros((images.len(), px.shape()[1], px.shape()[2], px.shape()[3]));
        for (k, &i) in images.iter().enumerate() {
            batch
                .slice_mut(ndarray::s![k, .., .., ..])
                .assign(&px.slice(ndarray::s![i, .., .., ..]));
        }
        for (k, prompt) in prompts.iter().enumerate() {
            assert_eq!(
                model.prompt_ids(prompt).expect("encoder ids"),
                ids(&case["encoder_ids"][k]),
                "{name}: T5 tokens of {prompt:?}"
            );
            let q = model.qformer_prompt_ids(prompt).expect("qformer ids");
            if instruct {
                assert_eq!(
                    q,
                    Some(ids(&case["qformer_ids"][k])),
                    "{name}: Q-Former tokens of {prompt:?}"
                );
            } else {
                assert_eq!(q, None, "{name}: BLIP-2 has no Q-Former prompt");
            }
        }
        let got = model
            .generate(batch.view(), &prompts, &p)
            .expect("generate");
        let want = case["new_tokens"].as_array().expect("new tokens");
        assert_eq!(got.len(), want.len(), "{name}");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            let w: Vec<u32> = ids(w).iter().map(|&t| t as u32).collect();
            assert_eq!(g, &w, "{name}: item {k} ({:?}) with {p:?}", prompts[k]);
            ended |= w.last() == Some(&eos);
            long |= w.len() == p.max_new_tokens && w.last() != Some(&eos);
            compared += 1;
        }
        // A batch equals its items one by one (the runtime itself).
        if images.len() > 1 {
            for (k, prompt) in prompts.iter().enumerate() {
                let one = batch.slice(ndarray::s![k..k + 1, .., .., ..]);
                let alone = model
                    .generate(one, std::slice::from_ref(prompt), &p)
                    .expect("generate one");
                assert_eq!(alone[0], got[k], "{name}: item {k} alone");
            }
        }
        beams |= p.num_beams > 1;
        batches |= images.len() > 1 && prompts.iter().any(|p| p != &prompts[0]);
        prompted |= prompts.iter().any(|p| !p.is_empty());
        bare |= prompts.iter().any(String::is_empty);
    }
    assert!(
        beams && batches && prompted && bare && ended && long && compared >= 19,
        "the references cover beams, batches of different prompts, with and without a prompt, ended and unended captions ({compared} compared)"
    );
}

#[test]
fn blip2_t5_generates_the_pytorch_tokens() {
    generates_the_pytorch_tokens(BLIP2_T5);
}

#[test]
fn instructblip_t5_generates_the_pytorch_tokens() {
    generates_the_pytorch_tokens(INSTRUCTBLIP);
}

#[test]
fn the_empty_prompt_is_hf_generate_without_input_ids() {
    // HF `generate(pixel_values)` feeds [image]*Q + [bos]; the manifest's empty_prompt_ids
    // says so, and the tiny models' bos is </s>, the empty prompt's own tokenization.
    for name in [BLIP2_T5, INSTRUCTBLIP] {
        let r = reference(name);
        let m = std::fs::read_to_string(package(name).join("model.toml")).expect("manifest");
        let want = format!("empty_prompt_ids = {}", r["empty_prompt_ids"]);
        assert!(m.contains(&want.replace(',', ", ")), "{name}: {want}");
    }
}

/// A georeferenced scene whose `cols x rows` tiles are the reference images of package
/// `name`; the image index of each tile.
fn block_scene(name: &str, path: &Path, cols: usize, rows: usize) -> Vec<usize> {
    common::reference::mapped_block_scene(
        &package(name),
        path,
        cols,
        rows,
        common::reference::shuffled,
    )
}

/// The references of `prompt` with `num_beams` and plain settings, by image.
fn single_refs(
    name: &str,
    prompt: &str,
    num_beams: u64,
) -> std::collections::BTreeMap<usize, Vec<u64>> {
    let r = reference(name);
    let mut out = std::collections::BTreeMap::new();
    for case in r["cases"].as_array().expect("cases") {
        let g = &case["generation"];
        let plain = g["repetition_penalty"] == 1.0
            && g["length_penalty"] == 1.0
            && g["min_new_tokens"] == 0
            && g["max_new_tokens"] == 12
            && g["num_beams"] == num_beams;
        if !plain {
            continue;
        }
        for (k, img) in dims(&case["images"]).into_iter().enumerate() {
            if case["prompts"][k] == prompt {
                let toks = ids(&case["new_tokens"][k])
                    .iter()
                    .map(|&t| t as u64)
                    .collect();
                out.insert(img, toks);
            }
        }
    }
    out
}

#[test]
fn caption_command_runs_t5_models_on_a_scene() {
    for name in [BLIP2_T5, INSTRUCTBLIP] {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let pick = block_scene(name, &d.join("scene.tif"), 3, 2);
        let model = package(name).display().to_string();
        let mut checked = 0;
        for (prompt, beams, out) in [
            ("", "1", "plain"),
            ("a satellite image of", "1", "prompt"),
            ("", "3", "beams"),
        ] {
            let want = single_refs(name, prompt, beams.parse().expect("beams"));
            let res = run(
                d,
                &[
                    "caption",
                    "scene.tif",
                    "--model",
                    &model,
                    "--prompt",
                    prompt,
                    "--num-beams",
                    beams,
                    "--max-new-tokens",
                    "12",
                    "--batch-size",
                    "4",
                    "--out",
                    out,
                    "--json",
                    "--quiet",
                ],
            );
            let j = res.success().json();
            assert_eq!(j["tiles_captioned"], 6, "{name} {out}: {}", res.context());
            assert_eq!(j["model_trained"], false);
            assert!(j["scene_caption"].is_string());
            let jsonl = std::fs::read_to_string(d.join(out).join("captions.jsonl")).expect("jsonl");
            for l in jsonl.lines() {
                let l: Value = serde_json::from_str(l).expect("line");
                let (row, col) = (
                    l["row"].as_u64().expect("row") as usize,
                    l["col"].as_u64().expect("col") as usize,
                );
                let img = pick[row * 3 + col];
                let got: Vec<u64> = l["tokens"]
                    .as_array()
                    .expect("tokens")
                    .iter()
                    .map(|v| v.as_u64().expect("t"))
                    .collect();
                if let Some(w) = want.get(&img) {
                    assert_eq!(&got, w, "{name} {out}: tile r{row}c{col} (image {img})");
                    checked += 1;
                }
            }
            assert!(d.join(out).join("tiles.gpkg").is_file());
            assert!(d.join(out).join("scene.gpkg").is_file());
        }
        assert!(
            checked >= 6,
            "{name}: tiles checked against their references ({checked})"
        );
    }
}

#[test]
fn bad_t5_packages_fail_with_the_file_and_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    block_scene(BLIP2_T5, &d.join("scene.tif"), 2, 1);
    let broken = |from: &str, name: &str, edit: &dyn Fn(&Path)| -> String {
        let p = d.join(name);
        copy_dir(&package(from), &p);
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
        let problems: Vec<String> = strings(&j["problems"]);
        assert!(
            problems
                .iter()
                .any(|p| needles.iter().all(|n| p.contains(n))),
            "a problem mentions {needles:?}: {problems:?}"
        );
        run(d, &["caption", "scene.tif", "--model", pkg, "--out", "o"]).fails_with(needles);
        assert!(!d.join("o").exists());
    };
    // Cross-attention keys/values of another model: BLIP's cross graph takes 48-wide memory,
    // the T5 encoder gives 32-wide.
    let narrow = broken(BLIP2_T5, "narrow", &|p: &Path| {
        std::fs::copy(
            package("blip-tiny").join("cross_kv.onnx"),
            p.join("cross_kv.onnx"),
        )
        .expect("copy");
    });
    check(
        &narrow,
        &[
            "cross_kv.onnx",
            "takes a memory 48 wide",
            "32-wide features",
        ],
    );
    let width = broken(BLIP2_T5, "width", &|p: &Path| {
        edit(p, "cross_width = 32", "cross_width = 64")
    });
    check(
        &width,
        &["decoder.cross_width = 64", "32 wide", "encoder.onnx"],
    );
    // No encoder graph.
    let missing = broken(INSTRUCTBLIP, "missing", &|p: &Path| {
        std::fs::remove_file(p.join("encoder.onnx")).expect("rm")
    });
    check(&missing, &["encoder.onnx"]);
    // An encoder graph that does not take the prompt: BLIP's ViT.
    let vit = broken(BLIP2_T5, "vit", &|p: &Path| {
        std::fs::copy(
            package("blip-tiny").join("encoder.onnx"),
            p.join("encoder.onnx"),
        )
        .expect("copy");
    });
    check(&vit, &["encoder.onnx has no input 'input_ids'"]);
    // The prompt's encoder inputs named, but no decoder start.
    let start = broken(BLIP2_T5, "start", &|p: &Path| {
        edit(p, "start_token_id = 0", "")
    });
    check(&start, &["prompt.start_token_id", "encoder.input_ids"]);
    // The key of the branch before the merge with BLIP VQA's: one clear line naming the key.
    let old = broken(BLIP2_T5, "old", &|p: &Path| {
        edit(p, "start_token_id = 0", "decoder_start_token_id = 0")
    });
    check(
        &old,
        &["model.toml", "unknown field `decoder_start_token_id`"],
    );
    // The encoder-prompt keys on a package whose encoder takes no prompt (BLIP captioning),
    // and a Q-Former length without a Q-Former tokenizer.
    let empty = broken("blip-tiny", "empty", &|p: &Path| {
        edit(p, "trim_end = 1", "trim_end = 1\nempty_prompt_ids = [1]")
    });
    check(&empty, &["prompt.empty_prompt_ids needs encoder.input_ids"]);
    let qmax = broken(BLIP2_T5, "qmax", &|p: &Path| {
        edit(
            p,
            "empty_prompt_ids = [1]",
            "empty_prompt_ids = [1]\nmax_qformer_tokens = 24",
        )
    });
    check(
        &qmax,
        &["prompt.max_qformer_tokens needs a [qformer_tokenizer]"],
    );
    // InstructBLIP without its Q-Former tokenizer.
    let qtok = broken(INSTRUCTBLIP, "qtok", &|p: &Path| {
        std::fs::remove_file(p.join("qformer_tokenizer.json")).expect("rm")
    });
    check(&qtok, &["qformer_tokenizer.json"]);

    // A prompt longer than the Q-Former's positions: refused before anything is written.
    let model = package(INSTRUCTBLIP).display().to_string();
    let prompt = "a satellite image of a dense forest next to a wide river ".repeat(3);
    run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--prompt",
            &prompt,
            "--out",
            "o",
        ],
    )
    .fails_with(&["model.toml", "Q-Former tokens", "encoder's 24 positions"]);
    assert!(!d.join("o").exists());
    assert!(walk(d)
        .iter()
        .all(|p| !p.to_string_lossy().contains(".tessera-tmp-")));
}
