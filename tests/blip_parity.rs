//! The cross-attention decoder against PyTorch: a tiny random `BlipForConditionalGeneration`
//! (`tools/export/export.py blip --tiny`) and `BlipForQuestionAnswering` (`blip-vqa --tiny`),
//! with references from Hugging Face `generate` (greedy, beams, penalties; one tile and
//! batches, with and without a text prefix, questions of one and of mixed lengths).
//! Token-for-token equality; then `tessera caption` end to end, and bad packages.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, run, walk};
use ndarray::Array4;
use serde_json::Value;
use tessera::generation::GenerationParams;
use tessera::models::cross_decoder::CrossDecoderModel;
use tessera::runtime::{Runtime, SessionOptions};

fn package() -> PathBuf {
    package_of("blip-tiny")
}

fn package_of(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models")
        .join(name)
}

fn reference() -> Value {
    reference_of("blip-tiny")
}

fn reference_of(name: &str) -> Value {
    let text = std::fs::read_to_string(package_of(name).join("reference/reference.json"))
        .expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

fn pixels(r: &Value) -> Array4<f32> {
    let shape = dims(&r["pixels_f32"]["shape"]);
    let bytes = std::fs::read(package().join("reference/pixels_f32.bin")).expect("pixels");
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

#[test]
fn blip_generates_the_pytorch_tokens() {
    check_package("blip-tiny");
}

#[test]
fn blip_vqa_answers_with_the_pytorch_tokens() {
    check_package("blip-vqa-tiny");
}

fn check_package(pkg: &str) {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let mut model =
        CrossDecoderModel::load(rt, &package_of(pkg), &SessionOptions::default()).expect("model");
    let r = reference_of(pkg);
    let vqa = r["architecture"] == "blip-vqa";
    let px = pixels(&r);
    let sep = r["sep_token_id"].as_u64().expect("sep") as u32;
    let (mut beams, mut hf_batches, mut mixed, mut prefixed, mut bare, mut ended) =
        (false, false, false, false, false, false);
    let mut compared = 0;
    for case in r["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let images = dims(&case["images"]);
        let prompts = strings(&case["prompts"]);
        let g = &case["generation"];
        assert_eq!(g["early_stopping"], false, "{name}");
        let p = params(g);
        let mut batch =
            Array4::<f32>::zeros((images.len(), px.shape()[1], px.shape()[2], px.shape()[3]));
        for (k, &i) in images.iter().enumerate() {
            batch
                .slice_mut(ndarray::s![k, .., .., ..])
                .assign(&px.slice(ndarray::s![i, .., .., ..]));
        }
        // BLIP's start: [CLS] prefix [SEP] -> [DEC] prefix; VQA: the question for the
        // encoder as the tokenizer gives it (the decoder starts from [DEC]).
        for (k, prompt) in prompts.iter().enumerate() {
            let got = model.prompt_ids(prompt).expect("prompt ids");
            let want = if vqa {
                &case["tokenized"][k]
            } else {
                &case["start_ids"][k]
            };
            assert_eq!(got, ids(want), "{pkg} {name}: ids of {prompt:?}");
        }
        let got = model
            .generate(batch.view(), &prompts, &p)
            .expect("generate");
        let want = case["new_tokens"].as_array().expect("new tokens");
        assert_eq!(got.len(), want.len(), "{name}");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            let w: Vec<u32> = ids(w).iter().map(|&t| t as u32).collect();
            assert_eq!(
                g, &w,
                "{pkg} {name}: item {k} ({:?}) with {p:?}",
                prompts[k]
            );
            ended |= w.last() == Some(&sep);
            compared += 1;
        }
        beams |= p.num_beams > 1;
        hf_batches |= images.len() > 1 && case["hf_batched"] == true;
        let lengths: std::collections::BTreeSet<usize> = case["tokenized"]
            .as_array()
            .expect("tokenized")
            .iter()
            .map(|t| t.as_array().map_or(0, Vec::len))
            .collect();
        mixed |= images.len() > 1 && lengths.len() > 1;
        prefixed |= prompts.iter().any(|p| !p.is_empty());
        bare |= vqa || prompts.iter().any(String::is_empty);
    }
    assert!(
        beams && hf_batches && mixed && prefixed && bare && ended && compared >= 20,
        "the references cover beams, HF batches, mixed-length batches, with and without a prefix, ended captions ({compared} compared)"
    );
}

/// A georeferenced scene whose `cols x rows` tiles are the reference images; the image index
/// of each tile.
fn block_scene(path: &Path, cols: usize, rows: usize) -> Vec<usize> {
    common::reference::mapped_block_scene(&package(), path, cols, rows, common::reference::shuffled)
}

/// The single-image references of `prompt` with `num_beams`, by image.
fn single_refs(prompt: &str, num_beams: u64) -> std::collections::BTreeMap<usize, Vec<u64>> {
    let r = reference();
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
fn caption_command_runs_blip_on_a_scene() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pick = block_scene(&d.join("scene.tif"), 3, 2);
    let model = package().display().to_string();
    // BLIP VQA: the question to every tile.
    let vqa = package_of("blip-vqa-tiny").display().to_string();
    let r = reference_of("blip-vqa-tiny");
    let case = r["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == "greedy_batch_same_question")
        .expect("case");
    let question = case["prompts"][0].as_str().expect("question");
    let res = run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &vqa,
            "--prompt",
            question,
            "--max-new-tokens",
            "12",
            "--batch-size",
            "5",
            "--out",
            "vqa",
            "--json",
            "--quiet",
        ],
    );
    assert_eq!(res.success().json()["tiles_captioned"], 6);
    let jsonl = std::fs::read_to_string(d.join("vqa/captions.jsonl")).expect("jsonl");
    for l in jsonl.lines() {
        let l: Value = serde_json::from_str(l).expect("line");
        let img = pick[l["row"].as_u64().expect("row") as usize * 3
            + l["col"].as_u64().expect("col") as usize];
        let k = dims(&case["images"])
            .iter()
            .position(|&i| i == img)
            .expect("image in the case");
        assert_eq!(
            l["tokens"], case["new_tokens"][k],
            "vqa tile of image {img}"
        );
    }
    for (prompt, beams, out) in [
        ("", "1", "plain"),
        ("a satellite image of", "1", "prefix"),
        ("", "3", "beams"),
    ] {
        let want = single_refs(prompt, beams.parse().expect("beams"));
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
        assert_eq!(j["tiles_captioned"], 6, "{}", res.context());
        assert_eq!(j["model_trained"], false);
        assert!(j["scene_caption"].is_string());
        let jsonl = std::fs::read_to_string(d.join(out).join("captions.jsonl")).expect("jsonl");
        let mut checked = 0;
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
                assert_eq!(&got, w, "{out}: tile r{row}c{col} (image {img})");
                checked += 1;
            }
        }
        assert!(checked >= 1, "{out}: a tile checked against its reference");
        assert!(d.join(out).join("tiles.gpkg").is_file());
        assert!(d.join(out).join("scene.gpkg").is_file());
    }
    // The scene caption only.
    let j = run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--scene-only",
            "--json",
            "--quiet",
        ],
    )
    .success()
    .json();
    assert_eq!(j["tiles_captioned"], 0);
}

#[test]
fn bad_blip_packages_fail_with_the_file_and_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    block_scene(&d.join("scene.tif"), 2, 1);
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
    // A vision encoder whose features are narrower than the cross-attention takes: BLIP-2's
    // 32-wide image prefix in place of the 48-wide ViT.
    let narrow = broken("narrow", &|p: &Path| {
        let blip2 = package().join("../blip2-tiny/image_prefix.onnx");
        std::fs::copy(blip2, p.join("encoder.onnx")).expect("copy");
        // The first `memory = ` is the [encoder] output.
        edit(p, "memory = \"memory\"", "memory = \"prefix_embeds\"");
    });
    check(
        &narrow,
        &[
            "cross_kv.onnx",
            "takes a memory 48 wide",
            "32-wide features",
        ],
    );
    let width = broken("width", &|p: &Path| {
        edit(p, "cross_width = 48", "cross_width = 64")
    });
    check(
        &width,
        &["decoder.cross_width = 64", "48 wide", "encoder.onnx"],
    );
    // No encoder graph.
    let missing = broken("missing", &|p: &Path| {
        std::fs::remove_file(p.join("encoder.onnx")).expect("rm")
    });
    check(&missing, &["encoder.onnx"]);
    // Fewer layers in the manifest than the graphs have.
    let layers = broken("layers", &|p: &Path| edit(p, "layers = 2", "layers = 1"));
    check(
        &layers,
        &["decoder.onnx", "cross.1.key", "not in the manifest"],
    );
    // More new tokens by default than the decoder has positions.
    let long = broken("long", &|p: &Path| {
        edit(p, "max_new_tokens = 20", "max_new_tokens = 64")
    });
    check(&long, &["max_new_tokens = 64", "max_positions = 64"]);
    // A start token outside the vocabulary.
    let start = broken("start", &|p: &Path| {
        edit(p, "start_token_id = 5", "start_token_id = 5000")
    });
    check(&start, &["start_token_id 5000", "tokenizer.json"]);
    // A cross-key/value row layout tessera does not know.
    let rows = broken("rows", &|p: &Path| {
        edit(p, "cross_rows = \"item\"", "cross_rows = \"tile\"")
    });
    check(&rows, &["model.toml", "unknown variant `tile`"]);

    // A prompt longer than the model's positions: refused before anything is written.
    let model = package().display().to_string();
    let prompt = "a satellite image of a dense forest next to a wide river ".repeat(6);
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
    .fails_with(&["model.toml", "exceeds the model's 64 positions"]);
    // Within the positions, but not with the new tokens asked for.
    run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--prompt",
            "a satellite image of",
            "--max-new-tokens",
            "60",
            "--out",
            "o",
        ],
    )
    .fails_with(&["with 60 new tokens", "exceeds the model's 64 positions"]);
    assert!(!d.join("o").exists());
    assert!(walk(d)
        .iter()
        .all(|p| !p.to_string_lossy().contains(".tessera-tmp-")));
}
