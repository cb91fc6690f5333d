//! OpenCLIP checkpoints (Cherti et al. 2023, mlfoundations/open_clip), among them the
//! remote-sensing models RemoteCLIP, GeoRSCLIP and SkyCLIP, exported from their checkpoint
//! files by `tools/export/export.py openclip --arch NAME --from FILE`: CLIP's softmax scoring
//! and BPE vocabulary; the text graph takes no attention mask (OpenCLIP pads with 0 and pools
//! at the end token). A package's `[prompts]` carry the templates its authors published.
//! The code is shared by every dual encoder: [`super::dual_encoder`].

use super::dual_encoder::{DualEncoderFamily, DualEncoderKind, Scoring, DEFAULT_TEMPLATES};

/// The family name in `model.toml`.
pub const FAMILY: &str = "openclip";

/// The OpenCLIP family ([`super::registry`]).
pub static OPENCLIP: DualEncoderFamily = DualEncoderFamily(DualEncoderKind {
    family: FAMILY,
    display: "OpenCLIP",
    scoring: Scoring::Softmax,
    tokenizer_models: &["BPE"],
    default_templates: DEFAULT_TEMPLATES,
});
