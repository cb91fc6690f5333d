//! `--co KEY=VALUE`: GDAL's COG creation options on every raster tessera writes (the streaming
//! writer of `segment`, GDAL's COG driver behind `classify`), as gdalinfo (Debian's GDAL) and
//! rio-cogeo (rasterio's own GDAL) see the files; the same key in a pipeline file; and bad
//! options refused in one line before anything is written.

mod common;

use std::path::Path;
use std::process::Command;

use common::{clip_tiny, run, walk};
use serde_json::Value;

fn oracle(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample_data/models/oracles")
        .join(name)
        .display()
        .to_string()
}

/// A 1 m RGB scene in UTM 33N: red discs on green.
fn paint(path: &Path, w: usize, h: usize) {
    let inside = |x: usize, y: usize| {
        let (dx, dy) = (x as f64 - 150.0, y as f64 - 120.0);
        dx * dx + dy * dy < 70.0 * 70.0 || (x > 380 && x < 520 && y > 200 && y < 330)
    };
    common::rgb_scene(path, (w, h), |x, y| {
        if inside(x, y) {
            [220, 40, 40]
        } else {
            [30, 120, 30]
        }
    });
}

/// `gdalinfo -json` of `path` (Debian's GDAL command line).
fn gdalinfo(path: &Path) -> Value {
    let out = Command::new("gdalinfo")
        .arg("-json")
        .arg(path)
        .output()
        .expect("gdalinfo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// rio-cogeo's verdict and rasterio's compression, block shape and IMAGE_STRUCTURE tags.
fn rio(path: &Path) -> Option<Value> {
    let py = common::venv_python()?;
    let script = r#"
import json, sys, rasterio
from rio_cogeo.cogeo import cog_validate
p = sys.argv[1]
valid, errors, warnings = cog_validate(p, quiet=True)
with rasterio.open(p) as src:
    src.read()
    print(json.dumps({"valid": bool(valid), "errors": errors,
        "compression": src.compression.name if src.compression else None,
        "blocks": [list(s) for s in src.block_shapes],
        "tags": src.tags(ns="IMAGE_STRUCTURE")}))
"#;
    let out = Command::new(py)
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("json"))
}

/// Compression, predictor and tile size of `path` as gdalinfo and rasterio report them.
fn assert_cog(path: &Path, compression: &str, predictor: Option<&str>, block: u64) {
    let info = gdalinfo(path);
    let structure = &info["metadata"]["IMAGE_STRUCTURE"];
    assert_eq!(
        structure["COMPRESSION"],
        compression,
        "{}: {info}",
        path.display()
    );
    assert_eq!(structure["LAYOUT"], "COG", "{}", path.display());
    assert_eq!(
        structure["PREDICTOR"].as_str(),
        predictor,
        "{}: {structure}",
        path.display()
    );
    for band in info["bands"].as_array().expect("bands") {
        assert_eq!(
            band["block"],
            serde_json::json!([block, block]),
            "{}",
            path.display()
        );
    }
    if let Some(r) = rio(path) {
        assert_eq!(r["valid"], true, "{}: {r}", path.display());
        assert_eq!(
            r["compression"]
                .as_str()
                .map(str::to_ascii_uppercase)
                .as_deref(),
            Some(compression),
            "{r}"
        );
        assert_eq!(r["blocks"][0], serde_json::json!([block, block]), "{r}");
    }
}

#[test]
fn segment_rasters_take_the_creation_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    paint(&d.join("scene.tif"), 600, 400);
    let model = oracle("seg-threshold");
    for (opts, compression, predictor, block) in [
        (
            vec![
                "COMPRESS=ZSTD",
                "LEVEL=15",
                "PREDICTOR=YES",
                "BLOCKSIZE=256",
            ],
            "ZSTD",
            Some("2"),
            256,
        ),
        (vec!["compress=lzw", "blocksize=128"], "LZW", None, 128),
        (vec!["COMPRESS=LZMA", "LEVEL=1"], "LZMA", None, 512),
    ] {
        let out = format!("out_{compression}");
        let mut args = vec![
            "segment",
            "scene.tif",
            "--model",
            &model,
            "--tile-size",
            "32",
            "--out",
            &out,
            "--quiet",
        ];
        for o in &opts {
            args.extend(["--co", o]);
        }
        run(d, &args).success();
        let classes = d.join(&out).join("classes.tif");
        assert_cog(&classes, compression, predictor, block);
        // Overviews exist down to one tile, at the tile size asked for.
        let info = gdalinfo(&classes);
        let overviews = info["bands"][0]["overviews"].as_array().map_or(0, Vec::len);
        let want = match block {
            128 => 3, // 300x200, 150x100 ... 600/2^k until <= 128
            256 => 2,
            _ => 1,
        };
        assert_eq!(overviews, want, "{compression}: {info}");
    }
}

#[test]
fn classify_rasters_and_pipeline_files_take_the_creation_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    paint(&d.join("scene.tif"), 96, 64);
    let model = clip_tiny().display().to_string();
    run(
        d,
        &[
            "classify",
            "scene.tif",
            "--model",
            &model,
            "--labels",
            "forest,water",
            "--no-cache",
            "--quiet",
            "--out",
            "c",
            "--co",
            "COMPRESS=ZSTD",
            "--co",
            "PREDICTOR=FLOATING_POINT",
            "--co",
            "BLOCKSIZE=128",
        ],
    )
    .success();
    // Floats get the floating-point predictor, the 8-bit class raster horizontal
    // differencing (the floating-point one is not defined for integers).
    assert_cog(&d.join("c/probabilities.tif"), "ZSTD", Some("3"), 128);
    assert_cog(&d.join("c/classes.tif"), "ZSTD", Some("2"), 128);
    // The same key in a pipeline file's [output].
    std::fs::write(
        d.join("p.toml"),
        format!(
            "[output]\nco = [\"COMPRESS=LZW\", \"BLOCKSIZE=256\"]\n\n[[stage]]\ntask = \"segment\"\nmodel = \"{model}\"\n\n[tiling]\ntile_size = 32\n",
            model = oracle("seg-threshold")
        ),
    )
    .expect("write");
    paint(&d.join("big.tif"), 600, 400);
    run(d, &["run", "p.toml", "big.tif", "--out", "r", "--quiet"]).success();
    let classes: Vec<_> = walk(&d.join("r"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "classes.tif"))
        .collect();
    assert_eq!(classes.len(), 1, "{classes:?}");
    assert_cog(&classes[0], "LZW", None, 256);
}

/// Every bad option: one line naming `--co` and the item, exit 1, no output folder; in a
/// pipeline file, the key `co`.
#[test]
fn bad_creation_options_fail_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    paint(&d.join("scene.tif"), 64, 64);
    let model = oracle("seg-threshold");
    for (items, says) in [
        (vec!["COMPRESS"], "expected KEY=VALUE"),
        (
            vec!["TILED=YES"],
            "TILED is not a creation option of GDAL's COG driver",
        ),
        (vec!["NUM_THREADS=4"], "tessera does not take"),
        (
            vec!["COMPRESS=PACKBITS"],
            "not one of GDAL's COMPRESS values",
        ),
        (vec!["COMPRESS=JPEG"], "lossy"),
        (vec!["COMPRESS=WEBP"], "lossy"),
        (vec!["COMPRESS=LERC_ZSTD"], "not written by tessera"),
        (
            vec!["COMPRESS=ZSTD", "LEVEL=23"],
            "ZSTD levels go from 1 to 22, got 23",
        ),
        (vec!["LEVEL=0"], "DEFLATE levels go from 1 to 12, got 0"),
        (
            vec!["COMPRESS=LZW", "LEVEL=5"],
            "LEVEL applies to DEFLATE, ZSTD and LZMA",
        ),
        (vec!["LEVEL=fast"], "must be an integer"),
        (vec!["PREDICTOR=4"], "not one of GDAL's PREDICTOR values"),
        (vec!["COMPRESS=NONE", "PREDICTOR=2"], "needs a compression"),
        (vec!["BLOCKSIZE=200"], "multiple of 16"),
        (vec!["BLOCKSIZE=64"], "128 (GDAL's minimum)"),
        (vec!["BLOCKSIZE=8192"], "to 4096"),
        (vec!["OVERVIEW_RESAMPLING=CUBIC"], "NEAREST and AVERAGE"),
        (
            vec!["OVERVIEW_RESAMPLING=SHARP"],
            "not a GDAL overview resampling",
        ),
        (vec!["COMPRESS=ZSTD", "COMPRESS=LZW"], "given twice"),
    ] {
        let mut args = vec!["segment", "scene.tif", "--model", &model, "--out", "o"];
        for i in &items {
            args.extend(["--co", i]);
        }
        let last = items.last().copied().unwrap_or_default();
        run(d, &args).fails_with(&["--co", last, says]);
        assert!(!d.join("o").exists(), "{items:?} left an output");
    }
    std::fs::write(
        d.join("p.toml"),
        format!(
            "[output]\nco = [\"COMPRESS=JPEG\"]\n\n[[stage]]\ntask = \"segment\"\nmodel = \"{model}\"\n"
        ),
    )
    .expect("write");
    run(d, &["run", "p.toml", "scene.tif", "--out", "r"]).fails_with(&[
        "p.toml",
        "co COMPRESS=JPEG",
        "lossy",
    ]);
    assert!(!d.join("r").exists());
    assert!(walk(d)
        .iter()
        .all(|p| !p.to_string_lossy().contains(".tessera-tmp-")));
}

/// `(value, colour, label)` of every palette entry of a QGIS `.qml`.
fn qml_palette(path: &Path) -> Vec<(u64, String, String)> {
    let text = std::fs::read_to_string(path).expect("qml");
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(&text, opts).expect("qml parses");
    doc.descendants()
        .filter(|n| n.has_tag_name("paletteEntry"))
        .map(|n| {
            (
                n.attribute("value").expect("value").parse().expect("int"),
                n.attribute("color").expect("color").to_string(),
                n.attribute("label").expect("label").to_string(),
            )
        })
        .collect()
}

/// `classes.tif` copied alone (no `.aux.xml`, no `.qml`) still says which classes it holds:
/// their names and colours as band metadata inside the TIFF, the same colours in its colour
/// map (256 entries: 3 x 2^8 by the TIFF format) and in the QGIS style; beside its `.aux.xml`
/// GDAL also gives the category names. For segment's streaming writer and classify's GDAL one;
/// names from the model package and from `--labels`, read by gdalinfo and rasterio.
#[test]
fn class_rasters_carry_their_classes_inside_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    paint(&d.join("scene.tif"), 96, 64);
    run(
        d,
        &[
            "segment",
            "scene.tif",
            "--model",
            &oracle("seg-threshold"),
            "--tile-size",
            "32",
            "--out",
            "seg",
            "--quiet",
        ],
    )
    .success();
    run(
        d,
        &[
            "classify",
            "scene.tif",
            "--model",
            &clip_tiny().display().to_string(),
            "--labels",
            "forest,water,fields",
            "--no-cache",
            "--quiet",
            "--out",
            "cls",
        ],
    )
    .success();
    for (out, names) in [
        ("seg", vec!["background", "object"]),
        ("cls", vec!["forest", "water", "fields"]),
    ] {
        let classes = d.join(out).join("classes.tif");
        // Beside its .aux.xml: GDAL's category names.
        let info = gdalinfo(&classes);
        assert_eq!(
            info["bands"][0]["categories"],
            serde_json::json!(names),
            "{out}: {info}"
        );
        let alone = d.join(format!("alone_{out}"));
        std::fs::create_dir(&alone).expect("mkdir");
        std::fs::copy(&classes, alone.join("classes.tif")).expect("copy");
        let info = gdalinfo(&alone.join("classes.tif"));
        let band = &info["bands"][0];
        let meta = &band["metadata"][""];
        assert_eq!(
            meta["CLASS_COUNT"],
            names.len().to_string(),
            "{out}: {band}"
        );
        let entries = band["colorTable"]["entries"]
            .as_array()
            .expect("colour table");
        assert_eq!(entries.len(), 256, "{out}");
        let palette = qml_palette(&d.join(out).join("classes.qml"));
        assert_eq!(palette.len(), names.len(), "{out}: {palette:?}");
        for (i, name) in names.iter().enumerate() {
            assert_eq!(meta[format!("CLASS_{i}")], *name, "{out}: {band}");
            let color = meta[format!("CLASS_{i}_COLOR")].as_str().expect("colour");
            let hex: Vec<u64> = (0..3)
                .map(|k| u64::from_str_radix(&color[1 + 2 * k..3 + 2 * k], 16).expect("hex"))
                .collect();
            let entry: Vec<u64> = entries[i].as_array().expect("entry")[..3]
                .iter()
                .map(|v| v.as_u64().expect("n"))
                .collect();
            assert_eq!(entry, hex, "{out}: class {i}");
            assert_eq!(
                palette[i],
                (i as u64, color.to_string(), name.to_string()),
                "{out}"
            );
        }
        if let Some(py) = common::venv_python() {
            let script = "import json, sys, rasterio\nwith rasterio.open(sys.argv[1]) as s:\n    print(json.dumps({'tags': s.tags(1), 'cmap': [list(s.colormap(1)[i]) for i in range(4)]}))";
            let out_py = Command::new(py)
                .args(["-c", script])
                .arg(alone.join("classes.tif"))
                .output()
                .expect("python");
            assert!(
                out_py.status.success(),
                "{}",
                String::from_utf8_lossy(&out_py.stderr)
            );
            let r: Value = serde_json::from_slice(&out_py.stdout).expect("json");
            for (i, name) in names.iter().enumerate() {
                assert_eq!(r["tags"][format!("CLASS_{i}")], *name, "{r}");
                let cmap = r["cmap"][i].as_array().expect("cmap");
                assert_eq!(cmap[..3], entries[i].as_array().expect("e")[..3], "{r}");
            }
        }
    }
}
