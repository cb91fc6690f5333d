//! Small numeric helpers shared by the searches: `argmax`, `top_k` and `log_softmax` over one
//! row of scores.

/// Index of the largest value (the first one on ties; 0 for an empty slice).
pub(crate) fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Indexes of the `k` largest values, largest first (ties: lower index first).
pub(crate) fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    let k = k.min(v.len());
    idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| {
        v[b].total_cmp(&v[a]).then(a.cmp(&b))
    });
    idx.truncate(k);
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx
}

/// The `k` largest of `v[t] + shift` as `(value, t)`, largest first (ties: lower `t` first),
/// ordered as [`top_k`] orders them, in one pass without an index array.
pub(crate) fn top_k_shifted(v: &[f32], shift: f32, k: usize) -> Vec<(f32, usize)> {
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (t, &x) in v.iter().enumerate() {
        let x = x + shift;
        // `t` grows: an equal value never displaces one already kept.
        if best.len() == k && x.total_cmp(&best[k - 1].0) != std::cmp::Ordering::Greater {
            continue;
        }
        let at = best
            .iter()
            .position(|&(y, _)| x.total_cmp(&y) == std::cmp::Ordering::Greater)
            .unwrap_or(best.len());
        best.insert(at, (x, t));
        best.truncate(k);
    }
    best
}

/// `log(softmax(v))`, computed as `v - max - log(sum(exp(v - max)))`.
pub(crate) fn log_softmax(v: &[f32]) -> Vec<f32> {
    let (max, log_sum) = log_softmax_terms(v);
    v.iter().map(|x| x - max - log_sum).collect()
}

/// `log_softmax(v)[i]` with the same arithmetic, without the vector.
pub(crate) fn log_softmax_at(v: &[f32], i: usize) -> f32 {
    let (max, log_sum) = log_softmax_terms(v);
    v[i] - max - log_sum
}

/// `max(v)` and `log(sum(exp(v - max)))`.
fn log_softmax_terms(v: &[f32]) -> (f32, f32) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = v.iter().map(|x| (x - max).exp()).sum();
    (max, sum.ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_shifted_orders_as_top_k_of_the_shifted_values() {
        let v = [0.5, -1.0, 3.0, 0.5, f32::NEG_INFINITY, 3.0, 2.0, 0.5];
        for shift in [0.0f32, -7.25, 1e9] {
            let shifted: Vec<f32> = v.iter().map(|x| x + shift).collect();
            for k in 0..=v.len() + 1 {
                let want: Vec<(f32, usize)> = top_k(&shifted, k)
                    .into_iter()
                    .map(|t| (shifted[t], t))
                    .collect();
                assert_eq!(top_k_shifted(&v, shift, k), want, "k {k} shift {shift}");
            }
        }
    }

    #[test]
    fn top_k_is_sorted_and_stable() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, -1.0, 0.9], 3), vec![4, 1, 2]);
        assert_eq!(top_k(&[1.0], 3), vec![0]);
    }

    #[test]
    fn log_softmax_at_is_the_vector_s_element() {
        let v = [0.25f32, -3.0, 7.5, 7.5, f32::NEG_INFINITY, 1e-3];
        let all = log_softmax(&v);
        for (i, &want) in all.iter().enumerate() {
            assert_eq!(
                log_softmax_at(&v, i).to_bits(),
                want.to_bits(),
                "element {i}"
            );
        }
    }

    #[test]
    fn log_softmax_normalises() {
        let l = log_softmax(&[1.0, 2.0, 3.0]);
        let s: f32 = l.iter().map(|v| v.exp()).sum();
        assert!((s - 1.0).abs() < 1e-6);
    }
}
