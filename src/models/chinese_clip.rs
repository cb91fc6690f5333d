//! Chinese-CLIP (Yang et al. 2022, "Chinese CLIP: Contrastive Vision-Language Pretraining in
//! Chinese"; Hugging Face `ChineseCLIPModel`), exported by `tools/export/export.py
//! chinese-clip`: CLIP's softmax scoring with a BERT (WordPiece, per-character for Chinese)
//! text encoder pooled at `[CLS]`. Labels and templates are Chinese (`--labels "森林,水体,城市"`);
//! the default ensemble below is used when neither the user nor the package gives templates.
//! The code is shared by every dual encoder: [`super::dual_encoder`].

use super::dual_encoder::{DualEncoderFamily, DualEncoderKind, Scoring};

/// The family name in `model.toml`.
pub const FAMILY: &str = "chinese-clip";

/// Remote-sensing phrasings in Chinese ("a satellite image of {}", "an aerial photo of {}",
/// "remote sensing imagery of {}", "a top-down view of {}").
pub const DEFAULT_TEMPLATES: &[&str] = &[
    "一张{}的卫星图像。",
    "一张{}的航拍照片。",
    "{}的遥感影像。",
    "{}的俯视图。",
];

/// The Chinese-CLIP family ([`super::registry`]).
pub static CHINESE_CLIP: DualEncoderFamily = DualEncoderFamily(DualEncoderKind {
    family: FAMILY,
    display: "Chinese-CLIP",
    scoring: Scoring::Softmax,
    tokenizer_models: &["WordPiece"],
    default_templates: DEFAULT_TEMPLATES,
});
