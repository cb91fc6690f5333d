//! Quantised variants made by tools/export/quantize.py from committed fp32 fixtures:
//! siglip-tiny-int8 (dynamic int8), chinese-clip-tiny-int8-static (QDQ, calibrated on tiles of
//! sample_data/sentinel2_rgbn_10m.tif), blip2-tiny-int4 (MatMulNBits language model), and one
//! per other kind: blip-tiny-int8 (cross-attention decoder), clipseg-tiny-int8 (segmenter),
//! owlv2-tiny-int8 (open-vocabulary detector), sam2-tiny-int8 (promptable segmenter) and
//! qwen2-vl-tiny-int4 (M-RoPE image-text decoder).
//! Their manifests parse and `models check` reports their precision; tessera runs them
//! (`classify`, `caption`, and the segmenter / detector / promptable-segmenter models the
//! `segment`, `detect` and `instances` jobs load) and reproduces what quantize.py recorded in
//! `quantization.json` with ONNX Runtime from Python (scores, tokens, class fractions, boxes,
//! mask fractions of both the variant and its fp32 package, within the tolerances stated at
//! each case), so the agreement with fp32 that tessera sees is the one the export reported.

mod common;

use std::path::{Path, PathBuf};

use common::run;
use ndarray::Array4;
use serde_json::Value;
use tessera::models::detection::{DetectorModel, PixelBox};
use tessera::models::promptable::{Prompt, PromptableSegmenter};
use tessera::models::segmentation::SegmentationModel;
use tessera::runtime::{Runtime, SessionOptions};

fn package(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models")
        .join(name)
}

fn quantization(name: &str) -> Value {
    let text =
        std::fs::read_to_string(package(name).join("quantization.json")).expect("quantization");
    serde_json::from_str(&text).expect("json")
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("f"))
                .collect()
        })
        .collect()
}

fn argmax(row: &[f64]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .expect("non-empty")
}

/// A committed variant: (its package, its fp32 package, precision, precision of each graph).
type Variant = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const VARIANTS: [Variant; 8] = [
    (
        "siglip-tiny-int8",
        "siglip-tiny",
        "int8-dynamic",
        &[
            ("image_encoder.onnx", "int8-dynamic"),
            ("text_encoder.onnx", "int8-dynamic"),
        ],
    ),
    (
        "chinese-clip-tiny-int8-static",
        "chinese-clip-tiny",
        "int8-static",
        &[
            ("image_encoder.onnx", "int8-static"),
            ("text_encoder.onnx", "int8-dynamic"),
        ],
    ),
    (
        "blip2-tiny-int4",
        "blip2-tiny",
        "int4",
        &[
            ("image_prefix.onnx", "fp32"),
            ("embed_tokens.onnx", "fp32"),
            ("decoder.onnx", "int4"),
        ],
    ),
    (
        "blip-tiny-int8",
        "blip-tiny",
        "int8-dynamic",
        &[
            ("encoder.onnx", "int8-dynamic"),
            ("cross_kv.onnx", "int8-dynamic"),
            ("decoder.onnx", "int8-dynamic"),
        ],
    ),
    (
        "clipseg-tiny-int8",
        "clipseg-tiny",
        "int8-dynamic",
        &[("model.onnx", "int8-dynamic")],
    ),
    (
        "owlv2-tiny-int8",
        "owlv2-tiny",
        "int8-dynamic",
        &[("model.onnx", "int8-dynamic")],
    ),
    (
        "sam2-tiny-int8",
        "sam2-tiny",
        "int8-dynamic",
        &[
            ("image_encoder.onnx", "int8-dynamic"),
            ("mask_decoder.onnx", "int8-dynamic"),
        ],
    ),
    (
        "qwen2-vl-tiny-int4",
        "qwen2-vl-tiny",
        "int4",
        &[
            ("image_prefix.onnx", "fp32"),
            ("embed_tokens.onnx", "fp32"),
            ("decoder.onnx", "int4"),
        ],
    ),
];

#[test]
fn manifests_record_the_precision_and_models_check_prints_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, fp32, precision, graphs) in VARIANTS {
        let q = quantization(name);
        assert_eq!(q["precision"], precision, "{name}");
        let (mut graph_bytes, mut fp32_graph_bytes) = (0u64, 0u64);
        for (file, want) in graphs {
            assert_eq!(q["graphs"][file]["precision"], *want, "{name} {file}");
            let bytes = std::fs::metadata(package(name).join(file))
                .expect("graph")
                .len();
            assert_eq!(q["graphs"][file]["bytes"], bytes, "{name} {file}");
            // a quantised graph is smaller than its fp32 original; an fp32 one is the same
            let fp32_bytes = q["graphs"][file]["fp32_bytes"].as_u64().expect("bytes");
            assert_eq!(
                fp32_bytes,
                std::fs::metadata(package(fp32).join(file))
                    .expect("fp32 graph")
                    .len()
            );
            if *want == "fp32" {
                assert_eq!(bytes, fp32_bytes, "{name} {file}");
            } else {
                // a graph of tiny matrices may grow (SAM 2's mask decoder: the quantize /
                // dequantize nodes outweigh 32-wide weights); the variant's graphs shrink
                assert_ne!(bytes, fp32_bytes, "{name} {file}: not rewritten");
            }
            graph_bytes += bytes;
            fp32_graph_bytes += fp32_bytes;
        }
        assert!(
            graph_bytes < fp32_graph_bytes,
            "{name}: graphs {graph_bytes} >= fp32 {fp32_graph_bytes}"
        );
        let text = std::fs::read_to_string(package(name).join("model.toml")).expect("toml");
        let m = tessera::models::Manifest::parse(&text).expect("manifest");
        assert_eq!(m.precision.as_str(), precision);
        let pkg = package(name).display().to_string();
        let j = run(dir.path(), &["models", "check", &pkg, "--json"])
            .success()
            .json();
        assert_eq!(j["valid"], true, "{j}");
        assert_eq!(j["precision"], precision);
        let r = run(dir.path(), &["models", "check", &pkg]);
        assert!(
            r.success()
                .stdout()
                .contains(&format!("precision {precision})")),
            "{}",
            r.stdout()
        );
    }
    // The fp32 packages (no precision key) are fp32.
    let pkg = package("blip2-tiny").display().to_string();
    let j = run(dir.path(), &["models", "check", &pkg, "--json"])
        .success()
        .json();
    assert_eq!(j["precision"], "fp32");
    // A value that is no precision is refused with its line.
    let bad = dir.path().join("bad");
    common::copy_dir(&package("siglip-tiny-int8"), &bad);
    let text = std::fs::read_to_string(bad.join("model.toml")).expect("toml");
    std::fs::write(
        bad.join("model.toml"),
        text.replace("precision = \"int8-dynamic\"", "precision = \"int7\""),
    )
    .expect("write");
    let bad = bad.display().to_string();
    let r = run(dir.path(), &["models", "check", &bad]);
    assert_eq!(r.output.status.code(), Some(1), "{}", r.context());
    assert!(
        r.stdout()
            .contains("model.toml: line 6: unknown variant `int7`"),
        "{}",
        r.stdout()
    );
    let scene = dir.path().join("scene.tif");
    common::reference::block_scene(&package("siglip-tiny"), &scene, 1, 1, |_, _| 0);
    run(
        dir.path(),
        &["classify", "scene.tif", "--model", &bad, "--labels", "a,b"],
    )
    .fails_with(&["line 6", "int7"]);
}

/// Per-tile scores of `tessera classify` (probabilities.tif) on a 1-row scene of the fp32
/// package's reference images, one tile per image, batch size 1 (dynamic int8 quantises each
/// batch's activations with that batch's range: quantize.py measured at batch 1).
fn classify_scores(
    dir: &Path,
    model: &Path,
    labels: &[String],
    templates: &[String],
) -> Vec<Vec<f64>> {
    let out = format!("out-{}", model.file_name().expect("name").to_string_lossy());
    let model = model.display().to_string();
    let label_list = labels.join(",");
    let mut args = vec![
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
        "1",
        "--out",
        out.as_str(),
    ];
    for t in templates {
        args.extend(["--template", t.as_str()]);
    }
    let res = run(dir, &args);
    let j = res.success().json();
    let n = j["tiles_read"].as_u64().expect("tiles") as usize;
    let ds = gdal::Dataset::open(dir.join(&out).join("probabilities.tif")).expect("probs");
    assert_eq!(ds.raster_count(), labels.len());
    (0..n)
        .map(|col| {
            (0..labels.len())
                .map(|k| {
                    let v = ds
                        .rasterband(k + 1)
                        .expect("band")
                        .read_as::<f32>((col as isize, 0), (1, 1), (1, 1), None)
                        .expect("read")
                        .data()[0];
                    f64::from(v)
                })
                .collect()
        })
        .collect()
}

#[test]
fn int8_classify_reproduces_the_recorded_scores_and_agreement() {
    for (name, fp32, _, _) in &VARIANTS[..2] {
        let q = quantization(name);
        let a = &q["agreement"];
        let labels = common::reference::strings(&a["labels"]);
        let templates = common::reference::strings(&a["templates"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // the reference images come first among the images quantize.py measured
        let refs = std::fs::metadata(package(fp32).join("reference/images_u8.bin"))
            .expect("images")
            .len() as usize
            / (64 * 64 * 3);
        common::reference::block_scene(&package(fp32), &d.join("scene.tif"), refs, 1, |_, c| c);
        let got_q = classify_scores(d, &package(name), &labels, &templates);
        let got_f = classify_scores(d, &package(fp32), &labels, &templates);
        let want_q = rows(&a["scores"]);
        let want_f = rows(&a["fp32_scores"]);
        assert_eq!(got_q.len(), refs);
        let (mut diff, mut agree, mut want_agree) = (0.0f64, 0, 0);
        for i in 0..refs {
            for k in 0..labels.len() {
                assert!(
                    (got_f[i][k] - want_f[i][k]).abs() < 1e-4,
                    "{fp32}: image {i} label {k}: tessera {} vs quantize.py {}",
                    got_f[i][k],
                    want_f[i][k]
                );
                // tessera runs the quantised graph as ONNX Runtime from Python does
                assert!(
                    (got_q[i][k] - want_q[i][k]).abs() < 1e-4,
                    "{name}: image {i} label {k}: tessera {} vs quantize.py {}",
                    got_q[i][k],
                    want_q[i][k]
                );
                diff = diff.max((got_q[i][k] - got_f[i][k]).abs());
            }
            agree += usize::from(argmax(&got_q[i]) == argmax(&got_f[i]));
            want_agree += usize::from(argmax(&want_q[i]) == argmax(&want_f[i]));
        }
        // within the bound the export reported, and really quantised (not the fp32 graph)
        let bound = a["scores_max_abs_diff"].as_f64().expect("bound");
        assert!(
            diff <= bound + 1e-4,
            "{name}: scores differ from fp32 by {diff}, the export recorded {bound}"
        );
        assert!(diff > 1e-3, "{name}: scores equal fp32's ({diff})");
        assert_eq!(agree, want_agree, "{name}: top-1 agreement with fp32");
    }
}

/// `tessera caption` (greedy, the empty prompt, batch 1) of the variant and its fp32 package on
/// a 1-row scene of the fp32 package's reference images: the tokens quantize.py recorded for
/// both, exactly, and the first-token agreement it reported.
fn caption_reproduces_the_recorded_tokens(name: &str, fp32: &str) {
    let q = quantization(name);
    let a = &q["agreement"];
    assert_eq!(a["prompt"], "");
    let want_q = &a["tokens"];
    let want_f = &a["fp32_tokens"];
    let n = want_q.as_array().expect("tokens").len();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    common::reference::block_scene(&package(fp32), &d.join("scene.tif"), n, 1, |_, c| c);
    let max_new = a["generation"]["max_new_tokens"].to_string();
    let tokens = |model: &str| -> Vec<Value> {
        let out = format!("out-{model}");
        let m = package(model).display().to_string();
        let res = run(
            d,
            &[
                "caption",
                "scene.tif",
                "--model",
                &m,
                "--max-new-tokens",
                &max_new,
                "--batch-size",
                "1",
                "--out",
                &out,
                "--json",
                "--quiet",
            ],
        );
        assert_eq!(res.success().json()["tiles_captioned"], n);
        let jsonl = std::fs::read_to_string(d.join(&out).join("captions.jsonl")).expect("jsonl");
        let mut lines: Vec<Value> = jsonl
            .lines()
            .map(|l| serde_json::from_str(l).expect("line"))
            .collect();
        lines.sort_by_key(|l| l["col"].as_u64());
        lines.iter().map(|l| l["tokens"].clone()).collect()
    };
    let got_q = tokens(name);
    let got_f = tokens(fp32);
    let (mut first, mut want_first) = (0, 0);
    for i in 0..n {
        assert_eq!(got_q[i], want_q[i], "{name}: tile {i}");
        assert_eq!(got_f[i], want_f[i], "{fp32}: tile {i}");
        first += usize::from(got_q[i][0] == got_f[i][0]);
        want_first += usize::from(want_q[i][0] == want_f[i][0]);
    }
    assert_eq!(first, want_first);
    let recorded = a["first_token_agreement"].as_f64().expect("agreement");
    assert!((first as f64 / n as f64 - recorded).abs() < 1e-9);
    // the quantised graphs change what the random model says (they are not the fp32 graphs)
    assert!(got_q != got_f, "{name}: every caption equals fp32's");
}

#[test]
fn int4_caption_reproduces_the_recorded_tokens_and_first_token_agreement() {
    caption_reproduces_the_recorded_tokens(VARIANTS[2].0, VARIANTS[2].1);
}

/// A cross-attention decoder (BLIP: encoder, cross keys/values and decoder graphs in int8).
#[test]
fn int8_cross_attention_decoder_caption_reproduces_the_recorded_tokens() {
    caption_reproduces_the_recorded_tokens("blip-tiny-int8", "blip-tiny");
}

/// Qwen2-VL with an int4 language model: quantize.py's runner builds the M-RoPE positions.
#[test]
fn int4_mrope_decoder_caption_reproduces_the_recorded_tokens() {
    caption_reproduces_the_recorded_tokens("qwen2-vl-tiny-int4", "qwen2-vl-tiny");
}

/// The fp32 package's reference images (`images_u8.bin`, `[N, S, S, 3]`) as tessera hands
/// them to a model: `v / 255`, then the package's normalisation (what quantize.py computes).
fn reference_pixels(
    pkg: &str,
    n: usize,
    s: usize,
    norm: &tessera::models::Normalizer,
) -> Array4<f32> {
    let hwc = std::fs::read(package(pkg).join("reference/images_u8.bin")).expect("images");
    let mut x = Array4::<f32>::zeros((n, 3, s, s));
    for i in 0..n {
        for y in 0..s {
            for c in 0..s {
                for k in 0..3 {
                    x[[i, k, y, c]] = f32::from(hwc[((i * s + y) * s + c) * 3 + k]) / 255.0;
                }
            }
        }
        let mut one = x.slice(ndarray::s![i, .., .., ..]).to_owned();
        norm.apply(one.as_slice_mut().expect("contiguous"), &vec![1u8; s * s]);
        x.slice_mut(ndarray::s![i, .., .., ..]).assign(&one);
    }
    x
}

fn num(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

/// The class of each pixel of prompted probabilities `[1, 1 + P, H, W]`, as the stitcher decides
/// (`Decision::Prompts`): the most probable prompt when it reaches the threshold, else 0.
fn prompt_classes(p: &Array4<f32>, threshold: f32) -> Vec<usize> {
    let (c, h, w) = (p.shape()[1], p.shape()[2], p.shape()[3]);
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            let mut best = (0, f32::NEG_INFINITY);
            for k in 1..c {
                if p[[0, k, y, x]] > best.1 {
                    best = (k, p[[0, k, y, x]]);
                }
            }
            out.push(if best.1 >= threshold { best.0 } else { 0 });
        }
    }
    out
}

/// CLIPSeg with int8 weights (and int8 token table): tessera's probabilities and classes of
/// each reference image (batch 1, the recorded prompts) against quantize.py's class fractions
/// of the variant and of fp32 (within 2e-3: 8 of the 4096 pixels may sit on the threshold), and
/// the pixel agreement with fp32 it reported (same tolerance).
#[test]
fn int8_segmenter_reproduces_the_recorded_classes_and_pixel_agreement() {
    let (name, fp32) = ("clipseg-tiny-int8", "clipseg-tiny");
    let q = quantization(name);
    let a = &q["agreement"];
    let prompts = common::reference::strings(&a["prompts"]);
    let threshold = num(&a["threshold"]) as f32;
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let load = |p: &str| {
        let mut m =
            SegmentationModel::load(rt, &package(p), &SessionOptions::default()).expect("model");
        m.set_prompts(&prompts).expect("prompts");
        m
    };
    let (mut mq, mut mf) = (load(name), load(fp32));
    let n = a["images"].as_array().expect("images").len();
    let px = reference_pixels(fp32, n, 64, &mf.normalizer());
    let mut diff = 0f32;
    for i in 0..n {
        let x = px.slice(ndarray::s![i..i + 1, .., .., ..]);
        let (pq, pf) = (mq.predict(x).expect("int8"), mf.predict(x).expect("fp32"));
        for (p, v) in pq.iter().zip(pf.iter()) {
            diff = diff.max((p - v).abs());
        }
        let (cq, cf) = (
            prompt_classes(&pq, threshold),
            prompt_classes(&pf, threshold),
        );
        for (classes, key, who) in [
            (&cq, "class_fractions", name),
            (&cf, "fp32_class_fractions", fp32),
        ] {
            for k in 0..=prompts.len() {
                let got = classes.iter().filter(|&&c| c == k).count() as f64 / classes.len() as f64;
                let want = num(&a[key][i][k]);
                assert!(
                    (got - want).abs() <= 2e-3,
                    "{who}: image {i} class {k}: tessera {got} vs quantize.py {want}"
                );
            }
        }
        let same = cq.iter().zip(&cf).filter(|(a, b)| a == b).count() as f64 / cq.len() as f64;
        let want = num(&a["pixel_agreement_per_image"][i]);
        assert!(
            (same - want).abs() <= 2e-3,
            "image {i}: pixel agreement {same} vs recorded {want}"
        );
    }
    let bound = num(&a["probabilities_max_abs_diff"]) as f32;
    assert!(diff <= bound + 1e-3, "{name}: {diff} > recorded {bound}");
    assert!(diff > 1e-3, "{name}: probabilities equal fp32's ({diff})");
}

/// Greedy matching as quantize.py's `match_boxes`: each box of `a` (score order) takes the
/// unmatched box of `b` of its class with the highest IoU >= 0.5.
fn matched(a: &[PixelBox], b: &[PixelBox]) -> usize {
    let iou = |p: &PixelBox, q: &PixelBox| {
        let iw = (p.x1.min(q.x1) - p.x0.max(q.x0)).max(0.0);
        let ih = (p.y1.min(q.y1) - p.y0.max(q.y0)).max(0.0);
        let inter = iw * ih;
        let union = p.width() * p.height() + q.width() * q.height() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    };
    let mut used = vec![false; b.len()];
    let mut n = 0;
    for p in a {
        let mut best: Option<(usize, f32)> = None;
        for (j, q) in b.iter().enumerate() {
            let v = iou(p, q);
            if !used[j] && q.class == p.class && v >= best.map_or(0.5, |b| b.1) {
                best = Some((j, v));
            }
        }
        if let Some((j, _)) = best {
            used[j] = true;
            n += 1;
        }
    }
    n
}

/// OWLv2 with int8 weights: tessera's boxes of each reference image (batch 1, the recorded
/// queries) equal quantize.py's for the variant and for fp32 (class; score within 1e-3, corners
/// within 0.05 px of the input), and the matched boxes (IoU >= 0.5, same class) at the
/// manifest's confidence and at the fp32 median score are the numbers it reported.
#[test]
fn int8_detector_reproduces_the_recorded_boxes_and_box_agreement() {
    detector_reproduces_the_recorded_boxes(&package("owlv2-tiny-int8"), "owlv2-tiny");
}

fn detector_reproduces_the_recorded_boxes(variant: &Path, fp32: &str) {
    let name = variant.file_name().expect("name").to_str().expect("utf-8");
    let q: Value = serde_json::from_str(
        &std::fs::read_to_string(variant.join("quantization.json")).expect("quantization"),
    )
    .expect("json");
    let a = &q["agreement"];
    let prompts = common::reference::strings(&a["prompts"]);
    let confidence = num(&a["confidence"]) as f32;
    let median = num(&a["at_fp32_median_score"]["confidence"]) as f32;
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let load = |p: &Path| {
        let mut m = DetectorModel::load(rt, p, &SessionOptions::default()).expect("model");
        m.set_queries(&prompts).expect("queries");
        m
    };
    let (mut mq, mut mf) = (load(variant), load(&package(fp32)));
    let n = a["images"].as_array().expect("images").len();
    let px = reference_pixels(fp32, n, mf.input_size(), &mf.normalizer());
    let (mut all, mut above, mut score_diff) = (0, 0, 0f32);
    for i in 0..n {
        let x = px.slice(ndarray::s![i..i + 1, .., .., ..]);
        let bq = mq.detect(x, confidence).expect("int8").remove(0);
        let bf = mf.detect(x, confidence).expect("fp32").remove(0);
        for (got, key, who) in [(&bq, "detections", name), (&bf, "fp32_detections", fp32)] {
            let want = a[key][i].as_array().expect("boxes");
            assert_eq!(got.len(), want.len(), "{who}: image {i}");
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g.class as u64, w["class"].as_u64().expect("class"), "{who}");
                assert!(
                    (f64::from(g.score) - num(&w["score"])).abs() < 1e-3,
                    "{who}: {g:?} vs {w}"
                );
                for (c, v) in [g.x0, g.y0, g.x1, g.y1]
                    .iter()
                    .zip(w["box"].as_array().expect("box"))
                {
                    assert!((f64::from(*c) - num(v)).abs() < 0.05, "{who}: {g:?} vs {w}");
                }
            }
        }
        for (p, f) in bq.iter().zip(&bf) {
            score_diff = score_diff.max((p.score - f.score).abs());
        }
        all += matched(&bf, &bq);
        let keep = |b: &[PixelBox]| -> Vec<PixelBox> {
            b.iter().filter(|d| d.score > median).cloned().collect()
        };
        above += matched(&keep(&bf), &keep(&bq));
    }
    assert_eq!(all as u64, a["matched_boxes"].as_u64().expect("matched"));
    assert_eq!(
        above as u64,
        a["at_fp32_median_score"]["matched_boxes"]
            .as_u64()
            .expect("matched")
    );
    assert!(score_diff > 1e-4, "{name}: scores equal fp32's");
}

/// SAM 2 with int8 encoder and mask decoder: tessera's masks and IoU scores of the recorded box
/// prompts on the fp32 package's reference tiles of the model size (one decoder run per tile,
/// as quantize.py ran it) against the recorded scores (1e-3) and mask areas (2e-3 of the tile)
/// of the variant and of fp32, and the recorded mask IoU with fp32 (within 0.01).
#[test]
fn int8_promptable_segmenter_reproduces_the_recorded_masks_and_mask_iou() {
    let (name, fp32) = ("sam2-tiny-int8", "sam2-tiny");
    let q = quantization(name);
    let a = &q["agreement"];
    let prompts: Vec<Prompt> = a["boxes"]
        .as_array()
        .expect("boxes")
        .iter()
        .map(|b| {
            let b: Vec<f32> = b
                .as_array()
                .expect("box")
                .iter()
                .map(|v| num(v) as f32)
                .collect();
            Prompt::from_box([b[0], b[1], b[2], b[3]])
        })
        .collect();
    let rt = Runtime::load(None).expect("ONNX Runtime (run `make setup`)");
    let load = |p: &str| {
        PromptableSegmenter::load(rt, &package(p), &SessionOptions::default()).expect("model")
    };
    let (mut sq, mut sf) = (load(name), load(fp32));
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(package(fp32).join("reference/reference.json")).expect("ref"),
    )
    .expect("json");
    let s = sf.input_size();
    let mut score_diff = 0f32;
    for (i, image) in a["images"].as_array().expect("images").iter().enumerate() {
        let t = reference["tiles"]
            .as_array()
            .expect("tiles")
            .iter()
            .find(|t| t["name"] == *image)
            .expect("tile");
        let hwc = std::fs::read(
            package(fp32)
                .join("reference")
                .join(t["image"]["file"].as_str().expect("file")),
        )
        .expect("tile");
        let mut x = Array4::<f32>::zeros((1, 3, s, s));
        for y in 0..s {
            for c in 0..s {
                for k in 0..3 {
                    x[[0, k, y, c]] = f32::from(hwc[(y * s + c) * 3 + k]) / 255.0;
                }
            }
        }
        sf.normalizer()
            .apply(x.as_slice_mut().expect("contiguous"), &vec![1u8; s * s]);
        let eq = sq.embed(x.view()).expect("embed").remove(0);
        let ef = sf.embed(x.view()).expect("embed").remove(0);
        let mq = sq.masks(&eq, &prompts).expect("int8");
        let mf = sf.masks(&ef, &prompts).expect("fp32");
        for (masks, pre, who) in [(&mq, "", name), (&mf, "fp32_", fp32)] {
            for (k, m) in masks.iter().enumerate() {
                let want = num(&a[format!("{pre}iou_scores")][i][k]);
                assert!(
                    (f64::from(m.score) - want).abs() < 1e-3,
                    "{who}: tile {i} box {k}"
                );
                let area = m.mask.iter().filter(|&&v| v).count() as f64 / (s * s) as f64;
                let want = num(&a[format!("{pre}mask_fractions")][i][k]);
                assert!(
                    (area - want).abs() <= 2e-3,
                    "{who}: tile {i} box {k}: {area} vs {want}"
                );
            }
        }
        for (k, (p, f)) in mq.iter().zip(&mf).enumerate() {
            score_diff = score_diff.max((p.score - f.score).abs());
            let inter = p
                .mask
                .iter()
                .zip(&f.mask)
                .filter(|(a, b)| **a && **b)
                .count();
            let union = p
                .mask
                .iter()
                .zip(&f.mask)
                .filter(|(a, b)| **a || **b)
                .count();
            let iou = if union == 0 {
                1.0
            } else {
                inter as f64 / union as f64
            };
            let want = num(&a["mask_iou"][i * prompts.len() + k]);
            assert!(
                (iou - want).abs() <= 0.01,
                "tile {i} box {k}: mask IoU {iou} vs {want}"
            );
        }
    }
    assert!(score_diff > 1e-4, "{name}: scores equal fp32's");
}
