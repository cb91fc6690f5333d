//! Scheduled ingestion: `tessera ingest DIR` (one pass, for cron or a systemd timer) and
//! `tessera watch DIR` (passes until stopped). New or changed scenes of a folder are processed
//! once, with their status, attempts, timings and errors in a state database
//! ([`super::state`]: a SQLite file, or PostgreSQL for instances on several hosts). A file still being written (modified within the settle time, or its size
//! changing during the scan) waits for a later pass. Transient failures are retried with
//! exponential backoff up to a limit; permanent ones are not retried until the file changes.
//! Several instances may share one database: a scene is claimed in a transaction, so it is
//! processed by exactly one of them.
//!
//! Scenes may also come from a STAC API or a static STAC catalog ([`super::stac_source`]):
//! each pass lists the Items, records them keyed `stac:<collection>/<id>` with their version
//! (`updated`, else a hash of the Item), and processes those new or changed since the last
//! pass, reading the chosen asset through GDAL. Items that cannot be listed are reported,
//! one line each, and the pass goes on with the others.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use super::inputs::{safe_name, short_hash, walk, SceneInput, Shard};
use super::record::{self, now};
use super::run::{process_scene, remove_stale_temporaries, Identity, SceneOutcome, SceneReport};
use super::spec::{JobContext, Pipeline};
use super::stac_source::{RemoteItem, StacSource};
use super::state::{
    Claim, Fingerprint, JournalMode, Owner, RetryPolicy, SceneRow, StateLocation, StateStore,
};
use super::BatchError;

/// What `tessera ingest` and `tessera watch` do.
#[derive(Debug)]
pub struct IngestJob {
    /// The folder scenes arrive in (searched recursively; hidden entries skipped); unused when
    /// `stac` is given.
    pub dir: PathBuf,
    /// Scenes are the Items of this STAC API or catalog instead of the folder's files.
    pub stac: Option<StacSource>,
    /// STAC Items: the asset to read, by key or role (default: the first GeoTIFF data asset).
    pub asset: Option<String>,
    pub pipeline: Pipeline,
    pub out: PathBuf,
    /// The state: a SQLite file, or a PostgreSQL database for instances on several hosts.
    pub state: StateLocation,
    /// File-name patterns of scenes.
    pub patterns: Vec<glob::Pattern>,
    /// A file is taken once it has not been modified for this long.
    pub settle_seconds: f64,
    pub retry: RetryPolicy,
    /// A claim older than this is taken over (its instance is presumed dead): by another host
    /// for a SQLite state, by any instance for PostgreSQL.
    pub lease_seconds: f64,
    /// Instances on several hosts share the database (rollback journal instead of WAL).
    pub shared_fs: bool,
    pub jobs: usize,
    pub shard: Option<Shard>,
    pub ctx: JobContext,
}

/// One pass.
#[derive(Debug, Default, Serialize)]
pub struct IngestReport {
    pub state: String,
    /// Scene files (or STAC Items) found.
    pub found: usize,
    /// What a STAC source could not list (a child catalog, a page or an Item that cannot be
    /// read, a malformed Item): one line each, its URL and the cause.
    pub problems: Vec<String>,
    /// Files still being written (taken by a later pass), including files that changed while
    /// they were processed (a failure then is not recorded).
    pub waiting: Vec<String>,
    /// Scenes this pass processed (or found complete), with their status.
    pub processed: Vec<SceneReport>,
    pub done: usize,
    pub failed: usize,
    pub seconds: f64,
}

fn state_err(e: super::state::StateError) -> BatchError {
    BatchError::State(e)
}

impl IngestJob {
    /// The default state database of an output folder.
    pub fn default_state(out: &Path) -> StateLocation {
        StateLocation::Sqlite(out.join(".tessera-state.sqlite"))
    }

    fn open_state(&self) -> Result<Box<dyn StateStore>, BatchError> {
        let mode = if self.shared_fs {
            JournalMode::Delete
        } else {
            JournalMode::Wal
        };
        self.state.open(mode).map_err(state_err)
    }

    /// The watched folder's canonical path (what scene keys and names are relative to).
    fn root(&self) -> PathBuf {
        std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone())
    }

    /// The output folder name of a scene file (its canonical path): its path below the
    /// watched folder, without the extension, made safe, and unique: a name that would lose
    /// information (a file in a subfolder, characters made safe, an extension other than
    /// `.tif`) gets a short hash of the relative path, so `a/b.tif` (`a_b-1f2e3d4c`) and
    /// `a_b.tif` (`a_b`) never share a folder. Passes see scenes one at a time, so unlike
    /// `run` (which adds the hash only to names shared within the batch) the rule depends on
    /// the path alone.
    fn scene_name(&self, path: &Path) -> String {
        ingest_name(&self.root(), path)
    }

    /// Scene files below the folder, with their fingerprints, split into stable and waiting.
    ///
    /// Scenes are keyed (in the state database and in reports) by their canonical path, so the
    /// folder given as `in`, `./in` or `/abs/in` finds the same scenes, and a symbolic link to
    /// a file is keyed by the file it points to (a link and its target are one scene, and a
    /// link re-pointed to another file is a new scene).
    fn scan(&self, now: f64) -> (Vec<(String, Fingerprint)>, Vec<String>) {
        let mut found = Vec::new();
        walk(&self.dir, &mut found);
        found.retain(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| self.patterns.iter().any(|pat| pat.matches(&n)))
        });
        // Patterns match the name as found (a link's own name); keys are canonical.
        let mut files: Vec<PathBuf> = found
            .iter()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .filter(|p| self.shard.map_or(true, |s| s.takes(&self.scene_name(p))))
            .collect();
        files.sort();
        files.dedup();
        let first: Vec<Option<(u64, i64)>> = files.iter().map(|p| record::stat(p).ok()).collect();
        let mut stable = Vec::new();
        let mut waiting = Vec::new();
        for (p, before) in files.iter().zip(first) {
            let path = p.display().to_string();
            // Stat again after the whole scan: a size or time that moved means a writer.
            match (before, record::stat(p).ok()) {
                (Some(a), Some(b)) if a == b && now - b.1 as f64 / 1e9 >= self.settle_seconds => {
                    stable.push((
                        path,
                        Fingerprint {
                            size: b.0,
                            mtime_ns: b.1,
                        },
                    ));
                }
                _ => waiting.push(path),
            }
        }
        (stable, waiting)
    }

    /// One pass: scan, record what is new or changed, then claim and process scenes until
    /// none is eligible (or `stop` is set).
    ///
    /// # Errors
    /// The state database or output folder cannot be used; unreadable models. Scene failures
    /// are recorded, not errors.
    pub fn run_once(
        &self,
        identity: &Identity,
        stop: &AtomicBool,
    ) -> Result<IngestReport, BatchError> {
        let start = Instant::now();
        // A source that cannot be listed leaves nothing behind.
        let (stable, waiting, items, problems) = match &self.stac {
            None => {
                let (stable, waiting) = self.scan(now());
                (stable, waiting, HashMap::new(), Vec::new())
            }
            Some(source) => self.list_items(source)?,
        };
        // A database is reached before anything is written; a SQLite file may live in `out`.
        let early = match &self.state {
            StateLocation::Sqlite(_) => None,
            _ => Some(self.open_state()?),
        };
        std::fs::create_dir_all(&self.out).map_err(|e| BatchError::Output {
            path: self.out.display().to_string(),
            reason: format!("cannot create the output folder: {e}"),
        })?;
        remove_stale_temporaries(&self.out);
        let db = match early {
            Some(db) => db,
            None => self.open_state()?,
        };
        for p in &problems {
            tracing::warn!("{p}");
        }
        db.observe_all(&stable, now()).map_err(state_err)?;
        let reports: Mutex<Vec<SceneReport>> = Mutex::new(Vec::new());
        let deferred: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let failure: Mutex<Option<BatchError>> = Mutex::new(None);
        let ctx = JobContext {
            jobs: self.jobs.max(1),
            ..self.ctx.clone()
        };
        std::thread::scope(|s| {
            for _ in 0..ctx.jobs {
                s.spawn(|| {
                    if let Err(e) = self.worker(identity, &ctx, stop, &items, &reports, &deferred) {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().ok().flatten() {
            return Err(e);
        }
        let mut processed = reports.into_inner().unwrap_or_default();
        processed.sort_by(|a, b| a.name.cmp(&b.name));
        let failed = processed
            .iter()
            .filter(|r| r.status == SceneOutcome::Failed)
            .count();
        let found = stable.len() + waiting.len();
        let mut waiting = waiting;
        // Files that changed while processed wait like files still being written.
        waiting.extend(deferred.into_inner().unwrap_or_default());
        waiting.sort();
        waiting.dedup();
        Ok(IngestReport {
            state: self.state.to_string(),
            found,
            problems,
            waiting,
            done: processed.len() - failed,
            failed,
            processed,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The Items of a STAC source (of this shard), as scan results keyed for the state.
    #[allow(clippy::type_complexity)]
    fn list_items(
        &self,
        source: &StacSource,
    ) -> Result<
        (
            Vec<(String, Fingerprint)>,
            Vec<String>,
            HashMap<String, RemoteItem>,
            Vec<String>,
        ),
        BatchError,
    > {
        let listing = source
            .list()
            .map_err(|e| BatchError::Source(e.to_string()))?;
        let mut stable = Vec::new();
        let mut items = HashMap::new();
        for item in listing.items {
            if self.shard.is_some_and(|s| !s.takes(&stac_name(&item))) {
                continue;
            }
            stable.push((item.key.clone(), item.fingerprint));
            items.insert(item.key.clone(), item);
        }
        stable.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((stable, Vec::new(), items, listing.problems))
    }

    /// Claim and process scenes until none is eligible.
    fn worker(
        &self,
        identity: &Identity,
        ctx: &JobContext,
        stop: &AtomicBool,
        items: &HashMap<String, RemoteItem>,
        reports: &Mutex<Vec<SceneReport>>,
        deferred: &Mutex<Vec<String>>,
    ) -> Result<(), BatchError> {
        let db = self.open_state()?;
        // The renewals of a running scene's claim go through a connection of their own.
        let renewer = Mutex::new(self.open_state()?);
        let owner = Owner::current();
        let mut changed: HashSet<String> = HashSet::new();
        while !stop.load(Ordering::SeqCst) {
            let Some(claim) = db
                .claim_next(&owner, now(), self.lease_seconds)
                .map_err(state_err)?
            else {
                break;
            };
            if claim.attempt > self.retry.max_attempts {
                // Claimed again after crashes (each crash used an attempt): give up.
                db.finish_err(
                    &claim,
                    &owner,
                    now(),
                    0.0,
                    &format!("gave up after {} interrupted attempts", claim.attempt - 1),
                    false,
                    &self.retry,
                )
                .map_err(state_err)?;
                continue;
            }
            if let Some(source) = &self.stac {
                // An Item of this pass's listing, as listed; anything else (a scene of another
                // source sharing the state, an Item no longer listed, a version another
                // instance listed) waits for a pass that lists it.
                let Some(item) = items
                    .get(&claim.path)
                    .filter(|i| i.fingerprint == claim.fingerprint)
                else {
                    let note = format!(
                        "{}: not listed by {} in this pass; left for a pass that lists it",
                        claim.path,
                        source.url()
                    );
                    match db.defer(&claim, &owner, now() + self.settle_seconds.max(10.0), &note) {
                        Err(super::state::StateError::ClaimLost { .. }) => {}
                        r => r.map_err(state_err)?,
                    }
                    continue;
                };
                // Through the same seam as Item files: asset choice, relative hrefs against the
                // Item's URL (a path for catalogs on disk), the Item kept for the output Item.
                let mut scene = SceneInput::from_item_json(
                    &super::stac_source::shown(&item.url),
                    item.value.clone(),
                    self.asset.as_deref(),
                );
                scene.name = stac_name(item);
                let report = self.process_claimed(&renewer, identity, ctx, &claim, &owner, &scene);
                self.record(db.as_ref(), &claim, &owner, &scene, &report)?;
                if let Ok(mut all) = reports.lock() {
                    all.push(report);
                }
                continue;
            }
            let path = PathBuf::from(&claim.path);
            // The file must still be what was observed; otherwise a later pass takes it.
            let current = record::stat(&path)
                .ok()
                .map(|(size, mtime_ns)| Fingerprint { size, mtime_ns });
            if current != Some(claim.fingerprint) {
                db.release(&claim, &owner).map_err(state_err)?;
                if let Some(fp) = current {
                    db.observe(&claim.path, fp, now()).map_err(state_err)?;
                }
                if !changed.insert(claim.path.clone()) {
                    break;
                }
                continue;
            }
            let scene = SceneInput {
                name: self.scene_name(&path),
                raster: claim.path.clone(),
                source: Some(path.clone()),
                ..SceneInput::default()
            };
            let report = self.process_claimed(&renewer, identity, ctx, &claim, &owner, &scene);
            let finished = now();
            if report.error.is_some() {
                // A file whose size or time moved since the scan was still being written: its
                // failure says nothing about the finished file, so it waits for a later pass.
                let after = record::stat(&path)
                    .ok()
                    .map(|(size, mtime_ns)| Fingerprint { size, mtime_ns });
                if after != Some(claim.fingerprint) {
                    let note = format!(
                        "{}: changed while being processed (still being written?); taken again by a later pass",
                        claim.path
                    );
                    tracing::info!(scene = %scene.name, "{note}");
                    match db.defer(
                        &claim,
                        &owner,
                        finished + self.settle_seconds.max(10.0),
                        &note,
                    ) {
                        Err(super::state::StateError::ClaimLost { .. }) => {}
                        r => r.map_err(state_err)?,
                    }
                    if let Ok(mut w) = deferred.lock() {
                        w.push(claim.path.clone());
                    }
                    continue;
                }
            }
            self.record(db.as_ref(), &claim, &owner, &scene, &report)?;
            if let Ok(mut all) = reports.lock() {
                all.push(report);
            }
        }
        Ok(())
    }

    /// Process a claimed scene, renewing the claim while it runs (well within the lease, so
    /// instances on other hosts do not take a long scene over). A STAC Item is processed even
    /// when its output folder looks complete: the state, not the folder, says what is new.
    fn process_claimed(
        &self,
        renewer: &Mutex<Box<dyn StateStore>>,
        identity: &Identity,
        ctx: &JobContext,
        claim: &Claim,
        owner: &Owner,
        scene: &SceneInput,
    ) -> SceneReport {
        tracing::info!(scene = %scene.name, attempt = claim.attempt, "ingesting");
        let force = scene.stac_item.is_some();
        let running = AtomicBool::new(true);
        std::thread::scope(|s| {
            s.spawn(|| self.keep_claim(renewer, claim, owner, &running));
            let report = process_scene(&self.pipeline, identity, scene, &self.out, force, ctx);
            running.store(false, Ordering::SeqCst);
            report
        })
    }

    /// Record a processed claim's outcome in the state.
    fn record(
        &self,
        db: &dyn StateStore,
        claim: &Claim,
        owner: &Owner,
        scene: &SceneInput,
        report: &SceneReport,
    ) -> Result<(), BatchError> {
        let finished = now();
        let recorded = match &report.error {
            None => db.finish_ok(
                claim,
                owner,
                finished,
                report.seconds,
                report.output.as_deref().unwrap_or(""),
            ),
            Some(e) => db
                .finish_err(
                    claim,
                    owner,
                    finished,
                    report.seconds,
                    e,
                    report.transient,
                    &self.retry,
                )
                .map(|status| {
                    tracing::warn!(scene = %scene.name, error = %e, ?status, "scene failed");
                }),
        };
        match recorded {
            // Taken over meanwhile (this host looked dead to another one): the other
            // instance records the scene; the output folder is complete either way.
            Err(super::state::StateError::ClaimLost { .. }) => {
                tracing::warn!(scene = %scene.name, "claim taken over by another instance");
                Ok(())
            }
            r => r.map_err(state_err),
        }
    }

    /// Renew `claim` every quarter lease (1 s to 5 min) until `running` is cleared.
    fn keep_claim(
        &self,
        db: &Mutex<Box<dyn StateStore>>,
        claim: &Claim,
        owner: &Owner,
        running: &AtomicBool,
    ) {
        let every = (self.lease_seconds / 4.0).clamp(1.0, 300.0);
        let Ok(db) = db.lock() else {
            return;
        };
        let mut last = Instant::now();
        while running.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if last.elapsed().as_secs_f64() >= every {
                last = Instant::now();
                if let Err(e) = db.renew(claim, owner, now()) {
                    tracing::warn!(path = %claim.path, "cannot renew the claim: {e}");
                }
            }
        }
    }

    /// Passes every `interval` seconds until `stop` is set (SIGINT/SIGTERM: the scene in
    /// progress finishes first). A STAC source that cannot be listed is a warning line, and
    /// the next pass tries again.
    ///
    /// # Errors
    /// As [`IngestJob::run_once`].
    pub fn watch(
        &self,
        identity: &Identity,
        interval: f64,
        stop: &AtomicBool,
        mut on_pass: impl FnMut(&IngestReport),
    ) -> Result<(), BatchError> {
        while !stop.load(Ordering::SeqCst) {
            match self.run_once(identity, stop) {
                Ok(report) => on_pass(&report),
                // A STAC API or catalog out of reach now may answer by the next pass.
                Err(BatchError::Source(e)) => {
                    eprintln!("tessera: warning: {e}; trying again in {interval} s");
                }
                Err(e) => return Err(e),
            }
            let until = Instant::now() + std::time::Duration::from_secs_f64(interval.max(0.1));
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

/// The output folder name of a STAC Item: `<collection>.<id>` (`<id>` without a collection),
/// made safe; a name that had to be changed gets a short hash of the Item's key, so names of
/// distinct Items never collide (ids are unique within a collection only: Sentinel-2 L1C and
/// L2A Items of one scene share theirs).
fn stac_name(item: &RemoteItem) -> String {
    let plain = match &item.collection {
        Some(c) => format!("{c}.{}", item.id),
        None => item.id.clone(),
    };
    let name = safe_name(&plain);
    let dotted = item.collection.as_ref().is_some_and(|c| c.contains('.'))
        || (item.collection.is_none() && item.id.contains('.'));
    if name == plain && !dotted {
        name
    } else {
        format!("{name}-{}", short_hash(&item.key))
    }
}

/// See [`IngestJob::scene_name`].
fn ingest_name(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let rel_text = rel.display().to_string();
    let stem = rel.with_extension("").display().to_string();
    let name = safe_name(&stem);
    let single = rel.components().count() == 1;
    let tif = rel.extension().is_some_and(|e| e == "tif");
    if single && tif && name == stem {
        name
    } else {
        format!("{name}-{}", short_hash(&rel_text))
    }
}

/// The rows of a state database and a count per status (`tessera ingest --status`).
///
/// # Errors
/// The database cannot be opened.
pub fn status(
    state: &StateLocation,
) -> Result<(Vec<SceneRow>, BTreeMap<String, usize>), BatchError> {
    if !state.exists() {
        return Err(BatchError::Output {
            path: state.to_string(),
            reason: "no state database here (nothing was ingested into this folder yet)".into(),
        });
    }
    let db = state.open(JournalMode::Wal).map_err(state_err)?;
    let rows = db.list().map_err(state_err)?;
    let mut counts = BTreeMap::new();
    for r in &rows {
        *counts.entry(r.status.to_string()).or_default() += 1;
    }
    Ok((rows, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_names_never_collide() {
        let root = Path::new("/in");
        let name = |p: &str| ingest_name(root, &root.join(p));
        assert_eq!(name("scene00.tif"), "scene00");
        let paths = [
            "a/b.tif",
            "a_b.tif",
            "a b.tif",
            "a_b.tiff",
            "a_b.TIF",
            "a/b.tiff",
            "a.b.tif",
            "a/b/c.tif",
            "a_b_c.tif",
            "a/b_c.tif",
        ];
        let mut names: Vec<String> = paths.iter().map(|p| name(p)).collect();
        assert_eq!(names[1], "a_b");
        assert!(names[0].starts_with("a_b-"), "{names:?}");
        names.sort();
        names.dedup();
        assert_eq!(names.len(), paths.len(), "{names:?}");
        // Stable.
        assert_eq!(name("a/b.tif"), name("a/b.tif"));
    }
}
