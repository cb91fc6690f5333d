//! Parity of the SigLIP family (SigLIP, fixed-resolution SigLIP2, and a NaFlex `Siglip2Model`
//! exported at one tile size) with PyTorch / Hugging Face, on the committed tiny models and the
//! references their export computed (`sample_data/models/siglip-tiny/reference/`,
//! `siglip2-tiny/reference/`, `siglip2-naflex-tiny/reference/`, the last from HF's own NaFlex
//! processor and forward, padding and mask included): token ids equal to
//! the HF tokenizers, embeddings within 1e-4 relative error, per-label sigmoid probabilities
//! within 1e-4 absolute (host scoring and the built-in head alike, batch and one by one),
//! multi-label scores, `tessera classify` end to end, and broken packages refused cleanly.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::reference::{ints as ids, matrix, max_abs, rel_err, strings};
use common::{copy_dir, run, venv_python, walk};
use ndarray::{s, Array4};
use serde_json::Value;
use tessera::models::dual_encoder::DualEncoderModel;
use tessera::runtime::{Runtime, SessionOptions};

const PACKAGES: [&str; 3] = ["siglip-tiny", "siglip2-tiny", "siglip2-naflex-tiny"];

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

fn probs64(r: &Value) -> Vec<Vec<f64>> {
    r["probs"]
        .as_array()
        .expect("probs")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_f64().expect("p"))
                .collect()
        })
        .collect()
}

fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f64::MIN), |b, (i, &p)| if p > b.1 { (i, p) } else { b })
        .0
}

fn runtime() -> &'static Runtime {
    Runtime::load(None).expect("ONNX Runtime (run `make setup`)")
}

fn load(name: &str) -> DualEncoderModel {
    DualEncoderModel::load(runtime(), &package(name), &SessionOptions::default()).expect("model")
}

fn pixels(name: &str, r: &Value) -> Array4<f32> {
    let shp: Vec<usize> = r["pixels_f32"]["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let bytes = std::fs::read(package(name).join("reference/pixels_f32.bin")).expect("bin");
    let v: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array4::from_shape_vec((shp[0], shp[1], shp[2], shp[3]), v).expect("pixels")
}

#[test]
fn token_ids_are_identical_to_hugging_face() {
    for name in PACKAGES {
        let model = load(name);
        let r = reference(name);
        let prompts = strings(&r["prompts"]);
        let tokens = model.tokenize(&prompts).expect("tokenize");
        assert_eq!(tokens.context, 64, "{name}: SigLIP text is 64 tokens");
        let want: Vec<i64> = r["token_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .flat_map(ids)
            .collect();
        assert_eq!(tokens.ids, want, "{name}: prompts");
        // Case, punctuation, whitespace, non-ASCII, a text longer than 64 tokens (cut with the
        // end token kept last) and the empty text.
        let cases = r["tokenizer_cases"].as_array().expect("cases");
        assert!(cases.iter().any(|c| c["text"] == ""), "{name}: empty text");
        for case in cases {
            let text = case["text"].as_str().expect("text").to_string();
            let got = model
                .tokenize(std::slice::from_ref(&text))
                .expect("tokenize");
            let want = ids(&case["token_ids"]);
            assert_eq!(got.ids, want, "{name}: {text:?}");
            let real = ids(&case["attention_mask"]).iter().sum::<i64>();
            assert_eq!(got.mask.iter().sum::<i64>(), real, "{name}: {text:?} mask");
        }
        // The long text fills the context and ends with the end token.
        let long = cases
            .iter()
            .find(|c| c["text"].as_str().is_some_and(|t| t.len() > 300))
            .expect("a long text");
        let long_ids = ids(&long["token_ids"]);
        assert_eq!(long_ids.len(), 64);
        assert_eq!(long_ids[63], 1, "{name}: eos (id 1 in both) kept last");
        assert!(
            long_ids[..63].iter().all(|&t| t != 1),
            "{name}: no eos or pad before"
        );
        assert_eq!(ids(&long["attention_mask"]).iter().sum::<i64>(), 64);
        // Lowercasing is part of both tokenizers, as trained.
        let a = model.tokenize(&["A FOREST".into()]).expect("tok");
        let b = model.tokenize(&["a forest".into()]).expect("tok");
        assert_eq!(a.ids, b.ids, "{name}: lowercased");
    }
}

#[test]
fn embeddings_and_sigmoid_probabilities_match_pytorch() {
    for name in PACKAGES {
        let mut model = load(name);
        let r = reference(name);
        assert!(model.multi_label(), "{name}: sigmoid scoring");
        let px = pixels(name, &r);
        let n = px.shape()[0];

        // Image embeddings: the batch, and each image alone.
        let img = model.encode_images(px.view()).expect("images");
        let want_img = matrix(&r["image_embeds"]);
        let e = rel_err(img.as_slice().expect("c"), want_img.as_slice().expect("c"));
        assert!(e < 1e-4, "{name}: image embeds rel err {e}");
        let mut seen = vec![("image embeds rel", e)];
        for i in 0..n {
            let one = model
                .encode_images(px.slice(s![i..i + 1, .., .., ..]))
                .expect("one");
            let e = rel_err(
                one.as_slice().expect("c"),
                want_img.row(i).as_slice().expect("c"),
            );
            assert!(e < 1e-4, "{name}: image {i} alone: rel err {e}");
        }

        // Text embeddings of every prompt, all at once and one by one.
        let prompts = strings(&r["prompts"]);
        let txt = model.encode_text(&prompts).expect("text");
        let want_txt = matrix(&r["text_embeds"]);
        let e = rel_err(txt.as_slice().expect("c"), want_txt.as_slice().expect("c"));
        assert!(e < 1e-4, "{name}: text embeds rel err {e}");
        seen.push(("text embeds rel", e));
        for (i, p) in prompts.iter().enumerate().take(3) {
            let one = model.encode_text(std::slice::from_ref(p)).expect("one");
            let e = rel_err(
                one.as_slice().expect("c"),
                want_txt.row(i).as_slice().expect("c"),
            );
            assert!(e < 1e-4, "{name}: prompt {i} alone: rel err {e}");
        }

        // Label embeddings (prompt ensemble), scale and bias.
        let labels = strings(&r["labels"]);
        let templates = strings(&r["templates"]);
        let (lab, _) = model
            .label_embeddings(&labels, &templates, None)
            .expect("labels");
        let e = rel_err(
            lab.as_slice().expect("c"),
            matrix(&r["label_embeds"]).as_slice().expect("c"),
        );
        assert!(e < 1e-4, "{name}: label embeds rel err {e}");
        seen.push(("label embeds rel", e));
        let want_scale = r["logit_scale"].as_f64().expect("scale");
        assert!((f64::from(model.logit_scale()) - want_scale).abs() < 1e-5);
        let manifest: toml::Value = toml::from_str(
            &std::fs::read_to_string(package(name).join("model.toml")).expect("toml"),
        )
        .expect("manifest");
        let bias = manifest["scores"]["logit_bias"].as_float().expect("bias");
        assert!((bias - r["logit_bias"].as_f64().expect("bias")).abs() < 1e-6);
        // The package's own default templates are the reference's.
        assert_eq!(model.default_templates(), templates, "{name}: [prompts]");

        // Host scoring.
        let want = matrix(&r["probs"]);
        let probs = model.probabilities(img.clone(), &lab);
        let e = max_abs(&probs, &want);
        assert!(e < 1e-4, "{name}: host probs abs err {e}");
        seen.push(("host probs abs", e));

        // The built-in sigmoid head after the encoder: the batch, and one by one.
        let there = model.device_labels(&lab).expect("device labels");
        let head = model.classify_images(px.view(), &there).expect("head");
        let e = max_abs(&head, &want);
        assert!(e < 1e-4, "{name}: head probs abs err {e}");
        seen.push(("head probs abs", e));
        eprintln!("{name}: largest errors {seen:?}");
        assert!(max_abs(&head, &probs) < 1e-5, "{name}: host and head agree");
        for i in 0..n {
            let one = model
                .classify_images(px.slice(s![i..i + 1, .., .., ..]), &there)
                .expect("one");
            for (a, b) in one.iter().zip(want.row(i)) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{name}: head image {i} alone: {a} vs {b}"
                );
            }
        }

        // Multi-label: labels are scored independently; the reference has an image for
        // which two labels are both above 0.5, and probabilities do not sum to 1.
        let multi = r["separation"]["multi_label_images"]
            .as_array()
            .expect("multi");
        assert!(
            !multi.is_empty(),
            "{name}: the reference has a multi-label image"
        );
        for i in multi {
            let i = i.as_u64().expect("i") as usize;
            let above = probs.row(i).iter().filter(|&&p| p > 0.5).count();
            assert!(above >= 2, "{name}: image {i}: {:?}", probs.row(i));
        }
        for row in probs.outer_iter() {
            let sum: f32 = row.sum();
            assert!(
                (sum - 1.0).abs() > 1e-2,
                "{name}: probabilities sum to {sum}"
            );
        }
        let top1 = strings(&r["top1"]);
        for (i, row) in probs.outer_iter().enumerate() {
            let row: Vec<f64> = row.iter().map(|&p| f64::from(p)).collect();
            assert_eq!(labels[argmax(&row)], top1[i], "{name}: image {i}");
        }
    }
}

#[test]
fn naflex_package_is_one_fixed_tile_size_of_a_resized_position_grid() {
    let name = "siglip2-naflex-tiny";
    let r = reference(name);
    let nf = &r["naflex"];
    let (p, grid) = (
        nf["patch_size"].as_u64().expect("p"),
        nf["position_grid"].as_u64().expect("g"),
    );
    let size = r["images_u8"]["shape"][1].as_u64().expect("size");
    // The tile's patch grid differs from the position grid (the resize is exercised), and HF's
    // processor padded to more patches than the tile has (its mask is exercised).
    assert_eq!(
        nf["spatial_shapes"],
        serde_json::json!([size / p, size / p])
    );
    assert_ne!(size / p, grid, "position grid resized");
    assert!(nf["max_num_patches"].as_u64().expect("max") > (size / p) * (size / p));
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(package(name).join("model.toml")).expect("toml"))
            .expect("manifest");
    assert_eq!(manifest["architecture"].as_str(), Some("siglip2-naflex"));
    assert_eq!(
        manifest["preprocess"]["size"].as_integer(),
        Some(size as i64)
    );
    // The reference probabilities are HF's sigmoid(logits_per_image), one template.
    assert_eq!(strings(&r["templates"]).len(), 1);
    assert!(r["probs_formula"]
        .as_str()
        .expect("formula")
        .contains("logits_per_image"));
    // No interpolation left in the image graph (the test Python's onnx, when present).
    if let Some(py) = venv_python() {
        let o = Command::new(py)
            .arg("-c")
            .arg("import sys, onnx; print(sorted({n.op_type for n in onnx.load(sys.argv[1]).graph.node}))")
            .arg(package(name).join("image_encoder.onnx"))
            .output()
            .expect("python");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let ops = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(ops.contains("MatMul"), "{ops}");
        assert!(
            !ops.contains("Resize") && !ops.contains("GridSample"),
            "{ops}"
        );
    }
}

fn read_classes(path: &Path, cols: usize, rows: usize) -> Vec<u8> {
    let ds = gdal::Dataset::open(path).expect("classes");
    assert_eq!(ds.raster_size(), (cols, rows));
    ds.rasterband(1)
        .expect("band")
        .read_as::<u8>((0, 0), (cols, rows), (cols, rows), None)
        .expect("read")
        .data()
        .to_vec()
}

#[test]
fn classify_writes_best_labels_and_per_label_sigmoids() {
    for name in PACKAGES {
        let r = reference(name);
        let labels = strings(&r["labels"]);
        let probs = probs64(&r);
        // Every reference image, one per tile, and a multi-label one among them.
        let n = probs.len();
        let (cols, rows) = (n, 2);
        let pick = |row: usize, col: usize| (row + col) % n;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        common::reference::block_scene(&package(name), &d.join("scene.tif"), cols, rows, pick);
        let model = package(name).display().to_string();
        let label_list = labels.join(",");
        // No --template: the package's [prompts] templates (the reference's) are used.
        let base = [
            "classify",
            "scene.tif",
            "--model",
            model.as_str(),
            "--labels",
            label_list.as_str(),
            "--no-cache",
            "--json",
            "--quiet",
            "--batch-size",
            "3",
        ];
        let mut args = base.to_vec();
        args.extend(["--out", "out"]);
        let res = run(d, &args);
        let j = res.success().json();
        assert_eq!(j["tiles_read"], cols * rows, "{}", res.context());
        assert_eq!(j["scoring"], "sigmoid", "{name}");
        assert_eq!(j["templates"], serde_json::json!(strings(&r["templates"])));
        let cls = read_classes(&d.join("out/classes.tif"), cols, rows);
        let prob_ds = gdal::Dataset::open(d.join("out/probabilities.tif")).expect("probs");
        assert_eq!(prob_ds.raster_count(), labels.len());
        let mut multi_tiles = 0;
        for row in 0..rows {
            for col in 0..cols {
                let p = &probs[pick(row, col)];
                assert_eq!(
                    cls[row * cols + col] as usize,
                    argmax(p),
                    "{name}: tile r{row}c{col}"
                );
                let mut above = 0;
                for (k, want) in p.iter().enumerate() {
                    let v = prob_ds
                        .rasterband(k + 1)
                        .expect("band")
                        .read_as::<f32>((col as isize, row as isize), (1, 1), (1, 1), None)
                        .expect("read")
                        .data()[0];
                    assert!(
                        (f64::from(v) - want).abs() < 1e-4,
                        "{name}: prob {k} at r{row}c{col}: {v} vs {want}"
                    );
                    above += usize::from(v > 0.5);
                }
                multi_tiles += usize::from(above >= 2);
            }
        }
        assert!(multi_tiles > 0, "{name}: a tile with two labels above 0.5");

        // --min-score acts on the sigmoids: a threshold between two images' best scores
        // makes the weaker one "unknown" (the last class); probabilities.tif is unchanged.
        let best: Vec<f64> = probs.iter().map(|p| p[argmax(p)]).collect();
        let (lo, hi) = best
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(hi - lo > 0.02, "{name}: best scores {best:?}");
        let threshold = (lo + hi) / 2.0;
        let t = format!("{threshold:.4}");
        let mut args = base.to_vec();
        args.extend(["--out", "unk", "--min-score", t.as_str()]);
        let j = run(d, &args).success().json();
        let cls = read_classes(&d.join("unk/classes.tif"), cols, rows);
        let mut unknown = 0;
        for row in 0..rows {
            for col in 0..cols {
                let p = &probs[pick(row, col)];
                let want = if p[argmax(p)] < threshold {
                    unknown += 1;
                    labels.len()
                } else {
                    argmax(p)
                };
                assert_eq!(cls[row * cols + col] as usize, want, "{name}: r{row}c{col}");
            }
        }
        assert!(unknown > 0 && unknown < cols * rows);
        assert_eq!(j["label_counts"]["unknown"], unknown);
        let prob_ds = gdal::Dataset::open(d.join("unk/probabilities.tif")).expect("probs");
        let v = prob_ds
            .rasterband(1)
            .expect("band")
            .read_as::<f32>((0, 0), (1, 1), (1, 1), None)
            .expect("read")
            .data()[0];
        assert!((f64::from(v) - probs[pick(0, 0)][0]).abs() < 1e-4);
    }
}

/// Rewrite `pkg/text_encoder.onnx` so its embeddings are 16 wide (a Slice after the output),
/// with the test Python's onnx; false without it.
fn narrow_text_embeddings(pkg: &Path) -> bool {
    let Some(py) = venv_python() else {
        return false;
    };
    let script = r#"
import sys, onnx
from onnx import helper, TensorProto
p = sys.argv[1]
m = onnx.load(p)
g = m.graph
out = g.output[0]
old = out.name
g.node[-1].output[0] = old + "_wide"
for name, v in (("starts", 0), ("ends", 16), ("axes", 1)):
    g.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], [v]))
g.node.append(helper.make_node("Slice", [old + "_wide", "starts", "ends", "axes"], [old]))
out.type.tensor_type.shape.dim[1].dim_value = 16
onnx.save(m, p)
"#;
    let o = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(pkg.join("text_encoder.onnx"))
        .output()
        .expect("python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    true
}

#[test]
fn broken_siglip_packages_are_refused_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    common::reference::block_scene(
        &package("siglip-tiny"),
        &d.join("scene.tif"),
        1,
        1,
        |_, _| 0,
    );
    let edit = |from: &str, to: &str, f: &dyn Fn(&Path)| -> String {
        let p = d.join(to);
        copy_dir(&package(from), &p);
        f(&p);
        p.display().to_string()
    };
    let manifest = |p: &Path, f: &dyn Fn(String) -> String| {
        let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
        std::fs::write(p.join("model.toml"), f(m)).expect("write");
    };
    let clip_tok = common::clip_tiny().join("tokenizer.json");
    let mut cases: Vec<(String, Vec<&str>)> = vec![
        (
            edit("siglip-tiny", "no_bias", &|p| {
                manifest(p, &|m| {
                    m.lines()
                        .filter(|l| !l.starts_with("logit_bias"))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
            }),
            vec!["scores.logit_bias", "sigmoid"],
        ),
        (
            edit("clip-tiny", "clip_bias", &|p| {
                manifest(p, &|m| format!("{m}logit_bias = -10.0\n"))
            }),
            vec!["logit_bias", "softmax"],
        ),
        (
            edit("siglip-tiny", "bpe_tok", &|p| {
                std::fs::copy(&clip_tok, p.join("tokenizer.json")).expect("copy");
            }),
            vec!["tokenizer.json", "eos_token_id is 1"],
        ),
        (
            edit("siglip2-tiny", "bpe_tok2", &|p| {
                std::fs::copy(&clip_tok, p.join("tokenizer.json")).expect("copy");
            }),
            vec!["tokenizer.json", "eos_token_id is 1"],
        ),
        (
            edit("siglip-tiny", "wordpiece", &|p| {
                // A WordPiece tokenizer (a BERT-style file with the right special ids).
                let t = r###"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
                "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},
                "post_processor":{"type":"TemplateProcessing","single":[{"Sequence":{"id":"A","type_id":0}},
                {"SpecialToken":{"id":"[SEP]","type_id":0}}],"pair":[],"special_tokens":{"[SEP]":
                {"id":"[SEP]","ids":[1],"tokens":["[SEP]"]}}},"decoder":null,"model":{"type":"WordPiece",
                "unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,
                "vocab":{"[UNK]":0,"[SEP]":1,"a":2}}}"###;
                std::fs::write(p.join("tokenizer.json"), t).expect("write");
            }),
            vec!["tokenizer.json", "WordPiece", "SigLIP"],
        ),
    ];
    let narrow = d.join("narrow");
    copy_dir(&package("siglip2-tiny"), &narrow);
    if narrow_text_embeddings(&narrow) {
        cases.push((
            narrow.display().to_string(),
            vec!["image embeddings have 32 dimensions but text embeddings 16"],
        ));
    }
    for (pkg, needles) in &cases {
        // models check: exit 1, the package named, exactly one problem with the cause.
        let check = run(d, &["models", "check", pkg]);
        assert_eq!(check.output.status.code(), Some(1), "{}", check.context());
        let out = check.stdout();
        assert!(out.starts_with(pkg.as_str()), "{}", check.context());
        assert!(out.contains("1 problem"), "{}", check.context());
        for n in needles {
            assert!(out.contains(n), "{n:?}{}", check.context());
        }
        let json = run(d, &["models", "check", pkg, "--json"]);
        let problems = strings(&json.json()["problems"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        // classify: one error line naming the package and the cause, nothing written.
        let out_dir = d.join("out");
        let out_s = out_dir.display().to_string();
        run(
            d,
            &[
                "classify",
                "scene.tif",
                "--model",
                pkg,
                "--labels",
                "a,b",
                "--no-cache",
                "--quiet",
                "--out",
                &out_s,
            ],
        )
        .fails_with(&[pkg.as_str(), needles[0]]);
        assert!(!out_dir.exists(), "{pkg}: nothing written");
        assert!(
            walk(d)
                .iter()
                .all(|p| !p.to_string_lossy().contains(".tessera-tmp")),
            "{pkg}: no temporary files left"
        );
    }
}
