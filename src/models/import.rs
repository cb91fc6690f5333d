//! `tessera models import`: a tessera package (`model.toml` and links or copies) made from a
//! folder of ONNX files as people download them instead of exporting:
//!
//! * the transformers.js convention (`Xenova/*`, `onnx-community/*` repositories):
//!   `config.json`, `preprocessor_config.json`, `tokenizer.json`, `onnx/vision_model.onnx` and
//!   `onnx/text_model.onnx`, with precision variants named by a suffix (`_fp16`, `_int8`,
//!   `_uint8`, `_quantized`, `_q4`, `_q4f16`, `_bnb4`), often also the combined
//!   `onnx/model.onnx`;
//! * Hugging Face `optimum` exports (`optimum-cli export onnx`): one combined `model.onnx`
//!   (inputs `input_ids`, `pixel_values`, `attention_mask`; outputs `logits_per_image`,
//!   `logits_per_text`, `text_embeds`, `image_embeds`) next to the same JSON files.
//!
//! The family comes from `config.json`'s `model_type`. The score scaling (`logit_scale`, and
//! SigLIP's `logit_bias`) is not in `config.json` (only its initial value is): it is recovered
//! by running the combined graph once on two small images and four texts (its logits are
//! `scale * cos (+ bias)`, a least-squares fit that must be exact to float rounding), or given
//! with `--logit-scale`/`--logit-bias`.
//!
//! A folder with only a combined graph is split here into an image graph and a text graph:
//! the other tower's inputs become constants (one all-zero image, the empty prompt) and the
//! outputs are cut to the one embedding. ONNX Runtime folds a tower whose inputs are all
//! constants when it loads the graph, so each run computes only its own tower; the cost is
//! disk (two rewritten copies of the graph's protobuf, and its external weight files
//! hard-linked, or copied across file systems: ONNX Runtime refuses external data reached
//! through a symbolic link that leaves the graph's folder) and that each graph holds both
//! towers' weights in memory (about twice the combined model's size, where split
//! transformers.js graphs hold each tower once).
//!
//! The package is written under a temporary name next to `--out`, checked with its family's
//! [`super::registry::ModelFamily::check`], and renamed when valid; nothing is left otherwise.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use ndarray::{Array2, Array4};
use ort::value::TensorRef;
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use super::tokenizer::{load_tokenizer, tokenize_prompts};
use super::{registry, ModelError, ModelPackage, TokenizerSpec};
use crate::runtime::{create_session, ModelSession, Runtime, SessionOptions, TensorSpec};

/// What went wrong with an import. Every variant names the file (or flag) concerned.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A file of the source folder is missing or not what it should be.
    #[error("{path}: {reason}")]
    Source { path: String, reason: String },
    /// The output folder cannot be written.
    #[error("{path}: {reason}")]
    Output { path: String, reason: String },
    /// A value the folder does not hold and the command line must give.
    #[error("{path}: {reason}; give it with {flag}")]
    NeedsFlag {
        path: String,
        flag: &'static str,
        reason: String,
    },
    /// A flag that does not apply.
    #[error("{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    /// The written package fails its family's check (it was removed).
    #[error("{path}: the imported package is not valid (removed): {}", problems.join("; "))]
    Check { path: String, problems: Vec<String> },
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn source_err(path: &Path, reason: impl Into<String>) -> ImportError {
    ImportError::Source {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn output_err(path: &Path, reason: impl Into<String>) -> ImportError {
    ImportError::Output {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// A precision variant of the transformers.js convention, named by its file-name suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Fp32,
    Fp16,
    Int8,
    Uint8,
    Q4,
    Q4f16,
    Bnb4,
    Quantized,
}

impl Variant {
    pub const ALL: [Variant; 8] = [
        Variant::Fp32,
        Variant::Fp16,
        Variant::Int8,
        Variant::Uint8,
        Variant::Q4,
        Variant::Q4f16,
        Variant::Bnb4,
        Variant::Quantized,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Fp32 => "fp32",
            Variant::Fp16 => "fp16",
            Variant::Int8 => "int8",
            Variant::Uint8 => "uint8",
            Variant::Q4 => "q4",
            Variant::Q4f16 => "q4f16",
            Variant::Bnb4 => "bnb4",
            Variant::Quantized => "quantized",
        }
    }

    /// The file-name suffixes that hold this variant, in the order they are looked for:
    /// `int8` is `_int8`, else `_quantized` (transformers.js' `q8`: 8-bit dynamic
    /// quantization, which most `Xenova/*` repositories ship under that name only).
    pub fn suffixes(self) -> &'static [&'static str] {
        match self {
            Variant::Fp32 => &[""],
            Variant::Fp16 => &["_fp16"],
            Variant::Int8 => &["_int8", "_quantized"],
            Variant::Uint8 => &["_uint8"],
            Variant::Q4 => &["_q4"],
            Variant::Q4f16 => &["_q4f16"],
            Variant::Bnb4 => &["_bnb4"],
            Variant::Quantized => &["_quantized"],
        }
    }

    /// The variant named `s` (`q8` is accepted for `quantized`, as transformers.js names it).
    pub fn parse(s: &str) -> Option<Variant> {
        if s == "q8" {
            return Some(Variant::Quantized);
        }
        Variant::ALL.into_iter().find(|v| v.name() == s)
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What `tessera models import` was asked.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub dir: PathBuf,
    pub out: PathBuf,
    pub variant: Variant,
    /// Copy the files instead of linking them (relative symbolic links into `dir`).
    pub copy: bool,
    pub logit_scale: Option<f32>,
    pub logit_bias: Option<f32>,
    pub name: Option<String>,
}

/// What was imported.
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    pub package: PathBuf,
    pub source: PathBuf,
    pub family: String,
    pub model_type: String,
    /// `transformers.js` or `optimum` (a combined graph only).
    pub layout: &'static str,
    pub variant: Variant,
    pub image_graph: String,
    pub text_graph: String,
    pub logit_scale: f32,
    pub logit_bias: Option<f32>,
    /// Where the scores came from: the combined graph's file, or the flags.
    pub scores_from: String,
    /// `link` or `copy`.
    pub files: &'static str,
}

/// The families an import knows, by `config.json` `model_type`.
const MODEL_TYPES: [(&str, &str); 4] = [
    ("clip", "clip"),
    ("siglip", "siglip"),
    ("siglip2", "siglip"),
    ("chinese_clip", "chinese-clip"),
];

/// How a family's graphs name their embeddings, best first.
fn output_names(family: &str) -> (&'static [&'static str], &'static [&'static str]) {
    if family == "siglip" {
        (
            &["pooler_output", "image_embeds"],
            &["pooler_output", "text_embeds"],
        )
    } else {
        (&["image_embeds"], &["text_embeds"])
    }
}

/// Import `opts.dir` as a tessera package at `opts.out`.
///
/// # Errors
/// [`ImportError`]: a missing or malformed source file, a variant the folder lacks, scores
/// that must be given as flags, an existing non-empty `--out`, or a package that fails its
/// family's check.
pub fn import_folder(runtime: &Runtime, opts: &ImportOptions) -> Result<ImportReport, ImportError> {
    if !opts.dir.is_dir() {
        return Err(source_err(&opts.dir, "no such folder"));
    }
    let dir = opts
        .dir
        .canonicalize()
        .map_err(|e| source_err(&opts.dir, e.to_string()))?;
    let out = absolute_out(&opts.out)?;

    // config.json: the family.
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| source_err(&config_path, "no \"model_type\""))?
        .to_string();
    let family = MODEL_TYPES
        .iter()
        .find(|(t, _)| *t == model_type)
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            let known: Vec<&str> = MODEL_TYPES.iter().map(|(t, _)| *t).collect();
            source_err(
                &config_path,
                format!(
                    "model_type '{model_type}' is not a dual encoder tessera imports (supported: {})",
                    known.join(", ")
                ),
            )
        })?;
    let Some(family_impl) = registry::family(family) else {
        return Err(source_err(
            &config_path,
            format!(
                "model_type '{model_type}' needs the '{family}' family, which this build lacks ({})",
                registry::unknown_family(family)
            ),
        ));
    };
    let siglip = family == "siglip";
    check_score_flags(opts, siglip)?;

    // Tokenizer and preprocessing.
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(source_err(
            &tokenizer_path,
            "no such file (tessera reads the fast-tokenizer file tokenizer.json)",
        ));
    }
    let tokenizer = load_tokenizer(&tokenizer_path)?;
    let tok = tokenizer_spec(&dir, &config, &tokenizer_path, &tokenizer)?;
    let pre = preprocess(&dir, &config)?;

    // The graphs.
    let graphs = find_graphs(&dir, opts.variant)?;
    let cpu = SessionOptions::default();
    let session = |rel: &str| -> Result<ModelSession, ImportError> {
        external_files(&dir, rel)?;
        create_session(runtime, &dir.join(rel), &cpu)
            .map_err(|e| source_err(&dir.join(rel), format!("cannot load: {e}")))
    };
    let (image_out_names, text_out_names) = output_names(family);

    // Scores: flags, else the combined graph.
    let (logit_scale, logit_bias, scores_from) = match (opts.logit_scale, &graphs.combined) {
        (Some(s), _) => (s, opts.logit_bias, "--logit-scale".to_string()),
        (None, Some(rel)) => {
            let mut s = session(rel)?;
            let (scale, bias) = recover_scores(&mut s, &dir.join(rel), &tokenizer, &tok, &pre, siglip)?;
            let bias = match (opts.logit_bias, bias) {
                (Some(b), _) => Some(b),
                (None, b) => b,
            };
            (scale, bias, rel.clone())
        }
        (None, None) => {
            return Err(ImportError::NeedsFlag {
                path: dir.display().to_string(),
                flag: if siglip {
                    "--logit-scale and --logit-bias"
                } else {
                    "--logit-scale"
                },
                reason: format!(
                    "the trained {} not in config.json (only the initial values are) and there is no combined model.onnx to recover {} from",
                    if siglip { "logit_scale and logit_bias are" } else { "logit_scale is" },
                    if siglip { "them" } else { "it" }
                ),
            })
        }
    };
    if siglip && logit_bias.is_none() {
        return Err(ImportError::NeedsFlag {
            path: dir.display().to_string(),
            flag: "--logit-bias",
            reason: "a SigLIP model's scores need the bias too (with --logit-scale, give both)"
                .into(),
        });
    }

    // The package files: names kept as in the source folder.
    let mut files: BTreeSet<String> = BTreeSet::new();
    let mut generated: Vec<(String, Vec<u8>)> = Vec::new();
    let mut materialize: BTreeSet<String> = BTreeSet::new();
    let (image_rel, text_rel, image_spec, text_spec, layout) = match &graphs.split {
        Some((v, t)) => {
            let vs = session(v)?;
            let ts = session(t)?;
            let image = image_io(&dir.join(v), &vs, image_out_names)?;
            let text = text_io(&dir.join(t), &ts, text_out_names)?;
            files.insert(v.clone());
            files.extend(external_files(&dir, v)?);
            let text_rel = match &text.token_type {
                None => {
                    files.insert(t.clone());
                    files.extend(external_files(&dir, t)?);
                    t.clone()
                }
                Some(name) => {
                    // token_type_ids (one segment: zeros) become a constant of a rewritten
                    // copy of the text graph; its external data is hard-linked (see below).
                    let path = dir.join(t);
                    let bytes =
                        std::fs::read(&path).map_err(|e| source_err(&path, e.to_string()))?;
                    let l = tok.context_length;
                    let zeros = proto::Constant::int64(name, &[1, l as i64], &vec![0; l]);
                    let rewritten = proto::rewrite(&bytes, &[zeros], &[text.output.as_str()])
                        .map_err(|e| source_err(&path, e))?;
                    let rel = format!("{}text_encoder.onnx", parent_of(t));
                    generated.push((rel.clone(), rewritten));
                    let data = external_files(&dir, t)?;
                    materialize.extend(data.iter().cloned());
                    files.extend(data);
                    rel
                }
            };
            (v.clone(), text_rel, image, text, "transformers.js")
        }
        None => {
            let rel = graphs
                .combined
                .clone()
                .ok_or_else(|| source_err(&dir, "no ONNX graphs"))?;
            let path = dir.join(&rel);
            let cs = session(&rel)?;
            let bytes = std::fs::read(&path).map_err(|e| source_err(&path, e.to_string()))?;
            let split = split_combined(&path, &cs, &tokenizer, &tok, &pre)?;
            let parent = parent_of(&rel);
            let image_rel = format!("{parent}image_encoder.onnx");
            let text_rel = format!("{parent}text_encoder.onnx");
            let image = GraphIo {
                input: split.inputs.pixel_values.clone(),
                output: pick_output(&path, &cs.outputs(), image_out_names)?,
                mask: None,
                token_type: None,
            };
            let text = GraphIo {
                input: split.inputs.input_ids.clone(),
                output: pick_output(&path, &cs.outputs(), text_out_names)?,
                mask: split.inputs.attention_mask.clone(),
                token_type: None,
            };
            let image_bytes =
                proto::rewrite(&bytes, &split.text_constants, &[image.output.as_str()])
                    .map_err(|e| source_err(&path, e))?;
            let text_bytes =
                proto::rewrite(&bytes, &split.image_constants, &[text.output.as_str()])
                    .map_err(|e| source_err(&path, e))?;
            generated.push((image_rel.clone(), image_bytes));
            generated.push((text_rel.clone(), text_bytes));
            // ONNX Runtime refuses external data whose real path leaves the graph's folder:
            // the rewritten graphs (files of the package) need their weights hard-linked (or
            // copied), not symbolically linked.
            let data = external_files(&dir, &rel)?;
            materialize.extend(data.iter().cloned());
            files.extend(data);
            let layout = if rel.contains('/') {
                "transformers.js (combined graph only)"
            } else {
                "optimum"
            };
            (image_rel, text_rel, image, text, layout)
        }
    };
    files.insert("tokenizer.json".into());
    for extra in [
        "config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        if dir.join(extra).is_file() {
            files.insert(extra.into());
        }
    }

    let name = opts.name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map_or_else(|| "imported".into(), |n| n.to_string_lossy().into_owned())
    });
    let architecture = (model_type == "siglip2").then_some("siglip2");
    let source_line = format!(
        "imported by tessera {} from {} ({layout} layout, variant {}: {image_rel}, {text_rel}), scores from {scores_from}",
        env!("CARGO_PKG_VERSION"),
        dir.display(),
        opts.variant,
    );
    let manifest = manifest_text(&ManifestParts {
        family,
        architecture,
        name: &name,
        source: &source_line,
        image_rel: &image_rel,
        text_rel: &text_rel,
        image: &image_spec,
        text: &text_spec,
        pre: &pre,
        tok: &tok,
        logit_scale,
        logit_bias: if siglip { logit_bias } else { None },
    });

    // Write under a temporary name next to --out, check, rename.
    let parent = out
        .parent()
        .ok_or_else(|| output_err(&out, "no parent folder"))?;
    let out_name = out
        .file_name()
        .ok_or_else(|| output_err(&out, "no folder name"))?
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{out_name}.import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = write_package(
        &tmp,
        &out,
        &dir,
        &Contents {
            files: &files,
            materialize: &materialize,
            generated: &generated,
            manifest: &manifest,
        },
        opts.copy,
    );
    let result = written.and_then(|()| {
        let package = ModelPackage::load(&tmp)?;
        let mut problems = family_impl.check(runtime, &package);
        if problems.is_empty() {
            if let Err(e) = smoke_run(runtime, &tmp) {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ImportError::Check {
                path: out.display().to_string(),
                problems,
            })
        }
    });
    let result = result.and_then(|()| {
        if out.is_dir() {
            std::fs::remove_dir(&out).map_err(|e| output_err(&out, e.to_string()))?;
        }
        std::fs::rename(&tmp, &out).map_err(|e| output_err(&out, e.to_string()))
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(ImportReport {
        package: out,
        source: dir,
        family: family.into(),
        model_type,
        layout,
        variant: opts.variant,
        image_graph: image_rel,
        text_graph: text_rel,
        logit_scale,
        logit_bias: if siglip { logit_bias } else { None },
        scores_from,
        files: if opts.copy { "copy" } else { "link" },
    })
}

/// Run the written package once: two prompts through the text graph, one image through the
/// image graph (a rewritten graph whose constants do not fit fails here, not in `classify`).
fn smoke_run(runtime: &Runtime, dir: &Path) -> Result<(), String> {
    let mut m =
        super::dual_encoder::DualEncoderModel::load(runtime, dir, &SessionOptions::default())
            .map_err(|e| e.to_string())?;
    let text = m
        .encode_text(&["a satellite photo of a forest.".into(), "a river".into()])
        .map_err(|e| format!("running the text graph: {e}"))?;
    let s = m.input_size();
    let image = m
        .encode_images(Array4::<f32>::zeros((1, 3, s, s)).view())
        .map_err(|e| format!("running the image graph: {e}"))?;
    if text.nrows() != 2 || image.nrows() != 1 || text.ncols() != image.ncols() {
        return Err(format!(
            "one run gave {} text and {} image embeddings of widths {} and {}",
            text.nrows(),
            image.nrows(),
            text.ncols(),
            image.ncols()
        ));
    }
    if text.iter().chain(image.iter()).any(|v| !v.is_finite()) {
        return Err("one run gave non-finite embeddings".into());
    }
    Ok(())
}

fn check_score_flags(opts: &ImportOptions, siglip: bool) -> Result<(), ImportError> {
    if let Some(s) = opts.logit_scale {
        if !(s.is_finite() && s > 0.0) {
            return Err(ImportError::Flag {
                flag: "--logit-scale",
                reason: format!("{s} is not a positive number (it is exp of the checkpoint's logit_scale, e.g. 100 for OpenAI CLIP)"),
            });
        }
    }
    match opts.logit_bias {
        Some(b) if !siglip => Err(ImportError::Flag {
            flag: "--logit-bias",
            reason: format!("{b}: only SigLIP models have a bias (softmax scores ignore one)"),
        }),
        Some(b) if !b.is_finite() => Err(ImportError::Flag {
            flag: "--logit-bias",
            reason: format!("{b} is not a number"),
        }),
        Some(_) if opts.logit_scale.is_none() => Err(ImportError::Flag {
            flag: "--logit-bias",
            reason: "give --logit-scale with it".into(),
        }),
        _ => Ok(()),
    }
}

/// `--out` as an absolute path, refused when it exists and is not an empty folder.
fn absolute_out(out: &Path) -> Result<PathBuf, ImportError> {
    if let Ok(meta) = std::fs::symlink_metadata(out) {
        let empty = meta.is_dir()
            && std::fs::read_dir(out)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !empty {
            return Err(output_err(
                out,
                "already exists and is not an empty folder (remove it or choose another --out)",
            ));
        }
    }
    let name = out
        .file_name()
        .ok_or_else(|| output_err(out, "not a folder name"))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent
        .canonicalize()
        .map_err(|e| output_err(out, format!("its parent folder {}: {e}", parent.display())))?;
    Ok(parent.join(name))
}

fn read_json(path: &Path) -> Result<Value, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            source_err(path, "no such file")
        } else {
            source_err(path, e.to_string())
        }
    })?;
    serde_json::from_str(&text).map_err(|e| source_err(path, format!("not valid JSON: {e}")))
}

/// The sub-config of a dual encoder (`text_config`, `vision_config`), or the config itself.
fn sub<'a>(config: &'a Value, key: &str) -> &'a Value {
    config.get(key).unwrap_or(config)
}

/// The image processor settings: `preprocessor_config.json`, or transformers 5's
/// `processor_config.json` with them under `image_processor`.
fn preprocess(dir: &Path, config: &Value) -> Result<super::Preprocess, ImportError> {
    let pp_path = dir.join("preprocessor_config.json");
    let alt = dir.join("processor_config.json");
    let (path, pp) = if pp_path.is_file() {
        (pp_path.clone(), read_json(&pp_path)?)
    } else if alt.is_file() {
        let v = read_json(&alt)?;
        let inner = v.get("image_processor").cloned().unwrap_or(v);
        (alt, inner)
    } else {
        return Err(source_err(
            &pp_path,
            "no such file (nor processor_config.json): the image size and normalisation are there",
        ));
    };
    let bad = |reason: String| source_err(&path, reason);
    let triple = |key: &str| -> Result<Vec<f32>, ImportError> {
        match pp.get(key) {
            Some(Value::Array(a)) if a.len() == 3 => a
                .iter()
                .map(|v| v.as_f64().map(|f| f as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| bad(format!("\"{key}\" is not 3 numbers"))),
            Some(Value::Number(n)) => {
                let f = n.as_f64().unwrap_or(0.0) as f32;
                Ok(vec![f; 3])
            }
            Some(_) => Err(bad(format!("\"{key}\" is not 3 numbers"))),
            None => Err(bad(format!("no \"{key}\""))),
        }
    };
    let normalize = pp
        .get("do_normalize")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let (mean, std) = if normalize {
        (triple("image_mean")?, triple("image_std")?)
    } else {
        (vec![0.0; 3], vec![1.0; 3])
    };
    let rescale = pp
        .get("do_rescale")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let value_range = if rescale {
        match pp.get("rescale_factor").and_then(Value::as_f64) {
            Some(f) if f > 0.0 => (1.0 / f) as f32,
            Some(f) => return Err(bad(format!("rescale_factor {f} is not positive"))),
            None => 255.0,
        }
    } else {
        1.0
    };
    let image_size = sub(config, "vision_config")
        .get("image_size")
        .and_then(Value::as_u64);
    let square = |v: &Value, key: &str| -> Result<Option<u64>, ImportError> {
        match v {
            Value::Number(n) => Ok(n.as_u64()),
            Value::Object(o) => {
                if let (Some(h), Some(w)) = (
                    o.get("height").and_then(Value::as_u64),
                    o.get("width").and_then(Value::as_u64),
                ) {
                    if h != w {
                        return Err(bad(format!(
                            "\"{key}\" is {h} x {w}: tessera feeds square tiles"
                        )));
                    }
                    return Ok(Some(h));
                }
                Ok(o.get("shortest_edge").and_then(Value::as_u64))
            }
            _ => Ok(None),
        }
    };
    let crop = if pp
        .get("do_center_crop")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        match pp.get("crop_size") {
            Some(v) => square(v, "crop_size")?,
            None => None,
        }
    } else {
        None
    };
    let size = match crop {
        Some(c) => Some(c),
        None => match pp.get("size") {
            Some(v) => square(v, "size")?,
            None => None,
        },
    }
    .or(image_size)
    .ok_or_else(|| {
        bad("no \"size\" or \"crop_size\" (and no vision_config.image_size in config.json)".into())
    })?;
    if let Some(s) = image_size {
        if s != size {
            return Err(bad(format!(
                "the image size {size} differs from config.json's vision_config.image_size {s}"
            )));
        }
    }
    Ok(super::Preprocess {
        size: size as usize,
        mean,
        std,
        channel_order: "rgb".into(),
        value_range,
    })
}

/// A special token's string in `tokenizer_config.json` / `special_tokens_map.json` (either
/// plain or `{"content": ...}`).
fn special_token(dir: &Path, key: &str) -> Option<String> {
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match v.get(key) {
            Some(Value::String(s)) => return Some(s.clone()),
            Some(Value::Object(o)) => {
                if let Some(s) = o.get("content").and_then(Value::as_str) {
                    return Some(s.to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// `[tokenizer]`: context length from the text config (capped by the tokenizer's
/// `model_max_length`), bos/eos from encoding the empty prompt, pad from the special tokens.
fn tokenizer_spec(
    dir: &Path,
    config: &Value,
    path: &Path,
    tokenizer: &tokenizers::Tokenizer,
) -> Result<TokenizerSpec, ImportError> {
    let text_cfg = sub(config, "text_config");
    let positions = text_cfg
        .get("max_position_embeddings")
        .and_then(Value::as_u64);
    let tc_max = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("model_max_length").and_then(Value::as_u64))
        .filter(|&m| m > 0 && m < 1_000_000);
    let context = match (positions, tc_max) {
        (Some(p), Some(m)) => p.min(m),
        (Some(p), None) => p,
        (None, Some(m)) => m,
        (None, None) => {
            return Err(source_err(
                &dir.join("config.json"),
                "no text_config.max_position_embeddings (the text length to pad to)",
            ))
        }
    } as usize;
    let empty = tokenizer
        .encode("", true)
        .map_err(|e| source_err(path, format!("cannot encode the empty prompt: {e}")))?;
    let ids = empty.get_ids();
    let (bos, eos) = match ids {
        [eos] => (None, *eos),
        [bos, eos] => (Some(*bos), *eos),
        [] => {
            return Err(source_err(
                path,
                "adds no end token to a prompt (its post-processor has none): the text towers pool on it",
            ))
        }
        more => {
            return Err(source_err(
                path,
                format!("encodes the empty prompt as {more:?}: expected [bos, eos] or [eos]"),
            ))
        }
    };
    let pad = special_token(dir, "pad_token")
        .and_then(|t| tokenizer.token_to_id(&t))
        .or_else(|| tokenizer.get_padding().map(|p| p.pad_id))
        .or_else(|| {
            text_cfg
                .get("pad_token_id")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok())
        })
        .unwrap_or(eos);
    Ok(TokenizerSpec {
        file: "tokenizer.json".into(),
        context_length: context,
        pad_token_id: pad,
        bos_token_id: bos,
        eos_token_id: eos,
    })
}

/// The graphs of the folder for a variant (paths relative to the folder, `/`-separated).
struct Graphs {
    /// transformers.js: (vision, text).
    split: Option<(String, String)>,
    /// A combined graph: the fp32 one when there, else the variant's.
    combined: Option<String>,
}

fn find_graphs(dir: &Path, variant: Variant) -> Result<Graphs, ImportError> {
    let exists = |rel: &str| dir.join(rel).is_file();
    let pair = |suffix: &str| {
        let v = format!("onnx/vision_model{suffix}.onnx");
        let t = format!("onnx/text_model{suffix}.onnx");
        (exists(&v) && exists(&t)).then_some((v, t))
    };
    let combined_of = |suffix: &str| {
        [
            format!("onnx/model{suffix}.onnx"),
            format!("model{suffix}.onnx"),
        ]
        .into_iter()
        .find(|r| exists(r))
    };
    let present = |f: &dyn Fn(&str) -> bool| -> Vec<&'static str> {
        Variant::ALL
            .into_iter()
            .filter(|v| v.suffixes().iter().any(|s| f(s)))
            .map(Variant::name)
            .collect()
    };
    let split_variants = present(&|s| pair(s).is_some());
    let combined_variants = present(&|s| combined_of(s).is_some());
    let fp32_combined = combined_of("");
    if !split_variants.is_empty() {
        let Some(split) = variant.suffixes().iter().find_map(|s| pair(s)) else {
            return Err(source_err(
                &dir.join("onnx"),
                format!(
                    "no {variant} variant (onnx/vision_model{}.onnx and onnx/text_model{}.onnx); the folder has: {}",
                    variant.suffixes()[0],
                    variant.suffixes()[0],
                    split_variants.join(", ")
                ),
            ));
        };
        let combined =
            fp32_combined.or_else(|| variant.suffixes().iter().find_map(|s| combined_of(s)));
        return Ok(Graphs {
            split: Some(split),
            combined,
        });
    }
    if !combined_variants.is_empty() {
        let Some(combined) = variant.suffixes().iter().find_map(|s| combined_of(s)) else {
            return Err(source_err(
                dir,
                format!(
                    "no {variant} variant of the combined graph (model{}.onnx); the folder has: {}",
                    variant.suffixes()[0],
                    combined_variants.join(", ")
                ),
            ));
        };
        return Ok(Graphs {
            split: None,
            combined: Some(combined),
        });
    }
    Err(source_err(
        dir,
        "no ONNX graphs: expected onnx/vision_model.onnx and onnx/text_model.onnx (transformers.js) or model.onnx (optimum)",
    ))
}

/// The names a graph is fed and read with.
struct GraphIo {
    input: String,
    output: String,
    mask: Option<String>,
    /// BERT-style `token_type_ids`: one segment, so all zeros, made a constant of the graph.
    token_type: Option<String>,
}

fn pick_output(
    path: &Path,
    outputs: &[TensorSpec],
    wanted: &[&str],
) -> Result<String, ImportError> {
    for w in wanted {
        if let Some(o) = outputs.iter().find(|o| o.name == *w) {
            if o.dtype != "float32" {
                return Err(source_err(
                    path,
                    format!(
                        "output '{}' is {}; tessera reads float32 embeddings",
                        o.name, o.dtype
                    ),
                ));
            }
            return Ok(o.name.clone());
        }
    }
    Err(source_err(
        path,
        format!(
            "has no output {} (it has {}): it is not the projected embedding tower",
            quoted(wanted),
            names(outputs)
        ),
    ))
}

fn quoted(names: &[&str]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    q.join(" or ")
}

fn names(specs: &[TensorSpec]) -> String {
    let n: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    n.join(", ")
}

fn image_io(path: &Path, s: &ModelSession, wanted: &[&str]) -> Result<GraphIo, ImportError> {
    let inputs = s.inputs();
    let [input] = inputs.as_slice() else {
        return Err(source_err(
            path,
            format!(
                "takes inputs {}; tessera's image graphs take one [B, 3, S, S] image input",
                names(&inputs)
            ),
        ));
    };
    if input.dtype != "float32" {
        return Err(source_err(
            path,
            format!(
                "input '{}' is {}; tessera feeds float32 pixels (choose a variant with float32 inputs, e.g. --variant fp32)",
                input.name, input.dtype
            ),
        ));
    }
    Ok(GraphIo {
        input: input.name.clone(),
        output: pick_output(path, &s.outputs(), wanted)?,
        mask: None,
        token_type: None,
    })
}

fn text_io(path: &Path, s: &ModelSession, wanted: &[&str]) -> Result<GraphIo, ImportError> {
    let inputs = s.inputs();
    let mut ids = None;
    let mut mask = None;
    let mut token_type = None;
    for i in &inputs {
        match i.name.as_str() {
            "input_ids" => ids = Some(i.name.clone()),
            "attention_mask" => mask = Some(i.name.clone()),
            "token_type_ids" if i.dtype == "int64" => token_type = Some(i.name.clone()),
            other => {
                return Err(source_err(
                    path,
                    format!("takes input '{other}', which tessera does not feed (it feeds input_ids and attention_mask; token_type_ids are fixed to zeros)"),
                ))
            }
        }
    }
    let input = ids.ok_or_else(|| {
        source_err(
            path,
            format!("has no input 'input_ids' (it has {})", names(&inputs)),
        )
    })?;
    Ok(GraphIo {
        input,
        output: pick_output(path, &s.outputs(), wanted)?,
        mask,
        token_type,
    })
}

/// `a/b/c.onnx` -> `a/b/`; `c.onnx` -> ``.
fn parent_of(rel: &str) -> String {
    rel.rfind('/')
        .map_or_else(String::new, |i| rel[..=i].to_string())
}

/// The external data files a graph names (relative to the folder), checked to exist and to
/// stay inside the folder.
fn external_files(dir: &Path, rel: &str) -> Result<Vec<String>, ImportError> {
    let path = dir.join(rel);
    let bytes = std::fs::read(&path).map_err(|e| source_err(&path, e.to_string()))?;
    let locations = proto::external_locations(&bytes).map_err(|e| source_err(&path, e))?;
    let parent = parent_of(rel);
    let mut out = Vec::new();
    for loc in locations {
        let p = Path::new(&loc);
        if p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(source_err(
                &path,
                format!("names external data '{loc}' outside its folder"),
            ));
        }
        let file = format!("{parent}{loc}");
        if !dir.join(&file).is_file() {
            return Err(source_err(
                &dir.join(&file),
                format!("no such file (external data of {rel})"),
            ));
        }
        out.push(file);
    }
    Ok(out)
}

/// Constant inputs and names for splitting a combined graph.
struct Split {
    inputs: CombinedInputs,
    /// The text inputs as constants (for the image graph).
    text_constants: Vec<proto::Constant>,
    /// The image input as a constant (for the text graph).
    image_constants: Vec<proto::Constant>,
}

fn split_combined(
    path: &Path,
    s: &ModelSession,
    tokenizer: &tokenizers::Tokenizer,
    tok: &TokenizerSpec,
    pre: &super::Preprocess,
) -> Result<Split, ImportError> {
    let inputs = combined_inputs(path, s)?;
    let tokens = tokenize_prompts(tokenizer, tok, Path::new(&tok.file), &[String::new()])?;
    let l = tokens.context as i64;
    let mut text_constants = vec![proto::Constant::int64(
        &inputs.input_ids,
        &[1, l],
        &tokens.ids,
    )];
    if let Some(m) = &inputs.attention_mask {
        text_constants.push(proto::Constant::int64(m, &[1, l], &tokens.mask));
    }
    let size = pre.size as i64;
    let zeros = vec![0f32; 3 * pre.size * pre.size];
    let mut image_constants = vec![proto::Constant::float32(
        &inputs.pixel_values,
        &[1, 3, size, size],
        &zeros,
    )];
    if let Some(t) = &inputs.token_type_ids {
        let zeros = vec![0i64; tokens.context];
        text_constants.push(proto::Constant::int64(t, &[1, l], &zeros));
        image_constants.push(proto::Constant::int64(t, &[1, l], &zeros));
    }
    Ok(Split {
        inputs,
        text_constants,
        image_constants,
    })
}

/// A combined graph's input names.
struct CombinedInputs {
    pixel_values: String,
    input_ids: String,
    attention_mask: Option<String>,
    /// BERT-style text towers (Chinese-CLIP): one segment, all zeros.
    token_type_ids: Option<String>,
}

fn combined_inputs(path: &Path, s: &ModelSession) -> Result<CombinedInputs, ImportError> {
    let inputs = s.inputs();
    let (mut px, mut ids, mut mask, mut types) = (None, None, None, None);
    for i in &inputs {
        match i.name.as_str() {
            "pixel_values" if i.dtype == "float32" => px = Some(i.name.clone()),
            "input_ids" if i.dtype == "int64" => ids = Some(i.name.clone()),
            "attention_mask" if i.dtype == "int64" => mask = Some(i.name.clone()),
            "token_type_ids" if i.dtype == "int64" => types = Some(i.name.clone()),
            _ => {
                return Err(source_err(
                    path,
                    format!(
                        "input '{}' ({}) is not one tessera feeds (float32 pixel_values, int64 input_ids, attention_mask and token_type_ids)",
                        i.name, i.dtype
                    ),
                ))
            }
        }
    }
    match (px, ids) {
        (Some(p), Some(i)) => Ok(CombinedInputs {
            pixel_values: p,
            input_ids: i,
            attention_mask: mask,
            token_type_ids: types,
        }),
        _ => Err(source_err(
            path,
            format!(
                "is not a combined image-text graph: it takes {} (expected pixel_values and input_ids)",
                names(&inputs)
            ),
        )),
    }
}

/// Recover `logit_scale` (and SigLIP's `logit_bias`) from a combined graph: its
/// `logits_per_image` for two small images and four texts against the cosines of its own
/// `image_embeds` and `text_embeds`, fitted by least squares (`l = s c` for softmax families,
/// `l = s c + b` for SigLIP), the fit required to be exact to float rounding.
fn recover_scores(
    s: &mut ModelSession,
    path: &Path,
    tokenizer: &tokenizers::Tokenizer,
    tok: &TokenizerSpec,
    pre: &super::Preprocess,
    siglip: bool,
) -> Result<(f32, Option<f32>), ImportError> {
    let names = combined_inputs(path, s)?;
    for o in ["logits_per_image", "text_embeds", "image_embeds"] {
        if !s.outputs().iter().any(|x| x.name == o) {
            return Err(ImportError::NeedsFlag {
                path: path.display().to_string(),
                flag: "--logit-scale",
                reason: format!("has no output '{o}' to recover the scores' scale from"),
            });
        }
    }
    let texts: Vec<String> = [
        "a satellite photo of a forest.",
        "a city at night",
        "",
        "water water water, a river delta and some sand",
    ]
    .iter()
    .map(|t| (*t).to_string())
    .collect();
    let tokens = tokenize_prompts(tokenizer, tok, Path::new(&tok.file), &texts)?;
    let n = pre.size;
    let pixels = Array4::from_shape_fn((2, 3, n, n), |(b, c, y, x)| {
        if b == 0 {
            0.0f32
        } else {
            ((x as f32 * 0.37 + y as f32 * 0.11 + c as f32).sin()) * 1.5
        }
    });
    let run = |e: String| source_err(path, format!("running it to recover the scores: {e}"));
    let ids = Array2::from_shape_vec((tokens.rows, tokens.context), tokens.ids.clone())
        .map_err(|e| run(e.to_string()))?;
    let mask = Array2::from_shape_vec((tokens.rows, tokens.context), tokens.mask.clone())
        .map_err(|e| run(e.to_string()))?;
    let px_t = TensorRef::from_array_view(pixels.view()).map_err(|e| run(e.to_string()))?;
    let ids_t = TensorRef::from_array_view(ids.view()).map_err(|e| run(e.to_string()))?;
    let mask_t = TensorRef::from_array_view(mask.view()).map_err(|e| run(e.to_string()))?;
    let types = Array2::<i64>::zeros((tokens.rows, tokens.context));
    let types_t = TensorRef::from_array_view(types.view()).map_err(|e| run(e.to_string()))?;
    let mut inputs =
        ort::inputs![names.pixel_values.as_str() => px_t, names.input_ids.as_str() => ids_t];
    if let Some(m) = &names.attention_mask {
        inputs.push((m.as_str().into(), mask_t.into()));
    }
    if let Some(t) = &names.token_type_ids {
        inputs.push((t.as_str().into(), types_t.into()));
    }
    let outputs = s.session.run(inputs).map_err(|e| run(e.to_string()))?;
    let get = |name: &str| -> Result<Array2<f64>, ImportError> {
        let a = outputs[name]
            .try_extract_array::<f32>()
            .map_err(|e| run(e.to_string()))?;
        let shape = a.shape().to_vec();
        if shape.len() != 2 {
            return Err(run(format!(
                "output '{name}' has shape {shape:?}, expected 2 axes"
            )));
        }
        Ok(Array2::from_shape_fn((shape[0], shape[1]), |(i, j)| {
            f64::from(a[[i, j]])
        }))
    };
    let logits = get("logits_per_image")?;
    let img = normalize(get("image_embeds")?);
    let txt = normalize(get("text_embeds")?);
    drop(outputs);
    let cos = img.dot(&txt.t());
    if logits.shape() != cos.shape() {
        return Err(run(format!(
            "logits_per_image has shape {:?}, expected {:?}",
            logits.shape(),
            cos.shape()
        )));
    }
    let c: Vec<f64> = cos.iter().copied().collect();
    let l: Vec<f64> = logits.iter().copied().collect();
    let (scale, bias) = fit(&c, &l, siglip).ok_or_else(|| ImportError::NeedsFlag {
        path: path.display().to_string(),
        flag: if siglip {
            "--logit-scale and --logit-bias"
        } else {
            "--logit-scale"
        },
        reason: "its similarities are too alike to fit the scores' scale".into(),
    })?;
    let worst = c
        .iter()
        .zip(&l)
        .map(|(c, l)| (l - (scale * c + bias)).abs())
        .fold(0.0, f64::max);
    let magnitude = l.iter().map(|v| v.abs()).fold(1.0, f64::max);
    let exact = worst.is_finite() && worst <= 1e-4 * magnitude;
    if !(exact && scale.is_finite() && scale > 0.0) {
        return Err(ImportError::NeedsFlag {
            path: path.display().to_string(),
            flag: if siglip {
                "--logit-scale and --logit-bias"
            } else {
                "--logit-scale"
            },
            reason: format!(
                "its logits_per_image are not {} (fit off by {worst:.3e}, scale {scale:.6})",
                if siglip {
                    "scale * cos + bias"
                } else {
                    "scale * cos"
                }
            ),
        });
    }
    Ok((scale as f32, siglip.then_some(bias as f32)))
}

fn normalize(mut a: Array2<f64>) -> Array2<f64> {
    for mut row in a.rows_mut() {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if n > 0.0 {
            row.mapv_inplace(|v| v / n);
        }
    }
    a
}

/// Least squares `l = s c (+ b)`: (s, b), `None` when the cosines do not determine it.
fn fit(c: &[f64], l: &[f64], with_bias: bool) -> Option<(f64, f64)> {
    let n = c.len() as f64;
    if with_bias {
        let mc = c.iter().sum::<f64>() / n;
        let ml = l.iter().sum::<f64>() / n;
        let var: f64 = c.iter().map(|x| (x - mc) * (x - mc)).sum();
        if var < 1e-12 {
            return None;
        }
        let cov: f64 = c.iter().zip(l).map(|(x, y)| (x - mc) * (y - ml)).sum();
        let s = cov / var;
        Some((s, ml - s * mc))
    } else {
        let cc: f64 = c.iter().map(|x| x * x).sum();
        if cc < 1e-12 {
            return None;
        }
        let cl: f64 = c.iter().zip(l).map(|(x, y)| x * y).sum();
        Some((cl / cc, 0.0))
    }
}

struct ManifestParts<'a> {
    family: &'a str,
    architecture: Option<&'a str>,
    name: &'a str,
    source: &'a str,
    image_rel: &'a str,
    text_rel: &'a str,
    image: &'a GraphIo,
    text: &'a GraphIo,
    pre: &'a super::Preprocess,
    tok: &'a TokenizerSpec,
    logit_scale: f32,
    logit_bias: Option<f32>,
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn floats(v: &[f32]) -> String {
    let s: Vec<String> = v.iter().map(|f| format!("{f:?}")).collect();
    format!("[{}]", s.join(", "))
}

fn manifest_text(p: &ManifestParts<'_>) -> String {
    let mut t = String::new();
    t.push_str(&format!("family = {}\n", q(p.family)));
    if let Some(a) = p.architecture {
        t.push_str(&format!("architecture = {}\n", q(a)));
    }
    t.push_str(&format!("name = {}\n", q(p.name)));
    t.push_str("trained = true\n");
    t.push_str(&format!("source = {}\n", q(p.source)));
    t.push_str("\n[image]\n");
    t.push_str(&format!("onnx = {}\n", q(p.image_rel)));
    t.push_str(&format!(
        "input = {}                          # float32 [B,3,S,S], already normalised\n",
        q(&p.image.input)
    ));
    t.push_str(&format!("output = {}\n", q(&p.image.output)));
    t.push_str("\n[text]\n");
    t.push_str(&format!("onnx = {}\n", q(p.text_rel)));
    t.push_str(&format!("input_ids = {}\n", q(&p.text.input)));
    if let Some(m) = &p.text.mask {
        t.push_str(&format!("attention_mask = {}\n", q(m)));
    }
    t.push_str(&format!("output = {}\n", q(&p.text.output)));
    t.push_str("\n[preprocess]\n");
    t.push_str(&format!("size = {}\n", p.pre.size));
    t.push_str(&format!("mean = {}\n", floats(&p.pre.mean)));
    t.push_str(&format!("std = {}\n", floats(&p.pre.std)));
    t.push_str("channel_order = \"rgb\"\n");
    t.push_str(&format!(
        "value_range = {:?}                         # (v / value_range - mean) / std\n",
        p.pre.value_range
    ));
    t.push_str("\n[tokenizer]\n");
    t.push_str(&format!("file = {}\n", q(&p.tok.file)));
    t.push_str(&format!("context_length = {}\n", p.tok.context_length));
    t.push_str(&format!("pad_token_id = {}\n", p.tok.pad_token_id));
    if let Some(b) = p.tok.bos_token_id {
        t.push_str(&format!("bos_token_id = {b}\n"));
    }
    t.push_str(&format!("eos_token_id = {}\n", p.tok.eos_token_id));
    t.push_str("\n[scores]\n");
    t.push_str(&format!("logit_scale = {:?}\n", p.logit_scale));
    if let Some(b) = p.logit_bias {
        t.push_str(&format!("logit_bias = {b:?}\n"));
    }
    t
}

/// The relative path from folder `from` to `to` (both absolute, no `..`).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut r = PathBuf::new();
    for _ in common..f.len() {
        r.push("..");
    }
    for c in &t[common..] {
        r.push(c.as_os_str());
    }
    r
}

/// What a package holds: files of the source folder (linked, or hard-linked/copied when in
/// `materialize`), generated files, the manifest.
struct Contents<'a> {
    files: &'a BTreeSet<String>,
    materialize: &'a BTreeSet<String>,
    generated: &'a [(String, Vec<u8>)],
    manifest: &'a str,
}

/// Write the package into `tmp` (links computed for its final place `out`, a sibling).
fn write_package(
    tmp: &Path,
    out: &Path,
    dir: &Path,
    c: &Contents<'_>,
    copy: bool,
) -> Result<(), ImportError> {
    let werr = |p: &Path, e: std::io::Error| output_err(p, e.to_string());
    std::fs::create_dir_all(tmp).map_err(|e| werr(tmp, e))?;
    for rel in c.files {
        let src = dir.join(rel);
        let dst = tmp.join(rel);
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).map_err(|e| werr(p, e))?;
        }
        if copy {
            std::fs::copy(&src, &dst).map_err(|e| werr(&dst, e))?;
        } else if c.materialize.contains(rel) {
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(|e| werr(&dst, e))?;
            }
        } else {
            let final_parent = out.join(rel);
            let final_parent = final_parent.parent().unwrap_or(out);
            let target = relative(final_parent, &src);
            link(&target, &dst).map_err(|e| werr(&dst, e))?;
        }
    }
    for (rel, bytes) in c.generated {
        let dst = tmp.join(rel);
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).map_err(|e| werr(p, e))?;
        }
        std::fs::write(&dst, bytes).map_err(|e| werr(&dst, e))?;
    }
    let m = tmp.join("model.toml");
    std::fs::write(&m, c.manifest).map_err(|e| werr(&m, e))
}

#[cfg(unix)]
fn link(target: &Path, at: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

#[cfg(not(unix))]
fn link(_target: &Path, _at: &Path) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "symbolic links need a Unix system here: use --copy",
    ))
}

/// Just enough of the ONNX protobuf (onnx.proto3) to list a graph's external data files and
/// to turn graph inputs into constants and drop graph outputs.
mod proto {
    /// A constant that replaces a graph input.
    #[derive(Clone, Debug)]
    pub struct Constant {
        pub name: String,
        pub dims: Vec<i64>,
        /// ONNX `TensorProto.DataType`: 1 float, 7 int64.
        pub data_type: u64,
        pub raw: Vec<u8>,
    }

    impl Constant {
        pub fn int64(name: &str, dims: &[i64], values: &[i64]) -> Constant {
            Constant {
                name: name.into(),
                dims: dims.to_vec(),
                data_type: 7,
                raw: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }
        }

        pub fn float32(name: &str, dims: &[i64], values: &[f32]) -> Constant {
            Constant {
                name: name.into(),
                dims: dims.to_vec(),
                data_type: 1,
                raw: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }
        }

        /// As a `TensorProto` message.
        fn encode(&self) -> Vec<u8> {
            let mut m = Vec::new();
            for d in &self.dims {
                key(&mut m, 1, 0);
                varint(&mut m, *d as u64);
            }
            key(&mut m, 2, 0);
            varint(&mut m, self.data_type);
            bytes_field(&mut m, 8, self.name.as_bytes());
            bytes_field(&mut m, 9, &self.raw);
            m
        }
    }

    /// One field: number, wire type, and its payload (the value of a varint, or the bytes).
    struct Field<'a> {
        number: u64,
        wire: u8,
        value: u64,
        data: &'a [u8],
        /// The whole encoded field (key included).
        raw: &'a [u8],
    }

    fn read_varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*at).ok_or("truncated protobuf (varint)")?;
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("malformed protobuf varint".into())
    }

    fn fields(b: &[u8]) -> Result<Vec<Field<'_>>, String> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let start = at;
            let k = read_varint(b, &mut at)?;
            let (number, wire) = (k >> 3, (k & 7) as u8);
            let (value, data) = match wire {
                0 => (read_varint(b, &mut at)?, &b[at..at]),
                1 | 5 => {
                    let n = if wire == 1 { 8 } else { 4 };
                    let d = b.get(at..at + n).ok_or("truncated protobuf (fixed)")?;
                    at += n;
                    (0, d)
                }
                2 => {
                    let n = usize::try_from(read_varint(b, &mut at)?)
                        .map_err(|_| "protobuf length too large")?;
                    let d = b
                        .get(at..at.checked_add(n).ok_or("protobuf length overflow")?)
                        .ok_or("truncated protobuf (bytes)")?;
                    at += n;
                    (0, d)
                }
                w => return Err(format!("unsupported protobuf wire type {w}")),
            };
            out.push(Field {
                number,
                wire,
                value,
                data,
                raw: &b[start..at],
            });
        }
        Ok(out)
    }

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn key(out: &mut Vec<u8>, number: u64, wire: u64) {
        varint(out, (number << 3) | wire);
    }

    fn bytes_field(out: &mut Vec<u8>, number: u64, data: &[u8]) {
        key(out, number, 2);
        varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }

    fn string_of(msg: &[u8], number: u64) -> Result<Option<String>, String> {
        Ok(fields(msg)?
            .into_iter()
            .find(|f| f.number == number && f.wire == 2)
            .map(|f| String::from_utf8_lossy(f.data).into_owned()))
    }

    /// The `location`s of every tensor stored as external data, in the graph and its
    /// subgraphs, without repeats.
    pub fn external_locations(model: &[u8]) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for f in fields(model)? {
            if f.number == 7 && f.wire == 2 {
                graph_locations(f.data, &mut out)?;
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn graph_locations(graph: &[u8], out: &mut Vec<String>) -> Result<(), String> {
        for f in fields(graph)? {
            match (f.number, f.wire) {
                (5, 2) => tensor_location(f.data, out)?,
                (15, 2) => {
                    // SparseTensorProto: values (1) and indices (2) are tensors.
                    for g in fields(f.data)? {
                        if (g.number == 1 || g.number == 2) && g.wire == 2 {
                            tensor_location(g.data, out)?;
                        }
                    }
                }
                (1, 2) => {
                    // NodeProto attribute (5): t (5), g (6), tensors (10), graphs (11).
                    for a in fields(f.data)?
                        .into_iter()
                        .filter(|a| a.number == 5 && a.wire == 2)
                    {
                        for v in fields(a.data)? {
                            match (v.number, v.wire) {
                                (5 | 10, 2) => tensor_location(v.data, out)?,
                                (6 | 11, 2) => graph_locations(v.data, out)?,
                                _ => {}
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn tensor_location(tensor: &[u8], out: &mut Vec<String>) -> Result<(), String> {
        let fs = fields(tensor)?;
        let external = fs
            .iter()
            .any(|f| f.number == 14 && f.wire == 0 && f.value == 1);
        if !external {
            return Ok(());
        }
        for f in fs.iter().filter(|f| f.number == 13 && f.wire == 2) {
            if string_of(f.data, 1)?.as_deref() == Some("location") {
                if let Some(v) = string_of(f.data, 2)? {
                    out.push(v);
                }
            }
        }
        Ok(())
    }

    /// The model with the named graph inputs replaced by constant initializers and only the
    /// `keep` outputs left.
    pub fn rewrite(model: &[u8], constants: &[Constant], keep: &[&str]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(model.len() + 4096);
        let mut found_graph = false;
        for f in fields(model)? {
            if f.number == 7 && f.wire == 2 {
                found_graph = true;
                let g = rewrite_graph(f.data, constants, keep)?;
                bytes_field(&mut out, 7, &g);
            } else {
                out.extend_from_slice(f.raw);
            }
        }
        if !found_graph {
            return Err("not an ONNX model (no graph)".into());
        }
        Ok(out)
    }

    fn rewrite_graph(
        graph: &[u8],
        constants: &[Constant],
        keep: &[&str],
    ) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(graph.len() + 4096);
        let mut replaced = 0;
        let mut kept = 0;
        for f in fields(graph)? {
            match (f.number, f.wire) {
                (11, 2) => {
                    let name = string_of(f.data, 1)?.unwrap_or_default();
                    if constants.iter().any(|c| c.name == name) {
                        replaced += 1;
                    } else {
                        out.extend_from_slice(f.raw);
                    }
                }
                (12, 2) => {
                    let name = string_of(f.data, 1)?.unwrap_or_default();
                    if keep.contains(&name.as_str()) {
                        kept += 1;
                        out.extend_from_slice(f.raw);
                    }
                }
                _ => out.extend_from_slice(f.raw),
            }
        }
        if replaced != constants.len() || kept != keep.len() {
            return Err(format!(
                "splitting the combined graph: found {replaced} of {} inputs and {kept} of {} outputs",
                constants.len(),
                keep.len()
            ));
        }
        for c in constants {
            bytes_field(&mut out, 5, &c.encode());
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn varints_round_trip() {
            for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
                let mut b = Vec::new();
                varint(&mut b, v);
                let mut at = 0;
                assert_eq!(read_varint(&b, &mut at).expect("read"), v);
                assert_eq!(at, b.len());
            }
        }

        #[test]
        fn truncated_messages_are_errors() {
            assert!(fields(&[0x0a, 0x05, 1, 2]).is_err());
            assert!(fields(&[0x08]).is_err());
            assert!(rewrite(&[0x08, 0x01], &[], &[]).is_err(), "no graph");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_and_name_their_suffixes() {
        for v in Variant::ALL {
            assert_eq!(Variant::parse(v.name()), Some(v));
        }
        assert_eq!(Variant::parse("q8"), Some(Variant::Quantized));
        assert_eq!(Variant::parse("fp8"), None);
        assert_eq!(Variant::Int8.suffixes(), ["_int8", "_quantized"]);
    }

    #[test]
    fn fits_scale_and_bias_exactly() {
        let c = [0.1, -0.2, 0.3, 0.05];
        let l: Vec<f64> = c.iter().map(|x| 14.5 * x).collect();
        assert_eq!(fit(&c, &l, false), Some((14.5, 0.0)));
        let l: Vec<f64> = c.iter().map(|x| 10.0 * x - 3.0).collect();
        let (s, b) = fit(&c, &l, true).expect("fit");
        assert!(
            (s - 10.0).abs() < 1e-12 && (b + 3.0).abs() < 1e-12,
            "{s} {b}"
        );
        assert_eq!(
            fit(&[0.2, 0.2], &[1.0, 1.0], true),
            None,
            "one cosine: no line"
        );
    }

    #[test]
    fn preprocessing_from_either_processor_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = serde_json::json!({"vision_config": {"image_size": 224}});
        // transformers 5: processor_config.json with the settings nested, no crop.
        std::fs::write(
            dir.path().join("processor_config.json"),
            r#"{"image_processor": {"size": {"shortest_edge": 224}, "do_center_crop": false,
                "image_mean": [0.5, 0.5, 0.5], "image_std": 0.25, "rescale_factor": 0.5}}"#,
        )
        .expect("write");
        let p = preprocess(dir.path(), &config).expect("preprocess");
        assert_eq!((p.size, p.value_range), (224, 2.0));
        assert_eq!(
            (p.mean.clone(), p.std.clone()),
            (vec![0.5; 3], vec![0.25; 3])
        );
        // preprocessor_config.json wins; no normalisation means mean 0, std 1.
        std::fs::write(
            dir.path().join("preprocessor_config.json"),
            r#"{"size": {"height": 224, "width": 224}, "do_normalize": false, "do_rescale": false}"#,
        )
        .expect("write");
        let p = preprocess(dir.path(), &config).expect("preprocess");
        assert_eq!(
            (p.mean, p.std, p.value_range),
            (vec![0.0; 3], vec![1.0; 3], 1.0)
        );
        // A size that is not the vision tower's is an error naming the file.
        let e = preprocess(
            dir.path(),
            &serde_json::json!({"vision_config": {"image_size": 384}}),
        )
        .expect_err("size");
        assert!(
            e.to_string().contains("preprocessor_config.json") && e.to_string().contains("384"),
            "{e}"
        );
    }

    #[test]
    fn relative_links() {
        assert_eq!(
            relative(Path::new("/a/out/onnx"), Path::new("/a/src/onnx/v.onnx")),
            PathBuf::from("../../src/onnx/v.onnx")
        );
        assert_eq!(
            relative(Path::new("/a/out"), Path::new("/b/t.json")),
            PathBuf::from("../../b/t.json")
        );
        assert_eq!(parent_of("onnx/model.onnx"), "onnx/");
        assert_eq!(parent_of("model.onnx"), "");
    }
}
