//! Token generation, independent of any one model: the searches and logits processors that
//! reproduce Hugging Face `generate`.

pub(crate) mod logits;
pub(crate) mod math;

use crate::models::GenerationSpec;

/// Decoding settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GenerationParams {
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    pub num_beams: usize,
    pub repetition_penalty: f32,
    pub length_penalty: f32,
}

impl From<&GenerationSpec> for GenerationParams {
    fn from(g: &GenerationSpec) -> Self {
        GenerationParams {
            max_new_tokens: g.max_new_tokens,
            min_new_tokens: g.min_new_tokens,
            num_beams: g.num_beams,
            repetition_penalty: g.repetition_penalty,
            length_penalty: g.length_penalty,
        }
    }
}
