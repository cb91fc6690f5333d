//! The tasks tessera runs, in one list.
//!
//! A task is what a command or a pipeline stage does with a scene. Each has an options type
//! (`src/options/`, implementing [`StageOptions`]: its flags and pipeline keys), a job
//! (`src/jobs/<task>.rs`, implementing [`SceneJob`]) and a report. The [`tasks!`] list below
//! is the registry: one line per task generates [`Task`], the pipeline stage [`TaskOptions`]
//! (tagged by `task`), the batch job [`StageJob`] and its [`TaskReport`], with every dispatch
//! between them. To add a task: its options type, its job file, one line here, and the
//! command that runs it alone in `src/cli/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::jobs::feed::FeedPort;
use crate::jobs::{
    CaptionJob, CaptionReport, ClassifyJob, ClassifyReport, DetectJob, DetectReport, PipelineError,
    SceneRunReport, SegmentJob, SegmentReport,
};
use crate::options::{
    CaptionOptions, ClassifyOptions, DetectOptions, InvalidOption, JobContext, OptionsError,
    SceneJobBase, SegmentOptions,
};

/// A task's options as a pipeline stage.
pub trait StageOptions {
    /// The job the options build.
    type Job;
    /// The stage's output folder name, as given.
    fn name(&self) -> Option<&str>;
    /// The model, as written.
    fn model(&self) -> &Path;
    /// The model, to resolve it against the pipeline file's folder.
    fn model_mut(&mut self) -> &mut PathBuf;
    /// Resolve the model and every other path the stage names against `base` (the pipeline
    /// file's folder).
    fn resolve_paths(&mut self, base: &Path) {
        let model = self.model_mut();
        *model = base.join(&*model);
    }
    /// # Errors
    /// The first bad value, with its key.
    fn validate(&self) -> Result<(), InvalidOption>;
    /// The job for one scene of a batch, writing into `out`.
    ///
    /// # Errors
    /// A bad value, or a model package the job reads defaults from that does not load.
    fn stage_job(
        &self,
        base: SceneJobBase,
        out: PathBuf,
        ctx: &JobContext,
    ) -> Result<Self::Job, OptionsError>;
}

/// A task's job on one scene.
pub trait SceneJob {
    type Report;
    /// Take tiles from a shared read pass (multi-model pipelines) instead of reading the scene.
    fn set_feed(&mut self, port: FeedPort);
    /// # Errors
    /// The job's error.
    fn run(self) -> Result<Self::Report, PipelineError>;
}

/// Generates the task enums and their dispatch from one line per task:
/// `Variant("name", OptionsType, JobType, ReportType);`.
macro_rules! tasks {
    ($($variant:ident($name:literal, $options:ty, $job:ty, $report:ty);)*) => {
        /// What a command or pipeline stage does.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "lowercase")]
        pub enum Task {
            $($variant,)*
        }

        impl Task {
            /// Every task, in the order commands list them.
            pub const ALL: &'static [Task] = &[$(Task::$variant,)*];

            /// The name used by commands and pipeline files.
            pub fn name(self) -> &'static str {
                match self {
                    $(Task::$variant => $name,)*
                }
            }
        }

        impl crate::options::Choice for Task {
            const NAMES: &'static [(&'static str, Self)] = &[$(($name, Task::$variant),)*];
        }

        /// A pipeline stage: one task's options, tagged by `task`.
        #[derive(Clone, Debug, Deserialize)]
        #[serde(tag = "task")]
        pub enum TaskOptions {
            $(#[serde(rename = $name)] $variant($options),)*
        }

        impl TaskOptions {
            pub fn task(&self) -> Task {
                match self {
                    $(TaskOptions::$variant(_) => Task::$variant,)*
                }
            }

            /// The stage's output folder name, as given.
            pub fn name(&self) -> Option<&str> {
                match self {
                    $(TaskOptions::$variant(o) => o.name(),)*
                }
            }

            /// The model as written.
            pub fn model(&self) -> &Path {
                match self {
                    $(TaskOptions::$variant(o) => o.model(),)*
                }
            }

            /// Resolve the model path (and the stage's other paths) against `base` (the pipeline
            /// file's folder).
            pub fn resolve_model(&mut self, base: &Path) {
                match self {
                    $(TaskOptions::$variant(o) => o.resolve_paths(base),)*
                }
            }

            /// # Errors
            /// The first bad value, with its key.
            pub fn validate(&self) -> Result<(), InvalidOption> {
                match self {
                    $(TaskOptions::$variant(o) => o.validate(),)*
                }
            }

            /// The job for one scene, writing into `out`.
            ///
            /// # Errors
            /// As [`StageOptions::stage_job`].
            pub fn job(
                &self,
                base: SceneJobBase,
                out: PathBuf,
                ctx: &JobContext,
            ) -> Result<StageJob, OptionsError> {
                Ok(match self {
                    $(TaskOptions::$variant(o) => {
                        StageJob::$variant(Box::new(o.stage_job(base, out, ctx)?))
                    })*
                })
            }

            /// The keys a stage of `task` takes (for messages about keys of another task).
            pub fn keys(task: Task) -> &'static [&'static str] {
                match task {
                    $(Task::$variant => crate::options::introspect::fields::<$options>(),)*
                }
            }

            /// Parse the body of one stage (its keys, without `task`) as `task`'s options: a
            /// typed parse of its own, so an error carries the span of the key or value it is
            /// about (the tagged parse of a whole file only knows the stage).
            ///
            /// # Errors
            /// The parse error.
            pub fn parse_body(task: Task, body: &str) -> Result<(), toml::de::Error> {
                match task {
                    $(Task::$variant => toml::from_str::<$options>(body).map(drop),)*
                }
            }
        }

        /// One stage's job for one scene.
        #[derive(Debug)]
        pub enum StageJob {
            $($variant(Box<$job>),)*
        }

        impl StageJob {
            /// Take tiles from a shared read pass.
            pub fn set_feed(&mut self, port: FeedPort) {
                match self {
                    $(StageJob::$variant(j) => SceneJob::set_feed(&mut **j, port),)*
                }
            }

            /// Run the job.
            ///
            /// # Errors
            /// The job's error.
            pub fn run(self) -> Result<TaskReport, PipelineError> {
                Ok(match self {
                    $(StageJob::$variant(j) => TaskReport::$variant(SceneJob::run(*j)?),)*
                })
            }
        }

        /// The report of one model command (a pipeline stage); serialised as that report.
        #[derive(Debug, Serialize)]
        #[serde(untagged)]
        pub enum TaskReport {
            $($variant($report),)*
        }

        impl TaskReport {
            /// The shared part.
            pub fn run(&self) -> &SceneRunReport {
                match self {
                    $(TaskReport::$variant(r) => r,)*
                }
            }

            /// The shared part, to change (see [`SceneRunReport::rebase`]).
            pub fn run_mut(&mut self) -> &mut SceneRunReport {
                match self {
                    $(TaskReport::$variant(r) => r,)*
                }
            }
        }
    };
}

tasks! {
    Classify("classify", ClassifyOptions, ClassifyJob, ClassifyReport);
    Caption("caption", CaptionOptions, CaptionJob, CaptionReport);
    Detect("detect", DetectOptions, DetectJob, DetectReport);
    Segment("segment", SegmentOptions, SegmentJob, SegmentReport);
}

crate::choice_from_str!(Task);

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
