//! Commands over many scenes: `run` (a pipeline file over inputs), `ingest` and `watch`.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::args::{IngestArgs, RunArgs};
use super::print::print_json;
use crate::options::cache_dir;

/// The shard from --shard or the scheduler's environment.
fn shard(flag: Option<&str>) -> Result<Option<crate::batch::Shard>> {
    match flag {
        Some(s) => Ok(Some(
            crate::batch::Shard::parse(s).map_err(anyhow::Error::msg)?,
        )),
        None => crate::batch::Shard::from_env().map_err(anyhow::Error::msg),
    }
}

pub(super) fn run_pipeline(a: RunArgs, ort_lib: Option<PathBuf>, quiet: bool) -> Result<i32> {
    let pipeline = crate::batch::Pipeline::load(&a.pipeline)?;
    if a.check {
        println!(
            "{}: valid pipeline '{}' with {} stage(s): {}{}",
            a.pipeline.display(),
            pipeline.name,
            pipeline.stages.len(),
            pipeline
                .stages
                .iter()
                .map(|s| format!("{} ({} {})", s.name, s.task.name(), s.model.display()))
                .collect::<Vec<_>>()
                .join(", "),
            if pipeline.shared_pass {
                "; one shared read pass"
            } else {
                ""
            }
        );
        return Ok(0);
    }
    let Some(out) = a.out.clone() else {
        bail!("--out is required");
    };
    if a.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let job = crate::batch::BatchJob {
        pipeline,
        inputs: a.inputs.clone(),
        out,
        jobs: a.jobs,
        force: a.force,
        shard: shard(a.shard.as_deref())?,
        asset: a.asset.clone(),
        ctx: crate::batch::JobContext {
            ort_lib,
            cache_dir: cache_dir(a.cache_dir.clone()),
            progress: !quiet,
            jobs: a.jobs,
        },
    };
    let report = crate::batch::run_batch(job)?;
    if a.json {
        print_json(&report)?;
    } else {
        for s in &report.scenes {
            match &s.error {
                Some(e) => println!("  failed  {}: {e}", s.name),
                None => println!(
                    "  {:<7} {} ({:.1} s)",
                    format!("{:?}", s.status).to_lowercase(),
                    s.name,
                    s.seconds
                ),
            }
        }
        println!(
            "{} scene(s): {} done, {} skipped, {} failed in {:.1} s{}",
            report.scenes.len(),
            report.done,
            report.skipped,
            report.failed,
            report.seconds,
            report
                .shard
                .map(|s| format!(
                    " (shard {}/{}; {} scene(s) in other shards)",
                    s.index, s.count, report.other_shards
                ))
                .unwrap_or_default()
        );
    }
    Ok(if report.failed > 0 { 3 } else { 0 })
}

pub(super) fn ingest(
    a: IngestArgs,
    interval: Option<f64>,
    ort_lib: Option<PathBuf>,
    quiet: bool,
) -> Result<i32> {
    use crate::batch::ingest::{status, IngestJob};
    let state = a
        .state
        .clone()
        .unwrap_or_else(|| IngestJob::default_state(&a.out));
    if a.status {
        let (rows, counts) = status(&state)?;
        if a.json {
            print_json(&serde_json::json!({ "state": state, "counts": counts, "scenes": rows }))?;
        } else {
            println!(
                "{}: {}",
                state.display(),
                counts
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for r in &rows {
                println!(
                    "  {:<8} {} (attempts {}{}){}",
                    r.status.to_string(),
                    r.path,
                    r.attempts,
                    r.seconds.map(|s| format!(", {s:.1} s")).unwrap_or_default(),
                    r.error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
        }
        return Ok(0);
    }
    let (Some(dir), Some(pipeline)) = (a.dir.clone(), a.pipeline.clone()) else {
        bail!("DIR and --pipeline are required");
    };
    if !dir.is_dir() {
        bail!("{}: not a folder", dir.display());
    }
    if a.jobs == 0 || a.max_attempts == 0 {
        bail!("--jobs and --max-attempts must be at least 1");
    }
    if !(a.settle >= 0.0 && a.retry_after >= 0.0 && a.lease > 0.0) {
        bail!("--settle and --retry-after must not be negative, --lease must be positive");
    }
    let patterns = a
        .patterns
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(|e| anyhow::anyhow!("--pattern '{p}': {e}")))
        .collect::<Result<Vec<_>>>()?;
    let pipeline = crate::batch::Pipeline::load(&pipeline)?;
    let job = IngestJob {
        dir,
        pipeline,
        out: a.out.clone(),
        state,
        patterns,
        settle_seconds: a.settle,
        retry: crate::batch::state::RetryPolicy {
            max_attempts: a.max_attempts,
            backoff_seconds: a.retry_after,
        },
        lease_seconds: a.lease,
        shared_fs: a.shared_fs,
        jobs: a.jobs,
        shard: shard(a.shard.as_deref())?,
        ctx: crate::batch::JobContext {
            ort_lib,
            cache_dir: cache_dir(a.cache_dir.clone()),
            progress: !quiet,
            jobs: a.jobs,
        },
    };
    let identity = crate::batch::run::Identity::of(&job.pipeline)?;
    let print = |r: &crate::batch::ingest::IngestReport| {
        if a.json {
            let _ = print_json(r);
            return;
        }
        for s in &r.processed {
            match &s.error {
                Some(e) => println!("  failed  {}: {e}", s.name),
                None => println!("  done    {} ({:.1} s)", s.name, s.seconds),
            }
        }
        println!(
            "{} scene file(s): {} processed, {} failed, {} still being written",
            r.found,
            r.done,
            r.failed,
            r.waiting.len()
        );
    };
    match interval {
        None => {
            let report = job.run_once(&identity, &super::signals::STOP)?;
            print(&report);
            Ok(if report.failed > 0 { 3 } else { 0 })
        }
        Some(interval) => {
            super::signals::stop_on_signals();
            job.watch(&identity, interval, &super::signals::STOP, |r| {
                if !r.processed.is_empty() {
                    print(r);
                }
            })?;
            Ok(0)
        }
    }
}
