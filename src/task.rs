//! What a model command or pipeline stage does with a scene: the tasks tessera runs.

use serde::{Deserialize, Serialize};

/// What a stage does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Classify,
    Caption,
    Detect,
    Segment,
}

impl Task {
    /// Every task, in the order commands list them.
    pub const ALL: [Task; 4] = [Task::Classify, Task::Caption, Task::Detect, Task::Segment];

    /// The name used by commands and pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            Task::Classify => "classify",
            Task::Caption => "caption",
            Task::Detect => "detect",
            Task::Segment => "segment",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl crate::options::Choice for Task {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("classify", Task::Classify),
        ("caption", Task::Caption),
        ("detect", Task::Detect),
        ("segment", Task::Segment),
    ];
}
crate::choice_from_str!(Task);
