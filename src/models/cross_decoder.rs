//! Language decoders that read the image through cross-attention: BLIP captioning (Li et al.
//! 2022, "BLIP: Bootstrapping Language-Image Pre-training for Unified Vision-Language
//! Understanding and Generation"; Hugging Face `BlipForConditionalGeneration`: a ViT and a BERT
//! decoder with a cross-attention block after each self-attention), and the shape that
//! encoder-decoder models (BLIP-2 with Flan-T5, Florence-2, BLIP VQA) fit later.
//!
//! A package has three graphs (tools/export/README.md, "Cross-attention decoders"):
//!
//! - `[encoder]`, run once per tile: pixels `[B, 3, S, S]` -> the memory `[B, M, E]` the decoder
//!   attends to (and optionally its mask `[B, M]`; all ones when the graph has none);
//! - `[cross]`, run once per tile: the memory -> every decoder layer's cross-attention keys and
//!   values `[B, heads, M, head_dim]`. They never move again: beams only ever continue beams
//!   of their own tile. With `[decoder] cross_rows = "item"` (what the BLIP, T5 and Florence-2
//!   exporters write) the decoder takes them, and the memory mask, once per tile and its beams
//!   attend to that one copy; otherwise they are expanded once to the beams of the tile (a
//!   gather by row index on their device);
//! - `[decoder]`, one merged step graph: token ids, the self-attention mask, position ids, the
//!   memory mask, the cross keys/values and the (possibly empty) self-attention past -> logits
//!   and the new past. The self-attention past grows by one position per step and stays in ONNX
//!   Runtime values on the decoder's device, as in [`super::decoder`].
//!
//! The decoder's start tokens come from the user's prompt (BLIP's text prefix, "a satellite
//! image of"): tokenized with the tokenizer's special tokens, the first replaced by
//! `[prompt] start_token_id` and `[prompt] trim_end` tokens dropped from the end, which is
//! BLIP `generate`'s `input_ids[:, 0] = bos` and `input_ids[:, :-1]`. Batches of different
//! prompt lengths are left padded with explicit position ids, so an item decodes as it does
//! alone. Searches and logits processors are [`crate::generation`]'s.
//!
//! Flamingo-style models (IDEFICS, OpenFlamingo: a perceiver resampler in the encoder graph,
//! gated cross-attention layers inside a Llama decoder) use the same graphs with three optional
//! keys: `[prompt] template` (the chat text around the prompt), `[decoder] cross_layers` (fewer
//! cross-attention layers than layers) and `[decoder] image_attention` with `[prompt]
//! image_token_id`: a per-token 0/1 input, 1 from the `<image>` token on, as `IdeficsProcessor`
//! builds `image_attention_mask` (`image_flags`); new tokens repeat each row's last flag.

use std::path::Path;

use ndarray::{Array2, ArrayView4};
use ort::memory::MemoryInfo;
use ort::value::{DynValue, Tensor};
use serde::{Deserialize, Serialize};

use super::decoder::layer_name;
use super::manifest::{GenerationSpec, Preprocess, TokenizerSpec};
use super::task_prompts::{LocationsSpec, TasksSpec};
use super::{run_err, ModelError, ModelPackage};
use crate::generation::{GenerationError, GenerationParams, Start, StepDecoder};
use crate::runtime::{
    create_session, create_session_from_memory, BindingMemory, ModelSession, Runtime, RuntimeError,
    SessionOptions,
};

/// A Gather along axis 0 (`y = x[idx]`): expands the cross keys/values to the beams and
/// reorders the self-attention past between beams (built by
/// tools/fixtures/make_builtin_graphs.py).
static GATHER_ONNX: &[u8] = include_bytes!("beam_reorder.onnx");

/// The family name in `model.toml`.
pub const FAMILY: &str = "cross-attention-decoder";

/// The vision (or encoder) graph, run once per tile.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncoderSpec {
    pub onnx: String,
    /// float32 `[B, 3, S, S]`, normalised.
    pub pixel_values: String,
    /// int64 `[B, L]`: when given, the user's prompt is the encoder's text, right padded (BLIP
    /// VQA: the question; BLIP-2 / InstructBLIP with Flan-T5, Florence-2: the prompt of an
    /// encoder-decoder language model) and the decoder starts from `[prompt] start_token_id`
    /// alone.
    #[serde(default)]
    pub input_ids: Option<String>,
    /// int64 `[B, L]`, the mask of `input_ids`.
    #[serde(default)]
    pub attention_mask: Option<String>,
    /// float32 `[B, M, E]`.
    pub memory: String,
    /// int64 `[B, M]` output, when the memory has padding; all ones when absent.
    #[serde(default)]
    pub memory_mask: Option<String>,
    /// InstructBLIP: int64 `[B, Lq]` input, the prompt's `[qformer_tokenizer]` ids.
    #[serde(default)]
    pub qformer_input_ids: Option<String>,
    /// int64 `[B, Lq]` input (with `qformer_input_ids`).
    #[serde(default)]
    pub qformer_attention_mask: Option<String>,
    /// The memory rows before the prompt's (the Q-Former's query tokens): informative.
    #[serde(default)]
    pub query_tokens: Option<usize>,
}

/// The graph computing every decoder layer's cross-attention keys and values from the memory.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CrossSpec {
    pub onnx: String,
    /// float32 `[B, M, E]` input.
    pub memory: String,
    /// Output name patterns, `{i}` standing for the layer: float32 `[B, heads, M, head_dim]`.
    pub key: String,
    pub value: String,
}

/// The decoder step graph.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub onnx: String,
    /// int64 `[B, T]`.
    pub input_ids: String,
    /// int64 `[B, past + T]`: the self-attention mask.
    pub attention_mask: String,
    /// int64 `[B, T]`.
    #[serde(default)]
    pub position_ids: Option<String>,
    /// int64 `[B, M]`: the cross-attention mask.
    #[serde(default)]
    pub memory_mask: Option<String>,
    /// int64 `[B, T]`: 1 where a token attends to the tile's image (IDEFICS's
    /// `image_attention_mask` for one image): from `[prompt] image_token_id` on, as
    /// `IdeficsProcessor` makes it; new tokens repeat the last prompt token's value.
    #[serde(default)]
    pub image_attention: Option<String>,
    /// Input name patterns of the cross keys/values (`{i}`: layer).
    pub cross_key: String,
    pub cross_value: String,
    /// Self-attention past inputs and present outputs (`{i}`: layer).
    pub past_key: String,
    pub past_value: String,
    pub present_key: String,
    pub present_value: String,
    /// float32 `[B, T, V]`.
    pub logits: String,
    pub layers: usize,
    /// Layers with cross-attention keys/values (`cross.{i}` for `i < cross_layers`), when not
    /// every layer has them (IDEFICS: a gated cross-attention layer every
    /// `cross_layer_interval` layers); default `layers`.
    #[serde(default)]
    pub cross_layers: Option<usize>,
    pub heads: usize,
    pub head_dim: usize,
    #[serde(default)]
    pub hidden: Option<usize>,
    /// The memory width `E` the cross-attention projections take.
    #[serde(default)]
    pub cross_width: Option<usize>,
    #[serde(default)]
    pub vocab: Option<usize>,
    /// Longest start + generated sequence the decoder's positions allow.
    #[serde(default)]
    pub max_positions: Option<usize>,
    /// The rows of the cross keys/values and the memory mask in a beam search.
    #[serde(default, skip_serializing_if = "CrossRows::is_row")]
    pub cross_rows: CrossRows,
}

/// `[decoder] cross_rows`: how many rows of cross keys/values (and memory mask) the decoder
/// graph takes when it runs `num_beams` rows per tile.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CrossRows {
    /// One per decoder row: expanded to the beams once, at the start step (the default).
    #[default]
    Row,
    /// One per tile: the graph attends from each tile's beams to its one copy (`[B * beams]`
    /// query rows against `[B]` key rows), so a step reads them once per tile, not per beam.
    Item,
}

impl CrossRows {
    fn is_row(&self) -> bool {
        *self == CrossRows::Row
    }
}

/// How the user's prompt becomes the decoder's start tokens (or, with `[encoder] input_ids`,
/// the encoder's text).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StartSpec {
    /// Tokenize with the tokenizer's special tokens (BLIP: `[CLS] prompt [SEP]`).
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    /// Replaces the first token (BLIP: `[DEC]`, the text decoder's bos); with `[encoder]
    /// input_ids`, the decoder's only start token (required there).
    #[serde(default)]
    pub start_token_id: Option<u32>,
    /// Tokens dropped from the end (BLIP: 1, the trailing `[SEP]`).
    #[serde(default)]
    pub trim_end: usize,
    /// With `[encoder] input_ids`: the encoder's tokens for an empty prompt (HF `generate` without
    /// `input_ids`: `[bos]`); absent: the empty prompt tokenized.
    #[serde(default)]
    pub empty_prompt_ids: Option<Vec<u32>>,
    /// InstructBLIP: the Q-Former's positions; a prompt of more `[qformer_tokenizer]` tokens is
    /// refused.
    #[serde(default)]
    pub max_qformer_tokens: Option<usize>,
    /// The text tokenized for a prompt, `{prompt}` standing for it (IDEFICS:
    /// `<s>User:<fake_token_around_image><image><fake_token_around_image>{prompt}<end_of_utterance>\nAssistant:`);
    /// absent: the prompt itself.
    #[serde(default)]
    pub template: Option<String>,
    /// The token from which on the prompt attends to the image (`<image>`; needs `[decoder]
    /// image_attention`).
    #[serde(default)]
    pub image_token_id: Option<u32>,
}

fn yes() -> bool {
    true
}

super::manifest::family_manifest! {
    /// A cross-attention decoder manifest's sections (all but `[generation]` required).
    pub struct CrossDecoderManifest {
        pub encoder: Option<EncoderSpec>,
        pub cross: Option<CrossSpec>,
        pub decoder: Option<StepSpec>,
        pub prompt: Option<StartSpec>,
        pub preprocess: Option<Preprocess>,
        pub tokenizer: Option<TokenizerSpec>,
        /// InstructBLIP: the Q-Former's own tokenizer (`[encoder] qformer_input_ids`).
        pub qformer_tokenizer: Option<TokenizerSpec>,
        pub generation: Option<GenerationSpec>,
        /// Task tokens -> prompt texts (Florence-2, [`super::task_prompts`]).
        pub tasks: Option<TasksSpec>,
        /// The coordinate tokens of box-producing tasks (checked; their bins are the box
        /// parsers' quantisation).
        pub locations: Option<LocationsSpec>,
        /// How the package serves `tessera detect` ([`super::grounding`]).
        pub grounding: Option<super::grounding::GroundingSpec>,
    }
}

/// The cross-attention decoder family ([`super::registry`]).
#[derive(Debug)]
pub struct CrossAttentionDecoder;

impl super::registry::ModelFamily for CrossAttentionDecoder {
    fn name(&self) -> &'static str {
        FAMILY
    }

    fn tasks(&self) -> &'static [crate::task::Task] {
        // Detect: packages with a `[grounding]` section (checked when one loads).
        &[crate::task::Task::Caption, crate::task::Task::Detect]
    }

    fn check(&self, runtime: &Runtime, package: &ModelPackage) -> Vec<String> {
        check(runtime, package)
    }

    fn parse(&self, text: &str) -> Result<super::Manifest, String> {
        let (common, m) = CrossDecoderManifest::from_toml(text)?;
        Ok(super::Manifest::new(common, None, m.generation.clone(), m))
    }

    fn input(&self, package: &ModelPackage) -> Option<super::registry::InputContract> {
        let m = package.manifest.sections::<CrossDecoderManifest>()?;
        Some(super::registry::InputContract {
            size: m.preprocess.as_ref()?.size,
            any_size: false,
            prompted: false,
            bytes: false,
        })
    }
}

#[derive(Clone, Debug)]
struct Config {
    encoder: EncoderSpec,
    cross: CrossSpec,
    decoder: StepSpec,
    start: StartSpec,
    pre: Preprocess,
    tok: TokenizerSpec,
    qtok: Option<TokenizerSpec>,
    generation: GenerationSpec,
    tasks: Option<TasksSpec>,
    locations: Option<LocationsSpec>,
    grounding: Option<super::grounding::GroundingSpec>,
}

impl Config {
    /// The prompt goes into the encoder graph (encoder-decoder language models).
    fn prompt_in_encoder(&self) -> bool {
        self.encoder.input_ids.is_some()
    }

    /// The number of layers with cross keys/values.
    fn cross_layers(&self) -> usize {
        self.decoder.cross_layers.unwrap_or(self.decoder.layers)
    }

    /// The text tokenized for `prompt` (`[prompt] template`).
    fn templated(&self, prompt: &str) -> String {
        match &self.start.template {
            Some(t) => t.replace("{prompt}", prompt),
            None => prompt.to_string(),
        }
    }
}

fn not_this_family(package: &ModelPackage) -> String {
    format!(
        "family '{}' is not a {FAMILY} model",
        package.manifest.family
    )
}

fn config(package: &ModelPackage) -> Result<Config, Vec<String>> {
    let Some(m) = package.manifest.sections::<CrossDecoderManifest>() else {
        return Err(vec![not_this_family(package)]);
    };
    match (
        &m.encoder,
        &m.cross,
        &m.decoder,
        &m.preprocess,
        &m.tokenizer,
    ) {
        (Some(encoder), Some(cross), Some(decoder), Some(pre), Some(tok)) => Ok(Config {
            encoder: encoder.clone(),
            cross: cross.clone(),
            decoder: decoder.clone(),
            start: m.prompt.clone().unwrap_or(StartSpec {
                add_special_tokens: true,
                start_token_id: None,
                trim_end: 0,
                empty_prompt_ids: None,
                max_qformer_tokens: None,
                template: None,
                image_token_id: None,
            }),
            pre: pre.clone(),
            tok: tok.clone(),
            qtok: m.qformer_tokenizer.clone(),
            generation: m.generation.clone().unwrap_or_default(),
            tasks: m.tasks.clone(),
            locations: m.locations.clone(),
            grounding: m.grounding.clone(),
        }),
        _ => Err([
            (m.encoder.is_none(), "[encoder]"),
            (m.cross.is_none(), "[cross]"),
            (m.decoder.is_none(), "[decoder]"),
            (m.preprocess.is_none(), "[preprocess]"),
            (m.tokenizer.is_none(), "[tokenizer]"),
        ]
        .iter()
        .filter(|(missing, _)| *missing)
        .map(|(_, s)| format!("a {FAMILY} manifest needs a {s} section"))
        .collect()),
    }
}

/// The three graphs and the tokenizer, each loaded or the reason it could not be.
struct Loaded<'a> {
    encoder: Result<&'a ModelSession, &'a String>,
    cross: Result<&'a ModelSession, &'a String>,
    decoder: Result<&'a ModelSession, &'a String>,
    tokenizer: Result<&'a tokenizers::Tokenizer, &'a String>,
    /// `[qformer_tokenizer]`, when the manifest has one.
    qtokenizer: Option<Result<&'a tokenizers::Tokenizer, &'a String>>,
}

/// Every problem with a cross-attention decoder package (graphs loaded on the CPU).
pub fn check(runtime: &Runtime, package: &ModelPackage) -> Vec<String> {
    let cfg = match config(package) {
        Ok(c) => c,
        Err(p) => return p,
    };
    let o = SessionOptions::default();
    let load = |f: &str| create_session(runtime, &package.file(f), &o).map_err(|e| e.to_string());
    let (encoder, cross, decoder) = (
        load(&cfg.encoder.onnx),
        load(&cfg.cross.onnx),
        load(&cfg.decoder.onnx),
    );
    let tokenizer =
        super::tokenizer::load_tokenizer(&package.file(&cfg.tok.file)).map_err(|e| e.to_string());
    let qtokenizer = load_qformer_tokenizer(&cfg, package);
    validate(
        &cfg,
        &Loaded {
            encoder: encoder.as_ref(),
            cross: cross.as_ref(),
            decoder: decoder.as_ref(),
            tokenizer: tokenizer.as_ref(),
            qtokenizer: qtokenizer.as_ref().map(Result::as_ref),
        },
    )
}

/// The named inputs and outputs `session` (the graph `file`) lacks.
fn missing_names(
    file: &str,
    s: Result<&ModelSession, &String>,
    inputs: &[String],
    outputs: &[String],
) -> Vec<String> {
    let s = match s {
        Ok(s) => s,
        // Loading errors name the file's path already.
        Err(e) if e.contains(file) => return vec![e.clone()],
        Err(e) => return vec![format!("{file}: {e}")],
    };
    let mut problems = Vec::new();
    for (kind, wanted, have) in [
        ("input", inputs, s.inputs()),
        ("output", outputs, s.outputs()),
    ] {
        for n in wanted {
            if !have.iter().any(|i| &i.name == n) {
                let names: Vec<&str> = have.iter().map(|i| i.name.as_str()).collect();
                problems.push(format!(
                    "{file} has no {kind} '{n}' (it has {})",
                    names.join(", ")
                ));
            }
        }
    }
    problems
}

/// `[qformer_tokenizer]`'s tokenizer, when the manifest has the section.
fn load_qformer_tokenizer(
    cfg: &Config,
    package: &ModelPackage,
) -> Option<Result<tokenizers::Tokenizer, String>> {
    cfg.qtok.as_ref().map(|q| {
        super::tokenizer::load_tokenizer(&package.file(&q.file)).map_err(|e| e.to_string())
    })
}

/// The encoder graph's inputs: the pixels, and the prompt's tokens when it takes them.
fn encoder_inputs(e: &EncoderSpec) -> Vec<String> {
    let mut ins = vec![e.pixel_values.clone()];
    for name in [
        &e.input_ids,
        &e.attention_mask,
        &e.qformer_input_ids,
        &e.qformer_attention_mask,
    ]
    .into_iter()
    .flatten()
    {
        ins.push(name.clone());
    }
    ins
}

/// The keys an encoder that takes the prompt needs (the decoder start, the masks with their
/// ids), and the Q-Former tokenizer.
fn encoder_prompt_problems(cfg: &Config, g: &Loaded<'_>) -> Vec<String> {
    let e = &cfg.encoder;
    let mut problems = Vec::new();
    if cfg.prompt_in_encoder() && cfg.start.start_token_id.is_none() {
        problems.push(
            "prompt.start_token_id is required when the encoder takes the prompt (encoder.input_ids)"
                .into(),
        );
    }
    if e.attention_mask.is_some() && e.input_ids.is_none() {
        problems.push("encoder.attention_mask needs encoder.input_ids".into());
    }
    let pairs = [
        (
            e.qformer_input_ids.is_some(),
            e.qformer_attention_mask.is_some(),
            "encoder.qformer_input_ids and encoder.qformer_attention_mask go together",
        ),
        (
            e.qformer_input_ids.is_some(),
            cfg.qtok.is_some(),
            "encoder.qformer_input_ids needs a [qformer_tokenizer] section (and the section needs them)",
        ),
    ];
    for (a, b, what) in pairs {
        if a != b {
            problems.push(what.to_string());
        }
    }
    if e.qformer_input_ids.is_some() && e.input_ids.is_none() {
        problems.push(
            "encoder.qformer_input_ids needs encoder.input_ids (the prompt goes into the encoder)"
                .into(),
        );
    }
    if cfg.start.max_qformer_tokens.is_some() && cfg.qtok.is_none() {
        problems.push("prompt.max_qformer_tokens needs a [qformer_tokenizer] section".into());
    }
    if cfg.start.empty_prompt_ids.is_some() && !cfg.prompt_in_encoder() {
        problems.push(
            "prompt.empty_prompt_ids needs encoder.input_ids (a prompt that goes into the encoder)"
                .into(),
        );
    }
    if let (true, Some(start), Some(v)) = (
        cfg.prompt_in_encoder(),
        cfg.start.start_token_id,
        cfg.decoder.vocab,
    ) {
        if start as usize >= v {
            problems.push(format!(
                "prompt.start_token_id {start} is outside the decoder's vocabulary of {v}"
            ));
        }
    }
    if let (Some(q), Some(t)) = (&cfg.qtok, g.qtokenizer) {
        match t {
            Err(err) => problems.push(err.clone()),
            Ok(t) => {
                let vocab = t.get_vocab_size(true) as u32;
                if q.pad_token_id >= vocab || q.eos_token_id >= vocab {
                    problems.push(format!(
                        "qformer_tokenizer.pad_token_id / eos_token_id outside the vocabulary of {vocab} tokens ({})",
                        q.file
                    ));
                }
            }
        }
    }
    if let Some(ids) = &cfg.start.empty_prompt_ids {
        if ids.is_empty() {
            problems.push("prompt.empty_prompt_ids is empty".into());
        }
        if let Ok(t) = g.tokenizer {
            let vocab = t.get_vocab_size(true) as u32;
            if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
                problems.push(format!(
                    "prompt.empty_prompt_ids: {bad} is outside the vocabulary of {vocab} tokens ({})",
                    cfg.tok.file
                ));
            }
        }
    }
    problems
}

/// The decoder graph's inputs, in manifest order.
fn decoder_inputs(d: &StepSpec) -> Vec<String> {
    let mut ins = vec![d.input_ids.clone(), d.attention_mask.clone()];
    ins.extend(d.position_ids.clone());
    ins.extend(d.memory_mask.clone());
    ins.extend(d.image_attention.clone());
    for i in 0..d.cross_layers.unwrap_or(d.layers) {
        ins.push(layer_name(&d.cross_key, i));
        ins.push(layer_name(&d.cross_value, i));
    }
    for i in 0..d.layers {
        ins.push(layer_name(&d.past_key, i));
        ins.push(layer_name(&d.past_value, i));
    }
    ins
}

fn validate(cfg: &Config, g: &Loaded<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    let (enc_file, cross_file, dec_file) = (
        cfg.encoder.onnx.as_str(),
        cfg.cross.onnx.as_str(),
        cfg.decoder.onnx.as_str(),
    );
    let mut enc_out = vec![cfg.encoder.memory.clone()];
    enc_out.extend(cfg.encoder.memory_mask.clone());
    problems.extend(missing_names(
        enc_file,
        g.encoder,
        &encoder_inputs(&cfg.encoder),
        &enc_out,
    ));
    problems.extend(encoder_prompt_problems(cfg, g));
    let d = &cfg.decoder;
    let cross_out: Vec<String> = (0..cfg.cross_layers())
        .flat_map(|i| {
            [
                layer_name(&cfg.cross.key, i),
                layer_name(&cfg.cross.value, i),
            ]
        })
        .collect();
    problems.extend(missing_names(
        cross_file,
        g.cross,
        std::slice::from_ref(&cfg.cross.memory),
        &cross_out,
    ));
    let ins = decoder_inputs(d);
    let mut outs = vec![d.logits.clone()];
    for i in 0..d.layers {
        outs.push(layer_name(&d.present_key, i));
        outs.push(layer_name(&d.present_value, i));
    }
    problems.extend(missing_names(dec_file, g.decoder, &ins, &outs));
    if let Ok(s) = g.decoder {
        let extra: Vec<String> = s
            .inputs()
            .into_iter()
            .filter(|i| !ins.contains(&i.name))
            .map(|i| i.name)
            .collect();
        if !extra.is_empty() {
            problems.push(format!(
                "{dec_file}: inputs {} are not in the manifest (decoder.layers = {})",
                extra.join(", "),
                d.layers
            ));
        }
    }
    problems.extend(width_problems(cfg, g));
    problems.extend(image_attention_problems(cfg));
    problems.extend(tokenizer_problems(cfg, g.tokenizer));
    problems.extend(task_problems(cfg, g.tokenizer));
    if let Some(spec) = &cfg.grounding {
        let output = |p: &str| {
            let tasks = cfg.tasks.as_ref()?;
            let task = tasks.task_of(p)?;
            Some(
                tasks
                    .outputs
                    .get(task)
                    .cloned()
                    .unwrap_or_else(|| super::task_prompts::PLAIN_TEXT.to_string()),
            )
        };
        problems.extend(super::grounding::check_spec(spec, &output));
    }
    if cfg.generation.num_beams == 0 {
        problems.push("generation.num_beams must be at least 1".into());
    }
    if let Some(max) = d.max_positions {
        // The shortest start is one token (BLIP's [DEC] alone).
        if 1 + cfg.generation.max_new_tokens > max {
            problems.push(format!(
                "generation.max_new_tokens = {} does not fit decoder.max_positions = {max} (with at least one start token)",
                cfg.generation.max_new_tokens
            ));
        }
    }
    if let (Some(start), Some(v)) = (cfg.start.start_token_id, d.vocab) {
        if start as usize >= v {
            problems.push(format!(
                "prompt.start_token_id {start} is outside the decoder's vocabulary of {v}"
            ));
        }
    }
    problems
}

/// `[decoder] image_attention`, `[prompt] image_token_id` and `template`, `cross_layers`.
fn image_attention_problems(cfg: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let d = &cfg.decoder;
    if d.image_attention.is_some() != cfg.start.image_token_id.is_some() {
        problems.push(
            "decoder.image_attention and prompt.image_token_id go together (the token from which on the prompt attends to the image)"
                .into(),
        );
    }
    if let Some(t) = &cfg.start.template {
        if !t.contains("{prompt}") {
            problems.push(format!(
                "prompt.template {t:?} has no {{prompt}} (where the user's prompt goes)"
            ));
        }
    }
    if let (Some(id), Some(v)) = (cfg.start.image_token_id, d.vocab) {
        if id as usize >= v {
            problems.push(format!(
                "prompt.image_token_id {id} is outside the decoder's vocabulary of {v}"
            ));
        }
    }
    if let Some(c) = d.cross_layers {
        if c == 0 || c > d.layers {
            problems.push(format!(
                "decoder.cross_layers = {c} must be between 1 and decoder.layers = {}",
                d.layers
            ));
        }
    }
    problems
}

/// A static dimension of a graph's input or output (`None`: unknown, dynamic or absent).
fn dim(s: Result<&ModelSession, &String>, name: &str, input: bool, axis: Axis) -> Option<i64> {
    let s = s.ok()?;
    let specs = if input { s.inputs() } else { s.outputs() };
    let shape = specs.into_iter().find(|t| t.name == name)?.shape;
    let d = match axis {
        Axis::Last => shape.last().copied(),
        Axis::At(k) => shape.get(k).copied(),
    }?;
    (d > 0).then_some(d)
}

#[derive(Clone, Copy)]
enum Axis {
    Last,
    At(usize),
}

/// The memory the encoder produces must be as wide as the cross-attention takes, and the cross
/// keys/values must have the decoder's heads and head size.
fn width_problems(cfg: &Config, g: &Loaded<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    let d = &cfg.decoder;
    let memory = dim(g.encoder, &cfg.encoder.memory, false, Axis::Last);
    let cross_in = dim(g.cross, &cfg.cross.memory, true, Axis::Last);
    if let (Some(m), Some(c)) = (memory, cross_in) {
        if m != c {
            problems.push(format!(
                "{}: the cross-attention takes a memory {c} wide, but the encoder ({}) gives {m}-wide features (encoder and decoder do not belong together)",
                cfg.cross.onnx, cfg.encoder.onnx
            ));
        }
    }
    if let (Some(w), Some(m)) = (d.cross_width, memory.or(cross_in)) {
        if w as i64 != m {
            problems.push(format!(
                "decoder.cross_width = {w} but the memory is {m} wide ({} output '{}')",
                cfg.encoder.onnx, cfg.encoder.memory
            ));
        }
    }
    for i in 0..cfg.cross_layers().min(1) {
        let k = layer_name(&cfg.cross.key, i);
        for (axis, want, what) in [(1, d.heads, "heads"), (3, d.head_dim, "head_dim")] {
            if let Some(have) = dim(g.cross, &k, false, Axis::At(axis)) {
                if have != want as i64 {
                    problems.push(format!(
                        "{}: '{k}' has {have} {what}, decoder.{what} = {want}",
                        cfg.cross.onnx
                    ));
                }
            }
        }
    }
    let hidden = dim(g.decoder, &d.logits, false, Axis::Last);
    if let (Some(v), Some(h)) = (d.vocab, hidden) {
        if v as i64 != h {
            problems.push(format!(
                "{}: logits are {h} wide, decoder.vocab = {v}",
                d.onnx
            ));
        }
    }
    problems
}

fn tokenizer_problems(
    cfg: &Config,
    tokenizer: Result<&tokenizers::Tokenizer, &String>,
) -> Vec<String> {
    let t = match tokenizer {
        Ok(t) => t,
        Err(e) => return vec![e.clone()],
    };
    let mut problems = Vec::new();
    let vocab = t.get_vocab_size(true) as u32;
    for (what, id) in [
        ("tokenizer.eos_token_id", Some(cfg.tok.eos_token_id)),
        ("tokenizer.pad_token_id", Some(cfg.tok.pad_token_id)),
        ("tokenizer.bos_token_id", cfg.tok.bos_token_id),
        ("prompt.start_token_id", cfg.start.start_token_id),
    ] {
        if let Some(id) = id {
            if id >= vocab {
                problems.push(format!(
                    "{what} {id} is outside the vocabulary of {vocab} tokens ({})",
                    cfg.tok.file
                ));
            }
        }
    }
    match t.encode(cfg.templated(""), cfg.start.add_special_tokens) {
        Ok(e) if e.get_ids().len() <= cfg.start.trim_end && cfg.encoder.input_ids.is_none() => problems.push(format!(
            "{}: the empty prompt tokenizes to {} tokens, prompt.trim_end = {} leaves no start token",
            cfg.tok.file,
            e.get_ids().len(),
            cfg.start.trim_end
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!("{}: {e}", cfg.tok.file)),
    }
    problems
}

/// `[tasks]` and `[locations]`: names that dangle, a default that is not a prompt, location
/// tokens that are not the tokenizer's `<loc_k>` range.
fn task_problems(cfg: &Config, tokenizer: Result<&tokenizers::Tokenizer, &String>) -> Vec<String> {
    let mut problems = cfg.tasks.as_ref().map(TasksSpec::check).unwrap_or_default();
    if let (Some(loc), Ok(t)) = (&cfg.locations, tokenizer) {
        problems.extend(
            loc.check(t)
                .into_iter()
                .map(|p| format!("{}: {p}", cfg.tok.file)),
        );
    }
    problems
}

/// Per-layer keys and values, as ONNX Runtime values on the decoder's device.
struct Kv {
    keys: Vec<DynValue>,
    values: Vec<DynValue>,
}

/// A loaded cross-attention decoder.
pub struct CrossDecoderModel {
    package: ModelPackage,
    cfg: Config,
    /// Where keys and values live between steps (the decoder's device).
    cache_memory: MemoryInfo<'static>,
    host_memory: MemoryInfo<'static>,
    encoder: ModelSession,
    cross: ModelSession,
    decoder: ModelSession,
    gather: ModelSession,
    tokenizer: tokenizers::Tokenizer,
    /// `[qformer_tokenizer]` (InstructBLIP); boxed, the model stays small for its owners.
    qtokenizer: Option<Box<tokenizers::Tokenizer>>,
    /// Tasks answered with boxes or regions are allowed ([`Self::allow_box_tasks`]).
    box_tasks: bool,
}

impl std::fmt::Debug for CrossDecoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrossDecoderModel")
            .field("dir", &self.package.dir)
            .finish()
    }
}

impl CrossDecoderModel {
    /// Load and validate the package in `dir`.
    ///
    /// # Errors
    /// Any problem [`check`] finds, or the device's provider failing to load.
    pub fn load(
        runtime: &Runtime,
        dir: &Path,
        options: &SessionOptions,
    ) -> Result<CrossDecoderModel, ModelError> {
        let package = ModelPackage::load(dir)?;
        if package.manifest.family != FAMILY {
            return Err(ModelError::Package {
                path: dir.display().to_string(),
                reason: not_this_family(&package),
            });
        }
        let invalid = |problems| ModelError::Invalid {
            path: dir.display().to_string(),
            problems,
        };
        let cfg = config(&package).map_err(invalid)?;
        let encoder = package.session(runtime, &cfg.encoder.onnx, options);
        if let Err(e @ ModelError::Runtime(RuntimeError::Provider { .. })) = encoder {
            return Err(e);
        }
        let load = |f: &str| {
            package
                .session(runtime, f, options)
                .map_err(|e| e.to_string())
        };
        let encoder = encoder.map_err(|e| e.to_string());
        let cross = load(&cfg.cross.onnx);
        let decoder = load(&cfg.decoder.onnx);
        let tokenizer = super::tokenizer::load_tokenizer(&package.file(&cfg.tok.file))
            .map_err(|e| e.to_string());
        let qtokenizer = load_qformer_tokenizer(&cfg, &package);
        let problems = validate(
            &cfg,
            &Loaded {
                encoder: encoder.as_ref(),
                cross: cross.as_ref(),
                decoder: decoder.as_ref(),
                tokenizer: tokenizer.as_ref(),
                qtokenizer: qtokenizer.as_ref().map(Result::as_ref),
            },
        );
        let qtokenizer = match qtokenizer {
            Some(Ok(t)) => Some(Box::new(t)),
            Some(Err(_)) | None => None,
        };
        let (Ok(encoder), Ok(cross), Ok(decoder), Ok(tokenizer), true) =
            (encoder, cross, decoder, tokenizer, problems.is_empty())
        else {
            return Err(invalid(problems));
        };
        let cuda = decoder.cuda_device(options);
        let gather_options = SessionOptions {
            device: cuda.map_or(crate::runtime::Device::Cpu, crate::runtime::Device::Cuda),
            ..options.clone()
        };
        let gather = create_session_from_memory(
            runtime,
            "beam_reorder.onnx (built in)",
            GATHER_ONNX,
            &gather_options,
        )?;
        let memory = BindingMemory::new(cuda).map_err(|e| run_err(dir, e))?;
        Ok(CrossDecoderModel {
            package,
            cfg,
            cache_memory: memory.device,
            host_memory: memory.host,
            encoder,
            cross,
            decoder,
            gather,
            tokenizer,
            qtokenizer,
            box_tasks: false,
        })
    }

    pub fn package(&self) -> &ModelPackage {
        &self.package
    }

    pub fn input_size(&self) -> usize {
        self.cfg.pre.size
    }

    /// The manifest's default generation settings.
    pub fn default_params(&self) -> GenerationParams {
        GenerationParams::from(&self.cfg.generation)
    }

    /// The model's pixel normalisation.
    pub fn normalizer(&self) -> super::Normalizer {
        super::Normalizer::from_preprocess(&self.cfg.pre)
    }

    pub fn provider(&self) -> (&'static str, Option<&str>) {
        (self.decoder.provider, self.decoder.fallback.as_deref())
    }

    fn tokenizer_path(&self) -> String {
        self.package.file(&self.cfg.tok.file).display().to_string()
    }

    /// Whether the prompt is the encoder's text (BLIP VQA, encoder-decoder language models)
    /// rather than the decoder's start.
    fn prompt_to_encoder(&self) -> bool {
        self.cfg.prompt_in_encoder()
    }

    /// The token ids of one prompt. For the decoder (BLIP captioning): tokenized (with the
    /// special tokens when `[prompt] add_special_tokens`), the first replaced by
    /// `start_token_id`, `trim_end` dropped from the end: `""` -> `[DEC]`, `"a photo of"` ->
    /// `[DEC] a photo of`. For the encoder (BLIP VQA, BLIP-2 / InstructBLIP with Flan-T5):
    /// tokenized, `trim_end` dropped: `[CLS] question [SEP]`, T5's `prompt </s>`; the empty
    /// prompt is `[prompt] empty_prompt_ids` when given. With a `[qformer_tokenizer]`, the
    /// prompt's Q-Former tokens are checked too (see [`Self::qformer_prompt_ids`]).
    ///
    /// # Errors
    /// Tokenizer failure, a prompt that leaves no token, or one longer than the model's
    /// positions (or the Q-Former's).
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<i64>, ModelError> {
        let text = self.task_prompt(prompt)?;
        let prompt = text.as_str();
        if self.prompt_to_encoder() {
            self.qformer_prompt_ids(prompt)?;
            if let (true, Some(ids)) = (prompt.is_empty(), &self.cfg.start.empty_prompt_ids) {
                return Ok(ids.iter().map(|&i| i64::from(i)).collect());
            }
        }
        let enc = self
            .tokenizer
            .encode(
                self.cfg.templated(prompt),
                self.cfg.start.add_special_tokens,
            )
            .map_err(|e| ModelError::Tokenizer {
                path: self.tokenizer_path(),
                reason: e.to_string(),
            })?;
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        let keep = ids.len().saturating_sub(self.cfg.start.trim_end);
        ids.truncate(keep);
        let start = match self.prompt_to_encoder() {
            true => None,
            false => self.cfg.start.start_token_id,
        };
        match (ids.first_mut(), start) {
            (None, _) => {
                return Err(ModelError::Tokenizer {
                    path: self.tokenizer_path(),
                    reason: format!("the prompt {prompt:?} leaves no token"),
                })
            }
            (Some(first), Some(start)) => *first = i64::from(start),
            (Some(_), None) => {}
        }
        if let Some(max) = self.cfg.decoder.max_positions {
            if ids.len() >= max {
                return Err(self.too_long(ids.len(), 1));
            }
        }
        Ok(ids)
    }

    /// The decoder's start tokens for one prompt.
    fn start_ids(&self, prompt: &str) -> Result<Vec<i64>, ModelError> {
        match (self.prompt_to_encoder(), self.cfg.start.start_token_id) {
            (true, Some(start)) => Ok(vec![i64::from(start)]),
            (true, None) => Err(ModelError::Input {
                path: self.package.dir.join("model.toml").display().to_string(),
                reason: "no prompt.start_token_id".into(),
            }),
            (false, _) => self.prompt_ids(prompt),
        }
    }

    /// InstructBLIP: the Q-Former's tokens of one prompt (`[qformer_tokenizer]`, with its
    /// special tokens: `[CLS] prompt [SEP]`); `None` for a model without a Q-Former prompt.
    ///
    /// # Errors
    /// Tokenizer failure, or more tokens than `[prompt] max_qformer_tokens`.
    pub fn qformer_prompt_ids(&self, prompt: &str) -> Result<Option<Vec<i64>>, ModelError> {
        let (Some(t), Some(spec)) = (&self.qtokenizer, &self.cfg.qtok) else {
            return Ok(None);
        };
        qformer_tokens(
            &self.package,
            t,
            spec,
            self.cfg.start.max_qformer_tokens,
            "encoder's",
            prompt,
        )
        .map(Some)
    }

    /// The encoder's prompt inputs of a batch (none unless it takes the prompt): the token ids
    /// right padded with the pad id (as BERT and T5 tokenizers pad), and their masks.
    fn prompt_inputs(&self, prompts: &[String]) -> Result<Vec<(String, Tensor<i64>)>, ModelError> {
        let e = &self.cfg.encoder;
        let path = self.encoder.path.clone();
        let mut out = Vec::new();
        let mut push = |ids: &str,
                        mask: Option<&String>,
                        rows: Vec<Vec<i64>>,
                        pad: u32|
         -> Result<(), ModelError> {
            let (a, m) = right_pad(&rows, i64::from(pad));
            out.push((
                ids.to_string(),
                Tensor::from_array(a).map_err(|e| run_err(&path, e))?,
            ));
            if let Some(mask) = mask {
                out.push((
                    mask.clone(),
                    Tensor::from_array(m).map_err(|e| run_err(&path, e))?,
                ));
            }
            Ok(())
        };
        if let Some(ids) = &e.input_ids {
            let rows = prompts
                .iter()
                .map(|p| self.prompt_ids(p))
                .collect::<Result<Vec<_>, _>>()?;
            push(
                ids,
                e.attention_mask.as_ref(),
                rows,
                self.cfg.tok.pad_token_id,
            )?;
        }
        if let (Some(ids), Some(q)) = (&e.qformer_input_ids, &self.cfg.qtok) {
            let mut rows = Vec::with_capacity(prompts.len());
            for p in prompts {
                let text = self.task_prompt(p)?;
                rows.push(self.qformer_prompt_ids(&text)?.ok_or_else(|| {
                    run_err(
                        &path,
                        "encoder.qformer_input_ids without a Q-Former tokenizer",
                    )
                })?);
            }
            push(ids, e.qformer_attention_mask.as_ref(), rows, q.pad_token_id)?;
        }
        Ok(out)
    }

    /// The text a prompt stands for: with `[tasks]`, a task token becomes its prompt text
    /// (`<CAPTION>` -> "What does the image describe?", [`TasksSpec::caption_prompt`]) and the
    /// empty prompt is `[tasks] default`; tasks answered with boxes or regions are refused.
    /// Without `[tasks]`, the prompt itself.
    ///
    /// # Errors
    /// A task that does not answer with text, a task token with other text around it.
    pub fn task_prompt(&self, prompt: &str) -> Result<String, ModelError> {
        let Some(tasks) = &self.cfg.tasks else {
            return Ok(prompt.to_string());
        };
        let prompt = match (&tasks.default, prompt.is_empty()) {
            (Some(d), true) => d.as_str(),
            _ => prompt,
        };
        let text = if self.box_tasks {
            tasks.prompt_text(prompt)
        } else {
            tasks.caption_prompt(prompt)
        };
        text.map_err(|reason| ModelError::Input {
            path: self.package.dir.join("model.toml").display().to_string(),
            reason,
        })
    }

    fn too_long(&self, len: usize, new_tokens: usize) -> ModelError {
        ModelError::Input {
            path: self.package.dir.join("model.toml").display().to_string(),
            reason: format!(
                "the prompt takes {len} decoder tokens; with {new_tokens} new token{} that exceeds the model's {} positions (decoder.max_positions)",
                if new_tokens == 1 { "" } else { "s" },
                self.cfg.decoder.max_positions.unwrap_or(0)
            ),
        }
    }

    /// Decode token ids to text (special tokens skipped, control characters other than new
    /// lines and tabs dropped).
    ///
    /// # Errors
    /// Tokenizer failure.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        let text = self
            .tokenizer
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer {
                path: self.tokenizer_path(),
                reason: e.to_string(),
            })?;
        Ok(text
            .chars()
            .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
            .collect())
    }

    /// Generate continuations for a batch: image `b` with prompt `b`. Returns the new token
    /// ids of each item, ending with the end token when one was produced.
    ///
    /// # Errors
    /// Mismatched batch sizes, a prompt the model cannot take, inference failure.
    pub fn generate(
        &mut self,
        pixels: ArrayView4<'_, f32>,
        prompts: &[String],
        params: &GenerationParams,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        let start = self.start(pixels, prompts, params)?;
        let path = self.decoder.path.display().to_string();
        crate::generation::generate(self, start, params).map_err(|e| match e {
            GenerationError::Model(e) => e,
            GenerationError::Invalid(reason) => ModelError::Input { path, reason },
        })
    }

    /// [`Self::generate`] with each chosen token's log-probability
    /// ([`crate::generation::Generated`]); the same tokens.
    ///
    /// # Errors
    /// As [`Self::generate`].
    pub fn generate_scored(
        &mut self,
        pixels: ArrayView4<'_, f32>,
        prompts: &[String],
        params: &GenerationParams,
    ) -> Result<Vec<crate::generation::Generated>, ModelError> {
        let start = self.start(pixels, prompts, params)?;
        let path = self.decoder.path.display().to_string();
        crate::generation::generate_scored(self, start, params).map_err(|e| match e {
            GenerationError::Model(e) => e,
            GenerationError::Invalid(reason) => ModelError::Input { path, reason },
        })
    }

    /// Let prompts name tasks answered with boxes or regions (`<OD>`, phrase grounding), which
    /// the caption command refuses: the detect command's box parsers read their answers.
    pub fn allow_box_tasks(&mut self) {
        self.box_tasks = true;
    }

    /// The tokenizer (the box parsers decode with special tokens kept).
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// `[locations]`, when the manifest has one.
    pub fn locations(&self) -> Option<&LocationsSpec> {
        self.cfg.locations.as_ref()
    }

    /// `[tasks]`, when the manifest has one.
    pub fn tasks(&self) -> Option<&TasksSpec> {
        self.cfg.tasks.as_ref()
    }

    /// The memory of a batch of tiles, left on the decoder's device, and its mask `[B, M]`.
    fn encode(
        &mut self,
        pixels: ArrayView4<'_, f32>,
        prompts: &[String],
    ) -> Result<(DynValue, Array2<i64>), ModelError> {
        let path = self.encoder.path.clone();
        let e = self.cfg.encoder.clone();
        let prompt_inputs = self.prompt_inputs(prompts)?;
        let n = pixels.shape()[0];
        // An owned tensor: ONNX Runtime's binding copies borrowed ones through a session of its
        // own, which deadlocks in ort 2.0.0-rc.15.
        let input = Tensor::from_array(pixels.as_standard_layout().to_owned())
            .map_err(|e| run_err(&path, e))?;
        let mut binding = self
            .encoder
            .session
            .create_binding()
            .map_err(|e| run_err(&path, e))?;
        let bind = |r: ort::Result<()>| r.map_err(|e| run_err(&path, e));
        bind(binding.bind_input(e.pixel_values.as_str(), &input))?;
        for (name, value) in &prompt_inputs {
            bind(binding.bind_input(name.as_str(), value))?;
        }
        bind(binding.bind_output_to_device(e.memory.as_str(), &self.cache_memory))?;
        if let Some(m) = &e.memory_mask {
            bind(binding.bind_output_to_device(m.as_str(), &self.host_memory))?;
        }
        let mut out = self
            .encoder
            .session
            .run_binding(&binding)
            .map_err(|e| run_err(&path, e))?;
        let memory = out
            .remove(e.memory.as_str())
            .ok_or_else(|| run_err(&path, "no memory output"))?;
        let shape: Vec<i64> = memory
            .dtype()
            .tensor_shape()
            .map(|s| s.to_vec())
            .unwrap_or_default();
        let (b, m) = match shape[..] {
            [b, m, _] if b >= 0 && m >= 0 => (b as usize, m as usize),
            _ => {
                return Err(run_err(
                    &path,
                    format!("the memory has shape {shape:?}, not [B, M, E]"),
                ))
            }
        };
        if b != n {
            return Err(run_err(&path, format!("{b} memory rows for {n} images")));
        }
        let mask = match &e.memory_mask {
            None => Array2::<i64>::ones((b, m)),
            Some(name) => {
                let v = out
                    .remove(name.as_str())
                    .ok_or_else(|| run_err(&path, "no memory mask output"))?;
                let a = v
                    .try_extract_array::<i64>()
                    .map_err(|e| run_err(&path, e))?;
                a.into_dimensionality::<ndarray::Ix2>()
                    .map_err(|e| run_err(&path, e))?
                    .to_owned()
            }
        };
        Ok((memory, mask))
    }

    /// Every layer's cross keys and values of `memory`, on the decoder's device.
    fn cross_kv(&mut self, memory: &DynValue) -> Result<Kv, ModelError> {
        let path = self.cross.path.clone();
        let c = self.cfg.cross.clone();
        let mut binding = self
            .cross
            .session
            .create_binding()
            .map_err(|e| run_err(&path, e))?;
        let bind = |r: ort::Result<()>| r.map_err(|e| run_err(&path, e));
        bind(binding.bind_input(c.memory.as_str(), memory))?;
        let layers = self.cfg.cross_layers();
        for i in 0..layers {
            bind(binding.bind_output_to_device(layer_name(&c.key, i), &self.cache_memory))?;
            bind(binding.bind_output_to_device(layer_name(&c.value, i), &self.cache_memory))?;
        }
        let mut out = self
            .cross
            .session
            .run_binding(&binding)
            .map_err(|e| run_err(&path, e))?;
        let mut kv = Kv {
            keys: Vec::with_capacity(layers),
            values: Vec::with_capacity(layers),
        };
        for i in 0..layers {
            for (pattern, into) in [(&c.key, &mut kv.keys), (&c.value, &mut kv.values)] {
                into.push(
                    out.remove(layer_name(pattern, i))
                        .ok_or_else(|| run_err(&path, "missing cross key/value"))?,
                );
            }
        }
        Ok(kv)
    }

    /// Rows of `kv` gathered on their device: row `r` of the result is row `idx[r]`.
    fn gather(&mut self, kv: &Kv, idx: &[i64]) -> Result<Kv, ModelError> {
        let path = self.decoder.path.clone();
        let idx = Tensor::from_array(([idx.len()], idx.to_vec())).map_err(|e| run_err(&path, e))?;
        let memory = self.cache_memory.clone();
        let session = &mut self.gather.session;
        let mut one = |v: &DynValue| -> Result<DynValue, ModelError> {
            let mut binding = session.create_binding().map_err(|e| run_err(&path, e))?;
            binding.bind_input("x", v).map_err(|e| run_err(&path, e))?;
            binding
                .bind_input("idx", &idx)
                .map_err(|e| run_err(&path, e))?;
            binding
                .bind_output_to_device("y", &memory)
                .map_err(|e| run_err(&path, e))?;
            let mut out = session
                .run_binding(&binding)
                .map_err(|e| run_err(&path, e))?;
            out.remove("y")
                .ok_or_else(|| run_err(&path, "gather produced nothing"))
        };
        Ok(Kv {
            keys: kv.keys.iter().map(&mut one).collect::<Result<_, _>>()?,
            values: kv.values.iter().map(&mut one).collect::<Result<_, _>>()?,
        })
    }

    /// One decoder call: the last position's logits `[rows, V]` and the new self-attention
    /// past.
    fn run_decoder(
        &mut self,
        ids: &Array2<i64>,
        masks: StepMasks<'_>,
        cross: &Kv,
        past: Option<&Kv>,
    ) -> Result<(Array2<f32>, Kv), ModelError> {
        let StepMasks {
            attention: mask,
            positions,
            memory: memory_mask,
            image,
        } = masks;
        let d = self.cfg.decoder.clone();
        let path = self.decoder.path.clone();
        let rows = ids.nrows();
        let memory_rows = memory_mask.nrows();
        let empty: Option<Tensor<f32>> = match past {
            Some(_) => None,
            None => Some(
                Tensor::from_array(([rows, d.heads, 0, d.head_dim], Vec::<f32>::new()))
                    .map_err(|e| run_err(&path, e))?,
            ),
        };
        let tensor = |a: &Array2<i64>| {
            Tensor::from_array(a.as_standard_layout().to_owned()).map_err(|e| run_err(&path, e))
        };
        let (ids, mask, positions, memory_mask, image) = (
            tensor(ids)?,
            tensor(mask)?,
            tensor(positions)?,
            tensor(memory_mask)?,
            tensor(image)?,
        );
        let mut binding = self
            .decoder
            .session
            .create_binding()
            .map_err(|e| run_err(&path, e))?;
        let bind = |r: ort::Result<()>| r.map_err(|e| run_err(&path, e));
        bind(binding.bind_input(d.input_ids.as_str(), &ids))?;
        bind(binding.bind_input(d.attention_mask.as_str(), &mask))?;
        if let Some(p) = &d.position_ids {
            bind(binding.bind_input(p.as_str(), &positions))?;
        }
        if let Some(m) = &d.memory_mask {
            bind(binding.bind_input(m.as_str(), &memory_mask))?;
        }
        if let Some(m) = &d.image_attention {
            bind(binding.bind_input(m.as_str(), &image))?;
        }
        for (i, (k, v)) in cross.keys.iter().zip(&cross.values).enumerate() {
            bind(binding.bind_input(layer_name(&d.cross_key, i), k))?;
            bind(binding.bind_input(layer_name(&d.cross_value, i), v))?;
        }
        for i in 0..d.layers {
            match (past, &empty) {
                (Some(c), _) => {
                    bind(binding.bind_input(layer_name(&d.past_key, i), &c.keys[i]))?;
                    bind(binding.bind_input(layer_name(&d.past_value, i), &c.values[i]))?;
                }
                (None, Some(e)) => {
                    bind(binding.bind_input(layer_name(&d.past_key, i), e))?;
                    bind(binding.bind_input(layer_name(&d.past_value, i), e))?;
                }
                (None, None) => return Err(run_err(&path, "no past")),
            }
            bind(binding.bind_output_to_device(layer_name(&d.present_key, i), &self.cache_memory))?;
            bind(
                binding.bind_output_to_device(layer_name(&d.present_value, i), &self.cache_memory),
            )?;
        }
        bind(binding.bind_output_to_device(d.logits.as_str(), &self.host_memory))?;
        let mut out = self
            .decoder
            .session
            .run_binding(&binding)
            .map_err(|e| {
                if memory_rows < rows {
                    // Beams against one cross key/value row per tile: say which key asked for it.
                    run_err(
                        &path,
                        format!("{e} (with decoder.cross_rows = \"item\": {rows} decoder rows against {memory_rows} cross key/value rows; a graph exported without it takes one per beam)"),
                    )
                } else {
                    run_err(&path, e)
                }
            })?;
        let logits = out[d.logits.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| run_err(&path, e))?;
        let logits = logits
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| run_err(&path, e))?;
        let t = logits.shape()[1];
        if t == 0 {
            return Err(run_err(&path, "the decoder returned no positions"));
        }
        let last = logits.slice(ndarray::s![.., t - 1, ..]).to_owned();
        let mut kv = Kv {
            keys: Vec::with_capacity(d.layers),
            values: Vec::with_capacity(d.layers),
        };
        for i in 0..d.layers {
            for (pattern, into) in [
                (&d.present_key, &mut kv.keys),
                (&d.present_value, &mut kv.values),
            ] {
                into.push(
                    out.remove(layer_name(pattern, i))
                        .ok_or_else(|| run_err(&path, "missing present key/value"))?,
                );
            }
        }
        Ok((last, kv))
    }

    /// The image attention flag of each token of one prompt's ids ([`Self::prompt_ids`]): 1 where
    /// the token attends to the image (IDEFICS's `image_attention_mask`); all ones without
    /// `[prompt] image_token_id`.
    pub fn image_attention(&self, ids: &[i64]) -> Vec<i64> {
        let row = Array2::from_shape_fn((1, ids.len()), |(_, t)| ids[t]);
        self.image_flags(&row).row(0).to_vec()
    }

    /// The image attention flags of the (left padded) start tokens; all ones without
    /// `[prompt] image_token_id` (the graph then has no such input).
    fn image_flags(&self, ids: &Array2<i64>) -> Array2<i64> {
        match self.cfg.start.image_token_id {
            Some(image) => image_flags(ids, i64::from(image), self.end_token_id()),
            None => Array2::<i64>::ones(ids.raw_dim()),
        }
    }

    /// The start step: the tiles through the encoder and the cross graph once, the start
    /// tokens (left padded) through the decoder; the cross keys/values expanded to `num_beams`
    /// rows per tile unless the graph takes one per tile (`cross_rows = "item"`).
    fn start(
        &mut self,
        pixels: ArrayView4<'_, f32>,
        prompts: &[String],
        params: &GenerationParams,
    ) -> Result<Start<CrossCache>, ModelError> {
        let b = prompts.len();
        let path = self.decoder.path.display().to_string();
        if pixels.shape()[0] != b {
            return Err(ModelError::Input {
                path,
                reason: format!("{} images for {b} prompts", pixels.shape()[0]),
            });
        }
        if b == 0 || params.num_beams == 0 || params.max_new_tokens == 0 {
            return Err(ModelError::Input {
                path,
                reason: "an empty batch, or num_beams or max_new_tokens of 0".into(),
            });
        }
        let ids: Vec<Vec<i64>> = prompts
            .iter()
            .map(|p| self.start_ids(p))
            .collect::<Result<_, _>>()?;
        let len = ids.iter().map(Vec::len).max().unwrap_or(0);
        if let Some(max) = self.cfg.decoder.max_positions {
            if len + params.max_new_tokens > max {
                return Err(self.too_long(len, params.max_new_tokens));
            }
        }
        let (memory, memory_mask) = self.encode(pixels, prompts)?;
        let cross = self.cross_kv(&memory)?;
        drop(memory);
        let pad = i64::from(self.cfg.tok.pad_token_id);
        let mut id_arr = Array2::<i64>::from_elem((b, len), pad);
        let mut mask = Array2::<i64>::zeros((b, len));
        for (r, row) in ids.iter().enumerate() {
            let off = len - row.len();
            for (k, &t) in row.iter().enumerate() {
                id_arr[[r, off + k]] = t;
                mask[[r, off + k]] = 1;
            }
        }
        let positions = positions(&mask);
        let image = self.image_flags(&id_arr);
        let (logits, past) = self.run_decoder(
            &id_arr,
            StepMasks {
                attention: &mask,
                positions: &positions,
                memory: &memory_mask,
                image: &image,
            },
            &cross,
            None,
        )?;
        // Beam search runs on `b * nb` rows, row `r` a copy of item `r / nb` until it diverges:
        // the start step ran once per item, its outputs are repeated (gathered on their device),
        // and so are the cross keys/values and memory mask unless the graph takes them once per
        // item (`cross_rows = "item"`).
        let nb = params.num_beams;
        let expand = crate::generation::beam_start_rows(b, nb);
        let idx: Vec<i64> = expand.iter().map(|&r| r as i64).collect();
        let (logits, past) = if nb == 1 {
            (logits, past)
        } else {
            (
                logits.select(ndarray::Axis(0), &expand),
                self.gather(&past, &idx)?,
            )
        };
        let (cross, memory_mask) = if nb == 1 || self.cfg.decoder.cross_rows == CrossRows::Item {
            (cross, memory_mask)
        } else {
            (
                self.gather(&cross, &idx)?,
                memory_mask.select(ndarray::Axis(0), &expand),
            )
        };
        let mask = mask.select(ndarray::Axis(0), &expand);
        let last_pos = expand.iter().map(|&r| positions[[r, len - 1]]).collect();
        let image_last = expand.iter().map(|&r| image[[r, len - 1]]).collect();
        Ok(Start {
            logits,
            cache: CrossCache {
                past,
                cross,
                memory_mask,
                mask,
                last_pos,
                image_last,
            },
            prompts: ids,
        })
    }
}

/// InstructBLIP: the Q-Former's tokens of one prompt, tokenized with `[qformer_tokenizer]`'s
/// special tokens (`[CLS] prompt [SEP]`); shared with the image-text decoder's Q-Former input.
///
/// # Errors
/// Tokenizer failure, or more tokens than `max` (`[prompt] max_qformer_tokens`), named as the
/// `whose` positions (the encoder's, the Q-Former's).
pub(super) fn qformer_tokens(
    package: &ModelPackage,
    tokenizer: &tokenizers::Tokenizer,
    spec: &TokenizerSpec,
    max: Option<usize>,
    whose: &str,
    prompt: &str,
) -> Result<Vec<i64>, ModelError> {
    let path = package.file(&spec.file).display().to_string();
    let enc = tokenizer
        .encode(prompt, true)
        .map_err(|e| ModelError::Tokenizer {
            path,
            reason: e.to_string(),
        })?;
    let n = enc.get_ids().len();
    if let Some(max) = max {
        if n > max {
            return Err(ModelError::Input {
                path: package.dir.join("model.toml").display().to_string(),
                reason: format!(
                    "the prompt takes {n} Q-Former tokens ({}), more than the {whose} {max} positions (prompt.max_qformer_tokens)",
                    spec.file
                ),
            });
        }
    }
    Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
}

/// The masks of one decoder call, each `[rows, T]` (`memory`: `[rows, M]`).
struct StepMasks<'a> {
    attention: &'a Array2<i64>,
    positions: &'a Array2<i64>,
    memory: &'a Array2<i64>,
    image: &'a Array2<i64>,
}

/// IdeficsProcessor's image attention for one image per row (`image_attention_mask_for_packed_input_ids`
/// with one image class): 0 before the first `image` token, 1 from it on, 0 again after an
/// `eos` token or from a second `image` token on (`num_classes = 1`).
fn image_flags(ids: &Array2<i64>, image: i64, eos: i64) -> Array2<i64> {
    let mut out = Array2::<i64>::zeros(ids.raw_dim());
    for (r, row) in ids.outer_iter().enumerate() {
        let (mut count, mut seen_eod) = (-1i64, false);
        for (t, &id) in row.iter().enumerate() {
            if id == image {
                count += 1;
                seen_eod = false;
            }
            out[[r, t]] = i64::from(!seen_eod && count == 0);
            if id == eos {
                seen_eod = true;
            }
        }
    }
    out
}

/// Rows of ids right padded with `pad` to the longest, and their masks (1: a real token).
pub(super) fn right_pad(rows: &[Vec<i64>], pad: i64) -> (Array2<i64>, Array2<i64>) {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Array2::<i64>::from_elem((rows.len(), n), pad);
    let mut mask = Array2::<i64>::zeros((rows.len(), n));
    for (r, row) in rows.iter().enumerate() {
        for (k, &t) in row.iter().enumerate() {
            ids[[r, k]] = t;
            mask[[r, k]] = 1;
        }
    }
    (ids, mask)
}

/// Position ids `cumsum(mask) - 1`, 0 where the mask is 0 (left padding).
fn positions(mask: &Array2<i64>) -> Array2<i64> {
    let mut out = Array2::<i64>::zeros(mask.raw_dim());
    for (r, row) in mask.outer_iter().enumerate() {
        let mut c = 0;
        for (t, &m) in row.iter().enumerate() {
            c += m;
            out[[r, t]] = if m == 0 { 0 } else { c - 1 };
        }
    }
    out
}

/// What [`CrossDecoderModel`] carries between steps, one row per sequence: the
/// self-attention past, the cross keys/values (fixed per tile), the masks and each row's last
/// position.
pub struct CrossCache {
    past: Kv,
    cross: Kv,
    memory_mask: Array2<i64>,
    mask: Array2<i64>,
    last_pos: Vec<i64>,
    /// Each row's image attention flag, repeated for every new token (HF `generate`).
    image_last: Vec<i64>,
}

impl std::fmt::Debug for CrossCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrossCache")
            .field("layers", &self.past.keys.len())
            .field("mask", &self.mask.shape())
            .field("memory_mask", &self.memory_mask.shape())
            .finish()
    }
}

impl StepDecoder for CrossDecoderModel {
    type Cache = CrossCache;

    fn step(
        &mut self,
        cache: CrossCache,
        tokens: &[i64],
    ) -> Result<(Array2<f32>, CrossCache), ModelError> {
        let path = self.decoder.path.clone();
        let CrossCache {
            past,
            cross,
            memory_mask,
            mask,
            mut last_pos,
            image_last,
        } = cache;
        let rows = tokens.len();
        let ids =
            Array2::from_shape_vec((rows, 1), tokens.to_vec()).map_err(|e| run_err(&path, e))?;
        let ones = Array2::<i64>::ones((rows, 1));
        let mask = ndarray::concatenate(ndarray::Axis(1), &[mask.view(), ones.view()])
            .map_err(|e| run_err(&path, e))?;
        let mut pos = Array2::<i64>::zeros((rows, 1));
        for (p, last) in pos.iter_mut().zip(last_pos.iter_mut()) {
            *last += 1;
            *p = *last;
        }
        let image =
            Array2::from_shape_vec((rows, 1), image_last.clone()).map_err(|e| run_err(&path, e))?;
        let (logits, past) = self.run_decoder(
            &ids,
            StepMasks {
                attention: &mask,
                positions: &pos,
                memory: &memory_mask,
                image: &image,
            },
            &cross,
            Some(&past),
        )?;
        Ok((
            logits,
            CrossCache {
                past,
                cross,
                memory_mask,
                mask,
                last_pos,
                image_last,
            },
        ))
    }

    /// The self-attention past is gathered on its device; the cross keys/values stay (beams
    /// continue beams of their own tile, whose rows are equal).
    fn reorder(&mut self, cache: CrossCache, source: &[usize]) -> Result<CrossCache, ModelError> {
        let rows = cache.last_pos.len();
        if let Some(&bad) = source.iter().find(|&&r| r >= rows) {
            return Err(run_err(
                &self.decoder.path.clone(),
                format!("beam reorder: row {bad} of a cache of {rows} rows"),
            ));
        }
        let idx: Vec<i64> = source.iter().map(|&r| r as i64).collect();
        Ok(CrossCache {
            past: self.gather(&cache.past, &idx)?,
            cross: cache.cross,
            memory_mask: cache.memory_mask,
            mask: cache.mask.select(ndarray::Axis(0), source),
            last_pos: source.iter().map(|&r| cache.last_pos[r]).collect(),
            image_last: source.iter().map(|&r| cache.image_last[r]).collect(),
        })
    }

    fn end_token_id(&self) -> i64 {
        i64::from(self.cfg.tok.eos_token_id)
    }

    fn pad_token_id(&self) -> i64 {
        i64::from(self.cfg.tok.pad_token_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_right_padded() {
        let (ids, mask) = right_pad(&[vec![7, 1], vec![1], vec![4, 5, 1]], 0);
        assert_eq!(ids, ndarray::array![[7, 1, 0], [1, 0, 0], [4, 5, 1]]);
        assert_eq!(mask, ndarray::array![[1, 1, 0], [1, 0, 0], [1, 1, 1]]);
    }

    #[test]
    fn positions_skip_left_padding() {
        let mask = ndarray::array![[0, 0, 1, 1], [1, 1, 1, 1]];
        assert_eq!(
            positions(&mask),
            ndarray::array![[0, 0, 0, 1], [0, 1, 2, 3]]
        );
    }

    #[test]
    fn image_attention_is_idefics_processors() {
        // pad <s> User : <fake> <image> <fake> text </s> more <image> x
        let ids = ndarray::array![[0, 1, 7, 8, 30, 31, 30, 9, 2, 10, 31, 11]];
        assert_eq!(
            image_flags(&ids, 31, 2),
            ndarray::array![[0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]]
        );
    }

    #[test]
    fn the_manifest_refuses_unknown_keys() {
        let text = "family = \"cross-attention-decoder\"\nname = \"x\"\n[prompt]\ntrim = 1\n";
        let err = CrossDecoderManifest::from_toml(text).expect_err("unknown key");
        assert!(err.contains("line 4") && err.contains("trim"), "{err}");
    }
}
