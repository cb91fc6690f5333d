//! Grounded detection from generated text: a generative package (families
//! `cross-attention-decoder` and `image-text-decoder`) serves `tessera detect` by writing its
//! answer as text with coordinates in it (Florence-2's `<loc_k>` tokens, PaliGemma's
//! `<locYYYY>`, Qwen2-VL's `<|box_start|>(x0,y0),(x1,y1)<|box_end|>`), which a box parser turns
//! into labelled boxes in the model's input pixels.
//!
//! The seam has three parts:
//!
//! - the manifest's `[grounding]` section ([`GroundingSpec`]) says that a package detects, which
//!   prompt to run when the user gives none (`task`) and what each `--prompts` entry becomes
//!   (`prompt`, `{prompt}` standing for it);
//! - the **output convention** of a prompt names its parser: for packages with `[tasks]`
//!   (Florence-2), `[tasks.outputs]` of the prompt's task token (`<OD>` ->
//!   `description_with_bboxes`); otherwise `[grounding] output`. Never the family name;
//! - the parsers, one file per convention family ([`florence2`], [`paligemma`], [`qwen2_vl`],
//!   [`qwen2_5_vl`]), listed once in [`PARSERS`].
//!   A parser reads the generated text as the model's Hugging Face processor post-processes it
//!   and returns boxes with the byte range of their coordinates in that text.
//!
//! [`detector::GroundedDetector`] runs the model per tile and prompt, decodes the new tokens
//! with their special tokens (as `processor.batch_decode(..., skip_special_tokens=False)`),
//! maps each token to its bytes of the text, parses, and scores every box from the
//! probabilities of the tokens its coordinates were written with ([`box_score`]).
//!
//! To add a convention: one new file here implementing [`BoxParser`] and one line in
//! [`PARSERS`] (CONTRIBUTING.md, "Add a grounded-detection output").

pub mod detector;
pub mod florence2;
pub mod paligemma;
pub mod qwen2_5_vl;
pub mod qwen2_vl;

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// The `[grounding]` section: how a generative package serves `tessera detect`.
///
/// ```toml
/// [grounding]
/// task = "<OD>"                                     # run when no --prompts are given
/// prompt = "<OPEN_VOCABULARY_DETECTION>{prompt}"    # what each --prompts entry becomes
/// output = "paligemma"                              # parser, when the prompt has no [tasks] token
/// bins = [1024, 1024]                               # location bins, without [locations]
/// banned_phrases = ["the image"]                    # phrases the parser drops (Florence-2)
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroundingSpec {
    /// The prompt run once per tile when the user gives no `--prompts`; absent: prompts are
    /// required.
    #[serde(default)]
    pub task: Option<String>,
    /// What each `--prompts` entry becomes; `{prompt}` stands for the entry. An entry holding a
    /// task token of `[tasks]` is run as it is.
    pub prompt: String,
    /// The output convention (a parser of [`PARSERS`]) of prompts without a `[tasks]` task
    /// token.
    #[serde(default)]
    pub output: Option<String>,
    /// Phrases a grounding parser drops (Florence-2's `post_processor_config.phrase_grounding
    /// .banned_grounding_tokens`).
    #[serde(default)]
    pub banned_phrases: Vec<String>,
    /// Quantisation bins `[x, y]` of location tokens for packages without `[locations]`
    /// (PaliGemma: `[1024, 1024]`); handed to the parser as [`ParseInput::bins`].
    #[serde(default)]
    pub bins: Option<[u32; 2]>,
    /// The default `--confidence`: boxes scoring below are dropped (default 0: every box the
    /// model wrote).
    #[serde(default)]
    pub confidence: f32,
    /// The default `--iou` of the scene-wide merge.
    #[serde(default = "default_iou")]
    pub iou: f32,
}

fn default_iou() -> f32 {
    0.5
}

/// Where `{prompt}` goes in [`GroundingSpec::prompt`].
pub const PROMPT: &str = "{prompt}";

/// What a parser reads.
#[derive(Clone, Copy, Debug)]
pub struct ParseInput<'a> {
    /// The new tokens decoded with their special tokens.
    pub text: &'a str,
    /// The output convention the prompt names (one parser may read several).
    pub output: &'a str,
    /// The model input the boxes are in, `(width, height)` pixels.
    pub image_size: (u32, u32),
    /// Quantisation bins `[x, y]` of location tokens (`[locations] bins`, else
    /// `[grounding] bins`), when the manifest has them.
    pub bins: Option<[u32; 2]>,
    /// Phrases to drop ([`GroundingSpec::banned_phrases`]).
    pub banned: &'a [String],
}

/// One box a parser found.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedBox {
    /// The text the model wrote for the box (category, phrase); may be empty.
    pub phrase: String,
    /// `x0, y0, x1, y1` in the model input's pixels, exactly as the processor gives them.
    pub bbox: [f32; 4],
    /// The bytes of [`ParseInput::text`] that hold the box's coordinates.
    pub coords: Range<usize>,
}

/// A parser of one family of output conventions.
pub trait BoxParser: Sync {
    /// The output conventions it reads (`[tasks.outputs]` values, `[grounding] output`).
    fn outputs(&self) -> &'static [&'static str];

    /// The boxes of one generated answer, as the model's Hugging Face processor parses them;
    /// what does not parse is skipped, as there.
    fn parse(&self, input: &ParseInput<'_>) -> Vec<ParsedBox>;
}

/// Every box parser, one line each.
pub static PARSERS: &[&dyn BoxParser] = &[
    &florence2::Florence2,
    &paligemma::PaliGemma,
    &qwen2_vl::Qwen2Vl,
    &qwen2_5_vl::Qwen25Vl,
];

/// The parser of output convention `output`.
pub fn parser(output: &str) -> Option<&'static dyn BoxParser> {
    PARSERS
        .iter()
        .copied()
        .find(|p| p.outputs().contains(&output))
}

/// The conventions the parsers read, comma-separated (for messages).
pub fn known_outputs() -> String {
    let names: Vec<&str> = PARSERS.iter().flat_map(|p| p.outputs()).copied().collect();
    names.join(", ")
}

/// The text of `ids` decoded with special tokens, and the byte range of each token in it.
///
/// Each token is decoded on its own and the pieces joined; when that is not the whole decode
/// (a character split between tokens, decoder clean-up), each token's range is taken from the
/// decodes of the growing prefixes instead.
///
/// # Errors
/// Tokenizer failure (the message).
pub fn decode_with_spans(
    tokenizer: &tokenizers::Tokenizer,
    ids: &[u32],
) -> Result<(String, Vec<Range<usize>>), String> {
    let text = tokenizer.decode(ids, false).map_err(|e| e.to_string())?;
    let mut joined = String::new();
    let mut spans = Vec::with_capacity(ids.len());
    for &id in ids {
        let piece = tokenizer.decode(&[id], false).map_err(|e| e.to_string())?;
        let start = joined.len();
        joined.push_str(&piece);
        spans.push(start..joined.len());
    }
    if joined == text {
        return Ok((text, spans));
    }
    spans.clear();
    let mut last = 0;
    for k in 1..=ids.len() {
        let prefix = tokenizer
            .decode(&ids[..k], false)
            .map_err(|e| e.to_string())?;
        let end = common_prefix(&prefix, &text).max(last);
        spans.push(last..end);
        last = end;
    }
    Ok((text, spans))
}

/// The length in bytes of the longest common prefix of `a` and `b` (on a character boundary).
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

/// A box's score: the geometric mean of the probabilities of the tokens its coordinates were
/// written with (the tokens whose bytes overlap `coords`), `exp(mean(logprob))`; 0 when no
/// token overlaps.
pub fn box_score(coords: &Range<usize>, spans: &[Range<usize>], logprobs: &[f32]) -> f32 {
    let picked: Vec<f32> = spans
        .iter()
        .zip(logprobs)
        .filter(|(s, _)| s.start < coords.end && s.end > coords.start)
        .map(|(_, &lp)| lp)
        .collect();
    if picked.is_empty() {
        return 0.0;
    }
    (picked.iter().sum::<f32>() / picked.len() as f32).exp()
}

/// Problems of a `[grounding]` section: a prompt without `{prompt}`, a parser no one knows.
/// `task_output` gives the `[tasks.outputs]` convention of a prompt's task token, if any.
pub fn check_spec(
    spec: &GroundingSpec,
    task_output: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !spec.prompt.contains(PROMPT) {
        problems.push(format!(
            "grounding.prompt {:?} has no {PROMPT} (where each --prompts entry goes)",
            spec.prompt
        ));
    }
    if let Some(o) = &spec.output {
        if parser(o).is_none() {
            problems.push(format!(
                "grounding.output '{o}' is not a known box output (known: {})",
                known_outputs()
            ));
        }
    }
    for (key, prompt) in [
        ("task", spec.task.as_deref()),
        ("prompt", Some(&spec.prompt)),
    ] {
        let Some(prompt) = prompt else { continue };
        let output = task_output(prompt).or_else(|| spec.output.clone());
        match output {
            None => problems.push(format!(
                "grounding.{key} {prompt:?} names no [tasks] task and there is no grounding.output"
            )),
            Some(o) if parser(&o).is_none() => problems.push(format!(
                "grounding.{key} {prompt:?} answers with '{o}', which no box parser reads (known: {})",
                known_outputs()
            )),
            Some(_) => {}
        }
    }
    if spec.bins.is_some_and(|b| b.contains(&0)) {
        problems.push("grounding.bins must be positive".into());
    }
    if !(0.0..=1.0).contains(&spec.confidence) || !(0.0..=1.0).contains(&spec.iou) {
        problems.push("grounding.confidence and grounding.iou must be between 0 and 1".into());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_finds_the_florence_outputs() {
        for o in [
            "description_with_bboxes",
            "phrase_grounding",
            "description_with_bboxes_or_polygons",
            "bboxes",
        ] {
            assert!(parser(o).is_some(), "{o}");
        }
        assert!(parser("pure_text").is_none());
        assert!(known_outputs().contains("phrase_grounding"));
    }

    #[test]
    fn score_is_the_geometric_mean_of_the_overlapping_tokens() {
        let spans = vec![0..3, 3..10, 10..17, 17..20];
        let lps = [0.5f32.ln(), 0.25f32.ln(), 1.0f32.ln(), 0.1f32.ln()];
        let s = box_score(&(3..17), &spans, &lps);
        assert!((s - 0.5).abs() < 1e-6, "{s}");
        assert_eq!(box_score(&(30..40), &spans, &lps), 0.0);
    }

    #[test]
    fn spec_problems() {
        let spec = GroundingSpec {
            task: Some("<OD>".into()),
            prompt: "<OPEN_VOCABULARY_DETECTION>".into(),
            output: Some("nope".into()),
            banned_phrases: vec![],
            bins: None,
            confidence: 0.0,
            iou: 0.5,
        };
        let outputs = |p: &str| {
            p.contains("<OD>")
                .then(|| "description_with_bboxes".to_string())
        };
        let p = check_spec(&spec, &outputs);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("{prompt}"));
        assert!(p[1].contains("'nope'"));
        assert!(p[2].contains("grounding.prompt"));
    }

    #[test]
    fn common_prefix_stops_at_a_difference() {
        assert_eq!(common_prefix("abcd", "abxd"), 2);
        assert_eq!(common_prefix("ab", "abc"), 2);
        assert_eq!(common_prefix("é", "éa"), 2);
    }
}
