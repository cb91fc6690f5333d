//! `tessera models import` on downloaded-folder layouts of the committed tiny CLIP
//! (`sample_data/models/imports/clip-tiny-transformersjs`, made by
//! `tools/fixtures/make_import_layouts.py` from the same seeded model as
//! `sample_data/models/clip-tiny`): the imported package gives the probabilities PyTorch
//! computed for clip-tiny (`reference/reference.json`), the scale recovered from the combined
//! graph is clip-tiny's `logit_scale`, the int8 variant runs close to them, a combined graph
//! alone (optimum layout) is split and gives the same numbers, and bad folders fail with one
//! line naming the file and nothing written.
//!
//! The fixture's float32 graphs keep the token embedding as external data that is not
//! committed (`assemble.json` names its bytes in clip-tiny's text encoder): [`transformers_js`]
//! writes it into the temporary copy.
//!
//! Chinese-CLIP: `sample_data/models/imports/chinese-clip-tiny-combined`, a tiny random
//! `ChineseCLIPModel` whose folder has only the combined graph (with BERT's `token_type_ids`).
//!
//! SigLIP: `sample_data/models/imports/siglip-tiny-transformersjs` is `siglip-tiny`'s model in
//! the transformers.js layout, compared with siglip-tiny's PyTorch references.

mod common;

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array4};
use serde_json::Value;
use tessera::models::dual_encoder::DualEncoderModel;
use tessera::runtime::{Runtime, SessionOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> Value {
    let text = std::fs::read_to_string(common::clip_tiny().join("reference/reference.json"))
        .expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

/// The transformers.js fixture assembled in `tmp/name` (external data and tokenizer written).
fn transformers_js(tmp: &Path, name: &str) -> PathBuf {
    assemble("clip-tiny-transformersjs", tmp, name)
}

/// Fixture `fixture` of `sample_data/models/imports/` assembled in `tmp/name`: the files its
/// `assemble.json` names copied in from the committed packages.
fn assemble(fixture: &str, tmp: &Path, name: &str) -> PathBuf {
    let fixture = root().join("sample_data/models/imports").join(fixture);
    let dir = tmp.join(name);
    common::copy_dir(&fixture, &dir);
    let assemble: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.join("assemble.json")).expect("read"),
    )
    .expect("json");
    for (rel, spec) in assemble["files"].as_object().expect("files") {
        let bytes = std::fs::read(root().join(spec["from"].as_str().expect("from"))).expect("from");
        let bytes = match spec.get("offset") {
            Some(off) => {
                let off = off.as_u64().expect("offset") as usize;
                let len = spec["length"].as_u64().expect("length") as usize;
                bytes[off..off + len].to_vec()
            }
            None => bytes,
        };
        std::fs::write(dir.join(rel), bytes).expect("write");
    }
    std::fs::remove_file(dir.join("assemble.json")).expect("rm");
    dir
}

/// The optimum layout (`optimum-cli export onnx`): the combined graph at the top level.
fn optimum(tmp: &Path, name: &str) -> PathBuf {
    let tjs = transformers_js(tmp, &format!("{name}-src"));
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for f in [
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(tjs.join(f), dir.join(f)).expect("copy");
    }
    for f in ["model.onnx", "model.onnx_data"] {
        std::fs::copy(tjs.join("onnx").join(f), dir.join(f)).expect("copy");
    }
    std::fs::remove_dir_all(&tjs).expect("rm");
    dir
}

fn runtime() -> &'static Runtime {
    Runtime::load(None).expect("ONNX Runtime (run `make setup`)")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("str").to_string())
        .collect()
}

fn matrix(v: &Value) -> Array2<f32> {
    let rows: Vec<Vec<f32>> = v
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("num") as f32)
                .collect()
        })
        .collect();
    let (n, d) = (rows.len(), rows[0].len());
    Array2::from_shape_vec((n, d), rows.into_iter().flatten().collect()).expect("shape")
}

/// The package's probabilities for clip-tiny's reference images, labels and templates.
fn probabilities(package: &Path) -> Array2<f32> {
    let r = reference();
    let mut model =
        DualEncoderModel::load(runtime(), package, &SessionOptions::default()).expect("load");
    let (labels, _) = model
        .label_embeddings(&strings(&r["labels"]), &strings(&r["templates"]), None)
        .expect("labels");
    let bytes = std::fs::read(common::clip_tiny().join("reference/pixels_f32.bin")).expect("px");
    let px: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let s = model.input_size();
    let n = px.len() / (3 * s * s);
    let batch = Array4::from_shape_vec((n, 3, s, s), px).expect("shape");
    let emb = model.encode_images(batch.view()).expect("encode");
    model.probabilities(emb, &labels)
}

fn max_abs(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn manifest(package: &Path) -> toml::Table {
    std::fs::read_to_string(package.join("model.toml"))
        .expect("model.toml")
        .parse()
        .expect("toml")
}

fn logit_scale(package: &Path) -> f64 {
    manifest(package)["scores"]["logit_scale"]
        .as_float()
        .expect("logit_scale")
}

/// Nothing but `keep` in `dir` (no package, no temporary folder left).
fn only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "files left in {}", dir.display());
}

#[test]
fn transformers_js_fp32_gives_the_pytorch_probabilities_and_scale() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = transformers_js(tmp.path(), "clip-tiny-tjs");
    let run = common::run(
        tmp.path(),
        &[
            "models",
            "import",
            "clip-tiny-tjs",
            "--out",
            "pkg",
            "--json",
        ],
    );
    run.success();
    let report = run.json();
    assert_eq!(report["family"], "clip");
    assert_eq!(report["layout"], "transformers.js");
    assert_eq!(report["variant"], "fp32");
    assert_eq!(report["image_graph"], "onnx/vision_model.onnx");
    assert_eq!(report["text_graph"], "onnx/text_model.onnx");
    assert_eq!(report["scores_from"], "onnx/model.onnx");
    let pkg = tmp.path().join("pkg");

    // The scale recovered by running onnx/model.onnx is the checkpoint's exp(logit_scale).
    let want = reference()["logit_scale"].as_f64().expect("scale");
    let got = logit_scale(&pkg);
    assert!(
        ((got - want) / want).abs() < 1e-5,
        "recovered logit_scale {got}, PyTorch {want}"
    );

    // The manifest: the graphs' own names, the text graph without a mask input.
    let m = manifest(&pkg);
    assert_eq!(m["family"].as_str(), Some("clip"));
    assert_eq!(m["image"]["output"].as_str(), Some("image_embeds"));
    assert_eq!(m["text"]["output"].as_str(), Some("text_embeds"));
    assert!(m["text"].get("attention_mask").is_none());
    assert_eq!(m["preprocess"]["size"].as_integer(), Some(64));
    assert_eq!(m["preprocess"]["value_range"].as_float(), Some(255.0));
    assert_eq!(m["tokenizer"]["context_length"].as_integer(), Some(77));
    assert_eq!(m["tokenizer"]["pad_token_id"].as_integer(), Some(49407));
    assert_eq!(m["tokenizer"]["bos_token_id"].as_integer(), Some(49406));
    assert_eq!(m["tokenizer"]["eos_token_id"].as_integer(), Some(49407));
    let source = m["source"].as_str().expect("source");
    assert!(
        source.contains("transformers.js") && source.contains("variant fp32"),
        "{source}"
    );

    // Relative links into the source folder, external data included.
    for rel in [
        "onnx/vision_model.onnx",
        "onnx/text_model.onnx",
        "onnx/text_model.onnx_data",
        "tokenizer.json",
    ] {
        let link = std::fs::read_link(pkg.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(link.is_relative(), "{rel} -> {}", link.display());
        assert_eq!(
            pkg.join(rel).canonicalize().expect("target"),
            src.join(rel).canonicalize().expect("source")
        );
    }

    let got = probabilities(&pkg);
    let want = matrix(&reference()["probs"]);
    let err = max_abs(&got, &want);
    assert!(err <= 1e-4, "probabilities differ from PyTorch by {err}");

    common::run(tmp.path(), &["models", "check", "pkg"]).success();
}

#[test]
fn the_int8_variant_imports_and_runs_close_to_fp32() {
    let tmp = tempfile::tempdir().expect("tempdir");
    transformers_js(tmp.path(), "src");
    let run = common::run(
        tmp.path(),
        &[
            "models",
            "import",
            "src",
            "--out",
            "pkg8",
            "--variant",
            "int8",
            "--json",
        ],
    );
    run.success();
    // No `_int8` files: int8 falls back to transformers.js' `_quantized` (q8) graphs.
    assert_eq!(
        run.json()["image_graph"],
        "onnx/vision_model_quantized.onnx"
    );
    assert_eq!(run.json()["text_graph"], "onnx/text_model_quantized.onnx");
    let pkg = tmp.path().join("pkg8");
    let m = manifest(&pkg);
    assert!(m["source"]
        .as_str()
        .expect("source")
        .contains("variant int8"));
    let got = probabilities(&pkg);
    let want = matrix(&reference()["probs"]);
    let err = max_abs(&got, &want);
    // Measured on x86-64 (ONNX Runtime 1.31 CPU): 0.021; int8 kernels differ between CPUs
    // (VNNI or not), hence the margin.
    assert!(
        err > 1e-6 && err <= 0.05,
        "int8 probabilities differ from PyTorch fp32 by {err}"
    );
    eprintln!("int8 variant: max |p - p_fp32| = {err}");
    // The same variant by its transformers.js name.
    common::run(
        tmp.path(),
        &[
            "models",
            "import",
            "src",
            "--out",
            "pkgq",
            "--variant",
            "q8",
        ],
    )
    .success();
    assert_eq!(probabilities(&tmp.path().join("pkgq")), got);
}

#[test]
fn copy_makes_a_package_that_outlives_the_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    transformers_js(tmp.path(), "src");
    common::run(
        tmp.path(),
        &[
            "models", "import", "src", "--out", "pkg", "--copy", "--name", "mine",
        ],
    )
    .success();
    std::fs::remove_dir_all(tmp.path().join("src")).expect("rm");
    let pkg = tmp.path().join("pkg");
    for e in common::walk(&pkg) {
        assert!(
            !std::fs::symlink_metadata(&e)
                .expect("meta")
                .file_type()
                .is_symlink(),
            "{} is a link",
            e.display()
        );
    }
    assert_eq!(manifest(&pkg)["name"].as_str(), Some("mine"));
    let err = max_abs(&probabilities(&pkg), &matrix(&reference()["probs"]));
    assert!(err <= 1e-4, "{err}");
}

#[test]
fn an_optimum_combined_graph_is_split_and_gives_the_same_numbers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    optimum(tmp.path(), "opt");
    let run = common::run(
        tmp.path(),
        &["models", "import", "opt", "--out", "pkg", "--json"],
    );
    run.success();
    let r = run.json();
    assert_eq!(r["layout"], "optimum");
    assert_eq!(r["image_graph"], "image_encoder.onnx");
    assert_eq!(r["text_graph"], "text_encoder.onnx");
    assert_eq!(r["scores_from"], "model.onnx");
    let pkg = tmp.path().join("pkg");
    let m = manifest(&pkg);
    assert_eq!(m["text"]["attention_mask"].as_str(), Some("attention_mask"));
    // The rewritten graphs are files of the package.
    assert!(!std::fs::symlink_metadata(pkg.join("image_encoder.onnx"))
        .expect("meta")
        .file_type()
        .is_symlink());
    // ONNX Runtime refuses external data through a link out of the graph's folder: the
    // weights are hard-linked (same file system here), not symbolically linked.
    assert!(!std::fs::symlink_metadata(pkg.join("model.onnx_data"))
        .expect("meta")
        .file_type()
        .is_symlink());
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::metadata(pkg.join("model.onnx_data")).expect("meta");
        let b = std::fs::metadata(tmp.path().join("opt/model.onnx_data")).expect("meta");
        assert_eq!(a.ino(), b.ino(), "hard link");
    }
    let want = reference()["logit_scale"].as_f64().expect("scale");
    assert!(((logit_scale(&pkg) - want) / want).abs() < 1e-5);
    let err = max_abs(&probabilities(&pkg), &matrix(&reference()["probs"]));
    assert!(
        err <= 1e-4,
        "split combined graph: probabilities off by {err}"
    );
    // Each split graph takes only its own tower's inputs.
    let rt = runtime();
    let img = tessera::runtime::create_session(
        rt,
        &pkg.join("image_encoder.onnx"),
        &SessionOptions::default(),
    )
    .expect("image graph");
    let names: Vec<String> = img.inputs().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["pixel_values"]);
    let outs: Vec<String> = img.outputs().into_iter().map(|o| o.name).collect();
    assert_eq!(outs, ["image_embeds"]);
}

#[test]
fn a_given_scale_is_used_when_there_is_no_combined_graph() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = transformers_js(tmp.path(), "src");
    std::fs::remove_file(src.join("onnx/model.onnx")).expect("rm");
    std::fs::remove_file(src.join("onnx/model.onnx_data")).expect("rm");
    let want = reference()["logit_scale"].as_f64().expect("scale");
    let scale = format!("{want}");
    common::run(
        tmp.path(),
        &[
            "models",
            "import",
            "src",
            "--out",
            "pkg",
            "--logit-scale",
            &scale,
        ],
    )
    .success();
    let pkg = tmp.path().join("pkg");
    assert!(((logit_scale(&pkg) - want) / want).abs() < 1e-6);
    assert!(manifest(&pkg)["source"]
        .as_str()
        .expect("source")
        .contains("scores from --logit-scale"));
    let err = max_abs(&probabilities(&pkg), &matrix(&reference()["probs"]));
    assert!(err <= 1e-4, "{err}");
}

/// Bad folders and flags: one line naming the file (or flag) and the cause, exit 1, nothing
/// written next to --out.
#[test]
fn bad_input_fails_with_one_line_and_writes_nothing() {
    type Break = fn(&Path);
    let cases: Vec<(&str, Break, Vec<&str>, Vec<&str>)> = vec![
        (
            "missing tokenizer.json",
            |d| std::fs::remove_file(d.join("tokenizer.json")).expect("rm"),
            vec![],
            vec!["tokenizer.json", "no such file"],
        ),
        (
            "unknown model_type",
            |d| {
                let p = d.join("config.json");
                let t = std::fs::read_to_string(&p).expect("read");
                std::fs::write(
                    &p,
                    t.replace("\"model_type\": \"clip\"", "\"model_type\": \"bert\""),
                )
                .expect("write");
            },
            vec![],
            vec![
                "config.json",
                "model_type 'bert'",
                "clip, siglip, siglip2, chinese_clip",
            ],
        ),
        (
            "missing variant",
            |_| {},
            vec!["--variant", "fp16"],
            vec![
                "no fp16 variant",
                "vision_model_fp16.onnx",
                "the folder has: fp32, int8, quantized",
            ],
        ),
        (
            "missing --logit-scale",
            |d| {
                std::fs::remove_file(d.join("onnx/model.onnx")).expect("rm");
                std::fs::remove_file(d.join("onnx/model.onnx_data")).expect("rm");
            },
            vec![],
            vec!["--logit-scale", "config.json", "model.onnx"],
        ),
        (
            "missing external data",
            |d| std::fs::remove_file(d.join("onnx/text_model.onnx_data")).expect("rm"),
            vec![],
            vec!["text_model.onnx_data", "no such file"],
        ),
        (
            "--logit-bias for a softmax family",
            |_| {},
            vec!["--logit-scale", "10", "--logit-bias", "-3"],
            vec!["--logit-bias", "only SigLIP"],
        ),
        (
            "malformed config.json",
            |d| std::fs::write(d.join("config.json"), "{ not json").expect("write"),
            vec![],
            vec!["config.json", "not valid JSON"],
        ),
        (
            "non-square crop",
            |d| {
                let p = d.join("preprocessor_config.json");
                let t = std::fs::read_to_string(&p).expect("read");
                std::fs::write(&p, t.replacen("\"width\": 64", "\"width\": 48", 1)).expect("write");
            },
            vec![],
            vec!["preprocessor_config.json", "64 x 48", "square"],
        ),
        (
            // A family whose check refuses the package (chinese-clip wants a WordPiece
            // tokenizer): the written package is removed.
            "a package that fails its family's check",
            |d| {
                let p = d.join("config.json");
                let t = std::fs::read_to_string(&p).expect("read");
                std::fs::write(
                    &p,
                    t.replace(
                        "\"model_type\": \"clip\"",
                        "\"model_type\": \"chinese_clip\"",
                    ),
                )
                .expect("write");
            },
            vec![],
            vec!["not valid (removed)", "tokenizer"],
        ),
    ];
    for (what, breaker, flags, needles) in cases {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = transformers_js(tmp.path(), "src");
        breaker(&src);
        let mut args = vec!["models", "import", "src", "--out", "pkg"];
        args.extend(flags);
        let run = common::run(tmp.path(), &args);
        eprintln!("{what}: {}", run.stderr().trim());
        run.fails_with(&needles);
        only(tmp.path(), &["src"]);
    }
}

#[test]
fn an_existing_out_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    transformers_js(tmp.path(), "src");
    std::fs::create_dir(tmp.path().join("pkg")).expect("mkdir");
    std::fs::write(tmp.path().join("pkg/keep.txt"), "mine").expect("write");
    common::run(tmp.path(), &["models", "import", "src", "--out", "pkg"])
        .fails_with(&["pkg", "already exists and is not an empty folder"]);
    only(&tmp.path().join("pkg"), &["keep.txt"]);
    only(tmp.path(), &["src", "pkg"]);
    // An existing file too; an empty folder is taken.
    std::fs::write(tmp.path().join("file"), "x").expect("write");
    common::run(tmp.path(), &["models", "import", "src", "--out", "file"])
        .fails_with(&["file", "already exists"]);
    std::fs::create_dir(tmp.path().join("empty")).expect("mkdir");
    common::run(tmp.path(), &["models", "import", "src", "--out", "empty"]).success();
    assert!(tmp.path().join("empty/model.toml").is_file());
}

#[test]
fn help_explains_layouts_variants_and_scores() {
    let run = common::run(&root(), &["models", "import", "--help"]);
    run.success();
    let help = run.stdout();
    for needle in [
        "--variant",
        "q4f16",
        "bnb4",
        "--logit-scale",
        "--logit-bias",
        "--copy",
        "transformers.js",
        "optimum",
        "model_type",
        "the softmax probabilities do",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

/// siglip-tiny's PyTorch references (`export.py siglip --tiny`), which the fixture's graphs
/// (the same seeded model in the transformers.js layout) must reproduce.
fn siglip_reference() -> Value {
    let dir = root().join("sample_data/models/siglip-tiny/reference");
    assert_eq!(
        std::fs::read(dir.join("images_u8.bin")).expect("images"),
        std::fs::read(common::clip_tiny().join("reference/images_u8.bin")).expect("images"),
        "the reference images of siglip-tiny and clip-tiny"
    );
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

#[test]
fn siglip_transformers_js_recovers_scale_and_bias_and_gives_the_pytorch_scores() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assemble("siglip-tiny-transformersjs", tmp.path(), "siglip");
    let run = common::run(
        tmp.path(),
        &["models", "import", "siglip", "--out", "pkg", "--json"],
    );
    run.success();
    assert_eq!(run.json()["family"], "siglip");
    let pkg = tmp.path().join("pkg");
    let m = manifest(&pkg);
    assert_eq!(m["family"].as_str(), Some("siglip"));
    assert_eq!(m["image"]["output"].as_str(), Some("pooler_output"));
    assert_eq!(m["text"]["output"].as_str(), Some("pooler_output"));
    assert!(m["text"].get("attention_mask").is_none(), "SigLIP: no mask");
    assert_eq!(m["tokenizer"]["context_length"].as_integer(), Some(64));
    assert!(m["tokenizer"].get("bos_token_id").is_none());
    assert_eq!(
        m["tokenizer"]["pad_token_id"].as_integer(),
        m["tokenizer"]["eos_token_id"].as_integer()
    );
    assert_eq!(m["preprocess"]["mean"].as_array().map(Vec::len), Some(3));

    let r = siglip_reference();
    let want_scale = r["logit_scale"].as_f64().expect("scale");
    let want_bias = r["logit_bias"].as_f64().expect("bias");
    let scale = m["scores"]["logit_scale"].as_float().expect("scale");
    let bias = m["scores"]["logit_bias"].as_float().expect("bias");
    assert!(
        ((scale - want_scale) / want_scale).abs() < 1e-5,
        "recovered logit_scale {scale}, PyTorch {want_scale}"
    );
    assert!(
        (bias - want_bias).abs() < 1e-4,
        "recovered logit_bias {bias}, PyTorch {want_bias}"
    );

    let mut model =
        DualEncoderModel::load(runtime(), &pkg, &SessionOptions::default()).expect("load");
    let tokens = model.tokenize(&strings(&r["prompts"])).expect("tokenize");
    let want_ids: Vec<i64> = r["token_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .flat_map(|row| row.as_array().expect("row").clone())
        .map(|v| v.as_i64().expect("id"))
        .collect();
    assert_eq!(tokens.ids, want_ids, "token ids");
    let (labels, _) = model
        .label_embeddings(&strings(&r["labels"]), &strings(&r["templates"]), None)
        .expect("labels");
    let u8s = std::fs::read(common::clip_tiny().join("reference/images_u8.bin")).expect("images");
    let s = model.input_size();
    let n = u8s.len() / (s * s * 3);
    let batch = Array4::from_shape_fn((n, 3, s, s), |(i, c, y, x)| {
        (f32::from(u8s[((i * s + y) * s + x) * 3 + c]) / 255.0 - 0.5) / 0.5
    });
    let emb = model.encode_images(batch.view()).expect("encode");
    let got = model.probabilities(emb, &labels);
    let err = max_abs(&got, &matrix(&r["probs"]));
    assert!(
        err <= 1e-4,
        "SigLIP sigmoid scores differ from PyTorch by {err}"
    );
}

#[test]
fn siglip_without_a_combined_graph_needs_both_flags() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("siglip");
    assemble("siglip-tiny-transformersjs", tmp.path(), "siglip");
    std::fs::remove_file(src.join("onnx/model.onnx")).expect("rm");
    common::run(tmp.path(), &["models", "import", "siglip", "--out", "pkg"])
        .fails_with(&["--logit-scale and --logit-bias", "logit_bias"]);
    common::run(
        tmp.path(),
        &[
            "models",
            "import",
            "siglip",
            "--out",
            "pkg",
            "--logit-scale",
            "10",
        ],
    )
    .fails_with(&["--logit-bias"]);
    only(tmp.path(), &["siglip"]);
    let r = siglip_reference();
    let (scale, bias) = (
        format!("{}", r["logit_scale"].as_f64().expect("scale")),
        format!("{}", r["logit_bias"].as_f64().expect("bias")),
    );
    common::run(
        tmp.path(),
        &[
            "models",
            "import",
            "siglip",
            "--out",
            "pkg",
            "--logit-scale",
            &scale,
            "--logit-bias",
            &bias,
        ],
    )
    .success();
    let m = manifest(&tmp.path().join("pkg"));
    assert!(
        (m["scores"]["logit_bias"].as_float().expect("bias")
            - r["logit_bias"].as_f64().expect("b"))
        .abs()
            < 1e-6
    );
}

/// A package's probabilities for clip-tiny's reference images (`images_u8.bin`, normalised
/// with the package's mean and std) against a fixture's `reference.json` labels and templates.
fn probabilities_u8(pkg: &Path, r: &Value) -> (Array2<f32>, Vec<i64>) {
    let mut model =
        DualEncoderModel::load(runtime(), pkg, &SessionOptions::default()).expect("load");
    let tokens = model.tokenize(&strings(&r["prompts"])).expect("tokenize");
    let (labels, _) = model
        .label_embeddings(&strings(&r["labels"]), &strings(&r["templates"]), None)
        .expect("labels");
    let u8s = std::fs::read(common::clip_tiny().join("reference/images_u8.bin")).expect("images");
    let mean: Vec<f32> = r["mean"]
        .as_array()
        .expect("mean")
        .iter()
        .map(|v| v.as_f64().expect("m") as f32)
        .collect();
    let std: Vec<f32> = r["std"]
        .as_array()
        .expect("std")
        .iter()
        .map(|v| v.as_f64().expect("s") as f32)
        .collect();
    let s = model.input_size();
    let n = u8s.len() / (s * s * 3);
    let batch = Array4::from_shape_fn((n, 3, s, s), |(i, c, y, x)| {
        (f32::from(u8s[((i * s + y) * s + x) * 3 + c]) / 255.0 - mean[c]) / std[c]
    });
    let emb = model.encode_images(batch.view()).expect("encode");
    (model.probabilities(emb, &labels), tokens.ids)
}

#[test]
fn chinese_clip_combined_graph_with_token_types_is_split_and_matches_pytorch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fixture = root().join("sample_data/models/imports/chinese-clip-tiny-combined");
    common::copy_dir(&fixture, &tmp.path().join("cc"));
    let run = common::run(
        tmp.path(),
        &["models", "import", "cc", "--out", "pkg", "--json"],
    );
    run.success();
    let report = run.json();
    assert_eq!(report["family"], "chinese-clip");
    assert_eq!(report["layout"], "transformers.js (combined graph only)");
    assert_eq!(report["image_graph"], "onnx/image_encoder.onnx");
    assert_eq!(report["text_graph"], "onnx/text_encoder.onnx");
    let pkg = tmp.path().join("pkg");
    let m = manifest(&pkg);
    assert_eq!(m["text"]["attention_mask"].as_str(), Some("attention_mask"));
    assert_eq!(m["tokenizer"]["context_length"].as_integer(), Some(52));
    // token_type_ids is a constant of the rewritten graphs, not an input.
    let text = tessera::runtime::create_session(
        runtime(),
        &pkg.join("onnx/text_encoder.onnx"),
        &SessionOptions::default(),
    )
    .expect("text graph");
    let mut names: Vec<String> = text.inputs().into_iter().map(|i| i.name).collect();
    names.sort();
    assert_eq!(names, ["attention_mask", "input_ids"]);

    let text = std::fs::read_to_string(fixture.join("reference.json")).expect("reference");
    let r: Value = serde_json::from_str(&text).expect("json");
    let want = r["logit_scale"].as_f64().expect("scale");
    assert!(((logit_scale(&pkg) - want) / want).abs() < 1e-5);
    let (probs, ids) = probabilities_u8(&pkg, &r);
    let want_ids: Vec<i64> = r["token_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .flat_map(|row| row.as_array().expect("row").clone())
        .map(|v| v.as_i64().expect("id"))
        .collect();
    assert_eq!(ids, want_ids, "token ids");
    let err = max_abs(&probs, &matrix(&r["probs"]));
    assert!(
        err <= 1e-4,
        "Chinese-CLIP probabilities differ from PyTorch by {err}"
    );
}

/// A `2 x 2`-tile RGB GeoTIFF whose tile `k` (row-major) is clip-tiny's reference image `k`.
fn reference_scene(path: &Path) {
    let images =
        std::fs::read(common::clip_tiny().join("reference/images_u8.bin")).expect("images");
    let s = 64;
    let (w, h) = (2 * s, 2 * s);
    let driver = gdal::DriverManager::get_driver_by_name("GTiff").expect("driver");
    let mut ds = driver
        .create_with_band_type::<u8, _>(path, w, h, 3)
        .expect("create");
    ds.set_geo_transform(&[600_000.0, 2.0, 0.0, 5_000_000.0, 0.0, -2.0])
        .expect("gt");
    ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32632).expect("srs"))
        .expect("srs");
    for band in 0..3 {
        let mut plane = vec![0u8; w * h];
        for y in 0..h {
            for x in 0..w {
                let img = (y / s) * 2 + x / s;
                plane[y * w + x] = images[((img * s + y % s) * s + x % s) * 3 + band];
            }
        }
        ds.rasterband(band + 1)
            .expect("band")
            .write(
                (0, 0),
                (w, h),
                &mut gdal::raster::Buffer::new((w, h), plane),
            )
            .expect("write");
    }
    ds.close().expect("close");
}

/// The imported package (links into the folder, external data through them) runs through
/// `tessera classify`: every tile's probabilities are PyTorch's for its reference image.
#[test]
fn classify_with_an_imported_package_matches_the_reference_per_tile() {
    let tmp = tempfile::tempdir().expect("tempdir");
    transformers_js(tmp.path(), "src");
    common::run(tmp.path(), &["models", "import", "src", "--out", "pkg"]).success();
    reference_scene(&tmp.path().join("scene.tif"));
    let r = reference();
    let labels = strings(&r["labels"]).join(",");
    let mut args = vec![
        "classify",
        "scene.tif",
        "--model",
        "pkg",
        "--labels",
        &labels,
        "--no-cache",
        "--quiet",
        "--out",
        "out",
    ];
    let templates = strings(&r["templates"]);
    for t in &templates {
        args.extend(["--template", t.as_str()]);
    }
    common::run(tmp.path(), &args).success();
    let want = matrix(&r["probs"]);
    let ds = gdal::Dataset::open(tmp.path().join("out/probabilities.tif")).expect("probs");
    assert_eq!(ds.raster_size(), (2, 2));
    let mut worst = 0f32;
    for k in 0..want.ncols() {
        let band = ds
            .rasterband(k + 1)
            .expect("band")
            .read_as::<f32>((0, 0), (2, 2), (2, 2), None)
            .expect("read");
        for (img, got) in band.data().iter().enumerate() {
            worst = worst.max((got - want[[img, k]]).abs());
        }
    }
    assert!(
        worst <= 1e-4,
        "classify probabilities differ from PyTorch by {worst}"
    );
}
