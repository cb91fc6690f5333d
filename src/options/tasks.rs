//! Each task's own options: the flags of its command and the keys of its pipeline stages,
//! with their validation and the job they build. A new task is one options type here, one
//! job file in `src/pipeline/` and one [`TaskOptions`] variant.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use super::common::SceneJobBase;
use super::{de, InvalidOption};
use crate::generation::EarlyStopping;
use crate::jobs::{CaptionJob, ClassifyJob, DetectJob, SegmentJob};
use crate::models::decoder::GenerationParams;
use crate::models::{ModelError, ModelPackage};
use crate::options::JobContext;
use crate::stitch::boxes::MergeMethod;
use crate::stitch::mask::BlendWindow;
use crate::task::StageOptions;

/// A value in the unit interval, when given.
fn unit(key: &'static str, v: Option<f64>) -> Result<(), InvalidOption> {
    match v {
        Some(v) if !(0.0..=1.0).contains(&v) => Err(InvalidOption::new(
            key,
            format!("must be between 0 and 1, got {v}"),
        )),
        _ => Ok(()),
    }
}

/// A size or tolerance that must not be negative.
fn not_negative(key: &'static str, v: Option<f64>) -> Result<(), InvalidOption> {
    match v {
        Some(v) if v.is_nan() || v < 0.0 => Err(InvalidOption::new(key, "must not be negative")),
        _ => Ok(()),
    }
}

/// Text prompts, trimmed; an empty list given explicitly is an error.
fn prompt_list(prompts: &Option<Vec<String>>) -> Result<Vec<String>, InvalidOption> {
    match prompts {
        None => Ok(Vec::new()),
        Some(p) if p.is_empty() => Err(InvalidOption::new("prompts", "is empty")),
        Some(p) => Ok(p.iter().map(|q| q.trim().to_string()).collect()),
    }
}

/// `classify`: zero-shot labels for every tile.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifyOptions {
    /// Pipeline files: the stage's output folder name (default: the task).
    #[arg(skip)]
    pub name: Option<String>,
    /// Model package folder (model.toml, ONNX encoders, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Comma-separated labels, e.g. "forest,river,city".
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        required_unless_present = "labels_file"
    )]
    pub labels: Option<Vec<String>>,
    /// File with one label per line (blank lines and lines starting with # ignored).
    #[arg(long, value_name = "FILE", conflicts_with = "labels")]
    pub labels_file: Option<PathBuf>,
    /// Prompt template with {} for the label; repeat to give an ensemble. Replaces the
    /// package's published ensemble (`[prompts]` in model.toml), else the family's default
    /// satellite-imagery ensemble.
    #[arg(long = "template", alias = "templates", value_name = "TEMPLATE")]
    pub templates: Option<Vec<String>>,
    /// Tiles whose best probability is below this are labelled "unknown".
    #[arg(long, value_name = "P")]
    pub min_score: Option<f32>,
    /// Do not read or write the text-embedding cache.
    #[arg(long)]
    pub no_cache: bool,
}

impl ClassifyOptions {
    /// The labels, from the list or the labels file.
    ///
    /// # Errors
    /// An unreadable labels file, no labels, or an empty label.
    pub fn labels(&self) -> Result<Vec<String>, InvalidOption> {
        let labels: Vec<String> = match (&self.labels, &self.labels_file) {
            (Some(list), _) => list.iter().map(|l| l.trim().to_string()).collect(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| {
                    InvalidOption::new(
                        "labels_file",
                        format!("{}: cannot read the labels file: {e}", file.display()),
                    )
                })?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect(),
            (None, None) => return Err(InvalidOption::new("labels", "are required")),
        };
        if labels.iter().any(String::is_empty) {
            return Err(InvalidOption::new(
                "labels",
                format!(
                    "has an empty label: \"{}\"",
                    self.labels.clone().unwrap_or_default().join(",")
                ),
            ));
        }
        Ok(labels)
    }

    /// # Errors
    /// The first bad value, with its key.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        if self.labels_file.is_none() {
            self.labels()?;
        }
        if let Some(t) = &self.templates {
            if t.is_empty() || t.iter().any(|t| !t.contains("{}")) {
                return Err(InvalidOption::new(
                    "templates",
                    "must each contain {} where the label goes",
                ));
            }
        }
        unit("min_score", self.min_score.map(f64::from))
    }

    /// The job for one scene.
    ///
    /// # Errors
    /// A bad option value.
    pub fn job(
        &self,
        base: SceneJobBase,
        out: Option<PathBuf>,
        overwrite: bool,
        cache_dir: Option<&Path>,
    ) -> Result<ClassifyJob, InvalidOption> {
        self.validate()?;
        Ok(ClassifyJob {
            base,
            labels: self.labels()?,
            // None given: the package's or the family's ensemble, known once it is loaded.
            templates: self.templates.clone().unwrap_or_default(),
            min_score: self.min_score,
            out,
            overwrite,
            cache_dir: if self.no_cache {
                None
            } else {
                cache_dir.map(|c| c.join("text-embeddings"))
            },
            feed: None,
        })
    }
}

/// A source pixel window `X,Y,W,H`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SceneWindow(pub usize, pub usize, pub usize, pub usize);

impl std::str::FromStr for SceneWindow {
    type Err = String;
    fn from_str(w: &str) -> Result<Self, String> {
        let bad = || format!("'{w}' is not X,Y,W,H in pixels");
        let v: Vec<usize> = w
            .split(',')
            .map(|p| p.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        match v.as_slice() {
            [x, y, w, h] => Ok(SceneWindow(*x, *y, *w, *h)),
            _ => Err(bad()),
        }
    }
}

/// `caption`: a caption (or answer) per tile and for the whole scene.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptionOptions {
    /// Pipeline files: the stage's output folder name (default: the task).
    #[arg(skip)]
    pub name: Option<String>,
    /// Model package folder (model.toml, image_prefix/embed_tokens/decoder ONNX, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Text after the image, e.g. "Question: how many buildings are there? Answer:" (default:
    /// none, plain captioning).
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Beam search width (1: greedy). Default: the model's.
    #[arg(long, value_name = "N")]
    pub num_beams: Option<usize>,
    /// Most tokens to generate. Default: the model's.
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Fewest tokens to generate before the end token is allowed.
    #[arg(long, value_name = "N")]
    pub min_new_tokens: Option<usize>,
    /// Penalty (> 1 discourages) for tokens already in the sequence.
    #[arg(long, value_name = "P")]
    pub repetition_penalty: Option<f32>,
    /// Beam search: finished hypotheses score sum_logprobs / length^P.
    #[arg(long, value_name = "P")]
    pub length_penalty: Option<f32>,
    /// No n-gram of N tokens may occur twice in a sequence, prompt included (0: off). Default:
    /// the model's.
    #[arg(long, value_name = "N")]
    pub no_repeat_ngram_size: Option<usize>,
    /// Beam search stopping (Hugging Face's early_stopping): false stops an item when its best
    /// running beam cannot beat its finished ones, true as soon as it has num-beams finished
    /// ones, never as false but (length-penalty > 0) scoring the running beam at
    /// max-new-tokens. Default: the model's.
    #[arg(long, value_name = "true|false|never")]
    pub early_stopping: Option<EarlyStopping>,
    /// Caption only the whole scene, not every tile.
    #[arg(long)]
    pub scene_only: bool,
    /// Source pixel window X,Y,W,H for the scene caption (default: the whole scene).
    #[arg(long, value_name = "X,Y,W,H")]
    #[serde(deserialize_with = "de::from_str")]
    pub scene_window: Option<SceneWindow>,
}

impl CaptionOptions {
    fn overrides_generation(&self) -> bool {
        self.num_beams.is_some()
            || self.max_new_tokens.is_some()
            || self.min_new_tokens.is_some()
            || self.repetition_penalty.is_some()
            || self.length_penalty.is_some()
            || self.no_repeat_ngram_size.is_some()
            || self.early_stopping.is_some()
    }

    /// Generation settings: these options over the model's defaults (`None`: the model's
    /// own, untouched).
    ///
    /// # Errors
    /// A package that does not load, or settings that do not fit together.
    pub fn generation(&self, model: &Path) -> Result<Option<GenerationParams>, OptionsError> {
        if !self.overrides_generation() {
            return Ok(None);
        }
        let g = ModelPackage::load(model)?
            .manifest
            .generation
            .unwrap_or_default();
        let p = GenerationParams {
            max_new_tokens: self.max_new_tokens.unwrap_or(g.max_new_tokens),
            min_new_tokens: self.min_new_tokens.unwrap_or(g.min_new_tokens),
            num_beams: self.num_beams.unwrap_or(g.num_beams),
            repetition_penalty: self.repetition_penalty.unwrap_or(g.repetition_penalty),
            length_penalty: self.length_penalty.unwrap_or(g.length_penalty),
            no_repeat_ngram_size: self.no_repeat_ngram_size.unwrap_or(g.no_repeat_ngram_size),
            early_stopping: self.early_stopping.unwrap_or(g.early_stopping),
            forced_bos_token_id: g.forced_bos_token_id,
            forced_eos_token_id: g.forced_eos_token_id,
        };
        if p.min_new_tokens > p.max_new_tokens {
            return Err(InvalidOption::new(
                "min_new_tokens",
                format!(
                    "{} is above `max_new_tokens` {}",
                    p.min_new_tokens, p.max_new_tokens
                ),
            )
            .into());
        }
        Ok(Some(p))
    }

    /// # Errors
    /// The first bad value, with its key.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        for (key, v) in [
            ("num_beams", self.num_beams),
            ("max_new_tokens", self.max_new_tokens),
        ] {
            if v == Some(0) {
                return Err(InvalidOption::new(key, "must be at least 1"));
            }
        }
        if let (Some(lo), Some(hi)) = (self.min_new_tokens, self.max_new_tokens) {
            if lo > hi {
                return Err(InvalidOption::new(
                    "min_new_tokens",
                    format!("{lo} is above `max_new_tokens` {hi}"),
                ));
            }
        }
        if let Some(p) = self.repetition_penalty {
            if !p.is_finite() || p <= 0.0 {
                return Err(InvalidOption::new("repetition_penalty", "must be positive"));
            }
        }
        if self.length_penalty.is_some_and(|p| !p.is_finite()) {
            return Err(InvalidOption::new("length_penalty", "must be a number"));
        }
        Ok(())
    }

    /// The job for one scene.
    ///
    /// # Errors
    /// A bad option value or a package that does not load.
    pub fn job(
        &self,
        base: SceneJobBase,
        out: Option<PathBuf>,
        overwrite: bool,
    ) -> Result<CaptionJob, OptionsError> {
        self.validate()?;
        let params = self.generation(&base.model)?;
        Ok(CaptionJob {
            base,
            prompt: self.prompt.clone().unwrap_or_default(),
            params,
            tiles: !self.scene_only,
            scene_window: self.scene_window.map(|w| (w.0, w.1, w.2, w.3)),
            out,
            overwrite,
            feed: None,
        })
    }
}

/// `detect`: boxes over the whole scene, merged across tiles.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectOptions {
    /// Pipeline files: the stage's output folder name (default: the task).
    #[arg(skip)]
    pub name: Option<String>,
    /// Model package folder (model.toml + ONNX) or an ONNX file with Deepness metadata.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Keep boxes scoring at least this (default: the model's).
    #[arg(long, value_name = "P")]
    pub confidence: Option<f32>,
    /// Text queries, comma-separated: "car,ship". Open-vocabulary detectors (OWL-ViT): one
    /// query each. Generative packages with [grounding] (Florence-2): each entry becomes the
    /// package's grounding prompt (Florence-2: <OPEN_VOCABULARY_DETECTION>entry) and labels its
    /// boxes; an entry holding a task token runs as it is
    /// ("<CAPTION_TO_PHRASE_GROUNDING>a ship near a tank"); none: the package's grounding task
    /// (<OD>).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub prompts: Option<Vec<String>>,
    /// Overlap (IoU) above which two boxes of a class are the same object (default: the
    /// model's).
    #[arg(long, value_name = "IOU")]
    pub iou: Option<f32>,
    /// How duplicates from overlapping tiles are resolved: nms keeps the best box, wbf averages
    /// the cluster weighted by score. Default: nms.
    #[arg(long, value_name = "METHOD")]
    #[serde(deserialize_with = "de::from_str")]
    pub merge: Option<MergeMethod>,
    /// A box touching an inner tile edge is joined with a box of its class covering at least
    /// this fraction of the smaller of the two (its other part). Default: 0.6.
    #[arg(long, value_name = "FRACTION")]
    pub cut_ios: Option<f64>,
    /// Merge boxes of different classes too.
    #[arg(long)]
    pub class_agnostic: bool,
}

impl DetectOptions {
    /// # Errors
    /// The first bad value, with its key.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        unit("confidence", self.confidence.map(f64::from))?;
        unit("iou", self.iou.map(f64::from))?;
        unit("cut_ios", self.cut_ios)?;
        prompt_list(&self.prompts).map(|_| ())
    }

    /// The job for one scene.
    ///
    /// # Errors
    /// A bad option value.
    pub fn job(
        &self,
        base: SceneJobBase,
        out: Option<PathBuf>,
        overwrite: bool,
    ) -> Result<DetectJob, InvalidOption> {
        self.validate()?;
        Ok(DetectJob {
            base,
            confidence: self.confidence,
            prompts: prompt_list(&self.prompts)?,
            iou: self.iou,
            method: self.merge.unwrap_or(MergeMethod::Nms),
            cut_ios: self.cut_ios.unwrap_or(0.6),
            class_aware: !self.class_agnostic,
            out,
            overwrite,
            feed: None,
        })
    }
}

/// `segment`: a seamless class mosaic and its polygons.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentOptions {
    /// Pipeline files: the stage's output folder name (default: the task).
    #[arg(skip)]
    pub name: Option<String>,
    /// Model package folder (model.toml + ONNX) or an ONNX file with Deepness metadata.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Weighting of overlapping predictions: flat, linear or cosine ramp toward tile edges.
    /// Default: cosine.
    #[arg(long, value_name = "WINDOW")]
    #[serde(deserialize_with = "de::from_str")]
    pub blend: Option<BlendWindow>,
    /// Binary and text-prompted models: probability at or above which a pixel is the object
    /// (or the prompt) class (default: the model's).
    #[arg(long, value_name = "P")]
    pub threshold: Option<f32>,
    /// Text prompts for text-prompted models (CLIPSeg), comma-separated: "building,road".
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub prompts: Option<Vec<String>>,
    /// Also write probabilities.tif (float32; P(object) for binary models, one band per class
    /// otherwise).
    #[arg(long)]
    pub probabilities: bool,
    /// Simplify polygons with this tolerance in map units (topology preserved; 0: none).
    #[arg(long, value_name = "TOL")]
    pub simplify: Option<f64>,
    /// Drop polygons smaller than this area in square map units.
    #[arg(long, value_name = "AREA")]
    pub min_area: Option<f64>,
}

impl SegmentOptions {
    /// # Errors
    /// The first bad value, with its key.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        unit("threshold", self.threshold.map(f64::from))?;
        not_negative("simplify", self.simplify)?;
        not_negative("min_area", self.min_area)?;
        prompt_list(&self.prompts).map(|_| ())
    }

    /// The job for one scene.
    ///
    /// # Errors
    /// A bad option value.
    pub fn job(
        &self,
        base: SceneJobBase,
        out: PathBuf,
        overwrite: bool,
    ) -> Result<SegmentJob, InvalidOption> {
        self.validate()?;
        Ok(SegmentJob {
            base,
            window: self.blend.unwrap_or(BlendWindow::Cosine),
            threshold: self.threshold,
            prompts: prompt_list(&self.prompts)?,
            probabilities: self.probabilities,
            simplify: self.simplify.unwrap_or(0.0),
            min_area: self.min_area.unwrap_or(0.0),
            out,
            overwrite,
            feed: None,
        })
    }
}

/// Building a job can fail on an option or on the model package it reads defaults from.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error(transparent)]
    Invalid(#[from] InvalidOption),
    #[error(transparent)]
    Model(#[from] ModelError),
}

macro_rules! stage_options {
    ($($options:ty => $job:ty, |$o:ident, $base:ident, $out:ident, $ctx:ident| $build:expr;)*) => {$(
        impl StageOptions for $options {
            type Job = $job;
            fn name(&self) -> Option<&str> {
                self.name.as_deref()
            }
            fn model(&self) -> &Path {
                &self.model
            }
            fn model_mut(&mut self) -> &mut PathBuf {
                &mut self.model
            }
            fn validate(&self) -> Result<(), InvalidOption> {
                <$options>::validate(self)
            }
            fn stage_job(
                &self,
                $base: SceneJobBase,
                $out: PathBuf,
                $ctx: &JobContext,
            ) -> Result<$job, OptionsError> {
                let $o = self;
                $build
            }
        }
    )*};
}

stage_options! {
    ClassifyOptions => ClassifyJob, |o, base, out, ctx| {
        Ok(o.job(base, Some(out), false, ctx.cache_dir.as_deref())?)
    };
    CaptionOptions => CaptionJob, |o, base, out, _ctx| o.job(base, Some(out), false);
    DetectOptions => DetectJob, |o, base, out, _ctx| Ok(o.job(base, Some(out), false)?);
    SegmentOptions => SegmentJob, |o, base, out, _ctx| Ok(o.job(base, out, false)?);
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::options::{InputOptions, OutputOptions, RuntimeOptions, TilingOptions};

    /// A model command's flags, as the CLI flattens the groups.
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        detect: DetectOptions,
        #[command(flatten)]
        input: InputOptions,
        #[command(flatten)]
        tiling: TilingOptions,
        #[command(flatten)]
        runtime: RuntimeOptions,
        #[command(flatten)]
        output: OutputOptions,
    }

    /// The same sections from a pipeline file.
    #[derive(Deserialize)]
    struct File {
        stage: DetectOptions,
        input: InputOptions,
        tiling: TilingOptions,
        runtime: RuntimeOptions,
        output: OutputOptions,
    }

    #[test]
    fn flags_and_pipeline_keys_build_the_same_job() {
        let flags = Flags::try_parse_from([
            "x",
            "--model",
            "m",
            "--confidence",
            "0.4",
            "--prompts",
            "car, ship",
            "--merge",
            "WBF",
            "--cut-ios",
            "0.5",
            "--class-agnostic",
            "--bands",
            "3,2,1",
            "--scale",
            "range:0,3000",
            "--resampling",
            "bilinear",
            "--tile-size",
            "256",
            "--stride",
            "200",
            "--edge",
            "shift",
            "--min-valid",
            "0.2",
            "--batch-size",
            "4",
            "--threads",
            "2",
            "--intra-threads",
            "1",
            "--format",
            "fgb",
        ])
        .expect("flags");
        let file: File = toml::from_str(
            r#"
            [stage]
            model = "m"
            confidence = 0.4
            prompts = ["car", " ship"]
            merge = "wbf"
            cut_ios = 0.5
            class_agnostic = true
            [input]
            bands = [3, 2, 1]
            scale = "range:0,3000"
            resampling = "bilinear"
            [tiling]
            tile_size = 256
            stride = 200
            edge = "shift"
            min_valid = 0.2
            batch_size = 4
            threads = 2
            [runtime]
            intra_threads = 1
            [output]
            format = "fgb"
            "#,
        )
        .expect("file");
        let ctx = crate::options::JobContext {
            jobs: 1,
            ..Default::default()
        };
        let job = |d: &DetectOptions,
                   i: &InputOptions,
                   t: &TilingOptions,
                   r: &RuntimeOptions,
                   o: &OutputOptions| {
            let base = SceneJobBase::new("s.tif", &d.model, i, t, r, o, &ctx).expect("base");
            format!("{:?}", d.job(base, None, false).expect("job"))
        };
        let a = job(
            &flags.detect,
            &flags.input,
            &flags.tiling,
            &flags.runtime,
            &flags.output,
        );
        let b = job(
            &file.stage,
            &file.input,
            &file.tiling,
            &file.runtime,
            &file.output,
        );
        assert_eq!(a, b);
        assert!(
            a.contains("Wbf") && a.contains("overlap: Some(56)") && a.contains("\"ship\""),
            "{a}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: [(&str, DetectOptions, &str); 3] = [
            (
                "confidence",
                DetectOptions {
                    confidence: Some(1.5),
                    ..Default::default()
                },
                "confidence must be between 0 and 1, got 1.5",
            ),
            (
                "cut_ios",
                DetectOptions {
                    cut_ios: Some(-0.1),
                    ..Default::default()
                },
                "cut_ios must be between 0 and 1, got -0.1",
            ),
            (
                "prompts",
                DetectOptions {
                    prompts: Some(Vec::new()),
                    ..Default::default()
                },
                "prompts is empty",
            ),
        ];
        for (key, options, message) in cases {
            let e = options.validate().expect_err(key);
            assert_eq!(e.key, key);
            assert_eq!(e.to_string(), message);
        }
        let e = CaptionOptions {
            min_new_tokens: Some(9),
            max_new_tokens: Some(3),
            ..Default::default()
        }
        .validate()
        .expect_err("min above max");
        assert_eq!(
            e.render(crate::options::KeyStyle::Flag),
            "--min-new-tokens 9 is above --max-new-tokens 3"
        );
    }
}

#[cfg(test)]
mod generation_tests {
    use clap::Parser;

    use super::*;
    use crate::generation::EarlyStopping;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        caption: CaptionOptions,
    }

    fn florence2() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/florence2-tiny")
    }

    #[test]
    fn ngram_and_early_stopping_flags_and_keys_override_the_package() {
        let model = florence2();
        let m = model.display().to_string();
        let flags = Flags::try_parse_from([
            "t",
            "--model",
            &m,
            "--no-repeat-ngram-size",
            "2",
            "--early-stopping",
            "never",
        ])
        .expect("flags")
        .caption;
        let keys: CaptionOptions = toml::from_str(&format!(
            "model = {m:?}\nno_repeat_ngram_size = 2\nearly_stopping = \"never\""
        ))
        .expect("keys");
        for o in [flags, keys] {
            let p = o.generation(&model).expect("load").expect("overridden");
            assert_eq!(p.no_repeat_ngram_size, 2);
            assert_eq!(p.early_stopping, EarlyStopping::Never);
            // the rest stays the package's (Florence-2's defaults)
            assert_eq!((p.num_beams, p.max_new_tokens), (3, 12));
            assert_eq!(
                (p.forced_bos_token_id, p.forced_eos_token_id),
                (Some(0), Some(2))
            );
        }
        let keys: CaptionOptions =
            toml::from_str(&format!("model = {m:?}\nearly_stopping = false")).expect("bool key");
        assert_eq!(keys.early_stopping, Some(EarlyStopping::False));
        // bad spellings name the option
        let e = Flags::try_parse_from(["t", "--model", &m, "--early-stopping", "yes"])
            .err()
            .expect("bad flag")
            .to_string();
        assert!(e.contains("--early-stopping") && e.contains("never"), "{e}");
        let e = toml::from_str::<CaptionOptions>(&format!("model = {m:?}\nearly_stopping = 3"))
            .expect_err("bad key")
            .to_string();
        assert!(e.contains("early_stopping"), "{e}");
        // without overrides the model's own settings are used untouched
        let plain = Flags::try_parse_from(["t", "--model", &m])
            .expect("plain")
            .caption;
        assert!(plain.generation(&model).expect("plain").is_none());
    }
}
