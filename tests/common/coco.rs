//! pycocotools as the reference for detection metrics: COCO JSON files for a set of boxes, and
//! a comparison of tessera's metrics (as JSON) with `tests/python/coco_eval.py`'s.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

/// A ground-truth box for [`write_coco`]: image index, class index, `[x, y, w, h]`, crowd.
pub type GtBox = (usize, usize, [f64; 4], bool);
/// A detection for [`write_coco`]: image index, class index, `[x, y, w, h]`, score.
pub type DtBox = (usize, usize, [f64; 4], f64);

/// Write `gt.json` (a COCO dataset: image `i` has id `i + 1`, class `k` id `k + 1`, annotation
/// ids from 1, area `w * h`) and `results.json` (a COCO results list in the order given) under
/// `dir`.
pub fn write_coco(dir: &Path, images: usize, classes: &[&str], gt: &[GtBox], dt: &[DtBox]) {
    let gt_json = json!({
        "images": (0..images).map(|i| json!({"id": i + 1, "width": 1000, "height": 1000, "file_name": format!("{i}.tif")})).collect::<Vec<_>>(),
        "categories": classes.iter().enumerate().map(|(k, n)| json!({"id": k + 1, "name": n})).collect::<Vec<_>>(),
        "annotations": gt.iter().enumerate().map(|(n, (i, k, b, crowd))| json!({
            "id": n + 1, "image_id": i + 1, "category_id": k + 1, "bbox": b,
            "area": b[2] * b[3], "iscrowd": u8::from(*crowd),
        })).collect::<Vec<_>>(),
    });
    let dt_json: Vec<Value> = dt
        .iter()
        .map(|(i, k, b, s)| json!({"image_id": i + 1, "category_id": k + 1, "bbox": b, "score": s}))
        .collect();
    std::fs::write(dir.join("gt.json"), gt_json.to_string()).expect("write gt");
    std::fs::write(dir.join("results.json"), Value::from(dt_json).to_string()).expect("write dt");
}

/// pycocotools' numbers for `gt` and `results` (tests/python/coco_eval.py); `None` (skip) when
/// the test virtualenv is absent.
pub fn pycocotools(gt: &Path, results: &Path, max_dets: usize, confidence: f64) -> Option<Value> {
    let py = super::venv_python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/coco_eval.py");
    let out = Command::new(py)
        .arg(script)
        .arg(gt)
        .arg(results)
        .args(["--max-dets", &max_dets.to_string()])
        .args(["--confidence", &confidence.to_string()])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "coco_eval.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("json"))
}

fn close(what: &str, ours: &Value, theirs: &Value, tol: f64) {
    match (ours.as_f64(), theirs.as_f64()) {
        (Some(a), Some(b)) => assert!((a - b).abs() <= tol, "{what}: tessera {a}, pycocotools {b}"),
        _ => assert!(
            ours.is_null() && theirs.is_null(),
            "{what}: tessera {ours}, pycocotools {theirs}"
        ),
    }
}

/// Assert that tessera's metrics (`DetectionMetrics` as JSON: `map_50`, `map_75`, `map_50_95`,
/// counts, `classes[k]`) equal pycocotools' to `tol`; class `k` is category id `k + 1`.
pub fn assert_same(ours: &Value, theirs: &Value, tol: f64) {
    for key in ["map_50", "map_75", "map_50_95", "precision", "recall", "f1"] {
        close(key, &ours[key], &theirs[key], tol);
    }
    for (a, b) in [
        ("true_positives", "tp"),
        ("false_positives", "fp"),
        ("false_negatives", "fn"),
    ] {
        assert_eq!(ours[a], theirs[b], "{a}");
    }
    let classes = ours["classes"].as_array().expect("classes");
    assert_eq!(
        classes.len(),
        theirs["classes"].as_object().expect("classes").len(),
        "class count"
    );
    for (k, c) in classes.iter().enumerate() {
        let r = &theirs["classes"][(k + 1).to_string()];
        let name = c["name"].as_str().unwrap_or("?");
        for key in ["ap_50", "ap_75", "ap_50_95", "max_recall"] {
            close(&format!("{name} {key}"), &c[key], &r[key], tol);
        }
        for (a, b) in [
            ("true_positives", "tp"),
            ("false_positives", "fp"),
            ("false_negatives", "fn"),
        ] {
            assert_eq!(c[a], r[b], "{name} {a}");
        }
        let (pa, pb) = (
            c["pr_curve"].as_array().expect("pr"),
            r["pr_curve"].as_array().expect("pr"),
        );
        assert_eq!(pa.len(), pb.len(), "{name} pr_curve length");
        for (i, (x, y)) in pa.iter().zip(pb).enumerate() {
            close(&format!("{name} pr_curve[{i}]"), x, y, tol);
        }
    }
}
