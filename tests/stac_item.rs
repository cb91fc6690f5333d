//! STAC Items: one for the bundled sample scene written through the library API, and the
//! ones `tessera run` writes for a scene given as a STAC Item, validated offline by
//! tests/python/validate_stac.py (stac-validator + tests/stac-schemas/, with the Projection,
//! Raster and Classification extension schemas) and checked field by field against what
//! `gdalinfo -json` and geopandas read from the files.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use tessera::batch::stac::{
    asset_for, scene_item, ItemInput, Link, CLASSIFICATION_EXTENSION, PROJECTION_EXTENSION,
    RASTER_EXTENSION,
};
use tessera::raster::{OpenOptions, Scene};

/// The project's Python when it can run stac-validator; `None` (skip) otherwise. Under CI
/// `make setup` installs it, so its absence is a failure there.
fn stac_python() -> Option<std::path::PathBuf> {
    let py = common::venv_python()?;
    let ok = Command::new(&py)
        .args(["-c", "import stac_validator"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Some(py);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} cannot import stac_validator: `make setup` should have installed tests/requirements.txt",
        py.display()
    );
    eprintln!(
        "skipping STAC validation: stac_validator is not installed in .venv (run `make setup`)"
    );
    None
}

fn validate(py: &Path, items: &[&Path]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/validate_stac.py");
    let out = Command::new(py)
        .arg(script)
        .args(items)
        .output()
        .expect("run validate_stac.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn sample_scene_item_is_valid_stac() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/sentinel2_rgbn_10m.tif");
    let scene = Scene::open(&src.display().to_string(), &OpenOptions::default()).expect("open");
    let info = scene.info();

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("classes.tif"), b"not really a tiff").expect("write");
    std::fs::write(dir.path().join("captions.jsonl"), b"{}\n").expect("write");

    let mut input = ItemInput::for_scene(
        "sentinel2_rgbn_10m",
        info,
        "2024-06-01T10:20:30Z".to_string(),
    );
    input
        .properties
        .insert("tessera:pipeline".into(), json!("classify"));
    input.assets = vec![
        asset_for("classes".into(), "classes.tif".into()),
        asset_for("captions".into(), "captions.jsonl".into()),
    ];
    input.derived_from = Some(Link {
        href: format!("file://{}", src.display()),
        media_type: None,
        title: Some("input raster".into()),
    });
    let item = scene_item(&input).expect("item");

    // The footprint's corners are the ones `tessera info` reports for the scene.
    let ring = item["geometry"]["coordinates"][0].as_array().expect("ring");
    for (lon, lat) in &info.footprint.lonlat.clone().expect("lonlat")[..4] {
        assert!(
            ring.iter().any(|p| {
                (p[0].as_f64().unwrap() - lon).abs() < 1e-8
                    && (p[1].as_f64().unwrap() - lat).abs() < 1e-8
            }),
            "corner ({lon}, {lat}) missing from {ring:?}"
        );
    }
    assert_eq!(item["properties"]["proj:code"], json!("EPSG:32618"));
    assert_eq!(
        item["properties"]["proj:shape"],
        json!([info.height, info.width])
    );

    let good = dir.path().join("item.json");
    std::fs::write(&good, serde_json::to_vec_pretty(&item).expect("json")).expect("write");
    let mut broken: Value = item.clone();
    broken.as_object_mut().expect("object").remove("geometry");
    let bad = dir.path().join("broken.json");
    std::fs::write(&bad, serde_json::to_vec_pretty(&broken).expect("json")).expect("write");

    let Some(py) = stac_python() else {
        return;
    };
    let (ok, text) = validate(&py, &[&good]);
    assert!(ok, "{text}");
    assert!(text.starts_with("OK "), "{text}");
    let (ok, text) = validate(&py, &[&good, &bad]);
    assert!(!ok, "a broken item must fail: {text}");
    assert!(
        text.contains("FAIL") && text.contains("'geometry' is a required property"),
        "{text}"
    );
}

fn gdalinfo(path: &Path) -> Value {
    let out = Command::new("gdalinfo")
        .arg("-json")
        .arg(path)
        .output()
        .expect("gdalinfo (gdal-bin) runs");
    assert!(out.status.success(), "gdalinfo {}", path.display());
    serde_json::from_slice(&out.stdout).expect("gdalinfo -json")
}

/// The EPSG code geopandas (pyogrio + pyproj) reads for a vector file.
fn vector_epsg(py: &Path, path: &Path) -> Option<i64> {
    let out = Command::new(py)
        .args([
            "-c",
            "import sys, geopandas; c = geopandas.read_file(sys.argv[1]).crs; print(c.to_epsg() if c else '')",
        ])
        .arg(path)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The STAC Raster extension's name of a GDAL type name as gdalinfo prints it.
fn stac_type(gdal: &str) -> &'static str {
    match gdal {
        "Byte" => "uint8",
        "UInt16" => "uint16",
        "Int16" => "int16",
        "Float32" => "float32",
        "Float64" => "float64",
        other => panic!("no STAC name for {other} in this test"),
    }
}

#[test]
fn run_on_a_stac_item_writes_a_complete_item() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/sentinel2_rgbn_10m.tif");
    let status = Command::new("gdal_translate")
        .args(["-q", "-srcwin", "0", "0", "256", "256"])
        .arg(&sample)
        .arg(d.join("scene.tif"))
        .status()
        .expect("gdal_translate (gdal-bin) runs");
    assert!(status.success());
    // The input Item: a local time with an offset and an acquisition range.
    let input = json!({
        "type": "Feature", "stac_version": "1.1.0", "id": "S2X_TEST 20240601",
        "geometry": null, "links": [],
        "properties": {
            "datetime": "2024-06-01T12:20:30.5+02:00",
            "start_datetime": "2024-06-01T10:00:00Z",
            "end_datetime": "2024-06-01T10:40:00Z"
        },
        "assets": {"visual": {"href": "scene.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]}}
    });
    std::fs::create_dir(d.join("in")).expect("mkdir");
    std::fs::rename(d.join("scene.tif"), d.join("in/scene.tif")).expect("move");
    std::fs::write(d.join("in/item.json"), input.to_string()).expect("write");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models");
    // classify on 4x4 tiles of 64 px (its rasters have the tile stride as pixel: another grid);
    // segment at the scene's own 10 m (its class raster is on the scene grid).
    std::fs::write(
        d.join("p.toml"),
        format!(
            "[input]\nbands = [1, 2, 3]\nscale = \"percentile:2,98\"\n\
             [tiling]\ntarget_gsd = 10.0\nthreads = 1\nshared_pass = false\n\
             [[stage]]\nname = \"landcover\"\ntask = \"classify\"\nmodel = \"{}\"\nlabels = [\"forest\", \"open water\", \"city\"]\n\
             [[stage]]\nname = \"masks\"\ntask = \"segment\"\nmodel = \"{}\"\n[output]\nformat = \"geojson\"\n",
            models.join("clip-tiny").display(),
            models.join("oracles/seg-threshold").display()
        ),
    )
    .expect("pipeline");
    common::run(
        d,
        &["run", "p.toml", "in/item.json", "--out", "out", "--quiet"],
    )
    .success();
    let scene_dir = d.join("out/S2X_TEST_20240601");
    let item_path = scene_dir.join("item.json");
    let item: Value =
        serde_json::from_slice(&std::fs::read(&item_path).expect("item.json")).expect("json");
    let props = &item["properties"];

    // Times from the input Item (12:20:30.5 at +02:00 is 10:20:30.5 UTC), not the file's.
    assert_eq!(props["datetime"], json!("2024-06-01T10:20:30.5Z"));
    assert_eq!(props["start_datetime"], json!("2024-06-01T10:00:00Z"));
    assert_eq!(props["end_datetime"], json!("2024-06-01T10:40:00Z"));
    // derived_from: the input Item as an absolute file URL.
    let canonical = std::fs::canonicalize(d.join("in/item.json")).expect("canonical");
    let links = item["links"].as_array().expect("links");
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["rel"], json!("derived_from"));
    assert_eq!(
        links[0]["href"],
        json!(format!("file://{}", canonical.display()))
    );
    assert_eq!(links[0]["type"], json!("application/geo+json"));
    assert_eq!(
        item["stac_extensions"],
        json!([
            PROJECTION_EXTENSION,
            RASTER_EXTENSION,
            CLASSIFICATION_EXTENSION
        ])
    );

    // The Item's grid is the input raster's.
    let scene_info = gdalinfo(&d.join("in/scene.tif"));
    let gt: Vec<f64> = serde_json::from_value(scene_info["geoTransform"].clone()).expect("gt");
    let size = &scene_info["size"];
    assert_eq!(props["proj:shape"], json!([size[1], size[0]]));
    assert_eq!(
        props["proj:transform"],
        json!([gt[1], gt[2], gt[0], gt[4], gt[5], gt[3]])
    );
    assert_eq!(props["proj:code"], json!("EPSG:32618"));

    // Every file in the folder but item.json and record.json is an asset, and every asset
    // has a title; sidecars are metadata assets.
    let mut on_disk: Vec<String> = common::walk(&scene_dir)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            p.strip_prefix(&scene_dir)
                .expect("below")
                .display()
                .to_string()
        })
        .filter(|p| p != "item.json" && p != "record.json")
        .collect();
    on_disk.sort();
    let assets = item["assets"].as_object().expect("assets");
    let keys: Vec<String> = assets.keys().cloned().collect();
    assert_eq!(keys, on_disk);
    for (key, a) in assets {
        assert!(
            a["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{key}: {a}"
        );
        assert!(
            scene_dir.join(a["href"].as_str().expect("href")).is_file(),
            "{key}"
        );
        // Sidecars and the report (a page to look at the results with) are metadata.
        let sidecar =
            key.ends_with(".aux.xml") || key.ends_with(".qml") || key.as_str() == "report.html";
        let roles = if sidecar {
            json!(["metadata"])
        } else {
            json!(["data"])
        };
        assert_eq!(a["roles"], roles, "{key}");
    }
    for sidecar in ["landcover/classes.tif.aux.xml", "landcover/classes.qml"] {
        assert!(assets.contains_key(sidecar), "{sidecar} missing: {keys:?}");
    }
    assert_eq!(
        assets["landcover/classes.tif"]["title"],
        json!("landcover: class raster")
    );
    assert_eq!(
        assets["landcover/classes.qml"]["title"],
        json!("landcover: class raster, QGIS style")
    );

    // Rasters: raster:bands as gdalinfo reads them, proj:* only where the grid differs.
    for key in [
        "landcover/classes.tif",
        "landcover/probabilities.tif",
        "masks/classes.tif",
    ] {
        let a = &assets[key];
        let info = gdalinfo(&scene_dir.join(key));
        let bands = info["bands"].as_array().expect("bands");
        let stac_bands = a["raster:bands"].as_array().expect("raster:bands");
        assert_eq!(stac_bands.len(), bands.len(), "{key}");
        for (b, s) in bands.iter().zip(stac_bands) {
            assert_eq!(
                s["data_type"],
                json!(stac_type(b["type"].as_str().expect("type")))
            );
            match &b["noDataValue"] {
                Value::String(t) if t == "NaN" => assert_eq!(s["nodata"], json!("nan")),
                v => assert_eq!(s["nodata"].as_f64(), v.as_f64(), "{key}"),
            }
        }
        let agt: Vec<f64> = serde_json::from_value(info["geoTransform"].clone()).expect("gt");
        let asize = &info["size"];
        if agt == gt && asize == size {
            assert!(
                a.get("proj:shape").is_none() && a.get("proj:code").is_none(),
                "{key}: {a}"
            );
        } else {
            assert_eq!(a["proj:shape"], json!([asize[1], asize[0]]), "{key}");
            assert_eq!(
                a["proj:transform"],
                json!([agt[1], agt[2], agt[0], agt[4], agt[5], agt[3]]),
                "{key}"
            );
            let (w, h) = (asize[0].as_f64().expect("w"), asize[1].as_f64().expect("h"));
            assert_eq!(
                a["proj:bbox"],
                json!([agt[0], agt[3] + h * agt[5], agt[0] + w * agt[1], agt[3]]),
                "{key}"
            );
            // Same CRS as the scene: the Item's proj:code holds.
            assert!(a.get("proj:code").is_none(), "{key}");
        }
    }
    // classify's 64 px tiles: a 4 x 4 grid of 640 m pixels; segment's: the scene grid.
    assert_eq!(assets["landcover/classes.tif"]["proj:shape"], json!([4, 4]));
    assert!(assets["masks/classes.tif"].get("proj:shape").is_none());

    // classification:classes is the class raster's legend as GDAL reads it.
    let info = gdalinfo(&scene_dir.join("landcover/classes.tif"));
    let band = &info["bands"][0];
    let names: Vec<&str> = band["categories"]
        .as_array()
        .expect("categories")
        .iter()
        .map(|c| c.as_str().expect("name"))
        .collect();
    assert_eq!(names, ["forest", "open water", "city"]);
    let entries = band["colorTable"]["entries"].as_array().expect("colours");
    let classes = assets["landcover/classes.tif"]["raster:bands"][0]["classification:classes"]
        .as_array()
        .expect("classes");
    assert_eq!(classes.len(), names.len());
    for (i, (c, name)) in classes.iter().zip(&names).enumerate() {
        assert_eq!(c["value"], json!(i));
        assert_eq!(c["title"], json!(name));
        assert_eq!(c["name"], json!(name.replace(' ', "_")));
        let rgb = &entries[i];
        let hex = format!(
            "{:02X}{:02X}{:02X}",
            rgb[0].as_u64().expect("r"),
            rgb[1].as_u64().expect("g"),
            rgb[2].as_u64().expect("b")
        );
        assert_eq!(c["color_hint"], json!(hex), "class {name}");
    }

    let Some(py) = stac_python() else {
        return;
    };
    // GeoJSON is RFC 7946 (EPSG:4326): its asset says so, the UTM scene's proj:code does not
    // hold for it.
    for key in ["landcover/labels.geojson", "masks/polygons.geojson"] {
        let epsg = vector_epsg(&py, &scene_dir.join(key)).expect("a CRS");
        assert_eq!(
            assets[key]["proj:code"],
            json!(format!("EPSG:{epsg}")),
            "{key}"
        );
        assert_eq!(epsg, 4326);
        assert!(assets[key]["proj:wkt2"]
            .as_str()
            .is_some_and(|w| w.starts_with("GEOGCRS")));
        let b: Vec<f64> = serde_json::from_value(assets[key]["proj:bbox"].clone()).expect("bbox");
        let ib: Vec<f64> = serde_json::from_value(item["bbox"].clone()).expect("bbox");
        for (x, y) in b.iter().zip(&ib) {
            assert!((x - y).abs() < 1e-8, "{b:?} vs the Item's {ib:?}");
        }
    }
    let (ok, text) = validate(&py, &[&item_path]);
    assert!(ok, "{text}");
    // The extension schemas are applied: a class name the Classification extension forbids
    // and a data type the Raster extension does not know fail.
    let mut broken = item.clone();
    broken["assets"]["landcover/classes.tif"]["raster:bands"][0]["classification:classes"][1]
        ["name"] = json!("open water");
    let bad = scene_dir.join("broken-classes.json");
    std::fs::write(&bad, serde_json::to_vec(&broken).expect("json")).expect("write");
    let (ok, text) = validate(&py, &[&bad]);
    assert!(
        !ok && text.contains("[schema classification/v2.0.0/schema.json]"),
        "{text}"
    );
    let mut broken = item.clone();
    broken["assets"]["landcover/probabilities.tif"]["raster:bands"][0]["data_type"] =
        json!("float33");
    std::fs::write(&bad, serde_json::to_vec(&broken).expect("json")).expect("write");
    let (ok, text) = validate(&py, &[&bad]);
    assert!(
        !ok && text.contains("[schema raster/v1.1.0/schema.json]"),
        "{text}"
    );
}

#[test]
fn vendored_schemas_match_their_recorded_hashes() {
    use sha2::{Digest, Sha256};
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stac-schemas");
    let sums = std::fs::read_to_string(here.join("SHA256SUMS")).expect("SHA256SUMS");
    let mut listed = Vec::new();
    for line in sums.lines() {
        let (hash, rel) = line.split_once("  ").expect("`HASH  PATH` lines");
        let bytes = std::fs::read(here.join(rel)).expect(rel);
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, hash, "{rel} differs from the copy update.sh extracted");
        listed.push(rel.to_string());
    }
    // Every schema the map resolves to, and the licence, are recorded.
    let map: Value = serde_json::from_slice(
        &std::fs::read(here.join("schema-map.json")).expect("schema-map.json"),
    )
    .expect("json");
    for (url, rel) in map["schemas"].as_object().expect("schemas") {
        let rel = rel.as_str().expect("path");
        assert!(
            listed.iter().any(|l| l == rel),
            "{url} -> {rel} has no recorded hash"
        );
    }
    for url in [
        PROJECTION_EXTENSION,
        RASTER_EXTENSION,
        CLASSIFICATION_EXTENSION,
    ] {
        assert!(map["schemas"].get(url).is_some(), "{url} is not mapped");
    }
    assert!(listed.iter().any(|l| l == "LICENSE"));
}

#[test]
fn an_input_item_with_a_bad_datetime_fails_naming_it_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/sentinel2_rgbn_10m.tif");
    let item = json!({
        "type": "Feature", "stac_version": "1.1.0", "id": "bad-time", "geometry": null,
        "links": [], "properties": {"datetime": "1 June 2024"},
        "assets": {"visual": {"href": sample.display().to_string(), "roles": ["data"]}}
    });
    std::fs::write(d.join("item.json"), item.to_string()).expect("write");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/clip-tiny");
    std::fs::write(
        d.join("p.toml"),
        format!(
            "[[stage]]\nname = \"c\"\ntask = \"classify\"\nmodel = \"{}\"\nlabels = [\"a\", \"b\"]\n",
            model.display()
        ),
    )
    .expect("pipeline");
    let r = common::run(
        d,
        &[
            "run",
            "p.toml",
            "item.json",
            "--out",
            "out",
            "--json",
            "--quiet",
        ],
    );
    assert_eq!(r.output.status.code(), Some(1), "{}", r.context());
    let report = r.json();
    let e = report["scenes"][0]["error"].as_str().expect("error");
    assert!(
        e.contains("item.json: properties.datetime \"1 June 2024\" is not an RFC 3339 timestamp"),
        "{e}"
    );
    assert!(!d.join("out/bad-time").exists());
}
