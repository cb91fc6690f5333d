//! Parity of the OpenCLIP path (family `openclip`: RemoteCLIP, GeoRSCLIP, SkyCLIP, ...) with
//! PyTorch, on the committed tiny random OpenCLIP model and the references its export computed
//! with open_clip (`sample_data/models/openclip-tiny/reference/`): token ids identical to
//! `open_clip.get_tokenizer(arch)`, embeddings within 1e-4 relative error, probabilities within
//! 1e-4 absolute, host scoring and the scoring head graph alike, batches equal one by one;
//! `tessera classify` on a generated scene gives the per-tile reference, with the package's
//! `[prompts]` templates when no `--template` is given. Broken packages fail `models check`.

mod common;

use std::path::{Path, PathBuf};

use common::reference::{argmax, block_scene, ints as ids, matrix, max_abs, rel_err, strings};
use common::{copy_dir, run};
use ndarray::{s, Array2, Array4};
use serde_json::Value;
use tessera::models::dual_encoder::DualEncoderModel;
use tessera::runtime::{Runtime, SessionOptions};

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/openclip-tiny")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(package().join("reference/reference.json"))
        .expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

fn runtime() -> &'static Runtime {
    Runtime::load(None).expect("ONNX Runtime (run `make setup`)")
}

fn model() -> DualEncoderModel {
    DualEncoderModel::load(runtime(), &package(), &SessionOptions::default()).expect("model")
}

fn pixels(r: &Value) -> Array4<f32> {
    let shp: Vec<usize> = r["pixels_f32"]["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let bytes = std::fs::read(package().join("reference/pixels_f32.bin")).expect("pixels");
    let v: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array4::from_shape_vec((shp[0], shp[1], shp[2], shp[3]), v).expect("pixels")
}

#[test]
fn manifest_is_the_openclip_family_without_a_text_mask() {
    let text = std::fs::read_to_string(package().join("model.toml")).expect("manifest");
    let m: toml::Value = toml::from_str(&text).expect("toml");
    assert_eq!(m["family"].as_str(), Some("openclip"));
    assert!(m["architecture"].as_str().is_some());
    assert!(m["text"].get("attention_mask").is_none());
    assert_eq!(m["tokenizer"]["pad_token_id"].as_integer(), Some(0));
    let r = run(&package(), &["models", "check", "."]);
    r.success();
    assert!(
        r.stdout().contains("valid model package"),
        "{}",
        r.context()
    );
}

#[test]
fn token_ids_are_open_clips() {
    let model = model();
    let r = reference();
    let prompts = strings(&r["prompts"]);
    let tokens = model.tokenize(&prompts).expect("tokenize");
    assert_eq!(tokens.ids, ids(&r["token_ids"]));
    assert_eq!(tokens.mask, ids(&r["attention_mask"]));
    // Odd spacing and case, curly quotes, HTML entities, full-width forms, ligatures, text
    // longer than the context (cut keeping <end_of_text> last), the empty text, special-token
    // look-alikes: all as open_clip's own tokenizer has them.
    let cases = r["tokenizer_cases"].as_array().expect("cases");
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().expect("text").to_string();
        let got = model
            .tokenize(std::slice::from_ref(&text))
            .expect("tokenize");
        assert_eq!(got.ids, ids(&case["token_ids"]), "{text:?}");
        assert_eq!(got.mask, ids(&case["attention_mask"]), "{text:?}");
    }
    // Padding is 0 (OpenCLIP's), not the end token.
    let short = model.tokenize(&["forest".to_string()]).expect("tokenize");
    assert_eq!(&short.ids[..4], &[49406, 4167, 49407, 0]);
}

#[test]
fn embeddings_and_probabilities_match_open_clip() {
    let mut model = model();
    let r = reference();
    let px = pixels(&r);
    let n = px.shape()[0];

    // Image embeddings: the batch, and each image alone.
    let img = model.encode_images(px.view()).expect("images");
    let want_img = matrix(&r["image_embeds"]);
    let e = rel_err(img.as_slice().expect("c"), want_img.as_slice().expect("c"));
    eprintln!("image embeds: max rel err {e:.3e}");
    assert!(e < 1e-4, "image embeds rel err {e}");
    for i in 0..n {
        let one = model
            .encode_images(px.slice(s![i..i + 1, .., .., ..]))
            .expect("one");
        let e = rel_err(
            one.as_slice().expect("c"),
            want_img.row(i).as_slice().expect("c"),
        );
        assert!(e < 1e-4, "image {i} alone: rel err {e}");
    }

    // Text embeddings: the batch of prompts, and one prompt alone.
    let prompts = strings(&r["prompts"]);
    let txt = model.encode_text(&prompts).expect("text");
    let want_txt = matrix(&r["text_embeds"]);
    let e = rel_err(txt.as_slice().expect("c"), want_txt.as_slice().expect("c"));
    eprintln!("text embeds: max rel err {e:.3e}");
    assert!(e < 1e-4, "text embeds rel err {e}");
    let last = prompts.len() - 1;
    let one = model.encode_text(&prompts[last..]).expect("one");
    let e = rel_err(
        one.as_slice().expect("c"),
        want_txt.row(last).as_slice().expect("c"),
    );
    assert!(e < 1e-4, "last prompt alone: rel err {e}");

    // Label embeddings (prompt ensemble) and host probabilities.
    let labels = strings(&r["labels"]);
    let templates = strings(&r["templates"]);
    let (lab, _) = model
        .label_embeddings(&labels, &templates, None)
        .expect("labels");
    let e = rel_err(
        lab.as_slice().expect("c"),
        matrix(&r["label_embeds"]).as_slice().expect("c"),
    );
    assert!(e < 1e-4, "label embeds rel err {e}");
    assert!((model.logit_scale() - r["logit_scale"].as_f64().expect("scale") as f32).abs() < 1e-4);
    assert!(!model.multi_label(), "OpenCLIP scores are a softmax");
    let want_probs = matrix(&r["probs"]);
    let probs = model.probabilities(img.clone(), &lab);
    let d = max_abs(&probs, &want_probs);
    eprintln!("host probs: max abs err {d:.3e}");
    assert!(d < 1e-4, "host probs abs err {d}");

    // The scoring head graph after the image encoder: the batch and one image alone.
    let there = model.device_labels(&lab).expect("device labels");
    let head = model.classify_images(px.view(), &there).expect("head");
    let d = max_abs(&head, &want_probs);
    eprintln!("head probs: max abs err {d:.3e}");
    assert!(d < 1e-4, "head probs abs err {d}");
    for i in 0..n {
        let one = model
            .classify_images(px.slice(s![i..i + 1, .., .., ..]), &there)
            .expect("one");
        let d = max_abs(&one, &want_probs.slice(s![i..i + 1, ..]).to_owned());
        assert!(d < 1e-4, "head probs of image {i} alone: abs err {d}");
    }
    let top1 = strings(&r["top1"]);
    for (i, row) in probs.outer_iter().enumerate() {
        assert_eq!(labels[argmax(row.as_slice().expect("c"))], top1[i]);
    }

    // The package's default ensemble ([prompts] in model.toml) is what the model offers when
    // no template is given, and gives the reference's default probabilities.
    let defaults = model.default_templates();
    assert_eq!(defaults, strings(&r["default_templates"]));
    assert_ne!(defaults, templates);
    let (dlab, _) = model
        .label_embeddings(&labels, &defaults, None)
        .expect("default labels");
    let e = rel_err(
        dlab.as_slice().expect("c"),
        matrix(&r["default_label_embeds"]).as_slice().expect("c"),
    );
    assert!(e < 1e-4, "default label embeds rel err {e}");
    let d = max_abs(
        &model.probabilities(img, &dlab),
        &matrix(&r["default_probs"]),
    );
    assert!(d < 1e-4, "default probs abs err {d}");
}

/// classes.tif and probabilities.tif of `out` hold, per tile, the reference row of its image.
fn assert_tiles(
    out: &Path,
    cols: usize,
    rows: usize,
    pick: &dyn Fn(usize, usize) -> usize,
    probs: &Array2<f32>,
) {
    let classes = gdal::Dataset::open(out.join("classes.tif")).expect("classes");
    assert_eq!(classes.raster_size(), (cols, rows));
    let cls = classes
        .rasterband(1)
        .expect("band")
        .read_as::<u8>((0, 0), (cols, rows), (cols, rows), None)
        .expect("read");
    let prob_ds = gdal::Dataset::open(out.join("probabilities.tif")).expect("probs");
    assert_eq!(prob_ds.raster_count(), probs.ncols());
    for row in 0..rows {
        for col in 0..cols {
            let want = probs.row(pick(row, col));
            let want = want.as_slice().expect("c");
            assert_eq!(
                cls.data()[row * cols + col] as usize,
                argmax(want),
                "{}: tile r{row}c{col}",
                out.display()
            );
            for (k, w) in want.iter().enumerate() {
                let v = prob_ds
                    .rasterband(k + 1)
                    .expect("band")
                    .read_as::<f32>((col as isize, row as isize), (1, 1), (1, 1), None)
                    .expect("read");
                assert!(
                    (v.data()[0] - w).abs() < 1e-4,
                    "{}: prob {k} at r{row}c{col}: {} vs {w}",
                    out.display(),
                    v.data()[0]
                );
            }
        }
    }
}

#[test]
fn classify_end_to_end_matches_the_reference_per_tile() {
    let r = reference();
    let labels = strings(&r["labels"]);
    let templates = strings(&r["templates"]);
    let n = r["images"].as_array().expect("images").len();
    let (cols, rows) = (4, 3);
    let pick = move |row: usize, col: usize| (row * cols + col + row) % n;
    let dir = tempfile::tempdir().expect("tempdir");
    block_scene(&package(), &dir.path().join("scene.tif"), cols, rows, pick);
    let model = package().display().to_string();
    let label_list = labels.join(",");
    let base = |out: &str| -> Vec<String> {
        [
            "classify",
            "scene.tif",
            "--model",
            &model,
            "--labels",
            &label_list,
            "--no-cache",
            "--json",
            "--quiet",
            "--batch-size",
            "5",
            "--out",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // With the reference templates given.
    let mut args = base("given");
    for t in &templates {
        args.extend(["--template".to_string(), t.clone()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let res = run(dir.path(), &refs);
    let j = res.success().json();
    assert_eq!(j["tiles_read"], 12, "{}", res.context());
    assert_eq!(j["model_trained"], false);
    assert_eq!(j["templates"], serde_json::json!(templates));
    assert_tiles(
        &dir.path().join("given"),
        cols,
        rows,
        &pick,
        &matrix(&r["probs"]),
    );

    // Without --template: the package's [prompts] ensemble, visible in the report, and the
    // probabilities are the reference's for those templates (the top-1 of at least one image
    // differs from the run above, so the wrong ensemble cannot pass).
    let args = base("defaults");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let res = run(dir.path(), &refs);
    let j = res.success().json();
    assert_eq!(
        j["templates"],
        serde_json::json!(strings(&r["default_templates"])),
        "{}",
        res.context()
    );
    let dprobs = matrix(&r["default_probs"]);
    let probs = matrix(&r["probs"]);
    assert!(
        (0..n).any(|i| argmax(dprobs.row(i).as_slice().expect("c"))
            != argmax(probs.row(i).as_slice().expect("c"))),
        "the fixture should tell the two ensembles apart"
    );
    assert_tiles(&dir.path().join("defaults"), cols, rows, &pick, &dprobs);
}

/// A copy of the package with `edit` applied, checked with `tessera models check`.
fn broken_package(dir: &Path, name: &str, edit: &dyn Fn(&Path)) -> common::Run {
    let p = dir.join(name);
    copy_dir(&package(), &p);
    edit(&p);
    run(dir, &["models", "check", name])
}

fn edit_manifest(p: &Path, f: &dyn Fn(String) -> String) {
    let m = p.join("model.toml");
    let text = std::fs::read_to_string(&m).expect("manifest");
    std::fs::write(&m, f(text)).expect("write");
}

#[test]
fn broken_packages_fail_models_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clip_image = common::clip_tiny().join("image_encoder.onnx");
    type Edit = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "no-scores",
            Box::new(|p: &Path| {
                edit_manifest(p, &|t| {
                    let (a, b) = (
                        t.find("[scores]").expect("s"),
                        t.find("[prompts]").expect("p"),
                    );
                    format!("{}{}", &t[..a], &t[b..])
                })
            }),
            vec!["[scores]"],
        ),
        (
            "widths",
            // The clip-tiny image encoder: same input, 32-wide embeddings (this text tower: 16).
            Box::new(move |p: &Path| {
                std::fs::copy(&clip_image, p.join("image_encoder.onnx")).expect("copy");
            }),
            vec!["image embeddings have 32 dimensions but text embeddings 16"],
        ),
        (
            "eos",
            // The tokenizer ends a text with another token than the manifest's eos.
            Box::new(|p: &Path| {
                let f = p.join("tokenizer.json");
                let mut j: Value =
                    serde_json::from_str(&std::fs::read_to_string(&f).expect("tok")).expect("json");
                j["post_processor"]["sep"] = serde_json::json!(["!", 0]);
                std::fs::write(&f, j.to_string()).expect("write");
            }),
            vec!["ends a text with token 0", "eos_token_id is 49407"],
        ),
        (
            "eos-id",
            Box::new(|p: &Path| {
                edit_manifest(p, &|t| {
                    t.replace("eos_token_id = 49407", "eos_token_id = 1")
                })
            }),
            vec!["ends a text with token 49407", "eos_token_id is 1"],
        ),
        (
            "mask",
            // A mask named in the manifest that the OpenCLIP text graph does not take.
            Box::new(|p: &Path| {
                edit_manifest(p, &|t| {
                    t.replace(
                        "input_ids = \"input_ids\"",
                        "input_ids = \"input_ids\"\nattention_mask = \"attention_mask\"",
                    )
                })
            }),
            vec!["text encoder has no input 'attention_mask'"],
        ),
        (
            "bias",
            Box::new(|p: &Path| {
                edit_manifest(p, &|t| {
                    t.replace("[scores]\n", "[scores]\nlogit_bias = -10.0\n")
                })
            }),
            vec!["logit_bias"],
        ),
        (
            "templates",
            Box::new(|p: &Path| {
                edit_manifest(p, &|t| {
                    let a = t.find("[prompts]").expect("p");
                    format!("{}[prompts]\ntemplates = [\"no placeholder\"]\n", &t[..a])
                })
            }),
            vec!["prompts.templates"],
        ),
    ];
    for (name, edit, needles) in cases {
        let r = broken_package(dir.path(), name, edit.as_ref());
        assert_eq!(r.output.status.code(), Some(1), "{name}{}", r.context());
        let all = format!("{}{}", r.stdout(), r.stderr());
        for n in needles {
            assert!(
                all.contains(n),
                "{name}: should mention {n:?}{}",
                r.context()
            );
        }
        assert!(!all.contains("panicked"), "{name}{}", r.context());
    }
}
