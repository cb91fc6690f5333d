//! Pipeline files (`pipelines/*.toml`): input band mapping and scaling, tiling, one or more
//! model stages with their options, and the output format, validated into a [`Pipeline`] that
//! builds one job per stage for each scene.
//!
//! Unknown keys, wrong types and options that belong to another kind of stage are errors that
//! name the file and line, with a suggestion when a known key is close.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BatchError;
use crate::models::clip::DEFAULT_TEMPLATES;
use crate::models::decoder::GenerationParams;
use crate::output::formats;
use crate::output::VectorFormat;
use crate::pipeline::{CaptionJob, ClassifyJob, DetectJob, SegmentJob};
use crate::raster::{BandMapping, OpenOptions, Resampling, ScalingSpec};
use crate::runtime::{Device, SessionOptions};
use crate::stitch::boxes::MergeMethod;
use crate::stitch::mask::BlendWindow;
use crate::tiling::{EdgeMode, GridOptions, ReadOptions, ReadOrder};

/// The file as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    input: InputSection,
    #[serde(default)]
    tiling: TilingSection,
    #[serde(default)]
    runtime: RuntimeSection,
    #[serde(default)]
    output: OutputSection,
    #[serde(default, rename = "stage")]
    stages: Vec<toml::Spanned<StageSection>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct InputSection {
    /// 1-based source bands in the model's channel order.
    bands: Option<Vec<usize>>,
    scale: Option<String>,
    resampling: Option<String>,
    pixel_coords: Option<bool>,
    /// STAC Item inputs: the asset to read, by key or role.
    asset: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TilingSection {
    tile_size: Option<usize>,
    overlap: Option<usize>,
    target_gsd: Option<f64>,
    edge: Option<String>,
    min_valid: Option<f64>,
    batch_size: Option<usize>,
    threads: Option<usize>,
    queue: Option<usize>,
    /// Read each tile once for every stage (default true when there are several stages).
    shared_pass: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RuntimeSection {
    device: Option<String>,
    allow_fallback: Option<bool>,
    intra_threads: Option<usize>,
    trt_cache: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct OutputSection {
    format: Option<String>,
}

pub use crate::task::Task;

/// The model package family a task runs.
trait TaskFamily {
    fn family(self) -> &'static str;
}

impl TaskFamily for Task {
    /// The model package family the task runs.
    fn family(self) -> &'static str {
        match self {
            Task::Classify => "clip",
            Task::Caption => "image-text-decoder",
            Task::Detect => "detector",
            Task::Segment => "segmenter",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct StageSection {
    name: Option<String>,
    task: Task,
    model: PathBuf,
    // classify
    labels: Option<Vec<String>>,
    templates: Option<Vec<String>>,
    min_score: Option<f32>,
    // caption
    prompt: Option<String>,
    num_beams: Option<usize>,
    max_new_tokens: Option<usize>,
    min_new_tokens: Option<usize>,
    repetition_penalty: Option<f32>,
    length_penalty: Option<f32>,
    scene_only: Option<bool>,
    // detect and segment
    prompts: Option<Vec<String>>,
    threshold: Option<f32>,
    // detect
    confidence: Option<f32>,
    iou: Option<f32>,
    merge: Option<String>,
    cut_ios: Option<f64>,
    class_agnostic: Option<bool>,
    // segment
    blend: Option<String>,
    probabilities: Option<bool>,
    simplify: Option<f64>,
    min_area: Option<f64>,
}

impl StageSection {
    /// Keys given in the file with the tasks that take them.
    fn given_keys(&self) -> Vec<(&'static str, &'static [Task])> {
        use Task::{Caption, Classify, Detect, Segment};
        let mut keys: Vec<(&'static str, &'static [Task])> = Vec::new();
        let mut key = |given: bool, name: &'static str, tasks: &'static [Task]| {
            if given {
                keys.push((name, tasks));
            }
        };
        key(self.labels.is_some(), "labels", &[Classify]);
        key(self.templates.is_some(), "templates", &[Classify]);
        key(self.min_score.is_some(), "min_score", &[Classify]);
        key(self.prompt.is_some(), "prompt", &[Caption]);
        key(self.num_beams.is_some(), "num_beams", &[Caption]);
        key(self.max_new_tokens.is_some(), "max_new_tokens", &[Caption]);
        key(self.min_new_tokens.is_some(), "min_new_tokens", &[Caption]);
        key(
            self.repetition_penalty.is_some(),
            "repetition_penalty",
            &[Caption],
        );
        key(self.length_penalty.is_some(), "length_penalty", &[Caption]);
        key(self.scene_only.is_some(), "scene_only", &[Caption]);
        key(self.prompts.is_some(), "prompts", &[Detect, Segment]);
        key(self.threshold.is_some(), "threshold", &[Segment]);
        key(self.confidence.is_some(), "confidence", &[Detect]);
        key(self.iou.is_some(), "iou", &[Detect]);
        key(self.merge.is_some(), "merge", &[Detect]);
        key(self.cut_ios.is_some(), "cut_ios", &[Detect]);
        key(self.class_agnostic.is_some(), "class_agnostic", &[Detect]);
        key(self.blend.is_some(), "blend", &[Segment]);
        key(self.probabilities.is_some(), "probabilities", &[Segment]);
        key(self.simplify.is_some(), "simplify", &[Segment]);
        key(self.min_area.is_some(), "min_area", &[Segment]);
        keys
    }
}

/// One validated stage.
#[derive(Clone, Debug)]
pub struct Stage {
    /// Folder name of the stage's outputs inside each scene's folder.
    pub name: String,
    pub task: Task,
    /// The model, resolved against the pipeline file's folder.
    pub model: PathBuf,
    options: StageSection,
    merge: MergeMethod,
    blend: BlendWindow,
}

/// A validated pipeline.
#[derive(Debug)]
pub struct Pipeline {
    /// The pipeline file.
    pub path: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub stages: Vec<Stage>,
    /// Stages share one read pass.
    pub shared_pass: bool,
    /// STAC Item inputs: asset key or role to read.
    pub asset: Option<String>,
    pub format: &'static dyn VectorFormat,
    bands: BandMapping,
    scale: ScalingSpec,
    resampling: Resampling,
    pixel_coords: bool,
    grid: GridOptions,
    overlap_given: bool,
    min_valid: f64,
    batch_size: Option<usize>,
    threads: Option<usize>,
    queue: Option<usize>,
    session: SessionOptions,
    /// sha256 of the validated content (comments and key order do not matter).
    pub content_hash: String,
}

/// Byte offset to 1-based line number.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Edit distance, for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest of `candidates` to `word`, when close enough to be a typo.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| c)
}

/// "did you mean" for serde's "unknown field `x`, expected one of `a`, `b`" messages.
fn suggestion(message: &str) -> Option<String> {
    let ticks: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let (word, candidates) = ticks.split_first()?;
    if !(message.starts_with("unknown field") || message.starts_with("unknown variant")) {
        return None;
    }
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

impl Pipeline {
    /// Read and validate a pipeline file. Models must exist and be of the stage's kind.
    ///
    /// # Errors
    /// [`BatchError::Pipeline`] naming the file, the line where known, and the cause.
    pub fn load(path: &Path) -> Result<Pipeline, BatchError> {
        let text = std::fs::read_to_string(path).map_err(|e| BatchError::Pipeline {
            path: path.display().to_string(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Pipeline::parse(path, &text)
    }

    /// Validate pipeline text read from `path` (model paths resolve against its folder).
    ///
    /// # Errors
    /// As [`Pipeline::load`].
    pub fn parse(path: &Path, text: &str) -> Result<Pipeline, BatchError> {
        let err = |line: Option<usize>, message: String| BatchError::Pipeline {
            path: path.display().to_string(),
            line,
            message,
        };
        let file: PipelineFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let mut message = e.message().trim().to_string();
            if let Some(s) = suggestion(&message) {
                message = format!("{message}; {s}");
            }
            err(line, message)
        })?;
        if file.stages.is_empty() {
            return Err(err(
                None,
                "no [[stage]]: a pipeline needs at least one model stage".into(),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut stages: Vec<Stage> = Vec::new();
        for spanned in &file.stages {
            let line = Some(line_of(text, spanned.span().start));
            let s = spanned.get_ref();
            for (key, tasks) in s.given_keys() {
                if !tasks.contains(&s.task) {
                    let owners: Vec<&str> = tasks.iter().map(|t| t.name()).collect();
                    return Err(err(
                        line,
                        format!(
                            "a {} stage does not take `{key}` (an option of {} stages)",
                            s.task.name(),
                            owners.join(" and ")
                        ),
                    ));
                }
            }
            let name = s.name.clone().unwrap_or_else(|| s.task.name().to_string());
            if name.is_empty()
                || name.starts_with('.')
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(err(
                    line,
                    format!("stage name '{name}' must be letters, digits, '-', '_' or '.' (it names the stage's output folder)"),
                ));
            }
            if stages.iter().any(|t| t.name == name) {
                return Err(err(
                    line,
                    format!("two stages are named '{name}': give each a distinct `name`"),
                ));
            }
            let model = base.join(&s.model);
            check_model(&model, s.task).map_err(|m| err(line, m))?;
            check_stage(s).map_err(|m| err(line, m))?;
            let merge = match &s.merge {
                Some(m) => value_enum::<MergeMethod>(m, "merge").map_err(|m| err(line, m))?,
                None => MergeMethod::Nms,
            };
            let blend = match &s.blend {
                Some(b) => value_enum::<BlendWindow>(b, "blend").map_err(|m| err(line, m))?,
                None => BlendWindow::Cosine,
            };
            stages.push(Stage {
                name,
                task: s.task,
                model,
                options: s.clone(),
                merge,
                blend,
            });
        }
        // Section values, with the file's line for each bad one.
        let at = |key: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(key))
                .map(|i| i + 1)
        };
        let input = &file.input;
        let bands = match &input.bands {
            Some(b) => {
                if b.is_empty() || b.contains(&0) {
                    return Err(err(
                        at("bands"),
                        "bands are 1-based source band numbers".into(),
                    ));
                }
                BandMapping::new(b.clone())
            }
            None => BandMapping::new(Vec::new()),
        };
        let scale: ScalingSpec = input
            .scale
            .as_deref()
            .unwrap_or("auto")
            .parse()
            .map_err(|e: String| err(at("scale"), format!("scale: {e}")))?;
        let resampling: Resampling = input
            .resampling
            .as_deref()
            .unwrap_or("average")
            .parse()
            .map_err(|e: String| err(at("resampling"), format!("resampling: {e}")))?;
        let t = &file.tiling;
        let edge = match &t.edge {
            Some(e) => value_enum::<EdgeMode>(e, "edge").map_err(|m| err(at("edge"), m))?,
            None => EdgeMode::Pad,
        };
        let min_valid = t.min_valid.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_valid) {
            return Err(err(
                at("min_valid"),
                format!("min_valid must be between 0 and 1, got {min_valid}"),
            ));
        }
        if let Some(g) = t.target_gsd {
            if !(g.is_finite() && g > 0.0) {
                return Err(err(
                    at("target_gsd"),
                    format!("target_gsd must be positive, got {g}"),
                ));
            }
        }
        if let (Some(size), Some(overlap)) = (t.tile_size, t.overlap) {
            if overlap >= size {
                return Err(err(
                    at("overlap"),
                    format!("overlap {overlap} must be smaller than tile_size {size}"),
                ));
            }
        }
        for (key, v) in [("batch_size", t.batch_size), ("threads", t.threads)] {
            if v == Some(0) {
                return Err(err(at(key), format!("{key} must be at least 1")));
            }
        }
        let r = &file.runtime;
        let device: Device = r
            .device
            .as_deref()
            .unwrap_or("cpu")
            .parse()
            .map_err(|e: String| err(at("device"), format!("device: {e}")))?;
        let format_name = file.output.format.as_deref().unwrap_or("gpkg");
        let format = formats::by_name(format_name).ok_or_else(|| {
            err(
                at("format"),
                format!("unknown vector format '{format_name}' (gpkg, shp, geojson, fgb)"),
            )
        })?;
        let name = file.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map_or("pipeline".into(), |s| s.to_string_lossy().into_owned())
        });
        // The content hash: the parsed file, so comments and layout do not count (models count
        // by their content, see the batch records).
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&file).unwrap_or_default());
        let content_hash = format!("{:x}", h.finalize());
        Ok(Pipeline {
            path: path.to_path_buf(),
            name,
            description: file.description.clone(),
            shared_pass: t.shared_pass.unwrap_or(true) && stages.len() > 1,
            stages,
            asset: input.asset.clone(),
            format,
            bands,
            scale,
            resampling,
            pixel_coords: input.pixel_coords.unwrap_or(false),
            grid: GridOptions {
                tile_size: t.tile_size.unwrap_or(0),
                overlap: t.overlap.unwrap_or(0),
                target_gsd: t.target_gsd,
                edge,
            },
            overlap_given: t.overlap.is_some(),
            min_valid,
            batch_size: t.batch_size,
            threads: t.threads,
            queue: t.queue,
            session: SessionOptions {
                device,
                allow_fallback: r.allow_fallback.unwrap_or(false),
                intra_threads: r.intra_threads.unwrap_or(0),
                trt_cache: r.trt_cache.clone(),
            },
            content_hash,
        })
    }

    /// Read options for one scene when `jobs` scenes run at once: the CPUs are shared.
    fn read_options(&self, jobs: usize) -> (usize, ReadOptions) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = self.threads.unwrap_or((cpus / jobs.max(1)).max(1));
        let batch = self
            .batch_size
            .unwrap_or_else(|| self.session.device.default_batch_size());
        let read = ReadOptions {
            bands: self.bands.clone(),
            resampling: self.resampling,
            threads,
            queue: self.queue.unwrap_or((2 * threads).max(batch)),
            min_valid: self.min_valid,
            fill: 0.0,
            read_pixels: true,
            order: ReadOrder::Stripes,
            deliver_skipped: false,
            ordered: true,
        };
        (batch, read)
    }

    /// How scenes are opened.
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions {
            pixel_coords: self.pixel_coords,
        }
    }

    /// How a shared pass reads a scene: open options, reader threads, queue per stage.
    pub fn shared_read(&self, ctx: &JobContext) -> (OpenOptions, usize, usize) {
        let (batch, read) = self.read_options(ctx.jobs);
        let open = OpenOptions {
            pixel_coords: self.pixel_coords,
        };
        (open, read.threads, read.queue.max(batch))
    }

    /// One job per stage for `scene`, writing into `out/<stage name>`.
    pub fn jobs(&self, scene: &str, out: &Path, ctx: &JobContext) -> Vec<StageJob> {
        let (batch, read) = self.read_options(ctx.jobs);
        let open = OpenOptions {
            pixel_coords: self.pixel_coords,
        };
        let mut session = self.session.clone();
        if session.intra_threads == 0 && ctx.jobs > 1 {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            session.intra_threads = (cpus / ctx.jobs).max(1);
        }
        if session.trt_cache.is_none() {
            session.trt_cache = ctx.cache_dir.as_ref().map(|c| c.join("tensorrt"));
        }
        let gsd_given = self.grid.target_gsd.is_some();
        self.stages
            .iter()
            .map(|stage| {
                let o = &stage.options;
                let stage_out = out.join(&stage.name);
                let model = stage.model.clone();
                let ort_lib = ctx.ort_lib.clone();
                match stage.task {
                    Task::Classify => StageJob::Classify(Box::new(ClassifyJob {
                        scene: scene.to_string(),
                        open: open.clone(),
                        model,
                        ort_lib,
                        session: session.clone(),
                        labels: o.labels.clone().unwrap_or_default(),
                        templates: o.templates.clone().unwrap_or_else(|| {
                            DEFAULT_TEMPLATES.iter().map(|t| t.to_string()).collect()
                        }),
                        min_score: o.min_score,
                        grid: self.grid.clone(),
                        read: read.clone(),
                        scaling: self.scale.clone(),
                        batch_size: batch,
                        out: Some(stage_out),
                        format: self.format,
                        overwrite: false,
                        cache_dir: ctx.cache_dir.as_ref().map(|c| c.join("text-embeddings")),
                        progress: ctx.progress,
                        feed: None,
                    })),
                    Task::Caption => StageJob::Caption(Box::new(CaptionJob {
                        scene: scene.to_string(),
                        open: open.clone(),
                        model,
                        ort_lib,
                        session: session.clone(),
                        prompt: o.prompt.clone().unwrap_or_default(),
                        params: generation(o, &stage.model),
                        grid: self.grid.clone(),
                        read: read.clone(),
                        scaling: self.scale.clone(),
                        batch_size: batch,
                        tiles: !o.scene_only.unwrap_or(false),
                        scene_window: None,
                        out: Some(stage_out),
                        format: self.format,
                        overwrite: false,
                        progress: ctx.progress,
                        feed: None,
                    })),
                    Task::Detect => StageJob::Detect(Box::new(DetectJob {
                        scene: scene.to_string(),
                        open: open.clone(),
                        model,
                        ort_lib,
                        session: session.clone(),
                        grid: self.grid.clone(),
                        overlap_given: self.overlap_given,
                        gsd_given,
                        read: read.clone(),
                        scaling: self.scale.clone(),
                        batch_size: batch,
                        confidence: o.confidence,
                        prompts: o.prompts.clone().unwrap_or_default(),
                        iou: o.iou,
                        method: stage.merge,
                        cut_ios: o.cut_ios.unwrap_or(0.6),
                        class_aware: !o.class_agnostic.unwrap_or(false),
                        out: Some(stage_out),
                        format: self.format,
                        overwrite: false,
                        progress: ctx.progress,
                        feed: None,
                    })),
                    Task::Segment => StageJob::Segment(Box::new(SegmentJob {
                        scene: scene.to_string(),
                        open: open.clone(),
                        model,
                        ort_lib,
                        session: session.clone(),
                        grid: self.grid.clone(),
                        overlap_given: self.overlap_given,
                        gsd_given,
                        read: read.clone(),
                        scaling: self.scale.clone(),
                        batch_size: batch,
                        window: stage.blend,
                        threshold: o.threshold,
                        prompts: o.prompts.clone().unwrap_or_default(),
                        probabilities: o.probabilities.unwrap_or(false),
                        simplify: o.simplify.unwrap_or(0.0),
                        min_area: o.min_area.unwrap_or(0.0),
                        out: stage_out,
                        format: self.format,
                        overwrite: false,
                        progress: ctx.progress,
                        feed: None,
                    })),
                }
            })
            .collect()
    }
}

/// What every job of a batch shares.
#[derive(Clone, Debug, Default)]
pub struct JobContext {
    pub ort_lib: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub progress: bool,
    /// Scenes running at once (CPU threads are divided between them).
    pub jobs: usize,
}

/// One stage's job for one scene.
#[derive(Debug)]
pub enum StageJob {
    Classify(Box<ClassifyJob>),
    Caption(Box<CaptionJob>),
    Detect(Box<DetectJob>),
    Segment(Box<SegmentJob>),
}

impl StageJob {
    /// Take tiles from a shared read pass.
    pub fn set_feed(&mut self, port: crate::pipeline::feed::FeedPort) {
        let feed = Some(port);
        match self {
            StageJob::Classify(j) => j.feed = feed,
            StageJob::Caption(j) => j.feed = feed,
            StageJob::Detect(j) => j.feed = feed,
            StageJob::Segment(j) => j.feed = feed,
        }
    }

    /// Run the job; its report.
    ///
    /// # Errors
    /// The job's error.
    pub fn run(self) -> Result<crate::pipeline::TaskReport, crate::pipeline::PipelineError> {
        use crate::pipeline::{run_caption, run_classify, run_detect, run_segment, TaskReport};
        Ok(match self {
            StageJob::Classify(j) => TaskReport::Classify(run_classify(*j)?),
            StageJob::Caption(j) => TaskReport::Caption(run_caption(*j)?),
            StageJob::Detect(j) => TaskReport::Detect(run_detect(*j)?),
            StageJob::Segment(j) => TaskReport::Segment(run_segment(*j)?),
        })
    }
}

/// Generation settings: the stage's options over the model's defaults (`None`: the model's).
fn generation(o: &StageSection, model: &Path) -> Option<GenerationParams> {
    let given = o.num_beams.is_some()
        || o.max_new_tokens.is_some()
        || o.min_new_tokens.is_some()
        || o.repetition_penalty.is_some()
        || o.length_penalty.is_some();
    if !given {
        return None;
    }
    let g = crate::models::ModelPackage::load(model)
        .ok()
        .and_then(|p| p.manifest.generation)
        .unwrap_or_default();
    Some(GenerationParams {
        max_new_tokens: o.max_new_tokens.unwrap_or(g.max_new_tokens),
        min_new_tokens: o.min_new_tokens.unwrap_or(g.min_new_tokens),
        num_beams: o.num_beams.unwrap_or(g.num_beams),
        repetition_penalty: o.repetition_penalty.unwrap_or(g.repetition_penalty),
        length_penalty: o.length_penalty.unwrap_or(g.length_penalty),
    })
}

fn value_enum<T: clap::ValueEnum>(value: &str, key: &str) -> Result<T, String> {
    T::from_str(value, true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let hint = closest(value, &refs)
            .map(|c| format!("; did you mean `{c}`?"))
            .unwrap_or_default();
        format!(
            "{key} = \"{value}\" is not one of {}{hint}",
            names.join(", ")
        )
    })
}

/// The model exists and is of the stage's kind.
fn check_model(model: &Path, task: Task) -> Result<(), String> {
    if !model.exists() {
        return Err(format!(
            "model {} does not exist (paths are relative to the pipeline file)",
            model.display()
        ));
    }
    if model.is_dir() {
        let package =
            crate::models::ModelPackage::load(model).map_err(|e| format!("model: {e}"))?;
        if package.manifest.family != task.family() {
            return Err(format!(
                "{} is a '{}' model; a {} stage needs a '{}' model",
                model.display(),
                package.manifest.family,
                task.name(),
                task.family()
            ));
        }
    } else if !matches!(task, Task::Detect | Task::Segment) {
        return Err(format!(
            "{}: a {} stage needs a model package folder (model.toml)",
            model.display(),
            task.name()
        ));
    }
    Ok(())
}

/// Option values a stage can check without its model.
fn check_stage(s: &StageSection) -> Result<(), String> {
    let unit = |key: &str, v: Option<f64>| match v {
        Some(v) if !(0.0..=1.0).contains(&v) => {
            Err(format!("{key} must be between 0 and 1, got {v}"))
        }
        _ => Ok(()),
    };
    unit("min_score", s.min_score.map(f64::from))?;
    unit("threshold", s.threshold.map(f64::from))?;
    unit("confidence", s.confidence.map(f64::from))?;
    unit("iou", s.iou.map(f64::from))?;
    unit("cut_ios", s.cut_ios)?;
    for (key, v) in [("simplify", s.simplify), ("min_area", s.min_area)] {
        if v.is_some_and(|v| v.is_nan() || v < 0.0) {
            return Err(format!("{key} must not be negative"));
        }
    }
    if s.task == Task::Classify {
        let labels = s.labels.as_deref().unwrap_or_default();
        if labels.is_empty() {
            return Err("a classify stage needs `labels`".into());
        }
        if labels.iter().any(|l| l.trim().is_empty()) {
            return Err("empty label in `labels`".into());
        }
        if let Some(t) = &s.templates {
            if t.is_empty() || t.iter().any(|t| !t.contains("{}")) {
                return Err("every template must contain {} where the label goes".into());
            }
        }
    }
    if s.num_beams == Some(0) || s.max_new_tokens == Some(0) {
        return Err("num_beams and max_new_tokens must be at least 1".into());
    }
    if let (Some(lo), Some(hi)) = (s.min_new_tokens, s.max_new_tokens) {
        if lo > hi {
            return Err(format!("min_new_tokens {lo} is above max_new_tokens {hi}"));
        }
    }
    if s.prompts.as_ref().is_some_and(|p| p.is_empty()) {
        return Err("`prompts` is empty".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pipeline, BatchError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        Pipeline::parse(&dir.join("test.toml"), text)
    }

    fn message(r: Result<Pipeline, BatchError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    const CLIP: &str = "../sample_data/models/clip-tiny";

    #[test]
    fn a_valid_pipeline_resolves_models_and_defaults() {
        let p = parse(&format!(
            "[tiling]\noverlap = 8\n[[stage]]\ntask = \"classify\"\nmodel = \"{CLIP}\"\nlabels = [\"a\", \"b\"]\n"
        ))
        .expect("valid");
        assert_eq!(p.stages.len(), 1);
        assert_eq!(p.stages[0].name, "classify");
        assert!(p.stages[0].model.join("model.toml").exists());
        assert!(!p.shared_pass, "one stage needs no shared pass");
        assert_eq!(p.grid.overlap, 8);
        assert_eq!(p.format.name(), "gpkg");
    }

    #[test]
    fn unknown_keys_name_the_line_and_suggest() {
        let m = message(parse("[tiling]\ntile_sise = 64\n"));
        assert!(m.contains("test.toml:2:"), "{m}");
        assert!(m.contains("did you mean `tile_size`"), "{m}");
        let m = message(parse(&format!(
            "\n\n[[stage]]\ntask = \"clasify\"\nmodel = \"{CLIP}\"\n"
        )));
        assert!(m.contains("test.toml:4:"), "{m}");
        assert!(m.contains("did you mean `classify`"), "{m}");
    }

    #[test]
    fn wrong_types_name_the_line() {
        let m = message(parse("[tiling]\noverlap = \"eight\"\n"));
        assert!(m.contains("test.toml:2:"), "{m}");
        assert!(m.contains("invalid type"), "{m}");
    }

    #[test]
    fn options_of_another_task_are_errors() {
        let m = message(parse(&format!(
            "[[stage]]\ntask = \"classify\"\nmodel = \"{CLIP}\"\nlabels = [\"a\"]\nconfidence = 0.5\n"
        )));
        assert!(m.contains("test.toml:1:"), "{m}");
        assert!(m.contains("does not take `confidence`"), "{m}");
    }

    #[test]
    fn models_must_exist_and_match_the_task() {
        let m = message(parse(
            "[[stage]]\ntask = \"segment\"\nmodel = \"nowhere\"\n",
        ));
        assert!(m.contains("does not exist"), "{m}");
        let m = message(parse(&format!(
            "[[stage]]\ntask = \"detect\"\nmodel = \"{CLIP}\"\n"
        )));
        assert!(m.contains("needs a 'detector' model"), "{m}");
    }

    #[test]
    fn duplicate_stage_names_and_bad_values_are_errors() {
        let stage =
            format!("[[stage]]\ntask = \"classify\"\nmodel = \"{CLIP}\"\nlabels = [\"a\"]\n");
        let m = message(parse(&format!("{stage}{stage}")));
        assert!(m.contains("two stages are named 'classify'"), "{m}");
        let m = message(parse(&format!("[tiling]\nmin_valid = 2.0\n{stage}")));
        assert!(m.contains("test.toml:2:") && m.contains("min_valid"), "{m}");
        let m = message(parse(&format!("[tiling]\nedge = \"shfit\"\n{stage}")));
        assert!(m.contains("did you mean `shift`"), "{m}");
        let m = message(parse(""));
        assert!(m.contains("at least one model stage"), "{m}");
    }

    #[test]
    fn the_hash_ignores_comments_and_follows_content() {
        let a = format!("[[stage]]\ntask = \"classify\"\nmodel = \"{CLIP}\"\nlabels = [\"a\"]\n");
        let b = format!("# comment\n{a}");
        let c = a.replace("[\"a\"]", "[\"b\"]");
        let (ha, hb, hc) = (
            parse(&a).expect("a").content_hash,
            parse(&b).expect("b").content_hash,
            parse(&c).expect("c").content_hash,
        );
        assert_eq!(ha, hb);
        assert_ne!(ha, hc);
    }

    #[test]
    fn suggestions_only_for_close_words() {
        assert_eq!(closest("ovrlap", &["overlap", "edge"]), Some("overlap"));
        assert_eq!(closest("colour", &["overlap", "edge"]), None);
    }
}
