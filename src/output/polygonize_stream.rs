//! Streaming polygons from a class mask: the rows of a `u8` raster are pushed top to bottom and
//! every 4-connected region of equal value becomes one polygon, in map coordinates, as soon as
//! the region cannot grow any more. The result equals GDAL's `GDALPolygonize` with its default
//! 4-connectivity (the skipped values masked out), but memory is bounded by the raster width
//! and the polygons still open, never by the raster height, and the work is done per run of
//! equal values, not per pixel.
//!
//! # Algorithm
//!
//! Each row is cut into maximal runs of equal value (skipped values are background). The runs
//! of a row are matched against the runs of the row above (overlapping columns and the same
//! value means 4-connected) and labelled with a union-find of regions. The boundary of every
//! region is then built as directed chains of corner points, with the region on the right of
//! the direction of travel in pixel space (`x` = column, `y` = row). The open ends of the chains
//! sit on the current row line: one per run side (the vertical edges of the run's first and
//! last columns) and one per open horizontal segment during the left-to-right sweep of a line.
//! At each vertex of the line where a run starts or ends in the row above or below, the four
//! pixels around the vertex decide, per value, which chain ends continue, turn (a corner point
//! is added), start, or join; a chain joined to itself is a closed ring and is given to its
//! region. At a "saddle" vertex (two diagonal pixels of a value, the other two not) the two
//! corners are first kept apart (the diagonal pixels are not 4-connected); if they belong to
//! the same region its ring then passes the vertex twice and is split there into two simple
//! rings: the ring that bounds the outside is the exterior ring, the others are holes (a hole
//! may touch the exterior ring or another hole at such a vertex, which is valid OGC). A region
//! without a run in the current row is complete: its exterior ring and holes are emitted.

use std::collections::HashMap;

use geo::{Coord, LineString, Polygon};

use crate::raster::GeoTransform;

/// "No index" for node, run and region links.
const NONE: usize = usize::MAX;
/// The code of a pixel that belongs to no polygon (a skipped value, or outside the raster).
const BACKGROUND: u16 = 256;

/// A maximal horizontal run of one non-skipped value in a row.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// First column.
    start: usize,
    /// One past the last column.
    end: usize,
    value: u8,
    /// Region label (a union-find root once the row is labelled).
    label: usize,
    /// Tail node of the chain whose tail runs down the run's left side to the current line.
    left: usize,
    /// Head node of the chain whose head runs down the run's right side to the current line.
    right: usize,
}

/// A corner point of an open boundary chain. Chains are linked tail -> head through `next`;
/// each end node's `partner` is the chain's other end node (a one-node chain is its own
/// partner).
#[derive(Clone, Copy, Debug)]
struct Node {
    x: usize,
    y: usize,
    next: usize,
    partner: usize,
    /// Created at a saddle vertex: the same point may appear twice in the region's ring.
    saddle: bool,
}

/// A region label: a union-find entry; the root holds the region's closed rings.
#[derive(Debug, Default)]
struct Region {
    parent: usize,
    value: u8,
    /// The last line index at which the region had a run in the row below the line.
    alive: usize,
    exterior: Option<LineString<f64>>,
    holes: Vec<LineString<f64>>,
}

/// A corner point while a closed ring is being collected: `(x, y, saddle)` in pixel space.
type RingPoint = (usize, usize, bool);

/// Converts a `u8` class raster, pushed row by row, into one polygon per 4-connected region of
/// equal value, like `GDALPolygonize` with 4-connectivity.
///
/// - Pixel `(col, row)` covers the square between pixel corners `(col, row)` and
///   `(col + 1, row + 1)`; corners are mapped to map coordinates with the geotransform
///   (`x = gt[0] + col * gt[1] + row * gt[2]`, `y = gt[3] + col * gt[4] + row * gt[5]`).
/// - Pixels whose value is skipped never form polygons; they, other values and the outside of
///   the raster bound the regions. Diagonal (corner-only) contacts do not connect pixels.
/// - Every enclosed area that is not part of a region (other values, skipped values, other
///   regions, islands inside) is a hole of the region; pieces of such areas that touch only at
///   a corner are separate holes. A hole may touch the exterior ring or another hole at one
///   vertex. Rings are simple, closed (first point repeated last) and hold corner points only
///   (no collinear intermediate points).
/// - Orientation: the exterior ring is counter-clockwise and the holes clockwise in map
///   coordinates (the plane with `y` up) for every non-degenerate geotransform: for a usual
///   north-up transform (`gt[5] < 0`) as well as for one whose `y` grows with the row.
/// - Memory is bounded by the raster width and the regions still open.
///
/// Polygons come out as soon as their region is complete (it has no pixel in the last row
/// pushed); [`take_finished`](Self::take_finished) hands them over while rows are still being
/// pushed, [`finish`](Self::finish) ends the raster and returns the rest. The polygons' order is
/// the order in which regions complete (by their last row, then by column), not GDAL's.
#[derive(Debug)]
pub struct StreamPolygonizer {
    width: usize,
    geotransform: GeoTransform,
    /// Map rings in reverse point order (the transform flips orientation).
    reverse: bool,
    skip: [bool; 256],
    /// Bytes of a row not yet complete (when a push does not end on a row boundary).
    partial: Vec<u8>,
    /// Index of the horizontal line processed next (= the number of rows processed).
    line: usize,
    /// Runs of the row above the current line.
    prev: Vec<Run>,
    /// Runs of the row below the current line.
    cur: Vec<Run>,
    nodes: Vec<Node>,
    free_nodes: Vec<usize>,
    regions: Vec<Region>,
    free_regions: Vec<usize>,
    /// Labels merged into another region during the current line (freed at its end).
    absorbed: Vec<usize>,
    finished: Vec<(u8, Polygon<f64>)>,
    /// Scratch space for collecting closed rings.
    ring: Vec<RingPoint>,
}

impl StreamPolygonizer {
    /// A polygonizer for a raster of `width` columns: pixel corners are mapped to map
    /// coordinates through `geotransform`; pixels whose class value is in `skip` (e.g.
    /// background 0 and nodata 255) are never polygonized, they only bound the polygons of the
    /// other values (as holes or outside).
    pub fn new(width: usize, geotransform: GeoTransform, skip: &[u8]) -> StreamPolygonizer {
        let mut table = [false; 256];
        for &v in skip {
            table[usize::from(v)] = true;
        }
        let g = &geotransform.0;
        // Pixel-space rings have the region on their right (clockwise with y up); a
        // transform with a negative determinant mirrors them.
        let det = g[1] * g[5] - g[2] * g[4];
        StreamPolygonizer {
            width,
            geotransform,
            reverse: det < 0.0,
            skip: table,
            partial: Vec::new(),
            line: 0,
            prev: Vec::new(),
            cur: Vec::new(),
            nodes: Vec::new(),
            free_nodes: Vec::new(),
            regions: Vec::new(),
            free_regions: Vec::new(),
            absorbed: Vec::new(),
            finished: Vec::new(),
            ring: Vec::new(),
        }
    }

    /// The next rows of the raster, top to bottom, row-major: `data.len()` is normally a
    /// multiple of the width. Bytes after the last complete row are kept and completed by the
    /// next call (a row may be split across calls); an incomplete row left at
    /// [`finish`](Self::finish) is ignored. Nothing happens for a width of 0.
    pub fn push_rows(&mut self, data: &[u8]) {
        let width = self.width;
        if width == 0 || data.is_empty() {
            return;
        }
        let mut data = data;
        if !self.partial.is_empty() {
            let need = width - self.partial.len();
            let take = need.min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < width {
                return;
            }
            let row = std::mem::take(&mut self.partial);
            self.process_row(Some(&row));
            self.partial = row;
            self.partial.clear();
        }
        let mut rows = data.chunks_exact(width);
        for row in &mut rows {
            self.process_row(Some(row));
        }
        self.partial.extend_from_slice(rows.remainder());
    }

    /// The polygons completed so far (their region cannot grow any more), as `(class value,
    /// polygon)`; they are removed from the polygonizer.
    pub fn take_finished(&mut self) -> Vec<(u8, Polygon<f64>)> {
        std::mem::take(&mut self.finished)
    }

    /// End of the raster: every polygon not yet taken.
    pub fn finish(mut self) -> Vec<(u8, Polygon<f64>)> {
        if self.width > 0 {
            self.process_row(None);
        }
        self.finished
    }

    /// One row (or, with `None`, the outside below the last row): label its runs, link the
    /// boundary along the line above it, emit the regions that ended.
    fn process_row(&mut self, row: Option<&[u8]>) {
        let mut prev = std::mem::take(&mut self.prev);
        let mut cur = std::mem::take(&mut self.cur);
        cur.clear();
        if let Some(row) = row {
            runs_of(row, &self.skip, &mut cur);
        }
        self.label(&prev, &mut cur);
        self.sweep(&prev, &mut cur);
        self.complete(&prev);
        prev.clear();
        self.prev = cur;
        self.cur = prev;
        self.line += 1;
    }

    /// Labels the runs of the new row: a run takes the region of the runs of the same value
    /// that it overlaps in the row above (merging them), or a new region.
    fn label(&mut self, prev: &[Run], cur: &mut [Run]) {
        let mut j = 0;
        for run in cur.iter_mut() {
            while j < prev.len() && prev[j].end <= run.start {
                j += 1;
            }
            let mut label = NONE;
            let mut k = j;
            while k < prev.len() && prev[k].start < run.end {
                if prev[k].value == run.value {
                    let root = self.find(prev[k].label);
                    label = if label == NONE {
                        root
                    } else {
                        self.union(label, root)
                    };
                }
                k += 1;
            }
            if label == NONE {
                label = self.new_region(run.value);
            }
            run.label = label;
        }
        let line = self.line;
        for run in cur.iter_mut() {
            run.label = self.find(run.label);
            if let Some(region) = self.regions.get_mut(run.label) {
                region.alive = line;
            }
        }
    }

    /// Links the boundary chains at every vertex of the current line where a run starts or
    /// ends in the row above or below, left to right.
    fn sweep(&mut self, prev: &[Run], cur: &mut [Run]) {
        let y = self.line;
        let (mut ip, mut ic) = (0usize, 0usize);
        // Pending horizontal edges of the segment left of the vertex: the tail of the chain
        // along the bottom of the row above, the head of the chain along the top of the row
        // below.
        let (mut above, mut below) = (NONE, NONE);
        // Value and run index of the pixels left of the vertex (above, below).
        let mut west = [(BACKGROUND, NONE); 2];
        let mut x = match (prev.first(), cur.first()) {
            (None, None) => return,
            (Some(p), None) => p.start,
            (None, Some(c)) => c.start,
            (Some(p), Some(c)) => p.start.min(c.start),
        };
        loop {
            while ip < prev.len() && prev[ip].end <= x {
                ip += 1;
            }
            while ic < cur.len() && cur[ic].end <= x {
                ic += 1;
            }
            let ne = match prev.get(ip) {
                Some(r) if r.start <= x => (u16::from(r.value), ip),
                _ => (BACKGROUND, NONE),
            };
            let se = match cur.get(ic) {
                Some(r) if r.start <= x => (u16::from(r.value), ic),
                _ => (BACKGROUND, NONE),
            };
            let quad = Quad {
                x,
                y,
                pixels: [west[0], ne, west[1], se],
            };
            self.vertex(&quad, prev, cur, &mut above, &mut below);
            west = [ne, se];
            let next_prev = match prev.get(ip) {
                Some(r) if r.start <= x => r.end,
                Some(r) => r.start,
                None => NONE,
            };
            let next_cur = match cur.get(ic) {
                Some(r) if r.start <= x => r.end,
                Some(r) => r.start,
                None => NONE,
            };
            x = next_prev.min(next_cur);
            if x == NONE {
                break;
            }
        }
        debug_assert!(
            above == NONE && below == NONE,
            "open edge past the last run"
        );
    }

    /// Links the chain ends at one vertex, for each value among its four pixels.
    fn vertex(
        &mut self,
        q: &Quad,
        prev: &[Run],
        cur: &mut [Run],
        above: &mut usize,
        below: &mut usize,
    ) {
        let (old_above, old_below) = (*above, *below);
        let (mut new_above, mut new_below) = (NONE, NONE);
        let [nw, ne, sw, se] = q.pixels;
        let values = [nw.0, ne.0, sw.0, se.0];
        let (x, y) = (q.x, q.y);
        // Chain ends held by the runs around the vertex.
        let prev_right = |i: usize| prev.get(i).map_or(NONE, |r| r.right);
        let prev_left = |i: usize| prev.get(i).map_or(NONE, |r| r.left);
        let prev_label = |i: usize| prev.get(i).map_or(NONE, |r| r.label);
        for k in 0..4 {
            let v = values[k];
            if v == BACKGROUND || values[..k].contains(&v) {
                continue;
            }
            let mask = u8::from(values[0] == v)
                | u8::from(values[1] == v) << 1
                | u8::from(values[2] == v) << 2
                | u8::from(values[3] == v) << 3;
            match mask {
                // NW only: the region's bottom-right corner.
                0b0001 => {
                    let label = prev_label(nw.1);
                    self.join(prev_right(nw.1), old_above, x, y, false, label);
                }
                // NE only: bottom-left corner.
                0b0010 => new_above = self.prepend(prev_left(ne.1), x, y, false),
                // NW and NE: the bottom edge goes on.
                0b0011 => new_above = old_above,
                // SW only: top-right corner.
                0b0100 => {
                    let head = self.append(old_below, x, y, false);
                    set_right(cur, sw.1, head);
                }
                // NW and SW: the right edge goes on.
                0b0101 => set_right(cur, sw.1, prev_right(nw.1)),
                // NE and SW (saddle): two corners, kept apart.
                0b0110 => {
                    let head = self.append(old_below, x, y, true);
                    set_right(cur, sw.1, head);
                    new_above = self.prepend(prev_left(ne.1), x, y, true);
                }
                // NW, NE and SW: inner corner, a new chain.
                0b0111 => {
                    let node = self.new_node(x, y, false);
                    new_above = node;
                    set_right(cur, sw.1, node);
                }
                // SE only: top-left corner, a new chain.
                0b1000 => {
                    let node = self.new_node(x, y, false);
                    set_left(cur, se.1, node);
                    new_below = node;
                }
                // NW and SE (saddle): two corners, kept apart.
                0b1001 => {
                    let label = prev_label(nw.1);
                    self.join(prev_right(nw.1), old_above, x, y, true, label);
                    let node = self.new_node(x, y, true);
                    set_left(cur, se.1, node);
                    new_below = node;
                }
                // NE and SE: the left edge goes on.
                0b1010 => set_left(cur, se.1, prev_left(ne.1)),
                // NW, NE and SE: inner corner.
                0b1011 => {
                    let tail = self.prepend(old_above, x, y, false);
                    set_left(cur, se.1, tail);
                }
                // SW and SE: the top edge goes on.
                0b1100 => new_below = old_below,
                // NW, SW and SE: inner corner.
                0b1101 => new_below = self.append(prev_right(nw.1), x, y, false),
                // NE, SW and SE: inner corner joining two chains.
                0b1110 => {
                    let label = cur.get(sw.1).map_or(NONE, |r| r.label);
                    self.join(old_below, prev_left(ne.1), x, y, false, label);
                }
                // All four (or impossible): no edge.
                _ => {}
            }
        }
        *above = new_above;
        *below = new_below;
    }

    fn new_node(&mut self, x: usize, y: usize, saddle: bool) -> usize {
        let node = Node {
            x,
            y,
            next: NONE,
            partner: NONE,
            saddle,
        };
        let i = match self.free_nodes.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.nodes[i].partner = i;
        i
    }

    /// Adds corner `(x, y)` after the head node `head`; returns the new head.
    fn append(&mut self, head: usize, x: usize, y: usize, saddle: bool) -> usize {
        let c = self.new_node(x, y, saddle);
        let Some(tail) = self.nodes.get(head).map(|n| n.partner) else {
            debug_assert!(false, "append to a missing chain");
            return c;
        };
        self.nodes[head].next = c;
        self.nodes[tail].partner = c;
        self.nodes[c].partner = tail;
        c
    }

    /// Adds corner `(x, y)` before the tail node `tail`; returns the new tail.
    fn prepend(&mut self, tail: usize, x: usize, y: usize, saddle: bool) -> usize {
        let c = self.new_node(x, y, saddle);
        let Some(head) = self.nodes.get(tail).map(|n| n.partner) else {
            debug_assert!(false, "prepend to a missing chain");
            return c;
        };
        self.nodes[c].next = tail;
        self.nodes[head].partner = c;
        self.nodes[c].partner = head;
        c
    }

    /// Links head node `head` through corner `(x, y)` to tail node `tail`; when they are the
    /// two ends of one chain, the ring is closed and given to region `label`.
    fn join(&mut self, head: usize, tail: usize, x: usize, y: usize, saddle: bool, label: usize) {
        if head >= self.nodes.len() || tail >= self.nodes.len() {
            debug_assert!(false, "join of a missing chain");
            return;
        }
        let c = self.new_node(x, y, saddle);
        self.nodes[head].next = c;
        self.nodes[c].next = tail;
        let a = self.nodes[head].partner;
        if a == tail {
            self.close_ring(c, label);
        } else {
            let b = self.nodes[tail].partner;
            self.nodes[a].partner = b;
            self.nodes[b].partner = a;
        }
    }

    /// Collects (and frees) the closed ring through node `start` and adds it to its region,
    /// split into simple rings where it passes a saddle vertex twice.
    fn close_ring(&mut self, start: usize, label: usize) {
        let mut ring = std::mem::take(&mut self.ring);
        ring.clear();
        let mut saddles = false;
        let mut i = start;
        loop {
            let Some(&n) = self.nodes.get(i) else {
                debug_assert!(false, "broken ring");
                break;
            };
            ring.push((n.x, n.y, n.saddle));
            saddles |= n.saddle;
            self.free_nodes.push(i);
            i = n.next;
            if i == start || ring.len() > self.nodes.len() {
                break;
            }
        }
        let root = self.find(label);
        if saddles {
            let mut stack: Vec<RingPoint> = Vec::with_capacity(ring.len());
            let mut seen: HashMap<(usize, usize), usize> = HashMap::new();
            for &p in &ring {
                if p.2 {
                    if let Some(&j) = seen.get(&(p.0, p.1)) {
                        let tail = stack.split_off(j + 1);
                        for q in &tail {
                            if q.2 {
                                seen.remove(&(q.0, q.1));
                            }
                        }
                        let mut piece = Vec::with_capacity(tail.len() + 1);
                        piece.push(stack[j]);
                        piece.extend_from_slice(&tail);
                        self.add_ring(root, &piece);
                        continue;
                    }
                    seen.insert((p.0, p.1), stack.len());
                }
                stack.push(p);
            }
            self.add_ring(root, &stack);
        } else {
            self.add_ring(root, &ring);
        }
        self.ring = ring;
    }

    /// Adds a simple closed ring of pixel corners (not repeated at the end) to region `root`:
    /// the exterior ring when it winds around the region (clockwise with y up in pixel
    /// space), else a hole.
    fn add_ring(&mut self, root: usize, points: &[RingPoint]) {
        if points.len() < 4 {
            debug_assert!(false, "degenerate ring");
            return;
        }
        let mut twice_area: i128 = 0;
        let mut last = points[points.len() - 1];
        for &p in points {
            twice_area +=
                coord_i128(last.0) * coord_i128(p.1) - coord_i128(p.0) * coord_i128(last.1);
            last = p;
        }
        let g = &self.geotransform.0;
        let map = |p: &RingPoint| {
            let (c, r) = (p.0 as f64, p.1 as f64);
            Coord {
                x: g[0] + c * g[1] + r * g[2],
                y: g[3] + c * g[4] + r * g[5],
            }
        };
        let mut coords: Vec<Coord<f64>> = Vec::with_capacity(points.len() + 1);
        if self.reverse {
            coords.extend(points.iter().rev().map(map));
        } else {
            coords.extend(points.iter().map(map));
        }
        coords.push(coords[0]);
        let ring = LineString(coords);
        let Some(region) = self.regions.get_mut(root) else {
            debug_assert!(false, "ring of a missing region");
            return;
        };
        if twice_area > 0 && region.exterior.is_none() {
            region.exterior = Some(ring);
        } else {
            debug_assert!(twice_area < 0, "second exterior ring");
            region.holes.push(ring);
        }
    }

    /// Emits the regions that had a run in the row above the current line and have none in the
    /// row below, then frees their labels and the labels merged away during the line.
    fn complete(&mut self, prev: &[Run]) {
        let line = self.line;
        for run in prev {
            let root = self.find(run.label);
            let Some(region) = self.regions.get_mut(root) else {
                continue;
            };
            if region.alive == line {
                continue;
            }
            region.alive = line;
            let value = region.value;
            let holes = std::mem::take(&mut region.holes);
            match region.exterior.take() {
                Some(exterior) => self.finished.push((value, Polygon::new(exterior, holes))),
                None => debug_assert!(false, "region without an exterior ring"),
            }
            self.free_regions.push(root);
        }
        while let Some(label) = self.absorbed.pop() {
            if let Some(region) = self.regions.get_mut(label) {
                region.holes = Vec::new();
                region.exterior = None;
            }
            self.free_regions.push(label);
        }
    }

    fn new_region(&mut self, value: u8) -> usize {
        let line = self.line;
        let i = match self.free_regions.pop() {
            Some(i) => i,
            None => {
                self.regions.push(Region::default());
                self.regions.len() - 1
            }
        };
        let region = &mut self.regions[i];
        region.parent = i;
        region.value = value;
        region.alive = line;
        region.exterior = None;
        region.holes.clear();
        i
    }

    fn find(&mut self, label: usize) -> usize {
        let mut root = label;
        while let Some(r) = self.regions.get(root) {
            if r.parent == root {
                break;
            }
            root = r.parent;
        }
        let mut i = label;
        while i != root {
            let Some(r) = self.regions.get_mut(i) else {
                break;
            };
            i = std::mem::replace(&mut r.parent, root);
        }
        root
    }

    /// Merges two region roots; returns the surviving root (the one with more holes, so
    /// fewer are moved).
    fn union(&mut self, a: usize, b: usize) -> usize {
        if a == b || a >= self.regions.len() || b >= self.regions.len() {
            return a;
        }
        let (keep, gone) = if self.regions[a].holes.len() >= self.regions[b].holes.len() {
            (a, b)
        } else {
            (b, a)
        };
        let mut holes = std::mem::take(&mut self.regions[gone].holes);
        let exterior = self.regions[gone].exterior.take();
        self.regions[gone].parent = keep;
        let region = &mut self.regions[keep];
        region.holes.append(&mut holes);
        if region.exterior.is_none() {
            region.exterior = exterior;
        }
        self.absorbed.push(gone);
        keep
    }
}

/// The four pixels around vertex `(x, y)` of a row line: `(value, run index)` of the pixels
/// north-west, north-east, south-west and south-east (`BACKGROUND` outside runs).
struct Quad {
    x: usize,
    y: usize,
    pixels: [(u16, usize); 4],
}

fn set_left(runs: &mut [Run], i: usize, node: usize) {
    if let Some(r) = runs.get_mut(i) {
        r.left = node;
    }
}

fn set_right(runs: &mut [Run], i: usize, node: usize) {
    if let Some(r) = runs.get_mut(i) {
        r.right = node;
    }
}

fn coord_i128(v: usize) -> i128 {
    v as i128
}

/// Appends the maximal runs of non-skipped values of `row` to `out`.
fn runs_of(row: &[u8], skip: &[bool; 256], out: &mut Vec<Run>) {
    let mut x = 0;
    while let Some(&v) = row.get(x) {
        let end = run_end(row, x + 1, v);
        if !skip[usize::from(v)] {
            out.push(Run {
                start: x,
                end,
                value: v,
                label: NONE,
                left: NONE,
                right: NONE,
            });
        }
        x = end;
    }
}

/// The first index at or after `from` whose byte differs from `v` (or `row.len()`), sixteen
/// bytes at a time.
#[inline]
fn run_end(row: &[u8], from: usize, v: u8) -> usize {
    let Some(rest) = row.get(from..) else {
        return row.len();
    };
    let pattern = u128::from_ne_bytes([v; 16]);
    let mut chunks = rest.chunks_exact(16);
    let mut i = from;
    for c in &mut chunks {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(c);
        let diff = u128::from_le_bytes(bytes) ^ pattern;
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 16;
    }
    for &b in chunks.remainder() {
        if b != v {
            return i;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::polygonize_classes;
    use gdal::vector::ToGdal;
    use geo::{Area, Validation, Winding};
    use std::collections::BTreeMap;

    /// Origin offset, 0.5 m pixels, north up.
    const GT: GeoTransform = GeoTransform([500_000.0, 0.5, 0.0, 4_600_000.0, 0.0, -0.5]);

    type Polys = Vec<(u8, Polygon<f64>)>;
    /// Unit edges of a polygon's boundary in pixel space: `(x, y, horizontal)`.
    type Edges = Vec<(i64, i64, bool)>;
    /// A polygon's rings as canonical pixel-space corner lists (exterior first).
    type Rings = Vec<Vec<(i64, i64)>>;

    /// Polygonizes `data` pushing `chunk_rows` rows at a time, taking finished polygons after
    /// every push.
    fn stream(
        data: &[u8],
        width: usize,
        gt: GeoTransform,
        skip: &[u8],
        chunk_rows: usize,
    ) -> Polys {
        let mut p = StreamPolygonizer::new(width, gt, skip);
        let mut out = Vec::new();
        for chunk in data.chunks((chunk_rows * width).max(1)) {
            p.push_rows(chunk);
            out.extend(p.take_finished());
        }
        out.extend(p.finish());
        out
    }

    /// A grid from rows of digits.
    fn grid(rows: &[&str]) -> (Vec<u8>, usize, usize) {
        let width = rows.first().map_or(0, |r| r.len());
        let mut data = Vec::new();
        for r in rows {
            assert_eq!(r.len(), width);
            data.extend(r.bytes().map(|b| b - b'0'));
        }
        (data, width, rows.len())
    }

    /// Pixel-corner coordinates of a map coordinate (must be a corner).
    fn to_pixel(inv: &GeoTransform, c: Coord<f64>) -> (i64, i64) {
        let (col, row) = inv.apply(c.x, c.y);
        let (ci, ri) = (col.round(), row.round());
        assert!(
            (col - ci).abs() < 1e-6 && (row - ri).abs() < 1e-6,
            "vertex {c:?} is not a pixel corner ({col}, {row})"
        );
        (ci as i64, ri as i64)
    }

    fn ring_pixels(inv: &GeoTransform, ring: &LineString<f64>) -> Vec<(i64, i64)> {
        ring.0.iter().map(|&c| to_pixel(inv, c)).collect()
    }

    /// The unit edges (pixel space, undirected) of all rings of a polygon, sorted: equal for
    /// two polygons exactly when they cover the same pixels with the same boundary, however
    /// the boundary is cut into rings or where the rings start.
    fn unit_edges(gt: &GeoTransform, p: &Polygon<f64>) -> Edges {
        let inv = gt.invert().expect("invertible");
        let mut edges = Vec::new();
        for ring in std::iter::once(p.exterior()).chain(p.interiors()) {
            let pts = ring_pixels(&inv, ring);
            for w in pts.windows(2) {
                let ((x0, y0), (x1, y1)) = (w[0], w[1]);
                assert!(x0 == x1 || y0 == y1, "diagonal segment");
                if y0 == y1 {
                    for x in x0.min(x1)..x0.max(x1) {
                        edges.push((x, y0, true));
                    }
                } else {
                    for y in y0.min(y1)..y0.max(y1) {
                        edges.push((x0, y, false));
                    }
                }
            }
        }
        edges.sort_unstable();
        edges
    }

    /// Every structural promise of the module for one polygon.
    fn check_polygon(gt: &GeoTransform, class: u8, p: &Polygon<f64>) {
        let inv = gt.invert().expect("invertible");
        let rings: Vec<&LineString<f64>> =
            std::iter::once(p.exterior()).chain(p.interiors()).collect();
        for (k, ring) in rings.iter().enumerate() {
            let pts = ring_pixels(&inv, ring);
            assert!(pts.len() >= 5, "class {class}: ring {k} too short: {pts:?}");
            assert_eq!(pts.first(), pts.last(), "ring {k} not closed");
            let n = pts.len() - 1;
            let mut distinct = pts[..n].to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), n, "ring {k} repeats a vertex: {pts:?}");
            for i in 0..n {
                let (a, b, c) = (pts[(i + n - 1) % n], pts[i], pts[(i + 1) % n]);
                let cross = (b.0 - a.0) * (c.1 - b.1) - (b.1 - a.1) * (c.0 - b.0);
                assert_ne!(
                    cross, 0,
                    "ring {k}: collinear or spike vertex {b:?}: {pts:?}"
                );
            }
            if k == 0 {
                assert!(ring.is_ccw(), "exterior not counter-clockwise: {pts:?}");
            } else {
                assert!(ring.is_cw(), "hole not clockwise: {pts:?}");
            }
        }
        assert!(p.is_valid(), "geo: invalid polygon {p:?}");
        let g = p.to_gdal().expect("to gdal");
        assert!(
            g.is_valid(),
            "GEOS: invalid polygon {}",
            g.wkt().unwrap_or_default()
        );
    }

    /// Pixel count of every 4-connected region (class, pixels), sorted: a flood fill.
    fn regions(data: &[u8], width: usize, height: usize, skip: &[u8]) -> Vec<(u8, usize)> {
        let mut seen = vec![false; data.len()];
        let mut out = Vec::new();
        let mut stack = Vec::new();
        for start in 0..data.len() {
            if seen[start] || skip.contains(&data[start]) {
                continue;
            }
            let v = data[start];
            seen[start] = true;
            stack.push(start);
            let mut count = 0;
            while let Some(i) = stack.pop() {
                count += 1;
                let (x, y) = (i % width, i / width);
                let mut near = Vec::with_capacity(4);
                if x > 0 {
                    near.push(i - 1);
                }
                if x + 1 < width {
                    near.push(i + 1);
                }
                if y > 0 {
                    near.push(i - width);
                }
                if y + 1 < height {
                    near.push(i + width);
                }
                for j in near {
                    if !seen[j] && data[j] == v {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
            out.push((v, count));
        }
        out.sort_unstable();
        out
    }

    fn pixel_area(gt: &GeoTransform) -> f64 {
        let g = &gt.0;
        (g[1] * g[5] - g[2] * g[4]).abs()
    }

    /// Sorted (class, pixel count) of polygons.
    fn areas(gt: &GeoTransform, polys: &Polys) -> Vec<(u8, usize)> {
        let px = pixel_area(gt);
        let mut out: Vec<(u8, usize)> = polys
            .iter()
            .map(|(c, p)| {
                let a = p.unsigned_area() / px;
                assert!((a - a.round()).abs() < 1e-6, "area {a} not whole pixels");
                (*c, a.round() as usize)
            })
            .collect();
        out.sort_unstable();
        out
    }

    fn gdal_polys(
        data: &[u8],
        width: usize,
        height: usize,
        gt: &GeoTransform,
        skip: &[u8],
    ) -> Polys {
        let by_class: BTreeMap<u8, Vec<Polygon<f64>>> =
            polygonize_classes(data, width, height, gt, None).expect("GDAL polygonize");
        by_class
            .into_iter()
            .filter(|(c, _)| !skip.contains(c))
            .flat_map(|(c, ps)| ps.into_iter().map(move |p| (c, p)))
            .collect()
    }

    /// The streaming result (pushed in several chunkings) against the flood fill and GDAL:
    /// same regions and areas, same boundaries, and the same rings (up to start point,
    /// orientation and collinear points).
    fn compare(data: &[u8], width: usize, height: usize, gt: GeoTransform, skip: &[u8]) {
        let mine = stream(data, width, gt, skip, 3);
        let by_row = stream(data, width, gt, skip, 1);
        let whole = stream(data, width, gt, skip, height.max(1));
        assert_eq!(mine, by_row, "chunking changed the result");
        assert_eq!(mine, whole, "chunking changed the result");
        for (c, p) in &mine {
            assert!(!skip.contains(c), "skipped class {c} polygonized");
            check_polygon(&gt, *c, p);
        }
        let expected = regions(data, width, height, skip);
        assert_eq!(
            areas(&gt, &mine),
            expected,
            "regions differ from the flood fill"
        );
        let theirs = gdal_polys(data, width, height, &gt, skip);
        assert_eq!(
            areas(&gt, &theirs),
            expected,
            "GDAL differs from the flood fill"
        );
        let key = |polys: &Polys| {
            let mut k: Vec<(u8, Edges)> = polys
                .iter()
                .map(|(c, p)| (*c, unit_edges(&gt, p)))
                .collect();
            k.sort();
            k
        };
        assert!(key(&mine) == key(&theirs), "boundaries differ from GDAL's");
        let rings = |polys: &Polys| {
            let mut k: Vec<(u8, Rings)> = polys
                .iter()
                .map(|(c, p)| {
                    let mut rs: Rings = std::iter::once(p.exterior())
                        .chain(p.interiors())
                        .map(|r| canonical_ring(&gt, r))
                        .collect();
                    rs[1..].sort();
                    (*c, rs)
                })
                .collect();
            k.sort();
            k
        };
        assert!(rings(&mine) == rings(&theirs), "rings differ from GDAL's");
    }

    /// A ring as its corner points in pixel space (collinear points dropped), in one
    /// orientation, starting at its smallest point, not closed.
    fn canonical_ring(gt: &GeoTransform, ring: &LineString<f64>) -> Vec<(i64, i64)> {
        let inv = gt.invert().expect("invertible");
        let mut pts = ring_pixels(&inv, ring);
        pts.pop();
        let n = pts.len();
        let mut corners: Vec<(i64, i64)> = (0..n)
            .filter(|&i| {
                let (a, b, c) = (pts[(i + n - 1) % n], pts[i], pts[(i + 1) % n]);
                (b.0 - a.0) * (c.1 - b.1) - (b.1 - a.1) * (c.0 - b.0) != 0
            })
            .map(|i| pts[i])
            .collect();
        let m = corners.len();
        let twice_area: i64 = (0..m)
            .map(|i| {
                let (a, b) = (corners[i], corners[(i + 1) % m]);
                a.0 * b.1 - b.0 * a.1
            })
            .sum();
        if twice_area < 0 {
            corners.reverse();
        }
        let start = (0..m).min_by_key(|&i| corners[i]).unwrap_or(0);
        corners.rotate_left(start);
        corners
    }

    /// A ring as pixel corners, closed, rotated to start at its smallest point.
    fn norm_ring(gt: &GeoTransform, ring: &LineString<f64>) -> Vec<(i64, i64)> {
        let inv = gt.invert().expect("invertible");
        let mut pts = ring_pixels(&inv, ring);
        pts.pop();
        let start = (0..pts.len()).min_by_key(|&i| pts[i]).unwrap_or(0);
        pts.rotate_left(start);
        let first = pts[0];
        pts.push(first);
        pts
    }

    fn one_shot(rows: &[&str], skip: &[u8]) -> (Polys, Vec<u8>, usize, usize) {
        let (data, w, h) = grid(rows);
        compare(&data, w, h, GT, skip);
        (stream(&data, w, GT, skip, 1), data, w, h)
    }

    #[test]
    fn single_pixel_exact_ring() {
        let (polys, ..) = one_shot(&["1"], &[]);
        assert_eq!(polys.len(), 1);
        let (c, p) = &polys[0];
        assert_eq!(*c, 1);
        assert!(p.interiors().is_empty());
        // Counter-clockwise in map coordinates: the y axis points up (north), rows go down.
        let want: Vec<(f64, f64)> = vec![
            (500_000.0, 4_599_999.5),
            (500_000.5, 4_599_999.5),
            (500_000.5, 4_600_000.0),
            (500_000.0, 4_600_000.0),
        ];
        let got: Vec<(f64, f64)> = p.exterior().0.iter().map(|c| (c.x, c.y)).collect();
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], got[4]);
        let start = want.iter().position(|w| *w == got[0]).expect("a corner");
        for i in 0..4 {
            assert_eq!(got[i], want[(start + i) % 4]);
        }
        // Inside a skipped background.
        let (polys, ..) = one_shot(&["000", "010", "000"], &[0]);
        assert_eq!(polys.len(), 1);
        assert_eq!(
            norm_ring(&GT, polys[0].1.exterior()),
            vec![(1, 1), (1, 2), (2, 2), (2, 1), (1, 1)]
        );
    }

    #[test]
    fn l_shape_has_six_corners() {
        let (polys, ..) = one_shot(&["100", "100", "111"], &[0]);
        assert_eq!(polys.len(), 1);
        let ring = norm_ring(&GT, polys[0].1.exterior());
        assert_eq!(
            ring,
            vec![(0, 0), (0, 3), (3, 3), (3, 2), (1, 2), (1, 0), (0, 0)]
        );
    }

    #[test]
    fn ring_with_hole_and_island() {
        let rows = [
            "1111111", //
            "1000001", //
            "1020201", //
            "1000001", //
            "1111111",
        ];
        let (polys, ..) = one_shot(&rows, &[0]);
        // The frame (one hole: the whole inside, islands included) and two islands.
        assert_eq!(polys.len(), 3);
        let frame: Vec<_> = polys.iter().filter(|(c, _)| *c == 1).collect();
        assert_eq!(frame.len(), 1);
        assert_eq!(frame[0].1.interiors().len(), 1);
        assert_eq!(
            norm_ring(&GT, &frame[0].1.interiors()[0]),
            vec![(1, 1), (6, 1), (6, 4), (1, 4), (1, 1)]
        );
        assert_eq!(polys.iter().filter(|(c, _)| *c == 2).count(), 2);
        // With the background polygonized too: the inside is one 0 region with two holes
        // (the islands).
        let (polys, ..) = one_shot(&rows, &[]);
        let zeros: Vec<_> = polys.iter().filter(|(c, _)| *c == 0).collect();
        assert_eq!(zeros.len(), 1);
        assert_eq!(zeros[0].1.interiors().len(), 2);
    }

    #[test]
    fn checkerboard_is_one_polygon_per_pixel() {
        let rows = ["1212", "2121", "1212", "2121"];
        let (polys, ..) = one_shot(&rows, &[]);
        assert_eq!(polys.len(), 16);
        let (polys, ..) = one_shot(&rows, &[2]);
        assert_eq!(polys.len(), 8);
        assert!(polys
            .iter()
            .all(|(c, p)| *c == 1 && p.interiors().is_empty()));
    }

    #[test]
    fn saddle_hole_touches_the_exterior_at_a_point() {
        // The 0 at (1,1) is enclosed by 1s but touches the outside 0 at (2,2) by a corner:
        // a hole touching the exterior ring at vertex (2,2), not a self-touching exterior.
        for rows in [
            ["111", "101", "110"],
            ["011", "101", "111"],
            ["110", "101", "111"],
            ["111", "101", "011"],
        ] {
            let (polys, ..) = one_shot(&rows, &[0]);
            assert_eq!(polys.len(), 1, "{rows:?}");
            let p = &polys[0].1;
            assert_eq!(p.interiors().len(), 1, "{rows:?}");
            assert!((p.unsigned_area() - 7.0 * 0.25).abs() < 1e-9);
            let hole = norm_ring(&GT, &p.interiors()[0]);
            assert_eq!(hole, vec![(1, 1), (2, 1), (2, 2), (1, 2), (1, 1)]);
            let ext = norm_ring(&GT, p.exterior());
            assert_eq!(ext.len(), 7, "{rows:?}: {ext:?}");
        }
    }

    #[test]
    fn saddle_two_holes_touch_at_a_point() {
        let rows = ["1111", "1011", "1101", "1111"];
        let (polys, ..) = one_shot(&rows, &[0]);
        assert_eq!(polys.len(), 1);
        assert_eq!(polys[0].1.interiors().len(), 2);
        // A diagonal line of holes, and a diagonal of region pixels joined around.
        one_shot(&["11111", "10111", "11011", "11101", "11111"], &[0]);
        one_shot(&["11111", "10101", "11011", "10101", "11111"], &[0]);
        one_shot(&["0110", "1001", "1001", "0110"], &[0]);
        one_shot(&["0110", "1001", "1001", "0110"], &[]);
        one_shot(&["101", "010", "101"], &[]);
        one_shot(&["11111", "10001", "10101", "10001", "11111"], &[]);
    }

    #[test]
    fn saddle_between_two_regions_is_not_a_hole() {
        // Two separate 1 regions touching by a corner: two polygons, no holes.
        let (polys, ..) = one_shot(&["10", "01"], &[0]);
        assert_eq!(polys.len(), 2);
        assert!(polys.iter().all(|(_, p)| p.interiors().is_empty()));
        // Diagonal pixels that are joined further down (same region after a later merge).
        let (polys, ..) = one_shot(&["1100", "1010", "1010", "1110"], &[0]);
        assert_eq!(polys.len(), 1);
    }

    #[test]
    fn regions_touching_every_edge_and_thin_rasters() {
        one_shot(&["111", "111"], &[]);
        one_shot(&["121", "111", "131"], &[]);
        let (polys, ..) = one_shot(&["1"], &[1]);
        assert!(polys.is_empty());
        // Width 1 and height 1.
        let (polys, ..) = one_shot(&["1", "1", "2", "0", "1"], &[0]);
        assert_eq!(polys.len(), 3);
        let (polys, ..) = one_shot(&["1120211"], &[0]);
        assert_eq!(polys.len(), 4);
        let (polys, ..) = one_shot(&["1120211"], &[]);
        assert_eq!(polys.len(), 5);
    }

    #[test]
    fn adjacent_classes_share_an_exact_edge() {
        let (polys, ..) = one_shot(&["1122", "1122"], &[]);
        assert_eq!(polys.len(), 2);
        let one = &polys.iter().find(|(c, _)| *c == 1).expect("class 1").1;
        let two = &polys.iter().find(|(c, _)| *c == 2).expect("class 2").1;
        assert_eq!(
            norm_ring(&GT, one.exterior()),
            vec![(0, 0), (0, 2), (2, 2), (2, 0), (0, 0)]
        );
        assert_eq!(
            norm_ring(&GT, two.exterior()),
            vec![(2, 0), (2, 2), (4, 2), (4, 0), (2, 0)]
        );
        one_shot(&["1223", "1123", "3333", "2211"], &[]);
    }

    #[test]
    fn every_byte_value_is_a_class() {
        // 255 and 0 are ordinary classes unless skipped.
        let data = [255, 255, 0, 128, 255, 0, 0, 128, 255, 255, 255, 128];
        compare(&data, 4, 3, GT, &[]);
        compare(&data, 4, 3, GT, &[0]);
        compare(&data, 4, 3, GT, &[128, 255]);
        let polys = stream(&data, 4, GT, &[0], 1);
        let mut classes: Vec<u8> = polys.iter().map(|(c, _)| *c).collect();
        classes.sort_unstable();
        assert_eq!(classes, vec![128, 255]);
    }

    #[test]
    fn u_shape_merges_in_a_later_row() {
        let rows = ["10001", "10101", "10101", "11111"];
        let (polys, ..) = one_shot(&rows, &[0]);
        assert_eq!(polys.len(), 1);
        assert!(polys[0].1.interiors().is_empty());
        // Upside down: one region splitting into two arms is just one region too.
        let rows = ["11111", "10101", "10101", "10001"];
        let (polys, ..) = one_shot(&rows, &[0]);
        assert_eq!(polys.len(), 1);
        // Many arms merging at once, and merged regions enclosing holes.
        one_shot(
            &["1010101", "1010101", "1111111", "1000001", "1111111"],
            &[0],
        );
        one_shot(&["1010101", "1111111", "1010101", "1111111"], &[0]);
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        let mut rng = Rng(7);
        let (w, h) = (23, 41);
        let data = blob_mask(&mut rng, w, h, 3, 2);
        let one = stream(&data, w, GT, &[0], 1);
        assert_eq!(stream(&data, w, GT, &[0], 7), one);
        assert_eq!(stream(&data, w, GT, &[0], h), one);
        // Rows split across pushes.
        let mut p = StreamPolygonizer::new(w, GT, &[0]);
        let mut odd = Vec::new();
        for chunk in data.chunks(5) {
            p.push_rows(chunk);
            odd.extend(p.take_finished());
        }
        odd.extend(p.finish());
        assert_eq!(odd, one);
        assert!(!one.is_empty());
    }

    #[test]
    fn take_finished_returns_regions_before_the_end() {
        let rows = ["1100", "1100", "0000", "0000", "0022", "0022"];
        let (data, w, _) = grid(&rows);
        let mut p = StreamPolygonizer::new(w, GT, &[0]);
        p.push_rows(&data[..2 * w]);
        assert!(p.take_finished().is_empty(), "the square may still grow");
        p.push_rows(&data[2 * w..3 * w]);
        let early = p.take_finished();
        assert_eq!(early.len(), 1);
        assert_eq!(early[0].0, 1);
        assert!(p.take_finished().is_empty(), "taken once");
        p.push_rows(&data[3 * w..]);
        let rest = p.finish();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0, 2);
        let mut all = early;
        all.extend(rest);
        assert_eq!(all, stream(&data, w, GT, &[0], 6));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let p = StreamPolygonizer::new(0, GT, &[]);
        assert!(p.finish().is_empty());
        let mut p = StreamPolygonizer::new(0, GT, &[]);
        p.push_rows(&[1, 2, 3]);
        assert!(p.finish().is_empty());
        let p = StreamPolygonizer::new(5, GT, &[]);
        assert!(p.finish().is_empty());
        // An incomplete last row is ignored.
        let mut p = StreamPolygonizer::new(3, GT, &[]);
        p.push_rows(&[1, 1, 1, 2]);
        let polys = p.finish();
        assert_eq!(polys.len(), 1);
        assert_eq!(polys[0].0, 1);
        // A degenerate transform still gives rings (of zero area).
        let flat = GeoTransform([0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let mut p = StreamPolygonizer::new(2, flat, &[]);
        p.push_rows(&[1, 2, 2, 2]);
        assert_eq!(p.finish().len(), 2);
    }

    #[test]
    fn other_transforms_keep_exterior_counter_clockwise() {
        let mut rng = Rng(11);
        let (w, h) = (17, 13);
        let data = random_mask(&mut rng, w, h, 3, 0.5);
        for gt in [
            GeoTransform::PIXEL,
            GeoTransform([10.0, 2.0, 0.0, 20.0, 0.0, 2.0]),
            GeoTransform([10.0, -2.0, 0.0, 20.0, 0.0, -2.0]),
            GeoTransform([1000.0, 0.8, 0.6, 2000.0, 0.6, -0.8]),
        ] {
            let polys = stream(&data, w, gt, &[0], 4);
            for (c, p) in &polys {
                check_polygon(&gt, *c, p);
            }
            assert_eq!(areas(&gt, &polys), regions(&data, w, h, &[0]));
        }
    }

    /// splitmix64.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Non-zero (1..classes) with probability `density`, else 0.
    fn random_mask(rng: &mut Rng, w: usize, h: usize, classes: usize, density: f64) -> Vec<u8> {
        (0..w * h)
            .map(|_| {
                if rng.unit() < density {
                    1 + rng.below(classes.max(2) - 1) as u8
                } else {
                    0
                }
            })
            .collect()
    }

    /// Smoothed noise cut into `classes` levels (0..classes): blobs with holes and islands.
    fn blob_mask(rng: &mut Rng, w: usize, h: usize, classes: usize, radius: usize) -> Vec<u8> {
        let mut f: Vec<f64> = (0..w * h).map(|_| rng.unit()).collect();
        for _ in 0..2 {
            let mut g = vec![0.0; w * h];
            for y in 0..h {
                for x in 0..w {
                    let (mut s, mut n) = (0.0, 0.0);
                    for yy in y.saturating_sub(radius)..(y + radius + 1).min(h) {
                        for xx in x.saturating_sub(radius)..(x + radius + 1).min(w) {
                            s += f[yy * w + xx];
                            n += 1.0;
                        }
                    }
                    g[y * w + x] = s / n;
                }
            }
            f = g;
        }
        let mut sorted = f.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let cuts: Vec<f64> = (1..classes)
            .map(|k| sorted[(k * sorted.len() / classes).min(sorted.len() - 1)])
            .collect();
        f.iter()
            .map(|v| cuts.iter().filter(|c| v >= c).count() as u8)
            .collect()
    }

    #[test]
    fn random_masks_match_gdal() {
        let mut rng = Rng(2024);
        let skips: [&[u8]; 4] = [&[], &[0], &[0, 2], &[1]];
        for case in 0..400 {
            let w = 1 + rng.below(if case < 100 { 8 } else { 64 });
            let h = 1 + rng.below(if case < 100 { 8 } else { 64 });
            let classes = 2 + rng.below(3);
            let density = 0.1 + 0.8 * rng.unit();
            let skip = skips[case % skips.len()];
            let data = random_mask(&mut rng, w, h, classes, density);
            compare(&data, w, h, GT, skip);
        }
    }

    #[test]
    fn blob_masks_match_gdal() {
        let mut rng = Rng(99);
        for case in 0..40 {
            let w = 8 + rng.below(56);
            let h = 8 + rng.below(56);
            let classes = 2 + rng.below(3);
            let radius = 1 + rng.below(3);
            let data = blob_mask(&mut rng, w, h, classes, radius);
            let skip: &[u8] = if case % 2 == 0 { &[0] } else { &[] };
            compare(&data, w, h, GT, skip);
        }
    }

    #[test]
    fn large_masks_match_gdal() {
        let mut rng = Rng(5);
        let (w, h) = (300, 200);
        let data = random_mask(&mut rng, w, h, 4, 0.6);
        compare(&data, w, h, GT, &[0]);
        let data = random_mask(&mut rng, w, h, 2, 0.45);
        compare(&data, w, h, GT, &[]);
        let mut data = blob_mask(&mut rng, w, h, 3, 2);
        // Nodata scattered over the blobs.
        for _ in 0..2000 {
            let i = rng.below(w * h);
            data[i] = 255;
        }
        compare(&data, w, h, GT, &[0, 255]);
    }

    /// A synthetic class mask: `objects` filled rectangles, ellipses and rings (annuli) of
    /// class 1 on background 0, at random places.
    fn shapes_mask(rng: &mut Rng, w: usize, h: usize, objects: usize) -> Vec<u8> {
        let mut data = vec![0u8; w * h];
        for k in 0..objects {
            let (cx, cy) = (rng.below(w) as f64, rng.below(h) as f64);
            let (a, b) = (30.0 + 50.0 * rng.unit(), 30.0 + 50.0 * rng.unit());
            let y0 = (cy - b).max(0.0) as usize;
            let y1 = ((cy + b) as usize + 1).min(h);
            for y in y0..y1 {
                let dy = (y as f64 + 0.5 - cy) / b;
                if dy.abs() > 1.0 {
                    continue;
                }
                let half = match k % 3 {
                    0 => a,
                    _ => a * (1.0 - dy * dy).sqrt(),
                };
                let x0 = (cx - half).max(0.0) as usize;
                let x1 = ((cx + half).max(0.0) as usize).min(w);
                let row = &mut data[y * w..(y + 1) * w];
                if k % 3 == 2 {
                    // A ring: the ellipse minus an inner one of 60 % its size.
                    let inner = 0.6 * a * (1.0 - (dy / 0.6).powi(2)).max(0.0).sqrt();
                    let (i0, i1) = (
                        (cx - inner).max(0.0) as usize,
                        ((cx + inner) as usize).min(w),
                    );
                    for (x, px) in row.iter_mut().enumerate().take(x1).skip(x0) {
                        if inner == 0.0 || x < i0 || x >= i1 {
                            *px = 1;
                        }
                    }
                } else {
                    row[x0..x1.max(x0)].fill(1);
                }
            }
        }
        data
    }

    /// Not a test: times the streaming polygonizer against GDAL's polygonize on the same
    /// synthetic 20000 x 20000 mask (`TESSERA_POLY_SIZE` overrides the size). Run with
    /// `cargo test --release --lib polygonize_stream::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed_against_gdal() {
        use std::time::Instant;
        let n: usize = std::env::var("TESSERA_POLY_SIZE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_000);
        let objects = (7500.0 * (n as f64 / 20_000.0).powi(2)).round() as usize;
        let mut rng = Rng(42);
        let data = shapes_mask(&mut rng, n, n, objects);
        let fg = data.iter().filter(|&&v| v != 0).count() as f64 / data.len() as f64;
        println!(
            "mask {n} x {n}, {objects} objects, {:.1} % foreground",
            100.0 * fg
        );
        let gt = GeoTransform([500_000.0, 0.5, 0.0, 4_600_000.0, 0.0, -0.5]);

        let t = Instant::now();
        let mut p = StreamPolygonizer::new(n, gt, &[0]);
        let mut polys = Vec::new();
        for chunk in data.chunks(512 * n) {
            p.push_rows(chunk);
            polys.extend(p.take_finished());
        }
        polys.extend(p.finish());
        let mine_s = t.elapsed().as_secs_f64();
        let vertices: usize = polys
            .iter()
            .map(|(_, p)| {
                p.exterior().0.len() + p.interiors().iter().map(|r| r.0.len()).sum::<usize>()
            })
            .sum();
        let mine_area: f64 = polys.iter().map(|(_, p)| p.unsigned_area()).sum();
        println!(
            "stream: {:.3} s, {} polygons, {} holes, {vertices} vertices, area {mine_area}",
            mine_s,
            polys.len(),
            polys
                .iter()
                .map(|(_, p)| p.interiors().len())
                .sum::<usize>()
        );

        crate::raster::init_gdal();
        let path =
            std::env::temp_dir().join(format!("tessera_poly_speed_{}.tif", std::process::id()));
        {
            let driver = gdal::DriverManager::get_driver_by_name("GTiff").expect("GTiff");
            let mut ds = driver
                .create_with_band_type::<u8, _>(&path, n, n, 1)
                .expect("create tif");
            ds.set_geo_transform(&gt.0).expect("gt");
            let mut band = ds.rasterband(1).expect("band");
            for (i, chunk) in data.chunks(1024 * n).enumerate() {
                let rows = chunk.len() / n;
                let mut buf = gdal::raster::Buffer::new((n, rows), chunk.to_vec());
                band.write((0, (i * 1024) as isize), (n, rows), &mut buf)
                    .expect("write");
            }
        }
        drop(data);

        // The same, streaming rows from the GeoTIFF (read time included).
        let t = Instant::now();
        let ds = gdal::Dataset::open(&path).expect("open");
        let band = ds.rasterband(1).expect("band");
        let mut p = StreamPolygonizer::new(n, gt, &[0]);
        let mut count = 0;
        let mut row0 = 0;
        while row0 < n {
            let rows = 512.min(n - row0);
            let buf = band
                .read_as::<u8>((0, row0 as isize), (n, rows), (n, rows), None)
                .expect("read");
            p.push_rows(buf.data());
            count += p.take_finished().len();
            row0 += rows;
        }
        count += p.finish().len();
        println!(
            "stream from GeoTIFF: {:.3} s, {count} polygons",
            t.elapsed().as_secs_f64()
        );

        let t = Instant::now();
        let theirs =
            crate::output::mosaic::gdal_reference::polygonize_raster(&path, &[0], 0.0, 0.0)
                .expect("gdal");
        let gdal_s = t.elapsed().as_secs_f64();
        let gdal_area: f64 = theirs.iter().map(|(_, g)| g.area()).sum();
        println!(
            "GDAL polygonize_raster: {gdal_s:.3} s, {} polygons, area {gdal_area}",
            theirs.len()
        );
        let _ = std::fs::remove_file(&path);
        assert_eq!(theirs.len(), polys.len());
        assert!((gdal_area - mine_area).abs() < 1e-6 * mine_area.max(1.0));
    }
}
