//! SmolVLM (Idefics3 layout: SigLIP, pixel-shuffle connector, SmolLM2 / Llama decoder) on the
//! image-text decoder against Hugging Face: a tiny random `Idefics3ForConditionalGeneration`
//! exported by `export.py smolvlm --tiny` (sample_data/models/smolvlm-tiny), references from
//! HF `generate` on the inputs of HF's `Idefics3Processor` (image splitting off). Token-for-token
//! equality (greedy, 3 beams, batches of different prompts); the image-token layout on its own
//! against the processor's output; the decoder's first-step logits; `tessera caption` end to
//! end; bad packages.

mod common;
#[path = "common/prefix_decoder.rs"]
mod prefix_decoder;

use std::path::{Path, PathBuf};

use common::reference::{block_scene, ints, strings};
use common::{copy_dir, run};
use ndarray::{Array2, Array3, Array4};
use serde_json::Value;
use tessera::models::decoder::DecoderModel;
use tessera::runtime::{create_session, Runtime, SessionOptions};

const NAME: &str = "smolvlm-tiny";

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
fn fixture_is_small_and_not_degenerate() {
    let total: u64 = common::walk(&package())
        .iter()
        .filter(|p| p.is_file())
        .map(|p| p.metadata().expect("meta").len())
        .sum();
    assert!(total < 3 << 20, "{total} bytes");
    let r = reference();
    assert_eq!(r["architecture"], "smolvlm-llama");
    assert_eq!(
        r["degeneracy_check"]["ok"], true,
        "{}",
        r["degeneracy_check"]
    );
}

/// The prompt layout tessera builds from the manifest's template (left padding) is the
/// `input_ids` / `attention_mask` of HF's `Idefics3Processor` on SmolVLM's chat template:
/// `<|im_start|>User:`, `<fake_token_around_image><global-img>`, P image tokens,
/// `<fake_token_around_image>`, the prompt, `<end_of_utterance>\nAssistant:`.
#[test]
fn image_tokens_equal_the_hf_processor() {
    let model = load();
    let r = reference();
    let pad = r["pad_token_id"].as_i64().expect("pad");
    let image = r["image_token_id"].as_i64().expect("image");
    let p = r["image_tokens"].as_u64().expect("P") as usize;
    let tok =
        tokenizers::Tokenizer::from_file(package().join("tokenizer.json")).expect("tokenizer");
    let id = |t: &str| i64::from(tok.token_to_id(t).expect(t));
    let (fake, global) = (id("<fake_token_around_image>"), id("<global-img>"));
    let mut padded_seen = false;
    for case in r["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let prompts = strings(&case["prompts"]);
        let want_ids = rows(&case["input_ids"]);
        let want_mask = rows(&case["attention_mask"]);
        let ours: Vec<Vec<i64>> = prompts
            .iter()
            .map(|q| model.prompt_ids(q).expect("ids"))
            .collect();
        let len = ours.iter().map(Vec::len).max().expect("len");
        assert_eq!(len, want_ids[0].len(), "{name}: padded length");
        for (k, row) in ours.iter().enumerate() {
            let off = len - row.len();
            padded_seen |= off > 0;
            let mut ids = vec![pad; off];
            ids.extend(row);
            let mask: Vec<i64> = (0..len).map(|t| i64::from(t >= off)).collect();
            assert_eq!(ids, want_ids[k], "{name}: input_ids of item {k}");
            assert_eq!(mask, want_mask[k], "{name}: attention_mask of item {k}");
            let first = row.iter().position(|&t| t == image).expect("image tokens");
            assert!(
                row[first..first + p].iter().all(|&t| t == image),
                "{name}: {row:?}"
            );
            assert_eq!(row.iter().filter(|&&t| t == image).count(), p);
            assert_eq!(
                &row[first - 2..first],
                &[fake, global],
                "{name}: before the image"
            );
            assert_eq!(row[first + p], fake, "{name}: after the image");
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

/// The three graphs alone, fed the processor's ids (image rows replaced by the image prefix):
/// HF's first-step logits.
#[test]
fn the_graphs_give_hf_first_step_logits() {
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
    let mut last_logits = || -> Vec<f32> {
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
    let e = err(&last_logits());
    assert!(e < 1e-4, "first-step logits off by {e}");
}

#[test]
fn smolvlm_generates_the_pytorch_tokens() {
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
fn bad_smolvlm_packages_fail_with_one_line() {
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
        let other = package().join("../blip2-tiny/image_prefix.onnx");
        std::fs::copy(other, p.join("image_prefix.onnx")).expect("copy");
    };
    let cases: Vec<Breakage> = vec![
        (
            "no-image-placeholder",
            Box::new(edit("<global-img>{image}", "<global-img>")),
            vec!["prompt.template must contain {image}"],
        ),
        (
            // BLIP-2's 32-wide image prefix in place of SmolVLM's 64-wide connector.
            "width",
            Box::new(blip2_prefix),
            vec!["hidden sizes disagree", "image prefix output is 32"],
        ),
        (
            // A prefix-LM mask the graph does not take.
            "prefix-mask",
            Box::new(edit(
                "position_ids = \"position_ids\"",
                "position_ids = \"position_ids\"\nprefix_mask = \"prefix_mask\"",
            )),
            vec!["decoder has no input 'prefix_mask'"],
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
