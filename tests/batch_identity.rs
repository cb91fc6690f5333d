//! What a batch writes does not depend on the folder it is run from: the same `tessera run`
//! with paths relative to two working folders gives the same `record.json` (but for the
//! fields that are times or memory by design) and the same `item.json`, and records name
//! models by package name and content hash, not by the path as typed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::run;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Times, durations, the host and peak memory: different at every run by design.
fn without_times(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "started"
                    || k == "finished"
                    || k == "host"
                    || k.contains("seconds")
                    || k == "peak_rss_bytes"
                {
                    *x = serde_json::Value::Null;
                } else {
                    without_times(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(without_times),
        _ => {}
    }
}

fn record(path: &Path) -> String {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("record.json")).expect("json");
    without_times(&mut v);
    serde_json::to_string_pretty(&v).expect("json")
}

#[test]
fn the_same_run_from_two_folders_writes_the_same_record_and_item() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir_all(d.join("elsewhere/deeper")).expect("mkdir");
    let status = Command::new("gdal_translate")
        .args(["-q", "-srcwin", "0", "0", "300", "300"])
        .arg(root().join("sample_data/sentinel2_rgbn_10m.tif"))
        .arg(d.join("scene.tif"))
        .status()
        .expect("gdal_translate (gdal-bin) runs");
    assert!(status.success());
    let oracles = root().join("sample_data/models/oracles");
    common::copy_dir(&oracles.join("seg-threshold"), &d.join("models/seg"));
    common::copy_dir(&oracles.join("det-grid-v8"), &d.join("models/det"));
    // Model paths relative to the pipeline file, as people write them.
    std::fs::write(
        d.join("p.toml"),
        "[input]\nbands = [1, 2, 3]\n\
         [[stage]]\nname = \"masks\"\ntask = \"segment\"\nmodel = \"models/seg\"\n\
         [[stage]]\nname = \"boxes\"\ntask = \"detect\"\nmodel = \"models/det\"\n\
         [output]\nformat = \"geojson\"\n",
    )
    .expect("pipeline");
    run(
        d,
        &["run", "p.toml", "scene.tif", "--out", "out", "--quiet"],
    )
    .success();
    std::fs::rename(d.join("out"), d.join("first")).expect("move");
    run(
        &d.join("elsewhere/deeper"),
        &[
            "run",
            "../../p.toml",
            "../../scene.tif",
            "--out",
            "../../out",
            "--quiet",
        ],
    )
    .success();
    let (a, b) = (d.join("first/scene"), d.join("out/scene"));
    let (ra, rb) = (
        record(&a.join("record.json")),
        record(&b.join("record.json")),
    );
    assert_eq!(ra, rb, "record.json differs between working folders");
    assert_eq!(
        std::fs::read(a.join("item.json")).expect("item"),
        std::fs::read(b.join("item.json")).expect("item"),
        "item.json differs between working folders"
    );
    // Models are named by package name and hash; no path as typed is left anywhere.
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("record.json")).expect("read")).expect("json");
    let models = rec["models"].as_array().expect("models");
    let names: Vec<&str> = models
        .iter()
        .map(|m| m["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["seg-threshold", "det-grid-v8"]);
    assert!(models
        .iter()
        .all(|m| m["hash"].as_str().is_some_and(|h| h.len() == 64) && m.get("path").is_none()));
    assert_eq!(rec["stages"]["masks"]["model"], "seg-threshold");
    assert_eq!(rec["stages"]["boxes"]["model"], "det-grid-v8");
    let text = std::fs::read_to_string(b.join("record.json")).expect("read");
    assert!(
        !text.contains("models/seg") && !text.contains("\"../"),
        "{text}"
    );
    // The record still makes a rerun from a third folder skip the scene.
    let again = run(
        &d.join("elsewhere"),
        &[
            "run",
            "../p.toml",
            "../scene.tif",
            "--out",
            "../out",
            "--json",
            "--quiet",
        ],
    );
    let j = again.success().json();
    assert_eq!(j["skipped"], 1, "{}", again.context());
}

#[test]
fn a_class_raster_names_the_model_package_not_its_path() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir_all(d.join("a/b")).expect("mkdir");
    let status = Command::new("gdal_translate")
        .args([
            "-q", "-srcwin", "0", "0", "200", "200", "-b", "1", "-b", "2", "-b", "3",
        ])
        .arg(root().join("sample_data/sentinel2_rgbn_10m.tif"))
        .arg(d.join("scene.tif"))
        .status()
        .expect("gdal_translate (gdal-bin) runs");
    assert!(status.success());
    common::copy_dir(&root().join("sample_data/models/clip-tiny"), &d.join("m"));
    let classify = |cwd: &Path, prefix: &str, out: &str| {
        let scene = format!("{prefix}scene.tif");
        let model = format!("{prefix}m");
        run(
            cwd,
            &[
                "classify",
                &scene,
                "--model",
                &model,
                "--labels",
                "water,forest",
                "--no-cache",
                "--out",
                out,
                "--quiet",
            ],
        )
        .success();
    };
    classify(d, "", "one");
    classify(&d.join("a/b"), "../../", "../../two");
    let read = |p: &str| std::fs::read(d.join(p).join("classes.tif")).expect("classes.tif");
    assert_eq!(
        read("one"),
        read("two"),
        "classes.tif differs between working folders"
    );
    let info = Command::new("gdalinfo")
        .arg(d.join("one/classes.tif"))
        .output()
        .expect("gdalinfo runs");
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("TESSERA_MODEL=clip-tiny-random"), "{text}");
}
