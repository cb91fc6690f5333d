//! Quantised variants made by tools/export/quantize.py from committed fp32 fixtures:
//! siglip-tiny-int8 (dynamic int8), chinese-clip-tiny-int8-static (QDQ, calibrated on tiles of
//! sample_data/sentinel2_rgbn_10m.tif) and blip2-tiny-int4 (MatMulNBits language model).
//! Their manifests parse and `models check` reports their precision; `tessera classify` and
//! `tessera caption` run them and reproduce what quantize.py recorded in `quantization.json`
//! with ONNX Runtime from Python (scores / tokens of both the variant and its fp32 package),
//! so the agreement with fp32 that tessera sees is the one the export reported.

mod common;

use std::path::{Path, PathBuf};

use common::run;
use serde_json::Value;

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

const VARIANTS: [Variant; 3] = [
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
];

#[test]
fn manifests_record_the_precision_and_models_check_prints_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, fp32, precision, graphs) in VARIANTS {
        let q = quantization(name);
        assert_eq!(q["precision"], precision, "{name}");
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
                assert!(bytes < fp32_bytes, "{name} {file}: {bytes} >= {fp32_bytes}");
            }
        }
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

#[test]
fn int4_caption_reproduces_the_recorded_tokens_and_first_token_agreement() {
    let (name, fp32, _, _) = VARIANTS[2];
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
    // the int4 graph changes what the random model says (it is not the fp32 graph)
    assert!(got_q != got_f, "{name}: every caption equals fp32's");
}
