//! report.html and index.html as a browser shows them: real runs on the bundled sample scene
//! with the tiny models, each page opened in headless Chromium (tests/python/browse_report.py,
//! DevTools protocol) which says whether every image decoded, what the legends list, what was
//! drawn, which requests the page made and where its links lead. References come from other
//! tools: the class raster's names and colour table from `gdalinfo -json`, class areas from
//! pyproj's geodesic areas of the label layer, feature counts from `ogrinfo`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, venv_python};
use serde_json::Value;

const SCENE: &str = "sample_data/sentinel2_rgbn_10m.tif";
/// One label with HTML's special characters: the page escapes it, the browser shows it back.
const LABELS: [&str; 4] = ["forest", "water", "farmland", "urban <area> & 'roads\""];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Chromium (`TESSERA_CHROMIUM`, else `chromium` on the PATH), installed by `make setup`.
fn chromium() -> Option<PathBuf> {
    let candidate = std::env::var_os("TESSERA_CHROMIUM")
        .map_or_else(|| PathBuf::from("chromium"), PathBuf::from);
    let ok = Command::new(&candidate)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(candidate);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "chromium is absent: `make setup` should have installed it"
    );
    eprintln!("skipping the browser checks: chromium is absent (run `make setup`)");
    None
}

/// What the browser shows of each page.
fn browse(chromium: &Path, pages: &[PathBuf]) -> Value {
    let out = Command::new("python3")
        .arg(root().join("tests/python/browse_report.py"))
        .arg(chromium)
        .args(pages)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "browse_report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["pages"].clone()
}

fn page<'a>(pages: &'a Value, path: &Path) -> &'a Value {
    &pages[path.to_str().expect("utf-8 path")]
}

/// Every image decoded, nothing fetched but the page itself (embedded `data:` images are no
/// requests over any network).
fn assert_self_contained(p: &Value, images: usize) {
    let imgs = p["images"].as_array().expect("images");
    assert_eq!(imgs.len(), images, "{p:#}");
    for i in imgs {
        assert_eq!(i["complete"], true, "{i}");
        assert!(
            i["natural_width"].as_u64().unwrap_or(0) > 0,
            "not decoded: {i}"
        );
        assert_eq!(i["scheme"], "data", "{i}");
    }
    let url = p["url"].as_str().expect("url");
    for r in p["requests"].as_array().expect("requests") {
        let r = r.as_str().expect("url");
        assert!(r == url || r.starts_with("data:"), "request to {r}");
    }
}

/// `gdalinfo -json`'s categories and colour table of a class raster.
fn raster_classes(raster: &Path) -> Vec<(String, String)> {
    let out = Command::new("gdalinfo")
        .arg("-json")
        .arg(raster)
        .output()
        .expect("gdalinfo");
    let info: Value = serde_json::from_slice(&out.stdout).expect("gdalinfo json");
    let band = &info["bands"][0];
    let names = band["categories"].as_array().expect("categories");
    let colors = band["colorTable"]["entries"].as_array().expect("colours");
    names
        .iter()
        .zip(colors)
        .map(|(n, c)| {
            let c: Vec<u64> = c
                .as_array()
                .expect("entry")
                .iter()
                .map(|v| v.as_u64().expect("u8"))
                .collect();
            (
                n.as_str().expect("name").to_string(),
                format!("rgb({}, {}, {})", c[0], c[1], c[2]),
            )
        })
        .collect()
}

fn legend(p: &Value, layer: &str) -> Vec<(String, String)> {
    p["legends"][layer]
        .as_array()
        .unwrap_or_else(|| panic!("no legend for {layer}: {p:#}"))
        .iter()
        .map(|l| {
            (
                l["name"].as_str().expect("name").to_string(),
                l["color"].as_str().expect("colour").to_string(),
            )
        })
        .collect()
}

fn feature_count(layer: &Path) -> u64 {
    let out = Command::new("ogrinfo")
        .args(["-so", "-al"])
        .arg(layer)
        .output()
        .expect("ogrinfo");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Feature Count: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("feature count")
}

#[test]
fn a_classify_report_shows_the_class_map_with_its_legend_and_geodesic_areas() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("classify");
    let labels = LABELS.join(",");
    let r = run(
        &root(),
        &[
            "classify",
            SCENE,
            "--model",
            "sample_data/models/clip-tiny",
            "--labels",
            &labels,
            "--bands",
            "1,2,3",
            "--target-gsd",
            "20",
            "--overlap",
            "16",
            "--out",
            out.to_str().expect("utf-8"),
            "--report",
            "--json",
            "-q",
        ],
    );
    r.success();
    let report = out.join("report.html");
    let outputs: Vec<String> = r.json()["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| o.as_str().expect("path").to_string())
        .collect();
    assert!(
        outputs.contains(&report.display().to_string()),
        "{outputs:?}"
    );
    // Nothing temporary left beside it.
    for e in std::fs::read_dir(&out).expect("ls").flatten() {
        assert!(
            !e.file_name().to_string_lossy().starts_with('.'),
            "{:?}",
            e.path()
        );
    }
    let Some(chromium) = chromium() else { return };
    let pages = browse(&chromium, std::slice::from_ref(&report));
    let p = page(&pages, &report);
    // The quicklook and the class map.
    assert_self_contained(p, 2);
    // The legend: exactly the raster's classes, in its colours.
    let classes = raster_classes(&out.join("classes.tif"));
    let names: Vec<&str> = classes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, LABELS);
    assert_eq!(legend(p, "classify"), classes);
    // Class areas against pyproj's geodesic areas of the label layer.
    let Some(py) = venv_python() else { return };
    let reference = Command::new(py)
        .arg(root().join("tests/python/report_reference.py"))
        .arg(out.join("labels.gpkg"))
        .output()
        .expect("python");
    assert!(
        reference.status.success(),
        "{}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let reference: Value = serde_json::from_slice(&reference.stdout).expect("json");
    let rows = p["areas"]["classify"].as_array().expect("area rows");
    let row_names: Vec<&str> = rows
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(row_names, LABELS);
    let total: f64 = reference["areas"]
        .as_object()
        .expect("areas")
        .values()
        .map(|v| v.as_f64().expect("m2"))
        .sum();
    let mut percent = 0.0;
    for row in rows {
        let name = row["name"].as_str().expect("name");
        let want = reference["areas"][name].as_f64().unwrap_or(0.0);
        let got = row["m2"].as_f64().expect("m2");
        // pyproj takes the edges as geodesics, tessera splits the CRS's straight edges first
        // (src/output/geodesic.rs): within 1e-5 here, where the UTM plane's area is 1e-3 off.
        assert!(
            (got - want).abs() <= 0.05 + want * 1e-5,
            "{name}: {got} vs {want}"
        );
        let pct = row["percent"].as_f64().expect("%");
        assert!(
            (pct - 100.0 * want / total).abs() <= 0.005 + 1e-9,
            "{name}: {pct} %"
        );
        percent += pct;
    }
    assert!((percent - 100.0).abs() < 0.05, "{percent}");
}

#[test]
fn a_caption_report_shows_every_tile_with_its_caption_and_the_scene_caption() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("caption");
    run(
        &root(),
        &[
            "caption",
            SCENE,
            "--model",
            "sample_data/models/blip2-tiny",
            "--bands",
            "1,2,3",
            "--target-gsd",
            "80",
            "--max-new-tokens",
            "4",
            "--out",
            out.to_str().expect("utf-8"),
            "--report",
            "-q",
        ],
    )
    .success();
    let Some(chromium) = chromium() else { return };
    let report = out.join("report.html");
    let pages = browse(&chromium, std::slice::from_ref(&report));
    let p = page(&pages, &report);
    let captions: Vec<Value> = std::fs::read_to_string(out.join("captions.jsonl"))
        .expect("captions")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(captions.len() > 1, "{captions:?}");
    // The quicklook and one chip per tile, each decoded, with its tile's caption.
    assert_self_contained(p, 1 + captions.len());
    let gallery = p["gallery"].as_array().expect("gallery");
    assert_eq!(gallery.len(), captions.len());
    for (chip, c) in gallery.iter().zip(&captions) {
        let id = c["tile_id"].as_str().expect("id");
        assert_eq!(chip["id"], id);
        let text = chip["text"].as_str().expect("text");
        let caption = c["caption"].as_str().expect("caption");
        assert_eq!(text, format!("{id} {caption}"));
    }
    // The scene caption, as the scene layer holds it.
    let scene = Command::new("ogrinfo")
        .args(["-al", "-q"])
        .arg(out.join("scene.gpkg"))
        .output()
        .expect("ogrinfo");
    let scene = String::from_utf8_lossy(&scene.stdout);
    let answer = p["answers"][0].as_str().expect("scene caption");
    assert!(
        scene.contains(&format!("caption (String) = {answer}")),
        "{answer:?} not in {scene}"
    );
}

#[test]
fn a_batch_writes_a_report_per_scene_and_an_index_with_every_status() {
    let tmp = tempfile::tempdir().expect("tmp");
    let models = root().join("sample_data/models");
    let pipeline = tmp.path().join("pipe.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name = "report test"
[input]
bands = [1, 2, 3]
scale = "percentile:2,98"
[tiling]
overlap = 16
target_gsd = 20
[[stage]]
name = "landcover"
task = "classify"
model = "{clip}"
labels = ["forest", "water", "farmland", "urban area"]
[[stage]]
name = "objects"
task = "detect"
model = "{owl}"
prompts = ["building", "vehicle"]
confidence = 0.1
"#,
            clip = models.join("clip-tiny").display(),
            owl = models.join("owlvit-tiny").display()
        ),
    )
    .expect("pipeline");
    let out = tmp.path().join("batch");
    let scene = root().join(SCENE);
    let absent = tmp.path().join("absent scene.tif");
    let r = run(
        tmp.path(),
        &[
            "run",
            pipeline.to_str().expect("utf-8"),
            scene.to_str().expect("utf-8"),
            absent.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
            "-q",
        ],
    );
    assert!(
        r.stderr().is_empty() || !r.stderr().contains("panic"),
        "{}",
        r.context()
    );
    let index = out.join("index.html");
    let report = out.join("sentinel2_rgbn_10m/report.html");
    assert!(index.is_file(), "{}", r.context());
    assert!(report.is_file(), "{}", r.context());
    let Some(chromium) = chromium() else { return };
    let pages = browse(&chromium, &[index.clone(), report.clone()]);
    let idx = page(&pages, &index);
    assert_self_contained(idx, 0);
    // Both scenes with their status; the failed one says why and links nothing.
    let rows = idx["rows"].as_array().expect("rows");
    let status: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().expect("name"),
                r["status"].as_str().expect("status"),
            )
        })
        .collect();
    assert_eq!(
        status,
        [("absent_scene", "failed"), ("sentinel2_rgbn_10m", "ok")]
    );
    assert!(rows[0]["error"]
        .as_str()
        .expect("error")
        .contains("absent scene.tif"));
    // The links resolve: to the scene's report, a file that exists.
    let links: Vec<&str> = idx["links"]
        .as_array()
        .expect("links")
        .iter()
        .map(|l| l.as_str().expect("href"))
        .collect();
    let report_url = format!("file://{}", report.display());
    assert_eq!(links, [report_url.as_str()]);

    let p = page(&pages, &report);
    // The quicklook and the landcover class map; the boxes are SVG.
    assert_self_contained(p, 2);
    assert_eq!(p["stages"], serde_json::json!(["landcover", "objects"]));
    let classes = raster_classes(&out.join("sentinel2_rgbn_10m/landcover/classes.tif"));
    assert_eq!(legend(p, "landcover"), classes);
    let objects: Vec<String> = legend(p, "objects").into_iter().map(|(n, _)| n).collect();
    assert_eq!(objects, ["building", "vehicle"]);
    // Every box of the layer drawn (up to the drawing limit).
    let boxes = feature_count(&out.join("sentinel2_rgbn_10m/objects/detections.gpkg"));
    assert_eq!(
        p["shapes"]["l-f1"].as_u64(),
        Some(boxes.min(2000)),
        "{:#}",
        p["shapes"]
    );

    // --no-report: neither.
    let quiet = tmp.path().join("quiet");
    run(
        tmp.path(),
        &[
            "run",
            pipeline.to_str().expect("utf-8"),
            absent.to_str().expect("utf-8"),
            "--out",
            quiet.to_str().expect("utf-8"),
            "--no-report",
            "-q",
        ],
    );
    assert!(quiet.is_dir());
    assert!(!quiet.join("index.html").exists());
}

#[test]
fn report_flags_are_refused_where_there_is_no_report_folder() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(
        &root(),
        &[
            "detect",
            SCENE,
            "--model",
            "sample_data/models/owlvit-tiny",
            "--prompts",
            "building",
            "--report",
        ],
    )
    .fails_with(&["--report needs --out"]);
    let out = tmp.path().join("t.gpkg");
    run(
        &root(),
        &[
            "tiles",
            SCENE,
            "--tile-size",
            "64",
            "--out",
            out.to_str().expect("utf-8"),
            "--report",
        ],
    )
    .fails_with(&["--report is for model commands"]);
    assert!(!out.exists());
}
