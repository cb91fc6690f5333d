//! CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
//! Supervision"; upstream openai/CLIP, Hugging Face `CLIPModel`), exported by
//! `tools/export/export.py clip`: softmax over labels of `logit_scale * cos`, BPE text.
//! The code is shared by every dual encoder: [`super::dual_encoder`].

use super::dual_encoder::{DualEncoderFamily, DualEncoderKind, Scoring, DEFAULT_TEMPLATES};

/// The family name in `model.toml`.
pub const FAMILY: &str = "clip";

/// The CLIP family ([`super::registry`]).
pub static CLIP: DualEncoderFamily = DualEncoderFamily(DualEncoderKind {
    family: FAMILY,
    display: "CLIP",
    scoring: Scoring::Softmax,
    tokenizer_models: &["BPE"],
    default_templates: DEFAULT_TEMPLATES,
});
