"""Shared library of the prefix-decoder exporters (family ``image-text-decoder``); not a command.

A *prefix decoder* VLM turns each image into P embedding rows ("the prefix"), writes them over
the P image-placeholder tokens of the prompt, and runs a decoder-only language model with a KV
cache.  Every such package has the same three graphs (see tools/export/README.md, "Image-text
decoders")::

    image_prefix.onnx   pixel_values [B,3,S,S] f32 -> prefix_embeds [B,P,H] f32
    embed_tokens.onnx   input_ids [B,T] i64 -> inputs_embeds [B,T,H] f32
    decoder.onnx        inputs_embeds [B,T,H], attention_mask [B,past+T] i64, position_ids [B,T] i64,
                        past_key_values.{i}.key/.value [B,kv,past,hd]
                        -> logits [B,1,V] (the last position's), present.{i}.key/.value [B,kv,past+T,hd]

This module holds everything that does not depend on the vision side:

* the **language-model step registry**: ``register_lm_step(model_type, factory)`` /
  ``lm_step_for(text_config)``.  ``factory(lm_backbone, lm_head, text_config)`` returns an
  ``nn.Module`` whose forward is ``(inputs_embeds, attention_mask, position_ids, *past) ->
  (logits, *presents)`` and which has the attributes ``n_layers``, ``kv_heads``, ``head_dim``.
  ``lm_backbone`` is the language model's base model (``AutoModel``: ``OPTModel``,
  ``LlamaModel``...; what ``LlavaModel.language_model`` is), ``lm_head`` its output projection.
  Registered here: ``opt``, ``llama`` (Llama, Vicuna, TinyLlama, SmolLM/SmolLM2), ``qwen2``,
  ``phi`` (Phi-2 layout).  Adding a decoder-only language model is one ``register_lm_step`` call; the Rust
  runner needs nothing new.
* ``PrefixParts``: one loaded model (graphs' modules, prompt template, token ids, preprocessing)
  with overridable family hooks (processor-exact prompt ids, HF generate, where to hook HF's
  language-model input);
* ``export_prefix_package(args, parts, ...)``: the whole export after the model is built (decoder
  check against HF, the three graphs, ONNX Runtime vs PyTorch, fp16, tokenizer.json, model.toml,
  ``reference/`` from HF ``generate``, degeneracy report);
* the tiny caption tokenizer and ``reinit`` used by every ``--tiny`` model.

A new family module: build the HF/torch model, subclass ``PrefixParts`` (or pass the family bits
to its constructor), call ``export_prefix_package``, and register its command(s) in export.py.

Extension hooks (override in the ``PrefixParts`` subclass; the defaults give the layout above):

* extra **decoder** inputs: ``decoder_extra_input_names`` (+ ``decoder_extra_inputs``,
  ``decoder_extra_axes``), fed to the step module after ``position_ids`` and before the past
  (e.g. PaliGemma's prefix-LM mask); a different ``position_ids`` (Qwen2-VL's [3,B,T]):
  ``position_ids`` (numpy, last axis = time) and ``position_ids_axes``;
* extra **image-graph** inputs: ``prefix_input_names`` / ``prefix_example_inputs`` /
  ``prefix_verify_inputs`` / ``prefix_embeds`` (e.g. InstructBLIP's Q-Former reads the
  instruction ids);
* extra **manifest** keys: ``manifest_extra()`` (keys appended to existing sections, or new
  sections), extra **reference** keys: ``reference_extra()``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import transformers
from torch import nn

import common as C

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


def build_tiny_tokenizer(arch: str, vocab_size: int = 800, prepend_bos: bool = True):
    """(tokenizers.Tokenizer, roles, ids) for the tiny models.

    blip2-opt mirrors OPT's GPT-2 style: <s>=0, <pad>=1, </s>=2 (bos = eos = 2), <unk>=3, and the
    post-processor prepends </s>.  Any other ``arch`` (llava-llama...) mirrors Llama: <unk>=0,
    <s>=1 (bos), </s>=2 (eos), <pad>=3, and the post-processor prepends <s>.  "<image>" is special
    token 4 in both.  ``prepend_bos=False``: no post-processor (as the Qwen2 and Phi-2 tokenizers,
    which add no BOS).
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
    if prepend_bos:
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
# Tiny models: weight re-initialisation
# --------------------------------------------------------------------------------------


def reinit(model: nn.Module, std: float) -> None:
    """Re-draw every Linear/Embedding weight N(0, std) (biases N(0, std/4)); norms stay 1/0.

    (HF's default std 0.02 gives near-uniform logits: every image then yields the same token.)"""
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




# --------------------------------------------------------------------------------------
# Graph modules: embed_tokens and the language-model decoder steps
# --------------------------------------------------------------------------------------


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


class _GroupQueryAttention(torch.autograd.Function):
    """ONNX Runtime's ``com.microsoft.GroupQueryAttention`` with a shared past/present buffer.

    Inputs: q [B,S,N*D], k/v [B,S,KV*D] (already rotated), past_k/past_v [B,KV,M,D] (a buffer
    of M positions), seqlens_k [B] int32 (each row's valid length after this call, minus 1),
    total [] int32 (max(seqlens_k) + 1).  A call with S == total is a first prompt (right
    padded; every row's keys start at 0); any other call writes row b's S keys at
    ``seqlens_k[b] + 1 - S``.  Query ``t`` of row b attends keys ``0 ..= min(its position,
    seqlens_k[b])``.  Returns (output [B,S,N*D], present_k, present_v): the buffers with the new
    keys/values written in (ONNX Runtime writes them in place when present and past are one
    buffer).  The eager forward computes the same, for the checks against Hugging Face; the
    export emits the ONNX Runtime node (``symbolic``)."""

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, seqlens_k, total, heads: int, kv_heads: int, scale: float):
        if torch.jit.is_tracing():  # the export: only the shapes count (``symbolic`` gives the node)
            return q.clone(), past_k.clone(), past_v.clone()
        B, S, _ = q.shape
        M, D = past_k.shape[2], past_k.shape[3]
        seq = seqlens_k.long()
        start = torch.zeros_like(seq) if S == int(total) else seq + 1 - S
        j = torch.arange(M)
        rel = j[None, :] - start[:, None]                                        # [B, M]
        write = ((rel >= 0) & (rel < S))[:, None, :, None]
        src = rel.clamp(0, S - 1)[:, None, :, None].expand(B, kv_heads, M, D)

        def put(buf, new):
            new = new.view(B, S, kv_heads, D).transpose(1, 2)
            return torch.where(write, torch.gather(new, 2, src), buf)

        pk, pv = put(past_k, k), put(past_v, v)
        rep = heads // kv_heads
        K = pk.repeat_interleave(rep, dim=1)
        V = pv.repeat_interleave(rep, dim=1)
        qh = q.view(B, S, heads, D).transpose(1, 2)
        qpos = start[:, None] + torch.arange(S)[None, :]                         # [B, S]
        allowed = (j[None, None, :] <= qpos[:, :, None]) & (j[None, None, :] <= seq[:, None, None])
        w = torch.matmul(qh, K.transpose(2, 3)) * scale
        w = w.masked_fill(~allowed[:, None], float("-inf"))
        o = torch.matmul(torch.softmax(w.float(), dim=-1).to(q.dtype), V)
        return o.transpose(1, 2).reshape(B, S, heads * D), pk, pv

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, seqlens_k, total, heads, kv_heads, scale):
        o, pk, pv = g.op("com.microsoft::GroupQueryAttention", q, k, v, past_k, past_v, seqlens_k, total,
                         num_heads_i=heads, kv_num_heads_i=kv_heads, scale_f=scale, outputs=3)
        o.setType(q.type())
        pk.setType(past_k.type())
        pv.setType(past_v.type())
        return o, pk, pv


class ConcatCache:
    """Key/value cache layout ``concat`` (``[decoder] kv_cache``, the default): the step's
    second input is the attention mask [B, past+T] (0 for left padding); each call concatenates
    its keys/values to the past and returns the longer tensors; logits of the last position."""

    def __init__(self, attention_mask, inputs_embeds, dtype):
        self.mask_add = _additive_mask(attention_mask, inputs_embeds, dtype)

    def attend(self, q, k, v, past_k, past_v, n_rep: int, scaling: float):
        """q [B,N,T,D], k/v [B,KV,T,D] -> (o [B,T,N,D], present_k, present_v)."""
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        return _attend(q, k, v, self.mask_add, n_rep, scaling), k, v

    def logits(self, lm_head, h):
        return last_position_logits(lm_head, h)


class InPlaceCache:
    """Key/value cache layout ``in-place``: the step's second input is ``seqlens_k`` [B] int32
    (each row's valid length after the call, minus 1; prompts right padded); the past is a
    buffer as long as the whole generation, written in place by ONNX Runtime's
    GroupQueryAttention (no per-step concatenation); logits of each row's last valid position
    (``min(seqlens_k, T-1)``: a right-padded prompt's last token, a step's only one)."""

    def __init__(self, seqlens_k, inputs_embeds):
        self.seqlens_k = seqlens_k
        self.total = (seqlens_k.max() + 1).to(torch.int32)
        last = torch.ones_like(inputs_embeds[:, :, 0], dtype=torch.long).sum(1) - 1
        self.last = torch.minimum(seqlens_k.long(), last)

    def attend(self, q, k, v, past_k, past_v, n_rep: int, scaling: float):
        B, T = q.shape[0], q.shape[2]
        N, KV, D = int(q.shape[1]), int(k.shape[1]), int(q.shape[3])  # static (node attributes)
        o, pk, pv = _GroupQueryAttention.apply(
            q.transpose(1, 2).reshape(B, T, N * D), k.transpose(1, 2).reshape(B, T, KV * D),
            v.transpose(1, 2).reshape(B, T, KV * D), past_k, past_v, self.seqlens_k, self.total,
            N, KV, float(scaling))
        return o.view(B, T, N, D), pk, pv

    def logits(self, lm_head, h):
        B, _, H = h.shape
        return lm_head(torch.gather(h, 1, self.last.view(B, 1, 1).expand(B, 1, H)))


#: ``[decoder] kv_cache`` layouts (``--kv-cache``)
KV_CACHES = ("concat", "in-place")


def kv_cache(step: nn.Module, second_input, inputs_embeds, dtype):
    """The cache layout of ``step`` (its ``kv_cache`` attribute, default ``concat``) for one
    call; ``second_input`` is the attention mask (concat) or seqlens_k (in-place)."""
    if getattr(step, "kv_cache", "concat") == "in-place":
        return InPlaceCache(second_input, inputs_embeds)
    return ConcatCache(second_input, inputs_embeds, dtype)


def last_position_logits(lm_head: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The LM head on the last position only: logits [B,1,V]. tessera reads nothing else (the
    next token's scores), and Hugging Face ``generate`` does the same (``logits_to_keep=1``): over
    a 16-tile batch of an image prefix of 32-64 tokens the head on every position was ~15% of
    the decode and its [B,T,V] output hundreds of MB."""
    return lm_head(h[:, -1:])


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
        cache = kv_cache(self, attention_mask, inputs_embeds, h.dtype)
        B = h.shape[0]
        presents = []
        for i, layer in enumerate(d.layers):
            a = layer.self_attn
            residual = h
            x = layer.self_attn_layer_norm(h) if self.pre_ln else h
            q = (a.q_proj(x) * a.scaling).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            v = a.v_proj(x).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            o, k, v = cache.attend(q, k, v, past[2 * i], past[2 * i + 1], 1, 1.0)
            presents += [k, v]
            o = o.reshape(B, -1, self.heads * self.head_dim)
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
        return (cache.logits(self.lm_head, h), *presents)


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
        cache = kv_cache(self, attention_mask, inputs_embeds, h.dtype)
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
            o, k, v = cache.attend(q, k, v, past[2 * i], past[2 * i + 1], self.heads // self.kv_heads,
                                   a.scaling)
            presents += [k, v]
            h = residual + a.o_proj(o.reshape(B, -1, self.heads * self.head_dim))
            residual = h
            h = residual + layer.mlp(layer.post_attention_layernorm(h))
        h = m.norm(h)
        return (cache.logits(self.lm_head, h), *presents)


class PhiDecoderStep(nn.Module):
    """HF PhiForCausalLM (Phi-2 layout, eager), with explicit position_ids and a tensor KV cache.

    Per layer: one input LayerNorm feeding attention and MLP in parallel
    (``h = h + dense(attn(ln(h))) + fc2(act(fc1(ln(h))))``), q/k/v/dense with biases, optional
    q/k LayerNorms, rotary embedding on the first ``partial_rotary_factor * head_dim`` dims only;
    ``final_layernorm`` at the end.
    """

    def __init__(self, text_model, lm_head, cfg):
        super().__init__()
        self.m = text_model
        self.lm_head = lm_head
        self.n_layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.rot = text_model.layers[0].self_attn.rotary_ndims

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers.models.phi.modeling_phi import apply_rotary_pos_emb

        m = self.m
        h = inputs_embeds
        cos, sin = m.rotary_emb(h, position_ids)
        cache = kv_cache(self, attention_mask, inputs_embeds, h.dtype)
        B = h.shape[0]
        r = self.rot
        presents = []
        for i, layer in enumerate(m.layers):
            a = layer.self_attn
            residual = h
            x = layer.input_layernorm(h)
            q = a.q_proj(x).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(B, -1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = a.v_proj(x).view(B, -1, self.kv_heads, self.head_dim).transpose(1, 2)
            if a.qk_layernorm:
                q, k = a.q_layernorm(q), a.k_layernorm(k)
            q_rot, k_rot = apply_rotary_pos_emb(q[..., :r], k[..., :r], cos, sin)
            q = torch.cat((q_rot, q[..., r:]), dim=-1)
            k = torch.cat((k_rot, k[..., r:]), dim=-1)
            o, k, v = cache.attend(q, k, v, past[2 * i], past[2 * i + 1], self.heads // self.kv_heads,
                                   a.scaling)
            presents += [k, v]
            attn = a.dense(o.reshape(B, -1, self.heads * self.head_dim))
            h = attn + layer.mlp(x) + residual
        h = m.final_layernorm(h)
        return (cache.logits(self.lm_head, h), *presents)


def _llama_like(backbone, head, cfg):
    """Llama's step for the Llama-architecture variants (Qwen2: q/k/v biases, which the HF
    Linear modules carry); sliding-window attention layers are not implemented and refused."""
    sliding = [i for i, t in enumerate(getattr(cfg, "layer_types", None) or []) if t != "full_attention"]
    if sliding and getattr(cfg, "sliding_window", None) is not None:
        raise SystemExit(f"export: {cfg.model_type} layers {sliding} use sliding-window attention, "
                         "which the exported decoder step does not implement")
    return LlamaDecoderStep(backbone, head, cfg)


# --------------------------------------------------------------------------------------
# The language-model step registry
# --------------------------------------------------------------------------------------

#: text_config.model_type -> factory(lm_backbone, lm_head, text_config) -> step module
_LM_STEPS: dict[str, Callable] = {}


def register_lm_step(model_type: str, factory: Callable) -> None:
    """Register the decoder step of a decoder-only language model (``text_config.model_type``).

    ``factory(lm_backbone, lm_head, text_config)`` returns an ``nn.Module`` whose forward is
    ``(inputs_embeds, attention_mask, position_ids, *past) -> (logits, *presents)`` (past/presents:
    key, value per layer, [B, kv_heads, past(+T), head_dim]; attention_mask [B, past+T] int64 with
    0 for padding; position_ids [B, T]), with attributes ``n_layers``, ``kv_heads``, ``head_dim``.
    It must read every weight from the HF modules it is given (so the numbers are HF's);
    ``check_decoder_against_hf`` compares it with the HF language model at every export.
    """
    _LM_STEPS[model_type] = factory


def lm_step_for(text_config) -> Callable:
    """The registered factory for ``text_config.model_type``; SystemExit naming the known ones."""
    mt = getattr(text_config, "model_type", None)
    if mt not in _LM_STEPS:
        raise SystemExit(f"export: language model type {mt!r} has no decoder step "
                         f"(registered: {', '.join(sorted(_LM_STEPS))}; see prefix_decoder.register_lm_step)")
    return _LM_STEPS[mt]


def lm_step(lm_backbone, lm_head, text_config) -> nn.Module:
    """``lm_step_for(text_config)(lm_backbone, lm_head, text_config)``, in eval mode."""
    return lm_step_for(text_config)(lm_backbone, lm_head, text_config).eval()


# OPT: the backbone is OPTModel (or its OPTDecoder); Llama-architecture models share one step.
register_lm_step("opt", lambda backbone, head, cfg: OPTDecoderStep(getattr(backbone, "decoder", backbone), head, cfg))
register_lm_step("llama", _llama_like)   # Llama, Vicuna, TinyLlama, SmolLM / SmolLM2
register_lm_step("qwen2", _llama_like)   # Qwen2 / Qwen2.5 (q/k/v biases)
register_lm_step("phi", PhiDecoderStep)  # Phi-1.5 / Phi-2 (parallel attention + MLP, partial rotary)


# --------------------------------------------------------------------------------------
# One loaded model: the three graphs' modules + prompt rules
# --------------------------------------------------------------------------------------


class PrefixParts:
    """Everything the exporter needs to know about one loaded prefix-decoder model.

    Constructor arguments are the family-specific bits:

    * ``model``: the HF model (``generate`` is called on it, see ``hf_generate``);
    * ``hf_tok``: the HF tokenizer; ``size``/``mean``/``std``: the square input and normalisation;
    * ``architecture``: the manifest's informative ``architecture`` string;
    * ``prefix``: module ``pixel_values -> prefix_embeds [B,P,H]`` (image_prefix.onnx);
    * ``embed``: the LM's input ``nn.Embedding`` (wrapped as embed_tokens.onnx);
    * ``lm_backbone`` / ``lm_head`` / ``text_cfg``: the language model's base model, output
      projection and config; the decoder step comes from the registry (``decoder`` overrides it);
    * ``tokens``: P; ``image_token_id``: the placeholder id; ``template`` (with ``{image}``, which
      becomes P placeholder tokens, and ``{prompt}``) and ``add_bos``: the prompt rule the Rust side
      implements;
    * ``gen_model``: the module whose ``generation_config`` HF ``generate`` uses (default ``model``);
    * ``hook_module``: the module whose forward gets HF's own ``inputs_embeds`` (default
      ``lm_backbone``), for the reference check that our embedding assembly equals HF's;
    * ``ref_prompts``: (single-image prompt, batch-of-3 prompts, batch-of-2 prompts) of the
      reference cases.

    Override in a subclass: ``processor_ids`` (the default is the LLaVA processor rule),
    ``hf_generate``, ``hf_lm_logits``, and the extension hooks named in the module docstring.
    """

    def __init__(self, model, hf_tok, size: int, mean, std, *, architecture: str, prefix: nn.Module,
                 embed: nn.Embedding, lm_backbone, lm_head, text_cfg, tokens: int, image_token_id: int,
                 template: str, add_bos: bool, ref_prompts, gen_model=None, hook_module=None,
                 decoder: nn.Module | None = None, kind: str | None = None):
        self.kind = kind or architecture
        self.model, self.hf_tok = model, hf_tok
        self.size, self.mean, self.std = size, list(mean), list(std)
        self.architecture = architecture
        self.prefix = prefix.eval()
        self.embed = EmbedTokens(embed).eval()
        self.lm_backbone, self.lm_head, self.text_cfg = lm_backbone, lm_head, text_cfg
        self.decoder = decoder.eval() if decoder is not None else lm_step(lm_backbone, lm_head, text_cfg)
        self.tokens, self.image_token_id = int(tokens), int(image_token_id)
        self.template, self.add_bos = template, add_bos
        self.gen_model = gen_model if gen_model is not None else model
        self.hook_module = hook_module if hook_module is not None else lm_backbone
        self.ref_prompt, self.ref_batch_prompts, self.ref_batch2_prompts = ref_prompts
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
        """input_ids/attention_mask exactly as the family's transformers processor builds them.

        Default: the ``LlavaProcessor`` text path (transformers 5.24): every "<image>" of the
        formatted template is replaced by P image tokens, then ``tok(texts, padding=True)`` (the
        tokenizer's own special tokens, i.e. BOS where it adds one; left padding).  The reference
        check ``template_ids_equal_processor_ids_without_padding`` then proves ``add_bos`` right.  Families whose processor does
        something else (BLIP-2 puts the image tokens in front of the padded text) override it.
        """
        self.hf_tok.padding_side = "left"
        texts = [self.template.replace("{image}", self.image_token).replace("{prompt}", p) for p in prompts]
        texts = [t.replace(self.image_token, self.image_token * self.tokens) for t in texts]
        enc = self.hf_tok(texts, padding=True)
        return np.asarray(enc["input_ids"], np.int64), np.asarray(enc["attention_mask"], np.int64)

    # -- torch reconstruction of what the Rust runner does ------------------------------------
    def prefix_embeds(self, pixels: np.ndarray) -> torch.Tensor:
        """prefix_embeds of the image graph (hook: a family with more image-graph inputs overrides)."""
        return self.prefix(torch.from_numpy(pixels))

    def assemble_embeds(self, ids: np.ndarray, pixels: np.ndarray) -> torch.Tensor:
        """embed_tokens(ids) with the image-token rows replaced, in order, by prefix_embeds."""
        emb = self.embed(torch.from_numpy(ids)).clone()
        pre = self.prefix_embeds(pixels)
        for b in range(ids.shape[0]):
            rows = np.nonzero(ids[b] == self.image_token_id)[0]
            assert len(rows) == self.tokens, (len(rows), self.tokens)
            emb[b, torch.from_numpy(rows)] = pre[b]
        return emb

    def hf_inputs(self, ids, mask, pixels) -> dict:
        """The keyword arguments of HF's forward/generate for one batch (hook: e.g. image_grid_thw)."""
        return dict(pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(ids),
                    attention_mask=torch.from_numpy(mask))

    def hf_generate(self, ids, mask, pixels, **kw) -> np.ndarray:
        """PyTorch generate(); returns only the new tokens [B*num_return, new]."""
        out = self.model.generate(**self.hf_inputs(ids, mask, pixels), **kw)
        return out[:, ids.shape[1]:].numpy()

    def hf_lm_inputs_embeds(self, ids, mask, pixels) -> torch.Tensor:
        """The inputs_embeds HF's own forward feeds its language model (captured with a hook)."""
        seen = []
        h = self.hook_module.register_forward_pre_hook(lambda mod, a, k: seen.append(k.get("inputs_embeds")),
                                                       with_kwargs=True)
        try:
            self.model.generate(**self.hf_inputs(ids, mask, pixels), max_new_tokens=1, do_sample=False,
                                num_beams=1)
        finally:
            h.remove()
        return seen[0]

    def hf_lm_logits(self, emb: torch.Tensor, mask: np.ndarray, pos: np.ndarray) -> torch.Tensor:
        """HF's language model logits for inputs_embeds (the reference of check_decoder_against_hf)."""
        out = self.lm_backbone(inputs_embeds=emb, attention_mask=torch.from_numpy(mask),
                               position_ids=torch.from_numpy(pos), use_cache=False)
        return self.lm_head(out.last_hidden_state)

    # -- extension hooks (defaults: the plain layout) ------------------------------------------
    def position_ids(self, mask: np.ndarray) -> np.ndarray:
        """position_ids of a left-padded batch (numpy int64, time on the LAST axis: [B,T] here;
        Qwen2-VL-style M-RoPE would return [3,B,T] and override ``position_ids_axes``)."""
        return position_ids_from_mask(mask)

    def position_ids_axes(self) -> dict:
        return {0: "batch", 1: "sequence"}

    #: names of extra decoder.onnx inputs, fed after position_ids and before the past
    decoder_extra_input_names: tuple[str, ...] = ()

    def decoder_extra_inputs(self, mask: np.ndarray, t0: int, t1: int) -> list[np.ndarray]:
        """Values of ``decoder_extra_input_names`` for steps t0..t1 of a batch with this mask."""
        return []

    def decoder_extra_axes(self) -> dict:
        """Dynamic axes of the extra decoder inputs (name -> {axis: name})."""
        return {}

    def prefix_input_names(self) -> list[str]:
        """Inputs of image_prefix.onnx (hook: e.g. InstructBLIP's instruction ids after pixel_values)."""
        return ["pixel_values"]

    def prefix_example_inputs(self, batch: int) -> tuple:
        """Example inputs for exporting image_prefix.onnx (in ``prefix_input_names`` order)."""
        return (torch.zeros(batch, 3, self.size, self.size),)

    def prefix_axes(self) -> dict:
        return {"pixel_values": {0: "batch"}, "prefix_embeds": {0: "batch"}}

    def prefix_verify_inputs(self, batch: int, gen: torch.Generator) -> tuple:
        """Random inputs for the ONNX-vs-PyTorch check of image_prefix.onnx."""
        return (torch.randn(batch, 3, self.size, self.size, generator=gen),)

    def manifest_extra(self) -> list[tuple[str, list]]:
        """Extra manifest keys: ``[(section, [(key, value, comment), ...]), ...]``; keys of an
        existing section (``image``, ``decoder``, ``prompt``...) are appended to it, other
        sections are appended at the end."""
        return []

    def reference_extra(self) -> dict:
        """Extra top-level keys of reference/reference.json."""
        return {}


# --------------------------------------------------------------------------------------
# The LLaVA layout (LlavaForConditionalGeneration: vision tower -> projector -> any LM)
# --------------------------------------------------------------------------------------


class LlavaPrefix(nn.Module):
    """LLaVA: vision tower hidden_states[vision_feature_layer] (CLS dropped for 'default') -> projector.

    Exactly ``LlavaModel.get_image_features`` (transformers 5.24), for any vision tower
    ``AutoModel`` builds from ``vision_config`` (CLIP, SigLIP...)."""

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


#: vision_config.model_type -> leading non-patch tokens of its hidden states (CLIP: CLS)
VISION_EXTRA_TOKENS = {"clip_vision_model": 1, "siglip_vision_model": 0}


def llava_image_tokens(cfg) -> int:
    """P of a LlavaForConditionalGeneration config: (S/patch)^2 + CLS (CLIP: 1, SigLIP: 0), minus 1
    for strategy "default" (which drops the first row, as HF and LlavaProcessor do)."""
    vc = cfg.vision_config
    if vc.model_type not in VISION_EXTRA_TOKENS:
        raise SystemExit(f"export: LLaVA vision tower {vc.model_type!r} is not supported "
                         f"(known: {', '.join(sorted(VISION_EXTRA_TOKENS))})")
    n = (vc.image_size // vc.patch_size) ** 2 + VISION_EXTRA_TOKENS[vc.model_type]
    if cfg.vision_feature_select_strategy == "default":
        n -= 1
    return n


class LlavaLayoutParts(PrefixParts):
    """A ``LlavaForConditionalGeneration`` (LLaVA-1.5, TinyLLaVA's HF-format checkpoints...): the
    image prefix is ``LlavaPrefix``, the language model comes from the registry by
    ``text_config.model_type``, the prompt rule is ``LlavaProcessor``'s (the default)."""

    def __init__(self, model, hf_tok, size: int, mean, std, *, architecture: str, template: str,
                 add_bos: bool, ref_prompts, kind: str | None = None):
        cfg = model.config
        super().__init__(model, hf_tok, size, mean, std, kind=kind, architecture=architecture,
                         prefix=LlavaPrefix(model), embed=model.get_input_embeddings(),
                         lm_backbone=model.model.language_model, lm_head=model.lm_head,
                         text_cfg=cfg.text_config, tokens=llava_image_tokens(cfg),
                         image_token_id=cfg.image_token_id, template=template, add_bos=add_bos,
                         ref_prompts=ref_prompts)


def llava_processor_files(parts: PrefixParts, sp: Path, image_processor_type: str = "CLIPImageProcessor",
                          num_additional_image_tokens: int = 1) -> None:
    """preprocessor_config.json + processor_config.json next to a save_pretrained tiny LLaVA-layout
    model (what the hub repos carry), for the ``--from`` round trip."""
    import json

    vc = parts.model.config.vision_config
    pre = {"image_mean": parts.mean, "image_std": parts.std, "do_normalize": True, "do_rescale": True,
           "rescale_factor": 1 / 255, "image_processor_type": image_processor_type}
    if image_processor_type == "CLIPImageProcessor":
        pre.update(size={"shortest_edge": parts.size}, crop_size={"height": parts.size, "width": parts.size})
    else:
        pre.update(size={"height": parts.size, "width": parts.size})
    proc = {"processor_class": "LlavaProcessor", "patch_size": vc.patch_size,
            "vision_feature_select_strategy": parts.model.config.vision_feature_select_strategy,
            "num_additional_image_tokens": num_additional_image_tokens}
    (sp / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    (sp / "processor_config.json").write_text(json.dumps(proc, indent=1))


def check_llava_processor_tokens(parts: PrefixParts, src: str) -> None:
    """processor_config.json's expansion of <image> (patch_size, num_additional_image_tokens,
    strategy) must equal the P the model yields."""
    pc = C.read_json(src, "processor_config.json") or {}
    if "patch_size" in pc:
        n = (parts.size // pc["patch_size"]) ** 2 + pc.get("num_additional_image_tokens", 0)
        n -= 1 if pc.get("vision_feature_select_strategy") == "default" else 0
        if n != parts.tokens:
            raise ValueError(f"processor expands <image> to {n} tokens, the model yields {parts.tokens}")


def position_ids_from_mask(mask: np.ndarray) -> np.ndarray:
    """transformers 5.24 generate(): cumsum(mask) - 1, with 0 where mask == 0."""
    p = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 0, p).astype(np.int64)


def empty_past(parts: PrefixParts, batch: int, length: int = 0) -> list[torch.Tensor]:
    return [torch.zeros(batch, parts.kv_heads, length, parts.head_dim) for _ in range(2 * parts.layers)]


def _step_args(parts: PrefixParts, emb: torch.Tensor, mask: np.ndarray, pos: np.ndarray, t0: int, t1: int,
               past: list) -> tuple:
    """Torch arguments of one decoder step over positions t0..t1 (mask up to t1)."""
    extra = [torch.from_numpy(x) for x in parts.decoder_extra_inputs(mask, t0, t1)]
    return (emb[:, t0:t1], torch.from_numpy(mask[:, :t1]), torch.from_numpy(np.ascontiguousarray(pos[..., t0:t1])),
            *extra, *past)


def check_decoder_against_hf(parts: PrefixParts, tol: float = 1e-4) -> float:
    """The decoder wrapper (prefill + cached steps) reproduces HF's language model logits:
    max |diff| / max(1, max |HF logit|) < tol at every position it gives logits for (the last of
    a prefill, then each cached step's; the tiny models' logits reach tens, where float32 rounding
    of the cached path alone is ~1e-4 absolute). The cached steps' logits check the key/value
    cache the prefill wrote."""
    gen = torch.Generator().manual_seed(7)
    B, T = 2, 9
    emb = torch.randn(B, T, parts.hidden, generator=gen)
    mask = np.ones((B, T), np.int64)
    mask[1, :3] = 0  # left padding in row 1
    pos = parts.position_ids(mask)
    ref = parts.hf_lm_logits(emb, mask, pos)
    worst = 0.0
    for split in (T, 5):  # (positions split-1.. are real tokens in both rows)
        res = parts.decoder(*_step_args(parts, emb, mask, pos, 0, split, empty_past(parts, B)))
        logits, past = [res[0]], list(res[1:])
        for t in range(split, T):
            res = parts.decoder(*_step_args(parts, emb, mask, pos, t, t + 1, past))
            logits.append(res[0])
            past = list(res[1:])
        got = torch.cat(logits, 1)
        want = ref[:, split - 1:]  # the prefill's last position, then one per step
        if got.shape != want.shape:
            raise RuntimeError(f"decoder wrapper gives logits {tuple(got.shape)}, expected {tuple(want.shape)} "
                               "(the last position of each call)")
        # relative to max(1, max|ref|), as the ONNX checks: random tiny models with init std 1
        # (PaliGemma's tied, sqrt(H)-scaled embeddings) have logits in the hundreds
        worst = max(worst, float((got - want).abs().max()) / max(1.0, float(want.abs().max())))
    if not worst < tol:
        raise RuntimeError(f"decoder wrapper differs from HF by {worst} (relative to max(1, max|ref|))")
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


def decoder_io_names(layers: int, extra: tuple[str, ...] | list[str] = ()) -> tuple[list[str], list[str]]:
    """decoder.onnx input and output names: inputs_embeds, attention_mask, position_ids, *extra, past..."""
    past, present = [], []
    for i in range(layers):
        past += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        present += [f"present.{i}.key", f"present.{i}.value"]
    return ["inputs_embeds", "attention_mask", "position_ids", *extra] + past, ["logits"] + present


def export_graphs(parts: PrefixParts, out: Path, opset: int) -> None:
    B = 2
    print(f"export: writing {out}/image_prefix.onnx (opset {opset})", file=sys.stderr)
    _export(parts.prefix, parts.prefix_example_inputs(B), out / "image_prefix.onnx", parts.prefix_input_names(),
            ["prefix_embeds"], parts.prefix_axes(), opset)
    print(f"export: writing {out}/embed_tokens.onnx", file=sys.stderr)
    _export(parts.embed, (torch.zeros(B, 3, dtype=torch.long),), out / "embed_tokens.onnx", ["input_ids"],
            ["inputs_embeds"], {"input_ids": {0: "batch", 1: "sequence"},
                                "inputs_embeds": {0: "batch", 1: "sequence"}}, opset)
    if in_place(parts):
        export_in_place_decoder(parts, out, opset)
        return
    print(f"export: writing {out}/decoder.onnx", file=sys.stderr)
    extra = tuple(parts.decoder_extra_input_names)
    ins, outs = decoder_io_names(parts.layers, extra)
    axes = {"inputs_embeds": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": parts.position_ids_axes(), **parts.decoder_extra_axes(),
            "logits": {0: "batch"}}  # [B,1,V]: the last position's
    for n in ins[3 + len(extra):]:
        axes[n] = {0: "batch", 2: "past"}
    for n in outs[1:]:
        axes[n] = {0: "batch", 2: "total"}
    past_len, T = 3, 2
    mask = np.ones((B, past_len + T), np.int64)
    pos = np.ascontiguousarray(parts.position_ids(mask)[..., past_len:])
    args = (torch.randn(B, T, parts.hidden), torch.from_numpy(mask), torch.from_numpy(pos),
            *[torch.from_numpy(x) for x in parts.decoder_extra_inputs(mask, past_len, past_len + T)],
            *empty_past(parts, B, past_len))
    _export(parts.decoder, args, out / "decoder.onnx", ins, outs, axes, opset)


def verify_onnx_against_torch(parts: PrefixParts, out: Path, tol: float) -> dict:
    """ORT vs PyTorch (error relative to the largest |value|): prefix (batch 1, 3), embed, decoder prefill (past 0) and cached steps."""
    gen = torch.Generator().manual_seed(1234)
    pre, emb, dec = (C.ort_session(out / n) for n in ("image_prefix.onnx", "embed_tokens.onnx", "decoder.onnx"))
    extra = tuple(parts.decoder_extra_input_names)
    ins, outs = decoder_io_names(parts.layers, extra)
    worst = {"prefix": 0.0, "embed": 0.0, "decoder": 0.0}
    for B in (1, 3):
        px = parts.prefix_verify_inputs(B, gen)
        r = parts.prefix(*px).numpy()
        feed = {n: x.numpy() for n, x in zip(parts.prefix_input_names(), px)}
        worst["prefix"] = max(worst["prefix"], C.rel_diff(pre.run(None, feed)[0], r))
        ids = torch.randint(0, parts.vocab, (B, 5), generator=gen)
        worst["embed"] = max(worst["embed"], float(np.abs(
            emb.run(None, {"input_ids": ids.numpy()})[0] - parts.embed(ids).numpy()).max()))
        if in_place(parts):
            continue
        T = 7
        e = torch.randn(B, T, parts.hidden, generator=gen)
        mask = np.ones((B, T), np.int64)
        if B > 1:
            mask[1, :2] = 0
        pos = parts.position_ids(mask)
        for split in (T, 4):  # prefill all, or prefill 4 then 1-token and 2-token steps
            past_t = empty_past(parts, B)
            past_o = [p.numpy() for p in past_t]
            t0 = 0
            for t1 in ([T] if split == T else [4, 5, 7]):
                a = _step_args(parts, e, mask, pos, t0, t1, past_t)
                ref = parts.decoder(*a)
                feed = {n: x.numpy() for n, x in zip(ins[:3 + len(extra)], a)}
                feed.update(dict(zip(ins[3 + len(extra):], past_o)))
                got = dec.run(None, feed)
                for r, g in zip(ref, got):
                    worst["decoder"] = max(worst["decoder"], C.rel_diff(g, r.numpy()))
                past_t, past_o, t0 = list(ref[1:]), got[1:], t1
    if in_place(parts):
        worst["decoder"] = verify_in_place_onnx(parts, out, tol)
    print("export: ONNX vs PyTorch max diff / max(1, max|ref|): " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()),
          file=sys.stderr)
    for k, v in worst.items():
        if not v < tol:
            raise RuntimeError(f"{k}: ONNX Runtime differs from PyTorch by {v} (tolerance {tol})")
    return worst


# --------------------------------------------------------------------------------------
# The in-place key/value cache layout (--kv-cache in-place)
# --------------------------------------------------------------------------------------

#: The registered steps that implement ``kv_cache = "in-place"`` (the families with their own
#: step module, PaliGemma's prefix-LM mask and Qwen2-VL's M-RoPE, keep ``concat``).
IN_PLACE_STEPS = ("OPTDecoderStep", "LlamaDecoderStep", "PhiDecoderStep")


def in_place(parts: PrefixParts) -> bool:
    return getattr(parts.decoder, "kv_cache", "concat") == "in-place"


def use_in_place_cache(parts: PrefixParts) -> None:
    """Switch the decoder step to the in-place layout; SystemExit for a step without it."""
    if type(parts.decoder).__name__ not in IN_PLACE_STEPS:
        raise SystemExit(f"export: --kv-cache in-place: the {type(parts.decoder).__name__} decoder step has no "
                         f"in-place cache (steps with one: {', '.join(IN_PLACE_STEPS)})")
    parts.decoder.kv_cache = "in-place"


def in_place_io_names(layers: int) -> tuple[list[str], list[str]]:
    """decoder.onnx input and output names of the in-place layout."""
    ins, outs = decoder_io_names(layers)
    return [ins[0], "seqlens_k", *ins[2:]], outs


def _in_place_run(parts: PrefixParts, step, emb: torch.Tensor, lengths: list[list[int]], buffer: int):
    """Run ``step(inputs_embeds, seqlens_k, position_ids, *past) -> (logits, *presents)`` as
    tessera does: call ``c`` gives row ``b`` its tokens ``lengths[c-1][b] .. lengths[c][b]``
    (call 0 from 0, right padded; later calls one token each), the buffers of ``buffer``
    positions carried over.  Returns the logits of every call, [B, calls, V]."""
    B = emb.shape[0]
    past = [np.zeros((B, parts.kv_heads, buffer, parts.head_dim), np.float32) for _ in range(2 * parts.layers)]
    prev, got = [0] * B, []
    for ends in lengths:
        T = max(e - p for p, e in zip(prev, ends))
        x = torch.zeros(B, T, emb.shape[2])
        pos = np.zeros((B, T), np.int64)
        for b, (p, e) in enumerate(zip(prev, ends)):
            x[b, : e - p] = emb[b, p:e]
            pos[b, : e - p] = np.arange(p, e)
        seq = np.asarray([e - 1 for e in ends], np.int32)
        res = step(x, seq, pos, past)
        got.append(torch.as_tensor(np.asarray(res[0]))[:, -1])
        past, prev = [np.asarray(r) for r in res[1:]], list(ends)
    return torch.stack(got, 1)


#: (row lengths after each call) of the in-place checks: right-padded prompts of different
#: lengths, then one-token steps; and a prompt of every position at once
IN_PLACE_SCHEDULES = ([[5, 3], [6, 4], [7, 5], [8, 6], [9, 7]], [[9, 7]])


def _hf_rows(parts: PrefixParts, emb: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    """HF's language-model logits of each row alone (no padding), [L_b, V] each."""
    out = []
    for b, n in enumerate(lengths):
        ones = np.ones((1, n), np.int64)
        out.append(parts.hf_lm_logits(emb[b:b + 1, :n], ones, position_ids_from_mask(ones))[0])
    return out


def check_in_place_decoder_against_hf(parts: PrefixParts, tol: float = 1e-4) -> float:
    """The in-place step (its eager GroupQueryAttention) gives HF's logits at every row's last
    position of every call, over right-padded prompts of different lengths and the one-token
    steps after them (which read the keys the prompt wrote into the buffer)."""
    gen = torch.Generator().manual_seed(7)
    emb = torch.randn(2, 9, parts.hidden, generator=gen)
    ref = _hf_rows(parts, emb, [9, 7])

    def torch_step(x, seq, pos, past):
        with torch.no_grad():
            return parts.decoder(x, torch.from_numpy(seq), torch.from_numpy(pos), *[torch.from_numpy(p) for p in past])

    worst = 0.0
    for sched in IN_PLACE_SCHEDULES:
        got = _in_place_run(parts, torch_step, emb, sched, 12)
        for b in range(2):
            want = torch.stack([ref[b][ends[b] - 1] for ends in sched])
            worst = max(worst, float((got[b] - want).abs().max()) / max(1.0, float(want.abs().max())))
    if not worst < tol:
        raise RuntimeError(f"in-place decoder step differs from HF by {worst} (relative to max(1, max|ref|))")
    return worst


def export_in_place_decoder(parts: PrefixParts, out: Path, opset: int) -> None:
    ins, outs = in_place_io_names(parts.layers)
    axes = {"inputs_embeds": {0: "batch", 1: "sequence"}, "seqlens_k": {0: "batch"},
            "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
    for n in ins[3:] + outs[1:]:
        axes[n] = {0: "batch", 2: "buffer"}
    B, T, M = 2, 2, 6
    args = (torch.randn(B, T, parts.hidden), torch.tensor([3, 2], dtype=torch.int32),
            torch.tensor([[2, 3], [1, 2]]), *empty_past(parts, B, M))
    print(f"export: writing {out}/decoder.onnx (in-place key/value cache: GroupQueryAttention)", file=sys.stderr)
    _export(parts.decoder, args, out / "decoder.onnx", ins, outs, axes, opset)


def verify_in_place_onnx(parts: PrefixParts, out: Path, tol: float) -> float:
    """decoder.onnx on ONNX Runtime, each past bound as its own present (one buffer, written in
    place, as tessera binds it), against the eager step over ``IN_PLACE_SCHEDULES``."""
    import onnxruntime as ort

    sess = C.ort_session(out / "decoder.onnx")
    ins, outs = in_place_io_names(parts.layers)
    gen = torch.Generator().manual_seed(1234)
    emb = torch.randn(2, 9, parts.hidden, generator=gen)

    def ort_step(x, seq, pos, past):
        bufs = [p if isinstance(p, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(p))
                for p in past]
        io = sess.io_binding()
        for n, a in zip(ins[:3], (x.numpy(), seq, pos)):
            io.bind_cpu_input(n, a)
        io.bind_output("logits")
        for n_in, n_out, v in zip(ins[3:], outs[1:], bufs):
            io.bind_ortvalue_input(n_in, v)
            io.bind_ortvalue_output(n_out, v)
        sess.run_with_iobinding(io)
        # (copies: an OrtValue's numpy() is a view of memory freed with the value)
        return [np.array(io.get_outputs()[0].numpy()), *[np.array(v.numpy()) for v in bufs]]

    def torch_step(x, seq, pos, past):
        with torch.no_grad():
            return parts.decoder(x, torch.from_numpy(seq), torch.from_numpy(pos), *[torch.from_numpy(p) for p in past])

    worst = 0.0
    for sched in IN_PLACE_SCHEDULES:
        a = _in_place_run(parts, ort_step, emb, sched, 12)
        b = _in_place_run(parts, torch_step, emb, sched, 12)
        worst = max(worst, C.rel_diff(a.numpy(), b.numpy()))
    print(f"export: in-place decoder, ONNX Runtime (shared buffers) vs PyTorch: {worst:.3g}", file=sys.stderr)
    if not worst < tol:
        raise RuntimeError(f"in-place decoder: ONNX Runtime differs from PyTorch by {worst} (tolerance {tol})")
    return worst


# --------------------------------------------------------------------------------------
# References (--tiny): PyTorch generate()
# --------------------------------------------------------------------------------------


def _gen_kwargs(parts: PrefixParts, *, num_beams: int, min_new_tokens: int = 0, repetition_penalty: float = 1.0,
                max_new_tokens: int = 12, no_repeat_ngram_size: int = 0) -> dict:
    return dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_beams=num_beams,
                do_sample=False, repetition_penalty=repetition_penalty, length_penalty=1.0,
                early_stopping=False, num_return_sequences=1, no_repeat_ngram_size=no_repeat_ngram_size,
                bos_token_id=parts.bos, eos_token_id=parts.eos, pad_token_id=parts.pad)


def reference_cases(parts: PrefixParts) -> list[dict]:
    """The reference cases (greedy and 3 beams, batch 1 and batches of tiles with different prompts)."""
    q, qb, qb2 = parts.ref_prompt, list(parts.ref_batch_prompts), list(parts.ref_batch2_prompts)
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


def compute_references(parts: PrefixParts, seed_info: dict):
    """reference.json content (+ the images): HF generate on the reference cases.

    ``seed_info``: the keys that say how the tiny model was drawn, written as they are after
    ``architecture`` (the existing packages: ``seed``, ``init_std``, ``eos_logit_scale``)."""
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
    logits0 = parts.model(**parts.hf_inputs(ids0, m0, pixels[c0["images"]])).logits[0, -1].numpy()
    ref = {
        "description": "PyTorch generate() references for this package (tools/export/export.py); "
                       "new tokens only, prompt excluded.",
        "architecture": parts.architecture,
        **seed_info,
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
        **parts.reference_extra(),
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


def write_manifest(path: Path, parts: PrefixParts, *, name: str, trained: bool, source: str,
                   max_new_tokens: int = 20, extra: list | None = None) -> None:
    """model.toml of an image-text-decoder package (+ ``parts.manifest_extra()``)."""
    sections = [
        (None, [("family", "image-text-decoder", ""), ("architecture", parts.architecture, ""),
                ("name", name, ""), ("trained", trained, ""), ("source", source, "")]),
        ("image", [("onnx", "image_prefix.onnx", ""),
                   ("input", "pixel_values", "float32 [B,3,S,S], already normalised"),
                   ("output", "prefix_embeds", "float32 [B,P,H]"),
                   ("tokens", parts.tokens, "P: image tokens per image")]),
        ("embed", [("onnx", "embed_tokens.onnx", ""), ("input", "input_ids", "int64 [B,T]"),
                   ("output", "inputs_embeds", "float32 [B,T,H]")]),
        ("decoder", [("onnx", "decoder.onnx", ""), ("inputs_embeds", "inputs_embeds", "float32 [B,T,H]"),
                     *([("kv_cache", "in-place", "one buffer per cache, written in place (GroupQueryAttention)"),
                        ("sequence_lengths", "seqlens_k", "int32 [B]: each row's length - 1 (right padding)")]
                       if in_place(parts) else [("attention_mask", "attention_mask", "int64 [B,past+T]")]),
                     ("position_ids", "position_ids", "int64 [B,T]"),
                     ("logits", "logits", "float32 [B,1,V]: each row's last position"),
                     ("past_key", "past_key_values.{i}.key",
                      "float32 [B,kv_heads,L,head_dim]: a buffer of L positions, bound as its present"
                      if in_place(parts) else "float32 [B,kv_heads,past,head_dim]"),
                     ("past_value", "past_key_values.{i}.value", ""),
                     ("present_key", "present.{i}.key",
                      "the past buffer, written in place" if in_place(parts)
                      else "float32 [B,kv_heads,past+T,head_dim]"),
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
    ]
    for header, keys in parts.manifest_extra() + list(extra or []):
        for h, existing in sections:
            if h == header:
                existing.extend(keys)
                break
        else:
            sections.append((header, list(keys)))
    C.write_toml(path, sections)




# --------------------------------------------------------------------------------------
# The whole export of one built model
# --------------------------------------------------------------------------------------


def export_prefix_package(args, parts: PrefixParts, *, name: str, source: str, trained: bool,
                          reference_seed_info: dict | None = None, max_new_tokens: int = 20,
                          grounding: "Grounding | None" = None) -> None:
    """Everything after the model is built: decoder step vs HF, graphs, ORT vs PyTorch, fp16,
    tokenizer.json, model.toml, and (when ``reference_seed_info`` is given: --tiny fixtures)
    ``reference/`` from HF generate with its degeneracy report.

    ``args`` supplies ``out``, ``opset``, ``fp16``, ``skip_verify``, ``tolerance`` (see
    ``add_prefix_args``).  ``reference_seed_info``: the reference.json keys saying how the tiny
    model was drawn (e.g. ``dict(seed=0, init_std=1.0, eos_logit_scale=2.0)``); None: no reference.
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    worst = check_decoder_against_hf(parts)
    print(f"export: decoder wrapper vs HF language model: max diff / max(1, max|ref|) {worst:.3g}", file=sys.stderr)
    if getattr(args, "kv_cache", "concat") == "in-place":
        if args.fp16:
            raise SystemExit("export: --kv-cache in-place is float32 only (its buffers are the graph's "
                             "float32 inputs; --fp16 casts them)")
        use_in_place_cache(parts)
        worst = check_in_place_decoder_against_hf(parts)
        print(f"export: in-place decoder step vs HF language model: {worst:.3g}", file=sys.stderr)
    export_graphs(parts, out, args.opset)
    if not args.skip_verify:
        verify_onnx_against_torch(parts, out, tol=C.FP16_TOLERANCE if args.fp16 else args.tolerance)
    if args.fp16:
        for n in ("image_prefix.onnx", "embed_tokens.onnx", "decoder.onnx"):
            print(f"export: converting {out}/{n} to float16", file=sys.stderr)
            C.to_fp16(out / n)
    C.save_plain_tokenizer_json(parts.hf_tok, out / "tokenizer.json")
    write_manifest(out / "model.toml", parts, name=name, trained=trained,
                   source=source + (", fp16" if args.fp16 else ""), max_new_tokens=max_new_tokens,
                   extra=[grounding.manifest_section()] if grounding is not None else [])

    if reference_seed_info is not None:
        ref, images_u8, pixels = compute_references(parts, reference_seed_info)
        ref["onnx_precision"] = "fp16" if args.fp16 else "fp32"
        if grounding is not None:
            ref["grounding"] = grounding.reference(parts, max_new_tokens)
        ok, msg = degeneracy_report(ref)
        ref["degeneracy_check"] = {"ok": ok, "summary": msg}
        print(f"export: reference outputs: {msg}", file=sys.stderr)
        if not ok:
            print("export: WARNING the reference outputs are degenerate (see above)", file=sys.stderr)
        C.write_reference(out, ref, C.image_bins(images_u8, pixels))
    C.report_done(out)


def add_prefix_args(c, *, seed: int, init_std: float, eos_scale: float, tolerance: float = 1e-3) -> None:
    """The options every prefix-decoder command shares (after add_source_args / add_out_arg):
    --opset, --fp16, --seed, --init-std, --eos-scale, --save-pretrained, --name, --no-reference,
    --skip-verify, --tolerance.  Families add theirs (--shape, --language-model...) around it."""
    C.add_opset_arg(c)
    c.add_argument("--fp16", action="store_true",
                   help="float16 weights/compute, float32 graph inputs/outputs")
    c.add_argument("--kv-cache", choices=KV_CACHES, default="concat",
                   help="decoder key/value cache layout: concat (default: any ONNX runtime, left padding) or "
                        "in-place (ONNX Runtime's GroupQueryAttention writes one preallocated buffer per cache; "
                        "right padding; OPT, Llama, Qwen2 and Phi language models)")
    c.add_argument("--seed", type=int, default=None, help=f"--tiny: seed (default {seed})")
    c.add_argument("--init-std", type=float, default=None, help=f"--tiny: init std (default {init_std})")
    c.add_argument("--eos-scale", type=float, default=None,
                   help=f"--tiny: factor on the EOS row of lm_head (default {eos_scale})")
    c.add_argument("--save-pretrained", metavar="DIR", default=None,
                   help="--tiny: also write the model + processor with save_pretrained (to test --from)")
    C.add_name_arg(c)
    C.add_no_reference_arg(c)
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, tolerance,
                        f"max diff / max(1, max|ref|) allowed between ONNX Runtime and PyTorch (default {tolerance:g})")


# --------------------------------------------------------------------------------------
# Grounding fixtures: a tiny model whose greedy output is a fixed box sequence
# --------------------------------------------------------------------------------------


class _ForceTokens:
    """A logits processor that makes step ``k`` choose ``target[k]`` (only to read the hidden
    states along the target sequence; the exported model is never run with it)."""

    def __init__(self, target: list[int], prompt_len: int):
        self.target, self.prompt_len = list(target), prompt_len

    def __call__(self, input_ids, scores):
        k = input_ids.shape[1] - self.prompt_len
        out = torch.full_like(scores, float("-inf"))
        out[:, self.target[k]] = 0.0
        return out


def _states_along(parts: PrefixParts, ids, mask, pixels, target: list[int]) -> torch.Tensor:
    """The lm_head inputs [T, H] at the T greedy steps that choose ``target`` (HF generate, forced)."""
    from transformers import LogitsProcessorList

    seen = []
    h = parts.lm_head.register_forward_pre_hook(lambda mod, a: seen.append(a[0][:, -1, :].detach().clone()))
    try:
        parts.model.generate(**parts.hf_inputs(ids, mask, pixels), max_new_tokens=len(target), min_new_tokens=0,
                             do_sample=False, num_beams=1, bos_token_id=parts.bos, eos_token_id=parts.eos,
                             pad_token_id=parts.pad,
                             logits_processor=LogitsProcessorList([_ForceTokens(target, ids.shape[1])]))
    finally:
        h.remove()
    return torch.cat(seen[: len(target)], 0)


def force_sequences(parts: PrefixParts, cases: list[tuple[str, list[int]]], *, image: int = 0,
                    margin: float = 10.0) -> dict:
    """Change ``lm_head.weight`` (least norm) so that greedy decoding of each ``(prompt, target)``
    case on reference image ``image`` yields ``target`` (ending with EOS); checked with plain HF
    ``generate``.  Nothing else changes and the architecture stays Hugging Face's (its lm_head has
    no bias; a bias would be the same at every step and could not spell a sequence).  A tied
    lm_head (Gemma) is untied first, so the embedding stays the drawn one.

    The final hidden states h[t] along each target are read with a forced HF generate (they do
    not depend on an untied lm_head); D solves ``H @ D.T = z - H @ W.T`` exactly (least norm),
    ``z`` being W h with the target's logit put ``margin`` above the best other token, so the
    steps (all cases together) must number at most the hidden size.  A random tiny model's states
    move a lot with the image, so one linear head cannot spell the same sequence on every image:
    the sequence is forced on one reference image (the tests' tiles are that image), and the
    report says on how many of the other reference images it holds too."""
    W = parts.lm_head.weight
    if W.data_ptr() == parts.embed.emb.weight.data_ptr():
        parts.lm_head.weight = nn.Parameter(W.detach().clone())
        for cfg in (parts.model.config, getattr(parts.model.config, "text_config", None)):
            if cfg is not None and hasattr(cfg, "tie_word_embeddings"):
                cfg.tie_word_embeddings = False
    if any(t[-1] != parts.eos for _, t in cases):
        raise ValueError("a forced sequence must end with the EOS token")
    steps = sum(len(t) for _, t in cases)
    if steps > parts.hidden:
        raise ValueError(f"{steps} forced steps exceed the hidden size {parts.hidden}")
    _, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    enc = [(parts.processor_ids([p]), list(t)) for p, t in cases]
    H = torch.cat([_states_along(parts, ids, mask, pixels[image:image + 1], t) for (ids, mask), t in enc], 0)
    y = torch.tensor([tok for _, t in enc for tok in t])
    rows = torch.arange(len(y))
    L = H @ parts.lm_head.weight.detach().T
    other = L.clone()
    other[rows, y] = float("-inf")
    z = L.clone()
    z[rows, y] = other.max(1).values + margin
    D = (torch.linalg.pinv(H) @ (z - L)).T  # [V, H]
    with torch.no_grad():
        parts.lm_head.weight += D

    def holds(i: int) -> list[bool]:
        out = []
        for (ids, mask), t in enc:
            g = parts.hf_generate(ids, mask, pixels[i:i + 1], max_new_tokens=len(t) + 4, do_sample=False,
                                  num_beams=1, bos_token_id=parts.bos, eos_token_id=parts.eos,
                                  pad_token_id=parts.pad)[0].tolist()
            out.append(g[: len(t)] == t)
        return out

    if not all(holds(image)):
        raise RuntimeError("the forced sequences do not come out of plain greedy generate")
    others = {i: holds(i) for i in range(len(images_u8)) if i != image}
    L = H @ parts.lm_head.weight.detach().T
    top2 = L.topk(2, dim=1).values
    report = {"image": image, "steps": steps, "margin": margin, "update_norm": float(D.norm()),
              "min_margin": float((top2[:, 0] - top2[:, 1]).min()),
              "other_images_where_it_holds": [i for i, v in others.items() if all(v)]}
    print(f"export: grounding fixture: {report}", file=sys.stderr)
    return report


def token_spans(hf_tok, ids: list[int], *, skip_special_tokens: bool) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of ``ids`` and each token's character range in it (from the decodes of the
    growing prefixes)."""
    text = hf_tok.decode(ids, skip_special_tokens=skip_special_tokens)
    spans, last = [], 0
    for k in range(1, len(ids) + 1):
        prefix = hf_tok.decode(ids[:k], skip_special_tokens=skip_special_tokens)
        end = last
        while end < min(len(prefix), len(text)) and prefix[end] == text[end]:
            end += 1
        end = max(end, last)
        spans.append((last, end))
        last = end
    return text, spans


#: How a grounding fixture is made (the model.toml source line).
FORCING_NOTE = "prefix_decoder.force_sequences"


class Grounding:
    """A grounding fixture of a prefix-decoder family (``--grounding-fixture``): the
    ``[grounding]`` manifest keys and the forced answers.

    * ``prompt``: the ``[grounding] prompt`` template (``{prompt}`` = each ``--prompts`` entry);
    * ``output``: the ``[grounding] output`` convention (the Rust parser);
    * ``answers``: ``{entry: forced answer text}`` (the family's real output format);
    * ``parse(text, width, height)``: the official recipe in Python, returning a list of
      ``dict(bbox=[x0, y0, x1, y1], phrase=str, coords=(start, end))`` (character range of the
      coordinates in ``text``) plus whatever raw values the recipe gives;
    * ``recipe_skips_special``: whether the recipe decodes with ``skip_special_tokens=True``;
    * ``convention``: one line on the coordinate convention (reference.json)."""

    def __init__(self, *, prompt: str, output: str, answers: dict, parse, recipe_skips_special: bool,
                 convention: str, recipe: str):
        self.prompt, self.output, self.answers, self.parse = prompt, output, dict(answers), parse
        self.recipe_skips_special, self.convention, self.recipe = recipe_skips_special, convention, recipe
        self.forcing: dict | None = None

    def prompt_of(self, entry: str) -> str:
        return self.prompt.replace("{prompt}", entry)

    def force(self, parts: PrefixParts) -> None:
        """Make the tiny model write the answers (``force_sequences`` on reference image 0)."""
        cases = [(self.prompt_of(e), parts.hf_tok(a, add_special_tokens=False)["input_ids"] + [parts.eos])
                 for e, a in self.answers.items()]
        self.forcing = force_sequences(parts, cases)

    def manifest_section(self) -> tuple:
        return ("grounding", [("prompt", self.prompt, ""),
                              ("output", self.output, "")])

    def reference(self, parts: PrefixParts, max_new_tokens: int) -> dict:
        """Per entry and reference image 0..3: HF greedy ``generate`` (the package's [generation]),
        the chosen tokens' log-probabilities (``compute_transition_scores(normalize_logits=True)``),
        the text decoded with special tokens (what tessera parses) and as the recipe decodes it, and
        the recipe's boxes with the indices of the tokens that hold each box's coordinates."""
        _, images_u8 = C.make_reference_images(parts.size)
        pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
        kw = _gen_kwargs(parts, num_beams=1, max_new_tokens=max_new_tokens)
        cases = []
        for entry in self.answers:
            prompt = self.prompt_of(entry)
            ids, mask = parts.processor_ids([prompt])
            for i in range(min(4, len(images_u8))):
                out = parts.model.generate(**parts.hf_inputs(ids, mask, pixels[i:i + 1]), **kw,
                                           output_scores=True, return_dict_in_generate=True)
                lp = parts.gen_model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
                new = out.sequences[0, ids.shape[1]:].tolist()
                new, _ = _trim(np.asarray(new), parts.eos)
                logprobs = lp[0, : len(new)].double().tolist()
                text, _ = token_spans(parts.hf_tok, new, skip_special_tokens=False)
                rtext, spans = token_spans(parts.hf_tok, new, skip_special_tokens=self.recipe_skips_special)
                boxes = []
                for b in self.parse(rtext, parts.size, parts.size):
                    s, e = b.pop("coords")
                    b["coordinate_tokens"] = [k for k, (a, z) in enumerate(spans) if a < e and z > s]
                    boxes.append(b)
                forced = parts.hf_tok(self.answers[entry], add_special_tokens=False)["input_ids"] + [parts.eos]
                cases.append({"name": f"{entry.replace(' ', '_')}_img{i}", "entry": entry, "prompt": prompt,
                              "image": i, "new_tokens": new, "logprobs": logprobs, "text": text,
                              "recipe_text": rtext, "boxes": boxes, "forced": new == forced})
                print(f"export: grounding {cases[-1]['name']}: {text!r} -> {len(boxes)} boxes", file=sys.stderr)
        if not any(c["forced"] and c["boxes"] for c in cases):
            raise RuntimeError("no grounding case writes the forced boxes")
        return {"what": "HF greedy generate per --prompts entry (the [grounding] prompt) and reference image; "
                        "boxes: the recipe's parse of recipe_text in the model input's pixels",
                "output": self.output, "prompt_template": self.prompt, "convention": self.convention,
                "recipe": self.recipe, "image_size": [parts.size, parts.size],
                "generation": {k: v for k, v in kw.items()}, "forcing": self.forcing, "cases": cases}
