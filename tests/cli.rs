//! The `tessera` binary end to end: `info`, `tiles` and `doctor` on synthetic and real scenes,
//! every output format opened back with GDAL/OGR, and every bad input.

mod common;

use std::path::Path;

use common::{run, walk, SceneSpec};
use gdal::vector::LayerAccess;
use gdal::Dataset;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn info_reports_size_bands_crs_transform_and_footprint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SceneSpec {
        width: 120,
        height: 90,
        bands: 4,
        dtype: "int16",
        nodata: Some(-32768.0),
        creation: "TILED=YES BLOCKXSIZE=64 BLOCKYSIZE=32",
        ..Default::default()
    };
    let path = dir.path().join("scene.tif");
    spec.write(&path);
    let r = run(dir.path(), &["info", "scene.tif", "--json"]);
    let j = r.success().json();
    assert_eq!(j["width"], 120);
    assert_eq!(j["height"], 90);
    assert_eq!(j["bands"].as_array().map(Vec::len), Some(4));
    assert_eq!(j["bands"][3]["dtype"], "int16");
    assert_eq!(j["bands"][0]["nodata"], -32768.0);
    assert_eq!(j["bands"][0]["mask"], "nodata");
    assert_eq!(j["bands"][0]["block_size"], serde_json::json!([64, 32]));
    assert_eq!(j["crs"]["epsg"], 32633);
    assert_eq!(
        j["geotransform"],
        serde_json::json!([500000.0, 10.0, 0.0, 4600000.0, 0.0, -10.0])
    );
    assert_eq!(j["resolution_m"], serde_json::json!([10.0, 10.0]));
    assert_eq!(
        j["footprint"]["bounds"],
        serde_json::json!([500000.0, 4599100.0, 501200.0, 4600000.0])
    );
    // UTM 33N near 41.5N, 15E.
    let lon = j["footprint"]["lonlat"][0][0].as_f64().expect("lon");
    let lat = j["footprint"]["lonlat"][0][1].as_f64().expect("lat");
    assert!(
        (lon - 15.0).abs() < 0.01 && (lat - 41.55).abs() < 0.05,
        "{lon} {lat}"
    );
    // Text output names the same facts.
    let text = run(dir.path(), &["info", "scene.tif"]).success().stdout();
    assert!(
        text.contains("120 x 90 pixels, 4 bands") && text.contains("EPSG:32633"),
        "{text}"
    );
}

#[test]
fn tiles_writes_every_vector_format_with_crs_and_extent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SceneSpec {
        width: 100,
        height: 70,
        ..Default::default()
    };
    spec.write(&dir.path().join("scene.tif"));
    // A Shapefile layer is named after its file, GeoJSON after its file or nothing.
    for (name, layer_name) in [
        ("t.gpkg", "tiles"),
        ("t.shp", "t"),
        ("t.geojson", "t"),
        ("t.fgb", "tiles"),
    ] {
        let r = run(
            dir.path(),
            &[
                "tiles",
                "scene.tif",
                "--tile-size",
                "32",
                "--overlap",
                "8",
                "--out",
                name,
                "--json",
            ],
        );
        let j = r.success().json();
        // stride 24: cols at 0,24,48,72 (4), rows at 0,24,48 (3)
        assert_eq!(
            (j["cols"].as_u64(), j["rows"].as_u64()),
            (Some(4), Some(3)),
            "{}",
            r.context()
        );
        assert_eq!(j["tiles_read"], 12);
        let ds = Dataset::open(dir.path().join(name)).expect("open vector");
        let mut layer = ds.layer(0).expect("layer");
        assert!(
            layer.name() == layer_name || name.ends_with(".geojson"),
            "{}",
            layer.name()
        );
        assert_eq!(layer.feature_count(), 12);
        let srs = layer.spatial_ref().expect("srs");
        let ext = layer.get_extent().expect("extent");
        // Tiles of 32 px at 10 m: from x=500000 to 500000 + (72+32)*10, padded past the scene.
        let (x0, x1, y0, y1) = (500_000.0, 501_040.0, 4_600_000.0 - 800.0, 4_600_000.0);
        if name.ends_with(".geojson") {
            // RFC 7946: WGS 84 longitude, latitude; the corners as PROJ transforms them, to
            // 1e-6 degrees (the tiles' vertices along the edges bow by less than that).
            assert_eq!(srs.auth_code().ok(), Some(4326), "{name}");
            let mut utm = gdal::spatial_ref::SpatialRef::from_epsg(32633).expect("utm");
            let mut wgs = gdal::spatial_ref::SpatialRef::from_epsg(4326).expect("wgs");
            for s in [&mut utm, &mut wgs] {
                s.set_axis_mapping_strategy(
                    gdal::spatial_ref::AxisMappingStrategy::TraditionalGisOrder,
                );
            }
            let t = gdal::spatial_ref::CoordTransform::new(&utm, &wgs).expect("transform");
            let (mut xs, mut ys, mut zs) =
                (vec![x0, x1, x1, x0], vec![y0, y0, y1, y1], vec![0.0; 4]);
            t.transform_coords(&mut xs, &mut ys, &mut zs)
                .expect("corners");
            let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
            let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
            let want = [min(&xs), max(&xs), min(&ys), max(&ys)];
            let got = [ext.MinX, ext.MaxX, ext.MinY, ext.MaxY];
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{name} {got:?} vs {want:?}");
            }
        } else {
            assert_eq!(srs.auth_code().ok(), Some(32633), "{name}");
            assert!(
                (ext.MinX - x0).abs() < 1e-6 && (ext.MaxX - x1).abs() < 1e-6,
                "{name} {ext:?}"
            );
            assert!((ext.MaxY - y1).abs() < 1e-6 && (ext.MinY - y0).abs() < 1e-6);
        }
        let defn = layer.defn();
        let names: Vec<String> = defn.fields().map(|f| f.name()).collect();
        for want in ["tile_id", "row", "col", "valid_frac", "padded"] {
            assert!(names.iter().any(|n| n == want), "{name}: {names:?}");
        }
        let mut padded = 0;
        let mut valid_sum = 0.0;
        for f in layer.features() {
            padded += f
                .field_as_integer64(f.field_index("padded").expect("padded"))
                .expect("v")
                .unwrap_or(0);
            valid_sum += f
                .field_as_double(f.field_index("valid_frac").expect("vf"))
                .expect("v")
                .unwrap_or(0.0);
        }
        assert_eq!(padded, 6); // last column (4... 3 rows) + last row (3 more)
                               // Sum of valid fractions * tile area counts each covered pixel once per tile covering it.
        assert!(valid_sum > 0.0);
    }
    // No temporary files left behind.
    assert!(walk(dir.path())
        .iter()
        .all(|p| !p.to_string_lossy().contains(".tessera-tmp-")));
}

#[test]
fn chips_keep_dtype_geotransform_crs_and_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SceneSpec {
        width: 50,
        height: 40,
        bands: 2,
        dtype: "uint16",
        nodata: Some(65535.0),
        ..Default::default()
    };
    spec.write(&dir.path().join("scene.tif"));
    run(
        dir.path(),
        &[
            "tiles",
            "scene.tif",
            "--tile-size",
            "32",
            "--chips",
            "chips",
        ],
    )
    .success();
    let chips: Vec<_> = walk(&dir.path().join("chips"));
    assert_eq!(chips.len(), 4);
    let ds = Dataset::open(dir.path().join("chips/r0000c0001.tif")).expect("chip");
    assert_eq!(ds.raster_size(), (32, 32));
    assert_eq!(ds.raster_count(), 2);
    let gt = ds.geo_transform().expect("gt");
    assert_eq!(gt, [500_320.0, 10.0, 0.0, 4_600_000.0, 0.0, -10.0]);
    assert_eq!(ds.spatial_ref().expect("srs").auth_code().ok(), Some(32633));
    let band = ds.rasterband(2).expect("band");
    assert_eq!(band.band_type(), gdal::raster::GdalDataType::UInt16);
    assert_eq!(band.no_data_value(), Some(65535.0));
    let data = band
        .read_as::<u16>((0, 0), (32, 32), (32, 32), None)
        .expect("read");
    for r in 0..32 {
        for c in 0..32 {
            let v = f64::from(data.data()[r * 32 + c]);
            let (col, row) = (32 + c, r);
            let want = if col < 50 {
                spec.value(2, col, row)
            } else {
                65535.0
            };
            assert_eq!(v, want, "({col},{row})");
        }
    }
}

#[test]
fn a_scene_smaller_than_a_tile_gives_one_padded_tile() {
    let dir = tempfile::tempdir().expect("tempdir");
    SceneSpec {
        width: 20,
        height: 10,
        ..Default::default()
    }
    .write(&dir.path().join("small.tif"));
    let j = run(
        dir.path(),
        &["tiles", "small.tif", "--tile-size", "64", "--json"],
    )
    .success()
    .json();
    assert_eq!(j["tiles_total"], 1);
    assert_eq!(j["padded"], 1);
    assert_eq!(j["tiles_read"], 1);
}

#[test]
fn target_gsd_and_stride_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    SceneSpec {
        width: 200,
        height: 100,
        ..Default::default()
    }
    .write(&dir.path().join("s.tif"));
    let j = run(
        dir.path(),
        &[
            "tiles",
            "s.tif",
            "--tile-size",
            "25",
            "--stride",
            "20",
            "--target-gsd",
            "20",
            "--edge",
            "shift",
            "--json",
        ],
    )
    .success()
    .json();
    assert_eq!(j["working_size"], serde_json::json!([100, 50]));
    assert_eq!(j["scale"], serde_json::json!([2.0, 2.0]));
    assert_eq!((j["cols"].as_u64(), j["rows"].as_u64()), (Some(5), Some(3)));
    assert_eq!(j["padded"], 0);
}

#[test]
fn pixel_coords_scenes_need_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    SceneSpec {
        geotransform: None,
        epsg: None,
        ..Default::default()
    }
    .write(&dir.path().join("raw.tif"));
    run(dir.path(), &["info", "raw.tif"]).fails_with(&[
        "raw.tif",
        "no georeferencing",
        "--pixel-coords",
    ]);
    run(
        dir.path(),
        &["tiles", "raw.tif", "--tile-size", "16", "--out", "t.gpkg"],
    )
    .fails_with(&["raw.tif"]);
    assert!(!dir.path().join("t.gpkg").exists());
    let j = run(dir.path(), &["info", "raw.tif", "--pixel-coords", "--json"])
        .success()
        .json();
    assert_eq!(j["pixel_coords"], true);
    assert!(j["crs"].is_null());
    run(
        dir.path(),
        &[
            "tiles",
            "raw.tif",
            "--tile-size",
            "16",
            "--out",
            "t.gpkg",
            "--pixel-coords",
        ],
    )
    .success();
    assert!(dir.path().join("t.gpkg").exists());
}

#[test]
fn remote_style_vsi_paths_pass_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    SceneSpec::default().write(&dir.path().join("inner.tif"));
    let zip = dir.path().join("scenes.zip");
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1], 'w').write(sys.argv[2], 'inner.tif')",
            s(&zip),
            s(&dir.path().join("inner.tif")),
        ])
        .status()
        .expect("python3");
    assert!(status.success());
    let vsi = format!("/vsizip/{}/inner.tif", s(&zip));
    let j = run(dir.path(), &["info", &vsi, "--json"]).success().json();
    assert_eq!(j["width"], 100);
    run(dir.path(), &["info", "/vsizip/nope.zip/x.tif"]).fails_with(&["/vsizip/nope.zip/x.tif"]);
}

#[test]
fn bad_inputs_fail_cleanly_and_leave_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    SceneSpec {
        width: 64,
        height: 64,
        ..Default::default()
    }
    .write(&d.join("good.tif"));
    std::fs::write(d.join("notes.txt"), "this is not a raster\n").expect("write");
    std::fs::write(d.join("empty.tif"), b"").expect("write");
    let bytes = std::fs::read(d.join("good.tif")).expect("read");
    std::fs::write(d.join("truncated.tif"), &bytes[..bytes.len() / 2]).expect("write");
    let before = walk(d);

    run(d, &["info", "missing.tif"]).fails_with(&["missing.tif", "no such file"]);
    run(d, &["info", "notes.txt"]).fails_with(&["notes.txt", "not a readable raster"]);
    run(d, &["info", "empty.tif"]).fails_with(&["empty.tif"]);
    run(
        d,
        &[
            "tiles",
            "truncated.tif",
            "--tile-size",
            "16",
            "--out",
            "t.gpkg",
            "--chips",
            "c",
        ],
    )
    .fails_with(&["truncated.tif"]);
    run(
        d,
        &[
            "tiles",
            "good.tif",
            "--tile-size",
            "16",
            "--bands",
            "1,5",
            "--out",
            "t.gpkg",
        ],
    )
    .fails_with(&["good.tif", "band 5", "3 bands"]);
    run(
        d,
        &["tiles", "good.tif", "--tile-size", "16", "--overlap", "16"],
    )
    .fails_with(&["good.tif", "overlap"]);
    run(
        d,
        &[
            "tiles",
            "good.tif",
            "--tile-size",
            "16",
            "--out",
            "no/such/dir/t.gpkg",
        ],
    )
    .fails_with(&["no/such/dir/t.gpkg", "directory does not exist"]);
    run(
        d,
        &[
            "tiles",
            "good.tif",
            "--tile-size",
            "16",
            "--out",
            "t.kml",
            "--format",
            "kml",
        ],
    )
    .fails_with(&["t.kml", "kml"]);
    run(
        d,
        &[
            "tiles",
            "good.tif",
            "--tile-size",
            "16",
            "--target-gsd",
            "100000",
        ],
    )
    .fails_with(&["good.tif", "smaller than one pixel"]);
    assert_eq!(walk(d), before, "a failed run left files behind");

    // An existing output is kept unless --overwrite.
    std::fs::create_dir(d.join("chips")).expect("mkdir");
    std::fs::write(d.join("chips/keep.txt"), "x").expect("write");
    run(
        d,
        &["tiles", "good.tif", "--tile-size", "32", "--chips", "chips"],
    )
    .fails_with(&["chips", "already exists"]);
    assert!(d.join("chips/keep.txt").exists());
    run(
        d,
        &[
            "tiles",
            "good.tif",
            "--tile-size",
            "32",
            "--chips",
            "chips",
            "--overwrite",
        ],
    )
    .success();
    assert_eq!(walk(&d.join("chips")).len(), 4);

    // A read error midway leaves no chips directory and no layer.
    let mut spec = SceneSpec {
        width: 512,
        height: 512,
        ..Default::default()
    };
    spec.creation = "TILED=YES BLOCKXSIZE=64 BLOCKYSIZE=64 COMPRESS=DEFLATE";
    spec.write(&d.join("big.tif"));
    let mut data = std::fs::read(d.join("big.tif")).expect("read");
    // Corrupt the compressed tile data in the middle of the file, keep the header and IFD.
    let mid = data.len() / 2;
    for b in &mut data[mid - 2000..mid + 2000] {
        *b = 0x5a;
    }
    std::fs::write(d.join("corrupt.tif"), &data).expect("write");
    run(
        d,
        &[
            "tiles",
            "corrupt.tif",
            "--tile-size",
            "64",
            "--out",
            "c.gpkg",
            "--chips",
            "cc",
        ],
    )
    .fails_with(&["corrupt.tif"]);
    assert!(!d.join("c.gpkg").exists() && !d.join("cc").exists());
    assert!(walk(d)
        .iter()
        .all(|p| !p.to_string_lossy().contains(".tessera-tmp-")));
}

#[test]
fn doctor_finds_gdal_and_onnx_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = common::tessera()
        .args(["doctor", "--json"])
        .env_remove("ORT_DYLIB_PATH")
        .current_dir(dir.path())
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    let j: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert!(j["gdal_version"]
        .as_str()
        .is_some_and(|v| v.starts_with('3')));
    assert!(j["drivers"]
        .as_array()
        .expect("drivers")
        .iter()
        .all(|d| d["available"] == true));
    let ort = &j["onnxruntime"]["Ok"];
    assert_eq!(ort["version"], "1.31.1", "{text}");
    assert_eq!(ort["library"]["source"], "project_setup");
    assert!(ort["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .any(|p| p == "CPUExecutionProvider"));
    assert!(out.status.success());

    // A library path that does not exist is reported, with a non-zero exit.
    let out = common::tessera()
        .args(["doctor", "--ort-lib", "/nonexistent/libonnxruntime.so"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/nonexistent/libonnxruntime.so"));
}
