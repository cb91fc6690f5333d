//! Token generation, independent of any one model: the searches and logits processors that
//! reproduce Hugging Face `generate`.

pub(crate) mod math;
