//! Parallel, streaming tile reads with bounded memory.
//!
//! Reader threads (a dedicated rayon pool, one GDAL handle per thread) feed a bounded channel;
//! the caller consumes tiles on its own thread as they arrive, so inference or writing
//! overlaps with decoding. Work is split into vertical *stripes* of tile columns, each read top
//! to bottom by one thread: GDAL decodes whole blocks, so keeping a stripe's block row in the
//! block cache while the next tile row is read means an overlapping or adjacent tile never
//! decodes the same compressed block again. Stripes are at most ~4096 source pixels wide, so the
//! cache needed (and set, see [`crate::raster::set_block_cache_bytes`]) depends on the tile
//! and block sizes, not on the scene's width or area.
//!
//! Tiles arrive in no particular order; each carries its grid position.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;

use rayon::prelude::*;

use super::pool::{BufferPool, PooledBuf};
use super::{Tile, TileGrid, TilingError};
use crate::raster::{
    check_budget, set_block_cache_bytes, BandMapping, OpenOptions, Placement, Resampling, Sample,
    Scene, WindowReader,
};

/// Target width of one reader stripe, in source pixels.
const STRIPE_SOURCE_WIDTH: f64 = 4096.0;

/// How tiles are read.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    pub bands: BandMapping,
    pub resampling: Resampling,
    /// Reader threads (at least 1).
    pub threads: usize,
    /// Tiles that may wait in the channel for the consumer.
    pub queue: usize,
    /// Tiles whose valid fraction is below this are skipped (tiles with no valid pixel are
    /// always skipped).
    pub min_valid: f64,
    /// Value written into padding (outside the scene). Invalid pixels inside the scene keep
    /// the values GDAL read; use [`TileData::valid`] to tell them apart.
    pub fill: f64,
    /// Read pixel values (false: only validity, e.g. to list a grid).
    pub read_pixels: bool,
    /// The order tiles are read in.
    pub order: ReadOrder,
    /// Hand skipped tiles to the consumer too (with no pixels and `valid_fraction` 0), for
    /// consumers that track which parts of the grid are finished.
    pub deliver_skipped: bool,
    /// Hand tiles to the consumer in row-major grid order (reads run row-major and a small
    /// reorder buffer restores the order), so batches, and so model outputs and blending,
    /// are the same from run to run whatever the thread timing.
    pub ordered: bool,
}

/// The order tiles are read in (tiles still arrive slightly out of order: several readers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadOrder {
    /// Vertical stripes of tile columns, each read top to bottom by one reader: every
    /// compressed block is decoded once, whatever the overlap (best for throughput).
    #[default]
    Stripes,
    /// Row by row over the whole width, readers taking the next tile: the order streaming
    /// mosaics need to finish rows early (blocks on a reader boundary may be decoded twice).
    RowMajor,
}

/// One tile's samples, band-sequential (`[band][row][col]`), and its validity.
#[derive(Debug)]
pub struct TileData<T> {
    pub tile: Tile,
    /// `bands * size * size` samples (empty when pixels were not requested).
    pub pixels: PooledBuf<T>,
    /// `size * size` flags: 1 where the pixel is inside the scene and valid.
    pub valid: PooledBuf<u8>,
    pub valid_fraction: f64,
}

/// Counts from one pass over a grid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    pub tiles_total: usize,
    pub tiles_read: usize,
    pub tiles_skipped: usize,
}

enum Message<T> {
    Tile(TileData<T>),
    Skipped(usize),
    SkippedTile(TileData<T>),
    Failed(TilingError),
}

/// Read every tile of `grid` from `scene`, run `prepare` on it in the reader thread (scaling,
/// normalisation: per-tile work that should run in parallel), and hand each kept tile to
/// `consume`, on the calling thread, as it arrives. Stops at the first read error or consumer
/// error.
///
/// # Errors
/// The first error from a reader (as `E::from`) or from `consume`.
pub fn stream_tiles<T, E, P, F>(
    scene: &Scene,
    grid: &TileGrid,
    options: &ReadOptions,
    prepare: P,
    mut consume: F,
) -> Result<StreamStats, E>
where
    T: Sample,
    E: From<TilingError>,
    P: Fn(&mut TileData<T>) + Sync,
    F: FnMut(TileData<T>) -> Result<(), E>,
{
    let threads = options.threads.max(1);
    let queue = options.queue.max(1);
    let (pool, stripes) =
        reader_pool::<T>(scene, grid, options, threads, queue).map_err(E::from)?;

    let (tx, rx) = sync_channel::<Message<T>>(queue);
    // Tiles in flight: the queue, one per reader, one with the consumer (and one it may keep).
    let pools = Pools {
        pixels: BufferPool::new(queue + threads + 2),
        valid: BufferPool::new(queue + threads + 2),
    };
    let cancel = AtomicBool::new(false);
    let mut stats = StreamStats {
        tiles_total: grid.len(),
        ..Default::default()
    };
    // GDAL handles are not `Sync`: each reader thread opens its own from the path.
    let path = scene.path().to_string();
    let open = OpenOptions {
        pixel_coords: scene.info().pixel_coords,
    };
    std::thread::scope(|s| {
        let cancel = &cancel;
        let stripes = &stripes;
        let (path, open, prepare, pools) = (&path, &open, &prepare, &pools);
        s.spawn(move || {
            // Read one tile and send it; false when the stream must stop.
            let one = |handle: &Scene, row: usize, col: usize| -> bool {
                if cancel.load(Ordering::Relaxed) {
                    return false;
                }
                let tile = grid.tile(row, col);
                let msg = match read_tile::<T>(handle, grid, tile.clone(), options, pools) {
                    Ok(Some(mut t)) => {
                        prepare(&mut t);
                        Message::Tile(t)
                    }
                    Ok(None) if options.deliver_skipped => Message::SkippedTile(TileData {
                        tile,
                        pixels: PooledBuf::from(Vec::new()),
                        valid: PooledBuf::from(Vec::new()),
                        valid_fraction: 0.0,
                    }),
                    Ok(None) => Message::Skipped(row * grid.cols() + col),
                    Err(e) => {
                        cancel.store(true, Ordering::Relaxed);
                        Message::Failed(e)
                    }
                };
                tx.send(msg).is_ok()
            };
            let opened = |handle: &Result<Scene, crate::raster::RasterError>| -> Option<()> {
                if let Err(e) = handle {
                    cancel.store(true, Ordering::Relaxed);
                    let _ = tx.send(Message::Failed(TilingError::Raster(e.clone())));
                    return None;
                }
                Some(())
            };
            let order = if options.ordered {
                ReadOrder::RowMajor
            } else {
                options.order
            };
            pool.install(|| match order {
                ReadOrder::Stripes => {
                    stripes.par_iter().with_max_len(1).for_each_init(
                        || Scene::open(path, open),
                        |handle, cols| {
                            if opened(handle).is_none() {
                                return;
                            }
                            let Ok(handle) = handle else { return };
                            for row in 0..grid.rows() {
                                for col in cols.clone() {
                                    if !one(handle, row, col) {
                                        return;
                                    }
                                }
                            }
                        },
                    );
                }
                ReadOrder::RowMajor => {
                    let next = std::sync::atomic::AtomicUsize::new(0);
                    (0..threads).into_par_iter().with_max_len(1).for_each(|_| {
                        let handle = Scene::open(path, open);
                        if opened(&handle).is_none() {
                            return;
                        }
                        let Ok(handle) = handle else { return };
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= grid.len() || !one(&handle, i / grid.cols(), i % grid.cols()) {
                                return;
                            }
                        }
                    });
                }
            });
            drop(tx);
        });

        let result = deliver(rx, grid, options.ordered, &mut stats, &mut consume);
        cancel.store(true, Ordering::Relaxed);
        result
    })?;
    Ok(stats)
}

/// Check the read against the scene and the memory budget, size GDAL's block cache for it and
/// start the reader pool; the stripes of tile columns the readers take.
fn reader_pool<T: Sample>(
    scene: &Scene,
    grid: &TileGrid,
    options: &ReadOptions,
    threads: usize,
    queue: usize,
) -> Result<(rayon::ThreadPool, Vec<std::ops::Range<usize>>), TilingError> {
    // Validate the mapping before starting threads.
    WindowReader::new(scene, &options.bands, options.resampling)?;
    check_tile_buffers::<T>(scene, grid, options, queue + threads + 2)?;
    let stripes = stripes(grid, threads);
    set_block_cache_bytes(cache_bytes(scene, grid, &options.bands, threads, &stripes));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("tessera-read-{i}"))
        .build()
        .map_err(|e| TilingError::Threads(e.to_string()))?;
    Ok((pool, stripes))
}

/// The consumer side: hand the readers' tiles to `consume` (in grid order when `ordered`),
/// counting them, until the readers are done or something fails. Returning drops the
/// receiver, which unblocks readers waiting to send.
fn deliver<T, E, F>(
    rx: std::sync::mpsc::Receiver<Message<T>>,
    grid: &TileGrid,
    ordered: bool,
    stats: &mut StreamStats,
    consume: &mut F,
) -> Result<(), E>
where
    E: From<TilingError>,
    F: FnMut(TileData<T>) -> Result<(), E>,
{
    let mut result = Ok(());
    // Ordered delivery: messages wait here until every earlier grid position has gone.
    let mut waiting: std::collections::BTreeMap<usize, Message<T>> = Default::default();
    let mut next_index = 0usize;
    let index_of = |m: &Message<T>| match m {
        Message::Tile(t) | Message::SkippedTile(t) => Some(t.tile.row * grid.cols() + t.tile.col),
        Message::Skipped(i) => Some(*i),
        Message::Failed(_) => None,
    };
    let mut ready = rx.into_iter().flat_map(|msg| {
        let mut out = Vec::new();
        match index_of(&msg) {
            Some(i) if ordered => {
                waiting.insert(i, msg);
                while let Some(m) = waiting.remove(&next_index) {
                    out.push(m);
                    next_index += 1;
                }
            }
            _ => out.push(msg),
        }
        out
    });
    for msg in &mut ready {
        match msg {
            Message::Tile(t) => {
                stats.tiles_read += 1;
                if let Err(e) = consume(t) {
                    result = Err(e);
                    break;
                }
            }
            Message::Skipped(_) => stats.tiles_skipped += 1,
            Message::SkippedTile(t) => {
                stats.tiles_skipped += 1;
                if let Err(e) = consume(t) {
                    result = Err(e);
                    break;
                }
            }
            Message::Failed(e) => {
                result = Err(E::from(e));
                break;
            }
        }
    }
    result
}

/// Refuse reads whose tile buffers in flight (`in_flight` tiles of every mapped band) do not
/// fit the memory budget: a header's band count must not size an allocation unchecked.
fn check_tile_buffers<T: Sample>(
    scene: &Scene,
    grid: &TileGrid,
    options: &ReadOptions,
    in_flight: usize,
) -> Result<(), crate::raster::RasterError> {
    let size = grid.tile_size() as u128;
    let bands = if options.read_pixels {
        options.bands.bands().len() as u128
    } else {
        0
    };
    let per_tile = size * size * (bands * std::mem::size_of::<T>() as u128 + 1);
    check_budget(
        scene.path(),
        || {
            format!(
                "{in_flight} tiles in flight of {}x{} pixels x {bands} band(s)",
                grid.tile_size(),
                grid.tile_size()
            )
        },
        per_tile * in_flight as u128,
    )
}

struct Pools<T> {
    pixels: BufferPool<T>,
    valid: BufferPool<u8>,
}

fn read_tile<T: Sample>(
    scene: &Scene,
    grid: &TileGrid,
    tile: Tile,
    options: &ReadOptions,
    pools: &Pools<T>,
) -> Result<Option<TileData<T>>, TilingError> {
    let reader = WindowReader::new(scene, &options.bands, options.resampling)?;
    let size = tile.size;
    let n = size * size;
    let req = grid.source_window(&tile);
    let place = Placement {
        offset: 0,
        line_stride: size,
        band_stride: n,
    };
    // A window that fills the whole tile overwrites every element: no need to clear the
    // buffers first (3 MB of float32 per 512-px RGB tile).
    let covers = req.out_w == size && req.out_h == size;
    let mut valid = if covers {
        pools.valid.take_overwritten(n, 0)
    } else {
        pools.valid.take(n, 0)
    };
    reader.read_valid(&req, &mut valid, &place)?;
    let count = valid.iter().filter(|&&v| v != 0).count();
    let valid_fraction = count as f64 / n as f64;
    if count == 0 || valid_fraction < options.min_valid {
        return Ok(None);
    }
    let pixels = if options.read_pixels {
        let len = reader.band_count() * n;
        let fill = T::from_f64(options.fill);
        let mut pixels = if covers {
            pools.pixels.take_overwritten(len, fill)
        } else {
            pools.pixels.take(len, fill)
        };
        reader.read_into(&req, &mut pixels, &place)?;
        pixels
    } else {
        PooledBuf::from(Vec::new())
    };
    Ok(Some(TileData {
        tile,
        pixels,
        valid,
        valid_fraction,
    }))
}

/// Split the grid's columns into stripes: at least one per thread, each at most about
/// [`STRIPE_SOURCE_WIDTH`] source pixels wide.
fn stripes(grid: &TileGrid, threads: usize) -> Vec<std::ops::Range<usize>> {
    let cols = grid.cols();
    let source_width = grid.working_width as f64 * grid.scale.0;
    let wanted = threads.max((source_width / STRIPE_SOURCE_WIDTH).ceil() as usize);
    let n = wanted.clamp(1, cols);
    (0..n)
        .map(|i| (i * cols / n)..((i + 1) * cols / n))
        .collect()
}

/// Block cache big enough for every thread to keep the block rows under one tile row of its
/// stripe (a tile's height plus one block row) and no bigger.
fn cache_bytes(
    scene: &Scene,
    grid: &TileGrid,
    bands: &BandMapping,
    threads: usize,
    stripes: &[std::ops::Range<usize>],
) -> usize {
    let info = scene.info();
    let widest = stripes.iter().map(|r| r.len()).max().unwrap_or(1);
    let stride = grid.options.tile_size - grid.options.overlap;
    let stripe_src_w = ((widest * stride + grid.options.tile_size) as f64 * grid.scale.0) as usize;
    let tile_src_h = (grid.options.tile_size as f64 * grid.scale.1) as usize;
    let mut per_thread = 0usize;
    for &b in bands.bands() {
        let band = &info.bands[b - 1];
        let (bw, bh) = band.block_size;
        let bytes = dtype_bytes(&band.dtype);
        let w = stripe_src_w.min(info.width) + bw;
        let h = tile_src_h.min(info.height) + bh;
        per_thread += w * h * bytes;
    }
    (per_thread * threads).max(16 << 20)
}

fn dtype_bytes(dtype: &str) -> usize {
    match dtype {
        "uint8" => 1,
        "uint16" | "int16" => 2,
        "uint32" | "int32" | "float32" => 4,
        _ => 8,
    }
}
