//! Parity of the Chinese-CLIP path with PyTorch on the committed tiny package
//! (`sample_data/models/chinese-clip-tiny`, `tools/export/export.py chinese-clip --tiny`),
//! whose references were computed with Chinese labels (森林, 水体, 城市) and the package's
//! default templates (Chinese-CLIP's published EuroSAT ensemble): per-character WordPiece ids
//! identical, embeddings within 1e-4 relative error, probabilities within 1e-4 absolute (host
//! and scoring head), batches equal to one-by-one runs; `tessera classify --labels
//! "森林,水体,城市"` on a generated scene matching the per-tile reference, with the Chinese
//! labels intact in every output (raster categories and metadata, band descriptions,
//! GeoPackage and Shapefile attributes, the run report); broken packages refused by
//! `models check` and by `classify`.

mod common;

#[path = "common/bert_towers.rs"]
mod bert_towers;

use std::path::Path;

use bert_towers::{classify_block_scene, embeddings_and_probabilities_match, fixture, strings};
use common::{copy_dir, run};

const PACKAGE: &str = "chinese-clip-tiny";
const LABELS: &str = "森林,水体,城市";

#[test]
fn token_ids_are_identical() {
    let f = fixture(PACKAGE);
    bert_towers::token_ids_are_identical(&f);
    // BERT-Chinese tokenizes per character: 一张森林的卫星图像。 is [CLS], 10 characters, [SEP].
    let model = f.model();
    let case = &f.r["tokenizer_cases"][0];
    assert_eq!(case["text"], "一张森林的卫星图像。");
    let t = model
        .tokenize(&["一张森林的卫星图像。".into()])
        .expect("tokenize");
    assert_eq!(t.context, 52);
    assert_eq!(t.mask.iter().filter(|&&m| m == 1).count(), 12);
    assert_eq!(t.ids, bert_towers::ints(&case["token_ids"]));
    // 农田 has ids of its own (not [UNK] = 1), unlike 沼泽, which the tiny vocabulary lacks.
    let farm = &f.r["tokenizer_cases"][1];
    assert_eq!(farm["text"], "一张农田的卫星图像。");
    assert!(bert_towers::ints(&farm["token_ids"])[3..5]
        .iter()
        .all(|&i| i > 4));
    let marsh = f.r["tokenizer_cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["text"] == "一张沼泽的卫星照片")
        .expect("case");
    assert_eq!(&bert_towers::ints(&marsh["token_ids"])[3..5], &[1, 1]);
}

#[test]
fn embeddings_and_probabilities_match_pytorch() {
    let f = fixture(PACKAGE);
    assert_eq!(f.r["family"], "chinese-clip");
    assert_eq!(f.labels().join(","), LABELS);
    let errs = embeddings_and_probabilities_match(&f);
    eprintln!(
        "chinese-clip-tiny worst errors (image rel, text rel, label rel, host abs, head abs): {errs:?}"
    );
}

#[test]
fn the_package_templates_are_the_default_ensemble() {
    let f = fixture(PACKAGE);
    assert_eq!(f.r["templates_are_package_default"], true);
    let model = f.model();
    assert_eq!(model.default_templates(), f.templates());
    assert!(f.templates().iter().all(|t| t.contains("卫星")));
}

/// The `field` of every feature of `path`'s first layer.
fn field_values(path: &Path, field: &str) -> Vec<String> {
    use gdal::vector::LayerAccess;
    let ds = gdal::Dataset::open(path).expect("open vector");
    let mut layer = ds.layer(0).expect("layer");
    layer
        .features()
        .map(|feat| {
            let k = feat.field_index(field).expect("field");
            feat.field_as_string(k).expect("read").expect("value")
        })
        .collect()
}

#[test]
fn classify_keeps_chinese_labels_in_every_output() {
    use gdal::Metadata;

    let f = fixture(PACKAGE);
    let labels = f.labels();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // No --template: the package's [prompts] ensemble, which the reference used.
    let res = classify_block_scene(&f, d, LABELS, None, &["--out", "out"]);
    let j = res.json();
    assert_eq!(j["labels"], serde_json::json!(labels));
    let counts = j["label_counts"].as_object().expect("counts");
    assert!(
        counts.keys().all(|k| labels.contains(k) || k == "unknown"),
        "{counts:?}"
    );

    // Rasters: category names (GDAL's .aux.xml), labels metadata, band descriptions.
    let out = d.join("out");
    let aux = std::fs::read_to_string(out.join("classes.tif.aux.xml")).expect("aux.xml");
    for l in &labels {
        assert!(aux.contains(&format!("<Category>{l}</Category>")), "{aux}");
    }
    let classes = gdal::Dataset::open(out.join("classes.tif")).expect("classes");
    assert_eq!(
        classes.metadata_item("TESSERA_LABELS", "").as_deref(),
        Some(LABELS)
    );
    let probs = gdal::Dataset::open(out.join("probabilities.tif")).expect("probs");
    for (k, l) in labels.iter().enumerate() {
        assert_eq!(
            &probs
                .rasterband(k + 1)
                .expect("band")
                .description()
                .expect("d"),
            l
        );
    }

    // GeoPackage: the label attributes read back as the Chinese labels, per tile.
    let want = f.probs();
    let (a, b) = bert_towers::two_classes(&f);
    let la = labels[bert_towers::argmax(want.row(a).as_slice().expect("c"))].clone();
    let lb = labels[bert_towers::argmax(want.row(b).as_slice().expect("c"))].clone();
    let tiles = field_values(&out.join("tiles.gpkg"), "label");
    assert_eq!(tiles.len(), 12);
    assert_eq!(tiles.iter().filter(|l| **l == la).count(), 6, "{tiles:?}");
    assert_eq!(tiles.iter().filter(|l| **l == lb).count(), 6, "{tiles:?}");
    let mut polys = field_values(&out.join("labels.gpkg"), "label");
    polys.sort();
    let mut two = vec![la.clone(), lb.clone()];
    two.sort();
    assert_eq!(polys, two);

    // Shapefile: a .cpg sidecar declaring UTF-8, the .dbf holding UTF-8 bytes, read back.
    let shp = classify_block_scene(&f, d, LABELS, None, &["--out", "shp", "--format", "shp"]);
    shp.success();
    let s = d.join("shp");
    for layer in ["tiles", "labels"] {
        let cpg = std::fs::read_to_string(s.join(format!("{layer}.cpg"))).expect("cpg");
        assert_eq!(cpg.trim(), "UTF-8", "{layer}.cpg");
    }
    let dbf = std::fs::read(s.join("tiles.dbf")).expect("dbf");
    assert!(
        dbf.windows(la.len()).any(|w| w == la.as_bytes()),
        "tiles.dbf should hold {la} as UTF-8"
    );
    let tiles = field_values(&s.join("tiles.shp"), "label");
    assert_eq!(tiles.iter().filter(|l| **l == la).count(), 6, "{tiles:?}");
    assert_eq!(tiles.iter().filter(|l| **l == lb).count(), 6, "{tiles:?}");
    let top2 = field_values(&s.join("tiles.shp"), "top2_label");
    assert!(top2.iter().all(|l| labels.contains(l)), "{top2:?}");

    // English text report: the labels printed as they are.
    let model = f.dir.display().to_string();
    let text = run(
        d,
        &[
            "classify",
            "scene.tif",
            "--model",
            &model,
            "--labels",
            LABELS,
            "--no-cache",
            "--out",
            "txt",
        ],
    );
    text.success();
    assert!(text.stdout().contains(&la), "{}", text.context());
}

/// A copy of the package in `dir/name`, edited.
fn broken(dir: &Path, name: &str, edit: &dyn Fn(&Path)) -> String {
    let p = dir.join(name);
    copy_dir(&fixture(PACKAGE).dir, &p);
    std::fs::remove_dir_all(p.join("reference")).expect("rm reference");
    edit(&p);
    p.display().to_string()
}

fn edit_manifest(p: &Path, from: &str, to: &str) {
    let m = std::fs::read_to_string(p.join("model.toml")).expect("read");
    assert!(m.contains(from), "model.toml has no {from:?}");
    std::fs::write(p.join("model.toml"), m.replacen(from, to, 1)).expect("write");
}

#[test]
fn broken_packages_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let f = fixture(PACKAGE);
    bert_towers::block_scene(&f, &d.join("scene.tif"), 2, 1, |_, c| c);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/models");
    type Edit = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "bpe_tokenizer",
            Box::new({
                let root = root.clone();
                move |p: &Path| {
                    std::fs::copy(
                        root.join("clip-tiny/tokenizer.json"),
                        p.join("tokenizer.json"),
                    )
                    .expect("copy");
                }
            }),
            vec![
                "tokenizer.json is a BPE tokenizer",
                "Chinese-CLIP",
                "WordPiece",
            ],
        ),
        (
            "widths",
            // flava-tiny's image encoder: the same input, 32-wide embeddings instead of 24.
            Box::new({
                let root = root.clone();
                move |p: &Path| {
                    std::fs::copy(
                        root.join("flava-tiny/image_encoder.onnx"),
                        p.join("image_encoder.onnx"),
                    )
                    .expect("copy");
                }
            }),
            vec!["image embeddings have 32 dimensions but text embeddings 24"],
        ),
        (
            "mask_name",
            Box::new(|p: &Path| {
                edit_manifest(
                    p,
                    "attention_mask = \"attention_mask\"",
                    "attention_mask = \"mask\"",
                )
            }),
            vec!["text encoder has no input 'mask'"],
        ),
        (
            "no_mask",
            Box::new(|p: &Path| edit_manifest(p, "attention_mask = \"attention_mask\"", "")),
            vec!["text encoder input 'attention_mask' is not named in the manifest"],
        ),
        (
            "logit_bias",
            Box::new(|p: &Path| edit_manifest(p, "[scores]\n", "[scores]\nlogit_bias = -10.0\n")),
            vec!["scores.logit_bias", "Chinese-CLIP"],
        ),
        (
            "template",
            Box::new(|p: &Path| edit_manifest(p, "\"一张{}的卫星照片\",", "\"一张卫星照片\",")),
            vec!["prompts.templates"],
        ),
        (
            "context",
            Box::new(|p: &Path| edit_manifest(p, "context_length = 52", "context_length = 64")),
            vec!["expected [B, 64]"],
        ),
    ];
    for (name, edit, needles) in &cases {
        let pkg = broken(d, name, edit.as_ref());
        let check = run(d, &["models", "check", &pkg, "--json"]);
        assert_eq!(
            check.output.status.code(),
            Some(1),
            "{name}{}",
            check.context()
        );
        let problems = strings(&check.json()["problems"]);
        for n in needles {
            assert!(
                problems.iter().any(|p| p.contains(n)),
                "{name}: no problem mentions {n:?}: {problems:?}"
            );
        }
        // classify refuses it too: one line naming the package, nothing written.
        let out = format!("out_{name}");
        let bad = run(
            d,
            &[
                "classify",
                "scene.tif",
                "--model",
                &pkg,
                "--labels",
                LABELS,
                "--no-cache",
                "--quiet",
                "--out",
                &out,
            ],
        );
        eprintln!("{name}: {}", bad.stderr().trim());
        bad.fails_with(&[name, needles[0]]);
        assert!(!d.join(&out).exists(), "{name}: partial output");
    }
    // The unedited package passes.
    let ok = run(
        d,
        &[
            "models",
            "check",
            &fixture(PACKAGE).dir.display().to_string(),
        ],
    );
    ok.success();
}
