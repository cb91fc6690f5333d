//! COCO-style detection metrics: mAP@0.5, mAP@0.5:0.95, precision / recall / F1 at a score
//! threshold and precision-recall curves, computed exactly as pycocotools' `COCOeval` does for
//! `iouType = "bbox"` (`cocodataset/cocoapi`, `PythonAPI/pycocotools/cocoeval.py` and
//! `common/maskApi.c` `bbIou`), so that the numbers agree with it to rounding:
//!
//! - **Boxes** are `[x, y, w, h]` (COCO's layout) in any frame where x and y are independent
//!   axes: image pixels for chips, map coordinates for scenes. IoU is `bbIou`'s: the overlap's
//!   width is `min(x_d + w_d, x_g + w_g) - max(x_d, x_g)` (no `+1`), a crowd ground truth
//!   divides by the detection's area only.
//! - **Per image and class**, detections are ranked by score (a stable sort, so ties keep the
//!   order they were given in) and cut to the `max_dets` best (pycocotools' default 100).
//!   Ground truths are ordered non-crowd first; each detection, in rank order and for each IoU
//!   threshold `t` of 0.50, 0.55, .., 0.95, takes the unmatched ground truth of highest IoU
//!   `>= min(t, 1 - 1e-10)` (the last of equals), preferring non-crowd ones; crowd ground
//!   truths can match many detections and neither they nor their detections count.
//! - **Area range** is COCO's `all`, `[0, 1e10]`: ground truths whose `area` is outside are
//!   ignored, and so are the unmatched detections outside it.
//! - **Per class**, the detections of every image are ranked by score (stable, images in order),
//!   cumulative true and false positives give recall `tp / n_gt` and precision
//!   `tp / (tp + fp + eps)`; precision is made non-increasing from the right and read at the
//!   101 recall thresholds 0, 0.01, .., 1 (the first point whose recall reaches the threshold;
//!   0 beyond the last). A class's AP is the mean of those 101 values (and of the ten IoU
//!   thresholds for AP@0.5:0.95); a class without (non-crowd) ground truth has no AP and is
//!   left out of the mean; a class with ground truth and no detection has AP 0.
//! - **mAP** is the mean over classes with ground truth (pycocotools' `stats[0]` and `stats[1]`).
//! - **Precision, recall, F1** at `confidence`: the detections scoring at least `confidence`
//!   (within each image's `max_dets` best), matched as above at IoU 0.5; true positives are
//!   matched non-ignored detections, false positives unmatched non-ignored ones (in every class,
//!   those without ground truth included), false negatives the non-ignored ground truths left
//!   unmatched. Summed over classes (micro average); per class too. A ratio with a zero
//!   denominator is 0.

use serde::Serialize;

/// One labelled object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroundTruth {
    /// Index of the image (chip) or scene in the evaluation, from 0.
    pub image: usize,
    /// Index into the evaluation's class list.
    pub class: usize,
    /// `[x, y, w, h]`: the top-left corner (smallest x and y) and the size.
    pub bbox: [f64; 4],
    /// The area compared with the area range (COCO: the annotation's `area`; here usually
    /// `w * h`, or a polygon's area).
    pub area: f64,
    /// COCO `iscrowd`: a region of many objects, matched by any number of detections, never
    /// counted.
    pub crowd: bool,
}

/// One detection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub image: usize,
    pub class: usize,
    /// `[x, y, w, h]` as [`GroundTruth::bbox`].
    pub bbox: [f64; 4],
    pub score: f64,
}

/// How [`evaluate`] works.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalParams {
    /// The best detections kept per image and class (pycocotools: `maxDets[-1]`, 100).
    pub max_dets: usize,
    /// The score at or above which a detection counts for precision, recall and F1.
    pub confidence: f64,
}

impl Default for EvalParams {
    /// pycocotools' 100 detections per image and class; confidence 0.5.
    fn default() -> Self {
        EvalParams {
            max_dets: 100,
            confidence: 0.5,
        }
    }
}

/// Counts and ratios at one score threshold.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Counts {
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Counts {
    fn new(tp: usize, fp: usize, fn_: usize) -> Counts {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fn_);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Counts {
            true_positives: tp,
            false_positives: fp,
            false_negatives: fn_,
            precision,
            recall,
            f1,
        }
    }
}

/// One class's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassResult {
    pub name: String,
    /// Non-crowd ground truths inside the area range.
    pub ground_truths: usize,
    /// Detections evaluated (each image's `max_dets` best), at any score.
    pub predictions: usize,
    /// AP at IoU 0.5; `None` without ground truth.
    pub ap_50: Option<f64>,
    /// AP at IoU 0.75; `None` without ground truth.
    pub ap_75: Option<f64>,
    /// AP averaged over IoU 0.50:0.05:0.95; `None` without ground truth.
    pub ap_50_95: Option<f64>,
    /// Recall at IoU 0.5 over all evaluated detections (pycocotools' `recall`).
    pub max_recall: Option<f64>,
    /// At the score threshold, IoU 0.5.
    #[serde(flatten)]
    pub at_confidence: Counts,
    /// Interpolated precision at the 101 recall thresholds ([`recall_thresholds`]), IoU 0.5;
    /// empty without ground truth.
    pub pr_curve: Vec<f64>,
}

/// What [`evaluate`] found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DetectionMetrics {
    /// Mean AP at IoU 0.5 over classes with ground truth; `None` when no class has any.
    pub map_50: Option<f64>,
    /// Mean AP at IoU 0.75.
    pub map_75: Option<f64>,
    /// Mean AP over IoU 0.50:0.05:0.95 (COCO's AP).
    pub map_50_95: Option<f64>,
    /// Micro-averaged over classes at `params.confidence`, IoU 0.5.
    #[serde(flatten)]
    pub at_confidence: Counts,
    pub params: EvalParams,
    pub classes: Vec<ClassResult>,
    /// Per ground truth, in the order given: found at IoU 0.5 by a detection scoring at least
    /// the confidence (false for crowd and ignored ones). Two models' agreement is the
    /// fraction of ground truths on which these agree.
    #[serde(skip)]
    pub found: Vec<bool>,
}

/// pycocotools' `iouThrs`: `np.linspace(.5, 0.95, 10)`, computed as numpy does.
pub fn iou_thresholds() -> [f64; 10] {
    let (start, stop) = (0.5_f64, 0.95_f64);
    let step = (stop - start) / 9.0;
    let mut t = [0.0; 10];
    for (i, v) in t.iter_mut().enumerate() {
        *v = i as f64 * step + start;
    }
    t[9] = stop;
    t
}

/// pycocotools' `recThrs`: `np.linspace(0, 1, 101)`, computed as numpy does.
pub fn recall_thresholds() -> [f64; 101] {
    let step = 1.0_f64 / 100.0;
    let mut r = [0.0; 101];
    for (i, v) in r.iter_mut().enumerate() {
        *v = i as f64 * step;
    }
    r[100] = 1.0;
    r
}

/// COCO's area range `all`.
const AREA_ALL: (f64, f64) = (0.0, 1e10);

/// `maskApi.c` `bbIou` for one pair.
fn bb_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let da = d[2] * d[3];
    let ga = g[2] * g[3];
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let u = if crowd { da } else { da + ga - i };
    i / u
}

/// One image and class after matching (pycocotools' `evaluateImg` result).
struct ImageEval {
    /// Scores of the kept detections, best first.
    scores: Vec<f64>,
    /// `[t][d]`: matched at threshold t.
    matched: Vec<Vec<bool>>,
    /// `[t][d]`: ignored at threshold t.
    ignored: Vec<Vec<bool>>,
    /// Non-ignored ground truths.
    n_gt: usize,
    /// Indexes (in the caller's list) of the non-ignored ground truths matched at IoU 0.5 by
    /// a non-ignored detection scoring at least the confidence.
    found: Vec<usize>,
}

fn by_score_desc(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Stable, as numpy's mergesort: ties keep their order. NaN scores rank last.
    order.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or_else(|| scores[a].is_nan().cmp(&scores[b].is_nan()))
    });
    order
}

fn evaluate_image(
    gts: &[(usize, &GroundTruth)],
    dts: &[&Prediction],
    max_dets: usize,
    thresholds: &[f64],
    confidence: f64,
) -> Option<ImageEval> {
    if gts.is_empty() && dts.is_empty() {
        return None;
    }
    let outside = |a: f64| a < AREA_ALL.0 || a > AREA_ALL.1;
    let gt_ignore: Vec<bool> = gts
        .iter()
        .map(|(_, g)| g.crowd || outside(g.area))
        .collect();
    // Ground truths: not ignored first (stable).
    let mut g_order: Vec<usize> = (0..gts.len()).collect();
    g_order.sort_by_key(|&i| gt_ignore[i]);
    let gt_index: Vec<usize> = g_order.iter().map(|&i| gts[i].0).collect();
    let gts: Vec<&GroundTruth> = g_order.iter().map(|&i| gts[i].1).collect();
    let g_ig: Vec<bool> = g_order.iter().map(|&i| gt_ignore[i]).collect();
    let scores: Vec<f64> = dts.iter().map(|d| d.score).collect();
    let mut d_order = by_score_desc(&scores);
    d_order.truncate(max_dets);
    let dts: Vec<&Prediction> = d_order.iter().map(|&i| dts[i]).collect();
    let ious: Vec<Vec<f64>> = dts
        .iter()
        .map(|d| {
            gts.iter()
                .map(|g| bb_iou(&d.bbox, &g.bbox, g.crowd))
                .collect()
        })
        .collect();
    let nt = thresholds.len();
    let mut matched = vec![vec![false; dts.len()]; nt];
    let mut ignored = vec![vec![false; dts.len()]; nt];
    let mut found = Vec::new();
    for (ti, &t) in thresholds.iter().enumerate() {
        let mut gt_taken = vec![false; gts.len()];
        for (di, _) in dts.iter().enumerate() {
            let mut iou = t.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for (gi, g) in gts.iter().enumerate() {
                if gt_taken[gi] && !g.crowd {
                    continue;
                }
                if let Some(mi) = m {
                    if !g_ig[mi] && g_ig[gi] {
                        break;
                    }
                }
                if ious[di][gi] < iou {
                    continue;
                }
                iou = ious[di][gi];
                m = Some(gi);
            }
            if let Some(mi) = m {
                ignored[ti][di] = g_ig[mi];
                matched[ti][di] = true;
                gt_taken[mi] = true;
                if ti == 0 && !g_ig[mi] && dts[di].score >= confidence {
                    found.push(gt_index[mi]);
                }
            }
        }
        for (di, d) in dts.iter().enumerate() {
            let area = d.bbox[2] * d.bbox[3];
            if !matched[ti][di] && outside(area) {
                ignored[ti][di] = true;
            }
        }
    }
    Some(ImageEval {
        scores: dts.iter().map(|d| d.score).collect(),
        matched,
        ignored,
        n_gt: g_ig.iter().filter(|&&i| !i).count(),
        found,
    })
}

/// Interpolated precision at `rec_thrs` for one class and threshold (pycocotools'
/// `accumulate`), and the final recall.
fn interpolated(tps: &[bool], fps: &[bool], n_gt: usize, rec_thrs: &[f64]) -> (Vec<f64>, f64) {
    let eps = f64::EPSILON; // np.spacing(1)
    let (mut tp, mut fp) = (0.0_f64, 0.0_f64);
    let mut rc = Vec::with_capacity(tps.len());
    let mut pr = Vec::with_capacity(tps.len());
    for (&t, &f) in tps.iter().zip(fps) {
        tp += f64::from(u8::from(t));
        fp += f64::from(u8::from(f));
        rc.push(tp / n_gt as f64);
        pr.push(tp / (fp + tp + eps));
    }
    let recall = rc.last().copied().unwrap_or(0.0);
    for i in (1..pr.len()).rev() {
        if pr[i] > pr[i - 1] {
            pr[i - 1] = pr[i];
        }
    }
    let mut q = vec![0.0; rec_thrs.len()];
    for (qi, &r) in q.iter_mut().zip(rec_thrs) {
        // np.searchsorted(rc, r, side='left'): the first index with rc >= r.
        let pi = rc.partition_point(|&x| x < r);
        match pr.get(pi) {
            Some(&p) => *qi = p,
            None => break,
        }
    }
    (q, recall)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Evaluate `predictions` against `ground_truth` over `n_images` images and the classes named
/// `classes` (indices into it). Ground truths and predictions of an image index at or beyond
/// `n_images` or a class beyond `classes` are not evaluated. See the module documentation for
/// the definitions.
pub fn evaluate(
    n_images: usize,
    classes: &[String],
    ground_truth: &[GroundTruth],
    predictions: &[Prediction],
    params: &EvalParams,
) -> DetectionMetrics {
    let thresholds = iou_thresholds();
    let rec_thrs = recall_thresholds();
    let nc = classes.len();
    let mut gt_by: Vec<Vec<Vec<(usize, &GroundTruth)>>> = vec![vec![Vec::new(); n_images]; nc];
    for (n, g) in ground_truth.iter().enumerate() {
        if g.class < nc && g.image < n_images {
            gt_by[g.class][g.image].push((n, g));
        }
    }
    let mut found = vec![false; ground_truth.len()];
    let mut dt_by: Vec<Vec<Vec<&Prediction>>> = vec![vec![Vec::new(); n_images]; nc];
    for d in predictions {
        if d.class < nc && d.image < n_images {
            dt_by[d.class][d.image].push(d);
        }
    }
    let mut results = Vec::with_capacity(nc);
    let mut precision_all: Vec<f64> = Vec::new();
    let mut precision_50: Vec<f64> = Vec::new();
    let mut precision_75: Vec<f64> = Vec::new();
    let (mut tp_all, mut fp_all, mut fn_all) = (0usize, 0usize, 0usize);
    for (k, name) in classes.iter().enumerate() {
        let evals: Vec<ImageEval> = (0..n_images)
            .filter_map(|i| {
                evaluate_image(
                    &gt_by[k][i],
                    &dt_by[k][i],
                    params.max_dets,
                    &thresholds,
                    params.confidence,
                )
            })
            .collect();
        for &n in evals.iter().flat_map(|e| &e.found) {
            found[n] = true;
        }
        let n_gt: usize = evals.iter().map(|e| e.n_gt).sum();
        // Every image's kept detections, ranked by score (stable over images in order).
        let mut flat: Vec<(usize, usize)> = Vec::new();
        let mut scores: Vec<f64> = Vec::new();
        for (ei, e) in evals.iter().enumerate() {
            for (di, &s) in e.scores.iter().enumerate() {
                flat.push((ei, di));
                scores.push(s);
            }
        }
        let order = by_score_desc(&scores);
        // At the score threshold, IoU 0.5.
        let (mut tp, mut fp) = (0usize, 0usize);
        for &(ei, di) in &flat {
            let e = &evals[ei];
            if e.scores[di] >= params.confidence && !e.ignored[0][di] {
                if e.matched[0][di] {
                    tp += 1;
                } else {
                    fp += 1;
                }
            }
        }
        let fn_ = n_gt - tp.min(n_gt);
        tp_all += tp;
        fp_all += fp;
        fn_all += fn_;
        let at_confidence = Counts::new(tp, fp, fn_);
        let mut result = ClassResult {
            name: name.clone(),
            ground_truths: n_gt,
            predictions: flat.len(),
            ap_50: None,
            ap_75: None,
            ap_50_95: None,
            max_recall: None,
            at_confidence,
            pr_curve: Vec::new(),
        };
        if n_gt > 0 {
            let mut per_t = Vec::with_capacity(thresholds.len());
            for ti in 0..thresholds.len() {
                let mut tps = Vec::with_capacity(order.len());
                let mut fps = Vec::with_capacity(order.len());
                for &o in &order {
                    let (ei, di) = flat[o];
                    let (m, ig) = (evals[ei].matched[ti][di], evals[ei].ignored[ti][di]);
                    tps.push(m && !ig);
                    fps.push(!m && !ig);
                }
                per_t.push(interpolated(&tps, &fps, n_gt, &rec_thrs));
            }
            let all: Vec<f64> = per_t.iter().flat_map(|(q, _)| q.iter().copied()).collect();
            result.ap_50 = Some(mean(&per_t[0].0));
            result.ap_75 = Some(mean(&per_t[5].0));
            result.ap_50_95 = Some(mean(&all));
            result.max_recall = Some(per_t[0].1);
            result.pr_curve = per_t[0].0.clone();
            precision_50.extend(&per_t[0].0);
            precision_75.extend(&per_t[5].0);
            precision_all.extend(all);
        }
        results.push(result);
    }
    let opt_mean = |v: &[f64]| (!v.is_empty()).then(|| mean(v));
    DetectionMetrics {
        map_50: opt_mean(&precision_50),
        map_75: opt_mean(&precision_75),
        map_50_95: opt_mean(&precision_all),
        at_confidence: Counts::new(tp_all, fp_all, fn_all),
        params: params.clone(),
        classes: results,
        found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(image: usize, class: usize, b: [f64; 4]) -> GroundTruth {
        GroundTruth {
            image,
            class,
            bbox: b,
            area: b[2] * b[3],
            crowd: false,
        }
    }

    fn dt(image: usize, class: usize, b: [f64; 4], score: f64) -> Prediction {
        Prediction {
            image,
            class,
            bbox: b,
            score,
        }
    }

    fn close(v: Option<f64>, want: f64) -> bool {
        v.is_some_and(|v| (v - want).abs() < 1e-12)
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn thresholds_are_numpy_linspace() {
        let t = iou_thresholds();
        assert_eq!(t[0], 0.5);
        assert_eq!(t[9], 0.95);
        // np.linspace(.5, .95, 10).tolist(), printed by numpy 2.1.
        let numpy = [
            0.5,
            0.55,
            0.6,
            0.65,
            0.7,
            0.75,
            0.8,
            0.85,
            0.8999999999999999,
            0.95,
        ];
        assert_eq!(t, numpy);
        let r = recall_thresholds();
        assert_eq!(r[7], 0.07);
        assert_eq!(r[29], 0.29);
        assert_eq!(r[100], 1.0);
    }

    #[test]
    fn iou_is_bbiou() {
        // Two 10x10 boxes overlapping by 5 in x: 50 / 150.
        let a = [0.0, 0.0, 10.0, 10.0];
        let b = [5.0, 0.0, 10.0, 10.0];
        assert!((bb_iou(&a, &b, false) - 1.0 / 3.0).abs() < 1e-15);
        // Crowd: divided by the detection's area.
        assert!((bb_iou(&a, &b, true) - 0.5).abs() < 1e-15);
        // Touching edges do not overlap.
        assert_eq!(bb_iou(&a, &[10.0, 0.0, 5.0, 5.0], false), 0.0);
    }

    #[test]
    fn perfect_detections_give_one() {
        let g = vec![
            gt(0, 0, [0.0, 0.0, 10.0, 10.0]),
            gt(1, 0, [5.0, 5.0, 4.0, 4.0]),
        ];
        let d = vec![
            dt(0, 0, [0.0, 0.0, 10.0, 10.0], 0.9),
            dt(1, 0, [5.0, 5.0, 4.0, 4.0], 0.8),
        ];
        let m = evaluate(2, &names(1), &g, &d, &EvalParams::default());
        // Precision is tp / (tp + fp + eps), so "1" is 1 - 1e-16 as in pycocotools.
        assert!(close(m.map_50, 1.0));
        assert!(close(m.map_50_95, 1.0));
        assert_eq!(m.at_confidence.true_positives, 2);
        assert_eq!(m.at_confidence.f1, 1.0);
    }

    #[test]
    fn one_hit_one_miss_by_hand() {
        // Two ground truths; the best detection is a false positive, the second a hit:
        // rc = [0, .5], pr = [0, .5] -> interpolated [.5, .5]; thresholds 0..=0.5 read .5
        // (51 of 101), the rest 0: AP = 51 * 0.5 / 101.
        let g = vec![
            gt(0, 0, [0.0, 0.0, 10.0, 10.0]),
            gt(0, 0, [50.0, 50.0, 10.0, 10.0]),
        ];
        let d = vec![
            dt(0, 0, [100.0, 100.0, 10.0, 10.0], 0.9),
            dt(0, 0, [0.0, 0.0, 10.0, 10.0], 0.8),
        ];
        let m = evaluate(1, &names(1), &g, &d, &EvalParams::default());
        let ap = 51.0 * 0.5 / 101.0;
        assert!((m.map_50.expect("ap") - ap).abs() < 1e-12, "{:?}", m.map_50);
        let c = &m.at_confidence;
        assert_eq!(
            (c.true_positives, c.false_positives, c.false_negatives),
            (1, 1, 1)
        );
        assert_eq!(c.precision, 0.5);
        assert_eq!(c.recall, 0.5);
    }

    #[test]
    fn class_without_predictions_counts_zero_and_without_gt_is_left_out() {
        let g = vec![
            gt(0, 0, [0.0, 0.0, 10.0, 10.0]),
            gt(0, 1, [20.0, 0.0, 10.0, 10.0]),
        ];
        let d = vec![
            dt(0, 0, [0.0, 0.0, 10.0, 10.0], 0.9),
            dt(0, 2, [40.0, 0.0, 10.0, 10.0], 0.9),
        ];
        let m = evaluate(1, &names(3), &g, &d, &EvalParams::default());
        assert!(close(m.classes[0].ap_50, 1.0));
        assert_eq!(m.classes[1].ap_50, Some(0.0));
        assert_eq!(m.classes[2].ap_50, None);
        assert!(close(m.map_50, 0.5));
        // The class-2 detection is a false positive at the threshold.
        assert_eq!(m.at_confidence.false_positives, 1);
        assert_eq!(m.at_confidence.false_negatives, 1);
    }

    #[test]
    fn iou_thresholds_split_a_loose_box() {
        // IoU 0.64 (8x8 inside 10x10... shifted): matched at 0.5..0.6, not above.
        let g = vec![gt(0, 0, [0.0, 0.0, 10.0, 10.0])];
        let d = vec![dt(0, 0, [0.0, 0.0, 10.0, 6.4], 0.9)];
        let m = evaluate(1, &names(1), &g, &d, &EvalParams::default());
        assert!(close(m.map_50, 1.0), "{:?}", m.map_50);
        // 0.5, 0.55, 0.6 match (0.64 >= 0.6): 3 of 10 thresholds.
        assert!((m.map_50_95.expect("ap") - 0.3).abs() < 1e-12);
    }

    #[test]
    fn max_dets_cuts_each_image() {
        let g: Vec<GroundTruth> = (0..3)
            .map(|i| gt(0, 0, [i as f64 * 20.0, 0.0, 10.0, 10.0]))
            .collect();
        let d: Vec<Prediction> = (0..3)
            .map(|i| {
                dt(
                    0,
                    0,
                    [i as f64 * 20.0, 0.0, 10.0, 10.0],
                    0.9 - i as f64 * 0.1,
                )
            })
            .collect();
        let p = EvalParams {
            max_dets: 2,
            confidence: 0.0,
        };
        let m = evaluate(1, &names(1), &g, &d, &p);
        assert_eq!(m.classes[0].predictions, 2);
        assert_eq!(m.at_confidence.false_negatives, 1);
        assert!((m.classes[0].max_recall.expect("recall") - 2.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn crowd_regions_absorb_detections() {
        let mut crowd = gt(0, 0, [0.0, 0.0, 100.0, 100.0]);
        crowd.crowd = true;
        let g = vec![crowd, gt(0, 0, [200.0, 0.0, 10.0, 10.0])];
        let d = vec![
            dt(0, 0, [10.0, 10.0, 10.0, 10.0], 0.9),
            dt(0, 0, [30.0, 10.0, 10.0, 10.0], 0.8),
            dt(0, 0, [200.0, 0.0, 10.0, 10.0], 0.7),
        ];
        let m = evaluate(1, &names(1), &g, &d, &EvalParams::default());
        assert_eq!(m.classes[0].ground_truths, 1);
        assert!(close(m.map_50, 1.0), "{:?}", m.map_50);
        assert_eq!(m.at_confidence.false_positives, 0);
    }

    #[test]
    fn no_ground_truth_at_all_gives_no_map() {
        let d = vec![dt(0, 0, [0.0, 0.0, 1.0, 1.0], 0.9)];
        let m = evaluate(1, &names(1), &[], &d, &EvalParams::default());
        assert_eq!(m.map_50, None);
        assert_eq!(m.at_confidence.precision, 0.0);
    }
}
