//! Scene instances from per-tile instance masks, bounded in memory by the scene width.
//!
//! Instance segmentation over tiles has the problem of detection, and worse: an object cut by
//! a tile edge is two half masks, and an object in the overlap of two tiles is two masks of
//! the same thing. Here the identity of an instance is settled *before* any mask is made:
//! every instance is a box prompt of the whole scene (detections already merged across tiles
//! by [`crate::stitch::boxes::merge`], or boxes the user gave), and each tile refines only the
//! boxes that reach its **core** — the part of the tile that no other tile owns. The cores
//! partition the working grid: between two neighbouring tiles the cut runs through the middle
//! of their overlap (so every pixel is decided by the tile that sees it furthest from its
//! edge, where a promptable segmenter has the most context). A box crossing a seam is refined
//! in every tile whose core it reaches (as the part of the box inside that tile), and the
//! parts join into one instance because they carry the same box index, whatever the masks
//! look like: one id, one polygon (per connected part), one score — never two halves, never
//! two copies.
//!
//! **Pixels.** An instance's pixels are the pixels of its mask inside its box: a mask pixel
//! outside the box is dropped, so the tiles that refine a box agree on where it can reach (a
//! tile refines a box only when the box reaches its core). Where masks of several boxes
//! claim a pixel, the higher mask score wins, then the lower box index (boxes are in a fixed
//! order). Pixels of skipped tiles and nodata pixels belong to no instance and are nodata in
//! the class raster.
//!
//! **Ids.** Instance ids are 1, 2, ... in the raster order of each instance's first pixel (top
//! to bottom, left to right), assigned as rows are finished: they depend only on the pixels,
//! never on thread timing, so reruns give identical ids. Boxes whose masks came out empty get
//! no id.
//!
//! **Score.** The mean of the mask scores over the instance's pixels (each tile's part weighs
//! by the pixels it gave).
//!
//! **Memory.** Rows are finished as soon as every tile whose core covers them has arrived and
//! handed to an [`InstanceSink`] (the id raster, the class raster); each instance is
//! polygonized by a streaming polygonizer over its box's columns as its rows pass
//! ([`StreamPolygonizer`]). What is held is a band of rows of the scene width (about a tile
//! row), the open boxes' polygonizers, and per box a few numbers: memory grows with the scene
//! width and the number of boxes, never with the scene's area.

use std::collections::VecDeque;

use geo::Polygon;
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{RTree, AABB};

use crate::output::polygonize_stream::StreamPolygonizer;
use crate::raster::GeoTransform;
use crate::stitch::mask::NODATA_CLASS;
use crate::tiling::{Tile, TileGrid};

/// A pixel that no valid tile pixel covered (a skipped tile, nodata).
const UNSEEN: u32 = u32::MAX;

/// A box prompt over the scene, in working-grid pixel coordinates (column right, row down;
/// pixel corners, so the top-left pixel spans `0..1`).
#[derive(Clone, Debug, PartialEq)]
pub struct PromptBox {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
    /// Index into the job's labels (the class raster holds `class + 1`, 0 is background).
    pub class: usize,
    /// The box's own score (the detector's; 1 for boxes without one).
    pub score: f32,
    /// Where the box came from: the detector tile of its best part, or the file's feature.
    pub source: String,
}

/// A rectangle of working-grid pixels, `x0..x1` by `y0..y1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelRect {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl PixelRect {
    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }

    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }

    /// The common part, if any pixel is shared.
    pub fn intersect(&self, o: &PixelRect) -> Option<PixelRect> {
        let r = PixelRect {
            x0: self.x0.max(o.x0),
            y0: self.y0.max(o.y0),
            x1: self.x1.min(o.x1),
            y1: self.y1.min(o.y1),
        };
        (r.x0 < r.x1 && r.y0 < r.y1).then_some(r)
    }
}

impl PromptBox {
    /// The working-grid pixels whose centres lie inside the box, clipped to a `width` x
    /// `height` grid; `None` when there are none.
    pub fn pixels(&self, width: usize, height: usize) -> Option<PixelRect> {
        let lo = |v: f64, n: usize| (v - 0.5).ceil().clamp(0.0, n as f64) as usize;
        let r = PixelRect {
            x0: lo(self.x0, width),
            y0: lo(self.y0, height),
            x1: lo(self.x1, width),
            y1: lo(self.y1, height),
        };
        (r.x0 < r.x1 && r.y0 < r.y1).then_some(r)
    }

    /// The box in `tile`'s pixel coordinates, clipped to the tile: `[x0, y0, x1, y1]`.
    pub fn in_tile(&self, tile: &Tile) -> [f32; 4] {
        let n = tile.size as f64;
        let (tx, ty) = (tile.x as f64, tile.y as f64);
        let c = |v: f64, o: f64| (v - o).clamp(0.0, n) as f32;
        [
            c(self.x0, tx),
            c(self.y0, ty),
            c(self.x1, tx),
            c(self.y1, ty),
        ]
    }
}

/// Where the cores of a row (or column) of tiles end: `cuts[k]..cuts[k + 1]` is tile `k`'s
/// core along the axis; neighbouring tiles are cut in the middle of their overlap, the first
/// core starts at 0 and the last ends at `extent`. Tiles that do not overlap are cut where
/// the next one starts.
pub fn core_cuts(offsets: &[usize], size: usize, extent: usize) -> Vec<usize> {
    let mut cuts = Vec::with_capacity(offsets.len() + 1);
    cuts.push(0);
    for k in 1..offsets.len() {
        let (prev_end, next) = (offsets[k - 1] + size, offsets[k]);
        let cut = if prev_end > next {
            next + (prev_end - next) / 2
        } else {
            next
        };
        cuts.push(cut.min(extent));
    }
    cuts.push(extent);
    cuts
}

/// One tile's mask of one box, over `region` (working-grid pixels: the tile's core inside
/// the box).
#[derive(Clone, Debug, PartialEq)]
pub struct TileInstance {
    /// The box's index in the stitcher's box list.
    pub index: usize,
    pub region: PixelRect,
    /// `region.width() * region.height()` flags, row-major: 1 where the mask holds.
    pub mask: Vec<u8>,
    /// The refiner's score of this mask.
    pub score: f32,
}

impl TileInstance {
    /// From a mask over the whole tile (`tile.size` squared values, row-major), keeping the
    /// pixels of `region` where `on` holds.
    pub fn from_tile_mask<T: Copy>(
        index: usize,
        region: PixelRect,
        tile: &Tile,
        tile_mask: &[T],
        on: impl Fn(T) -> bool,
        score: f32,
    ) -> TileInstance {
        let n = tile.size;
        let mut mask = Vec::with_capacity(region.width() * region.height());
        for y in region.y0..region.y1 {
            let row = (y - tile.y) * n;
            for x in region.x0..region.x1 {
                let v = tile_mask.get(row + x - tile.x).copied();
                mask.push(u8::from(v.is_some_and(&on)));
            }
        }
        TileInstance {
            index,
            region,
            mask,
            score,
        }
    }
}

/// A box a tile must refine: its index, the box in the tile's pixels, and the part of the
/// tile's core it covers.
#[derive(Clone, Debug, PartialEq)]
pub struct TilePrompt {
    pub index: usize,
    pub tile_box: [f32; 4],
    pub region: PixelRect,
}

/// Receives finished rows, top to bottom.
pub trait InstanceSink {
    type Error;
    /// `rows` rows from row `y0`: instance ids (0 = none) and classes (0 = background, label
    /// index + 1, [`NODATA_CLASS`] where no valid pixel was seen), `rows * width` each.
    fn write_rows(
        &mut self,
        y0: usize,
        rows: usize,
        ids: &[u32],
        classes: &[u8],
    ) -> Result<(), Self::Error>;
}

/// One instance of the scene.
#[derive(Clone, Debug)]
pub struct Instance {
    /// 1, 2, ... in raster order of the instance's first pixel.
    pub id: u32,
    /// The box it was refined from (index into the stitcher's boxes).
    pub index: usize,
    pub class: usize,
    /// Mean mask score over its pixels.
    pub score: f32,
    pub pixels: u64,
    /// Its connected parts in map coordinates (one for a connected mask).
    pub polygons: Vec<Polygon<f64>>,
}

/// What [`InstanceStitcher::finish`] gives back.
#[derive(Debug)]
pub struct Stitched {
    /// Sorted by id.
    pub instances: Vec<Instance>,
    /// Boxes whose masks were empty (or lay outside the scene): no instance.
    pub empty_boxes: usize,
    /// Most rows held at once.
    pub peak_rows: usize,
}

struct Claims {
    /// Per pixel: [`UNSEEN`], 0 (seen, no instance) or box index + 1.
    owner: Vec<u32>,
    score: Vec<f32>,
}

#[derive(Default)]
struct BoxState {
    id: u32,
    pixels: u64,
    score_sum: f64,
    polygonizer: Option<StreamPolygonizer>,
    polygons: Vec<Polygon<f64>>,
}

/// The boxes over one tile grid, and which of them each tile refines: shared (read-only) by
/// the model stage, which asks [`BoxPrompts::prompts`], and the stitcher.
pub struct BoxPrompts {
    width: usize,
    height: usize,
    col_cuts: Vec<usize>,
    row_cuts: Vec<usize>,
    boxes: Vec<PromptBox>,
    /// Each box's pixels in the scene (`None`: none).
    rects: Vec<Option<PixelRect>>,
    index: RTree<GeomWithData<Rectangle<[i64; 2]>, usize>>,
}

impl std::fmt::Debug for BoxPrompts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxPrompts")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("boxes", &self.boxes.len())
            .finish()
    }
}

impl BoxPrompts {
    /// `boxes` (in working-grid pixels) over `grid`; their order breaks ties between masks
    /// claiming a pixel.
    pub fn new(grid: &TileGrid, boxes: Vec<PromptBox>) -> BoxPrompts {
        let (w, h) = (grid.working_width, grid.working_height);
        let size = grid.tile_size();
        let rects: Vec<Option<PixelRect>> = boxes.iter().map(|b| b.pixels(w, h)).collect();
        let entries = rects
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.map(|r| {
                    // Inclusive pixel corners: rectangles sharing an edge do not intersect.
                    let rect = Rectangle::from_corners(
                        [r.x0 as i64, r.y0 as i64],
                        [r.x1 as i64 - 1, r.y1 as i64 - 1],
                    );
                    GeomWithData::new(rect, i)
                })
            })
            .collect();
        BoxPrompts {
            width: w,
            height: h,
            col_cuts: core_cuts(&grid.col_offsets, size, w),
            row_cuts: core_cuts(&grid.row_offsets, size, h),
            boxes,
            rects,
            index: RTree::bulk_load(entries),
        }
    }

    /// The boxes, in their order.
    pub fn boxes(&self) -> &[PromptBox] {
        &self.boxes
    }

    /// The part of the working grid that `tile` decides.
    pub fn core(&self, tile: &Tile) -> PixelRect {
        PixelRect {
            x0: self.col_cuts[tile.col],
            x1: self.col_cuts[tile.col + 1],
            y0: self.row_cuts[tile.row],
            y1: self.row_cuts[tile.row + 1],
        }
    }

    /// The boxes `tile` must refine (those reaching its core), by box index.
    pub fn prompts(&self, tile: &Tile) -> Vec<TilePrompt> {
        let core = self.core(tile);
        if core.x0 >= core.x1 || core.y0 >= core.y1 {
            return Vec::new();
        }
        let env = AABB::from_corners(
            [core.x0 as i64, core.y0 as i64],
            [core.x1 as i64 - 1, core.y1 as i64 - 1],
        );
        let mut found: Vec<usize> = self
            .index
            .locate_in_envelope_intersecting(&env)
            .map(|g| g.data)
            .collect();
        found.sort_unstable();
        found
            .into_iter()
            .filter_map(|i| {
                let region = self.rects[i]?.intersect(&core)?;
                Some(TilePrompt {
                    index: i,
                    tile_box: self.boxes[i].in_tile(tile),
                    region,
                })
            })
            .collect()
    }
}

/// The streaming instance stitcher over one tile grid.
pub struct InstanceStitcher {
    prompts: std::sync::Arc<BoxPrompts>,
    cols: usize,
    geotransform: GeoTransform,
    state: Vec<BoxState>,
    /// Boxes with pixels, by first row (then index): opened as their first row passes.
    by_top: Vec<usize>,
    next_top: usize,
    open: Vec<usize>,
    rows: VecDeque<Claims>,
    spare: Vec<Claims>,
    first_row: usize,
    peak_rows: usize,
    tiles_done: Vec<usize>,
    next_tile_row: usize,
    next_id: u32,
}

impl std::fmt::Debug for InstanceStitcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceStitcher")
            .field("prompts", &self.prompts)
            .field("first_row", &self.first_row)
            .finish()
    }
}

impl InstanceStitcher {
    /// A stitcher over `grid` (the grid `prompts` was made for).
    pub fn new(grid: &TileGrid, prompts: std::sync::Arc<BoxPrompts>) -> InstanceStitcher {
        let rects = &prompts.rects;
        let mut by_top: Vec<usize> = (0..rects.len()).filter(|&i| rects[i].is_some()).collect();
        by_top.sort_by_key(|&i| (rects[i].map_or(0, |r| r.y0), i));
        InstanceStitcher {
            cols: grid.cols(),
            geotransform: grid.geotransform,
            state: (0..rects.len()).map(|_| BoxState::default()).collect(),
            by_top,
            next_top: 0,
            open: Vec::new(),
            rows: VecDeque::new(),
            spare: Vec::new(),
            first_row: 0,
            peak_rows: 0,
            tiles_done: vec![0; grid.rows()],
            next_tile_row: 0,
            next_id: 1,
            prompts,
        }
    }

    /// Most rows held at once so far.
    pub fn peak_rows(&self) -> usize {
        self.peak_rows
    }

    fn ensure_rows(&mut self, end: usize) {
        let w = self.prompts.width;
        while self.first_row + self.rows.len() < end {
            let row = match self.spare.pop() {
                Some(mut c) => {
                    c.owner.fill(UNSEEN);
                    c.score.fill(0.0);
                    c
                }
                None => Claims {
                    owner: vec![UNSEEN; w],
                    score: vec![0.0; w],
                },
            };
            self.rows.push_back(row);
        }
        self.peak_rows = self.peak_rows.max(self.rows.len());
    }

    /// Add a tile: `Some((instances, valid))` with its masks (of boxes from
    /// [`InstanceStitcher::prompts`]) and its valid flags (`size * size`), or `None` for a
    /// tile that was skipped; then hand the rows now finished to `sink`.
    ///
    /// # Errors
    /// The sink's error.
    pub fn add<S: InstanceSink>(
        &mut self,
        tile: &Tile,
        masks: Option<(&[TileInstance], &[u8])>,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        let core = self.prompts.core(tile);
        if let (Some((instances, valid)), true) = (masks, core.x0 < core.x1 && core.y0 < core.y1) {
            self.ensure_rows(core.y1);
            let n = tile.size;
            for y in core.y0.max(self.first_row)..core.y1 {
                let row = &mut self.rows[y - self.first_row];
                let vrow = (y - tile.y) * n;
                for x in core.x0..core.x1 {
                    if valid.get(vrow + x - tile.x).copied().unwrap_or(0) != 0 {
                        row.owner[x] = 0;
                    }
                }
            }
            for inst in instances {
                let Some(r) = self
                    .prompts
                    .rects
                    .get(inst.index)
                    .copied()
                    .flatten()
                    .and_then(|b| b.intersect(&core))
                    .and_then(|b| b.intersect(&inst.region))
                else {
                    continue;
                };
                let claim = inst.index as u32 + 1;
                let rw = inst.region.width();
                for y in r.y0.max(self.first_row)..r.y1 {
                    let row = &mut self.rows[y - self.first_row];
                    let m0 = (y - inst.region.y0) * rw;
                    for x in r.x0..r.x1 {
                        if inst.mask.get(m0 + x - inst.region.x0).copied().unwrap_or(0) == 0 {
                            continue;
                        }
                        let cur = row.owner[x];
                        if cur == UNSEEN {
                            continue; // nodata
                        }
                        let wins = cur == 0
                            || inst.score > row.score[x]
                            || (inst.score == row.score[x] && claim < cur);
                        if wins {
                            row.owner[x] = claim;
                            row.score[x] = inst.score;
                        }
                    }
                }
            }
        }
        self.tiles_done[tile.row] += 1;
        while self.next_tile_row < self.tiles_done.len()
            && self.tiles_done[self.next_tile_row] == self.cols
        {
            self.next_tile_row += 1;
        }
        let end = self.prompts.row_cuts[self.next_tile_row];
        self.flush(end, sink)
    }

    fn flush<S: InstanceSink>(&mut self, end: usize, sink: &mut S) -> Result<(), S::Error> {
        if end <= self.first_row {
            return Ok(());
        }
        self.ensure_rows(end);
        let (w, n) = (self.prompts.width, end - self.first_row);
        let mut ids = vec![0u32; n * w];
        let mut classes = vec![NODATA_CLASS; n * w];
        let mut flags = Vec::new();
        for r in 0..n {
            let Some(row) = self.rows.pop_front() else {
                break;
            };
            let y = self.first_row + r;
            for x in 0..w {
                let owner = row.owner[x];
                let at = r * w + x;
                if owner == UNSEEN {
                    continue;
                }
                if owner == 0 {
                    classes[at] = 0;
                    continue;
                }
                let k = owner as usize - 1;
                let st = &mut self.state[k];
                if st.id == 0 {
                    st.id = self.next_id;
                    self.next_id += 1;
                }
                st.pixels += 1;
                st.score_sum += f64::from(row.score[x]);
                ids[at] = st.id;
                classes[at] = (self.prompts.boxes[k].class + 1).min(254) as u8;
            }
            self.polygon_row(y, &row.owner, &mut flags);
            self.spare.push(row);
        }
        let y0 = self.first_row;
        self.first_row = end;
        sink.write_rows(y0, n, &ids, &classes)
    }

    /// Push row `y` into the polygonizer of every box it crosses (opening those that start
    /// on it, finishing those that end on it).
    fn polygon_row(&mut self, y: usize, owner: &[u32], flags: &mut Vec<u8>) {
        while let Some(&k) = self.by_top.get(self.next_top) {
            let Some(r) = self.prompts.rects[k] else {
                self.next_top += 1;
                continue;
            };
            if r.y0 > y {
                break;
            }
            let gt = self
                .geotransform
                .sub_grid(r.x0 as f64, r.y0 as f64, 1.0, 1.0);
            self.state[k].polygonizer = Some(StreamPolygonizer::new(r.width(), gt, &[0]));
            self.open.push(k);
            self.next_top += 1;
        }
        let mut closed = false;
        for &k in &self.open {
            let Some(r) = self.prompts.rects[k] else {
                continue;
            };
            let claim = k as u32 + 1;
            flags.clear();
            flags.extend(owner[r.x0..r.x1].iter().map(|&o| u8::from(o == claim)));
            let st = &mut self.state[k];
            if let Some(p) = st.polygonizer.as_mut() {
                p.push_rows(flags);
                st.polygons
                    .extend(p.take_finished().into_iter().map(|(_, poly)| poly));
            }
            if y + 1 >= r.y1 {
                if let Some(p) = st.polygonizer.take() {
                    st.polygons
                        .extend(p.finish().into_iter().map(|(_, poly)| poly));
                }
                closed = true;
            }
        }
        if closed {
            let rects = &self.prompts.rects;
            self.open
                .retain(|&k| rects[k].is_some_and(|r| y + 1 < r.y1));
        }
    }

    /// Flush everything left (every tile must have been added) and return the instances.
    ///
    /// # Errors
    /// The sink's error.
    pub fn finish<S: InstanceSink>(mut self, sink: &mut S) -> Result<Stitched, S::Error> {
        let h = self.prompts.height;
        self.flush(h, sink)?;
        let mut instances: Vec<Instance> = self
            .state
            .into_iter()
            .enumerate()
            .filter(|(_, s)| s.id > 0)
            .map(|(k, s)| Instance {
                id: s.id,
                index: k,
                class: self.prompts.boxes[k].class,
                score: (s.score_sum / s.pixels.max(1) as f64) as f32,
                pixels: s.pixels,
                polygons: s.polygons,
            })
            .collect();
        instances.sort_by_key(|i| i.id);
        Ok(Stitched {
            empty_boxes: self.prompts.boxes.len() - instances.len(),
            instances,
            peak_rows: self.peak_rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiling::{EdgeMode, GridOptions};

    fn grid(w: usize, h: usize, size: usize, overlap: usize) -> TileGrid {
        let stride = size - overlap;
        let offs = |extent: usize| -> Vec<usize> {
            if extent <= size {
                vec![0]
            } else {
                (0..=(extent - size).div_ceil(stride))
                    .map(|k| k * stride)
                    .collect()
            }
        };
        TileGrid {
            options: GridOptions {
                tile_size: size,
                overlap,
                target_gsd: None,
                edge: EdgeMode::Pad,
            },
            scale: (1.0, 1.0),
            working_width: w,
            working_height: h,
            col_offsets: offs(w),
            row_offsets: offs(h),
            geotransform: GeoTransform([100.0, 2.0, 0.0, 500.0, 0.0, -2.0]),
        }
    }

    #[derive(Default)]
    struct Collect {
        width: usize,
        ids: Vec<u32>,
        classes: Vec<u8>,
        next: usize,
    }

    impl InstanceSink for Collect {
        type Error = String;
        fn write_rows(
            &mut self,
            y0: usize,
            rows: usize,
            ids: &[u32],
            classes: &[u8],
        ) -> Result<(), String> {
            if y0 != self.next || ids.len() != rows * self.width || classes.len() != ids.len() {
                return Err(format!("rows {y0}+{rows} after {}", self.next));
            }
            self.next += rows;
            self.ids.extend_from_slice(ids);
            self.classes.extend_from_slice(classes);
            Ok(())
        }
    }

    /// A "refiner" that sees the truth: the mask of a box in a tile is the tile's pixels
    /// inside the box where `truth` names that box's object.
    fn refine(
        s: &BoxPrompts,
        tile: &Tile,
        truth: &dyn Fn(usize, usize) -> Option<usize>,
        score: &dyn Fn(usize, &Tile) -> f32,
    ) -> Vec<TileInstance> {
        s.prompts(tile)
            .into_iter()
            .map(|p| {
                let n = tile.size;
                let [bx0, by0, bx1, by1] = p.tile_box;
                let mask: Vec<u8> = (0..n * n)
                    .map(|i| {
                        let (tx, ty) = (i % n, i / n);
                        let inside = (tx as f32 + 0.5) > bx0
                            && (tx as f32 + 0.5) < bx1
                            && (ty as f32 + 0.5) > by0
                            && (ty as f32 + 0.5) < by1;
                        u8::from(inside && truth(tile.x + tx, tile.y + ty) == Some(p.index))
                    })
                    .collect();
                TileInstance::from_tile_mask(
                    p.index,
                    p.region,
                    tile,
                    &mask,
                    |v| v != 0,
                    score(p.index, tile),
                )
            })
            .collect()
    }

    fn run(
        g: &TileGrid,
        boxes: Vec<PromptBox>,
        truth: &dyn Fn(usize, usize) -> Option<usize>,
        score: &dyn Fn(usize, &Tile) -> f32,
        order: &[usize],
    ) -> (Collect, Stitched) {
        let p = std::sync::Arc::new(BoxPrompts::new(g, boxes));
        let mut s = InstanceStitcher::new(g, p.clone());
        let mut sink = Collect {
            width: g.working_width,
            ..Default::default()
        };
        let tiles: Vec<Tile> = g.tiles().collect();
        for &k in order {
            let t = &tiles[k];
            let valid = vec![1u8; t.size * t.size];
            let inst = refine(&p, t, truth, score);
            s.add(t, Some((&inst, &valid)), &mut sink).expect("add");
        }
        let done = s.finish(&mut sink).expect("finish");
        (sink, done)
    }

    fn bx(x0: f64, y0: f64, x1: f64, y1: f64, class: usize) -> PromptBox {
        PromptBox {
            x0,
            y0,
            x1,
            y1,
            class,
            score: 0.9,
            source: String::new(),
        }
    }

    #[test]
    fn cores_partition_the_axis_inside_their_tiles() {
        for (extent, size, overlap) in [(100, 32, 8), (97, 32, 0), (64, 32, 31), (20, 32, 8)] {
            let g = grid(extent, extent, size, overlap);
            let cuts = core_cuts(&g.col_offsets, size, extent);
            assert_eq!(cuts.len(), g.col_offsets.len() + 1);
            assert_eq!((cuts[0], cuts[cuts.len() - 1]), (0, extent));
            for (k, &o) in g.col_offsets.iter().enumerate() {
                assert!(
                    cuts[k] <= cuts[k + 1],
                    "{extent}/{size}/{overlap}: {cuts:?}"
                );
                // Inside its own tile, at least half the overlap from an inner edge.
                assert!(cuts[k] >= o && cuts[k + 1] <= o + size, "{cuts:?} {o}");
                if k > 0 {
                    assert!(cuts[k] - o >= overlap / 2, "{cuts:?}");
                }
            }
        }
        // Hand-computed: tiles at 0, 24, 48 of 32 px over 70 px cut at 28 and 52.
        assert_eq!(core_cuts(&[0, 24, 48], 32, 70), vec![0, 28, 52, 70]);
        assert_eq!(core_cuts(&[0, 32], 32, 50), vec![0, 32, 50]);
    }

    #[test]
    fn box_pixels_are_the_centres_inside() {
        let b = bx(10.0, 3.2, 20.0, 7.6, 0);
        assert_eq!(
            b.pixels(100, 100),
            Some(PixelRect {
                x0: 10,
                y0: 3,
                x1: 20,
                y1: 8
            })
        );
        assert_eq!(
            bx(-5.0, -5.0, 2.4, 1.0, 0)
                .pixels(10, 10)
                .map(|r| (r.x1, r.y1)),
            Some((2, 1))
        );
        assert_eq!(bx(20.0, 0.0, 30.0, 5.0, 0).pixels(10, 10), None);
        assert_eq!(bx(3.2, 0.0, 3.4, 5.0, 0).pixels(10, 10), None);
    }

    /// Discs across tile corners, seams and overlaps become one instance each, with every
    /// pixel of the disc, one polygon of the disc's area, and ids in raster order; the same
    /// whatever order the tiles of a row arrive in.
    #[test]
    fn objects_across_seams_are_one_instance_each() {
        let (w, h) = (90, 75);
        let discs = [
            (24.0f64, 24.0f64, 9.0f64), // across the first column and row seams (tiles of 32/8)
            (60.0, 20.0, 7.0),
            (47.0, 50.0, 12.0),
            (10.0, 66.0, 5.0),
        ];
        let truth = move |x: usize, y: usize| {
            discs.iter().position(|&(cx, cy, r)| {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                dx * dx + dy * dy < r * r
            })
        };
        let boxes: Vec<PromptBox> = discs
            .iter()
            .enumerate()
            .map(|(i, &(cx, cy, r))| {
                bx(
                    cx - r - 1.0,
                    cy - r - 1.0,
                    cx + r + 1.0,
                    cy + r + 1.0,
                    i % 2,
                )
            })
            .collect();
        for (size, overlap) in [(32, 8), (32, 0), (24, 11), (40, 16)] {
            let g = grid(w, h, size, overlap);
            let mut order: Vec<usize> = (0..g.len()).collect();
            let score = |_: usize, _: &Tile| 0.8f32;
            let (sink, done) = run(&g, boxes.clone(), &truth, &score, &order);
            // Out of order within rows, as parallel readers deliver them.
            order.swap(0, 1);
            let last = order.len() - 1;
            order.swap(last, last - 1);
            let (sink2, done2) = run(&g, boxes.clone(), &truth, &score, &order);
            assert_eq!(sink.ids, sink2.ids, "{size}/{overlap}");
            let key = |d: &Stitched| -> Vec<(u32, usize, u64)> {
                d.instances
                    .iter()
                    .map(|i| (i.id, i.index, i.pixels))
                    .collect()
            };
            assert_eq!(key(&done), key(&done2), "{size}/{overlap}");
            assert_eq!(done.instances.len(), discs.len(), "{size}/{overlap}");
            assert_eq!(done.empty_boxes, 0);
            // Ids in raster order of first pixels: disc 1 (top right, y 13) before disc 0
            // (y 15)? Disc 0 starts at row 15, disc 1 at row 13.
            let first_rows: Vec<(usize, usize)> = {
                let mut v: Vec<(usize, usize)> = (0..discs.len())
                    .map(|k| {
                        let p = (0..w * h).find(|&i| truth(i % w, i / w) == Some(k));
                        (p.unwrap_or(0), k)
                    })
                    .collect();
                v.sort();
                v
            };
            for (rank, &(_, k)) in first_rows.iter().enumerate() {
                let inst = &done.instances[rank];
                assert_eq!(inst.id as usize, rank + 1);
                assert_eq!(inst.index, k, "{size}/{overlap}");
                assert_eq!(inst.class, k % 2);
                assert!((inst.score - 0.8).abs() < 1e-6);
                let painted = (0..w * h)
                    .filter(|&i| truth(i % w, i / w) == Some(k))
                    .count();
                assert_eq!(inst.pixels as usize, painted, "{size}/{overlap} disc {k}");
                assert_eq!(inst.polygons.len(), 1, "{size}/{overlap} disc {k}");
                use geo::Area;
                // Pixels of 2 x 2 map units.
                let area = inst.polygons[0].unsigned_area();
                assert!(
                    (area - 4.0 * painted as f64).abs() < 1e-6,
                    "{area} {painted}"
                );
            }
            for i in 0..w * h {
                let want = truth(i % w, i / w).map_or(0, |k| {
                    done.instances
                        .iter()
                        .find(|x| x.index == k)
                        .map_or(0, |x| x.id)
                });
                assert_eq!(sink.ids[i], want, "{size}/{overlap} pixel {i}");
                let class = truth(i % w, i / w).map_or(0, |k| (k % 2 + 1) as u8);
                assert_eq!(sink.classes[i], class);
            }
            if g.rows() > 2 {
                assert!(done.peak_rows < h, "{size}/{overlap}: {}", done.peak_rows);
            }
        }
    }

    /// Two boxes over one object: the higher mask score wins each pixel; equal scores go to
    /// the lower box index; a box whose mask is empty gives no instance and no id.
    #[test]
    fn claims_go_to_the_better_mask() {
        let (w, h) = (40, 40);
        let g = grid(w, h, 24, 8);
        let object = |x: usize, y: usize| (10..30).contains(&x) && (10..30).contains(&y);
        // Both boxes' "refiners" see the same object; box 2 lies over empty ground.
        let truth_any = move |x: usize, y: usize| object(x, y);
        let boxes = vec![
            bx(9.0, 9.0, 31.0, 31.0, 0),
            bx(9.0, 9.0, 31.0, 31.0, 1),
            bx(32.0, 32.0, 39.0, 39.0, 0),
        ];
        for (s0, s1, winner) in [(0.5f32, 0.7f32, 1usize), (0.9, 0.7, 0), (0.6, 0.6, 0)] {
            let p = std::sync::Arc::new(BoxPrompts::new(&g, boxes.clone()));
            let mut s = InstanceStitcher::new(&g, p.clone());
            let mut sink = Collect {
                width: w,
                ..Default::default()
            };
            for t in g.tiles() {
                let inst: Vec<TileInstance> = p
                    .prompts(&t)
                    .into_iter()
                    .map(|p| {
                        let n = t.size;
                        let mask: Vec<u8> = (0..n * n)
                            .map(|i| {
                                let (x, y) = (t.x + i % n, t.y + i / n);
                                u8::from(p.index < 2 && x < w && y < h && truth_any(x, y))
                            })
                            .collect();
                        let sc = [s0, s1, 0.3][p.index];
                        TileInstance::from_tile_mask(p.index, p.region, &t, &mask, |v| v == 1, sc)
                    })
                    .collect();
                let valid = vec![1u8; t.size * t.size];
                s.add(&t, Some((&inst, &valid)), &mut sink).expect("add");
            }
            let done = s.finish(&mut sink).expect("finish");
            assert_eq!(done.instances.len(), 1, "{s0}/{s1}");
            assert_eq!(done.empty_boxes, 2);
            assert_eq!(done.instances[0].index, winner, "{s0}/{s1}");
            assert_eq!(done.instances[0].pixels, 400);
            assert_eq!(sink.classes[20 * w + 20], winner as u8 + 1);
        }
    }

    /// Skipped tiles and invalid pixels are nodata in the class raster and no instance;
    /// a mask pixel outside its box is dropped.
    #[test]
    fn skipped_tiles_are_nodata_and_masks_stay_in_their_box() {
        let g = grid(40, 20, 20, 0);
        let boxes = vec![bx(2.0, 2.0, 10.0, 10.0, 0)];
        let p = std::sync::Arc::new(BoxPrompts::new(&g, boxes));
        let mut s = InstanceStitcher::new(&g, p.clone());
        let mut sink = Collect {
            width: 40,
            ..Default::default()
        };
        let t0 = g.tile(0, 0);
        let prompts = p.prompts(&t0);
        assert_eq!(prompts.len(), 1);
        assert_eq!(prompts[0].tile_box, [2.0, 2.0, 10.0, 10.0]);
        // The whole tile "masked": only the box's pixels count.
        let mask = vec![1u8; 400];
        let inst = vec![TileInstance::from_tile_mask(
            0,
            PixelRect {
                x0: 0,
                y0: 0,
                x1: 20,
                y1: 20,
            },
            &t0,
            &mask,
            |v| v == 1,
            0.5,
        )];
        let mut valid = vec![1u8; 400];
        valid[5 * 20 + 5] = 0;
        s.add(&t0, Some((&inst, &valid)), &mut sink).expect("add");
        assert!(p.prompts(&g.tile(0, 1)).is_empty());
        s.add(&g.tile(0, 1), None, &mut sink).expect("skip");
        let done = s.finish(&mut sink).expect("finish");
        assert_eq!(done.instances.len(), 1);
        assert_eq!(done.instances[0].pixels, 63);
        assert_eq!(sink.classes[5 * 40 + 5], NODATA_CLASS);
        assert_eq!(sink.ids[5 * 40 + 5], 0);
        assert_eq!(sink.classes[2 * 40 + 2], 1);
        assert_eq!(sink.classes[40 + 1], 0);
        assert!(sink.classes[20..40].iter().all(|&c| c == NODATA_CLASS));
        // One polygon with a one-pixel hole.
        assert_eq!(done.instances[0].polygons.len(), 1);
        assert_eq!(done.instances[0].polygons[0].interiors().len(), 1);
    }
}
