//! `tessera bench-read`: the read + tile + scale path that feeds models, measured on its own:
//! tiles are read in parallel, scaled to `[0, 1]` float32 in the reader threads and packed
//! into CHW batches (`[batch, bands, size, size]`), exactly as a model stage receives them.

use std::time::Instant;

use ndarray::Array4;
use serde::Serialize;

use super::{peak_rss_bytes, PipelineError};
use crate::raster::{OpenOptions, Scaling, ScalingSpec, Scene};
use crate::tiling::{stream_tiles, GridOptions, ReadOptions, TileData, TileGrid};

#[derive(Debug)]
pub struct BenchReadJob {
    pub scene: String,
    pub grid: GridOptions,
    pub read: ReadOptions,
    pub scaling: ScalingSpec,
    pub batch_size: usize,
}

#[derive(Debug, Serialize)]
pub struct BenchReadReport {
    pub scene: String,
    pub width: usize,
    pub height: usize,
    pub tile_size: usize,
    pub batch_size: usize,
    pub threads: usize,
    pub tiles: usize,
    pub batches: usize,
    pub seconds: f64,
    pub tiles_per_second: f64,
    pub megapixels_per_second: f64,
    pub peak_rss_bytes: Option<u64>,
    /// Sum of every batch value: proves the batches were really filled, and lets two runs
    /// (or two implementations) be compared.
    pub checksum: f64,
}

/// Run the benchmark.
///
/// # Errors
/// As for `tessera tiles`.
pub fn run_bench_read(mut job: BenchReadJob) -> Result<BenchReadReport, PipelineError> {
    let start = Instant::now();
    let scene = Scene::open(&job.scene, &OpenOptions::default())?;
    if job.read.bands.is_empty() {
        job.read.bands = crate::raster::BandMapping::for_channels(scene.info(), 3);
    }
    let scaling = Scaling::resolve(&job.scaling, &scene, &job.read.bands)?;
    let grid = TileGrid::new(scene.info(), job.grid.clone())?;
    job.read.read_pixels = true;
    let (bands, size, batch) = (
        job.read.bands.len(),
        grid.tile_size(),
        job.batch_size.max(1),
    );
    let plane = size * size;
    let mut current = Array4::<f32>::zeros((batch, bands, size, size));
    let (mut filled, mut batches, mut tiles, mut checksum) = (0usize, 0usize, 0usize, 0f64);
    let mut flush = |b: &Array4<f32>, n: usize| {
        // Stand-in for the model: consume the batch.
        checksum += b
            .slice(ndarray::s![..n, .., .., ..])
            .iter()
            .map(|&v| f64::from(v))
            .sum::<f64>();
    };
    let prepare = |t: &mut TileData<f32>| {
        for c in 0..bands {
            let band = &mut t.pixels[c * plane..(c + 1) * plane];
            scaling.apply(c, band);
            for (v, &ok) in band.iter_mut().zip(t.valid.iter()) {
                if ok == 0 {
                    *v = 0.0;
                }
            }
        }
    };
    stream_tiles::<f32, PipelineError, _, _>(&scene, &grid, &job.read, prepare, |t| {
        let slot = current
            .as_slice_mut()
            .map(|s| &mut s[filled * bands * plane..(filled + 1) * bands * plane]);
        if let Some(slot) = slot {
            slot.copy_from_slice(&t.pixels);
        }
        filled += 1;
        tiles += 1;
        if filled == batch {
            flush(&current, filled);
            batches += 1;
            filled = 0;
        }
        Ok(())
    })?;
    if filled > 0 {
        flush(&current, filled);
        batches += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(BenchReadReport {
        scene: job.scene,
        width: scene.width(),
        height: scene.height(),
        tile_size: size,
        batch_size: batch,
        threads: job.read.threads,
        tiles,
        batches,
        seconds,
        tiles_per_second: tiles as f64 / seconds,
        megapixels_per_second: (tiles * plane) as f64 / seconds / 1e6,
        peak_rss_bytes: peak_rss_bytes(),
        checksum,
    })
}
