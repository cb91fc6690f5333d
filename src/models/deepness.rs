//! Models as GIS users already have them: ONNX files carrying Deepness-style `metadata_props`
//! (the QGIS plugin "Deepness": `model_type`, `class_names`, `resolution` in cm/px,
//! `tiles_size`, `tiles_overlap` in percent, `seg_thresh`, `det_conf`, `det_iou_thresh`,
//! `det_type`, `standardization_mean`/`_std`). Such a file runs without a hand-written
//! manifest: this module turns its metadata into one.

use std::collections::BTreeMap;
use std::path::Path;

use super::detection::DetectorManifest;
use super::manifest::{
    DetectionSpec, GraphSpec, Manifest, ManifestCommon, Precision, Preprocess, SegmentationSpec,
    TilingSpec,
};
use super::segmentation::SegmenterManifest;
use super::{ModelError, ModelPackage};
use crate::runtime::{create_session, Runtime, SessionOptions};

fn bad(path: &Path, reason: String) -> ModelError {
    ModelError::Package {
        path: path.display().to_string(),
        reason,
    }
}

fn floats(v: &str) -> Option<Vec<f32>> {
    serde_json::from_str::<Vec<f32>>(v).ok()
}

/// Class names from Deepness's `class_names`: a JSON (or Python-literal) dict `{0: 'a', 1: 'b'}`.
fn class_names(v: &str) -> Option<Vec<String>> {
    let json = v.replace('\'', "\"");
    let map: BTreeMap<String, String> = serde_json::from_str(&json).ok().or_else(|| {
        // Python dict with integer keys: {0: "a"} -> {"0": "a"}
        let mut out = String::new();
        let mut in_str = false;
        let mut num = String::new();
        for c in json.chars() {
            if c == '"' {
                in_str = !in_str;
            }
            if !in_str && c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            if !num.is_empty() {
                out.push('"');
                out.push_str(&num);
                out.push('"');
                num.clear();
            }
            out.push(c);
        }
        serde_json::from_str(&out).ok()
    })?;
    let mut items: Vec<(usize, String)> = map
        .into_iter()
        .filter_map(|(k, v)| k.trim().parse().ok().map(|k| (k, v)))
        .collect();
    items.sort();
    Some(items.into_iter().map(|(_, v)| v).collect())
}

/// Build a package for a bare ONNX file from its Deepness metadata.
///
/// # Errors
/// The file does not load, has no `model_type`, or a value cannot be read.
pub fn package_from_onnx(runtime: &Runtime, onnx: &Path) -> Result<ModelPackage, ModelError> {
    let session = create_session(runtime, onnx, &SessionOptions::default())?;
    let meta = session
        .session
        .metadata()
        .map_err(|e| bad(onnx, e.to_string()))?;
    let get = |k: &str| meta.custom(k).filter(|v| !v.trim().is_empty());
    let model_type = get("model_type").ok_or_else(|| {
        bad(
            onnx,
            "no model.toml next to it and no Deepness metadata (model_type) inside it".into(),
        )
    })?;
    let model_type = model_type
        .trim()
        .trim_matches(|c| c == '"' || c == '\'')
        .to_ascii_lowercase();
    let inputs = session.inputs();
    let outputs = session.outputs();
    let (Some(input), Some(output)) = (inputs.first(), outputs.first()) else {
        return Err(bad(onnx, "the graph has no input or no output".into()));
    };
    let size = get("tile_size")
        .or_else(|| get("tiles_size"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .or_else(|| {
            input
                .shape
                .get(3)
                .copied()
                .filter(|&d| d > 0)
                .map(|d| d as usize)
        })
        .ok_or_else(|| {
            bad(
                onnx,
                "tile size unknown: no tiles_size metadata and a dynamic input width".into(),
            )
        })?;
    let mean = get("standardization_mean")
        .and_then(|v| floats(&v))
        .unwrap_or_else(|| vec![0.0; 3]);
    let std = get("standardization_std")
        .and_then(|v| floats(&v))
        .unwrap_or_else(|| vec![1.0; 3]);
    let classes = get("class_names")
        .map(|v| {
            class_names(&v).ok_or_else(|| bad(onnx, format!("class_names '{v}' is not a dict")))
        })
        .transpose()?;
    let num = |k: &str| get(k).and_then(|v| v.trim().parse::<f64>().ok());
    let overlap_pct = num("tiles_overlap").unwrap_or(0.0);
    let tiling = TilingSpec {
        gsd: num("resolution").map(|cm| cm / 100.0),
        overlap: Some(((size as f64) * overlap_pct / 100.0).round() as usize),
    };
    let file = onnx
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or_else(|| bad(onnx, "not a file".into()))?;
    let graph = GraphSpec {
        onnx: file,
        input: input.name.clone(),
        output: output.name.clone(),
    };
    let out_channels = output.shape.get(1).copied().unwrap_or(-1);
    let parts = Parts {
        name: onnx
            .file_stem()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        preprocess: Preprocess {
            size,
            mean,
            std,
            channel_order: "rgb".into(),
            value_range: 255.0,
        },
        graph,
        tiling,
    };
    let manifest = match model_type.as_str() {
        "segmentor" | "segmenter" | "segmentation" => {
            segmenter(parts, classes, out_channels, num("seg_thresh"))
        }
        "detector" | "detection" => {
            let classes =
                classes.ok_or_else(|| bad(onnx, "a detector needs class_names metadata".into()))?;
            let det_type = get("det_type").unwrap_or_default();
            detector(
                parts,
                classes,
                &det_type,
                num("det_conf"),
                num("det_iou_thresh"),
            )
        }
        other => {
            return Err(bad(
                onnx,
                format!("Deepness model_type '{other}' is not supported (Segmentor, Detector)"),
            ))
        }
    };
    Ok(ModelPackage {
        dir: onnx.parent().map(Path::to_path_buf).unwrap_or_default(),
        manifest,
    })
}

/// What every model read from Deepness metadata has, whatever its family.
struct Parts {
    name: String,
    preprocess: Preprocess,
    graph: GraphSpec,
    tiling: TilingSpec,
}

impl Parts {
    fn common(&self, family: &str) -> ManifestCommon {
        ManifestCommon {
            family: family.into(),
            architecture: None,
            name: self.name.clone(),
            trained: true,
            source: Some("Deepness metadata_props".into()),
            precision: Precision::default(),
        }
    }
}

/// A Deepness segmentor: one output channel is P(class 1), more are class probabilities.
fn segmenter(
    parts: Parts,
    classes: Option<Vec<String>>,
    out_channels: i64,
    threshold: Option<f64>,
) -> Manifest {
    let format = if out_channels == 1 {
        "probability"
    } else {
        "probabilities"
    };
    let classes = classes.unwrap_or_else(|| {
        let n = if out_channels > 1 {
            out_channels as usize
        } else {
            2
        };
        (0..n).map(|i| format!("class_{i}")).collect()
    });
    let segmentation = SegmentationSpec {
        format: format.into(),
        classes,
        threshold: threshold.map_or(0.5, |v| v as f32),
        // Deepness's convention: class 0 is the background.
        background: Some(super::manifest::ClassRef::Index(0)),
        margin: None,
    };
    let common = parts.common(super::segmentation::FAMILY);
    let tiling = Some(parts.tiling);
    Manifest::new(
        common,
        tiling.clone(),
        None,
        SegmenterManifest {
            model: Some(parts.graph),
            preprocess: Some(parts.preprocess),
            segmentation: Some(segmentation),
            prompted: None,
            tokenizer: None,
            tiling,
        },
    )
}

/// A Deepness detector: YOLOv5/v7 rows when `det_type` says so, else YOLOv8 columns.
fn detector(
    parts: Parts,
    classes: Vec<String>,
    det_type: &str,
    confidence: Option<f64>,
    iou: Option<f64>,
) -> Manifest {
    let det_type = det_type.to_ascii_uppercase();
    let format = if det_type.contains("V5") || det_type.contains("V7") {
        "yolov5"
    } else {
        "yolov8"
    };
    let detection = DetectionSpec {
        format: format.into(),
        classes,
        confidence: confidence.map_or(0.25, |v| v as f32),
        iou: iou.map_or(0.45, |v| v as f32),
        strides: None,
        decoded: false,
        text_threshold: None,
    };
    let common = parts.common(super::detection::FAMILY);
    let tiling = Some(parts.tiling);
    Manifest::new(
        common,
        tiling.clone(),
        None,
        DetectorManifest {
            model: Some(parts.graph),
            preprocess: Some(parts.preprocess),
            detection: Some(detection),
            prompted: None,
            tokenizer: None,
            tiling,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_in_json_and_python_forms() {
        assert_eq!(
            class_names(r#"{"0": "background", "1": "field"}"#),
            Some(vec!["background".into(), "field".into()])
        );
        assert_eq!(
            class_names("{0: 'background', 1: 'field'}"),
            Some(vec!["background".into(), "field".into()])
        );
        assert_eq!(
            class_names("{1: 'b', 0: 'a'}"),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(class_names("nonsense"), None);
    }
}
