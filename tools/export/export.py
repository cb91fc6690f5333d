#!/usr/bin/env python3
"""Export vision-language checkpoints into tessera model packages.

    python tools/export/export.py COMMAND [options]     (COMMAND --help for its options)

This file only dispatches: each command lives in its family module, which imports
``common.py`` (the shared helpers) and no other exporter.  A new family is one module with an
``add_parser(sub, command)`` function and one line per command in ``COMMANDS`` below.  Package
layouts and manifest schemas: tools/export/README.md.
"""

from __future__ import annotations

import argparse
import importlib

import common

#: command name -> the family module that implements it (in --help order).
COMMANDS = {
    "clip": "clip_export",          # CLIP image + text encoders            (family "clip")
    "blip2": "decoder_export",      # BLIP-2 / OPT image-text decoder       (family "image-text-decoder")
    "llava": "decoder_export",      # LLaVA / Llama image-text decoder      (family "image-text-decoder")
    "tinyllava": "tinyllava_export",  # TinyLLaVA / Phi, Qwen2, Llama        (family "image-text-decoder")
    "minigpt4": "minigpt4_export",  # MiniGPT-4: BLIP-2 ViT-g + Q-Former, llama_proj, Vicuna (family "image-text-decoder")
    "mobilevlm": "mobilevlm_export",  # MobileVLM: CLIP ViT, LDP projector, MobileLLaMA (family "image-text-decoder")
    "instructblip": "t5_export",    # InstructBLIP / Flan-T5 encoder-decoder  (family "cross-attention-decoder")
    "instructblip-vicuna": "instructblip_vicuna_export",  # InstructBLIP / Vicuna (Llama) image-text decoder; also instructblip on a Llama
    "blip": "blip_export",          # BLIP ViT + BERT cross-attention decoder (family "cross-attention-decoder")
    "blip-vqa": "blip_export",      # BLIP question encoder + answer decoder (family "cross-attention-decoder")
    "florence2": "florence2_export",  # Florence-2 DaViT + BART encoder-decoder (family "cross-attention-decoder")
    "idefics": "idefics_export",    # IDEFICS ViT + perceiver + gated cross-attention Llama (family "cross-attention-decoder")
    "openflamingo": "openflamingo_export",  # OpenFlamingo (open_flamingo) in the IDEFICS layout (family "cross-attention-decoder")
    "clipseg": "prompted_export",   # CLIPSeg text-prompted segmenter       (family "segmenter")
    "owlvit": "prompted_export",    # OWL-ViT text-prompted detector        (family "detector")
    "grounding-dino": "open_vocab_export",  # Grounding DINO open-vocabulary detector (family "detector")
    "owlv2": "open_vocab_export",   # OWLv2 text-prompted detector          (family "detector")
    "siglip": "siglip_export",      # SigLIP image + text encoders          (family "siglip")
    "siglip2": "siglip_export",     # fixed-resolution SigLIP2 encoders     (family "siglip")
    "flava": "bert_towers_export",  # FLAVA contrastive image + text towers  (family "flava")
    "chinese-clip": "bert_towers_export",  # Chinese-CLIP image + text encoders (family "chinese-clip")
    "openclip": "openclip_export",  # OpenCLIP checkpoints (RemoteCLIP, ...)  (family "openclip")
    "smolvlm": "smolvlm_export",    # SmolVLM / Idefics3 SigLIP + SmolLM2 decoder (family "image-text-decoder")
    "paligemma": "paligemma_export",  # PaliGemma SigLIP + Gemma prefix-LM decoder (family "image-text-decoder")
    "qwen2-vl": "qwen2vl_export",   # Qwen2-VL, M-RoPE image-text decoder   (family "image-text-decoder")
    "qwen2.5-vl": "qwen2vl_export",  # Qwen2.5-VL, M-RoPE image-text decoder (family "image-text-decoder")
    "sam": "sam_export",            # SAM image encoder + prompt/mask decoder (family "promptable-segmenter")
    "sam2": "sam_export",           # SAM 2 image predictor, same layout   (family "promptable-segmenter")
    "scan-seeds": "clip_export",    # seed scan for clip --tiny
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Export vision-language checkpoints into tessera model packages "
                    "(ONNX encoders + model.toml + tokenizer.json).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See tools/export/README.md for the package layout and manifest schema.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for command, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub, command)
    common.add_quantize_args(sub)  # --int8 / --int4 / --calibrate on every command that writes a package
    return p


def main(argv: list[str] | None = None) -> None:
    common.run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
