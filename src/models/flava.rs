//! FLAVA (Singh et al. 2022, "FLAVA: A Foundational Language And Vision Alignment Model";
//! Hugging Face `FlavaModel`), exported by `tools/export/export.py flava`: the contrastive
//! embeddings (projected CLS tokens of its image and text encoders), softmax of
//! `logit_scale * cos`, BERT WordPiece text with an attention mask.
//! The code is shared by every dual encoder: [`super::dual_encoder`].

use super::dual_encoder::{DualEncoderFamily, DualEncoderKind, Scoring, DEFAULT_TEMPLATES};

/// The family name in `model.toml`.
pub const FAMILY: &str = "flava";

/// The FLAVA family ([`super::registry`]).
pub static FLAVA: DualEncoderFamily = DualEncoderFamily(DualEncoderKind {
    family: FAMILY,
    display: "FLAVA",
    scoring: Scoring::Softmax,
    tokenizer_models: &["WordPiece"],
    default_templates: DEFAULT_TEMPLATES,
});
