//! Dual-encoder zero-shot classification: an image encoder and a text encoder trained
//! contrastively, shared by every family of that kind (CLIP, OpenCLIP, SigLIP, FLAVA,
//! Chinese-CLIP: one descriptor file each, [`DualEncoderKind`]).
//!
//! Inputs: images `[B, 3, S, S]` float32, normalised `(v / value_range - mean) / std` (or raw
//! uint8 for packages with the normalisation in the graph); token ids `[B, L]` int64 padded to
//! the context length (and an attention mask where the text graph takes one). A label's
//! embedding is the normalised mean of its normalised prompt embeddings (the prompt ensemble of
//! the CLIP paper, section 3.1.4). Scores, by the family's [`Scoring`]:
//! - [`Scoring::Softmax`] (CLIP, Radford et al. 2021): softmax over labels of
//!   `logit_scale * cos(image, label)`: one label per tile, probabilities summing to 1.
//! - [`Scoring::Sigmoid`] (SigLIP, Zhai et al. 2023): `sigmoid(logit_scale * cos + logit_bias)`
//!   per label, independently: a tile can be "forest" and "river".

use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView4, Axis};
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

use super::preprocess::{ImageElement, Normalizer};
use super::registry::{InputContract, ModelFamily, TimedGraph};
use super::staging::{stage, InputStaging, StagedBatch, StagedTensor};
use super::tokenizer::{load_tokenizer, tokenize_prompts, Tokens};
use super::{hex, ModelError, ModelPackage};
use crate::models::manifest::{
    family_manifest, ImageSpec, Manifest, Preprocess, PromptsSpec, Scores, TextSpec, TokenizerSpec,
};
use crate::runtime::{
    create_session, create_session_from_memory, BindingMemory, ModelSession, Runtime, RuntimeError,
    SessionOptions,
};
use crate::task::Task;

/// The softmax similarity head run after the image encoder, on the encoder's provider:
/// `softmax(logit_scale * normalize(image_embeds) @ label_embeds^T)` (built by
/// tools/fixtures/make_builtin_graphs.py).
static SOFTMAX_HEAD_ONNX: &[u8] = include_bytes!("clip_head.onnx");

/// The sigmoid head: `sigmoid(logit_scale * normalize(image_embeds) @ label_embeds^T +
/// logit_bias)` (same builder).
static SIGMOID_HEAD_ONNX: &[u8] = include_bytes!("sigmoid_head.onnx");

/// Prompt templates averaged per label when neither the user nor the package gives any:
/// phrasings of overhead imagery, in the spirit of the CLIP paper's ensembles for
/// remote-sensing datasets.
pub const DEFAULT_TEMPLATES: &[&str] = &[
    "a satellite photo of {}.",
    "a satellite image of {}.",
    "an aerial photo of {}.",
    "an aerial image of {}.",
    "a centered satellite photo of {}.",
    "satellite imagery of {}.",
    "a top-down view of {}.",
    "a remote sensing image of {}.",
];

/// How a family turns cosine similarities into label probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    /// `softmax(logit_scale * cos)` over the labels: exactly one label per tile.
    Softmax,
    /// `sigmoid(logit_scale * cos + logit_bias)` per label: independent, multi-label.
    Sigmoid,
}

/// What distinguishes one dual-encoder family from another: its name, scoring, tokenizer kind
/// and default prompts. Each family file holds one, as a [`DualEncoderFamily`].
#[derive(Debug)]
pub struct DualEncoderKind {
    /// The `family = "..."` value of its manifests.
    pub family: &'static str,
    /// The model it is, for messages ("CLIP", "SigLIP").
    pub display: &'static str,
    pub scoring: Scoring,
    /// The `tokenizer.json` model types its text encoder was trained with (`BPE`,
    /// `WordPiece`, `Unigram`): another type is the wrong tokenizer.
    pub tokenizer_models: &'static [&'static str],
    /// Templates used when neither the user nor the package (`[prompts]`) gives any.
    pub default_templates: &'static [&'static str],
}

/// A dual-encoder family ([`super::registry`]): one [`DualEncoderKind`] and the shared code.
#[derive(Debug)]
pub struct DualEncoderFamily(pub DualEncoderKind);

family_manifest! {
    /// A dual-encoder manifest's sections: all required but `[prompts]` ([`check`] names the
    /// missing ones).
    pub struct DualEncoderManifest {
        pub image: Option<ImageSpec>,
        pub text: Option<TextSpec>,
        pub preprocess: Option<Preprocess>,
        pub tokenizer: Option<TokenizerSpec>,
        pub scores: Option<Scores>,
        pub prompts: Option<PromptsSpec>,
    }
}

impl ModelFamily for DualEncoderFamily {
    fn name(&self) -> &'static str {
        self.0.family
    }

    fn tasks(&self) -> &'static [Task] {
        &[Task::Classify]
    }

    fn check(&self, runtime: &Runtime, package: &ModelPackage) -> Vec<String> {
        check(runtime, package)
    }

    fn parse(&self, text: &str) -> Result<Manifest, String> {
        let (common, m) = DualEncoderManifest::from_toml(text)?;
        Ok(Manifest::new(common, None, None, m))
    }

    fn input(&self, package: &ModelPackage) -> Option<InputContract> {
        let m = package.manifest.sections::<DualEncoderManifest>()?;
        Some(InputContract {
            size: m.preprocess.as_ref()?.size,
            any_size: false,
            prompted: false,
            bytes: m.image.as_ref()?.input_type == super::InputType::Uint8,
        })
    }

    fn dual_encoder(&'static self) -> Option<&'static DualEncoderKind> {
        Some(&self.0)
    }

    fn timed(&self) -> bool {
        true
    }

    fn load_timed(
        &self,
        runtime: &Runtime,
        path: &Path,
        options: &SessionOptions,
    ) -> Result<TimedGraph, ModelError> {
        let mut m = DualEncoderModel::load(runtime, path, options)?;
        let (provider, fallback) = m.image_provider();
        let fallback = fallback.map(str::to_string);
        // uint8-input packages are timed on byte batches, as classify feeds them (made once
        // from the float batch, outside the timing).
        let mut bytes: Option<ndarray::Array4<u8>> = None;
        Ok(TimedGraph {
            provider,
            fallback,
            input_size: m.input_size(),
            run: Box::new(move |x: &ndarray::Array4<f32>| {
                if m.takes_bytes() {
                    let b =
                        bytes.get_or_insert_with(|| x.mapv(|v| (v.abs() * 64.0).min(255.0) as u8));
                    m.encode_images(b.view()).map(|_| ())
                } else {
                    m.encode_images(x.view()).map(|_| ())
                }
            }),
        })
    }
}

/// The kind of the dual-encoder family a package names, if it is one.
pub fn kind_of(package: &ModelPackage) -> Option<&'static DualEncoderKind> {
    super::registry::family(&package.manifest.family).and_then(|f| f.dual_encoder())
}

/// The sections of a dual-encoder manifest, all required (`[prompts]` excepted), with the
/// family's kind.
#[derive(Clone, Debug)]
struct DualEncoderConfig {
    kind: &'static DualEncoderKind,
    image: ImageSpec,
    text: TextSpec,
    pre: Preprocess,
    tok: TokenizerSpec,
    scores: Scores,
    templates: Option<Vec<String>>,
}

fn config(package: &ModelPackage) -> Result<DualEncoderConfig, Vec<String>> {
    let (Some(kind), Some(m)) = (
        kind_of(package),
        package.manifest.sections::<DualEncoderManifest>(),
    ) else {
        return Err(vec![format!(
            "family '{}' is not a dual-encoder (zero-shot classification) model",
            package.manifest.family
        )]);
    };
    let mut missing = Vec::new();
    for (present, name) in [
        (m.image.is_some(), "[image]"),
        (m.text.is_some(), "[text]"),
        (m.preprocess.is_some(), "[preprocess]"),
        (m.tokenizer.is_some(), "[tokenizer]"),
        (m.scores.is_some(), "[scores]"),
    ] {
        if !present {
            missing.push(format!("a {} manifest needs a {name} section", kind.family));
        }
    }
    match (&m.image, &m.text, &m.preprocess, &m.tokenizer, &m.scores) {
        (Some(image), Some(text), Some(pre), Some(tok), Some(scores)) if missing.is_empty() => {
            Ok(DualEncoderConfig {
                kind,
                image: image.clone(),
                text: text.clone(),
                pre: pre.clone(),
                tok: tok.clone(),
                scores: scores.clone(),
                templates: m.prompts.as_ref().map(|p| p.templates.clone()),
            })
        }
        _ => Err(missing),
    }
}

/// Every problem with a dual-encoder package (graphs loaded on the CPU).
pub fn check(runtime: &Runtime, package: &ModelPackage) -> Vec<String> {
    let cfg = match config(package) {
        Ok(c) => c,
        Err(problems) => return problems,
    };
    let options = SessionOptions::default();
    let image = create_session(runtime, &package.file(&cfg.image.onnx), &options)
        .map_err(|e| e.to_string());
    let text =
        create_session(runtime, &package.file(&cfg.text.onnx), &options).map_err(|e| e.to_string());
    let tokenizer = load_tokenizer(&package.file(&cfg.tok.file)).map_err(|e| e.to_string());
    validate(&cfg, image.as_ref(), text.as_ref(), tokenizer.as_ref())
}

/// Check the manifest's numbers and the loaded graphs and tokenizer against it.
fn validate(
    cfg: &DualEncoderConfig,
    image: Result<&ModelSession, &String>,
    text: Result<&ModelSession, &String>,
    tokenizer: Result<&tokenizers::Tokenizer, &String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    check_numbers(cfg, &mut problems);
    let image_dim = check_image_graph(cfg, image, &mut problems);
    check_text_graph(cfg, text, image_dim, &mut problems);
    check_tokenizer(cfg, tokenizer, &mut problems);
    problems
}

/// The manifest's own numbers: sizes, normalisation, scores.
fn check_numbers(cfg: &DualEncoderConfig, problems: &mut Vec<String>) {
    let p = &cfg.pre;
    if p.size == 0 {
        problems.push("preprocess.size must be positive".into());
    }
    if p.mean.len() != 3 || p.std.len() != 3 {
        problems.push(format!(
            "preprocess.mean and preprocess.std need 3 values each (got {} and {})",
            p.mean.len(),
            p.std.len()
        ));
    }
    if p.std.iter().any(|s| !positive(*s)) {
        problems.push("preprocess.std values must be positive".into());
    }
    if !positive(p.value_range) {
        problems.push("preprocess.value_range must be positive".into());
    }
    if p.channel_order != "rgb" && p.channel_order != "bgr" {
        problems.push(format!(
            "preprocess.channel_order '{}' is not rgb or bgr",
            p.channel_order
        ));
    }
    if cfg.image.input_type == super::InputType::Uint8 && p.value_range != 255.0 {
        problems.push(format!(
            "image.input_type = \"uint8\" needs preprocess.value_range = 255 (got {})",
            p.value_range
        ));
    }
    if !positive(cfg.scores.logit_scale) {
        problems.push("scores.logit_scale must be positive".into());
    }
    let kind = cfg.kind;
    match (kind.scoring, cfg.scores.logit_bias) {
        (Scoring::Sigmoid, None) => problems.push(format!(
            "a {} manifest needs scores.logit_bias ({} scores are sigmoid(logit_scale * cos + \
             logit_bias))",
            kind.family, kind.display
        )),
        (Scoring::Sigmoid, Some(b)) if !b.is_finite() => {
            problems.push(format!("scores.logit_bias {b} is not a finite number"));
        }
        (Scoring::Softmax, Some(_)) => problems.push(format!(
            "scores.logit_bias is for sigmoid-scored families (siglip); {} scores are a \
             softmax of logit_scale * cos",
            kind.display
        )),
        _ => {}
    }
    if let Some(t) = &cfg.templates {
        if t.is_empty() || t.iter().any(|t| !t.contains("{}")) {
            problems.push(
                "prompts.templates must be a non-empty list of templates, each with {} where \
                 the label goes"
                    .into(),
            );
        }
    }
    if cfg.tok.context_length == 0 {
        problems.push("tokenizer.context_length must be positive".into());
    }
}

/// The image encoder's input and output against the manifest; its embedding width.
fn check_image_graph(
    cfg: &DualEncoderConfig,
    image: Result<&ModelSession, &String>,
    problems: &mut Vec<String>,
) -> Option<i64> {
    let p = &cfg.pre;
    let mut image_dim = None;
    match image {
        Err(e) => problems.push(format!("image encoder: {e}")),
        Ok(s) => {
            let (inputs, outputs) = (s.inputs(), s.outputs());
            match inputs.iter().find(|i| i.name == cfg.image.input) {
                None => problems.push(format!(
                    "image encoder has no input '{}' (it has {})",
                    cfg.image.input,
                    names(&inputs)
                )),
                Some(i) => {
                    let want = cfg.image.input_type.dtype();
                    if i.dtype != want {
                        problems.push(format!(
                            "image input '{}' is {}, but the manifest says input_type = \"{want}\"",
                            i.name, i.dtype
                        ));
                    }
                    let s = p.size as i64;
                    let ok = i.shape.len() == 4
                        && [3, s, s]
                            .iter()
                            .zip(&i.shape[1..])
                            .all(|(want, got)| *got == -1 || got == want);
                    if !ok {
                        problems.push(format!(
                            "image input '{}' has shape {:?}, expected [B, 3, {s}, {s}]",
                            i.name, i.shape
                        ));
                    }
                }
            }
            match outputs.iter().find(|o| o.name == cfg.image.output) {
                None => problems.push(format!(
                    "image encoder has no output '{}' (it has {})",
                    cfg.image.output,
                    names(&outputs)
                )),
                Some(o) if o.shape.len() != 2 => problems.push(format!(
                    "image output '{}' has shape {:?}, expected [B, D]",
                    o.name, o.shape
                )),
                Some(o) => image_dim = Some(o.shape[1]),
            }
        }
    }
    image_dim
}

/// The text encoder's inputs and output against the manifest and the image embedding width.
fn check_text_graph(
    cfg: &DualEncoderConfig,
    text: Result<&ModelSession, &String>,
    image_dim: Option<i64>,
    problems: &mut Vec<String>,
) {
    match text {
        Err(e) => problems.push(format!("text encoder: {e}")),
        Ok(s) => {
            let (inputs, outputs) = (s.inputs(), s.outputs());
            let mut wanted = vec![cfg.text.input_ids.clone()];
            wanted.extend(cfg.text.attention_mask.clone());
            for name in &wanted {
                match inputs.iter().find(|i| &i.name == name) {
                    None => problems.push(format!(
                        "text encoder has no input '{name}' (it has {})",
                        names(&inputs)
                    )),
                    Some(i) => {
                        if i.dtype != "int64" {
                            problems.push(format!(
                                "text input '{name}' is {}, expected int64",
                                i.dtype
                            ));
                        }
                        let l = cfg.tok.context_length as i64;
                        if i.shape.len() != 2 || (i.shape[1] != -1 && i.shape[1] != l) {
                            problems.push(format!(
                                "text input '{name}' has shape {:?}, expected [B, {l}]",
                                i.shape
                            ));
                        }
                    }
                }
            }
            for i in &inputs {
                if !wanted.contains(&i.name) {
                    problems.push(format!(
                        "text encoder input '{}' is not named in the manifest",
                        i.name
                    ));
                }
            }
            match outputs.iter().find(|o| o.name == cfg.text.output) {
                None => problems.push(format!(
                    "text encoder has no output '{}' (it has {})",
                    cfg.text.output,
                    names(&outputs)
                )),
                Some(o) if o.shape.len() != 2 => problems.push(format!(
                    "text output '{}' has shape {:?}, expected [B, D]",
                    o.name, o.shape
                )),
                Some(o) => {
                    if let Some(d) = image_dim {
                        if d != -1 && o.shape[1] != -1 && d != o.shape[1] {
                            problems.push(format!(
                                "image embeddings have {d} dimensions but text embeddings {}",
                                o.shape[1]
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// The tokenizer's special token ids lie in its vocabulary.
fn check_tokenizer(
    cfg: &DualEncoderConfig,
    tokenizer: Result<&tokenizers::Tokenizer, &String>,
    problems: &mut Vec<String>,
) {
    match tokenizer {
        Err(e) => problems.push(e.clone()),
        Ok(t) => {
            let vocab = t.get_vocab_size(true) as u32;
            for (what, id) in [
                ("pad_token_id", Some(cfg.tok.pad_token_id)),
                ("eos_token_id", Some(cfg.tok.eos_token_id)),
                ("bos_token_id", cfg.tok.bos_token_id),
            ] {
                if let Some(id) = id {
                    if id >= vocab {
                        problems.push(format!(
                            "tokenizer.{what} {id} is outside the vocabulary of {vocab} tokens"
                        ));
                    }
                }
            }
            let kind = cfg.kind;
            let model = tokenizer_model(t);
            if !kind.tokenizer_models.contains(&model) {
                problems.push(format!(
                    "{} is a {model} tokenizer, but {} text encoders use {}: is it the tokenizer \
                     of another model?",
                    cfg.tok.file,
                    kind.display,
                    kind.tokenizer_models.join(" or ")
                ));
            }
            check_special_tokens(cfg, t, problems);
        }
    }
}

/// The tokenizer's model type, as `tokenizer.json` names it.
fn tokenizer_model(t: &tokenizers::Tokenizer) -> &'static str {
    use tokenizers::models::ModelWrapper;
    match t.get_model() {
        ModelWrapper::BPE(_) => "BPE",
        ModelWrapper::WordPiece(_) => "WordPiece",
        ModelWrapper::WordLevel(_) => "WordLevel",
        ModelWrapper::Unigram(_) => "Unigram",
    }
}

/// The tokenizer's own special tokens agree with the manifest's ids: an empty text encodes to
/// `[bos?, eos]` (every dual encoder's tokenizer ends a text with its end token).
fn check_special_tokens(
    cfg: &DualEncoderConfig,
    t: &tokenizers::Tokenizer,
    problems: &mut Vec<String>,
) {
    let Ok(enc) = t.encode("", true) else {
        problems.push(format!("{}: cannot encode an empty text", cfg.tok.file));
        return;
    };
    let ids = enc.get_ids();
    let tok = &cfg.tok;
    if ids.last() != Some(&tok.eos_token_id) {
        problems.push(format!(
            "{} ends a text with token {}, but tokenizer.eos_token_id is {}: is it the \
             tokenizer of another model?",
            tok.file,
            ids.last().map_or("none".to_string(), u32::to_string),
            tok.eos_token_id
        ));
    }
    if let Some(bos) = tok.bos_token_id {
        if ids.first() != Some(&bos) || ids.len() < 2 {
            problems.push(format!(
                "{} starts a text with token {}, but tokenizer.bos_token_id is {bos}",
                tok.file,
                ids.first().map_or("none".to_string(), u32::to_string),
            ));
        }
    }
}

/// True for finite numbers above zero (NaN is not).
fn positive(v: f32) -> bool {
    v.is_finite() && v > 0.0
}

fn names(specs: &[crate::runtime::TensorSpec]) -> String {
    let n: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    if n.is_empty() {
        "none".into()
    } else {
        n.join(", ")
    }
}

/// A loaded CLIP model.
pub struct DualEncoderModel {
    package: ModelPackage,
    cfg: DualEncoderConfig,
    image: ModelSession,
    text: ModelSession,
    tokenizer: tokenizers::Tokenizer,
    staging: InputStaging,
    /// The similarity head, on the image encoder's device.
    head: ModelSession,
    /// Where the image embeddings and label embeddings live between the two graphs (the GPU's
    /// memory on CUDA), and host memory for the probabilities.
    memory: BindingMemory,
    /// The CUDA device of the image encoder, when it runs on one.
    cuda_device: Option<i32>,
}

/// Label embeddings and the logit scale placed where the similarity head runs (device memory
/// on a GPU, copied there once), for [`DualEncoderModel::classify_images`].
pub struct DeviceLabels {
    embeds: ort::value::DynValue,
    scale: ort::value::DynValue,
    /// The logit bias of sigmoid-scored families.
    bias: Option<ort::value::DynValue>,
    count: usize,
}

impl std::fmt::Debug for DeviceLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLabels")
            .field("count", &self.count)
            .finish()
    }
}

/// The image encoder on `input` (`n` images) with its output bound to the device memory,
/// then the similarity head with the resident label embeddings; `[n, labels]` back.
fn run_with_head(
    image: &mut ModelSession,
    head: &mut ModelSession,
    spec: &ImageSpec,
    memory: &BindingMemory,
    input: &ort::value::Value<ort::value::DynTensorValueType>,
    n: usize,
    labels: &DeviceLabels,
) -> Result<Array2<f32>, ModelError> {
    let path = image.path.clone();
    let run_err = |e: ort::Error| {
        ModelError::Runtime(RuntimeError::Run {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let mut binding = image.session.create_binding().map_err(run_err)?;
    binding
        .bind_input(spec.input.as_str(), input)
        .map_err(run_err)?;
    binding
        .bind_output_to_device(spec.output.as_str(), &memory.device)
        .map_err(run_err)?;
    let mut out = image.session.run_binding(&binding).map_err(run_err)?;
    let embeds = out
        .remove(spec.output.as_str())
        .ok_or_else(|| run_err(ort::Error::new("the image encoder returned no embeddings")))?;
    drop(out);
    let mut binding_head = head.session.create_binding().map_err(run_err)?;
    binding_head
        .bind_input("image_embeds", &embeds)
        .map_err(run_err)?;
    binding_head
        .bind_input("label_embeds", &labels.embeds)
        .map_err(run_err)?;
    binding_head
        .bind_input("logit_scale", &labels.scale)
        .map_err(run_err)?;
    if let Some(bias) = &labels.bias {
        binding_head
            .bind_input("logit_bias", bias)
            .map_err(run_err)?;
    }
    binding_head
        .bind_output_to_device("probs", &memory.host)
        .map_err(run_err)?;
    let out = head.session.run_binding(&binding_head).map_err(run_err)?;
    let probs = out["probs"].try_extract_array::<f32>().map_err(run_err)?;
    let probs = probs.to_owned().into_shape_with_order((n, labels.count));
    drop(out);
    probs.map_err(|e| run_err(ort::Error::new(e.to_string())))
}

impl std::fmt::Debug for DualEncoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DualEncoderModel")
            .field("dir", &self.package.dir)
            .finish()
    }
}

impl DualEncoderModel {
    /// Load and validate the package in `dir`; the image encoder runs on the requested
    /// device, the text encoder (run once per label set) on the CPU.
    ///
    /// # Errors
    /// Any problem [`check`] finds, or the device's provider failing to load.
    pub fn load(
        runtime: &Runtime,
        dir: &Path,
        options: &SessionOptions,
    ) -> Result<DualEncoderModel, ModelError> {
        let package = ModelPackage::load(dir)?;
        if kind_of(&package).is_none() {
            return Err(ModelError::Package {
                path: dir.display().to_string(),
                reason: format!(
                    "family '{}' is not a dual-encoder (zero-shot classification) model",
                    package.manifest.family
                ),
            });
        }
        let invalid = |problems| ModelError::Invalid {
            path: dir.display().to_string(),
            problems,
        };
        let cfg = config(&package).map_err(invalid)?;
        // A provider failure is its own error (with the --allow-fallback hint), not a
        // package problem.
        let image = package.session(runtime, &cfg.image.onnx, options);
        if let Err(e @ ModelError::Runtime(RuntimeError::Provider { .. })) = image {
            return Err(e);
        }
        let image = image.map_err(|e| e.to_string());
        let text = package
            .session(runtime, &cfg.text.onnx, &SessionOptions::default())
            .map_err(|e| e.to_string());
        let tokenizer = load_tokenizer(&package.file(&cfg.tok.file)).map_err(|e| e.to_string());
        let problems = validate(&cfg, image.as_ref(), text.as_ref(), tokenizer.as_ref());
        let (Ok(image), Ok(text), Ok(tokenizer), true) =
            (image, text, tokenizer, problems.is_empty())
        else {
            return Err(invalid(problems));
        };
        let staging = InputStaging::new(&image, options);
        let cuda_device = image.cuda_device(options);
        // The head is a handful of element-wise ops and one small matmul: CUDA where the
        // encoder is on a GPU (TensorRT would only add an engine build), else the CPU.
        let head_options = SessionOptions {
            device: cuda_device.map_or(crate::runtime::Device::Cpu, crate::runtime::Device::Cuda),
            ..options.clone()
        };
        let (head_name, head_graph) = match cfg.kind.scoring {
            Scoring::Softmax => ("clip_head.onnx (built in)", SOFTMAX_HEAD_ONNX),
            Scoring::Sigmoid => ("sigmoid_head.onnx (built in)", SIGMOID_HEAD_ONNX),
        };
        let head = create_session_from_memory(runtime, head_name, head_graph, &head_options)?;
        let memory = BindingMemory::new(cuda_device).map_err(|e| {
            ModelError::Runtime(RuntimeError::Run {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })
        })?;
        Ok(DualEncoderModel {
            package,
            cfg,
            image,
            text,
            tokenizer,
            staging,
            head,
            memory,
            cuda_device,
        })
    }

    /// The provider the similarity head runs on.
    pub fn head_provider(&self) -> &'static str {
        self.head.provider
    }

    /// Place `label_embeds` (`[labels, D]`, normalised: [`DualEncoderModel::label_embeddings`]) and
    /// the logit scale where the similarity head runs: copied once into GPU memory on CUDA.
    ///
    /// # Errors
    /// The copy to the device failing.
    pub fn device_labels(&self, label_embeds: &Array2<f32>) -> Result<DeviceLabels, ModelError> {
        let path = self.head.path.clone();
        let err = |e: ort::Error| self.run_err(&path, e);
        let embeds = ort::value::Tensor::from_array(label_embeds.as_standard_layout().to_owned())
            .map_err(err)?;
        let scalar = |v: f32| ort::value::Tensor::from_array(([1usize], vec![v])).map_err(err);
        let scale = scalar(self.cfg.scores.logit_scale)?;
        let bias = match (self.cfg.kind.scoring, self.cfg.scores.logit_bias) {
            (Scoring::Sigmoid, b) => Some(scalar(b.unwrap_or(0.0))?),
            (Scoring::Softmax, _) => None,
        };
        let place = |t: ort::value::Tensor<f32>| -> Result<ort::value::DynValue, ModelError> {
            match self.cuda_device {
                Some(id) => Ok(t
                    .to(ort::memory::AllocationDevice::CUDA, id)
                    .map_err(err)?
                    .into_dyn()),
                None => Ok(t.into_dyn()),
            }
        };
        Ok(DeviceLabels {
            embeds: place(embeds)?,
            scale: place(scale)?,
            bias: bias.map(place).transpose()?,
            count: label_embeds.nrows(),
        })
    }

    /// An empty batch of `capacity` tiles in the image encoder's input memory (pinned on a
    /// GPU), in the encoder's input type.
    ///
    /// # Errors
    /// ONNX Runtime failing to allocate it, or a byte batch for a float model.
    pub fn staged_batch<T: ImageElement>(
        &self,
        capacity: usize,
    ) -> Result<StagedBatch<T>, ModelError> {
        let path = &self.image.path;
        if T::BYTES && !self.takes_bytes() {
            return Err(ModelError::Input {
                path: path.display().to_string(),
                reason: "a batch of raw bytes for a model that takes normalised floats".into(),
            });
        }
        let capacity = capacity.max(1);
        let s = self.cfg.pre.size;
        let dims = [capacity, 3, s, s];
        let alloc = &self.staging.allocator;
        let tensor = if self.cfg.image.input_type == super::InputType::Uint8 {
            ort::value::Tensor::<u8>::new(alloc, dims).map(StagedTensor::Bytes)
        } else {
            ort::value::Tensor::<f32>::new(alloc, dims).map(StagedTensor::Floats)
        }
        .map_err(|e| self.run_err(path, e))?;
        Ok(StagedBatch {
            tensor,
            per_image: 3 * s * s,
            capacity,
            len: 0,
            _element: std::marker::PhantomData,
        })
    }

    /// [`DualEncoderModel::classify_images`] of a staged batch: a full one is handed to ONNX Runtime
    /// without another copy; a partial one (the last) goes through the staging tensor of its
    /// size. The batch is left as it was (call [`StagedBatch::clear`]).
    ///
    /// # Errors
    /// As [`DualEncoderModel::classify_images`].
    pub fn classify_staged<T: ImageElement>(
        &mut self,
        batch: &StagedBatch<T>,
        labels: &DeviceLabels,
    ) -> Result<Array2<f32>, ModelError> {
        let n = batch.len;
        let s = self.cfg.pre.size;
        if n < batch.capacity {
            let view = |e: ndarray::ShapeError| self.run_err(&self.image.path, e);
            let shape = (n, 3, s, s);
            let used = n * batch.per_image;
            return match &batch.tensor {
                StagedTensor::Bytes(t) => {
                    let data = &t.extract_tensor().1[..used];
                    let v = ArrayView4::from_shape(shape, data).map_err(view)?;
                    self.classify_images(v, labels)
                }
                StagedTensor::Floats(t) => {
                    let data = &t.extract_tensor().1[..used];
                    let v = ArrayView4::from_shape(shape, data).map_err(view)?;
                    self.classify_images(v, labels)
                }
            };
        }
        let input: ort::value::ValueRef<'_, ort::value::DynTensorValueType> = match &batch.tensor {
            StagedTensor::Bytes(t) => t.upcast_ref(),
            StagedTensor::Floats(t) => t.upcast_ref(),
        };
        run_with_head(
            &mut self.image,
            &mut self.head,
            &self.cfg.image,
            &self.memory,
            &input,
            n,
            labels,
        )
    }

    /// Class probabilities `[B, labels]` of a batch, computed where the model runs: the image
    /// embeddings stay in the encoder's output memory (the GPU's on CUDA) and go straight into
    /// the similarity head with the resident label embeddings; only the probabilities come
    /// back to the host. The same numbers as [`DualEncoderModel::probabilities`] of
    /// [`DualEncoderModel::encode_images`], within float rounding.
    ///
    /// # Errors
    /// As [`DualEncoderModel::encode_images`].
    pub fn classify_images<T: ImageElement>(
        &mut self,
        batch: ArrayView4<'_, T>,
        labels: &DeviceLabels,
    ) -> Result<Array2<f32>, ModelError> {
        let path = self.image.path.clone();
        self.check_batch(&batch)?;
        let run_err = |e: ort::Error| {
            ModelError::Runtime(RuntimeError::Run {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let input = stage(&mut self.staging, self.cfg.image.input_type, &batch).map_err(run_err)?;
        let n = batch.shape()[0];
        run_with_head(
            &mut self.image,
            &mut self.head,
            &self.cfg.image,
            &self.memory,
            &input,
            n,
            labels,
        )
    }

    /// The batch's shape and element type suit the image encoder.
    fn check_batch<T: ImageElement>(&self, batch: &ArrayView4<'_, T>) -> Result<(), ModelError> {
        let s = self.cfg.pre.size;
        let path = &self.image.path;
        let shape = batch.shape();
        if shape[1] != 3 || shape[2] != s || shape[3] != s {
            return Err(ModelError::Input {
                path: path.display().to_string(),
                reason: format!("batch has shape {shape:?}, the model takes [B, 3, {s}, {s}]"),
            });
        }
        if T::BYTES && !self.takes_bytes() {
            return Err(ModelError::Input {
                path: path.display().to_string(),
                reason: "a batch of raw bytes for a model that takes normalised floats".into(),
            });
        }
        Ok(())
    }

    pub fn package(&self) -> &ModelPackage {
        &self.package
    }

    /// Whether the image encoder takes raw uint8 tiles (normalisation in the graph).
    pub fn takes_bytes(&self) -> bool {
        self.cfg.image.input_type == super::InputType::Uint8
    }

    /// Whether image batches go to the device from pinned (page-locked) host memory.
    pub fn pinned_input(&self) -> bool {
        self.staging.pinned
    }

    /// Square input size in pixels.
    pub fn input_size(&self) -> usize {
        self.cfg.pre.size
    }

    pub fn logit_scale(&self) -> f32 {
        self.cfg.scores.logit_scale
    }

    /// The family's kind (its name, scoring and tokenizer).
    pub fn kind(&self) -> &'static DualEncoderKind {
        self.cfg.kind
    }

    /// Whether labels are scored independently (sigmoid: several can apply to one tile)
    /// rather than as one softmax over the labels.
    pub fn multi_label(&self) -> bool {
        self.cfg.kind.scoring == Scoring::Sigmoid
    }

    /// The prompt templates used when the user gives none: the package's `[prompts]`, else
    /// the family's defaults.
    pub fn default_templates(&self) -> Vec<String> {
        match &self.cfg.templates {
            Some(t) => t.clone(),
            None => self
                .cfg
                .kind
                .default_templates
                .iter()
                .map(|t| (*t).to_string())
                .collect(),
        }
    }

    /// The execution provider the image encoder runs on, and why the requested one was not
    /// used when a fallback happened.
    pub fn image_provider(&self) -> (&'static str, Option<&str>) {
        (self.image.provider, self.image.fallback.as_deref())
    }

    /// Tokenize prompts exactly as Hugging Face's CLIP tokenizer with
    /// `padding="max_length", truncation=True`: special tokens added, cut to the context length
    /// keeping the end token last, padded with the pad id.
    ///
    /// # Errors
    /// The tokenizer failing on a prompt.
    pub fn tokenize(&self, prompts: &[String]) -> Result<Tokens, ModelError> {
        tokenize_prompts(
            &self.tokenizer,
            &self.cfg.tok,
            &self.package.file(&self.cfg.tok.file),
            prompts,
        )
    }

    fn run_err(&self, path: &Path, e: impl std::fmt::Display) -> ModelError {
        ModelError::Runtime(RuntimeError::Run {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Raw (unnormalised) text embeddings `[N, D]` of prompts.
    ///
    /// # Errors
    /// Tokenizer or inference failure.
    pub fn encode_text(&mut self, prompts: &[String]) -> Result<Array2<f32>, ModelError> {
        let tokens = self.tokenize(prompts)?;
        let mut rows = Vec::with_capacity(prompts.len());
        let path = self.text.path.clone();
        // Small batches keep memory flat for long label lists.
        for start in (0..tokens.rows).step_by(64) {
            let n = (tokens.rows - start).min(64);
            let range = start * tokens.context..(start + n) * tokens.context;
            let ids =
                ndarray::ArrayView2::from_shape((n, tokens.context), &tokens.ids[range.clone()])
                    .map_err(|e| self.run_err(&path, e))?;
            let mask = ndarray::ArrayView2::from_shape((n, tokens.context), &tokens.mask[range])
                .map_err(|e| self.run_err(&path, e))?;
            let ids_t = TensorRef::from_array_view(ids).map_err(|e| self.run_err(&path, e))?;
            let mask_t = TensorRef::from_array_view(mask).map_err(|e| self.run_err(&path, e))?;
            let mut inputs = ort::inputs![self.cfg.text.input_ids.as_str() => ids_t];
            if let Some(m) = &self.cfg.text.attention_mask {
                inputs.push((m.as_str().into(), mask_t.into()));
            }
            let out_name = self.cfg.text.output.clone();
            let outputs = self.text.session.run(inputs).map_err(|e| {
                ModelError::Runtime(RuntimeError::Run {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            })?;
            let emb = outputs[out_name.as_str()]
                .try_extract_array::<f32>()
                .map_err(|e| {
                    ModelError::Runtime(RuntimeError::Run {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })
                })?;
            for r in emb.outer_iter() {
                rows.push(r.iter().copied().collect::<Vec<f32>>());
            }
        }
        to_array2(rows).map_err(|e| self.run_err(&path, e))
    }

    /// Raw image embeddings `[B, D]` of a batch `[B, 3, S, S]`: normalised floats (from
    /// [`Normalizer::apply`]), or raw bytes for packages whose image input is uint8.
    ///
    /// # Errors
    /// Wrong batch shape, a byte batch for a float package, or inference failure.
    pub fn encode_images<T: ImageElement>(
        &mut self,
        batch: ArrayView4<'_, T>,
    ) -> Result<Array2<f32>, ModelError> {
        let path = self.image.path.clone();
        self.check_batch(&batch)?;
        let run_err = |e: ort::Error| {
            ModelError::Runtime(RuntimeError::Run {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let input = stage(&mut self.staging, self.cfg.image.input_type, &batch).map_err(run_err)?;
        let out_name = self.cfg.image.output.clone();
        let outputs = self
            .image
            .session
            .run(ort::inputs![self.cfg.image.input.as_str() => input])
            .map_err(|e| {
                ModelError::Runtime(RuntimeError::Run {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            })?;
        let emb = outputs[out_name.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| {
                ModelError::Runtime(RuntimeError::Run {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            })?;
        let rows: Vec<Vec<f32>> = emb
            .outer_iter()
            .map(|r| r.iter().copied().collect())
            .collect();
        drop(outputs);
        to_array2(rows).map_err(|e| self.run_err(&path, e))
    }

    /// The model's pixel normalisation, as a small value reader threads can share.
    pub fn normalizer(&self) -> Normalizer {
        let mut n = Normalizer::from_preprocess(&self.cfg.pre);
        n.quantize = self.cfg.image.input_type == super::InputType::Uint8;
        n
    }

    /// Label embeddings `[labels, D]`: each label's prompts (every template) embedded,
    /// normalised, averaged and normalised again. Read from `cache` when there.
    ///
    /// # Errors
    /// Inference failure; cache problems are not errors (the cache is skipped).
    pub fn label_embeddings(
        &mut self,
        labels: &[String],
        templates: &[String],
        cache: Option<&Path>,
    ) -> Result<(Array2<f32>, bool), ModelError> {
        let prompts = prompts(labels, templates);
        let key = match cache {
            Some(_) => Some(self.cache_key(&prompts)?),
            None => None,
        };
        if let (Some(dir), Some(key)) = (cache, &key) {
            if let Some(hit) = read_cache(&dir.join(format!("{key}.json")), labels.len()) {
                return Ok((hit, true));
            }
        }
        let text = normalize_rows(self.encode_text(&prompts)?);
        let t = templates.len();
        let d = text.ncols();
        let mut out = Array2::<f32>::zeros((labels.len(), d));
        for (l, mut row) in out.outer_iter_mut().enumerate() {
            for k in 0..t {
                row += &text.row(l * t + k);
            }
        }
        let out = normalize_rows(out);
        if let (Some(dir), Some(key)) = (cache, &key) {
            write_cache(dir, key, &out);
        }
        Ok((out, false))
    }

    fn cache_key(&self, prompts: &[String]) -> Result<String, ModelError> {
        use sha2::{Digest, Sha256};
        let model = self
            .package
            .hash_files(&[&self.cfg.text.onnx, &self.cfg.tok.file])?;
        let mut h = Sha256::new();
        h.update(model.as_bytes());
        h.update(self.cfg.tok.context_length.to_le_bytes());
        for p in prompts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        Ok(hex(&h.finalize()))
    }

    /// Class probabilities `[B, labels]` from raw image embeddings and label embeddings.
    pub fn probabilities(
        &self,
        image_embeds: Array2<f32>,
        label_embeds: &Array2<f32>,
    ) -> Array2<f32> {
        let img = normalize_rows(image_embeds);
        let s = &self.cfg.scores;
        score(
            img.dot(&label_embeds.t()),
            s.logit_scale,
            s.logit_bias,
            self.cfg.kind.scoring,
        )
    }
}

/// Label probabilities from cosine similarities `[B, labels]`, as the family scores them.
pub fn score(cosines: Array2<f32>, scale: f32, bias: Option<f32>, scoring: Scoring) -> Array2<f32> {
    let mut logits = cosines * scale;
    match scoring {
        Scoring::Softmax => {
            for mut row in logits.outer_iter_mut() {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                row.mapv_inplace(|v| (v - max).exp());
                let sum = row.sum();
                row.mapv_inplace(|v| v / sum);
            }
        }
        Scoring::Sigmoid => {
            let bias = bias.unwrap_or(0.0);
            logits.mapv_inplace(|v| 1.0 / (1.0 + (-(v + bias)).exp()));
        }
    }
    logits
}

/// Every template applied to every label, label-major.
pub fn prompts(labels: &[String], templates: &[String]) -> Vec<String> {
    labels
        .iter()
        .flat_map(|l| templates.iter().map(move |t| t.replace("{}", l)))
        .collect()
}

/// Rows scaled to unit length (zero rows stay zero).
pub fn normalize_rows(mut a: Array2<f32>) -> Array2<f32> {
    for mut row in a.axis_iter_mut(Axis(0)) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            row.mapv_inplace(|v| v / n);
        }
    }
    a
}

fn to_array2(rows: Vec<Vec<f32>>) -> Result<Array2<f32>, String> {
    let n = rows.len();
    let d = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    Array2::from_shape_vec((n, d), flat).map_err(|e| e.to_string())
}

#[derive(Serialize, Deserialize)]
struct CachedEmbeddings {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

fn read_cache(path: &Path, rows: usize) -> Option<Array2<f32>> {
    let text = std::fs::read_to_string(path).ok()?;
    let c: CachedEmbeddings = serde_json::from_str(&text).ok()?;
    if c.rows != rows {
        return None;
    }
    Array2::from_shape_vec((c.rows, c.cols), c.data).ok()
}

fn write_cache(dir: &Path, key: &str, a: &Array2<f32>) {
    let c = CachedEmbeddings {
        rows: a.nrows(),
        cols: a.ncols(),
        data: a.iter().copied().collect(),
    };
    let Ok(text) = serde_json::to_string(&c) else {
        return;
    };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp: PathBuf = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    if std::fs::write(&tmp, text).is_ok()
        && std::fs::rename(&tmp, dir.join(format!("{key}.json"))).is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_label_major() {
        let p = prompts(
            &["forest".into(), "river".into()],
            &["a photo of {}.".into(), "{} from above".into()],
        );
        assert_eq!(
            p,
            [
                "a photo of forest.",
                "forest from above",
                "a photo of river.",
                "river from above"
            ]
        );
    }

    fn config_of(kind: &'static DualEncoderKind, bias: Option<f32>) -> DualEncoderConfig {
        DualEncoderConfig {
            kind,
            image: ImageSpec {
                onnx: "i.onnx".into(),
                input: "pixel_values".into(),
                input_type: super::super::InputType::Float32,
                output: "image_embeds".into(),
                tokens: None,
                qformer_input_ids: None,
                qformer_attention_mask: None,
            },
            text: TextSpec {
                onnx: "t.onnx".into(),
                input_ids: "input_ids".into(),
                attention_mask: None,
                output: "text_embeds".into(),
            },
            pre: Preprocess {
                size: 64,
                mean: vec![0.5; 3],
                std: vec![0.5; 3],
                channel_order: "rgb".into(),
                value_range: 255.0,
            },
            tok: TokenizerSpec {
                file: "tokenizer.json".into(),
                context_length: 77,
                pad_token_id: 49407,
                bos_token_id: Some(49406),
                eos_token_id: 49407,
            },
            scores: Scores {
                logit_scale: 100.0,
                logit_bias: bias,
            },
            templates: None,
        }
    }

    #[test]
    fn the_logit_bias_belongs_to_sigmoid_families_only() {
        let siglip = &crate::models::siglip::SIGLIP.0;
        let clip = &crate::models::clip::CLIP.0;
        let problems = |cfg: &DualEncoderConfig| {
            let mut p = Vec::new();
            check_numbers(cfg, &mut p);
            p
        };
        assert!(problems(&config_of(siglip, Some(-10.0))).is_empty());
        assert!(problems(&config_of(clip, None)).is_empty());
        let p = problems(&config_of(siglip, None));
        assert!(
            p.len() == 1 && p[0].contains("needs scores.logit_bias"),
            "{p:?}"
        );
        let p = problems(&config_of(clip, Some(-10.0)));
        assert!(p.len() == 1 && p[0].contains("softmax"), "{p:?}");
        let p = problems(&config_of(siglip, Some(f32::NAN)));
        assert!(p.len() == 1 && p[0].contains("finite"), "{p:?}");
    }

    #[test]
    fn a_tokenizer_of_another_kind_is_refused() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let t = load_tokenizer(&root.join("sample_data/models/clip-tiny/tokenizer.json"))
            .expect("tokenizer");
        assert_eq!(tokenizer_model(&t), "BPE");
        let problems = |cfg: &DualEncoderConfig| {
            let mut p = Vec::new();
            check_tokenizer(cfg, Ok(&t), &mut p);
            p
        };
        assert!(problems(&config_of(&crate::models::clip::CLIP.0, None)).is_empty());
        let p = problems(&config_of(&crate::models::flava::FLAVA.0, None));
        assert!(
            p.len() == 1
                && p[0].contains("is a BPE tokenizer, but FLAVA text encoders use WordPiece"),
            "{p:?}"
        );
        let mut cfg = config_of(&crate::models::clip::CLIP.0, None);
        cfg.tok.eos_token_id = 1;
        cfg.tok.bos_token_id = Some(0);
        let p = problems(&cfg);
        assert!(
            p.len() == 2
                && p[0].contains("ends a text with token 49407, but tokenizer.eos_token_id is 1")
                && p[1].contains("starts a text with token 49406"),
            "{p:?}"
        );
    }

    #[test]
    fn softmax_sums_to_one_and_sigmoids_are_independent() {
        let cos = ndarray::array![[0.5f32, 0.5, -0.5]];
        let p = score(cos.clone(), 2.0, None, Scoring::Softmax);
        // exp(1) / (2 exp(1) + exp(-1))
        let e = 1f32.exp();
        let want = e / (2.0 * e + 1.0 / e);
        assert!((p[[0, 0]] - want).abs() < 1e-6 && (p.sum() - 1.0).abs() < 1e-6);
        let p = score(cos, 2.0, Some(-1.0), Scoring::Sigmoid);
        // sigmoid(2 * 0.5 - 1) = 0.5 twice: two labels can both reach 0.5.
        assert!((p[[0, 0]] - 0.5).abs() < 1e-6 && (p[[0, 1]] - 0.5).abs() < 1e-6);
        let want = 1.0 / (1.0 + 2f32.exp());
        assert!((p[[0, 2]] - want).abs() < 1e-6);
    }

    #[test]
    fn rows_are_normalised() {
        let a = normalize_rows(ndarray::array![[3.0, 4.0], [0.0, 0.0]]);
        assert_eq!(a, ndarray::array![[0.6, 0.8], [0.0, 0.0]]);
    }
}
