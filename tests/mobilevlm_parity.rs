//! MobileVLM (CLIP vision tower, LDP projector, MobileLLaMA) as an image-text-decoder package: the
//! tiny random model of the same assembly (sample_data/models/mobilevlm-tiny, exported by
//! `export.py mobilevlm --tiny`) against Hugging Face `LlamaForCausalLM.generate(inputs_embeds=...)`
//! on the embeddings the authors' `tokenizer_image_token` and
//! `prepare_inputs_labels_for_multimodal` build; greedy and 3 beams, one image and batches of
//! tiles with different prompts; then `tessera caption` end to end. The LDP projector (written
//! in the exporter, transformers has none) was checked there against torchvision's and timm's
//! modules loading the same weights strictly.

mod common;
#[path = "common/prefix_decoder.rs"]
mod prefix_decoder;

use common::reference::block_scene;
use common::run;
use prefix_decoder::{check_generate, greedy_by_image, package, reference};
use serde_json::Value;

const NAME: &str = "mobilevlm-tiny";
/// The same assembly with MobileVLM V2's LDPv2 projector (`--projector ldpnetv2`).
const NAME_V2: &str = "mobilevlm2-tiny";

#[test]
fn mobilevlm_generates_the_pytorch_tokens() {
    let (greedy, beams, batched) = check_generate(&package(NAME));
    assert!(
        greedy >= 4 && beams >= 3 && batched,
        "{greedy} {beams} {batched}"
    );
}

#[test]
fn mobilevlm_v2_generates_the_pytorch_tokens() {
    let r = reference(&package(NAME_V2));
    assert_eq!(r["architecture"], "mobilevlm-ldpnetv2-llama");
    // 24 x 24 patches average-pooled to 12 x 12
    assert_eq!(r["image_tokens"], 144);
    assert_eq!(r["authors_path_check"]["embeds_max_abs_diff"], 0.0);
    assert_eq!(r["degeneracy_check"]["ok"], true);
    let (greedy, beams, batched) = check_generate(&package(NAME_V2));
    assert!(
        greedy >= 4 && beams >= 3 && batched,
        "{greedy} {beams} {batched}"
    );
}

#[test]
fn mobilevlm_reference_follows_the_authors_assembly() {
    let r = reference(&package(NAME));
    assert_eq!(r["architecture"], "mobilevlm-ldpnet-llama");
    assert_eq!(r["projector"], "ldpnet");
    assert_eq!(r["projector_vs_torchvision_timm_max_abs_diff"], 0.0);
    // 24 x 24 patches, downsampled by the stride-2 block: the real model's 144 image tokens
    assert_eq!(r["image_tokens"], 144);
    let a = &r["authors_path_check"];
    assert_eq!(a["embeds_max_abs_diff"], 0.0, "{a}");
    assert_eq!(a["greedy_tokens_equal"], true, "{a}");
    assert_eq!(a["mask_equal"], true, "{a}");
    assert!(r["authors_template"]
        .as_str()
        .expect("template")
        .contains("USER: <image>\n{prompt} ASSISTANT:"));
    for case in r["cases"].as_array().expect("cases") {
        let c = &case["checks"];
        assert_eq!(
            c["template_ids_equal_processor_ids_without_padding"], true,
            "{case}"
        );
        assert_eq!(c["template_layout_generate_equal"], true, "{case}");
        assert_eq!(c["lm_inputs_embeds_max_abs_diff"], 0.0, "{case}");
    }
    // some reference captions end with EOS before the limit, and images differ
    let eos = r["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| {
            c["hit_eos"]
                .as_array()
                .expect("eos")
                .iter()
                .any(|h| h == true)
        })
        .count();
    assert!(eos > 0);
    assert_eq!(r["degeneracy_check"]["ok"], true);
}

#[test]
fn mobilevlm_manifest_counts_only_generated_tokens_in_the_penalty() {
    let toml = std::fs::read_to_string(package(NAME).join("model.toml")).expect("toml");
    assert!(toml.contains("repetition_penalty_on_prompt = false"));
    assert!(toml.contains("image_token = \"<image>\""));
}

#[test]
fn mobilevlm_caption_command_matches_the_references() {
    let pkg = package(NAME);
    let r = reference(&pkg);
    let prompt = r["cases"][0]["prompts"][0]
        .as_str()
        .expect("prompt")
        .to_string();
    let greedy = greedy_by_image(&r, &prompt, 12);
    assert!(greedy.len() >= 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let pick = |row: usize, col: usize| row * 2 + col;
    block_scene(&pkg, &dir.path().join("scene.tif"), 2, 2, pick);
    let model = pkg.display().to_string();
    let res = run(
        dir.path(),
        &[
            "caption",
            "scene.tif",
            "--model",
            &model,
            "--prompt",
            &prompt,
            "--max-new-tokens",
            "12",
            "--batch-size",
            "3",
            "--out",
            "out",
            "--json",
            "--quiet",
        ],
    );
    let j = res.success().json();
    assert_eq!(j["tiles_captioned"], 4, "{}", res.context());
    let jsonl = std::fs::read_to_string(dir.path().join("out/captions.jsonl")).expect("jsonl");
    let mut checked = 0;
    for l in jsonl
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("line"))
    {
        let (row, col) = (
            l["row"].as_u64().expect("r") as usize,
            l["col"].as_u64().expect("c") as usize,
        );
        if let Some(want) = greedy.get(&pick(row, col)) {
            let got: Vec<u64> = l["tokens"]
                .as_array()
                .expect("tokens")
                .iter()
                .map(|v| v.as_u64().expect("t"))
                .collect();
            assert_eq!(&got, want, "tile r{row}c{col}");
            checked += 1;
        }
    }
    assert_eq!(checked, 3, "three tiles checked against the references");
}
