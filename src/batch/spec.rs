//! Pipeline files (`pipelines/*.toml`): input band mapping and scaling, tiling, one or more
//! model stages with their options, and the output format, validated into a [`Pipeline`] that
//! builds one job per stage for each scene. The sections and stages are the option groups of
//! [`crate::options`], the same ones the commands take.
//!
//! Unknown keys, wrong types and options that belong to another kind of stage are errors that
//! name the file and line, with a suggestion when a known key is close.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::BatchError;
use crate::options::{
    InputOptions, InvalidOption, OutputOptions, RuntimeOptions, SceneJobBase, StacOptions,
    TaskOptions, TilingOptions,
};
use crate::output::VectorFormat;
use crate::raster::OpenOptions;

pub use crate::options::JobContext;
pub use crate::task::{StageJob, Task};

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    input: InputOptions,
    #[serde(default)]
    tiling: TilingOptions,
    #[serde(default)]
    runtime: RuntimeOptions,
    #[serde(default)]
    output: OutputOptions,
    #[serde(default)]
    ingest: StacOptions,
    #[serde(default, rename = "stage")]
    stages: Vec<toml::Spanned<TaskOptions>>,
}

/// One validated stage.
#[derive(Clone, Debug)]
pub struct Stage {
    /// Folder name of the stage's outputs inside each scene's folder.
    pub name: String,
    pub task: Task,
    /// The model, resolved against the pipeline file's folder.
    pub model: PathBuf,
    options: TaskOptions,
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
    /// `[ingest]`: the STAC API or catalog `ingest` and `watch` take scenes from.
    pub ingest: StacOptions,
    pub format: &'static dyn VectorFormat,
    /// Write each scene's report.html (`[output] report`, default true; `run --no-report`).
    pub report: bool,
    input: InputOptions,
    tiling: TilingOptions,
    runtime: RuntimeOptions,
    output: OutputOptions,
    /// sha256 of the parsed content (comments, layout and key order do not matter).
    pub content_hash: String,
}

/// Byte offset to 1-based line number.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

use crate::options::closest;

/// "did you mean" for serde's "unknown field `x`, expected one of `a`, `b`" messages.
fn suggestion(message: &str) -> Option<String> {
    let ticks: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let (word, candidates) = ticks.split_first()?;
    if !(message.starts_with("unknown field") || message.starts_with("unknown variant")) {
        return None;
    }
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The first backticked word of a serde message (`unknown field `x``: x).
fn ticked(message: &str) -> Option<&str> {
    message.split('`').nth(1)
}

/// Where a key stands in the file: the first line from `from` (1-based) on that sets it,
/// before the next table header.
fn key_line(text: &str, from: usize, key: &str) -> Option<usize> {
    for (i, line) in text.lines().enumerate().skip(from.saturating_sub(1)) {
        let t = line.trim_start();
        if i + 1 > from && t.starts_with('[') {
            return None;
        }
        if let Some(rest) = t.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return Some(i + 1);
            }
        }
    }
    None
}

/// The stage whose header is at or before `line`, and its `task` as written.
fn stage_at(text: &str, line: usize) -> Option<(usize, String)> {
    let header = text
        .lines()
        .enumerate()
        .take(line)
        .filter(|(_, l)| l.trim_start().starts_with("[[stage]]"))
        .map(|(i, _)| i + 1)
        .last()?;
    let task_line = key_line(text, header, "task")?;
    let value = text.lines().nth(task_line - 1)?.split_once('=')?.1;
    let task = value.trim().trim_matches(|c| c == '"' || c == '\'');
    Some((header, task.to_string()))
}

/// The lines after a stage's header up to the next table header, `task` blanked (so line
/// numbers within stay those of the file, counted from the header).
fn stage_body(text: &str, header: usize) -> String {
    let mut body = String::new();
    for line in text.lines().skip(header) {
        let t = line.trim_start();
        if t.starts_with('[') && !t.starts_with("[\"") {
            break;
        }
        if t.strip_prefix("task")
            .is_some_and(|r| r.trim_start().starts_with('='))
        {
            body.push('\n');
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    body
}

/// A parse error as the user should read it: the line of the key it is about, and for a key
/// of another task, which tasks take it.
fn parse_error(text: &str, e: &toml::de::Error) -> (Option<usize>, String) {
    let mut line = e.span().map(|s| line_of(text, s.start));
    let mut message = e.message().trim().to_string();
    let stage = line.and_then(|l| stage_at(text, l));
    // Errors in a stage's values: parse that stage alone for the exact line.
    if let Some((header, task)) = &stage {
        if let (Ok(task), true) = (task.parse::<Task>(), line == Some(*header)) {
            if let Err(inner) = TaskOptions::parse_body(task, &stage_body(text, *header)) {
                if let Some(span) = inner.span() {
                    let body_line = line_of(&stage_body(text, *header), span.start);
                    line = Some(header + body_line);
                    message = inner.message().trim().to_string();
                }
            }
        }
    }
    if let (Some((header, task)), Some(word)) = (&stage, ticked(&message)) {
        let word = word.to_string();
        if message.starts_with("unknown field") {
            let owners: Vec<&str> = Task::ALL
                .iter()
                .filter(|t| TaskOptions::keys(**t).contains(&word.as_str()))
                .map(|t| t.name())
                .collect();
            if !owners.is_empty() && owners.iter().all(|o| *o != task) {
                return (
                    Some(*header),
                    format!(
                        "a {task} stage does not take `{word}` (an option of {} stages)",
                        owners.join(" and ")
                    ),
                );
            }
            line = key_line(text, *header, &word).or(line);
        } else if message.starts_with("unknown variant") {
            line = key_line(text, *header, "task").or(line);
        }
    }
    if let Some(s) = suggestion(&message) {
        message = format!("{message}; {s}");
    }
    (line, message)
}

/// The sha256 of the parsed document: comments, layout and key order do not count (models
/// count by their content, see the batch records).
fn content_hash(text: &str) -> String {
    let table: toml::Table = toml::from_str(text).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&table).unwrap_or_default());
    format!("{:x}", h.finalize())
}

/// A stage's name: the given one or the task's, usable as a folder name, not taken yet.
fn stage_name(options: &TaskOptions, stages: &[Stage]) -> Result<String, String> {
    let name = options
        .name()
        .map_or_else(|| options.task().name().to_string(), str::to_string);
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!("stage name '{name}' must be letters, digits, '-', '_' or '.' (it names the stage's output folder)"));
    }
    if stages.iter().any(|t| t.name == name) {
        return Err(format!(
            "two stages are named '{name}': give each a distinct `name`"
        ));
    }
    Ok(name)
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
        // An option error, at the line of its key in `section` (or anywhere).
        let invalid = |section: Option<usize>, e: InvalidOption| {
            let line = match section {
                Some(from) => key_line(text, from, e.key),
                None => text
                    .lines()
                    .position(|l| l.trim_start().starts_with(e.key))
                    .map(|i| i + 1),
            };
            err(line, e.to_string())
        };
        let file: PipelineFile = toml::from_str(text).map_err(|e| {
            let (line, message) = parse_error(text, &e);
            err(line, message)
        })?;
        if file.stages.is_empty() {
            return Err(err(
                None,
                "no [[stage]]: a pipeline needs at least one model stage".into(),
            ));
        }
        if file.stages.len() > MAX_STAGES {
            let line = line_of(text, file.stages[MAX_STAGES].span().start);
            return Err(err(
                Some(line),
                format!(
                    "{} stages, more than the limit of {MAX_STAGES} (every stage of a scene runs with its model loaded)",
                    file.stages.len()
                ),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut stages: Vec<Stage> = Vec::new();
        for spanned in &file.stages {
            let line = line_of(text, spanned.span().start);
            let mut options = spanned.get_ref().clone();
            let name = stage_name(&options, &stages).map_err(|m| err(Some(line), m))?;
            options.resolve_model(base);
            let model = options.model().to_path_buf();
            check_model(&model, options.task()).map_err(|m| err(Some(line), m))?;
            options
                .validate()
                .map_err(|e| err(Some(line), e.to_string()))?;
            stages.push(Stage {
                name,
                task: options.task(),
                model,
                options,
            });
        }
        file.tiling.validate().map_err(|e| invalid(None, e))?;
        file.runtime.validate().map_err(|e| invalid(None, e))?;
        file.tiling
            .validate_overlap()
            .map_err(|e| invalid(None, e))?;
        let shared_pass = file.tiling.shared_pass.unwrap_or(true) && stages.len() > 1;
        check_tiling(&stages, &file.tiling, shared_pass).map_err(|(stage, message)| {
            let line = file
                .stages
                .get(stage)
                .map(|s| line_of(text, s.span().start));
            err(line, message)
        })?;
        let format = file.output.vector_format().map_err(|e| invalid(None, e))?;
        let ingest_line = text
            .lines()
            .position(|l| l.trim_start().starts_with("[ingest]"))
            .map(|i| i + 1);
        file.ingest
            .validate()
            .map_err(|e| invalid(ingest_line, e))?;
        file.output.cog_options().map_err(|e| invalid(None, e))?;
        let name = file.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map_or("pipeline".into(), |s| s.to_string_lossy().into_owned())
        });
        Ok(Pipeline {
            path: path.to_path_buf(),
            name,
            description: file.description.clone(),
            shared_pass,
            stages,
            asset: file.input.asset.clone(),
            ingest: file.ingest,
            format,
            report: file.output.report(true),
            input: file.input,
            tiling: file.tiling,
            runtime: file.runtime,
            output: file.output,
            content_hash: content_hash(text),
        })
    }

    /// How scenes are opened.
    pub fn open_options(&self) -> OpenOptions {
        self.input.open()
    }

    /// How a shared pass reads a scene: open options, reader threads, queue per stage.
    pub fn shared_read(&self, ctx: &JobContext) -> (OpenOptions, usize, usize) {
        let batch = self
            .tiling
            .batch_size
            .unwrap_or_else(|| self.runtime.device().default_batch_size());
        let read = self.tiling.read(&self.input, ctx.jobs, Some(batch));
        (self.input.open(), read.threads, read.queue.max(batch))
    }

    /// One job per stage for `scene`, writing into `out/<stage name>`.
    ///
    /// # Errors
    /// A caption stage whose model package no longer loads (its generation defaults).
    pub fn jobs(
        &self,
        scene: &str,
        out: &Path,
        ctx: &JobContext,
    ) -> Result<Vec<StageJob>, BatchError> {
        let mut jobs = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let base = SceneJobBase::new(
                scene,
                &stage.model,
                &self.input,
                &self.tiling,
                &self.runtime,
                &self.output,
                ctx,
            );
            let stage_out = out.join(&stage.name);
            // The batch writes one report per scene over all its stages, not one per stage.
            let base = base.map(|b| SceneJobBase { report: false, ..b });
            let job = base
                .map_err(crate::options::OptionsError::from)
                .and_then(|base| stage.options.job(base, stage_out, ctx));
            jobs.push(job.map_err(|e| BatchError::Pipeline {
                path: self.path.display().to_string(),
                line: None,
                message: format!("stage '{}': {e}", stage.name),
            })?);
        }
        Ok(jobs)
    }
}

/// The tiles a stage's model reads: (tile size, overlap, target resolution), from the
/// pipeline's `[tiling]` over the model's own defaults, as the job will settle them. `None`
/// for models whose input is only known once loaded (ONNX files with Deepness metadata).
fn stage_tiling(
    stage: &Stage,
    tiling: &TilingOptions,
) -> Result<Option<(usize, usize, Option<f64>)>, String> {
    let Ok(package) = crate::models::ModelPackage::load(&stage.model) else {
        return Ok(None);
    };
    let Some(family) = crate::models::registry::family(&package.manifest.family) else {
        return Ok(None);
    };
    let Some(input) = family.input(&package) else {
        return Ok(None);
    };
    if let Some(size) = tiling.tile_size {
        if size != input.size && !input.any_size {
            return Err(format!(
                "tile_size {size} differs from the input size {} of {}: tiles are read at the model's size (use target_gsd to choose their ground footprint)",
                input.size,
                stage.model.display()
            ));
        }
    }
    let size = tiling.tile_size.unwrap_or(input.size);
    let defaults = package.manifest.tiling.as_ref();
    let overlap = match (tiling.overlap, tiling.stride) {
        (Some(o), _) => o,
        (None, Some(s)) => size.saturating_sub(s),
        (None, None) => defaults
            .and_then(|t| t.overlap)
            .unwrap_or(0)
            .min(size.saturating_sub(1)),
    };
    let gsd = tiling.target_gsd.or(defaults.and_then(|t| t.gsd));
    Ok(Some((size, overlap, gsd)))
}

/// The most stages one pipeline may have.
pub const MAX_STAGES: usize = 32;

/// What a run would reject about tiling, found before any scene is read: a tile size a model
/// cannot take, and stages of one shared read pass that need different tiles. The error
/// names the stage (its index) it is about.
fn check_tiling(
    stages: &[Stage],
    tiling: &TilingOptions,
    shared_pass: bool,
) -> Result<(), (usize, String)> {
    type Tiles = (usize, usize, Option<f64>);
    let show = |(size, overlap, gsd): Tiles| {
        format!(
            "{size} px, overlap {overlap}{}",
            gsd.map(|g| format!(", {g} m")).unwrap_or_default()
        )
    };
    let mut first: Option<(&str, Tiles)> = None;
    for (i, stage) in stages.iter().enumerate() {
        let Some(t) = stage_tiling(stage, tiling).map_err(|m| (i, m))? else {
            continue;
        };
        if let Some(batch) = tiling.batch_size {
            crate::options::check_batch_bytes(batch, t.0).map_err(|e| (i, e.to_string()))?;
        }
        match first {
            None => first = Some((&stage.name, t)),
            Some((name, f)) if shared_pass && f != t => {
                return Err((
                    i,
                    format!(
                        "stages '{name}' and '{}' need different tiling ({} against {}): one read pass needs the same tiles for every stage; set [tiling] in the pipeline, or shared_pass = false",
                        stage.name,
                        show(f),
                        show(t)
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
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
        crate::models::registry::check_serves(&package, task, model).map_err(|e| e.to_string())?;
    } else if !matches!(task, Task::Detect | Task::Segment) {
        return Err(format!(
            "{}: a {} stage needs a model package folder (model.toml)",
            model.display(),
            task.name()
        ));
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
        assert_eq!(p.tiling.overlap, Some(8));
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
        assert!(m.contains("or 'detector' model"), "{m}");
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
    fn stage_values_name_their_line() {
        let m = message(parse(&format!(
            "[[stage]]\ntask = \"detect\"\nmodel = \"{CLIP}\"\nmerge = \"nmx\"\n"
        )));
        assert!(
            m.contains("test.toml:4:") && m.contains("did you mean `nms`"),
            "{m}"
        );
        let m = message(parse(&format!(
            "[[stage]]\ntask = \"classify\"\nmodel = \"{CLIP}\"\nlabels = [\"a\"]\nlabls = 1\n"
        )));
        assert!(
            m.contains("test.toml:5:") && m.contains("did you mean `labels`"),
            "{m}"
        );
        let m = message(parse(&format!(
            "[tiling]\ntile_size = 32\nstride = 40\n[[stage]]\ntask = \"classify\"\nmodel = \"{CLIP}\"\nlabels = [\"a\"]\n"
        )));
        assert!(
            m.contains("test.toml:3:")
                && m.contains("stride must be between 1 and the tile size 32"),
            "{m}"
        );
        let m = message(parse(&format!(
            "[[stage]]\ntask = \"classify\"\nmodel = \"{CLIP}\"\nlabels = [\"a\"]\nmin_score = 2\n"
        )));
        assert!(
            m.contains("test.toml:1:") && m.contains("min_score must be between 0 and 1"),
            "{m}"
        );
    }

    #[test]
    fn check_finds_what_a_run_would_reject_about_tiling() {
        let classify = |name: &str| {
            format!("[[stage]]\nname = \"{name}\"\ntask = \"classify\"\nmodel = \"{CLIP}\"\nlabels = [\"a\"]\n")
        };
        let caption =
            "[[stage]]\ntask = \"caption\"\nmodel = \"../sample_data/models/blip2-tiny\"\n";
        // clip-tiny and blip2-tiny take different input sizes: not in one read pass.
        let m = message(parse(&format!("{}{caption}", classify("a"))));
        assert!(
            m.contains("test.toml:6:") && m.contains("need different tiling"),
            "{m}"
        );
        let separate = format!("[tiling]\nshared_pass = false\n{}{caption}", classify("a"));
        assert!(parse(&separate).is_ok());
        assert!(parse(&format!("{}{}", classify("a"), classify("b"))).is_ok());
        let m = message(parse(&format!(
            "[tiling]\ntile_size = 100\n{}",
            classify("a")
        )));
        assert!(
            m.contains("tile_size 100 differs from the input size"),
            "{m}"
        );
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
}
