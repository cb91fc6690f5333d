//! Batch inputs: files, directories, globs, text files of paths (`@list.txt`) and STAC Item
//! JSON files, expanded into scenes with unique, stable output names; and shards, a
//! deterministic share of the scenes for one task of a Slurm array or Kubernetes Indexed Job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::BatchError;

/// File extensions taken from directories.
const RASTER_EXTENSIONS: [&str; 6] = ["tif", "tiff", "jp2", "img", "vrt", "ntf"];

/// The STAC Item a scene was made from, as read: where it is and its JSON. The scene's own
/// Item takes `datetime`, `start_datetime`/`end_datetime` and a `derived_from` link from it
/// (`super::stac`), whichever way the Item came (a local file, a STAC API, a static catalog).
#[derive(Clone, Debug, Serialize)]
pub struct InputItem {
    /// Where the Item is: a local path (as given) or an `http(s)://` URL.
    pub href: String,
    /// The Item JSON (not serialized in reports).
    #[serde(skip)]
    pub json: serde_json::Value,
}

impl InputItem {
    /// `href` as a URL for a link: `http(s)://` URLs as they are, local paths as absolute
    /// `file://` URLs (made absolute against the current folder, percent-encoded).
    pub fn link_href(&self) -> String {
        if self.href.contains("://") {
            return self.href.clone();
        }
        let path = Path::new(&self.href);
        let abs = std::fs::canonicalize(path).unwrap_or_else(|_| {
            std::env::current_dir()
                .map(|d| d.join(path))
                .unwrap_or_else(|_| path.to_path_buf())
        });
        file_url(&abs)
    }
}

/// An absolute path as a `file://` URL, with every byte outside RFC 3986's unreserved set
/// and '/' percent-encoded.
pub(crate) fn file_url(abs: &Path) -> String {
    let text = abs.to_string_lossy();
    let mut url = String::from("file://");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// One scene of a batch.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SceneInput {
    /// Folder name of the scene's outputs (unique in the batch, stable across runs).
    pub name: String,
    /// What GDAL opens (a path, or a `/vsicurl/` URL from a STAC asset).
    pub raster: String,
    /// The local file whose change means the scene must be redone: the raster, or the STAC
    /// Item for remote assets (`None` for bare remote paths).
    pub source: Option<PathBuf>,
    /// The local STAC Item file the scene came from (its changes mean a redo).
    pub item: Option<PathBuf>,
    /// The STAC Item the scene came from, local or remote, with its JSON.
    pub stac_item: Option<InputItem>,
    /// Why the input could not be resolved (the scene is reported as failed).
    pub error: Option<String>,
}

impl SceneInput {
    fn raster(path: &str) -> SceneInput {
        let local = !is_remote(path);
        SceneInput {
            name: stem(path),
            raster: path.to_string(),
            source: local.then(|| PathBuf::from(path)),
            item: None,
            stac_item: None,
            error: None,
        }
    }

    /// A scene from a STAC Item already read: `href` is where it is (a local path or an
    /// `http(s)://` URL; relative asset hrefs resolve against it), `json` the Item. The asset
    /// is the one named by key or role (`asset`), else the first GeoTIFF data asset (roles
    /// "data" or key "visual"/"image"), else the first GeoTIFF asset. A JSON that is not a
    /// usable Item gives a scene with an `error` naming `href`.
    pub fn from_item_json(href: &str, json: serde_json::Value, asset: Option<&str>) -> SceneInput {
        let mut scene = SceneInput {
            name: stem(href),
            raster: href.to_string(),
            source: None,
            item: None,
            stac_item: None,
            error: None,
        };
        match resolve_item(href, &json, asset) {
            Ok((id, raster)) => {
                scene.name = safe_name(&id);
                scene.raster = raster;
                if !is_remote(&scene.raster) {
                    // A local asset: its own changes count too (the record fingerprints it).
                    scene.source = Some(PathBuf::from(&scene.raster));
                }
                scene.stac_item = Some(InputItem {
                    href: href.to_string(),
                    json,
                });
            }
            Err(e) => scene.error = Some(format!("{href}: {e}")),
        }
        scene
    }
}

fn is_remote(path: &str) -> bool {
    path.starts_with("/vsi") || path.contains("://")
}

/// A GDAL path for a URL (`https://` -> `/vsicurl/https://`, `s3://b/k` -> `/vsis3/b/k`).
fn gdal_path(href: &str) -> String {
    if let Some(rest) = href.strip_prefix("s3://") {
        format!("/vsis3/{rest}")
    } else if let Some(rest) = href.strip_prefix("gs://") {
        format!("/vsigs/{rest}")
    } else if href.starts_with("http://") || href.starts_with("https://") {
        format!("/vsicurl/{href}")
    } else {
        href.to_string()
    }
}

/// A file-system-safe name from the last path component without its extension.
fn stem(path: &str) -> String {
    let last = path.rsplit(['/', '\\']).next().unwrap_or(path);
    let last = last.split('?').next().unwrap_or(last);
    let base = match last.rsplit_once('.') {
        Some((b, _)) if !b.is_empty() => b,
        _ => last,
    };
    safe_name(base)
}

/// `s` with every character but letters, digits, '-', '_' and '.' as '_', never empty or
/// hidden (a leading '_' then).
pub(crate) fn safe_name(s: &str) -> String {
    let mut name: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, '_');
    }
    name
}

pub(crate) fn short_hash(s: &str) -> String {
    let h = Sha256::digest(s.as_bytes());
    h.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Expand command-line inputs into scenes, sorted by name. `asset` picks the asset of STAC
/// Items by key or role.
///
/// # Errors
/// A list file that cannot be read, a glob pattern that is not valid, or no inputs at all.
/// Inputs that are missing or not scenes are not errors here: they become scenes with an
/// `error`, reported as failed while the others run.
pub fn expand(args: &[String], asset: Option<&str>) -> Result<Vec<SceneInput>, BatchError> {
    let mut scenes = Vec::new();
    for arg in args {
        expand_one(arg, asset, &mut scenes, 0)?;
    }
    // The same raster given twice is one scene (local files compared by canonical path, so
    // a file and a link to it, or `./a.tif` and `/abs/a.tif`, are one).
    let mut seen = std::collections::BTreeSet::new();
    scenes.retain(|s: &SceneInput| {
        let key = if is_remote(&s.raster) {
            PathBuf::from(&s.raster)
        } else {
            std::fs::canonicalize(&s.raster).unwrap_or_else(|_| PathBuf::from(&s.raster))
        };
        seen.insert(key)
    });
    // Names shared by different rasters get a short hash of the raster path.
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for s in &scenes {
        *count.entry(s.name.clone()).or_default() += 1;
    }
    for s in &mut scenes {
        if count.get(&s.name).copied().unwrap_or(0) > 1 {
            s.name = format!("{}-{}", s.name, short_hash(&s.raster));
        }
    }
    scenes.sort_by(|a, b| a.name.cmp(&b.name));
    if scenes.is_empty() {
        return Err(BatchError::Inputs(format!(
            "no scenes found in {}",
            args.join(" ")
        )));
    }
    Ok(scenes)
}

fn expand_one(
    arg: &str,
    asset: Option<&str>,
    out: &mut Vec<SceneInput>,
    depth: usize,
) -> Result<(), BatchError> {
    if let Some(list) = arg.strip_prefix('@') {
        return expand_list(Path::new(list), asset, out, depth);
    }
    if is_remote(arg) {
        out.push(SceneInput::raster(arg));
        return Ok(());
    }
    if arg.contains(['*', '?', '[']) {
        let paths = glob::glob(arg)
            .map_err(|e| BatchError::Inputs(format!("{arg}: not a valid pattern: {e}")))?;
        let mut matched: Vec<PathBuf> = paths.flatten().collect();
        matched.sort();
        if matched.is_empty() {
            return Err(BatchError::Inputs(format!("{arg}: no file matches")));
        }
        for p in matched {
            expand_path(&p, asset, out, depth)?;
        }
        return Ok(());
    }
    expand_path(Path::new(arg), asset, out, depth)
}

fn expand_path(
    path: &Path,
    asset: Option<&str>,
    out: &mut Vec<SceneInput>,
    depth: usize,
) -> Result<(), BatchError> {
    if path.is_dir() {
        let mut found = Vec::new();
        walk(path, &mut found);
        found.sort();
        for p in found {
            let ext = extension(&p);
            if ext == "json" {
                if looks_like_item(&p) {
                    out.push(from_item(&p, asset));
                }
            } else if RASTER_EXTENSIONS.contains(&ext.as_str()) {
                out.push(SceneInput::raster(&p.display().to_string()));
            }
        }
        return Ok(());
    }
    if let Some(kind) = crate::raster::special_file_kind(path) {
        // Named explicitly: a failed scene (its contents are never read, so a FIFO cannot
        // block the batch).
        let mut scene = SceneInput::raster(&path.display().to_string());
        scene.error = Some(format!("{}: is {kind}, not a regular file", path.display()));
        scene.source = None;
        out.push(scene);
        return Ok(());
    }
    match extension(path).as_str() {
        "json" => out.push(from_item(path, asset)),
        "txt" | "lst" | "list" => return expand_list(path, asset, out, depth),
        _ => out.push(SceneInput::raster(&path.display().to_string())),
    }
    Ok(())
}

fn extension(p: &Path) -> String {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Files under `dir`, recursively, skipping hidden entries (tessera's own state among them)
/// and, with a warning line, FIFOs, sockets and devices.
///
/// Symbolic links are followed, to files and to directories, with two rules that keep a scan
/// finite and every file found once: a directory is visited at most once, by its canonical
/// path (a link into a part already scanned adds nothing), and a link to the scanned folder
/// itself or to one of its ancestors (`..`, `/`) is skipped with a warning, since it would
/// contain the whole scan again or the whole file system. Links to folders elsewhere (another
/// disk) are scanned.
pub(crate) fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut visited = std::collections::HashSet::new();
    visited.insert(root.clone());
    walk_into(dir, &root, &mut visited, found);
}

fn walk_into(
    dir: &Path,
    root: &Path,
    visited: &mut std::collections::HashSet<PathBuf>,
    found: &mut Vec<PathBuf>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    // Real entries before links, each sorted: of two paths to one directory the real one is
    // scanned, whatever order the file system lists them in.
    entries.sort_by_key(|e| (e.file_type().is_ok_and(|t| t.is_symlink()), e.file_name()));
    for e in entries {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        match crate::raster::special_file_kind(&p) {
            None => found.push(p),
            Some("a directory") => {
                let Ok(canonical) = std::fs::canonicalize(&p) else {
                    continue;
                };
                if root.starts_with(&canonical) {
                    eprintln!(
                        "tessera: warning: {}: links to {} (the scanned folder or one above it); not followed",
                        p.display(),
                        canonical.display()
                    );
                    continue;
                }
                if visited.insert(canonical) {
                    walk_into(&p, root, visited, found);
                }
            }
            // A FIFO would block the reader forever; devices and sockets are no scenes.
            Some(kind) => warn_skipped(&p, kind),
        }
    }
}

/// One warning line on stderr for a folder entry that is skipped.
fn warn_skipped(p: &Path, kind: &str) {
    eprintln!(
        "tessera: warning: {}: is {kind}, not a regular file; skipped",
        p.display()
    );
}

fn expand_list(
    list: &Path,
    asset: Option<&str>,
    out: &mut Vec<SceneInput>,
    depth: usize,
) -> Result<(), BatchError> {
    if depth > 4 {
        return Err(BatchError::Inputs(format!(
            "{}: lists nested too deeply",
            list.display()
        )));
    }
    if let Some(kind) = crate::raster::special_file_kind(list) {
        // Reading a FIFO would block until a writer comes.
        return Err(BatchError::Inputs(format!(
            "{}: is {kind}, not a regular file",
            list.display()
        )));
    }
    let text = std::fs::read_to_string(list)
        .map_err(|e| BatchError::Inputs(format!("{}: cannot read: {e}", list.display())))?;
    let base = list.parent().unwrap_or(Path::new("."));
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = if is_remote(line) || Path::new(line).is_absolute() {
            line.to_string()
        } else {
            base.join(line).display().to_string()
        };
        expand_one(&entry, asset, out, depth + 1)?;
    }
    Ok(())
}

fn looks_like_item(p: &Path) -> bool {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("type").and_then(|t| t.as_str()) == Some("Feature"))
}

/// A scene from a local STAC Item file (see [`SceneInput::from_item_json`]).
fn from_item(item: &Path, asset: Option<&str>) -> SceneInput {
    let href = item.display().to_string();
    let read = std::fs::read_to_string(item)
        .map_err(|e| format!("cannot read: {e}"))
        .and_then(|text| {
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| format!("not JSON: {e}"))
        });
    let mut scene = match read {
        Ok(json) => SceneInput::from_item_json(&href, json, asset),
        Err(e) => SceneInput {
            name: stem(&href),
            raster: href.clone(),
            error: Some(format!("{href}: {e}")),
            ..SceneInput::default()
        },
    };
    // The Item file itself: its changes mean a redo, and the remote assets it names have
    // no local file of their own.
    scene.item = Some(item.to_path_buf());
    if scene.source.is_none() {
        scene.source = Some(item.to_path_buf());
    }
    scene
}

/// The Item's id and the GDAL path of its chosen asset.
fn resolve_item(
    item_href: &str,
    v: &serde_json::Value,
    asset: Option<&str>,
) -> Result<(String, String), String> {
    if v.get("type").and_then(|t| t.as_str()) != Some("Feature") {
        return Err("not a STAC Item (type is not \"Feature\")".into());
    }
    let id = v
        .get("id")
        .and_then(|i| i.as_str())
        .ok_or("STAC Item without an id")?
        .to_string();
    let assets = v
        .get("assets")
        .and_then(|a| a.as_object())
        .ok_or("STAC Item without assets")?;
    let roles = |a: &serde_json::Value| -> Vec<String> {
        a.get("roles")
            .and_then(|r| r.as_array())
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let is_tiff = |a: &serde_json::Value| {
        let t = a.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let h = a.get("href").and_then(|t| t.as_str()).unwrap_or("");
        t.contains("tiff") || h.ends_with(".tif") || h.ends_with(".tiff")
    };
    let chosen = match asset {
        Some(want) => assets
            .get(want)
            .or_else(|| {
                assets
                    .values()
                    .find(|a| roles(a).iter().any(|r| r == want))
            })
            .ok_or_else(|| {
                let keys: Vec<&str> = assets.keys().map(String::as_str).collect();
                format!(
                    "no asset with key or role '{want}' (assets: {})",
                    keys.join(", ")
                )
            })?,
        None => assets
            .values()
            .find(|a| is_tiff(a) && roles(a).iter().any(|r| r == "data"))
            .or_else(|| assets.get("visual").or_else(|| assets.get("image")))
            .or_else(|| assets.values().find(|a| is_tiff(a)))
            .ok_or("no GeoTIFF asset (choose one with asset = \"KEY\" in the pipeline's [input] or --asset)")?,
    };
    let href = chosen
        .get("href")
        .and_then(|h| h.as_str())
        .ok_or("the asset has no href")?;
    let raster = if href.contains("://") {
        gdal_path(href)
    } else if Path::new(href).is_absolute() {
        href.to_string()
    } else if item_href.contains("://") {
        // Relative to a remote Item: against its URL's folder.
        gdal_path(&join_url(item_href, href))
    } else {
        Path::new(item_href)
            .parent()
            .unwrap_or(Path::new("."))
            .join(href)
            .display()
            .to_string()
    };
    Ok((id, raster))
}

/// `rel` resolved against the URL `base` (RFC 3986 reference resolution for path
/// references: `./` and `../` segments, and `/path` against the authority).
fn join_url(base: &str, rel: &str) -> String {
    let base = base.split(['?', '#']).next().unwrap_or(base);
    let (scheme, rest) = base.split_once("://").unwrap_or(("", base));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut segments: Vec<&str> = if rel.starts_with('/') {
        Vec::new()
    } else {
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        dir.split('/').filter(|s| !s.is_empty()).collect()
    };
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        match *part {
            "." | "" if i + 1 < parts.len() => {}
            ".." => {
                segments.pop();
            }
            p => segments.push(p),
        }
    }
    format!("{scheme}://{authority}/{}", segments.join("/"))
}

/// A deterministic share of a batch: scene `name` belongs to shard `sha256(name) mod count`,
/// so the share depends on the scene alone, not on what else is in the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Shard {
    /// 0-based.
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Parse `I/N` (0-based I).
    ///
    /// # Errors
    /// Not `I/N` with `I < N`.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let bad = || format!("--shard '{s}' is not I/N with 0 <= I < N (0-based)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The shard from the scheduler's environment: Slurm job arrays
    /// (`SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`) or Kubernetes
    /// Indexed Jobs (`JOB_COMPLETION_INDEX` of `TESSERA_SHARD_COUNT`).
    ///
    /// # Errors
    /// Variables present but not numbers, or an index outside the count.
    pub fn from_env() -> Result<Option<Shard>, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let num = |k: &str, v: String| -> Result<usize, String> {
            v.trim()
                .parse()
                .map_err(|_| format!("{k}='{v}' is not a number"))
        };
        if let (Some(id), Some(count)) = (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT"))
        {
            let min = match var("SLURM_ARRAY_TASK_MIN") {
                Some(m) => num("SLURM_ARRAY_TASK_MIN", m)?,
                None => 0,
            };
            let id = num("SLURM_ARRAY_TASK_ID", id)?;
            let count = num("SLURM_ARRAY_TASK_COUNT", count)?;
            return Shard::parse(&format!("{}/{count}", id.saturating_sub(min))).map(Some);
        }
        if let Some(index) = var("JOB_COMPLETION_INDEX") {
            let count = var("TESSERA_SHARD_COUNT").ok_or(
                "JOB_COMPLETION_INDEX is set but TESSERA_SHARD_COUNT (the Job's completions) is not",
            )?;
            let index = num("JOB_COMPLETION_INDEX", index)?;
            let count = num("TESSERA_SHARD_COUNT", count)?;
            return Shard::parse(&format!("{index}/{count}")).map(Some);
        }
        Ok(None)
    }

    /// Whether scene `name` belongs to this shard.
    pub fn takes(&self, name: &str) -> bool {
        let h = Sha256::digest(name.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h[..8]);
        (u64::from_be_bytes(first) % self.count as u64) as usize == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stems_made_safe_and_unique() {
        assert_eq!(stem("/data/a/S2A_T32 UMU.tif"), "S2A_T32_UMU");
        assert_eq!(stem("/vsicurl/https://x/y/scene.tif?sig=1"), "scene");
        assert_eq!(safe_name(".hidden"), "_.hidden");
        let dir = tempfile::tempdir().expect("tmp");
        for sub in ["a", "b"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
            std::fs::write(dir.path().join(sub).join("scene.tif"), b"x").expect("write");
        }
        std::fs::write(dir.path().join("other.tif"), b"x").expect("write");
        std::fs::write(dir.path().join("notes.md"), b"x").expect("write");
        let scenes = expand(&[dir.path().display().to_string()], None).expect("expand");
        let names: Vec<&str> = scenes.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&"other"));
        assert!(names.iter().filter(|n| n.starts_with("scene-")).count() == 2);
        // The same scene named twice (directly and by a glob) is one scene.
        let a = dir.path().join("other.tif").display().to_string();
        let pattern = dir.path().join("*.tif").display().to_string();
        assert_eq!(expand(&[a, pattern], None).expect("expand").len(), 1);
    }

    #[test]
    fn lists_and_items_resolve_relative_to_their_file() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("x.tif"), b"x").expect("write");
        std::fs::write(dir.path().join("list.txt"), "# scenes\nx.tif\n\n").expect("write");
        let item = serde_json::json!({
            "type": "Feature", "id": "S2B_0001", "stac_version": "1.0.0",
            "assets": {
                "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
                "visual": {"href": "x.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]},
                "remote": {"href": "https://example.com/b.tif", "roles": ["overview"]}
            }
        });
        std::fs::write(dir.path().join("item.json"), item.to_string()).expect("write");
        let list = format!("@{}", dir.path().join("list.txt").display());
        let s = expand(&[list], None).expect("list");
        assert_eq!(s[0].raster, dir.path().join("x.tif").display().to_string());
        let item_path = dir.path().join("item.json").display().to_string();
        let s = expand(std::slice::from_ref(&item_path), None).expect("item");
        assert_eq!(s[0].name, "S2B_0001");
        assert_eq!(s[0].raster, dir.path().join("x.tif").display().to_string());
        let s = expand(std::slice::from_ref(&item_path), Some("overview")).expect("role");
        assert_eq!(s[0].raster, "/vsicurl/https://example.com/b.tif");
        let s = expand(std::slice::from_ref(&item_path), Some("nope")).expect("bad asset");
        let e = s[0].error.clone().expect("an error");
        assert!(e.contains("no asset with key or role 'nope'"), "{e}");
    }

    #[test]
    fn items_keep_their_href_and_json_and_remote_items_resolve_against_their_url() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("x.tif"), b"x").expect("write");
        let item = serde_json::json!({
            "type": "Feature", "id": "S2B 7", "properties": {"datetime": "2024-06-01T10:00:00Z"},
            "assets": {"visual": {"href": "x.tif", "type": "image/tiff", "roles": ["data"]}}
        });
        let path = dir.path().join("item.json");
        std::fs::write(&path, item.to_string()).expect("write");
        let s = expand(&[path.display().to_string()], None).expect("item");
        let from = s[0].stac_item.as_ref().expect("the input Item");
        assert_eq!(from.href, path.display().to_string());
        assert_eq!(from.json, item);
        assert_eq!(s[0].name, "S2B_7");
        assert_eq!(s[0].item.as_deref(), Some(path.as_path()));
        let canonical = std::fs::canonicalize(&path).expect("canonical");
        assert_eq!(from.link_href(), format!("file://{}", canonical.display()));

        // The same Item from a STAC API: its relative assets are under its URL.
        let url = "https://stac.example.org/collections/s2/items/S2B%207";
        let s = SceneInput::from_item_json(url, item.clone(), None);
        assert_eq!(
            s.raster,
            "/vsicurl/https://stac.example.org/collections/s2/items/x.tif"
        );
        assert_eq!(s.source, None);
        assert_eq!(s.stac_item.as_ref().expect("item").link_href(), url);
        let bad = SceneInput::from_item_json(url, serde_json::json!({"type": "Collection"}), None);
        let e = bad.error.expect("an error");
        assert!(e.starts_with(url) && e.contains("not a STAC Item"), "{e}");
        assert!(bad.stac_item.is_none());

        assert_eq!(
            join_url("https://h/a/b/item.json", "../c/d.tif"),
            "https://h/a/c/d.tif"
        );
        assert_eq!(
            join_url("https://h/a/item.json?x=1", "./d.tif"),
            "https://h/a/d.tif"
        );
        assert_eq!(
            join_url("https://h/a/item.json", "/r/d.tif"),
            "https://h/r/d.tif"
        );
        assert_eq!(join_url("https://h", "d.tif"), "https://h/d.tif");
        assert_eq!(
            file_url(Path::new("/data/my scenes/ä#1.json")),
            "file:///data/my%20scenes/%C3%A4%231.json"
        );
    }

    #[test]
    fn shards_partition_the_scenes() {
        let names: Vec<String> = (0..200).map(|i| format!("scene{i}")).collect();
        let shards: Vec<Shard> = (0..3)
            .map(|i| Shard::parse(&format!("{i}/3")).expect("shard"))
            .collect();
        for n in &names {
            assert_eq!(shards.iter().filter(|s| s.takes(n)).count(), 1, "{n}");
        }
        for s in &shards {
            let k = names.iter().filter(|n| s.takes(n)).count();
            assert!((40..=95).contains(&k), "shard {} takes {k} of 200", s.index);
        }
        assert!(Shard::parse("3/3").is_err());
        assert!(Shard::parse("1").is_err());
    }
}
