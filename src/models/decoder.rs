//! Image-conditioned language decoders: BLIP-2 (Li et al. 2023, "BLIP-2: Bootstrapping
//! Language-Image Pre-training with Frozen Image Encoders and Large Language Models"; Hugging
//! Face `Blip2ForConditionalGeneration`) and LLaVA-style models (Liu et al. 2023, "Visual
//! Instruction Tuning"; `LlavaForConditionalGeneration`) through one generic runner.
//!
//! A package has three graphs: `image_prefix` (pixels `[B, 3, S, S]` -> image tokens
//! `[B, P, H]`: vision encoder, Q-Former or projector), `embed_tokens` (ids `[B, T]` ->
//! `[B, T, H]`) and one merged `decoder` (embeddings, attention mask, position ids and a
//! possibly empty past -> logits and the new past). The prompt template places `P` image
//! tokens; their embedding rows are replaced by the image prefix. Everything model-specific
//! lives in the manifest. InstructBLIP with Vicuna (`InstructBlipForConditionalGeneration`
//! with a Llama) has an instruction-aware Q-Former: its image graph also takes the prompt's
//! `[qformer_tokenizer]` tokens (`[image] qformer_input_ids`), so the prefix is computed per
//! tile and prompt.
//!
//! Decoding reproduces Hugging Face `generate` (transformers 5) with left padding for batches:
//! the start step (image prefix and prompt through the decoder) is here, the searches and
//! logits processors are [`crate::generation`]'s, driving this model as a [`StepDecoder`].
//! The key/value cache stays in ONNX Runtime values between steps; beams are reordered by a
//! small Gather graph, not through host memory. A package with `[decoder] kv_cache =
//! "in-place"` takes right-padded prompts and one buffer per cache as long as the whole
//! generation, bound as both the past and the present of every call, so the graph
//! (GroupQueryAttention) writes each step's keys and values into it instead of returning a
//! concatenated copy.

use std::path::Path;

use ndarray::{Array2, Array3, ArrayView4};
use ort::memory::MemoryInfo;
use ort::value::{DynValue, Tensor, TensorRef};

use super::manifest::{
    DecoderSpec, EmbedSpec, GenerationSpec, ImageSpec, KvCache, Preprocess, PromptSpec,
    TokenizerSpec,
};
use super::{run_err, ModelError, ModelPackage};
use crate::generation::{GenerationError, Start, StepDecoder};
use crate::runtime::{
    create_session, create_session_from_memory, BindingMemory, ModelSession, Runtime, RuntimeError,
    SessionOptions,
};

/// A Gather along axis 0 (`y = x[idx]`), used to reorder key/value caches between beams
/// (built by tools/fixtures/make_builtin_graphs.py).
static BEAM_REORDER_ONNX: &[u8] = include_bytes!("beam_reorder.onnx");

pub use crate::generation::GenerationParams;

/// The family name in `model.toml`.
pub const FAMILY: &str = "image-text-decoder";

super::manifest::family_manifest! {
    /// An image-text decoder manifest's sections (all but `[generation]` required).
    pub struct DecoderManifest {
        pub image: Option<ImageSpec>,
        pub embed: Option<EmbedSpec>,
        pub decoder: Option<DecoderSpec>,
        pub prompt: Option<PromptSpec>,
        pub preprocess: Option<Preprocess>,
        pub tokenizer: Option<TokenizerSpec>,
        pub generation: Option<GenerationSpec>,
        /// InstructBLIP: the Q-Former's own tokenizer (`[image] qformer_input_ids`).
        pub qformer_tokenizer: Option<TokenizerSpec>,
        /// How the package serves `tessera detect` ([`super::grounding`]).
        pub grounding: Option<super::grounding::GroundingSpec>,
    }
}

/// The image-text decoder family ([`super::registry`]).
#[derive(Debug)]
pub struct ImageTextDecoder;

impl super::registry::ModelFamily for ImageTextDecoder {
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
        let (common, m) = DecoderManifest::from_toml(text)?;
        Ok(super::Manifest::new(common, None, m.generation.clone(), m))
    }

    fn input(&self, package: &ModelPackage) -> Option<super::registry::InputContract> {
        let m = package.manifest.sections::<DecoderManifest>()?;
        Some(super::registry::InputContract {
            size: m.preprocess.as_ref()?.size,
            any_size: false,
            prompted: false,
            bytes: false,
        })
    }
}

#[derive(Clone, Debug)]
struct DecoderConfig {
    image: ImageSpec,
    tokens: usize,
    embed: EmbedSpec,
    decoder: DecoderSpec,
    prompt: PromptSpec,
    pre: Preprocess,
    tok: TokenizerSpec,
    generation: GenerationSpec,
    /// `[qformer_tokenizer]` (InstructBLIP).
    qtok: Option<TokenizerSpec>,
}

fn config(package: &ModelPackage) -> Result<DecoderConfig, Vec<String>> {
    let Some(m) = package.manifest.sections::<DecoderManifest>() else {
        return Err(vec![format!(
            "family '{}' is not an image-text-decoder model",
            package.manifest.family
        )]);
    };
    let mut missing = Vec::new();
    for (present, name) in [
        (m.image.is_some(), "[image]"),
        (m.embed.is_some(), "[embed]"),
        (m.decoder.is_some(), "[decoder]"),
        (m.prompt.is_some(), "[prompt]"),
        (m.preprocess.is_some(), "[preprocess]"),
        (m.tokenizer.is_some(), "[tokenizer]"),
    ] {
        if !present {
            missing.push(format!(
                "an image-text-decoder manifest needs a {name} section"
            ));
        }
    }
    let tokens = m.image.as_ref().and_then(|i| i.tokens);
    if m.image.is_some() && tokens.is_none() {
        missing.push("image.tokens (image tokens per image) is required".into());
    }
    if m.image
        .as_ref()
        .is_some_and(|i| i.input_type == super::InputType::Uint8)
    {
        missing
            .push("image.input_type = \"uint8\" is supported for CLIP image encoders only".into());
    }
    match (
        &m.image,
        &m.embed,
        &m.decoder,
        &m.prompt,
        &m.preprocess,
        &m.tokenizer,
        tokens,
    ) {
        (
            Some(image),
            Some(embed),
            Some(decoder),
            Some(prompt),
            Some(pre),
            Some(tok),
            Some(tokens),
        ) if missing.is_empty() => Ok(DecoderConfig {
            image: image.clone(),
            tokens,
            embed: embed.clone(),
            decoder: decoder.clone(),
            prompt: prompt.clone(),
            pre: pre.clone(),
            tok: tok.clone(),
            generation: m.generation.clone().unwrap_or_default(),
            qtok: m.qformer_tokenizer.clone(),
        }),
        _ => Err(missing),
    }
}

/// The graph input or output name of layer `i`: `{i}` in the manifest's pattern replaced.
pub(super) fn layer_name(pattern: &str, i: usize) -> String {
    pattern.replace("{i}", &i.to_string())
}

/// Every problem with a decoder package (graphs loaded on the CPU).
pub fn check(runtime: &Runtime, package: &ModelPackage) -> Vec<String> {
    let cfg = match config(package) {
        Ok(c) => c,
        Err(p) => return p,
    };
    let o = SessionOptions::default();
    let image =
        create_session(runtime, &package.file(&cfg.image.onnx), &o).map_err(|e| e.to_string());
    let embed =
        create_session(runtime, &package.file(&cfg.embed.onnx), &o).map_err(|e| e.to_string());
    let decoder =
        create_session(runtime, &package.file(&cfg.decoder.onnx), &o).map_err(|e| e.to_string());
    let tokenizer =
        super::tokenizer::load_tokenizer(&package.file(&cfg.tok.file)).map_err(|e| e.to_string());
    let qtokenizer = load_qformer_tokenizer(&cfg, package);
    let mut problems = validate(
        &cfg,
        image.as_ref(),
        embed.as_ref(),
        decoder.as_ref(),
        tokenizer.as_ref(),
        qtokenizer.as_ref().map(Result::as_ref),
    );
    let grounding = package
        .manifest
        .sections::<DecoderManifest>()
        .and_then(|m| m.grounding.as_ref());
    if let Some(g) = grounding {
        // No [tasks] here: every prompt's parser is grounding.output.
        problems.extend(super::grounding::check_spec(g, &|_| None));
    }
    problems
}

/// `[qformer_tokenizer]`'s tokenizer, when the manifest has the section.
fn load_qformer_tokenizer(
    cfg: &DecoderConfig,
    package: &ModelPackage,
) -> Option<Result<tokenizers::Tokenizer, String>> {
    cfg.qtok.as_ref().map(|q| {
        super::tokenizer::load_tokenizer(&package.file(&q.file)).map_err(|e| e.to_string())
    })
}

/// The image graph's inputs: the pixels, and the prompt's Q-Former tokens when it takes them.
fn image_inputs(image: &ImageSpec) -> Vec<String> {
    let mut ins = vec![image.input.clone()];
    ins.extend(image.qformer_input_ids.clone());
    ins.extend(image.qformer_attention_mask.clone());
    ins
}

/// The keys of an image graph that reads the prompt (InstructBLIP's Q-Former), the Q-Former
/// tokenizer, and inputs of the image graph the manifest does not name.
fn qformer_problems(
    cfg: &DecoderConfig,
    image: Result<&ModelSession, &String>,
    qtokenizer: Option<Result<&tokenizers::Tokenizer, &String>>,
) -> Vec<String> {
    let i = &cfg.image;
    let mut problems = Vec::new();
    for (a, b, what) in [
        (
            i.qformer_input_ids.is_some(),
            i.qformer_attention_mask.is_some(),
            "image.qformer_input_ids and image.qformer_attention_mask go together",
        ),
        (
            i.qformer_input_ids.is_some(),
            cfg.qtok.is_some(),
            "image.qformer_input_ids needs a [qformer_tokenizer] section (and the section needs them)",
        ),
    ] {
        if a != b {
            problems.push(what.to_string());
        }
    }
    if cfg.prompt.max_qformer_tokens.is_some() && cfg.qtok.is_none() {
        problems.push("prompt.max_qformer_tokens needs a [qformer_tokenizer] section".into());
    }
    if let (Some(q), Some(Ok(t))) = (&cfg.qtok, qtokenizer) {
        let vocab = t.get_vocab_size(true) as u32;
        if q.pad_token_id >= vocab || q.eos_token_id >= vocab {
            problems.push(format!(
                "qformer_tokenizer.pad_token_id / eos_token_id outside the vocabulary of {vocab} tokens ({})",
                q.file
            ));
        }
    }
    if let Some(Err(e)) = qtokenizer {
        problems.push(e.clone());
    }
    if let Ok(s) = image {
        let named = image_inputs(i);
        let extra: Vec<String> = s
            .inputs()
            .into_iter()
            .filter(|t| !named.contains(&t.name))
            .map(|t| t.name)
            .collect();
        if !extra.is_empty() {
            problems.push(format!(
                "image prefix inputs {} are not in the manifest (an instruction-aware Q-Former needs image.qformer_input_ids and image.qformer_attention_mask)",
                extra.join(", ")
            ));
        }
    }
    problems
}

fn validate(
    cfg: &DecoderConfig,
    image: Result<&ModelSession, &String>,
    embed: Result<&ModelSession, &String>,
    decoder: Result<&ModelSession, &String>,
    tokenizer: Result<&tokenizers::Tokenizer, &String>,
    qtokenizer: Option<Result<&tokenizers::Tokenizer, &String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut need = |what: &str,
                    s: Result<&ModelSession, &String>,
                    inputs: &[String],
                    outputs: &[String]| match s {
        Err(e) => problems.push(format!("{what}: {e}")),
        Ok(s) => {
            let (have_in, have_out) = (s.inputs(), s.outputs());
            for n in inputs {
                if !have_in.iter().any(|i| &i.name == n) {
                    let names: Vec<&str> = have_in.iter().map(|i| i.name.as_str()).collect();
                    problems.push(format!(
                        "{what} has no input '{n}' (it has {})",
                        names.join(", ")
                    ));
                }
            }
            for n in outputs {
                if !have_out.iter().any(|i| &i.name == n) {
                    let names: Vec<&str> = have_out.iter().map(|i| i.name.as_str()).collect();
                    problems.push(format!(
                        "{what} has no output '{n}' (it has {})",
                        names.join(", ")
                    ));
                }
            }
        }
    };
    need(
        "image prefix",
        image,
        &image_inputs(&cfg.image),
        std::slice::from_ref(&cfg.image.output),
    );
    need(
        "token embedding",
        embed,
        std::slice::from_ref(&cfg.embed.input),
        std::slice::from_ref(&cfg.embed.output),
    );
    let d = &cfg.decoder;
    let mut ins = vec![d.inputs_embeds.clone()];
    let mut cache_problems = Vec::new();
    match d.kv_cache {
        KvCache::Concat => match &d.attention_mask {
            Some(m) => ins.push(m.clone()),
            None => cache_problems
                .push("decoder.attention_mask is required (kv_cache = \"concat\")".into()),
        },
        KvCache::InPlace => {
            match &d.sequence_lengths {
                Some(n) => ins.push(n.clone()),
                None => cache_problems.push(
                    "decoder.sequence_lengths is required with kv_cache = \"in-place\"".into(),
                ),
            }
            if d.prefix_mask.is_some() || is_mrope(d) {
                cache_problems.push(
                    "kv_cache = \"in-place\" takes neither decoder.prefix_mask nor positions = \"mrope\""
                        .into(),
                );
            }
        }
    }
    ins.extend(d.position_ids.clone());
    ins.extend(d.prefix_mask.clone());
    let mut outs = vec![d.logits.clone()];
    for i in 0..d.layers {
        ins.push(layer_name(&d.past_key, i));
        ins.push(layer_name(&d.past_value, i));
        outs.push(layer_name(&d.present_key, i));
        outs.push(layer_name(&d.present_value, i));
    }
    need("decoder", decoder, &ins, &outs);
    problems.extend(cache_problems);
    problems.extend(hidden_size_problems(cfg, image, embed, decoder));
    if let Ok(s) = decoder {
        let extra: Vec<String> = s
            .inputs()
            .into_iter()
            .filter(|i| !ins.contains(&i.name))
            .map(|i| i.name)
            .collect();
        if !extra.is_empty() {
            problems.push(format!(
                "decoder inputs {} are not in the manifest (missing past-key-value layers? decoder.layers = {})",
                extra.join(", "),
                d.layers
            ));
        }
    }
    problems.extend(tokenizer_problems(cfg, tokenizer));
    problems.extend(mrope_problems(cfg, decoder));
    problems.extend(qformer_problems(cfg, image, qtokenizer));
    if !cfg.prompt.template.contains("{image}") {
        problems.push("prompt.template must contain {image}".into());
    }
    if cfg.prompt.image_ids_first && !cfg.prompt.template.starts_with("{image}") {
        problems
            .push("prompt.image_ids_first needs a prompt.template that starts with {image}".into());
    }
    if cfg.generation.num_beams == 0 {
        problems.push("generation.num_beams must be at least 1".into());
    }
    problems
}

/// The image prefix, the token embeddings and the decoder must agree on the hidden size.
fn hidden_size_problems(
    cfg: &DecoderConfig,
    image: Result<&ModelSession, &String>,
    embed: Result<&ModelSession, &String>,
    decoder: Result<&ModelSession, &String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let last_dim = |s: Result<&ModelSession, &String>, name: &str, inputs: bool| -> Option<i64> {
        let s = s.ok()?;
        let specs = if inputs { s.inputs() } else { s.outputs() };
        specs
            .into_iter()
            .find(|t| t.name == name)
            .and_then(|t| t.shape.last().copied())
            .filter(|&d| d > 0)
    };
    let dims = [
        (
            "image prefix output",
            last_dim(image, &cfg.image.output, false),
        ),
        (
            "token embedding output",
            last_dim(embed, &cfg.embed.output, false),
        ),
        (
            "decoder inputs_embeds",
            last_dim(decoder, &cfg.decoder.inputs_embeds, true),
        ),
        ("decoder.hidden", cfg.decoder.hidden.map(|h| h as i64)),
    ];
    let known: Vec<(&str, i64)> = dims
        .iter()
        .filter_map(|(n, d)| d.map(|d| (*n, d)))
        .collect();
    if let Some(&(first, h)) = known.first() {
        for &(name, other) in &known[1..] {
            if other != h {
                problems.push(format!("hidden sizes disagree: {first} is {h} but {name} is {other} (encoder and decoder do not belong together)"));
            }
        }
    }
    problems
}

/// Whether the manifest asks for M-RoPE positions (`[decoder] positions = "mrope"`).
fn is_mrope(d: &DecoderSpec) -> bool {
    d.positions.as_deref() == Some("mrope")
}

/// The M-RoPE keys' problems: `positions` is `linear` or `mrope`; `mrope` needs a position
/// input of rank 3 and an image grid whose `t * h * w` is the image token count.
fn mrope_problems(cfg: &DecoderConfig, decoder: Result<&ModelSession, &String>) -> Vec<String> {
    let d = &cfg.decoder;
    let mut problems = Vec::new();
    match d.positions.as_deref() {
        None | Some("linear") => {
            if d.mrope_grid.is_some() {
                problems
                    .push("decoder.mrope_grid is only for decoder.positions = \"mrope\"".into());
            }
            if let (Some(name), Ok(s)) = (&d.position_ids, decoder) {
                if s.inputs()
                    .into_iter()
                    .any(|i| &i.name == name && i.shape.len() == 3)
                {
                    problems.push(format!("decoder input '{name}' takes M-RoPE position ids [3, B, T]: the manifest needs decoder.positions = \"mrope\""));
                }
            }
            return problems;
        }
        Some("mrope") => {}
        Some(other) => {
            problems.push(format!(
                "decoder.positions is '{other}'; it must be \"linear\" or \"mrope\""
            ));
            return problems;
        }
    }
    match d.mrope_grid {
        None => problems.push(
            "decoder.positions = \"mrope\" needs decoder.mrope_grid = [t, h, w] (the image grid after merging)"
                .into(),
        ),
        Some(g) if g.contains(&0) => {
            problems.push(format!("decoder.mrope_grid {g:?} has a zero extent"));
        }
        Some(g) if g[0] * g[1] * g[2] != cfg.tokens => problems.push(format!(
            "image.tokens is {} but decoder.mrope_grid {g:?} holds {} image tokens (the package's image token count disagrees with its tile grid)",
            cfg.tokens,
            g[0] * g[1] * g[2]
        )),
        Some(_) => {}
    }
    match (&d.position_ids, decoder) {
        (None, _) => problems.push(
            "decoder.positions = \"mrope\" needs decoder.position_ids (an int64 [3,B,T] input)"
                .into(),
        ),
        (Some(name), Ok(s)) => {
            if let Some(i) = s.inputs().into_iter().find(|i| &i.name == name) {
                if i.shape.len() != 3 || (i.shape[0] > 0 && i.shape[0] != 3) {
                    problems.push(format!(
                        "decoder input '{name}' has shape {:?}; M-RoPE position ids are [3, B, T]",
                        i.shape
                    ));
                }
            }
        }
        (Some(_), Err(_)) => {}
    }
    problems
}

/// Hugging Face `get_rope_index` (Qwen2-VL, transformers 5) for left-padded rows: M-RoPE
/// position ids `[3, B, T]` (temporal, height, width) and each row's rope delta
/// (`max position + 1 - real tokens`). Over the real tokens of a row (mask 1), a text token
/// takes the running position `p` in all three rows and `p += 1`; a run of `t * h * w` image
/// tokens takes `p + (ti, hi, wi)` in row-major grid order and then `p += max(h, w)`. Padding
/// is 0.
///
/// # Errors
/// An image run shorter than the grid.
pub fn mrope_position_ids(
    ids: &Array2<i64>,
    mask: &Array2<i64>,
    image_token_id: i64,
    grid: [usize; 3],
) -> Result<(Array3<i64>, Vec<i64>), String> {
    let (b, t) = ids.dim();
    let [gt, gh, gw] = grid;
    let n_image = gt * gh * gw;
    let mut pos = Array3::<i64>::zeros((3, b, t));
    let mut deltas = Vec::with_capacity(b);
    for r in 0..b {
        let cols: Vec<usize> = (0..t).filter(|&j| mask[[r, j]] != 0).collect();
        let (mut cur, mut k, mut max) = (0i64, 0usize, -1i64);
        while k < cols.len() {
            if ids[[r, cols[k]]] == image_token_id {
                if k + n_image > cols.len()
                    || cols[k..k + n_image]
                        .iter()
                        .any(|&j| ids[[r, j]] != image_token_id)
                {
                    return Err(format!(
                        "row {r}: an image run shorter than the M-RoPE grid {grid:?} ({n_image} tokens)"
                    ));
                }
                let mut j = k;
                for ti in 0..gt {
                    for hi in 0..gh {
                        for wi in 0..gw {
                            let p = [cur + ti as i64, cur + hi as i64, cur + wi as i64];
                            for (d, &v) in p.iter().enumerate() {
                                pos[[d, r, cols[j]]] = v;
                                max = max.max(v);
                            }
                            j += 1;
                        }
                    }
                }
                k += n_image;
                cur += gh.max(gw) as i64;
            } else {
                for d in 0..3 {
                    pos[[d, r, cols[k]]] = cur;
                }
                max = max.max(cur);
                cur += 1;
                k += 1;
            }
        }
        deltas.push(max + 1 - cols.len() as i64);
    }
    Ok((pos, deltas))
}

/// The tokenizer's problems: the image token and the special token ids.
fn tokenizer_problems(
    cfg: &DecoderConfig,
    tokenizer: Result<&tokenizers::Tokenizer, &String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    match tokenizer {
        Err(e) => problems.push(e.clone()),
        Ok(t) => {
            let vocab = t.get_vocab_size(true) as u32;
            match t.token_to_id(&cfg.prompt.image_token) {
                Some(id) if id == cfg.prompt.image_token_id => {}
                Some(id) => problems.push(format!(
                    "prompt.image_token_id is {} but the tokenizer maps '{}' to {id}",
                    cfg.prompt.image_token_id, cfg.prompt.image_token
                )),
                None => problems.push(format!(
                    "the tokenizer has no image token '{}' (prompt.image_token)",
                    cfg.prompt.image_token
                )),
            }
            for (what, id) in [
                ("eos_token_id", Some(cfg.tok.eos_token_id)),
                ("pad_token_id", Some(cfg.tok.pad_token_id)),
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
    problems
}

/// A loaded image-text decoder.
pub struct DecoderModel {
    package: ModelPackage,
    cfg: DecoderConfig,
    /// Where the key/value cache lives between steps (the decoder's device).
    cache_memory: MemoryInfo<'static>,
    /// The cache is in host memory (not on a CUDA device): in-place buffers are reordered there.
    cache_on_host: bool,
    /// Host memory, for logits.
    host_memory: MemoryInfo<'static>,
    image: ModelSession,
    embed: ModelSession,
    decoder: ModelSession,
    reorder: ModelSession,
    tokenizer: tokenizers::Tokenizer,
    /// `[qformer_tokenizer]` (InstructBLIP); boxed, the model stays small for its owners.
    qtokenizer: Option<Box<tokenizers::Tokenizer>>,
}

impl std::fmt::Debug for DecoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderModel")
            .field("dir", &self.package.dir)
            .finish()
    }
}

/// Per-row key/value caches, one pair per layer, kept as ONNX Runtime values on the
/// decoder's device.
struct Past {
    keys: Vec<DynValue>,
    values: Vec<DynValue>,
    /// `kv_cache = "in-place"`: the positions each buffer holds (0 for `concat`).
    buffer: usize,
}

impl DecoderModel {
    /// Load and validate the package in `dir`.
    ///
    /// # Errors
    /// Any problem [`check`] finds, or the device's provider failing to load.
    pub fn load(
        runtime: &Runtime,
        dir: &Path,
        options: &SessionOptions,
    ) -> Result<DecoderModel, ModelError> {
        let package = ModelPackage::load(dir)?;
        if package.manifest.family != FAMILY {
            return Err(ModelError::Package {
                path: dir.display().to_string(),
                reason: format!(
                    "family '{}' is not an image-text-decoder model",
                    package.manifest.family
                ),
            });
        }
        let invalid = |problems| ModelError::Invalid {
            path: dir.display().to_string(),
            problems,
        };
        let cfg = config(&package).map_err(invalid)?;
        let image = package.session(runtime, &cfg.image.onnx, options);
        if let Err(e @ ModelError::Runtime(RuntimeError::Provider { .. })) = image {
            return Err(e);
        }
        let image = image.map_err(|e| e.to_string());
        let embed = package
            .session(runtime, &cfg.embed.onnx, options)
            .map_err(|e| e.to_string());
        let decoder = package
            .session(runtime, &cfg.decoder.onnx, options)
            .map_err(|e| e.to_string());
        let tokenizer = super::tokenizer::load_tokenizer(&package.file(&cfg.tok.file))
            .map_err(|e| e.to_string());
        let qtokenizer = load_qformer_tokenizer(&cfg, &package);
        let problems = validate(
            &cfg,
            image.as_ref(),
            embed.as_ref(),
            decoder.as_ref(),
            tokenizer.as_ref(),
            qtokenizer.as_ref().map(Result::as_ref),
        );
        let qtokenizer = match qtokenizer {
            Some(Ok(t)) => Some(Box::new(t)),
            Some(Err(_)) | None => None,
        };
        let (Ok(image), Ok(embed), Ok(decoder), Ok(tokenizer), true) =
            (image, embed, decoder, tokenizer, problems.is_empty())
        else {
            return Err(invalid(problems));
        };
        // The reorder graph runs where the cache lives (the decoder's provider).
        let cuda = decoder.cuda_device(options);
        let reorder_options = SessionOptions {
            device: cuda.map_or(crate::runtime::Device::Cpu, crate::runtime::Device::Cuda),
            ..options.clone()
        };
        let reorder = create_session_from_memory(
            runtime,
            "beam_reorder.onnx (built in)",
            BEAM_REORDER_ONNX,
            &reorder_options,
        )?;
        let memory = BindingMemory::new(cuda).map_err(|e| run_err(dir, e))?;
        let (host_memory, cache_memory) = (memory.host, memory.device);
        Ok(DecoderModel {
            package,
            cfg,
            cache_memory,
            cache_on_host: cuda.is_none(),
            host_memory,
            image,
            embed,
            decoder,
            reorder,
            tokenizer,
            qtokenizer,
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

    /// Token ids for one prompt: the template with `P` image tokens and the prompt, tokenized
    /// (with `[prompt] image_ids_first`: the `P` image token ids, then the rest of the template
    /// tokenized). With a `[qformer_tokenizer]`, the prompt's Q-Former tokens are checked too
    /// (see [`Self::qformer_prompt_ids`]).
    ///
    /// # Errors
    /// Tokenizer failure, a tokenization that does not keep exactly `P` image tokens, or a
    /// prompt longer than the Q-Former's positions.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<i64>, ModelError> {
        self.qformer_prompt_ids(prompt)?;
        let first = self.cfg.prompt.image_ids_first;
        let image = match first {
            true => String::new(),
            false => self.cfg.prompt.image_token.repeat(self.cfg.tokens),
        };
        let text = self
            .cfg
            .prompt
            .template
            .replace("{image}", &image)
            .replace("{prompt}", prompt);
        let tok_path = self.package.file(&self.cfg.tok.file).display().to_string();
        let enc = self
            .tokenizer
            .encode(text.as_str(), self.cfg.prompt.add_bos)
            .map_err(|e| ModelError::Tokenizer {
                path: tok_path.clone(),
                reason: e.to_string(),
            })?;
        let image_id = i64::from(self.cfg.prompt.image_token_id);
        let mut ids: Vec<i64> = vec![image_id; if first { self.cfg.tokens } else { 0 }];
        ids.extend(enc.get_ids().iter().map(|&i| i64::from(i)));
        let n = ids
            .iter()
            .filter(|&&i| i == i64::from(self.cfg.prompt.image_token_id))
            .count();
        if n != self.cfg.tokens {
            return Err(ModelError::Tokenizer {
                path: tok_path,
                reason: format!(
                    "the prompt holds {n} image tokens after tokenization, the model needs {} (does the prompt contain '{}'?)",
                    self.cfg.tokens, self.cfg.prompt.image_token
                ),
            });
        }
        Ok(ids)
    }

    /// InstructBLIP: the Q-Former's tokens of one prompt (`[qformer_tokenizer]`, with its
    /// special tokens: `[CLS] prompt [SEP]`); `None` for an image graph that takes no prompt.
    ///
    /// # Errors
    /// Tokenizer failure, or more tokens than `[prompt] max_qformer_tokens`.
    pub fn qformer_prompt_ids(&self, prompt: &str) -> Result<Option<Vec<i64>>, ModelError> {
        let (Some(t), Some(spec)) = (&self.qtokenizer, &self.cfg.qtok) else {
            return Ok(None);
        };
        super::cross_decoder::qformer_tokens(
            &self.package,
            t,
            spec,
            self.cfg.prompt.max_qformer_tokens,
            "Q-Former's",
            prompt,
        )
        .map(Some)
    }

    /// Decode token ids to text (special tokens skipped). Control characters other than new
    /// lines and tabs are dropped: GIS formats cannot store some of them (NUL), and they carry
    /// no meaning in a caption.
    ///
    /// # Errors
    /// Tokenizer failure.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        let text = self
            .tokenizer
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer {
                path: self.package.file(&self.cfg.tok.file).display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(text
            .chars()
            .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
            .collect())
    }

    /// The image tokens of a batch; an instruction-aware Q-Former also reads each row's prompt
    /// (its `[qformer_tokenizer]` ids, right padded with the pad id, and their mask).
    fn image_prefix(
        &mut self,
        pixels: ArrayView4<'_, f32>,
        prompts: &[String],
    ) -> Result<Array3<f32>, ModelError> {
        let path = self.image.path.clone();
        let pixels = pixels.as_standard_layout();
        let input = TensorRef::from_array_view(pixels.view()).map_err(|e| run_err(&path, e))?;
        let mut inputs = ort::inputs![self.cfg.image.input.as_str() => input];
        let i = &self.cfg.image;
        if let (Some(ids), Some(mask), Some(q)) = (
            &i.qformer_input_ids,
            &i.qformer_attention_mask,
            &self.cfg.qtok,
        ) {
            let mut rows = Vec::with_capacity(prompts.len());
            for p in prompts {
                rows.push(self.qformer_prompt_ids(p)?.ok_or_else(|| {
                    run_err(
                        &path,
                        "image.qformer_input_ids without a Q-Former tokenizer",
                    )
                })?);
            }
            let (a, m) = super::cross_decoder::right_pad(&rows, i64::from(q.pad_token_id));
            inputs.push((
                ids.clone().into(),
                Tensor::from_array(a).map_err(|e| run_err(&path, e))?.into(),
            ));
            inputs.push((
                mask.clone().into(),
                Tensor::from_array(m).map_err(|e| run_err(&path, e))?.into(),
            ));
        }
        let out = self
            .image
            .session
            .run(inputs)
            .map_err(|e| run_err(&path, e))?;
        let a = out[self.cfg.image.output.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| run_err(&path, e))?;
        let a = a
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| run_err(&path, e))?
            .to_owned();
        if a.shape()[1] != self.cfg.tokens {
            return Err(run_err(
                &path,
                format!(
                    "image prefix has {} tokens, manifest says {}",
                    a.shape()[1],
                    self.cfg.tokens
                ),
            ));
        }
        Ok(a)
    }

    fn embed_tokens(&mut self, ids: &Array2<i64>) -> Result<Array3<f32>, ModelError> {
        let path = self.embed.path.clone();
        let input = TensorRef::from_array_view(ids.view()).map_err(|e| run_err(&path, e))?;
        let out = self
            .embed
            .session
            .run(ort::inputs![self.cfg.embed.input.as_str() => input])
            .map_err(|e| run_err(&path, e))?;
        let a = out[self.cfg.embed.output.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| run_err(&path, e))?;
        Ok(a.into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| run_err(&path, e))?
            .to_owned())
    }

    /// One decoder call: returns the last position's logits `[rows, V]` and the new cache.
    /// `prompt_len`: the start step's length (the bidirectional prefix of a prefix-LM
    /// decoder, `[decoder] prefix_mask`).
    fn run_decoder(
        &mut self,
        embeds: &Array3<f32>,
        mask: &Array2<i64>,
        positions: &ndarray::ArrayD<i64>,
        past: Option<&Past>,
        prompt_len: usize,
    ) -> Result<(Array2<f32>, Past), ModelError> {
        let d = self.cfg.decoder.clone();
        let path = self.decoder.path.clone();
        let rows = embeds.shape()[0];
        let empty: Option<Tensor<f32>> = match past {
            Some(_) => None,
            None => Some(
                Tensor::from_array(([rows, d.kv_heads, 0, d.head_dim], Vec::<f32>::new()))
                    .map_err(|e| run_err(&path, e))?,
            ),
        };
        let prefix = match &d.prefix_mask {
            Some(_) => Some(
                Tensor::from_array(prefix_mask(mask.view(), prompt_len))
                    .map_err(|e| run_err(&path, e))?,
            ),
            None => None,
        };
        // ONNX Runtime needs contiguous buffers (a concatenated mask may not be).
        let embeds = Tensor::from_array(embeds.as_standard_layout().to_owned())
            .map_err(|e| run_err(&path, e))?;
        let mask = Tensor::from_array(mask.as_standard_layout().to_owned())
            .map_err(|e| run_err(&path, e))?;
        let positions = Tensor::from_array(positions.as_standard_layout().to_owned())
            .map_err(|e| run_err(&path, e))?;
        // I/O binding: the new key/value cache is left where the decoder's provider put it (GPU
        // memory on CUDA) and fed back as the next step's past without a trip through the host;
        // only the logits come back to host memory. A fresh binding per step, since a binding
        // reuses its output buffers across runs.
        let mut binding = self
            .decoder
            .session
            .create_binding()
            .map_err(|e| run_err(&path, e))?;
        let bind = |r: ort::Result<()>| r.map_err(|e| run_err(&path, e));
        bind(binding.bind_input(d.inputs_embeds.as_str(), &embeds))?;
        let mask_name = d
            .attention_mask
            .as_deref()
            .ok_or_else(|| run_err(&path, "decoder.attention_mask is not set"))?;
        bind(binding.bind_input(mask_name, &mask))?;
        if let Some(p) = &d.position_ids {
            bind(binding.bind_input(p.as_str(), &positions))?;
        }
        if let (Some(name), Some(prefix)) = (&d.prefix_mask, &prefix) {
            bind(binding.bind_input(name.as_str(), prefix))?;
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
            .map_err(|e| run_err(&path, e))?;
        let logits = out[d.logits.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| run_err(&path, e))?;
        let t = logits.shape()[1];
        let last = logits.slice(ndarray::s![.., t - 1, ..]).to_owned();
        let mut keys = Vec::with_capacity(d.layers);
        let mut values = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            keys.push(
                out.remove(layer_name(&d.present_key, i))
                    .ok_or_else(|| run_err(&path, "missing present key"))?,
            );
            values.push(
                out.remove(layer_name(&d.present_value, i))
                    .ok_or_else(|| run_err(&path, "missing present value"))?,
            );
        }
        Ok((
            last,
            Past {
                keys,
                values,
                buffer: 0,
            },
        ))
    }

    /// Fresh key/value buffers of `buffer` positions for `rows` rows, on the cache's device
    /// (`kv_cache = "in-place"`; their contents are written before they are read).
    fn new_buffers(&self, rows: usize, buffer: usize) -> Result<Past, ModelError> {
        let d = &self.cfg.decoder;
        let path = &self.decoder.path;
        let allocator =
            ort::memory::Allocator::new(&self.decoder.session, self.cache_memory.clone())
                .map_err(|e| run_err(path, e))?;
        let shape = [rows, d.kv_heads, buffer, d.head_dim];
        let new = || -> Result<DynValue, ModelError> {
            Ok(Tensor::<f32>::new(&allocator, shape)
                .map_err(|e| run_err(path, e))?
                .into_dyn())
        };
        let keys = (0..d.layers).map(|_| new()).collect::<Result<_, _>>()?;
        let values = (0..d.layers).map(|_| new()).collect::<Result<_, _>>()?;
        Ok(Past {
            keys,
            values,
            buffer,
        })
    }

    /// One decoder call with `kv_cache = "in-place"`: every buffer of `past` is bound as its
    /// own present, so the graph writes this call's keys and values into it. Each row's length
    /// is its mask's sum (prompts right padded); returns the logits `[rows, V]` of each row's
    /// last valid position and the same buffers.
    fn run_decoder_in_place(
        &mut self,
        embeds: &Array3<f32>,
        mask: &Array2<i64>,
        positions: &ndarray::ArrayD<i64>,
        mut past: Past,
    ) -> Result<(Array2<f32>, Past), ModelError> {
        let d = self.cfg.decoder.clone();
        let path = self.decoder.path.clone();
        let lengths = mask
            .outer_iter()
            .map(|row| {
                let n = row.sum();
                match i32::try_from(n - 1) {
                    Ok(l) if n >= 1 && (n as usize) <= past.buffer => Ok(l),
                    _ => Err(run_err(
                        &path,
                        format!(
                            "a row of {n} tokens does not fit the key/value buffer of {} positions",
                            past.buffer
                        ),
                    )),
                }
            })
            .collect::<Result<Vec<i32>, _>>()?;
        let seq_name = d
            .sequence_lengths
            .clone()
            .ok_or_else(|| run_err(&path, "decoder.sequence_lengths is not set"))?;
        let lengths =
            Tensor::from_array(([lengths.len()], lengths)).map_err(|e| run_err(&path, e))?;
        let embeds = Tensor::from_array(embeds.as_standard_layout().to_owned())
            .map_err(|e| run_err(&path, e))?;
        let positions = Tensor::from_array(positions.as_standard_layout().to_owned())
            .map_err(|e| run_err(&path, e))?;
        let mut binding = self
            .decoder
            .session
            .create_binding()
            .map_err(|e| run_err(&path, e))?;
        let bind = |r: ort::Result<()>| r.map_err(|e| run_err(&path, e));
        bind(binding.bind_input(d.inputs_embeds.as_str(), &embeds))?;
        bind(binding.bind_input(seq_name.as_str(), &lengths))?;
        if let Some(p) = &d.position_ids {
            bind(binding.bind_input(p.as_str(), &positions))?;
        }
        for (i, (k, v)) in past.keys.iter_mut().zip(past.values.iter_mut()).enumerate() {
            bind(binding.bind_input(layer_name(&d.past_key, i), &*k))?;
            bind(binding.bind_input(layer_name(&d.past_value, i), &*v))?;
            bind(binding.bind_output(layer_name(&d.present_key, i), k))?;
            bind(binding.bind_output(layer_name(&d.present_value, i), v))?;
        }
        bind(binding.bind_output_to_device(d.logits.as_str(), &self.host_memory))?;
        let out = self
            .decoder
            .session
            .run_binding(&binding)
            .map_err(|e| run_err(&path, e))?;
        let logits = out[d.logits.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| run_err(&path, e))?;
        let t = logits.shape()[1];
        let last = logits.slice(ndarray::s![.., t - 1, ..]).to_owned();
        Ok((last, past))
    }

    /// Reorder cache rows on the cache's device: row `r` of the result is row `idx[r]` of
    /// `cache`.
    fn reorder_past(&mut self, cache: &Past, idx: &[i64]) -> Result<Past, ModelError> {
        let path = self.decoder.path.clone();
        let idx = Tensor::from_array(([idx.len()], idx.to_vec())).map_err(|e| run_err(&path, e))?;
        let memory = self.cache_memory.clone();
        let session = &mut self.reorder.session;
        let mut gather = |v: &DynValue| -> Result<DynValue, ModelError> {
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
                .ok_or_else(|| run_err(&path, "reorder produced nothing"))
        };
        let keys = cache
            .keys
            .iter()
            .map(&mut gather)
            .collect::<Result<Vec<_>, _>>()?;
        let values = cache
            .values
            .iter()
            .map(&mut gather)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Past {
            keys,
            values,
            buffer: cache.buffer,
        })
    }

    /// Generate continuations for a batch: image `b` with prompt `b`. Returns the new token
    /// ids of each item, ending with the end token when one was produced.
    ///
    /// # Errors
    /// Mismatched batch sizes, tokenizer or inference failure.
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

    /// The tokenizer (the box parsers decode with special tokens kept).
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// The start step: the prompts (left padded, image token rows replaced by the image
    /// prefix) through the decoder once per item; its logits and key/value rows are then
    /// repeated `num_beams` times (the beams of an item start as copies of it).
    fn start(
        &mut self,
        pixels: ArrayView4<'_, f32>,
        prompts: &[String],
        params: &GenerationParams,
    ) -> Result<Start<DecoderCache>, ModelError> {
        let b = prompts.len();
        let path = self.decoder.path.clone();
        if pixels.shape()[0] != b {
            return Err(ModelError::Input {
                path: path.display().to_string(),
                reason: format!("{} images for {b} prompts", pixels.shape()[0]),
            });
        }
        if params.num_beams == 0 || params.max_new_tokens == 0 {
            return Err(ModelError::Input {
                path: path.display().to_string(),
                reason: "num_beams and max_new_tokens must be at least 1".into(),
            });
        }
        let ids: Vec<Vec<i64>> = prompts
            .iter()
            .map(|p| self.prompt_ids(p))
            .collect::<Result<_, _>>()?;
        let len = ids.iter().map(Vec::len).max().unwrap_or(0);
        if let Some(max) = self.cfg.decoder.max_positions {
            if len + params.max_new_tokens > max {
                return Err(ModelError::Input {
                    path: path.display().to_string(),
                    reason: format!(
                        "the prompt takes {len} tokens (with {} image tokens); with {} new tokens that exceeds the model's context of {max}",
                        self.cfg.tokens, params.max_new_tokens
                    ),
                });
            }
        }
        let in_place = self.cfg.decoder.kv_cache == KvCache::InPlace;
        let pad = i64::from(self.cfg.tok.pad_token_id);
        let (id_arr, mask) = if in_place {
            super::cross_decoder::right_pad(&ids, pad)
        } else {
            left_pad(&ids, len, pad)
        };
        let mut embeds = self.embed_tokens(&id_arr)?;
        let prefix = self.image_prefix(pixels, prompts)?;
        let image_id = i64::from(self.cfg.prompt.image_token_id);
        for r in 0..b {
            let mut k = 0;
            for t in 0..len {
                if id_arr[[r, t]] == image_id {
                    embeds
                        .slice_mut(ndarray::s![r, t, ..])
                        .assign(&prefix.slice(ndarray::s![r, k, ..]));
                    k += 1;
                }
            }
        }
        let positions1 = positions(&mask);
        let (positions_in, last_mrope1) = if is_mrope(&self.cfg.decoder) {
            let (p, last) = self.mrope_start(&id_arr, &mask)?;
            (p.into_dyn(), last)
        } else {
            (positions1.clone().into_dyn(), Vec::new())
        };
        let (logits1, past1) = if in_place {
            // (the buffers hold the prompt and every token the search may add)
            let buffers = self.new_buffers(b, len + params.max_new_tokens)?;
            self.run_decoder_in_place(&embeds, &mask, &positions_in, buffers)?
        } else {
            self.run_decoder(&embeds, &mask, &positions_in, None, len)?
        };
        // Beam search runs on `b * nb` rows, row `r` a copy of item `r / nb` until it diverges:
        // the prompt's outputs are repeated rather than computed `nb` times.
        let nb = params.num_beams;
        let rows = b * nb;
        let item = crate::generation::beam_start_rows(b, nb);
        let (logits, past) = if nb == 1 {
            (logits1, past1)
        } else {
            let idx: Vec<i64> = item.iter().map(|&r| r as i64).collect();
            (
                logits1.select(ndarray::Axis(0), &item),
                self.reorder_past(&past1, &idx)?,
            )
        };
        let mask0 = mask.select(ndarray::Axis(0), &item);
        let last_pos = match len {
            0 => vec![0; rows],
            // each row's last real token (the last column with left padding)
            _ => item
                .iter()
                .map(|&r| positions1.row(r).iter().copied().fold(0, i64::max))
                .collect(),
        };
        // (empty without M-RoPE)
        let last_mrope = if last_mrope1.is_empty() {
            Vec::new()
        } else {
            item.iter().map(|&r| last_mrope1[r]).collect()
        };
        Ok(Start {
            logits,
            cache: DecoderCache {
                past,
                mask: mask0,
                last_pos,
                prompt_len: len,
                last_mrope,
            },
            prompts: if self.cfg.prompt.repetition_penalty_on_prompt {
                ids
            } else {
                vec![Vec::new(); b]
            },
        })
    }

    /// M-RoPE position ids of the start step, one row per prompt, and each row's last column
    /// (the next steps continue from it, as `generate` does).
    fn mrope_start(
        &self,
        ids: &Array2<i64>,
        mask: &Array2<i64>,
    ) -> Result<(Array3<i64>, Vec<[i64; 3]>), ModelError> {
        let grid = self
            .cfg
            .decoder
            .mrope_grid
            .unwrap_or([1, 1, self.cfg.tokens]);
        let image_id = i64::from(self.cfg.prompt.image_token_id);
        let (p, _) = mrope_position_ids(ids, mask, image_id, grid)
            .map_err(|e| run_err(&self.decoder.path, e))?;
        let (b, len) = ids.dim();
        let last = (0..b)
            .map(|r| match len {
                0 => [-1; 3],
                _ => [p[[0, r, len - 1]], p[[1, r, len - 1]], p[[2, r, len - 1]]],
            })
            .collect();
        Ok((p, last))
    }
}

/// Left-padded prompt ids `[B, len]` and their attention mask, as Hugging Face pads
/// decoder-only batches.
fn left_pad(ids: &[Vec<i64>], len: usize, pad: i64) -> (Array2<i64>, Array2<i64>) {
    let mut id_arr = Array2::<i64>::from_elem((ids.len(), len), pad);
    let mut mask = Array2::<i64>::zeros((ids.len(), len));
    for (r, row) in ids.iter().enumerate() {
        let off = len - row.len();
        for (k, &t) in row.iter().enumerate() {
            id_arr[[r, off + k]] = t;
            mask[[r, off + k]] = 1;
        }
    }
    (id_arr, mask)
}

/// What [`DecoderModel`] carries between decoding steps, one row per sequence: the key/value
/// cache (on the decoder's device), the attention mask so far and each row's last position id.
pub struct DecoderCache {
    past: Past,
    mask: Array2<i64>,
    last_pos: Vec<i64>,
    /// Length of the start step (padded prompt): the prefix of a prefix-LM decoder.
    prompt_len: usize,
    /// M-RoPE packages: each row's last (temporal, height, width) position; empty otherwise.
    last_mrope: Vec<[i64; 3]>,
}

impl std::fmt::Debug for DecoderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderCache")
            .field("layers", &self.past.keys.len())
            .field("mask", &self.mask.shape())
            .finish()
    }
}

impl StepDecoder for DecoderModel {
    type Cache = DecoderCache;

    /// Embeds the new tokens, extends the mask and the positions by one and runs the decoder
    /// on the past.
    fn step(
        &mut self,
        cache: DecoderCache,
        tokens: &[i64],
    ) -> Result<(Array2<f32>, DecoderCache), ModelError> {
        let path = self.decoder.path.clone();
        let DecoderCache {
            past,
            mask,
            mut last_pos,
            prompt_len,
            mut last_mrope,
        } = cache;
        let rows = tokens.len();
        let ids =
            Array2::from_shape_vec((rows, 1), tokens.to_vec()).map_err(|e| run_err(&path, e))?;
        let emb = self.embed_tokens(&ids)?;
        let ones = Array2::<i64>::ones((rows, 1));
        let mask = ndarray::concatenate(ndarray::Axis(1), &[mask.view(), ones.view()])
            .map_err(|e| run_err(&path, e))?;
        let mut pos = Array2::<i64>::zeros((rows, 1));
        for (p, last) in pos.iter_mut().zip(last_pos.iter_mut()) {
            *last += 1;
            *p = *last;
        }
        let pos = if last_mrope.is_empty() {
            pos.into_dyn()
        } else {
            // generate: the next position ids are the last column + 1, in each of the three rows.
            let mut m = Array3::<i64>::zeros((3, rows, 1));
            for (r, last) in last_mrope.iter_mut().enumerate() {
                for (d, v) in last.iter_mut().enumerate() {
                    *v += 1;
                    m[[d, r, 0]] = *v;
                }
            }
            m.into_dyn()
        };
        let (logits, past) = match self.cfg.decoder.kv_cache {
            KvCache::Concat => self.run_decoder(&emb, &mask, &pos, Some(&past), prompt_len)?,
            KvCache::InPlace => self.run_decoder_in_place(&emb, &mask, &pos, past)?,
        };
        Ok((
            logits,
            DecoderCache {
                past,
                mask,
                last_pos,
                prompt_len,
                last_mrope,
            },
        ))
    }

    /// Keys and values are gathered on their device by the built-in Gather graph; the mask
    /// and positions on the host.
    fn reorder(
        &mut self,
        cache: DecoderCache,
        source: &[usize],
    ) -> Result<DecoderCache, ModelError> {
        let rows = cache.last_pos.len();
        if let Some(&bad) = source.iter().find(|&&r| r >= rows) {
            return Err(run_err(
                &self.decoder.path.clone(),
                format!("beam reorder: row {bad} of a cache of {rows} rows"),
            ));
        }
        let past = if self.cfg.decoder.kv_cache == KvCache::InPlace && self.cache_on_host {
            // In place, the valid positions of the rows that change only.
            let d = &self.cfg.decoder;
            let mut past = cache.past;
            let lengths: Vec<usize> = cache
                .mask
                .outer_iter()
                .map(|m| usize::try_from(m.sum()).unwrap_or(0).min(past.buffer))
                .collect();
            let dims = [d.kv_heads, past.buffer, d.head_dim];
            for v in past.keys.iter_mut().chain(past.values.iter_mut()) {
                let (_, data) = v
                    .try_extract_tensor_mut::<f32>()
                    .map_err(|e| run_err(&self.decoder.path, e))?;
                if data.len() != rows * dims.iter().product::<usize>() {
                    return Err(run_err(
                        &self.decoder.path,
                        format!("beam reorder: a key/value buffer of {} values for {rows} rows of {dims:?}", data.len()),
                    ));
                }
                reorder_buffer_rows(data, dims, source, &lengths);
            }
            past
        } else {
            let idx: Vec<i64> = source.iter().map(|&r| r as i64).collect();
            self.reorder_past(&cache.past, &idx)?
        };
        Ok(DecoderCache {
            past,
            mask: cache.mask.select(ndarray::Axis(0), source),
            last_pos: source.iter().map(|&r| cache.last_pos[r]).collect(),
            prompt_len: cache.prompt_len,
            last_mrope: if cache.last_mrope.is_empty() {
                Vec::new()
            } else {
                source.iter().map(|&r| cache.last_mrope[r]).collect()
            },
        })
    }

    fn end_token_id(&self) -> i64 {
        i64::from(self.cfg.tok.eos_token_id)
    }

    fn pad_token_id(&self) -> i64 {
        i64::from(self.cfg.tok.pad_token_id)
    }
}

/// Reorders the rows of one `[rows, heads, buffer, head_dim]` key/value buffer in place
/// (`kv_cache = "in-place"` on the host): row `r` takes row `source[r]`'s first
/// `lengths[source[r]]` positions of every head, the only ones a later call reads. Rows that
/// keep their own content are not touched; a row that is read by another one and overwritten
/// itself is saved first. Beam search moves about half the rows per step, and only their
/// valid positions are copied (the Gather graph copies every row's whole buffer).
fn reorder_buffer_rows(
    data: &mut [f32],
    [heads, buffer, head_dim]: [usize; 3],
    source: &[usize],
    lengths: &[usize],
) {
    let row = heads * buffer * head_dim;
    let moved = |r: usize| source[r] != r;
    let mut saved: Vec<(usize, Vec<f32>)> = Vec::new();
    for (r, &s) in source.iter().enumerate() {
        if r != s && moved(s) && !saved.iter().any(|(k, _)| *k == s) {
            let n = lengths[s] * head_dim;
            let mut copy = Vec::with_capacity(heads * n);
            for h in 0..heads {
                let at = s * row + h * buffer * head_dim;
                copy.extend_from_slice(&data[at..at + n]);
            }
            saved.push((s, copy));
        }
    }
    for (r, &s) in source.iter().enumerate() {
        if !moved(r) {
            continue;
        }
        let n = lengths[s] * head_dim;
        let from_saved = saved.iter().find(|(k, _)| *k == s).map(|(_, v)| v);
        for h in 0..heads {
            let to = r * row + h * buffer * head_dim;
            match from_saved {
                Some(v) => data[to..to + n].copy_from_slice(&v[h * n..(h + 1) * n]),
                None => {
                    let at = s * row + h * buffer * head_dim;
                    data.copy_within(at..at + n, to);
                }
            }
        }
    }
}

/// Hugging Face position ids (transformers 5): `cumsum(mask) - 1`, 0 where the mask is 0.
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

/// The prefix-LM mask `[rows, past+T]` (`[decoder] prefix_mask`): the attention mask on the
/// first `prompt_len` columns (image and prompt tokens: one bidirectional block, padding
/// excluded), 0 on the generated tokens after them (causal), as Hugging Face's PaliGemma
/// builds it from `token_type_ids`.
fn prefix_mask(mask: ndarray::ArrayView2<'_, i64>, prompt_len: usize) -> Array2<i64> {
    let mut out = mask.as_standard_layout().to_owned();
    if prompt_len < out.ncols() {
        out.slice_mut(ndarray::s![.., prompt_len..]).fill(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_the_start_step() {
        let mask = ndarray::array![[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]];
        assert_eq!(
            prefix_mask(mask.view(), 3),
            ndarray::array![[0, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
        );
        assert_eq!(prefix_mask(mask.view(), 5), mask);
    }

    #[test]
    fn mrope_positions_follow_get_rope_index() {
        // Row 0: text, a 1x2x2 image, text. Row 1 left-padded by two.
        let i = 9;
        let ids = ndarray::array![[5, 6, i, i, i, i, 7, 8], [0, 0, 5, i, i, i, i, 7]];
        let mask = ndarray::array![[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]];
        let (p, d) = mrope_position_ids(&ids, &mask, i, [1, 2, 2]).expect("positions");
        assert_eq!(
            p,
            ndarray::array![
                [[0, 1, 2, 2, 2, 2, 4, 5], [0, 0, 0, 1, 1, 1, 1, 3]],
                [[0, 1, 2, 2, 3, 3, 4, 5], [0, 0, 0, 1, 1, 2, 2, 3]],
                [[0, 1, 2, 3, 2, 3, 4, 5], [0, 0, 0, 1, 2, 1, 2, 3]],
            ]
        );
        assert_eq!(d, vec![-2, -2]);
        let short = ndarray::array![[5, i, i, i]];
        assert!(mrope_position_ids(&short, &ndarray::array![[1, 1, 1, 1]], i, [1, 2, 2]).is_err());
    }

    #[test]
    fn buffer_rows_reorder_in_place_like_a_gather_of_the_valid_positions() {
        let [heads, buffer, head_dim] = [2, 5, 3];
        let row = heads * buffer * head_dim;
        // (source rows, valid lengths): beams swapping, copying one row into several, cycles
        let cases: [(&[usize], &[usize]); 5] = [
            (&[0, 1, 2], &[4, 4, 4]),
            (&[1, 0, 2], &[3, 3, 5]),
            (&[0, 0, 0, 3, 3, 3], &[2, 2, 2, 5, 5, 5]),
            (&[2, 0, 1, 5, 3, 4], &[4, 4, 4, 1, 1, 1]),
            (&[1, 1, 0, 4, 4, 4], &[5, 5, 5, 3, 3, 3]),
        ];
        for (source, lengths) in cases {
            let rows = source.len();
            let old: Vec<f32> = (0..rows * row).map(|i| i as f32).collect();
            let mut got = old.clone();
            reorder_buffer_rows(&mut got, [heads, buffer, head_dim], source, lengths);
            for (r, &s) in source.iter().enumerate() {
                for h in 0..heads {
                    for p in 0..buffer {
                        for e in 0..head_dim {
                            let at = |row_i: usize| {
                                row_i * row + h * buffer * head_dim + p * head_dim + e
                            };
                            if s == r {
                                assert_eq!(got[at(r)], old[at(r)], "{source:?}: kept row {r}");
                            } else if p < lengths[s] {
                                assert_eq!(got[at(r)], old[at(s)], "{source:?}: row {r} pos {p}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn positions_follow_the_mask() {
        let mask = ndarray::array![[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]];
        assert_eq!(
            positions(&mask),
            ndarray::array![[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
        );
    }
}
