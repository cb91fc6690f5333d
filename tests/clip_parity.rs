//! Parity of the CLIP path with PyTorch, on the committed tiny model and the references its
//! export computed with PyTorch (`sample_data/models/clip-tiny/reference/`): token ids equal,
//! preprocessed pixels (through the real GDAL read path) and embeddings within 1e-4 relative
//! error, probabilities within 1e-4 absolute.

mod common;

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array4};
use serde_json::Value;
use tessera::models::dual_encoder::{normalize_rows, DualEncoderModel};
use tessera::raster::{BandMapping, OpenOptions, Resampling, Scaling, ScalingSpec, Scene};
use tessera::runtime::{Runtime, SessionOptions};
use tessera::tiling::{stream_tiles, EdgeMode, GridOptions, ReadOptions, TileGrid, TilingError};

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models/clip-tiny")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(package().join("reference/reference.json"))
        .expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

fn matrix(v: &Value) -> Array2<f32> {
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

fn shape(v: &Value) -> Vec<usize> {
    v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}

/// Largest relative error between two arrays, relative to the reference's largest magnitude.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / scale
}

fn runtime() -> &'static Runtime {
    Runtime::load(None).expect("ONNX Runtime (run `make setup`)")
}

fn load_f32(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(package().join("reference").join(name)).expect("bin");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn token_ids_are_identical() {
    let rt = runtime();
    let model = DualEncoderModel::load(rt, &package(), &SessionOptions::default()).expect("model");
    let r = reference();
    let prompts: Vec<String> = r["prompts"]
        .as_array()
        .expect("p")
        .iter()
        .map(|p| p.as_str().expect("s").into())
        .collect();
    let tokens = model.tokenize(&prompts).expect("tokenize");
    let want: Vec<i64> = r["token_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .flat_map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_i64().expect("id"))
        })
        .collect();
    assert_eq!(tokens.ids, want);
    let want_mask: Vec<i64> = r["attention_mask"]
        .as_array()
        .expect("m")
        .iter()
        .flat_map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_i64().expect("m"))
        })
        .collect();
    assert_eq!(tokens.mask, want_mask);
    // Extra cases: the documented example, long prompts cut at the context length, odd text.
    for case in r["tokenizer_cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text").to_string();
        let got = model
            .tokenize(std::slice::from_ref(&text))
            .expect("tokenize");
        let want: Vec<i64> = case["token_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_i64().expect("id"))
            .collect();
        assert_eq!(got.ids, want, "{text:?}");
    }
    let doc = model
        .tokenize(&["a satellite image of a forest".into()])
        .expect("tokenize");
    assert_eq!(
        &doc.ids[..8],
        &[49406, 320, 10316, 2867, 539, 320, 4167, 49407]
    );
}

#[test]
fn pixels_through_the_gdal_read_path_match() {
    let rt = runtime();
    let model = DualEncoderModel::load(rt, &package(), &SessionOptions::default()).expect("model");
    let r = reference();
    let s = model.input_size();
    let shp = shape(&r["images_u8"]);
    let (n, h, w) = (shp[0], shp[1], shp[2]);
    assert_eq!((h, w), (s, s));
    let images = std::fs::read(package().join("reference/images_u8.bin")).expect("images");
    let want = load_f32("pixels_f32.bin");
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..n {
        // Write the reference image as a georeferenced RGB GeoTIFF, then read it as tessera does.
        let path = dir.path().join(format!("img{i}.tif"));
        let driver = gdal::DriverManager::get_driver_by_name("GTiff").expect("driver");
        let mut ds = driver
            .create_with_band_type::<u8, _>(&path, s, s, 3)
            .expect("create");
        ds.set_geo_transform(&[0.0, 1.0, 0.0, 0.0, 0.0, -1.0])
            .expect("gt");
        ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(3857).expect("srs"))
            .expect("srs");
        for c in 0..3 {
            let plane: Vec<u8> = (0..s * s)
                .map(|p| images[i * s * s * 3 + p * 3 + c])
                .collect();
            let mut band = ds.rasterband(c + 1).expect("band");
            band.write(
                (0, 0),
                (s, s),
                &mut gdal::raster::Buffer::new((s, s), plane),
            )
            .expect("write");
        }
        ds.close().expect("close");
        let scene =
            Scene::open(path.to_str().expect("utf8"), &OpenOptions::default()).expect("open");
        let mapping = BandMapping::for_channels(scene.info(), 3);
        let scaling = Scaling::resolve(&ScalingSpec::Auto, &scene, &mapping).expect("scaling");
        let grid = TileGrid::new(
            scene.info(),
            GridOptions {
                tile_size: s,
                overlap: 0,
                target_gsd: None,
                edge: EdgeMode::Pad,
            },
        )
        .expect("grid");
        let opts = ReadOptions {
            bands: mapping,
            resampling: Resampling::Nearest,
            threads: 1,
            queue: 1,
            min_valid: 0.0,
            fill: 0.0,
            read_pixels: true,
            order: tessera::tiling::ReadOrder::Stripes,
            deliver_skipped: false,
            ordered: false,
        };
        let mut got = Vec::new();
        let norm = model.normalizer();
        stream_tiles::<f32, TilingError, _, _>(
            &scene,
            &grid,
            &opts,
            |t| {
                for c in 0..3 {
                    scaling.apply(c, &mut t.pixels[c * s * s..(c + 1) * s * s]);
                }
                let valid = t.valid.to_vec();
                norm.apply(&mut t.pixels, &valid);
            },
            |t| {
                got.extend_from_slice(&t.pixels);
                Ok(())
            },
        )
        .expect("stream");
        let e = rel_err(&got, &want[i * 3 * s * s..(i + 1) * 3 * s * s]);
        assert!(e < 1e-4, "image {i}: pixel rel err {e}");
    }
}

#[test]
fn embeddings_and_probabilities_match_pytorch() {
    let rt = runtime();
    let mut model =
        DualEncoderModel::load(rt, &package(), &SessionOptions::default()).expect("model");
    let r = reference();
    let shp = shape(&r["pixels_f32"]);
    let pixels =
        Array4::from_shape_vec((shp[0], shp[1], shp[2], shp[3]), load_f32("pixels_f32.bin"))
            .expect("pixels");

    // Image embeddings: a batch of all images, and each image alone (same answers).
    let img = model.encode_images(pixels.view()).expect("images");
    let want_img = matrix(&r["image_embeds"]);
    let e = rel_err(img.as_slice().expect("c"), want_img.as_slice().expect("c"));
    assert!(e < 1e-4, "image embeds rel err {e}");
    for i in 0..shp[0] {
        let one = model
            .encode_images(pixels.slice(ndarray::s![i..i + 1, .., .., ..]))
            .expect("one");
        let e = rel_err(
            one.as_slice().expect("c"),
            want_img.row(i).as_slice().expect("c"),
        );
        assert!(e < 1e-4, "image {i} alone: rel err {e}");
    }

    // Text embeddings of every prompt.
    let prompts: Vec<String> = r["prompts"]
        .as_array()
        .expect("p")
        .iter()
        .map(|p| p.as_str().expect("s").into())
        .collect();
    let txt = model.encode_text(&prompts).expect("text");
    let want_txt = matrix(&r["text_embeds"]);
    let e = rel_err(txt.as_slice().expect("c"), want_txt.as_slice().expect("c"));
    assert!(e < 1e-4, "text embeds rel err {e}");

    // Label embeddings (prompt ensemble) and probabilities, with and without the cache.
    let labels: Vec<String> = r["labels"]
        .as_array()
        .expect("l")
        .iter()
        .map(|p| p.as_str().expect("s").into())
        .collect();
    let templates: Vec<String> = r["templates"]
        .as_array()
        .expect("t")
        .iter()
        .map(|p| p.as_str().expect("s").into())
        .collect();
    let cache = tempfile::tempdir().expect("cache");
    let (lab, hit) = model
        .label_embeddings(&labels, &templates, Some(cache.path()))
        .expect("labels");
    assert!(!hit);
    let (lab2, hit2) = model
        .label_embeddings(&labels, &templates, Some(cache.path()))
        .expect("labels");
    assert!(hit2, "second call should come from the cache");
    assert_eq!(lab, lab2);
    let want_lab = matrix(&r["label_embeds"]);
    let e = rel_err(lab.as_slice().expect("c"), want_lab.as_slice().expect("c"));
    assert!(e < 1e-4, "label embeds rel err {e}");
    assert!((model.logit_scale() - r["logit_scale"].as_f64().expect("scale") as f32).abs() < 1e-5);

    let probs = model.probabilities(img, &lab);
    let want_probs = matrix(&r["probs"]);
    let max_abs = probs
        .iter()
        .zip(want_probs.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(max_abs < 1e-4, "probs abs err {max_abs}");

    // The same probabilities from the similarity head run by ONNX Runtime after the encoder
    // (label embeddings resident where the model runs), for the batch and for a batch of one.
    let labels_there = model.device_labels(&lab).expect("device labels");
    let head = model
        .classify_images(pixels.view(), &labels_there)
        .expect("head");
    assert_eq!(head.shape(), want_probs.shape());
    let max_abs = head
        .iter()
        .zip(want_probs.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(max_abs < 1e-4, "head probs abs err {max_abs}");
    let one = model
        .classify_images(pixels.slice(ndarray::s![1..2, .., .., ..]), &labels_there)
        .expect("one");
    for (a, b) in one.iter().zip(want_probs.row(1)) {
        assert!(
            (a - b).abs() < 1e-4,
            "head probs of image 1 alone: {a} vs {b}"
        );
    }
    assert_eq!(model.head_provider(), "CPUExecutionProvider");

    // Tiles gathered straight into the model's input memory: a full batch (handed over as it
    // is) and a partial last one give the same probabilities.
    let n_img = shp[0];
    assert!(n_img >= 2, "the reference has {n_img} images");
    let per = shp[1] * shp[2] * shp[3];
    let flat = pixels.as_slice().expect("contiguous");
    // Raw bytes cannot be gathered for this float-input package: a clear error, no batch.
    let err = model
        .staged_batch::<u8>(4)
        .expect_err("bytes for a float model");
    assert!(err.to_string().contains("raw bytes"), "{err}");
    let mut staged = model.staged_batch::<f32>(n_img - 1).expect("staged");
    let mut full = false;
    for i in 0..n_img - 1 {
        full = staged.push(&flat[i * per..(i + 1) * per]);
    }
    assert!(full && staged.len() == n_img - 1);
    let first = model
        .classify_staged(&staged, &labels_there)
        .expect("full batch");
    staged.clear();
    assert!(!staged.push(&flat[(n_img - 1) * per..]));
    let last = model
        .classify_staged(&staged, &labels_there)
        .expect("partial batch");
    assert_eq!((first.nrows(), last.nrows()), (n_img - 1, 1));
    for (i, row) in first.outer_iter().chain(last.outer_iter()).enumerate() {
        for (a, b) in row.iter().zip(want_probs.row(i)) {
            assert!((a - b).abs() < 1e-4, "staged image {i}: {a} vs {b}");
        }
    }
    let top1: Vec<&str> = r["top1"]
        .as_array()
        .expect("top1")
        .iter()
        .map(|v| v.as_str().expect("s"))
        .collect();
    for (i, row) in probs.outer_iter().enumerate() {
        let best = row
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (k, &p)| if p > b.1 { (k, p) } else { b })
            .0;
        assert_eq!(labels[best], top1[i]);
    }
    let _ = normalize_rows(want_lab);
}
