//! A streaming Cloud-Optimised GeoTIFF writer.
//!
//! Rows arrive top to bottom (a stitched mosaic is finished row by row); every full strip of
//! tile-high rows (512, or `BLOCKSIZE`) is cut into tiles, compressed in parallel (DEFLATE, or
//! the `--co` compression and predictor, [`super::codec`]) and appended to a temporary file
//! per resolution level, while the same rows are decimated into every overview
//! level on the fly. At the end the COG is assembled by copying the compressed tiles, never
//! recompressing them: header, GDAL's structural-metadata ghost area, the IFDs (full resolution
//! first, then the overviews by decreasing size) with their tag data, then the tile data of the
//! smallest overview first and the full resolution last, each tile with GDAL's 4-byte size
//! leader and repeated-last-4-bytes trailer. That is the layout GDAL's COG driver writes and
//! `rio cogeo validate` checks, but the scene is compressed once, by every core, without GDAL's
//! decompress-recompress copy or overview pass. Classic TIFF, or BigTIFF when the file would
//! pass 4 GiB. The GeoTIFF keys (CRS, geotransform) come from GDAL itself: a 1 x 1 GeoTIFF
//! with the same georeferencing is written and its geo tags copied.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use super::codec::{Compression, Predictor, TileCodec};
use super::{Legend, OutputError, Result};
use crate::raster::{gdal_reason, GeoTransform};

/// Tile edge in pixels (GDAL's COG default; `BLOCKSIZE` changes it).
pub const COG_BLOCK: usize = 512;

/// The COG creation options a user gave (`--co KEY=VALUE`, GDAL's names and values); what is
/// not given is the writer's default for the raster (DEFLATE, no predictor, 512-pixel tiles,
/// the raster's own overview resampling).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CogOptions {
    /// `COMPRESS`.
    pub compression: Option<Compression>,
    /// `LEVEL` (of DEFLATE, ZSTD or LZMA).
    pub level: Option<i32>,
    /// `PREDICTOR`.
    pub predictor: Option<Predictor>,
    /// `BLOCKSIZE`: tile edge in pixels.
    pub block: Option<usize>,
    /// `OVERVIEW_RESAMPLING`.
    pub overview_resampling: Option<OverviewResampling>,
}

impl CogOptions {
    /// The tile codec for samples that are floats (`float`) or integers.
    pub fn codec(&self, float: bool) -> TileCodec {
        TileCodec {
            compression: self.compression.unwrap_or(Compression::Deflate),
            level: self.level,
            predictor: self.predictor.unwrap_or(Predictor::No).tiff_code(float),
        }
    }

    /// The tile edge.
    pub fn block(&self) -> usize {
        self.block.unwrap_or(COG_BLOCK)
    }
}

/// The ghost area GDAL writes after the TIFF header of a COG.
const GHOST_PAYLOAD: &str = "LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\nBLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n ";

/// How overview pixels are made from the level above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverviewResampling {
    /// The top-left pixel of each 2 x 2 block (class rasters), as GDAL picks it.
    Nearest,
    /// The mean of a 2 x 2 block's valid pixels (continuous values).
    Average,
}

/// A sample type the writer stores.
pub trait CogSample: Copy + Send + Sync + PartialEq + 'static {
    /// TIFF BitsPerSample.
    const BITS: u16;
    /// TIFF SampleFormat (1 unsigned integer, 3 IEEE float).
    const FORMAT: u16;
    /// Append the little-endian bytes of `values`.
    fn extend_le(values: &[Self], out: &mut Vec<u8>);
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    /// Whether `self` is missing data (`nodata`, or NaN).
    fn is_missing(self, nodata: Option<Self>) -> bool;
}

impl CogSample for u8 {
    const BITS: u16 = 8;
    const FORMAT: u16 = 1;
    fn extend_le(values: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(values);
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(v: f64) -> u8 {
        v.round().clamp(0.0, 255.0) as u8
    }
    fn is_missing(self, nodata: Option<u8>) -> bool {
        nodata == Some(self)
    }
}

impl CogSample for u32 {
    const BITS: u16 = 32;
    const FORMAT: u16 = 1;
    fn extend_le(values: &[u32], out: &mut Vec<u8>) {
        out.reserve(values.len() * 4);
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(v: f64) -> u32 {
        v.round().clamp(0.0, f64::from(u32::MAX)) as u32
    }
    fn is_missing(self, nodata: Option<u32>) -> bool {
        nodata == Some(self)
    }
}

impl CogSample for f32 {
    const BITS: u16 = 32;
    const FORMAT: u16 = 3;
    fn extend_le(values: &[f32], out: &mut Vec<u8>) {
        out.reserve(values.len() * 4);
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    fn is_missing(self, nodata: Option<f32>) -> bool {
        self.is_nan() || nodata.is_some_and(|n| n == self)
    }
}

/// What to write besides the pixels.
#[derive(Clone, Copy, Debug)]
pub struct CogSpec<'a> {
    pub width: usize,
    pub height: usize,
    pub bands: usize,
    pub geotransform: &'a GeoTransform,
    pub crs_wkt: Option<&'a str>,
    /// Nodata value of every band (NaN allowed for floats).
    pub nodata: Option<f64>,
    /// Band descriptions (one per band, or fewer).
    pub descriptions: &'a [String],
    /// Colour table of a single-band 8-bit class raster.
    pub legend: Option<&'a Legend>,
    /// Dataset metadata items.
    pub metadata: &'a [(String, String)],
    /// Overview resampling unless `options` says otherwise.
    pub resampling: OverviewResampling,
    /// The user's creation options.
    pub options: CogOptions,
}

fn werr(path: &Path, reason: impl std::fmt::Display) -> OutputError {
    OutputError::Write {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// One resolution level: its strip of rows not yet tiled and its compressed tiles so far.
struct Level<T> {
    width: usize,
    height: usize,
    rows_in: usize,
    /// Pixel-interleaved rows of the current strip.
    strip: Vec<T>,
    strip_rows: usize,
    /// For an overview: the parent level's size and, per column, the parent's columns it is
    /// made of (`start..end`).
    parent: (usize, usize),
    col_windows: Vec<(usize, usize)>,
    /// The parent's rows this level still needs, with their row index.
    parent_rows: VecDeque<(usize, Vec<T>)>,
    /// (offset of the data in `file`, byte count), row-major.
    tiles: Vec<(u64, u32)>,
    file: BufWriter<File>,
    file_path: PathBuf,
    pos: u64,
}

/// Writes one COG from rows delivered in order. Nothing appears under the target name until
/// [`CogWriter::finish`] succeeds; dropped unfinished, it removes its temporary files.
pub struct CogWriter<T: CogSample> {
    path: PathBuf,
    tmp_path: PathBuf,
    bands: usize,
    nodata: Option<T>,
    fill: T,
    resampling: OverviewResampling,
    codec: TileCodec,
    block: usize,
    levels: Vec<Level<T>>,
    /// Tags of the full-resolution IFD only (georeferencing, metadata), already encoded.
    main_tags: Vec<Tag>,
    /// Tags of every IFD (nodata, colour map).
    common_tags: Vec<Tag>,
    photometric: u16,
    /// What GDAL kept in a side-car `.aux.xml` for this georeferencing (a CRS GeoTIFF keys
    /// cannot express), written beside the COG.
    aux_xml: Option<Vec<u8>>,
    /// BigTIFF even when a classic TIFF would do (tests).
    force_bigtiff: bool,
    finished: bool,
}

impl<T: CogSample> std::fmt::Debug for CogWriter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CogWriter")
            .field("path", &self.path)
            .field("levels", &self.levels.len())
            .finish()
    }
}

/// Sizes of the full resolution and of every overview: halved (rounding down, as GDAL's COG
/// driver does) until the level fits in one tile.
fn level_sizes(width: usize, height: usize, block: usize) -> Vec<(usize, usize)> {
    let mut out = vec![(width, height)];
    let (mut w, mut h) = (width, height);
    while w > block || h > block {
        w = (w / 2).max(1);
        h = (h / 2).max(1);
        out.push((w, h));
    }
    out
}

/// The parent pixels (`start..end` along one axis) that make pixel `j` of a level of `dst`
/// pixels from a parent of `src`: GDAL's choice for each overview made from the previous one
/// (nearest: the pixel at `round(j * src / dst)`; average: from there to the next one's start).
fn window(j: usize, src: usize, dst: usize, resampling: OverviewResampling) -> (usize, usize) {
    let r = src as f64 / dst as f64;
    let at = |k: usize| ((k as f64 * r + 0.5) as usize).min(src - 1);
    let s = at(j);
    match resampling {
        OverviewResampling::Nearest => (s, s + 1),
        OverviewResampling::Average => {
            let e = if j + 1 >= dst { src } else { at(j + 1) };
            (s, e.max(s + 1))
        }
    }
}

impl<T: CogSample> CogWriter<T> {
    /// Start writing `path` (its folder must exist; temporary files go next to it).
    ///
    /// # Errors
    /// Zero-sized raster, bad band count, unwritable folder, or GDAL failing to encode the
    /// georeferencing.
    pub fn create(path: &Path, spec: &CogSpec<'_>) -> Result<CogWriter<T>> {
        if spec.width == 0 || spec.height == 0 || spec.bands == 0 || spec.bands > 4096 {
            return Err(werr(
                path,
                format!(
                    "cannot write a {}x{} raster of {} bands",
                    spec.width, spec.height, spec.bands
                ),
            ));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "raster.tif".into());
        let dir = path.parent().unwrap_or(Path::new("."));
        let nodata = spec.nodata.map(T::from_f64);
        let fill = nodata.unwrap_or_else(|| T::from_f64(0.0));
        let EncodedMetadata {
            main: main_tags,
            common: common_tags,
            photometric,
            aux_xml,
        } = metadata_tags::<T>(path, dir, &name, spec)?;
        let mut levels = Vec::new();
        let block = spec.options.block();
        let resampling = spec.options.overview_resampling.unwrap_or(spec.resampling);
        let sizes = level_sizes(spec.width, spec.height, block);
        for (k, &(w, h)) in sizes.iter().enumerate() {
            let parent = if k == 0 { (w, h) } else { sizes[k - 1] };
            let col_windows = if k == 0 {
                Vec::new()
            } else {
                (0..w).map(|j| window(j, parent.0, w, resampling)).collect()
            };
            let file_path = dir.join(format!(".{name}.level{k}.tmp"));
            let file = File::create(&file_path).map_err(|e| werr(&file_path, e))?;
            levels.push(Level {
                width: w,
                height: h,
                rows_in: 0,
                strip: Vec::with_capacity(block.min(h) * w * spec.bands),
                strip_rows: 0,
                parent,
                col_windows,
                parent_rows: VecDeque::new(),
                tiles: Vec::new(),
                file: BufWriter::with_capacity(1 << 20, file),
                file_path,
                pos: 0,
            });
        }
        Ok(CogWriter {
            path: path.to_path_buf(),
            tmp_path: dir.join(format!(".{name}.tmp")),
            bands: spec.bands,
            nodata,
            fill,
            resampling,
            codec: spec.options.codec(T::FORMAT == 3),
            block,
            levels,
            main_tags,
            common_tags,
            photometric,
            aux_xml,
            force_bigtiff: false,
            finished: false,
        })
    }

    /// The next rows, band-sequential: `bands * rows * width` samples.
    ///
    /// # Errors
    /// A length that is not whole rows, more rows than the raster has, or a write failing.
    pub fn write_rows(&mut self, data: &[T]) -> Result<()> {
        let (w, b) = (self.levels[0].width, self.bands);
        if data.len() % (w * b) != 0 {
            return Err(werr(
                &self.path,
                format!(
                    "{} samples are not whole rows of {w} x {b} bands",
                    data.len()
                ),
            ));
        }
        let rows = data.len() / (w * b);
        if self.levels[0].rows_in + rows > self.levels[0].height {
            return Err(werr(&self.path, "more rows than the raster has"));
        }
        let plane = rows * w;
        if b == 1 {
            // One band is already pixel-interleaved: rows go in as they are.
            for r in 0..rows {
                self.push_row(0, &data[r * w..(r + 1) * w])?;
            }
            return Ok(());
        }
        let mut row = Vec::with_capacity(w * b);
        for r in 0..rows {
            row.clear();
            for x in 0..w {
                for band in 0..b {
                    row.push(data[band * plane + r * w + x]);
                }
            }
            self.push_row(0, &row)?;
        }
        Ok(())
    }

    /// Add a pixel-interleaved row to `level`, tiling full strips and feeding the next level.
    fn push_row(&mut self, level: usize, row: &[T]) -> Result<()> {
        let bands = self.bands;
        let (nodata, fill, resampling) = (self.nodata, self.fill, self.resampling);
        let (block, codec) = (self.block, self.codec);
        {
            let lv = &mut self.levels[level];
            lv.strip.extend_from_slice(row);
            lv.strip_rows += 1;
            lv.rows_in += 1;
            if lv.strip_rows == block || lv.rows_in == lv.height {
                flush_strip(lv, bands, fill, block, &codec)?;
            }
        }
        let y = self.levels[level].rows_in - 1;
        let Some(child) = self.levels.get_mut(level + 1) else {
            return Ok(());
        };
        if child.rows_in >= child.height {
            return Ok(());
        }
        let (ph, ch) = (child.parent.1, child.height);
        let (start, end) = window(child.rows_in, ph, ch, resampling);
        if y < start {
            return Ok(()); // a row this level skips
        }
        child.parent_rows.push_back((y, row.to_vec()));
        if y + 1 < end {
            return Ok(());
        }
        let rows: Vec<&[T]> = child
            .parent_rows
            .iter()
            .filter(|(k, _)| (start..end).contains(k))
            .map(|(_, r)| r.as_slice())
            .collect();
        let down = downsample(&rows, &child.col_windows, bands, resampling, nodata);
        // The next row of this level starts at or after `end`.
        child.parent_rows.clear();
        self.push_row(level + 1, &down)
    }

    /// Write the COG (every row must have been written) and remove the temporary files.
    ///
    /// # Errors
    /// Missing rows, or an I/O failure (nothing is left under the target name then).
    pub fn finish(mut self) -> Result<()> {
        let missing = self.levels[0].height - self.levels[0].rows_in;
        if missing > 0 {
            return Err(werr(
                &self.path,
                format!("{missing} rows were never written"),
            ));
        }
        for lv in &mut self.levels {
            lv.file.flush().map_err(|e| werr(&lv.file_path, e))?;
        }
        let result = self.assemble();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
        result?;
        if let Some(aux) = &self.aux_xml {
            let mut name = self.path.clone().into_os_string();
            name.push(".aux.xml");
            std::fs::write(&name, aux).map_err(|e| werr(Path::new(&name), e))?;
        }
        std::fs::rename(&self.tmp_path, &self.path).map_err(|e| werr(&self.path, e))?;
        self.finished = true;
        self.remove_temporaries();
        Ok(())
    }

    fn remove_temporaries(&self) {
        for lv in &self.levels {
            let _ = std::fs::remove_file(&lv.file_path);
        }
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }

    fn assemble(&self) -> Result<()> {
        let n = self.levels.len();
        let data_sizes: Vec<u64> = self.levels.iter().map(|l| l.pos).collect();
        let data_total: u64 = data_sizes.iter().sum();
        // Classic TIFF unless offsets would not fit 32 bits (with a generous margin for the
        // header and IFDs).
        let tiles_total: u64 = self.levels.iter().map(|l| l.tiles.len() as u64).sum();
        let big =
            self.force_bigtiff || data_total + tiles_total * 16 + (1 << 20) > u64::from(u32::MAX);
        let layout = Layout { big };
        let header_len: u64 = if big { 16 } else { 8 };
        let ghost = format!(
            "GDAL_STRUCTURAL_METADATA_SIZE={:06} bytes\n{GHOST_PAYLOAD}",
            GHOST_PAYLOAD.len()
        );
        let mut first_ifd = header_len + ghost.len() as u64;
        first_ifd += first_ifd % 2;
        // IFD sizes do not depend on the offsets they hold: lay them out with zero offsets
        // first, then place the data after them.
        let mut ifd_offsets = Vec::with_capacity(n);
        let mut at = first_ifd;
        for k in 0..n {
            ifd_offsets.push(at);
            let tags = self.ifd_tags(k, &vec![0; self.levels[k].tiles.len()], big);
            at += layout.ifd_len(&tags);
        }
        // Tile data: smallest overview first, full resolution last.
        let mut level_base = vec![0u64; n];
        let mut data_at = at;
        for k in (0..n).rev() {
            level_base[k] = data_at;
            data_at += data_sizes[k];
        }
        let tmp = &self.tmp_path;
        let file = File::create(tmp).map_err(|e| werr(tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut head = Vec::new();
        if big {
            head.extend_from_slice(b"II");
            head.extend_from_slice(&43u16.to_le_bytes());
            head.extend_from_slice(&8u16.to_le_bytes());
            head.extend_from_slice(&0u16.to_le_bytes());
            head.extend_from_slice(&first_ifd.to_le_bytes());
        } else {
            head.extend_from_slice(b"II");
            head.extend_from_slice(&42u16.to_le_bytes());
            head.extend_from_slice(&(first_ifd as u32).to_le_bytes());
        }
        head.extend_from_slice(ghost.as_bytes());
        head.resize(first_ifd as usize, 0);
        for k in 0..n {
            let offsets: Vec<u64> = self.levels[k]
                .tiles
                .iter()
                .map(|(o, _)| level_base[k] + o)
                .collect();
            let tags = self.ifd_tags(k, &offsets, big);
            let next = if k + 1 < n { ifd_offsets[k + 1] } else { 0 };
            debug_assert_eq!(head.len() as u64, ifd_offsets[k]);
            layout.encode_ifd(&tags, ifd_offsets[k], next, &mut head);
        }
        out.write_all(&head).map_err(|e| werr(tmp, e))?;
        for k in (0..n).rev() {
            let lv = &self.levels[k];
            let mut f = File::open(&lv.file_path).map_err(|e| werr(&lv.file_path, e))?;
            f.seek(std::io::SeekFrom::Start(0))
                .map_err(|e| werr(&lv.file_path, e))?;
            let copied =
                std::io::copy(&mut (&mut f).take(lv.pos), &mut out).map_err(|e| werr(tmp, e))?;
            if copied != lv.pos {
                return Err(werr(&lv.file_path, "temporary tile file was truncated"));
            }
        }
        let file = out.into_inner().map_err(|e| werr(tmp, e.error()))?;
        file.sync_all().map_err(|e| werr(tmp, e))
    }

    /// The tags of level `k`'s IFD with these tile offsets.
    fn ifd_tags(&self, k: usize, offsets: &[u64], big: bool) -> Vec<Tag> {
        let lv = &self.levels[k];
        let b = self.bands;
        let mut tags = vec![
            Tag::long(254, &[u32::from(k > 0)]),
            Tag::long(256, &[lv.width as u32]),
            Tag::long(257, &[lv.height as u32]),
            Tag::short(258, &vec![T::BITS; b]),
            Tag::short(259, &[self.codec.compression.tiff_code()]),
            Tag::short(262, &[self.photometric]),
            Tag::short(277, &[b as u16]),
            Tag::short(284, &[1]),
            Tag::short(322, &[self.block as u16]),
            Tag::short(323, &[self.block as u16]),
            if big {
                Tag::long8(324, offsets)
            } else {
                Tag::long(324, &offsets.iter().map(|&o| o as u32).collect::<Vec<_>>())
            },
            Tag::long(325, &lv.tiles.iter().map(|t| t.1).collect::<Vec<_>>()),
            Tag::short(339, &vec![T::FORMAT; b]),
        ];
        if self.codec.compression.takes_predictor() && self.codec.predictor != 1 {
            tags.push(Tag::short(317, &[self.codec.predictor]));
        }
        if b > 1 && self.photometric == 1 {
            tags.push(Tag::short(338, &vec![0; b - 1]));
        }
        tags.extend(self.common_tags.iter().cloned());
        if k == 0 {
            tags.extend(self.main_tags.iter().cloned());
        }
        tags.sort_by_key(|t| t.tag);
        tags
    }
}

impl<T: CogSample> Drop for CogWriter<T> {
    fn drop(&mut self) {
        self.remove_temporaries();
    }
}

/// Cut the level's strip into tiles, compress them in parallel and append them to its file.
fn flush_strip<T: CogSample>(
    lv: &mut Level<T>,
    bands: usize,
    fill: T,
    block: usize,
    codec: &TileCodec,
) -> Result<()> {
    let (w, rows) = (lv.width, lv.strip_rows);
    let cols = w.div_ceil(block);
    let strip = &lv.strip;
    let compressed: Vec<std::result::Result<Vec<u8>, String>> = (0..cols)
        .into_par_iter()
        .map(|tx| {
            let x0 = tx * block;
            let tw = block.min(w - x0);
            let mut tile = vec![fill; block * block * bands];
            for r in 0..rows {
                let src = &strip[(r * w + x0) * bands..(r * w + x0 + tw) * bands];
                tile[r * block * bands..(r * block + tw) * bands].copy_from_slice(src);
            }
            let mut raw = Vec::new();
            T::extend_le(&tile, &mut raw);
            codec.encode(raw, block, bands, usize::from(T::BITS / 8))
        })
        .collect();
    for data in compressed {
        let data = data.map_err(|e| werr(&lv.file_path, e))?;
        let len = data.len() as u32;
        lv.file
            .write_all(&len.to_le_bytes())
            .and_then(|()| lv.file.write_all(&data))
            .and_then(|()| lv.file.write_all(&data[data.len().saturating_sub(4)..]))
            .map_err(|e| werr(&lv.file_path, e))?;
        lv.tiles.push((lv.pos + 4, len));
        lv.pos += 4 + u64::from(len) + data.len().min(4) as u64;
    }
    lv.strip.clear();
    lv.strip_rows = 0;
    Ok(())
}

/// A row of an overview from the parent rows it is made of, column `j` from the parent's
/// columns `col_windows[j]`: nearest takes the first row's pixel at the window's start (as
/// GDAL's COG driver does, so overviews equal GDAL's), average the mean of the window's valid
/// pixels (nodata where none is).
fn downsample<T: CogSample>(
    rows: &[&[T]],
    col_windows: &[(usize, usize)],
    bands: usize,
    resampling: OverviewResampling,
    nodata: Option<T>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(col_windows.len() * bands);
    let Some(first) = rows.first() else {
        return out;
    };
    match resampling {
        OverviewResampling::Nearest => {
            for &(x, _) in col_windows {
                out.extend_from_slice(&first[x * bands..(x + 1) * bands]);
            }
        }
        OverviewResampling::Average => {
            let missing = nodata.unwrap_or_else(|| T::from_f64(f64::NAN));
            for &(x0, x1) in col_windows {
                for b in 0..bands {
                    let (mut sum, mut count) = (0.0, 0u32);
                    for row in rows {
                        for x in x0..x1 {
                            let v = row[x * bands + b];
                            if !v.is_missing(nodata) {
                                sum += v.to_f64();
                                count += 1;
                            }
                        }
                    }
                    out.push(if count == 0 {
                        missing
                    } else {
                        T::from_f64(sum / f64::from(count))
                    });
                }
            }
        }
    }
    out
}

/// A TIFF tag with its value already encoded (little-endian).
#[derive(Clone, Debug)]
struct Tag {
    tag: u16,
    kind: u16,
    count: u64,
    bytes: Vec<u8>,
}

impl Tag {
    /// Numbers of TIFF type `kind`, each encoded by `le`.
    fn numbers<T: Copy, const N: usize>(tag: u16, kind: u16, v: &[T], le: fn(T) -> [u8; N]) -> Tag {
        Tag {
            tag,
            kind,
            count: v.len() as u64,
            bytes: v.iter().flat_map(|&x| le(x)).collect(),
        }
    }
    fn short(tag: u16, v: &[u16]) -> Tag {
        Tag::numbers(tag, 3, v, u16::to_le_bytes)
    }
    fn long(tag: u16, v: &[u32]) -> Tag {
        Tag::numbers(tag, 4, v, u32::to_le_bytes)
    }
    fn long8(tag: u16, v: &[u64]) -> Tag {
        Tag::numbers(tag, 16, v, u64::to_le_bytes)
    }
    fn ascii(tag: u16, s: &str) -> Tag {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        Tag {
            tag,
            kind: 2,
            count: bytes.len() as u64,
            bytes,
        }
    }
}

/// Classic TIFF or BigTIFF IFD encoding.
struct Layout {
    big: bool,
}

impl Layout {
    fn inline_len(&self) -> usize {
        if self.big {
            8
        } else {
            4
        }
    }
    fn entry_len(&self) -> u64 {
        if self.big {
            20
        } else {
            12
        }
    }
    /// Bytes of an IFD with its out-of-line values (each on an even offset).
    fn ifd_len(&self, tags: &[Tag]) -> u64 {
        let fixed = if self.big { 8 + 8 } else { 2 + 4 };
        let mut len = fixed + self.entry_len() * tags.len() as u64;
        for t in tags {
            if t.bytes.len() > self.inline_len() {
                len += t.bytes.len() as u64;
                len += len % 2;
            }
        }
        len
    }
    fn encode_ifd(&self, tags: &[Tag], at: u64, next: u64, out: &mut Vec<u8>) {
        let fixed = if self.big { 8 + 8 } else { 2 + 4 };
        let mut extra_at = at + fixed + self.entry_len() * tags.len() as u64;
        let mut extra = Vec::new();
        if self.big {
            out.extend_from_slice(&(tags.len() as u64).to_le_bytes());
        } else {
            out.extend_from_slice(&(tags.len() as u16).to_le_bytes());
        }
        for t in tags {
            out.extend_from_slice(&t.tag.to_le_bytes());
            out.extend_from_slice(&t.kind.to_le_bytes());
            if self.big {
                out.extend_from_slice(&t.count.to_le_bytes());
            } else {
                out.extend_from_slice(&(t.count as u32).to_le_bytes());
            }
            let mut value = vec![0u8; self.inline_len()];
            if t.bytes.len() <= self.inline_len() {
                value[..t.bytes.len()].copy_from_slice(&t.bytes);
            } else {
                if self.big {
                    value.copy_from_slice(&extra_at.to_le_bytes());
                } else {
                    value.copy_from_slice(&(extra_at as u32).to_le_bytes());
                }
                extra.extend_from_slice(&t.bytes);
                extra_at += t.bytes.len() as u64;
                if extra_at % 2 == 1 {
                    extra.push(0);
                    extra_at += 1;
                }
            }
            out.extend_from_slice(&value);
        }
        if self.big {
            out.extend_from_slice(&next.to_le_bytes());
        } else {
            out.extend_from_slice(&(next as u32).to_le_bytes());
        }
        out.extend_from_slice(&extra);
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Nodata text as GDAL writes it in the GDAL_NODATA tag.
fn nodata_text(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The georeferencing tags GDAL writes for `spec` (from a 1 x 1 GeoTIFF it writes in `dir`),
/// GDAL_METADATA, and the tags of every IFD (nodata, colour map), with the photometric
/// interpretation.
fn metadata_tags<T: CogSample>(
    path: &Path,
    dir: &Path,
    name: &str,
    spec: &CogSpec<'_>,
) -> Result<EncodedMetadata> {
    let (mut main, aux) = geo_tags(path, dir, name, spec)?;
    let mut items = String::new();
    for (k, v) in spec.metadata {
        items.push_str(&format!(
            "  <Item name=\"{}\">{}</Item>\n",
            xml_escape(k),
            xml_escape(v)
        ));
    }
    for (b, d) in spec.descriptions.iter().enumerate().take(spec.bands) {
        items.push_str(&format!(
            "  <Item name=\"DESCRIPTION\" sample=\"{b}\" role=\"description\">{}</Item>\n",
            xml_escape(d)
        ));
    }
    let class_raster = spec.legend.filter(|_| spec.bands == 1 && T::BITS == 8);
    if let Some(legend) = class_raster {
        // Inside the file: the classes as band metadata (GDAL 3.6 keeps category names only
        // in the `.aux.xml`, which a copied COG loses).
        for (k, v) in super::raster::class_items(legend) {
            items.push_str(&format!(
                "  <Item name=\"{}\" sample=\"0\">{}</Item>\n",
                xml_escape(&k),
                xml_escape(&v)
            ));
        }
    }
    if !items.is_empty() {
        main.push(Tag::ascii(
            42112,
            &format!("<GDALMetadata>\n{items}</GDALMetadata>\n"),
        ));
    }
    let mut common = Vec::new();
    if let Some(nd) = spec.nodata {
        common.push(Tag::ascii(42113, &nodata_text(nd)));
    }
    let mut photometric = 1;
    if let Some(legend) = spec.legend {
        if spec.bands == 1 && T::BITS == 8 {
            photometric = 3;
            let mut map = vec![0u16; 3 * 256];
            for (i, c) in legend.colors.iter().enumerate().take(256) {
                for ch in 0..3 {
                    map[ch * 256 + i] = u16::from(c[ch]) * 257;
                }
            }
            common.push(Tag::short(320, &map));
        }
    }
    // Beside the file: the category names GDAL reads (`GetCategoryNames`), with the
    // georeferencing GDAL itself put there.
    let aux = match class_raster {
        Some(legend) => Some(with_category_names(aux.as_deref(), &legend.names)),
        None => aux,
    };
    Ok(EncodedMetadata {
        main,
        common,
        photometric,
        aux_xml: aux,
    })
}

/// GDAL's `.aux.xml` (`pam`, or an empty one) with band 1's category names.
fn with_category_names(pam: Option<&[u8]>, names: &[String]) -> Vec<u8> {
    let mut band = String::from("  <PAMRasterBand band=\"1\">\n    <CategoryNames>\n");
    for n in names {
        band.push_str(&format!("      <Category>{}</Category>\n", xml_escape(n)));
    }
    band.push_str("    </CategoryNames>\n  </PAMRasterBand>\n");
    let text = pam.map(String::from_utf8_lossy).unwrap_or_default();
    let out = match text.rfind("</PAMDataset>") {
        Some(end) => format!("{}{band}{}", &text[..end], &text[end..]),
        None => format!("<PAMDataset>\n{band}</PAMDataset>\n"),
    };
    out.into_bytes()
}

/// The tags [`metadata_tags`] encodes.
struct EncodedMetadata {
    /// Full-resolution IFD only.
    main: Vec<Tag>,
    /// Every IFD.
    common: Vec<Tag>,
    photometric: u16,
    aux_xml: Option<Vec<u8>>,
}

/// GeoTIFF tags (model pixel scale, tiepoint or transformation, geokeys and their
/// parameters) for the spec's geotransform and CRS, as GDAL encodes them, and the `.aux.xml`
/// GDAL writes beside them when the keys cannot hold the CRS.
fn geo_tags(
    path: &Path,
    dir: &Path,
    name: &str,
    spec: &CogSpec<'_>,
) -> Result<(Vec<Tag>, Option<Vec<u8>>)> {
    crate::raster::init_gdal();
    let probe = dir.join(format!(".{name}.georef.tmp.tif"));
    let e = |err: gdal::errors::GdalError| werr(path, gdal_reason(&err));
    {
        let driver = gdal::DriverManager::get_driver_by_name("GTiff").map_err(e)?;
        let mut ds = driver
            .create_with_band_type::<u8, _>(&probe, 1, 1, 1)
            .map_err(e)?;
        ds.set_geo_transform(&spec.geotransform.0).map_err(e)?;
        if let Some(wkt) = spec.crs_wkt {
            ds.set_projection(wkt).map_err(e)?;
        }
        ds.close().map_err(e)?;
    }
    let bytes = std::fs::read(&probe);
    let aux_path = probe.with_extension("tif.aux.xml");
    let aux = std::fs::read(&aux_path).ok();
    let _ = std::fs::remove_file(&probe);
    let _ = std::fs::remove_file(&aux_path);
    let bytes = bytes.map_err(|err| werr(&probe, err))?;
    let tags = read_classic_tags(&bytes)
        .ok_or_else(|| werr(path, "could not read the georeferencing GDAL wrote"))?;
    let tags = tags
        .into_iter()
        .filter(|t| matches!(t.tag, 33550 | 33922 | 34264 | 34735 | 34736 | 34737))
        .collect();
    Ok((tags, aux))
}

/// The tags of the first IFD of a little-endian classic TIFF.
fn read_classic_tags(b: &[u8]) -> Option<Vec<Tag>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    if b.get(0..2)? != b"II" || u16_at(2)? != 42 {
        return None;
    }
    let ifd = u32_at(4)? as usize;
    let n = u16_at(ifd)? as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let e = ifd + 2 + 12 * i;
        let (tag, kind, count) = (u16_at(e)?, u16_at(e + 2)?, u32_at(e + 4)? as usize);
        let size = match kind {
            1 | 2 | 6 | 7 => 1,
            3 | 8 => 2,
            4 | 9 | 11 => 4,
            5 | 10 | 12 | 16 => 8,
            _ => return None,
        } * count;
        let start = if size <= 4 {
            e + 8
        } else {
            u32_at(e + 8)? as usize
        };
        out.push(Tag {
            tag,
            kind,
            count: count as u64,
            bytes: b.get(start..start + size)?.to_vec(),
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gdal::{Dataset, Metadata};

    fn wkt() -> String {
        gdal::spatial_ref::SpatialRef::from_epsg(32633)
            .expect("srs")
            .to_wkt()
            .expect("wkt")
    }

    #[test]
    fn overview_sizes_halve_until_one_tile() {
        assert_eq!(level_sizes(300, 200, 512), vec![(300, 200)]);
        assert_eq!(
            level_sizes(2000, 1100, 512),
            vec![(2000, 1100), (1000, 550), (500, 275)]
        );
        assert_eq!(level_sizes(1025, 10, 512), vec![(1025, 10), (512, 5)]);
        assert_eq!(
            level_sizes(2001, 3, 512),
            vec![(2001, 3), (1000, 1), (500, 1)]
        );
    }

    #[test]
    fn nearest_and_average_downsampling() {
        // Windows: 5 -> 2 pixels (ratio 2.5): nearest at round(0) = 0 and round(2.5) = 3.
        assert_eq!(window(0, 5, 2, OverviewResampling::Nearest), (0, 1));
        assert_eq!(window(1, 5, 2, OverviewResampling::Nearest), (3, 4));
        assert_eq!(window(0, 5, 2, OverviewResampling::Average), (0, 3));
        assert_eq!(window(1, 5, 2, OverviewResampling::Average), (3, 5));
        let cols = [(0, 2), (2, 3)];
        let even = [1u8, 2, 3];
        let odd = [4u8, 5, 6];
        let d = downsample(&[&even, &odd], &cols, 1, OverviewResampling::Nearest, None);
        assert_eq!(d, vec![1, 3]);
        let e = [1.0f32, f32::NAN, 3.0];
        let o = [3.0f32, f32::NAN, f32::NAN];
        let d = downsample(&[&e, &o], &cols, 1, OverviewResampling::Average, None);
        assert_eq!(d, vec![2.0, 3.0]);
        let all_nan = [f32::NAN; 2];
        let d = downsample(&[&all_nan], &[(0, 2)], 1, OverviewResampling::Average, None);
        assert!(d[0].is_nan());
    }

    /// A raster big enough for two overview levels and partial edge tiles, written in uneven
    /// row chunks, reads back through GDAL pixel for pixel with its georeferencing, nodata,
    /// colour table, description, metadata and overviews; GDAL sees a COG layout.
    #[test]
    fn classes_round_trip_through_gdal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("classes.tif");
        let (w, h) = (1100usize, 1030usize);
        let data: Vec<u8> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                if (x / 7 + y / 5) % 3 == 0 {
                    255
                } else {
                    ((x * 3 + y) % 4) as u8
                }
            })
            .collect();
        let gt = GeoTransform([500_000.0, 0.5, 0.0, 4_600_000.0, 0.0, -0.5]);
        let wkt = wkt();
        let legend = Legend {
            names: vec!["bg".into(), "a".into(), "b".into(), "c".into()],
            colors: vec![[0, 0, 0], [200, 10, 10], [10, 200, 10], [10, 10, 200]],
        };
        let spec = CogSpec {
            width: w,
            height: h,
            bands: 1,
            geotransform: &gt,
            crs_wkt: Some(&wkt),
            nodata: Some(255.0),
            descriptions: &["class".to_string()],
            legend: Some(&legend),
            metadata: &[("TESSERA_CLASSES".into(), "bg,a,b,c".into())],
            resampling: OverviewResampling::Nearest,
            options: CogOptions::default(),
        };
        let mut cog = CogWriter::<u8>::create(&path, &spec).expect("create");
        let mut y = 0;
        for chunk in [1usize, 7, 300, 512, 210] {
            cog.write_rows(&data[y * w..(y + chunk) * w]).expect("rows");
            y += chunk;
        }
        assert_eq!(y, h);
        cog.finish().expect("finish");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["classes.tif".to_string(), "classes.tif.aux.xml".to_string()],
            "temporaries left"
        );
        // The category names GDAL reads from the .aux.xml, and the classes inside the file
        // (band metadata) that a copy without the .aux.xml keeps.
        let category_names = |path: &Path| -> Vec<String> {
            let ds = Dataset::open(path).expect("open");
            // GDAL 3.6's GTiff loads the .aux.xml lazily, on a georeferencing or metadata
            // request (as gdalinfo makes), not on GetCategoryNames alone.
            let _ = ds.geo_transform();
            let band = ds.rasterband(1).expect("band");
            // SAFETY: valid band handle; the list belongs to the band.
            let list = unsafe { gdal_sys::GDALGetRasterCategoryNames(band.c_rasterband()) };
            let mut out = Vec::new();
            let mut i = 0;
            while !list.is_null() {
                // SAFETY: a NULL-terminated list of C strings.
                let p = unsafe { *list.add(i) };
                if p.is_null() {
                    break;
                }
                // SAFETY: a NUL-terminated string owned by the band.
                out.push(
                    unsafe { std::ffi::CStr::from_ptr(p) }
                        .to_string_lossy()
                        .into_owned(),
                );
                i += 1;
            }
            out
        };
        assert_eq!(category_names(&path), vec!["bg", "a", "b", "c"]);
        let alone = tempfile::tempdir().expect("tempdir");
        std::fs::copy(&path, alone.path().join("classes.tif")).expect("copy");
        let copy = Dataset::open(alone.path().join("classes.tif")).expect("open copy");
        let band = copy.rasterband(1).expect("band");
        assert_eq!(band.metadata_item("CLASS_COUNT", "").as_deref(), Some("4"));
        assert_eq!(band.metadata_item("CLASS_2", "").as_deref(), Some("b"));
        assert_eq!(
            band.metadata_item("CLASS_3_COLOR", "").as_deref(),
            Some("#0a0ac8")
        );
        let ct = band.color_table().expect("colour table of the copy");
        let c = ct.entry_as_rgb(1).expect("entry");
        assert_eq!((c.r, c.g, c.b), (200, 10, 10));
        // 3 x 2^8 entries in the TIFF colour map, by the format.
        assert_eq!(ct.entry_count(), 256);

        let ds = Dataset::open(&path).expect("open");
        assert_eq!(ds.raster_size(), (w, h));
        assert_eq!(ds.geo_transform().expect("gt"), gt.0);
        let srs = ds.spatial_ref().expect("srs");
        assert_eq!(srs.auth_code().expect("code"), 32633);
        assert_eq!(
            ds.metadata_item("LAYOUT", "IMAGE_STRUCTURE").as_deref(),
            Some("COG")
        );
        assert_eq!(
            ds.metadata_item("COMPRESSION", "IMAGE_STRUCTURE")
                .as_deref(),
            Some("DEFLATE")
        );
        assert_eq!(
            ds.metadata_item("TESSERA_CLASSES", "").as_deref(),
            Some("bg,a,b,c")
        );
        let band = ds.rasterband(1).expect("band");
        assert_eq!(band.description().expect("desc"), "class");
        assert_eq!(band.no_data_value(), Some(255.0));
        assert_eq!(band.block_size(), (512, 512));
        let ct = band.color_table().expect("colour table");
        let c = ct.entry_as_rgb(2).expect("entry");
        assert_eq!((c.r, c.g, c.b), (10, 200, 10));
        let got = band
            .read_as::<u8>((0, 0), (w, h), (w, h), None)
            .expect("read");
        assert!(got.data() == &data[..], "pixels differ");
        // The overviews equal those of GDAL's own COG driver on the same pixels, level by
        // level (sizes and every pixel: odd sizes make GDAL's sampling drift off 2j).
        let reference = dir.path().join("gdal.tif");
        {
            let mem = gdal::DriverManager::get_driver_by_name("MEM").expect("mem");
            let mut src = mem
                .create_with_band_type::<u8, _>("", w, h, 1)
                .expect("mem ds");
            src.set_geo_transform(&gt.0).expect("gt");
            let mut buf = gdal::raster::Buffer::new((w, h), data.clone());
            src.rasterband(1)
                .expect("band")
                .write((0, 0), (w, h), &mut buf)
                .expect("write");
            let cog = gdal::DriverManager::get_driver_by_name("COG").expect("cog");
            let opts: gdal::raster::RasterCreationOptions =
                "COMPRESS=DEFLATE OVERVIEWS=AUTO RESAMPLING=NEAREST"
                    .parse()
                    .expect("options");
            src.create_copy(&cog, &reference, &opts).expect("gdal cog");
        }
        let theirs = Dataset::open(&reference).expect("open gdal cog");
        let tb = theirs.rasterband(1).expect("band");
        assert_eq!(band.overview_count().expect("ovr"), 2);
        assert_eq!(tb.overview_count().expect("ovr"), 2);
        for k in 0..2 {
            let (mine, gdal) = (band.overview(k).expect("o"), tb.overview(k).expect("o"));
            assert_eq!(mine.size(), gdal.size(), "overview {k} size");
            let (ow, oh) = mine.size();
            let a = mine
                .read_as::<u8>((0, 0), (ow, oh), (ow, oh), None)
                .expect("r");
            let b = gdal
                .read_as::<u8>((0, 0), (ow, oh), (ow, oh), None)
                .expect("r");
            let diff = a
                .data()
                .iter()
                .zip(b.data())
                .filter(|(x, y)| x != y)
                .count();
            assert_eq!(diff, 0, "overview {k}: {diff} pixels differ from GDAL's");
        }
        assert_eq!(band.overview(0).expect("o").size(), (550, 515));
    }

    #[test]
    fn float_bands_with_nan_nodata_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("probabilities.tif");
        let (w, h, b) = (700usize, 600usize, 2usize);
        let mut data = vec![0f32; b * w * h];
        for band in 0..b {
            for i in 0..w * h {
                data[band * w * h + i] = if i % 97 == 0 {
                    f32::NAN
                } else {
                    (i % 1000) as f32 / 1000.0 + band as f32
                };
            }
        }
        let gt = GeoTransform([10.0, 2.0, 0.0, 20.0, 0.0, -2.0]);
        let wkt = wkt();
        let spec = CogSpec {
            width: w,
            height: h,
            bands: b,
            geotransform: &gt,
            crs_wkt: Some(&wkt),
            nodata: Some(f64::NAN),
            descriptions: &["p1".to_string(), "p2".to_string()],
            legend: None,
            metadata: &[],
            resampling: OverviewResampling::Average,
            options: CogOptions::default(),
        };
        let mut cog = CogWriter::<f32>::create(&path, &spec).expect("create");
        // Band-sequential chunks of 250, 250 and 100 rows.
        let mut y = 0;
        for chunk in [250usize, 250, 100] {
            let mut part = Vec::new();
            for band in 0..b {
                part.extend_from_slice(&data[band * w * h + y * w..band * w * h + (y + chunk) * w]);
            }
            cog.write_rows(&part).expect("rows");
            y += chunk;
        }
        cog.finish().expect("finish");
        let ds = Dataset::open(&path).expect("open");
        assert_eq!(ds.raster_count(), 2);
        for band in 0..b {
            let rb = ds.rasterband(band + 1).expect("band");
            assert_eq!(rb.description().expect("d"), format!("p{}", band + 1));
            assert!(rb.no_data_value().expect("nodata").is_nan());
            let got = rb
                .read_as::<f32>((0, 0), (w, h), (w, h), None)
                .expect("read");
            let want = &data[band * w * h..(band + 1) * w * h];
            for (g, e) in got.data().iter().zip(want) {
                assert!(g == e || (g.is_nan() && e.is_nan()));
            }
            assert_eq!(rb.overview_count().expect("ovr"), 1);
            let o = rb.overview(0).expect("o");
            assert_eq!(o.size(), (350, 300));
            let od = o
                .read_as::<f32>((0, 0), (350, 300), (350, 300), None)
                .expect("r");
            // Each overview pixel is the mean of the valid pixels of its 2 x 2 block.
            for (j, i) in [(1usize, 1usize), (0, 0), (349, 299), (100, 57)] {
                let vals: Vec<f32> = [(0, 0), (1, 0), (0, 1), (1, 1)]
                    .iter()
                    .map(|&(dx, dy)| want[(2 * i + dy) * w + 2 * j + dx])
                    .filter(|v| !v.is_nan())
                    .collect();
                let mean = vals.iter().sum::<f32>() / vals.len() as f32;
                assert!((od.data()[i * 350 + j] - mean).abs() < 1e-6, "({j},{i})");
            }
        }
    }

    /// Odd shapes (a single pixel, one row or column, just over one tile) read back exactly,
    /// with the same overviews as GDAL's own COG driver makes of the same pixels.
    #[test]
    fn odd_shapes_match_gdal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gt = GeoTransform([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]);
        for (w, h) in [
            (1usize, 1usize),
            (512, 512),
            (513, 1),
            (1, 1100),
            (1025, 1030),
        ] {
            let data: Vec<u8> = (0..w * h)
                .map(|i| ((i % w) * 7 + (i / w) * 3) as u8)
                .collect();
            let path = dir.path().join(format!("t_{w}x{h}.tif"));
            let spec = CogSpec {
                width: w,
                height: h,
                bands: 1,
                geotransform: &gt,
                crs_wkt: None,
                nodata: None,
                descriptions: &[],
                legend: None,
                metadata: &[],
                resampling: OverviewResampling::Nearest,
                options: CogOptions::default(),
            };
            let mut cog = CogWriter::<u8>::create(&path, &spec).expect("create");
            cog.write_rows(&data).expect("rows");
            cog.finish().expect("finish");
            let reference = dir.path().join(format!("g_{w}x{h}.tif"));
            {
                let mem = gdal::DriverManager::get_driver_by_name("MEM").expect("mem");
                let src = mem.create_with_band_type::<u8, _>("", w, h, 1).expect("ds");
                let mut buf = gdal::raster::Buffer::new((w, h), data.clone());
                src.rasterband(1)
                    .expect("band")
                    .write((0, 0), (w, h), &mut buf)
                    .expect("write");
                let cog = gdal::DriverManager::get_driver_by_name("COG").expect("cog");
                let opts: gdal::raster::RasterCreationOptions =
                    "COMPRESS=DEFLATE OVERVIEWS=AUTO RESAMPLING=NEAREST"
                        .parse()
                        .expect("options");
                src.create_copy(&cog, &reference, &opts).expect("gdal cog");
            }
            let (ours, theirs) = (
                Dataset::open(&path).expect("open"),
                Dataset::open(&reference).expect("open"),
            );
            let (a, b) = (
                ours.rasterband(1).expect("band"),
                theirs.rasterband(1).expect("band"),
            );
            let got = a.read_as::<u8>((0, 0), (w, h), (w, h), None).expect("r");
            assert!(got.data() == &data[..], "{w}x{h} pixels");
            let n = b.overview_count().expect("n");
            assert_eq!(a.overview_count().expect("n"), n, "{w}x{h} overview count");
            for k in 0..n as usize {
                let (oa, ob) = (a.overview(k).expect("o"), b.overview(k).expect("o"));
                assert_eq!(oa.size(), ob.size(), "{w}x{h} overview {k}");
                let (ow, oh) = oa.size();
                let x = oa
                    .read_as::<u8>((0, 0), (ow, oh), (ow, oh), None)
                    .expect("r");
                let y = ob
                    .read_as::<u8>((0, 0), (ow, oh), (ow, oh), None)
                    .expect("r");
                assert!(x.data() == y.data(), "{w}x{h} overview {k} pixels");
            }
        }
    }

    /// Average overviews of a float band with NaN nodata: the first level (an exact factor of
    /// two) equals GDAL's COG driver's AVERAGE overview of the same pixels.
    #[test]
    fn average_overview_matches_gdal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (w, h) = (1100usize, 1030usize);
        let data: Vec<f32> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                if (x * 31 + y * 17) % 11 == 0 {
                    f32::NAN
                } else {
                    ((x * 13 + y * 7) % 100) as f32 / 100.0
                }
            })
            .collect();
        let gt = GeoTransform([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]);
        let path = dir.path().join("p.tif");
        let spec = CogSpec {
            width: w,
            height: h,
            bands: 1,
            geotransform: &gt,
            crs_wkt: None,
            nodata: Some(f64::NAN),
            descriptions: &[],
            legend: None,
            metadata: &[],
            resampling: OverviewResampling::Average,
            options: CogOptions::default(),
        };
        let mut cog = CogWriter::<f32>::create(&path, &spec).expect("create");
        cog.write_rows(&data).expect("rows");
        cog.finish().expect("finish");
        let reference = dir.path().join("g.tif");
        {
            let mem = gdal::DriverManager::get_driver_by_name("MEM").expect("mem");
            let src = mem
                .create_with_band_type::<f32, _>("", w, h, 1)
                .expect("ds");
            let mut band = src.rasterband(1).expect("band");
            band.set_no_data_value(Some(f64::NAN)).expect("nodata");
            let mut buf = gdal::raster::Buffer::new((w, h), data.clone());
            band.write((0, 0), (w, h), &mut buf).expect("write");
            let cog = gdal::DriverManager::get_driver_by_name("COG").expect("cog");
            let opts: gdal::raster::RasterCreationOptions =
                "COMPRESS=DEFLATE OVERVIEWS=AUTO RESAMPLING=AVERAGE"
                    .parse()
                    .expect("options");
            src.create_copy(&cog, &reference, &opts).expect("gdal cog");
        }
        let (ours, theirs) = (
            Dataset::open(&path).expect("open"),
            Dataset::open(&reference).expect("open"),
        );
        let a = ours.rasterband(1).expect("b").overview(0).expect("o");
        let b = theirs.rasterband(1).expect("b").overview(0).expect("o");
        assert_eq!(a.size(), b.size());
        let (ow, oh) = a.size();
        let x = a
            .read_as::<f32>((0, 0), (ow, oh), (ow, oh), None)
            .expect("r");
        let y = b
            .read_as::<f32>((0, 0), (ow, oh), (ow, oh), None)
            .expect("r");
        let mut nan = 0;
        for (p, q) in x.data().iter().zip(y.data()) {
            assert_eq!(p.is_nan(), q.is_nan(), "{p} vs {q}");
            if p.is_nan() {
                nan += 1;
            } else {
                assert!((p - q).abs() < 1e-6, "{p} vs {q}");
            }
        }
        assert!(nan < ow * oh, "everything was nodata");
    }

    /// The BigTIFF layout (used past 4 GiB) reads back through GDAL as the classic one does,
    /// overviews included, and is still a COG.
    #[test]
    fn bigtiff_layout_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (w, h) = (1300usize, 700usize);
        let data: Vec<u8> = (0..w * h)
            .map(|i| ((i % w) / 9 + (i / w) / 4) as u8)
            .collect();
        let gt = GeoTransform([1000.0, 3.0, 0.0, 9000.0, 0.0, -3.0]);
        let wkt = wkt();
        let spec = CogSpec {
            width: w,
            height: h,
            bands: 1,
            geotransform: &gt,
            crs_wkt: Some(&wkt),
            nodata: Some(0.0),
            descriptions: &[],
            legend: None,
            metadata: &[],
            resampling: OverviewResampling::Nearest,
            options: CogOptions::default(),
        };
        let mut pixels = Vec::new();
        for big in [false, true] {
            let path = dir.path().join(format!("big_{big}.tif"));
            let mut cog = CogWriter::<u8>::create(&path, &spec).expect("create");
            cog.force_bigtiff = big;
            cog.write_rows(&data).expect("rows");
            cog.finish().expect("finish");
            let head = std::fs::read(&path).expect("read");
            assert_eq!(head[2], if big { 43 } else { 42 }, "TIFF version");
            let ds = Dataset::open(&path).expect("open");
            assert_eq!(
                ds.metadata_item("LAYOUT", "IMAGE_STRUCTURE").as_deref(),
                Some("COG")
            );
            assert_eq!(ds.geo_transform().expect("gt"), gt.0);
            let band = ds.rasterband(1).expect("band");
            let got = band.read_as::<u8>((0, 0), (w, h), (w, h), None).expect("r");
            assert!(got.data() == &data[..]);
            let o = band.overview(0).expect("overview");
            let (ow, oh) = o.size();
            let od = o
                .read_as::<u8>((0, 0), (ow, oh), (ow, oh), None)
                .expect("r");
            pixels.push(od.data().to_vec());
        }
        assert_eq!(pixels[0], pixels[1], "overviews differ between layouts");
    }

    /// A CRS GeoTIFF keys cannot hold (a rotated pole) survives in the `.aux.xml` GDAL
    /// reads beside the COG, as with GDAL's own writer.
    #[test]
    fn crs_beyond_geotiff_keys_goes_to_aux_xml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rotated.tif");
        let srs = gdal::spatial_ref::SpatialRef::from_proj4(
            "+proj=ob_tran +o_proj=longlat +o_lon_p=-162 +o_lat_p=39.25 +lon_0=180 +datum=WGS84",
        )
        .expect("srs");
        let wkt = srs.to_wkt().expect("wkt");
        let gt = GeoTransform([-10.0, 0.1, 0.0, 10.0, 0.0, -0.1]);
        let spec = CogSpec {
            width: 20,
            height: 10,
            bands: 1,
            geotransform: &gt,
            crs_wkt: Some(&wkt),
            nodata: None,
            descriptions: &[],
            legend: None,
            metadata: &[],
            resampling: OverviewResampling::Nearest,
            options: CogOptions::default(),
        };
        let mut cog = CogWriter::<u8>::create(&path, &spec).expect("create");
        cog.write_rows(&[7u8; 200]).expect("rows");
        cog.finish().expect("finish");
        assert!(dir.path().join("rotated.tif.aux.xml").exists());
        let ds = Dataset::open(&path).expect("open");
        let got = ds.spatial_ref().expect("srs");
        assert!(
            got.to_proj4().expect("proj4").contains("ob_tran"),
            "{:?}",
            got.to_proj4()
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["rotated.tif", "rotated.tif.aux.xml"]);
    }

    /// Every compression and predictor on every sample type, with a non-default tile size:
    /// GDAL (libtiff) decodes the tiles back to the same pixels and reports the compression,
    /// predictor and tile size asked for; the file is still a COG.
    #[test]
    fn creation_options_round_trip_through_gdal() {
        fn check<T: CogSample + gdal::raster::GdalType + std::fmt::Debug>(
            dir: &Path,
            data: &[T],
            (w, h, b): (usize, usize, usize),
            options: CogOptions,
            tag: &str,
        ) {
            let path = dir.join(format!("{tag}.tif"));
            let gt = GeoTransform([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]);
            let spec = CogSpec {
                width: w,
                height: h,
                bands: b,
                geotransform: &gt,
                crs_wkt: None,
                nodata: None,
                descriptions: &[],
                legend: None,
                metadata: &[],
                resampling: OverviewResampling::Nearest,
                options,
            };
            let mut cog = CogWriter::<T>::create(&path, &spec).expect("create");
            cog.write_rows(data).expect("rows");
            cog.finish().expect("finish");
            let ds = Dataset::open(&path).expect("open");
            let compression = options.compression.unwrap_or(Compression::Deflate);
            let want = match compression {
                Compression::None => None,
                c => Some(c.name().to_string()),
            };
            assert_eq!(
                ds.metadata_item("COMPRESSION", "IMAGE_STRUCTURE"),
                want,
                "{tag}"
            );
            assert_eq!(
                ds.metadata_item("LAYOUT", "IMAGE_STRUCTURE").as_deref(),
                Some("COG"),
                "{tag}"
            );
            let predictor = options.codec(T::FORMAT == 3).predictor;
            let want_predictor =
                (compression.takes_predictor() && predictor != 1).then(|| predictor.to_string());
            // GDAL reports the predictor of LZW, DEFLATE and ZSTD files only (LZMA's pixels
            // below still go through it).
            if compression != Compression::Lzma {
                assert_eq!(
                    ds.metadata_item("PREDICTOR", "IMAGE_STRUCTURE"),
                    want_predictor,
                    "{tag}"
                );
            }
            let block = options.block();
            for band in 0..b {
                let rb = ds.rasterband(band + 1).expect("band");
                assert_eq!(rb.block_size(), (block, block), "{tag}");
                let got = rb.read_as::<T>((0, 0), (w, h), (w, h), None).expect("read");
                assert!(
                    got.data() == &data[band * w * h..(band + 1) * w * h],
                    "{tag}: band {band} pixels differ"
                );
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (w, h) = (200usize, 150usize);
        let bytes: Vec<u8> = (0..2 * w * h)
            .map(|i| ((i % w) / 3 + (i / w) % 7 + (i % 5) * 40) as u8)
            .collect();
        let ids: Vec<u32> = (0..w * h).map(|i| (i / 37) as u32 * 1009).collect();
        let floats: Vec<f32> = (0..w * h)
            .map(|i| ((i % w) as f32 * 0.013).sin() + (i / w) as f32 * 0.5)
            .collect();
        let predictors = [
            None,
            Some(Predictor::No),
            Some(Predictor::Yes),
            Some(Predictor::Standard),
            Some(Predictor::FloatingPoint),
        ];
        for (compression, name) in Compression::ALL {
            for predictor in predictors {
                if compression == Compression::None && predictor.is_some() {
                    continue;
                }
                let options = CogOptions {
                    compression: Some(compression),
                    level: compression.levels().map(|l| l.0),
                    predictor,
                    block: Some(128),
                    overview_resampling: None,
                };
                let tag = format!("{name}_{predictor:?}");
                check::<u8>(dir.path(), &bytes, (w, h, 2), options, &format!("{tag}_u8"));
                check::<u32>(dir.path(), &ids, (w, h, 1), options, &format!("{tag}_u32"));
                check::<f32>(
                    dir.path(),
                    &floats,
                    (w, h, 1),
                    options,
                    &format!("{tag}_f32"),
                );
            }
        }
    }

    /// LZW past a full code table (4094 codes, then a Clear code) decodes through libtiff.
    #[test]
    fn lzw_table_resets_decode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (w, h) = (512usize, 512usize);
        // Noisy bytes fill the table many times over.
        let mut x = 12345u32;
        let data: Vec<u8> = (0..w * h)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let gt = GeoTransform([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]);
        let path = dir.path().join("lzw.tif");
        let spec = CogSpec {
            width: w,
            height: h,
            bands: 1,
            geotransform: &gt,
            crs_wkt: None,
            nodata: None,
            descriptions: &[],
            legend: None,
            metadata: &[],
            resampling: OverviewResampling::Nearest,
            options: CogOptions {
                compression: Some(Compression::Lzw),
                ..CogOptions::default()
            },
        };
        let mut cog = CogWriter::<u8>::create(&path, &spec).expect("create");
        cog.write_rows(&data).expect("rows");
        cog.finish().expect("finish");
        let ds = Dataset::open(&path).expect("open");
        let got = ds
            .rasterband(1)
            .expect("band")
            .read_as::<u8>((0, 0), (w, h), (w, h), None)
            .expect("read");
        assert!(got.data() == &data[..]);
    }

    #[test]
    fn unfinished_writer_leaves_nothing_and_short_input_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.tif");
        let gt = GeoTransform([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]);
        let spec = CogSpec {
            width: 10,
            height: 10,
            bands: 1,
            geotransform: &gt,
            crs_wkt: None,
            nodata: None,
            descriptions: &[],
            legend: None,
            metadata: &[],
            resampling: OverviewResampling::Nearest,
            options: CogOptions::default(),
        };
        let mut cog = CogWriter::<u8>::create(&path, &spec).expect("create");
        assert!(cog.write_rows(&[0u8; 15]).is_err(), "not whole rows");
        let err = cog.write_rows(&[0u8; 110]).expect_err("11 rows of 10");
        assert!(
            err.to_string().contains("more rows than the raster has"),
            "{err}"
        );
        cog.write_rows(&[1u8; 50]).expect("rows");
        let err = cog.finish().expect_err("rows missing");
        assert!(
            err.to_string().contains("5 rows were never written"),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert!(left.is_empty(), "{left:?}");
        let cog = CogWriter::<u8>::create(&path, &spec).expect("create");
        drop(cog);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
