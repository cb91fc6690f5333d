//! BLEU-4 and CIDEr-D of captions against reference captions, as pycocoevalcap computes them
//! (`Bleu(4)` with its "closest" reference length, `Cider()`: CIDEr-D with sigma 6, clipped
//! n-gram weights and document frequencies from the references of the evaluated set).
//!
//! Tokenisation ([`tokenize`]) approximates pycocoevalcap's PTBTokenizer (Stanford CoreNLP's
//! PTB tokenizer, lower-cased, punctuation tokens removed) without Java: lower case; the
//! clitics `'s 're 've 'll 'd 'm n't` split off as PTB does; every other non-alphanumeric
//! character a token of its own; the punctuation tokens pycocoevalcap removes (see
//! `DROPPED`: `.` `,` `?` `!` `:` `;` `-` `--` `...` and quotes) dropped; brackets become
//! PTB's `-lrb-` `-rrb-` `-lsb-` `-rsb-` `-lcb-` `-rcb-`, which pycocoevalcap keeps (it
//! removes them in upper case, after lower-casing). On plain captions it gives what the PTB
//! tokenizer gives (checked against it in tests/eval.rs); text already tokenised this way is
//! unchanged.

use std::collections::HashMap;

/// Tokens pycocoevalcap's tokenizer removes (with the brackets PTB turns into -LRB- etc).
const DROPPED: &[&str] = &[
    "''", "'", "``", "`", "\"", ".", "?", "!", ",", ":", "-", "--", "...", ";",
];

const CLITICS: &[&str] = &["n't", "'s", "'re", "'ve", "'ll", "'d", "'m"];

/// Lower-cased tokens of `text`, joined by single spaces (see the module notes).
pub fn tokenize(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut tokens: Vec<String> = Vec::new();
    for word in lower.split_whitespace() {
        // Runs of alphanumerics and apostrophes are words; anything else a token alone.
        let mut cur = String::new();
        let mut pieces: Vec<String> = Vec::new();
        let chars: Vec<char> = word.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c.is_alphanumeric() || c == '\'' {
                cur.push(c);
                i += 1;
                continue;
            }
            if !cur.is_empty() {
                pieces.push(std::mem::take(&mut cur));
            }
            // "..." and "--" stay whole.
            let rest: String = chars[i..].iter().take(3).collect();
            if rest == "..." {
                pieces.push(rest);
                i += 3;
            } else if rest.starts_with("--") {
                pieces.push("--".into());
                i += 2;
            } else {
                let bracket = match c {
                    '(' => Some("-lrb-"),
                    ')' => Some("-rrb-"),
                    '[' => Some("-lsb-"),
                    ']' => Some("-rsb-"),
                    '{' => Some("-lcb-"),
                    '}' => Some("-rcb-"),
                    _ => None,
                };
                pieces.push(bracket.map_or_else(|| c.to_string(), str::to_string));
                i += 1;
            }
        }
        if !cur.is_empty() {
            pieces.push(cur);
        }
        for p in pieces {
            split_clitic(&p, &mut tokens);
        }
    }
    tokens
        .into_iter()
        .filter(|t| !DROPPED.contains(&t.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn split_clitic(word: &str, out: &mut Vec<String>) {
    // Quotes around a word: 'word' -> ' word '.
    let trimmed = word.trim_matches('\'');
    if trimmed.is_empty() {
        out.push(word.to_string());
        return;
    }
    let lead = word.len() - word.trim_start_matches('\'').len();
    if lead > 0 {
        out.push("'".repeat(lead));
    }
    let body = &word[lead..];
    let body_trim = body.trim_end_matches('\'');
    let trail = body.len() - body_trim.len();
    let mut done = false;
    for c in CLITICS {
        if body_trim.len() > c.len() && body_trim.ends_with(c) {
            out.push(body_trim[..body_trim.len() - c.len()].to_string());
            out.push((*c).to_string());
            done = true;
            break;
        }
    }
    if !done {
        out.push(body_trim.to_string());
    }
    if trail > 0 {
        out.push("'".repeat(trail));
    }
}

type Ngrams = HashMap<Vec<String>, u64>;

/// Every n-gram of 1..=n words of a tokenised sentence, counted.
fn ngrams(sentence: &str, n: usize) -> (usize, Ngrams) {
    let words: Vec<String> = sentence.split_whitespace().map(str::to_string).collect();
    let mut counts = Ngrams::new();
    for k in 1..=n {
        if words.len() >= k {
            for w in words.windows(k) {
                *counts.entry(w.to_vec()).or_insert(0) += 1;
            }
        }
    }
    (words.len(), counts)
}

/// Corpus BLEU-1..4 of `hypotheses` (one tokenised caption each) against `references` (one
/// or more tokenised captions each), as pycocoevalcap's `Bleu(4).compute_score`: clipped
/// n-gram counts summed over the corpus, the reference length closest to each hypothesis
/// (the shorter on a tie), the brevity penalty on the corpus lengths. Returns BLEU-1..4.
pub fn bleu(hypotheses: &[String], references: &[Vec<String>]) -> [f64; 4] {
    const N: usize = 4;
    let (small, tiny) = (1e-9, 1e-15);
    let mut guess = [0u64; N];
    let mut correct = [0u64; N];
    let (mut testlen_sum, mut reflen_sum) = (0usize, 0usize);
    for (hyp, refs) in hypotheses.iter().zip(references) {
        let mut max_counts = Ngrams::new();
        let mut reflens = Vec::new();
        for r in refs {
            let (len, counts) = ngrams(r, N);
            reflens.push(len);
            for (g, c) in counts {
                let e = max_counts.entry(g).or_insert(0);
                *e = (*e).max(c);
            }
        }
        let (testlen, counts) = ngrams(hyp, N);
        let reflen = reflens
            .iter()
            .map(|&l| (l.abs_diff(testlen), l))
            .min()
            .map_or(0, |(_, l)| l);
        testlen_sum += testlen;
        reflen_sum += reflen;
        for (k, g) in guess.iter_mut().enumerate() {
            *g += (testlen + 1).saturating_sub(k + 1) as u64;
        }
        for (g, c) in counts {
            correct[g.len() - 1] += c.min(max_counts.get(&g).copied().unwrap_or(0));
        }
    }
    let mut out = [0.0; N];
    let mut product = 1.0;
    for k in 0..N {
        product *= (correct[k] as f64 + tiny) / (guess[k] as f64 + small);
        out[k] = product.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (testlen_sum as f64 + tiny) / (reflen_sum as f64 + small);
    if ratio < 1.0 {
        for v in &mut out {
            *v *= (1.0 - 1.0 / ratio).exp();
        }
    }
    out
}

/// CIDEr-D of each hypothesis and their mean, as pycocoevalcap's `Cider().compute_score`:
/// tf-idf vectors of 1..4-grams with document frequencies over the references of this set,
/// clipped to the reference's weights, cosine per n, a Gaussian penalty (sigma 6) on the
/// difference of lengths (counted, as pycocoevalcap does, in bigrams), averaged over n and
/// references, times 10.
pub fn cider(hypotheses: &[String], references: &[Vec<String>]) -> (f64, Vec<f64>) {
    const N: usize = 4;
    const SIGMA: f64 = 6.0;
    let refs: Vec<Vec<Ngrams>> = references
        .iter()
        .map(|rs| rs.iter().map(|r| ngrams(r, N).1).collect())
        .collect();
    let mut df: HashMap<&Vec<String>, f64> = HashMap::new();
    for rs in &refs {
        let mut seen: std::collections::HashSet<&Vec<String>> = std::collections::HashSet::new();
        for r in rs {
            seen.extend(r.keys());
        }
        for g in seen {
            *df.entry(g).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (refs.len() as f64).ln();
    type Vector = Vec<HashMap<Vec<String>, f64>>;
    let vec_of = |counts: &Ngrams| -> (Vector, [f64; N], u64) {
        let mut vec: Vector = vec![HashMap::new(); N];
        let mut norm = [0.0; N];
        let mut length = 0;
        for (g, &tf) in counts {
            let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
            let n = g.len() - 1;
            let v = tf as f64 * (ref_len - d);
            vec[n].insert(g.clone(), v);
            norm[n] += v * v;
            if n == 1 {
                length += tf;
            }
        }
        (vec, norm.map(f64::sqrt), length)
    };
    let mut scores = Vec::with_capacity(hypotheses.len());
    for (hyp, rs) in hypotheses.iter().zip(&refs) {
        let (vh, nh, lh) = vec_of(&ngrams(hyp, N).1);
        let mut score = [0.0; N];
        for r in rs {
            let (vr, nr, lr) = vec_of(r);
            let delta = lh as f64 - lr as f64;
            for n in 0..N {
                let mut val = 0.0;
                for (g, &w) in &vh[n] {
                    let wr = vr[n].get(g).copied().unwrap_or(0.0);
                    val += w.min(wr) * wr;
                }
                if nh[n] != 0.0 && nr[n] != 0.0 {
                    val /= nh[n] * nr[n];
                }
                score[n] += val * (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
            }
        }
        let mean = score.iter().sum::<f64>() / N as f64;
        scores.push(mean / rs.len().max(1) as f64 * 10.0);
    }
    let mean = if scores.is_empty() {
        0.0
    } else {
        scores.iter().sum::<f64>() / scores.len() as f64
    };
    (mean, scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_as_the_ptb_tokenizer_gives_them() {
        assert_eq!(
            tokenize("A dog's house, by the River. It isn't \"big\"!"),
            "a dog 's house by the river it is n't big"
        );
        assert_eq!(
            tokenize("two  planes... parked (left)"),
            "two planes parked -lrb- left -rrb-"
        );
        assert_eq!(tokenize("a b c"), "a b c");
    }

    #[test]
    fn identical_captions_score_bleu_one() {
        let h = vec!["a b c d e".to_string()];
        let r = vec![vec!["a b c d e".to_string()]];
        let b = bleu(&h, &r);
        assert!((b[3] - 1.0).abs() < 1e-6, "{b:?}");
    }
}
