//! IDEFICS (Flamingo-style gated cross-attention) on the `cross-attention-decoder` family
//! against PyTorch: a tiny random `IdeficsForVisionText2Text` (`tools/export/export.py idefics
//! --tiny`: ViT + perceiver resampler, gated cross-attention layers inside a Llama decoder),
//! with references from Hugging Face `generate` on `IdeficsProcessor` inputs (greedy, beams 3,
//! penalties; one tile and batches of tiles with prompts of different lengths, left padded).
//! The prompt template and the image attention rule reproduce the processor's ids and
//! `image_attention_mask`; tokens are identical; then `tessera caption` end to end, and bad
//! packages. OpenFlamingo (`export.py openflamingo --tiny`, same layout) likewise, with each
//! language model the exporter restates: LLaMA, MPT (ALiBi, no position ids) and GPT-NeoX
//! (partial rotary, parallel residual), the LMs of the published OpenFlamingo checkpoints.

mod common;

use std::path::{Path, PathBuf};

use common::reference::{block_scene, ints, strings};
use common::{copy_dir, run, walk};
use ndarray::Array4;
use serde_json::Value;
use tessera::generation::GenerationParams;
use tessera::models::cross_decoder::CrossDecoderModel;
use tessera::runtime::{Runtime, SessionOptions};

fn package_of(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models")
        .join(name)
}

fn package() -> PathBuf {
    package_of("idefics-tiny")
}

fn reference_of(pkg: &Path) -> Value {
    let text =
        std::fs::read_to_string(pkg.join("reference/reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

fn dims(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|d| d.as_u64().expect("uint") as usize)
        .collect()
}

fn pixels(pkg: &Path, r: &Value) -> Array4<f32> {
    let shape = dims(&r["pixels_f32"]["shape"]);
    let bytes = std::fs::read(pkg.join("reference/pixels_f32.bin")).expect("pixels");
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data).expect("array")
}

fn params(g: &Value) -> GenerationParams {
    crate::common::reference::generation_params(g)
}

/// Every reference case of `pkg`: the runtime's prompt ids and image attention flags are the
/// processor's, and its tokens HF `generate`'s. Returns the number of items compared.
fn check_package(pkg: &Path) -> usize {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let mut model = CrossDecoderModel::load(rt, pkg, &SessionOptions::default()).expect("model");
    let r = reference_of(pkg);
    let px = pixels(pkg, &r);
    let eos = r["eos_token_id"].as_u64().expect("eos") as u32;
    let (mut beams, mut batches, mut mixed, mut ended, mut long) =
        (false, false, false, false, false);
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
        let mut lengths = std::collections::BTreeSet::new();
        for (k, prompt) in prompts.iter().enumerate() {
            let got = model.prompt_ids(prompt).expect("prompt ids");
            assert_eq!(
                got,
                ints(&case["prompt_ids"][k]),
                "{name}: ids of {prompt:?}"
            );
            assert_eq!(
                model.image_attention(&got),
                ints(&case["image_attention_mask"][k]),
                "{name}: image attention of {prompt:?}"
            );
            lengths.insert(got.len());
        }
        let got = model
            .generate(batch.view(), &prompts, &p)
            .expect("generate");
        let want = case["new_tokens"].as_array().expect("new tokens");
        assert_eq!(got.len(), want.len(), "{name}");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            let w: Vec<u32> = ints(w).iter().map(|&t| t as u32).collect();
            assert_eq!(g, &w, "{name}: item {k} ({:?}) with {p:?}", prompts[k]);
            ended |= w.last() == Some(&eos);
            long |= w.last() != Some(&eos);
            compared += 1;
        }
        beams |= p.num_beams > 1;
        batches |= images.len() > 1 && case["hf_batched"] == true;
        mixed |= images.len() > 1 && lengths.len() > 1 && p.num_beams > 1;
    }
    assert!(
        beams && batches && mixed && ended && long && compared >= 15,
        "the references cover beams, HF batches of mixed prompt lengths (greedy and beams), ended and unended outputs ({compared} compared)"
    );
    compared
}

#[test]
fn idefics_generates_the_pytorch_tokens() {
    check_package(&package());
}

/// A package whose graphs keep their weights in ONNX external data (`export.py idefics --tiny
/// --external-data-over 0`: the form `--from` writes for IDEFICS-9B/80B, whose decoder does not
/// fit one 2 GB protobuf): the same seeded model as idefics-tiny, checked against its PyTorch
/// references.
#[test]
fn idefics_with_external_data_generates_the_pytorch_tokens() {
    let pkg = package_of("idefics-tiny-external");
    for g in ["encoder.onnx", "cross_kv.onnx", "decoder.onnx"] {
        assert!(pkg.join(format!("{g}.data")).is_file(), "{g}.data");
        let graph = std::fs::metadata(pkg.join(g)).expect("graph").len();
        let data = std::fs::metadata(pkg.join(format!("{g}.data")))
            .expect("data")
            .len();
        assert!(graph < data, "{g}: the weights are in {g}.data");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("pkg");
    copy_dir(&pkg, &p);
    copy_dir(&package().join("reference"), &p.join("reference"));
    let res = run(dir.path(), &["models", "check", "pkg", "--json"]);
    assert_eq!(res.json()["valid"], true, "{}", res.context());
    assert!(check_package(&p) >= 15);
}

/// OpenFlamingo in the same layout (`export.py openflamingo --tiny`): references from HF
/// `generate` driven as `Flamingo.generate` does, greedy ones also checked by the exporter
/// against a greedy loop over `Flamingo.forward`.
#[test]
fn openflamingo_generates_the_reference_tokens() {
    check_package(&package_of("openflamingo-tiny"));
}

/// OpenFlamingo on a tiny `MptForCausalLM` (`--tiny --lm mpt`): the step graph's ALiBi
/// attention takes no position ids.
#[test]
fn openflamingo_mpt_generates_the_reference_tokens() {
    let pkg = package_of("openflamingo-mpt-tiny");
    let m = std::fs::read_to_string(pkg.join("model.toml")).expect("model.toml");
    assert!(
        m.contains("MptForCausalLM") && !m.contains("position_ids"),
        "{m}"
    );
    assert!(check_package(&pkg) >= 15);
}

/// OpenFlamingo on a tiny `GPTNeoXForCausalLM` (`--tiny --lm gpt-neox`, RedPajama-INCITE's
/// architecture: rotary on a quarter of each head, parallel residual).
#[test]
fn openflamingo_gpt_neox_generates_the_reference_tokens() {
    let pkg = package_of("openflamingo-gpt-neox-tiny");
    let m = std::fs::read_to_string(pkg.join("model.toml")).expect("model.toml");
    assert!(
        m.contains("GPTNeoXForCausalLM") && m.contains("position_ids"),
        "{m}"
    );
    assert!(check_package(&pkg) >= 15);
}

#[test]
fn caption_command_runs_openflamingo_mpt_on_a_scene() {
    caption_scene(&package_of("openflamingo-mpt-tiny"));
}

/// The single-tile references of `prompt` with `num_beams` and the plain settings, by image.
fn single_refs(
    pkg: &Path,
    prompt: &str,
    num_beams: u64,
) -> std::collections::BTreeMap<usize, Value> {
    let r = reference_of(pkg);
    let mut out = std::collections::BTreeMap::new();
    for case in r["cases"].as_array().expect("cases") {
        let g = &case["generation"];
        let plain = g["repetition_penalty"] == 1.0
            && g["min_new_tokens"] == 0
            && g["max_new_tokens"] == 12
            && g["num_beams"] == num_beams;
        if !plain {
            continue;
        }
        for (k, img) in dims(&case["images"]).into_iter().enumerate() {
            if case["prompts"][k] == prompt {
                out.insert(img, case["new_tokens"][k].clone());
            }
        }
    }
    out
}

#[test]
fn caption_command_runs_idefics_on_a_scene() {
    caption_scene(&package());
}

#[test]
fn caption_command_runs_openflamingo_on_a_scene() {
    caption_scene(&package_of("openflamingo-tiny"));
}

fn caption_scene(pkg: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pick = |r: usize, c: usize| (r * 3 + c) % 4;
    block_scene(pkg, &d.join("scene.tif"), 3, 2, pick);
    let model = pkg.display().to_string();
    let r = reference_of(pkg);
    let prompt = strings(&r["cases"][0]["prompts"])[0].clone();
    for (beams, out) in [("1", "greedy"), ("3", "beams")] {
        let want = single_refs(pkg, &prompt, beams.parse().expect("beams"));
        let res = run(
            d,
            &[
                "caption",
                "scene.tif",
                "--model",
                &model,
                "--prompt",
                &prompt,
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
        let jsonl = std::fs::read_to_string(d.join(out).join("captions.jsonl")).expect("jsonl");
        let mut checked = 0;
        for l in jsonl.lines() {
            let l: Value = serde_json::from_str(l).expect("line");
            let (row, col) = (
                l["row"].as_u64().expect("row") as usize,
                l["col"].as_u64().expect("col") as usize,
            );
            if let Some(w) = want.get(&pick(row, col)) {
                assert_eq!(&l["tokens"], w, "{out}: tile r{row}c{col}");
                checked += 1;
            }
        }
        assert!(
            checked >= 2,
            "{out}: tiles checked against their references"
        );
    }
}

#[test]
fn bad_idefics_packages_fail_with_the_file_and_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    block_scene(&package(), &d.join("scene.tif"), 2, 1, |_, c| c);
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
    // Vision features of another width than the gated cross-attention takes: BLIP's 48-wide
    // ViT in place of the 40-wide IDEFICS vision tower + resampler.
    let narrow = broken("wide", &|p: &Path| {
        let blip = package_of("blip-tiny").join("encoder.onnx");
        std::fs::copy(blip, p.join("encoder.onnx")).expect("copy");
    });
    check(
        &narrow,
        &[
            "cross_kv.onnx",
            "takes a memory 40 wide",
            "48-wide features",
        ],
    );
    let width = broken("width", &|p: &Path| {
        edit(p, "cross_width = 40", "cross_width = 64")
    });
    check(
        &width,
        &["decoder.cross_width = 64", "40 wide", "encoder.onnx"],
    );
    // No encoder graph.
    let missing = broken("missing", &|p: &Path| {
        std::fs::remove_file(p.join("encoder.onnx")).expect("rm")
    });
    check(&missing, &["encoder.onnx"]);
    // Fewer gated cross-attention layers in the manifest than the step graph takes.
    let cross = broken("cross", &|p: &Path| {
        edit(p, "cross_layers = 2", "cross_layers = 1")
    });
    check(
        &cross,
        &["decoder.onnx", "cross.1.key", "not in the manifest"],
    );
    // The image attention input without the token that opens it.
    let image = broken("image", &|p: &Path| {
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        let m: String = m
            .lines()
            .filter(|l| !l.starts_with("image_token_id"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(p.join("model.toml"), m).expect("write");
    });
    check(
        &image,
        &["decoder.image_attention", "prompt.image_token_id"],
    );
    // A template without the prompt.
    let template = broken("template", &|p: &Path| edit(p, "{prompt}", "{text}"));
    check(&template, &["prompt.template", "{prompt}"]);
    // A manifest that claims one cross key/value row per tile for a graph exported with one per
    // beam: valid to `models check`, refused at the first beam step in one line, nothing written.
    let rows = broken("rows", &|p: &Path| {
        edit(p, "[decoder]\n", "[decoder]\ncross_rows = \"item\"\n")
    });
    run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &rows,
            "--num-beams",
            "2",
            "--batch-size",
            "2",
            "--out",
            "o",
        ],
    )
    .fails_with(&[
        "decoder.onnx",
        "decoder.cross_rows = \"item\"",
        "4 decoder rows against 2 cross key/value rows",
    ]);
    assert!(!d.join("o").exists());

    // A prompt longer than the model's positions: refused before anything is written.
    let model = package().display().to_string();
    let prompt = "a satellite photo of the river next to a dense green forest ".repeat(6);
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
    assert!(!d.join("o").exists());
    assert!(walk(d)
        .iter()
        .all(|p| !p.to_string_lossy().contains(".tessera-tmp-")));
}
