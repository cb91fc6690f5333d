//! Box decoders for object-detector outputs, one image at a time.
//!
//! Three output layouts are understood, all in model-input pixels (x right, y down):
//!
//! - **YOLOv8 / YOLO11** (Ultralytics, `ultralytics/ultralytics`): the exported head gives
//!   `[B, 4 + C, N]`, one column per candidate: `cx, cy, w, h`, then `C` class scores that are
//!   already sigmoid-ed. There is no objectness; a candidate's score is its best class score.
//! - **YOLOv5 / YOLOv7** (Ultralytics `ultralytics/yolov5`, `WongKinYiu/yolov7`): `[B, N, 5 + C]`,
//!   one row per candidate: `cx, cy, w, h, objectness`, then `C` class scores; the score is
//!   `objectness * class score`.
//! - **YOLOX** (Ge et al. 2021, "YOLOX: Exceeding YOLO Series in 2021"; `Megvii-BaseDetection/YOLOX`):
//!   `[B, N, 5 + C]` like YOLOv5, but exported by default *before* decoding (`decode_in_inference
//!   = False`): the rows are the cells of one grid per stride (8, 16, 32 by default), stride by
//!   stride, each grid row-major (x fastest), with `ceil(input / stride)` cells per axis. A cell
//!   `(gx, gy)` of stride `s` decodes to `cx = (out0 + gx) * s`, `cy = (out1 + gy) * s`,
//!   `w = exp(out2) * s`, `h = exp(out3) * s`. Objectness and class scores are already
//!   sigmoid-ed. Exports made with decoding in the graph are read like YOLOv5
//!   (`decoded: true`, format name `yolox-decoded`).
//!
//! [`decode`] takes one image's slice of the batch output, keeps candidates scoring at least the
//! confidence threshold, takes each candidate's best class, clips the box to the input and
//! returns at most `max_boxes` boxes, best first. It does **no** non-maximum suppression: raw
//! YOLO outputs hold several candidates per object, and the scene-wide merge
//! ([`crate::stitch::boxes::merge`]) removes them together with the duplicates that overlapping
//! tiles produce. Set `max_boxes` with that in mind (Ultralytics caps candidates at 30 000
//! before NMS and 300 after).

use std::fmt;
use std::str::FromStr;

use ndarray::{ArrayView2, ArrayViewD, Axis, Ix2};
use serde::Serialize;
use thiserror::Error;

use super::manifest::family_manifest;
use super::registry::{InputContract, ModelFamily, TimedGraph};
use crate::runtime::{Runtime, SessionOptions};
use crate::task::Task;

/// YOLOX's default strides (the P3, P4 and P5 feature maps).
pub const YOLOX_STRIDES: [usize; 3] = [8, 16, 32];

/// Output layouts of detectors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum DetectionFormat {
    /// Ultralytics YOLOv8/YOLO11: `[B, 4 + C, N]`: `cx, cy, w, h` (input pixels), then `C` class
    /// scores (already sigmoid-ed).
    YoloV8,
    /// YOLOv5/v7: `[B, N, 5 + C]`: `cx, cy, w, h, objectness`, `C` class scores;
    /// score = objectness * class score.
    YoloV5,
    /// YOLOX `[B, N, 5 + C]`. With `decoded: false` (the raw head output), rows are grid cells for
    /// each stride in `strides` (row-major, stride by stride) and are decoded as
    /// `cx = (out0 + gx) * s`, `cy = (out1 + gy) * s`, `w = exp(out2) * s`, `h = exp(out3) * s`.
    /// With `decoded: true` the rows already hold `cx, cy, w, h` in input pixels.
    /// Score = objectness * class score (both already sigmoid-ed).
    Yolox { strides: Vec<usize>, decoded: bool },
}

impl DetectionFormat {
    /// YOLOX raw head output with the default strides [8, 16, 32].
    pub fn yolox() -> DetectionFormat {
        DetectionFormat::Yolox {
            strides: YOLOX_STRIDES.to_vec(),
            decoded: false,
        }
    }

    /// The format's name as accepted by [`FromStr`].
    pub fn name(&self) -> &'static str {
        match self {
            DetectionFormat::YoloV8 => "yolov8",
            DetectionFormat::YoloV5 => "yolov5",
            DetectionFormat::Yolox { decoded: false, .. } => "yolox",
            DetectionFormat::Yolox { decoded: true, .. } => "yolox-decoded",
        }
    }
}

impl fmt::Display for DetectionFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DetectionFormat {
    type Err = DetectionError;

    /// `yolov8` (alias `yolo11`, `yolov11`), `yolov5` (alias `yolov7`), `yolox` (raw head, default
    /// strides) and `yolox-decoded`; case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "yolov8" | "yolo11" | "yolov11" => Ok(DetectionFormat::YoloV8),
            "yolov5" | "yolov7" => Ok(DetectionFormat::YoloV5),
            "yolox" => Ok(DetectionFormat::yolox()),
            "yolox-decoded" => Ok(DetectionFormat::Yolox {
                strides: YOLOX_STRIDES.to_vec(),
                decoded: true,
            }),
            _ => Err(DetectionError::UnknownFormat(s.to_string())),
        }
    }
}

/// Why a detector output could not be decoded.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum DetectionError {
    #[error(
        "unknown detection format '{0}' (known: yolov8, yolo11, yolov5, yolov7, yolox, yolox-decoded)"
    )]
    UnknownFormat(String),
    /// The output's shape does not fit the format and class count.
    #[error(
        "output shape {shape:?} does not fit {format} with {num_classes} classes: expected {expected}"
    )]
    Shape {
        shape: Vec<usize>,
        format: &'static str,
        num_classes: usize,
        expected: String,
    },
    /// A raw YOLOX output whose row count is not the number of grid cells.
    #[error(
        "output shape {shape:?} does not fit yolox with strides {strides:?} on a {width}x{height} input: \
         expected {expected} rows (grid cells), found {found}"
    )]
    Grid {
        shape: Vec<usize>,
        strides: Vec<usize>,
        width: usize,
        height: usize,
        expected: usize,
        found: usize,
    },
    /// Arguments that cannot describe a detector (no classes, empty input, zero stride...).
    #[error("detection decoding: {0}")]
    Options(String),
}

/// A box in model-input pixel coordinates (x right, y down), clipped to the input.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PixelBox {
    pub class: usize,
    pub score: f32,
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
    /// Grounding DINO: the box's phrase, an index into [`DetectorModel::phrases`].
    pub phrase: Option<u32>,
}

impl PixelBox {
    pub fn width(&self) -> f32 {
        self.x1 - self.x0
    }

    pub fn height(&self) -> f32 {
        self.y1 - self.y0
    }

    /// The box with x scaled by `sx` and y by `sy`: from model-input pixels to tile pixels when
    /// the model input is not the tile size (`sx = tile width / input width`).
    pub fn scaled(&self, sx: f32, sy: f32) -> PixelBox {
        PixelBox {
            x0: self.x0 * sx,
            x1: self.x1 * sx,
            y0: self.y0 * sy,
            y1: self.y1 * sy,
            ..*self
        }
    }
}

/// Decode one image's raw output into boxes with `score >= confidence`, clipped to
/// `input_size`, at most `max_boxes`, best first (ties: the earlier candidate first).
///
/// `output` is the image's slice of the batch output with the batch axis removed
/// (`batch.index_axis(Axis(0), i)`); a 3-D view whose first axis has length 1 is accepted too.
/// `input_size` is the model input as `(width, height)` in pixels. Each candidate gets its best
/// class (the lowest index among equals). Boxes with non-finite values and boxes with no area
/// left after clipping are dropped.
///
/// # Errors
/// An output whose shape does not fit the format and `num_classes` (the message names the
/// shape and what was expected), a raw YOLOX output whose row count is not the grid size,
/// no classes, an empty input, a zero or missing stride, or a NaN confidence.
pub fn decode(
    format: &DetectionFormat,
    output: ArrayViewD<'_, f32>,
    input_size: (usize, usize),
    num_classes: usize,
    confidence: f32,
    max_boxes: usize,
) -> Result<Vec<PixelBox>, DetectionError> {
    if num_classes == 0 {
        return Err(DetectionError::Options(
            "a detector needs at least one class".into(),
        ));
    }
    if input_size.0 == 0 || input_size.1 == 0 {
        return Err(DetectionError::Options(format!(
            "model input {}x{} is empty",
            input_size.0, input_size.1
        )));
    }
    if confidence.is_nan() {
        return Err(DetectionError::Options(
            "the confidence threshold is NaN".into(),
        ));
    }
    let shape = output.shape().to_vec();
    let view = as_matrix(output);
    let (rows, cols) = view.as_ref().map_or((0, 0), |v| v.dim());
    let shape_err = |expected: String| DetectionError::Shape {
        shape: shape.clone(),
        format: format.name(),
        num_classes,
        expected,
    };
    let clip = Clip {
        w: input_size.0 as f32,
        h: input_size.1 as f32,
    };
    let mut found: Vec<(usize, PixelBox)> = Vec::new();
    match format {
        DetectionFormat::YoloV8 => {
            let Some(v) = view.filter(|_| rows == 4 + num_classes) else {
                return Err(shape_err(format!("[4 + {num_classes}, N]")));
            };
            for (i, col) in v.axis_iter(Axis(1)).enumerate() {
                let (class, score) = best_class(col.iter().skip(4).copied());
                if score.is_nan() || score < confidence {
                    continue;
                }
                if let Some(b) = clip.center_box(class, score, col[0], col[1], col[2], col[3]) {
                    found.push((i, b));
                }
            }
        }
        DetectionFormat::YoloV5 | DetectionFormat::Yolox { .. } => {
            let Some(v) = view.filter(|_| cols == 5 + num_classes) else {
                return Err(shape_err(format!("[N, 5 + {num_classes}]")));
            };
            let cells = match format {
                DetectionFormat::Yolox {
                    strides,
                    decoded: false,
                } => Some(yolox_cells(strides, input_size, &shape, rows)?),
                _ => None,
            };
            for (i, row) in v.axis_iter(Axis(0)).enumerate() {
                let (class, class_score) = best_class(row.iter().skip(5).copied());
                let score = row[4] * class_score;
                if score.is_nan() || score < confidence {
                    continue;
                }
                let (cx, cy, w, h) = match &cells {
                    Some(cells) => {
                        let (gx, gy, s) = cells[i];
                        (
                            (row[0] + gx) * s,
                            (row[1] + gy) * s,
                            row[2].exp() * s,
                            row[3].exp() * s,
                        )
                    }
                    None => (row[0], row[1], row[2], row[3]),
                };
                if let Some(b) = clip.center_box(class, score, cx, cy, w, h) {
                    found.push((i, b));
                }
            }
        }
    }
    // Best first; candidates of equal score keep their output order, so the result is
    // deterministic.
    found.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then(a.0.cmp(&b.0)));
    found.truncate(max_boxes);
    Ok(found.into_iter().map(|(_, b)| b).collect())
}

/// The output as a 2-D matrix (dropping a leading batch axis of length 1), or `None`.
fn as_matrix(output: ArrayViewD<'_, f32>) -> Option<ArrayView2<'_, f32>> {
    let output = if output.ndim() == 3 && output.shape()[0] == 1 {
        output.index_axis_move(Axis(0), 0)
    } else {
        output
    };
    output.into_dimensionality::<Ix2>().ok()
}

/// `(gx, gy, stride)` of every row of a raw YOLOX output, checked against the row count.
fn yolox_cells(
    strides: &[usize],
    input_size: (usize, usize),
    shape: &[usize],
    rows: usize,
) -> Result<Vec<(f32, f32, f32)>, DetectionError> {
    if strides.is_empty() || strides.contains(&0) {
        return Err(DetectionError::Options(format!(
            "yolox strides {strides:?} must be a non-empty list of positive numbers"
        )));
    }
    let (width, height) = input_size;
    // Each stride-2 stage of the backbone (3x3 convolutions with padding 1, and the Focus
    // space-to-depth stem) rounds up, so a grid has ceil(input / stride) cells per axis.
    let expected: usize = strides
        .iter()
        .map(|&s| width.div_ceil(s) * height.div_ceil(s))
        .sum();
    if expected != rows {
        return Err(DetectionError::Grid {
            shape: shape.to_vec(),
            strides: strides.to_vec(),
            width,
            height,
            expected,
            found: rows,
        });
    }
    let mut cells = Vec::with_capacity(expected);
    for &s in strides {
        for gy in 0..height.div_ceil(s) {
            for gx in 0..width.div_ceil(s) {
                cells.push((gx as f32, gy as f32, s as f32));
            }
        }
    }
    Ok(cells)
}

/// The index and value of the highest score (the first among equals; NaN never wins).
fn best_class(scores: impl Iterator<Item = f32>) -> (usize, f32) {
    let mut best = (0, f32::NAN);
    for (i, s) in scores.enumerate() {
        if s > best.1 || best.1.is_nan() && !s.is_nan() {
            best = (i, s);
        }
    }
    best
}

/// Clipping to the model input.
struct Clip {
    w: f32,
    h: f32,
}

impl Clip {
    /// A centre-size box clipped to the input; `None` when a value is not finite or nothing of
    /// the box is left.
    fn center_box(
        &self,
        class: usize,
        score: f32,
        cx: f32,
        cy: f32,
        w: f32,
        h: f32,
    ) -> Option<PixelBox> {
        if !(cx.is_finite() && cy.is_finite() && w.is_finite() && h.is_finite()) {
            return None;
        }
        let b = PixelBox {
            class,
            score,
            x0: (cx - w / 2.0).clamp(0.0, self.w),
            y0: (cy - h / 2.0).clamp(0.0, self.h),
            x1: (cx + w / 2.0).clamp(0.0, self.w),
            y1: (cy + h / 2.0).clamp(0.0, self.h),
            phrase: None,
        };
        (b.x1 > b.x0 && b.y1 > b.y0).then_some(b)
    }
}

/// The family name in `model.toml`.
pub const FAMILY: &str = "detector";

family_manifest! {
    /// A detector manifest's sections (`[model]`, `[preprocess]` and `[detection]` required;
    /// `[prompted]` and `[tokenizer]` for open-vocabulary detectors).
    pub struct DetectorManifest {
        pub model: Option<super::GraphSpec>,
        pub preprocess: Option<super::Preprocess>,
        pub detection: Option<super::DetectionSpec>,
        pub prompted: Option<super::PromptedSpec>,
        pub tokenizer: Option<super::TokenizerSpec>,
        pub tiling: Option<super::TilingSpec>,
    }
}

/// The detector family ([`super::registry`]).
#[derive(Debug)]
pub struct Detector;

impl ModelFamily for Detector {
    fn name(&self) -> &'static str {
        FAMILY
    }

    fn tasks(&self) -> &'static [Task] {
        &[Task::Detect]
    }

    fn check(&self, runtime: &Runtime, package: &super::ModelPackage) -> Vec<String> {
        let options = SessionOptions::default();
        match DetectorModel::from_package(runtime, package.clone(), &package.dir, &options) {
            Ok(_) => Vec::new(),
            Err(super::ModelError::Invalid { problems, .. }) => problems,
            Err(e) => vec![e.to_string()],
        }
    }

    fn parse(&self, text: &str) -> Result<super::Manifest, String> {
        let (common, m) = DetectorManifest::from_toml(text)?;
        Ok(super::Manifest::new(common, m.tiling.clone(), None, m))
    }

    fn input(&self, package: &super::ModelPackage) -> Option<InputContract> {
        let m = package.manifest.sections::<DetectorManifest>()?;
        Some(InputContract {
            size: m.preprocess.as_ref()?.size,
            any_size: false,
            prompted: OpenVocab::from_format(&m.detection.as_ref()?.format).is_some(),
            bytes: false,
        })
    }

    fn timed(&self) -> bool {
        true
    }

    fn load_timed(
        &self,
        runtime: &Runtime,
        path: &std::path::Path,
        options: &SessionOptions,
    ) -> Result<TimedGraph, super::ModelError> {
        let mut m = DetectorModel::load(runtime, path, options)?;
        if m.is_prompted() {
            return Err(super::ModelError::Unsupported(
                "bench-model does not time open-vocabulary detectors".into(),
            ));
        }
        let (provider, fallback) = m.provider();
        let fallback = fallback.map(str::to_string);
        Ok(TimedGraph {
            provider,
            fallback,
            input_size: m.input_size(),
            run: Box::new(move |x: &ndarray::Array4<f32>| m.detect(x.view(), 1.0).map(|_| ())),
        })
    }
}

/// A loaded detector: a package with `[model]`, `[preprocess]` and `[detection]`, or an ONNX
/// file with Deepness metadata.
pub struct DetectorModel {
    package: super::ModelPackage,
    graph: super::GraphSpec,
    pre: super::Preprocess,
    spec: super::DetectionSpec,
    format: DetectionFormat,
    /// The graph's batch size when it is fixed (e.g. 1), else `None`.
    fixed_batch: Option<usize>,
    session: crate::runtime::ModelSession,
    /// Open-vocabulary detectors (OWL-ViT): text queries instead of fixed classes.
    prompted: Option<PromptedQueries>,
}

/// The open-vocabulary detector formats (`[detection] format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpenVocab {
    /// OWL-ViT: logits `[B, P, Q]` (one per patch and query), boxes `[B, P, 4]`.
    OwlVit,
    /// OWLv2: as OWL-ViT; its processor pads images to a square with black before resizing,
    /// so tiles cut by the scene edge are padded with black (not the mean colour).
    Owlv2,
    /// Grounding DINO: one merged text `"a. b."`, logits `[B, Q, T]` per text position.
    GroundingDino,
}

impl OpenVocab {
    fn from_format(format: &str) -> Option<OpenVocab> {
        match format {
            "owlvit" => Some(OpenVocab::OwlVit),
            "owlv2" => Some(OpenVocab::Owlv2),
            "grounding-dino" => Some(OpenVocab::GroundingDino),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            OpenVocab::OwlVit => "owlvit",
            OpenVocab::Owlv2 => "owlv2",
            OpenVocab::GroundingDino => "grounding-dino",
        }
    }
}

/// The text side of an open-vocabulary detector.
struct PromptedQueries {
    kind: OpenVocab,
    spec: super::PromptedSpec,
    tok: super::TokenizerSpec,
    tokenizer: tokenizers::Tokenizer,
    queries: Vec<String>,
    tokens: Option<super::Tokens>,
    /// Grounding DINO: for each token of the merged text, the query it belongs to (`None`
    /// for `[CLS]`, the `.` separators and `[SEP]`).
    token_query: Vec<Option<usize>>,
    /// Grounding DINO: the text threshold of the phrases.
    text_threshold: f32,
    /// Grounding DINO: every phrase seen so far ([`PixelBox::phrase`] indexes it).
    phrases: Vec<String>,
    phrase_ids: std::collections::HashMap<String, u32>,
}

/// Grounding DINO's prompt text, as `GroundingDinoProcessor` merges a list of labels:
/// each trimmed and lower-cased, joined by `". "`, with a final `"."`. Also returns each
/// label's byte range in the text.
pub fn grounding_text(labels: &[String]) -> (String, Vec<std::ops::Range<usize>>) {
    let mut text = String::new();
    let mut spans = Vec::with_capacity(labels.len());
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            text.push_str(". ");
        }
        let l = l.trim().to_lowercase();
        spans.push(text.len()..text.len() + l.len());
        text.push_str(&l);
    }
    text.push('.');
    (text, spans)
}

impl std::fmt::Debug for DetectorModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectorModel")
            .field("dir", &self.package.dir)
            .finish()
    }
}

impl DetectorModel {
    /// Load a detector.
    ///
    /// # Errors
    /// Missing sections, an unknown format, a graph without the named input/output, or the
    /// provider failing to load.
    pub fn load(
        runtime: &crate::runtime::Runtime,
        path: &std::path::Path,
        options: &crate::runtime::SessionOptions,
    ) -> Result<DetectorModel, super::ModelError> {
        let package = super::load_package(runtime, path)?;
        DetectorModel::from_package(runtime, package, path, options)
    }

    /// The model of a loaded package; `path` (as the user named it) is for messages.
    ///
    /// # Errors
    /// As [`DetectorModel::load`].
    pub fn from_package(
        runtime: &crate::runtime::Runtime,
        package: super::ModelPackage,
        path: &std::path::Path,
        options: &crate::runtime::SessionOptions,
    ) -> Result<DetectorModel, super::ModelError> {
        let invalid = |problems: Vec<String>| super::ModelError::Invalid {
            path: path.display().to_string(),
            problems,
        };
        let Some(m) = package.manifest.sections::<DetectorManifest>() else {
            return Err(invalid(vec![format!(
                "family '{}' is not a detector",
                package.manifest.family
            )]));
        };
        let (Some(graph), Some(pre), Some(spec)) =
            (m.model.clone(), m.preprocess.clone(), m.detection.clone())
        else {
            return Err(invalid(vec![
                "a detector manifest needs [model], [preprocess] and [detection] sections".into(),
            ]));
        };
        // Open-vocabulary detectors: text queries, logits and normalised boxes [B, N, 4].
        let prompted = if let Some(kind) = OpenVocab::from_format(&spec.format) {
            let name = kind.name();
            let (Some(p), Some(tok)) = (m.prompted.clone(), m.tokenizer.clone()) else {
                return Err(invalid(vec![format!(
                    "the {name} format needs [prompted] (with boxes) and [tokenizer] sections"
                )]));
            };
            if p.boxes.is_none() {
                return Err(invalid(vec![format!(
                    "the {name} format needs prompted.boxes (the box output)"
                )]));
            }
            let text_threshold = match (kind, spec.text_threshold) {
                (OpenVocab::GroundingDino, t) => t.unwrap_or(0.25),
                (_, None) => 0.0,
                (_, Some(_)) => {
                    return Err(invalid(vec![format!(
                        "detection.text_threshold is for the grounding-dino format, not {name}"
                    )]))
                }
            };
            if !(0.0..=1.0).contains(&text_threshold) {
                return Err(invalid(vec![
                    "detection.text_threshold must be between 0 and 1".into(),
                ]));
            }
            let tokenizer = super::tokenizer::load_tokenizer(&package.file(&tok.file))?;
            Some(PromptedQueries {
                kind,
                spec: p,
                tok,
                tokenizer,
                queries: Vec::new(),
                tokens: None,
                token_query: Vec::new(),
                text_threshold,
                phrases: Vec::new(),
                phrase_ids: std::collections::HashMap::new(),
            })
        } else {
            None
        };
        let format_name = if prompted.is_some() {
            "yolov8"
        } else {
            spec.format.as_str()
        };
        let mut format: DetectionFormat = format_name
            .parse()
            .map_err(|e: DetectionError| invalid(vec![e.to_string()]))?;
        if let DetectionFormat::Yolox { strides, decoded } = &mut format {
            if let Some(s) = &spec.strides {
                *strides = s.clone();
            }
            *decoded = spec.decoded;
        }
        let mut problems = Vec::new();
        if spec.classes.is_empty() && prompted.is_none() {
            problems.push("detection.classes is empty".to_string());
        }
        if !(0.0..=1.0).contains(&spec.confidence) || !(0.0..=1.0).contains(&spec.iou) {
            problems
                .push("detection.confidence and detection.iou must be between 0 and 1".to_string());
        }
        let session = package.session(runtime, &graph.onnx, options)?;
        let mut fixed_batch = None;
        match session.inputs().iter().find(|i| i.name == graph.input) {
            None => problems.push(format!("the graph has no input '{}'", graph.input)),
            Some(i) => {
                let s = pre.size as i64;
                if i.shape.len() != 4
                    || [3, s, s]
                        .iter()
                        .zip(&i.shape[1..])
                        .any(|(w, g)| *g != -1 && g != w)
                {
                    problems.push(format!(
                        "input '{}' has shape {:?}, expected [B, 3, {s}, {s}]",
                        i.name, i.shape
                    ));
                }
                if i.shape.first().is_some_and(|&b| b > 0) {
                    fixed_batch = Some(i.shape[0] as usize);
                }
            }
        }
        if !session.outputs().iter().any(|o| o.name == graph.output) {
            problems.push(format!("the graph has no output '{}'", graph.output));
        }
        if let Some(p) = &prompted {
            let boxes = p.spec.boxes.as_deref().unwrap_or_default();
            if !session.outputs().iter().any(|o| o.name == boxes) {
                problems.push(format!(
                    "the graph has no output '{boxes}' (prompted.boxes)"
                ));
            }
            for (key, name) in [
                ("prompted.input_ids", Some(&p.spec.input_ids)),
                ("prompted.attention_mask", p.spec.attention_mask.as_ref()),
            ] {
                if let Some(name) = name {
                    if !session.inputs().iter().any(|i| &i.name == name) {
                        problems.push(format!("the graph has no input '{name}' ({key})"));
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        Ok(DetectorModel {
            prompted,
            package,
            graph,
            pre,
            spec,
            format,
            fixed_batch,
            session,
        })
    }

    pub fn package(&self) -> &super::ModelPackage {
        &self.package
    }

    pub fn input_size(&self) -> usize {
        self.pre.size
    }

    /// The batch size the graph requires when its batch axis is fixed, else `None`.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    /// Class names: the manifest's, or the text queries of an open-vocabulary detector.
    pub fn classes(&self) -> Vec<String> {
        match &self.prompted {
            Some(p) => p.queries.clone(),
            None => self.spec.classes.clone(),
        }
    }

    /// True for open-vocabulary detectors (they need [`DetectorModel::set_queries`]).
    pub fn is_prompted(&self) -> bool {
        self.prompted.is_some()
    }

    /// Set the text queries of an open-vocabulary detector.
    ///
    /// # Errors
    /// An empty list, a model without text input, or a tokenizer failure.
    pub fn set_queries(&mut self, queries: &[String]) -> Result<(), super::ModelError> {
        let path = self.package.dir.display().to_string();
        let Some(p) = self.prompted.as_mut() else {
            return Err(super::ModelError::Input {
                path,
                reason: "this detector takes no text queries".into(),
            });
        };
        if queries.is_empty() || queries.iter().any(|q| q.trim().is_empty()) {
            return Err(super::ModelError::Input {
                path,
                reason: "give at least one non-empty query".into(),
            });
        }
        let file = self.package.file(&p.tok.file);
        if p.kind == OpenVocab::GroundingDino {
            // GroundingDinoProcessor merges a list of labels into one text only when no label
            // holds a '.' (else it reads the list as a batch of texts).
            if let Some(q) = queries.iter().find(|q| q.contains('.')) {
                return Err(super::ModelError::Input {
                    path,
                    reason: format!(
                        "query '{q}' holds a '.': Grounding DINO separates the queries with '.'"
                    ),
                });
            }
            let (text, spans) = grounding_text(queries);
            let enc = p.tokenizer.encode(text.as_str(), true).map_err(|e| {
                super::ModelError::Tokenizer {
                    path: file.display().to_string(),
                    reason: format!("'{text}': {e}"),
                }
            })?;
            let special = enc.get_special_tokens_mask();
            p.token_query = enc
                .get_offsets()
                .iter()
                .enumerate()
                .map(|(k, &(a, b))| {
                    let special = special.get(k).is_some_and(|&m| m != 0);
                    (!special && b > a)
                        .then(|| spans.iter().position(|s| a >= s.start && b <= s.end))
                        .flatten()
                })
                .collect();
            let ids: Vec<i64> = enc.get_ids().iter().map(|&t| i64::from(t)).collect();
            // tokenizer.context_length: the model's max_text_len (256 in the published
            // checkpoints), its text positions.
            let t = p.tok.context_length;
            if t > 0 && ids.len() > t {
                return Err(super::ModelError::Input {
                    path,
                    reason: format!(
                        "the queries make {} tokens, more than the model's {t} text positions",
                        ids.len()
                    ),
                });
            }
            p.tokens = Some(super::Tokens {
                mask: vec![1; ids.len()],
                rows: 1,
                context: ids.len(),
                ids,
            });
        } else {
            p.tokens = Some(super::tokenize_prompts(
                &p.tokenizer,
                &p.tok,
                &file,
                queries,
            )?);
        }
        p.queries = queries.to_vec();
        Ok(())
    }

    /// Set the text threshold of a Grounding DINO package (`None`: the manifest's).
    ///
    /// # Errors
    /// A threshold for a detector that has no text threshold.
    pub fn set_text_threshold(&mut self, t: Option<f32>) -> Result<(), super::ModelError> {
        let Some(t) = t else { return Ok(()) };
        match self.prompted.as_mut() {
            Some(p) if p.kind == OpenVocab::GroundingDino => {
                p.text_threshold = t;
                Ok(())
            }
            _ => Err(super::ModelError::Input {
                path: self.package.dir.display().to_string(),
                reason: "this detector takes no text threshold (--text-threshold / \
                         text_threshold is for Grounding DINO packages)"
                    .into(),
            }),
        }
    }

    /// The phrases that [`PixelBox::phrase`] indexes (Grounding DINO), else empty.
    pub fn phrases(&self) -> &[String] {
        self.prompted.as_ref().map_or(&[], |p| &p.phrases)
    }

    /// True when boxes carry phrases (Grounding DINO).
    pub fn has_phrases(&self) -> bool {
        self.prompted
            .as_ref()
            .is_some_and(|p| p.kind == OpenVocab::GroundingDino)
    }

    /// Boxes of a batch of tiles, `inside` giving each tile's `(width, height)` inside the
    /// scene (the rest is padding). OWLv2 pads images to a square with black before
    /// resizing (`Owlv2ImageProcessor`), so there the padding becomes black; the boxes then
    /// scale by the padded side, as its post-processing does. Other detectors: [`Self::detect`].
    ///
    /// # Errors
    /// As [`Self::detect`].
    pub fn detect_tiles(
        &mut self,
        batch: ndarray::ArrayView4<'_, f32>,
        inside: &[(usize, usize)],
        confidence: f32,
    ) -> Result<Vec<Vec<PixelBox>>, super::ModelError> {
        let s = self.pre.size;
        let owlv2 = self
            .prompted
            .as_ref()
            .is_some_and(|p| p.kind == OpenVocab::Owlv2);
        if !owlv2 || inside.iter().all(|&(w, h)| w >= s && h >= s) {
            return self.detect(batch, confidence);
        }
        let mut padded = batch.to_owned();
        self.pad_black(&mut padded, inside);
        self.detect(padded.view(), confidence)
    }

    /// Set the pixels of image `i` outside `inside[i]` to black, normalised.
    fn pad_black(&self, batch: &mut ndarray::Array4<f32>, inside: &[(usize, usize)]) {
        let norm = self.normalizer();
        for (mut img, &(w, h)) in batch.outer_iter_mut().zip(inside) {
            for (c, mut plane) in img.outer_iter_mut().enumerate() {
                let black = -norm.mean[c.min(2)] * norm.inv_std[c.min(2)];
                for ((y, x), v) in plane.indexed_iter_mut() {
                    if x >= w || y >= h {
                        *v = black;
                    }
                }
            }
        }
    }

    pub fn confidence(&self) -> f32 {
        self.spec.confidence
    }

    pub fn iou(&self) -> f32 {
        self.spec.iou
    }

    pub fn provider(&self) -> (&'static str, Option<&str>) {
        (self.session.provider, self.session.fallback.as_deref())
    }

    pub fn normalizer(&self) -> super::Normalizer {
        super::Normalizer::from_preprocess(&self.pre)
    }

    /// Boxes (in input pixels) of every image of a normalised batch `[B, 3, S, S]`, at or above
    /// `confidence`.
    ///
    /// # Errors
    /// Inference failure or an output that does not fit the format.
    pub fn detect(
        &mut self,
        batch: ndarray::ArrayView4<'_, f32>,
        confidence: f32,
    ) -> Result<Vec<Vec<PixelBox>>, super::ModelError> {
        let path = self.session.path.clone();
        let err = |e: &dyn std::fmt::Display| {
            super::ModelError::Runtime(crate::runtime::RuntimeError::Run {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        if self.prompted.is_some() {
            return self.detect_prompted(batch, confidence);
        }
        let b = batch.shape()[0];
        let size = (self.pre.size, self.pre.size);
        let step = self.fixed_batch.unwrap_or(b).max(1);
        let mut out = Vec::with_capacity(b);
        let mut start = 0;
        while start < b {
            let n = step.min(b - start);
            let chunk = batch.slice(ndarray::s![start..start + n, .., .., ..]);
            // A graph of fixed batch size gets its last chunk padded to that size.
            let chunk = if n < step {
                let sh = chunk.shape();
                let mut padded = ndarray::Array4::<f32>::zeros((step, sh[1], sh[2], sh[3]));
                padded
                    .slice_mut(ndarray::s![..n, .., .., ..])
                    .assign(&chunk);
                ndarray::CowArray::from(padded)
            } else {
                chunk.as_standard_layout()
            };
            let input =
                ort::value::TensorRef::from_array_view(chunk.view()).map_err(|e| err(&e))?;
            let outputs = self
                .session
                .session
                .run(ort::inputs![self.graph.input.as_str() => input])
                .map_err(|e| err(&e))?;
            let raw = outputs[self.graph.output.as_str()]
                .try_extract_array::<f32>()
                .map_err(|e| err(&e))?;
            for i in 0..n {
                let one = raw.index_axis(Axis(0), i);
                out.push(
                    decode(
                        &self.format,
                        one,
                        size,
                        self.spec.classes.len(),
                        confidence,
                        10_000,
                    )
                    .map_err(|e| err(&e))?,
                );
            }
            start += n;
        }
        Ok(out)
    }
}

impl DetectorModel {
    /// OWL-ViT: per image patch, the best query's sigmoid score and its box (normalised
    /// `cx, cy, w, h` scaled to the input), kept when the score exceeds `confidence` (as
    /// Hugging Face's `post_process_object_detection` does).
    fn detect_prompted(
        &mut self,
        batch: ndarray::ArrayView4<'_, f32>,
        confidence: f32,
    ) -> Result<Vec<Vec<PixelBox>>, super::ModelError> {
        let path = self.session.path.clone();
        let err = |e: &dyn std::fmt::Display| {
            super::ModelError::Runtime(crate::runtime::RuntimeError::Run {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let Some(p) = &self.prompted else {
            return Err(err(&"not an open-vocabulary detector"));
        };
        if p.kind == OpenVocab::GroundingDino {
            return self.detect_grounded(batch, confidence);
        }
        let Some(tokens) = &p.tokens else {
            return Err(super::ModelError::Input {
                path: path.display().to_string(),
                reason: "no text queries given (--prompts)".into(),
            });
        };
        let boxes_name = p.spec.boxes.clone().unwrap_or_default();
        let q = tokens.rows;
        let ids = ndarray::ArrayView2::from_shape((q, tokens.context), &tokens.ids)
            .map_err(|e| err(&e))?;
        let mask = ndarray::ArrayView2::from_shape((q, tokens.context), &tokens.mask)
            .map_err(|e| err(&e))?;
        let batch = batch.as_standard_layout();
        let mut inputs = ort::inputs![
            self.graph.input.as_str() => ort::value::TensorRef::from_array_view(batch.view()).map_err(|e| err(&e))?,
            p.spec.input_ids.as_str() => ort::value::TensorRef::from_array_view(ids).map_err(|e| err(&e))?,
        ];
        if let Some(m) = &p.spec.attention_mask {
            inputs.push((
                m.as_str().into(),
                ort::value::TensorRef::from_array_view(mask)
                    .map_err(|e| err(&e))?
                    .into(),
            ));
        }
        let outputs = self.session.session.run(inputs).map_err(|e| err(&e))?;
        let logits = outputs[self.graph.output.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| err(&e))?;
        let boxes = outputs[boxes_name.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| err(&e))?;
        let (ls, bs) = (logits.shape().to_vec(), boxes.shape().to_vec());
        let b = batch.shape()[0];
        if ls.len() != 3
            || bs.len() != 3
            || ls[0] != b
            || bs[0] != b
            || ls[1] != bs[1]
            || ls[2] != q
            || bs[2] != 4
        {
            return Err(err(&format!(
                "outputs {ls:?} and {bs:?} do not fit {}: expected [{b}, N, {q}] and [{b}, N, 4]",
                p.kind.name()
            )));
        }
        let s = self.pre.size as f32;
        let mut out = Vec::with_capacity(b);
        for i in 0..b {
            let mut found = Vec::new();
            for n in 0..ls[1] {
                let (mut best, mut label) = (f32::NEG_INFINITY, 0);
                for k in 0..q {
                    let v = logits[[i, n, k]];
                    if v > best {
                        best = v;
                        label = k;
                    }
                }
                let score = 1.0 / (1.0 + (-best).exp());
                if score.is_nan() || score <= confidence {
                    continue;
                }
                let (cx, cy, w, h) = (
                    boxes[[i, n, 0]],
                    boxes[[i, n, 1]],
                    boxes[[i, n, 2]],
                    boxes[[i, n, 3]],
                );
                let (x0, y0) = (
                    ((cx - w / 2.0) * s).clamp(0.0, s),
                    ((cy - h / 2.0) * s).clamp(0.0, s),
                );
                let (x1, y1) = (
                    ((cx + w / 2.0) * s).clamp(0.0, s),
                    ((cy + h / 2.0) * s).clamp(0.0, s),
                );
                if x1 > x0 && y1 > y0 {
                    found.push(PixelBox {
                        class: label,
                        score,
                        x0,
                        y0,
                        x1,
                        y1,
                        phrase: None,
                    });
                }
            }
            found.sort_by(|a, b| b.score.total_cmp(&a.score));
            out.push(found);
        }
        Ok(out)
    }
}

impl DetectorModel {
    /// Grounding DINO, as `GroundingDinoProcessor.post_process_grounded_object_detection`:
    /// per query, probabilities = sigmoid(logits) over the text positions, score = their
    /// maximum, kept when above `confidence`; box = normalised `cx, cy, w, h` scaled to the
    /// input (and clipped to it); phrase = the tokens at positions `1..T-1` whose probability
    /// is above the text threshold, decoded with special tokens kept
    /// (`get_phrases_from_posmap`). The class is the query holding the most probable token.
    fn detect_grounded(
        &mut self,
        batch: ndarray::ArrayView4<'_, f32>,
        confidence: f32,
    ) -> Result<Vec<Vec<PixelBox>>, super::ModelError> {
        let path = self.session.path.clone();
        let err = |e: &dyn std::fmt::Display| {
            super::ModelError::Runtime(crate::runtime::RuntimeError::Run {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let Some(p) = self.prompted.as_mut() else {
            return Err(err(&"not an open-vocabulary detector"));
        };
        let Some(tokens) = &p.tokens else {
            return Err(super::ModelError::Input {
                path: path.display().to_string(),
                reason: "no text queries given (--prompts)".into(),
            });
        };
        let b = batch.shape()[0];
        let l = tokens.context;
        let row = ndarray::ArrayView1::from(&tokens.ids);
        let ids = row
            .broadcast((b, l))
            .ok_or_else(|| err(&"token ids"))?
            .to_owned();
        let mask = ndarray::Array2::<i64>::ones((b, l));
        let batch = batch.as_standard_layout();
        let mut inputs = ort::inputs![
            self.graph.input.as_str() => ort::value::TensorRef::from_array_view(batch.view()).map_err(|e| err(&e))?,
            p.spec.input_ids.as_str() => ort::value::TensorRef::from_array_view(ids.view()).map_err(|e| err(&e))?,
        ];
        if let Some(m) = &p.spec.attention_mask {
            inputs.push((
                m.as_str().into(),
                ort::value::TensorRef::from_array_view(mask.view())
                    .map_err(|e| err(&e))?
                    .into(),
            ));
        }
        let boxes_name = p.spec.boxes.clone().unwrap_or_default();
        let outputs = self.session.session.run(inputs).map_err(|e| err(&e))?;
        let logits = outputs[self.graph.output.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| err(&e))?;
        let boxes = outputs[boxes_name.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| err(&e))?;
        let (ls, bs) = (logits.shape().to_vec(), boxes.shape().to_vec());
        if ls.len() != 3
            || bs.len() != 3
            || ls[0] != b
            || bs[0] != b
            || ls[1] != bs[1]
            || bs[2] != 4
        {
            return Err(err(&format!(
                "outputs {ls:?} and {bs:?} do not fit grounding-dino: expected [{b}, Q, T] and [{b}, Q, 4]"
            )));
        }
        let t = ls[2];
        if l > t {
            return Err(super::ModelError::Input {
                path: self.package.dir.display().to_string(),
                reason: format!(
                    "the queries make {l} tokens, more than the model's {t} text positions"
                ),
            });
        }
        let s = self.pre.size as f32;
        let threshold = p.text_threshold;
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        let mut out = Vec::with_capacity(b);
        for i in 0..b {
            let mut found = Vec::new();
            for q in 0..ls[1] {
                let probs: Vec<f32> = (0..t).map(|k| sigmoid(logits[[i, q, k]])).collect();
                let score = probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if score.is_nan() || score <= confidence {
                    continue;
                }
                // get_phrases_from_posmap: positions 0 and T-1 never count.
                let phrase_ids: Vec<u32> = (1..t.saturating_sub(1))
                    .filter(|&k| k < l && probs[k] > threshold)
                    .map(|k| tokens.ids[k] as u32)
                    .collect();
                let phrase = p
                    .tokenizer
                    .decode(&phrase_ids, false)
                    .map_err(|e| err(&e))?;
                let next = p.phrases.len() as u32;
                let id = *p.phrase_ids.entry(phrase.clone()).or_insert(next);
                if id == next {
                    p.phrases.push(phrase);
                }
                let mut class = (None, f32::NEG_INFINITY);
                for (k, query) in p.token_query.iter().enumerate() {
                    if let Some(query) = query {
                        if probs[k] > class.1 {
                            class = (Some(*query), probs[k]);
                        }
                    }
                }
                let (cx, cy, w, h) = (
                    boxes[[i, q, 0]],
                    boxes[[i, q, 1]],
                    boxes[[i, q, 2]],
                    boxes[[i, q, 3]],
                );
                let (x0, y0) = (
                    ((cx - w / 2.0) * s).clamp(0.0, s),
                    ((cy - h / 2.0) * s).clamp(0.0, s),
                );
                let (x1, y1) = (
                    ((cx + w / 2.0) * s).clamp(0.0, s),
                    ((cy + h / 2.0) * s).clamp(0.0, s),
                );
                if x1 > x0 && y1 > y0 {
                    found.push(PixelBox {
                        class: class.0.unwrap_or(0),
                        score,
                        x0,
                        y0,
                        x1,
                        y1,
                        phrase: Some(id),
                    });
                }
            }
            found.sort_by(|a, b| b.score.total_cmp(&a.score));
            out.push(found);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()))
    }

    fn assert_box(b: &PixelBox, class: usize, score: f32, xyxy: [f32; 4]) {
        assert_eq!(b.class, class, "{b:?}");
        assert!(close(b.score, score), "{b:?} score != {score}");
        let got = [b.x0, b.y0, b.x1, b.y1];
        for (g, e) in got.iter().zip(xyxy) {
            assert!(close(*g, e), "{b:?} != {xyxy:?}");
        }
    }

    #[test]
    fn format_names_round_trip() {
        for name in ["yolov8", "yolov5", "yolox", "yolox-decoded"] {
            let f: DetectionFormat = name.parse().expect("known");
            assert_eq!(f.to_string(), name);
        }
        assert_eq!(
            "YOLO11".parse::<DetectionFormat>(),
            Ok(DetectionFormat::YoloV8)
        );
        assert_eq!(
            "yolox".parse::<DetectionFormat>(),
            Ok(DetectionFormat::Yolox {
                strides: vec![8, 16, 32],
                decoded: false
            })
        );
        let err = "detr".parse::<DetectionFormat>().expect_err("unknown");
        assert!(err.to_string().contains("'detr'"), "{err}");
    }

    #[test]
    fn yolov8_columns() {
        // 2 classes, 3 candidates (columns).
        let out = Array2::from_shape_vec(
            (6, 3),
            vec![
                50.0, 10.0, 30.0, // cx
                40.0, 10.0, 30.0, // cy
                20.0, 30.0, 4.0, // w
                10.0, 8.0, 4.0, // h
                0.9, 0.1, 0.3, // class 0
                0.2, 0.6, 0.01, // class 1
            ],
        )
        .expect("shape");
        let boxes = decode(
            &DetectionFormat::YoloV8,
            out.view().into_dyn(),
            (64, 48),
            2,
            0.25,
            10,
        )
        .expect("decode");
        assert_eq!(boxes.len(), 3);
        assert_box(&boxes[0], 0, 0.9, [40.0, 35.0, 60.0, 45.0]);
        // Clipped at the left edge: cx 10, w 30 -> [-5, 25] -> [0, 25].
        assert_box(&boxes[1], 1, 0.6, [0.0, 6.0, 25.0, 14.0]);
        assert_box(&boxes[2], 0, 0.3, [28.0, 28.0, 32.0, 32.0]);
        // Threshold and cap.
        let boxes = decode(
            &DetectionFormat::YoloV8,
            out.view().into_dyn(),
            (64, 48),
            2,
            0.5,
            1,
        )
        .expect("decode");
        assert_eq!(boxes.len(), 1);
        assert_eq!(boxes[0].class, 0);
        // A leading batch axis of 1 is accepted.
        let batched = out.clone().insert_axis(Axis(0));
        let boxes = decode(
            &DetectionFormat::YoloV8,
            batched.view().into_dyn(),
            (64, 48),
            2,
            0.25,
            10,
        )
        .expect("decode");
        assert_eq!(boxes.len(), 3);
    }

    #[test]
    fn yolov8_shape_error_names_the_shape() {
        let out = Array3::<f32>::zeros((1, 84, 100));
        let err = decode(
            &DetectionFormat::YoloV8,
            out.view().into_dyn(),
            (640, 640),
            3,
            0.25,
            10,
        )
        .expect_err("shape");
        assert_eq!(
            err.to_string(),
            "output shape [1, 84, 100] does not fit yolov8 with 3 classes: expected [4 + 3, N]"
        );
        let out = Array3::<f32>::zeros((2, 7, 100));
        let err = decode(
            &DetectionFormat::YoloV8,
            out.view().into_dyn(),
            (640, 640),
            3,
            0.25,
            10,
        )
        .expect_err("a real batch axis is not dropped");
        assert!(matches!(err, DetectionError::Shape { .. }), "{err}");
        let out = Array2::<f32>::zeros((100, 8));
        let err = decode(
            &DetectionFormat::YoloV5,
            out.view().into_dyn(),
            (640, 640),
            2,
            0.25,
            10,
        )
        .expect_err("shape");
        assert_eq!(
            err.to_string(),
            "output shape [100, 8] does not fit yolov5 with 2 classes: expected [N, 5 + 2]"
        );
    }

    #[test]
    fn yolov5_rows_multiply_objectness() {
        let out = Array2::from_shape_vec(
            (3, 7),
            vec![
                // cx, cy, w, h, obj, c0, c1
                20.0, 20.0, 10.0, 10.0, 0.8, 0.5, 0.9, // 0.72 class 1
                40.0, 30.0, 8.0, 6.0, 0.5, 0.9, 0.1, // 0.45 class 0
                30.0, 30.0, 4.0, 4.0, 0.9, 0.2, 0.2, // 0.18: below threshold
            ],
        )
        .expect("shape");
        let boxes = decode(
            &DetectionFormat::YoloV5,
            out.view().into_dyn(),
            (64, 64),
            2,
            0.25,
            10,
        )
        .expect("decode");
        assert_eq!(boxes.len(), 2);
        assert_box(&boxes[0], 1, 0.72, [15.0, 15.0, 25.0, 25.0]);
        assert_box(&boxes[1], 0, 0.45, [36.0, 27.0, 44.0, 33.0]);
    }

    #[test]
    fn yolox_grid_decoding_matches_hand_computation() {
        // Input 32x16 (width x height), strides [8, 16]: grids 4x2 (8 cells) then 2x1 (2 cells).
        let format = DetectionFormat::Yolox {
            strides: vec![8, 16],
            decoded: false,
        };
        let mut out = Array2::<f32>::zeros((10, 6)); // 1 class: 5 + 1 columns
                                                     // Row 6 = stride 8, gy 1, gx 2: cx = (0.5 + 2) * 8 = 20, cy = (0.25 + 1) * 8 = 10,
                                                     // w = exp(ln 2) * 8 = 16, h = exp(0) * 8 = 8 -> [12, 6, 28, 14].
        out.row_mut(6)
            .assign(&ndarray::arr1(&[0.5, 0.25, 2f32.ln(), 0.0, 0.9, 0.8]));
        // Row 9 = stride 16, gy 0, gx 1: cx = (0.5 + 1) * 16 = 24, cy = 0.5 * 16 = 8,
        // w = h = exp(ln 0.5) * 16 = 8 -> [20, 4, 28, 12].
        out.row_mut(9).assign(&ndarray::arr1(&[
            0.5,
            0.5,
            0.5f32.ln(),
            0.5f32.ln(),
            0.6,
            0.5,
        ]));
        let boxes = decode(&format, out.view().into_dyn(), (32, 16), 1, 0.1, 10).expect("decode");
        assert_eq!(boxes.len(), 2);
        assert_box(&boxes[0], 0, 0.72, [12.0, 6.0, 28.0, 14.0]);
        assert_box(&boxes[1], 0, 0.3, [20.0, 4.0, 28.0, 12.0]);

        // Already decoded: the same numbers are read as pixels.
        let decoded = DetectionFormat::Yolox {
            strides: vec![8, 16],
            decoded: true,
        };
        let mut out = Array2::<f32>::zeros((1, 6));
        out.row_mut(0)
            .assign(&ndarray::arr1(&[20.0, 10.0, 16.0, 8.0, 0.9, 0.8]));
        let boxes = decode(&decoded, out.view().into_dyn(), (32, 16), 1, 0.1, 10).expect("decode");
        assert_box(&boxes[0], 0, 0.72, [12.0, 6.0, 28.0, 14.0]);
    }

    #[test]
    fn yolox_default_strides_cell_count() {
        // 640x640 with [8, 16, 32]: 6400 + 1600 + 400 = 8400 rows.
        let out = Array2::<f32>::zeros((8400, 85));
        let boxes = decode(
            &DetectionFormat::yolox(),
            out.view().into_dyn(),
            (640, 640),
            80,
            0.25,
            100,
        )
        .expect("decode");
        assert!(boxes.is_empty());
        let out = Array2::<f32>::zeros((8000, 85));
        let err = decode(
            &DetectionFormat::yolox(),
            out.view().into_dyn(),
            (640, 640),
            80,
            0.25,
            100,
        )
        .expect_err("grid");
        assert!(
            err.to_string()
                .contains("expected 8400 rows (grid cells), found 8000"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_and_options() {
        // NaN and infinite coordinates, a box entirely outside the input: all dropped.
        let out = Array2::from_shape_vec(
            (3, 6),
            vec![
                f32::NAN,
                5.0,
                2.0,
                2.0,
                1.0,
                1.0, //
                5.0,
                5.0,
                f32::INFINITY,
                2.0,
                1.0,
                1.0, //
                -50.0,
                5.0,
                2.0,
                2.0,
                1.0,
                1.0, //
            ],
        )
        .expect("shape");
        let boxes = decode(
            &DetectionFormat::YoloV5,
            out.view().into_dyn(),
            (10, 10),
            1,
            0.1,
            10,
        )
        .expect("decode");
        assert!(boxes.is_empty());
        let err = decode(
            &DetectionFormat::YoloV5,
            out.view().into_dyn(),
            (10, 10),
            0,
            0.1,
            10,
        )
        .expect_err("no classes");
        assert!(matches!(err, DetectionError::Options(_)));
        let err = decode(
            &DetectionFormat::YoloV5,
            out.view().into_dyn(),
            (0, 10),
            1,
            0.1,
            10,
        )
        .expect_err("empty input");
        assert!(matches!(err, DetectionError::Options(_)));
        let zero_stride = DetectionFormat::Yolox {
            strides: vec![8, 0],
            decoded: false,
        };
        let err = decode(&zero_stride, out.view().into_dyn(), (10, 10), 1, 0.1, 10)
            .expect_err("zero stride");
        assert!(matches!(err, DetectionError::Options(_)));
    }

    #[test]
    fn scaled_box() {
        let b = PixelBox {
            class: 2,
            score: 0.5,
            x0: 10.0,
            y0: 20.0,
            x1: 30.0,
            y1: 40.0,
            phrase: None,
        };
        let s = b.scaled(0.5, 2.0);
        assert_eq!((s.x0, s.y0, s.x1, s.y1), (5.0, 40.0, 15.0, 80.0));
        assert_eq!((s.class, s.score), (2, 0.5));
        assert_eq!((b.width(), b.height()), (20.0, 20.0));
    }
}
