//! Detections in map coordinates and their merging across the tiles of a scene.
//!
//! A detector sees one tile at a time, so an object in the overlap of two tiles is found twice,
//! and an object across a tile edge is found as two parts, or as a part in one tile and whole
//! in the next. [`merge`] turns the detections of all tiles into one set in two steps:
//!
//! 1. **Duplicates.** Greedy non-maximum suppression ([`MergeMethod::Nms`]), or weighted box
//!    fusion ([`MergeMethod::Wbf`], Solovyev et al. 2021, "Weighted boxes fusion: Ensembling
//!    boxes from different object detection models"). Each detection is compared only with the
//!    detections whose bounding boxes overlap its own, found through an R-tree (`rstar`), so
//!    hundreds of thousands of detections merge in O(n log n).
//! 2. **Parts.** A detection flagged [`MapDetection::cut`] touches a tile edge inside the scene,
//!    so the object may go on in the neighbouring tile. It is joined with an overlapping
//!    detection (of the same class when class-aware) when their intersection covers at least
//!    `cut_ios` of the *smaller* of the two (intersection over smaller, IOS), and the pair
//!    becomes their union box with the higher score, cut only if both parts were; joining
//!    repeats until nothing changes (chains of parts across several tiles included). IoU would fail here: a
//!    small part inside a whole object has a low IoU with it but an IOS of 1. This is the idea
//!    of SAHI's greedy non-maximum merging (GREEDYNMM with the IOS metric, `obss/sahi`), applied
//!    only where a tile edge explains the split.
//!
//! In step 1 a cut detection and a whole one never suppress (or fuse with) each other: the cut
//! part of an object could outscore its whole counterpart and leave only a fragment. Step 2
//! joins them instead, so the object comes out whole and once.
//!
//! **Geometry.** Footprints are parallelograms: the images of pixel boxes under the affine
//! geotransform. Overlap areas are computed exactly: by axis-aligned rectangles when both
//! footprints are axis-aligned in map space (north-up scenes, the common case), otherwise by
//! clipping one convex quadrilateral by the other (Sutherland-Hodgman) and the shoelace
//! formula. This is exact for rotated and sheared scenes too and needs no general polygon
//! boolean operations. Union boxes (step 2) are taken in the pixel frame of the better-ranked
//! detection, i.e. the frame spanned by its footprint's edges: all tiles of a scene share the
//! working grid's orientation, so this is the union box in the grid's pixel space, and for
//! north-up scenes it is the map-space bounding box. WBF averages the four corners, weighted by
//! score, which keeps a parallelogram from the same grid a parallelogram.
//!
//! **Determinism.** Detections are ranked by score (descending), then class, corner
//! coordinates, tile id and cut flag; every greedy choice follows this rank and the output is
//! sorted by it, so the result does not depend on the input order.

use std::cmp::Ordering;

use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{RTree, AABB};
use serde::Serialize;

use crate::models::detection::PixelBox;
use crate::tiling::Tile;

/// One detection in the scene CRS.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MapDetection {
    pub class: usize,
    pub score: f32,
    /// Footprint corners (4, clockwise from top-left in pixel space) in map coordinates; exact
    /// for rotated and sheared geotransforms.
    pub corners: [(f64, f64); 4],
    /// Source tile id (for merged detections: the tile of the best-ranked member).
    pub tile: String,
    /// The detector's phrase for the box, an index into its phrase table (Grounding DINO:
    /// the text tokens above the text threshold); merged detections keep the best-ranked
    /// member's.
    pub phrase: Option<u32>,
    /// True when the pixel box touches an edge of its tile that is not the scene edge, so the
    /// object may continue in the neighbouring tile. False in the output of [`merge`], where
    /// cut parts have been joined.
    pub cut: bool,
}

impl MapDetection {
    /// A detection from a box in `tile`'s pixels. `grid_working_size` is the working grid's
    /// `(width, height)` (`TileGrid::working_width`, `working_height`), used to tell interior
    /// tile edges from scene edges.
    ///
    /// The box must be in tile pixels: when the model input is not the tile size, scale it
    /// first ([`PixelBox::scaled`]). Edges count as touched within half a pixel: `x0 <= 0.5` on
    /// a tile that is not at the scene's left, `x1 >= size - 0.5` on a tile whose right side is
    /// inside the scene, and the same for y.
    pub fn from_pixel_box(b: &PixelBox, tile: &Tile, grid_working_size: (usize, usize)) -> Self {
        let gt = &tile.geotransform;
        let (x0, y0, x1, y1) = (b.x0 as f64, b.y0 as f64, b.x1 as f64, b.y1 as f64);
        let corners = [
            gt.apply(x0, y0),
            gt.apply(x1, y0),
            gt.apply(x1, y1),
            gt.apply(x0, y1),
        ];
        let size = tile.size as f64;
        let (work_w, work_h) = grid_working_size;
        let cut = (x0 <= 0.5 && tile.x > 0)
            || (x1 >= size - 0.5 && tile.x + tile.size < work_w)
            || (y0 <= 0.5 && tile.y > 0)
            || (y1 >= size - 0.5 && tile.y + tile.size < work_h);
        MapDetection {
            class: b.class,
            score: b.score,
            corners,
            tile: tile.id.clone(),
            phrase: b.phrase,
            cut,
        }
    }

    /// Axis-aligned bounds `[min_x, min_y, max_x, max_y]` of the footprint.
    pub fn bbox(&self) -> [f64; 4] {
        bounds(&self.corners)
    }

    /// Footprint area in map units squared.
    pub fn area(&self) -> f64 {
        signed_area(&self.corners).abs()
    }
}

/// How duplicates are resolved in the first step of [`merge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeMethod {
    /// Greedy non-maximum suppression: the best detection of a cluster is kept as it is.
    Nms,
    /// Weighted box fusion: a cluster becomes one detection whose corners are the
    /// score-weighted mean of its members' corners, with the best member's score, class and tile.
    Wbf,
}

impl crate::options::Choice for MergeMethod {
    const NAMES: &'static [(&'static str, Self)] =
        &[("nms", MergeMethod::Nms), ("wbf", MergeMethod::Wbf)];
}
crate::choice_from_str!(MergeMethod);

/// How [`merge`] works.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MergeOptions {
    pub method: MergeMethod,
    /// Intersection over union at or above which two detections are duplicates.
    pub iou: f64,
    /// Intersection over the smaller detection at or above which a cut detection is joined with
    /// its other part.
    pub cut_ios: f64,
    /// Compare only detections of the same class (otherwise any two detections, and a merged
    /// detection takes the best member's class).
    pub class_aware: bool,
}

impl Default for MergeOptions {
    /// NMS at IoU 0.5, joins at IOS 0.5, class-aware.
    fn default() -> Self {
        MergeOptions {
            method: MergeMethod::Nms,
            iou: 0.5,
            cut_ios: 0.5,
            class_aware: true,
        }
    }
}

/// Merge detections from all tiles of a scene: (1) NMS or WBF, comparing detections only with
/// those they overlap (R-tree), where cut and whole detections are kept apart; (2) joining cut
/// detections with their other part (intersection over smaller >= `cut_ios`) into their union
/// box with the higher score, until stable. See the module documentation for the geometry.
///
/// Detections with a non-finite score or corner are dropped. The result is sorted best first
/// (score descending, then class and position) and does not depend on the input order.
pub fn merge(dets: Vec<MapDetection>, opts: &MergeOptions) -> Vec<MapDetection> {
    let mut dets: Vec<MapDetection> = dets
        .into_iter()
        .filter(|d| {
            d.score.is_finite()
                && d.corners
                    .iter()
                    .all(|(x, y)| x.is_finite() && y.is_finite())
        })
        .collect();
    if dets.is_empty() {
        return dets;
    }
    dets.sort_by(rank);
    let mut merger = Merger::new(dets);
    merger.dedupe(opts);
    merger.join_cut(opts);
    let mut joined: Vec<MapDetection> = merger
        .dets
        .into_iter()
        .zip(merger.alive)
        .filter_map(|(d, alive)| alive.then_some(d))
        .collect();
    // (3) A joined union box may now overlap another detection above the threshold: a final
    // NMS pass over the survivors (cut parts have been joined, so all count as whole) keeps
    // the output free of such pairs.
    for d in &mut joined {
        d.cut = false;
    }
    joined.sort_by(rank);
    let mut last = Merger::new(joined);
    last.dedupe(&MergeOptions {
        method: MergeMethod::Nms,
        ..opts.clone()
    });
    let mut out: Vec<MapDetection> = last
        .dets
        .into_iter()
        .zip(last.alive)
        .filter_map(|(d, alive)| alive.then_some(d))
        .collect();
    out.sort_by(rank);
    out
}

/// The total order of detections: score descending, then class, corners, tile, cut.
fn rank(a: &MapDetection, b: &MapDetection) -> Ordering {
    let mut o = b.score.total_cmp(&a.score).then(a.class.cmp(&b.class));
    // A plain loop: this runs millions of times, and iterator chains are slow in debug builds.
    let mut k = 0;
    while o.is_eq() && k < 4 {
        let (p, q) = (a.corners[k], b.corners[k]);
        o = p.0.total_cmp(&q.0).then(p.1.total_cmp(&q.1));
        k += 1;
    }
    o.then_with(|| a.tile.cmp(&b.tile)).then(a.cut.cmp(&b.cut))
}

/// An R-tree entry: a detection's bounding box and its index.
type Entry = GeomWithData<Rectangle<[f64; 2]>, usize>;

fn entry(bbox: [f64; 4], index: usize) -> Entry {
    GeomWithData::new(
        Rectangle::from_corners([bbox[0], bbox[1]], [bbox[2], bbox[3]]),
        index,
    )
}

fn envelope(bbox: [f64; 4]) -> AABB<[f64; 2]> {
    AABB::from_corners([bbox[0], bbox[1]], [bbox[2], bbox[3]])
}

/// The merge state. Detections keep their index (their rank position after the initial sort)
/// throughout; merged-away ones are marked dead. The R-tree holds the current bounding box of
/// every live detection (and possibly stale entries of dead ones, which queries skip).
struct Merger {
    dets: Vec<MapDetection>,
    boxes: Vec<[f64; 4]>,
    alive: Vec<bool>,
    tree: RTree<Entry>,
}

impl Merger {
    /// `dets` must be sorted by [`rank`].
    fn new(dets: Vec<MapDetection>) -> Merger {
        let boxes: Vec<[f64; 4]> = dets.iter().map(MapDetection::bbox).collect();
        let tree = RTree::bulk_load(
            boxes
                .iter()
                .enumerate()
                .map(|(i, b)| entry(*b, i))
                .collect(),
        );
        Merger {
            alive: vec![true; dets.len()],
            dets,
            boxes,
            tree,
        }
    }

    /// Replace detection `i` (alive), keeping the R-tree in step.
    fn replace(&mut self, i: usize, d: MapDetection) {
        let bbox = d.bbox();
        if bbox != self.boxes[i] {
            self.tree.remove(&entry(self.boxes[i], i));
            self.boxes[i] = bbox;
            self.tree.insert(entry(bbox, i));
        }
        self.dets[i] = d;
    }

    /// Mark detection `j` merged away and drop it from the R-tree.
    fn kill(&mut self, j: usize) {
        self.alive[j] = false;
        self.tree.remove(&entry(self.boxes[j], j));
    }

    /// For each detection, the worse-ranked detections whose bounding boxes intersect its own,
    /// in rank order (one traversal of the tree against itself rather than one query per
    /// detection), as offsets into one flat list.
    fn overlaps(&self) -> (Vec<usize>, Vec<usize>) {
        let n = self.dets.len();
        let mut pairs: Vec<(usize, usize)> = self
            .tree
            .intersection_candidates_with_other_tree(&self.tree)
            .map(|(a, b)| (a.data, b.data))
            .filter(|(i, j)| i < j)
            .collect();
        pairs.sort_unstable();
        let mut start = vec![0usize; n + 1];
        for &(i, _) in &pairs {
            start[i + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        (start, pairs.into_iter().map(|(_, j)| j).collect())
    }

    /// Step 1. In rank order, each detection not yet taken leads a cluster of the worse-ranked
    /// detections not yet taken that it overlaps with IoU >= `opts.iou` (same cut flag, same
    /// class when class-aware). NMS keeps the leader; WBF replaces it by the score-weighted mean
    /// footprint of the cluster (plain mean when every score is zero), keeping the leader's
    /// score, class, tile and cut flag. Clusters are formed against their leader rather than
    /// against the running fused box of the original WBF, so each detection is compared once.
    fn dedupe(&mut self, opts: &MergeOptions) {
        let (start, lower) = self.overlaps();
        let n = self.dets.len();
        let mut taken = vec![false; n];
        for i in 0..n {
            if taken[i] {
                continue;
            }
            taken[i] = true;
            let leader = &self.dets[i];
            let members: Vec<usize> = lower[start[i]..start[i + 1]]
                .iter()
                .copied()
                .filter(|&j| {
                    let d = &self.dets[j];
                    !taken[j]
                        && d.cut == leader.cut
                        && (!opts.class_aware || d.class == leader.class)
                        && iou(leader, d) >= opts.iou
                })
                .collect();
            if members.is_empty() {
                continue;
            }
            for &j in &members {
                taken[j] = true;
                self.alive[j] = false;
            }
            if opts.method == MergeMethod::Wbf {
                let fused = self.fused(i, &members);
                self.replace(i, fused);
            }
        }
        // Drop the suppressed detections from the tree for step 2: one rebuild when many went,
        // removals otherwise.
        let dead: Vec<usize> = (0..n).filter(|&j| !self.alive[j]).collect();
        if dead.len() > n / 8 {
            self.tree = RTree::bulk_load(
                (0..n)
                    .filter(|&i| self.alive[i])
                    .map(|i| entry(self.boxes[i], i))
                    .collect(),
            );
        } else {
            for j in dead {
                self.tree.remove(&entry(self.boxes[j], j));
            }
        }
    }

    /// The WBF fusion of leader `i` with `members`.
    fn fused(&self, i: usize, members: &[usize]) -> MapDetection {
        let all = || {
            std::iter::once(i)
                .chain(members.iter().copied())
                .map(|k| &self.dets[k])
        };
        let total: f64 = all().map(|d| d.score.max(0.0) as f64).sum();
        let count = (members.len() + 1) as f64;
        let mut corners = [(0.0, 0.0); 4];
        for d in all() {
            let w = if total > 0.0 {
                d.score.max(0.0) as f64 / total
            } else {
                1.0 / count
            };
            for (c, p) in corners.iter_mut().zip(&d.corners) {
                c.0 += w * p.0;
                c.1 += w * p.1;
            }
        }
        MapDetection {
            corners,
            ..self.dets[i].clone()
        }
    }

    /// Step 2: join cut detections with their other parts until nothing changes. Each live cut
    /// detection, in rank order, repeatedly absorbs the live detections overlapping it with
    /// intersection over smaller >= `cut_ios` (same class when class-aware), best-ranked first;
    /// it grows as it absorbs and is looked up again with its new extent. A pair of whole
    /// detections is never joined (step 1 dealt with those), so only cut detections need to
    /// look: any joinable pair has a cut member that finds the other.
    fn join_cut(&mut self, opts: &MergeOptions) {
        let n = self.dets.len();
        loop {
            let mut changed = false;
            for i in 0..n {
                if !(self.alive[i] && self.dets[i].cut) {
                    continue;
                }
                loop {
                    let mut candidates: Vec<usize> = self
                        .tree
                        .locate_in_envelope_intersecting(&envelope(self.boxes[i]))
                        .map(|e| e.data)
                        .filter(|&j| j != i && self.alive[j])
                        .collect();
                    // Indices are rank positions: best-ranked first.
                    candidates.sort_unstable();
                    let mut grew = false;
                    for j in candidates {
                        let (a, b) = (&self.dets[i], &self.dets[j]);
                        let joinable = (a.cut || b.cut)
                            && (!opts.class_aware || a.class == b.class)
                            && ios(a, b) >= opts.cut_ios;
                        if joinable {
                            let joined = join(a, b, i < j);
                            self.kill(j);
                            self.replace(i, joined);
                            grew = true;
                            changed = true;
                        }
                    }
                    if !grew {
                        break;
                    }
                }
            }
            // A detection changes only while it is processed, and then it has looked at every
            // other live one, so one pass leaves no joinable pair; the loop makes that explicit
            // (the second pass finds nothing).
            if !changed {
                break;
            }
        }
    }
}

/// The union of `a` and `b` in the pixel frame of the better-ranked one (`a` when
/// `a_first`), with the higher score; class, tile and phrase from the better-ranked; cut only when both
/// were cut.
fn join(a: &MapDetection, b: &MapDetection, a_first: bool) -> MapDetection {
    let (first, second) = if a_first { (a, b) } else { (b, a) };
    MapDetection {
        class: first.class,
        score: a.score.max(b.score),
        corners: union_in_frame(&first.corners, &second.corners),
        tile: first.tile.clone(),
        phrase: first.phrase,
        cut: a.cut && b.cut,
    }
}

/// The smallest box containing `a` and `b` whose sides are parallel to `a`'s edges (the pixel
/// frame of `a`), corners in `a`'s order. Falls back to the map-space bounding box when `a` is
/// degenerate.
fn union_in_frame(a: &[(f64, f64); 4], b: &[(f64, f64); 4]) -> [(f64, f64); 4] {
    let o = a[0];
    let u = (a[1].0 - o.0, a[1].1 - o.1);
    let v = (a[3].0 - o.0, a[3].1 - o.1);
    let det = u.0 * v.1 - u.1 * v.0;
    if det == 0.0 || !det.is_finite() {
        let mut all = [(0.0, 0.0); 4];
        let bb = bounds(a);
        let cb = bounds(b);
        let (x0, y0, x1, y1) = (
            bb[0].min(cb[0]),
            bb[1].min(cb[1]),
            bb[2].max(cb[2]),
            bb[3].max(cb[3]),
        );
        all[0] = (x0, y1);
        all[1] = (x1, y1);
        all[2] = (x1, y0);
        all[3] = (x0, y0);
        return all;
    }
    // Frame coordinates (s, t) of p: p = o + s u + t v; a spans [0, 1] x [0, 1].
    let to_frame = |p: &(f64, f64)| {
        let (dx, dy) = (p.0 - o.0, p.1 - o.1);
        ((dx * v.1 - dy * v.0) / det, (u.0 * dy - u.1 * dx) / det)
    };
    let (mut s0, mut t0, mut s1, mut t1) = (0.0f64, 0.0f64, 1.0f64, 1.0f64);
    for p in b {
        let (s, t) = to_frame(p);
        s0 = s0.min(s);
        t0 = t0.min(t);
        s1 = s1.max(s);
        t1 = t1.max(t);
    }
    // Points of a's own corners map to exactly 0 or 1 up to rounding; keep a's corners where
    // the union does not extend past them so north-up results stay exactly axis-aligned.
    let at = |s: f64, t: f64| (o.0 + s * u.0 + t * v.0, o.1 + s * u.1 + t * v.1);
    if s0 >= 0.0 && t0 >= 0.0 && s1 <= 1.0 && t1 <= 1.0 {
        return *a;
    }
    let mut out = [at(s0, t0), at(s1, t0), at(s1, t1), at(s0, t1)];
    if u.1 == 0.0 && v.0 == 0.0 {
        // North-up: snap to the exact bounding box so the edges are exactly axis-aligned.
        let bb = bounds(a);
        let cb = bounds(b);
        let (x0, x1) = (bb[0].min(cb[0]), bb[2].max(cb[2]));
        let (y0, y1) = (bb[1].min(cb[1]), bb[3].max(cb[3]));
        let (left, right) = if u.0 >= 0.0 { (x0, x1) } else { (x1, x0) };
        let (top, bottom) = if v.1 >= 0.0 { (y0, y1) } else { (y1, y0) };
        out = [(left, top), (right, top), (right, bottom), (left, bottom)];
    }
    out
}

/// `[min_x, min_y, max_x, max_y]` of points.
fn bounds(points: &[(f64, f64)]) -> [f64; 4] {
    let mut b = [
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    ];
    for &(x, y) in points {
        b[0] = b[0].min(x);
        b[1] = b[1].min(y);
        b[2] = b[2].max(x);
        b[3] = b[3].max(y);
    }
    b
}

/// Shoelace signed area (positive counter-clockwise in a y-up frame).
fn signed_area(points: &[(f64, f64)]) -> f64 {
    let n = points.len();
    let mut twice = 0.0;
    for k in 0..n {
        let (x0, y0) = points[k];
        let (x1, y1) = points[(k + 1) % n];
        twice += x0 * y1 - x1 * y0;
    }
    twice / 2.0
}

/// True when every edge of the footprint is horizontal or vertical in map space.
fn axis_aligned(c: &[(f64, f64); 4]) -> bool {
    (0..4).all(|k| {
        let (p, q) = (c[k], c[(k + 1) % 4]);
        p.0 == q.0 || p.1 == q.1
    })
}

/// Area of the intersection of two footprints (convex quadrilaterals).
fn intersection_area(a: &MapDetection, b: &MapDetection) -> f64 {
    if axis_aligned(&a.corners) && axis_aligned(&b.corners) {
        let (p, q) = (a.bbox(), b.bbox());
        let w = p[2].min(q[2]) - p[0].max(q[0]);
        let h = p[3].min(q[3]) - p[1].max(q[1]);
        return if w > 0.0 && h > 0.0 { w * h } else { 0.0 };
    }
    signed_area(&clip_convex(&a.corners, &b.corners)).abs()
}

/// Sutherland-Hodgman: the part of convex `subject` inside convex `clip`.
fn clip_convex(subject: &[(f64, f64); 4], clip: &[(f64, f64); 4]) -> Vec<(f64, f64)> {
    // Orient the clip polygon counter-clockwise so "inside" is left of each edge.
    let mut clip = *clip;
    if signed_area(&clip) < 0.0 {
        clip.reverse();
    }
    let mut poly: Vec<(f64, f64)> = subject.to_vec();
    for k in 0..4 {
        if poly.is_empty() {
            break;
        }
        let (e0, e1) = (clip[k], clip[(k + 1) % 4]);
        let side = |p: (f64, f64)| (e1.0 - e0.0) * (p.1 - e0.1) - (e1.1 - e0.1) * (p.0 - e0.0);
        let input = std::mem::take(&mut poly);
        for m in 0..input.len() {
            let (p, q) = (input[m], input[(m + 1) % input.len()]);
            let (sp, sq) = (side(p), side(q));
            if sp >= 0.0 {
                poly.push(p);
            }
            if (sp >= 0.0) != (sq >= 0.0) {
                let t = sp / (sp - sq);
                poly.push((p.0 + t * (q.0 - p.0), p.1 + t * (q.1 - p.1)));
            }
        }
    }
    poly
}

/// Intersection over union of two footprints (0 when both are empty).
fn iou(a: &MapDetection, b: &MapDetection) -> f64 {
    let inter = intersection_area(a, b);
    let union = a.area() + b.area() - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Intersection over the smaller footprint (0 when it is empty).
fn ios(a: &MapDetection, b: &MapDetection) -> f64 {
    let smaller = a.area().min(b.area());
    if smaller > 0.0 {
        intersection_area(a, b) / smaller
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raster::GeoTransform;

    /// A north-up detection from pixel-like map coordinates (x right, y down as given).
    fn det(class: usize, score: f32, x0: f64, y0: f64, x1: f64, y1: f64) -> MapDetection {
        MapDetection {
            class,
            score,
            corners: [(x0, y0), (x1, y0), (x1, y1), (x0, y1)],
            tile: "t".into(),
            phrase: None,
            cut: false,
        }
    }

    fn cut(mut d: MapDetection) -> MapDetection {
        d.cut = true;
        d
    }

    fn tile(id: &str, x: usize, y: usize, size: usize, gt: GeoTransform) -> Tile {
        Tile {
            index: 0,
            row: 0,
            col: 0,
            id: id.into(),
            x,
            y,
            size,
            inside_w: size,
            inside_h: size,
            geotransform: gt.sub_grid(x as f64, y as f64, 1.0, 1.0),
        }
    }

    fn pbox(class: usize, score: f32, x0: f32, y0: f32, x1: f32, y1: f32) -> PixelBox {
        PixelBox {
            class,
            score,
            x0,
            y0,
            x1,
            y1,
            phrase: None,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    /// A small deterministic generator (xorshift64*), so tests need no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                let j = (self.next() % (i as u64 + 1)) as usize;
                v.swap(i, j);
            }
        }
    }

    #[test]
    fn from_pixel_box_north_up_and_cut_flags() {
        let gt = GeoTransform([500_000.0, 10.0, 0.0, 4_600_000.0, 0.0, -10.0]);
        let working = (250, 250);
        // Tile at (96, 0) of size 128: its left edge is interior, top is the scene edge, its
        // right side (224) is inside the 250-pixel scene.
        let t = tile("r0000c0001", 96, 0, 128, gt);
        let d = MapDetection::from_pixel_box(&pbox(1, 0.8, 10.0, 0.0, 20.0, 5.0), &t, working);
        assert_eq!(d.corners[0], (500_000.0 + 1060.0, 4_600_000.0));
        assert_eq!(d.corners[2], (500_000.0 + 1160.0, 4_600_000.0 - 50.0));
        assert!(!d.cut, "touches only the scene's top edge");
        assert_eq!(d.bbox(), [501_060.0, 4_599_950.0, 501_160.0, 4_600_000.0]);
        assert!(close(d.area(), 100.0 * 50.0));
        assert_eq!(d.tile, "r0000c0001");
        let left = MapDetection::from_pixel_box(&pbox(1, 0.8, 0.4, 10.0, 20.0, 20.0), &t, working);
        assert!(left.cut);
        let right =
            MapDetection::from_pixel_box(&pbox(1, 0.8, 100.0, 10.0, 127.6, 20.0), &t, working);
        assert!(right.cut);
        let bottom =
            MapDetection::from_pixel_box(&pbox(1, 0.8, 10.0, 100.0, 20.0, 128.0), &t, working);
        assert!(bottom.cut);
        // The last column ends at the scene edge: touching its right side is not a cut.
        let last = tile("r0000c0002", 122, 0, 128, gt);
        let d =
            MapDetection::from_pixel_box(&pbox(1, 0.8, 100.0, 10.0, 128.0, 20.0), &last, working);
        assert!(!d.cut);
        // The first tile: left and top are scene edges.
        let first = tile("r0000c0000", 0, 0, 128, gt);
        let d = MapDetection::from_pixel_box(&pbox(1, 0.8, 0.0, 0.0, 20.0, 20.0), &first, working);
        assert!(!d.cut);
    }

    #[test]
    fn from_pixel_box_rotated_is_exact() {
        // 30 degree rotation, 2 m pixels.
        let (s, c) = (30f64.to_radians().sin(), 30f64.to_radians().cos());
        let gt = GeoTransform([1000.0, 2.0 * c, 2.0 * s, 2000.0, 2.0 * s, -2.0 * c]);
        let t = tile("r0001c0001", 64, 64, 64, gt);
        let d = MapDetection::from_pixel_box(&pbox(0, 0.5, 8.0, 4.0, 18.0, 24.0), &t, (256, 256));
        let expect = [
            gt.apply(72.0, 68.0),
            gt.apply(82.0, 68.0),
            gt.apply(82.0, 88.0),
            gt.apply(72.0, 88.0),
        ];
        for (got, e) in d.corners.iter().zip(expect) {
            assert!(close(got.0, e.0) && close(got.1, e.1), "{got:?} != {e:?}");
        }
        // Area is preserved by a rotation: 10 x 20 pixels of 2 m.
        assert!(close(d.area(), 10.0 * 20.0 * 4.0));
    }

    #[test]
    fn merged_detections_keep_the_best_ranked_phrase() {
        // NMS: the duplicate's phrase goes with it.
        let mut a = det(0, 0.9, 0.0, 0.0, 10.0, 10.0);
        a.phrase = Some(3);
        let mut b = det(0, 0.8, 0.5, 0.2, 10.5, 10.2);
        b.phrase = Some(7);
        let out = merge(vec![b.clone(), a.clone()], &MergeOptions::default());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].phrase, Some(3));
        // WBF fuses the corners and keeps the leader's phrase.
        let wbf = MergeOptions {
            method: MergeMethod::Wbf,
            ..MergeOptions::default()
        };
        let out = merge(vec![b.clone(), a.clone()], &wbf);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].phrase, Some(3));
        // A seam join takes the better-ranked part's phrase.
        let mut left = cut(det(0, 0.6, 0.0, 0.0, 10.0, 10.0));
        left.phrase = Some(1);
        let mut right = cut(det(0, 0.7, 4.0, 0.0, 20.0, 10.0));
        right.phrase = Some(2);
        let out = merge(vec![left, right], &MergeOptions::default());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].phrase, Some(2));
    }

    #[test]
    fn nms_suppresses_duplicates_from_overlapping_tiles() {
        let mut a = det(0, 0.9, 0.0, 0.0, 10.0, 10.0);
        a.tile = "r0000c0000".into();
        let mut b = det(0, 0.8, 0.5, 0.2, 10.5, 10.2);
        b.tile = "r0000c0001".into();
        let far = det(0, 0.7, 50.0, 50.0, 60.0, 60.0);
        let out = merge(vec![b, far.clone(), a.clone()], &MergeOptions::default());
        assert_eq!(out, vec![a, far]);
    }

    #[test]
    fn classes_kept_apart_when_class_aware() {
        let a = det(0, 0.9, 0.0, 0.0, 10.0, 10.0);
        let b = det(1, 0.8, 0.0, 0.0, 10.0, 10.0);
        let out = merge(vec![a.clone(), b.clone()], &MergeOptions::default());
        assert_eq!(out, vec![a.clone(), b.clone()]);
        let agnostic = MergeOptions {
            class_aware: false,
            ..MergeOptions::default()
        };
        assert_eq!(merge(vec![b, a.clone()], &agnostic), vec![a]);
    }

    #[test]
    fn wbf_averages_corners_by_score() {
        let a = det(0, 0.75, 0.0, 0.0, 10.0, 10.0);
        let b = det(0, 0.25, 2.0, 1.0, 12.0, 11.0);
        let opts = MergeOptions {
            method: MergeMethod::Wbf,
            ..MergeOptions::default()
        };
        let out = merge(vec![b, a], &opts);
        assert_eq!(out.len(), 1);
        let f = &out[0];
        // 0.75 * a + 0.25 * b.
        assert_eq!(
            f.corners,
            [(0.5, 0.25), (10.5, 0.25), (10.5, 10.25), (0.5, 10.25)]
        );
        assert_eq!(f.score, 0.75);
        assert_eq!(f.class, 0);
        // Below the IoU threshold nothing is fused.
        let c = det(0, 0.5, 8.0, 8.0, 18.0, 18.0);
        let out = merge(vec![c.clone(), det(0, 0.75, 0.0, 0.0, 10.0, 10.0)], &opts);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], c);
    }

    #[test]
    fn cut_box_joined_with_full_counterpart_once() {
        // Scene 200 x 100 pixels, north-up 1 m pixels (y up in map space); two tiles of 128
        // overlapping by 56: tile A at x 0, tile B at x 72. An object spans pixels x 110..150,
        // y 40..60: A sees its part 110..128 (touching A's interior right edge, cut), B sees it
        // whole at 38..78 in B's pixels.
        let gt = GeoTransform([0.0, 1.0, 0.0, 100.0, 0.0, -1.0]);
        let working = (200, 100);
        let mut ta = tile("r0000c0000", 0, 0, 128, gt);
        ta.inside_h = 100;
        let mut tb = tile("r0000c0001", 72, 0, 128, gt);
        tb.inside_h = 100;
        tb.inside_w = 128;
        // The part scores higher than the whole: it must not suppress it.
        let part =
            MapDetection::from_pixel_box(&pbox(3, 0.9, 110.0, 40.0, 128.0, 60.0), &ta, working);
        let whole =
            MapDetection::from_pixel_box(&pbox(3, 0.7, 38.0, 40.0, 78.0, 60.0), &tb, working);
        assert!(part.cut);
        assert!(!whole.cut);
        for method in [MergeMethod::Nms, MergeMethod::Wbf] {
            let opts = MergeOptions {
                method,
                ..MergeOptions::default()
            };
            let out = merge(vec![whole.clone(), part.clone()], &opts);
            assert_eq!(out.len(), 1, "{method:?}: {out:?}");
            let d = &out[0];
            assert_eq!(d.bbox(), [110.0, 40.0, 150.0, 60.0]);
            assert_eq!(d.score, 0.9);
            assert_eq!(d.class, 3);
            assert!(!d.cut);
            // Corners keep the pixel-space order: top-left is (min x, max y) in a y-up CRS.
            assert_eq!(d.corners[0], (110.0, 60.0));
            assert_eq!(d.corners[2], (150.0, 40.0));
        }
        // Two parts cut on either side of an interior edge join into the whole.
        // (tiles overlapping by 8: intersection 8 x 5 over the smaller part 12 x 5).
        let left = cut(det(0, 0.6, 0.0, 0.0, 12.0, 5.0));
        let right = cut(det(0, 0.8, 4.0, 0.0, 20.0, 5.0));
        let out = merge(vec![left, right], &MergeOptions::default());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bbox(), [0.0, 0.0, 20.0, 5.0]);
        assert_eq!(out[0].score, 0.8);
        // Once joined, output detections count as whole objects.
        assert!(!out[0].cut);
        // A cut part of another class, or one barely overlapping, is left alone.
        let other = cut(det(1, 0.6, 0.0, 0.0, 10.0, 5.0));
        let edge = cut(det(0, 0.6, 19.0, 0.0, 30.0, 5.0));
        let whole = det(0, 0.8, 0.0, 0.0, 20.0, 5.0);
        let out = merge(vec![other, edge, whole], &MergeOptions::default());
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn chains_of_parts_join_until_stable() {
        // An object across three tiles: parts overlap only their neighbours.
        let a = cut(det(0, 0.5, 0.0, 0.0, 12.0, 4.0));
        let b = cut(det(0, 0.9, 10.0, 0.0, 22.0, 4.0));
        let c = cut(det(0, 0.7, 20.0, 0.0, 32.0, 4.0));
        let opts = MergeOptions {
            cut_ios: 0.1,
            ..MergeOptions::default()
        };
        let out = merge(vec![c, a, b], &opts);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bbox(), [0.0, 0.0, 32.0, 4.0]);
        assert_eq!(out[0].score, 0.9);
    }

    #[test]
    fn rotated_footprints_use_exact_overlap() {
        // Two 10 x 10 pixel boxes in a 45 degree rotated grid, offset by 5 pixels along the
        // grid's x: IoU is exactly 50 / 150 in any orientation, while their map-space bounding
        // boxes overlap much more.
        let (s, c) = (45f64.to_radians().sin(), 45f64.to_radians().cos());
        let gt = GeoTransform([0.0, c, s, 0.0, s, -c]);
        let t = tile("r0000c0000", 0, 0, 64, gt);
        let a = MapDetection::from_pixel_box(&pbox(0, 0.9, 10.0, 10.0, 20.0, 20.0), &t, (64, 64));
        let b = MapDetection::from_pixel_box(&pbox(0, 0.8, 15.0, 10.0, 25.0, 20.0), &t, (64, 64));
        assert!(!axis_aligned(&a.corners));
        assert!((iou(&a, &b) - 1.0 / 3.0).abs() < 1e-9, "{}", iou(&a, &b));
        let strict = MergeOptions {
            iou: 0.4,
            ..MergeOptions::default()
        };
        assert_eq!(merge(vec![a.clone(), b.clone()], &strict).len(), 2);
        let loose = MergeOptions {
            iou: 0.3,
            ..MergeOptions::default()
        };
        assert_eq!(merge(vec![a.clone(), b.clone()], &loose), vec![a.clone()]);
        // Joining in the grid's frame gives the 15 x 10 pixel union, not a map-space box.
        let joined = join(&cut(a.clone()), &b, true);
        let expect = [
            t.geotransform.apply(10.0, 10.0),
            t.geotransform.apply(25.0, 10.0),
            t.geotransform.apply(25.0, 20.0),
            t.geotransform.apply(10.0, 20.0),
        ];
        for (got, e) in joined.corners.iter().zip(expect) {
            assert!((got.0 - e.0).abs() < 1e-9 && (got.1 - e.1).abs() < 1e-9);
        }
        assert!((joined.area() - 150.0).abs() < 1e-9);
    }

    #[test]
    fn degenerate_and_non_finite_detections() {
        let empty = det(0, 0.9, 5.0, 5.0, 5.0, 5.0);
        let nan = det(0, f32::NAN, 0.0, 0.0, 1.0, 1.0);
        let inf = det(0, 0.5, 0.0, 0.0, f64::INFINITY, 1.0);
        let ok = det(0, 0.4, 0.0, 0.0, 10.0, 10.0);
        let out = merge(
            vec![empty.clone(), nan, inf, ok.clone()],
            &MergeOptions::default(),
        );
        assert_eq!(out, vec![empty, ok]);
    }

    /// `n` boxes of 2 to 22 units with random classes (3), scores and cut flags (1 in 10) in a
    /// square of `extent` units.
    fn random_dets(n: usize, extent: f64, seed: u64) -> Vec<MapDetection> {
        let mut rng = Rng(seed);
        (0..n)
            .map(|i| {
                let (x, y) = (rng.unit() * extent, rng.unit() * extent);
                let (w, h) = (2.0 + rng.unit() * 20.0, 2.0 + rng.unit() * 20.0);
                MapDetection {
                    class: (rng.next() % 3) as usize,
                    score: (rng.unit() as f32 * 100.0).round() / 100.0,
                    corners: [(x, y), (x + w, y), (x + w, y + h), (x, y + h)],
                    tile: format!("r{:04}c0000", i % 7),
                    phrase: None,
                    cut: rng.next() % 10 == 0,
                }
            })
            .collect()
    }

    #[test]
    fn many_boxes_merge_quickly() {
        // 200 000 boxes, 1 in 10 cut: about 2 s in a debug build on an idle core. No timing
        // assertion; a quadratic merge would not finish.
        let dets = random_dets(200_000, 20_000.0, 0x5eed);
        let n = dets.len();
        let out = merge(dets, &MergeOptions::default());
        assert!(!out.is_empty() && out.len() < n);
    }

    #[test]
    fn input_order_does_not_matter() {
        // Dense: about one box per 120 square units, so duplicates, fusions and joins abound.
        let mut dets = random_dets(3_000, 600.0, 42);
        // Exact duplicates and equal scores too.
        dets.extend(dets[..50].to_vec());
        let mut rng = Rng(7);
        for method in [MergeMethod::Nms, MergeMethod::Wbf] {
            for class_aware in [true, false] {
                let opts = MergeOptions {
                    method,
                    class_aware,
                    ..MergeOptions::default()
                };
                let reference = merge(dets.clone(), &opts);
                assert!(reference.len() + 100 < dets.len(), "{}", reference.len());
                let no_joins = MergeOptions {
                    cut_ios: 2.0,
                    ..opts.clone()
                };
                assert!(merge(dets.clone(), &no_joins).len() > reference.len());
                for _ in 0..3 {
                    let mut shuffled = dets.clone();
                    rng.shuffle(&mut shuffled);
                    assert_eq!(
                        merge(shuffled, &opts),
                        reference,
                        "{method:?} {class_aware}"
                    );
                }
            }
        }
    }
}
