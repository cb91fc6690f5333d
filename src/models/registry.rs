//! The model families tessera knows, in one list.
//!
//! A family is what `family = "..."` in a package's `model.toml` names: one file under
//! `src/models/` implements it (its typed manifest sections, loading, checking and running)
//! and ends with a unit struct implementing [`ModelFamily`]. To add a family, write that one
//! new file (declare it with `pub mod` in `src/models/mod.rs`) and add one line to
//! [`FAMILIES`] here: `models check`, `bench-model`, manifest parsing and the task/family
//! matching of commands and pipeline files then know it, and the "known families" of error
//! messages list it. Nothing else matches family names.

use std::path::Path;

use ndarray::Array4;

use super::{Manifest, ModelError, ModelPackage};
use crate::runtime::{Runtime, SessionOptions};
use crate::task::Task;

/// One model family: its name in `model.toml`, the tasks it serves, its checks and its input
/// contract.
pub trait ModelFamily: Sync {
    /// The `family = "..."` value of its manifests.
    fn name(&self) -> &'static str;

    /// The tasks (commands and pipeline stages) its models serve.
    fn tasks(&self) -> &'static [Task];

    /// Parse `model.toml` text naming this family: the common keys and the family's own
    /// typed sections ([`super::manifest::family_manifest!`]); any other key is an error.
    ///
    /// # Errors
    /// The TOML error, with its line.
    fn parse(&self, text: &str) -> Result<Manifest, String>;

    /// Every problem with a package of this family, as a list (empty when it is valid); the
    /// graphs are loaded on the CPU.
    fn check(&self, runtime: &Runtime, package: &ModelPackage) -> Vec<String>;

    /// What the package's image input takes, read from its manifest (`None` when the
    /// manifest lacks the sections that say: [`ModelFamily::check`] reports that).
    fn input(&self, package: &ModelPackage) -> Option<InputContract>;

    /// The dual-encoder kind of a zero-shot classification family (scoring, tokenizer,
    /// default prompts); `None` for the other families.
    fn dual_encoder(&'static self) -> Option<&'static super::dual_encoder::DualEncoderKind> {
        None
    }

    /// Whether `bench-model` times this family's image graph.
    fn timed(&self) -> bool {
        false
    }

    /// Load the package's image graph for `bench-model` on in-memory batches.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for a family or package `bench-model` does not time, else
    /// as loading the model.
    fn load_timed(
        &self,
        _runtime: &Runtime,
        _path: &Path,
        _options: &SessionOptions,
    ) -> Result<TimedGraph, ModelError> {
        Err(ModelError::Unsupported(not_timed(self.name())))
    }
}

/// What a model's image input takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputContract {
    /// The square input size the model was made for (the default tile size), in pixels.
    pub size: usize,
    /// The family accepts graphs that take any tile size (fully convolutional); whether a
    /// given graph does is known once it is loaded.
    pub any_size: bool,
    /// The model needs the user's text prompts or queries to run (text-prompted segmenters,
    /// open-vocabulary detectors).
    pub prompted: bool,
    /// The graph takes raw uint8 tiles (normalisation inside the graph).
    pub bytes: bool,
}

/// A model's image graph, loaded for timing on in-memory batches (`tessera bench-model`).
pub struct TimedGraph {
    /// The execution provider it runs on, and why the requested one was not used.
    pub provider: &'static str,
    pub fallback: Option<String>,
    /// Square input size in pixels.
    pub input_size: usize,
    /// One run on a normalised batch `[B, 3, S, S]` (models taking bytes convert it once).
    pub run: RunBatch,
}

/// One run of a timed graph on a batch.
pub type RunBatch = Box<dyn FnMut(&Array4<f32>) -> Result<(), ModelError>>;

impl std::fmt::Debug for TimedGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedGraph")
            .field("provider", &self.provider)
            .field("input_size", &self.input_size)
            .finish()
    }
}

/// Every family, in the order error messages list them.
pub static FAMILIES: &[&dyn ModelFamily] = &[
    &super::clip::CLIP,
    &super::openclip::OPENCLIP,
    &super::siglip::SIGLIP,
    &super::flava::FLAVA,
    &super::chinese_clip::CHINESE_CLIP,
    &super::decoder::ImageTextDecoder,
    &super::cross_decoder::CrossAttentionDecoder,
    &super::segmentation::Segmenter,
    &super::detection::Detector,
    &super::promptable::PromptableFamily,
];

/// The family named `name` in a manifest.
pub fn family(name: &str) -> Option<&'static dyn ModelFamily> {
    FAMILIES.iter().copied().find(|f| f.name() == name)
}

/// The families whose models serve `task`.
pub fn families_for(task: Task) -> impl Iterator<Item = &'static dyn ModelFamily> {
    FAMILIES
        .iter()
        .copied()
        .filter(move |f| f.tasks().contains(&task))
}

/// The known family names, comma-separated (for messages).
pub fn known_names() -> String {
    let names: Vec<&str> = FAMILIES.iter().map(|f| f.name()).collect();
    names.join(", ")
}

/// The message for a manifest naming a family tessera does not know.
pub fn unknown_family(name: &str) -> String {
    format!("unknown model family '{name}' (known: {})", known_names())
}

/// The package (at `model`, as the user named it) is of a family that serves `task`.
///
/// # Errors
/// [`ModelError::WrongFamily`], naming the families that would.
pub fn check_serves(package: &ModelPackage, task: Task, model: &Path) -> Result<(), ModelError> {
    let have = package.manifest.family.as_str();
    if family(have).is_some_and(|f| f.tasks().contains(&task)) {
        return Ok(());
    }
    let wanted: Vec<String> = families_for(task)
        .map(|f| format!("'{}'", f.name()))
        .collect();
    Err(ModelError::WrongFamily {
        path: model.display().to_string(),
        family: have.to_string(),
        task,
        wanted: wanted.join(" or "),
    })
}

/// Why `bench-model` does not time a package of family `name`.
pub fn not_timed(name: &str) -> String {
    format!("bench-model times {} packages, not '{name}'", timed_names())
}

/// The names of the families `bench-model` times: `a, b and c`.
fn timed_names() -> String {
    let names: Vec<&str> = FAMILIES
        .iter()
        .filter(|f| f.timed())
        .map(|f| f.name())
        .collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_has_a_family_and_names_are_unique() {
        for &task in Task::ALL {
            assert!(families_for(task).next().is_some(), "{task}");
        }
        for (i, f) in FAMILIES.iter().enumerate() {
            assert!(family(f.name()).is_some());
            assert!(FAMILIES[i + 1..].iter().all(|g| g.name() != f.name()));
        }
        assert_eq!(
            unknown_family("x"),
            "unknown model family 'x' (known: clip, openclip, siglip, flava, chinese-clip, \
             image-text-decoder, cross-attention-decoder, segmenter, detector, \
             promptable-segmenter)"
        );
        assert_eq!(
            timed_names(),
            "clip, openclip, siglip, flava, chinese-clip, segmenter and detector"
        );
    }

    #[test]
    fn a_package_of_another_family_names_the_wanted_one() {
        let manifest = Manifest::parse("family = \"clip\"\nname = \"t\"\n").expect("parse");
        let package = ModelPackage {
            dir: std::path::PathBuf::from("m"),
            manifest,
        };
        assert!(check_serves(&package, Task::Classify, Path::new("m")).is_ok());
        let e = check_serves(&package, Task::Detect, Path::new("m")).expect_err("detect");
        assert_eq!(
            e.to_string(),
            "m is a 'clip' model; a detect stage needs a 'image-text-decoder' or 'cross-attention-decoder' or 'detector' model"
        );
        let clip = family("clip").expect("clip");
        assert!(clip.dual_encoder().is_some());
        assert!(family("detector").and_then(|f| f.dual_encoder()).is_none());
        assert!(
            clip.input(&package).is_none(),
            "no [preprocess]: no contract"
        );
    }
}
