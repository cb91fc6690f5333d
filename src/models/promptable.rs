//! Promptable segmentation (SAM): a mask for each box (and optional points) on a tile.
//!
//! A package has two graphs. `image_encoder.onnx` runs once per tile and gives the tile's
//! embedding (SAM: `image_embeddings [B, 256, 64, 64]`; the encoder's outputs are listed in
//! the manifest, and the mask decoder takes inputs of the same names). `mask_decoder.onnx`
//! is SAM's prompt encoder and mask decoder on one tile's embedding: `N` boxes
//! `[1, N, 4]` (`x0, y0, x1, y1` in model-input pixels) and `P` points per box
//! (`[1, N, P, 2]`, labels `[1, N, P]`, `P` may be 0) give low-resolution mask logits
//! `[1, N, 1, m, m]` and predicted IoU scores `[1, N, 1]` (Hugging Face `SamModel` with
//! `multimask_output=False`).
//!
//! Preprocessing is Hugging Face `SamProcessor`'s: the tile (normalised with `[preprocess]`,
//! as every family's) is resized bilinearly so that its longest side is `preprocess.size`
//! (`resize = "longest"`, SAM; `"square"` stretches it to `size x size`) and padded with 0
//! at the bottom and right. Box and point coordinates are scaled by the same factors.
//! Post-processing is `post_process_masks`: the logits are resized bilinearly (half-pixel
//! centres) to `size x size`, cropped to the resized tile, resized to the tile, and
//! thresholded (`> mask_threshold`, 0); for `resize = "square"` (SAM 2, `Sam2Processor`) they
//! are resized to the tile in one step. SAM 2's encoder has three outputs (two
//! high-resolution feature maps, then `image_embeddings`), all passed to its mask decoder.

use std::path::Path;

use ndarray::{s, Array2, Array3, Array4, ArrayD, ArrayView4, Axis, IxDyn};
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

use super::manifest::{family_manifest, Manifest, Preprocess, TilingSpec};
use super::preprocess::Normalizer;
use super::registry::{InputContract, ModelFamily};
use super::segmentation::upsample;
use super::{run_err, ModelError, ModelPackage};
use crate::runtime::{ModelSession, Runtime, SessionOptions, TensorSpec};
use crate::task::Task;

/// The family name in `model.toml`.
pub const FAMILY: &str = "promptable-segmenter";

/// The most boxes one run of the mask decoder takes (more are split into several runs).
const MAX_PROMPTS_PER_RUN: usize = 64;

family_manifest! {
    /// A promptable segmenter's sections: `[preprocess]`, `[image_encoder]`,
    /// `[mask_decoder]` and `[promptable]` are required.
    pub struct PromptableManifest {
        pub preprocess: Option<Preprocess>,
        pub image_encoder: Option<ImageEncoderSpec>,
        pub mask_decoder: Option<MaskDecoderSpec>,
        pub promptable: Option<PromptableSpec>,
        pub tiling: Option<TilingSpec>,
    }
}

/// The image encoder graph: one image input, the embedding outputs.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageEncoderSpec {
    pub onnx: String,
    /// float32 `[B, 3, S, S]`, normalised as `[preprocess]` says.
    pub input: String,
    /// The embedding tensors, each `[B, ...]`; the mask decoder has inputs of these names
    /// (SAM: `["image_embeddings"]`).
    pub outputs: Vec<String>,
}

/// The mask decoder graph (prompt encoder and mask decoder) on one tile's embedding.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaskDecoderSpec {
    pub onnx: String,
    /// float32 `[1, N, 4]`: `x0, y0, x1, y1` in model-input pixels.
    pub boxes: String,
    /// float32 `[1, N, P, 2]`: `x, y` in model-input pixels (`P` may be 0).
    pub points: String,
    /// int64 `[1, N, P]`: 1 foreground, 0 background.
    pub labels: String,
    /// float32 `[1, N, 1, m, m]`: low-resolution mask logits.
    pub masks: String,
    /// float32 `[1, N, 1]`: the predicted IoU of each mask.
    pub scores: String,
}

/// How tiles are fitted to the model input, and the mask threshold.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptableSpec {
    /// `longest` (SAM: the longest side becomes `preprocess.size`, the rest is padded) or
    /// `square` (SAM 2: resized to `size x size`).
    #[serde(default = "default_resize")]
    pub resize: String,
    /// Mask logits above this are the object.
    #[serde(default)]
    pub mask_threshold: f32,
}

fn default_resize() -> String {
    "longest".into()
}

/// The promptable-segmenter family ([`super::registry`]): a refiner for `segment`.
#[derive(Debug)]
pub struct PromptableFamily;

impl ModelFamily for PromptableFamily {
    fn name(&self) -> &'static str {
        FAMILY
    }

    fn tasks(&self) -> &'static [Task] {
        &[Task::Segment]
    }

    fn parse(&self, text: &str) -> Result<Manifest, String> {
        let (common, m) = PromptableManifest::from_toml(text)?;
        Ok(Manifest::new(common, m.tiling.clone(), None, m))
    }

    fn check(&self, runtime: &Runtime, package: &ModelPackage) -> Vec<String> {
        let options = SessionOptions::default();
        match PromptableSegmenter::from_package(runtime, package.clone(), &package.dir, &options) {
            Ok(_) => Vec::new(),
            Err(ModelError::Invalid { problems, .. }) => problems,
            Err(e) => vec![e.to_string()],
        }
    }

    fn input(&self, package: &ModelPackage) -> Option<InputContract> {
        let m = package.manifest.sections::<PromptableManifest>()?;
        Some(InputContract {
            size: m.preprocess.as_ref()?.size,
            any_size: true,
            prompted: false,
            bytes: false,
        })
    }
}

/// How a tile becomes the model's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// The longest side to `size`, padded to `size x size` at the bottom and right (SAM).
    Longest,
    /// Stretched to `size x size` (SAM 2).
    Square,
}

/// A point prompt in tile pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PromptPoint {
    /// `x, y` in tile pixels (column, row; pixel centres at `.5` are not assumed: SAM adds
    /// 0.5 itself, as to the processor's coordinates).
    pub xy: [f32; 2],
    /// True for a point on the object (label 1), false for one off it (label 0).
    pub positive: bool,
}

/// One prompt: a box and optional points, in tile pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    /// `x0, y0, x1, y1` in tile pixels.
    pub bbox: [f32; 4],
    pub points: Vec<PromptPoint>,
}

impl Prompt {
    /// A box prompt without points.
    pub fn from_box(bbox: [f32; 4]) -> Prompt {
        Prompt {
            bbox,
            points: Vec::new(),
        }
    }
}

/// One tile's image embedding (the image encoder's outputs for that tile).
#[derive(Clone, Debug)]
pub struct TileEmbedding {
    /// The encoder's outputs, in manifest order, each with a batch axis of 1.
    tensors: Vec<ArrayD<f32>>,
    /// The tile's size `(height, width)`.
    tile: (usize, usize),
    /// The tile's size after the resize, before padding.
    resized: (usize, usize),
}

impl TileEmbedding {
    /// The tile's size `(height, width)` the masks come back at.
    pub fn tile_size(&self) -> (usize, usize) {
        self.tile
    }

    /// The encoder outputs (manifest order) for this tile, each with its batch axis of 1.
    pub fn tensors(&self) -> &[ArrayD<f32>] {
        &self.tensors
    }
}

/// The mask of one prompt, at the tile's size.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceMask {
    /// `[height, width]` of the tile: true on the object.
    pub mask: Array2<bool>,
    /// The model's predicted IoU for the mask (SAM's `iou_scores`).
    pub score: f32,
}

/// A loaded promptable segmenter.
pub struct PromptableSegmenter {
    package: ModelPackage,
    pre: Preprocess,
    encoder_spec: ImageEncoderSpec,
    decoder_spec: MaskDecoderSpec,
    resize: Resize,
    threshold: f32,
    encoder: ModelSession,
    decoder: ModelSession,
}

impl std::fmt::Debug for PromptableSegmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptableSegmenter")
            .field("dir", &self.package.dir)
            .finish()
    }
}

/// The package at `path` (as the user named it, for messages) is a promptable segmenter:
/// what a job checks before it uses a package as a refiner.
///
/// # Errors
/// As [`super::load_package`]; [`ModelError::NotPromptable`] naming the package and its
/// family when it is of another family.
pub fn require_promptable(runtime: &Runtime, path: &Path) -> Result<ModelPackage, ModelError> {
    let package = super::load_package(runtime, path)?;
    if package.manifest.family != FAMILY {
        return Err(ModelError::NotPromptable {
            path: path.display().to_string(),
            family: package.manifest.family.clone(),
        });
    }
    Ok(package)
}

fn expect_rank(problems: &mut Vec<String>, graph: &str, t: Option<&TensorSpec>, rank: usize) {
    if let Some(t) = t {
        if t.shape.len() != rank {
            problems.push(format!(
                "{graph}: '{}' has shape {:?}, expected {rank} axes",
                t.name, t.shape
            ));
        }
    }
}

impl PromptableSegmenter {
    /// Load a promptable-segmenter package.
    ///
    /// # Errors
    /// A package of another family ([`ModelError::NotPromptable`]), missing sections or
    /// graphs, graphs without the named inputs and outputs, or the provider failing.
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        options: &SessionOptions,
    ) -> Result<PromptableSegmenter, ModelError> {
        let package = require_promptable(runtime, path)?;
        PromptableSegmenter::from_package(runtime, package, path, options)
    }

    /// The model of a loaded package; `path` (as the user named it) is for messages.
    ///
    /// # Errors
    /// As [`PromptableSegmenter::load`].
    pub fn from_package(
        runtime: &Runtime,
        package: ModelPackage,
        path: &Path,
        options: &SessionOptions,
    ) -> Result<PromptableSegmenter, ModelError> {
        let invalid = |problems: Vec<String>| ModelError::Invalid {
            path: path.display().to_string(),
            problems,
        };
        let Some(m) = package.manifest.sections::<PromptableManifest>() else {
            return Err(ModelError::NotPromptable {
                path: path.display().to_string(),
                family: package.manifest.family.clone(),
            });
        };
        let mut problems = Vec::new();
        for (present, name) in [
            (m.preprocess.is_some(), "preprocess"),
            (m.image_encoder.is_some(), "image_encoder"),
            (m.mask_decoder.is_some(), "mask_decoder"),
            (m.promptable.is_some(), "promptable"),
        ] {
            if !present {
                problems.push(format!(
                    "a promptable-segmenter manifest needs a [{name}] section"
                ));
            }
        }
        let (Some(pre), Some(enc), Some(dec), Some(spec)) = (
            m.preprocess.clone(),
            m.image_encoder.clone(),
            m.mask_decoder.clone(),
            m.promptable.clone(),
        ) else {
            return Err(invalid(problems));
        };
        let resize = match spec.resize.as_str() {
            "longest" => Some(Resize::Longest),
            "square" => Some(Resize::Square),
            other => {
                problems.push(format!(
                    "promptable.resize '{other}' is not longest or square"
                ));
                None
            }
        };
        if pre.mean.len() != 3
            || pre.std.len() != 3
            || pre.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
        {
            problems
                .push("preprocess.mean and preprocess.std need 3 values each, std positive".into());
        }
        if enc.outputs.is_empty() {
            problems.push("image_encoder.outputs names no embedding output".into());
        }
        for (graph, file) in [("image_encoder", &enc.onnx), ("mask_decoder", &dec.onnx)] {
            if !package.file(file).is_file() {
                problems.push(format!(
                    "{graph}.onnx = '{file}': no such file in the package"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let encoder = package.session(runtime, &enc.onnx, options)?;
        let decoder = package.session(runtime, &dec.onnx, options)?;
        let (ein, eout) = (encoder.inputs(), encoder.outputs());
        let (din, dout) = (decoder.inputs(), decoder.outputs());
        let find = |v: &[TensorSpec], n: &str| v.iter().find(|t| t.name == n).cloned();
        let image_in = find(&ein, &enc.input);
        if image_in.is_none() {
            problems.push(format!(
                "image_encoder: the graph has no input '{}'",
                enc.input
            ));
        }
        expect_rank(&mut problems, "image_encoder", image_in.as_ref(), 4);
        if let Some(t) = image_in.as_ref().filter(|t| t.shape.len() == 4) {
            let fixed: Vec<i64> = t.shape[2..].iter().copied().filter(|&d| d > 0).collect();
            if fixed.iter().any(|&d| d as usize != pre.size) {
                problems.push(format!(
                    "image_encoder: input '{}' has shape {:?}, but preprocess.size is {}",
                    t.name, t.shape, pre.size
                ));
            }
        }
        for o in &enc.outputs {
            if find(&eout, o).is_none() {
                problems.push(format!("image_encoder: the graph has no output '{o}'"));
            }
            if find(&din, o).is_none() {
                problems.push(format!(
                    "mask_decoder: the graph has no input '{o}' (an image_encoder output)"
                ));
            }
        }
        for (name, rank) in [(&dec.boxes, 3), (&dec.points, 4), (&dec.labels, 3)] {
            let t = find(&din, name);
            if t.is_none() {
                problems.push(format!("mask_decoder: the graph has no input '{name}'"));
            }
            expect_rank(&mut problems, "mask_decoder", t.as_ref(), rank);
        }
        for (name, rank) in [(&dec.masks, 5), (&dec.scores, 3)] {
            let t = find(&dout, name);
            if t.is_none() {
                problems.push(format!("mask_decoder: the graph has no output '{name}'"));
            }
            expect_rank(&mut problems, "mask_decoder", t.as_ref(), rank);
        }
        let Some(resize) = resize.filter(|_| problems.is_empty()) else {
            return Err(invalid(problems));
        };
        Ok(PromptableSegmenter {
            package,
            pre,
            encoder_spec: enc,
            decoder_spec: dec,
            resize,
            threshold: spec.mask_threshold,
            encoder,
            decoder,
        })
    }

    pub fn package(&self) -> &ModelPackage {
        &self.package
    }

    /// The model's input size (SAM: 1024), the default tile size.
    pub fn input_size(&self) -> usize {
        self.pre.size
    }

    /// The normalisation tiles get before [`PromptableSegmenter::embed`].
    pub fn normalizer(&self) -> Normalizer {
        Normalizer::from_preprocess(&self.pre)
    }

    pub fn provider(&self) -> (&'static str, Option<&str>) {
        (self.encoder.provider, self.encoder.fallback.as_deref())
    }

    /// The size `(height, width)` a tile of `(h, w)` is resized to before padding.
    pub fn resized_size(&self, (h, w): (usize, usize)) -> (usize, usize) {
        resized_size(self.resize, self.pre.size, (h, w))
    }

    /// The image embedding of each tile of a batch `[B, 3, H, W]` normalised with
    /// [`PromptableSegmenter::normalizer`] (any `H x W`: resized and padded here).
    ///
    /// # Errors
    /// Inference failure or an output of an unexpected shape.
    pub fn embed(&mut self, tiles: ArrayView4<'_, f32>) -> Result<Vec<TileEmbedding>, ModelError> {
        let path = self.encoder.path.clone();
        let (b, h, w) = (tiles.shape()[0], tiles.shape()[2], tiles.shape()[3]);
        if b == 0 {
            return Ok(Vec::new());
        }
        if tiles.shape()[1] != 3 || h == 0 || w == 0 {
            return Err(run_err(
                &path,
                format!("tiles of shape {:?}, expected [B, 3, H, W]", tiles.shape()),
            ));
        }
        let resized = self.resized_size((h, w));
        let input = model_input(tiles, self.pre.size, resized);
        let tensor = TensorRef::from_array_view(input.view()).map_err(|e| run_err(&path, e))?;
        let out = self
            .encoder
            .session
            .run(ort::inputs![self.encoder_spec.input.as_str() => tensor])
            .map_err(|e| run_err(&path, e))?;
        let mut per_output = Vec::with_capacity(self.encoder_spec.outputs.len());
        for name in &self.encoder_spec.outputs {
            let a = out[name.as_str()]
                .try_extract_array::<f32>()
                .map_err(|e| run_err(&path, e))?;
            if a.shape().first() != Some(&b) {
                return Err(run_err(
                    &path,
                    format!(
                        "output '{name}' has shape {:?} for a batch of {b}",
                        a.shape()
                    ),
                ));
            }
            per_output.push(a.to_owned());
        }
        Ok((0..b)
            .map(|i| TileEmbedding {
                tensors: per_output
                    .iter()
                    .map(|a| a.slice_axis(Axis(0), (i..=i).into()).to_owned())
                    .collect(),
                tile: (h, w),
                resized,
            })
            .collect())
    }

    /// The mask and score of each prompt (box, optional points; tile pixels) on one tile,
    /// in the order of `prompts`. Prompts with different numbers of points run separately
    /// (each exactly as Hugging Face would run it alone: no padding points).
    ///
    /// # Errors
    /// A coordinate that is not finite ([`ModelError::Input`]), inference failure or outputs
    /// of an unexpected shape.
    pub fn masks(
        &mut self,
        embedding: &TileEmbedding,
        prompts: &[Prompt],
    ) -> Result<Vec<InstanceMask>, ModelError> {
        let finite = |p: &Prompt| {
            p.bbox.iter().all(|v| v.is_finite())
                && p.points.iter().all(|q| q.xy.iter().all(|v| v.is_finite()))
        };
        if let Some(i) = prompts.iter().position(|p| !finite(p)) {
            return Err(ModelError::Input {
                path: self.package.dir.display().to_string(),
                reason: format!(
                    "prompt {i} has a coordinate that is not a finite number: {:?}",
                    prompts[i]
                ),
            });
        }
        let mut out: Vec<Option<InstanceMask>> = vec![None; prompts.len()];
        let mut counts: Vec<usize> = prompts.iter().map(|p| p.points.len()).collect();
        counts.sort_unstable();
        counts.dedup();
        for p in counts {
            let group: Vec<usize> = (0..prompts.len())
                .filter(|&i| prompts[i].points.len() == p)
                .collect();
            for chunk in group.chunks(MAX_PROMPTS_PER_RUN) {
                let masks = self.run_decoder(embedding, prompts, chunk, p)?;
                for (&i, m) in chunk.iter().zip(masks) {
                    out[i] = Some(m);
                }
            }
        }
        let path = self.decoder.path.clone();
        out.into_iter()
            .map(|m| m.ok_or_else(|| run_err(&path, "a prompt got no mask")))
            .collect()
    }

    /// One run of the mask decoder on the prompts `which`, each with `p` points.
    fn run_decoder(
        &mut self,
        embedding: &TileEmbedding,
        prompts: &[Prompt],
        which: &[usize],
        p: usize,
    ) -> Result<Vec<InstanceMask>, ModelError> {
        let path = self.decoder.path.clone();
        let n = which.len();
        let (h, w) = embedding.tile;
        let (rh, rw) = embedding.resized;
        // `_normalize_coordinates`: x by new_w / old_w, y by new_h / old_h.
        let (sx, sy) = (rw as f32 / w as f32, rh as f32 / h as f32);
        let mut boxes = Array3::<f32>::zeros((1, n, 4));
        let mut points = Array4::<f32>::zeros((1, n, p, 2));
        let mut labels = Array3::<i64>::zeros((1, n, p));
        for (k, &i) in which.iter().enumerate() {
            let b = prompts[i].bbox;
            for (j, v) in [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]
                .into_iter()
                .enumerate()
            {
                boxes[[0, k, j]] = v;
            }
            for (j, q) in prompts[i].points.iter().enumerate() {
                points[[0, k, j, 0]] = q.xy[0] * sx;
                points[[0, k, j, 1]] = q.xy[1] * sy;
                labels[[0, k, j]] = i64::from(q.positive);
            }
        }
        let spec = &self.decoder_spec;
        let mut inputs = ort::inputs![
            spec.boxes.as_str() => TensorRef::from_array_view(boxes.view()).map_err(|e| run_err(&path, e))?,
            spec.points.as_str() => TensorRef::from_array_view(points.view()).map_err(|e| run_err(&path, e))?,
            spec.labels.as_str() => TensorRef::from_array_view(labels.view()).map_err(|e| run_err(&path, e))?,
        ];
        for (name, t) in self.encoder_spec.outputs.iter().zip(&embedding.tensors) {
            inputs.push((
                name.as_str().into(),
                TensorRef::from_array_view(t.view())
                    .map_err(|e| run_err(&path, e))?
                    .into(),
            ));
        }
        let out = self
            .decoder
            .session
            .run(inputs)
            .map_err(|e| run_err(&path, e))?;
        let logits = out[spec.masks.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| run_err(&path, e))?;
        let scores = out[spec.scores.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| run_err(&path, e))?;
        let shape = logits.shape().to_vec();
        let (mh, mw) = match shape.as_slice() {
            [1, rows, _, mh, mw] if *rows == n => (*mh, *mw),
            _ => {
                return Err(run_err(
                    &path,
                    format!(
                        "output '{}' has shape {shape:?}, expected [1, {n}, 1, m, m]",
                        spec.masks
                    ),
                ))
            }
        };
        if scores.len() < n || scores.shape().get(1) != Some(&n) {
            return Err(run_err(
                &path,
                format!(
                    "output '{}' has shape {:?}, expected [1, {n}, 1]",
                    spec.scores,
                    scores.shape()
                ),
            ));
        }
        let scores = scores
            .to_shape(IxDyn(&[n, scores.len() / n]))
            .map_err(|e| run_err(&path, e))?
            .to_owned();
        let mut masks = Vec::with_capacity(n);
        for k in 0..n {
            // Mask 0 of the multimask_output=False path.
            let low = logits
                .slice(s![0, k, 0..1, .., ..])
                .to_owned()
                .into_shape_with_order((1, 1, mh, mw))
                .map_err(|e| run_err(&path, e))?;
            let mask = match self.resize {
                Resize::Longest => {
                    post_process(low.view(), self.pre.size, (rh, rw), (h, w), self.threshold)
                }
                // Sam2Processor.post_process_masks: one resize of the logits to the tile.
                Resize::Square => upsample(low.view(), h, w)
                    .slice(s![0, 0, .., ..])
                    .mapv(|v| v > self.threshold),
            };
            masks.push(InstanceMask {
                mask,
                score: scores[[k, 0]],
            });
        }
        Ok(masks)
    }
}

/// `SamImageProcessor._get_preprocess_shape` (longest side to `size`, rounded half up), or
/// `size x size` for [`Resize::Square`].
fn resized_size(resize: Resize, size: usize, (h, w): (usize, usize)) -> (usize, usize) {
    match resize {
        Resize::Square => (size, size),
        Resize::Longest => {
            let scale = size as f64 / h.max(w) as f64;
            let r = |v: usize| ((v as f64 * scale + 0.5) as usize).max(1);
            (r(h), r(w))
        }
    }
}

/// The model input `[B, 3, size, size]`: the normalised tiles resized to `resized` and padded
/// with 0 (the normalised mean) at the bottom and right.
fn model_input(tiles: ArrayView4<'_, f32>, size: usize, resized: (usize, usize)) -> Array4<f32> {
    let (b, h, w) = (tiles.shape()[0], tiles.shape()[2], tiles.shape()[3]);
    if (h, w) == (size, size) && resized == (size, size) {
        return tiles.as_standard_layout().into_owned();
    }
    let scaled = resize_antialiased(tiles, resized.0, resized.1);
    let mut out = Array4::<f32>::zeros((b, 3, size, size));
    out.slice_mut(s![.., .., ..resized.0, ..resized.1])
        .assign(&scaled);
    out
}

/// Bilinear resize with antialiasing on downscale, as torchvision's
/// `resize(..., antialias=True)` (the processor's resize): a triangle filter whose support
/// grows with the scale factor, weights normalised per output pixel. Resizing commutes with
/// the per-channel normalisation (the weights sum to 1), so normalised tiles can be resized.
pub fn resize_antialiased(a: ArrayView4<'_, f32>, out_h: usize, out_w: usize) -> Array4<f32> {
    let (b, c, h, w) = (a.shape()[0], a.shape()[1], a.shape()[2], a.shape()[3]);
    if (h, w) == (out_h, out_w) {
        return a.as_standard_layout().into_owned();
    }
    let wy = aa_weights(h, out_h);
    let wx = aa_weights(w, out_w);
    let mut out = Array4::<f32>::zeros((b, c, out_h, out_w));
    let mut rows = Array2::<f32>::zeros((h, out_w));
    for i in 0..b {
        for k in 0..c {
            let plane = a.slice(s![i, k, .., ..]);
            // Horizontal pass, then vertical (torchvision's order for separable AA resize).
            for y in 0..h {
                for (ox, (start, ws)) in wx.iter().enumerate() {
                    let mut acc = 0f32;
                    for (j, wt) in ws.iter().enumerate() {
                        acc += plane[[y, start + j]] * wt;
                    }
                    rows[[y, ox]] = acc;
                }
            }
            for (oy, (start, ws)) in wy.iter().enumerate() {
                for ox in 0..out_w {
                    let mut acc = 0f32;
                    for (j, wt) in ws.iter().enumerate() {
                        acc += rows[[start + j, ox]] * wt;
                    }
                    out[[i, k, oy, ox]] = acc;
                }
            }
        }
    }
    out
}

/// Per output index: the first input index and the normalised triangle weights
/// (PyTorch's `_upsample_bilinear2d_aa` / PIL's bilinear filter, support 1 scaled by the
/// downscale factor).
fn aa_weights(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = n_in as f64 / n_out as f64;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..n_out)
        .map(|o| {
            let center = scale * (o as f64 + 0.5);
            let xmin = ((center - support + 0.5).floor().max(0.0)) as usize;
            let xmax = ((center + support + 0.5).floor() as usize).min(n_in);
            let mut ws: Vec<f64> = (xmin..xmax)
                .map(|j| {
                    let x = ((j as f64 - center + 0.5) * inv).abs();
                    (1.0 - x).max(0.0)
                })
                .collect();
            let total: f64 = ws.iter().sum();
            if total > 0.0 {
                for v in &mut ws {
                    *v /= total;
                }
            }
            (xmin, ws.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// `post_process_masks` for one mask: logits `[1, 1, m, m]` resized to `size x size`,
/// cropped to `resized`, resized to `tile`, `> threshold`.
fn post_process(
    low: ArrayView4<'_, f32>,
    size: usize,
    resized: (usize, usize),
    tile: (usize, usize),
    threshold: f32,
) -> Array2<bool> {
    let padded = upsample(low, size, size);
    let cropped = padded.slice(s![.., .., ..resized.0, ..resized.1]);
    let full = upsample(cropped, tile.0, tile.1);
    full.slice(s![0, 0, .., ..]).mapv(|v| v > threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_sizes_follow_the_processor() {
        assert_eq!(
            resized_size(Resize::Longest, 1024, (512, 512)),
            (1024, 1024)
        );
        // 1024 * 300 / 700 = 438.86 -> 439, rounded half up.
        assert_eq!(resized_size(Resize::Longest, 1024, (300, 700)), (439, 1024));
        assert_eq!(resized_size(Resize::Square, 1024, (300, 700)), (1024, 1024));
    }

    #[test]
    fn antialiased_resize_matches_torch() {
        // torch.nn.functional.interpolate(torch.arange(30.).reshape(1, 1, 5, 6), size=(2, 4),
        //     mode="bilinear", align_corners=False, antialias=True)
        let a = Array4::from_shape_vec((1, 1, 5, 6), (0..30).map(|v| v as f32).collect())
            .expect("shape");
        let r = resize_antialiased(a.view(), 2, 4);
        let want = [
            [6.375, 7.77778, 9.22222, 10.625],
            [18.375, 19.77778, 21.22222, 22.625],
        ];
        for y in 0..2 {
            for x in 0..4 {
                assert!(
                    (r[[0, 0, y, x]] - want[y][x]).abs() < 1e-4,
                    "({y},{x}) {}",
                    r[[0, 0, y, x]]
                );
            }
        }
        // A constant stays constant, and an upscale is plain bilinear.
        let ones = Array4::<f32>::from_elem((1, 1, 6, 5), 2.5);
        let r = resize_antialiased(ones.view(), 3, 4);
        assert!(r.iter().all(|v| (v - 2.5).abs() < 1e-6));
        let a = Array4::from_shape_vec((1, 1, 2, 2), vec![0.0, 1.0, 2.0, 3.0]).expect("shape");
        let up = resize_antialiased(a.view(), 4, 4);
        let plain = upsample(a.view(), 4, 4);
        for (x, y) in up.iter().zip(plain.iter()) {
            assert!((x - y).abs() < 1e-6, "{x} {y}");
        }
    }
}
