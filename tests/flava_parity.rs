//! Parity of the FLAVA path with PyTorch on the committed tiny package
//! (`sample_data/models/flava-tiny`, `tools/export/export.py flava --tiny`): WordPiece token
//! ids identical, the contrastive embeddings (projected CLS tokens) within 1e-4 relative
//! error, probabilities within 1e-4 absolute from the host scoring and from the scoring head,
//! batches equal to one-by-one runs, and `tessera classify` on a generated scene matching the
//! per-tile reference.

mod common;

#[path = "common/bert_towers.rs"]
mod bert_towers;

use bert_towers::{classify_block_scene, embeddings_and_probabilities_match, fixture};
use common::run;

const PACKAGE: &str = "flava-tiny";

#[test]
fn token_ids_are_identical() {
    let f = fixture(PACKAGE);
    bert_towers::token_ids_are_identical(&f);
    // Lower-cased English wordpieces: the documented example, ## continuation pieces, [UNK].
    let model = f.model();
    let t = model
        .tokenize(&["A Satellite image of a FOREST".into()])
        .expect("tokenize");
    let case = &f.r["tokenizer_cases"][0];
    assert_eq!(case["text"], "a satellite image of a forest");
    assert_eq!(t.ids, bert_towers::ints(&case["token_ids"]));
    assert_eq!(&t.ids[..1], &[2], "[CLS] first");
    let n = t.mask.iter().filter(|&&m| m == 1).count();
    assert_eq!(t.ids[n - 1], 3, "[SEP] last");
    assert!(t.ids[n..].iter().all(|&i| i == 0), "[PAD] after");
}

#[test]
fn embeddings_and_probabilities_match_pytorch() {
    let f = fixture(PACKAGE);
    assert_eq!(f.r["family"], "flava");
    let errs = embeddings_and_probabilities_match(&f);
    eprintln!(
        "flava-tiny worst errors (image rel, text rel, label rel, host abs, head abs): {errs:?}"
    );
}

#[test]
fn classify_matches_the_per_tile_reference() {
    let f = fixture(PACKAGE);
    let dir = tempfile::tempdir().expect("tempdir");
    let labels = f.labels().join(",");
    let templates = f.templates();
    classify_block_scene(&f, dir.path(), &labels, Some(&templates), &["--out", "out"]);
    // The package names no [prompts]: without --template the family's default ensemble.
    let j = run(
        dir.path(),
        &[
            "classify",
            "scene.tif",
            "--model",
            &f.dir.display().to_string(),
            "--labels",
            &labels,
            "--no-cache",
            "--json",
            "--quiet",
        ],
    )
    .success()
    .json();
    assert!(j["templates"].as_array().expect("templates").len() > 1);
    assert_ne!(j["templates"], serde_json::json!(templates));
}

#[test]
fn models_check_accepts_the_package() {
    let f = fixture(PACKAGE);
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = run(
        dir.path(),
        &["models", "check", &f.dir.display().to_string()],
    );
    ok.success();
    assert!(
        ok.stdout().contains("valid model package"),
        "{}",
        ok.context()
    );
}
