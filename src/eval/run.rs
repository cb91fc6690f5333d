//! The evaluation run: the parent ([`run_eval`]) checks everything, prepares the data, runs
//! each model in a child process of its own and writes the table; the child
//! ([`run_worker`]) runs one model through its task's ordinary job.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::record::{folder_size, write_json, write_markdown, EvalReport, ModelRecord};
use super::registry::{evaluator, ModelRun, Scored};
use super::EvalError;
use crate::models::{registry as families, ModelPackage};
use crate::options::{EvalOptions, JobContext, SceneJobBase};
use crate::output::PendingOutput;
use crate::task::Task;

/// What `tessera eval` does.
#[derive(Debug)]
pub struct EvalJob {
    pub options: EvalOptions,
    pub out: PathBuf,
    pub overwrite: bool,
    /// The program and arguments that run this same evaluation (the worker flags are
    /// appended to run one model): the executable and the command's own arguments.
    pub relaunch: Vec<OsString>,
}

/// One model, in the child process.
#[derive(Debug)]
pub struct WorkerJob {
    pub options: EvalOptions,
    /// Which of `options.models`.
    pub model: usize,
    /// The scene side, from the command's shared flags (the evaluator sets its scene).
    pub base: SceneJobBase,
    /// The parent's scratch folder (what the evaluator prepared).
    pub work: PathBuf,
    /// Where the task's job writes its outputs (must not exist).
    pub out: PathBuf,
    pub ctx: JobContext,
}

/// The worker flags appended to the command line of a child.
pub const WORKER_MODEL: &str = "--worker-model";
pub const WORKER_DIR: &str = "--worker-dir";
pub const WORKER_OUT: &str = "--worker-out";

/// How `tiles_per_second`, `peak_rss_bytes` and `size_bytes` are measured (in `eval.json`
/// and under the table).
pub const METHOD: &str = "Each model runs alone in a child process (the same eval command with worker flags) through the task's ordinary job. tiles/s: tiles (or chips) the job read and ran, over the job's wall seconds from the first tile read to the last result (model and scene loading, text embeddings and output writing excluded). peak RSS: the child's VmHWM (/proc/self/status) at the end of its job: that model's process alone. size: bytes of every file in the package folder. agreement: fraction of tiles (pixels for segmentation) where the model's prediction equals the first model's.";

/// The `precision` a manifest records (`precision = "int8"` at its top level, or in a
/// `[quantization]` section), if any.
fn manifest_precision(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("model.toml")).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    value
        .get("precision")
        .or_else(|| value.get("quantization")?.get("precision"))?
        .as_str()
        .map(str::to_string)
}

/// Check that every model is a package of a family that serves `task`.
fn check_models(models: &[PathBuf], task: Task) -> Result<Vec<ModelPackage>, EvalError> {
    let mut packages = Vec::new();
    for m in models {
        let model_err = |reason: String| EvalError::Model {
            path: m.display().to_string(),
            reason,
        };
        if m.is_file() {
            return Err(model_err(
                "is a file: eval takes model package folders (with model.toml)".into(),
            ));
        }
        let package = ModelPackage::load(m).map_err(|e| match e {
            crate::models::ModelError::Package { reason, .. } => model_err(reason),
            other => model_err(other.to_string()),
        })?;
        let family = &package.manifest.family;
        let Some(f) = families::family(family) else {
            return Err(model_err(format!("unknown model family '{family}'")));
        };
        if !f.tasks().contains(&task) {
            let serves: Vec<&str> = f.tasks().iter().map(|t| t.name()).collect();
            return Err(model_err(format!(
                "is a {} model ({family}), not a {} model",
                serves.join("/"),
                task.name()
            )));
        }
        packages.push(package);
    }
    Ok(packages)
}

/// The error line of a failed child: its last `tessera: error: ` line, else its last line.
fn child_error(stderr: &str, status: std::process::ExitStatus) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("tessera: error: "))
        .or_else(|| lines.last().copied())
        .map_or_else(
            || format!("the model's run failed ({status})"),
            str::to_string,
        )
}

/// Run one model in a child process and return its job's report.
fn run_child(job: &EvalJob, i: usize, work: &Path, out: &Path) -> Result<Value, EvalError> {
    let model = job.options.models[i].display().to_string();
    let (program, args) = job
        .relaunch
        .split_first()
        .ok_or_else(|| EvalError::Worker {
            model: model.clone(),
            message: "no program to run the model with".into(),
        })?;
    let output = Command::new(program)
        .args(args)
        .arg(WORKER_MODEL)
        .arg(i.to_string())
        .arg(WORKER_DIR)
        .arg(work)
        .arg(WORKER_OUT)
        .arg(out)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| EvalError::Worker {
            model: model.clone(),
            message: format!("cannot start {}: {e}", Path::new(program).display()),
        })?;
    if !output.status.success() {
        return Err(EvalError::Worker {
            model,
            message: child_error(&String::from_utf8_lossy(&output.stderr), output.status),
        });
    }
    serde_json::from_slice(&output.stdout).map_err(|e| EvalError::Worker {
        model,
        message: format!("the model's run printed no report: {e}"),
    })
}

/// Run the evaluation.
///
/// # Errors
/// Bad options, data or models (before anything runs), a model's run failing, unwritable
/// outputs. Nothing is left under `out` unless everything succeeded.
pub fn run_eval(job: EvalJob) -> Result<EvalReport, EvalError> {
    let opts = &job.options;
    opts.validate()?;
    let task = opts.task;
    let ev = evaluator(task)?;
    let packages = check_models(&opts.models, task)?;
    // The output folder (replaced with --overwrite) must hold no input.
    let inputs = opts
        .models
        .iter()
        .chain(&opts.chips)
        .chain(&opts.labels)
        .chain(&opts.references)
        .chain(&opts.prompts)
        .chain(&opts.coco)
        .chain(&opts.voc)
        .map(|p| p.display().to_string())
        .chain(opts.scene.clone());
    for input in inputs {
        crate::output::refuse_input(&job.out, &input)?;
    }
    let pending = PendingOutput::dir(&job.out, job.overwrite)?;
    let dir = pending.path();
    let work = dir.join(".work");
    std::fs::create_dir_all(&work).map_err(|e| EvalError::io(&work, e))?;
    let prepared = ev.prepare(opts, &work)?;

    let mut records: Vec<ModelRecord> = Vec::new();
    let mut scores: Vec<Scored> = Vec::new();
    for (i, (model, package)) in opts.models.iter().zip(&packages).enumerate() {
        tracing::info!(model = %model.display(), "evaluating");
        let out = work.join(format!("model-{i}"));
        let report = run_child(&job, i, &work, &out)?;
        let scored = prepared.score(&ModelRun {
            model: model.clone(),
            out: out.clone(),
            report: report.clone(),
        })?;
        let agreement = match scores.first() {
            None => Some(1.0),
            Some(first) => first.predictions.agreement(&scored.predictions),
        };
        records.push(ModelRecord {
            model: model.display().to_string(),
            name: package.manifest.name.clone(),
            family: package.manifest.family.clone(),
            precision: manifest_precision(model),
            provider: report["provider"].as_str().unwrap_or("").to_string(),
            metrics: scored.metrics.clone(),
            headline: scored.headline,
            tiles: scored.tiles,
            tiles_per_second: if scored.seconds > 0.0 {
                scored.tiles as f64 / scored.seconds
            } else {
                0.0
            },
            size_bytes: folder_size(model)?,
            peak_rss_bytes: report["peak_rss_bytes"].as_u64(),
            agreement,
        });
        scores.push(scored);
        // The model's outputs are scored; they are not part of the evaluation's.
        std::fs::remove_dir_all(&out).map_err(|e| EvalError::io(&out, e))?;
    }
    std::fs::remove_dir_all(&work).map_err(|e| EvalError::io(&work, e))?;

    let charts = super::charts::write_charts(&records, &scores, &dir)?;
    for (i, s) in scores.iter().enumerate() {
        if !s.rows.is_empty() {
            let path = dir.join(format!("predictions_{}.jsonl", i + 1));
            let mut text = String::new();
            for r in &s.rows {
                text.push_str(&r.to_string());
                text.push('\n');
            }
            std::fs::write(&path, text).map_err(|e| EvalError::io(&path, e))?;
        }
    }
    let mut report = EvalReport {
        task: task.name(),
        data: prepared.describe(),
        method: METHOD.to_string(),
        models: records,
        charts,
        outputs: Vec::new(),
    };
    write_json(&report, &dir.join("eval.json"))?;
    write_markdown(&report, &dir.join("eval.md"))?;
    report.outputs = crate::jobs::output_names(&dir, &job.out)?;
    pending.commit()?;
    Ok(report)
}

/// Run one model of the evaluation (in the child): the task's job on the prepared data.
/// Returns the job's report.
///
/// # Errors
/// The job's error.
pub fn run_worker(mut job: WorkerJob) -> Result<Value, EvalError> {
    let ev = evaluator(job.options.task)?;
    let model = job.options.models.get(job.model).cloned().ok_or_else(|| {
        EvalError::Option(crate::options::InvalidOption::new(
            "worker_model",
            format!("{} is not a model index", job.model),
        ))
    })?;
    job.base.model = model;
    ev.run_model(&job.options, job.base, &job.work, job.out, &job.ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_precision_is_read_where_a_package_records_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = dir.path().join("model.toml");
        std::fs::write(&m, "family = \"clip\"\nprecision = \"int8\"\n").expect("write");
        assert_eq!(manifest_precision(dir.path()).as_deref(), Some("int8"));
        std::fs::write(
            &m,
            "family = \"clip\"\n[quantization]\nprecision = \"int4\"\n",
        )
        .expect("write");
        assert_eq!(manifest_precision(dir.path()).as_deref(), Some("int4"));
        std::fs::write(&m, "family = \"clip\"\n").expect("write");
        assert_eq!(manifest_precision(dir.path()), None);
    }

    #[test]
    fn a_failed_child_is_reported_by_its_error_line() {
        let status = std::process::Command::new("false").status().expect("false");
        let stderr = "tessera: note: x\ntessera: error: s.tif: not a raster\n";
        assert_eq!(child_error(stderr, status), "s.tif: not a raster");
        assert_eq!(child_error("boom\n", status), "boom");
    }
}
