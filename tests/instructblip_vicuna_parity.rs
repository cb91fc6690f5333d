//! InstructBLIP with a Vicuna (Llama) language model on the image-text decoder, against
//! PyTorch: a tiny random `InstructBlipForConditionalGeneration` whose `text_config` is a Llama
//! (`export.py instructblip --tiny --language-model llama`), references from Hugging Face
//! `generate` on `InstructBlipProcessor`'s inputs (greedy, 3 beams, penalties; one tile and
//! batches of tiles with different prompts, so different Q-Former inputs per row; no prompt).
//! Token-for-token equality (the LLM row and the Q-Former tokens of each prompt too); then
//! `tessera caption --prompt` end to end, and bad packages and prompts.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, run, walk};
use ndarray::Array4;
use serde_json::Value;
use tessera::models::decoder::{DecoderModel, GenerationParams};
use tessera::runtime::{Runtime, SessionOptions};

const NAME: &str = "instructblip-vicuna-tiny";

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models")
        .join(NAME)
}

fn reference() -> Value {
    let text = std::fs::read_to_string(package().join("reference/reference.json"))
        .expect("reference.json");
    serde_json::from_str(&text).expect("json")
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

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("strings")
        .iter()
        .map(|s| s.as_str().expect("str").to_string())
        .collect()
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

fn params(g: &Value) -> GenerationParams {
    crate::common::reference::generation_params(g)
}

fn batch_of(px: &Array4<f32>, images: &[usize]) -> Array4<f32> {
    let mut batch =
        Array4::<f32>::zeros((images.len(), px.shape()[1], px.shape()[2], px.shape()[3]));
    for (k, &i) in images.iter().enumerate() {
        batch
            .slice_mut(ndarray::s![k, .., .., ..])
            .assign(&px.slice(ndarray::s![i, .., .., ..]));
    }
    batch
}

/// The processor's row without its padding.
fn unpadded(ids_rows: &Value, mask_rows: &Value, k: usize) -> Vec<i64> {
    ids(&ids_rows[k])
        .into_iter()
        .zip(ids(&mask_rows[k]))
        .filter(|&(_, m)| m == 1)
        .map(|(t, _)| t)
        .collect()
}

#[test]
fn instructblip_vicuna_generates_the_pytorch_tokens() {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let mut model = DecoderModel::load(rt, &package(), &SessionOptions::default()).expect("model");
    let r = reference();
    assert_eq!(r["architecture"], "instructblip-llama");
    let px = pixels(&r);
    let eos = r["eos_token_id"].as_u64().expect("eos") as u32;
    let (mut beams, mut prompt_batches, mut ended, mut long) = (false, false, false, false);
    let mut compared = 0;
    let mut cases: Vec<&Value> = r["cases"].as_array().expect("cases").iter().collect();
    cases.extend(
        r["empty_prompt_cases"]
            .as_array()
            .expect("empty prompt cases"),
    );
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let images = dims(&case["images"]);
        let prompts = strings(&case["prompts"]);
        let g = &case["generation"];
        let p = params(g);
        for (k, prompt) in prompts.iter().enumerate() {
            // The LLM row: InstructBlipProcessor's (image tokens, then `<s> prompt`).
            let row = model.prompt_ids(prompt).expect("prompt ids");
            assert_eq!(
                row,
                ids(&r["llm_ids"][prompt]),
                "{name}: LLM ids of {prompt:?}"
            );
            if case.get("input_ids").is_some() {
                assert_eq!(
                    row,
                    unpadded(&case["input_ids"], &case["attention_mask"], k),
                    "{name}: the processor's row {k}"
                );
                assert_eq!(case["checks"]["template_layout_generate_equal"], true);
                assert_eq!(case["checks"]["lm_inputs_embeds_max_abs_diff"], 0.0);
            } else {
                assert_eq!(
                    case["checks"]["hf_no_prompt_start_equals_empty_prompt_row"], true,
                    "{name}: HF generate without input_ids"
                );
            }
            assert_eq!(
                model.qformer_prompt_ids(prompt).expect("qformer ids"),
                Some(ids(&r["qformer_ids"][prompt])),
                "{name}: Q-Former tokens of {prompt:?}"
            );
        }
        let batch = batch_of(&px, &images);
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
        if images.len() > 1 {
            for (k, prompt) in prompts.iter().enumerate() {
                let one = batch.slice(ndarray::s![k..k + 1, .., .., ..]);
                let alone = model
                    .generate(one, std::slice::from_ref(prompt), &p)
                    .expect("generate one");
                assert_eq!(alone[0], got[k], "{name}: item {k} alone");
            }
        }
        beams |= p.num_beams == 3;
        prompt_batches |= images.len() > 1 && prompts.iter().any(|q| q != &prompts[0]);
    }
    assert!(
        beams && prompt_batches && ended && long && compared >= 16,
        "the references cover 3 beams, batches of different prompts, ended and unended captions ({compared} compared)"
    );
}

#[test]
fn the_prefix_depends_on_the_prompt() {
    // The same tile under two prompts: different Q-Former inputs, different captions (HF's).
    let r = reference();
    let by_prompt = |prompt: &str| -> Vec<Vec<i64>> {
        r["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .filter(|c| {
                c["generation"]["num_beams"] == 1 && c["generation"]["repetition_penalty"] == 1.0
            })
            .flat_map(|c| {
                let images = dims(&c["images"]);
                let prompts = strings(&c["prompts"]);
                (0..images.len())
                    .filter(|&k| images[k] == 1 && prompts[k] == prompt)
                    .map(|k| ids(&c["new_tokens"][k]))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (a, b) = (
        by_prompt("What is in this image?"),
        by_prompt("Describe it."),
    );
    assert!(!a.is_empty() && !b.is_empty());
    assert_ne!(a[0], b[0]);
    let q = &r["qformer_ids"];
    assert_ne!(q["What is in this image?"], q["Describe it."]);
}

/// A georeferenced scene whose tiles are the reference images; the image index of each tile.
fn scene(path: &Path, cols: usize, rows: usize) -> Vec<usize> {
    let n = dims(&reference()["images_u8"]["shape"])[0];
    let pick = move |r: usize, c: usize| (r * cols + c) % n;
    common::reference::block_scene(&package(), path, cols, rows, pick);
    (0..rows * cols).map(|k| pick(k / cols, k % cols)).collect()
}

/// The plain-settings references of `prompt` with `num_beams`, by image.
fn single_refs(prompt: &str, num_beams: u64) -> std::collections::BTreeMap<usize, Vec<u64>> {
    let r = reference();
    let mut out = std::collections::BTreeMap::new();
    let mut cases: Vec<&Value> = r["cases"].as_array().expect("cases").iter().collect();
    cases.extend(r["empty_prompt_cases"].as_array().expect("empty"));
    for case in cases {
        let g = &case["generation"];
        let plain = g["repetition_penalty"].as_f64().unwrap_or(1.0) == 1.0
            && g["min_new_tokens"].as_u64().unwrap_or(0) == 0
            && g["no_repeat_ngram_size"].as_u64().unwrap_or(0) == 0
            && g["max_new_tokens"] == 12
            && g["num_beams"] == num_beams;
        if !plain {
            continue;
        }
        for (k, img) in dims(&case["images"]).into_iter().enumerate() {
            if case["prompts"][k] == prompt {
                out.insert(
                    img,
                    ids(&case["new_tokens"][k])
                        .iter()
                        .map(|&t| t as u64)
                        .collect(),
                );
            }
        }
    }
    out
}

#[test]
fn caption_command_runs_instructblip_vicuna_on_a_scene() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pick = scene(&d.join("scene.tif"), 3, 2);
    let model = package().display().to_string();
    let mut checked = 0;
    for (prompt, beams, out) in [
        ("What is in this image?", "1", "plain"),
        ("What is in this image?", "3", "beams"),
        ("", "1", "empty"),
    ] {
        let want = single_refs(prompt, beams.parse().expect("beams"));
        assert!(
            !want.is_empty(),
            "references of {prompt:?} with {beams} beams"
        );
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
        assert_eq!(j["tiles_captioned"], 6, "{out}: {}", res.context());
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
                assert_eq!(&got, w, "{out}: tile r{row}c{col} (image {img})");
                checked += 1;
            }
        }
        assert!(d.join(out).join("tiles.gpkg").is_file());
    }
    assert!(
        checked >= 6,
        "tiles checked against their references ({checked})"
    );
}

#[test]
fn bad_instructblip_vicuna_packages_and_prompts_fail_with_the_file_and_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    scene(&d.join("scene.tif"), 2, 1);
    let broken = |from: &Path, name: &str, edit: &dyn Fn(&Path)| -> String {
        let p = d.join(name);
        copy_dir(from, &p);
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
        let problems = strings(&res.json()["problems"]);
        assert!(
            problems
                .iter()
                .any(|p| needles.iter().all(|n| p.contains(n))),
            "a problem mentions {needles:?}: {problems:?}"
        );
        let res = run(d, &["caption", "scene.tif", "--model", pkg, "--out", "o"]);
        let res = res.fails_with(needles);
        assert!(!res.stderr().contains("panicked"), "{}", res.context());
        assert!(!d.join("o").exists());
    };
    let pkg = package();
    // The manifest names Q-Former inputs the image graph does not have (BLIP-2's prefix).
    let blip2 = broken(&pkg, "blip2-prefix", &|p: &Path| {
        std::fs::copy(
            package()
                .parent()
                .expect("models")
                .join("blip2-tiny/image_prefix.onnx"),
            p.join("image_prefix.onnx"),
        )
        .expect("copy");
    });
    check(&blip2, &["image prefix has no input 'qformer_input_ids'"]);
    // The graph takes the prompt but the manifest does not say so.
    let unnamed = broken(&pkg, "unnamed", &|p: &Path| {
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        let m: String = m
            .lines()
            .filter(|l| {
                !l.starts_with("qformer_input_ids") && !l.starts_with("qformer_attention_mask")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(p.join("model.toml"), m).expect("write");
    });
    check(
        &unnamed,
        &["image prefix inputs qformer_input_ids, qformer_attention_mask are not in the manifest"],
    );
    // One of the pair only.
    let half = broken(&pkg, "half", &|p: &Path| {
        edit(p, "qformer_attention_mask = \"qformer_attention_mask\"", "")
    });
    check(
        &half,
        &["image.qformer_input_ids and image.qformer_attention_mask go together"],
    );
    // No Q-Former tokenizer file, or no section.
    let qtok = broken(&pkg, "qtok", &|p: &Path| {
        std::fs::remove_file(p.join("qformer_tokenizer.json")).expect("rm")
    });
    check(&qtok, &["qformer_tokenizer.json"]);
    let section = broken(&pkg, "section", &|p: &Path| {
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        let start = m.find("\n[qformer_tokenizer]").expect("section");
        let end = start + 1 + m[start + 1..].find("\n\n").unwrap_or(m.len() - start - 1);
        std::fs::write(
            p.join("model.toml"),
            format!("{}{}", &m[..start], &m[end..]),
        )
        .expect("write");
    });
    check(
        &section,
        &["image.qformer_input_ids needs a [qformer_tokenizer] section"],
    );
    // image_ids_first with the image tokens elsewhere in the template.
    let template = broken(&pkg, "template", &|p: &Path| {
        edit(
            p,
            "template = \"{image}{prompt}\"",
            "template = \"{prompt}{image}\"",
        )
    });
    check(
        &template,
        &["prompt.image_ids_first", "starts with {image}"],
    );

    // A prompt longer than the Q-Former's positions: refused (not truncated) before anything
    // is written; one token less is fine.
    let r = reference();
    let long = &r["too_long_prompt"];
    let max = long["max_qformer_tokens"].as_u64().expect("max");
    assert!(long["qformer_tokens"].as_u64().expect("n") > max);
    let prompt = long["prompt"].as_str().expect("prompt");
    let model = pkg.display().to_string();
    run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--prompt",
            prompt,
            "--out",
            "o",
        ],
    )
    .fails_with(&[
        "model.toml",
        &format!(
            "Q-Former tokens (qformer_tokenizer.json), more than the Q-Former's {max} positions"
        ),
    ]);
    assert!(!d.join("o").exists());
    let fits = prompt.rsplit_once(' ').expect("words").0;
    run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--prompt",
            fits,
            "--max-new-tokens",
            "2",
            "--out",
            "fits",
            "--quiet",
        ],
    )
    .success();
    assert!(walk(d)
        .iter()
        .all(|p| !p.to_string_lossy().contains(".tessera-tmp-")));
}
