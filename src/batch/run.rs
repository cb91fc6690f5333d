//! `tessera run PIPELINE INPUT... --out DIR`: every scene through every stage, scenes in
//! parallel, each into its own folder, atomically, with a record that lets reruns skip it.

use std::path::{Path, PathBuf};

use gdal::Metadata;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use super::inputs::{expand, SceneInput, Shard};
use super::record::{self, InputStamp, ModelStamp, SceneRecord};
use super::spec::{JobContext, Pipeline};
use super::{host_name, pid_alive, BatchError};
use crate::jobs::{feed, TaskReport};

/// What `tessera run` does.
#[derive(Debug)]
pub struct BatchJob {
    pub pipeline: Pipeline,
    pub inputs: Vec<String>,
    pub out: PathBuf,
    /// Scenes processed at once.
    pub jobs: usize,
    /// Redo scenes whose record says they are complete.
    pub force: bool,
    pub shard: Option<Shard>,
    /// STAC asset key or role (overrides the pipeline's).
    pub asset: Option<String>,
    pub ctx: JobContext,
}

/// How a scene ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SceneOutcome {
    /// Processed now.
    Done,
    /// Already complete with the same inputs, pipeline and models.
    Skipped,
    Failed,
}

/// One scene of a batch.
#[derive(Clone, Debug, Serialize)]
pub struct SceneReport {
    pub name: String,
    pub input: String,
    pub status: SceneOutcome,
    pub seconds: f64,
    /// The scene's output folder (done or skipped).
    pub output: Option<String>,
    pub error: Option<String>,
    /// The failure may go away by itself (output folder, runtime, network): worth retrying.
    pub transient: bool,
}

/// What `tessera run` did.
#[derive(Debug, Serialize)]
pub struct BatchReport {
    pub pipeline: String,
    pub out: String,
    pub shard: Option<Shard>,
    /// Scenes of the inputs outside this shard.
    pub other_shards: usize,
    pub done: usize,
    pub skipped: usize,
    pub failed: usize,
    pub seconds: f64,
    /// index.html over the scenes' reports (when reports are on).
    pub index: Option<String>,
    pub scenes: Vec<SceneReport>,
}

/// What every scene of a batch compares its record with.
#[derive(Clone, Debug)]
pub struct Identity {
    pub pipeline_hash: String,
    pub models: Vec<ModelStamp>,
}

impl Identity {
    /// Hash the pipeline's models (once per batch).
    ///
    /// # Errors
    /// A model file that cannot be read.
    pub fn of(pipeline: &Pipeline) -> Result<Identity, BatchError> {
        let models = pipeline
            .stages
            .iter()
            .map(|s| {
                Ok(ModelStamp {
                    stage: s.name.clone(),
                    path: s.model.display().to_string(),
                    hash: record::model_hash(&s.model).map_err(|e| BatchError::Model {
                        path: s.model.display().to_string(),
                        reason: format!("cannot read: {e}"),
                    })?,
                })
            })
            .collect::<Result<Vec<_>, BatchError>>()?;
        Ok(Identity {
            pipeline_hash: pipeline.content_hash.clone(),
            models,
        })
    }
}

/// Run a batch. Failed scenes are reported, not errors.
///
/// # Errors
/// Inputs that cannot be expanded, an output folder that cannot be created, unreadable models.
pub fn run_batch(job: BatchJob) -> Result<BatchReport, BatchError> {
    let start = Instant::now();
    let asset = job.asset.clone().or_else(|| job.pipeline.asset.clone());
    let all = expand(&job.inputs, asset.as_deref())?;
    let total = all.len();
    let scenes: Vec<SceneInput> = match job.shard {
        Some(s) => all.into_iter().filter(|sc| s.takes(&sc.name)).collect(),
        None => all,
    };
    let other_shards = total - scenes.len();
    std::fs::create_dir_all(&job.out).map_err(|e| BatchError::Output {
        path: job.out.display().to_string(),
        reason: format!("cannot create the output folder: {e}"),
    })?;
    remove_stale_temporaries(&job.out);
    let identity = Identity::of(&job.pipeline)?;
    let ctx = JobContext {
        jobs: job.jobs.max(1),
        ..job.ctx.clone()
    };
    let bar = crate::jobs::scenes_bar(scenes.len(), ctx.progress);
    let next = AtomicUsize::new(0);
    let reports: Mutex<Vec<SceneReport>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..ctx.jobs.min(scenes.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(scene) = scenes.get(i) else { break };
                bar.bar_handle().set_message(scene.name.clone());
                let r = process_scene(&job.pipeline, &identity, scene, &job.out, job.force, &ctx);
                match r.status {
                    SceneOutcome::Failed => tracing::warn!(
                        scene = %r.name,
                        error = r.error.as_deref().unwrap_or(""),
                        "scene failed"
                    ),
                    status => {
                        tracing::info!(scene = %r.name, ?status, seconds = r.seconds, "scene finished")
                    }
                }
                bar.inc(1);
                if let Ok(mut all) = reports.lock() {
                    all.push(r);
                }
            });
        }
    });
    bar.finish();
    let mut scenes = reports.into_inner().unwrap_or_default();
    scenes.sort_by(|a, b| a.name.cmp(&b.name));
    let count = |o: SceneOutcome| scenes.iter().filter(|s| s.status == o).count();
    let index = if job.pipeline.report {
        Some(write_index(&job, &scenes)?)
    } else {
        None
    };
    Ok(BatchReport {
        index,
        pipeline: job.pipeline.path.display().to_string(),
        out: job.out.display().to_string(),
        shard: job.shard,
        other_shards,
        done: count(SceneOutcome::Done),
        skipped: count(SceneOutcome::Skipped),
        failed: count(SceneOutcome::Failed),
        seconds: start.elapsed().as_secs_f64(),
        scenes,
    })
}

/// `out/index.html` (`index-I-of-N.html` for shard I of N: shards share the folder) linking
/// each scene's report with its status.
fn write_index(job: &BatchJob, scenes: &[SceneReport]) -> Result<String, BatchError> {
    use crate::output::report::{IndexEntry, REPORT_FILE};
    let entries: Vec<IndexEntry> = scenes
        .iter()
        .map(|s| {
            let status = match s.status {
                SceneOutcome::Done => "ok",
                SceneOutcome::Skipped => "skipped",
                SceneOutcome::Failed => "failed",
            };
            // A failed scene's folder may hold an older result: not linked as this run's.
            let report = (s.status != SceneOutcome::Failed
                && job.out.join(&s.name).join(REPORT_FILE).is_file())
            .then(|| format!("{}/{REPORT_FILE}", s.name));
            IndexEntry {
                name: s.name.clone(),
                input: s.input.clone(),
                status: status.into(),
                error: s.error.clone(),
                report,
                seconds: s.seconds,
            }
        })
        .collect();
    let title = format!("{} ({})", job.pipeline.name, job.pipeline.path.display());
    let path = match job.shard {
        None => job.out.join(crate::output::report::INDEX_FILE),
        Some(s) => job
            .out
            .join(format!("index-{}-of-{}.html", s.index, s.count)),
    };
    crate::output::report::write_index(&path, &title, &entries).map_err(|e| {
        BatchError::Output {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok(path.display().to_string())
}

/// A unique hidden name next to `final_dir` for work in progress (`kind` "tmp" or "old"):
/// `.NAME~KIND~HOST~PID~SEQ`.
fn side_name(out: &Path, name: &str, kind: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, Ordering::SeqCst);
    out.join(format!(
        ".{name}~{kind}~{}~{}~{seq}",
        host_name(),
        std::process::id()
    ))
}

/// Remove temporary folders left by processes of this host that no longer run (killed).
/// Those of live processes, or of other hosts sharing the folder, are left alone.
pub fn remove_stale_temporaries(out: &Path) {
    let host = host_name();
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            continue;
        }
        let parts: Vec<&str> = name.rsplitn(5, '~').collect();
        let [_seq, pid, h, kind, _] = parts.as_slice() else {
            continue;
        };
        if !matches!(*kind, "tmp" | "old") || *h != host {
            continue;
        }
        if let Ok(pid) = pid.parse::<u32>() {
            if !pid_alive(pid) {
                tracing::info!(path = %e.path().display(), "removing a dead run's temporary folder");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Debug builds only: the scene of this name panics (tests of panic isolation).
#[cfg(debug_assertions)]
pub const TEST_PANIC_VAR: &str = "TESSERA_TEST_PANIC_SCENE";

/// Run every stage of `pipeline` on one scene into `out/<name>`.
///
/// A panic while the scene runs (a bug) is caught and reported as this scene's failure (not
/// transient), its temporary folder removed, so one scene never takes a batch or an ingestion
/// pass down with it.
pub fn process_scene(
    pipeline: &Pipeline,
    identity: &Identity,
    scene: &SceneInput,
    out: &Path,
    force: bool,
    ctx: &JobContext,
) -> SceneReport {
    let start = Instant::now();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        #[cfg(debug_assertions)]
        if std::env::var(TEST_PANIC_VAR).is_ok_and(|n| n == scene.name) {
            panic!("injected by {TEST_PANIC_VAR}");
        }
        process_scene_inner(pipeline, identity, scene, out, force, ctx)
    }));
    match caught {
        Ok(report) => report,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            remove_own_temporaries(out, &scene.name);
            SceneReport {
                name: scene.name.clone(),
                input: scene.raster.clone(),
                status: SceneOutcome::Failed,
                seconds: start.elapsed().as_secs_f64(),
                output: None,
                error: Some(format!(
                    "{}: internal error while processing (panic: {msg}); please report it",
                    scene.raster
                )),
                transient: false,
            }
        }
    }
}

/// Remove this process's temporary folders of scene `name` (after a panic skipped the
/// normal clean-up).
fn remove_own_temporaries(out: &Path, name: &str) {
    let prefix = format!(".{name}~tmp~{}~{}~", host_name(), std::process::id());
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn process_scene_inner(
    pipeline: &Pipeline,
    identity: &Identity,
    scene: &SceneInput,
    out: &Path,
    force: bool,
    ctx: &JobContext,
) -> SceneReport {
    let start = Instant::now();
    let final_dir = out.join(&scene.name);
    let mut report = SceneReport {
        name: scene.name.clone(),
        input: scene.raster.clone(),
        status: SceneOutcome::Failed,
        seconds: 0.0,
        output: None,
        error: None,
        transient: false,
    };
    // Errors: (message, transient).
    let permanent = |m: String| (m, false);
    let transient = |m: String| (m, true);
    let result = (|| -> Result<SceneOutcome, (String, bool)> {
        if let Some(e) = &scene.error {
            return Err(permanent(e.clone()));
        }
        if !force && is_complete(&final_dir, identity, scene) {
            return Ok(SceneOutcome::Skipped);
        }
        // Stamp the inputs before reading them: a file that changes while it is processed
        // no longer matches the record, so the next run redoes it.
        let mut stamps = Vec::new();
        for src in scene.source.iter().chain(scene.item.iter()) {
            if stamps
                .iter()
                .any(|s: &InputStamp| Path::new(&s.path) == record::absolute(src))
            {
                continue;
            }
            stamps.push(
                InputStamp::of(src)
                    .map_err(|e| permanent(format!("{}: cannot read: {e}", src.display())))?,
            );
        }
        let started = record::now();
        let tmp = side_name(out, &scene.name, "tmp");
        std::fs::create_dir(&tmp).map_err(|e| transient(format!("{}: {e}", tmp.display())))?;
        let work = || -> Result<(), (String, bool)> {
            let io = |e: std::io::Error| transient(e.to_string());
            let json = |e: serde_json::Error| permanent(e.to_string());
            let mut stages = serde_json::Map::new();
            let mut sections = Vec::new();
            for (name, mut r) in run_stages(pipeline, &scene.raster, &tmp, ctx)? {
                if let Some(s) = &r.run().section {
                    sections.push(crate::output::report::Section {
                        name: name.clone(),
                        ..s.clone()
                    });
                }
                // Reports name the temporary folder: name the final one.
                r.run_mut().rebase(&tmp, &final_dir);
                stages.insert(name, serde_json::to_value(&r).map_err(json)?);
            }
            if pipeline.report {
                write_scene_report(pipeline, scene, &sections, &tmp)
                    .map_err(|e| transient(e.to_string()))?;
            }
            write_item(pipeline, scene, &stamps, &tmp).map_err(permanent)?;
            // report.html shows the run's timings, command and time: no two runs write the
            // same bytes, so it is not stamped (the record stays the same from any folder).
            let outputs: Vec<_> = record::output_stamps(&tmp)
                .map_err(io)?
                .into_iter()
                .filter(|o| o.path != crate::output::report::REPORT_FILE)
                .collect();
            let finished = record::now();
            let rec = SceneRecord {
                tool: "tessera".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                scene: scene.name.clone(),
                raster: scene.raster.clone(),
                inputs: stamps.clone(),
                pipeline: pipeline.path.display().to_string(),
                pipeline_hash: identity.pipeline_hash.clone(),
                models: identity.models.clone(),
                outputs,
                started: record::rfc3339(started),
                finished: record::rfc3339(finished),
                seconds: finished - started,
                host: host_name(),
                stages,
            };
            write_file_atomic(
                &tmp.join("record.json"),
                &serde_json::to_vec_pretty(&rec).map_err(json)?,
            )
            .map_err(transient)?;
            install(&tmp, &final_dir, out, &scene.name, identity, scene).map_err(transient)
        };
        let r = work();
        let _ = std::fs::remove_dir_all(&tmp);
        r.map(|()| SceneOutcome::Done)
    })();
    match result {
        Ok(status) => {
            report.status = status;
            report.output = Some(final_dir.display().to_string());
        }
        Err((e, t)) => {
            report.error = Some(e);
            report.transient = t;
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report
}

/// `dir/report.html`: every stage's section over one quicklook of the scene.
fn write_scene_report(
    pipeline: &Pipeline,
    scene: &SceneInput,
    sections: &[crate::output::report::Section],
    dir: &Path,
) -> Result<(), crate::output::OutputError> {
    use crate::output::report::SceneReport;
    let mut provenance = SceneReport::default_provenance();
    provenance.push(("pipeline".into(), pipeline.path.display().to_string()));
    provenance.push(("pipeline sha256".into(), pipeline.content_hash.clone()));
    let report = SceneReport {
        title: scene.name.clone(),
        scene: scene.raster.clone(),
        open: pipeline.open_options(),
        sections,
        provenance,
        pipeline_text: std::fs::read_to_string(&pipeline.path).ok(),
    };
    crate::output::report::write_report(dir, &report).map(drop)
}

/// `dir/item.json`: a STAC Item of the scene's footprint (projection extension) with every
/// output as an asset, described from the file itself ([`super::stac_assets`]). The datetime
/// (or time range) is the input STAC Item's when the scene came from one, else the scene's
/// acquisition time when its metadata has one (TIFFTAG_DATETIME), else the input file's
/// modification time, so reruns write the same Item. `derived_from` links the input Item (or,
/// for a bare raster, the raster). Scenes in pixel coordinates (no CRS) get no Item.
fn write_item(
    pipeline: &Pipeline,
    scene: &SceneInput,
    stamps: &[InputStamp],
    dir: &Path,
) -> Result<(), String> {
    use super::stac::{scene_item, ItemInput, Link};
    let opened = crate::raster::Scene::open(&scene.raster, &pipeline.open_options())
        .map_err(|e| e.to_string())?;
    if opened.crs_wkt().is_none() {
        return Ok(());
    }
    let from_item = match &scene.stac_item {
        Some(input) => input.times()?,
        None => None,
    };
    let (datetime, time_range) = match from_item {
        Some(times) => times,
        None => {
            let datetime = opened
                .dataset()
                .metadata_item("TIFFTAG_DATETIME", "")
                .and_then(|t| tiff_datetime(&t))
                .or_else(|| {
                    stamps
                        .first()
                        .map(|s| record::rfc3339(s.mtime_ns as f64 / 1e9))
                })
                .unwrap_or_else(|| record::rfc3339(record::now()));
            (Some(datetime), None)
        }
    };
    let mut item = ItemInput::for_scene(&scene.name, opened.info(), String::new());
    item.datetime = datetime;
    item.time_range = time_range;
    let files: Vec<String> = record::output_stamps(dir)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|o| o.path)
        .collect();
    item.assets = match super::stac_assets::SceneGrid::of(opened.info()) {
        Some(grid) => super::stac_assets::describe(dir, &files, &grid)?,
        // A CRS GDAL cannot read: scene_item reports it.
        None => files
            .iter()
            .map(|f| super::stac::asset_for(f.clone(), f.clone()))
            .collect(),
    };
    item.properties.insert(
        "tessera:pipeline".into(),
        serde_json::Value::String(pipeline.name.clone()),
    );
    item.properties.insert(
        "tessera:version".into(),
        serde_json::Value::String(env!("CARGO_PKG_VERSION").into()),
    );
    item.derived_from = Some(match &scene.stac_item {
        Some(input) => input.link(),
        None => {
            let href = match stamps.first() {
                Some(s) => super::inputs::file_url(Path::new(&s.path)),
                None => scene
                    .raster
                    .strip_prefix("/vsicurl/")
                    .unwrap_or(&scene.raster)
                    .to_string(),
            };
            Link {
                href,
                media_type: None,
                title: Some("input raster".into()),
            }
        }
    });
    let value = scene_item(&item).map_err(|e| e.to_string())?;
    let bytes = serde_json::to_vec_pretty(&value).map_err(|e| e.to_string())?;
    write_file_atomic(&dir.join("item.json"), &bytes)
}

/// `YYYY:MM:DD HH:MM:SS` (TIFF) as RFC 3339 UTC.
fn tiff_datetime(t: &str) -> Option<String> {
    let (date, time) = t.trim().split_once(' ')?;
    let d: Vec<&str> = date.split(':').collect();
    let ok =
        d.len() == 3 && d.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())) && time.len() == 8;
    ok.then(|| format!("{}-{}-{}T{time}Z", d[0], d[1], d[2]))
}

/// A path as it appears inside a JSON string.
fn is_complete(dir: &Path, identity: &Identity, scene: &SceneInput) -> bool {
    SceneRecord::read(dir).is_some_and(|r| {
        r.is_current(
            &identity.pipeline_hash,
            &identity.models,
            &scene.raster,
            scene.source.as_deref(),
        )
    })
}

/// Write a small file under a temporary name, then rename it.
fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Move the finished temporary folder into place, replacing an older result.
fn install(
    tmp: &Path,
    final_dir: &Path,
    out: &Path,
    name: &str,
    identity: &Identity,
    scene: &SceneInput,
) -> Result<(), String> {
    let old = if final_dir.exists() {
        let old = side_name(out, name, "old");
        std::fs::rename(final_dir, &old)
            .map_err(|e| format!("{}: cannot replace: {e}", final_dir.display()))?;
        Some(old)
    } else {
        None
    };
    match std::fs::rename(tmp, final_dir) {
        Ok(()) => {
            if let Some(old) = old {
                let _ = std::fs::remove_dir_all(old);
            }
            Ok(())
        }
        // Another run finished the same scene meanwhile: keep its result if it is current.
        Err(_) if is_complete(final_dir, identity, scene) => Ok(()),
        Err(e) => Err(format!(
            "{}: cannot rename into place: {e}",
            final_dir.display()
        )),
    }
}

/// Run the stages into `dir/<stage>`: together off one read pass, or one after the other.
/// Returns each stage's report, in stage order.
fn run_stages(
    pipeline: &Pipeline,
    raster: &str,
    dir: &Path,
    ctx: &JobContext,
) -> Result<Vec<(String, TaskReport)>, (String, bool)> {
    let failed = |name: &str, e: crate::jobs::PipelineError| {
        let message = e.render(crate::options::KeyStyle::File);
        (format!("{name}: {message}"), e.is_transient())
    };
    let mut jobs = pipeline
        .jobs(raster, dir, ctx)
        .map_err(|e| (e.to_string(), false))?;
    let names: Vec<String> = pipeline.stages.iter().map(|s| s.name.clone()).collect();
    let mut reports = Vec::new();
    if !pipeline.shared_pass {
        for (name, job) in names.iter().zip(jobs) {
            let r = job.run().map_err(|e| failed(name, e))?;
            reports.push((name.clone(), r));
        }
        return Ok(reports);
    }
    let (open, threads, queue) = pipeline.shared_read(ctx);
    let (ports, reader) = feed::shared_pass(&names, queue);
    for (job, port) in jobs.iter_mut().zip(ports) {
        job.set_feed(port);
    }
    let (read, results) = std::thread::scope(|s| {
        let handles: Vec<_> = jobs.into_iter().map(|j| s.spawn(move || j.run())).collect();
        let read = reader.run(&open, threads);
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (read, results)
    });
    // The reader's error explains the stages' "reader stopped" errors: report it first.
    read.map_err(|e| {
        let t = e.is_transient();
        (format!("{raster}: {e}"), t)
    })?;
    for (name, r) in names.iter().zip(results) {
        match r {
            Ok(Ok(r)) => reports.push((name.clone(), r)),
            Ok(Err(e)) => return Err(failed(name, e)),
            Err(_) => return Err((format!("{name}: the stage panicked"), false)),
        }
    }
    Ok(reports)
}
