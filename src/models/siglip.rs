//! SigLIP and SigLIP2 (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training";
//! Tschannen et al. 2025; Hugging Face `SiglipModel`, which the fixed-resolution SigLIP2
//! checkpoints are too: `Siglip2Model` is the NaFlex variant, whose patch-sequence input the
//! exporter refuses), exported by `tools/export/export.py siglip|siglip2`: each label scored on
//! its own, `sigmoid(logit_scale * cos + logit_bias)`, so a tile can be "forest" and "river" at
//! once (`classes.tif` keeps the best label, `probabilities.tif` every label's sigmoid). Text is
//! padded to 64 tokens with the pad token and no attention mask, as SigLIP was trained (the
//! text tower pools the last position): SigLIP's sentencepiece Unigram vocabulary (text
//! lowercased, ASCII punctuation removed, `</s>` appended, padded with `</s>`) or SigLIP2's
//! Gemma BPE one (lowercased, `<eos>` appended, padded with `<pad>`), both in `tokenizer.json`.
//! The code is shared by every dual encoder: [`super::dual_encoder`].

use super::dual_encoder::{DualEncoderFamily, DualEncoderKind, Scoring, DEFAULT_TEMPLATES};

/// The family name in `model.toml`.
pub const FAMILY: &str = "siglip";

/// The SigLIP family ([`super::registry`]).
pub static SIGLIP: DualEncoderFamily = DualEncoderFamily(DualEncoderKind {
    family: FAMILY,
    display: "SigLIP",
    scoring: Scoring::Sigmoid,
    tokenizer_models: &["Unigram", "BPE"],
    default_templates: DEFAULT_TEMPLATES,
});
