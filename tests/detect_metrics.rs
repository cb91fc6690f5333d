//! tessera's COCO-style detection metrics (`tessera::eval::metrics::detection`) against pycocotools
//! on the same boxes, to 1e-9: generated sets of several images and classes with the edge
//! cases that decide COCO's numbers (a class without predictions, a class without ground
//! truth, tied scores, boxes of a pixel or two, more detections than `max_dets` in an image,
//! detections matching at some IoU thresholds only, duplicates of one object, crowd regions).

mod common;

use common::coco::{assert_same, pycocotools, write_coco, DtBox, GtBox};
use tessera::eval::metrics::detection::{evaluate, EvalParams, GroundTruth, Prediction};

/// A small deterministic generator (64-bit LCG, Knuth's constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.next() * n as f64) as usize).min(n - 1)
    }
}

/// A generated set: `images` images, classes "a" (found), "b" (never predicted), "c" (only
/// false positives, no ground truth), "d" (small boxes); scores on a 0.05 grid so many tie.
fn generated(seed: u64, images: usize, crowd: bool) -> (Vec<GtBox>, Vec<DtBox>) {
    let mut r = Lcg(seed);
    let mut gt = Vec::new();
    let mut dt = Vec::new();
    let score = |r: &mut Lcg| (r.below(20) as f64 + 1.0) * 0.05;
    for i in 0..images {
        for _ in 0..3 + r.below(6) {
            let (x, y) = (r.next() * 900.0, r.next() * 900.0);
            let (w, h) = (10.0 + r.next() * 80.0, 10.0 + r.next() * 80.0);
            gt.push((i, 0, [x, y, w, h], false));
            // Found, with a jitter that keeps IoU anywhere from ~0.3 to 1.
            for _ in 0..1 + r.below(2) {
                let j = |r: &mut Lcg, s: f64| (r.next() - 0.5) * s * 0.5;
                dt.push((
                    i,
                    0,
                    [
                        x + j(&mut r, w),
                        y + j(&mut r, h),
                        w * (0.8 + 0.4 * r.next()),
                        h * (0.8 + 0.4 * r.next()),
                    ],
                    score(&mut r),
                ));
            }
        }
        for _ in 0..2 {
            let (x, y) = (r.next() * 900.0, r.next() * 900.0);
            gt.push((i, 1, [x, y, 30.0, 40.0], false));
            dt.push((i, 0, [x, y, 30.0, 40.0], score(&mut r)));
        }
        for _ in 0..r.below(4) {
            dt.push((
                i,
                2,
                [r.next() * 900.0, r.next() * 900.0, 20.0, 20.0],
                score(&mut r),
            ));
        }
        for _ in 0..2 + r.below(3) {
            let (x, y) = (r.next() * 990.0, r.next() * 990.0);
            let (w, h) = (1.0 + r.below(3) as f64, 1.0 + r.below(3) as f64);
            gt.push((i, 3, [x, y, w, h], false));
            if r.next() < 0.7 {
                dt.push((
                    i,
                    3,
                    [x + r.next() * 0.5, y + r.next() * 0.5, w, h],
                    score(&mut r),
                ));
            }
        }
        if crowd && i % 2 == 0 {
            gt.push((i, 0, [0.0, 0.0, 200.0, 200.0], true));
            for _ in 0..3 {
                dt.push((
                    i,
                    0,
                    [r.next() * 150.0, r.next() * 150.0, 30.0, 30.0],
                    score(&mut r),
                ));
            }
        }
    }
    (gt, dt)
}

const CLASSES: [&str; 4] = ["a", "b", "c", "d"];

fn check(name: &str, images: usize, gt: &[GtBox], dt: &[DtBox], params: &EvalParams) {
    let dir = tempfile::tempdir().expect("tmp");
    write_coco(dir.path(), images, &CLASSES, gt, dt);
    let Some(reference) = pycocotools(
        &dir.path().join("gt.json"),
        &dir.path().join("results.json"),
        params.max_dets,
        params.confidence,
    ) else {
        return;
    };
    let gts: Vec<GroundTruth> = gt
        .iter()
        .map(|&(image, class, bbox, crowd)| GroundTruth {
            image,
            class,
            bbox,
            area: bbox[2] * bbox[3],
            crowd,
        })
        .collect();
    let dts: Vec<Prediction> = dt
        .iter()
        .map(|&(image, class, bbox, score)| Prediction {
            image,
            class,
            bbox,
            score,
        })
        .collect();
    let names: Vec<String> = CLASSES.iter().map(|s| s.to_string()).collect();
    let ours = serde_json::to_value(evaluate(images, &names, &gts, &dts, params)).expect("json");
    eprintln!(
        "{name}: tessera map_50 {} map_50_95 {}, pycocotools {} {}",
        ours["map_50"], ours["map_50_95"], reference["map_50"], reference["map_50_95"]
    );
    assert_same(&ours, &reference, 1e-9);
}

#[test]
fn generated_sets_match_pycocotools() {
    for seed in [1u64, 2, 3] {
        let (gt, dt) = generated(seed, 4, false);
        check(
            &format!("seed {seed}"),
            4,
            &gt,
            &dt,
            &EvalParams {
                max_dets: 100,
                confidence: 0.5,
            },
        );
    }
}

#[test]
fn crowd_regions_match_pycocotools() {
    let (gt, dt) = generated(7, 4, true);
    check(
        "crowd",
        4,
        &gt,
        &dt,
        &EvalParams {
            max_dets: 100,
            confidence: 0.3,
        },
    );
}

#[test]
fn max_dets_cut_matches_pycocotools() {
    // 150 detections of one image, a few of them hits, with max_dets 100 and 20; and an image
    // without any ground truth.
    let mut r = Lcg(11);
    let mut gt = Vec::new();
    let mut dt = Vec::new();
    for n in 0..40 {
        let b = [(n % 8) as f64 * 110.0, (n / 8) as f64 * 110.0, 50.0, 60.0];
        gt.push((0, 0, b, false));
        if n % 3 == 0 {
            dt.push((0, 0, b, r.below(20) as f64 * 0.05));
        }
    }
    for _ in 0..136 {
        dt.push((
            0,
            0,
            [r.next() * 900.0, r.next() * 900.0, 40.0, 40.0],
            r.below(12) as f64 * 0.05,
        ));
    }
    dt.push((1, 0, [5.0, 5.0, 10.0, 10.0], 0.9));
    for max_dets in [100, 20] {
        check(
            &format!("max_dets {max_dets}"),
            2,
            &gt,
            &dt,
            &EvalParams {
                max_dets,
                confidence: 0.25,
            },
        );
    }
}

#[test]
fn hand_made_ties_match_pycocotools() {
    // Two detections of one object with the same score, in both orders; a detection between
    // two objects with equal IoU to each; exact IoU 0.5 (matched at 0.5 only).
    let gt = vec![
        (0, 0, [0.0, 0.0, 10.0, 10.0], false),
        (0, 0, [20.0, 0.0, 10.0, 10.0], false),
        (0, 0, [40.0, 0.0, 10.0, 10.0], false),
        (1, 0, [0.0, 0.0, 10.0, 10.0], false),
    ];
    let dt = vec![
        (0, 0, [1.0, 0.0, 10.0, 10.0], 0.8),
        (0, 0, [0.0, 0.0, 10.0, 10.0], 0.8),
        (0, 0, [25.0, 0.0, 10.0, 10.0], 0.7),
        (0, 0, [40.0, 0.0, 10.0, 5.0], 0.6),
        (1, 0, [0.0, 0.0, 10.0, 10.0], 0.8),
        (1, 0, [1.0, 0.0, 10.0, 10.0], 0.8),
    ];
    check("ties", 2, &gt, &dt, &EvalParams::default());
}
