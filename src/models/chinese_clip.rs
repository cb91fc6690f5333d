//! Chinese-CLIP (Yang et al. 2022, "Chinese CLIP: Contrastive Vision-Language Pretraining in
//! Chinese"; Hugging Face `ChineseCLIPModel`), exported by `tools/export/export.py
//! chinese-clip`: CLIP's softmax scoring with a BERT (WordPiece, per-character for Chinese)
//! text encoder pooled at `[CLS]`. Labels and templates are Chinese (`--labels "森林,水体,城市"`);
//! the default ensemble below is used when neither the user nor the package gives templates.
//! The code is shared by every dual encoder: [`super::dual_encoder`].

use super::dual_encoder::{DualEncoderFamily, DualEncoderKind, Scoring};

/// The family name in `model.toml`.
pub const FAMILY: &str = "chinese-clip";

/// Eight of the 24 templates Chinese-CLIP's authors published for zero-shot EuroSAT
/// (OFA-Sys/Chinese-CLIP, `cvinw_zeroshot_templates.py`): "a (high-definition, clear) satellite
/// photo / image of {}". `export.py chinese-clip` writes all 24 as the package's `[prompts]`;
/// these serve packages without that section.
pub const DEFAULT_TEMPLATES: &[&str] = &[
    "一张{}的卫星照片",
    "{}的卫星照片",
    "一张{}的高清卫星照片",
    "一张{}的清晰的卫星照片",
    "一张{}的卫星图",
    "{}的卫星图",
    "一张{}的卫星图片",
    "{}的卫星图片",
];

/// The Chinese-CLIP family ([`super::registry`]).
pub static CHINESE_CLIP: DualEncoderFamily = DualEncoderFamily(DualEncoderKind {
    family: FAMILY,
    display: "Chinese-CLIP",
    scoring: Scoring::Softmax,
    tokenizer_models: &["WordPiece"],
    default_templates: DEFAULT_TEMPLATES,
});
