"""Image-conditioned decoders (BLIP-2 / OPT, LLaVA / Llama) -> ``image-text-decoder`` packages.

Used by ``export.py blip2`` and ``export.py llava`` (see tools/export/README.md).  A package::

    model.toml          manifest, family = "image-text-decoder"
    image_prefix.onnx   pixel_values [B,3,S,S] f32 -> prefix_embeds [B,P,H] f32
    embed_tokens.onnx   input_ids [B,T] i64 -> inputs_embeds [B,T,H] f32
    decoder.onnx        one merged graph (prefill = past length 0, and decode steps):
                        inputs_embeds [B,T,H], attention_mask [B,past+T] i64, position_ids [B,T] i64,
                        past_key_values.{i}.key/.value [B,kv,past,hd]
                        -> logits [B,T,V], present.{i}.key/.value [B,kv,past+T,hd]
    tokenizer.json      HF tokenizers file
    reference/          (--tiny only) PyTorch `generate` references

The decoder graph is a re-statement of HF's eager OPT / Llama forward that reads every
weight from the HF modules (so the numbers are HF's) but takes ``position_ids`` and the KV
cache as plain tensors; it is checked against the HF language model before export.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

#: Default seeds of --tiny (random init + EOS logit scale), chosen with `export.py scan-decoder-seeds`.
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
# Tiny tokenizer (real BPE, trained on a small caption corpus)
# --------------------------------------------------------------------------------------

_SUBJECTS = ["forest", "river", "city", "desert", "farmland", "lake", "coast", "harbor", "airport",
             "mountain", "glacier", "wetland", "vineyard", "road", "bridge", "village", "field",
             "orchard", "beach", "island", "canal", "quarry", "dam", "highway", "suburb"]
_ADJS = ["dense", "green", "dry", "flooded", "bright", "dark", "sandy", "snowy", "urban", "rural",
         "small", "large", "narrow", "wide", "irrigated", "burned", "cloudy", "clear"]
_FRAMES = ["a satellite image of a {a} {s}",
           "an aerial photo of the {s} with {a} {t}",
           "a {a} {s} next to a {t}",
           "sentinel-2 scene showing {a} {s} and a {t}",
           "the {s} is {a} and surrounded by {t}",
           "what is in this image? a {a} {s}.",
           "describe the scene: {a} {s}, {t}, clouds.",
           "is there a {s} in this picture? yes, a {a} one near the {t}.",
           "USER: what do you see? ASSISTANT: a {a} {s}"]


def caption_corpus() -> list[str]:
    """A few hundred deterministic caption-like lines (the tiny tokenizers' training text)."""
    lines = []
    for i in range(360):
        s = _SUBJECTS[i % len(_SUBJECTS)]
        t = _SUBJECTS[(i * 7 + 3) % len(_SUBJECTS)]
        a = _ADJS[(i * 5 + i // 9) % len(_ADJS)]
        lines.append(_FRAMES[i % len(_FRAMES)].format(a=a, s=s, t=t))
    return lines


def build_tiny_tokenizer(arch: str, vocab_size: int = 800):
    """(tokenizers.Tokenizer, specials dict) for the tiny models.

    blip2-opt mirrors OPT's GPT-2 style: <s>=0, <pad>=1, </s>=2 (bos = eos = 2), <unk>=3, and the
    post-processor prepends </s>.  llava-llama mirrors Llama: <unk>=0, <s>=1 (bos), </s>=2 (eos),
    <pad>=3, and the post-processor prepends <s>.  "<image>" is special token 4 in both.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if arch == "blip2-opt":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<image>"]
        roles = {"bos": "</s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>", "image": "<image>"}
    else:
        specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
        roles = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>", "image": "<image>"}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(caption_corpus(), trainer=trainer)
    bos = roles["bos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    ids = {k: tok.token_to_id(v) for k, v in roles.items()}
    return tok, roles, ids


def hf_tokenizer(tok, roles: dict):
    """Wrap a tokenizers.Tokenizer as an HF tokenizer (left padding, as for generation)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=roles["bos"], eos_token=roles["eos"],
                                 pad_token=roles["pad"], unk_token=roles["unk"],
                                 extra_special_tokens={"image_token": roles["image"]},
                                 padding_side="left")
    return hf


# --------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------


def _reinit(model: nn.Module, std: float) -> None:
    """Re-draw every Linear/Embedding weight N(0, std) (biases N(0, std/4)); norms stay 1/0."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.normal_(m.bias, 0.0, std / 4)
        elif isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.endswith("query_tokens") or name.endswith("class_embedding"):
            nn.init.normal_(p, 0.0, 1.0)


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
    tok, roles, ids = build_tiny_tokenizer(arch)
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
    _reinit(model, init_std)
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


class EmbedTokens(nn.Module):
    def __init__(self, emb: nn.Embedding):
        super().__init__()
        self.emb = emb

    def forward(self, input_ids):
        return self.emb(input_ids)


def _additive_mask(attention_mask: torch.Tensor, q_len_like: torch.Tensor, dtype) -> torch.Tensor:
    """[B,1,T,past+T] additive mask: 0 where key j <= query position and mask[b,j]==1, else finfo.min."""
    ones_k = torch.ones_like(attention_mask[:1, :])
    k_idx = torch.cumsum(ones_k, dim=1) - 1                                     # [1, K]
    total = torch.sum(ones_k, dim=1, keepdim=True)                              # [1, 1]
    ones_q = torch.ones_like(q_len_like[:1, :, 0], dtype=torch.long)            # [1, T]
    q_idx = torch.cumsum(ones_q, dim=1) - 1 + (total - torch.sum(ones_q, dim=1, keepdim=True))  # [1, T]
    causal = k_idx[:, None, :] <= q_idx[:, :, None]                             # [1, T, K]
    diag = k_idx[:, None, :] == q_idx[:, :, None]                               # [1, T, K]
    # A padding query (mask 0) may still attend to itself, so that no row is fully masked (keeps
    # fp16 graphs NaN-free); rows of non-padding tokens are exactly HF's causal & padding mask.
    allowed = (causal[:, None, :, :] & (attention_mask[:, None, None, :] != 0)) | diag[:, None, :, :]
    zero = torch.zeros((), dtype=dtype)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, zero, neg)


def _attend(q, k, v, mask_add, n_rep: int, scaling: float):
    if n_rep > 1:
        b, h, s, d = k.shape
        k = k[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)
        v = v[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)
    w = torch.matmul(q, k.transpose(2, 3)) * scaling + mask_add
    w = torch.softmax(w.float(), dim=-1).to(q.dtype)
    o = torch.matmul(w, v)
    return o.transpose(1, 2)


class OPTDecoderStep(nn.Module):
    """HF OPTForCausalLM (eager), with explicit position_ids and a tensor KV cache."""

    def __init__(self, decoder, lm_head, cfg):
        super().__init__()
        self.dec = decoder
        self.lm_head = lm_head
        self.n_layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.kv_heads = self.heads
        self.pre_ln = cfg.do_layer_norm_before

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        d = self.dec
        h = inputs_embeds
        if d.project_in is not None:
            h = d.project_in(h)
        pe = d.embed_positions
        h = h + nn.functional.embedding(position_ids + pe.offset, pe.weight)
        mask_add = _additive_mask(attention_mask, inputs_embeds, h.dtype)
        B = h.shape[0]
        presents = []
        for i, layer in enumerate(d.layers):
            a = layer.self_attn
            residual = h
            x = layer.self_attn_layer_norm(h) if self.pre_ln else h
            q = (a.q_proj(x) * a.scaling).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            v = a.v_proj(x).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            o = _attend(q, k, v, mask_add, 1, 1.0).reshape(B, -1, self.heads * self.head_dim)
            h = residual + a.out_proj(o)
            if not self.pre_ln:
                h = layer.self_attn_layer_norm(h)
            residual = h
            x = layer.final_layer_norm(h) if self.pre_ln else h
            h = residual + layer.fc2(layer.activation_fn(layer.fc1(x)))
            if not self.pre_ln:
                h = layer.final_layer_norm(h)
        if d.final_layer_norm is not None:
            h = d.final_layer_norm(h)
        if d.project_out is not None:
            h = d.project_out(h)
        return (self.lm_head(h), *presents)


class LlamaDecoderStep(nn.Module):
    """HF LlamaForCausalLM (eager), with explicit position_ids and a tensor KV cache."""

    def __init__(self, text_model, lm_head, cfg):
        super().__init__()
        self.m = text_model
        self.lm_head = lm_head
        self.n_layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        m = self.m
        h = inputs_embeds
        cos, sin = m.rotary_emb(h, position_ids)
        mask_add = _additive_mask(attention_mask, inputs_embeds, h.dtype)
        B = h.shape[0]
        presents = []
        for i, layer in enumerate(m.layers):
            a = layer.self_attn
            residual = h
            x = layer.input_layernorm(h)
            q = a.q_proj(x).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(B, -1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = a.v_proj(x).view(B, -1, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            o = _attend(q, k, v, mask_add, self.heads // self.kv_heads, a.scaling)
            h = residual + a.o_proj(o.reshape(B, -1, self.heads * self.head_dim))
            residual = h
            h = residual + layer.mlp(layer.post_attention_layernorm(h))
        h = m.norm(h)
        return (self.lm_head(h), *presents)


# --------------------------------------------------------------------------------------
# Model plumbing: the three graphs + prompt rules of one model
# --------------------------------------------------------------------------------------


class Parts:
    """Everything the exporter needs to know about one loaded model."""

    def __init__(self, kind: str, model, hf_tok, size: int, mean, std):
        self.kind, self.model, self.hf_tok = kind, model, hf_tok
        self.size, self.mean, self.std = size, list(mean), list(std)
        cfg = model.config
        if kind == "blip2":
            lm = model.language_model
            self.architecture = "blip2-opt"
            self.prefix = Blip2Prefix(model).eval()
            self.embed = EmbedTokens(lm.get_input_embeddings()).eval()
            self.decoder = OPTDecoderStep(lm.model.decoder, lm.lm_head, lm.config).eval()
            self.tokens = int(cfg.num_query_tokens)
            self.image_token_id = int(cfg.image_token_id)
            self.text_cfg = lm.config
            self.gen_model = lm  # the module whose generation_config generate() uses
            # Blip2Processor: num_query_tokens image tokens, THEN the tokenizer output (which
            # starts with BOS).  Written as a template with a literal BOS and add_bos = false.
            bos = hf_tok.convert_ids_to_tokens(self.text_cfg.bos_token_id)
            self.template = "{image}" + bos + "{prompt}"
            self.add_bos = False
        else:
            self.architecture = "llava-llama"
            self.prefix = LlavaPrefix(model).eval()
            self.embed = EmbedTokens(model.get_input_embeddings()).eval()
            self.decoder = LlamaDecoderStep(model.model.language_model, model.lm_head, cfg.text_config).eval()
            vc = cfg.vision_config
            n = (vc.image_size // vc.patch_size) ** 2 + 1  # + CLS
            if cfg.vision_feature_select_strategy == "default":
                n -= 1
            self.tokens = n
            self.image_token_id = int(cfg.image_token_id)
            self.text_cfg = cfg.text_config
            self.gen_model = model
            self.template = LLAVA_TEMPLATE
            self.add_bos = True
        self.image_token = hf_tok.convert_ids_to_tokens(self.image_token_id)
        d = self.decoder
        self.layers, self.kv_heads, self.head_dim = d.n_layers, d.kv_heads, d.head_dim
        self.hidden = int(self.embed.emb.weight.shape[1])
        self.vocab = int(self.text_cfg.vocab_size)
        self.max_positions = int(self.text_cfg.max_position_embeddings)
        self.bos, self.eos, self.pad = (self.text_cfg.bos_token_id, self.text_cfg.eos_token_id,
                                        self.text_cfg.pad_token_id)
        if isinstance(self.eos, (list, tuple)):
            self.eos = self.eos[0]
        if self.pad is None:
            self.pad = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else self.eos

    # -- prompt assembly (the rule the Rust side implements) ---------------------------------
    def prompt_text(self, prompt: str) -> str:
        return self.template.replace("{image}", self.image_token * self.tokens).replace("{prompt}", prompt)

    def template_ids(self, prompt: str) -> list[int]:
        return self.hf_tok(self.prompt_text(prompt), add_special_tokens=self.add_bos)["input_ids"]

    def left_pad(self, seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        n = max(len(s) for s in seqs)
        ids = np.full((len(seqs), n), self.pad, np.int64)
        mask = np.zeros((len(seqs), n), np.int64)
        for r, s in enumerate(seqs):
            ids[r, n - len(s):] = s
            mask[r, n - len(s):] = 1
        return ids, mask

    def processor_ids(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids/attention_mask exactly as the transformers 5.24 processor builds them.

        A line-by-line restatement of the text path of ``Blip2Processor.__call__`` and
        ``LlavaProcessor`` (their image processors need PIL/torchvision, which the exporter does
        not install; pixels come from ``preprocess_u8`` instead):

        * BLIP-2: ``tok(prompts, padding=True)`` (left padding, BOS first), then the
          ``num_query_tokens`` image tokens (no special tokens, no padding) are put IN FRONT of
          each padded row, so padding sits between the image tokens and BOS;
        * LLaVA: every "<image>" in the text is replaced by P image tokens, then
          ``tok(texts, padding=True)`` (BOS added by the tokenizer, left padding).
        """
        self.hf_tok.padding_side = "left"
        if self.kind == "blip2":
            enc = self.hf_tok(prompts, padding=True)
            img = self.hf_tok(self.image_token * self.tokens, add_special_tokens=False, padding=False,
                              truncation=False)
            ids = [img["input_ids"] + r for r in enc["input_ids"]]
            mask = [img["attention_mask"] + r for r in enc["attention_mask"]]
        else:
            texts = [self.template.replace("{image}", self.image_token).replace("{prompt}", p) for p in prompts]
            texts = [t.replace(self.image_token, self.image_token * self.tokens) for t in texts]
            enc = self.hf_tok(texts, padding=True)
            ids, mask = enc["input_ids"], enc["attention_mask"]
        return np.asarray(ids, np.int64), np.asarray(mask, np.int64)

    # -- torch reconstruction of what the Rust runner does ------------------------------------
    def assemble_embeds(self, ids: np.ndarray, pixels: np.ndarray) -> torch.Tensor:
        """embed_tokens(ids) with the image-token rows replaced, in order, by prefix_embeds."""
        emb = self.embed(torch.from_numpy(ids)).clone()
        pre = self.prefix(torch.from_numpy(pixels))
        for b in range(ids.shape[0]):
            rows = np.nonzero(ids[b] == self.image_token_id)[0]
            assert len(rows) == self.tokens, (len(rows), self.tokens)
            emb[b, torch.from_numpy(rows)] = pre[b]
        return emb

    def hf_generate(self, ids, mask, pixels, **kw) -> np.ndarray:
        """PyTorch generate(); returns only the new tokens [B*num_return, new]."""
        g = dict(pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(ids),
                 attention_mask=torch.from_numpy(mask))
        out = self.model.generate(**g, **kw)
        return out[:, ids.shape[1]:].numpy()

    def hf_lm_inputs_embeds(self, ids, mask, pixels) -> torch.Tensor:
        """The inputs_embeds HF's own forward feeds its language model (captured with a hook)."""
        lm = self.model.language_model if self.kind == "blip2" else self.model.model.language_model
        seen = []
        h = lm.register_forward_pre_hook(lambda mod, a, k: seen.append(k.get("inputs_embeds")), with_kwargs=True)
        try:
            self.model.generate(pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(ids),
                                attention_mask=torch.from_numpy(mask), max_new_tokens=1, do_sample=False,
                                num_beams=1)
        finally:
            h.remove()
        return seen[0]


def position_ids_from_mask(mask: np.ndarray) -> np.ndarray:
    """transformers 5.24 generate(): cumsum(mask) - 1, with 0 where mask == 0."""
    p = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 0, p).astype(np.int64)


def empty_past(parts: Parts, batch: int, length: int = 0) -> list[torch.Tensor]:
    return [torch.zeros(batch, parts.kv_heads, length, parts.head_dim) for _ in range(2 * parts.layers)]


def check_decoder_against_hf(parts: Parts, tol: float = 1e-4) -> float:
    """The decoder wrapper (prefill + cached steps) reproduces HF's language model logits."""
    gen = torch.Generator().manual_seed(7)
    B, T = 2, 9
    emb = torch.randn(B, T, parts.hidden, generator=gen)
    mask = np.ones((B, T), np.int64)
    mask[1, :3] = 0  # left padding in row 1
    pos = position_ids_from_mask(mask)
    if parts.kind == "blip2":
        lm = parts.model.language_model
        ref = lm(inputs_embeds=emb, attention_mask=torch.from_numpy(mask), position_ids=torch.from_numpy(pos),
                 use_cache=False).logits
    else:
        out = parts.model.model.language_model(inputs_embeds=emb, attention_mask=torch.from_numpy(mask),
                                               position_ids=torch.from_numpy(pos), use_cache=False)
        ref = parts.model.lm_head(out.last_hidden_state)
    worst = 0.0
    for split in (T, 5):
        res = parts.decoder(emb[:, :split], torch.from_numpy(mask[:, :split]),
                            torch.from_numpy(pos[:, :split]), *empty_past(parts, B))
        logits, past = [res[0]], list(res[1:])
        for t in range(split, T):
            res = parts.decoder(emb[:, t:t + 1], torch.from_numpy(mask[:, :t + 1]),
                                torch.from_numpy(pos[:, t:t + 1]), *past)
            logits.append(res[0])
            past = list(res[1:])
        got = torch.cat(logits, 1)
        valid = torch.from_numpy(mask).bool()
        worst = max(worst, float((got - ref).abs()[valid].max()))
    if not worst < tol:
        raise RuntimeError(f"decoder wrapper differs from HF by {worst}")
    return worst


# --------------------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------------------


#: Graphs whose weights are bigger than this are written with their weights in one external data
#: file next to them (``<name>.onnx.data``; ONNX Runtime finds it by itself): a protobuf holds 2 GB at
#: most.  Smaller graphs (every --tiny model) keep their weights inside, as before.
EXTERNAL_DATA_BYTES = int(float(os.environ.get("TESSERA_EXPORT_EXTERNAL_DATA_BYTES", 1.5e9)))


def _export(module, args, path: Path, inputs: list[str], outputs: list[str], axes: dict, opset: int):
    C.export_onnx(module, args, path, inputs, outputs, axes, opset, external_data_bytes=EXTERNAL_DATA_BYTES)


def decoder_io_names(layers: int) -> tuple[list[str], list[str]]:
    past, present = [], []
    for i in range(layers):
        past += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        present += [f"present.{i}.key", f"present.{i}.value"]
    return ["inputs_embeds", "attention_mask", "position_ids"] + past, ["logits"] + present


def export_graphs(parts: Parts, out: Path, opset: int) -> None:
    S, B = parts.size, 2
    print(f"export: writing {out}/image_prefix.onnx (opset {opset})", file=sys.stderr)
    _export(parts.prefix, (torch.zeros(B, 3, S, S),), out / "image_prefix.onnx", ["pixel_values"],
            ["prefix_embeds"], {"pixel_values": {0: "batch"}, "prefix_embeds": {0: "batch"}}, opset)
    print(f"export: writing {out}/embed_tokens.onnx", file=sys.stderr)
    _export(parts.embed, (torch.zeros(B, 3, dtype=torch.long),), out / "embed_tokens.onnx", ["input_ids"],
            ["inputs_embeds"], {"input_ids": {0: "batch", 1: "sequence"},
                                "inputs_embeds": {0: "batch", 1: "sequence"}}, opset)
    print(f"export: writing {out}/decoder.onnx", file=sys.stderr)
    ins, outs = decoder_io_names(parts.layers)
    axes = {"inputs_embeds": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    for n in ins[3:]:
        axes[n] = {0: "batch", 2: "past"}
    for n in outs[1:]:
        axes[n] = {0: "batch", 2: "total"}
    past_len, T = 3, 2
    args = (torch.randn(B, T, parts.hidden), torch.ones(B, past_len + T, dtype=torch.long),
            torch.arange(past_len, past_len + T).repeat(B, 1), *empty_past(parts, B, past_len))
    _export(parts.decoder, args, out / "decoder.onnx", ins, outs, axes, opset)


def verify_onnx_against_torch(parts: Parts, out: Path, tol: float) -> dict:
    """ORT vs PyTorch (error relative to the largest |value|): prefix (batch 1, 3), embed, decoder prefill (past 0) and cached steps."""
    gen = torch.Generator().manual_seed(1234)
    pre, emb, dec = (C.ort_session(out / n) for n in ("image_prefix.onnx", "embed_tokens.onnx", "decoder.onnx"))
    ins, outs = decoder_io_names(parts.layers)
    worst = {"prefix": 0.0, "embed": 0.0, "decoder": 0.0}
    for B in (1, 3):
        px = torch.randn(B, 3, parts.size, parts.size, generator=gen)
        r = parts.prefix(px).numpy()
        worst["prefix"] = max(worst["prefix"], C.rel_diff(pre.run(None, {"pixel_values": px.numpy()})[0], r))
        ids = torch.randint(0, parts.vocab, (B, 5), generator=gen)
        worst["embed"] = max(worst["embed"], float(np.abs(
            emb.run(None, {"input_ids": ids.numpy()})[0] - parts.embed(ids).numpy()).max()))
        T = 7
        e = torch.randn(B, T, parts.hidden, generator=gen)
        mask = np.ones((B, T), np.int64)
        if B > 1:
            mask[1, :2] = 0
        pos = position_ids_from_mask(mask)
        for split in (T, 4):  # prefill all, or prefill 4 then 1-token and 2-token steps
            past_t = empty_past(parts, B)
            past_o = [p.numpy() for p in past_t]
            t0 = 0
            for t1 in ([T] if split == T else [4, 5, 7]):
                sl = slice(t0, t1)
                ref = parts.decoder(e[:, sl], torch.from_numpy(mask[:, :t1]), torch.from_numpy(pos[:, sl]), *past_t)
                feed = {"inputs_embeds": e[:, sl].numpy(), "attention_mask": mask[:, :t1],
                        "position_ids": pos[:, sl]}
                feed.update(dict(zip(ins[3:], past_o)))
                got = dec.run(None, feed)
                for r, g in zip(ref, got):
                    worst["decoder"] = max(worst["decoder"], C.rel_diff(g, r.numpy()))
                past_t, past_o, t0 = list(ref[1:]), got[1:], t1
    print("export: ONNX vs PyTorch max diff / max(1, max|ref|): " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()),
          file=sys.stderr)
    for k, v in worst.items():
        if not v < tol:
            raise RuntimeError(f"{k}: ONNX Runtime differs from PyTorch by {v} (tolerance {tol})")
    return worst


# --------------------------------------------------------------------------------------
# References (--tiny): PyTorch generate()
# --------------------------------------------------------------------------------------


def _gen_kwargs(parts: Parts, *, num_beams: int, min_new_tokens: int = 0, repetition_penalty: float = 1.0,
                max_new_tokens: int = 12, no_repeat_ngram_size: int = 0) -> dict:
    return dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_beams=num_beams,
                do_sample=False, repetition_penalty=repetition_penalty, length_penalty=1.0,
                early_stopping=False, num_return_sequences=1, no_repeat_ngram_size=no_repeat_ngram_size,
                bos_token_id=parts.bos, eos_token_id=parts.eos, pad_token_id=parts.pad)


def reference_cases(parts: Parts) -> list[dict]:
    if parts.kind == "blip2":
        q, qb, qb2 = "", REF_PROMPTS_BLIP2_BATCH, ["", "a satellite photo of"]
    else:
        q, qb, qb2 = REF_PROMPTS_LLAVA[0], REF_PROMPTS_LLAVA, REF_PROMPTS_LLAVA[:2]
    cases = [dict(name=f"greedy_img{k}", images=[k], prompts=[q], kw=dict(num_beams=1)) for k in range(3)]
    cases += [
        dict(name="greedy_batch3", images=[0, 1, 2], prompts=qb, kw=dict(num_beams=1)),
        dict(name="beam3_img3", images=[3], prompts=[q], kw=dict(num_beams=3)),
        dict(name="beam3_img0_rep1.3", images=[0], prompts=[q], kw=dict(num_beams=3, repetition_penalty=1.3)),
        dict(name="beam3_batch2_min5", images=[1, 2], prompts=qb2, kw=dict(num_beams=3, min_new_tokens=5)),
        dict(name="greedy_batch2_rep1.3_min5", images=[2, 3], prompts=qb2,
             kw=dict(num_beams=1, repetition_penalty=1.3, min_new_tokens=5)),
        # n-gram blocking over prompt (image tokens, BOS) and generated tokens, left-padded batches
        dict(name="greedy_batch3_ngram1", images=[0, 1, 2], prompts=qb, kw=dict(num_beams=1, no_repeat_ngram_size=1)),
        dict(name="greedy_batch3_ngram2_max20", images=[0, 1, 2], prompts=qb,
             kw=dict(num_beams=1, no_repeat_ngram_size=2, max_new_tokens=20)),
        dict(name="beam3_batch3_ngram1", images=[0, 1, 2], prompts=qb, kw=dict(num_beams=3, no_repeat_ngram_size=1)),
        dict(name="beam3_batch3_ngram2_max20", images=[0, 1, 2], prompts=qb,
             kw=dict(num_beams=3, no_repeat_ngram_size=2, max_new_tokens=20)),
    ]
    return cases


def _trim(row: np.ndarray, eos: int) -> tuple[list[int], bool]:
    row = [int(t) for t in row]
    if eos in row:
        return row[: row.index(eos) + 1], True
    return row, False


def compute_references(parts: Parts, seed: int, init_std: float, eos_scale: float):
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    out_cases = []
    for c in reference_cases(parts):
        idx, prompts = c["images"], c["prompts"]
        ids, mask = parts.processor_ids(prompts)
        px = pixels[idx]
        # The Rust rule: format the template, tokenize, left-pad the whole sequence.
        gids, gmask = parts.left_pad([parts.template_ids(p) for p in prompts])
        kw = _gen_kwargs(parts, **c["kw"])
        new = parts.hf_generate(ids, mask, px, **kw)
        new_generic = parts.hf_generate(gids, gmask, px, **kw)
        # What HF feeds its language model == our reconstruction from the template layout.
        hf_emb = parts.hf_lm_inputs_embeds(ids, mask, px)
        ours = parts.assemble_embeds(ids, px)
        emb_diff = float((hf_emb - ours).abs()[torch.from_numpy(mask).bool()].max())
        same_ids_unpadded = all(
            [int(t) for t, m in zip(ids[r], mask[r]) if m] == [int(t) for t, m in zip(gids[r], gmask[r]) if m]
            for r in range(len(idx)))
        trimmed = [_trim(r, parts.eos) for r in new]
        out_cases.append({
            "name": c["name"],
            "images": idx,
            "prompts": prompts,
            "prompt_texts": [parts.prompt_text(p) for p in prompts],
            "input_ids": ids.tolist(),
            "attention_mask": mask.tolist(),
            "template_input_ids": gids.tolist(),
            "template_attention_mask": gmask.tolist(),
            "generation": {k: v for k, v in kw.items()},
            "output_ids": new.tolist(),
            "new_tokens": [t for t, _ in trimmed],
            "hit_eos": [h for _, h in trimmed],
            "text": [parts.hf_tok.decode(t, skip_special_tokens=True) for t, _ in trimmed],
            "checks": {
                "template_ids_equal_processor_ids_without_padding": bool(same_ids_unpadded),
                "template_layout_generate_equal": bool(np.array_equal(new, new_generic)),
                "lm_inputs_embeds_max_abs_diff": emb_diff,
            },
        })
        print(f"export: {c['name']}: {[t for t, _ in trimmed]} eos={[h for _, h in trimmed]} "
              f"emb_diff={emb_diff:.2g} same_ids={same_ids_unpadded} "
              f"generic_equal={np.array_equal(new, new_generic)}", file=sys.stderr)
    # first decoding step logits (greedy_img0), HF forward
    c0 = out_cases[0]
    ids0, m0 = np.array(c0["input_ids"]), np.array(c0["attention_mask"])
    logits0 = parts.model(pixel_values=torch.from_numpy(pixels[c0["images"]]), input_ids=torch.from_numpy(ids0),
                          attention_mask=torch.from_numpy(m0)).logits[0, -1].numpy()
    ref = {
        "description": "PyTorch generate() references for this package (tools/export/export.py); "
                       "new tokens only, prompt excluded.",
        "architecture": parts.architecture,
        "seed": seed, "init_std": init_std, "eos_logit_scale": eos_scale,
        "transformers": transformers.__version__, "torch": torch.__version__,
        **C.images_block(names, parts.size, len(names)),
        "mean": parts.mean, "std": parts.std,
        "template": parts.template, "add_bos": parts.add_bos, "image_tokens": parts.tokens,
        "image_token_id": parts.image_token_id,
        "bos_token_id": parts.bos, "eos_token_id": parts.eos, "pad_token_id": parts.pad,
        "position_ids_rule": "cumsum(attention_mask) - 1, 0 where attention_mask == 0",
        "cases": out_cases,
        "first_step_logits": {"case": c0["name"], "row": 0,
                              "what": "HF forward logits at the last prompt position (before any processor)",
                              "logits": logits0.astype(np.float64).tolist()},
        "tolerance": {"logits_abs": 1e-3},
    }
    return ref, images_u8, pixels


def degeneracy_report(ref: dict) -> tuple[bool, str]:
    greedy = [c for c in ref["cases"] if c["name"].startswith("greedy_img")]
    outs = [tuple(c["new_tokens"][0]) for c in greedy]
    distinct_imgs = len(set(outs)) == len(outs)
    min_distinct = min(len(set(o)) for o in outs)
    eos_cases = [c["name"] for c in ref["cases"] if any(c["hit_eos"])]
    ok = distinct_imgs and min_distinct >= 3 and len(eos_cases) > 0
    return ok, f"distinct across images {distinct_imgs}, min distinct tokens {min_distinct}, EOS in {eos_cases}"


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def write_manifest(path: Path, parts: Parts, *, name: str, trained: bool, source: str,
                   max_new_tokens: int = 20) -> None:
    ins, outs = decoder_io_names(parts.layers)
    C.write_toml(path, [
        (None, [("family", "image-text-decoder", ""), ("architecture", parts.architecture, ""),
                ("name", name, ""), ("trained", trained, ""), ("source", source, "")]),
        ("image", [("onnx", "image_prefix.onnx", ""),
                   ("input", "pixel_values", "float32 [B,3,S,S], already normalised"),
                   ("output", "prefix_embeds", "float32 [B,P,H]"),
                   ("tokens", parts.tokens, "P: image tokens per image")]),
        ("embed", [("onnx", "embed_tokens.onnx", ""), ("input", "input_ids", "int64 [B,T]"),
                   ("output", "inputs_embeds", "float32 [B,T,H]")]),
        ("decoder", [("onnx", "decoder.onnx", ""), ("inputs_embeds", "inputs_embeds", "float32 [B,T,H]"),
                     ("attention_mask", "attention_mask", "int64 [B,past+T]"),
                     ("position_ids", "position_ids", "int64 [B,T]"),
                     ("logits", "logits", "float32 [B,T,V]"),
                     ("past_key", "past_key_values.{i}.key", "float32 [B,kv_heads,past,head_dim]"),
                     ("past_value", "past_key_values.{i}.value", ""),
                     ("present_key", "present.{i}.key", "float32 [B,kv_heads,past+T,head_dim]"),
                     ("present_value", "present.{i}.value", ""),
                     ("layers", parts.layers, ""), ("kv_heads", parts.kv_heads, ""),
                     ("head_dim", parts.head_dim, ""), ("hidden", parts.hidden, ""), ("vocab", parts.vocab, ""),
                     ("max_positions", parts.max_positions, "longest prompt + generated sequence")]),
        ("prompt", [("template", parts.template, ""), ("image_token", parts.image_token, ""),
                    ("image_token_id", parts.image_token_id, ""),
                    ("add_bos", parts.add_bos, "tokenize with add_special_tokens = add_bos")]),
        C.preprocess_section(parts.size, parts.mean, parts.std),
        ("tokenizer", [("file", "tokenizer.json", ""), ("bos_token_id", parts.bos, ""),
                       ("eos_token_id", parts.eos, ""), ("pad_token_id", parts.pad, "")]),
        ("generation", [("max_new_tokens", max_new_tokens, ""), ("num_beams", 1, ""),
                        ("repetition_penalty", 1.0, "")]),
    ])


# --------------------------------------------------------------------------------------
# Loading real checkpoints
# --------------------------------------------------------------------------------------


def load_checkpoint(kind: str, src: str) -> Parts:
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
    parts = Parts(kind, model, tok, size, pp["image_mean"], pp["image_std"])
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tv = transformers.__version__
    shape = getattr(args, "shape", "tiny")
    if shape != "tiny" and not args.tiny:
        raise SystemExit("--shape only applies with --tiny")
    if args.tiny:
        bench = shape != "tiny"
        seed = DEFAULT_SEEDS[kind] if args.seed is None else args.seed
        init_std = (BENCH_INIT_STD if bench else DEFAULT_INIT_STD[kind]) if args.init_std is None else args.init_std
        eos_scale = (BENCH_EOS_SCALE if bench else DEFAULT_EOS_SCALE[kind]) if args.eos_scale is None else args.eos_scale
        model, tok, roles, _ = build_tiny(kind, seed, init_std, eos_scale, shape)
        hf = hf_tokenizer(tok, roles)
        size = model.config.vision_config.image_size
        parts = Parts(kind, model, hf, size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
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
    else:
        parts = load_checkpoint(kind, args.source)
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
        trained = True

    worst = check_decoder_against_hf(parts)
    print(f"export: decoder wrapper vs HF language model: max abs diff {worst:.3g}", file=sys.stderr)
    export_graphs(parts, out, args.opset)
    if not args.skip_verify:
        verify_onnx_against_torch(parts, out, tol=5e-2 if args.fp16 else args.tolerance)
    if args.fp16:
        for n in ("image_prefix.onnx", "embed_tokens.onnx", "decoder.onnx"):
            print(f"export: converting {out}/{n} to float16", file=sys.stderr)
            C.to_fp16(out / n)
    C.save_plain_tokenizer_json(parts.hf_tok, out / "tokenizer.json")
    write_manifest(out / "model.toml", parts, name=name, trained=trained,
                   source=source + (", fp16" if args.fp16 else ""))

    if args.tiny and shape == "tiny" and not args.no_reference:
        ref, images_u8, pixels = compute_references(parts, seed, init_std, eos_scale)
        ref["onnx_precision"] = "fp16" if args.fp16 else "fp32"
        ok, msg = degeneracy_report(ref)
        ref["degeneracy_check"] = {"ok": ok, "summary": msg}
        print(f"export: reference outputs: {msg}", file=sys.stderr)
        if not ok:
            print("export: WARNING the reference outputs are degenerate (see above)", file=sys.stderr)
        C.write_reference(out, ref, C.image_bins(images_u8, pixels))
    C.report_done(out)


def parts_proc_dir(parts: Parts, sp: Path) -> None:
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
    C.add_opset_arg(c)
    c.add_argument("--fp16", action="store_true",
                   help="float16 weights/compute, float32 graph inputs/outputs")
    c.add_argument("--seed", type=int, default=None, help=f"--tiny: seed (default {DEFAULT_SEEDS[kind]})")
    c.add_argument("--init-std", type=float, default=None,
                   help=f"--tiny: init std (default {DEFAULT_INIT_STD[kind]})")
    c.add_argument("--eos-scale", type=float, default=None,
                   help=f"--tiny: factor on the EOS row of lm_head (default {DEFAULT_EOS_SCALE[kind]})")
    shapes = SHAPES[kind]
    c.add_argument("--shape", choices=shapes, default="tiny",
                   help="--tiny: 'tiny' (the test fixture, with reference/)"
                        + (", or a random benchmark model without reference/: 'mid' (OPT-125m language "
                           "model, small vision tower) or 'opt-2.7b' (blip2-opt-2.7b's shape, ~3.8 B "
                           "parameters; its big graphs keep their weights in <graph>.onnx.data)"
                           if len(shapes) > 1 else ""))
    c.add_argument("--save-pretrained", metavar="DIR", default=None,
                   help="--tiny: also write the model + processor with save_pretrained (to test --from)")
    if kind == "blip2":
        c.add_argument("--language-model", choices=["opt", "t5"], default=None,
                       help="--tiny: the language model (default opt); with --from it is read from config.json "
                            "(text_config.model_type); t5 writes a cross-attention-decoder package")
    C.add_name_arg(c)
    C.add_no_reference_arg(c)
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, 1e-3,
                        "max diff / max(1, max|ref|) allowed between ONNX Runtime and PyTorch (default 1e-3)")
    c.set_defaults(func=export_decoder)
