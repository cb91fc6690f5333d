//! The `model.toml` manifest, tagged by family: `family = "..."` selects the family (in
//! [`super::registry`]) whose typed manifest (the keys every manifest has plus that family's
//! own sections, declared with [`family_manifest!`] in the family's file) parses the text.
//! Unknown keys, and sections of another family, are errors (a typo must not be silently
//! ignored), with the line they are on. The section types families share are here.

use std::any::Any;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A parsed manifest: the keys every family has, the run defaults commands read, and the
/// family's own typed sections ([`Manifest::sections`]).
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Model family, as [`super::registry::FAMILIES`] names it.
    pub family: String,
    /// Informative: `blip2-opt`, `llava-llama`, ...
    pub architecture: Option<String>,
    pub name: String,
    /// False for randomly initialised test models: their answers mean nothing.
    pub trained: bool,
    pub source: Option<String>,
    /// `precision`: the numeric format of the package's graphs (fp32 when absent).
    pub precision: Precision,
    /// `[tiling]`, for the families that take one: defaults for the command line.
    pub tiling: Option<TilingSpec>,
    /// `[generation]`, for the families that take one: default decoding settings.
    pub generation: Option<GenerationSpec>,
    sections: Arc<dyn Sections>,
}

/// The keys every manifest has, whatever its family.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestCommon {
    pub family: String,
    pub architecture: Option<String>,
    pub name: String,
    pub trained: bool,
    pub source: Option<String>,
    pub precision: Precision,
}

/// The numeric format of a package's graphs (`precision = "..."`, top level of `model.toml`),
/// as `tools/export/quantize.py` (and `export.py --int8 / --int4`) record it. Informative for
/// the runner (ONNX Runtime reads the graphs as they are); reported by `models check` and read
/// by whoever compares variants. Which graph got which format, and how far each quantised
/// graph is from its fp32 original, is in the package's `quantization.json`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Precision {
    /// float32 graphs (also what a manifest without `precision` means).
    #[default]
    #[serde(rename = "fp32")]
    Fp32,
    /// float16 weights and compute (float32 inputs and outputs).
    #[serde(rename = "fp16")]
    Fp16,
    /// int8 MatMul/Gemm weights, activations quantised at run time (per batch).
    #[serde(rename = "int8-dynamic")]
    Int8Dynamic,
    /// int8 QDQ graphs with activation scales calibrated on tiles of a scene.
    #[serde(rename = "int8-static")]
    Int8Static,
    /// 4-bit weight-only MatMuls (ONNX Runtime `MatMulNBits`) in the language-model graphs.
    #[serde(rename = "int4")]
    Int4,
}

impl Precision {
    /// The manifest spelling: `fp32`, `fp16`, `int8-dynamic`, `int8-static`, `int4`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8Dynamic => "int8-dynamic",
            Precision::Int8Static => "int8-static",
            Precision::Int4 => "int4",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A family's typed manifest sections (any `'static` value that is `Debug`, `Send` and `Sync`).
pub trait Sections: Any + std::fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + std::fmt::Debug + Send + Sync> Sections for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Manifest {
    /// A manifest of the common keys, the run defaults and a family's sections.
    pub fn new<S: Sections>(
        common: ManifestCommon,
        tiling: Option<TilingSpec>,
        generation: Option<GenerationSpec>,
        sections: S,
    ) -> Manifest {
        Manifest {
            family: common.family,
            architecture: common.architecture,
            name: common.name,
            trained: common.trained,
            source: common.source,
            precision: common.precision,
            tiling,
            generation,
            sections: Arc::new(sections),
        }
    }

    /// The family's typed sections, when they are of type `T` (`None` for a manifest of
    /// another family).
    pub fn sections<T: Any>(&self) -> Option<&T> {
        (*self.sections).as_any().downcast_ref::<T>()
    }

    /// Parse manifest text with the typed manifest of the family it names.
    ///
    /// # Errors
    /// The TOML error, with line and column, on one line; an unknown family (with its line).
    pub fn parse(text: &str) -> Result<Manifest, String> {
        #[derive(Deserialize)]
        struct Head {
            family: toml::Spanned<String>,
        }
        let head: Head = from_toml(text)?;
        match super::registry::family(head.family.get_ref()) {
            Some(family) => family.parse(text),
            None => Err(format!(
                "line {}: {}",
                line_of(text, head.family.span().start),
                super::registry::unknown_family(head.family.get_ref())
            )),
        }
    }
}

/// Deserialize manifest text; the error names its line.
///
/// # Errors
/// The TOML error, with line and column, on one line.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| {
        let msg = e.message().to_string();
        match e.span() {
            Some(span) => format!("line {}: {msg}", line_of(text, span.start)),
            None => msg,
        }
    })
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Declare a family's typed manifest: the struct of its own sections, and
/// `from_toml(text) -> Result<(ManifestCommon, Self), String>`, which parses the common keys
/// (`family`, `architecture`, `name`, `trained`, `source`, `precision`) and those sections and rejects
/// every other key.
macro_rules! family_manifest {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$fmeta:meta])* pub $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            /// Parse manifest text: the common keys and these sections, nothing else.
            ///
            /// # Errors
            /// The TOML error (an unknown key included), with its line.
            pub fn from_toml(
                text: &str,
            ) -> Result<($crate::models::ManifestCommon, $name), String> {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct File {
                    family: String,
                    #[serde(default)]
                    architecture: Option<String>,
                    name: String,
                    #[serde(default)]
                    trained: bool,
                    #[serde(default)]
                    source: Option<String>,
                    #[serde(default)]
                    precision: $crate::models::Precision,
                    $($(#[$fmeta])* $field: $ty,)*
                }
                let f: File = $crate::models::manifest::from_toml(text)?;
                let common = $crate::models::ManifestCommon {
                    family: f.family,
                    architecture: f.architecture,
                    name: f.name,
                    trained: f.trained,
                    source: f.source,
                    precision: f.precision,
                };
                Ok((common, $name { $($field: f.$field,)* }))
            }
        }
    };
}
pub(crate) use family_manifest;

/// Text inputs of a prompted single-graph model (tokenized with `[tokenizer]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptedSpec {
    pub input_ids: String,
    #[serde(default)]
    pub attention_mask: Option<String>,
    /// Detectors: the box output, `[B, N, 4]` normalised `cx, cy, w, h`.
    #[serde(default)]
    pub boxes: Option<String>,
}

/// A single graph with one image input and one output.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GraphSpec {
    pub onnx: String,
    pub input: String,
    pub output: String,
}

/// Detector output decoding.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetectionSpec {
    /// `yolov8`, `yolov5`, `yolox`, or the open-vocabulary `owlvit`, `owlv2`, `grounding-dino`.
    pub format: String,
    pub classes: Vec<String>,
    #[serde(default = "default_confidence")]
    pub confidence: f32,
    #[serde(default = "default_iou")]
    pub iou: f32,
    /// YOLOX head strides.
    #[serde(default)]
    pub strides: Option<Vec<usize>>,
    /// YOLOX: the graph already decodes boxes.
    #[serde(default)]
    pub decoded: bool,
    /// Grounding DINO: text positions whose probability is above this make a box's phrase
    /// (Hugging Face's `text_threshold`).
    #[serde(default)]
    pub text_threshold: Option<f32>,
}

fn default_confidence() -> f32 {
    0.25
}

fn default_iou() -> f32 {
    0.45
}

/// Segmenter output decoding.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegmentationSpec {
    /// `probability` (`[B, 1, H, W]`, P(class 1)), `probabilities` (`[B, C, h, w]`, already
    /// normalised) or `logits` (`[B, C, h, w]`, softmax applied here); `h, w` may be any
    /// fraction of the input size (upsampled bilinearly).
    pub format: String,
    pub classes: Vec<String>,
    /// `probability` format: P(class 1) at or above this is class 1.
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// The background class (by name or index): no polygons are made of it. Binary
    /// (`probability`) models: class 0 unless given; other formats: none unless given.
    #[serde(default)]
    pub background: Option<ClassRef>,
    /// Pixels the output lacks on each side of the input (valid convolutions: a 512 input
    /// gives a 484 output with 14). Inferred when the output is smaller by a size that is
    /// not an integer stride.
    #[serde(default)]
    pub margin: Option<usize>,
}

/// A class named in a manifest: its index or its name.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ClassRef {
    Index(usize),
    Name(String),
}

impl ClassRef {
    /// The class's index among `classes`, or what is wrong.
    ///
    /// # Errors
    /// An index past the classes or a name that is not one of them.
    pub fn resolve(&self, classes: &[String]) -> Result<usize, String> {
        match self {
            ClassRef::Index(i) if *i < classes.len() => Ok(*i),
            ClassRef::Index(i) => Err(format!(
                "class {i} is not one of the {} classes",
                classes.len()
            )),
            ClassRef::Name(n) => classes
                .iter()
                .position(|c| c == n)
                .ok_or_else(|| format!("'{n}' is not one of the classes {classes:?}")),
        }
    }
}

fn default_threshold() -> f32 {
    0.5
}

/// Tiling the model was trained for (defaults for the command line).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TilingSpec {
    /// Ground resolution in metres per pixel.
    #[serde(default)]
    pub gsd: Option<f64>,
    /// Overlap in pixels.
    #[serde(default)]
    pub overlap: Option<usize>,
}

/// The token-embedding graph of a decoder model.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbedSpec {
    pub onnx: String,
    /// int64 `[B, T]`.
    pub input: String,
    /// float32 `[B, T, H]`.
    pub output: String,
}

/// How a decoder graph keeps its key/value cache (`[decoder] kv_cache`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum KvCache {
    /// Every call takes the past `[B, kv_heads, past, head_dim]` and returns it one call longer
    /// (a new tensor); batches are left padded and masked by `attention_mask`.
    #[default]
    Concat,
    /// Every past is a buffer `[B, kv_heads, L, head_dim]` as long as the whole generation,
    /// bound as its own present: the graph (ONNX Runtime's GroupQueryAttention) writes the new
    /// keys and values into it in place. Batches are right padded; `sequence_lengths` gives
    /// each row's length, and the logits are each row's last valid position's.
    InPlace,
}

/// The language decoder graph: one merged graph taking a (possibly empty) past.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecoderSpec {
    pub onnx: String,
    pub inputs_embeds: String,
    /// int64 `[B, past+T]`, 0 on (left) padding: required with `kv_cache = "concat"`.
    #[serde(default)]
    pub attention_mask: Option<String>,
    /// How the key/value cache is kept between steps.
    #[serde(default)]
    pub kv_cache: KvCache,
    /// `kv_cache = "in-place"`: int32 `[B]`, each row's valid length after the call minus one.
    #[serde(default)]
    pub sequence_lengths: Option<String>,
    #[serde(default)]
    pub position_ids: Option<String>,
    pub logits: String,
    /// Input and output name patterns, `{i}` standing for the layer index.
    pub past_key: String,
    pub past_value: String,
    pub present_key: String,
    pub present_value: String,
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    #[serde(default)]
    pub hidden: Option<usize>,
    #[serde(default)]
    pub vocab: Option<usize>,
    /// Longest sequence (prompt + generated tokens) the decoder's positions allow.
    #[serde(default)]
    pub max_positions: Option<usize>,
    /// Prefix-LM decoders (PaliGemma): the input, int64 `[B, past+T]` like the attention
    /// mask, that is 1 on the start step's tokens (image and prompt: they attend to each other
    /// both ways) and 0 on generated tokens (causal).
    #[serde(default)]
    pub prefix_mask: Option<String>,
    /// How position ids are made: absent (or `"linear"`): `[B, T]`, `cumsum(mask) - 1`;
    /// `"mrope"`: Qwen2-VL's multimodal rotary positions `[3, B, T]` (temporal, height, width),
    /// as Hugging Face `get_rope_index`, with the image grid `mrope_grid`.
    #[serde(default)]
    pub positions: Option<String>,
    /// `positions = "mrope"`: the image grid `[t, h, w]` after the patch merger
    /// (`t * h * w` = `image.tokens`).
    #[serde(default)]
    pub mrope_grid: Option<[usize; 3]>,
}

/// How the decoder's input is assembled from the image and the user's prompt.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// `{image}` becomes the image tokens, `{prompt}` the user's prompt.
    pub template: String,
    pub image_token: String,
    pub image_token_id: u32,
    /// Tokenize with the tokenizer's special tokens (BOS) added.
    #[serde(default = "yes")]
    pub add_bos: bool,
    /// The `tokens` image token ids go in front of the tokenized rest of the template (which
    /// must then start with `{image}`), as the BLIP-2 / InstructBLIP processors build
    /// `[image] * P + tokenizer(prompt)`, instead of the whole template being tokenized as one
    /// text (after an added token, a Llama tokenizer would drop the first word's `▁`).
    #[serde(default)]
    pub image_ids_first: bool,
    /// InstructBLIP: the Q-Former's text positions (`[image] qformer_input_ids`); a prompt of
    /// more `[qformer_tokenizer]` tokens is refused.
    #[serde(default)]
    pub max_qformer_tokens: Option<usize>,
    /// Whether the repetition penalty counts the prompt's tokens (Hugging Face `generate` on
    /// `input_ids`) or only the generated ones (`generate(inputs_embeds=...)` alone, as
    /// MiniGPT-4's and MobileVLM's own code call it).
    #[serde(default = "yes")]
    pub repetition_penalty_on_prompt: bool,
}

fn yes() -> bool {
    true
}

/// Default generation settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default)]
    pub min_new_tokens: usize,
    #[serde(default = "one")]
    pub num_beams: usize,
    #[serde(default = "one_f")]
    pub repetition_penalty: f32,
    #[serde(default = "one_f")]
    pub length_penalty: f32,
    /// n-grams of this many tokens occur at most once (0: off); HF `no_repeat_ngram_size`.
    #[serde(default)]
    pub no_repeat_ngram_size: usize,
    /// Beam search stopping: `true`, `false` or `"never"`; HF `early_stopping`.
    #[serde(default)]
    pub early_stopping: crate::generation::EarlyStopping,
    /// The token forced at the first position of a one-token start (encoder-decoders);
    /// HF `forced_bos_token_id`.
    #[serde(default)]
    pub forced_bos_token_id: Option<i64>,
    /// The token forced at the last position (`max_new_tokens`); HF `forced_eos_token_id`.
    #[serde(default)]
    pub forced_eos_token_id: Option<i64>,
}

impl Default for GenerationSpec {
    /// What a manifest without a [generation] section means (the serde defaults).
    fn default() -> Self {
        GenerationSpec {
            max_new_tokens: default_max_new_tokens(),
            min_new_tokens: 0,
            num_beams: one(),
            repetition_penalty: one_f(),
            length_penalty: one_f(),
            no_repeat_ngram_size: 0,
            early_stopping: crate::generation::EarlyStopping::False,
            forced_bos_token_id: None,
            forced_eos_token_id: None,
        }
    }
}

fn default_max_new_tokens() -> usize {
    30
}

fn one() -> usize {
    1
}

fn one_f() -> f32 {
    1.0
}

/// The image encoder graph.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub onnx: String,
    /// `[B, 3, S, S]`: float32 normalised, or (`input_type = "uint8"`) raw RGB bytes.
    pub input: String,
    /// What the image input takes: `float32` (normalised by tessera) or `uint8` (raw 0..255
    /// bytes, the normalisation inside the graph: 4x less data per tile; CLIP encoders).
    #[serde(default)]
    pub input_type: InputType,
    /// float32 `[B, D]`.
    pub output: String,
    /// Image tokens per image (decoder models: the prefix length).
    #[serde(default)]
    pub tokens: Option<usize>,
    /// Image-text decoders with an instruction-aware Q-Former (InstructBLIP): int64 `[B, Lq]`
    /// input, the prompt's `[qformer_tokenizer]` ids (right padded).
    #[serde(default)]
    pub qformer_input_ids: Option<String>,
    /// int64 `[B, Lq]` input, the mask of `qformer_input_ids`.
    #[serde(default)]
    pub qformer_attention_mask: Option<String>,
}

/// Element type of an image input.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    #[default]
    Float32,
    Uint8,
}

impl InputType {
    /// The ONNX element type name, as the session reports it.
    pub fn dtype(self) -> &'static str {
        match self {
            InputType::Float32 => "float32",
            InputType::Uint8 => "uint8",
        }
    }
}

/// The text encoder graph.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    pub onnx: String,
    /// int64 `[B, L]`.
    pub input_ids: String,
    /// int64 `[B, L]`, when the graph takes one.
    #[serde(default)]
    pub attention_mask: Option<String>,
    /// float32 `[B, D]`.
    pub output: String,
}

/// Image preprocessing: pixel `v` in `[0, value_range]` becomes `(v / value_range - mean) / std`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Square input size in pixels.
    #[serde(deserialize_with = "crate::options::de::input_size")]
    pub size: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// `rgb` or `bgr`.
    #[serde(default = "default_channel_order")]
    pub channel_order: String,
    #[serde(default = "default_value_range")]
    pub value_range: f32,
}

fn default_channel_order() -> String {
    "rgb".into()
}

fn default_value_range() -> f32 {
    255.0
}

/// Tokenizer settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    pub file: String,
    /// Text encoders: pad/truncate to this length (0: not used).
    #[serde(default)]
    pub context_length: usize,
    pub pad_token_id: u32,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    pub eos_token_id: u32,
}

/// Score scaling.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scores {
    /// Multiplier of cosine similarities (the checkpoint's `exp(logit_scale)`).
    pub logit_scale: f32,
    /// Added to the scaled cosine before the sigmoid of sigmoid-scored families (SigLIP's
    /// `logit_bias`); refused by softmax families.
    #[serde(default)]
    pub logit_bias: Option<f32>,
}

/// A package's default prompt ensemble (`[prompts]`): the templates its authors published,
/// used when the user gives none.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptsSpec {
    /// Each with `{}` where the label goes.
    pub templates: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
family = "clip"
name = "t"
[image]
onnx = "i.onnx"
input = "pixel_values"
output = "image_embeds"
[preprocess]
size = 64
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
"#;

    #[test]
    fn parses_and_defaults() {
        let m = Manifest::parse(GOOD).expect("parse");
        assert_eq!(m.family, "clip");
        assert!(!m.trained);
        let clip = m
            .sections::<crate::models::dual_encoder::DualEncoderManifest>()
            .expect("clip sections");
        let p = clip.preprocess.clone().expect("preprocess");
        assert_eq!(p.channel_order, "rgb");
        assert_eq!(p.value_range, 255.0);
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_line() {
        let typo = GOOD.replace("output = \"image_embeds\"", "outptu = \"image_embeds\"");
        let err = Manifest::parse(&typo).expect_err("typo");
        assert!(err.contains("line 7") && err.contains("outptu"), "{err}");
        let bad = GOOD.replace("size = 64", "size = \"big\"");
        let err = Manifest::parse(&bad).expect_err("type");
        assert!(err.contains("line 9"), "{err}");
    }

    #[test]
    fn precision_defaults_to_fp32_and_names_a_bad_value() {
        assert_eq!(
            Manifest::parse(GOOD).expect("parse").precision,
            Precision::Fp32
        );
        for (text, want) in [
            ("int8-dynamic", Precision::Int8Dynamic),
            ("int8-static", Precision::Int8Static),
            ("int4", Precision::Int4),
            ("fp16", Precision::Fp16),
        ] {
            let m = Manifest::parse(&GOOD.replace(
                "name = \"t\"",
                &format!("name = \"t\"\nprecision = \"{text}\""),
            ))
            .expect(text);
            assert_eq!(m.precision, want);
            assert_eq!(m.precision.to_string(), text);
        }
        let err =
            Manifest::parse(&GOOD.replace("name = \"t\"", "name = \"t\"\nprecision = \"int3\""))
                .expect_err("bad precision");
        assert!(err.contains("line 4") && err.contains("int3"), "{err}");
    }

    #[test]
    fn the_family_selects_the_sections() {
        let err = Manifest::parse(&GOOD.replace("\"clip\"", "\"clap\"")).expect_err("family");
        assert_eq!(
            err,
            "line 2: unknown model family 'clap' (known: clip, openclip, siglip, flava, \
             chinese-clip, image-text-decoder, cross-attention-decoder, segmenter, detector, \
             promptable-segmenter)"
        );
        // A section of another family is an unknown key.
        let err = Manifest::parse(&format!("{GOOD}[segmentation]\nformat = \"logits\"\n"))
            .expect_err("foreign section");
        assert!(
            err.contains("line 12") && err.contains("unknown field `segmentation`"),
            "{err}"
        );
        let m = Manifest::parse(GOOD).expect("parse");
        assert!(m
            .sections::<crate::models::segmentation::SegmenterManifest>()
            .is_none());
    }

    #[test]
    fn every_shipped_manifest_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["sample_data/models", "sample_data/models/oracles"] {
            for e in std::fs::read_dir(root.join(dir)).expect("models").flatten() {
                files.push(e.path().join("model.toml"));
            }
        }
        for e in std::fs::read_dir(root.join("tools/fixtures/manifests"))
            .expect("fixtures")
            .flatten()
        {
            files.push(e.path());
        }
        let mut parsed = 0;
        for f in files.iter().filter(|f| f.is_file()) {
            let text = std::fs::read_to_string(f).expect("read");
            let m = Manifest::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(crate::models::registry::family(&m.family).is_some());
            parsed += 1;
        }
        assert!(parsed >= 10, "{parsed} manifests");
    }
}
