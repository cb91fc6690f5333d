//! Token generation, independent of any one model: greedy and beam search and the logits
//! processors, reproducing Hugging Face `generate` (transformers 5) token for token.
//!
//! A model takes part by implementing [`StepDecoder`] (one decoding step over a cache, and the
//! reordering of that cache between beams) and by producing a [`Start`] from its own inputs;
//! [`generate`] then runs the search that [`GenerationParams`] asks for:
//!
//! - greedy search (`num_beams = 1`): the best processed logit of every row, rows that
//!   produced the end token continue with the pad token until every row has ended;
//! - beam search (`num_beams > 1`, Hugging Face `_beam_search`): log-softmax, logits
//!   processors on the log-probabilities, the top `2 * num_beams` continuations of each item,
//!   finished hypotheses scored by `sum_logprobs / new_len ^ length_penalty`, stopping as
//!   [`EarlyStopping`] says;
//! - logits processors (module `logits`), in Hugging Face's order: repetition penalty, n-gram
//!   blocking (`no_repeat_ngram_size`), the end-token suppression of `min_new_tokens`, the
//!   forced first token (`forced_bos_token_id`) and the forced last token
//!   (`forced_eos_token_id`).

mod logits;
mod math;
mod search;

pub use search::{generate, generate_scored};

use ndarray::Array2;

use crate::models::{GenerationSpec, ModelError};

/// Decoding settings (Hugging Face `GenerationConfig` names and meanings).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GenerationParams {
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    pub num_beams: usize,
    pub repetition_penalty: f32,
    pub length_penalty: f32,
    /// Every n-gram of this many tokens occurs at most once in a sequence (prompt included);
    /// 0: no blocking.
    pub no_repeat_ngram_size: usize,
    /// When beam search stops.
    pub early_stopping: EarlyStopping,
    /// The token every sequence's first position is forced to, where the sequence starts from
    /// a single token (an encoder-decoder's decoder start token).
    pub forced_bos_token_id: Option<i64>,
    /// The token the last position (`max_new_tokens`) is forced to.
    pub forced_eos_token_id: Option<i64>,
}

impl From<&GenerationSpec> for GenerationParams {
    fn from(g: &GenerationSpec) -> Self {
        GenerationParams {
            max_new_tokens: g.max_new_tokens,
            min_new_tokens: g.min_new_tokens,
            num_beams: g.num_beams,
            repetition_penalty: g.repetition_penalty,
            length_penalty: g.length_penalty,
            no_repeat_ngram_size: g.no_repeat_ngram_size,
            early_stopping: g.early_stopping,
            forced_bos_token_id: g.forced_bos_token_id,
            forced_eos_token_id: g.forced_eos_token_id,
        }
    }
}

impl Default for GenerationParams {
    /// The settings of a manifest without a `[generation]` section.
    fn default() -> Self {
        GenerationParams::from(&GenerationSpec::default())
    }
}

/// Hugging Face's `early_stopping` for beam search: when an item is done.
///
/// - `False` (the default): an item is done when its best running beam, scored with the
///   length penalty at its current length, cannot beat its worst finished hypothesis, once it
///   has `num_beams` of them;
/// - `True`: also done as soon as it has `num_beams` finished hypotheses (no later hypothesis
///   may enter them then), and the search stops when every item is;
/// - `Never`: as `False`, but with a positive length penalty the running beam is scored at
///   the longest length it could reach (`max_new_tokens`), so the search runs longer.
///
/// Written `true`, `false` or `"never"` in `model.toml` and pipeline files, and
/// `--early-stopping true|false|never` on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EarlyStopping {
    #[default]
    False,
    True,
    Never,
}

impl std::str::FromStr for EarlyStopping {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "false" => Ok(EarlyStopping::False),
            "true" => Ok(EarlyStopping::True),
            "never" => Ok(EarlyStopping::Never),
            _ => Err(format!("early stopping is true, false or never, not '{s}'")),
        }
    }
}

impl std::fmt::Display for EarlyStopping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EarlyStopping::False => "false",
            EarlyStopping::True => "true",
            EarlyStopping::Never => "never",
        })
    }
}

impl serde::Serialize for EarlyStopping {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EarlyStopping::False => s.serialize_bool(false),
            EarlyStopping::True => s.serialize_bool(true),
            EarlyStopping::Never => s.serialize_str("never"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Bool(bool),
            Text(String),
        }
        match Repr::deserialize(d)
            .map_err(|_| serde::de::Error::custom("early_stopping is true, false or \"never\""))?
        {
            Repr::Bool(false) => Ok(EarlyStopping::False),
            Repr::Bool(true) => Ok(EarlyStopping::True),
            Repr::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Why a search stopped without a result.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// Settings the search cannot run with (no beams, no new tokens), or a [`Start`] or step
    /// whose logits do not have `batch * num_beams` rows.
    #[error("{0}")]
    Invalid(String),
    /// The model's step or reorder failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A model that extends a batch of token sequences by one token per call: the one thing a
/// decoder (decoder-only, encoder-decoder, cross-attention) implements to get greedy and beam
/// search from [`generate`].
///
/// # Rows
///
/// A search runs on `rows = batch * num_beams` sequences, and that number never changes during
/// the search. Row `i * num_beams + k` is beam `k` of batch item `i`; greedy search has one
/// row per item. All beams of an item start from the same prompt.
///
/// # The cache, and who owns it
///
/// [`Cache`](StepDecoder::Cache) is everything the model carries from one step to the next:
/// the past keys and values (kept as ONNX Runtime values on the decoder's device, not copied
/// to the host), the attention mask and position ids so far, encoder outputs for cross
/// attention. Every part of it is per row. The search never looks inside: it owns the cache
/// between calls and moves it into [`step`](StepDecoder::step) and
/// [`reorder`](StepDecoder::reorder), which consume it and hand back the next one (drop what
/// is no longer needed; there is no other release call).
///
/// # How a search drives a model
///
/// 1. The model's own start step, outside this trait because its inputs differ from model to
///    model (pixels and prompts, encoder outputs, a decoder start token), runs the whole prompt
///    on the `rows` rows and returns a [`Start`]: the logits after the last prompt position,
///    the cache holding the prompt, and each item's prompt token ids.
///    `DecoderModel::start` in `models::decoder` is the example.
/// 2. The search chooses one token per row from the logits.
/// 3. Beam search only: the surviving beams may come from other beams of the same item, so
///    the search calls [`reorder`](StepDecoder::reorder) with, for each new row, the row it
///    continues.
/// 4. The search calls [`step`](StepDecoder::step) with the chosen tokens and repeats from 2
///    until every row has ended or `max_new_tokens` tokens are generated. It does not step
///    after the last token, so a search with `max_new_tokens = n` makes at most `n - 1` steps.
///
/// # Errors
///
/// Both methods return [`ModelError`]; the search stops at the first one and returns it.
pub trait StepDecoder {
    /// The model's per-row state between steps (see the trait's documentation).
    type Cache;

    /// Feeds one token per row and returns the logits of the next position together with the
    /// cache extended by the fed position.
    ///
    /// `tokens` holds `rows` ids: the token the search chose for each row at the previous
    /// step (greedy rows that have already ended get [`pad_token_id`](Self::pad_token_id),
    /// and must still be stepped). The logits are raw (before softmax and before any logits
    /// processor), `[rows, vocab]`, row `r` for sequence `r`; the search normalises and
    /// processes them itself.
    fn step(
        &mut self,
        cache: Self::Cache,
        tokens: &[i64],
    ) -> Result<(Array2<f32>, Self::Cache), ModelError>;

    /// Reorders the cache's rows for beam search: row `r` of the result is row `source[r]`
    /// of `cache` (a gather along the row axis; a row may be taken several times or not at
    /// all). `source` has `rows` entries, each one a row of the same item
    /// (`source[r] / num_beams == r / num_beams`). Every per-row part of the cache moves:
    /// past keys and values, attention mask, positions. Greedy search never calls it.
    fn reorder(&mut self, cache: Self::Cache, source: &[usize]) -> Result<Self::Cache, ModelError>;

    /// The end-of-sequence token id: a row that produces it has ended (it is kept as the
    /// row's last generated token). Suppressed while fewer than `min_new_tokens` are
    /// generated.
    fn end_token_id(&self) -> i64;

    /// The padding token id, fed to greedy rows that have already ended.
    fn pad_token_id(&self) -> i64;
}

/// One item's generated tokens with the log-probability the search chose each with.
///
/// `logprobs[t]` belongs to `tokens[t]`: the log-softmax of the processed scores of its step
/// (Hugging Face `compute_transition_scores(sequences, scores, beam_indices,
/// normalize_logits=True)` for greedy search, `compute_transition_scores(sequences, scores,
/// beam_indices)` for beam search, whose scores are processed log-probabilities already). A
/// forced token has log-probability 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
}

/// The item each of the `items * beams` rows of a beam search starts as a copy of (`r / beams`):
/// a start step runs the prompt once per item and repeats its outputs with this row map.
pub fn beam_start_rows(items: usize, beams: usize) -> Vec<usize> {
    (0..items * beams).map(|r| r / beams).collect()
}

/// What a model's start step hands to [`generate`]: the prompt has been run, the first
/// new token is still to be chosen.
#[derive(Debug)]
pub struct Start<C> {
    /// Raw logits after each row's last prompt position, `[batch * num_beams, vocab]`, rows
    /// ordered as in [`StepDecoder`] (row `i * num_beams + k` is beam `k` of item `i`).
    pub logits: Array2<f32>,
    /// The cache after the prompt, for the first [`StepDecoder::step`].
    pub cache: C,
    /// Each item's prompt token ids without padding (`batch` entries, so this also gives the
    /// batch size): what the repetition penalty and the n-gram blocking count as already in
    /// the sequence besides the generated tokens. For an encoder-decoder, the decoder's start
    /// tokens (then a forced first token applies).
    pub prompts: Vec<Vec<i64>>,
}

#[cfg(test)]
mod tests {
    use super::beam_start_rows;

    #[test]
    fn beam_start_rows_repeat_each_item_for_its_beams() {
        assert_eq!(beam_start_rows(3, 2), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(beam_start_rows(2, 1), vec![0, 1]);
        assert!(beam_start_rows(0, 3).is_empty());
    }
}
