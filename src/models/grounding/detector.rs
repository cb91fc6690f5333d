//! A generative package run as a detector ([`super`]): per batch of tiles and per query, one
//! generation, its text parsed into boxes and each box scored.

use std::path::Path;

use ndarray::ArrayView4;

use super::{box_score, decode_with_spans, parser, BoxParser, GroundingSpec, ParseInput, PROMPT};
use crate::generation::{Generated, GenerationParams};
use crate::models::cross_decoder::{CrossDecoderManifest, CrossDecoderModel};
use crate::models::decoder::{DecoderManifest, DecoderModel};
use crate::models::{ModelError, ModelPackage, Normalizer};
use crate::runtime::{Runtime, SessionOptions};

/// The generative model behind a grounded detector.
// One per run, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Generator {
    /// `image-text-decoder`: the image as a prefix of the prompt.
    Prefix(DecoderModel),
    /// `cross-attention-decoder`: the image through cross-attention.
    Cross(CrossDecoderModel),
}

macro_rules! either {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            Generator::Prefix($m) => $body,
            Generator::Cross($m) => $body,
        }
    };
}

/// One query: the prompt the model runs, the label its boxes get (the user's `--prompts`
/// entry, or `None`: the phrase the model wrote) and its parser.
#[derive(Clone)]
struct Query {
    prompt: String,
    label: Option<String>,
    output: String,
    parser: &'static dyn BoxParser,
}

/// A box from generated text, in the model input's pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct GroundedBox {
    /// The query's `--prompts` entry when it had one, else the phrase.
    pub label: String,
    /// The text the model wrote for the box.
    pub phrase: String,
    /// [`super::box_score`] of its coordinate tokens.
    pub score: f32,
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

/// What one tile's answer to one query was (for reports and tests).
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub prompt: String,
    pub tokens: Vec<u32>,
    /// Each token's log-probability ([`Generated`]).
    pub logprobs: Vec<f32>,
    pub text: String,
}

/// The boxes and answers of a batch, one entry per image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchDetections {
    pub boxes: Vec<Vec<GroundedBox>>,
    /// Every query's answer, in query order.
    pub answers: Vec<Vec<Answer>>,
}

/// A generative package serving `tessera detect`.
pub struct GroundedDetector {
    model: Generator,
    spec: GroundingSpec,
    params: GenerationParams,
    queries: Vec<Query>,
    bins: Option<[u32; 2]>,
}

impl std::fmt::Debug for GroundedDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroundedDetector")
            .field("dir", &self.package().dir)
            .finish()
    }
}

/// The `[grounding]` section of a package of either generative family.
pub fn grounding_spec(package: &ModelPackage) -> Option<&GroundingSpec> {
    let m = &package.manifest;
    m.sections::<CrossDecoderManifest>()
        .and_then(|s| s.grounding.as_ref())
        .or_else(|| {
            m.sections::<DecoderManifest>()
                .and_then(|s| s.grounding.as_ref())
        })
}

/// Whether a package is of a generative family (its detect runner is this one).
pub fn is_generative(package: &ModelPackage) -> bool {
    let f = package.manifest.family.as_str();
    f == crate::models::cross_decoder::FAMILY || f == crate::models::decoder::FAMILY
}

impl GroundedDetector {
    /// Load a generative package with a `[grounding]` section.
    ///
    /// # Errors
    /// No `[grounding]`, a section with problems, or loading the model failing.
    pub fn load(
        runtime: &Runtime,
        dir: &Path,
        options: &SessionOptions,
    ) -> Result<GroundedDetector, ModelError> {
        let package = ModelPackage::load(dir)?;
        let invalid = |problems: Vec<String>| ModelError::Invalid {
            path: dir.display().to_string(),
            problems,
        };
        let Some(spec) = grounding_spec(&package).cloned() else {
            return Err(invalid(vec![format!(
                "a '{}' package detects only with a [grounding] section (see README, \"Detection\")",
                package.manifest.family
            )]));
        };
        let model = if package.manifest.family == crate::models::cross_decoder::FAMILY {
            let mut m = CrossDecoderModel::load(runtime, dir, options)?;
            m.allow_box_tasks();
            Generator::Cross(m)
        } else {
            Generator::Prefix(DecoderModel::load(runtime, dir, options)?)
        };
        let bins = match &model {
            Generator::Cross(m) => m.locations().map(|l| l.bins),
            Generator::Prefix(_) => None,
        }
        .or(spec.bins);
        let params = either!(&model, m => m.default_params());
        let mut d = GroundedDetector {
            model,
            spec,
            params,
            queries: Vec::new(),
            bins,
        };
        let problems = super::check_spec(&d.spec, &|p| d.task_output(p));
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        d.set_prompts(&[])?;
        Ok(d)
    }

    /// The `[tasks.outputs]` convention of the task token a prompt holds.
    fn task_output(&self, prompt: &str) -> Option<String> {
        let Generator::Cross(m) = &self.model else {
            return None;
        };
        let tasks = m.tasks()?;
        let task = tasks.task_of(prompt)?;
        Some(
            tasks
                .outputs
                .get(task)
                .cloned()
                .unwrap_or_else(|| super::super::task_prompts::PLAIN_TEXT.to_string()),
        )
    }

    fn manifest_path(&self) -> String {
        self.package().dir.join("model.toml").display().to_string()
    }

    /// One query for a prompt the model runs.
    fn query(&self, prompt: String, label: Option<String>) -> Result<Query, ModelError> {
        let output = self
            .task_output(&prompt)
            .or_else(|| self.spec.output.clone())
            .ok_or_else(|| ModelError::Input {
                path: self.manifest_path(),
                reason: format!(
                    "the prompt {prompt:?} names no task and grounding.output is not set"
                ),
            })?;
        let Some(parser) = parser(&output) else {
            return Err(ModelError::Input {
                path: self.manifest_path(),
                reason: format!(
                    "the prompt {prompt:?} answers with {output}, not boxes; box outputs: {}{}",
                    super::known_outputs(),
                    self.box_tasks()
                ),
            });
        };
        // Fail on a prompt the model cannot take before reading anything.
        either!(&self.model, m => m.prompt_ids(&prompt))?;
        Ok(Query {
            prompt,
            label,
            output,
            parser,
        })
    }

    /// "; box tasks: ..." for a package with `[tasks]`.
    fn box_tasks(&self) -> String {
        let Generator::Cross(m) = &self.model else {
            return String::new();
        };
        let Some(tasks) = m.tasks() else {
            return String::new();
        };
        let names: Vec<&str> = tasks
            .outputs
            .iter()
            .filter(|(_, o)| parser(o).is_some())
            .map(|(t, _)| t.as_str())
            .collect();
        format!(" (box tasks: {})", names.join(", "))
    }

    /// Set the queries: none -> `[grounding] task`; an entry holding a `[tasks]` task token is
    /// run as it is (its boxes labelled with the phrases the model writes); any other entry
    /// becomes `[grounding] prompt` with `{prompt}` replaced (its boxes labelled with the entry).
    ///
    /// # Errors
    /// No prompts and no `task`; an empty entry; a prompt whose task answers with something
    /// other than boxes; a prompt the model cannot take.
    pub fn set_prompts(&mut self, prompts: &[String]) -> Result<(), ModelError> {
        let mut queries = Vec::new();
        if prompts.is_empty() {
            match self.spec.task.clone() {
                Some(t) => queries.push(self.query(t, None)?),
                None => {
                    // Prompts are required; `detect` says so (`requires_prompts`).
                    self.queries.clear();
                    return Ok(());
                }
            }
        }
        for p in prompts {
            let p = p.trim();
            if p.is_empty() {
                return Err(ModelError::Input {
                    path: self.manifest_path(),
                    reason: "give non-empty prompts".into(),
                });
            }
            if self.task_output(p).is_some() {
                queries.push(self.query(p.to_string(), None)?);
            } else {
                let text = self.spec.prompt.replace(PROMPT, p);
                queries.push(self.query(text, Some(p.to_string()))?);
            }
        }
        self.queries = queries;
        Ok(())
    }

    /// True when the package has no `[grounding] task`: `--prompts` are required.
    pub fn requires_prompts(&self) -> bool {
        self.spec.task.is_none()
    }

    /// The prompts the model runs, in order.
    pub fn prompts(&self) -> Vec<String> {
        self.queries.iter().map(|q| q.prompt.clone()).collect()
    }

    /// The user's labels, in order (the entries of `--prompts`).
    pub fn labels(&self) -> Vec<String> {
        self.queries
            .iter()
            .filter_map(|q| q.label.clone())
            .collect()
    }

    pub fn package(&self) -> &ModelPackage {
        either!(&self.model, m => m.package())
    }

    pub fn input_size(&self) -> usize {
        either!(&self.model, m => m.input_size())
    }

    pub fn normalizer(&self) -> Normalizer {
        either!(&self.model, m => m.normalizer())
    }

    pub fn provider(&self) -> (&'static str, Option<&str>) {
        either!(&self.model, m => m.provider())
    }

    pub fn confidence(&self) -> f32 {
        self.spec.confidence
    }

    pub fn iou(&self) -> f32 {
        self.spec.iou
    }

    /// The decoding settings (the manifest's `[generation]` unless set).
    pub fn params(&self) -> &GenerationParams {
        &self.params
    }

    /// Decode with other settings than the manifest's.
    pub fn set_params(&mut self, params: GenerationParams) {
        self.params = params;
    }

    /// The boxes of every image of a normalised batch `[B, 3, S, S]` scoring at least
    /// `confidence`, every query run on every image; with each image's answers.
    ///
    /// # Errors
    /// No queries, inference or tokenizer failure.
    pub fn detect(
        &mut self,
        batch: ArrayView4<'_, f32>,
        confidence: f32,
    ) -> Result<BatchDetections, ModelError> {
        if self.queries.is_empty() {
            return Err(ModelError::Input {
                path: self.manifest_path(),
                reason: "no prompts given (--prompts) and no grounding.task".into(),
            });
        }
        let b = batch.shape()[0];
        let size = self.input_size() as u32;
        let mut boxes = vec![Vec::new(); b];
        let mut answers = vec![Vec::new(); b];
        for q in self.queries.clone() {
            let prompts = vec![q.prompt.clone(); b];
            let params = self.params.clone();
            let generated: Vec<Generated> =
                either!(&mut self.model, m => m.generate_scored(batch, &prompts, &params))?;
            for (i, g) in generated.into_iter().enumerate() {
                let tokenizer = either!(&self.model, m => m.tokenizer());
                let (text, spans) = decode_with_spans(tokenizer, &g.tokens).map_err(|reason| {
                    ModelError::Tokenizer {
                        path: self.package().dir.display().to_string(),
                        reason,
                    }
                })?;
                let parsed = q.parser.parse(&ParseInput {
                    text: &text,
                    output: &q.output,
                    image_size: (size, size),
                    bins: self.bins,
                    banned: &self.spec.banned_phrases,
                });
                for p in parsed {
                    let score = box_score(&p.coords, &spans, &g.logprobs);
                    if score.is_nan() || score < confidence {
                        continue;
                    }
                    boxes[i].push(GroundedBox {
                        label: q.label.clone().unwrap_or_else(|| p.phrase.clone()),
                        phrase: p.phrase,
                        score,
                        x0: p.bbox[0],
                        y0: p.bbox[1],
                        x1: p.bbox[2],
                        y1: p.bbox[3],
                    });
                }
                answers[i].push(Answer {
                    prompt: q.prompt.clone(),
                    tokens: g.tokens,
                    logprobs: g.logprobs,
                    text,
                });
            }
        }
        Ok(BatchDetections { boxes, answers })
    }
}
