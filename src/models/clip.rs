//! CLIP-family zero-shot classification (Radford et al. 2021, "Learning Transferable Visual
//! Models From Natural Language Supervision"; upstream: openai/CLIP, Hugging Face
//! `CLIPModel`). Also fits SigLIP-style and other dual encoders that export an image encoder
//! and a text encoder with projections.
//!
//! Inputs: images `[B, 3, S, S]` float32, normalised `(v / value_range - mean) / std`; token ids
//! `[B, L]` int64 padded to the context length. Scores: softmax over labels of
//! `logit_scale * cos(image, label)`, where a label's embedding is the normalised mean of its
//! normalised prompt embeddings (the prompt ensemble of the CLIP paper, section 3.1.4).

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
    family_manifest, ImageSpec, Manifest, Preprocess, Scores, TextSpec, TokenizerSpec,
};
use crate::runtime::{
    create_session, create_session_from_memory, BindingMemory, ModelSession, Runtime, RuntimeError,
    SessionOptions,
};
use crate::task::Task;

/// The similarity head run after the image encoder, on the encoder's provider:
/// `softmax(logit_scale * normalize(image_embeds) @ label_embeds^T)` (built by
/// tools/fixtures/make_builtin_graphs.py).
static CLIP_HEAD_ONNX: &[u8] = include_bytes!("clip_head.onnx");

/// Prompt templates averaged per label when the user gives none: phrasings of overhead
/// imagery, in the spirit of the CLIP paper's ensembles for remote-sensing datasets.
pub const DEFAULT_TEMPLATES: [&str; 8] = [
    "a satellite photo of {}.",
    "a satellite image of {}.",
    "an aerial photo of {}.",
    "an aerial image of {}.",
    "a centered satellite photo of {}.",
    "satellite imagery of {}.",
    "a top-down view of {}.",
    "a remote sensing image of {}.",
];

/// The family name in `model.toml`.
pub const FAMILY: &str = "clip";

family_manifest! {
    /// A CLIP manifest's sections, all required ([`check`] names the missing ones).
    pub struct ClipManifest {
        pub image: Option<ImageSpec>,
        pub text: Option<TextSpec>,
        pub preprocess: Option<Preprocess>,
        pub tokenizer: Option<TokenizerSpec>,
        pub scores: Option<Scores>,
    }
}

/// The CLIP family ([`super::registry`]).
#[derive(Debug)]
pub struct Clip;

impl ModelFamily for Clip {
    fn name(&self) -> &'static str {
        FAMILY
    }

    fn tasks(&self) -> &'static [Task] {
        &[Task::Classify]
    }

    fn check(&self, runtime: &Runtime, package: &ModelPackage) -> Vec<String> {
        check(runtime, package)
    }

    fn parse(&self, text: &str) -> Result<Manifest, String> {
        let (common, m) = ClipManifest::from_toml(text)?;
        Ok(Manifest::new(common, None, None, m))
    }

    fn input(&self, package: &ModelPackage) -> Option<InputContract> {
        let m = package.manifest.sections::<ClipManifest>()?;
        Some(InputContract {
            size: m.preprocess.as_ref()?.size,
            any_size: false,
            prompted: false,
            bytes: m.image.as_ref()?.input_type == super::InputType::Uint8,
        })
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
        let mut m = ClipModel::load(runtime, path, options)?;
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

/// The sections of a CLIP manifest, all required.
#[derive(Clone, Debug)]
struct ClipConfig {
    image: ImageSpec,
    text: TextSpec,
    pre: Preprocess,
    tok: TokenizerSpec,
    scores: Scores,
}

fn config(package: &ModelPackage) -> Result<ClipConfig, Vec<String>> {
    let Some(m) = package.manifest.sections::<ClipManifest>() else {
        return Err(vec![format!(
            "family '{}' is not a clip model",
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
            missing.push(format!("a clip manifest needs a {name} section"));
        }
    }
    match (&m.image, &m.text, &m.preprocess, &m.tokenizer, &m.scores) {
        (Some(image), Some(text), Some(pre), Some(tok), Some(scores)) if missing.is_empty() => {
            Ok(ClipConfig {
                image: image.clone(),
                text: text.clone(),
                pre: pre.clone(),
                tok: tok.clone(),
                scores: scores.clone(),
            })
        }
        _ => Err(missing),
    }
}

/// Every problem with a CLIP package (graphs loaded on the CPU).
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
    cfg: &ClipConfig,
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
fn check_numbers(cfg: &ClipConfig, problems: &mut Vec<String>) {
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
    if cfg.tok.context_length == 0 {
        problems.push("tokenizer.context_length must be positive".into());
    }
}

/// The image encoder's input and output against the manifest; its embedding width.
fn check_image_graph(
    cfg: &ClipConfig,
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
    cfg: &ClipConfig,
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
    cfg: &ClipConfig,
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
pub struct ClipModel {
    package: ModelPackage,
    cfg: ClipConfig,
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
/// on a GPU, copied there once), for [`ClipModel::classify_images`].
pub struct DeviceLabels {
    embeds: ort::value::DynValue,
    scale: ort::value::DynValue,
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
    binding_head
        .bind_output_to_device("probs", &memory.host)
        .map_err(run_err)?;
    let out = head.session.run_binding(&binding_head).map_err(run_err)?;
    let probs = out["probs"].try_extract_array::<f32>().map_err(run_err)?;
    let probs = probs.to_owned().into_shape_with_order((n, labels.count));
    drop(out);
    probs.map_err(|e| run_err(ort::Error::new(e.to_string())))
}

impl std::fmt::Debug for ClipModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipModel")
            .field("dir", &self.package.dir)
            .finish()
    }
}

impl ClipModel {
    /// Load and validate the package in `dir`; the image encoder runs on the requested
    /// device, the text encoder (run once per label set) on the CPU.
    ///
    /// # Errors
    /// Any problem [`check`] finds, or the device's provider failing to load.
    pub fn load(
        runtime: &Runtime,
        dir: &Path,
        options: &SessionOptions,
    ) -> Result<ClipModel, ModelError> {
        let package = ModelPackage::load(dir)?;
        if package.manifest.family != FAMILY {
            return Err(ModelError::Package {
                path: dir.display().to_string(),
                reason: format!("family '{}' is not a clip model", package.manifest.family),
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
        let head = create_session_from_memory(
            runtime,
            "clip_head.onnx (built in)",
            CLIP_HEAD_ONNX,
            &head_options,
        )?;
        let memory = BindingMemory::new(cuda_device).map_err(|e| {
            ModelError::Runtime(RuntimeError::Run {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })
        })?;
        Ok(ClipModel {
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

    /// Place `label_embeds` (`[labels, D]`, normalised: [`ClipModel::label_embeddings`]) and
    /// the logit scale where the similarity head runs: copied once into GPU memory on CUDA.
    ///
    /// # Errors
    /// The copy to the device failing.
    pub fn device_labels(&self, label_embeds: &Array2<f32>) -> Result<DeviceLabels, ModelError> {
        let path = self.head.path.clone();
        let err = |e: ort::Error| self.run_err(&path, e);
        let embeds = ort::value::Tensor::from_array(label_embeds.as_standard_layout().to_owned())
            .map_err(err)?;
        let scale = ort::value::Tensor::from_array(([1usize], vec![self.cfg.scores.logit_scale]))
            .map_err(err)?;
        let (embeds, scale) = match self.cuda_device {
            Some(id) => (
                embeds
                    .to(ort::memory::AllocationDevice::CUDA, id)
                    .map_err(err)?
                    .into_dyn(),
                scale
                    .to(ort::memory::AllocationDevice::CUDA, id)
                    .map_err(err)?
                    .into_dyn(),
            ),
            None => (embeds.into_dyn(), scale.into_dyn()),
        };
        Ok(DeviceLabels {
            embeds,
            scale,
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

    /// [`ClipModel::classify_images`] of a staged batch: a full one is handed to ONNX Runtime
    /// without another copy; a partial one (the last) goes through the staging tensor of its
    /// size. The batch is left as it was (call [`StagedBatch::clear`]).
    ///
    /// # Errors
    /// As [`ClipModel::classify_images`].
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
    /// back to the host. The same numbers as [`ClipModel::probabilities`] of
    /// [`ClipModel::encode_images`], within float rounding.
    ///
    /// # Errors
    /// As [`ClipModel::encode_images`].
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
        let mut logits = img.dot(&label_embeds.t()) * self.cfg.scores.logit_scale;
        for mut row in logits.outer_iter_mut() {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row.mapv_inplace(|v| v / sum);
        }
        logits
    }
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

    #[test]
    fn rows_are_normalised() {
        let a = normalize_rows(ndarray::array![[3.0, 4.0], [0.0, 0.0]]);
        assert_eq!(a, ndarray::array![[0.6, 0.8], [0.0, 0.0]]);
    }
}
