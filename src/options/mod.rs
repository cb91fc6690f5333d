//! Options of the commands and pipeline stages, defined once: each group is a clap `Args`
//! (the command line, flattened into each command) and a serde struct (a section or stage of
//! a pipeline file), with one `validate()` whose errors carry the option's key. The same
//! group builds the same job from either place:
//!
//! | group | pipeline file | command line |
//! |---|---|---|
//! | [`InputOptions`] | `[input]` | `--bands`, `--scale`, `--resampling`, `--pixel-coords` |
//! | [`TilingOptions`] | `[tiling]` | `--tile-size`, `--overlap`, `--stride`, `--target-gsd`, ... |
//! | [`RuntimeOptions`] | `[runtime]` | `--device`, `--allow-fallback`, `--intra-threads`, ... |
//! | [`OutputOptions`] | `[output]` | `--format`, `--geojson-native-crs`, `--co KEY=VALUE` (`co = [...]`), `--report` / `--no-report` (key `report`) |
//! | [`StacOptions`] | `[ingest]` | `--stac-api`, `--stac-catalog`, `--collections`, `--bbox`, `--datetime`, ... (`ingest`, `watch`) |
//! | [`EvalOptions`] | (none: `eval` is a command only) | `--task`, `--model`, `--chips`, `--scene`, `--labels`, ... |
//! | [`ClassifyOptions`], [`CaptionOptions`], [`DetectOptions`], [`SegmentOptions`] | a `[[stage]]` of that `task` | the command's own flags |
//!
//! [`TaskOptions`] is the stage of a pipeline file: tagged by `task`, each task with its own
//! keys, so a key of another task is an error from serde.

mod choice;
mod cog;
mod common;
pub(crate) mod de;
mod eval;
mod stac;

pub(crate) mod introspect;
mod tasks;

pub use crate::task::TaskOptions;
pub use choice::{closest, parse_choice, Choice};
pub use cog::{parse_cog_options, COG_KEYS, MAX_BLOCKSIZE};
pub use common::{
    cache_dir, check_batch_bytes, InputOptions, JobContext, OutputOptions, ReportFlags,
    RuntimeOptions, SceneJobBase, TilingOptions, MAX_BATCH_SIZE, MAX_TILE_SIZE, MIN_TARGET_GSD,
};
pub use eval::EvalOptions;
pub use stac::{Bbox, StacOptions, DEFAULT_PAGE_SIZE};
pub use tasks::{
    CaptionOptions, ClassifyOptions, DetectOptions, OptionsError, SceneWindow, SegmentOptions,
};

use thiserror::Error;

/// How an option is spelled where the user wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStyle {
    /// Pipeline files: `tile_size`.
    File,
    /// The command line: `--tile-size`.
    Flag,
}

impl KeyStyle {
    /// `key` (snake_case) as the user wrote it.
    pub fn spell(self, key: &str) -> String {
        match self {
            KeyStyle::File => key.to_string(),
            KeyStyle::Flag => format!("--{}", key.replace('_', "-")),
        }
    }
}

/// An option value that cannot be used. `key` is the option's pipeline-file name
/// (snake_case); `message` follows the key ("must be at least 1") and may name other options
/// between backticks (`` `target_gsd` ``), which [`InvalidOption::render`] spells for the
/// place the options came from.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{}", self.render(KeyStyle::File))]
pub struct InvalidOption {
    pub key: &'static str,
    pub message: String,
}

impl InvalidOption {
    pub fn new(key: &'static str, message: impl Into<String>) -> InvalidOption {
        InvalidOption {
            key,
            message: message.into(),
        }
    }

    /// The whole message with every key spelled in `style`.
    pub fn render(&self, style: KeyStyle) -> String {
        let mut out = style.spell(self.key);
        out.push(' ');
        let mut parts = self.message.split('`');
        if let Some(first) = parts.next() {
            out.push_str(first);
        }
        // Odd parts are between backticks: option keys.
        for (i, part) in parts.enumerate() {
            if i % 2 == 0 && is_key(part) {
                out.push_str(&style.spell(part));
            } else if i % 2 == 0 {
                out.push('`');
                out.push_str(part);
                out.push('`');
            } else {
                out.push_str(part);
            }
        }
        out
    }
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_spelled_for_their_origin() {
        let e = InvalidOption::new(
            "tile_size",
            "100 differs from the model's input size 64 (use `target_gsd`; `x y` stays)",
        );
        assert_eq!(
            e.render(KeyStyle::Flag),
            "--tile-size 100 differs from the model's input size 64 (use --target-gsd; `x y` stays)"
        );
        assert_eq!(
            e.to_string(),
            "tile_size 100 differs from the model's input size 64 (use target_gsd; `x y` stays)"
        );
    }
}
