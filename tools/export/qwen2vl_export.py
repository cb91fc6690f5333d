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
                        -> logits [B,T,V], present.{i}.key/.value

The manifest's ``[decoder]`` says ``positions = "mrope"`` and ``mrope_grid = [t, h, w]`` (the image
grid after merging); tessera then computes the position ids as Hugging Face's ``get_rope_index``
and the later steps as ``generate`` does (last column + 1).  The tile size is baked: it must be a
multiple of patch_size * spatial_merge_size and the processor's resize must be a no-op for it.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

KINDS = ("qwen2-vl", "qwen2.5-vl")
DEFAULT_SEEDS = {"qwen2-vl": 1, "qwen2.5-vl": 0}
DEFAULT_EOS_SCALE = {"qwen2-vl": 2.0, "qwen2.5-vl": 2.0}
DEFAULT_INIT_STD = {"qwen2-vl": 1.0, "qwen2.5-vl": 1.0}
#: The tiny models' tile size (patch 4, merge 2: an 8x8 patch grid, 4x4 = 16 image tokens).
TINY_SIZE = 32
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
REF_PROMPTS = ["Describe this image.", "这张卫星图像里有什么？", "Is there a river or a forest in this scene, and where?"]

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


def build_tiny_tokenizer(vocab_size: int = 700):
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


def build_tiny(kind: str, seed: int, init_std: float, eos_scale: float):
    tok = build_tiny_tokenizer()
    V = tok.get_vocab_size()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    text = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=256, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
                bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    top = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
               vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
               tie_word_embeddings=False)
    torch.manual_seed(seed)
    if kind == "qwen2-vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration as Cls

        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=4,
                      temporal_patch_size=2, spatial_merge_size=2, in_channels=3, hidden_act="quick_gelu")
        cfg = Qwen2VLConfig(text_config=text, vision_config=vision, **top)
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration as Cls

        vision = dict(depth=2, hidden_size=32, intermediate_size=48, out_hidden_size=64, num_heads=2, patch_size=4,
                      temporal_patch_size=2, spatial_merge_size=2, in_channels=3, hidden_act="silu",
                      window_size=16, fullatt_block_indexes=[1])
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **top)
    cfg._attn_implementation = "eager"
    model = Cls(cfg).eval()
    _reinit(model, init_std)
    with torch.no_grad():
        model.lm_head.weight[ids["<|im_end|>"]] *= eos_scale
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.bos_token_id = None
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


class EmbedTokens(nn.Module):
    def __init__(self, emb: nn.Embedding):
        super().__init__()
        self.emb = emb

    def forward(self, input_ids):
        return self.emb(input_ids)


def _additive_mask(attention_mask, q_len_like, dtype):
    """[B,1,T,past+T]: 0 where key j <= query position and mask[b,j] == 1 (or j is the query), else min."""
    ones_k = torch.ones_like(attention_mask[:1, :])
    k_idx = torch.cumsum(ones_k, dim=1) - 1
    total = torch.sum(ones_k, dim=1, keepdim=True)
    ones_q = torch.ones_like(q_len_like[:1, :, 0], dtype=torch.long)
    q_idx = torch.cumsum(ones_q, dim=1) - 1 + (total - torch.sum(ones_q, dim=1, keepdim=True))
    causal = k_idx[:, None, :] <= q_idx[:, :, None]
    diag = k_idx[:, None, :] == q_idx[:, :, None]
    allowed = (causal[:, None, :, :] & (attention_mask[:, None, None, :] != 0)) | diag[:, None, :, :]
    return torch.where(allowed, torch.zeros((), dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype))


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
        return (self.lm_head(h), *presents)


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


# --------------------------------------------------------------------------------------
# One loaded model: graphs, prompt rules, HF processor
# --------------------------------------------------------------------------------------


class Parts:
    """Everything the exporter needs to know about one loaded Qwen2-VL / Qwen2.5-VL model."""

    def __init__(self, kind: str, model, hf_tok, size: int, mean, std, min_pixels: int, max_pixels: int):
        self.kind, self.model, self.hf_tok = kind, model, hf_tok
        self.size, self.mean, self.std = size, list(mean), list(std)
        cfg = model.config
        vc, tc = cfg.vision_config, cfg.text_config
        self.architecture = "qwen2-vl" if kind == "qwen2-vl" else "qwen2.5-vl"
        self.patch, self.merge = vc.patch_size, vc.spatial_merge_size
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        problem = tile_problem(size, self.patch, self.merge, min_pixels, max_pixels)
        if problem:
            raise SystemExit(f"export: {problem}")
        g = size // self.patch // self.merge
        self.grid = (1, g, g)
        self.tokens = g * g
        self.prefix = QwenVLPrefix(kind, model, size).eval()
        self.embed = EmbedTokens(model.get_input_embeddings()).eval()
        self.decoder = MRopeQwen2Step(model.model.language_model, model.lm_head, tc).eval()
        self.layers, self.kv_heads, self.head_dim = tc.num_hidden_layers, tc.num_key_value_heads, self.decoder.head_dim
        self.hidden, self.vocab = tc.hidden_size, model.lm_head.out_features
        self.max_positions = tc.max_position_embeddings
        self.template = TEMPLATE
        self.image_token = "<|image_pad|>"
        self.image_token_id = cfg.image_token_id
        self.add_bos = False
        self.eos = hf_tok.convert_tokens_to_ids("<|im_end|>")
        pad = hf_tok.pad_token_id
        self.pad = pad if pad is not None else hf_tok.convert_tokens_to_ids("<|endoftext|>")
        self.bos = None
        self.image_processor = image_processor(kind, model, size, mean, std, min_pixels, max_pixels)
        self.processor = hf_processor(kind, self.image_processor, hf_tok)

    def prompt_text(self, prompt: str) -> str:
        return self.template.replace("{image}", self.image_token * self.tokens).replace("{prompt}", prompt)

    def template_ids(self, prompt: str) -> list[int]:
        return self.hf_tok(self.prompt_text(prompt), add_special_tokens=self.add_bos)["input_ids"]

    def left_pad(self, seqs):
        L = max(len(s) for s in seqs)
        ids = np.full((len(seqs), L), self.pad, np.int64)
        mask = np.zeros((len(seqs), L), np.int64)
        for r, s in enumerate(seqs):
            ids[r, L - len(s):] = s
            mask[r, L - len(s):] = 1
        return ids, mask

    def processor_inputs(self, images_u8: np.ndarray, prompts: list[str]) -> dict:
        """What Qwen2VLProcessor makes of the tiles and the chat-formatted prompts (one <|image_pad|> each)."""
        from PIL import Image

        texts = [self.template.replace("{image}", self.image_token).replace("{prompt}", p) for p in prompts]
        imgs = [Image.fromarray(np.ascontiguousarray(im)) for im in images_u8]
        return dict(self.processor(images=imgs, text=texts, return_tensors="pt", padding=True))

    def assemble_embeds(self, ids: np.ndarray, pixels: np.ndarray) -> torch.Tensor:
        emb = self.embed(torch.from_numpy(ids)).clone()
        pre = self.prefix(torch.from_numpy(pixels))
        for r in range(ids.shape[0]):
            emb[r, torch.from_numpy(ids[r] == self.image_token_id)] = pre[r]
        return emb


def empty_past(parts: Parts, batch: int, length: int = 0) -> list[torch.Tensor]:
    return [torch.zeros(batch, parts.kv_heads, length, parts.head_dim) for _ in range(2 * parts.layers)]


def check_prefix_against_hf(parts: Parts, images_u8: np.ndarray, pixels: np.ndarray) -> dict:
    """In-graph patchify == the processor's pixel_values; prefix == HF get_image_features."""
    enc = parts.processor_inputs(images_u8, ["x"] * len(images_u8))
    grid = enc["image_grid_thw"].tolist()
    if any(tuple(g) != (1, parts.grid[1] * parts.merge, parts.grid[2] * parts.merge) for g in grid):
        raise RuntimeError(f"the processor's image grid {grid} is not the baked one")
    patch = float((parts.prefix.patchify(torch.from_numpy(pixels)) - enc["pixel_values"]).abs().max())
    ref = torch.cat(parts.model.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"]).pooler_output, 0)
    got = parts.prefix(torch.from_numpy(pixels)).reshape(-1, ref.shape[-1])
    rel = C.rel_diff(got.numpy(), ref.numpy())
    if not (patch < 1e-5 and rel < 1e-4):
        raise RuntimeError(f"image prefix differs from HF: patchify {patch}, merged tokens {rel}")
    return {"patchify_max_abs_diff": patch, "prefix_rel_diff": rel}


def check_decoder_against_hf(parts: Parts, tol: float = 1e-4) -> float:
    """The decoder wrapper (prefill + cached steps, M-RoPE positions) reproduces HF's language model
    (max difference / max(1, max|logit|))."""
    gen = torch.Generator().manual_seed(7)
    B, T = 2, 9
    emb = torch.randn(B, T, parts.hidden, generator=gen)
    mask = np.ones((B, T), np.int64)
    mask[1, :3] = 0
    pos = np.zeros((3, B, T), np.int64)
    pos[0, 0] = [0, 1, 2, 2, 2, 2, 4, 5, 6]   # an image-like block: t, h, w differ
    pos[1, 0] = [0, 1, 2, 2, 3, 3, 4, 5, 6]
    pos[2, 0] = [0, 1, 2, 3, 2, 3, 4, 5, 6]
    pos[:, 1, 3:] = np.arange(6)
    out = parts.model.model.language_model(inputs_embeds=emb, attention_mask=torch.from_numpy(mask),
                                           position_ids=torch.from_numpy(pos), use_cache=False)
    ref = parts.model.lm_head(out.last_hidden_state)
    worst = 0.0
    for split in (T, 5):
        res = parts.decoder(emb[:, :split], torch.from_numpy(mask[:, :split]), torch.from_numpy(pos[:, :, :split]),
                            *empty_past(parts, B))
        logits, past = [res[0]], list(res[1:])
        for t in range(split, T):
            res = parts.decoder(emb[:, t:t + 1], torch.from_numpy(mask[:, :t + 1]),
                                torch.from_numpy(pos[:, :, t:t + 1]), *past)
            logits.append(res[0])
            past = list(res[1:])
        got = torch.cat(logits, 1)
        valid = torch.from_numpy(mask).bool()
        worst = max(worst, float((got - ref).abs()[valid].max()) / max(1.0, float(ref.abs()[valid].max())))
    if not worst < tol:
        raise RuntimeError(f"decoder wrapper differs from HF by {worst}")
    return worst


# --------------------------------------------------------------------------------------
# ONNX export and check
# --------------------------------------------------------------------------------------


def decoder_io_names(layers: int):
    past, present = [], []
    for i in range(layers):
        past += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        present += [f"present.{i}.key", f"present.{i}.value"]
    return ["inputs_embeds", "attention_mask", "position_ids"] + past, ["logits"] + present


def export_graphs(parts: Parts, out: Path, opset: int) -> None:
    S, B = parts.size, 2
    print(f"export: writing {out}/image_prefix.onnx (opset {opset})", file=sys.stderr)
    C.export_onnx(parts.prefix, (torch.zeros(B, 3, S, S),), out / "image_prefix.onnx", ["pixel_values"],
                  ["prefix_embeds"], {"pixel_values": {0: "batch"}, "prefix_embeds": {0: "batch"}}, opset)
    print(f"export: writing {out}/embed_tokens.onnx", file=sys.stderr)
    C.export_onnx(parts.embed, (torch.zeros(B, 3, dtype=torch.long),), out / "embed_tokens.onnx", ["input_ids"],
                  ["inputs_embeds"], {"input_ids": {0: "batch", 1: "sequence"},
                                      "inputs_embeds": {0: "batch", 1: "sequence"}}, opset)
    print(f"export: writing {out}/decoder.onnx", file=sys.stderr)
    ins, outs = decoder_io_names(parts.layers)
    axes = {"inputs_embeds": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {1: "batch", 2: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    for n in ins[3:]:
        axes[n] = {0: "batch", 2: "past"}
    for n in outs[1:]:
        axes[n] = {0: "batch", 2: "total"}
    past_len, T = 3, 2
    args = (torch.randn(B, T, parts.hidden), torch.ones(B, past_len + T, dtype=torch.long),
            torch.arange(past_len, past_len + T).repeat(3, B, 1), *empty_past(parts, B, past_len))
    C.export_onnx(parts.decoder, args, out / "decoder.onnx", ins, outs, axes, opset)


def verify_onnx_against_torch(parts: Parts, out: Path, tol: float) -> dict:
    gen = torch.Generator().manual_seed(1234)
    pre, emb, dec = (C.ort_session(out / n) for n in ("image_prefix.onnx", "embed_tokens.onnx", "decoder.onnx"))
    ins, _ = decoder_io_names(parts.layers)
    worst = {"prefix": 0.0, "embed": 0.0, "decoder": 0.0}
    for B in (1, 3):
        px = torch.randn(B, 3, parts.size, parts.size, generator=gen)
        worst["prefix"] = max(worst["prefix"], C.rel_diff(pre.run(None, {"pixel_values": px.numpy()})[0],
                                                          parts.prefix(px).numpy()))
        ids = torch.randint(0, parts.vocab, (B, 5), generator=gen)
        worst["embed"] = max(worst["embed"], float(np.abs(
            emb.run(None, {"input_ids": ids.numpy()})[0] - parts.embed(ids).numpy()).max()))
        T = 7
        e = torch.randn(B, T, parts.hidden, generator=gen)
        mask = np.ones((B, T), np.int64)
        if B > 1:
            mask[1, :2] = 0
        pos = np.stack([np.cumsum(mask, 1) - 1, np.cumsum(mask, 1) // 2, np.cumsum(mask, 1) % 3]).astype(np.int64)
        for split in (T, 4):
            past_t = empty_past(parts, B)
            past_o = [p.numpy() for p in past_t]
            t0 = 0
            for t1 in ([T] if split == T else [4, 5, 7]):
                sl = slice(t0, t1)
                ref = parts.decoder(e[:, sl], torch.from_numpy(mask[:, :t1]), torch.from_numpy(pos[:, :, sl]), *past_t)
                feed = {"inputs_embeds": e[:, sl].numpy(), "attention_mask": mask[:, :t1],
                        "position_ids": np.ascontiguousarray(pos[:, :, sl])}
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
# References (--tiny): HF processor + generate
# --------------------------------------------------------------------------------------


def _gen_kwargs(parts: Parts, *, num_beams: int, min_new_tokens: int = 0, repetition_penalty: float = 1.0,
                max_new_tokens: int = 12) -> dict:
    return dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_beams=num_beams,
                do_sample=False, repetition_penalty=repetition_penalty, length_penalty=1.0,
                early_stopping=False, num_return_sequences=1, no_repeat_ngram_size=0,
                bos_token_id=None, eos_token_id=parts.eos, pad_token_id=parts.pad)


def reference_cases() -> list[dict]:
    q, qb, qb2 = REF_PROMPTS[0], REF_PROMPTS, REF_PROMPTS[1:]
    cases = [dict(name=f"greedy_img{k}", images=[k], prompts=[q], kw=dict(num_beams=1)) for k in range(3)]
    cases += [
        dict(name="greedy_img3_zh", images=[3], prompts=[REF_PROMPTS[1]], kw=dict(num_beams=1)),
        dict(name="greedy_batch3", images=[0, 1, 2], prompts=qb, kw=dict(num_beams=1)),
        dict(name="beam3_img3", images=[3], prompts=[q], kw=dict(num_beams=3)),
        dict(name="beam3_img0_zh_rep1.3", images=[0], prompts=[REF_PROMPTS[1]],
             kw=dict(num_beams=3, repetition_penalty=1.3)),
        dict(name="beam3_batch2_min5", images=[1, 2], prompts=qb2, kw=dict(num_beams=3, min_new_tokens=5)),
        dict(name="greedy_batch2_rep1.3_min5", images=[2, 3], prompts=qb2,
             kw=dict(num_beams=1, repetition_penalty=1.3, min_new_tokens=5)),
    ]
    return cases


def _trim(row, eos: int):
    row = [int(t) for t in row]
    if eos in row:
        return row[: row.index(eos) + 1], True
    return row, False


def _generate_capturing_positions(parts: Parts, enc: dict, kw: dict):
    """HF generate on the processor's inputs; also the M-RoPE position ids it fed its language model."""
    seen = []
    lm = parts.model.model.language_model
    h = lm.register_forward_pre_hook(lambda mod, a, k: seen.append(k.get("position_ids")), with_kwargs=True)
    try:
        out = parts.model.generate(**enc, **kw)
    finally:
        h.remove()
    T = enc["input_ids"].shape[1]
    return out[:, T:].numpy(), seen


def compute_references(parts: Parts, seed: int, init_std: float, eos_scale: float):
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    prefix_check = check_prefix_against_hf(parts, images_u8, pixels)
    out_cases = []
    for c in reference_cases():
        idx, prompts = c["images"], c["prompts"]
        enc = parts.processor_inputs(images_u8[idx], prompts)
        ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
        gids, gmask = parts.left_pad([parts.template_ids(p) for p in prompts])
        kw = _gen_kwargs(parts, **c["kw"])
        new, seen = _generate_capturing_positions(parts, enc, kw)
        # The HF rule for these inputs (get_rope_index) and ours (mrope_positions, what tessera does).
        hp, hd = parts.model.model.get_rope_index(enc["input_ids"], mm_token_type_ids=enc["mm_token_type_ids"],
                                                  image_grid_thw=enc["image_grid_thw"],
                                                  attention_mask=enc["attention_mask"])
        mp, md = mrope_positions(ids, mask, parts.image_token_id, parts.grid)
        nb = kw["num_beams"]
        prefill = seen[0]
        if prefill.shape[0] == 4:
            prefill = prefill[1:]
        prefill_rows = prefill[:, ::nb].numpy()
        steps = [s[1:] if s.shape[0] == 4 else s for s in seen[1:4]]
        steps = [s[:, ::nb, 0].numpy().tolist() for s in steps]
        hf_ours_gen_equal = np.array_equal(new, _generate_on_template(parts, gids, gmask, pixels[idx], kw))
        same_ids = all([int(t) for t, m in zip(ids[r], mask[r]) if m] == [int(t) for t, m in zip(gids[r], gmask[r]) if m]
                       for r in range(len(idx)))
        trimmed = [_trim(r, parts.eos) for r in new]
        out_cases.append({
            "name": c["name"], "images": idx, "prompts": prompts,
            "prompt_texts": [parts.prompt_text(p) for p in prompts],
            "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
            "mm_token_type_ids": enc["mm_token_type_ids"].numpy().tolist(),
            "image_grid_thw": enc["image_grid_thw"].numpy().tolist(),
            "template_input_ids": gids.tolist(), "template_attention_mask": gmask.tolist(),
            "position_ids": prefill_rows.tolist(),
            "rope_deltas": hd.numpy().ravel().tolist(),
            "step_position_ids": steps,
            "generation": dict(kw),
            "output_ids": new.tolist(),
            "new_tokens": [t for t, _ in trimmed], "hit_eos": [h_ for _, h_ in trimmed],
            "text": [parts.hf_tok.decode(t, skip_special_tokens=True) for t, _ in trimmed],
            "checks": {
                "template_ids_equal_processor_ids_without_padding": bool(same_ids),
                "template_layout_generate_equal": bool(hf_ours_gen_equal),
                "get_rope_index_equals_generate_prefill": bool(np.array_equal(hp.numpy(), prefill_rows)),
                "mrope_positions_equal_get_rope_index": bool(np.array_equal(mp, hp.numpy())
                                                             and np.array_equal(md, hd.numpy().ravel())),
            },
        })
        print(f"export: {c['name']}: {[t for t, _ in trimmed]} eos={[h_ for _, h_ in trimmed]} "
              f"checks={out_cases[-1]['checks']}", file=sys.stderr)
        if not all(out_cases[-1]["checks"].values()):
            raise RuntimeError(f"{c['name']}: reference self-checks failed: {out_cases[-1]['checks']}")
    ref = {
        "description": "PyTorch / HF generate() references for this package (tools/export/export.py); "
                       "new tokens only, prompt excluded; position ids as HF generate fed its language model.",
        "architecture": parts.architecture,
        "seed": seed, "init_std": init_std, "eos_logit_scale": eos_scale,
        "transformers": transformers.__version__, "torch": torch.__version__,
        **C.images_block(names, parts.size, len(names)),
        "mean": parts.mean, "std": parts.std,
        "template": parts.template, "add_bos": parts.add_bos, "image_tokens": parts.tokens,
        "image_token_id": parts.image_token_id, "mrope_grid": list(parts.grid),
        "eos_token_id": parts.eos, "pad_token_id": parts.pad,
        "position_ids_rule": "M-RoPE: HF get_rope_index (text t=h=w running; image block at the running "
                             "position + (t, h, w) grid indices; then running += max(h, w)); pads 0; "
                             "later steps: last column + 1",
        "prefix_check": prefix_check,
        "cases": out_cases,
        "tolerance": {"logits_abs": 1e-3},
    }
    return ref, images_u8, pixels


def _generate_on_template(parts: Parts, ids, mask, pixels, kw) -> np.ndarray:
    """generate() on our own layout (template ids, our image prefix, our M-RoPE positions): the Rust rule."""
    emb = parts.assemble_embeds(ids, pixels)
    pos, _ = mrope_positions(ids, mask, parts.image_token_id, parts.grid)
    text = np.where(mask == 0, 0, np.cumsum(mask, 1) - 1)
    pos4 = torch.from_numpy(np.concatenate([text[None], pos], 0))
    out = parts.model.generate(input_ids=torch.from_numpy(ids), inputs_embeds=emb, attention_mask=torch.from_numpy(mask), position_ids=pos4, **kw)
    return out[:, ids.shape[1]:].numpy()  # with input_ids given, generate returns prompt + new tokens


def degeneracy_report(ref: dict):
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
    C.write_toml(path, [
        (None, [("family", "image-text-decoder", ""), ("architecture", parts.architecture, ""),
                ("name", name, ""), ("trained", trained, ""), ("source", source, "")]),
        ("image", [("onnx", "image_prefix.onnx", ""),
                   ("input", "pixel_values", "float32 [B,3,S,S], already normalised"),
                   ("output", "prefix_embeds", "float32 [B,P,H]"),
                   ("tokens", parts.tokens, "P: image tokens per image (t*h*w of mrope_grid)")]),
        ("embed", [("onnx", "embed_tokens.onnx", ""), ("input", "input_ids", "int64 [B,T]"),
                   ("output", "inputs_embeds", "float32 [B,T,H]")]),
        ("decoder", [("onnx", "decoder.onnx", ""), ("inputs_embeds", "inputs_embeds", "float32 [B,T,H]"),
                     ("attention_mask", "attention_mask", "int64 [B,past+T]"),
                     ("position_ids", "position_ids", "int64 [3,B,T] (temporal, height, width)"),
                     ("positions", "mrope", "M-RoPE position ids, as HF get_rope_index"),
                     ("mrope_grid", list(parts.grid), "image grid [t, h, w] after the patch merger"),
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
                    ("add_bos", parts.add_bos, "Qwen2 adds no BOS")]),
        C.preprocess_section(parts.size, parts.mean, parts.std),
        ("tokenizer", [("file", "tokenizer.json", ""),
                       ("eos_token_id", parts.eos, "<|im_end|>"), ("pad_token_id", parts.pad, "<|endoftext|>")]),
        ("generation", [("max_new_tokens", max_new_tokens, ""), ("num_beams", 1, ""),
                        ("repetition_penalty", 1.0, "")]),
    ])


# --------------------------------------------------------------------------------------
# Real checkpoints
# --------------------------------------------------------------------------------------


def _pixels_bounds(pp: dict) -> tuple[int, int]:
    size = pp.get("size") if isinstance(pp.get("size"), dict) else {}
    lo = pp.get("min_pixels", size.get("shortest_edge", 56 * 56))
    hi = pp.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280))
    return int(lo), int(hi)


def check_tile_before_loading(kind: str, src: str, size: int) -> dict:
    """The checkpoint's processor settings; SystemExit (one line) when ``size`` cannot be baked."""
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


def load_checkpoint(kind: str, src: str, size: int) -> Parts:
    from transformers import AutoTokenizer

    pp = check_tile_before_loading(kind, src, size)
    tok = AutoTokenizer.from_pretrained(src)
    tok.padding_side = "left"
    if kind == "qwen2-vl":
        from transformers import Qwen2VLForConditionalGeneration as Cls
    else:
        from transformers import Qwen2_5_VLForConditionalGeneration as Cls
    model = Cls.from_pretrained(src, attn_implementation="eager", dtype=torch.float32).eval()
    lo, hi = _pixels_bounds(pp)
    return Parts(kind, model, tok, size, pp["image_mean"], pp["image_std"], lo, hi)


# --------------------------------------------------------------------------------------
# The `qwen2-vl` / `qwen2.5-vl` subcommands
# --------------------------------------------------------------------------------------


def export_qwen2vl(args) -> None:
    kind = args.command
    out = Path(args.out)
    tv = transformers.__version__
    if args.tiny:
        size = TINY_SIZE if args.size is None else args.size
        # The tile size first: a size the model cannot take fails before anything is built or written.
        problem = tile_problem(size, 4, 2, size * size, size * size)
        if problem:
            raise SystemExit(f"export: {problem}")
        seed = DEFAULT_SEEDS[kind] if args.seed is None else args.seed
        init_std = DEFAULT_INIT_STD[kind] if args.init_std is None else args.init_std
        eos_scale = DEFAULT_EOS_SCALE[kind] if args.eos_scale is None else args.eos_scale
        model, tok = build_tiny(kind, seed, init_std, eos_scale)
        parts = Parts(kind, model, hf_tokenizer(tok), size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, size * size, size * size)
        name = args.name or f"{kind}-tiny-random"
        source = (f"random init, seed {seed}, init std {init_std}, eos logit scale {eos_scale}, "
                  f"transformers {tv}, torch {torch.__version__}")
        trained = False
    else:
        size = DEFAULT_SIZE if args.size is None else args.size
        parts = load_checkpoint(kind, args.source, size)
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, tile {size}, exported with transformers {tv}, torch {torch.__version__}"
        trained = True
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny and args.save_pretrained:
        sp = Path(args.save_pretrained)
        parts.model.save_pretrained(sp)
        parts.processor.save_pretrained(sp)
        print(f"export: wrote save_pretrained folder {sp}", file=sys.stderr)

    worst = check_decoder_against_hf(parts)
    print(f"export: decoder wrapper vs HF language model: max diff {worst:.3g}", file=sys.stderr)
    export_graphs(parts, out, args.opset)
    if not args.skip_verify:
        verify_onnx_against_torch(parts, out, tol=args.tolerance)
    C.save_plain_tokenizer_json(parts.hf_tok, out / "tokenizer.json")
    write_manifest(out / "model.toml", parts, name=name, trained=trained, source=source)
    if args.tiny and not args.no_reference:
        ref, images_u8, pixels = compute_references(parts, seed, init_std, eos_scale)
        ok, msg = degeneracy_report(ref)
        ref["degeneracy_check"] = {"ok": ok, "summary": msg}
        print(f"export: reference outputs: {msg}", file=sys.stderr)
        if not ok:
            print("export: WARNING the reference outputs are degenerate (see above)", file=sys.stderr)
        C.write_reference(out, ref, C.image_bins(images_u8, pixels))
    C.report_done(out)


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
    C.add_opset_arg(c)
    c.add_argument("--size", type=int, default=None,
                   help=f"tile size S baked into the package: a multiple of patch_size * spatial_merge_size "
                        f"whose S*S the processor's min/max pixels allow (default {DEFAULT_SIZE}; --tiny {TINY_SIZE})")
    c.add_argument("--seed", type=int, default=None, help=f"--tiny: seed (default {DEFAULT_SEEDS[command]})")
    c.add_argument("--init-std", type=float, default=None,
                   help=f"--tiny: init std (default {DEFAULT_INIT_STD[command]})")
    c.add_argument("--eos-scale", type=float, default=None,
                   help=f"--tiny: factor on the EOS row of lm_head (default {DEFAULT_EOS_SCALE[command]})")
    c.add_argument("--save-pretrained", metavar="DIR", default=None,
                   help="--tiny: also write the model + processor with save_pretrained (to test --from)")
    C.add_name_arg(c)
    C.add_no_reference_arg(c)
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, 1e-3,
                        "max diff / max(1, max|ref|) allowed between ONNX Runtime and PyTorch (default 1e-3)")
    c.set_defaults(func=export_qwen2vl)
