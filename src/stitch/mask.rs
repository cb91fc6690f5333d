//! Streaming mosaic of overlapping segmentation predictions.
//!
//! Each tile's class probabilities are accumulated, weighted by a window that falls off toward
//! the tile's edges (linear or cosine ramp over the overlap), so a pixel seen by several tiles
//! takes most from the tiles that see it far from their borders, where fully convolutional
//! models are most reliable. Rows are finished as soon as every tile that covers them has
//! arrived, and handed to a [`RowSink`] at once: memory grows with the tile size and the scene
//! width, never with the scene's area. Pixels with no valid input become nodata.

use std::collections::VecDeque;

use crate::tiling::{Tile, TileGrid};

/// Class value written where no valid pixel contributed.
pub const NODATA_CLASS: u8 = 255;

/// The blending window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlendWindow {
    /// Equal weight everywhere (plain averaging of overlaps).
    Flat,
    /// Weight rising linearly from the tile edge over the overlap.
    Linear,
    /// Weight rising as a raised cosine over the overlap.
    Cosine,
}

impl crate::options::Choice for BlendWindow {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("flat", BlendWindow::Flat),
        ("linear", BlendWindow::Linear),
        ("cosine", BlendWindow::Cosine),
    ];
}
crate::choice_from_str!(BlendWindow);

/// Per-pixel weights of a `size x size` tile: separable, 1 in the interior, ramping down to a
/// small positive value at the edges over `ramp` pixels.
pub fn tile_weights(size: usize, ramp: usize, window: BlendWindow) -> Vec<f32> {
    let ramp = ramp.max(1) as f32;
    let axis: Vec<f32> = (0..size)
        .map(|i| {
            let d = (i as f32 + 0.5).min(size as f32 - i as f32 - 0.5);
            let t = (d / ramp).min(1.0);
            let w = match window {
                BlendWindow::Flat => 1.0,
                BlendWindow::Linear => t,
                BlendWindow::Cosine => 0.5 - 0.5 * (std::f32::consts::PI * t).cos(),
            };
            w.max(1e-3)
        })
        .collect();
    let mut out = Vec::with_capacity(size * size);
    for &wy in &axis {
        for &wx in &axis {
            out.push(wy * wx);
        }
    }
    out
}

/// [`tile_weights`] of a model whose output lacks `margin` pixels on each side (valid
/// convolutions): 0 (no vote) in the margin, the window over the valid centre, its ramp
/// shortened by the margins (neighbouring centres overlap by `overlap - 2 * margin`).
pub fn margin_weights(size: usize, overlap: usize, window: BlendWindow, margin: usize) -> Vec<f32> {
    if margin == 0 {
        return tile_weights(size, overlap, window);
    }
    let mut out = vec![0f32; size * size];
    if 2 * margin >= size {
        return out;
    }
    let inner = size - 2 * margin;
    let w = tile_weights(inner, overlap.saturating_sub(2 * margin), window);
    for (r, row) in w.chunks_exact(inner).enumerate() {
        let at = (r + margin) * size + margin;
        out[at..at + inner].copy_from_slice(row);
    }
    out
}

/// Receives finished rows of the mosaic, top to bottom.
pub trait RowSink {
    type Error;
    /// `rows` rows starting at row `y0`: `classes` is `rows * width` class values;
    /// `probs` is `classes_count * rows * width` probabilities (band-sequential), NaN where
    /// no valid pixel contributed, or empty when the stitcher was built
    /// [`MaskStitcher::without_probabilities`].
    fn write_rows(
        &mut self,
        y0: usize,
        rows: usize,
        classes: &[u8],
        probs: &[f32],
    ) -> Result<(), Self::Error>;
}

/// How a pixel's class is decided from its blended probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// The most probable class.
    Argmax,
    /// Class 1 where P(class 1) reaches the threshold, else class 0 (binary models).
    Threshold(f32),
    /// Text-prompted models: channels `1..` hold independent P(prompt); a pixel is the most
    /// probable prompt when that probability reaches the threshold, else background (0).
    Prompts(f32),
}

struct RowAcc {
    /// Weighted sums of the accumulated channels, channel-major (`channels * width`).
    scores: Vec<f32>,
    weight: Vec<f32>,
}

/// The accumulator.
pub struct MaskStitcher {
    width: usize,
    height: usize,
    classes: usize,
    decision: Decision,
    weights: Vec<f32>,
    window: BlendWindow,
    overlap: usize,
    /// Pixels of each tile edge without a prediction (valid convolutions).
    margin: usize,
    tile_size: usize,
    row_offsets: Vec<usize>,
    cols: usize,
    tiles_done: Vec<usize>,
    next_tile_row: usize,
    rows: VecDeque<RowAcc>,
    /// Finished rows' buffers, reused (zeroed) for new rows.
    spare: Vec<RowAcc>,
    first_row: usize,
    peak_rows: usize,
    keep_probs: bool,
    /// The model channels accumulated: every class when probabilities are kept, else only
    /// those the decision reads (class 1 for a threshold, the prompts for prompted models).
    channels: Vec<usize>,
    /// Binary models: tiles hold one plane, P(class 1); P(class 0) is its complement.
    binary: bool,
}

impl std::fmt::Debug for MaskStitcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskStitcher")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("first_row", &self.first_row)
            .finish()
    }
}

impl MaskStitcher {
    /// A mosaic over `grid`'s working grid with `classes` probability channels.
    pub fn new(
        grid: &TileGrid,
        classes: usize,
        window: BlendWindow,
        decision: Decision,
    ) -> MaskStitcher {
        let size = grid.tile_size();
        MaskStitcher {
            width: grid.working_width,
            height: grid.working_height,
            classes,
            decision,
            weights: tile_weights(size, grid.options.overlap, window),
            window,
            overlap: grid.options.overlap,
            margin: 0,
            tile_size: size,
            row_offsets: grid.row_offsets.clone(),
            cols: grid.cols(),
            tiles_done: vec![0; grid.rows()],
            next_tile_row: 0,
            rows: VecDeque::new(),
            spare: Vec::new(),
            first_row: 0,
            peak_rows: 0,
            keep_probs: true,
            channels: (0..classes).collect(),
            binary: false,
        }
    }

    /// Tiles carry one plane, P(class 1), of a two-class model: only it is blended (the
    /// blend of `1 - p` is `1 -` the blend of `p`), and P(class 0) is derived when the
    /// probabilities are handed to the sink. Use with a two-class [`Decision::Threshold`].
    pub fn binary_input(mut self) -> MaskStitcher {
        self.binary = true;
        self.classes = 2;
        self.channels = vec![1];
        self
    }

    /// Hand the sink class values only (an empty probability slice): cheaper when no
    /// probability raster is written, since only the channels the decision reads are blended.
    pub fn without_probabilities(mut self) -> MaskStitcher {
        self.keep_probs = false;
        if self.binary {
            return self;
        }
        self.channels = match self.decision {
            Decision::Argmax => (0..self.classes).collect(),
            Decision::Threshold(_) => vec![1.min(self.classes.saturating_sub(1))],
            Decision::Prompts(_) => (1..self.classes).collect(),
        };
        self
    }

    /// The tiles' predictions lack `margin` pixels on each side (valid convolutions): those
    /// pixels get no vote, and a pixel no tile's centre covers is nodata (an overlap of at
    /// least `2 * margin` leaves no gaps between tiles).
    pub fn set_margin(&mut self, margin: usize) {
        if margin != self.margin {
            self.margin = margin;
            self.weights = margin_weights(self.tile_size, self.overlap, self.window, margin);
        }
    }

    /// Most rows held at once so far (memory is about this times the width times the classes).
    pub fn peak_rows(&self) -> usize {
        self.peak_rows
    }

    fn ensure_rows(&mut self, end: usize) {
        let len = self.channels.len() * self.width;
        while self.first_row + self.rows.len() < end {
            let row = match self.spare.pop() {
                Some(mut r) => {
                    r.scores.fill(0.0);
                    r.weight.fill(0.0);
                    r
                }
                None => RowAcc {
                    scores: vec![0.0; len],
                    weight: vec![0.0; self.width],
                },
            };
            self.rows.push_back(row);
        }
        self.peak_rows = self.peak_rows.max(self.rows.len());
    }

    /// Add a tile's probabilities (`classes * size * size`, band-sequential; one plane with
    /// [`MaskStitcher::binary_input`]) for its valid pixels, or `None` for a tile that was
    /// skipped; then flush the rows now finished.
    ///
    /// # Errors
    /// The sink's error.
    pub fn add<S: RowSink>(
        &mut self,
        tile: &Tile,
        probs: Option<&[f32]>,
        valid: &[u8],
        sink: &mut S,
    ) -> Result<(), S::Error> {
        if let Some(probs) = probs {
            let n = self.tile_size;
            let plane = n * n;
            self.ensure_rows(tile.y + tile.inside_h);
            let (iw, x0, w) = (tile.inside_w, tile.x, self.width);
            for r in 0..tile.inside_h {
                let y = tile.y + r;
                if y < self.first_row {
                    continue; // already final (cannot happen with a correct grid order)
                }
                let acc = &mut self.rows[y - self.first_row];
                let k0 = r * n;
                let wrow = &self.weights[k0..k0 + iw];
                let vrow = valid.get(k0..k0 + iw);
                let first = usize::from(self.binary);
                let prow = |c: usize| {
                    let at = (c - first) * plane + k0;
                    probs.get(at..at + iw)
                };
                let all_valid = vrow.is_some_and(|v| !v.contains(&0))
                    && self.channels.iter().all(|&c| prow(c).is_some());
                if all_valid {
                    // The common case, in straight loops the compiler vectorises.
                    for (a, &wt) in acc.weight[x0..x0 + iw].iter_mut().zip(wrow) {
                        *a += wt;
                    }
                    for (slot, &c) in self.channels.iter().enumerate() {
                        let Some(p) = prow(c) else { continue };
                        let dst = &mut acc.scores[slot * w + x0..slot * w + x0 + iw];
                        for ((d, &wt), &pv) in dst.iter_mut().zip(wrow).zip(p) {
                            *d += wt * pv;
                        }
                    }
                    continue;
                }
                for (q, &wt) in wrow.iter().enumerate() {
                    if vrow.and_then(|v| v.get(q)).copied().unwrap_or(0) == 0 {
                        continue;
                    }
                    acc.weight[x0 + q] += wt;
                    for (slot, &c) in self.channels.iter().enumerate() {
                        let pv = probs
                            .get((c - first) * plane + k0 + q)
                            .copied()
                            .unwrap_or(0.0);
                        acc.scores[slot * w + x0 + q] += wt * pv;
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
        let final_end = if self.next_tile_row == self.row_offsets.len() {
            self.height
        } else {
            self.row_offsets[self.next_tile_row].min(self.height)
        };
        self.flush(final_end, sink)
    }

    fn flush<S: RowSink>(&mut self, end: usize, sink: &mut S) -> Result<(), S::Error> {
        if end <= self.first_row {
            return Ok(());
        }
        self.ensure_rows(end);
        let n = end - self.first_row;
        let w = self.width;
        let mut classes = vec![NODATA_CLASS; n * w];
        // Probabilities are only assembled when the sink keeps them (every channel is then
        // accumulated, slot = class).
        let mut probs = if self.keep_probs {
            vec![f32::NAN; self.classes * n * w]
        } else {
            Vec::new()
        };
        let slots = self.channels.len();
        let mut p = vec![0f32; slots];
        for r in 0..n {
            let Some(acc) = self.rows.pop_front() else {
                break;
            };
            let out = &mut classes[r * w..(r + 1) * w];
            match self.decision {
                Decision::Threshold(t) if !self.keep_probs => {
                    // One channel, P(class 1): a straight loop.
                    let s1 = &acc.scores[..w];
                    for ((o, &wt), &s) in out.iter_mut().zip(&acc.weight).zip(s1) {
                        if wt > 0.0 {
                            *o = u8::from(s / wt >= t);
                        }
                    }
                }
                decision => {
                    for x in 0..w {
                        let wt = acc.weight[x];
                        if wt <= 0.0 {
                            continue;
                        }
                        for (slot, pc) in p.iter_mut().enumerate() {
                            *pc = acc.scores[slot * w + x] / wt;
                        }
                        if self.keep_probs {
                            if self.binary {
                                probs[r * w + x] = 1.0 - p[0];
                                probs[n * w + r * w + x] = p[0];
                            } else {
                                for (c, pc) in p.iter().enumerate() {
                                    probs[c * n * w + r * w + x] = *pc;
                                }
                            }
                        }
                        out[x] = self.decide(decision, &p);
                    }
                }
            }
            self.spare.push(acc);
        }
        let y0 = self.first_row;
        self.first_row = end;
        sink.write_rows(y0, n, &classes, &probs)
    }

    /// The class of a pixel from its blended probabilities of the accumulated channels.
    fn decide(&self, decision: Decision, p: &[f32]) -> u8 {
        // Slot of model channel `c`.
        let slot = |c: usize| self.channels.iter().position(|&k| k == c);
        match decision {
            Decision::Threshold(t) => {
                let p1 = slot(1).and_then(|s| p.get(s)).copied().unwrap_or(0.0);
                u8::from(p1 >= t)
            }
            Decision::Prompts(t) => {
                let mut best: Option<(usize, f32)> = None;
                for (s, &c) in self.channels.iter().enumerate() {
                    if c == 0 {
                        continue;
                    }
                    if best.map_or(true, |(_, b)| p[s] > b) {
                        best = Some((c, p[s]));
                    }
                }
                match best {
                    Some((c, v)) if v >= t => c.min(254) as u8,
                    _ => 0,
                }
            }
            Decision::Argmax => {
                let mut best = 0;
                for s in 1..p.len() {
                    if p[s] > p[best] {
                        best = s;
                    }
                }
                self.channels.get(best).copied().unwrap_or(0).min(254) as u8
            }
        }
    }

    /// Flush everything left (all tiles must have been added).
    ///
    /// # Errors
    /// The sink's error.
    pub fn finish<S: RowSink>(mut self, sink: &mut S) -> Result<usize, S::Error> {
        let h = self.height;
        self.flush(h, sink)?;
        Ok(self.peak_rows)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn margin_weights_give_no_vote_outside_the_valid_centre() {
        let (size, m) = (10, 2);
        let w = margin_weights(size, 6, BlendWindow::Linear, m);
        let inner = tile_weights(size - 2 * m, 2, BlendWindow::Linear);
        for y in 0..size {
            for x in 0..size {
                let v = w[y * size + x];
                if (m..size - m).contains(&x) && (m..size - m).contains(&y) {
                    assert_eq!(v, inner[(y - m) * (size - 2 * m) + x - m], "({x}, {y})");
                } else {
                    assert_eq!(v, 0.0, "({x}, {y})");
                }
            }
        }
        assert_eq!(
            margin_weights(size, 6, BlendWindow::Cosine, 0),
            tile_weights(size, 6, BlendWindow::Cosine)
        );
        assert!(margin_weights(4, 0, BlendWindow::Flat, 2)
            .iter()
            .all(|&v| v == 0.0));
    }

    use super::*;
    use crate::raster::GeoTransform;
    use crate::tiling::{EdgeMode, GridOptions};

    struct Collect {
        width: usize,
        classes: Vec<u8>,
        probs: Vec<Vec<f32>>,
        next: usize,
    }

    impl RowSink for Collect {
        type Error = String;
        fn write_rows(
            &mut self,
            y0: usize,
            rows: usize,
            classes: &[u8],
            probs: &[f32],
        ) -> Result<(), String> {
            if y0 != self.next {
                return Err(format!("rows out of order: {y0} after {}", self.next));
            }
            self.next = y0 + rows;
            self.classes.extend_from_slice(classes);
            let c = probs.len() / (rows * self.width);
            for k in 0..c {
                self.probs[k]
                    .extend_from_slice(&probs[k * rows * self.width..(k + 1) * rows * self.width]);
            }
            Ok(())
        }
    }

    fn grid(w: usize, h: usize, size: usize, overlap: usize) -> TileGrid {
        let info_gt = GeoTransform([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]);
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
            geotransform: info_gt,
        }
    }

    #[test]
    fn weights_ramp_toward_edges() {
        let w = tile_weights(8, 2, BlendWindow::Linear);
        assert!(w[0] < w[8 + 1] && w[8 + 1] < w[3 * 8 + 3]);
        assert_eq!(w[3 * 8 + 3], 1.0);
        let c = tile_weights(8, 2, BlendWindow::Cosine);
        assert!(c.iter().all(|&v| v > 0.0 && v <= 1.0));
        assert!(tile_weights(4, 2, BlendWindow::Flat)
            .iter()
            .all(|&v| v == 1.0));
    }

    /// Tiles that each predict the true per-pixel probability stitch back to exactly it, in
    /// any arrival order, and rows are emitted in order.
    #[test]
    fn consistent_tiles_stitch_exactly_in_any_order() {
        let (w, h) = (37, 29);
        let truth = |x: usize, y: usize| ((x * 7 + y * 3) % 11) as f32 / 10.0;
        let g = grid(w, h, 12, 4);
        let mut order: Vec<(usize, usize)> = (0..g.rows())
            .flat_map(|r| (0..g.cols()).map(move |c| (r, c)))
            .collect();
        // Slightly out of order, as parallel readers deliver them.
        order.swap(0, 2);
        order.swap(5, 7);
        let mut s = MaskStitcher::new(&g, 2, BlendWindow::Cosine, Decision::Threshold(0.5));
        let mut sink = Collect {
            width: w,
            classes: vec![],
            probs: vec![vec![], vec![]],
            next: 0,
        };
        for (r, c) in order {
            let t = g.tile(r, c);
            let n = t.size;
            let mut probs = vec![0f32; 2 * n * n];
            let mut valid = vec![0u8; n * n];
            for yy in 0..t.inside_h {
                for xx in 0..t.inside_w {
                    let p = truth(t.x + xx, t.y + yy);
                    probs[yy * n + xx] = 1.0 - p;
                    probs[n * n + yy * n + xx] = p;
                    valid[yy * n + xx] = 1;
                }
            }
            s.add(&t, Some(&probs), &valid, &mut sink).expect("add");
        }
        let peak = s.finish(&mut sink).expect("finish");
        assert_eq!(sink.classes.len(), w * h);
        for y in 0..h {
            for x in 0..w {
                let p = sink.probs[1][y * w + x];
                assert!((p - truth(x, y)).abs() < 1e-5, "({x},{y}) {p}");
                assert_eq!(sink.classes[y * w + x], u8::from(truth(x, y) >= 0.5));
            }
        }
        assert!(
            peak < h,
            "rows were flushed before the end (peak {peak} of {h})"
        );
    }

    /// Every tile of `g` with `planes` planes of pseudo-random probabilities (xorshift from
    /// `seed`, so neighbours disagree in their overlaps) and every `gap`-th pixel invalid.
    fn random_tiles(
        g: &TileGrid,
        planes: usize,
        mut seed: u32,
        gap: usize,
    ) -> Vec<(Tile, Vec<f32>, Vec<u8>)> {
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed % 1000) as f32 / 1000.0
        };
        (0..g.rows())
            .flat_map(|r| (0..g.cols()).map(move |c| (r, c)))
            .map(|(r, c)| {
                let t = g.tile(r, c);
                let n = t.size;
                let probs: Vec<f32> = (0..planes * n * n).map(|_| rnd()).collect();
                let valid: Vec<u8> = (0..n * n).map(|i| u8::from(i % gap != 3)).collect();
                (t, probs, valid)
            })
            .collect()
    }

    /// Blending only the channels a decision reads (no probabilities kept) gives the same
    /// classes as blending every channel, for each decision, with tiles that disagree in
    /// their overlaps and scattered invalid pixels.
    #[test]
    fn class_only_blending_matches_full_blending() {
        let (w, h, classes) = (41, 33, 4);
        let g = grid(w, h, 12, 5);
        let tiles = random_tiles(&g, classes, 12345, 17);
        for decision in [
            Decision::Argmax,
            Decision::Threshold(0.5),
            Decision::Prompts(0.4),
        ] {
            let run = |keep: bool| {
                let mut s = MaskStitcher::new(&g, classes, BlendWindow::Cosine, decision);
                if !keep {
                    s = s.without_probabilities();
                }
                let mut sink = Collect {
                    width: w,
                    classes: vec![],
                    probs: vec![vec![]; classes],
                    next: 0,
                };
                for (t, p, v) in &tiles {
                    s.add(t, Some(p), v, &mut sink).expect("add");
                }
                s.finish(&mut sink).expect("finish");
                sink
            };
            let full = run(true);
            let lean = run(false);
            assert_eq!(full.classes.len(), w * h);
            assert_eq!(full.classes, lean.classes, "{decision:?}");
            assert!(lean.probs.iter().all(Vec::is_empty));
            // The decision really varies across the mosaic.
            let distinct: std::collections::BTreeSet<u8> = full.classes.iter().copied().collect();
            assert!(distinct.len() >= 2, "{decision:?}: {distinct:?}");
        }
    }

    /// A binary model's single P(class 1) plane stitches to the same classes, and the same
    /// probabilities within rounding, as the two planes `1 - p`, `p`.
    #[test]
    fn binary_input_equals_two_planes() {
        let (w, h) = (29, 23);
        let g = grid(w, h, 10, 4);
        let tiles = random_tiles(&g, 1, 99, 13);
        for keep in [true, false] {
            let run = |binary: bool| {
                let mut s = MaskStitcher::new(&g, 2, BlendWindow::Linear, Decision::Threshold(0.5));
                if binary {
                    s = s.binary_input();
                }
                if !keep {
                    s = s.without_probabilities();
                }
                let mut sink = Collect {
                    width: w,
                    classes: vec![],
                    probs: vec![vec![], vec![]],
                    next: 0,
                };
                for (t, p, v) in &tiles {
                    let planes: Vec<f32> = if binary {
                        p.clone()
                    } else {
                        p.iter().map(|x| 1.0 - x).chain(p.iter().copied()).collect()
                    };
                    s.add(t, Some(&planes), v, &mut sink).expect("add");
                }
                s.finish(&mut sink).expect("finish");
                sink
            };
            let (two, one) = (run(false), run(true));
            assert_eq!(two.classes, one.classes, "keep {keep}");
            assert!(two.classes.contains(&0) && two.classes.contains(&1));
            for c in 0..2 {
                assert_eq!(two.probs[c].len(), one.probs[c].len());
                for (a, b) in two.probs[c].iter().zip(&one.probs[c]) {
                    assert!(
                        (a - b).abs() < 1e-5 || (a.is_nan() && b.is_nan()),
                        "{a} {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn skipped_and_invalid_pixels_are_nodata() {
        let g = grid(20, 10, 10, 0);
        let mut s = MaskStitcher::new(&g, 2, BlendWindow::Linear, Decision::Argmax);
        let mut sink = Collect {
            width: 20,
            classes: vec![],
            probs: vec![vec![], vec![]],
            next: 0,
        };
        let t0 = g.tile(0, 0);
        let probs = vec![0.2f32; 200]
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i < 100 { v } else { 0.8 })
            .collect::<Vec<_>>();
        let mut valid = vec![1u8; 100];
        valid[0] = 0;
        s.add(&t0, Some(&probs), &valid, &mut sink).expect("add");
        s.add(&g.tile(0, 1), None, &[], &mut sink).expect("skip");
        s.finish(&mut sink).expect("finish");
        assert_eq!(sink.classes[0], NODATA_CLASS);
        assert_eq!(sink.classes[1], 1);
        assert!(sink.classes[10..20].iter().all(|&c| c == NODATA_CLASS));
        assert!(sink.probs[1][15].is_nan());
    }
}
