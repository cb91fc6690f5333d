//! Qwen2-VL and Qwen2.5-VL (image-text decoder with M-RoPE positions) against Hugging Face:
//! tiny random exports of the real architectures (`export.py qwen2-vl|qwen2.5-vl --tiny`) whose
//! references come from the HF processor and `generate`. Token-for-token equality (greedy and
//! 3 beams, batch 1 and batches of tiles with different English and Chinese prompts); the M-RoPE
//! position ids, rope deltas, attention masks and image-token layout on their own against what
//! the HF processor and `generate` produced; `tessera caption` end to end; bad packages.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, run};
use ndarray::{Array2, Array4};
use serde_json::Value;
use tessera::models::decoder::{mrope_position_ids, DecoderModel};
use tessera::runtime::{Runtime, SessionOptions};

const PACKAGES: [&str; 2] = ["qwen2-vl-tiny", "qwen2.5-vl-tiny"];

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

fn ints2(v: &Value) -> Array2<i64> {
    let rows: Vec<Vec<i64>> = v
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_i64().expect("int"))
                .collect()
        })
        .collect();
    let (b, t) = (rows.len(), rows[0].len());
    Array2::from_shape_vec((b, t), rows.concat()).expect("matrix")
}

fn grid(r: &Value) -> [usize; 3] {
    let g: Vec<usize> = r["mrope"]["grid"]
        .as_array()
        .expect("grid")
        .iter()
        .map(|v| v.as_u64().expect("g") as usize)
        .collect();
    [g[0], g[1], g[2]]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("strings")
        .iter()
        .map(|s| s.as_str().expect("s").to_string())
        .collect()
}

/// The position ids HF `generate` fed its language model at the start step, and the rope
/// deltas of `get_rope_index`, equal what tessera computes from the processor's ids and mask;
/// the later steps continue from the last column.
#[test]
fn mrope_positions_equal_hugging_face() {
    for name in PACKAGES {
        let r = reference(name);
        let g = grid(&r);
        let image = r["image_token_id"].as_i64().expect("image id");
        let mut padded_seen = false;
        for case in r["mrope"]["cases"].as_array().expect("cases") {
            let case_name = case["name"].as_str().expect("name");
            let ids = ints2(&case["input_ids"]);
            let mask = ints2(&case["attention_mask"]);
            padded_seen |= mask.iter().any(|&m| m == 0);
            let (pos, deltas) = mrope_position_ids(&ids, &mask, image, g).expect("positions");
            let want = &case["position_ids"];
            for d in 0..3 {
                assert_eq!(
                    pos.slice(ndarray::s![d, .., ..]).to_owned(),
                    ints2(&want[d]),
                    "{name} {case_name}: M-RoPE row {d}"
                );
            }
            let want_deltas: Vec<i64> = case["rope_deltas"]
                .as_array()
                .expect("deltas")
                .iter()
                .map(|v| v.as_i64().expect("delta"))
                .collect();
            assert_eq!(deltas, want_deltas, "{name} {case_name}: rope deltas");
            // Steps: generate's last column + 1 per step, in each of the three rows.
            let t = ids.shape()[1];
            for (s, step) in case["step_position_ids"]
                .as_array()
                .expect("steps")
                .iter()
                .enumerate()
            {
                for d in 0..3 {
                    for (b, v) in step[d].as_array().expect("row").iter().enumerate() {
                        assert_eq!(
                            v.as_i64().expect("p"),
                            pos[[d, b, t - 1]] + 1 + s as i64,
                            "{name} {case_name}: step {s} row {d} item {b}"
                        );
                    }
                }
            }
        }
        assert!(
            padded_seen,
            "{name}: the references include a left-padded batch"
        );
    }
}

/// The image-token layout and the attention mask of the template equal the HF processor's
/// (chat template with one <|image_pad|> expanded by the processor to the grid's token count).
#[test]
fn prompt_layout_equals_the_processor() {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    for name in PACKAGES {
        let model =
            DecoderModel::load(rt, &package(name), &SessionOptions::default()).expect("model");
        let r = reference(name);
        let image = r["image_token_id"].as_i64().expect("image id");
        let tokens = r["image_tokens"].as_u64().expect("tokens") as usize;
        let mut chinese = false;
        for case in r["mrope"]["cases"].as_array().expect("cases") {
            let ids = ints2(&case["input_ids"]);
            let mask = ints2(&case["attention_mask"]);
            let types = ints2(&case["mm_token_type_ids"]);
            assert_eq!(
                types,
                ids.mapv(|v| i64::from(v == image)),
                "{name}: the processor's modality types are the image tokens"
            );
            let t = ids.shape()[1];
            for (k, p) in strings(&case["prompts"]).iter().enumerate() {
                chinese |= p.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
                let ours = model.prompt_ids(p).expect("ids");
                let pad = t - ours.len();
                let row: Vec<i64> = ids.row(k).to_vec();
                assert_eq!(&row[pad..], &ours[..], "{name}: ids of {p:?}");
                let m: Vec<i64> = mask.row(k).to_vec();
                let want: Vec<i64> = (0..t).map(|j| i64::from(j >= pad)).collect();
                assert_eq!(m, want, "{name}: left-padded attention mask of {p:?}");
                let run: Vec<usize> = (0..ours.len()).filter(|&j| ours[j] == image).collect();
                assert_eq!(run.len(), tokens, "{name}: image tokens of {p:?}");
                assert_eq!(
                    run[tokens - 1] - run[0] + 1,
                    tokens,
                    "one contiguous image run"
                );
            }
        }
        assert!(chinese, "{name}: the references include Chinese prompts");
    }
}

fn check_package(name: &str) {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let mut model =
        DecoderModel::load(rt, &package(name), &SessionOptions::default()).expect("model");
    let r = reference(name);
    let px = pixels(name, &r);
    let (mut beams_seen, mut batched_seen, mut eos_seen) = (false, false, false);
    for case in r["cases"].as_array().expect("cases") {
        let case_name = case["name"].as_str().expect("name");
        let images: Vec<usize> = case["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|v| v.as_u64().expect("i") as usize)
            .collect();
        let prompts = strings(&case["prompts"]);
        let g = &case["generation"];
        let params = crate::common::reference::generation_params(g);
        assert_eq!(g["early_stopping"], false);
        beams_seen |= params.num_beams == 3;
        batched_seen |= images.len() > 1 && prompts.iter().any(|p| p != &prompts[0]);
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
        for (k, tokens) in got.iter().enumerate() {
            let w: Vec<u32> = case["new_tokens"][k]
                .as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_u64().expect("t") as u32)
                .collect();
            eos_seen |= case["hit_eos"][k] == true;
            assert_eq!(tokens, &w, "{name} {case_name}: item {k} with {params:?}");
        }
    }
    assert!(
        beams_seen && batched_seen && eos_seen,
        "the references cover 3 beams, batches of different prompts and EOS"
    );
}

#[test]
fn qwen2_vl_generates_the_hugging_face_tokens() {
    check_package("qwen2-vl-tiny");
}

#[test]
fn qwen2_5_vl_generates_the_hugging_face_tokens() {
    check_package("qwen2.5-vl-tiny");
}

/// Greedy tokens of the single-image cases: (image, prompt) -> tokens.
fn greedy(r: &Value) -> Vec<(usize, String, Vec<u64>)> {
    r["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| {
            c["images"].as_array().is_some_and(|i| i.len() == 1)
                && c["generation"]["num_beams"] == 1
                && c["generation"]["repetition_penalty"] == 1.0
        })
        .map(|c| {
            (
                c["images"][0].as_u64().expect("i") as usize,
                c["prompts"][0].as_str().expect("p").to_string(),
                c["new_tokens"][0]
                    .as_array()
                    .expect("t")
                    .iter()
                    .map(|v| v.as_u64().expect("t"))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn caption_command_matches_the_references() {
    for name in PACKAGES {
        let r = reference(name);
        let dir = tempfile::tempdir().expect("tempdir");
        let pkg = package(name);
        let model = pkg.display().to_string();
        // The references' single-image prompt (Chinese for qwen2-vl-tiny, English for qwen2.5-vl-tiny).
        let prompt = &r["cases"][0]["prompts"][0].as_str().expect("p").to_string();
        let picks = [0usize, 1, 2, 3];
        let scene = "scene.tif".to_string();
        common::reference::block_scene(&pkg, &dir.path().join(&scene), 4, 1, |_, c| picks[c]);
        let out = "out".to_string();
        let res = run(
            dir.path(),
            &[
                "caption",
                &scene,
                "--model",
                &model,
                "--prompt",
                prompt,
                "--max-new-tokens",
                "12",
                "--batch-size",
                "4",
                "--out",
                &out,
                "--json",
                "--quiet",
            ],
        );
        let j = res.success().json();
        assert_eq!(j["tiles_captioned"], 4, "{}", res.context());
        let jsonl =
            std::fs::read_to_string(dir.path().join(&out).join("captions.jsonl")).expect("jsonl");
        let mut checked = 0;
        for l in jsonl
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("line"))
        {
            let img = picks[l["col"].as_u64().expect("c") as usize];
            for (i, p, want) in greedy(&r) {
                if i == img && p == *prompt {
                    let got: Vec<u64> = l["tokens"]
                        .as_array()
                        .expect("tokens")
                        .iter()
                        .map(|v| v.as_u64().expect("t"))
                        .collect();
                    assert_eq!(got, want, "{name}: tile of image {img}, prompt {p:?}");
                    checked += 1;
                }
            }
        }
        assert!(
            checked >= 3,
            "{name}: three tiles checked against the references"
        );
    }
}

#[test]
fn bad_mrope_packages_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pkg = package("qwen2-vl-tiny");
    common::reference::block_scene(&pkg, &d.join("scene.tif"), 1, 1, |_, _| 0);
    let broken = |name: &str, from: &str, to: &str| -> String {
        let p = d.join(name);
        copy_dir(&pkg, &p);
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        assert!(m.contains(from), "manifest has {from}");
        std::fs::write(p.join("model.toml"), m.replacen(from, to, 1)).expect("write");
        p.display().to_string()
    };
    // The image token count disagrees with the tile grid.
    let g = broken("grid", "mrope_grid = [1, 4, 4]", "mrope_grid = [1, 4, 3]");
    run(d, &["caption", "scene.tif", "--model", &g, "--out", "o1"]).fails_with(&[
        "grid: invalid model package",
        "mrope_grid [1, 4, 3] holds 12 image tokens",
    ]);
    assert!(!d.join("o1").exists());
    let t = broken("tokens", "tokens = 16", "tokens = 12");
    run(d, &["caption", "scene.tif", "--model", &t, "--out", "o2"])
        .fails_with(&["image.tokens is 12", "disagrees with its tile grid"]);
    assert!(!d.join("o2").exists());
    // M-RoPE without its grid; an unknown position rule.
    let n = broken("nogrid", "mrope_grid = [1, 4, 4]", "");
    run(d, &["caption", "scene.tif", "--model", &n]).fails_with(&["needs decoder.mrope_grid"]);
    let u = broken("rule", "positions = \"mrope\"", "positions = \"alibi\"");
    run(d, &["caption", "scene.tif", "--model", &u]).fails_with(&["decoder.positions is 'alibi'"]);
    // A linear-position manifest on the M-RoPE decoder graph: its [3,B,T] input is refused.
    let l = broken("linear", "positions = \"mrope\"", "positions = \"linear\"");
    run(d, &["caption", "scene.tif", "--model", &l])
        .fails_with(&["mrope_grid is only for decoder.positions = \"mrope\""]);
    let l2 = broken("nopos", "positions = \"mrope\"", "");
    let m = std::fs::read_to_string(Path::new(&l2).join("model.toml")).expect("read");
    std::fs::write(
        Path::new(&l2).join("model.toml"),
        m.replacen("mrope_grid = [1, 4, 4]", "", 1),
    )
    .expect("write");
    run(d, &["caption", "scene.tif", "--model", &l2])
        .fails_with(&["takes M-RoPE position ids [3, B, T]"]);
}
