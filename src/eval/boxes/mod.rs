//! Labelled boxes on image chips for evaluating detectors (`tessera eval --task detect`): COCO
//! JSON ([`read_coco`]) or Pascal VOC XML ([`read_voc`]). (Box labels over a scene are a
//! polygon layer, read by [`super::labels::read`].)
//!
//! Every box is `[x, y, w, h]` with `(x, y)` its smallest corner, as COCO writes boxes, in pixel
//! coordinates: x right, y down, the image's top-left corner at `(0, 0)`, continuous.

pub mod coco;
pub mod voc;

use std::path::PathBuf;

use serde::Serialize;
use thiserror::Error;

pub use coco::read_coco;
pub use voc::read_voc;

/// Why labels could not be read. Every variant names the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LabelError {
    #[error("{path}: no such label file or directory")]
    NotFound { path: String },
    #[error("{path}: cannot read labels: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: malformed COCO JSON: {reason}")]
    Coco { path: String, reason: String },
    #[error("{path}: malformed Pascal VOC XML: {reason}")]
    Voc { path: String, reason: String },
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
/// the label file (`label_dir`).
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
