//! CLIP packages whose image encoder takes raw uint8 pixels with the normalisation inside the
//! graph (tools/export/uint8_prefix.py): the same answers as the float package, 4x fewer bytes
//! per tile.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, venv_python};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every pixel of every band of a float raster.
fn read_all(path: &Path) -> Vec<f32> {
    let ds = gdal::Dataset::open(path).expect("open");
    let (w, h) = ds.raster_size();
    let mut all = Vec::new();
    for b in 1..=ds.raster_count() {
        let buf = ds
            .rasterband(b)
            .expect("band")
            .read_as::<f32>((0, 0), (w, h), (w, h), None)
            .expect("read");
        all.extend(buf.data().iter().copied());
    }
    all
}

/// Build the uint8 package of the bundled clip-tiny into `dir` (None without the venv).
fn uint8_package(dir: &Path) -> Option<PathBuf> {
    let py = venv_python()?;
    let out = dir.join("clip-tiny-u8");
    let o = Command::new(py)
        .arg(root().join("tools/export/uint8_prefix.py"))
        .arg(root().join("sample_data/models/clip-tiny"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run uint8_prefix.py");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Some(out)
}

#[test]
fn a_uint8_package_classifies_like_the_float_package() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let Some(u8_model) = uint8_package(d) else {
        return;
    };
    // The package is valid, and says so.
    let r = run(d, &["models", "check", &u8_model.display().to_string()]);
    r.success();
    let manifest = std::fs::read_to_string(u8_model.join("model.toml")).expect("manifest");
    assert!(manifest.contains("input_type = \"uint8\""));
    // Timed alone on byte batches.
    let b = run(
        d,
        &[
            "bench-model",
            &u8_model.display().to_string(),
            "--batch-size",
            "4",
            "--iterations",
            "2",
        ],
    )
    .success()
    .json();
    assert!(
        b["images_per_second"].as_f64().is_some_and(|v| v > 0.0),
        "{b}"
    );

    // An 8-bit scene (real Sentinel-2 bands scaled to bytes): both packages see exactly the
    // same byte values, so their answers agree to float rounding.
    let scene = d.join("scene8.tif");
    let st = Command::new("gdal_translate")
        .args([
            "-q", "-ot", "Byte", "-scale", "0", "3000", "0", "255", "-b", "1", "-b", "2", "-b", "3",
        ])
        .arg(root().join("sample_data/sentinel2_rgbn_10m.tif"))
        .arg(&scene)
        .status()
        .expect("gdal_translate");
    assert!(st.success());
    let float_model = root().join("sample_data/models/clip-tiny");
    let classify = |scene: &str, model: &Path, out: &str, scale: &str| {
        run(
            d,
            &[
                "classify",
                scene,
                "--model",
                &model.display().to_string(),
                "--labels",
                "forest,water,city,farmland",
                "--bands",
                "1,2,3",
                "--scale",
                scale,
                "--overlap",
                "16",
                "--out",
                out,
                "--no-cache",
                "--quiet",
                "--json",
            ],
        )
        .success()
        .json()
    };
    let f = classify("scene8.tif", &float_model, "f32", "auto");
    let u = classify("scene8.tif", &u8_model, "u8", "auto");
    assert_eq!(f["byte_tiles"], false);
    assert_eq!(
        u["byte_tiles"], true,
        "8-bit bands go to the uint8 model as read"
    );
    let (a, b) = (
        read_all(&d.join("f32/probabilities.tif")),
        read_all(&d.join("u8/probabilities.tif")),
    );
    assert_eq!(a.len(), b.len());
    assert!(a.len() >= 4 * 100, "{} probabilities", a.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "largest probability difference {worst}");
    assert_eq!(
        read_all(&d.join("f32/classes.tif")),
        read_all(&d.join("u8/classes.tif")),
        "same classes"
    );

    // A 16-bit scene with percentile scaling: float tiles quantised to bytes for the uint8
    // model (the float package sees the unquantised values): close, not equal.
    let scene16 = root().join("sample_data/sentinel2_rgbn_10m.tif");
    let scene16 = scene16.display().to_string();
    classify(&scene16, &float_model, "f32-16", "percentile:2,98");
    let u = classify(&scene16, &u8_model, "u8-16", "percentile:2,98");
    assert_eq!(u["byte_tiles"], false);
    let (a, b) = (
        read_all(&d.join("f32-16/probabilities.tif")),
        read_all(&d.join("u8-16/probabilities.tif")),
    );
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst > 0.0, "quantisation changes something");
    assert!(worst < 0.02, "largest probability difference {worst}");
}

#[test]
fn a_manifest_that_lies_about_the_input_type_is_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    // The float package with a manifest claiming uint8.
    let pkg = d.join("liar");
    common::copy_dir(&root().join("sample_data/models/clip-tiny"), &pkg);
    let m = std::fs::read_to_string(pkg.join("model.toml")).expect("read");
    std::fs::write(
        pkg.join("model.toml"),
        m.replacen("[image]\n", "[image]\ninput_type = \"uint8\"\n", 1),
    )
    .expect("write");
    let r = run(d, &["models", "check", "liar"]);
    assert_eq!(r.output.status.code(), Some(1), "{}", r.context());
    assert!(
        r.stdout()
            .contains("is float32, but the manifest says input_type = \"uint8\""),
        "{}",
        r.context()
    );
    // A value the manifest does not know.
    std::fs::write(
        pkg.join("model.toml"),
        m.replacen("[image]\n", "[image]\ninput_type = \"int4\"\n", 1),
    )
    .expect("write");
    run(
        d,
        &["classify", "x.tif", "--model", "liar", "--labels", "a,b"],
    )
    .fails_with(&["model.toml", "line 7", "unknown variant `int4`"]);
}
