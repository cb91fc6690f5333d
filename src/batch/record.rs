//! Per-scene records (`record.json` in each scene's output folder): what was read (size, mtime,
//! sha256 of the inputs), with what (pipeline and model hashes, tessera's version) and what was
//! written (size and sha256 of every output). A rerun skips a scene whose record matches.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Files above this size are fingerprinted by size, mtime and their first and last MiB rather
/// than hashed whole (model weights of many GB would otherwise be read at every run).
const FULL_HASH_LIMIT: u64 = 64 << 20;

/// An input file as it was when the scene was processed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputStamp {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub sha256: String,
}

/// A model as it was when the scene was processed. Written as what identifies it, the
/// stage, the package's name (manifest `name`) and its content hash, never its path (a path
/// as typed depends on the working folder, so the same run would give other bytes).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ModelStamp {
    pub stage: String,
    /// As given (for messages); not written.
    #[serde(default)]
    pub path: String,
    pub hash: String,
}

impl Serialize for ModelStamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Written<'a> {
            stage: &'a str,
            name: String,
            hash: &'a str,
        }
        Written {
            stage: &self.stage,
            name: self.name(),
            hash: &self.hash,
        }
        .serialize(s)
    }
}

impl ModelStamp {
    /// The model's package name: the manifest's `name`, or (a bare ONNX file with Deepness
    /// metadata, named as [`crate::models::deepness`] names it) the file's stem.
    pub fn name(&self) -> String {
        package_name(Path::new(&self.path))
    }
}

/// The package name of the model at `path` (see [`ModelStamp::name`]).
pub fn package_name(path: &Path) -> String {
    let stem = |p: &Path| {
        p.file_stem()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if path.is_dir() {
        if let Ok(text) = std::fs::read_to_string(path.join("model.toml")) {
            if let Ok(m) = crate::models::Manifest::parse(&text) {
                return m.name;
            }
        }
        let onnx: Vec<PathBuf> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
            .collect();
        if let [one] = onnx.as_slice() {
            return stem(one);
        }
        return absolute(path)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    stem(path)
}

/// An output file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputStamp {
    /// Relative to the scene's folder.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `record.json`. Written without the working folder in it: the raster (when local), the
/// pipeline and the stages' scenes and outputs as canonical paths, models by name and hash
/// ([`ModelStamp`]), so the same run from another folder writes the same bytes (but for the
/// times, `host` and the stages' timings and memory).
#[derive(Clone, Debug, Deserialize)]
pub struct SceneRecord {
    pub tool: String,
    pub version: String,
    pub scene: String,
    pub raster: String,
    pub inputs: Vec<InputStamp>,
    pub pipeline: String,
    pub pipeline_hash: String,
    pub models: Vec<ModelStamp>,
    pub outputs: Vec<OutputStamp>,
    pub started: String,
    pub finished: String,
    pub seconds: f64,
    pub host: String,
    /// Each stage's report.
    pub stages: serde_json::Map<String, serde_json::Value>,
}

impl Serialize for SceneRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Written<'a> {
            tool: &'a str,
            version: &'a str,
            scene: &'a str,
            raster: String,
            inputs: &'a [InputStamp],
            pipeline: String,
            pipeline_hash: &'a str,
            models: &'a [ModelStamp],
            outputs: &'a [OutputStamp],
            started: &'a str,
            finished: &'a str,
            seconds: f64,
            host: &'a str,
            stages: serde_json::Map<String, serde_json::Value>,
        }
        let raster = if Path::new(&self.raster).exists() {
            stable_path(Path::new(&self.raster))
        } else {
            self.raster.clone()
        };
        let stages = self
            .stages
            .iter()
            .map(|(name, report)| {
                let model = self.models.iter().find(|m| &m.stage == name);
                (name.clone(), stable_report(report, model))
            })
            .collect();
        Written {
            tool: &self.tool,
            version: &self.version,
            scene: &self.scene,
            raster,
            inputs: &self.inputs,
            pipeline: stable_path(Path::new(&self.pipeline)),
            pipeline_hash: &self.pipeline_hash,
            models: &self.models,
            outputs: &self.outputs,
            started: &self.started,
            finished: &self.finished,
            seconds: self.seconds,
            host: &self.host,
            stages,
        }
        .serialize(s)
    }
}

/// A stage's report as written in a record: its `model` the package's name (the stamp's,
/// with the hash beside it in `models`), its `scene` (when a local file) and `outputs`
/// canonical paths.
fn stable_report(report: &serde_json::Value, model: Option<&ModelStamp>) -> serde_json::Value {
    use serde_json::Value;
    let mut r = report.clone();
    let Some(obj) = r.as_object_mut() else {
        return r;
    };
    if let (Some(m), Some(v)) = (model, obj.get_mut("model")) {
        *v = Value::String(m.name());
    }
    if let Some(Value::String(scene)) = obj.get_mut("scene") {
        if Path::new(scene.as_str()).exists() {
            *scene = stable_path(Path::new(scene.as_str()));
        }
    }
    if let Some(Value::Array(outputs)) = obj.get_mut("outputs") {
        for o in outputs {
            if let Value::String(p) = o {
                *p = stable_path(Path::new(p.as_str()));
            }
        }
    }
    r
}

/// `path` made canonical where it exists: its longest existing ancestor resolved, the rest
/// appended (a path that does not exist yet, such as an output about to be moved there).
pub fn stable_path(path: &Path) -> String {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        if let Ok(c) = std::fs::canonicalize(if at.as_os_str().is_empty() {
            Path::new(".")
        } else {
            at
        }) {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out.display().to_string();
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return path.display().to_string(),
        }
    }
}

impl SceneRecord {
    /// Read `dir/record.json`, if there is a readable one.
    pub fn read(dir: &Path) -> Option<SceneRecord> {
        let text = std::fs::read_to_string(dir.join("record.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Whether this record stands for the same work: same pipeline and models, and inputs
    /// unchanged (same size and mtime, or same content).
    /// `source` is the scene's local file (its path may be spelled differently from the
    /// stamp's); remote scenes compare the raster path.
    pub fn is_current(
        &self,
        pipeline_hash: &str,
        models: &[ModelStamp],
        raster: &str,
        source: Option<&Path>,
    ) -> bool {
        let same_models = self.models.len() == models.len()
            && self
                .models
                .iter()
                .zip(models)
                .all(|(a, b)| a.stage == b.stage && a.hash == b.hash);
        let same_input = match source {
            Some(src) => {
                let abs = absolute(src);
                self.inputs.iter().any(|s| Path::new(&s.path) == abs)
            }
            None => self.raster == raster,
        };
        self.pipeline_hash == pipeline_hash
            && same_models
            && same_input
            && self.inputs.iter().all(InputStamp::unchanged)
    }
}

impl InputStamp {
    /// Stamp a file (sha256 of its whole content).
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn of(path: &Path) -> std::io::Result<InputStamp> {
        let (size, mtime_ns) = stat(path)?;
        Ok(InputStamp {
            path: absolute(path).display().to_string(),
            size,
            mtime_ns,
            sha256: sha256_file(path)?,
        })
    }

    /// The file is still what was stamped: same size and mtime, or (touched or copied) the
    /// same content.
    pub fn unchanged(&self) -> bool {
        let path = Path::new(&self.path);
        match stat(path) {
            Ok((size, mtime)) if size == self.size && mtime == self.mtime_ns => true,
            Ok((size, _)) if size == self.size => sha256_file(path).is_ok_and(|h| h == self.sha256),
            _ => false,
        }
    }
}

/// The canonical absolute path (the path itself when it cannot be resolved).
pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Size and modification time (ns since the epoch).
///
/// # Errors
/// The file cannot be stat'ed.
pub fn stat(path: &Path) -> std::io::Result<(u64, i64)> {
    let m = std::fs::metadata(path)?;
    let mtime = m
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    Ok((m.len(), mtime))
}

/// sha256 of a whole file, hex.
///
/// # Errors
/// The file cannot be read.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Fingerprint of a model file or package folder: every file's relative name and content
/// (files above 64 MiB: size, mtime and first and last MiB).
///
/// # Errors
/// A file cannot be read.
pub fn model_hash(path: &Path) -> std::io::Result<String> {
    let mut files = Vec::new();
    if path.is_dir() {
        collect(path, &mut files)?;
    } else {
        files.push(path.to_path_buf());
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let rel = f.strip_prefix(path).unwrap_or(&f);
        h.update(rel.display().to_string().as_bytes());
        let (size, mtime) = stat(&f)?;
        if size <= FULL_HASH_LIMIT {
            h.update(sha256_file(&f)?.as_bytes());
        } else {
            use std::io::{Seek, SeekFrom};
            h.update(size.to_le_bytes());
            h.update(mtime.to_le_bytes());
            let mut file = std::fs::File::open(&f)?;
            let mut buf = vec![0u8; 1 << 20];
            file.read_exact(&mut buf)?;
            h.update(&buf);
            file.seek(SeekFrom::End(-(1 << 20)))?;
            file.read_exact(&mut buf)?;
            h.update(&buf);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Every file under `dir` with its size and sha256, relative paths, sorted.
///
/// # Errors
/// A file cannot be read.
pub fn output_stamps(dir: &Path) -> std::io::Result<Vec<OutputStamp>> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    files
        .iter()
        .map(|f| {
            Ok(OutputStamp {
                path: f.strip_prefix(dir).unwrap_or(f).display().to_string(),
                size: std::fs::metadata(f)?.len(),
                sha256: sha256_file(f)?,
            })
        })
        .collect()
}

/// RFC 3339 UTC time (`2026-11-27T05:29:02Z`) of seconds since the epoch.
pub fn rfc3339(seconds: f64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(seconds.max(0.0));
    super::stac::rfc3339_utc(t)
}

/// Seconds since the epoch, now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        // 2000-02-29 12:34:56 UTC = 951827696 (leap day).
        assert_eq!(rfc3339(951_827_696.0), "2000-02-29T12:34:56Z");
        // 2026-11-27 05:29:02 UTC = 1795757342.
        assert_eq!(rfc3339(1_795_757_342.5), "2026-11-27T05:29:02Z");
    }

    #[test]
    fn stamps_follow_content_not_touches() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("a.bin");
        std::fs::write(&f, b"hello").expect("write");
        let s = InputStamp::of(&f).expect("stamp");
        assert!(s.unchanged());
        // Same content, new mtime: unchanged.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .and_then(|h| h.set_modified(later))
            .expect("touch");
        assert!(s.unchanged());
        std::fs::write(&f, b"hellp").expect("write");
        assert!(!s.unchanged(), "same size, new content");
        std::fs::write(&f, b"hello!").expect("write");
        assert!(!s.unchanged(), "new size");
    }

    #[test]
    fn model_hash_follows_every_file() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("model.toml"), b"a").expect("write");
        std::fs::write(dir.path().join("m.onnx"), b"b").expect("write");
        let h1 = model_hash(dir.path()).expect("hash");
        assert_eq!(h1, model_hash(dir.path()).expect("hash"));
        std::fs::write(dir.path().join("m.onnx"), b"c").expect("write");
        assert_ne!(h1, model_hash(dir.path()).expect("hash"));
    }
}
