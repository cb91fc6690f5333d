//! One read pass feeding several model stages (multi-model pipelines).
//!
//! Each stage job runs on its own thread as it would alone, but instead of reading the scene
//! it receives tiles from a [`FeedPort`]. A [`SharedReader`] first collects every stage's
//! [`FeedPlan`] (the grid, bands and scaling the stage settled on after loading its model),
//! checks that they agree, then reads and scales each tile once and hands the same tile to
//! every stage; stages only normalise their own copy. A stage that fails stops receiving; the
//! others go on. The end of the stream is an explicit message, so a stage never mistakes a
//! reader that stopped early for a finished scene.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;

use super::PipelineError;
use crate::raster::{BandMapping, OpenOptions, Resampling, Scaling, Scene};
use crate::tiling::{
    stream_tiles, GridOptions, ReadOptions, ReadOrder, StreamStats, Tile, TileData, TileGrid,
};

/// A tile read and scaled to `[0, 1]` once, shared by every stage.
#[derive(Debug)]
pub struct SharedTile {
    pub tile: Tile,
    /// Band-sequential samples; empty for a skipped tile.
    pub pixels: Vec<f32>,
    pub valid: Vec<u8>,
    pub valid_fraction: f64,
}

enum FeedMessage {
    Tile(Arc<SharedTile>),
    End(StreamStats),
}

/// How a stage wants the scene read: every stage of one pass must want the same.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedPlan {
    pub scene: String,
    pub grid: GridOptions,
    pub scaling: Scaling,
    pub bands: BandMapping,
    pub resampling: Resampling,
    pub min_valid: f64,
    pub fill: f64,
}

impl FeedPlan {
    /// The plan of a stage that reads `scene` with these options.
    pub(crate) fn new(scene: &str, grid: &TileGrid, read: &ReadOptions, scaling: &Scaling) -> Self {
        FeedPlan {
            scene: scene.to_string(),
            grid: grid.options.clone(),
            scaling: scaling.clone(),
            bands: read.bands.clone(),
            resampling: read.resampling,
            min_valid: read.min_valid,
            fill: read.fill,
        }
    }

    /// What differs between two plans, in the user's terms.
    fn difference(&self, other: &FeedPlan) -> String {
        let (a, b) = (&self.grid, &other.grid);
        if a.tile_size != b.tile_size {
            format!("tile size {} vs {}", a.tile_size, b.tile_size)
        } else if a.overlap != b.overlap {
            format!("overlap {} vs {}", a.overlap, b.overlap)
        } else if a.target_gsd != b.target_gsd {
            format!("target GSD {:?} vs {:?}", a.target_gsd, b.target_gsd)
        } else if self.bands != other.bands {
            "band mapping".into()
        } else if self.scaling != other.scaling {
            "scaling".into()
        } else {
            "tiling options".into()
        }
    }
}

/// A stage's end of a shared pass.
pub struct FeedPort {
    plan: Sender<FeedPlan>,
    tiles: Receiver<FeedMessage>,
}

/// The reader's end for one stage.
struct StageEnd {
    name: String,
    plan: Receiver<FeedPlan>,
    tiles: SyncSender<FeedMessage>,
}

/// Reads a scene once for several stages.
pub struct SharedReader {
    stages: Vec<StageEnd>,
    queue: usize,
}

/// Ports for stages named `names` (in order) and the reader that feeds them; each stage may
/// hold `queue` tiles it has not consumed yet.
pub fn shared_pass(names: &[String], queue: usize) -> (Vec<FeedPort>, SharedReader) {
    let queue = queue.max(1);
    let mut ports = Vec::new();
    let mut stages = Vec::new();
    for name in names {
        let (plan_tx, plan_rx) = channel();
        let (tile_tx, tile_rx) = sync_channel(queue);
        ports.push(FeedPort {
            plan: plan_tx,
            tiles: tile_rx,
        });
        stages.push(StageEnd {
            name: name.clone(),
            plan: plan_rx,
            tiles: tile_tx,
        });
    }
    (ports, SharedReader { stages, queue })
}

impl std::fmt::Debug for FeedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FeedPort")
    }
}

impl FeedPort {
    /// Announce this stage's plan, then hand every tile to `consume` as [`stream_tiles`]
    /// would: scaled tiles normalised by `normalise`, skipped tiles only when `deliver_skipped`.
    pub(crate) fn stream<F>(
        self,
        plan: FeedPlan,
        deliver_skipped: bool,
        normalise: &dyn Fn(&mut [f32], &[u8]),
        mut consume: F,
    ) -> Result<StreamStats, PipelineError>
    where
        F: FnMut(TileData<f32>) -> Result<(), PipelineError>,
    {
        let stopped = || PipelineError::worker("shared tile reader", "stopped");
        self.plan.send(plan).map_err(|_| stopped())?;
        loop {
            match self.tiles.recv().map_err(|_| stopped())? {
                FeedMessage::End(stats) => return Ok(stats),
                FeedMessage::Tile(shared) => {
                    if shared.pixels.is_empty() && !deliver_skipped {
                        continue;
                    }
                    let mut pixels = shared.pixels.clone();
                    if !pixels.is_empty() {
                        normalise(&mut pixels, &shared.valid);
                    }
                    consume(TileData {
                        tile: shared.tile.clone(),
                        pixels: pixels.into(),
                        valid: shared.valid.clone().into(),
                        valid_fraction: shared.valid_fraction,
                    })?;
                }
            }
        }
    }
}

impl SharedReader {
    /// Wait for every stage's plan, check that they agree, read the scene once with `threads`
    /// readers and feed every stage still running.
    ///
    /// # Errors
    /// Stages that want different tiling, or a read error. Stages that fail on their own are
    /// not errors here (their own results say why).
    pub fn run(self, open: &OpenOptions, threads: usize) -> Result<StreamStats, PipelineError> {
        let mut live: Vec<(String, SyncSender<FeedMessage>)> = Vec::new();
        let mut plan: Option<(String, FeedPlan)> = None;
        for stage in self.stages {
            // A stage that failed before reading dropped its port.
            let Ok(p) = stage.plan.recv() else { continue };
            match &plan {
                None => plan = Some((stage.name.clone(), p)),
                Some((first, q)) if *q != p => {
                    return Err(PipelineError::StageTiling {
                        first: first.clone(),
                        second: stage.name.clone(),
                        difference: q.difference(&p).to_string(),
                    });
                }
                Some(_) => {}
            }
            live.push((stage.name, stage.tiles));
        }
        let Some((_, plan)) = plan else {
            return Ok(StreamStats::default());
        };
        let scene = Scene::open(&plan.scene, open)?;
        let grid = TileGrid::new(scene.info(), plan.grid.clone())?;
        let read = ReadOptions {
            bands: plan.bands.clone(),
            resampling: plan.resampling,
            threads: threads.max(1),
            queue: self.queue,
            min_valid: plan.min_valid,
            fill: plan.fill,
            read_pixels: true,
            order: ReadOrder::RowMajor,
            deliver_skipped: true,
            ordered: true,
        };
        let scaling = &plan.scaling;
        let plane = grid.tile_size() * grid.tile_size();
        let prepare = |t: &mut TileData<f32>| {
            for c in 0..plan.bands.len() {
                scaling.apply(c, &mut t.pixels[c * plane..(c + 1) * plane]);
            }
        };
        let stats = stream_tiles::<f32, PipelineError, _, _>(&scene, &grid, &read, prepare, |t| {
            let shared = Arc::new(SharedTile {
                tile: t.tile,
                pixels: t.pixels.into_vec(),
                valid: t.valid.into_vec(),
                valid_fraction: t.valid_fraction,
            });
            live.retain(|(_, tx)| tx.send(FeedMessage::Tile(Arc::clone(&shared))).is_ok());
            if live.is_empty() {
                return Err(PipelineError::worker(
                    "shared tile reader",
                    "has no stage left: every stage stopped before the end of the scene",
                ));
            }
            Ok(())
        })?;
        for (_, tx) in &live {
            let _ = tx.send(FeedMessage::End(stats));
        }
        Ok(stats)
    }
}
