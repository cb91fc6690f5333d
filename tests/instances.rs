//! `tessera segment --refiner`: instance segmentation on oracle scenes. Shapes are painted at
//! known pixels, a hand-built refiner in the SAM package layout (sam-box-threshold: the mask
//! of a box is the red pixels inside it) segments exactly, and the boxes come from a box
//! file (the shapes' bounding boxes, in the scene's CRS or in WGS 84) or from the det-grid
//! oracle detector. For several tile sizes and overlaps, with shapes across tile corners,
//! seams and overlaps, every shape must be exactly one instance and one polygon, with an IoU
//! of at least 0.99 against the painted pixels, no id shared, and the same ids on a rerun. Then bad
//! inputs: one line, nothing written.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, inspect_outputs, run};
use gdal::vector::LayerAccess;

const ORIGIN: (f64, f64) = (500_000.0, 4_600_000.0);
const W: usize = 330;
const H: usize = 290;

fn oracle(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models/oracles")
        .join(name)
}

/// The oracle refiner with input size `size` (its graphs take any size; the tiles must be
/// the input size for the SAM resizing to be the identity).
fn refiner(dir: &Path, size: usize) -> PathBuf {
    let to = dir.join(format!("sam-{size}"));
    if !to.exists() {
        copy_dir(&oracle("sam-box-threshold"), &to);
        let toml = std::fs::read_to_string(to.join("model.toml")).expect("toml");
        let toml = toml.replace("size = 256", &format!("size = {size}"));
        assert!(toml.contains(&format!("size = {size}\n")));
        std::fs::write(to.join("model.toml"), toml).expect("write");
    }
    to
}

/// Write a 1 m RGB scene in EPSG:32633 from a per-pixel colour function.
fn paint(path: &Path, w: usize, h: usize, color: impl Fn(usize, usize) -> [u8; 3]) {
    let driver = gdal::DriverManager::get_driver_by_name("GTiff").expect("driver");
    let mut ds = driver
        .create_with_band_type::<u8, _>(path, w, h, 3)
        .expect("create");
    ds.set_geo_transform(&[ORIGIN.0, 1.0, 0.0, ORIGIN.1, 0.0, -1.0])
        .expect("gt");
    ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32633).expect("srs"))
        .expect("srs");
    for b in 0..3 {
        let plane: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| color(x, y)[b])
            .collect();
        ds.rasterband(b + 1)
            .expect("band")
            .write(
                (0, 0),
                (w, h),
                &mut gdal::raster::Buffer::new((w, h), plane),
            )
            .expect("write");
    }
    ds.close().expect("close");
}

/// A painted shape: a disc (cx, cy, r) or a rectangle (x0, y0, x1, y1), in pixels.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Disc(f64, f64, f64),
    Rect(usize, usize, usize, usize),
}

impl Shape {
    fn contains(&self, x: usize, y: usize) -> bool {
        match *self {
            Shape::Disc(cx, cy, r) => {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                dx * dx + dy * dy < r * r
            }
            Shape::Rect(x0, y0, x1, y1) => x >= x0 && x < x1 && y >= y0 && y < y1,
        }
    }

    /// Pixel bounds `x0, y0, x1, y1` (pixel corners).
    fn bounds(&self) -> (f64, f64, f64, f64) {
        match *self {
            Shape::Disc(cx, cy, r) => (
                (cx - r).floor(),
                (cy - r).floor(),
                (cx + r).ceil(),
                (cy + r).ceil(),
            ),
            Shape::Rect(x0, y0, x1, y1) => (x0 as f64, y0 as f64, x1 as f64, y1 as f64),
        }
    }
}

/// Shapes across the core cuts (the middles of the overlaps) and tile edges of the grids
/// tested below, apart from each other by more than the boxes' 3-pixel margin.
fn shapes() -> Vec<Shape> {
    vec![
        Shape::Disc(84.0, 84.0, 14.0),   // a corner of 96/24 (cuts at 84)
        Shape::Disc(112.0, 210.0, 22.0), // 128/32 cuts at 112 and 208
        Shape::Rect(200, 130, 236, 160), // 96/24 cut 228, 128/32 cut 208, 100/37 cut 207
        Shape::Disc(270.0, 60.0, 18.0),  // 100/37 cut 270
        Shape::Rect(20, 140, 60, 150),   // inside one tile of most grids
        Shape::Disc(300.0, 250.0, 25.0), // the scene's corner, padded tiles
        Shape::Rect(150, 20, 215, 48),   // 64/0 edge at 192, 128/32 cut at 208
    ]
}

fn red_scene(dir: &Path, shapes: &[Shape]) -> Vec<Option<usize>> {
    let owner = |x: usize, y: usize| shapes.iter().position(|s| s.contains(x, y));
    paint(&dir.join("scene.tif"), W, H, |x, y| match owner(x, y) {
        Some(_) => [220, 40, 40],
        None => [30, 120, 60],
    });
    (0..H)
        .flat_map(|y| (0..W).map(move |x| (x, y)))
        .map(|(x, y)| owner(x, y))
        .collect()
}

/// A GeoJSON layer of the shapes' bounding boxes grown by `margin` pixels, in EPSG:32633
/// or (with `wgs84`) reprojected to longitude/latitude; labels alternate.
fn box_file(path: &Path, shapes: &[Shape], margin: f64, shift: (f64, f64), wgs84: bool) {
    use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
    let mut utm = SpatialRef::from_epsg(32633).expect("utm");
    utm.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let mut ll = SpatialRef::from_epsg(4326).expect("wgs84");
    ll.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let t = CoordTransform::new(&utm, &ll).expect("transform");
    let mut features = Vec::new();
    for (k, s) in shapes.iter().enumerate() {
        let (x0, y0, x1, y1) = s.bounds();
        let (x0, x1) = (x0 - margin + shift.0, x1 + margin + shift.0);
        let (y0, y1) = (y0 - margin + shift.1, y1 + margin + shift.1);
        let mut ring: Vec<(f64, f64)> = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
            .iter()
            .map(|&(px, py)| (ORIGIN.0 + px, ORIGIN.1 - py))
            .collect();
        if wgs84 {
            for p in &mut ring {
                let (mut xs, mut ys, mut zs) = ([p.0], [p.1], [0.0]);
                t.transform_coords(&mut xs, &mut ys, &mut zs)
                    .expect("to wgs84");
                *p = (xs[0], ys[0]);
            }
        }
        let coords: Vec<String> = ring
            .iter()
            .map(|(x, y)| format!("[{x:.10},{y:.10}]"))
            .collect();
        let label = if k % 2 == 0 { "building" } else { "tank" };
        features.push(format!(
            r#"{{"type":"Feature","properties":{{"label":"{label}","score":0.{k}5}},"geometry":{{"type":"Polygon","coordinates":[[{}]]}}}}"#,
            coords.join(",")
        ));
    }
    let crs = if wgs84 {
        String::new()
    } else {
        r#""crs":{"type":"name","properties":{"name":"urn:ogc:def:crs:EPSG::32633"}},"#.into()
    };
    std::fs::write(
        path,
        format!(
            r#"{{"type":"FeatureCollection",{crs}"features":[{}]}}"#,
            features.join(",")
        ),
    )
    .expect("write boxes");
}

fn read_ids(path: &Path) -> (Vec<u32>, Option<f64>, String) {
    let ds = gdal::Dataset::open(path).expect("open");
    assert_eq!(ds.raster_size(), (W, H));
    let band = ds.rasterband(1).expect("band");
    let dtype = band.band_type().name();
    let v = band
        .read_as::<u32>((0, 0), (W, H), (W, H), None)
        .expect("read");
    (v.data().to_vec(), band.no_data_value(), dtype)
}

/// (id, label, score, area_m2, parts, area of the geometry) of every feature.
type Row = (i64, String, f64, f64, usize, f64);

fn read_layer(path: &Path) -> Vec<Row> {
    let ds = gdal::Dataset::open(path).expect("layer");
    let mut layer = ds.layer(0).expect("layer 0");
    let mut rows = Vec::new();
    for f in layer.features() {
        let g = f.geometry().expect("geometry");
        let field = |name: &str| f.field_index(name).expect(name);
        rows.push((
            f.field_as_integer64(field("id")).expect("id").expect("id"),
            f.field_as_string(field("label"))
                .expect("label")
                .unwrap_or_default(),
            f.field_as_double(field("score")).expect("s").expect("s"),
            f.field_as_double(field("area_m2")).expect("a").expect("a"),
            g.geometry_count(),
            g.area(),
        ));
    }
    rows
}

/// Each shape is exactly one instance: one id covers it with IoU >= 0.99 (the oracle makes
/// it exact), no id is shared between shapes or left over, and the layer has one feature of
/// one polygon per shape, of the shape's area.
fn check_instances(out: &Path, owner: &[Option<usize>], shapes: &[Shape], what: &str) -> Vec<u32> {
    let (ids, nodata, dtype) = read_ids(&out.join("instances.tif"));
    assert_eq!(dtype, "UInt32", "{what}");
    assert_eq!(nodata, Some(0.0), "{what}");
    let mut id_of = vec![0u32; shapes.len()];
    for (k, _) in shapes.iter().enumerate() {
        let mut count = std::collections::BTreeMap::<u32, usize>::new();
        for (i, o) in owner.iter().enumerate() {
            if *o == Some(k) {
                *count.entry(ids[i]).or_default() += 1;
            }
        }
        let (&best, _) = count.iter().max_by_key(|(_, n)| **n).expect("pixels");
        assert_ne!(best, 0, "{what}: shape {k} has no instance ({count:?})");
        let truth = owner.iter().filter(|o| **o == Some(k)).count();
        let got = ids.iter().filter(|&&v| v == best).count();
        let inter = owner
            .iter()
            .zip(&ids)
            .filter(|(o, v)| **o == Some(k) && **v == best)
            .count();
        let iou = inter as f64 / (truth + got - inter) as f64;
        assert!(iou >= 0.99, "{what}: shape {k} IoU {iou} ({count:?})");
        id_of[k] = best;
    }
    let mut unique = id_of.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), shapes.len(), "{what}: ids shared: {id_of:?}");
    let all: std::collections::BTreeSet<u32> = ids.iter().copied().filter(|&v| v > 0).collect();
    assert_eq!(
        all.len(),
        shapes.len(),
        "{what}: stray instances {all:?} for {id_of:?}"
    );
    let rows = read_layer(&out.join("instances.gpkg"));
    assert_eq!(rows.len(), shapes.len(), "{what}: {rows:?}");
    for (k, &id) in id_of.iter().enumerate() {
        let row = rows
            .iter()
            .find(|r| r.0 == i64::from(id))
            .unwrap_or_else(|| panic!("{what}: no feature for id {id}"));
        assert_eq!(row.4, 1, "{what}: shape {k} is {} polygons", row.4);
        let painted = owner.iter().filter(|o| **o == Some(k)).count() as f64;
        assert!(
            (row.5 - painted).abs() < 1e-6,
            "{what}: {} vs {painted}",
            row.5
        );
        // Geodesic area on the ellipsoid: UTM's scale error at 15 E, 41.5 N is < 0.1 %.
        assert!(
            (row.3 / painted - 1.0).abs() < 2e-3,
            "{what}: area_m2 {} vs {painted}",
            row.3
        );
        assert_eq!(row.1, if k % 2 == 0 { "building" } else { "tank" });
        assert!((row.2 - 0.875).abs() < 1e-6, "{what}: score {}", row.2);
    }
    ids
}

/// Offsets of a grid's tiles along an axis of `extent` pixels (pad mode), and the core
/// cuts between them (the middles of the overlaps), computed here independently.
fn cuts(extent: usize, size: usize, overlap: usize) -> Vec<usize> {
    let stride = size - overlap;
    let n = if extent <= size {
        1
    } else {
        (extent - size).div_ceil(stride) + 1
    };
    (1..n).map(|k| k * stride + overlap / 2).collect()
}

#[test]
fn shapes_on_seams_and_in_overlaps_are_one_instance_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shapes = shapes();
    let owner = red_scene(dir.path(), &shapes);
    box_file(
        &dir.path().join("boxes.geojson"),
        &shapes,
        3.0,
        (0.0, 0.0),
        false,
    );
    box_file(
        &dir.path().join("boxes_ll.geojson"),
        &shapes,
        3.0,
        (0.0, 0.0),
        true,
    );
    let mut first: Option<Vec<u32>> = None;
    for (size, overlap, boxes) in [
        (96, 24, "boxes.geojson"),
        (128, 32, "boxes_ll.geojson"),
        (100, 37, "boxes.geojson"),
        (64, 0, "boxes.geojson"),
    ] {
        // Shapes do straddle this grid's cuts (on both axes for some).
        let (cx, cy) = (cuts(W, size, overlap), cuts(H, size, overlap));
        let straddling = shapes
            .iter()
            .filter(|s| {
                let (x0, y0, x1, y1) = s.bounds();
                cx.iter().any(|&c| x0 < c as f64 && x1 > c as f64)
                    || cy.iter().any(|&c| y0 < c as f64 && y1 > c as f64)
            })
            .count();
        assert!(straddling >= 3, "{size}/{overlap}: {straddling}");
        let pkg = refiner(dir.path(), size);
        let out = format!("out_{size}_{overlap}");
        let res = run(
            dir.path(),
            &[
                "segment",
                "scene.tif",
                "--refiner",
                &pkg.display().to_string(),
                "--boxes",
                boxes,
                "--tile-size",
                &size.to_string(),
                "--overlap",
                &overlap.to_string(),
                "--batch-size",
                "3",
                "--out",
                &out,
                "--json",
                "--quiet",
            ],
        );
        let j = res.success().json();
        let what = format!("{size}/{overlap} {boxes}");
        assert_eq!(j["instances"]["instances"], shapes.len(), "{what}");
        assert_eq!(j["instances"]["boxes"], shapes.len(), "{what}");
        assert_eq!(j["instances"]["area"], "geodesic");
        let ids = check_instances(&dir.path().join(&out), &owner, &shapes, &what);
        // Ids follow the raster order of first pixels, whatever the tiling: identical.
        match &first {
            None => first = Some(ids),
            Some(f) => assert_eq!(f, &ids, "{what}: ids differ from the first tiling"),
        }
        if size <= 100 {
            assert!(
                j["peak_rows"].as_u64().expect("rows") < H as u64,
                "{what}: {}",
                j["peak_rows"]
            );
        }
        // The class raster: label index + 1 on each shape, 0 elsewhere.
        let ds = gdal::Dataset::open(dir.path().join(&out).join("classes.tif")).expect("cls");
        let c = ds
            .rasterband(1)
            .expect("band")
            .read_as::<u8>((0, 0), (W, H), (W, H), None)
            .expect("read");
        for (i, o) in owner.iter().enumerate() {
            assert_eq!(
                c.data()[i],
                o.map_or(0, |k| (k % 2 + 1) as u8),
                "{what} px {i}"
            );
        }
    }
    // A rerun of the same command gives the same ids and the same layer.
    let pkg = refiner(dir.path(), 96);
    let again = |out: &str| {
        run(
            dir.path(),
            &[
                "segment",
                "scene.tif",
                "--refiner",
                &pkg.display().to_string(),
                "--boxes",
                "boxes.geojson",
                "--tile-size",
                "96",
                "--overlap",
                "24",
                "--out",
                out,
                "--quiet",
            ],
        )
        .success();
        (
            read_ids(&dir.path().join(out).join("instances.tif")).0,
            read_layer(&dir.path().join(out).join("instances.gpkg")),
        )
    };
    let (a, b) = (again("rerun_a"), again("rerun_b"));
    assert_eq!(a, b);
    assert_eq!(Some(&a.0), first.as_ref());
    // The outputs open in rasterio/geopandas; the id raster is a valid COG.
    let Some(found) = inspect_outputs(&dir.path().join("rerun_a")) else {
        return;
    };
    assert_eq!(found["instances.tif"]["epsg"], 32633);
    assert_eq!(
        found["instances.tif"]["cog_valid"], true,
        "{}",
        found["instances.tif"]["cog_errors"]
    );
    assert_eq!(found["instances.tif"]["dtype"], "uint32");
    assert_eq!(found["instances.gpkg"]["epsg"], 32633);
    assert_eq!(found["instances.gpkg"]["valid"], true);
    assert_eq!(found["instances.gpkg"]["rows"], shapes.len());
}

/// Boxes from a detector: det-grid-v8 finds each 16 x 16 red square aligned to its 16-pixel
/// cells as one 48 x 48 box; the boxes are merged across the detector's tiles and refined on
/// the refiner's own tiles, where several squares sit on seams and corners.
#[test]
fn detector_boxes_become_one_instance_per_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Cell-aligned squares: (cell column, cell row); 96/24 refiner tiles cut at 84, 156, 228.
    let cells = [
        (5usize, 5usize),
        (9, 3),
        (13, 9),
        (2, 12),
        (17, 14),
        (14, 2),
    ];
    let shapes: Vec<Shape> = cells
        .iter()
        .map(|&(c, r)| Shape::Rect(c * 16, r * 16, c * 16 + 16, r * 16 + 16))
        .collect();
    let owner = red_scene(dir.path(), &shapes);
    let pkg = refiner(dir.path(), 96);
    let res = run(
        dir.path(),
        &[
            "segment",
            "scene.tif",
            "--refiner",
            &pkg.display().to_string(),
            "--detector",
            &oracle("det-grid-v8").display().to_string(),
            "--tile-size",
            "96",
            "--overlap",
            "24",
            "--out",
            "out",
            "--json",
            "--quiet",
        ],
    );
    let j = res.success().json();
    assert_eq!(j["instances"]["boxes"], shapes.len(), "{}", res.context());
    assert_eq!(j["instances"]["instances"], shapes.len());
    assert_eq!(
        j["classes"],
        serde_json::json!(["background", "red", "green"])
    );
    let (ids, _, _) = read_ids(&dir.path().join("out/instances.tif"));
    let rows = read_layer(&dir.path().join("out/instances.gpkg"));
    assert_eq!(rows.len(), shapes.len());
    for (k, _) in shapes.iter().enumerate() {
        let got: std::collections::BTreeSet<u32> = owner
            .iter()
            .zip(&ids)
            .filter(|(o, _)| **o == Some(k))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(got.len(), 1, "square {k}: {got:?}");
        let id = *got.iter().next().expect("id");
        assert_ne!(id, 0);
        assert_eq!(ids.iter().filter(|&&v| v == id).count(), 256, "square {k}");
        let row = rows.iter().find(|r| r.0 == i64::from(id)).expect("row");
        assert_eq!((row.1.as_str(), row.4), ("red", 1));
    }
}

#[test]
fn bad_refiners_and_boxes_say_one_line_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shapes = shapes();
    red_scene(dir.path(), &shapes);
    box_file(
        &dir.path().join("boxes.geojson"),
        &shapes,
        3.0,
        (0.0, 0.0),
        false,
    );
    // Every box far off the scene (a kilometre east).
    box_file(
        &dir.path().join("off.geojson"),
        &shapes,
        3.0,
        (1000.0, 0.0),
        false,
    );
    let pkg = refiner(dir.path(), 256).display().to_string();
    let seg = oracle("seg-threshold").display().to_string();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--refiner", &seg, "--boxes", "boxes.geojson"],
            vec!["seg-threshold", "not a promptable segmenter"],
        ),
        (
            vec!["--refiner", &pkg, "--boxes", "off.geojson"],
            vec![
                "off.geojson",
                "feature 0 lies outside the scene",
                "7 of 7 boxes",
            ],
        ),
        (
            vec!["--refiner", &pkg, "--boxes", "missing.geojson"],
            vec!["missing.geojson", "no such file"],
        ),
        (
            vec!["--refiner", &pkg, "--boxes", "scene.tif"],
            vec!["scene.tif", "not a vector layer"],
        ),
        (
            vec!["--refiner", &pkg],
            vec!["--refiner", "--detector", "--boxes"],
        ),
        (
            vec![
                "--refiner",
                &pkg,
                "--model",
                &seg,
                "--boxes",
                "boxes.geojson",
            ],
            vec!["--model", "--refiner"],
        ),
        (
            vec![
                "--refiner",
                &pkg,
                "--boxes",
                "boxes.geojson",
                "--probabilities",
            ],
            vec!["--probabilities"],
        ),
        (
            vec![
                "--refiner",
                &pkg,
                "--boxes",
                "boxes.geojson",
                "--min-area",
                "5",
            ],
            vec!["--min-area", "is not taken with --refiner"],
        ),
    ];
    for (k, (args, needles)) in cases.iter().enumerate() {
        let out = format!("out{k}");
        let mut all = vec!["segment", "scene.tif", "--out", &out, "--quiet"];
        all.extend(args.iter().copied());
        run(dir.path(), &all).fails_with(needles);
        assert!(!dir.path().join(&out).exists(), "case {k} left {out}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&out))
            .collect();
        assert!(leftovers.is_empty(), "case {k}: {leftovers:?}");
    }
}

/// A pipeline stage takes the same keys as the command (paths relative to the pipeline
/// file) and writes the same instances.
#[test]
fn a_pipeline_stage_refines_boxes_like_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shapes = shapes();
    let owner = red_scene(dir.path(), &shapes);
    std::fs::create_dir_all(dir.path().join("conf/data")).expect("mkdir");
    box_file(
        &dir.path().join("conf/data/boxes.geojson"),
        &shapes,
        3.0,
        (0.0, 0.0),
        false,
    );
    refiner(&dir.path().join("conf"), 96);
    std::fs::write(
        dir.path().join("conf/instances.toml"),
        r#"name = "instances"

[tiling]
tile_size = 96
overlap = 24

[[stage]]
name = "objects"
task = "segment"
refiner = "sam-96"
boxes = "data/boxes.geojson"
"#,
    )
    .expect("pipeline");
    run(
        dir.path(),
        &[
            "run",
            "conf/instances.toml",
            "scene.tif",
            "--out",
            "out",
            "--quiet",
        ],
    )
    .success();
    let found: Vec<PathBuf> = common::walk(&dir.path().join("out"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "instances.tif"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    let stage = found[0].parent().expect("stage dir").to_path_buf();
    check_instances(&stage, &owner, &shapes, "pipeline");
}

/// The tiny SAM and SAM 2 packages (random weights) as the refiner: the run completes and
/// writes valid outputs (their masks are not meaningful, so only their form is checked).
#[test]
fn the_tiny_sam_packages_refine_boxes_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shapes = shapes();
    red_scene(dir.path(), &shapes);
    box_file(
        &dir.path().join("boxes.geojson"),
        &shapes,
        3.0,
        (0.0, 0.0),
        false,
    );
    for name in ["sam-tiny", "sam2-tiny"] {
        end_to_end(dir.path(), name, shapes.len());
    }
}

fn end_to_end(dir: &Path, name: &str, n_shapes: usize) {
    let sam = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models")
        .join(name);
    let out = format!("out_{name}");
    let res = run(
        dir,
        &[
            "segment",
            "scene.tif",
            "--refiner",
            &sam.display().to_string(),
            "--boxes",
            "boxes.geojson",
            "--overlap",
            "32",
            "--out",
            &out,
            "--json",
            "--quiet",
        ],
    );
    let j = res.success().json();
    assert!(
        j["tile_size"].as_u64().expect("size") > 32,
        "{}",
        res.context()
    );
    let inst = &j["instances"];
    assert_eq!(inst["boxes"], n_shapes, "{name}");
    let n = inst["instances"].as_u64().expect("instances");
    assert_eq!(
        n + inst["empty_boxes"].as_u64().expect("empty"),
        n_shapes as u64
    );
    assert!(inst["masks_decoded"].as_u64().expect("decoded") >= n_shapes as u64);
    let (ids, nodata, dtype) = read_ids(&dir.join(&out).join("instances.tif"));
    assert_eq!((dtype.as_str(), nodata), ("UInt32", Some(0.0)));
    let distinct: std::collections::BTreeSet<u32> =
        ids.iter().copied().filter(|&v| v > 0).collect();
    assert_eq!(distinct.len() as u64, n);
    assert!(distinct.iter().all(|&v| u64::from(v) <= n), "{distinct:?}");
    let rows = read_layer(&dir.join(&out).join("instances.gpkg"));
    assert_eq!(rows.len() as u64, n, "{name}");
    for r in &rows {
        assert!(r.2.is_finite() && r.3 >= 0.0 && r.4 >= 1, "{r:?}");
        let pixels = ids.iter().filter(|&&v| i64::from(v) == r.0).count() as f64;
        assert!((r.5 - pixels).abs() < 1e-6, "{r:?} vs {pixels} pixels");
    }
}
