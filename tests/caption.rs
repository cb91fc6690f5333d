//! The image-text decoder against PyTorch `generate`: tiny BLIP-2 (OPT) and LLaVA (Llama)
//! exports with references computed by Hugging Face transformers. Token-for-token equality,
//! greedy and beam search, batch of 1 and batches of prompts of different lengths; then
//! `tessera caption` end to end, and its bad inputs.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, run, walk};
use ndarray::Array4;
use serde_json::Value;
use tessera::models::decoder::{DecoderModel, GenerationParams};
use tessera::runtime::{Runtime, SessionOptions};

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
    let shape: Vec<usize> = r["pixels_f32"]["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("d") as usize)
        .collect();
    let bytes = std::fs::read(package(name).join("reference/pixels_f32.bin")).expect("pixels");
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data).expect("array")
}

fn as_json(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).expect("embedded json"),
        other => other.clone(),
    }
}

fn check_package(name: &str) {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let mut model =
        DecoderModel::load(rt, &package(name), &SessionOptions::default()).expect("model");
    let r = reference(name);
    let px = pixels(name, &r);
    let mut beams_seen = false;
    let mut batched_seen = false;
    for case in r["cases"].as_array().expect("cases") {
        let case_name = case["name"].as_str().expect("name");
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
        let g = as_json(&case["generation"]);
        let params: GenerationParams = common::reference::generation_params(&g);
        assert_eq!(
            g["early_stopping"], false,
            "{case_name}: the runner implements early_stopping=False"
        );
        beams_seen |= params.num_beams > 1;
        batched_seen |= images.len() > 1;
        let mut batch =
            Array4::<f32>::zeros((images.len(), px.shape()[1], px.shape()[2], px.shape()[3]));
        for (k, &i) in images.iter().enumerate() {
            batch
                .slice_mut(ndarray::s![k, .., .., ..])
                .assign(&px.slice(ndarray::s![i, .., .., ..]));
        }
        // The prompt ids the template builds equal the ones fed to PyTorch (padding removed).
        let want_ids = as_json(&case["template_input_ids"]);
        let want_mask = as_json(&case["template_attention_mask"]);
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
            assert_eq!(ids, row, "{name} {case_name}: prompt ids of item {k}");
        }
        let got = model
            .generate(batch.view(), &prompts, &params)
            .expect("generate");
        let want = as_json(&case["new_tokens"]);
        for (k, tokens) in got.iter().enumerate() {
            let w: Vec<u32> = want[k]
                .as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_u64().expect("t") as u32)
                .collect();
            assert_eq!(tokens, &w, "{name} {case_name}: item {k} with {params:?}");
        }
    }
    assert!(
        beams_seen && batched_seen,
        "the references cover beams and batches"
    );
}

#[test]
fn blip2_generates_the_pytorch_tokens() {
    check_package("blip2-tiny");
}

#[test]
fn llava_generates_the_pytorch_tokens() {
    check_package("llava-tiny");
}

/// `kv_cache = "in-place"` (the same tiny models, exported with `--kv-cache in-place`): right
/// padded prompts, one buffer per cache written in place by GroupQueryAttention; the tokens of
/// the same Hugging Face references.
#[test]
fn in_place_key_value_caches_generate_the_pytorch_tokens() {
    check_package("blip2-tiny-in-place");
    check_package("llava-tiny-in-place");
}

/// A georeferenced scene whose `cols x rows` tiles are the reference images of package
/// `name`; the image index of each tile.
fn block_scene(name: &str, path: &Path, cols: usize, rows: usize) -> Vec<usize> {
    common::reference::mapped_block_scene(&package(name), path, cols, rows, |k, n| k % n)
}

#[test]
fn caption_command_writes_tile_and_scene_captions() {
    let name = "blip2-tiny";
    let r = reference(name);
    let dir = tempfile::tempdir().expect("tempdir");
    let pick = block_scene(name, &dir.path().join("scene.tif"), 3, 2);
    let model = package(name).display().to_string();
    // Greedy references with the empty prompt, by image.
    let mut greedy: std::collections::BTreeMap<usize, Vec<u64>> = Default::default();
    for case in r["cases"].as_array().expect("cases") {
        let g = as_json(&case["generation"]);
        let images = case["images"].as_array().expect("images");
        if images.len() == 1
            && g["num_beams"] == 1
            && g["repetition_penalty"] == 1.0
            && case["prompts"][0] == ""
        {
            let toks = as_json(&case["new_tokens"])[0]
                .as_array()
                .expect("t")
                .iter()
                .map(|v| v.as_u64().expect("t"))
                .collect();
            greedy.insert(images[0].as_u64().expect("i") as usize, toks);
        }
    }
    let res = run(
        dir.path(),
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
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
    assert!(j["scene_caption"].is_string());
    let jsonl = std::fs::read_to_string(dir.path().join("out/captions.jsonl")).expect("jsonl");
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    assert_eq!(lines.len(), 6);
    let mut checked = 0;
    for l in &lines {
        let (row, col) = (
            l["row"].as_u64().expect("r") as usize,
            l["col"].as_u64().expect("c") as usize,
        );
        let img = pick[row * 3 + col];
        if let Some(want) = greedy.get(&img) {
            let got: Vec<u64> = l["tokens"]
                .as_array()
                .expect("tokens")
                .iter()
                .map(|v| v.as_u64().expect("t"))
                .collect();
            assert_eq!(&got, want, "tile r{row}c{col} (image {img})");
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "at least three tiles checked against references"
    );
    // The tile layer carries the same captions; the scene layer has one feature.
    let ds = gdal::Dataset::open(dir.path().join("out/tiles.gpkg")).expect("tiles");
    use gdal::vector::LayerAccess;
    let mut layer = ds.layer(0).expect("layer");
    assert_eq!(layer.feature_count(), 6);
    for f in layer.features() {
        let id = f
            .field_as_string(f.field_index("tile_id").expect("idx"))
            .expect("f")
            .expect("id");
        let cap = f
            .field_as_string(f.field_index("caption").expect("idx"))
            .expect("f")
            .unwrap_or_default();
        let line = lines
            .iter()
            .find(|l| l["tile_id"] == id.as_str())
            .expect("line");
        assert_eq!(line["caption"].as_str().expect("caption"), cap);
    }
    let scene = gdal::Dataset::open(dir.path().join("out/scene.gpkg")).expect("scene");
    assert_eq!(scene.layer(0).expect("layer").feature_count(), 1);

    // Beam search through the CLI, and a Shapefile whose long captions (forced by
    // --min-new-tokens) go to a CSV sidecar in full, while the layer keeps 254 bytes.
    let llava = package("llava-tiny").display().to_string();
    block_scene("llava-tiny", &dir.path().join("llava.tif"), 2, 1);
    let res = run(
        dir.path(),
        &[
            "caption",
            "llava.tif",
            "--model",
            &llava,
            "--num-beams",
            "2",
            "--max-new-tokens",
            "220",
            "--min-new-tokens",
            "210",
            "--format",
            "shp",
            "--out",
            "shp",
            "--json",
            "--quiet",
        ],
    );
    res.success();
    let csv = std::fs::read_to_string(dir.path().join("shp/captions.csv")).expect("sidecar csv");
    assert!(
        csv.starts_with("tile_id,caption\n") && csv.lines().count() >= 2,
        "{csv}"
    );
    let jsonl = std::fs::read_to_string(dir.path().join("shp/captions.jsonl")).expect("jsonl");
    let ds = gdal::Dataset::open(dir.path().join("shp/tiles.shp")).expect("shp");
    let mut layer = ds.layer(0).expect("layer");
    for f in layer.features() {
        let cap = f
            .field_as_string(f.field_index("caption").expect("idx"))
            .expect("f")
            .unwrap_or_default();
        assert!(cap.len() <= 254);
        let id = f
            .field_as_string(f.field_index("tile_id").expect("idx"))
            .expect("f")
            .expect("id");
        let full: Value = jsonl
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("json"))
            .find(|l| l["tile_id"] == id.as_str())
            .expect("line");
        let full = full["caption"].as_str().expect("caption");
        assert!(
            full.len() > 254 && full.starts_with(cap.trim_end()),
            "shp keeps a prefix of the full caption"
        );
        assert!(csv.contains(&id));
    }
}

#[test]
fn caption_bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    block_scene("llava-tiny", &d.join("scene.tif"), 2, 1);
    let model = package("llava-tiny").display().to_string();
    let broken = |name: &str, edit: &dyn Fn(&Path)| -> String {
        let p = d.join(name);
        copy_dir(&package("llava-tiny"), &p);
        edit(&p);
        p.display().to_string()
    };
    let edit_manifest = |from: &'static str, to: &'static str| {
        move |p: &Path| {
            let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
            assert!(m.contains(from), "manifest has {from}");
            std::fs::write(p.join("model.toml"), m.replacen(from, to, 1)).expect("write");
        }
    };
    // Missing past-key-value layers: the manifest claims one layer, the graph has two.
    let layers = broken("layers", &edit_manifest("layers = 2", "layers = 1"));
    run(d, &["caption", "scene.tif", "--model", &layers])
        .fails_with(&["past_key_values.1.key", "not in the manifest"]);
    let layers3 = broken("layers3", &edit_manifest("layers = 2", "layers = 3"));
    run(d, &["caption", "scene.tif", "--model", &layers3])
        .fails_with(&["decoder has no input 'past_key_values.2.key'"]);
    // Decoder and encoder that do not belong together.
    let hidden = broken("hidden", &|p: &Path| {
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        let h = m
            .lines()
            .find(|l| l.starts_with("hidden"))
            .expect("hidden line")
            .to_string();
        std::fs::write(p.join("model.toml"), m.replace(&h, "hidden = 4096")).expect("write");
    });
    run(d, &["caption", "scene.tif", "--model", &hidden]).fails_with(&["hidden sizes disagree"]);
    // Key/value cache layouts that do not match the graph.
    let in_place = |name: &str, from: &str, to: &str| -> String {
        let p = d.join(name);
        copy_dir(&package("llava-tiny-in-place"), &p);
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        assert!(m.contains(from), "manifest has {from}");
        std::fs::write(p.join("model.toml"), m.replacen(from, to, 1)).expect("write");
        p.display().to_string()
    };
    for (pkg, needles) in [
        (
            in_place("no_lengths", "sequence_lengths = \"seqlens_k\"", ""),
            &["decoder.sequence_lengths is required"][..],
        ),
        (
            in_place("claims_concat", "kv_cache = \"in-place\"", ""),
            &["decoder.attention_mask is required"][..],
        ),
        (
            broken(
                "claims_in_place",
                &edit_manifest("[decoder]\n", "[decoder]\nkv_cache = \"in-place\"\n"),
            ),
            &[
                "decoder.sequence_lengths is required",
                "decoder inputs attention_mask are not in the manifest",
            ][..],
        ),
    ] {
        run(d, &["caption", "scene.tif", "--model", &pkg, "--out", "o"]).fails_with(needles);
        assert!(!d.join("o").exists());
    }
    // A tokenizer without the image token.
    let tok = broken(
        "tok",
        &edit_manifest("image_token = \"<image>\"", "image_token = \"<img>\""),
    );
    run(d, &["caption", "scene.tif", "--model", &tok]).fails_with(&["no image token '<img>'"]);
    // A prompt longer than the context.
    let ctx = broken("ctx", &|p: &Path| {
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        let line = m
            .lines()
            .find(|l| l.starts_with("max_positions"))
            .expect("max_positions")
            .to_string();
        std::fs::write(p.join("model.toml"), m.replace(&line, "max_positions = 40"))
            .expect("write");
    });
    run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &ctx,
            "--prompt",
            "describe every field road and building in this satellite image please",
            "--out",
            "o",
        ],
    )
    .fails_with(&["exceeds the model's context of 40"]);
    assert!(!d.join("o").exists());
    // Within the context it works; too many new tokens for the real context is refused too.
    run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--max-new-tokens",
            "300",
        ],
    )
    .fails_with(&["exceeds the model's context of 256"]);
    // No CUDA in the CPU build of ONNX Runtime: a clear error, or the reported fallback.
    run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--device",
            "cuda",
        ],
    )
    .fails_with(&["CUDAExecutionProvider", "--allow-fallback"]);
    let j = run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--device",
            "cuda",
            "--allow-fallback",
            "--scene-only",
            "--json",
            "--quiet",
        ],
    )
    .success()
    .json();
    assert_eq!(j["provider"], "CPUExecutionProvider");
    assert!(j["fallback"]
        .as_str()
        .is_some_and(|f| f.contains("CUDAExecutionProvider")));
    // Bad generation settings and windows.
    run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--num-beams",
            "0",
        ],
    )
    .fails_with(&["--num-beams"]);
    run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--scene-window",
            "0,0,999,5",
        ],
    )
    .fails_with(&["--scene-window"]);
    assert!(walk(d)
        .iter()
        .all(|p| !p.to_string_lossy().contains(".tessera-tmp-")));
}
