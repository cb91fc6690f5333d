"""Qwen2-VL and Qwen2.5-VL -> ``image-text-decoder`` packages with M-RoPE positions.

Used by ``export.py qwen2-vl`` and ``export.py qwen2.5-vl`` (see tools/export/README.md).  The
package has the three graphs of the family (decoder_export.py's layout)::

    image_prefix.onnx   pixel_values [B,3,S,S] f32 (normalised) -> prefix_embeds [B,P,H] f32
                        in-graph patchify exactly as Qwen2VLImageProcessor (temporal_patch_size
                        copies of the frame, patches grouped by spatial_merge_size), vision tower with
                        2D rotary positions for the one baked tile grid, (Qwen2.5: window attention
                        with the baked window order), patch merger.  P = (S/patch/merge)^2.
    embed_tokens.onnx   input_ids [B,T] i64 -> inputs_embeds [B,T,H]
    decoder.onnx        inputs_embeds [B,T,H], attention_mask [B,past+T], position_ids [3,B,T] i64
                        (M-RoPE: temporal, height, width), past_key_values.{i}.key/.value
                        -> logits [B,1,V] (the last position's), present.{i}.key/.value

The manifest's ``[decoder]`` says ``positions = "mrope"`` and ``mrope_grid = [t, h, w]`` (the image
grid after merging); tessera then computes the position ids as Hugging Face's ``get_rope_index``
and the later steps as ``generate`` does (last column + 1).  The tile size is baked: it must be a
multiple of patch_size * spatial_merge_size and the processor's resize must be a no-op for it.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C
import prefix_decoder as PD
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

KINDS = ("qwen2-vl", "qwen2.5-vl")
DEFAULT_SEEDS = {"qwen2-vl": 1, "qwen2.5-vl": 0}
DEFAULT_EOS_SCALE = {"qwen2-vl": 2.0, "qwen2.5-vl": 2.0}
DEFAULT_INIT_STD = {"qwen2-vl": 1.0, "qwen2.5-vl": 1.0}
#: The tiny models' tile size (patch 4, merge 2: an 8x8 patch grid, 4x4 = 16 image tokens).
TINY_SIZE = 32
TINY_PATCH, TINY_MERGE = 4, 2
#: --shape choices ("tiny" first: the default, the test fixture with references); qwen2-vl only has "mid".
SHAPES = {"qwen2-vl": ["tiny", "mid"], "qwen2.5-vl": ["tiny"]}
#: The benchmark shape's tile size, patch and merge (Qwen2-VL's patch 14, merge 2: 8x8 = 64 image tokens).
MID_SIZE, MID_PATCH, MID_MERGE = 224, 14, 2
#: init std / EOS logit scale of the benchmark shape (HF-like init; benchmarks force the caption length).
BENCH_INIT_STD = 0.02
BENCH_EOS_SCALE = 1.0
#: The default tile size of --from (Qwen2-VL's patch 14, merge 2: a multiple of 28; 16x16 = 256 image tokens).
DEFAULT_SIZE = 448

#: Qwen2-VL's chat template for one user turn with one image (the hub chat template, with its
#: default system message); ``{image}`` is the run of <|image_pad|> tokens.
TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|>{image}<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]
#: Qwen2's pre-tokenizer split (tokenizer.json of Qwen/Qwen2-VL-2B-Instruct).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
#: (single-image prompt, batch-of-3 prompts, batch-of-2 prompts) of the reference cases: English and Chinese.
REF_PROMPTS = {
    "qwen2-vl": ("描述这张图片。", ["Describe this image.", "这张卫星图像里有什么？",
                                "Is there a river or a forest in this scene, and where?"],
                 ["图中有河流吗？", "What is in this image?"]),
    "qwen2.5-vl": ("Describe this image.", ["这张卫星图像里有什么？", "What is in this image?",
                                            "Is there a river or a forest in this scene, and where?"],
                   ["描述这张图片。", "Is there a road?"]),
}

_EN = ["forest", "river", "city", "desert", "farmland", "lake", "coast", "harbor", "airport", "mountain",
       "road", "bridge", "village", "field", "beach", "island"]
_ZH = ["森林", "河流", "城市", "沙漠", "农田", "湖泊", "海岸", "港口", "机场", "山脉", "道路", "桥梁", "村庄", "田野"]
_FRAMES = ["a satellite image of a {e}", "describe this image: a {e} next to a {f}.",
           "这张卫星图像里有什么？有{z}和{y}。", "图中有一条{z}，旁边是{y}。", "描述这张图片：{z}",
           "is there a {e} in this scene? yes, near the {f}.", "You are a helpful assistant.",
           "system user assistant", "这是一张{z}的航拍照片"]


def corpus() -> list[str]:
    lines = []
    for i in range(300):
        lines.append(_FRAMES[i % len(_FRAMES)].format(
            e=_EN[i % len(_EN)], f=_EN[(i * 7 + 3) % len(_EN)], z=_ZH[i % len(_ZH)], y=_ZH[(i * 5 + 2) % len(_ZH)]))
    return lines


#: Qwen2-VL's grounding special tokens (ids 151646..151649 in Qwen/Qwen2-VL-2B-Instruct, special); the
#: grounding fixture appends them after the trained vocabulary, as the real vocabulary has them after its BPE.
BOX_SPECIALS = ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"]


def build_tiny_tokenizer(vocab_size: int = 700, box_tokens: bool = False):
    """A byte-level BPE with Qwen2's pre-tokenizer and special tokens, trained on English and
    Chinese caption lines: <|endoftext|> = 0 (pad), <|im_start|> = 1, <|im_end|> = 2 (eos), ...,
    <|image_pad|> = 5.  No BOS, as Qwen2."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    if box_tokens:
        tok.add_special_tokens(BOX_SPECIALS)
    return tok


def hf_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens={"image_token": "<|image_pad|>",
                                                         "video_token": "<|video_pad|>"},
                                   padding_side="left")


def _reinit(model: nn.Module, std: float) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.normal_(m.bias, 0.0, std / 4)
        elif isinstance(m, nn.Conv3d):
            nn.init.normal_(m.weight, 0.0, std / 4)


def build_tiny(kind: str, seed: int, init_std: float, eos_scale: float, shape: str = "tiny",
               box_tokens: bool = False):
    """(model, tokenizer) of a seeded random Qwen2-VL / Qwen2.5-VL.

    ``shape="mid"`` (qwen2-vl, benchmarks, no references): Qwen2-0.5B's decoder layout (hidden 896,
    14 heads, 2 kv heads, ffn 4864, rope theta 1e6; mrope_section [8, 12, 12]: Qwen2-VL's [16, 24, 24] scaled to head_dim 64) with 8 of its 24
    layers (~120 M parameters besides the tiny vocabulary) and a small vision tower at patch 14,
    merge 2 (224 px tiles: 64 image tokens)."""
    tok = build_tiny_tokenizer(box_tokens=box_tokens)
    V = tok.get_vocab_size()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    if shape == "tiny":
        dims = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1)
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}
    elif shape == "mid" and kind == "qwen2-vl":
        dims = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=8, num_attention_heads=14,
                    num_key_value_heads=2)
        rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]}
    else:
        raise ValueError(f"unknown {kind} --shape {shape!r}")
    text = dict(vocab_size=V, **dims, max_position_embeddings=256, rms_norm_eps=1e-6,
                rope_parameters=rope,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    top = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
               vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
               tie_word_embeddings=False)
    torch.manual_seed(seed)
    if kind == "qwen2-vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration as Cls

        if shape == "tiny":
            vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=TINY_PATCH,
                          temporal_patch_size=2, spatial_merge_size=TINY_MERGE, in_channels=3,
                          hidden_act="quick_gelu")
        else:
            vision = dict(depth=2, embed_dim=64, hidden_size=dims["hidden_size"], num_heads=2, mlp_ratio=2,
                          patch_size=MID_PATCH, temporal_patch_size=2, spatial_merge_size=MID_MERGE, in_channels=3,
                          hidden_act="quick_gelu")
        cfg = Qwen2VLConfig(text_config=text, vision_config=vision, **top)
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration as Cls

        vision = dict(depth=2, hidden_size=32, intermediate_size=48, out_hidden_size=64, num_heads=2, patch_size=TINY_PATCH,
                      temporal_patch_size=2, spatial_merge_size=TINY_MERGE, in_channels=3, hidden_act="silu",
                      window_size=16, fullatt_block_indexes=[1])
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **top)
    cfg._attn_implementation = "eager"
    model = Cls(cfg).eval()
    _reinit(model, init_std)
    with torch.no_grad():
        model.lm_head.weight[ids["<|im_end|>"]] *= eos_scale
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model, tok


def image_processor(kind: str, model, size: int, mean, std, min_pixels: int | None = None,
                    max_pixels: int | None = None):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    vc = model.config.vision_config
    return Qwen2VLImageProcessor(
        size={"shortest_edge": min_pixels if min_pixels is not None else size * size,
              "longest_edge": max_pixels if max_pixels is not None else size * size},
        patch_size=vc.patch_size, temporal_patch_size=vc.temporal_patch_size, merge_size=vc.spatial_merge_size,
        image_mean=list(mean), image_std=list(std))


def hf_processor(kind: str, image_proc, hf_tok):
    if kind == "qwen2-vl":
        from transformers import Qwen2VLProcessor as P
    else:
        from transformers import Qwen2_5_VLProcessor as P
    try:
        return P(image_processor=image_proc, tokenizer=hf_tok, video_processor=None)
    except Exception:  # some versions insist on a video processor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        return P(image_processor=image_proc, tokenizer=hf_tok, video_processor=Qwen2VLVideoProcessor())


# --------------------------------------------------------------------------------------
# The tile size: checked before anything is written
# --------------------------------------------------------------------------------------


def tile_problem(size: int, patch: int, merge: int, min_pixels: int, max_pixels: int) -> str | None:
    """Why a tile size cannot be baked (None when it can): the processor would resize it."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    f = patch * merge
    if size <= 0 or size % f:
        return (f"tile size {size} is not a multiple of patch_size * spatial_merge_size = {patch} * {merge} = {f} "
                f"(try {max(f, size // f * f)} or {(size // f + 1) * f})")
    h, w = smart_resize(size, size, factor=f, min_pixels=min_pixels, max_pixels=max_pixels)
    if (h, w) != (size, size):
        return (f"tile size {size} would be resized to {h}x{w} by the image processor "
                f"(min_pixels {min_pixels}, max_pixels {max_pixels}); pick a size with "
                f"{min_pixels} <= size^2 <= {max_pixels}")
    return None


# --------------------------------------------------------------------------------------
# Graph wrappers
# --------------------------------------------------------------------------------------


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class QwenVLPrefix(nn.Module):
    """pixels [B,3,S,S] (normalised) -> merged image tokens [B,P,H], for one baked tile grid."""

    def __init__(self, kind: str, model, size: int):
        super().__init__()
        from transformers.vision_utils import get_vision_position_ids

        self.kind = kind
        v = model.model.visual
        vc = model.config.vision_config
        self.v = v
        self.p, self.tp, self.m = vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size
        self.g = size // self.p
        self.n = self.g * self.g
        self.mu = self.m * self.m
        self.heads = vc.num_heads
        grid = torch.tensor([[1, self.g, self.g]])
        pos = get_vision_position_ids(grid, self.m)
        dim = v.blocks[0].attn.proj.in_features
        cos, sin = v.rotary_pos_emb(torch.zeros(1, dim), pos)
        masks = [None] * len(v.blocks)
        if kind == "qwen2.5-vl":
            from transformers.vision_utils import get_vision_window_index

            widx, cu = get_vision_window_index(grid, spatial_merge_size=self.m, window_size=vc.window_size,
                                               patch_size=self.p)
            widx = torch.as_tensor(widx).long()
            cu = torch.as_tensor(cu).long()
            self.register_buffer("window_index", widx, persistent=False)
            self.register_buffer("reverse_index", torch.argsort(widx), persistent=False)
            perm = lambda t: t.reshape(self.n // self.mu, self.mu, -1)[widx].reshape(self.n, -1)  # noqa: E731
            cos, sin = perm(cos), perm(sin)
            seg = torch.zeros(self.n, dtype=torch.long)
            for i in range(len(cu) - 1):
                seg[int(cu[i]):int(cu[i + 1])] = i
            wmask = torch.where(seg[:, None] == seg[None, :], 0.0, torch.finfo(torch.float32).min)
            self.register_buffer("window_mask", wmask, persistent=False)
            masks = ["full" if i in vc.fullatt_block_indexes else "window" for i in range(len(v.blocks))]
        self.masks = masks
        self.register_buffer("cos", cos.float()[:, None, :], persistent=False)  # [N,1,hd]
        self.register_buffer("sin", sin.float()[:, None, :], persistent=False)

    def patchify(self, px):
        """Qwen2VLImageProcessor.patchify of a batch of one-frame images: [B*N, C*tp*p*p]."""
        B, Cc = px.shape[0], px.shape[1]
        g, m, p = self.g, self.m, self.p
        x = px.reshape(B, Cc, g // m, m, p, g // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, self.tp, -1, -1)
        return x.reshape(B * self.n, Cc * self.tp * p * p)

    def attention(self, a, x, mask):
        B, N, D = x.shape
        qkv = a.qkv(x).reshape(B, N, 3, self.heads, -1)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]          # [B,N,h,hd]
        q = q * self.cos + _rotate_half(q) * self.sin
        k = k * self.cos + _rotate_half(k) * self.sin
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        w = torch.matmul(q, k.transpose(2, 3)) * a.scaling
        if mask is not None:
            w = w + mask
        w = torch.softmax(w.float(), dim=-1).to(q.dtype)
        o = torch.matmul(w, v).transpose(1, 2).reshape(B, N, D)
        return a.proj(o)

    def forward(self, pixel_values):
        B = pixel_values.shape[0]
        h = self.v.patch_embed(self.patchify(pixel_values))
        h = h.reshape(B, self.n, -1)
        if self.kind == "qwen2.5-vl":
            h = h.reshape(B, self.n // self.mu, self.mu, -1)[:, self.window_index].reshape(B, self.n, -1)
        for blk, mk in zip(self.v.blocks, self.masks):
            mask = self.window_mask if mk == "window" else None
            h = h + self.attention(blk.attn, blk.norm1(h), mask)
            h = h + blk.mlp(blk.norm2(h))
        out = self.v.merger(h)                       # [B*N/mu, H]
        out = out.reshape(B, self.n // self.mu, -1)
        if self.kind == "qwen2.5-vl":
            out = out[:, self.reverse_index]
        return out


def _additive_mask(attention_mask, q_len_like, dtype):
    """[B,1,T,past+T]: 0 where key j <= query position and mask[b,j] == 1 (or j is the query), else
    min (the seam's rule for the Llama step, prefix_decoder._additive_mask)."""
    ones_k = torch.ones_like(attention_mask[:1, :])
    k_idx = torch.cumsum(ones_k, dim=1) - 1
    total = torch.sum(ones_k, dim=1, keepdim=True)
    ones_q = torch.ones_like(q_len_like[:1, :, 0], dtype=torch.long)
    q_idx = torch.cumsum(ones_q, dim=1) - 1 + (total - torch.sum(ones_q, dim=1, keepdim=True))
    causal = k_idx[:, None, :] <= q_idx[:, :, None]
    diag = k_idx[:, None, :] == q_idx[:, :, None]
    allowed = (causal[:, None, :, :] & (attention_mask[:, None, None, :] != 0)) | diag[:, None, :, :]
    zero = torch.zeros((), dtype=dtype)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, zero, neg)


class MRopeQwen2Step(nn.Module):
    """HF Qwen2-VL / Qwen2.5-VL text model (eager) + lm_head: position_ids [3,B,T] (M-RoPE), tensor KV cache.
    ``(inputs_embeds, attention_mask, position_ids, *past) -> (logits, *presents)``."""

    def __init__(self, text_model, lm_head, cfg):
        super().__init__()
        self.m, self.lm_head = text_model, lm_head
        self.n_layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        m = self.m
        h = inputs_embeds
        cos, sin = m.rotary_emb(h, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        mask_add = _additive_mask(attention_mask, inputs_embeds, h.dtype)
        B = h.shape[0]
        n_rep = self.heads // self.kv_heads
        presents = []
        for i, layer in enumerate(m.layers):
            a = layer.self_attn
            residual = h
            x = layer.input_layernorm(h)
            q = a.q_proj(x).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(B, -1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = a.v_proj(x).view(B, -1, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            if n_rep > 1:
                b_, hk, s, d = k.shape
                kk = k[:, :, None].expand(b_, hk, n_rep, s, d).reshape(b_, hk * n_rep, s, d)
                vv = v[:, :, None].expand(b_, hk, n_rep, s, d).reshape(b_, hk * n_rep, s, d)
            else:
                kk, vv = k, v
            w = torch.matmul(q, kk.transpose(2, 3)) * a.scaling + mask_add
            w = torch.softmax(w.float(), dim=-1).to(q.dtype)
            o = torch.matmul(w, vv).transpose(1, 2).reshape(B, -1, self.heads * self.head_dim)
            h = residual + a.o_proj(o)
            residual = h
            h = residual + layer.mlp(layer.post_attention_layernorm(h))
        h = m.norm(h)
        return (PD.last_position_logits(self.lm_head, h), *presents)


# --------------------------------------------------------------------------------------
# M-RoPE positions (the rule tessera implements in Rust; checked here against HF)
# --------------------------------------------------------------------------------------


def mrope_positions(ids: np.ndarray, mask: np.ndarray, image_token_id: int, grid: tuple[int, int, int]):
    """get_rope_index for left-padded rows with one image each: ([3,B,T], deltas [B])."""
    t, gh, gw = grid
    B, T = ids.shape
    pos = np.zeros((3, B, T), np.int64)
    deltas = []
    for b in range(B):
        cols = [j for j in range(T) if mask[b, j]]
        cur, k = 0, 0
        out = []
        while k < len(cols):
            if ids[b, cols[k]] == image_token_id:
                for ti in range(t):
                    for hi in range(gh):
                        for wi in range(gw):
                            out.append((cur + ti, cur + hi, cur + wi))
                k += t * gh * gw
                cur += max(gh, gw)
            else:
                out.append((cur, cur, cur))
                cur += 1
                k += 1
        for (a, h_, w_), j in zip(out, cols):
            pos[:, b, j] = (a, h_, w_)
        deltas.append(max(max(o) for o in out) + 1 - len(cols))
    return pos, np.array(deltas, np.int64)




# The M-RoPE Qwen2 step for both families' text models (text_config.model_type).
PD.register_lm_step("qwen2_vl_text", MRopeQwen2Step)
PD.register_lm_step("qwen2_5_vl_text", MRopeQwen2Step)


# --------------------------------------------------------------------------------------
# The family on the prefix-decoder seam
# --------------------------------------------------------------------------------------


def _pseudo_mrope(mask: np.ndarray) -> np.ndarray:
    """[3,B,T] position ids whose three rows differ (as in an image block), for the decoder checks."""
    p = PD.position_ids_from_mask(mask)
    return np.stack([p, p - p // 3, p + p % 2]).astype(np.int64)


class QwenVLParts(PD.PrefixParts):
    """Qwen2-VL / Qwen2.5-VL on the seam: the HF processor builds the ids and the patches, the decoder
    takes M-RoPE position ids [3,B,T]."""

    def __init__(self, kind: str, model, hf_tok, size: int, mean, std, min_pixels: int, max_pixels: int):
        vc = model.config.vision_config
        problem = tile_problem(size, vc.patch_size, vc.spatial_merge_size, min_pixels, max_pixels)
        if problem:
            raise SystemExit(f"export: {problem}")
        g = size // vc.patch_size // vc.spatial_merge_size
        self.grid = (1, g, g)
        self.merge = vc.spatial_merge_size
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        hf_tok.padding_side = "left"
        super().__init__(
            model, hf_tok, size, mean, std, architecture=kind, kind=kind,
            prefix=QwenVLPrefix(kind, model, size), embed=model.get_input_embeddings(),
            lm_backbone=model.model.language_model, lm_head=model.lm_head, text_cfg=model.config.text_config,
            tokens=g * g, image_token_id=model.config.image_token_id, template=TEMPLATE, add_bos=False,
            ref_prompts=REF_PROMPTS[kind])
        self.image_processor = image_processor(kind, model, size, mean, std, min_pixels, max_pixels)
        self.processor = hf_processor(kind, self.image_processor, hf_tok)

    def _texts(self, prompts):
        return [self.template.replace("{image}", self.image_token).replace("{prompt}", p) for p in prompts]

    def processor_inputs(self, images_u8: np.ndarray, prompts: list[str]) -> dict:
        """Qwen2VLProcessor on uint8 tiles and the chat-formatted prompts (one <|image_pad|> each)."""
        from PIL import Image

        imgs = [Image.fromarray(np.ascontiguousarray(im)) for im in images_u8]
        return dict(self.processor(images=imgs, text=self._texts(prompts), return_tensors="pt", padding=True))

    def processor_ids(self, prompts):
        """The processor's input_ids / attention_mask (the ids do not depend on the pixels)."""
        blank = np.zeros((len(prompts), self.size, self.size, 3), np.uint8)
        enc = self.processor_inputs(blank, prompts)
        return enc["input_ids"].numpy().astype(np.int64), enc["attention_mask"].numpy().astype(np.int64)

    def hf_inputs(self, ids, mask, pixels) -> dict:
        """HF's inputs: the image processor's patches of the (already normalised) tiles, the grid and
        the modality types, as the processor makes them."""
        pe = self.image_processor(images=list(torch.from_numpy(pixels)), do_rescale=False, do_normalize=False,
                                  return_tensors="pt")
        return dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    pixel_values=pe["pixel_values"], image_grid_thw=pe["image_grid_thw"],
                    mm_token_type_ids=torch.from_numpy((ids == self.image_token_id).astype(np.int64)))

    def position_ids(self, mask: np.ndarray) -> np.ndarray:
        return _pseudo_mrope(mask)

    def position_ids_axes(self) -> dict:
        return {1: "batch", 2: "sequence"}

    def manifest_extra(self):
        return [("decoder", [("positions", "mrope", "M-RoPE position ids [3,B,T], as HF get_rope_index"),
                             ("mrope_grid", list(self.grid), "image grid [t, h, w] after the patch merger")])]

    def reference_extra(self) -> dict:
        return {"mrope": mrope_references(self),
                "position_ids_rule": "M-RoPE (HF get_rope_index): text tokens t=h=w=running position; an "
                                     "image block at the running position + its (t, h, w) grid indices, then "
                                     "running += max(h, w); padding 0; later steps: last column + 1"}


def _generate_capturing_positions(parts: QwenVLParts, enc: dict, kw: dict):
    """HF generate on the processor's inputs, and the M-RoPE position ids it fed its language model."""
    seen = []
    h = parts.lm_backbone.register_forward_pre_hook(lambda mod, a, k: seen.append(k.get("position_ids")),
                                                    with_kwargs=True)
    try:
        out = parts.model.generate(**enc, **kw)
    finally:
        h.remove()
    return out[:, enc["input_ids"].shape[1]:].numpy(), [s[1:] if s.shape[0] == 4 else s for s in seen]


def _generate_on_template(parts: QwenVLParts, ids, mask, pixels, kw) -> np.ndarray:
    """generate() on tessera's layout: template ids, our image prefix and our M-RoPE positions."""
    emb = parts.assemble_embeds(ids, pixels)
    pos, _ = mrope_positions(ids, mask, parts.image_token_id, parts.grid)
    pos4 = torch.from_numpy(np.concatenate([PD.position_ids_from_mask(mask)[None], pos], 0))
    out = parts.model.generate(input_ids=torch.from_numpy(ids), inputs_embeds=emb,
                               attention_mask=torch.from_numpy(mask), position_ids=pos4, **kw)
    return out[:, ids.shape[1]:].numpy()  # with input_ids given, generate returns prompt + new tokens


def mrope_references(parts: QwenVLParts) -> dict:
    """Per reference case, on the real uint8 tiles through Qwen2VLProcessor: the processor's ids, mask and
    modality types, the position ids HF generate fed its language model (start step, then 3 steps) and
    get_rope_index's deltas; self-checks that our rule (mrope_positions, the Rust rule) and our layout
    (template ids, image prefix, positions) give the same numbers and tokens."""
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    cases = []
    for c in PD.reference_cases(parts):
        idx, prompts = c["images"], c["prompts"]
        enc = parts.processor_inputs(images_u8[idx], prompts)
        ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
        kw = PD._gen_kwargs(parts, **c["kw"])
        new, seen = _generate_capturing_positions(parts, enc, kw)
        hp, hd = parts.model.model.get_rope_index(enc["input_ids"], mm_token_type_ids=enc["mm_token_type_ids"],
                                                  image_grid_thw=enc["image_grid_thw"],
                                                  attention_mask=enc["attention_mask"])
        mp, md = mrope_positions(ids, mask, parts.image_token_id, parts.grid)
        nb = kw["num_beams"]
        prefill = seen[0][:, ::nb].numpy()
        gids, gmask = parts.left_pad([parts.template_ids(p) for p in prompts])
        ours = _generate_on_template(parts, gids, gmask, pixels[idx], kw)
        hf_in = parts.hf_inputs(ids, mask, pixels[idx])
        checks = {
            "get_rope_index_equals_generate_start": bool(np.array_equal(hp.numpy(), prefill)),
            "mrope_positions_equal_get_rope_index": bool(np.array_equal(mp, hp.numpy())
                                                         and np.array_equal(md, hd.numpy().ravel())),
            "uint8_processor_generate_equals_normalised_pixels": bool(np.array_equal(
                new, parts.hf_generate(ids, mask, pixels[idx], **kw))),
            "mm_token_type_ids_equal_processor": bool(torch.equal(hf_in["mm_token_type_ids"],
                                                                  enc["mm_token_type_ids"].long())),
            "tessera_layout_generate_equal": bool(np.array_equal(new, ours)),
        }
        print(f"export: M-RoPE {c['name']}: {checks}", file=sys.stderr)
        if not all(checks.values()):
            raise RuntimeError(f"{c['name']}: M-RoPE reference self-checks failed: {checks}")
        cases.append({
            "name": c["name"], "images": idx, "prompts": prompts,
            "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
            "mm_token_type_ids": enc["mm_token_type_ids"].numpy().tolist(),
            "image_grid_thw": enc["image_grid_thw"].numpy().tolist(),
            "position_ids": prefill.tolist(), "rope_deltas": hd.numpy().ravel().tolist(),
            "step_position_ids": [s[:, ::nb, 0].numpy().tolist() for s in seen[1:4]],
            "checks": checks,
        })
    return {"grid": list(parts.grid), "prefix_check": check_prefix_against_hf(parts, images_u8, pixels),
            "what": "position_ids [3,B,T]: what HF generate fed its language model at the start step "
                    "(one row per batch item); step_position_ids[s][d][b]: the next 3 steps", "cases": cases}


def check_prefix_against_hf(parts: QwenVLParts, images_u8: np.ndarray, pixels: np.ndarray) -> dict:
    """On the uint8 tiles: the in-graph patchify == the processor's pixel_values, and the image prefix ==
    HF get_image_features (the processor's grid must be the baked one)."""
    enc = parts.processor_inputs(images_u8, ["x"] * len(images_u8))
    want = [1, parts.grid[1] * parts.merge, parts.grid[2] * parts.merge]
    if any(g != want for g in enc["image_grid_thw"].tolist()):
        raise RuntimeError(f"the processor's image grid {enc['image_grid_thw'].tolist()} is not the baked {want}")
    patch = float((parts.prefix.patchify(torch.from_numpy(pixels)) - enc["pixel_values"]).abs().max())
    ref = torch.cat(parts.model.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"]).pooler_output, 0)
    got = parts.prefix(torch.from_numpy(pixels)).reshape(-1, ref.shape[-1])
    rel = C.rel_diff(got.numpy(), ref.numpy())
    print(f"export: image prefix vs HF processor + get_image_features: patchify {patch:.2g}, tokens {rel:.2g}",
          file=sys.stderr)
    if not (patch < 1e-5 and rel < 1e-4):
        raise RuntimeError(f"image prefix differs from HF: patchify {patch}, merged tokens {rel}")
    return {"patchify_max_abs_diff": patch, "prefix_rel_diff": rel}


# --------------------------------------------------------------------------------------
# Grounding fixtures (--grounding-fixture)
# --------------------------------------------------------------------------------------

_REF = re.compile(r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>|<\|box_start\|>(.*?)<\|box_end\|>", re.S)


def qwen2_vl_boxes(text: str, width: int, height: int) -> list[dict]:
    """Qwen-VL's ``_fetch_all_box_with_ref`` + ``draw_bbox_on_latest_picture`` (tokenization_qwen.py)
    with Qwen2-VL's tokens: ref and box elements in order (other text is an element too); a box is
    ``tuple(map(int, content.replace("(", "").replace(")", "").split(",")))`` of length 4, with the
    ref of the element right before it; ``int(x / 1000 * width)``, ``int(y / 1000 * height)``."""
    elements, at = [], 0
    for m in _REF.finditer(text):
        if m.start() > at:
            elements.append(("text", None, None))
        if m.group(1) is not None:
            elements.append(("ref", m.group(1), None))
        else:
            elements.append(("box", m.group(2), (m.start(2), m.end(2))))
        at = m.end()
    out = []
    for i, (kind, body, span) in enumerate(elements):
        if kind != "box":
            continue
        try:
            b = tuple(map(int, body.replace("(", "").replace(")", "").split(",")))
        except ValueError:
            continue
        if len(b) != 4:
            continue
        ref = elements[i - 1][1].strip() if i > 0 and elements[i - 1][0] == "ref" else ""
        x1, y1, x2, y2 = (int(b[0] / 1000 * width), int(b[1] / 1000 * height), int(b[2] / 1000 * width),
                          int(b[3] / 1000 * height))
        out.append({"bbox": [x1, y1, x2, y2], "phrase": ref, "recipe_box": list(b), "coords": span})
    return out


def _parse_json(json_output: str) -> str:
    """The Qwen2.5-VL cookbook's ``parse_json`` (cookbooks/spatial_understanding.ipynb)."""
    lines = json_output.splitlines()
    for i, line in enumerate(lines):
        if line == "```json":
            json_output = "\n".join(lines[i + 1:])
            json_output = json_output.split("```")[0]
            break
    return json_output


def qwen2_5_vl_boxes(text: str, width: int, height: int, input_width: int, input_height: int) -> list[dict]:
    """The cookbook's ``plot_bounding_boxes`` (boxes only): ``parse_json``, ``ast.literal_eval`` (else
    the text up to the last '"}' + "]"), ``int(bbox_2d[i] / input_size * size)``, corners swapped when
    reversed, ``label``."""
    import ast

    boxes = _parse_json(text)
    try:
        items = ast.literal_eval(boxes)
    except Exception:
        end_idx = boxes.rfind('"}') + len('"}')
        try:
            items = ast.literal_eval(boxes[:end_idx] + "]")
        except Exception:
            return []
    if isinstance(items, dict):
        items = [items]
    key = '"bbox_2d"'
    at, out = max(text.find("```json"), 0), []
    for it in items if isinstance(items, list) else []:
        if not isinstance(it, dict) or "bbox_2d" not in it:
            continue
        k = text.find(key, at)
        o = text.find("[", k + len(key)) if k >= 0 else -1
        c = text.find("]", o) + 1 if o >= 0 else 0
        span, at = ((o, c), c) if k >= 0 and o >= 0 and c > 0 else ((0, 0), at)
        b = it["bbox_2d"]
        if not (isinstance(b, (list, tuple)) and len(b) == 4):
            continue
        y1, x1 = int(b[1] / input_height * height), int(b[0] / input_width * width)
        y2, x2 = int(b[3] / input_height * height), int(b[2] / input_width * width)
        x1, x2 = min(x1, x2), max(x1, x2)
        y1, y2 = min(y1, y2), max(y1, y2)
        out.append({"bbox": [x1, y1, x2, y2], "phrase": str(it.get("label", "")), "recipe_box": list(b),
                    "coords": span})
    return out


#: The fixtures' prompt templates and forced answers (on reference image 0; 32 px input).
GROUNDING = {
    "qwen2-vl": ("Output the bounding box of the {prompt} in the image.",
                 {"ship": "<|object_ref_start|>ship<|object_ref_end|><|box_start|>(120,250),(560,810)<|box_end|>"
                          "<|object_ref_start|>ship<|object_ref_end|><|box_start|>(625,94),(937,406)<|box_end|>"}),
    "qwen2.5-vl": ("Locate every {prompt} in the image and output the bbox coordinates in JSON format.",
                   {"ship": '```json\n[\n\t{"bbox_2d": [4, 8, 18, 26], "label": "ship"}\n]\n```'}),
}


def grounding(kind: str, parts: QwenVLParts) -> PD.Grounding:
    """The grounding fixture of ``kind``; Qwen2.5-VL's input size is the processor's smart-resized image
    (``image_grid_thw`` times the patch size), which the baked tile size leaves unchanged."""
    prompt, answers = GROUNDING[kind]
    if kind == "qwen2-vl":
        return PD.Grounding(
            prompt=prompt, output="qwen2_vl_boxes", answers=answers, parse=qwen2_vl_boxes,
            recipe_skips_special=False,
            convention="<|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x0,y0),(x1,y1)<|box_end|>, "
                       "coordinates in [0, 1000) of the input width/height",
            recipe="Qwen-VL tokenization_qwen.py _fetch_all_box_with_ref + draw_bbox_on_latest_picture "
                   "(int(v / 1000 * size)), Qwen2-VL's ref/box tokens")
    grid = parts.processor_inputs(C.make_reference_images(parts.size)[1][:1], ["x"])["image_grid_thw"][0].tolist()
    patch = parts.model.config.vision_config.patch_size
    ih, iw = grid[1] * patch, grid[2] * patch
    if (ih, iw) != (parts.size, parts.size):
        raise RuntimeError(f"the processor resizes the {parts.size} px tile to {iw}x{ih}")
    return PD.Grounding(
        prompt=prompt, output="qwen2_5_vl_json", answers=answers,
        parse=lambda t, w, h: qwen2_5_vl_boxes(t, w, h, iw, ih), recipe_skips_special=True,
        convention="JSON list of {bbox_2d: [x0, y0, x1, y1], label}, absolute pixels of the smart-resized input "
                   f"(here {iw}x{ih}, the tile size)",
        recipe="Qwen2.5-VL cookbooks/spatial_understanding.ipynb parse_json + plot_bounding_boxes "
               "(ast.literal_eval with the truncation fallback, int(v / input_size * size), corners swapped)")


# --------------------------------------------------------------------------------------
# Real checkpoints
# --------------------------------------------------------------------------------------


def _pixels_bounds(pp: dict) -> tuple[int, int]:
    size = pp.get("size") if isinstance(pp.get("size"), dict) else {}
    lo = pp.get("min_pixels", size.get("shortest_edge", 56 * 56))
    hi = pp.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280))
    return int(lo), int(hi)


def check_tile_before_loading(src: str, size: int) -> dict:
    """The checkpoint's image processor settings; SystemExit (one line) when ``size`` cannot be baked."""
    pp = C.image_processor_config(src)
    cfg = C.read_json(src, "config.json") or {}
    vc = cfg.get("vision_config", {})
    patch = int(vc.get("patch_size", pp.get("patch_size", 14)))
    merge = int(vc.get("spatial_merge_size", pp.get("merge_size", 2)))
    if pp.get("patch_size", patch) != patch or pp.get("merge_size", merge) != merge:
        raise SystemExit(f"export: {src}: the image processor's patch_size/merge_size "
                         f"{pp.get('patch_size')}/{pp.get('merge_size')} disagree with config.json {patch}/{merge}")
    lo, hi = _pixels_bounds(pp)
    problem = tile_problem(size, patch, merge, lo, hi)
    if problem:
        raise SystemExit(f"export: {src}: {problem}")
    return pp


def load_checkpoint(kind: str, src: str, size: int) -> QwenVLParts:
    from transformers import AutoTokenizer

    pp = check_tile_before_loading(src, size)
    tok = AutoTokenizer.from_pretrained(src)
    if kind == "qwen2-vl":
        from transformers import Qwen2VLForConditionalGeneration as Cls
    else:
        from transformers import Qwen2_5_VLForConditionalGeneration as Cls
    model = Cls.from_pretrained(src, attn_implementation="eager", dtype=torch.float32).eval()
    lo, hi = _pixels_bounds(pp)
    return QwenVLParts(kind, model, tok, size, pp["image_mean"], pp["image_std"], lo, hi)


# --------------------------------------------------------------------------------------
# The `qwen2-vl` / `qwen2.5-vl` subcommands
# --------------------------------------------------------------------------------------


def tiny_parts(kind: str, shape: str = "tiny", size=None, seed=None, init_std=None, eos_scale=None,
               box_tokens: bool = False):
    """(parts, seed, init_std, eos_scale) of ``--tiny [--shape S] [--size N]`` with these overrides
    (None: the defaults); also what bench/peer_caption_prefix.py builds to time HF generate on the
    same weights."""
    bench = shape != "tiny"
    if bench and kind != "qwen2-vl":
        raise SystemExit(f"export: {kind}: --shape {shape} is not available (only 'tiny')")
    size = (MID_SIZE if bench else TINY_SIZE) if size is None else size
    # The tile size first: a size the model cannot take fails before anything is built or written.
    patch, merge = (MID_PATCH, MID_MERGE) if bench else (TINY_PATCH, TINY_MERGE)
    problem = tile_problem(size, patch, merge, size * size, size * size)
    if problem:
        raise SystemExit(f"export: {problem}")
    seed = DEFAULT_SEEDS[kind] if seed is None else seed
    init_std = (BENCH_INIT_STD if bench else DEFAULT_INIT_STD[kind]) if init_std is None else init_std
    eos_scale = (BENCH_EOS_SCALE if bench else DEFAULT_EOS_SCALE[kind]) if eos_scale is None else eos_scale
    model, tok = build_tiny(kind, seed, init_std, eos_scale, shape, box_tokens=box_tokens)
    parts = QwenVLParts(kind, model, hf_tokenizer(tok), size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                        size * size, size * size)
    return parts, seed, init_std, eos_scale


def export_qwen2vl(args) -> None:
    kind = args.command
    tv = transformers.__version__
    seed_info = None
    shape = getattr(args, "shape", "tiny")
    if shape != "tiny" and not args.tiny:
        raise SystemExit("--shape only applies with --tiny")
    g = None
    if getattr(args, "grounding_fixture", False) and (not args.tiny or shape != "tiny"):
        raise SystemExit("--grounding-fixture only applies with --tiny (shape tiny)")
    if args.tiny:
        parts, seed, init_std, eos_scale = tiny_parts(kind, shape, args.size, args.seed, args.init_std,
                                                      args.eos_scale,
                                                      box_tokens=args.grounding_fixture and kind == "qwen2-vl")
        name = args.name or f"{kind}-{shape}-random"
        source = (f"random init, seed {seed}, init std {init_std}, eos logit scale {eos_scale}, "
                  + ("" if shape == "tiny" else f"shape {shape}, ")
                  + f"transformers {tv}, torch {torch.__version__}")
        trained = False
        if shape == "tiny" and not args.no_reference:
            seed_info = dict(seed=seed, init_std=init_std, eos_logit_scale=eos_scale)
        if args.save_pretrained:
            sp = Path(args.save_pretrained)
            parts.model.save_pretrained(sp)
            parts.processor.save_pretrained(sp)
            print(f"export: wrote save_pretrained folder {sp}", file=sys.stderr)
    else:
        size = DEFAULT_SIZE if args.size is None else args.size
        parts = load_checkpoint(kind, args.source, size)
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, tile {size}, exported with transformers {tv}, torch {torch.__version__}"
        trained = True
    if getattr(args, "grounding_fixture", False):
        g = grounding(kind, parts)
        g.force(parts)
        name = args.name or f"{kind}-det-tiny-random"
        source += (f", {len(BOX_SPECIALS)} box tokens appended, " if kind == "qwen2-vl" else ", ") + \
            f"lm_head forced to write grounding answers on reference image 0 ({PD.FORCING_NOTE})"
    elif trained:
        g = grounding(kind, parts)  # a checkpoint detects with its [grounding] section (no forcing)
    PD.export_prefix_package(args, parts, name=name, source=source, trained=trained, reference_seed_info=seed_info,
                             max_new_tokens=64 if g and not trained else 20, grounding=g)
    # The seam writes the plain layout's comment for position_ids.
    toml = Path(args.out) / "model.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace(
        '# int64 [B,T]\npositions = "mrope"', '# int64 [3,B,T] (temporal, height, width)\npositions = "mrope"'),
        encoding="utf-8")


_COMMANDS = {
    "qwen2-vl": ("Qwen2-VL (Qwen2VLForConditionalGeneration)", "Qwen/Qwen2-VL-2B-Instruct"),
    "qwen2.5-vl": ("Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration)", "Qwen/Qwen2.5-VL-3B-Instruct"),
}


def add_parser(sub, command: str) -> None:
    """Add the ``qwen2-vl`` or ``qwen2.5-vl`` subcommand to ``sub`` (export.py's subparsers)."""
    desc, example = _COMMANDS[command]
    c = sub.add_parser(command, help=f"export {desc} as an image-text-decoder package (M-RoPE)",
                       description=f"Export {desc} at one fixed tile size: image_prefix.onnx (in-graph patchify, "
                                   "vision tower, merger), embed_tokens.onnx, decoder.onnx (M-RoPE position ids "
                                   "[3,B,T], KV cache), tokenizer.json, model.toml.")
    C.add_source_args(c, from_help=f"hub id (e.g. {example}) or a save_pretrained folder with the processor files",
                      tiny_help="seeded random model of the real architecture")
    C.add_out_arg(c)
    c.add_argument("--size", type=int, default=None,
                   help=f"tile size S baked into the package: a multiple of patch_size * spatial_merge_size "
                        f"whose S*S the processor's min/max pixels allow (default {DEFAULT_SIZE}; --tiny {TINY_SIZE})")
    PD.add_prefix_args(c, seed=DEFAULT_SEEDS[command], init_std=DEFAULT_INIT_STD[command],
                       eos_scale=DEFAULT_EOS_SCALE[command])
    if len(SHAPES[command]) > 1:
        c.add_argument("--shape", choices=SHAPES[command], default="tiny",
                       help="--tiny: 'tiny' (the test fixture) or 'mid' (benchmarks: Qwen2-0.5B's decoder layout "
                            f"with 8 layers, small vision tower at {MID_SIZE} px, 64 image tokens; init std "
                            f"{BENCH_INIT_STD}, no reference/)")
    c.add_argument("--grounding-fixture", action="store_true",
                   help="--tiny: the detection fixture (" + command + "-det-tiny): lm_head changed (least norm) so "
                        "that the [grounding] prompt for 'ship' is answered with "
                        + ("box tokens" if command == "qwen2-vl" else "a bbox_2d JSON list")
                        + " on reference image 0; reference.json gains the HF answers, log-probabilities and "
                          "the Qwen recipe's boxes")
    c.set_defaults(func=export_qwen2vl)
