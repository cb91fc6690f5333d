//! Logits processors: changes to one row of next-token scores before a token is chosen, and
//! the beam hypotheses' length-normalised score. They follow Hugging Face transformers 5
//! (`RepetitionPenaltyLogitsProcessor`, `NoRepeatNGramLogitsProcessor`,
//! `MinNewTokensLengthLogitsProcessor`, `ForcedBOSTokenLogitsProcessor`,
//! `ForcedEOSTokenLogitsProcessor`, `_beam_search`'s length penalty).
//!
//! Greedy search processes raw logits, beam search log-probabilities (as Hugging Face does).

use super::GenerationParams;

/// Where a row stands when its next token is chosen.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Position<'a> {
    /// The row's sequence so far without padding: prompt, then generated tokens.
    pub seq: &'a [i64],
    /// Tokens generated so far.
    pub generated: usize,
    /// The batch's prompt width: the longest prompt, what Hugging Face's padded `input_ids`
    /// are long before generation (its `cur_len` is `width + generated`).
    pub width: usize,
}

/// Every processor [`GenerationParams`] asks for, in Hugging Face's order
/// (`_get_logits_processor`): repetition penalty, n-gram blocking, the end-token suppression of
/// `min_new_tokens`, the forced first token, the forced last token. `end` is the end token id.
pub(crate) fn process(scores: &mut [f32], at: Position, params: &GenerationParams, end: i64) {
    repetition_penalty(scores, at.seq, params.repetition_penalty);
    no_repeat_ngram(scores, at.seq, params.no_repeat_ngram_size);
    min_new_tokens(scores, at.generated, params.min_new_tokens, end);
    if let Some(bos) = params.forced_bos_token_id {
        // HF: when `input_ids` is one token long (an encoder-decoder's start token).
        if at.width + at.generated == 1 {
            force(scores, bos);
        }
    }
    if let Some(eos) = params.forced_eos_token_id {
        // HF: at `cur_len == max_length - 1`, `max_length = input length + max_new_tokens`.
        if at.generated + 1 == params.max_new_tokens {
            force(scores, eos);
        }
    }
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

/// Hugging Face's `NoRepeatNGramLogitsProcessor`: the next token may not complete an n-gram
/// of `n` tokens that already occurs in `seq`. Every earlier window of `n` tokens whose first
/// `n - 1` equal the last `n - 1` tokens of `seq` bans its last token (minus infinity); with
/// `n = 1` every token of `seq` is banned. Nothing is banned while `seq` is shorter than `n`;
/// `n = 0` turns it off. Ids outside the vocabulary are ignored.
pub(crate) fn no_repeat_ngram(scores: &mut [f32], seq: &[i64], n: usize) {
    if n == 0 || seq.len() < n {
        return;
    }
    let prefix = &seq[seq.len() + 1 - n..];
    for window in seq.windows(n) {
        if &window[..n - 1] == prefix {
            if let Some(s) = usize::try_from(window[n - 1])
                .ok()
                .and_then(|t| scores.get_mut(t))
            {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// Hugging Face's forced-token processors: every score becomes minus infinity but `token`'s,
/// which becomes 0. A token outside the vocabulary leaves the scores as they are (the search
/// refuses such ids before it starts).
pub(crate) fn force(scores: &mut [f32], token: i64) {
    if let Some(t) = usize::try_from(token).ok().filter(|&t| t < scores.len()) {
        scores.fill(f32::NEG_INFINITY);
        scores[t] = 0.0;
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
    fn no_repeat_ngram_bans_the_tokens_that_would_repeat_a_trigram() {
        // seq 5 6 7 5 6: the suffix (5, 6) was followed by 7 once, so 7 is banned.
        let mut s = [1.0f32; 9];
        no_repeat_ngram(&mut s, &[5, 6, 7, 5, 6], 3);
        let mut want = [1.0f32; 9];
        want[7] = f32::NEG_INFINITY;
        assert_eq!(s, want);
        // (6, 5) never occurred before: nothing banned
        let mut s = [1.0f32; 9];
        no_repeat_ngram(&mut s, &[5, 6, 7, 6, 5], 3);
        assert_eq!(s, [1.0f32; 9]);
        // every earlier continuation of the suffix (1, 1) is banned: windows 112 121 211 113
        // 131 311, of which 112 and 113 start with it
        let mut s = [1.0f32; 9];
        no_repeat_ngram(&mut s, &[1, 1, 2, 1, 1, 3, 1, 1], 3);
        let mut want = [1.0f32; 9];
        want[2] = f32::NEG_INFINITY;
        want[3] = f32::NEG_INFINITY;
        assert_eq!(s, want);
    }

    #[test]
    fn no_repeat_ngram_edge_sizes() {
        // n = 1: every token seen is banned; ids outside the vocabulary are ignored
        let mut s = [1.0f32; 4];
        no_repeat_ngram(&mut s, &[0, 2, 9, 2], 1);
        assert_eq!(s, [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 1.0]);
        // n = 2 bigrams: after 3 came 1 (twice) and 0
        let mut s = [1.0f32; 4];
        no_repeat_ngram(&mut s, &[3, 1, 3, 0, 3, 1, 3], 2);
        assert_eq!(s, [f32::NEG_INFINITY, f32::NEG_INFINITY, 1.0, 1.0]);
        // shorter than n, or off
        let mut s = [1.0f32; 4];
        no_repeat_ngram(&mut s, &[1, 1], 3);
        no_repeat_ngram(&mut s, &[1, 1, 1, 1], 0);
        assert_eq!(s, [1.0f32; 4]);
        // exactly n tokens: (1, 1, 1) occurred, so 1 may not follow the suffix (1, 1)
        let mut s = [1.0f32; 4];
        no_repeat_ngram(&mut s, &[1, 1, 1], 3);
        assert_eq!(s, [1.0, f32::NEG_INFINITY, 1.0, 1.0]);
    }

    fn params() -> GenerationParams {
        GenerationParams {
            max_new_tokens: 4,
            ..GenerationParams::default()
        }
    }

    #[test]
    fn forced_bos_applies_at_the_first_position_of_a_one_token_start_only() {
        let p = GenerationParams {
            forced_bos_token_id: Some(0),
            ..params()
        };
        let inf = f32::NEG_INFINITY;
        let mut s = [0.3, 0.9, -0.2];
        let at = Position {
            seq: &[2],
            generated: 0,
            width: 1,
        };
        process(&mut s, at, &p, 2);
        assert_eq!(s, [0.0, inf, inf]);
        // later positions, and prompts longer than one token, are left alone
        for (seq, generated, width) in [(&[2, 0][..], 1, 1), (&[7, 8][..], 0, 2)] {
            let mut s = [0.3, 0.9, -0.2];
            process(
                &mut s,
                Position {
                    seq,
                    generated,
                    width,
                },
                &p,
                2,
            );
            assert_eq!(s, [0.3, 0.9, -0.2]);
        }
    }

    #[test]
    fn forced_eos_applies_at_the_last_new_token_only() {
        let p = GenerationParams {
            forced_eos_token_id: Some(2),
            ..params()
        };
        let inf = f32::NEG_INFINITY;
        let seq = [7, 8, 1, 1, 1];
        let mut s = [0.3, 0.9, -0.2];
        process(
            &mut s,
            Position {
                seq: &seq,
                generated: 3,
                width: 2,
            },
            &p,
            2,
        );
        assert_eq!(s, [inf, inf, 0.0]);
        let mut s = [0.3, 0.9, -0.2];
        process(
            &mut s,
            Position {
                seq: &seq[..4],
                generated: 2,
                width: 2,
            },
            &p,
            2,
        );
        assert_eq!(s, [0.3, 0.9, -0.2]);
        // the forced end token wins over min_new_tokens and a forced first token (HF's order)
        let p = GenerationParams {
            max_new_tokens: 1,
            min_new_tokens: 1,
            forced_bos_token_id: Some(0),
            forced_eos_token_id: Some(2),
            ..params()
        };
        let mut s = [0.3, 0.9, -0.2];
        process(
            &mut s,
            Position {
                seq: &[2],
                generated: 0,
                width: 1,
            },
            &p,
            2,
        );
        assert_eq!(s, [inf, inf, 0.0]);
        // an id outside the vocabulary changes nothing
        let mut s = [0.3, 0.9];
        force(&mut s, 5);
        force(&mut s, -1);
        assert_eq!(s, [0.3, 0.9]);
    }

    #[test]
    fn processors_run_in_hugging_face_order() {
        // repetition penalty first (on 3 and 4), then the bigram ban of 4 after 3
        let p = GenerationParams {
            repetition_penalty: 2.0,
            no_repeat_ngram_size: 2,
            ..params()
        };
        let mut s = [1.0, 1.0, 1.0, 4.0, -2.0];
        process(
            &mut s,
            Position {
                seq: &[3, 4, 3],
                generated: 1,
                width: 2,
            },
            &p,
            1,
        );
        assert_eq!(s, [1.0, 1.0, 1.0, 2.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn length_penalty_divides_by_a_power_of_the_new_length() {
        assert_eq!(length_normalised(-6.0, 3, 1.0), -2.0);
        assert_eq!(length_normalised(-6.0, 4, 0.0), -6.0);
        assert_eq!(length_normalised(-8.0, 4, 0.5), -4.0);
    }
}
