//! `--format parquet` (GeoParquet 1.1, written without GDAL): every layer a pipeline writes
//! (classify's tiles and labels, detect's detections, segment's polygons) and the layers of
//! single-scene commands (an empty detection layer, a tile grid in pixel coordinates) must
//! read back in geopandas (pyarrow) with the same features, attributes and CRS as the
//! GeoPackage that the same run writes, pass geoparquet-validator (the GeoParquet 1.1.0 JSON
//! Schema and rules) and the specification's keys (tests/python/geoparquet_check.py); outputs
//! that cannot be written are one error line with nothing left behind (a write cut short by a
//! full disk is in hostile_cli.rs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, venv_python, walk};
use serde_json::Value;

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models")
}

/// A black 256 x 256 scene at 1 m in UTM 33N with red and green 16 px squares (the oracle
/// detector boxes both colours, the oracle segmenter masks red); none with `squares = false`.
fn paint(path: &Path, squares: bool) {
    let red: &[(usize, usize)] = &[(32, 32), (128, 128), (176, 64), (48, 192)];
    let green: &[(usize, usize)] = &[(96, 160), (208, 208)];
    let on = |cells: &[(usize, usize)], x: usize, y: usize| {
        squares
            && cells
                .iter()
                .any(|&(x0, y0)| (x0..x0 + 16).contains(&x) && (y0..y0 + 16).contains(&y))
    };
    common::rgb_scene(path, (256, 256), |x, y| {
        [
            u8::from(on(red, x, y)) * 255,
            u8::from(on(green, x, y)) * 255,
            0,
        ]
    });
}

/// tests/python/geoparquet_check.py on the GeoPackages under `gpkg` and the GeoParquet files
/// under `parquet`: its per-file summary, or `None` without the test virtualenv.
fn check(gpkg: &Path, parquet: &Path) -> Option<Value> {
    let py = venv_python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/geoparquet_check.py");
    let out = Command::new(py)
        .arg(script)
        .arg(gpkg)
        .arg(parquet)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "geoparquet_check failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("json"))
}

fn pipeline(dir: &Path, format: &str) -> PathBuf {
    let m = models();
    let path = dir.join(format!("pipe_{format}.toml"));
    std::fs::write(
        &path,
        format!(
            "[input]\nbands = [1, 2, 3]\n[tiling]\nshared_pass = false\n\
             [[stage]]\nname = \"landcover\"\ntask = \"classify\"\nmodel = \"{}\"\n\
             labels = [\"forest\", \"water\", \"city\"]\n\
             [[stage]]\nname = \"objects\"\ntask = \"detect\"\nmodel = \"{}\"\n\
             [[stage]]\nname = \"masks\"\ntask = \"segment\"\nmodel = \"{}\"\n\
             [output]\nformat = \"{format}\"\n",
            m.join("clip-tiny").display(),
            m.join("oracles/det-grid-v8").display(),
            m.join("oracles/seg-threshold").display(),
        ),
    )
    .expect("write pipeline");
    path
}

/// A pipeline with `format = "parquet"` writes every layer as GeoParquet, equal to the
/// GeoPackage run's, and its STAC Item lists them as Parquet data.
#[test]
fn pipeline_layers_match_the_geopackage_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    paint(&d.join("scene.tif"), true);
    for format in ["gpkg", "parquet"] {
        let p = pipeline(d, format);
        let p = p.to_str().expect("utf8");
        run(d, &["run", p, "scene.tif", "--out", format, "--quiet"]).success();
    }
    let names: Vec<String> = walk(&d.join("parquet"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| {
            p.strip_prefix(d.join("parquet"))
                .expect("rel")
                .display()
                .to_string()
        })
        .collect();
    let layers = [
        "scene/landcover/labels.parquet",
        "scene/landcover/tiles.parquet",
        "scene/masks/polygons.parquet",
        "scene/objects/detections.parquet",
    ];
    assert_eq!(names, layers);
    // Styles travel as .qml beside the files; nothing temporary is left.
    for layer in layers {
        let qml = d.join("parquet").join(layer).with_extension("qml");
        assert!(qml.is_file(), "{}", qml.display());
    }
    assert!(!walk(d)
        .iter()
        .any(|p| p.display().to_string().contains(".tessera-tmp-")));
    let item: Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("parquet/scene/item.json")).expect("item"),
    )
    .expect("json");
    for layer in layers {
        let key = layer.trim_start_matches("scene/");
        let asset = &item["assets"][key];
        assert_eq!(asset["type"], "application/vnd.apache.parquet", "{item}");
        assert_eq!(asset["roles"][0], "data");
    }
    // Debian's GDAL cannot read GeoParquet back: boxes for instance segmentation must be
    // given in a format it reads, and the message says so.
    let refiner = models().join("oracles/sam-box-threshold");
    run(
        d,
        &[
            "segment",
            "scene.tif",
            "--refiner",
            refiner.to_str().expect("utf8"),
            "--boxes",
            "parquet/scene/objects/detections.parquet",
            "--out",
            "instances",
        ],
    )
    .fails_with(&["detections.parquet", "no Parquet driver", "--format gpkg"]);
    assert!(!d.join("instances").exists());
    let Some(found) = check(&d.join("gpkg"), &d.join("parquet")) else {
        return;
    };
    // The scene's 4 red and 2 green squares; the red ones as segments.
    assert_eq!(found[layers[3]]["rows"], 6, "{found}");
    assert_eq!(found[layers[2]]["rows"], 4, "{found}");
    assert_eq!(found[layers[1]]["rows"], 16, "{found}");
    assert_eq!(found[layers[0]]["geometry_types"][0], "MultiPolygon");
    for layer in layers {
        assert_eq!(found[layer]["epsg"], 32633, "{found}");
    }
    let cols = &found[layers[3]]["columns"];
    assert_eq!(
        cols,
        &serde_json::json!(["class", "label", "score", "tile_id", "area_m2"])
    );
}

/// An empty layer still declares its geometry type and CRS; a scene in pixel coordinates
/// gets `"crs": null`.
#[test]
fn empty_layers_and_pixel_coordinates() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    paint(&d.join("black.tif"), false);
    let model = models().join("oracles/det-grid-v8");
    let model = model.to_str().expect("utf8");
    // A PNG without georeferencing (the tile grid in pixels).
    let png = d.join("plain.png");
    let status = Command::new("gdal_translate")
        .args(["-q", "-of", "PNG"])
        .arg(d.join("black.tif"))
        .arg(&png)
        .status()
        .expect("gdal_translate");
    assert!(status.success());
    let _ = std::fs::remove_file(d.join("plain.png.aux.xml"));
    for format in ["gpkg", "parquet"] {
        std::fs::create_dir(d.join(format)).expect("mkdir");
        let det = format!("{format}/det");
        let r = run(
            d,
            &[
                "detect",
                "black.tif",
                "--model",
                model,
                "--format",
                format,
                "--out",
                &det,
                "--json",
                "--quiet",
            ],
        );
        assert_eq!(r.success().json()["detections"], 0, "{}", r.stdout());
        let grid = format!("{format}/grid.{format}");
        run(
            d,
            &[
                "tiles",
                "plain.png",
                "--pixel-coords",
                "--tile-size",
                "64",
                "--out",
                &grid,
                "--quiet",
            ],
        )
        .success();
    }
    let Some(found) = check(&d.join("gpkg"), &d.join("parquet")) else {
        return;
    };
    let empty = &found["det/detections.parquet"];
    assert_eq!(empty["rows"], 0, "{found}");
    assert_eq!(empty["geometry_types"], serde_json::json!(["Polygon"]));
    assert_eq!(empty["epsg"], 32633);
    let grid = &found["grid.parquet"];
    assert_eq!(grid["rows"], 16, "{found}");
    assert_eq!(grid["epsg"], Value::Null);
}

/// Outputs that cannot be written: one error line naming the file, nothing left behind.
#[test]
fn unwritable_outputs_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    paint(&d.join("scene.tif"), true);
    std::fs::write(d.join("afile"), "not a folder").expect("write");
    std::fs::write(d.join("taken.parquet"), "someone's data").expect("write");
    let tiles = |out: &'static str| -> Vec<&'static str> {
        vec!["tiles", "scene.tif", "--tile-size", "64", "--out", out]
    };
    run(d, &tiles("afile/grid.parquet")).fails_with(&["afile/grid.parquet", "cannot write"]);
    run(d, &tiles("missing/grid.parquet")).fails_with(&["missing/grid.parquet", "directory"]);
    run(d, &tiles("taken.parquet")).fails_with(&["taken.parquet", "already exists"]);
    let mut mismatch = tiles("grid.gpkg");
    mismatch.extend(["--format", "parquet"]);
    run(d, &mismatch).fails_with(&["grid.gpkg", "--format parquet"]);
    assert_eq!(
        std::fs::read_to_string(d.join("taken.parquet")).expect("read"),
        "someone's data"
    );
    let left: Vec<PathBuf> = walk(d)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
            !matches!(n.as_deref(), Some("scene.tif" | "afile" | "taken.parquet"))
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
