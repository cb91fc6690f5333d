//! Semantic segmentation: per-pixel class probabilities from any fully convolutional model.
//!
//! Output layouts: `probability` (`[B, 1, H, W]`, the probability of class 1, e.g. DBNet,
//! building/no-building models), `probabilities` (`[B, C, h, w]`, already normalised, e.g.
//! Deepness segmentors) and `logits` (`[B, C, h, w]`, softmax applied here). Outputs at a
//! coarser stride (`h = H / s`) are upsampled bilinearly (half-pixel centres, like PyTorch's
//! `interpolate(..., align_corners=False)`) before the softmax.

use std::path::Path;

use ndarray::{Array4, ArrayView4};
use ort::value::TensorRef;

use super::manifest::{family_manifest, GraphSpec, Manifest, Preprocess, SegmentationSpec};
use super::preprocess::Normalizer;
use super::registry::{InputContract, ModelFamily, TimedGraph};
use super::run_err;
use super::{ModelError, ModelPackage};
use crate::runtime::{ModelSession, Runtime, SessionOptions};
use crate::task::Task;

/// The family name in `model.toml`.
pub const FAMILY: &str = "segmenter";

family_manifest! {
    /// A segmenter manifest's sections (`[model]`, `[preprocess]` and `[segmentation]`
    /// required; `[prompted]` and `[tokenizer]` for text-prompted models).
    pub struct SegmenterManifest {
        pub model: Option<GraphSpec>,
        pub preprocess: Option<Preprocess>,
        pub segmentation: Option<SegmentationSpec>,
        pub prompted: Option<super::PromptedSpec>,
        pub tokenizer: Option<super::TokenizerSpec>,
        pub tiling: Option<super::TilingSpec>,
    }
}

/// The segmenter family ([`super::registry`]).
#[derive(Debug)]
pub struct Segmenter;

impl ModelFamily for Segmenter {
    fn name(&self) -> &'static str {
        FAMILY
    }

    fn tasks(&self) -> &'static [Task] {
        &[Task::Segment]
    }

    fn check(&self, runtime: &Runtime, package: &ModelPackage) -> Vec<String> {
        let options = SessionOptions::default();
        match SegmentationModel::from_package(runtime, package.clone(), &package.dir, &options) {
            Ok(_) => Vec::new(),
            Err(ModelError::Invalid { problems, .. }) => problems,
            Err(e) => vec![e.to_string()],
        }
    }

    fn parse(&self, text: &str) -> Result<Manifest, String> {
        let (common, m) = SegmenterManifest::from_toml(text)?;
        Ok(Manifest::new(common, m.tiling.clone(), None, m))
    }

    fn input(&self, package: &ModelPackage) -> Option<InputContract> {
        let m = package.manifest.sections::<SegmenterManifest>()?;
        Some(InputContract {
            size: m.preprocess.as_ref()?.size,
            any_size: true,
            prompted: m.segmentation.as_ref()?.format == "clipseg",
            bytes: false,
        })
    }

    fn timed(&self) -> bool {
        true
    }

    fn load_timed(
        &self,
        runtime: &Runtime,
        path: &Path,
        options: &SessionOptions,
    ) -> Result<TimedGraph, ModelError> {
        let mut m = SegmentationModel::load(runtime, path, options)?;
        if m.is_prompted() {
            return Err(ModelError::Unsupported(
                "bench-model does not time text-prompted models".into(),
            ));
        }
        let (provider, fallback) = m.provider();
        let fallback = fallback.map(str::to_string);
        Ok(TimedGraph {
            provider,
            fallback,
            input_size: m.input_size(),
            run: Box::new(move |x: &Array4<f32>| m.predict(x.view()).map(|_| ())),
        })
    }
}

/// How the output is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegFormat {
    Probability,
    Probabilities,
    Logits,
    /// Text-prompted (CLIPSeg): one logit map `[N, H, W]` per (image, prompt) row; sigmoid gives
    /// P(prompt). Classes are `background` and the prompts.
    Clipseg,
}

/// The text side of a prompted segmenter.
struct Prompted {
    spec: super::PromptedSpec,
    tok: super::TokenizerSpec,
    tokenizer: tokenizers::Tokenizer,
    prompts: Vec<String>,
    tokens: Option<super::Tokens>,
}

/// A loaded segmentation model.
pub struct SegmentationModel {
    /// The graph takes any input height and width (fully convolutional).
    dynamic: bool,
    /// The graph's batch size when its batch axis is fixed (e.g. 1), else `None`.
    fixed_batch: Option<usize>,
    /// The class no polygons are made of, if any.
    background: Option<u8>,
    /// Pixels the output lacks on each side: the manifest's, else 0 until an output shows
    /// one (see [`SegmentationModel::margin`]).
    margin: usize,
    prompted: Option<Prompted>,
    package: ModelPackage,
    graph: GraphSpec,
    pre: Preprocess,
    spec: SegmentationSpec,
    format: SegFormat,
    session: ModelSession,
}

impl std::fmt::Debug for SegmentationModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentationModel")
            .field("dir", &self.package.dir)
            .finish()
    }
}

/// The `[segmentation]` and `[preprocess]` values a segmenter needs to be coherent, into
/// `problems`; the background class (whose polygons are not written), where there is one.
fn spec_problems(
    spec: &SegmentationSpec,
    pre: &Preprocess,
    format: SegFormat,
    problems: &mut Vec<String>,
) -> Option<u8> {
    if format == SegFormat::Probability && spec.classes.len() != 2 {
        problems.push(format!(
            "the probability format has 2 classes, the manifest names {}",
            spec.classes.len()
        ));
    }
    let background = match (&spec.background, format) {
        (Some(b), SegFormat::Clipseg) => {
            problems.push(format!(
                "segmentation.background {b:?}: a prompted model's background is class 0"
            ));
            None
        }
        (Some(b), _) => match b.resolve(&spec.classes) {
            Ok(i) => u8::try_from(i).ok(),
            Err(e) => {
                problems.push(format!("segmentation.background: {e}"));
                None
            }
        },
        // A binary model's negative class, and the prompted models' "background".
        (None, SegFormat::Probability | SegFormat::Clipseg) => Some(0),
        (None, _) => None,
    };
    if let Some(m) = spec.margin {
        if 2 * m >= pre.size {
            problems.push(format!(
                "segmentation.margin {m} leaves nothing of a {} pixel tile",
                pre.size
            ));
        }
    }
    if pre.mean.len() != 3
        || pre.std.len() != 3
        || pre.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
    {
        problems.push("preprocess.mean and preprocess.std need 3 values each, std positive".into());
    }
    background
}

/// What is wrong with the graph's output for the format and the number of named classes.
fn output_problems(
    o: &crate::runtime::TensorSpec,
    format: SegFormat,
    classes: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    if format == SegFormat::Clipseg {
        if o.shape.len() != 3 && o.shape.len() != 4 {
            problems.push(format!(
                "output '{}' has shape {:?}, expected [N, H, W]",
                o.name, o.shape
            ));
        }
    } else if o.shape.len() != 4 {
        problems.push(format!(
            "output '{}' has shape {:?}, expected [B, C, H, W]",
            o.name, o.shape
        ));
    } else if format == SegFormat::Probability && o.shape[1] != 1 && o.shape[1] != -1 {
        problems.push(format!(
            "output '{}' has {} channels, the probability format has 1",
            o.name, o.shape[1]
        ));
    } else if format != SegFormat::Probability && o.shape[1] > 0 && o.shape[1] as usize != classes {
        problems.push(format!(
            "output '{}' has {} channels but {} classes are named",
            o.name, o.shape[1], classes
        ));
    }
    problems
}

impl SegmentationModel {
    /// Load a segmenter package (or Deepness-annotated ONNX file).
    ///
    /// # Errors
    /// Missing sections, unknown output format, a graph without the named input/output, or
    /// the provider failing to load.
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        options: &SessionOptions,
    ) -> Result<SegmentationModel, ModelError> {
        let package = super::load_package(runtime, path)?;
        SegmentationModel::from_package(runtime, package, path, options)
    }

    /// The model of a loaded package; `path` (as the user named it) is for messages.
    ///
    /// # Errors
    /// As [`SegmentationModel::load`].
    pub fn from_package(
        runtime: &Runtime,
        package: ModelPackage,
        path: &Path,
        options: &SessionOptions,
    ) -> Result<SegmentationModel, ModelError> {
        let invalid = |problems: Vec<String>| ModelError::Invalid {
            path: path.display().to_string(),
            problems,
        };
        let Some(m) = package.manifest.sections::<SegmenterManifest>() else {
            return Err(invalid(vec![format!(
                "family '{}' is not a segmenter",
                package.manifest.family
            )]));
        };
        let mut problems = Vec::new();
        if m.model.is_none() {
            problems.push("a segmenter manifest needs a [model] section".to_string());
        }
        if m.preprocess.is_none() {
            problems.push("a segmenter manifest needs a [preprocess] section".to_string());
        }
        if m.segmentation.is_none() {
            problems.push("a segmenter manifest needs a [segmentation] section".to_string());
        }
        let (Some(graph), Some(pre), Some(spec)) = (
            m.model.clone(),
            m.preprocess.clone(),
            m.segmentation.clone(),
        ) else {
            return Err(invalid(problems));
        };
        let format = match spec.format.as_str() {
            "probability" => SegFormat::Probability,
            "probabilities" => SegFormat::Probabilities,
            "logits" => SegFormat::Logits,
            "clipseg" => SegFormat::Clipseg,
            other => {
                return Err(invalid(vec![format!(
                    "segmentation.format '{other}' is not probability, probabilities, logits or clipseg"
                )]))
            }
        };
        let prompted = if format == SegFormat::Clipseg {
            let (Some(spec), Some(tok)) = (m.prompted.clone(), m.tokenizer.clone()) else {
                return Err(invalid(vec![
                    "the clipseg format needs [prompted] and [tokenizer] sections".into(),
                ]));
            };
            let tokenizer = super::tokenizer::load_tokenizer(&package.file(&tok.file))?;
            Some(Prompted {
                spec,
                tok,
                tokenizer,
                prompts: Vec::new(),
                tokens: None,
            })
        } else {
            None
        };
        let background = spec_problems(&spec, &pre, format, &mut problems);
        let session = package.session(runtime, &graph.onnx, options)?;
        if !session.inputs().iter().any(|i| i.name == graph.input) {
            problems.push(format!("the graph has no input '{}'", graph.input));
        }
        match session.outputs().iter().find(|o| o.name == graph.output) {
            None => problems.push(format!("the graph has no output '{}'", graph.output)),
            Some(o) => problems.extend(output_problems(o, format, spec.classes.len())),
        }
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let input = session.inputs().into_iter().find(|i| i.name == graph.input);
        let dynamic = input
            .as_ref()
            .is_some_and(|i| i.shape.len() == 4 && i.shape[2] < 0 && i.shape[3] < 0);
        let fixed_batch = input
            .and_then(|i| i.shape.first().copied())
            .filter(|&b| b > 0)
            .map(|b| b as usize);
        Ok(SegmentationModel {
            dynamic,
            fixed_batch,
            background,
            margin: spec.margin.unwrap_or(0),
            prompted,
            package,
            graph,
            pre,
            spec,
            format,
            session,
        })
    }

    pub fn package(&self) -> &ModelPackage {
        &self.package
    }

    /// The input size the model was made for (the default tile size).
    pub fn input_size(&self) -> usize {
        self.pre.size
    }

    /// True when the graph accepts any tile size.
    pub fn any_size(&self) -> bool {
        self.dynamic
    }

    /// The batch size the graph requires when its batch axis is fixed, else `None`.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    /// Pixels the model's output lacks on each side of its input (valid convolutions): the
    /// manifest's `margin`, else what the last output showed (an output smaller than the
    /// input by a size that is not an integer stride, cut evenly on each side), else 0. The
    /// probabilities [`SegmentationModel::predict`] returns have the input's size, with the
    /// output at their centre and zeros in the margin (which must get no vote).
    pub fn margin(&self) -> usize {
        self.margin
    }

    /// The background class (no polygons are made of it): a binary model's negative class,
    /// a prompted model's `background`, else what the manifest (or Deepness's convention,
    /// class 0) declares; `None` when every class is an object class.
    pub fn background(&self) -> Option<u8> {
        self.background
    }

    /// Class names: the manifest's, or `background` and the prompts for prompted models.
    pub fn classes(&self) -> Vec<String> {
        match &self.prompted {
            Some(p) => std::iter::once("background".to_string())
                .chain(p.prompts.iter().cloned())
                .collect(),
            None => self.spec.classes.clone(),
        }
    }

    /// True for text-prompted models (they need [`SegmentationModel::set_prompts`]).
    pub fn is_prompted(&self) -> bool {
        self.prompted.is_some()
    }

    /// Set the text prompts of a prompted model.
    ///
    /// # Errors
    /// An empty list, a model that takes no prompts, or a tokenizer failure.
    pub fn set_prompts(&mut self, prompts: &[String]) -> Result<(), ModelError> {
        let path = self.package.dir.display().to_string();
        let Some(p) = self.prompted.as_mut() else {
            return Err(ModelError::Input {
                path,
                reason: "this model takes no text prompts".into(),
            });
        };
        if prompts.is_empty() || prompts.iter().any(|q| q.trim().is_empty()) {
            return Err(ModelError::Input {
                path,
                reason: "give at least one non-empty prompt".into(),
            });
        }
        if prompts.len() > 254 {
            return Err(ModelError::Input {
                path,
                reason: format!("{} prompts: at most 254 are supported", prompts.len()),
            });
        }
        let tokens = super::tokenize_prompts(
            &p.tokenizer,
            &p.tok,
            &self.package.file(&p.tok.file),
            prompts,
        )?;
        p.prompts = prompts.to_vec();
        p.tokens = Some(tokens);
        Ok(())
    }

    pub fn format(&self) -> SegFormat {
        self.format
    }

    pub fn threshold(&self) -> f32 {
        self.spec.threshold
    }

    pub fn provider(&self) -> (&'static str, Option<&str>) {
        (self.session.provider, self.session.fallback.as_deref())
    }

    pub fn normalizer(&self) -> Normalizer {
        Normalizer::from_preprocess(&self.pre)
    }

    /// Class probabilities `[B, C, S, S]` for a normalised batch `[B, 3, S, S]`; for the
    /// (binary) probability format one plane, P(class 1), clamped to 0..1 (P(class 0) is its
    /// complement: see [`crate::stitch::mask::MaskStitcher::binary_input`]).
    ///
    /// # Errors
    /// Inference failure or an output of an unexpected shape.
    pub fn predict(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array4<f32>, ModelError> {
        let b = batch.shape()[0];
        match self.fixed_batch {
            // A graph of fixed batch size runs on chunks of that size, the last one padded.
            Some(fixed) if fixed != b && self.format != SegFormat::Clipseg => {
                let mut parts = Vec::new();
                let mut start = 0;
                while start < b {
                    let n = fixed.min(b - start);
                    let chunk = batch.slice(ndarray::s![start..start + n, .., .., ..]);
                    let probs = if n == fixed {
                        self.predict_graph(chunk)?
                    } else {
                        let mut padded = Array4::<f32>::zeros((
                            fixed,
                            chunk.shape()[1],
                            chunk.shape()[2],
                            chunk.shape()[3],
                        ));
                        padded
                            .slice_mut(ndarray::s![..n, .., .., ..])
                            .assign(&chunk);
                        self.predict_graph(padded.view())?
                    };
                    parts.push(probs.slice(ndarray::s![..n, .., .., ..]).to_owned());
                    start += n;
                }
                let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
                ndarray::concatenate(ndarray::Axis(0), &views)
                    .map_err(|e| run_err(&self.session.path, format!("output shape: {e}")))
            }
            _ => self.predict_graph(batch),
        }
    }

    /// [`SegmentationModel::predict`] in one run of the graph.
    fn predict_graph(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array4<f32>, ModelError> {
        if self.format == SegFormat::Clipseg {
            return self.predict_prompted(batch);
        }
        let path = self.session.path.clone();
        let (b, h, w) = (batch.shape()[0], batch.shape()[2], batch.shape()[3]);
        let batch = batch.as_standard_layout();
        let input = TensorRef::from_array_view(batch.view()).map_err(|e| run_err(&path, e))?;
        let out = self
            .session
            .session
            .run(ort::inputs![self.graph.input.as_str() => input])
            .map_err(|e| run_err(&path, e))?;
        let raw = out[self.graph.output.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| run_err(&path, e))?;
        let raw = raw
            .into_dimensionality::<ndarray::Ix4>()
            .map_err(|e| run_err(&path, format!("output is not 4-D: {e}")))?;
        if raw.shape()[0] != b {
            return Err(run_err(
                &path,
                format!("output batch {} for input batch {b}", raw.shape()[0]),
            ));
        }
        let c_out = raw.shape()[1];
        let classes = c_out;
        let (oh, ow) = (raw.shape()[2], raw.shape()[3]);
        let margin =
            output_margin(self.spec.margin, (h, w), (oh, ow)).map_err(|e| run_err(&path, e))?;
        self.margin = margin;
        // At the tile's size already (stride 1): read the output where it is, no copy.
        let up: ndarray::CowArray<'_, f32, ndarray::Ix4> = if raw.shape()[2..] == [h, w] {
            raw.view().into()
        } else if margin > 0 {
            // Valid convolutions: the output is the tile's centre.
            let mut placed = Array4::<f32>::zeros((b, c_out, h, w));
            placed
                .slice_mut(ndarray::s![
                    ..,
                    ..,
                    margin..margin + oh,
                    margin..margin + ow
                ])
                .assign(&raw);
            placed.into()
        } else {
            upsample(raw.view(), h, w).into()
        };
        let plane = h * w;
        match self.format {
            SegFormat::Probability => {
                // Contiguous planes: slices, not per-element indexing (this runs per pixel).
                let up = up.as_standard_layout();
                let src = up.as_slice().unwrap_or(&[]);
                let out: Vec<f32> = src[..(b * plane).min(src.len())]
                    .iter()
                    .map(|p| p.clamp(0.0, 1.0))
                    .collect();
                return Array4::from_shape_vec((b, 1, h, w), out)
                    .map_err(|e| run_err(&path, format!("output shape: {e}")));
            }
            SegFormat::Probabilities | SegFormat::Clipseg => return Ok(up.into_owned()),
            _ => {}
        }
        // Logits: softmax over the classes, plane by plane (contiguous slices, so the loops
        // vectorise): the per-pixel maximum, then exp(v - max) summed, then divided.
        let up = up.as_standard_layout();
        let src = up.as_slice().unwrap_or(&[]);
        let mut out = vec![0f32; b * classes * plane];
        if src.len() != out.len() {
            return Err(run_err(&path, "logits are not [B, C, H, W]"));
        }
        let mut max = vec![0f32; plane];
        let mut sum = vec![0f32; plane];
        for i in 0..b {
            let logits = &src[i * classes * plane..(i + 1) * classes * plane];
            let probs = &mut out[i * classes * plane..(i + 1) * classes * plane];
            max.fill(f32::NEG_INFINITY);
            for l in logits.chunks_exact(plane) {
                for (m, &v) in max.iter_mut().zip(l) {
                    *m = m.max(v);
                }
            }
            sum.fill(0.0);
            for (l, p) in logits
                .chunks_exact(plane)
                .zip(probs.chunks_exact_mut(plane))
            {
                for (((d, &v), &m), s) in p.iter_mut().zip(l).zip(&max).zip(sum.iter_mut()) {
                    *d = (v - m).exp();
                    *s += *d;
                }
            }
            for p in probs.chunks_exact_mut(plane) {
                for (d, &s) in p.iter_mut().zip(&sum) {
                    *d /= s;
                }
            }
        }
        let probs = Array4::from_shape_vec((b, classes, h, w), out)
            .map_err(|e| run_err(&path, format!("output shape: {e}")))?;
        Ok(probs)
    }
}

impl SegmentationModel {
    /// Prompted models: every image paired with every prompt (`N = B * P` rows), one logit map
    /// per row, sigmoid. Channel 0 (background) stays 0; channel `1 + p` is P(prompt p).
    fn predict_prompted(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array4<f32>, ModelError> {
        let path = self.session.path.clone();
        let Some(p) = &self.prompted else {
            return Err(run_err(&path, "not a prompted model"));
        };
        let Some(tokens) = &p.tokens else {
            return Err(ModelError::Input {
                path: path.display().to_string(),
                reason: "no prompts given (--prompts)".into(),
            });
        };
        let (b, h, w) = (batch.shape()[0], batch.shape()[2], batch.shape()[3]);
        let np = tokens.rows;
        let n = b * np;
        let mut pixels = Array4::<f32>::zeros((n, 3, h, w));
        let l = tokens.context;
        let mut ids = ndarray::Array2::<i64>::zeros((n, l));
        let mut mask = ndarray::Array2::<i64>::zeros((n, l));
        for i in 0..b {
            for q in 0..np {
                let r = i * np + q;
                pixels
                    .slice_mut(ndarray::s![r, .., .., ..])
                    .assign(&batch.slice(ndarray::s![i, .., .., ..]));
                for k in 0..l {
                    ids[[r, k]] = tokens.ids[q * l + k];
                    mask[[r, k]] = tokens.mask[q * l + k];
                }
            }
        }
        let mut inputs = ort::inputs![
            self.graph.input.as_str() => TensorRef::from_array_view(pixels.view()).map_err(|e| run_err(&path, e))?,
            p.spec.input_ids.as_str() => TensorRef::from_array_view(ids.view()).map_err(|e| run_err(&path, e))?,
        ];
        if let Some(m) = &p.spec.attention_mask {
            inputs.push((
                m.as_str().into(),
                TensorRef::from_array_view(mask.view())
                    .map_err(|e| run_err(&path, e))?
                    .into(),
            ));
        }
        let out = self
            .session
            .session
            .run(inputs)
            .map_err(|e| run_err(&path, e))?;
        let raw = out[self.graph.output.as_str()]
            .try_extract_array::<f32>()
            .map_err(|e| run_err(&path, e))?;
        let shape = raw.shape().to_vec();
        let (oh, ow) = match shape.as_slice() {
            [rows, oh, ow] if *rows == n => (*oh, *ow),
            [rows, 1, oh, ow] if *rows == n => (*oh, *ow),
            _ => {
                return Err(run_err(
                    &path,
                    format!("output shape {shape:?}, expected [{n}, H, W]"),
                ))
            }
        };
        let maps = raw
            .to_shape((n, 1, oh, ow))
            .map_err(|e| run_err(&path, e))?
            .to_owned();
        let up = upsample(maps.view(), h, w);
        let mut probs = Array4::<f32>::zeros((b, np + 1, h, w));
        for i in 0..b {
            for q in 0..np {
                let src = up.slice(ndarray::s![i * np + q, 0, .., ..]);
                probs
                    .slice_mut(ndarray::s![i, q + 1, .., ..])
                    .assign(&src.mapv(|v| 1.0 / (1.0 + (-v).exp())));
            }
        }
        Ok(probs)
    }
}

/// The margin of an `oh x ow` output for an `h x w` input: 0 for the input's size or an
/// integer stride, the manifest's when it has one, else half the difference.
fn output_margin(
    manifest: Option<usize>,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Result<usize, String> {
    if let Some(m) = manifest.filter(|&m| m > 0) {
        if oh + 2 * m == h && ow + 2 * m == w {
            return Ok(m);
        }
        return Err(format!(
            "output {oh}x{ow} for a {h}x{w} input: segmentation.margin = {m} needs {}x{}",
            h.saturating_sub(2 * m),
            w.saturating_sub(2 * m)
        ));
    }
    let stride = oh > 0 && ow > 0 && h % oh == 0 && w % ow == 0 && h / oh == w / ow;
    if (oh, ow) == (h, w) || stride || manifest == Some(0) {
        return Ok(0);
    }
    if oh < h && ow < w && (h - oh) == (w - ow) && (h - oh) % 2 == 0 {
        return Ok((h - oh) / 2);
    }
    // Any other size is resized to the input (bilinear), as a stride would be.
    Ok(0)
}

/// Bilinear resize of `[B, C, h, w]` to `[B, C, out_h, out_w]` with half-pixel centres
/// (PyTorch `align_corners=False`); a copy when the sizes already match.
pub fn upsample(a: ArrayView4<'_, f32>, out_h: usize, out_w: usize) -> Array4<f32> {
    let (b, c, h, w) = (a.shape()[0], a.shape()[1], a.shape()[2], a.shape()[3]);
    if h == out_h && w == out_w {
        return a.to_owned();
    }
    let axis = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|o| {
                let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let ys = axis(h, out_h);
    let xs = axis(w, out_w);
    let mut out = Array4::<f32>::zeros((b, c, out_h, out_w));
    for i in 0..b {
        for k in 0..c {
            for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
                for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
                    let top = a[[i, k, y0, x0]] * (1.0 - fx) + a[[i, k, y0, x1]] * fx;
                    let bottom = a[[i, k, y1, x0]] * (1.0 - fx) + a[[i, k, y1, x1]] * fx;
                    out[[i, k, oy, ox]] = top * (1.0 - fy) + bottom * fy;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_are_inferred_only_where_no_stride_explains_the_size() {
        // Valid convolutions: 512 -> 484 is no integer stride, 14 a side.
        assert_eq!(output_margin(None, (512, 512), (484, 484)), Ok(14));
        // Same size, and integer strides: no margin.
        assert_eq!(output_margin(None, (64, 64), (64, 64)), Ok(0));
        assert_eq!(output_margin(None, (64, 64), (16, 16)), Ok(0));
        assert_eq!(output_margin(None, (64, 64), (32, 32)), Ok(0));
        // ... unless the manifest says so.
        assert_eq!(output_margin(Some(16), (64, 64), (32, 32)), Ok(16));
        // An odd or uneven difference is resized, as before.
        assert_eq!(output_margin(None, (64, 64), (37, 37)), Ok(0));
        assert_eq!(output_margin(None, (64, 48), (40, 30)), Ok(0));
        // A declared margin the output does not have.
        assert!(output_margin(Some(10), (64, 64), (36, 36)).is_err());
    }

    #[test]
    fn upsample_matches_half_pixel_bilinear() {
        // PyTorch: F.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=4, mode="bilinear", align_corners=False)
        let a =
            ndarray::Array4::from_shape_vec((1, 1, 2, 2), vec![0.0, 1.0, 2.0, 3.0]).expect("shape");
        let u = upsample(a.view(), 4, 4);
        let want = [
            [0.0, 0.25, 0.75, 1.0],
            [0.5, 0.75, 1.25, 1.5],
            [1.5, 1.75, 2.25, 2.5],
            [2.0, 2.25, 2.75, 3.0],
        ];
        for y in 0..4 {
            for x in 0..4 {
                assert!(
                    (u[[0, 0, y, x]] - want[y][x]).abs() < 1e-6,
                    "({y},{x}) {}",
                    u[[0, 0, y, x]]
                );
            }
        }
        // A constant 4x4 block per output cell stays exact at stride 4 in the block centres.
        let same = upsample(a.view(), 2, 2);
        assert_eq!(same, a);
    }
}
