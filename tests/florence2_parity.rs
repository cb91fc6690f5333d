//! Florence-2 (`sample_data/models/florence2-tiny`, written by `tools/export/export.py
//! florence2 --tiny`) against PyTorch: the task-prompt table and the tokenizer reproduce what
//! Hugging Face's `Florence2Processor` fed the model in every reference case (the prompt text
//! of each task token, the encoder's token ids); the runtime generates HF `generate`'s tokens
//! (greedy, beams 3, batches of tiles with different task prompts, penalties, and Florence-2's
//! own defaults: n-gram blocking, forced `<s>` / `</s>`, `early_stopping=True`) on the
//! encoder-decoder path of the `cross-attention-decoder` family; the captions decode to HF's
//! text; `tessera caption --prompt "<CAPTION>"` end to end under the package's `[generation]`;
//! the location tokens are the id range the manifest names; box-producing tasks and broken
//! `[tasks]` / `[locations]` are refused with the file and the cause.

mod common;

use std::path::{Path, PathBuf};

use ndarray::Array4;
use serde_json::Value;
use tessera::generation::GenerationParams;
use tessera::models::cross_decoder::CrossDecoderModel;
use tessera::models::task_prompts::{LocationsSpec, TasksSpec};
use tessera::runtime::{Runtime, SessionOptions};

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/florence2-tiny")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(package().join("reference/reference.json"))
        .expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

fn manifest() -> toml::Table {
    let text = std::fs::read_to_string(package().join("model.toml")).expect("model.toml");
    text.parse::<toml::Table>().expect("toml")
}

fn tasks() -> TasksSpec {
    manifest()["tasks"].clone().try_into().expect("[tasks]")
}

fn locations() -> LocationsSpec {
    manifest()["locations"]
        .clone()
        .try_into()
        .expect("[locations]")
}

fn tokenizer() -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(package().join("tokenizer.json")).expect("tokenizer.json")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, true).expect("encode").get_ids().to_vec()
}

#[test]
fn task_prompts_and_encoder_ids_equal_the_hf_processor() {
    let (spec, tok, r) = (tasks(), tokenizer(), reference());
    let mut seen = 0;
    for case in r["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        for (k, prompt) in case["prompts"]
            .as_array()
            .expect("prompts")
            .iter()
            .enumerate()
        {
            let prompt = prompt.as_str().expect("prompt");
            let text = spec.caption_prompt(prompt).expect("a caption prompt");
            assert_eq!(
                text,
                case["prompt_texts"][k].as_str().expect("text"),
                "{name} {prompt}"
            );
            assert_eq!(
                encode(&tok, &text),
                ids(&case["encoder_input_ids"][k]),
                "{name}: encoder ids of '{prompt}'"
            );
            seen += 1;
        }
    }
    assert!(seen >= 20, "only {seen} prompts in the references");
    // the four caption tasks of the issue, with HF's texts
    for (task, text) in [
        ("<CAPTION>", "What does the image describe?"),
        (
            "<DETAILED_CAPTION>",
            "Describe in detail what is shown in the image.",
        ),
        (
            "<MORE_DETAILED_CAPTION>",
            "Describe with a paragraph what is shown in the image.",
        ),
        ("<OCR>", "What is the text in the image?"),
    ] {
        assert_eq!(spec.caption_prompt(task).expect(task), text);
        assert!(
            spec.caption.iter().any(|t| t == task),
            "{task} not a caption task"
        );
    }
    assert_eq!(spec.default.as_deref(), Some("<CAPTION>"));
    assert!(spec.check().is_empty(), "{:?}", spec.check());
}

#[test]
fn empty_prompt_and_decoder_start_follow_the_manifest() {
    let (m, tok, r) = (manifest(), tokenizer(), reference());
    let prompt = m["prompt"].as_table().expect("[prompt]");
    let empty: Vec<u32> = prompt["empty_prompt_ids"]
        .as_array()
        .expect("empty_prompt_ids")
        .iter()
        .map(|v| v.as_integer().expect("id") as u32)
        .collect();
    assert_eq!(encode(&tok, ""), empty);
    assert_eq!(empty, vec![0, 2], "<s></s>");
    // The decoder starts from HF's decoder_start_token_id alone: [prompt] start_token_id.
    let start = prompt["start_token_id"].as_integer().expect("start");
    assert_eq!(start, r["decoder_start_token_id"].as_i64().expect("start"));
    let eos = m["tokenizer"]["eos_token_id"].as_integer().expect("eos");
    assert_eq!(eos, r["eos_token_id"].as_i64().expect("eos"));
    assert_eq!(
        m["encoder"]["query_tokens"]
            .as_integer()
            .expect("query_tokens"),
        r["image_tokens"].as_i64().expect("image_tokens")
    );
}

#[test]
fn generated_tokens_decode_to_the_hf_text() {
    let (tok, r) = (tokenizer(), reference());
    let mut checked = 0;
    for case in r["cases"].as_array().expect("cases") {
        for (k, row) in case["new_tokens"]
            .as_array()
            .expect("rows")
            .iter()
            .enumerate()
        {
            let text = tok.decode(&ids(row), true).expect("decode");
            assert_eq!(
                text,
                case["text"][k].as_str().expect("text"),
                "{}",
                case["name"]
            );
            checked += 1;
        }
        assert_eq!(
            case["checks"]["batch_equals_items"],
            Value::Bool(true),
            "{}",
            case["name"]
        );
    }
    assert!(checked >= 20);
}

#[test]
fn location_tokens_are_the_manifest_range() {
    let (loc, tok) = (locations(), tokenizer());
    assert_eq!((loc.count, loc.bins), (1000, [1000, 1000]));
    assert!(loc.check(&tok).is_empty(), "{:?}", loc.check(&tok));
    assert_eq!(tok.token_to_id("<loc_0>"), Some(loc.first_token_id));
    assert_eq!(tok.token_to_id("<loc_999>"), Some(loc.first_token_id + 999));
    assert_eq!(loc.index(loc.first_token_id + 417), Some(417));
    assert_eq!(loc.index(loc.first_token_id + 1000), None);
    // a location token is one added token, never split
    assert_eq!(
        encode(&tok, "<loc_417>"),
        vec![0, loc.first_token_id + 417, 2]
    );
    // a wrong range is reported
    let shifted = LocationsSpec {
        first_token_id: loc.first_token_id + 1,
        ..loc
    };
    let problems = shifted.check(&tok);
    assert!(
        problems.len() == 1 && problems[0].contains("<loc_0>"),
        "{problems:?}"
    );
}

#[test]
fn box_tasks_are_not_captions() {
    let spec = tasks();
    for task in [
        "<OD>",
        "<DENSE_REGION_CAPTION>",
        "<REGION_PROPOSAL>",
        "<OCR_WITH_REGION>",
    ] {
        let e = spec.caption_prompt(task).expect_err(task);
        assert!(e.contains(task) && e.contains("<CAPTION>"), "{e}");
    }
    let e = spec
        .caption_prompt("<CAPTION_TO_PHRASE_GROUNDING> a river")
        .expect_err("grounding");
    assert!(e.contains("phrase_grounding"), "{e}");
    // ... while their prompt text is still known (for the later detector)
    assert_eq!(
        spec.prompt_text("<CAPTION_TO_PHRASE_GROUNDING> a river")
            .expect("text"),
        "Locate the phrases in the caption: a river"
    );
    let e = spec
        .caption_prompt("<CAPTION> of a farm")
        .expect_err("extra text");
    assert!(e.contains("whole prompt"), "{e}");
}

#[test]
fn fixture_is_small() {
    let total: u64 = common::walk(&package())
        .iter()
        .map(|p| p.metadata().expect("meta").len())
        .sum();
    assert!(total < 3_000_000, "florence2-tiny is {total} bytes");
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

fn params(g: &Value) -> GenerationParams {
    common::reference::generation_params(g)
}

fn batch_of(px: &Array4<f32>, images: &[usize]) -> Array4<f32> {
    let mut b = Array4::<f32>::zeros((images.len(), px.shape()[1], px.shape()[2], px.shape()[3]));
    for (k, &i) in images.iter().enumerate() {
        b.slice_mut(ndarray::s![k, .., .., ..])
            .assign(&px.slice(ndarray::s![i, .., .., ..]));
    }
    b
}

fn load() -> CrossDecoderModel {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    CrossDecoderModel::load(rt, &package(), &SessionOptions::default()).expect("florence2-tiny")
}

#[test]
fn florence2_generates_the_pytorch_tokens() {
    let mut model = load();
    let r = reference();
    let px = pixels(&r);
    let (mut beams, mut batches, mut tasks_mixed, mut ended, mut compared) =
        (false, false, false, false, 0);
    let mut defaults = 0;
    for case in r["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let g = &case["generation"];
        // HF's empty prompt is <s></s>, tessera's is [tasks] default (checked below).
        if name.contains("empty_prompt") {
            continue;
        }
        assert_eq!(case["supported"], true, "{name}");
        let images: Vec<usize> = case["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|i| i.as_u64().expect("i") as usize)
            .collect();
        let prompts: Vec<String> = case["prompts"]
            .as_array()
            .expect("prompts")
            .iter()
            .map(|p| p.as_str().expect("p").to_string())
            .collect();
        let p = params(g);
        let got = model
            .generate(batch_of(&px, &images).view(), &prompts, &p)
            .expect("generate");
        let want = case["new_tokens"].as_array().expect("new tokens");
        assert_eq!(got.len(), want.len(), "{name}");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, &ids(w), "{name}: item {k} ({:?}) with {p:?}", prompts[k]);
            ended |= w.as_array().and_then(|a| a.last()) == Some(&Value::from(2));
            compared += 1;
        }
        beams |= p.num_beams > 1;
        if p == model.default_params() {
            assert!(
                p.no_repeat_ngram_size == 3 && p.forced_bos_token_id == Some(0),
                "{name}"
            );
            defaults += 1;
        }
        batches |= images.len() > 1;
        tasks_mixed |= prompts
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1;
    }
    assert!(
        beams && batches && tasks_mixed && ended && compared >= 20,
        "{compared} compared"
    );
    assert!(
        defaults >= 2,
        "{defaults} cases under the package's own defaults"
    );
    // tessera's empty prompt is the package's default task
    let one = batch_of(&px, &[0]);
    let g = params(&r["cases"][0]["generation"]);
    assert_eq!(
        model
            .generate(one.view(), &[String::new()], &g)
            .expect("empty"),
        model
            .generate(one.view(), &["<CAPTION>".to_string()], &g)
            .expect("caption")
    );
}

#[test]
fn box_tasks_fail_with_the_manifest_and_the_task() {
    let mut model = load();
    let px = pixels(&reference());
    let one = batch_of(&px, &[0]);
    let p = model.default_params();
    for prompt in ["<OD>", "<CAPTION> of a farm"] {
        let e = model
            .generate(one.view(), &[prompt.to_string()], &p)
            .expect_err(prompt)
            .to_string();
        assert!(
            e.contains("model.toml") && e.contains(prompt.split(' ').next().unwrap_or("")),
            "{e}"
        );
    }
}

/// A georeferenced scene whose `cols x rows` tiles are the reference images; the image index
/// of each tile.
fn block_scene(path: &Path, cols: usize, rows: usize) -> Vec<usize> {
    common::reference::mapped_block_scene(&package(), path, cols, rows, common::reference::shuffled)
}

/// The package's `[generation]` (Florence-2's defaults: beams 3, n-gram blocking, forced
/// `<s>` / `</s>`, early stopping).
fn package_params() -> GenerationParams {
    let spec: tessera::models::GenerationSpec = manifest()["generation"]
        .clone()
        .try_into()
        .expect("[generation]");
    GenerationParams::from(&spec)
}

/// The references of `prompt` under the package's [generation], by image.
fn beam_refs(prompt: &str) -> std::collections::BTreeMap<usize, Vec<u32>> {
    let r = reference();
    let want = package_params();
    let mut out = std::collections::BTreeMap::new();
    for case in r["cases"].as_array().expect("cases") {
        if params(&case["generation"]) != want {
            continue;
        }
        for (k, img) in case["images"]
            .as_array()
            .expect("images")
            .iter()
            .enumerate()
        {
            if case["prompts"][k] == prompt {
                out.insert(
                    img.as_u64().expect("img") as usize,
                    ids(&case["new_tokens"][k]),
                );
            }
        }
    }
    out
}

#[test]
fn caption_command_runs_florence2_task_prompts_on_a_scene() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pick = block_scene(&d.join("scene.tif"), 2, 2);
    let model = package().display().to_string();
    for (prompt, out) in [("<CAPTION>", "caption"), ("<OCR>", "ocr")] {
        let want = beam_refs(prompt);
        assert!(!want.is_empty(), "{prompt}: references");
        let res = common::run(
            d,
            &[
                "caption",
                "scene.tif",
                "--model",
                &model,
                "--prompt",
                prompt,
                "--batch-size",
                "3",
                "--out",
                out,
                "--json",
                "--quiet",
            ],
        );
        let j = res.success().json();
        assert_eq!(j["tiles_captioned"], 4, "{}", res.context());
        let jsonl = std::fs::read_to_string(d.join(out).join("captions.jsonl")).expect("jsonl");
        let mut checked = 0;
        for l in jsonl.lines() {
            let l: Value = serde_json::from_str(l).expect("line");
            let (row, col) = (
                l["row"].as_u64().expect("row") as usize,
                l["col"].as_u64().expect("col") as usize,
            );
            let img = pick[row * 2 + col];
            if let Some(w) = want.get(&img) {
                assert_eq!(
                    &ids(&l["tokens"]),
                    w,
                    "{out}: tile r{row}c{col} (image {img})"
                );
                checked += 1;
            }
        }
        assert!(checked >= 1, "{out}: a tile checked against its reference");
    }
    // a box task is refused before anything is read or written
    let res = common::run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--prompt",
            "<OD>",
            "--out",
            "od",
            "--quiet",
        ],
    );
    res.fails_with(&["model.toml", "<OD>", "description_with_bboxes"]);
    assert!(!d.join("od").exists());
}

#[test]
fn broken_florence2_packages_fail_with_the_file_and_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    block_scene(&d.join("scene.tif"), 1, 1);
    for (name, from, to, needles) in [
        (
            "loc",
            "first_token_id = 325",
            "first_token_id = 326",
            &["tokenizer.json", "<loc_0>", "325"][..],
        ),
        (
            "caption",
            "caption = [\"<OCR>\"",
            "caption = [\"<OCRS>\"",
            &["[tasks]", "<OCRS>"][..],
        ),
    ] {
        let bad = d.join(name);
        common::copy_dir(&package(), &bad);
        let m = std::fs::read_to_string(bad.join("model.toml")).expect("toml");
        assert!(m.contains(from), "manifest has {from}");
        std::fs::write(bad.join("model.toml"), m.replacen(from, to, 1)).expect("write");
        let pkg = bad.to_str().expect("utf-8");
        let res = common::run(d, &["models", "check", pkg, "--json"]);
        assert_eq!(res.output.status.code(), Some(1), "{}", res.context());
        let j = res.json();
        assert_eq!(j["valid"], false);
        let problems: Vec<String> = j["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .map(|p| p.as_str().expect("str").to_string())
            .collect();
        assert!(
            problems
                .iter()
                .any(|p| needles.iter().all(|n| p.contains(n))),
            "{name}: a problem mentions {needles:?}: {problems:?}"
        );
        common::run(d, &["caption", "scene.tif", "--model", pkg, "--out", "o"]).fails_with(needles);
        assert!(!d.join("o").exists());
    }
}
