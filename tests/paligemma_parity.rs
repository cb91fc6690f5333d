//! PaliGemma (SigLIP + Gemma, prefix-LM) on the image-text decoder against Hugging Face:
//! a tiny random `PaliGemmaForConditionalGeneration` exported by `export.py paligemma --tiny`
//! (sample_data/models/paligemma-tiny), references from HF `generate` with the
//! `token_type_ids` of HF's `PaliGemmaProcessor`. Token-for-token equality (greedy, 3 beams,
//! batches of different prompts); the image-token layout and the prefix-LM mask on their own
//! against the processor's outputs; `tessera caption` end to end; bad packages.

mod common;
#[path = "common/prefix_decoder.rs"]
mod prefix_decoder;

use std::path::{Path, PathBuf};

use common::reference::{block_scene, ints, strings};
use common::{copy_dir, run};
use ndarray::{Array2, Array3, Array4};
use serde_json::Value;
use tessera::models::decoder::{DecoderModel, GenerationParams};
use tessera::runtime::{create_session, Runtime, SessionOptions};

const NAME: &str = "paligemma-tiny";

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

fn pixels(r: &Value) -> Array4<f32> {
    let shape: Vec<usize> = ints(&r["pixels_f32"]["shape"])
        .into_iter()
        .map(|d| d as usize)
        .collect();
    let bytes = std::fs::read(package().join("reference/pixels_f32.bin")).expect("pixels");
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data).expect("array")
}

fn batch_of(px: &Array4<f32>, images: &[usize]) -> Array4<f32> {
    let mut b = Array4::<f32>::zeros((images.len(), px.shape()[1], px.shape()[2], px.shape()[3]));
    for (k, &i) in images.iter().enumerate() {
        b.slice_mut(ndarray::s![k, .., .., ..])
            .assign(&px.slice(ndarray::s![i, .., .., ..]));
    }
    b
}

fn rows(v: &Value) -> Vec<Vec<i64>> {
    v.as_array().expect("rows").iter().map(ints).collect()
}

fn load() -> DecoderModel {
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    DecoderModel::load(rt, &package(), &SessionOptions::default()).expect("model")
}

#[test]
fn fixture_is_small_and_prefix_lm() {
    let total: u64 = common::walk(&package())
        .iter()
        .filter(|p| p.is_file())
        .map(|p| p.metadata().expect("meta").len())
        .sum();
    assert!(total < 3 << 20, "{total} bytes");
    let m = std::fs::read_to_string(package().join("model.toml")).expect("manifest");
    assert!(m.contains("prefix_mask = \"prefix_mask\""), "{m}");
    let r = reference();
    assert_eq!(r["architecture"], "paligemma-gemma");
    assert_eq!(
        r["degeneracy_check"]["ok"], true,
        "{}",
        r["degeneracy_check"]
    );
}

/// tessera's left-padded prompt ids for `prompts`, and their attention mask.
fn padded(model: &DecoderModel, prompts: &[String], pad: i64) -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
    let ours: Vec<Vec<i64>> = prompts
        .iter()
        .map(|q| model.prompt_ids(q).expect("ids"))
        .collect();
    let len = ours.iter().map(Vec::len).max().expect("len");
    let mut ids = Vec::new();
    let mut masks = Vec::new();
    for row in &ours {
        let off = len - row.len();
        let mut r = vec![pad; off];
        r.extend(row);
        ids.push(r);
        masks.push((0..len).map(|t| i64::from(t >= off)).collect());
    }
    (ids, masks)
}

/// The prompt layout tessera builds (template `{image}<bos>{prompt}\n`, left padding) is the
/// processor's `input_ids` / `attention_mask` exactly: P image tokens, `<bos>`, the prompt.
#[test]
fn image_tokens_equal_the_hf_processor() {
    let model = load();
    let r = reference();
    let pad = r["pad_token_id"].as_i64().expect("pad");
    let image = r["image_token_id"].as_i64().expect("image");
    let bos = r["bos_token_id"].as_i64().expect("bos");
    let p = r["image_tokens"].as_u64().expect("P") as usize;
    let mut padded_seen = false;
    for case in r["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let (ids, masks) = padded(&model, &strings(&case["prompts"]), pad);
        assert_eq!(ids, rows(&case["input_ids"]), "{name}: input_ids");
        assert_eq!(
            masks,
            rows(&case["attention_mask"]),
            "{name}: attention_mask"
        );
        for (row, mask) in ids.iter().zip(&masks) {
            let off = mask.iter().position(|&m| m == 1).expect("tokens");
            padded_seen |= off > 0;
            let row = &row[off..];
            assert!(row[..p].iter().all(|&t| t == image), "{name}: {row:?}");
            assert_eq!(row[p], bos, "{name}: <bos> after the image tokens");
            assert!(!row[p + 1..].contains(&image));
        }
        let checks = &case["checks"];
        assert!(
            checks["template_ids_equal_processor_ids_without_padding"] == true
                && checks["template_layout_generate_equal"] == true,
            "{name}: {checks}"
        );
    }
    assert!(padded_seen, "the references cover left padding");
}

/// The prefix-LM mask on its own, against the processor's `token_type_ids`: the prefix mask
/// tessera feeds at the start step (its attention mask over the padded prompt) is 1 exactly
/// where the processor's `token_type_ids` are 0 on real tokens; HF's mask from those
/// `token_type_ids` is the graph's rule (checked at export), and HF `generate` without them
/// (causal) gives other tokens, which the package does not.
#[test]
fn the_prefix_mask_is_the_processor_token_type_ids() {
    let model = load();
    let r = reference();
    let pl = &r["prefix_lm"];
    let pad = r["pad_token_id"].as_i64().expect("pad");
    let (ids, masks) = padded(&model, &strings(&pl["prompts"]), pad);
    assert_eq!(ids, rows(&pl["input_ids"]));
    assert_eq!(masks, rows(&pl["attention_mask"]));
    let tt = rows(&pl["token_type_ids"]);
    let from_processor: Vec<Vec<i64>> = masks
        .iter()
        .zip(&tt)
        .map(|(m, t)| {
            m.iter()
                .zip(t)
                .map(|(&m, &t)| i64::from(m == 1 && t == 0))
                .collect()
        })
        .collect();
    assert_eq!(
        from_processor, masks,
        "every real prompt token is in the prefix"
    );
    assert_eq!(rows(&pl["prefix_mask"]), masks);
    assert_eq!(pl["additive_mask_equal_hf_create_causal_mask"], true);
    assert!(pl["processor_pixels_max_abs_diff"].as_f64().expect("diff") < 1e-6);
    let with = rows(&pl["generate_with_token_type_ids"]);
    assert_ne!(with, rows(&pl["generate_without_token_type_ids"]));
    // tessera's tokens are the prefix-LM ones (8 new tokens; HF pads finished rows with <pad>).
    let mut model = model;
    let px = pixels(&r);
    let p = GenerationParams {
        max_new_tokens: 8,
        min_new_tokens: 0,
        num_beams: 1,
        repetition_penalty: 1.0,
        length_penalty: 1.0,
        ..GenerationParams::default()
    };
    let got = model
        .generate(
            batch_of(&px, &[0, 1, 2]).view(),
            &strings(&pl["prompts"]),
            &p,
        )
        .expect("generate");
    for (g, w) in got.iter().zip(&with) {
        let g: Vec<i64> = g.iter().map(|&t| i64::from(t)).collect();
        assert_eq!(g[..], w[..g.len()]);
        assert!(w[g.len()..].iter().all(|&t| t == pad));
    }
}

/// The decoder graph alone, fed the processor's ids: with the prefix mask it gives HF's
/// first-step logits; fed a causal (all-zero) prefix mask it does not, so the mask input is
/// what makes the prefix bidirectional.
#[test]
fn the_prefix_mask_input_gives_hf_first_step_logits() {
    let r = reference();
    let rt = Runtime::load(None).expect("ONNX Runtime");
    let o = SessionOptions::default();
    let mut prefix = create_session(rt, &package().join("image_prefix.onnx"), &o).expect("prefix");
    let mut embed = create_session(rt, &package().join("embed_tokens.onnx"), &o).expect("embed");
    let mut decoder = create_session(rt, &package().join("decoder.onnx"), &o).expect("decoder");
    let case = &r["cases"][0];
    assert_eq!(case["name"], r["first_step_logits"]["case"]);
    let ids = rows(&case["input_ids"]);
    let t = ids[0].len();
    let ids = Array2::from_shape_vec((1, t), ids[0].clone()).expect("ids");
    let px = batch_of(
        &pixels(&r),
        &[case["images"][0].as_u64().expect("i") as usize],
    );
    let pre = {
        let input = ort::value::TensorRef::from_array_view(px.view()).expect("px");
        let out = prefix
            .session
            .run(ort::inputs!["pixel_values" => input])
            .expect("run");
        out["prefix_embeds"]
            .try_extract_array::<f32>()
            .expect("f32")
            .into_dimensionality::<ndarray::Ix3>()
            .expect("3d")
            .to_owned()
    };
    let mut emb: Array3<f32> = {
        let input = ort::value::TensorRef::from_array_view(ids.view()).expect("ids");
        let out = embed
            .session
            .run(ort::inputs!["input_ids" => input])
            .expect("run");
        out["inputs_embeds"]
            .try_extract_array::<f32>()
            .expect("f32")
            .into_dimensionality::<ndarray::Ix3>()
            .expect("3d")
            .to_owned()
    };
    let image = r["image_token_id"].as_i64().expect("image");
    let mut k = 0;
    for j in 0..t {
        if ids[[0, j]] == image {
            emb.slice_mut(ndarray::s![0, j, ..])
                .assign(&pre.slice(ndarray::s![0, k, ..]));
            k += 1;
        }
    }
    let mask = Array2::<i64>::ones((1, t));
    let pos = Array2::from_shape_vec((1, t), (0..t as i64).collect()).expect("pos");
    let m: toml::Table =
        toml::from_str(&std::fs::read_to_string(package().join("model.toml")).expect("manifest"))
            .expect("toml");
    let layers = m["decoder"]["layers"].as_integer().expect("layers") as usize;
    let kv = m["decoder"]["kv_heads"].as_integer().expect("kv") as usize;
    let hd = m["decoder"]["head_dim"].as_integer().expect("hd") as usize;
    let want: Vec<f32> = r["first_step_logits"]["logits"]
        .as_array()
        .expect("logits")
        .iter()
        .map(|v| v.as_f64().expect("f") as f32)
        .collect();
    let mut last_logits = |prefix_mask: Array2<i64>| -> Vec<f32> {
        let mut inputs: Vec<(String, ort::value::DynValue)> = vec![
            (
                "inputs_embeds".into(),
                ort::value::Tensor::from_array(emb.clone())
                    .expect("t")
                    .into_dyn(),
            ),
            (
                "attention_mask".into(),
                ort::value::Tensor::from_array(mask.clone())
                    .expect("t")
                    .into_dyn(),
            ),
            (
                "position_ids".into(),
                ort::value::Tensor::from_array(pos.clone())
                    .expect("t")
                    .into_dyn(),
            ),
            (
                "prefix_mask".into(),
                ort::value::Tensor::from_array(prefix_mask)
                    .expect("t")
                    .into_dyn(),
            ),
        ];
        for i in 0..layers {
            for kind in ["key", "value"] {
                inputs.push((
                    format!("past_key_values.{i}.{kind}"),
                    ort::value::Tensor::from_array(([1, kv, 0, hd], Vec::<f32>::new()))
                        .expect("t")
                        .into_dyn(),
                ));
            }
        }
        let out = decoder.session.run(inputs).expect("decoder");
        let l = out["logits"].try_extract_array::<f32>().expect("logits");
        // the last position: [1, T, V] from older exports, [1, 1, V] from newer ones
        let last = l.shape()[1] - 1;
        l.slice(ndarray::s![0, last, ..]).to_vec()
    };
    let scale = want.iter().fold(1.0f32, |a, &b| a.max(b.abs()));
    let err = |got: &[f32]| {
        got.iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
            / scale
    };
    let prefix_lm = err(&last_logits(mask.clone()));
    assert!(prefix_lm < 1e-4, "prefix-LM logits off by {prefix_lm}");
    let causal = err(&last_logits(Array2::zeros((1, t))));
    assert!(
        causal > 1e-2,
        "a causal mask should change the logits ({causal})"
    );
}

#[test]
fn paligemma_generates_the_pytorch_tokens() {
    let (greedy, beams, batched) = prefix_decoder::check_generate(&package());
    assert!(
        beams > 0 && batched && greedy + beams >= 8,
        "{greedy} {beams} {batched}"
    );
}

#[test]
fn caption_command_gives_the_reference_tokens() {
    let r = reference();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // 2 x 2 tiles: reference images 0, 1 / 2, 3.
    block_scene(&package(), &d.join("scene.tif"), 2, 2, |row, col| {
        row * 2 + col
    });
    let mut greedy = std::collections::BTreeMap::new();
    for case in r["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        if name.starts_with("greedy_img") {
            let img = case["images"][0].as_u64().expect("i") as usize;
            greedy.insert(img, ints(&case["new_tokens"][0]));
        }
    }
    let prompt = r["cases"][0]["prompts"][0].as_str().expect("prompt");
    let pkg = package().display().to_string();
    let j = run(
        d,
        &[
            "caption",
            "scene.tif",
            "--model",
            &pkg,
            "--prompt",
            prompt,
            "--max-new-tokens",
            "12",
            "--batch-size",
            "3",
            "--out",
            "out",
            "--json",
            "--quiet",
        ],
    )
    .success()
    .json();
    assert_eq!(j["tiles_captioned"], 4);
    let jsonl = std::fs::read_to_string(d.join("out/captions.jsonl")).expect("jsonl");
    let mut checked = 0;
    for l in jsonl.lines() {
        let l: Value = serde_json::from_str(l).expect("line");
        let img =
            l["row"].as_u64().expect("r") as usize * 2 + l["col"].as_u64().expect("c") as usize;
        if let Some(want) = greedy.get(&img) {
            assert_eq!(&ints(&l["tokens"]), want, "tile of image {img}");
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked} tiles checked");
}

/// A broken copy of the package: its name, the edit, what the error must say.
type Breakage<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>, Vec<&'a str>);

/// Bad packages: `models check` lists the problem, `caption` fails with one line naming it
/// and writes nothing.
#[test]
fn bad_paligemma_packages_fail_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    block_scene(&package(), &d.join("scene.tif"), 2, 1, |_, col| col);
    let edit = |from: &'static str, to: &'static str| {
        move |p: &Path| {
            let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
            assert!(m.contains(from), "manifest has {from}");
            std::fs::write(p.join("model.toml"), m.replacen(from, to, 1)).expect("write");
        }
    };
    let blip2_prefix = |p: &Path| {
        // BLIP-2's 32-wide image prefix in place of PaliGemma's 64-wide projector.
        let other = package().join("../blip2-tiny/image_prefix.onnx");
        std::fs::copy(other, p.join("image_prefix.onnx")).expect("copy");
    };
    let cases: Vec<Breakage> = vec![
        (
            "no-image-placeholder",
            Box::new(edit(
                "template = \"{image}<bos>{prompt}\\n\"",
                "template = \"<bos>{prompt}\\n\"",
            )),
            vec!["prompt.template must contain {image}"],
        ),
        (
            "width",
            Box::new(blip2_prefix),
            vec!["hidden sizes disagree", "image prefix output is 32"],
        ),
        (
            "prefix-mask-name",
            Box::new(edit(
                "prefix_mask = \"prefix_mask\"",
                "prefix_mask = \"token_type_ids\"",
            )),
            vec!["decoder has no input 'token_type_ids'"],
        ),
        (
            // Without the key the graph's prefix_mask input would be unfed: refused, not run
            // causally.
            "prefix-mask-missing",
            Box::new(edit("prefix_mask = \"prefix_mask\"", "")),
            vec!["decoder inputs prefix_mask are not in the manifest"],
        ),
    ];
    for (name, broke, needles) in cases {
        let p = d.join(name);
        copy_dir(&package(), &p);
        broke(&p);
        let pkg = p.display().to_string();
        let res = run(d, &["models", "check", &pkg, "--json"]);
        assert_eq!(res.output.status.code(), Some(1), "{name}{}", res.context());
        let problems = strings(&res.json()["problems"]);
        assert!(
            problems
                .iter()
                .any(|q| needles.iter().all(|n| q.contains(n))),
            "{name}: a problem mentions {needles:?}: {problems:?}"
        );
        let out = format!("out-{name}");
        run(d, &["caption", "scene.tif", "--model", &pkg, "--out", &out]).fails_with(&needles);
        assert!(!d.join(&out).exists(), "{name}: nothing written");
    }
}
