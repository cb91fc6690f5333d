//! `tessera eval`: the evaluation (the parent), or one model of it (the worker the parent
//! starts with the same arguments and the hidden `--worker-*` flags).

use anyhow::{Context, Result};

use super::args::EvalArgs;
use super::flag_error;
use super::print::print_json;
use crate::eval::{self, EvalJob, WorkerJob};
use crate::options::{cache_dir, JobContext, OutputOptions, SceneJobBase};

pub(super) fn eval(a: EvalArgs, ort_lib: Option<std::path::PathBuf>, quiet: bool) -> Result<i32> {
    if let (Some(model), Some(work), Some(out)) =
        (a.worker_model, a.worker_dir.clone(), a.worker_out.clone())
    {
        return worker(a, ort_lib, model, work, out);
    }
    a.tiling.validate().map_err(flag_error)?;
    a.runtime.validate().map_err(flag_error)?;
    let program = std::env::current_exe().context("finding the tessera executable")?;
    let mut relaunch = vec![program.into_os_string()];
    relaunch.extend(std::env::args_os().skip(1));
    let report = eval::run_eval(EvalJob {
        options: a.options,
        out: a.out.clone(),
        overwrite: a.overwrite,
        relaunch,
    })?;
    if a.json {
        print_json(&report)?;
        return Ok(0);
    }
    if !quiet {
        for m in &report.models {
            let metric = m
                .headline_value()
                .map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
            out!(
                "{}: {} {metric}, {:.2} tiles/s, {:.1} MiB, agreement {}",
                m.model,
                m.headline,
                m.tiles_per_second,
                m.size_bytes as f64 / 1048576.0,
                m.agreement
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
            )?;
        }
    }
    for o in &report.outputs {
        out!("  wrote {o}")?;
    }
    Ok(0)
}

/// One model, in the child process: its job's report on stdout.
fn worker(
    a: EvalArgs,
    ort_lib: Option<std::path::PathBuf>,
    model: usize,
    work: std::path::PathBuf,
    out: std::path::PathBuf,
) -> Result<i32> {
    let ctx = JobContext {
        ort_lib,
        cache_dir: cache_dir(a.cache_dir.clone()),
        progress: crate::jobs::Progress::Off,
        jobs: 1,
    };
    let path = a.options.models.get(model).cloned().unwrap_or_default();
    let base = SceneJobBase::new(
        "",
        &path,
        &a.input,
        &a.tiling,
        &a.runtime,
        &OutputOptions::default(),
        &ctx,
    )
    .map_err(flag_error)?;
    let report = eval::run_worker(WorkerJob {
        options: a.options,
        model,
        base,
        work,
        out,
        ctx,
    })?;
    print_json(&report)?;
    Ok(0)
}
