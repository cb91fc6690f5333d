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
    "instructblip": "t5_export",    # InstructBLIP / Flan-T5 encoder-decoder  (family "cross-attention-decoder")
    "blip": "blip_export",          # BLIP ViT + BERT cross-attention decoder (family "cross-attention-decoder")
    "blip-vqa": "blip_export",      # BLIP question encoder + answer decoder (family "cross-attention-decoder")
    "florence2": "florence2_export",  # Florence-2 DaViT + BART encoder-decoder (family "cross-attention-decoder")
    "idefics": "idefics_export",    # IDEFICS ViT + perceiver + gated cross-attention Llama (family "cross-attention-decoder")
    "openflamingo": "openflamingo_export",  # OpenFlamingo (open_flamingo) in the IDEFICS layout (family "cross-attention-decoder")
    "clipseg": "prompted_export",   # CLIPSeg text-prompted segmenter       (family "segmenter")
    "owlvit": "prompted_export",    # OWL-ViT text-prompted detector        (family "detector")
    "siglip": "siglip_export",      # SigLIP image + text encoders          (family "siglip")
    "siglip2": "siglip_export",     # fixed-resolution SigLIP2 encoders     (family "siglip")
    "flava": "bert_towers_export",  # FLAVA contrastive image + text towers  (family "flava")
    "chinese-clip": "bert_towers_export",  # Chinese-CLIP image + text encoders (family "chinese-clip")
    "openclip": "openclip_export",  # OpenCLIP checkpoints (RemoteCLIP, ...)  (family "openclip")
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
    return p


def main(argv: list[str] | None = None) -> None:
    common.run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
