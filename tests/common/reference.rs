//! Reading the PyTorch references committed with the tiny zero-shot packages
//! (`sample_data/models/<name>/reference/`), comparing against them, and writing scenes made of
//! their reference images. Shared by the dual-encoder parity tests.

use std::path::Path;

use ndarray::Array2;
use serde_json::Value;

/// Geotransform of the scenes [`block_scene`] writes (UTM 32N, 2 m pixels).
pub const GT: [f64; 6] = [600_000.0, 2.0, 0.0, 5_000_000.0, 0.0, -2.0];

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("str").to_string())
        .collect()
}

/// Integers of a list or of a list of rows, flattened row-major.
pub fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .flat_map(|x| match x.as_array() {
            Some(row) => row.iter().map(|v| v.as_i64().expect("int")).collect(),
            None => vec![x.as_i64().expect("int")],
        })
        .collect()
}

pub fn matrix(v: &Value) -> Array2<f32> {
    let rows: Vec<Vec<f32>> = v
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("num") as f32)
                .collect()
        })
        .collect();
    let (n, d) = (rows.len(), rows[0].len());
    Array2::from_shape_vec((n, d), rows.into_iter().flatten().collect()).expect("shape")
}

/// Largest error relative to the reference's largest magnitude.
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / scale
}

pub fn max_abs(got: &Array2<f32>, want: &Array2<f32>) -> f32 {
    assert_eq!(got.shape(), want.shape());
    got.iter()
        .zip(want.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &p)| if p > b.1 { (i, p) } else { b })
        .0
}

/// Write a `cols x rows`-tile RGB scene where tile (r, c) is reference image `pick(r, c)` of
/// the package in `package` (its `reference/images_u8.bin`, `[N, S, S, 3]`), on [`GT`] in
/// EPSG:32632.
pub fn block_scene(
    package: &Path,
    path: &Path,
    cols: usize,
    rows: usize,
    pick: impl Fn(usize, usize) -> usize,
) {
    block_scene_on(package, path, (cols, rows), (&GT, 32632), pick);
}

/// [`block_scene`] on the geotransform `gt` in EPSG:`epsg`; returns the image size `S`.
pub fn block_scene_on(
    package: &Path,
    path: &Path,
    (cols, rows): (usize, usize),
    (gt, epsg): (&[f64; 6], u32),
    pick: impl Fn(usize, usize) -> usize,
) -> usize {
    let text =
        std::fs::read_to_string(package.join("reference/reference.json")).expect("reference.json");
    let r: Value = serde_json::from_str(&text).expect("json");
    let s = r["images_u8"]["shape"][1].as_u64().expect("size") as usize;
    let images = std::fs::read(package.join("reference/images_u8.bin")).expect("images");
    let (w, h) = (cols * s, rows * s);
    let driver = gdal::DriverManager::get_driver_by_name("GTiff").expect("driver");
    let mut ds = driver
        .create_with_band_type::<u8, _>(path, w, h, 3)
        .expect("create");
    ds.set_geo_transform(gt).expect("gt");
    ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(epsg).expect("srs"))
        .expect("srs");
    for band in 0..3 {
        let mut plane = vec![0u8; w * h];
        for y in 0..h {
            for x in 0..w {
                let img = pick(y / s, x / s);
                plane[y * w + x] = images[((img * s + y % s) * s + x % s) * 3 + band];
            }
        }
        let mut b = ds.rasterband(band + 1).expect("band");
        b.write(
            (0, 0),
            (w, h),
            &mut gdal::raster::Buffer::new((w, h), plane),
        )
        .expect("write");
    }
    ds.close().expect("close");
    s
}

/// The generation settings of a reference case (its `generation` object, Hugging Face
/// `generate`'s keyword arguments; absent keys take `GenerationParams::default()`'s values).
pub fn generation_params(g: &Value) -> tessera::generation::GenerationParams {
    let d = tessera::generation::GenerationParams::default();
    let early_stopping = match &g["early_stopping"] {
        Value::Null => d.early_stopping,
        Value::Bool(b) => b.to_string().parse().expect("early_stopping"),
        v => v
            .as_str()
            .expect("early_stopping")
            .parse()
            .expect("early_stopping"),
    };
    tessera::generation::GenerationParams {
        max_new_tokens: g["max_new_tokens"].as_u64().expect("max_new_tokens") as usize,
        min_new_tokens: g["min_new_tokens"]
            .as_u64()
            .map_or(d.min_new_tokens, |v| v as usize),
        num_beams: g["num_beams"].as_u64().map_or(d.num_beams, |v| v as usize),
        repetition_penalty: g["repetition_penalty"]
            .as_f64()
            .map_or(d.repetition_penalty, |v| v as f32),
        length_penalty: g["length_penalty"]
            .as_f64()
            .map_or(d.length_penalty, |v| v as f32),
        no_repeat_ngram_size: g["no_repeat_ngram_size"]
            .as_u64()
            .map_or(d.no_repeat_ngram_size, |v| v as usize),
        early_stopping,
        forced_bos_token_id: g["forced_bos_token_id"].as_i64(),
        forced_eos_token_id: g["forced_eos_token_id"].as_i64(),
    }
}

/// A [`block_scene`] whose tile `k` (row-major) is reference image `pick(k, n)` of the
/// package's `n`; returns the image of every tile, row-major (what the caption tests compare
/// each tile's output with).
pub fn mapped_block_scene(
    package: &Path,
    path: &Path,
    cols: usize,
    rows: usize,
    pick: impl Fn(usize, usize) -> usize,
) -> Vec<usize> {
    let text =
        std::fs::read_to_string(package.join("reference/reference.json")).expect("reference.json");
    let r: Value = serde_json::from_str(&text).expect("json");
    let n = r["images_u8"]["shape"][0].as_u64().expect("images") as usize;
    let map: Vec<usize> = (0..rows * cols).map(|k| pick(k, n)).collect();
    block_scene(package, path, cols, rows, |row, col| map[row * cols + col]);
    map
}

/// Tile `k` shows image `(3k + 1) mod n`: every image appears, out of order.
pub fn shuffled(k: usize, n: usize) -> usize {
    (k * 3 + 1) % n
}
