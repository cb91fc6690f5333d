"""BLIP-2 / OPT and LLaVA / Llama -> ``image-text-decoder`` packages (``export.py blip2``, ``llava``).

Two small family definitions on the prefix-decoder seam (``prefix_decoder.py``: the language-model
step registry, ``PrefixParts``, ``export_prefix_package``).  What is family-specific here: the
tiny models, the image prefix modules (BLIP-2: vision -> Q-Former -> projection; LLaVA: vision tower
layer -> projector), the prompt templates and processor rules, and checkpoint loading.  Package
layout: tools/export/README.md ("Image-text decoders").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C
import prefix_decoder as PD
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

#: Default seeds of --tiny (random init + EOS logit scale), chosen by a seed scan (see tools/export/README.md).
DEFAULT_SEEDS = {"blip2": 0, "llava": 0}
#: The lm_head row of EOS is multiplied by this factor in --tiny models, so that EOS is
#: actually produced before max_new_tokens in some reference cases.
DEFAULT_EOS_SCALE = {"blip2": 3.0, "llava": 2.0}
#: init std of the tiny models (HF default 0.02 gives near-uniform logits: every image then yields the same repeated token).
DEFAULT_INIT_STD = {"blip2": 1.0, "llava": 1.0}

LLAVA_TEMPLATE = "USER: {image}\n{prompt} ASSISTANT:"
REF_PROMPTS_BLIP2_BATCH = ["", "a satellite photo of", "an aerial image showing a large river delta with"]
REF_PROMPTS_LLAVA = ["What is in this image?",
                     "Describe it.",
                     "Is there a river or a forest in this satellite scene, and where?"]


# --------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------


#: --shape choices per subcommand ("tiny" first: the default, the test fixture with references).
SHAPES = {"blip2": ["tiny", "mid", "opt-2.7b"], "llava": ["tiny"]}
#: init std / EOS logit scale of the benchmark shapes (HF's default init: near-uniform logits, which
#: is fine there, since benchmarks force the caption length with min_new_tokens).
BENCH_INIT_STD = 0.02
BENCH_EOS_SCALE = 1.0
#: OPT's vocabulary size (facebook/opt-*): the benchmark shapes' logits are this wide, although the
#: tiny tokenizer only knows its first few hundred ids (ids past it decode to nothing).
OPT_VOCAB = 50272


def _blip2_bench_config(shape: str, V: int, ids: dict):
    """Blip2Config of the benchmark shapes (random weights, for timing only; no references).

    mid:      OPT-125m language model (hidden 768, 12 layers, 12 heads, ffn 3072, vocab 50272),
              a small 224 px vision tower and Q-Former, 32 query tokens (as the real BLIP-2).
    opt-2.7b: Salesforce/blip2-opt-2.7b's shape: ViT-g/14 at 224 px (Blip2VisionConfig defaults),
              the 12-layer Q-Former (defaults), 32 query tokens, OPT-2.7b (hidden 2560, 32 layers,
              32 heads, ffn 10240, vocab 50272): ~3.8 B parameters.
    """
    from transformers import Blip2Config

    text = dict(model_type="opt", vocab_size=OPT_VOCAB, max_position_embeddings=2048,
                bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    if shape == "mid":
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      image_size=224, patch_size=32)
        qformer = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       encoder_hidden_size=64, vocab_size=V, max_position_embeddings=64)
        text.update(hidden_size=768, word_embed_proj_dim=768, ffn_dim=3072, num_hidden_layers=12,
                    num_attention_heads=12)
    elif shape == "opt-2.7b":
        vision = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                      image_size=224, patch_size=14)
        qformer = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       encoder_hidden_size=1408, vocab_size=30522, max_position_embeddings=512)
        text.update(hidden_size=2560, word_embed_proj_dim=2560, ffn_dim=10240, num_hidden_layers=32,
                    num_attention_heads=32)
    else:
        raise ValueError(f"unknown blip2 --shape {shape!r}")
    return Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                       num_query_tokens=32, image_token_index=ids["image"])


def build_tiny(kind: str, seed: int, init_std: float, eos_scale: float, shape: str = "tiny"):
    """(model, tokenizer, roles, ids) of a seeded random BLIP-2/OPT or LLaVA/Llama."""
    arch = "blip2-opt" if kind == "blip2" else "llava-llama"
    tok, roles, ids = PD.build_tiny_tokenizer(arch)
    V = tok.get_vocab_size()
    torch.manual_seed(seed)
    if kind == "blip2" and shape != "tiny":
        from transformers import Blip2ForConditionalGeneration

        cfg = _blip2_bench_config(shape, V, ids)
        cfg._attn_implementation = "eager"
        model = Blip2ForConditionalGeneration(cfg)
    elif kind == "blip2":
        from transformers import Blip2Config, Blip2ForConditionalGeneration

        cfg = Blip2Config(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=32, patch_size=8),
            qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                encoder_hidden_size=32, vocab_size=V, max_position_embeddings=64),
            text_config=dict(model_type="opt", vocab_size=V, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
                             num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128,
                             bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]),
            num_query_tokens=8, image_token_index=ids["image"],
        )
        cfg._attn_implementation = "eager"
        model = Blip2ForConditionalGeneration(cfg)
    else:
        from transformers import LlavaConfig, LlavaForConditionalGeneration

        cfg = LlavaConfig(
            vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
                               projection_dim=32, hidden_act="quick_gelu"),
            text_config=dict(model_type="llama", vocab_size=V, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                             max_position_embeddings=256, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                             pad_token_id=ids["pad"], tie_word_embeddings=False),
            image_token_index=ids["image"], vision_feature_layer=-2, vision_feature_select_strategy="default",
            projector_hidden_act="gelu", image_seq_length=16, tie_word_embeddings=False,
        )
        cfg._attn_implementation = "eager"
        model = LlavaForConditionalGeneration(cfg)
    PD.reinit(model, init_std)
    with torch.no_grad():
        lm_head = model.get_output_embeddings()
        lm_head.weight[ids["eos"]] *= eos_scale
    model.eval()
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    return model, tok, roles, ids


# --------------------------------------------------------------------------------------
# Wrappers (what goes into the three graphs)
# --------------------------------------------------------------------------------------


class Blip2Prefix(nn.Module):
    """BLIP-2: vision encoder -> Q-Former(query_tokens) -> language_projection (as in generate())."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, pixel_values):
        m = self.m
        image_embeds = m.vision_model(pixel_values, return_dict=True).last_hidden_state
        mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
        q = m.query_tokens.expand(image_embeds.shape[0], -1, -1)
        out = m.qformer(query_embeds=q, encoder_hidden_states=image_embeds, encoder_attention_mask=mask,
                        return_dict=True).last_hidden_state
        return m.language_projection(out)


class LlavaPrefix(nn.Module):
    """LLaVA: vision tower hidden_states[vision_feature_layer] (CLS dropped for 'default') -> projector."""

    def __init__(self, model):
        super().__init__()
        self.m = model
        cfg = model.config
        self.layer = cfg.vision_feature_layer
        self.strategy = cfg.vision_feature_select_strategy

    def forward(self, pixel_values):
        vt = self.m.model.vision_tower
        hs = vt(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
        layers = [self.layer] if isinstance(self.layer, int) else list(self.layer)
        feats = [hs[i][:, 1:] if self.strategy == "default" else hs[i] for i in layers]
        return self.m.model.multi_modal_projector(torch.cat(feats, dim=-1))



# --------------------------------------------------------------------------------------
# The two families on the seam
# --------------------------------------------------------------------------------------


class Blip2Parts(PD.PrefixParts):
    """BLIP-2 / OPT: P = num_query_tokens image tokens in FRONT of the tokenizer output."""

    def __init__(self, model, hf_tok, size: int, mean, std):
        cfg = model.config
        lm = model.language_model
        # Blip2Processor: num_query_tokens image tokens, THEN the tokenizer output (which
        # starts with BOS).  Written as a template with a literal BOS and add_bos = false.
        bos = hf_tok.convert_ids_to_tokens(lm.config.bos_token_id)
        super().__init__(model, hf_tok, size, mean, std, kind="blip2", architecture="blip2-opt",
                         prefix=Blip2Prefix(model), embed=lm.get_input_embeddings(),
                         lm_backbone=lm.model, lm_head=lm.lm_head, text_cfg=lm.config,
                         tokens=cfg.num_query_tokens, image_token_id=cfg.image_token_id,
                         template="{image}" + bos + "{prompt}", add_bos=False,
                         gen_model=lm,  # the module whose generation_config generate() uses
                         hook_module=lm,
                         ref_prompts=("", REF_PROMPTS_BLIP2_BATCH, ["", "a satellite photo of"]))

    def processor_ids(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids/attention_mask exactly as transformers 5.24's ``Blip2Processor`` builds them.

        A restatement of its text path (the image processor needs PIL/torchvision, which the
        exporter does not install; pixels come from ``preprocess_u8`` instead):
        ``tok(prompts, padding=True)`` (left padding, BOS first), then the ``num_query_tokens``
        image tokens (no special tokens, no padding) are put IN FRONT of each padded row, so
        padding sits between the image tokens and BOS.
        """
        self.hf_tok.padding_side = "left"
        enc = self.hf_tok(prompts, padding=True)
        img = self.hf_tok(self.image_token * self.tokens, add_special_tokens=False, padding=False,
                          truncation=False)
        ids = [img["input_ids"] + r for r in enc["input_ids"]]
        mask = [img["attention_mask"] + r for r in enc["attention_mask"]]
        return np.asarray(ids, np.int64), np.asarray(mask, np.int64)

    def hf_lm_logits(self, emb, mask, pos):
        return self.model.language_model(inputs_embeds=emb, attention_mask=torch.from_numpy(mask),
                                         position_ids=torch.from_numpy(pos), use_cache=False).logits


def llava_image_tokens(cfg) -> int:
    """P of a LlavaForConditionalGeneration config: (S/patch)^2 (+1 CLS for strategy "full")."""
    vc = cfg.vision_config
    n = (vc.image_size // vc.patch_size) ** 2 + 1  # + CLS
    if cfg.vision_feature_select_strategy == "default":
        n -= 1
    return n


class LlavaParts(PD.PrefixParts):
    """LLaVA (``LlavaForConditionalGeneration``): the language model comes from the registry
    (``text_config.model_type``), the prompt rule is ``LlavaProcessor``'s (the default)."""

    def __init__(self, model, hf_tok, size: int, mean, std, *, architecture: str = "llava-llama",
                 template: str = LLAVA_TEMPLATE, ref_prompts=None, tokens: int | None = None,
                 prefix: nn.Module | None = None, kind: str = "llava"):
        cfg = model.config
        super().__init__(model, hf_tok, size, mean, std, kind=kind, architecture=architecture,
                         prefix=prefix if prefix is not None else LlavaPrefix(model),
                         embed=model.get_input_embeddings(),
                         lm_backbone=model.model.language_model, lm_head=model.lm_head,
                         text_cfg=cfg.text_config,
                         tokens=llava_image_tokens(cfg) if tokens is None else tokens,
                         image_token_id=cfg.image_token_id, template=template, add_bos=True,
                         ref_prompts=ref_prompts or (REF_PROMPTS_LLAVA[0], REF_PROMPTS_LLAVA,
                                                     REF_PROMPTS_LLAVA[:2]))


def make_parts(kind: str, model, hf_tok, size: int, mean, std) -> PD.PrefixParts:
    return (Blip2Parts if kind == "blip2" else LlavaParts)(model, hf_tok, size, mean, std)


# --------------------------------------------------------------------------------------
# Loading real checkpoints
# --------------------------------------------------------------------------------------


def load_checkpoint(kind: str, src: str) -> PD.PrefixParts:
    """Model + tokenizer + preprocessing of a hub id or save_pretrained folder.

    The image processor settings are read as JSON (``common.image_processor_config``:
    preprocessor_config.json, or transformers 5's processor_config.json), and the processor's own
    settings in processor_config.json (BLIP-2: num_query_tokens; LLaVA: patch_size,
    num_additional_image_tokens, strategy) are checked against the number of image tokens the
    model produces.
    """
    from transformers import AutoTokenizer

    pp = C.image_processor_config(src)  # first: SystemExit when the checkpoint has none
    tok = AutoTokenizer.from_pretrained(src)
    if kind == "blip2":
        from transformers import Blip2ForConditionalGeneration as Cls
    else:
        from transformers import LlavaForConditionalGeneration as Cls
    model = Cls.from_pretrained(src, attn_implementation="eager", dtype=torch.float32).eval()
    vc = model.config.vision_config
    size = C.square_size(pp, vc.image_size)
    if size != vc.image_size:
        raise ValueError(f"image processor size {size} != vision_config.image_size {vc.image_size}")
    parts = make_parts(kind, model, tok, size, pp["image_mean"], pp["image_std"])
    pc = C.read_json(src, "processor_config.json") or {}
    if kind == "blip2" and pc.get("num_query_tokens") not in (None, parts.tokens):
        raise ValueError(f"processor num_query_tokens {pc['num_query_tokens']} != model {parts.tokens}")
    if kind == "llava" and "patch_size" in pc:
        n = (size // pc["patch_size"]) ** 2 + pc.get("num_additional_image_tokens", 0)
        n -= 1 if pc.get("vision_feature_select_strategy") == "default" else 0
        if n != parts.tokens:
            raise ValueError(f"processor expands <image> to {n} tokens, the model yields {parts.tokens}")
    return parts


# --------------------------------------------------------------------------------------
# The `blip2` / `llava` subcommands
# --------------------------------------------------------------------------------------


def export_decoder(args) -> None:
    kind = args.command
    if kind == "blip2":
        lm = C.language_model_type(args, "opt")
        if lm != "opt":  # BLIP-2 with Flan-T5: a cross-attention-decoder package (t5_export.py)
            return C.language_model_exporter(kind, lm)(args)
    tv = transformers.__version__
    shape = getattr(args, "shape", "tiny")
    if shape != "tiny" and not args.tiny:
        raise SystemExit("--shape only applies with --tiny")
    seed_info = None
    if args.tiny:
        bench = shape != "tiny"
        seed = DEFAULT_SEEDS[kind] if args.seed is None else args.seed
        init_std = (BENCH_INIT_STD if bench else DEFAULT_INIT_STD[kind]) if args.init_std is None else args.init_std
        eos_scale = (BENCH_EOS_SCALE if bench else DEFAULT_EOS_SCALE[kind]) if args.eos_scale is None else args.eos_scale
        model, tok, roles, _ = build_tiny(kind, seed, init_std, eos_scale, shape)
        hf = PD.hf_tokenizer(tok, roles)
        size = model.config.vision_config.image_size
        parts = make_parts(kind, model, hf, size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        name = args.name or (f"{kind}-tiny-random" if shape == "tiny" else f"{kind}-{shape}-random")
        source = (f"random init, seed {seed}, init std {init_std}, eos logit scale {eos_scale}, "
                  + ("" if shape == "tiny" else f"shape {shape}, ")
                  + f"transformers {tv}, torch {torch.__version__}")
        trained = False
        if args.save_pretrained:
            sp = Path(args.save_pretrained)
            model.save_pretrained(sp)
            hf.save_pretrained(sp)
            parts_proc_dir(parts, sp)
            print(f"export: wrote save_pretrained folder {sp}", file=sys.stderr)
        if shape == "tiny" and not args.no_reference:
            seed_info = dict(seed=seed, init_std=init_std, eos_logit_scale=eos_scale)
    else:
        parts = load_checkpoint(kind, args.source)
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
        trained = True
    PD.export_prefix_package(args, parts, name=name, source=source, trained=trained,
                             reference_seed_info=seed_info)


def parts_proc_dir(parts: PD.PrefixParts, sp: Path) -> None:
    """Processor config files next to a save_pretrained tiny model (what the hub repos carry)."""
    pre = {"image_mean": parts.mean, "image_std": parts.std, "do_normalize": True, "do_rescale": True,
           "rescale_factor": 1 / 255}
    if parts.kind == "blip2":
        pre.update(image_processor_type="BlipImageProcessor", size={"height": parts.size, "width": parts.size})
        proc = {"processor_class": "Blip2Processor", "num_query_tokens": parts.tokens}
    else:
        pre.update(image_processor_type="CLIPImageProcessor", size={"shortest_edge": parts.size},
                   crop_size={"height": parts.size, "width": parts.size})
        proc = {"processor_class": "LlavaProcessor",
                "patch_size": parts.model.config.vision_config.patch_size,
                "vision_feature_select_strategy": parts.model.config.vision_feature_select_strategy,
                "num_additional_image_tokens": 1}
    (sp / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    (sp / "processor_config.json").write_text(json.dumps(proc, indent=1))


#: command -> (description, example hub id)
_COMMANDS = {
    "blip2": ("BLIP-2 with an OPT language model (Blip2ForConditionalGeneration)", "Salesforce/blip2-opt-2.7b"),
    "llava": ("LLaVA with a Llama language model (LlavaForConditionalGeneration)", "llava-hf/llava-1.5-7b-hf"),
}


def add_parser(sub, command: str) -> None:
    """Add the ``blip2`` or ``llava`` subcommand to ``sub`` (export.py's subparsers)."""
    kind = command
    desc, example = _COMMANDS[kind]
    c = sub.add_parser(kind, help=f"export {desc} as an image-text-decoder package",
                       description=f"Export {desc}: image_prefix.onnx, embed_tokens.onnx, decoder.onnx "
                                   "(one merged graph with KV cache), tokenizer.json, model.toml.")
    C.add_source_args(c, from_help=f"hub id (e.g. {example}) or a save_pretrained folder with the processor files",
                      tiny_help="seeded random model of the real architecture")
    C.add_out_arg(c)
    PD.add_prefix_args(c, seed=DEFAULT_SEEDS[kind], init_std=DEFAULT_INIT_STD[kind],
                       eos_scale=DEFAULT_EOS_SCALE[kind])
    shapes = SHAPES[kind]
    c.add_argument("--shape", choices=shapes, default="tiny",
                   help="--tiny: 'tiny' (the test fixture, with reference/)"
                        + (", or a random benchmark model without reference/: 'mid' (OPT-125m language "
                           "model, small vision tower) or 'opt-2.7b' (blip2-opt-2.7b's shape, ~3.8 B "
                           "parameters; its big graphs keep their weights in <graph>.onnx.data)"
                           if len(shapes) > 1 else ""))
    if kind == "blip2":
        c.add_argument("--language-model", choices=["opt", "t5"], default=None,
                       help="--tiny: the language model (default opt); with --from it is read from config.json "
                            "(text_config.model_type); t5 writes a cross-attention-decoder package")
    c.set_defaults(func=export_decoder)
