//! Labelled boxes for evaluating detectors (`tessera eval --task detect`): a vector layer over a
//! scene (any OGR format: GeoPackage, Shapefile, GeoJSON...) read into the scene's CRS
//! ([`read_layer`]), or image chips with COCO JSON ([`read_coco`]) or Pascal VOC XML
//! ([`read_voc`]) boxes in pixels.
//!
//! Every box is `[x, y, w, h]` with `(x, y)` its smallest corner, as COCO writes boxes: map
//! coordinates for a layer, pixel coordinates (x right, y down, the image's top-left corner at
//! `(0, 0)`, continuous) for chips.

pub mod coco;
pub mod layer;
pub mod voc;

use std::path::PathBuf;

use serde::Serialize;
use thiserror::Error;

pub use coco::read_coco;
pub use layer::read_layer;
pub use voc::read_voc;

/// Why labels could not be read. Every variant names the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LabelError {
    #[error("{path}: no such label file or directory")]
    NotFound { path: String },
    #[error("{path}: cannot read labels: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: no field '{field}' in layer '{layer}' (fields: {available})")]
    NoField {
        path: String,
        field: String,
        layer: String,
        available: String,
    },
    #[error("{path}: feature {feature}: {reason}")]
    Feature {
        path: String,
        feature: u64,
        reason: String,
    },
    #[error("{path}: malformed COCO JSON: {reason}")]
    Coco { path: String, reason: String },
    #[error("{path}: malformed Pascal VOC XML: {reason}")]
    Voc { path: String, reason: String },
    #[error("{path}: cannot reproject the labels to the scene's CRS: {reason}")]
    Reproject { path: String, reason: String },
    #[error("{path}: image '{image}' not found (looked for {looked})")]
    NoImage {
        path: String,
        image: String,
        looked: String,
    },
}

/// One labelled object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LabelBox {
    pub class: String,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// COCO `iscrowd` (a region of many objects).
    pub crowd: bool,
}

impl LabelBox {
    /// The box `[x, y, w, h]` around points `(x, y)`; `None` without points or with a
    /// non-finite coordinate.
    pub fn around(class: &str, points: impl IntoIterator<Item = (f64, f64)>) -> Option<LabelBox> {
        let mut b = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        let mut any = false;
        for (x, y) in points {
            if !x.is_finite() || !y.is_finite() {
                return None;
            }
            any = true;
            b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
        }
        any.then(|| LabelBox {
            class: class.to_string(),
            bbox: [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            crowd: false,
        })
    }
}

/// Labelled chips: images and the boxes on each, in pixels.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChipLabels {
    /// The images, in the order of the label file (COCO: by image id; VOC: by file name).
    pub images: Vec<PathBuf>,
    /// `(image index, box)`.
    pub boxes: Vec<(usize, LabelBox)>,
    /// Every class name the labels define, in their order (COCO: by category id; VOC: sorted).
    pub classes: Vec<String>,
}

/// Where a chip named `name` by a label file is: under `images_dir` when given, else beside
/// the label file (`label_dir`); `None` when the file is not there.
fn find_image(
    name: &str,
    images_dir: Option<&std::path::Path>,
    label_dir: &std::path::Path,
    label_path: &std::path::Path,
) -> Result<PathBuf, LabelError> {
    let base = images_dir.unwrap_or(label_dir);
    let p = base.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(LabelError::NoImage {
            path: label_path.display().to_string(),
            image: name.to_string(),
            looked: p.display().to_string(),
        })
    }
}
