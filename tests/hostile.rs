//! Hostile inputs, one table per class of defect: headers that claim huge sizes, special
//! files, grids too large to plan, raw VRT bands, symlink loops, ingestion keys and names,
//! files still growing, and scenes that fail inside a batch. Every input is generated here
//! (a few hundred bytes of TIFF written byte by byte, VRT text, FIFOs, links); every run of the
//! binary happens under an address-space limit, so a regression fails the test instead of
//! exhausting the machine.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::limited::{assert_refused, leftovers, run_limited_env};
use common::{crop, Run};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sample() -> String {
    root()
        .join("sample_data/sentinel2_rgbn_10m.tif")
        .display()
        .to_string()
}

fn oracle(name: &str) -> String {
    root()
        .join("sample_data/models/oracles")
        .join(name)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------------------
// TIFF bytes written by hand.

/// What a hand-written TIFF header claims.
#[derive(Clone, Copy, Debug)]
struct Tiff {
    width: u32,
    height: u32,
    bands: u16,
    /// 1 raw, 8 deflate.
    compression: u16,
    /// `Some(size)`: one square tile of this size; `None`: one strip of the whole height.
    tile: Option<u32>,
    georef: bool,
}

impl Tiff {
    /// The file: header, one IFD, out-of-line values, a few bytes of pixel data.
    fn bytes(&self) -> Vec<u8> {
        // A zlib stream of 16 zero bytes (one stored block).
        let mut zlib = vec![0x78, 0x01, 0x01, 0x10, 0x00, 0xef, 0xff];
        zlib.extend([0u8; 16]);
        zlib.extend([0x00, 0x10, 0x00, 0x01]);
        let data = if self.compression == 8 {
            zlib
        } else {
            vec![0u8; 16]
        };
        enum V {
            Short(Vec<u16>),
            Long(Vec<u32>),
            Double(Vec<f64>),
        }
        let mut tags: Vec<(u16, V)> = vec![
            (256, V::Long(vec![self.width])),
            (257, V::Long(vec![self.height])),
            (258, V::Short(vec![8; usize::from(self.bands)])),
            (259, V::Short(vec![self.compression])),
            (262, V::Short(vec![1])),
            (277, V::Short(vec![self.bands])),
            (284, V::Short(vec![1])),
        ];
        // Offsets of the pixel data are patched in once the layout is known.
        match self.tile {
            None => {
                tags.push((273, V::Long(vec![0])));
                tags.push((278, V::Long(vec![self.height])));
                tags.push((279, V::Long(vec![data.len() as u32])));
            }
            Some(t) => {
                tags.push((322, V::Long(vec![t])));
                tags.push((323, V::Long(vec![t])));
                tags.push((324, V::Long(vec![0])));
                tags.push((325, V::Long(vec![data.len() as u32])));
            }
        }
        if self.georef {
            tags.push((33550, V::Double(vec![10.0, 10.0, 0.0])));
            tags.push((
                33922,
                V::Double(vec![0.0, 0.0, 0.0, 500_000.0, 4_600_000.0, 0.0]),
            ));
            tags.push((
                34735,
                V::Short(vec![
                    1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633,
                ]),
            ));
        }
        tags.sort_by_key(|t| t.0);
        let ifd_len = 2 + 12 * tags.len() + 4;
        let mut extra: Vec<u8> = Vec::new();
        let extra_start = 8 + ifd_len;
        let mut entries: Vec<u8> = Vec::new();
        let mut data_slot = None;
        for (tag, v) in &tags {
            let (ty, count, raw): (u16, usize, Vec<u8>) = match v {
                V::Short(s) => (3, s.len(), s.iter().flat_map(|x| x.to_le_bytes()).collect()),
                V::Long(l) => (4, l.len(), l.iter().flat_map(|x| x.to_le_bytes()).collect()),
                V::Double(d) => (
                    12,
                    d.len(),
                    d.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
            };
            entries.extend(tag.to_le_bytes());
            entries.extend(ty.to_le_bytes());
            entries.extend((count as u32).to_le_bytes());
            if raw.len() <= 4 {
                if *tag == 273 || *tag == 324 {
                    data_slot = Some(entries.len());
                }
                let mut r = raw.clone();
                r.resize(4, 0);
                entries.extend(r);
            } else {
                let at = (extra_start + extra.len()) as u32;
                entries.extend(at.to_le_bytes());
                extra.extend(raw);
                if extra.len() % 2 == 1 {
                    extra.push(0);
                }
            }
        }
        let data_at = (extra_start + extra.len()) as u32;
        if let Some(slot) = data_slot {
            entries[slot..slot + 4].copy_from_slice(&data_at.to_le_bytes());
        }
        let mut out = b"II".to_vec();
        out.extend(42u16.to_le_bytes());
        out.extend(8u32.to_le_bytes());
        out.extend((tags.len() as u16).to_le_bytes());
        out.extend(entries);
        out.extend(0u32.to_le_bytes());
        out.extend(extra);
        out.extend(data);
        out
    }
}

const HUGE: u32 = 1_000_000;

// ---------------------------------------------------------------------------------------
// 1. Header sizes never size an allocation unchecked.

#[test]
fn headers_claiming_huge_blocks_or_band_counts_are_refused_with_the_numbers() {
    let seg = oracle("seg-threshold");
    let huge_strip = |compression| Tiff {
        width: HUGE,
        height: HUGE,
        bands: 1,
        compression,
        tile: None,
        georef: true,
    };
    let huge_tile = |compression| Tiff {
        tile: Some(HUGE),
        ..huge_strip(compression)
    };
    let many_bands = Tiff {
        width: 1,
        height: 1,
        bands: 65535,
        compression: 1,
        tile: None,
        georef: true,
    };
    let cases: Vec<(&str, Tiff, Vec<&str>, Vec<&str>)> = vec![
        (
            "strip-deflate",
            huge_strip(8),
            vec![
                "segment",
                "IN",
                "--model",
                &seg,
                "--out",
                "o.tif",
                "--tile-size",
                "1024",
            ],
            vec!["memory budget", "TESSERA_MEMORY_BUDGET"],
        ),
        (
            "strip-raw",
            huge_strip(1),
            vec![
                "segment",
                "IN",
                "--model",
                &seg,
                "--out",
                "o.tif",
                "--tile-size",
                "1024",
            ],
            vec![],
        ),
        (
            "tile-deflate",
            huge_tile(8),
            vec![
                "segment",
                "IN",
                "--model",
                &seg,
                "--out",
                "o.tif",
                "--tile-size",
                "1024",
            ],
            vec!["memory budget", "TESSERA_MEMORY_BUDGET"],
        ),
        (
            "tile-raw",
            huge_tile(1),
            vec!["tiles", "IN", "--tile-size", "1024", "--chips", "chips"],
            vec!["memory budget"],
        ),
        (
            "bands",
            many_bands,
            vec!["tiles", "IN", "--tile-size", "256", "--chips", "chips"],
            vec!["memory budget", "65535 band"],
        ),
    ];
    for (name, tiff, args, needles) in cases {
        let dir = tempfile::tempdir().expect("tmp");
        let file = format!("{name}.tif");
        let bytes = tiff.bytes();
        assert!(
            bytes.len() < 200_000,
            "{name}: {} bytes of header",
            bytes.len()
        );
        std::fs::write(dir.path().join(&file), bytes).expect("write");
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "IN" { file.as_str() } else { a })
            .collect();
        let r = run_limited_env(dir.path(), &args, &[]);
        let mut all = vec![file.as_str()];
        all.extend(needles);
        assert_refused(&r, 1, &all);
        assert!(!dir.path().join("o.tif").exists(), "{name}");
        assert!(!dir.path().join("chips").exists(), "{name}");
    }
}

/// A classification pipeline over the bundled CLIP model (fast: 64 px tiles).
fn land_cover(dir: &Path) -> String {
    let p = dir.join("land-cover.toml");
    let model = root().join("sample_data/models/clip-tiny");
    std::fs::write(
        &p,
        format!(
            "[input]\nbands = [1, 2, 3]\nscale = \"percentile:2,98\"\n[tiling]\ntarget_gsd = 20.0\nthreads = 1\n\
             [[stage]]\nname = \"landcover\"\ntask = \"classify\"\nmodel = \"{}\"\nlabels = [\"forest\", \"water\", \"city\"]\n",
            model.display()
        ),
    )
    .expect("write pipeline");
    p.display().to_string()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.display().to_string()).expect("path");
    // SAFETY: a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// The warning lines of a run's stderr.
fn warnings(r: &Run) -> Vec<String> {
    r.stderr()
        .lines()
        .filter(|l| l.starts_with("tessera: warning: "))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------
// 4. Special files are refused before GDAL opens them, and skipped in folder scans.

#[test]
fn fifos_are_refused_by_every_command_and_skipped_in_folders() {
    let seg = oracle("seg-threshold");
    let cases: Vec<Vec<&str>> = vec![
        vec!["info", "pipe.tif"],
        vec!["segment", "pipe.tif", "--model", &seg, "--out", "o.tif"],
        vec!["tiles", "pipe.tif", "--tile-size", "64", "--chips", "chips"],
    ];
    for args in cases {
        let dir = tempfile::tempdir().expect("tmp");
        mkfifo(&dir.path().join("pipe.tif"));
        let r = run_limited_env(dir.path(), &args, &[]);
        assert_refused(&r, 1, &["pipe.tif", "FIFO", "not a regular file"]);
        assert!(!dir.path().join("o.tif").exists());
        assert!(!dir.path().join("chips").exists());
    }

    // A folder with a FIFO among scenes: `run` and `ingest` warn, skip it and do the rest;
    // named explicitly it is a failed scene (exit 3), the others still done.
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir(d.join("in")).expect("mkdir");
    crop(&d.join("in/good.tif"), 0, 0, 128);
    mkfifo(&d.join("in/pipe.tif"));
    let p = land_cover(d);
    let table: Vec<(Vec<&str>, i32)> = vec![
        (
            vec!["run", &p, "in", "--out", "out1", "--json", "--quiet"],
            0,
        ),
        (
            vec![
                "ingest",
                "in",
                "--pipeline",
                &p,
                "--out",
                "out2",
                "--settle",
                "0",
                "--json",
                "--quiet",
            ],
            0,
        ),
        (
            vec![
                "run",
                &p,
                "in/good.tif",
                "in/pipe.tif",
                "--out",
                "out3",
                "--json",
                "--quiet",
            ],
            3,
        ),
    ];
    // A VRT taking its pixels from a FIFO: refused before GDAL opens the source.
    let dir = tempfile::tempdir().expect("tmp");
    mkfifo(&dir.path().join("pipe.tif"));
    std::fs::write(dir.path().join("wrap.vrt"), wrapping_vrt("pipe.tif")).expect("write");
    let r = run_limited_env(
        dir.path(),
        &["tiles", "wrap.vrt", "--tile-size", "32", "--chips", "chips"],
        &[],
    );
    assert_refused(&r, 1, &["wrap.vrt", "pipe.tif", "FIFO"]);

    // A list of scenes that is a FIFO: refused, not read.
    mkfifo(&d.join("list.txt"));
    let r = run_limited_env(d, &["run", &p, "@list.txt", "--out", "out0"], &[]);
    assert_refused(&r, 1, &["list.txt", "FIFO"]);
    for (args, code) in table {
        let r = run_limited_env(d, &args, &[]);
        assert_eq!(r.output.status.code(), Some(code), "{}", r.context());
        let out = r.stdout();
        assert!(out.contains("good"), "{}", r.context());
        if code == 0 {
            let w = warnings(&r);
            assert_eq!(w.len(), 1, "one warning{}", r.context());
            assert!(w[0].contains("pipe.tif") && w[0].contains("FIFO"), "{w:?}");
        } else {
            let j = r.json();
            let failed: Vec<&serde_json::Value> = j["scenes"]
                .as_array()
                .expect("scenes")
                .iter()
                .filter(|s| s["status"] == "failed")
                .collect();
            assert_eq!(failed.len(), 1, "{j}");
            assert!(failed[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("pipe.tif") && e.contains("FIFO")));
        }
        assert!(leftovers(d).is_empty(), "{}", r.context());
    }
}

/// A VRT of `w` x `h` pixels with no sources (reads as zeros), georeferenced, a few hundred
/// bytes.
fn empty_vrt(w: u64, h: u64) -> String {
    format!(
        r#"<VRTDataset rasterXSize="{w}" rasterYSize="{h}">
  <SRS>EPSG:32633</SRS>
  <GeoTransform>500000, 10, 0, 4600000, 0, -10</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1"/>
</VRTDataset>
"#
    )
}

// ---------------------------------------------------------------------------------------
// 5. Grids beyond the tile limit are refused when they are laid out, before any work.

#[test]
fn grids_beyond_the_tile_limit_are_refused_before_any_work() {
    let seg = oracle("seg-threshold");
    let sample = sample();
    let strip_raw = Tiff {
        width: HUGE,
        height: HUGE,
        bands: 1,
        compression: 1,
        tile: None,
        georef: true,
    };
    // (input file written here or the sample, args, env, needles)
    type Case<'a> = (
        Option<(&'a str, Vec<u8>)>,
        Vec<&'a str>,
        Vec<(&'a str, &'a str)>,
        Vec<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            Some(("huge.vrt", empty_vrt(1_000_000, 1_000_000).into_bytes())),
            vec!["tiles", "huge.vrt", "--tile-size", "256", "--out", "t.gpkg"],
            vec![],
            vec![
                "huge.vrt",
                "15264649 tiles",
                "10000000",
                "TESSERA_MAX_TILES",
            ],
        ),
        (
            Some(("huge.vrt", empty_vrt(1_000_000, 1_000_000).into_bytes())),
            vec![
                "segment",
                "huge.vrt",
                "--model",
                &seg,
                "--out",
                "o.tif",
                "--tile-size",
                "128",
            ],
            vec![],
            vec!["huge.vrt", "TESSERA_MAX_TILES"],
        ),
        (
            Some(("strip.tif", strip_raw.bytes())),
            vec![
                "tiles",
                "strip.tif",
                "--tile-size",
                "256",
                "--out",
                "t.gpkg",
            ],
            vec![],
            vec!["strip.tif", "TESSERA_MAX_TILES"],
        ),
        (
            None,
            vec![
                "tiles",
                &sample,
                "--tile-size",
                "256",
                "--target-gsd",
                "0.001",
                "--out",
                "t.gpkg",
            ],
            vec![],
            vec![
                "sentinel2_rgbn_10m.tif",
                "TESSERA_MAX_TILES",
                "more than the limit",
            ],
        ),
        (
            None,
            vec!["tiles", &sample, "--tile-size", "32", "--out", "t.gpkg"],
            vec![("TESSERA_MAX_TILES", "100")],
            vec!["sentinel2_rgbn_10m.tif", "400 tiles", "limit of 100"],
        ),
    ];
    for (input, args, env, needles) in cases {
        let dir = tempfile::tempdir().expect("tmp");
        if let Some((name, bytes)) = &input {
            std::fs::write(dir.path().join(name), bytes).expect("write");
        }
        let start = std::time::Instant::now();
        let r = run_limited_env(dir.path(), &args, &env);
        assert_refused(&r, 1, &needles);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "refused at once{}",
            r.context()
        );
        assert!(!dir.path().join("t.gpkg").exists(), "{}", r.context());
        assert!(!dir.path().join("o.tif").exists(), "{}", r.context());
    }
    // The limit raised: the same grid is allowed.
    let dir = tempfile::tempdir().expect("tmp");
    let r = run_limited_env(
        dir.path(),
        &["tiles", &sample, "--tile-size", "32", "--out", "t.gpkg"],
        &[("TESSERA_MAX_TILES", "400")],
    );
    assert_eq!(r.output.status.code(), Some(0), "{}", r.context());
    assert!(dir.path().join("t.gpkg").exists());
}

// ---------------------------------------------------------------------------------------
// 10. Raw VRT bands (any local file read as pixels) are off unless the user opts in.

/// A 64 x 64 VRT whose raw band reads `target` (relative to the VRT).
fn raw_vrt(target: &str) -> String {
    format!(
        r#"<VRTDataset rasterXSize="64" rasterYSize="64">
  <SRS>EPSG:32633</SRS>
  <GeoTransform>500000, 10, 0, 4600000, 0, -10</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">
    <SourceFilename relativetoVRT="1">{target}</SourceFilename>
    <ImageOffset>0</ImageOffset>
    <PixelOffset>1</PixelOffset>
    <LineOffset>64</LineOffset>
  </VRTRasterBand>
</VRTDataset>
"#
    )
}

/// A VRT taking its band from `source` (relative), as a simple source.
fn wrapping_vrt(source: &str) -> String {
    format!(
        r#"<VRTDataset rasterXSize="64" rasterYSize="64">
  <SRS>EPSG:32633</SRS>
  <GeoTransform>500000, 10, 0, 4600000, 0, -10</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1">
    <SimpleSource>
      <SourceFilename relativeToVRT="1">{source}</SourceFilename>
      <SourceBand>1</SourceBand>
    </SimpleSource>
  </VRTRasterBand>
</VRTDataset>
"#
    )
}

const SECRET: u8 = 0x5a;

fn secret_folder(d: &Path) {
    std::fs::write(d.join("secret.bin"), vec![SECRET; 64 * 64]).expect("write");
    std::fs::write(d.join("raw.vrt"), raw_vrt("secret.bin")).expect("write");
    std::fs::write(d.join("outer.vrt"), wrapping_vrt("raw.vrt")).expect("write");
}

#[test]
fn raw_vrt_bands_are_refused_unless_the_user_opts_in() {
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("raw.vrt", vec!["info", "raw.vrt"]),
        (
            "raw.vrt",
            vec!["tiles", "raw.vrt", "--tile-size", "32", "--chips", "chips"],
        ),
        (
            "outer.vrt",
            vec![
                "tiles",
                "outer.vrt",
                "--tile-size",
                "32",
                "--chips",
                "chips",
            ],
        ),
    ];
    for (file, args) in cases {
        let dir = tempfile::tempdir().expect("tmp");
        secret_folder(dir.path());
        let r = run_limited_env(dir.path(), &args, &[]);
        assert_refused(
            &r,
            1,
            &[
                file,
                "VRTRawRasterBand",
                "GDAL_VRT_ENABLE_RAWRASTERBAND=YES",
            ],
        );
        assert!(!dir.path().join("chips").exists());
    }

    // `run` over a folder: the raw VRTs fail, the good scene is done, and no output holds the
    // secret bytes.
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir(d.join("in")).expect("mkdir");
    secret_folder(&d.join("in"));
    crop(&d.join("in/good.tif"), 0, 0, 128);
    let p = land_cover(d);
    let r = run_limited_env(
        d,
        &["run", &p, "in", "--out", "out", "--json", "--quiet"],
        &[],
    );
    assert_eq!(r.output.status.code(), Some(3), "{}", r.context());
    let j = r.json();
    let by_name = |n: &str| {
        j["scenes"]
            .as_array()
            .expect("scenes")
            .iter()
            .find(|s| s["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} in {j}"))
    };
    assert_eq!(by_name("good")["status"], "done", "{j}");
    for n in ["raw", "outer"] {
        let s = by_name(n);
        assert_eq!(s["status"], "failed", "{s}");
        assert!(s["error"]
            .as_str()
            .is_some_and(|e| e.contains("VRTRawRasterBand")));
    }
    assert!(!d.join("out/raw").exists() && !d.join("out/outer").exists());
    assert!(leftovers(d).is_empty(), "{}", r.context());

    // Opted in: the raw band is read (so the refusal above is what kept the bytes out).
    let dir = tempfile::tempdir().expect("tmp");
    secret_folder(dir.path());
    let r = run_limited_env(
        dir.path(),
        &["tiles", "raw.vrt", "--tile-size", "32", "--chips", "chips"],
        &[("GDAL_VRT_ENABLE_RAWRASTERBAND", "YES")],
    );
    assert_eq!(r.output.status.code(), Some(0), "{}", r.context());
    let chip = gdal::Dataset::open(dir.path().join("chips/r0000c0000.tif")).expect("chip");
    let v = chip
        .rasterband(1)
        .expect("band")
        .read_as::<u8>((0, 0), (32, 32), (32, 32), None)
        .expect("read");
    assert!(v.data().iter().all(|&b| b == SECRET));
}

// ---------------------------------------------------------------------------------------
// 8. Folder scans visit every directory once and never follow a link up or to `/`.

#[test]
fn folder_scans_survive_link_loops_and_links_to_the_root() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir_all(d.join("in/sub")).expect("mkdir");
    crop(&d.join("in/sub/good.tif"), 0, 0, 128);
    symlink("..", d.join("in/sub/up")).expect("link");
    symlink("/", d.join("in/root")).expect("link");
    symlink("sub", d.join("in/again")).expect("link");
    symlink(d.join("in"), d.join("in/sub/self")).expect("link");
    let p = land_cover(d);
    let table: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", &p, "in", "--out", "out1", "--json", "--quiet"],
            "scenes",
        ),
        (
            vec![
                "ingest",
                "in",
                "--pipeline",
                &p,
                "--out",
                "out2",
                "--settle",
                "0",
                "--json",
                "--quiet",
            ],
            "processed",
        ),
    ];
    for (args, key) in table {
        let r = run_limited_env(d, &args, &[]);
        assert_eq!(r.output.status.code(), Some(0), "{}", r.context());
        let j = r.json();
        let scenes = j[key].as_array().expect("scenes");
        assert_eq!(scenes.len(), 1, "one file, one scene: {j}");
        // Reached by its real path, not through the `again` link.
        assert_eq!(
            scenes[0]["name"].as_str().map(|n| n.contains("again")),
            Some(false),
            "{j}"
        );
        let w = warnings(&r);
        // `up`, `root` and `self` lead to the scan's own folder or above it.
        assert_eq!(w.len(), 3, "{w:?}{}", r.context());
        for name in ["up", "root", "self"] {
            assert!(
                w.iter()
                    .any(|l| l.contains(&format!("/{name}:")) && l.contains("not followed")),
                "{name}: {w:?}"
            );
        }
    }
}

/// `tessera ingest DIR` into `out` with settle 0, JSON report.
fn ingest(d: &Path, dir: &str, p: &str, out: &str, settle: &str) -> Run {
    run_limited_env(
        d,
        &[
            "ingest",
            dir,
            "--pipeline",
            p,
            "--out",
            out,
            "--settle",
            settle,
            "--retry-after",
            "0",
            "--json",
            "--quiet",
        ],
        &[],
    )
}

fn processed(r: &Run) -> Vec<serde_json::Value> {
    r.json()["processed"]
        .as_array()
        .unwrap_or_else(|| panic!("processed{}", r.context()))
        .clone()
}

fn state_rows(d: &Path, out: &str) -> Vec<serde_json::Value> {
    let r = run_limited_env(d, &["ingest", "--status", "--out", out, "--json"], &[]);
    assert_eq!(r.output.status.code(), Some(0), "{}", r.context());
    r.json()["scenes"].as_array().expect("scenes").clone()
}

// ---------------------------------------------------------------------------------------
// 6. Ingestion keys scenes by canonical path: however the folder is typed, whatever links.

#[test]
fn ingestion_keys_scenes_by_canonical_path() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir(d.join("in")).expect("mkdir");
    crop(&d.join("in/good.tif"), 0, 0, 128);
    // A link to a file is the file it points to.
    symlink("good.tif", d.join("in/alias.tif")).expect("link");
    symlink("in", d.join("linked")).expect("link");
    let p = land_cover(d);
    let r = ingest(d, "in", &p, "out", "0");
    assert_eq!(r.output.status.code(), Some(0), "{}", r.context());
    assert_eq!(processed(&r).len(), 1, "{}", r.context());
    let abs = d.join("in").display().to_string();
    let abs_slash = format!("{abs}/");
    let typed = ["./in", "in/", &abs, &abs_slash, "linked", "./linked/"];
    for t in typed {
        let r = ingest(d, t, &p, "out", "0");
        assert_eq!(r.output.status.code(), Some(0), "{t}{}", r.context());
        assert_eq!(
            processed(&r).len(),
            0,
            "{t}: processed again{}",
            r.context()
        );
    }
    let rows = state_rows(d, "out");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let canonical = std::fs::canonicalize(d.join("in/good.tif")).expect("canonical");
    assert_eq!(rows[0]["path"], canonical.display().to_string(), "{rows:?}");
    assert_eq!(rows[0]["attempts"], 1, "{rows:?}");
}

// ---------------------------------------------------------------------------------------
// 7. Ingestion output names never collide.

#[test]
fn ingestion_gives_every_scene_its_own_output_folder() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir_all(d.join("in/a")).expect("mkdir");
    let files = ["in/a/b.tif", "in/a_b.tif", "in/a b.tif", "in/a_b.tiff"];
    for (i, f) in files.iter().enumerate() {
        crop(&d.join(f), i * 96, 0, 128);
    }
    let p = land_cover(d);
    let r = ingest(d, "in", &p, "out", "0");
    assert_eq!(r.output.status.code(), Some(0), "{}", r.context());
    let done = processed(&r);
    assert_eq!(done.len(), files.len(), "{}", r.context());
    let mut outputs: Vec<String> = done
        .iter()
        .map(|s| s["output"].as_str().expect("output").to_string())
        .collect();
    outputs.sort();
    outputs.dedup();
    assert_eq!(outputs.len(), files.len(), "one folder each: {outputs:?}");
    // Each folder's record is its own scene's.
    for f in files {
        let canonical = std::fs::canonicalize(d.join(f)).expect("canonical");
        let hits = outputs
            .iter()
            .filter(|o| {
                let rec = std::fs::read_to_string(d.join(o).join("record.json")).expect("record");
                let rec: serde_json::Value = serde_json::from_str(&rec).expect("json");
                rec["raster"] == canonical.display().to_string()
            })
            .count();
        assert_eq!(hits, 1, "{f}: {outputs:?}");
    }
    assert_eq!(
        state_rows(d, "out")
            .iter()
            .filter(|s| s["status"] == "done")
            .count(),
        files.len()
    );
}

// ---------------------------------------------------------------------------------------
// 9. A file still growing is not recorded as a permanent failure, even with --settle 0.

#[test]
fn a_file_growing_while_processed_is_not_a_permanent_failure() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir(d.join("in")).expect("mkdir");
    // A COG: its header comes first, so the truncated file opens and fails only when its
    // tiles are read, after the model has loaded (long enough for the writer to move on).
    let status = Command::new("gdal_translate")
        .args(["-q", "-of", "COG", "-srcwin", "0", "0", "256", "256"])
        .arg(sample())
        .arg(d.join("whole.tif"))
        .status()
        .expect("gdal_translate");
    assert!(status.success());
    let whole = std::fs::read(d.join("whole.tif")).expect("read");
    let growing = d.join("in/growing.tif");
    std::fs::write(&growing, &whole[..whole.len() / 3]).expect("write");
    let p = land_cover(d);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // The writer appends a little now and then, as a slow copy does: a pass sees the file unchanged
        // at the scan and at the claim, then changed when the scene has failed.
        s.spawn(|| {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&growing)
                .expect("open");
            while !stop.load(Ordering::SeqCst) {
                f.write_all(&[0u8; 16]).expect("append");
                std::thread::sleep(Duration::from_millis(150));
            }
        });
        // Stops the writer however this scope ends (a failed assertion included).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop = Stop(&stop);
        for pass in 0..3 {
            let r = ingest(d, "in", &p, "out", "0");
            assert_eq!(
                r.output.status.code(),
                Some(0),
                "pass {pass}{}",
                r.context()
            );
            let j = r.json();
            assert_eq!(j["failed"], 0, "pass {pass}: {j}");
            for row in state_rows(d, "out") {
                assert_ne!(row["status"], "failed", "pass {pass}: {row}");
            }
        }
    });
    // Written at last: processed by the next pass.
    std::fs::write(&growing, &whole).expect("write");
    let r = ingest(d, "in", &p, "out", "0");
    assert_eq!(r.output.status.code(), Some(0), "{}", r.context());
    let rows = state_rows(d, "out");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["status"], "done", "{rows:?}");
}

// ---------------------------------------------------------------------------------------
// 2. One scene's failure (a refusal, a corrupt file, a panic) is isolated: `run` finishes the
//    others and exits 3; `ingest` ends such scenes as failed and goes on with the others.

#[test]
fn failing_scenes_are_isolated_in_run_and_ingest() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir(d.join("in")).expect("mkdir");
    crop(&d.join("in/good.tif"), 0, 0, 128);
    crop(&d.join("in/boom.tif"), 128, 0, 128);
    let huge = Tiff {
        width: HUGE,
        height: HUGE,
        bands: 3,
        compression: 8,
        tile: Some(HUGE),
        georef: true,
    };
    std::fs::write(d.join("in/huge.tif"), huge.bytes()).expect("write");
    std::fs::write(d.join("in/corrupt.tif"), b"II*\0not a raster at all").expect("write");
    let p = land_cover(d);
    // (scene, what its error says)
    let failing = [
        ("huge", "memory budget"),
        ("boom", "panic"),
        ("corrupt", "corrupt.tif"),
    ];
    let env = [("TESSERA_TEST_PANIC_SCENE", "boom")];

    let r = run_limited_env(
        d,
        &["run", &p, "in", "--out", "out1", "--json", "--quiet"],
        &env,
    );
    assert_eq!(r.output.status.code(), Some(3), "{}", r.context());
    let j = r.json();
    let scene = |n: &str| {
        j["scenes"]
            .as_array()
            .expect("scenes")
            .iter()
            .find(|s| s["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} in {j}"))
    };
    assert_eq!(scene("good")["status"], "done", "{j}");
    for (n, says) in failing {
        let s = scene(n);
        assert_eq!(s["status"], "failed", "{s}");
        let e = s["error"].as_str().unwrap_or("");
        assert!(
            e.contains(&format!("{n}.tif")) && e.contains(says),
            "{n}: {e}"
        );
        assert!(!d.join("out1").join(n).exists());
    }
    assert!(leftovers(d).is_empty(), "{}", r.context());

    // Ingestion: passes until nothing is left to do; failing scenes end failed within their
    // attempts, the good one done.
    for pass in 0..4 {
        let r = run_limited_env(
            d,
            &[
                "ingest",
                "in",
                "--pipeline",
                &p,
                "--out",
                "out2",
                "--settle",
                "0",
                "--retry-after",
                "0",
                "--max-attempts",
                "2",
                "--json",
                "--quiet",
            ],
            &env,
        );
        let code = r.output.status.code();
        assert!(
            code == Some(0) || code == Some(3),
            "pass {pass}{}",
            r.context()
        );
        if processed(&r).is_empty() {
            break;
        }
    }
    let rows = state_rows(d, "out2");
    assert_eq!(rows.len(), 4, "{rows:?}");
    for row in &rows {
        let path = row["path"].as_str().expect("path");
        let want = if path.ends_with("good.tif") {
            "done"
        } else {
            "failed"
        };
        assert_eq!(row["status"], want, "{row}");
        assert!(
            row["attempts"]
                .as_u64()
                .is_some_and(|a| (1..=2).contains(&a)),
            "{row}"
        );
    }
    assert!(leftovers(d).is_empty());
}
