//! Outputs are written under a temporary name in the destination's own directory and renamed
//! into place only when complete. Dropping an uncommitted [`PendingOutput`] removes the
//! temporary files, so an error anywhere leaves nothing partial behind.

use std::fs;
use std::path::{Path, PathBuf};

use super::{OutputError, Result};

/// Prefix of every temporary name tessera writes; a crashed run's leftovers are recognisable.
pub const TEMP_PREFIX: &str = ".tessera-tmp-";

/// A file (or a group of sidecar files such as a Shapefile's) or a directory being written.
#[derive(Debug)]
pub struct PendingOutput {
    target: PathBuf,
    /// Temporary directory in the target's parent directory.
    temp_dir: PathBuf,
    kind: Kind,
    committed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Files named `<stem>.*` inside `temp_dir` move next to the target.
    Files,
    /// `temp_dir` itself becomes the target directory.
    Dir,
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> OutputError {
    OutputError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Refuse an output `target` that is the input `scene` or a folder holding it (replacing it
/// would destroy the input), comparing canonical paths. Targets or scenes that do not exist
/// locally (not yet written; `/vsi...` paths) cannot be the same.
///
/// # Errors
/// [`OutputError::ReplacesInput`].
pub fn refuse_input(target: &Path, scene: &str) -> Result<()> {
    let (Ok(t), Ok(s)) = (fs::canonicalize(target), fs::canonicalize(scene)) else {
        return Ok(());
    };
    if s.starts_with(&t) {
        return Err(OutputError::ReplacesInput {
            path: target.display().to_string(),
            input: scene.to_string(),
        });
    }
    Ok(())
}

impl PendingOutput {
    /// Start writing the file `target` (plus any sidecars sharing its stem).
    ///
    /// # Errors
    /// The target exists and `overwrite` is false, or its directory is missing or unwritable.
    pub fn file(target: &Path, overwrite: bool) -> Result<PendingOutput> {
        Self::start(target, overwrite, Kind::Files)
    }

    /// Start writing the directory `target`.
    ///
    /// # Errors
    /// As for [`PendingOutput::file`].
    pub fn dir(target: &Path, overwrite: bool) -> Result<PendingOutput> {
        Self::start(target, overwrite, Kind::Dir)
    }

    fn start(target: &Path, overwrite: bool, kind: Kind) -> Result<PendingOutput> {
        if target.exists() && !overwrite {
            return Err(OutputError::Exists {
                path: target.display().to_string(),
            });
        }
        let name = target
            .file_name()
            .ok_or_else(|| write_err(target, "not a file name"))?
            .to_string_lossy()
            .into_owned();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(write_err(target, "directory does not exist"));
        }
        let temp_dir = parent.join(format!("{TEMP_PREFIX}{}-{name}", std::process::id()));
        if temp_dir.exists() {
            fs::remove_dir_all(&temp_dir).map_err(|e| write_err(target, e))?;
        }
        fs::create_dir(&temp_dir).map_err(|e| write_err(target, e))?;
        Ok(PendingOutput {
            target: target.to_path_buf(),
            temp_dir,
            kind,
            committed: false,
        })
    }

    /// Where to write: the file path inside the temporary directory, or the temporary
    /// directory itself.
    pub fn path(&self) -> PathBuf {
        match self.kind {
            Kind::Files => self
                .temp_dir
                .join(self.target.file_name().unwrap_or_default()),
            Kind::Dir => self.temp_dir.clone(),
        }
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Move the finished output into place.
    ///
    /// # Errors
    /// A rename failed (the temporary files are then removed).
    pub fn commit(mut self) -> Result<()> {
        match self.kind {
            Kind::Dir => {
                if self.target.exists() {
                    let old = self.temp_dir.with_extension("old");
                    fs::rename(&self.target, &old).map_err(|e| write_err(&self.target, e))?;
                    fs::rename(&self.temp_dir, &self.target)
                        .map_err(|e| write_err(&self.target, e))?;
                    fs::remove_dir_all(&old).map_err(|e| write_err(&self.target, e))?;
                } else {
                    fs::rename(&self.temp_dir, &self.target)
                        .map_err(|e| write_err(&self.target, e))?;
                }
            }
            Kind::Files => {
                let parent = self
                    .temp_dir
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                let main_name = self.target.file_name().unwrap_or_default().to_os_string();
                let mut entries: Vec<_> = fs::read_dir(&self.temp_dir)
                    .map_err(|e| write_err(&self.target, e))?
                    .filter_map(|e| e.ok().map(|e| e.file_name()))
                    .collect();
                // The main file last, so a reader never sees it without its sidecars.
                entries.sort_by_key(|n| *n == main_name);
                for name in entries {
                    fs::rename(self.temp_dir.join(&name), parent.join(&name))
                        .map_err(|e| write_err(&self.target, e))?;
                }
                fs::remove_dir(&self.temp_dir).map_err(|e| write_err(&self.target, e))?;
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.temp_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_output_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out.gpkg");
        {
            let p = PendingOutput::file(&target, false).expect("start");
            fs::write(p.path(), b"partial").expect("write");
        }
        assert_eq!(fs::read_dir(dir.path()).expect("read").count(), 0);
    }

    #[test]
    fn commit_moves_file_and_sidecars() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("tiles.shp");
        let p = PendingOutput::file(&target, false).expect("start");
        fs::write(p.path(), b"shp").expect("write");
        fs::write(p.path().with_extension("dbf"), b"dbf").expect("write");
        p.commit().expect("commit");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        names.sort();
        assert_eq!(names, ["tiles.dbf", "tiles.shp"]);
    }

    #[test]
    fn existing_target_needs_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("chips");
        fs::create_dir(&target).expect("mkdir");
        fs::write(target.join("old.tif"), b"old").expect("write");
        assert!(matches!(
            PendingOutput::dir(&target, false),
            Err(OutputError::Exists { .. })
        ));
        let p = PendingOutput::dir(&target, true).expect("start");
        fs::write(p.path().join("new.tif"), b"new").expect("write");
        p.commit().expect("commit");
        assert!(target.join("new.tif").exists() && !target.join("old.tif").exists());
        assert_eq!(fs::read_dir(dir.path()).expect("read").count(), 1);
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("nope").join("out.gpkg");
        assert!(matches!(
            PendingOutput::file(&target, false),
            Err(OutputError::Write { .. })
        ));
    }
}
