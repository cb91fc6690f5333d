"""TinyLLaVA (HF LLaVA layout, Phi / Qwen2 / Llama language model) -> ``image-text-decoder`` packages.

``export.py tinyllava --from DIR | --tiny --out PKG [--language-model phi|qwen2|llama]
[--vision siglip|clip]``.  The HF-format TinyLLaVA checkpoints (e.g. ``bczhou/tiny-llava-v1-hf``)
are ``LlavaForConditionalGeneration`` models: a CLIP or SigLIP vision tower, the LLaVA
projector, and a small decoder-only language model given by ``text_config.model_type``.  This
module is one family definition on the prefix-decoder seam (``prefix_decoder.py``): the language
model's decoder step comes from its registry (``phi``, ``qwen2``, ``llama``...), so a new language
model needs no change here, and none in Rust.  Package layout: tools/export/README.md
("Image-text decoders"; "TinyLLaVA").
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers

import common as C
import prefix_decoder as PD
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

#: the prompt rule of the tiny fixtures and the default of --from (LLaVA-1.5's, which the
#: bczhou/tiny-llava-v1-hf model card uses); --template overrides it.
TEMPLATE = "USER: {image}\n{prompt} ASSISTANT:"
REF_PROMPTS = ["What is in this image?",
               "Describe it.",
               "Is there a river or a forest in this satellite scene, and where?"]
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]

#: --tiny language models: text_config of the tiny model; the real tokenizers of Phi-2 and Qwen2
#: add no BOS (so the tiny tokenizer does not either), Llama's (TinyLlama) adds <s>.
TINY_TEXT = {
    # Phi-2 layout: parallel attention + MLP, partial rotary (0.5 of head_dim), biases, gelu_new
    "phi": dict(model_type="phi", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, partial_rotary_factor=0.5,
                hidden_act="gelu_new", max_position_embeddings=256, tie_word_embeddings=False),
    # Qwen2 layout: Llama with q/k/v biases, GQA
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                  tie_word_embeddings=False),
    # TinyLlama / SmolLM2 layout
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                  tie_word_embeddings=False),
}
ADD_BOS = {"phi": False, "qwen2": False, "llama": True}
#: --tiny vision towers (TinyLLaVA: SigLIP with every patch, "full"; LLaVA-1.5 / tiny-llava-v1-hf:
#: CLIP without CLS, "default"; both from hidden_states[-2])
TINY_VISION = {
    "siglip": (dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, image_size=32, patch_size=8), "full", SIGLIP_MEAN, SIGLIP_STD),
    "clip": (dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32, hidden_act="quick_gelu"),
             "default", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
}
DEFAULT_VISION = {"phi": "siglip", "qwen2": "siglip", "llama": "clip"}
#: --tiny defaults per language model: (seed, init std, EOS row scale), chosen so that the references
#: differ per image and prompt and some end with EOS (the degeneracy report says so).
DEFAULTS = {"phi": (0, 1.0, 2.0), "qwen2": (0, 1.0, 3.0), "llama": (0, 1.0, 2.0)}


class TinyLlavaParts(PD.LlavaLayoutParts):
    def __init__(self, model, hf_tok, size: int, mean, std, *, add_bos: bool, template: str = TEMPLATE):
        lm = model.config.text_config.model_type
        super().__init__(model, hf_tok, size, mean, std, kind="tinyllava", architecture=f"tinyllava-{lm}",
                         template=template, add_bos=add_bos,
                         ref_prompts=(REF_PROMPTS[0], REF_PROMPTS, REF_PROMPTS[:2]))


def build_tiny(lm: str, vision: str, seed: int, init_std: float, eos_scale: float):
    """(model, hf tokenizer, mean, std) of a seeded random LlavaForConditionalGeneration."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tok, roles, ids = PD.build_tiny_tokenizer("llava-llama", prepend_bos=ADD_BOS[lm])
    V = tok.get_vocab_size()
    vcfg, strategy, mean, std = TINY_VISION[vision]
    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=dict(vcfg),
        text_config=dict(TINY_TEXT[lm], vocab_size=V, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                         pad_token_id=ids["pad"]),
        image_token_index=ids["image"], vision_feature_layer=-2, vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu", image_seq_length=16, tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    model = LlavaForConditionalGeneration(cfg)
    PD.reinit(model, init_std)
    with torch.no_grad():
        model.get_output_embeddings().weight[ids["eos"]] *= eos_scale
    model.eval()
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    return model, PD.hf_tokenizer(tok, roles), mean, std


def tokenizer_adds_bos(tok) -> bool:
    """Whether the tokenizer puts BOS in front by itself (TinyLlama: yes; Phi-2, Qwen2: no)."""
    ids = tok("a")["input_ids"]
    return tok.bos_token_id is not None and len(ids) > 0 and ids[0] == tok.bos_token_id


def load_checkpoint(src: str, template: str) -> TinyLlavaParts:
    """A save_pretrained folder (or hub id in the local cache) of a LlavaForConditionalGeneration."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    pp = C.image_processor_config(src)  # first: SystemExit when the checkpoint has none
    cfg = C.read_json(src, "config.json") or {}
    if cfg.get("model_type") not in (None, "llava"):
        raise SystemExit(f"export: {src}: model_type {cfg.get('model_type')!r} is not the HF LLaVA layout "
                         "(LlavaForConditionalGeneration); TinyLLaVA Factory checkpoints with their own "
                         "modelling code (model_type 'tinyllava') are not supported")
    # an unknown language model fails here, in one line, before the weights are loaded
    PD.lm_step_for(SimpleNamespace(model_type=(cfg.get("text_config") or {}).get("model_type", "llama")))
    tok = AutoTokenizer.from_pretrained(src)
    model = LlavaForConditionalGeneration.from_pretrained(src, attn_implementation="eager",
                                                          dtype=torch.float32).eval()
    vc = model.config.vision_config
    size = C.square_size(pp, vc.image_size)
    if size != vc.image_size:
        raise ValueError(f"image processor size {size} != vision_config.image_size {vc.image_size}")
    parts = TinyLlavaParts(model, tok, size, pp["image_mean"], pp["image_std"], add_bos=tokenizer_adds_bos(tok),
                           template=template)
    PD.check_llava_processor_tokens(parts, src)
    return parts


def export_tinyllava(args) -> None:
    tv = transformers.__version__
    seed_info = None
    if args.tiny:
        lm = args.language_model or "phi"
        vision = args.vision or DEFAULT_VISION[lm]
        d_seed, d_std, d_eos = DEFAULTS[lm]
        seed = d_seed if args.seed is None else args.seed
        init_std = d_std if args.init_std is None else args.init_std
        eos_scale = d_eos if args.eos_scale is None else args.eos_scale
        model, hf, mean, std = build_tiny(lm, vision, seed, init_std, eos_scale)
        size = model.config.vision_config.image_size
        parts = TinyLlavaParts(model, hf, size, mean, std, add_bos=ADD_BOS[lm],
                               template=args.template or TEMPLATE)
        name = args.name or f"tinyllava-{lm}-{vision}-tiny-random"
        source = (f"random init, {lm} language model, {vision} vision tower, seed {seed}, init std {init_std}, "
                  f"eos logit scale {eos_scale}, transformers {tv}, torch {torch.__version__}")
        trained = False
        if args.save_pretrained:
            sp = Path(args.save_pretrained)
            model.save_pretrained(sp)
            hf.save_pretrained(sp)
            if vision == "siglip":
                PD.llava_processor_files(parts, sp, "SiglipImageProcessor", num_additional_image_tokens=0)
            else:
                PD.llava_processor_files(parts, sp)
            print(f"export: wrote save_pretrained folder {sp}", file=sys.stderr)
        if not args.no_reference:
            seed_info = dict(seed=seed, init_std=init_std, eos_logit_scale=eos_scale,
                             language_model=lm, vision=vision)
    else:
        if args.language_model is not None or args.vision is not None:
            raise SystemExit("--language-model and --vision only apply with --tiny (with --from, config.json says)")
        parts = load_checkpoint(args.source, args.template or TEMPLATE)
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
        trained = True
    PD.export_prefix_package(args, parts, name=name, source=source, trained=trained,
                             reference_seed_info=seed_info)


def add_parser(sub, command: str) -> None:
    """Add the ``tinyllava`` subcommand to ``sub`` (export.py's subparsers)."""
    c = sub.add_parser(command, help="export TinyLLaVA (HF LLaVA layout with a Phi / Qwen2 / Llama "
                                     "language model) as an image-text-decoder package",
                       description="Export an HF-format TinyLLaVA (LlavaForConditionalGeneration with a "
                                   "SigLIP or CLIP tower and a Phi, Qwen2 or Llama language model): "
                                   "image_prefix.onnx, embed_tokens.onnx, decoder.onnx (one merged graph "
                                   "with KV cache), tokenizer.json, model.toml.")
    C.add_source_args(c, from_help="hub id (e.g. bczhou/tiny-llava-v1-hf) or a save_pretrained folder with "
                                   "the processor files",
                      tiny_help="seeded random model of the real architecture")
    C.add_out_arg(c)
    PD.add_prefix_args(c, seed=0, init_std=1.0, eos_scale=2.0)  # (qwen2: eos scale 3.0, see DEFAULTS)
    c.add_argument("--language-model", choices=sorted(TINY_TEXT), default=None,
                   help="--tiny: the language model (default phi); with --from, text_config.model_type says "
                        "(any type registered in prefix_decoder.py)")
    c.add_argument("--vision", choices=sorted(TINY_VISION), default=None,
                   help="--tiny: the vision tower (default siglip for phi and qwen2, clip for llama)")
    c.add_argument("--template", default=None,
                   help=f"prompt template with {{image}} and {{prompt}} (default {TEMPLATE!r})")
    c.set_defaults(func=export_tinyllava)
