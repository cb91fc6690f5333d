//! The `model.toml` manifest. Unknown keys are errors (a typo must not be silently ignored).

use serde::{Deserialize, Serialize};

/// The whole manifest.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Model family: `clip` or `image-text-decoder`.
    pub family: String,
    /// Informative: `blip2-opt`, `llava-llama`, ...
    #[serde(default)]
    pub architecture: Option<String>,
    pub name: String,
    /// False for randomly initialised test models: their answers mean nothing.
    #[serde(default)]
    pub trained: bool,
    #[serde(default)]
    pub source: Option<String>,
    pub image: Option<ImageSpec>,
    pub text: Option<TextSpec>,
    pub preprocess: Option<Preprocess>,
    pub tokenizer: Option<TokenizerSpec>,
    pub scores: Option<Scores>,
    pub embed: Option<EmbedSpec>,
    pub decoder: Option<DecoderSpec>,
    pub prompt: Option<PromptSpec>,
    pub generation: Option<GenerationSpec>,
    /// Single-graph models (detectors, segmenters).
    pub model: Option<GraphSpec>,
    pub detection: Option<DetectionSpec>,
    pub segmentation: Option<SegmentationSpec>,
    pub tiling: Option<TilingSpec>,
    /// Text-prompted single-graph models (CLIPSeg, OWL-ViT): the graph's text inputs.
    pub prompted: Option<PromptedSpec>,
}

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
    /// `yolov8`, `yolov5` or `yolox`.
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

/// The language decoder graph: one merged graph taking a (possibly empty) past.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecoderSpec {
    pub onnx: String,
    pub inputs_embeds: String,
    pub attention_mask: String,
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
    /// Multiplier of cosine similarities before the softmax (CLIP's `exp(logit_scale)`).
    pub logit_scale: f32,
}

impl Manifest {
    /// Parse manifest text.
    ///
    /// # Errors
    /// The TOML error, with line and column, on one line.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {msg}")
                }
                None => msg,
            }
        })
    }
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
        let p = m.preprocess.expect("preprocess");
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
}
