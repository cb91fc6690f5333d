//! The tile grid and the streaming reader on synthetic scenes with known values: exact window
//! contents for every dtype, tile geotransforms to 1e-9, tile counts and edge handling,
//! nodata skipping, target resolution, rotated transforms.

mod common;

use std::collections::BTreeMap;

use common::SceneSpec;
use tessera::raster::{BandMapping, OpenOptions, Resampling, Scene};
use tessera::tiling::{
    stream_tiles, EdgeMode, GridOptions, ReadOptions, StreamStats, TileData, TileGrid, TilingError,
};

fn read_options(bands: Vec<usize>, threads: usize) -> ReadOptions {
    ReadOptions {
        bands: BandMapping::new(bands),
        resampling: Resampling::Average,
        threads,
        queue: 4,
        min_valid: 0.0,
        fill: -1.0,
        read_pixels: true,
        order: tessera::tiling::ReadOrder::Stripes,
        deliver_skipped: false,
        ordered: false,
    }
}

fn grid_options(size: usize, overlap: usize, edge: EdgeMode) -> GridOptions {
    GridOptions {
        tile_size: size,
        overlap,
        target_gsd: None,
        edge,
    }
}

/// Read every kept tile, keyed by tile index.
fn read_all(
    scene: &Scene,
    grid: &TileGrid,
    opts: &ReadOptions,
) -> (StreamStats, BTreeMap<usize, TileData<f64>>) {
    let mut tiles = BTreeMap::new();
    let stats = stream_tiles::<f64, TilingError, _, _>(
        scene,
        grid,
        opts,
        |_| {},
        |t| {
            assert!(
                tiles.insert(t.tile.index, t).is_none(),
                "tile delivered twice"
            );
            Ok(())
        },
    )
    .expect("stream");
    (stats, tiles)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn every_dtype_reads_exact_window_contents() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, dtype) in [
        "uint8", "uint16", "int16", "uint32", "int32", "float32", "float64",
    ]
    .iter()
    .enumerate()
    {
        let bands = 1 + i % 4;
        let spec = SceneSpec {
            width: 70,
            height: 45,
            bands,
            dtype,
            ..Default::default()
        };
        let path = dir.path().join(format!("{dtype}.tif"));
        spec.write(&path);
        let scene =
            Scene::open(path.to_str().expect("utf8"), &OpenOptions::default()).expect("open");
        assert_eq!(scene.info().bands.len(), bands);
        assert_eq!(scene.info().bands[0].dtype, *dtype);
        let grid = TileGrid::new(scene.info(), grid_options(32, 8, EdgeMode::Pad)).expect("grid");
        // Bands in reverse order, to check the mapping is honoured.
        let mapping: Vec<usize> = (1..=bands).rev().collect();
        let (stats, tiles) = read_all(&scene, &grid, &read_options(mapping.clone(), 2));
        assert_eq!(stats.tiles_read, grid.len());
        assert_eq!(stats.tiles_skipped, 0);
        for t in tiles.values() {
            let n = t.tile.size;
            for (c, &band) in mapping.iter().enumerate() {
                for r in 0..n {
                    for q in 0..n {
                        let got = t.pixels[c * n * n + r * n + q];
                        let (col, row) = (t.tile.x + q, t.tile.y + r);
                        let want = if col < spec.width && row < spec.height {
                            spec.value(band, col, row)
                        } else {
                            -1.0 // padding gets the fill value
                        };
                        // float32 storage rounds the float64 pattern
                        let tol = if *dtype == "float32" { 1e-6 } else { 0.0 };
                        assert!(
                            (got - want).abs() <= tol,
                            "{dtype} tile {} band {band} ({col},{row}): {got} != {want}",
                            t.tile.id
                        );
                    }
                }
            }
            let inside = t.tile.inside_w * t.tile.inside_h;
            assert_eq!(t.valid.iter().filter(|&&v| v == 1).count(), inside);
        }
    }
}

#[test]
fn tile_geotransforms_are_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gt = [431_234.5, 0.5, 0.0, 5_012_345.25, 0.0, -0.5];
    let spec = SceneSpec {
        width: 300,
        height: 200,
        geotransform: Some(gt),
        ..Default::default()
    };
    let path = dir.path().join("s.tif");
    spec.write(&path);
    let scene = Scene::open(path.to_str().expect("utf8"), &OpenOptions::default()).expect("open");
    for (size, overlap) in [(64, 0), (64, 16), (100, 30), (7, 3)] {
        let grid =
            TileGrid::new(scene.info(), grid_options(size, overlap, EdgeMode::Pad)).expect("grid");
        for tile in grid.tiles() {
            let stride = size - overlap;
            assert_eq!((tile.x, tile.y), (tile.col * stride, tile.row * stride));
            let want = [
                gt[0] + tile.x as f64 * gt[1],
                gt[1],
                0.0,
                gt[3] + tile.y as f64 * gt[5],
                0.0,
                gt[5],
            ];
            for k in 0..6 {
                assert!(
                    close(tile.geotransform.0[k], want[k]),
                    "{:?} vs {want:?}",
                    tile.geotransform
                );
            }
        }
    }
}

#[test]
fn rotated_geotransforms_are_handled_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 30 degrees rotation, 2 m pixels.
    let (s, c) = (30f64.to_radians().sin(), 30f64.to_radians().cos());
    let gt = [1000.0, 2.0 * c, 2.0 * s, 2000.0, 2.0 * s, -2.0 * c];
    let spec = SceneSpec {
        width: 90,
        height: 60,
        geotransform: Some(gt),
        ..Default::default()
    };
    let path = dir.path().join("rot.tif");
    spec.write(&path);
    let scene = Scene::open(path.to_str().expect("utf8"), &OpenOptions::default()).expect("open");
    assert!(!scene.geotransform().is_north_up());
    let r = scene.info().resolution_m.expect("metres");
    assert!(close(r.0, 2.0) && close(r.1, 2.0));
    let grid = TileGrid::new(scene.info(), grid_options(32, 0, EdgeMode::Shift)).expect("grid");
    for tile in grid.tiles() {
        // Tile pixel (i, j) lands where scene pixel (x + i, y + j) lands.
        for (i, j) in [(0.0, 0.0), (31.5, 0.5), (12.0, 31.0)] {
            let a = tile.geotransform.apply(i, j);
            let b = scene
                .geotransform()
                .apply(tile.x as f64 + i, tile.y as f64 + j);
            assert!(close(a.0, b.0) && close(a.1, b.1));
        }
    }
    // Target resolution on a rotated grid: 4 m pixels keep the rotation.
    let mut opts = grid_options(16, 0, EdgeMode::Pad);
    opts.target_gsd = Some(4.0);
    let grid = TileGrid::new(scene.info(), opts).expect("grid");
    assert_eq!((grid.working_width, grid.working_height), (45, 30));
    let t = grid.tile(1, 1);
    let want = scene.geotransform().apply(32.0, 32.0);
    let got = t.geotransform.apply(0.0, 0.0);
    assert!(close(got.0, want.0) && close(got.1, want.1));
    assert!(close(t.geotransform.0[1], 4.0 * c) && close(t.geotransform.0[2], 4.0 * s));
}

#[test]
fn tile_counts_and_edges_for_several_layouts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SceneSpec {
        width: 100,
        height: 80,
        bands: 1,
        ..Default::default()
    };
    let path = dir.path().join("s.tif");
    spec.write(&path);
    let scene = Scene::open(path.to_str().expect("utf8"), &OpenOptions::default()).expect("open");
    // (size, overlap, edge, cols, rows, padded tiles, last col offset)
    let cases = [
        (32, 0, EdgeMode::Pad, 4, 3, 4 + 3 - 1, 96),
        (32, 0, EdgeMode::Shift, 4, 3, 0, 68),
        (50, 10, EdgeMode::Pad, 3, 2, 3 + 2 - 1, 80),
        (50, 10, EdgeMode::Shift, 3, 2, 0, 50),
        (20, 0, EdgeMode::Pad, 5, 4, 0, 80),
        (40, 20, EdgeMode::Pad, 4, 3, 0, 60),
        (128, 0, EdgeMode::Pad, 1, 1, 1, 0),
        (128, 0, EdgeMode::Shift, 1, 1, 1, 0),
    ];
    for (size, overlap, edge, cols, rows, padded, last) in cases {
        let grid = TileGrid::new(scene.info(), grid_options(size, overlap, edge)).expect("grid");
        assert_eq!(
            (grid.cols(), grid.rows()),
            (cols, rows),
            "{size}/{overlap}/{edge:?}"
        );
        assert_eq!(
            grid.tiles().filter(|t| t.padded()).count(),
            padded,
            "{size}/{overlap}/{edge:?}"
        );
        assert_eq!(grid.col_offsets.last().copied(), Some(last));
        let (stats, tiles) = read_all(&scene, &grid, &read_options(vec![1], 2));
        assert_eq!(stats.tiles_read, cols * rows);
        // Ids are deterministic and unique.
        let ids: std::collections::BTreeSet<_> =
            tiles.values().map(|t| t.tile.id.clone()).collect();
        assert_eq!(ids.len(), cols * rows);
        let again = TileGrid::new(scene.info(), grid_options(size, overlap, edge)).expect("grid");
        assert!(again.tiles().zip(grid.tiles()).all(|(a, b)| a == b));
    }
}

#[test]
fn nodata_tiles_are_skipped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Left 40 columns are nodata: with 20-px tiles, 2 of every 5 tile columns are empty.
    let spec = SceneSpec {
        width: 100,
        height: 60,
        // A value the pattern never takes, so only the rectangle is nodata.
        nodata: Some(65535.0),
        nodata_rect: Some((0, 0, 40, 60)),
        dtype: "uint16",
        ..Default::default()
    };
    let path = dir.path().join("nd.tif");
    spec.write(&path);
    let scene = Scene::open(path.to_str().expect("utf8"), &OpenOptions::default()).expect("open");
    assert_eq!(scene.info().bands[0].mask, "nodata");
    let grid = TileGrid::new(scene.info(), grid_options(20, 0, EdgeMode::Pad)).expect("grid");
    let (stats, tiles) = read_all(&scene, &grid, &read_options(vec![1, 2, 3], 1));
    assert_eq!(stats.tiles_total, 15);
    assert_eq!(stats.tiles_skipped, 6);
    assert_eq!(stats.tiles_read, 9);
    assert!(tiles
        .values()
        .all(|t| t.tile.x >= 40 && t.valid_fraction == 1.0));

    // Tiles straddling the nodata edge: valid fraction is exact; min_valid skips by it.
    let grid = TileGrid::new(scene.info(), grid_options(30, 0, EdgeMode::Pad)).expect("grid");
    let (_, tiles) = read_all(&scene, &grid, &read_options(vec![1], 2));
    let straddling = tiles
        .values()
        .find(|t| t.tile.x == 30)
        .expect("tile at x=30");
    assert!(close(straddling.valid_fraction, 20.0 / 30.0));
    let mut opts = read_options(vec![1], 2);
    opts.min_valid = 0.7;
    let (stats, _) = read_all(&scene, &grid, &opts);
    // cols at x=0 (empty), 30 (2/3 valid) skipped; 60, 90 (padded: 10/30 inside) -> 90 skipped too.
    assert_eq!(stats.tiles_skipped, 3 * 2);
    assert_eq!(stats.tiles_read, 2);
}

#[test]
fn target_resolution_resamples_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    // float32 so GDAL's average is not rounded; 10 m pixels read at 20 m.
    let spec = SceneSpec {
        width: 64,
        height: 48,
        bands: 2,
        dtype: "float32",
        ..Default::default()
    };
    let path = dir.path().join("f.tif");
    spec.write(&path);
    let scene = Scene::open(path.to_str().expect("utf8"), &OpenOptions::default()).expect("open");
    let mut opts = grid_options(16, 0, EdgeMode::Pad);
    opts.target_gsd = Some(20.0);
    let grid = TileGrid::new(scene.info(), opts).expect("grid");
    assert_eq!((grid.working_width, grid.working_height), (32, 24));
    assert_eq!((grid.cols(), grid.rows()), (2, 2));
    let (_, tiles) = read_all(&scene, &grid, &read_options(vec![1, 2], 2));
    for t in tiles.values() {
        assert!(close(t.tile.geotransform.0[1], 20.0) && close(t.tile.geotransform.0[5], -20.0));
        let (x0, y0) = t.tile.geotransform.apply(0.0, 0.0);
        assert!(close(x0, 500_000.0 + 20.0 * t.tile.x as f64));
        assert!(close(y0, 4_600_000.0 - 20.0 * t.tile.y as f64));
        for c in 0..2 {
            for r in 0..t.tile.inside_h {
                for q in 0..t.tile.inside_w {
                    let (col, row) = (2 * (t.tile.x + q), 2 * (t.tile.y + r));
                    let mean = (0..4)
                        .map(|k| spec.value(c + 1, col + k % 2, row + k / 2))
                        .sum::<f64>()
                        / 4.0;
                    let got = t.pixels[c * 256 + r * 16 + q];
                    assert!((got - mean).abs() < 1e-4, "({col},{row}) {got} vs {mean}");
                }
            }
        }
    }
    // Non-integer factor: 10 m -> 15 m keeps whole pixels inside the scene only.
    let mut opts = grid_options(16, 0, EdgeMode::Pad);
    opts.target_gsd = Some(15.0);
    let grid = TileGrid::new(scene.info(), opts).expect("grid");
    assert_eq!((grid.working_width, grid.working_height), (42, 32));
    let (stats, _) = read_all(&scene, &grid, &read_options(vec![1], 2));
    assert_eq!(stats.tiles_read, grid.len());
}

#[test]
fn one_and_many_reader_threads_give_identical_tiles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SceneSpec {
        width: 257,
        height: 130,
        bands: 3,
        ..Default::default()
    };
    let path = dir.path().join("s.tif");
    spec.write(&path);
    let scene = Scene::open(path.to_str().expect("utf8"), &OpenOptions::default()).expect("open");
    let grid = TileGrid::new(scene.info(), grid_options(40, 12, EdgeMode::Shift)).expect("grid");
    let (_, a) = read_all(&scene, &grid, &read_options(vec![1, 2, 3], 1));
    let (_, b) = read_all(&scene, &grid, &read_options(vec![1, 2, 3], 3));
    assert_eq!(a.len(), grid.len());
    for (k, t) in &a {
        assert_eq!(&t.pixels[..], &b[k].pixels[..]);
        assert_eq!(&t.valid[..], &b[k].valid[..]);
    }
}

#[test]
fn percentile_and_minmax_scaling_come_from_the_data() {
    use tessera::raster::{Scaling, ScalingSpec};
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SceneSpec {
        width: 100,
        height: 80,
        bands: 2,
        dtype: "uint16",
        nodata: Some(65535.0),
        nodata_rect: Some((0, 0, 10, 80)),
        ..Default::default()
    };
    let path = dir.path().join("s.tif");
    spec.write(&path);
    let scene = Scene::open(path.to_str().expect("utf8"), &OpenOptions::default()).expect("open");
    let mapping = BandMapping::new(vec![2, 1]);
    // Independent nearest-rank percentiles of the valid pixels.
    let pct = |band: usize, p: f64| {
        let mut v: Vec<f64> = (0..80)
            .flat_map(|r| (10..100).map(move |c| (c, r)))
            .map(|(c, r)| spec.value(band, c, r))
            .collect();
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.max(1) - 1]
    };
    let s =
        Scaling::resolve(&ScalingSpec::Percentile(2.0, 98.0), &scene, &mapping).expect("resolve");
    let b = s.bands.expect("bands");
    assert_eq!(
        (b[0].band, b[0].lo, b[0].hi),
        (2, pct(2, 2.0), pct(2, 98.0))
    );
    assert_eq!(
        (b[1].band, b[1].lo, b[1].hi),
        (1, pct(1, 2.0), pct(1, 98.0))
    );
    let s = Scaling::resolve(&ScalingSpec::MinMax, &scene, &mapping).expect("resolve");
    let b = s.bands.expect("bands");
    assert_eq!((b[1].lo, b[1].hi), (pct(1, 0.0), pct(1, 100.0)));
    let s = Scaling::resolve(&ScalingSpec::Ranges(vec![(0.0, 1.0)]), &scene, &mapping);
    assert!(s.is_err(), "one range for two bands");
    assert!(walk_no_aux(dir.path()));
}

fn walk_no_aux(dir: &std::path::Path) -> bool {
    common::walk(dir)
        .iter()
        .all(|p| !p.to_string_lossy().ends_with(".aux.xml"))
}

#[test]
fn row_major_order_delivers_every_tile_and_skipped_ones_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SceneSpec {
        width: 120,
        height: 90,
        dtype: "uint16",
        nodata: Some(65535.0),
        nodata_rect: Some((0, 0, 30, 90)),
        ..Default::default()
    };
    let path = dir.path().join("s.tif");
    spec.write(&path);
    let scene = Scene::open(path.to_str().expect("utf8"), &OpenOptions::default()).expect("open");
    let grid = TileGrid::new(scene.info(), grid_options(30, 0, EdgeMode::Pad)).expect("grid");
    let mut opts = read_options(vec![1, 2, 3], 2);
    opts.order = tessera::tiling::ReadOrder::RowMajor;
    opts.deliver_skipped = true;
    let (stats, tiles) = read_all(&scene, &grid, &opts);
    assert_eq!(tiles.len(), grid.len(), "skipped tiles are delivered too");
    assert_eq!(stats.tiles_skipped, 3);
    for t in tiles.values() {
        if t.tile.x < 30 {
            assert!(t.pixels.is_empty() && t.valid_fraction == 0.0);
        } else {
            assert_eq!(t.pixels[0], spec.value(1, t.tile.x, t.tile.y));
        }
    }
    let (_, stripes) = read_all(&scene, &grid, &read_options(vec![1, 2, 3], 2));
    for (k, t) in &stripes {
        assert_eq!(&t.pixels[..], &tiles[k].pixels[..]);
    }
}

#[test]
fn a_consumer_error_stops_the_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SceneSpec {
        width: 200,
        height: 200,
        ..Default::default()
    };
    let path = dir.path().join("s.tif");
    spec.write(&path);
    let scene = Scene::open(path.to_str().expect("utf8"), &OpenOptions::default()).expect("open");
    let grid = TileGrid::new(scene.info(), grid_options(10, 0, EdgeMode::Pad)).expect("grid");
    let mut seen = 0;
    let r = stream_tiles::<u8, TilingError, _, _>(
        &scene,
        &grid,
        &read_options(vec![1], 2),
        |_| {},
        |_| {
            seen += 1;
            if seen == 3 {
                Err(TilingError::Threads("stop".into()))
            } else {
                Ok(())
            }
        },
    );
    assert!(r.is_err());
    assert_eq!(seen, 3);
}
