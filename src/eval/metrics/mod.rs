//! Metrics, as the reference implementations compute them: confusion-matrix metrics as
//! scikit-learn does ([`Counts`]), top-k accuracy ([`top_k_accuracy`]), and BLEU-4 and CIDEr-D
//! as pycocoevalcap does ([`text`]). The tests check them against those libraries on the
//! same predictions.

pub mod detection;
pub mod text;

/// A confusion matrix over `k` classes, with a column for units that got no prediction
/// (nodata pixels of a mosaic): `counts[truth * (k + 1) + predicted]`, `predicted == k` for
/// none.
#[derive(Clone, Debug, PartialEq)]
pub struct Counts {
    pub k: usize,
    counts: Vec<u64>,
}

/// Precision, recall, F1 and IoU of one class, and its support (units of that class).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub iou: f64,
    pub support: u64,
}

/// `num / den`, 0 when `den` is 0 (scikit-learn's `zero_division=0`).
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl Counts {
    pub fn new(k: usize) -> Counts {
        Counts {
            k,
            counts: vec![0; k * (k + 1)],
        }
    }

    /// Count one unit of class `truth` predicted as `predicted` (`None`: no prediction).
    pub fn add(&mut self, truth: usize, predicted: Option<usize>) {
        self.add_n(truth, predicted, 1);
    }

    /// Count `n` such units.
    pub fn add_n(&mut self, truth: usize, predicted: Option<usize>, n: u64) {
        let p = predicted.filter(|&p| p < self.k).unwrap_or(self.k);
        if truth < self.k {
            self.counts[truth * (self.k + 1) + p] += n;
        }
    }

    /// Units of class `truth` predicted as `predicted` (`None`: no prediction).
    pub fn get(&self, truth: usize, predicted: Option<usize>) -> u64 {
        let p = predicted.unwrap_or(self.k);
        self.counts[truth * (self.k + 1) + p]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn support(&self, c: usize) -> u64 {
        self.counts[c * (self.k + 1)..(c + 1) * (self.k + 1)]
            .iter()
            .sum()
    }

    fn predicted(&self, c: usize) -> u64 {
        (0..self.k).map(|t| self.get(t, Some(c))).sum()
    }

    /// Fraction of units predicted as their class (`accuracy_score`).
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.k).map(|c| self.get(c, Some(c))).sum();
        ratio(correct, self.total())
    }

    /// The scores of class `c` (`precision_recall_fscore_support`, `jaccard_score`).
    pub fn class(&self, c: usize) -> ClassScores {
        let tp = self.get(c, Some(c));
        let support = self.support(c);
        let predicted = self.predicted(c);
        let (fp, fn_) = (predicted - tp, support - tp);
        ClassScores {
            precision: ratio(tp, predicted),
            recall: ratio(tp, support),
            f1: ratio(2 * tp, 2 * tp + fp + fn_),
            iou: ratio(tp, tp + fp + fn_),
            support,
        }
    }

    /// Classes with units or predictions (scikit-learn's labels when none are given:
    /// `unique_labels(y_true, y_pred)`, no-prediction left out).
    pub fn present(&self) -> Vec<usize> {
        (0..self.k)
            .filter(|&c| self.support(c) > 0 || self.predicted(c) > 0)
            .collect()
    }

    /// Macro averages over `classes`: (precision, recall, f1, iou).
    pub fn macro_average(&self, classes: &[usize]) -> (f64, f64, f64, f64) {
        if classes.is_empty() {
            return (0.0, 0.0, 0.0, 0.0);
        }
        let n = classes.len() as f64;
        let mut sum = (0.0, 0.0, 0.0, 0.0);
        for &c in classes {
            let s = self.class(c);
            sum.0 += s.precision;
            sum.1 += s.recall;
            sum.2 += s.f1;
            sum.3 += s.iou;
        }
        (sum.0 / n, sum.1 / n, sum.2 / n, sum.3 / n)
    }

    /// The matrix without the no-prediction column, `[truth][predicted]`.
    pub fn matrix(&self) -> Vec<Vec<u64>> {
        (0..self.k)
            .map(|t| (0..self.k).map(|p| self.get(t, Some(p))).collect())
            .collect()
    }
}

/// Indexes of the `k` best scores, best first; ties keep the lower index first.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Fraction of units whose class is among their `k` best scores (`top_k_accuracy_score`;
/// `k` is capped at the number of classes).
pub fn top_k_accuracy(truth: &[usize], scores: &[Vec<f32>], k: usize) -> f64 {
    let hits = truth
        .iter()
        .zip(scores)
        .filter(|(t, s)| top_k(s, k.min(s.len())).contains(t))
        .count();
    ratio(hits as u64, truth.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_counted_matrix() {
        // truth 0: 2 right, 1 as class 1; truth 1: 1 right, 1 without prediction.
        let mut c = Counts::new(3);
        c.add_n(0, Some(0), 2);
        c.add(0, Some(1));
        c.add(1, Some(1));
        c.add(1, None);
        assert_eq!(c.total(), 5);
        assert_eq!(c.accuracy(), 3.0 / 5.0);
        let s1 = c.class(1);
        assert_eq!((s1.precision, s1.recall), (0.5, 0.5));
        assert_eq!(s1.iou, 1.0 / 3.0);
        assert_eq!(c.present(), vec![0, 1]);
        assert_eq!(c.class(2).support, 0);
        assert_eq!(
            c.matrix(),
            vec![vec![2, 1, 0], vec![0, 1, 0], vec![0, 0, 0]]
        );
    }

    #[test]
    fn top_k_counts_the_class_among_the_best() {
        let scores = vec![vec![0.1, 0.7, 0.2], vec![0.5, 0.2, 0.3]];
        assert_eq!(top_k_accuracy(&[2, 0], &scores, 1), 0.5);
        assert_eq!(top_k_accuracy(&[2, 1], &scores, 2), 0.5);
        assert_eq!(top_k_accuracy(&[2, 1], &scores, 5), 1.0);
    }
}
