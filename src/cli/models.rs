//! The model commands (`classify`, `caption`, `segment`, `detect`), `models check` and
//! `bench-model`: options into a job, the job run, its report printed.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::args::{
    BenchModelArgs, CaptionArgs, ClassifyArgs, DetectArgs, ModelCommandArgs, ModelsArgs,
    ModelsCommand, SegmentArgs,
};
use super::print::{self, print_json};
use super::{flag_error, options_error};
use crate::jobs;
use crate::options::{cache_dir, JobContext, SceneJobBase};
use crate::runtime::Runtime;

/// What a model command's job shares, from its flags.
struct Prepared {
    base: SceneJobBase,
    ctx: JobContext,
}

fn prepare(
    scene: &str,
    model: &Path,
    out: Option<&Path>,
    common: &ModelCommandArgs,
    ort_lib: Option<PathBuf>,
    quiet: bool,
) -> Result<Prepared> {
    if let Some(out) = out {
        crate::output::refuse_input(out, scene)?;
    } else if common.output.report(false) {
        anyhow::bail!("--report needs --out: report.html is written into the output folder");
    }
    let ctx = JobContext {
        ort_lib,
        cache_dir: cache_dir(common.cache_dir.clone()),
        progress: super::progress(quiet),
        jobs: 1,
    };
    let base = SceneJobBase::new(
        scene,
        model,
        &common.input,
        &common.tiling,
        &common.runtime,
        &common.output,
        &ctx,
    )
    .map_err(flag_error)?;
    Ok(Prepared { base, ctx })
}

/// A model command's report: the fallback warning, then JSON or the text summary.
fn finish<R>(report: &R, json: bool, quiet: bool, text: fn(&R) -> Result<()>) -> Result<i32>
where
    R: serde::Serialize + std::ops::Deref<Target = crate::jobs::SceneRunReport>,
{
    print::fallback(report.fallback.as_deref(), &report.provider, quiet);
    if json {
        print_json(report)?;
    } else {
        text(report)?;
    }
    Ok(0)
}

pub(super) fn classify(a: ClassifyArgs, ort_lib: Option<PathBuf>, quiet: bool) -> Result<i32> {
    let p = prepare(
        &a.scene,
        &a.options.model,
        a.out.as_deref(),
        &a.common,
        ort_lib,
        quiet,
    )?;
    let job = a
        .options
        .job(
            p.base,
            a.out.clone(),
            a.common.overwrite,
            p.ctx.cache_dir.as_deref(),
        )
        .map_err(flag_error)?;
    finish(
        &jobs::run_classify(job)?,
        a.common.json,
        quiet,
        print::classify,
    )
}

pub(super) fn caption(a: CaptionArgs, ort_lib: Option<PathBuf>, quiet: bool) -> Result<i32> {
    let p = prepare(
        &a.scene,
        &a.options.model,
        a.out.as_deref(),
        &a.common,
        ort_lib,
        quiet,
    )?;
    let job = a
        .options
        .job(p.base, a.out.clone(), a.common.overwrite)
        .map_err(options_error)?;
    finish(
        &jobs::run_caption(job)?,
        a.common.json,
        quiet,
        print::caption,
    )
}

pub(super) fn segment(a: SegmentArgs, ort_lib: Option<PathBuf>, quiet: bool) -> Result<i32> {
    let p = prepare(
        &a.scene,
        a.options.main_model(),
        Some(a.out.as_path()),
        &a.common,
        ort_lib,
        quiet,
    )?;
    let job = a
        .options
        .job(p.base, a.out.clone(), a.common.overwrite)
        .map_err(flag_error)?;
    finish(
        &jobs::run_segment(job)?,
        a.common.json,
        quiet,
        print::segment,
    )
}

pub(super) fn detect(a: DetectArgs, ort_lib: Option<PathBuf>, quiet: bool) -> Result<i32> {
    let p = prepare(
        &a.scene,
        &a.options.model,
        a.out.as_deref(),
        &a.common,
        ort_lib,
        quiet,
    )?;
    let job = a
        .options
        .job(p.base, a.out.clone(), a.common.overwrite)
        .map_err(flag_error)?;
    finish(&jobs::run_detect(job)?, a.common.json, quiet, print::detect)
}

pub(super) fn models(a: ModelsArgs, ort_lib: Option<PathBuf>) -> Result<i32> {
    match a.command {
        ModelsCommand::Check { dir, json } => {
            let runtime = Runtime::load(ort_lib.as_deref())?;
            let report = crate::models::inspect_package(runtime, &dir);
            let problems = report.problems;
            if json {
                print_json(&serde_json::json!({
                    "package": dir,
                    "valid": problems.is_empty(),
                    "problems": problems,
                    "family": report.family,
                    "precision": report.precision,
                }))?;
            } else if problems.is_empty() {
                let what = match (&report.family, report.precision) {
                    (Some(f), Some(p)) => format!(" ({f}, precision {p})"),
                    _ => String::new(),
                };
                out!("{}: valid model package{what}", dir.display())?;
            } else {
                out!("{}: {} problem(s)", dir.display(), problems.len())?;
                for p in &problems {
                    out!("  - {p}")?;
                }
            }
            Ok(if problems.is_empty() { 0 } else { 1 })
        }
        ModelsCommand::Import(a) => {
            let runtime = Runtime::load(ort_lib.as_deref())?;
            let report = crate::models::import::import_folder(
                runtime,
                &crate::models::import::ImportOptions {
                    dir: a.dir,
                    out: a.out,
                    variant: a.variant,
                    copy: a.copy,
                    logit_scale: a.logit_scale,
                    logit_bias: a.logit_bias,
                    name: a.name,
                },
            )?;
            if a.json {
                print_json(&report)?;
            } else {
                out!(
                    "{}: {} package ({}, {} layout, variant {}), files {} from {}",
                    report.package.display(),
                    report.family,
                    report.model_type,
                    report.layout,
                    report.variant,
                    if report.files == "copy" {
                        "copied"
                    } else {
                        "linked"
                    },
                    report.source.display()
                )?;
                let bias = report
                    .logit_bias
                    .map_or_else(String::new, |b| format!(", logit_bias {b}"));
                out!(
                    "  image {}, text {}; logit_scale {}{bias} (from {})",
                    report.image_graph,
                    report.text_graph,
                    report.logit_scale,
                    report.scores_from
                )?;
            }
            Ok(0)
        }
    }
}

pub(super) fn bench_model(a: BenchModelArgs, ort_lib: Option<PathBuf>) -> Result<i32> {
    let ctx = JobContext {
        ort_lib: ort_lib.clone(),
        cache_dir: cache_dir(None),
        progress: crate::jobs::Progress::Off,
        jobs: 1,
    };
    if let Some(b) = a.batch_size {
        crate::options::TilingOptions {
            batch_size: Some(b),
            ..Default::default()
        }
        .validate()
        .map_err(flag_error)?;
    }
    let job = jobs::BenchModelJob {
        model: a.model.clone(),
        ort_lib,
        session: a.runtime.session(&ctx),
        batch_size: a
            .batch_size
            .unwrap_or_else(|| a.runtime.device().default_batch_size()),
        iterations: a.iterations,
        warmup: a.warmup,
    };
    print_json(&jobs::run_bench_model(job)?)?;
    Ok(0)
}
