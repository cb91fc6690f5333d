//! A STAC Item for the bundled sample scene, written through the library API and validated
//! offline by tests/python/validate_stac.py (stac-validator + tests/stac-schemas/).

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use tessera::batch::stac::{asset_for, scene_item, ItemInput};
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
    input.source_href = Some(src.display().to_string());
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
