//! Logits processors: changes to one row of next-token scores before a token is chosen, and
//! the beam hypotheses' length-normalised score. They follow Hugging Face transformers 5
//! (`RepetitionPenaltyLogitsProcessor`, `MinNewTokensLengthLogitsProcessor`, `BeamSearchScorer`).
//!
//! Greedy search processes raw logits, beam search log-probabilities (as Hugging Face does).

use super::GenerationParams;

/// Every processor [`GenerationParams`] asks for, in Hugging Face's order: repetition penalty,
/// then the end-token suppression of `min_new_tokens`.
///
/// `seq` is the row's sequence so far without padding (prompt and generated tokens),
/// `generated` the number of tokens generated so far, `end` the end token id.
pub(crate) fn process(
    scores: &mut [f32],
    seq: &[i64],
    generated: usize,
    params: &GenerationParams,
    end: i64,
) {
    repetition_penalty(scores, seq, params.repetition_penalty);
    min_new_tokens(scores, generated, params.min_new_tokens, end);
}

/// Keskar et al. 2019 (CTRL) repetition penalty: the score of every distinct token of `seq`
/// is divided by `penalty` where positive and multiplied by it where negative. Ids outside the
/// vocabulary are ignored; a penalty of 1 changes nothing.
pub(crate) fn repetition_penalty(scores: &mut [f32], seq: &[i64], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::BTreeSet::new();
    for &t in seq {
        if t >= 0 && (t as usize) < scores.len() && seen.insert(t) {
            let s = &mut scores[t as usize];
            *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
        }
    }
}

/// The end token cannot be chosen while fewer than `min_new_tokens` tokens are generated
/// (its score becomes minus infinity). An end id outside the vocabulary is ignored.
pub(crate) fn min_new_tokens(
    scores: &mut [f32],
    generated: usize,
    min_new_tokens: usize,
    end: i64,
) {
    if generated < min_new_tokens {
        if let Some(s) = usize::try_from(end).ok().and_then(|e| scores.get_mut(e)) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// A beam hypothesis' score: `sum_logprobs / new_len ^ length_penalty`, where `new_len`
/// counts the generated tokens (Hugging Face's `_beam_search` with decoder prompts excluded).
/// A penalty above 0 favours longer hypotheses, below 0 shorter ones.
pub(crate) fn length_normalised(sum_logprobs: f32, new_len: usize, length_penalty: f32) -> f32 {
    sum_logprobs / (new_len as f32).powf(length_penalty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_pushes_seen_tokens_down_once() {
        let mut s = [2.0, -2.0, 1.0];
        repetition_penalty(&mut s, &[0, 1, 0, 7, -1], 2.0);
        assert_eq!(s, [1.0, -4.0, 1.0]);
        let mut s = [2.0, -2.0];
        repetition_penalty(&mut s, &[0, 1], 1.0);
        assert_eq!(s, [2.0, -2.0]);
    }

    #[test]
    fn min_new_tokens_suppresses_the_end_token_only_until_reached() {
        let mut s = [0.5, 0.7];
        min_new_tokens(&mut s, 1, 2, 1);
        assert_eq!(s, [0.5, f32::NEG_INFINITY]);
        let mut s = [0.5, 0.7];
        min_new_tokens(&mut s, 2, 2, 1);
        assert_eq!(s, [0.5, 0.7]);
        min_new_tokens(&mut s, 0, 2, 9);
        assert_eq!(s, [0.5, 0.7]);
    }

    #[test]
    fn length_penalty_divides_by_a_power_of_the_new_length() {
        assert_eq!(length_normalised(-6.0, 3, 1.0), -2.0);
        assert_eq!(length_normalised(-6.0, 4, 0.0), -6.0);
        assert_eq!(length_normalised(-8.0, 4, 0.5), -4.0);
    }
}
