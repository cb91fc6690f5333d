//! Greedy and beam search over any [`StepDecoder`].

use ndarray::Array2;

use super::logits::{length_normalised, process, Position};
use super::math::{argmax, log_softmax, log_softmax_at, top_k, top_k_shifted};
use super::{EarlyStopping, Generated, GenerationError, GenerationParams, Start, StepDecoder};

/// The score that takes a beam out of the running (Hugging Face's `-1e9`).
const OUT: f32 = -1e9;

/// Generates continuations for every item of `start` with greedy search (`num_beams = 1`)
/// or beam search, stepping `decoder`. Returns each item's new token ids, ending with the end
/// token when one was produced.
///
/// `start` comes from the model's start step for the same `params` (its logits have
/// `start.prompts.len() * params.num_beams` rows).
///
/// # Errors
/// No beams or no new tokens asked for, a forced token outside the vocabulary, logits with
/// the wrong number of rows, or the decoder failing.
pub fn generate<D: StepDecoder>(
    decoder: &mut D,
    start: Start<D::Cache>,
    params: &GenerationParams,
) -> Result<Vec<Vec<u32>>, GenerationError> {
    Ok(generate_scored(decoder, start, params)?
        .into_iter()
        .map(|g| g.tokens)
        .collect())
}

/// [`generate`], with the log-probability of every chosen token ([`Generated`]). The tokens
/// are the same as [`generate`]'s: the search is the same, the log-probabilities are only
/// recorded along the way.
///
/// # Errors
/// As [`generate`].
pub fn generate_scored<D: StepDecoder>(
    decoder: &mut D,
    start: Start<D::Cache>,
    params: &GenerationParams,
) -> Result<Vec<Generated>, GenerationError> {
    if params.num_beams == 0 || params.max_new_tokens == 0 {
        return Err(GenerationError::Invalid(
            "num_beams and max_new_tokens must be at least 1".into(),
        ));
    }
    check_logits(&start.logits, start.prompts.len() * params.num_beams)?;
    let vocab = start.logits.ncols();
    for (key, id) in [
        ("forced_bos_token_id", params.forced_bos_token_id),
        ("forced_eos_token_id", params.forced_eos_token_id),
    ] {
        if let Some(id) = id.filter(|&id| usize::try_from(id).map_or(true, |i| i >= vocab)) {
            return Err(GenerationError::Invalid(format!(
                "{key} = {id} is not a token of the decoder's vocabulary of {vocab}"
            )));
        }
    }
    if params.num_beams == 1 {
        greedy(decoder, start, params)
    } else {
        beam(decoder, start, params)
    }
}

fn check_logits(logits: &Array2<f32>, rows: usize) -> Result<(), GenerationError> {
    if logits.nrows() != rows || logits.ncols() == 0 {
        return Err(GenerationError::Invalid(format!(
            "the decoder returned logits of shape {:?}, the search needs {rows} rows of at least one token",
            logits.shape()
        )));
    }
    Ok(())
}

/// The batch's prompt width (Hugging Face's padded input length).
fn width(prompts: &[Vec<i64>]) -> usize {
    prompts.iter().map(Vec::len).max().unwrap_or(0)
}

/// One step of the decoder, with its logits checked.
fn step<D: StepDecoder>(
    decoder: &mut D,
    cache: D::Cache,
    tokens: &[i64],
) -> Result<(Array2<f32>, D::Cache), GenerationError> {
    let (logits, cache) = decoder.step(cache, tokens)?;
    check_logits(&logits, tokens.len())?;
    Ok((logits, cache))
}

fn greedy<D: StepDecoder>(
    decoder: &mut D,
    start: Start<D::Cache>,
    params: &GenerationParams,
) -> Result<Vec<Generated>, GenerationError> {
    let Start {
        mut logits,
        mut cache,
        prompts,
    } = start;
    let (eos, pad) = (decoder.end_token_id(), decoder.pad_token_id());
    let rows = prompts.len();
    let width = width(&prompts);
    let mut seqs = prompts.clone();
    let mut logprobs: Vec<Vec<f32>> = vec![Vec::new(); rows];
    let mut unfinished = vec![true; rows];
    for generated in 0..params.max_new_tokens {
        let mut next = vec![pad; rows];
        for r in 0..rows {
            let mut scores = logits.row(r).to_vec();
            let at = Position {
                seq: &seqs[r],
                generated,
                width,
            };
            process(&mut scores, at, params, eos);
            let best = argmax(&scores);
            // HF `compute_transition_scores(..., normalize_logits=True)`: the log-softmax of
            // the processed scores.
            logprobs[r].push(log_softmax_at(&scores, best));
            let best = best as i64;
            next[r] = if unfinished[r] { best } else { pad };
            seqs[r].push(next[r]);
            if next[r] == eos {
                unfinished[r] = false;
            }
        }
        if !unfinished.iter().any(|&u| u) || generated + 1 == params.max_new_tokens {
            break;
        }
        (logits, cache) = step(decoder, cache, &next)?;
    }
    Ok(seqs
        .iter()
        .zip(&prompts)
        .zip(logprobs)
        .map(|((s, p), lp)| scored(new_tokens(&s[p.len()..], eos), &lp))
        .collect())
}

/// `tokens` with the first `tokens.len()` of `logprobs`.
fn scored(tokens: Vec<u32>, logprobs: &[f32]) -> Generated {
    let n = tokens.len().min(logprobs.len());
    Generated {
        logprobs: logprobs[..n].to_vec(),
        tokens,
    }
}

fn beam<D: StepDecoder>(
    decoder: &mut D,
    start: Start<D::Cache>,
    params: &GenerationParams,
) -> Result<Vec<Generated>, GenerationError> {
    let Start {
        mut logits,
        mut cache,
        prompts,
    } = start;
    let eos = decoder.end_token_id();
    let mut search = BeamSearch::new(&prompts, params, eos);
    loop {
        let (source, all_ended) = search.advance(&logits);
        if search.is_done() || all_ended || search.generated >= params.max_new_tokens {
            break;
        }
        let last: Vec<i64> = search
            .seqs
            .iter()
            .map(|s| *s.last().unwrap_or(&eos))
            .collect();
        cache = decoder.reorder(cache, &source)?;
        (logits, cache) = step(decoder, cache, &last)?;
    }
    Ok(search.results(&prompts))
}

/// A continuation of a beam: its cumulative log-probability, the beam (within the item) it
/// continues and the new token.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    score: f32,
    beam: usize,
    token: i64,
    /// The token's own (processed) log-probability.
    logprob: f32,
}

/// A finished hypothesis slot (Hugging Face's `beam_scores`/`sequences` of the finished set).
#[derive(Clone, Debug)]
struct Hypothesis {
    score: f32,
    seq: Vec<i64>,
    /// The log-probability of each generated token of `seq`.
    logprobs: Vec<f32>,
    done: bool,
}

/// Beam search state for `batch` items of `beams` rows each (row `i * beams + k`).
struct BeamSearch<'a> {
    params: &'a GenerationParams,
    eos: i64,
    beams: usize,
    /// The running beams: prompt and generated tokens.
    seqs: Vec<Vec<i64>>,
    /// Their cumulative log-probabilities.
    scores: Vec<f32>,
    /// The log-probability of each of their generated tokens.
    logprobs: Vec<Vec<f32>>,
    /// The `beams` best finished hypotheses of each item, best first.
    finished: Vec<Hypothesis>,
    /// Whether an item's running beams can still beat its finished ones.
    open: Vec<bool>,
    /// Tokens generated so far.
    generated: usize,
    /// The batch's prompt width.
    width: usize,
}

impl<'a> BeamSearch<'a> {
    fn new(prompts: &[Vec<i64>], params: &'a GenerationParams, eos: i64) -> Self {
        let beams = params.num_beams;
        let rows = prompts.len() * beams;
        let seqs: Vec<Vec<i64>> = (0..rows).map(|r| prompts[r / beams].clone()).collect();
        BeamSearch {
            params,
            eos,
            beams,
            // Only the first beam of an item is live at the start (the others are copies).
            scores: (0..rows)
                .map(|r| if r % beams == 0 { 0.0 } else { OUT })
                .collect(),
            finished: seqs
                .iter()
                .map(|s| Hypothesis {
                    score: OUT,
                    seq: s.clone(),
                    logprobs: Vec::new(),
                    done: false,
                })
                .collect(),
            logprobs: vec![Vec::new(); rows],
            seqs,
            open: vec![true; prompts.len()],
            generated: 0,
            width: width(prompts),
        }
    }

    fn batch(&self) -> usize {
        self.open.len()
    }

    /// The top `2 * beams` continuations of item `i` over all its beams and the vocabulary,
    /// ordered by score, then beam, then token (the order of one `top_k` over the item's
    /// concatenated rows: each row's own top `2 * beams` holds every one of them).
    fn candidates(&self, logits: &Array2<f32>, i: usize) -> Vec<Candidate> {
        let k = 2 * self.beams;
        let mut cands: Vec<Candidate> = Vec::with_capacity(k * self.beams);
        for b in 0..self.beams {
            let r = i * self.beams + b;
            let row = logits.row(r);
            let mut lp = match row.as_slice() {
                Some(s) => log_softmax(s),
                None => log_softmax(&row.to_vec()),
            };
            let at = Position {
                seq: &self.seqs[r],
                generated: self.generated,
                width: self.width,
            };
            process(&mut lp, at, self.params, self.eos);
            cands.extend(
                top_k_shifted(&lp, self.scores[r], k)
                    .into_iter()
                    .map(|(score, t)| Candidate {
                        score,
                        beam: b,
                        token: t as i64,
                        logprob: lp[t],
                    }),
            );
        }
        // max(2, 1 + one end token) * beams
        cands.sort_by(|a, c| {
            c.score
                .total_cmp(&a.score)
                .then((a.beam, a.token).cmp(&(c.beam, c.token)))
        });
        cands.truncate(k);
        cands
    }

    /// Chooses the next running beams and updates the finished hypotheses from `logits`.
    /// Returns, for each new row, the row it continues, and whether every candidate of
    /// every item ended (end token or length limit).
    fn advance(&mut self, logits: &Array2<f32>) -> (Vec<usize>, bool) {
        let (nb, rows) = (self.beams, self.seqs.len());
        let mut all_ended = true;
        let mut seqs = Vec::with_capacity(rows);
        let mut scores = Vec::with_capacity(rows);
        let mut logprobs = Vec::with_capacity(rows);
        let mut source = Vec::with_capacity(rows);
        for i in 0..self.batch() {
            let cands = self.candidates(logits, i);
            let ended: Vec<bool> = cands
                .iter()
                .map(|c| c.token == self.eos || self.generated + 1 >= self.params.max_new_tokens)
                .collect();
            all_ended &= ended.iter().all(|&e| e);
            // Running beams for the next step: the best continuations that did not end.
            let running: Vec<f32> = cands
                .iter()
                .zip(&ended)
                .map(|(c, &e)| c.score + if e { OUT } else { 0.0 })
                .collect();
            for j in top_k(&running, nb) {
                seqs.push(self.extend(i, &cands[j]));
                logprobs.push(self.extend_logprobs(i, &cands[j]));
                scores.push(running[j]);
                source.push(i * nb + cands[j].beam);
            }
            self.merge_finished(i, &cands, &ended);
        }
        self.seqs = seqs;
        self.scores = scores;
        self.logprobs = logprobs;
        self.generated += 1;
        self.close_items();
        (source, all_ended)
    }

    /// The sequence of candidate `c` of item `i`: its beam's sequence and the new token.
    fn extend(&self, i: usize, c: &Candidate) -> Vec<i64> {
        let mut s = self.seqs[i * self.beams + c.beam].clone();
        s.push(c.token);
        s
    }

    /// The token log-probabilities of candidate `c` of item `i`.
    fn extend_logprobs(&self, i: usize, c: &Candidate) -> Vec<f32> {
        let mut s = self.logprobs[i * self.beams + c.beam].clone();
        s.push(c.logprob);
        s
    }

    /// Merges the candidates of item `i` that just ended among its top `beams` into the
    /// item's finished hypotheses, scored with the length penalty. None enters once the item
    /// is closed, nor, with `early_stopping = true`, once all its slots hold finished ones.
    fn merge_finished(&mut self, i: usize, cands: &[Candidate], ended: &[bool]) {
        let nb = self.beams;
        let slots = i * nb..(i + 1) * nb;
        let mut merged: Vec<Hypothesis> = self.finished[slots.clone()].to_vec();
        let full = self.params.early_stopping == EarlyStopping::True && self.item_full(i);
        for (j, c) in cands.iter().enumerate() {
            let just = ended[j] && j < nb;
            let mut s = length_normalised(c.score, self.generated + 1, self.params.length_penalty);
            if full {
                s += OUT;
            }
            if !self.open[i] {
                s += OUT;
            }
            if !just {
                s += OUT;
            }
            merged.push(Hypothesis {
                score: s,
                seq: self.extend(i, c),
                logprobs: self.extend_logprobs(i, c),
                done: just,
            });
        }
        let scores: Vec<f32> = merged.iter().map(|m| m.score).collect();
        for (slot, j) in slots.zip(top_k(&scores, nb)) {
            self.finished[slot] = merged[j].clone();
        }
    }

    /// Whether every finished slot of item `i` holds a finished hypothesis.
    fn item_full(&self, i: usize) -> bool {
        self.finished[i * self.beams..(i + 1) * self.beams]
            .iter()
            .all(|h| h.done)
    }

    /// Hugging Face's `_check_early_stop_heuristic`: an item stays open while its best
    /// running beam, length-normalised at its current length (`early_stopping = "never"` with a
    /// positive length penalty: at `max_new_tokens`), beats the worst of its finished
    /// hypotheses.
    fn close_items(&mut self) {
        let nb = self.beams;
        let lp = self.params.length_penalty;
        let length = if self.params.early_stopping == EarlyStopping::Never && lp > 0.0 {
            self.params.max_new_tokens
        } else {
            self.generated
        };
        for i in 0..self.batch() {
            let fin = &self.finished[i * nb..(i + 1) * nb];
            let best = length_normalised(self.scores[i * nb], length, lp);
            let any_better = fin.iter().any(|h| {
                let worst = if h.done {
                    fin.iter().map(|q| q.score).fold(f32::INFINITY, f32::min)
                } else {
                    OUT
                };
                best > worst
            });
            self.open[i] &= any_better;
        }
    }

    /// Hugging Face's `_beam_search_has_unfinished_sequences` negated: no item can improve,
    /// or (`early_stopping = true`) every item has `beams` finished hypotheses.
    fn is_done(&self) -> bool {
        !self.open.iter().any(|&o| o)
            || (self.params.early_stopping == EarlyStopping::True
                && (0..self.batch()).all(|i| self.item_full(i)))
    }

    /// Each item's best finished hypothesis, new tokens only.
    fn results(&self, prompts: &[Vec<i64>]) -> Vec<Generated> {
        prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let best = &self.finished[i * self.beams];
                scored(new_tokens(&best.seq[p.len()..], self.eos), &best.logprobs)
            })
            .collect()
    }
}

/// Generated tokens up to and including the first end token.
fn new_tokens(generated: &[i64], eos: i64) -> Vec<u32> {
    let end = generated
        .iter()
        .position(|&t| t == eos)
        .map_or(generated.len(), |p| p + 1);
    generated[..end].iter().map(|&t| t as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelError;

    const PAD: i64 = 0;
    const EOS: i64 = 1;
    const A: i64 = 2;
    const B: i64 = 3;

    /// A toy language model over the vocabulary {pad, end, A, B}: next-token probabilities
    /// depend on the row's history (prompt, then fed tokens), which is its whole cache.
    /// Prompt 5: A 0.5, B 0.4, end 0.1; after A: end 0.3, A 0.35, B 0.35; after B: end 0.9;
    /// later: end 0.4. Prompt 6: end 0.9 at every position. Prompt 7: end 0.4, A 0.35, B 0.25;
    /// after A: end 0.6, A 0.3, B 0.1; after B: A 0.99.
    #[derive(Default)]
    struct Toy {
        fed: Vec<Vec<i64>>,
        reorders: Vec<Vec<usize>>,
    }

    fn probabilities(history: &[i64]) -> [f32; 4] {
        match history {
            [6, ..] => [0.0, 0.9, 0.05, 0.05],
            [5] => [0.0, 0.1, 0.5, 0.4],
            [5, A] => [0.0, 0.3, 0.35, 0.35],
            [5, B] => [0.0, 0.9, 0.05, 0.05],
            [7] => [0.0, 0.4, 0.35, 0.25],
            [7, A] => [0.0, 0.6, 0.3, 0.1],
            [7, B] => [0.0, 0.005, 0.99, 0.005],
            _ => [0.0, 0.4, 0.3, 0.3],
        }
    }

    fn logits(histories: &[Vec<i64>]) -> Array2<f32> {
        let mut out = Array2::<f32>::zeros((histories.len(), 4));
        for (r, h) in histories.iter().enumerate() {
            for (v, p) in probabilities(h).iter().enumerate() {
                out[[r, v]] = p.ln();
            }
        }
        out
    }

    impl StepDecoder for Toy {
        type Cache = Vec<Vec<i64>>;

        fn step(
            &mut self,
            mut cache: Self::Cache,
            tokens: &[i64],
        ) -> Result<(Array2<f32>, Self::Cache), ModelError> {
            self.fed.push(tokens.to_vec());
            for (h, &t) in cache.iter_mut().zip(tokens) {
                h.push(t);
            }
            Ok((logits(&cache), cache))
        }

        fn reorder(
            &mut self,
            cache: Self::Cache,
            source: &[usize],
        ) -> Result<Self::Cache, ModelError> {
            self.reorders.push(source.to_vec());
            Ok(source.iter().map(|&r| cache[r].clone()).collect())
        }

        fn end_token_id(&self) -> i64 {
            EOS
        }

        fn pad_token_id(&self) -> i64 {
            PAD
        }
    }

    fn start(prompts: &[i64], beams: usize) -> Start<Vec<Vec<i64>>> {
        let rows: Vec<Vec<i64>> = prompts
            .iter()
            .flat_map(|&p| (0..beams).map(move |_| vec![p]))
            .collect();
        Start {
            logits: logits(&rows),
            cache: rows,
            prompts: prompts.iter().map(|&p| vec![p]).collect(),
        }
    }

    fn params(max_new_tokens: usize, num_beams: usize) -> GenerationParams {
        GenerationParams {
            max_new_tokens,
            num_beams,
            ..GenerationParams::default()
        }
    }

    #[test]
    fn greedy_pads_ended_rows_and_stops_when_all_ended() {
        let mut toy = Toy::default();
        let got = generate(&mut toy, start(&[5, 6], 1), &params(5, 1)).expect("greedy");
        assert_eq!(
            got,
            vec![vec![A as u32, A as u32, EOS as u32], vec![EOS as u32]]
        );
        assert_eq!(toy.fed, vec![vec![A, EOS], vec![A, PAD]]);
        assert!(toy.reorders.is_empty());
    }

    #[test]
    fn scored_generation_keeps_the_tokens_and_gives_each_its_log_probability() {
        for beams in [1, 2, 3] {
            for max_new in [2, 5] {
                let p = params(max_new, beams);
                let plain =
                    generate(&mut Toy::default(), start(&[5, 7], beams), &p).expect("plain");
                let scored = generate_scored(&mut Toy::default(), start(&[5, 7], beams), &p)
                    .expect("scored");
                for ((g, tokens), prompt) in scored.iter().zip(&plain).zip([5, 7]) {
                    assert_eq!(&g.tokens, tokens, "beams {beams}");
                    assert_eq!(g.logprobs.len(), tokens.len());
                    // The toy's own probability of each token after its history.
                    let mut history = vec![prompt];
                    for (&t, &lp) in tokens.iter().zip(&g.logprobs) {
                        let want = probabilities(&history)[t as usize].ln();
                        assert!((lp - want).abs() < 1e-5, "beams {beams}: {lp} != {want}");
                        history.push(i64::from(t));
                    }
                }
            }
        }
        // A forced token has probability 1.
        let p = GenerationParams {
            forced_eos_token_id: Some(EOS),
            ..params(2, 1)
        };
        let g = generate_scored(&mut Toy::default(), start(&[5], 1), &p).expect("forced");
        assert_eq!(g[0].tokens, vec![A as u32, EOS as u32]);
        assert_eq!(g[0].logprobs[1], 0.0);
    }

    #[test]
    fn greedy_does_not_step_after_the_last_token() {
        let mut toy = Toy::default();
        let got = generate(&mut toy, start(&[5], 1), &params(2, 1)).expect("greedy");
        assert_eq!(got, vec![vec![A as u32, A as u32]]);
        assert_eq!(toy.fed.len(), 1);
    }

    #[test]
    fn min_new_tokens_holds_back_the_end_token() {
        let mut toy = Toy::default();
        let p = GenerationParams {
            min_new_tokens: 2,
            ..params(5, 1)
        };
        let got = generate(&mut toy, start(&[6], 1), &p).expect("greedy");
        assert_eq!(got, vec![vec![A as u32, A as u32, EOS as u32]]);
    }

    #[test]
    fn beam_search_finds_the_more_probable_sequence_and_reorders_within_items() {
        // Greedy takes A (0.5) then A; "B end" (0.36) beats every continuation of A.
        let mut toy = Toy::default();
        let got = generate(&mut toy, start(&[5, 6], 2), &params(2, 2)).expect("beam");
        assert_eq!(got, vec![vec![B as u32, EOS as u32], vec![EOS as u32]]);
        assert_eq!(toy.reorders.len(), toy.fed.len());
        for source in &toy.reorders {
            assert_eq!(source.len(), 4);
            for (r, &s) in source.iter().enumerate() {
                assert_eq!(s / 2, r / 2, "row {r} continues row {s} of another item");
            }
        }
        assert_eq!(toy.reorders[0], vec![0, 0, 2, 2]);
    }

    #[test]
    fn ngram_blocking_and_forced_tokens_in_greedy_search() {
        // unigram blocking: A may not follow A, so B (0.35) then end
        let mut toy = Toy::default();
        let p = GenerationParams {
            no_repeat_ngram_size: 1,
            ..params(5, 1)
        };
        let got = generate(&mut toy, start(&[5], 1), &p).expect("greedy");
        assert_eq!(got, vec![vec![A as u32, B as u32, EOS as u32]]);
        // the forced end token at the last position; a forced first token after a one-token
        // start (B, then "after B": end 0.9)
        let mut toy = Toy::default();
        let p = GenerationParams {
            forced_eos_token_id: Some(EOS),
            ..params(2, 1)
        };
        let got = generate(&mut toy, start(&[5], 1), &p).expect("greedy");
        assert_eq!(got, vec![vec![A as u32, EOS as u32]]);
        let p = GenerationParams {
            forced_bos_token_id: Some(B),
            ..params(5, 1)
        };
        let got = generate(&mut toy, start(&[5, 6], 1), &p).expect("greedy");
        assert_eq!(
            got,
            vec![vec![B as u32, EOS as u32], vec![B as u32, EOS as u32]]
        );
        // forced ids outside the vocabulary are refused
        for p in [
            GenerationParams {
                forced_bos_token_id: Some(4),
                ..params(5, 1)
            },
            GenerationParams {
                forced_eos_token_id: Some(-1),
                ..params(5, 2)
            },
        ] {
            let beams = p.num_beams;
            let err = generate(&mut toy, start(&[5], beams), &p).expect_err("vocab");
            assert!(err.to_string().contains("vocabulary of 4"), "{err}");
        }
    }

    #[test]
    fn early_stopping_true_stops_once_every_item_has_num_beams_finished() {
        // Prompt 7, 2 beams, 4 new tokens, length penalty 1. The first step finishes "end"
        // (ln 0.4 = -0.916), the second "A end" (-1.561 / 2 = -0.780): both slots are full. The best
        // running beam "B A" (-1.396 / 2 = -0.698) still beats the worse of them: `true` stops
        // with "A end", `false` runs on to "B A end" (-2.312 / 3 = -0.771) and closes the item
        // when "B A A" (-2.600 / 3) cannot win; `never` scores that beam at max_new_tokens
        // (-2.600 / 4 = -0.650) and runs one step more, to the same result.
        let run = |early_stopping| {
            let mut toy = Toy::default();
            let p = GenerationParams {
                early_stopping,
                ..params(4, 2)
            };
            let got = generate(&mut toy, start(&[7], 2), &p).expect("beam");
            (got, toy.fed.len())
        };
        let (a, b, e) = (A as u32, B as u32, EOS as u32);
        assert_eq!(run(EarlyStopping::True), (vec![vec![a, e]], 1));
        assert_eq!(run(EarlyStopping::False), (vec![vec![b, a, e]], 2));
        assert_eq!(run(EarlyStopping::Never), (vec![vec![b, a, e]], 3));
    }

    #[test]
    fn early_stopping_spellings() {
        for (text, want) in [
            ("false", EarlyStopping::False),
            ("true", EarlyStopping::True),
            ("never", EarlyStopping::Never),
        ] {
            assert_eq!(text.parse::<EarlyStopping>(), Ok(want));
            assert_eq!(want.to_string(), text);
        }
        assert!("yes".parse::<EarlyStopping>().is_err());
        #[derive(serde::Deserialize)]
        struct G {
            early_stopping: EarlyStopping,
        }
        for (text, want) in [
            ("early_stopping = true", EarlyStopping::True),
            ("early_stopping = false", EarlyStopping::False),
            ("early_stopping = \"never\"", EarlyStopping::Never),
        ] {
            let g: G = toml::from_str(text).expect(text);
            assert_eq!(g.early_stopping, want, "{text}");
        }
        for bad in ["early_stopping = 1", "early_stopping = \"always\""] {
            assert!(toml::from_str::<G>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_start_with_the_wrong_number_of_rows_is_an_error() {
        let mut toy = Toy::default();
        let err = generate(&mut toy, start(&[5], 1), &params(2, 2)).expect_err("rows");
        assert!(matches!(err, GenerationError::Invalid(_)), "{err}");
        let err = generate(&mut toy, start(&[5], 1), &params(0, 1)).expect_err("no tokens");
        assert!(matches!(err, GenerationError::Invalid(_)), "{err}");
    }

    #[test]
    fn new_tokens_stop_after_eos() {
        assert_eq!(new_tokens(&[5, 6, 2, 0, 0], 2), vec![5, 6, 2]);
        assert_eq!(new_tokens(&[5, 6], 2), vec![5, 6]);
    }
}
