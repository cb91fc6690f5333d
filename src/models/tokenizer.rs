//! Tokenizers of the text side of a model: `tokenizer.json` loading, and prompts turned into
//! fixed-length token ids and attention masks (shared by every family that reads text).

use std::path::Path;

use super::{ModelError, TokenizerSpec};

pub(crate) fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer, ModelError> {
    let err = |reason: String| ModelError::Tokenizer {
        path: path.display().to_string(),
        reason,
    };
    if !path.is_file() {
        return Err(err("no such file".into()));
    }
    let mut t = tokenizers::Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
    // Padding and truncation are done here, to the manifest's context length.
    t.with_padding(None);
    t.with_truncation(None).map_err(|e| err(e.to_string()))?;
    Ok(t)
}

/// Token ids and attention mask of a batch of prompts, `[N, L]` row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub rows: usize,
    pub context: usize,
}

/// Tokenize prompts as Hugging Face's CLIP tokenizers do with `padding="max_length",
/// truncation=True`: special tokens added, cut to `tok.context_length` keeping the end token
/// last, padded with the pad id. `file` names the tokenizer in errors.
///
/// # Errors
/// The tokenizer failing on a prompt.
pub fn tokenize_prompts(
    tokenizer: &tokenizers::Tokenizer,
    tok: &TokenizerSpec,
    file: &Path,
    prompts: &[String],
) -> Result<Tokens, ModelError> {
    let l = tok.context_length;
    let pad = i64::from(tok.pad_token_id);
    let eos = i64::from(tok.eos_token_id);
    let mut ids = vec![pad; prompts.len() * l];
    let mut mask = vec![0i64; prompts.len() * l];
    for (row, prompt) in prompts.iter().enumerate() {
        let enc = tokenizer
            .encode(prompt.as_str(), true)
            .map_err(|e| ModelError::Tokenizer {
                path: file.display().to_string(),
                reason: format!("'{prompt}': {e}"),
            })?;
        let toks = enc.get_ids();
        let n = toks.len().min(l);
        for (k, &t) in toks.iter().take(n).enumerate() {
            ids[row * l + k] = i64::from(t);
            mask[row * l + k] = 1;
        }
        if toks.len() > l {
            ids[row * l + l - 1] = eos;
        }
    }
    Ok(Tokens {
        ids,
        mask,
        rows: prompts.len(),
        context: l,
    })
}
