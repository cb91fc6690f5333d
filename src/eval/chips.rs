//! Labelled chips: a folder per class (EuroSAT, RESISC45, UC Merced, AID), or a flat folder of
//! chips (captions). The chips are laid side by side in one GDAL VRT mosaic whose cells are
//! the model's input size, each chip resampled into its cell (bilinear), so the task's
//! ordinary job reads one tile per chip: `tile (row, col)` is chip `row * cols + col`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::EvalError;

/// File extensions taken as chips (case-insensitive).
pub const CHIP_EXTENSIONS: &[&str] = &[
    "tif", "tiff", "jpg", "jpeg", "png", "jp2", "bmp", "gif", "img", "webp",
];

/// One chip: its file, its class (index into the classes), its size and bands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Chip {
    pub path: PathBuf,
    /// The name written in references: the path below the chips folder, `/`-separated.
    pub name: String,
    pub class: usize,
    pub width: usize,
    pub height: usize,
}

/// Every chip, with the classes (folder names, sorted) and the bands the mosaic has.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChipSet {
    pub dir: PathBuf,
    pub classes: Vec<String>,
    pub chips: Vec<Chip>,
    pub bands: usize,
    /// GDAL data type name of the chips (`Byte`, `UInt16`, ...).
    pub dtype: String,
}

fn is_chip(path: &Path) -> bool {
    path.is_file()
        && !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CHIP_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EvalError::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    entries.sort();
    Ok(entries)
}

/// Open a chip and read its size, bands and data type.
fn describe(path: &Path) -> Result<(usize, usize, usize, String), EvalError> {
    crate::raster::init_gdal();
    let ds = gdal::Dataset::open(path).map_err(|e| {
        EvalError::data(
            path,
            format!("not a readable image: {}", crate::raster::gdal_reason(&e)),
        )
    })?;
    let (w, h) = ds.raster_size();
    let bands = ds.raster_count();
    let dtype = ds
        .rasterband(1)
        .map(|b| b.band_type().name())
        .map_err(|e| EvalError::data(path, crate::raster::gdal_reason(&e)))?;
    Ok((w, h, bands, dtype))
}

/// The chips of `dir`: with `classes`, one sub-folder per class (chips directly inside it or
/// below it); without, every chip in `dir` and below (class 0).
///
/// # Errors
/// A missing or empty folder, a class folder without chips, a chip GDAL cannot read, or chips
/// of different data types or band counts.
pub fn scan(dir: &Path, classes: bool) -> Result<ChipSet, EvalError> {
    if !dir.is_dir() {
        return Err(EvalError::data(dir, "no such chips folder"));
    }
    let mut set = ChipSet {
        dir: dir.to_path_buf(),
        classes: Vec::new(),
        chips: Vec::new(),
        bands: 0,
        dtype: String::new(),
    };
    let mut groups: Vec<(String, PathBuf)> = Vec::new();
    if classes {
        for p in sorted_entries(dir)? {
            if p.is_dir() {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                groups.push((name.to_string(), p.clone()));
            }
        }
        if groups.is_empty() {
            return Err(EvalError::data(
                dir,
                "has no class folders (expected one sub-folder of chips per class)",
            ));
        }
    } else {
        groups.push((String::new(), dir.to_path_buf()));
    }
    for (class, (name, folder)) in groups.iter().enumerate() {
        let mut files = Vec::new();
        collect(folder, &mut files)?;
        if files.is_empty() {
            let what = if classes {
                "class folder has no chips"
            } else {
                "has no chips"
            };
            return Err(EvalError::data(
                folder,
                format!("{what} ({})", CHIP_EXTENSIONS.join(", ")),
            ));
        }
        if classes {
            set.classes.push(name.clone());
        }
        for path in files {
            let (width, height, bands, dtype) = describe(&path)?;
            if set.chips.is_empty() {
                set.bands = bands;
                set.dtype = dtype;
            } else if dtype != set.dtype {
                return Err(EvalError::data(
                    &path,
                    format!(
                        "is {dtype} but the first chip is {}: every chip needs the same data type",
                        set.dtype
                    ),
                ));
            } else {
                set.bands = set.bands.min(bands);
            }
            let rel = path.strip_prefix(dir).unwrap_or(&path);
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            set.chips.push(Chip {
                path,
                name,
                class,
                width,
                height,
            });
        }
    }
    Ok(set)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), EvalError> {
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            collect(&p, out)?;
        } else if is_chip(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Columns of the mosaic of `n` chips: the smallest divisor of `n` at least `sqrt(n)`, so
/// every cell holds a chip (no empty tiles).
pub fn mosaic_cols(n: usize) -> usize {
    let root = (n as f64).sqrt().ceil() as usize;
    (root.max(1)..=n.max(1))
        .find(|c| n % c == 0)
        .unwrap_or(n.max(1))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Write the VRT mosaic of `set` with `size x size` cells to `path`.
///
/// # Errors
/// The file cannot be written.
pub fn write_mosaic(set: &ChipSet, size: usize, path: &Path) -> Result<(), EvalError> {
    let n = set.chips.len();
    let cols = mosaic_cols(n);
    let rows = n.div_ceil(cols);
    let mut xml = format!(
        "<VRTDataset rasterXSize=\"{}\" rasterYSize=\"{}\">\n",
        cols * size,
        rows * size
    );
    for band in 1..=set.bands {
        let _ = writeln!(
            xml,
            "  <VRTRasterBand dataType=\"{}\" band=\"{band}\">",
            set.dtype
        );
        for (i, chip) in set.chips.iter().enumerate() {
            let abs = std::fs::canonicalize(&chip.path).unwrap_or_else(|_| chip.path.clone());
            let _ = writeln!(
                xml,
                "    <ComplexSource resampling=\"bilinear\"><SourceFilename relativeToVRT=\"0\">{}</SourceFilename><SourceBand>{band}</SourceBand><SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{}\" ySize=\"{}\"/><DstRect xOff=\"{}\" yOff=\"{}\" xSize=\"{size}\" ySize=\"{size}\"/></ComplexSource>",
                xml_escape(&abs.display().to_string()),
                chip.width,
                chip.height,
                (i % cols) * size,
                (i / cols) * size,
            );
        }
        xml.push_str("  </VRTRasterBand>\n");
    }
    xml.push_str("</VRTDataset>\n");
    std::fs::write(path, xml).map_err(|e| EvalError::io(path, e))
}

/// Save `set` for the worker processes (`chips.json` in the scratch folder).
///
/// # Errors
/// The file cannot be written.
pub fn save(set: &ChipSet, path: &Path) -> Result<(), EvalError> {
    let text = serde_json::to_string(set).map_err(|e| EvalError::data(path, e.to_string()))?;
    std::fs::write(path, text).map_err(|e| EvalError::io(path, e))
}

/// Read what [`save`] wrote.
///
/// # Errors
/// The file cannot be read or parsed.
pub fn load(path: &Path) -> Result<ChipSet, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EvalError::data(path, e.to_string()))
}

/// The input size of a package (`[preprocess] size` of its manifest).
///
/// # Errors
/// A manifest without one.
pub fn package_input_size(model: &Path) -> Result<usize, EvalError> {
    let path = model.join("model.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
    let value: toml::Value =
        toml::from_str(&text).map_err(|e| EvalError::data(&path, e.to_string()))?;
    value
        .get("preprocess")
        .and_then(|p| p.get("size"))
        .and_then(toml::Value::as_integer)
        .and_then(|s| usize::try_from(s).ok())
        .filter(|&s| s > 0)
        .ok_or_else(|| EvalError::Model {
            path: model.display().to_string(),
            reason: "its manifest has no [preprocess] size to lay chips at".into(),
        })
}

/// Point a model run's scene at its input: with `--chips`, the mosaic of the chip set recorded
/// in `chips_json`, written beside the run's output `out` at the model's input size, one tile
/// per chip (no overlap, pixel coordinates); otherwise the `--scene`.
///
/// # Errors
/// The chip set or the package cannot be read, or the mosaic cannot be written.
pub fn aim_at_input(
    opts: &crate::options::EvalOptions,
    base: &mut crate::options::SceneJobBase,
    chips_json: &Path,
    out: &Path,
) -> Result<(), EvalError> {
    if opts.chips.is_none() {
        base.scene = opts.scene.clone().unwrap_or_default();
        return Ok(());
    }
    let set = load(chips_json)?;
    let size = package_input_size(&base.model)?;
    let vrt = out.with_extension("vrt");
    write_mosaic(&set, size, &vrt)?;
    base.scene = vrt.display().to_string();
    base.open.pixel_coords = true;
    // One tile per chip: the mosaic's cells are the model's input size.
    base.grid = crate::tiling::GridRequest {
        tile_size: None,
        overlap: Some(0),
        target_gsd: None,
        edge: base.grid.edge,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosaic_cells_are_all_filled() {
        assert_eq!(mosaic_cols(1), 1);
        assert_eq!(mosaic_cols(12), 4);
        assert_eq!(mosaic_cols(16), 4);
        assert_eq!(mosaic_cols(7), 7);
        for n in 1..200 {
            assert_eq!(n % mosaic_cols(n), 0);
        }
    }
}
