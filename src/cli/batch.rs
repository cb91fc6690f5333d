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
    let mut pipeline = crate::batch::Pipeline::load(&a.pipeline)?;
    if let Some(report) = a.report.value() {
        pipeline.report = report;
    }
    if a.check {
        out!(
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
        )?;
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
            progress: super::progress(quiet),
            jobs: a.jobs,
        },
    };
    let report = crate::batch::run_batch(job)?;
    if a.json {
        print_json(&report)?;
    } else {
        for s in &report.scenes {
            match &s.error {
                Some(e) => out!("  failed  {}: {e}", s.name)?,
                None => out!(
                    "  {:<7} {} ({:.1} s)",
                    format!("{:?}", s.status).to_lowercase(),
                    s.name,
                    s.seconds
                )?,
            }
        }
        out!(
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
        )?;
    }
    if report.failed == 0 {
        return Ok(0);
    }
    Ok(failure_code(report.done + report.skipped))
}

/// The exit status of a batch in which some scenes failed: 3 when others completed (done now
/// or complete from an earlier run), 1 when every scene failed.
fn failure_code(completed: usize) -> i32 {
    if completed > 0 {
        3
    } else {
        1
    }
}

/// `ingest --status`: the scenes of the state database.
fn print_status(state: &crate::batch::state::StateLocation, json: bool) -> Result<i32> {
    use crate::batch::ingest::status;
    let (rows, counts) = status(state)?;
    if json {
        print_json(
            &serde_json::json!({ "state": state.to_string(), "counts": counts, "scenes": rows }),
        )?;
    } else {
        out!(
            "{}: {}",
            state,
            counts
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        for r in &rows {
            out!(
                "  {:<8} {} (attempts {}{}){}",
                r.status.to_string(),
                r.path,
                r.attempts,
                r.seconds.map(|s| format!(", {s:.1} s")).unwrap_or_default(),
                r.error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(0)
}

pub(super) fn ingest(
    a: IngestArgs,
    interval: Option<f64>,
    ort_lib: Option<PathBuf>,
    quiet: bool,
) -> Result<i32> {
    use crate::batch::ingest::{status, IngestJob};
    use crate::batch::state::StateLocation;
    let state = a
        .state
        .as_deref()
        .map_or_else(|| IngestJob::default_state(&a.out), StateLocation::parse);
    if a.status {
        return print_status(&state, a.json);
    }
    let Some(pipeline) = a.pipeline.clone() else {
        bail!("--pipeline is required");
    };
    if a.jobs == 0 || a.max_attempts == 0 {
        bail!("--jobs and --max-attempts must be at least 1");
    }
    let postgres = matches!(state, StateLocation::Postgres(_));
    let lease = a.lease.unwrap_or(if postgres { 300.0 } else { 21600.0 });
    if !(a.settle >= 0.0 && a.retry_after >= 0.0 && lease > 0.0) {
        bail!("--settle and --retry-after must not be negative, --lease must be positive");
    }
    if postgres && a.shared_fs {
        bail!("--shared-fs is for a SQLite state file; a PostgreSQL --state needs no shared file system");
    }
    let patterns = a
        .patterns
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(|e| anyhow::anyhow!("--pattern '{p}': {e}")))
        .collect::<Result<Vec<_>>>()?;
    let pipeline = crate::batch::Pipeline::load(&pipeline)?;
    let stac = a.stac.clone().or(&pipeline.ingest);
    stac.validate()
        .map_err(|e| anyhow::anyhow!(e.render(crate::options::KeyStyle::Flag)))?;
    let source = crate::batch::stac_source::StacSource::from_options(&stac)?;
    let dir = match (&a.dir, &source) {
        (Some(_), Some(_)) => {
            bail!("DIR and a STAC source (--stac-api, --stac-catalog or [ingest]) are two sources: give one")
        }
        (None, None) => bail!("give DIR, --stac-api URL or --stac-catalog URL|FILE"),
        (Some(dir), None) => {
            if !dir.is_dir() {
                bail!("{}: not a folder", dir.display());
            }
            dir.clone()
        }
        (None, Some(_)) => PathBuf::new(),
    };
    let job = IngestJob {
        dir,
        stac: source,
        asset: a.asset.clone().or_else(|| pipeline.asset.clone()),
        pipeline,
        out: a.out.clone(),
        state,
        patterns,
        settle_seconds: a.settle,
        retry: crate::batch::state::RetryPolicy {
            max_attempts: a.max_attempts,
            backoff_seconds: a.retry_after,
        },
        lease_seconds: lease,
        shared_fs: a.shared_fs,
        jobs: a.jobs,
        shard: shard(a.shard.as_deref())?,
        ctx: crate::batch::JobContext {
            ort_lib,
            cache_dir: cache_dir(a.cache_dir.clone()),
            progress: super::progress(quiet),
            jobs: a.jobs,
        },
    };
    let identity = crate::batch::run::Identity::of(&job.pipeline)?;
    let print = |r: &crate::batch::ingest::IngestReport| -> Result<()> {
        for p in &r.problems {
            eprintln!("tessera: warning: {p}");
        }
        if a.json {
            return print_json(r);
        }
        for s in &r.processed {
            match &s.error {
                Some(e) => out!("  failed  {}: {e}", s.name)?,
                None => out!("  done    {} ({:.1} s)", s.name, s.seconds)?,
            }
        }
        if job.stac.is_some() {
            out!(
                "{} STAC Item(s): {} processed, {} failed, {} not listed (malformed or unreadable)",
                r.found,
                r.done,
                r.failed,
                r.problems.len()
            )?;
        } else {
            out!(
                "{} scene file(s): {} processed, {} failed, {} still being written",
                r.found,
                r.done,
                r.failed,
                r.waiting.len()
            )?;
        }
        Ok(())
    };
    match interval {
        None => {
            let report = job.run_once(&identity, &super::signals::STOP)?;
            print(&report)?;
            if report.failed == 0 && report.problems.is_empty() {
                return Ok(0);
            }
            // Completed scenes: this pass's, or any done by an earlier pass into this state.
            let done_before = status(&job.state)
                .map(|(_, counts)| counts.get("done").copied().unwrap_or(0))
                .unwrap_or(0);
            Ok(failure_code(report.done + done_before))
        }
        Some(interval) => {
            super::signals::stop_on_signals();
            // A report that cannot be printed (stdout closed or full) stops the watch after
            // this pass, like a signal.
            let mut print_error = None;
            job.watch(&identity, interval, &super::signals::STOP, |r| {
                if !r.processed.is_empty() && print_error.is_none() {
                    if let Err(e) = print(r) {
                        print_error = Some(e);
                        super::signals::STOP.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            })?;
            match print_error {
                Some(e) => Err(e),
                None => Ok(0),
            }
        }
    }
}
