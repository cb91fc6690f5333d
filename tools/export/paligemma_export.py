"""PaliGemma (SigLIP + Gemma, prefix-LM) -> ``image-text-decoder`` packages (``export.py paligemma``).

Hugging Face ``PaliGemmaForConditionalGeneration`` (transformers 5.24, Gemma 1 language model).
A family on the prefix-decoder seam (``prefix_decoder.py``: ``PaliGemmaParts`` subclasses
``PrefixParts``; the prefix mask is a decoder extra input; the plain Gemma step is registered as
``gemma``).  The package is the image-text-decoder layout (tools/export/README.md)::

    image_prefix.onnx   pixel_values [B,3,S,S] -> prefix_embeds [B,P,H]   (SigLIP -> linear projector)
    embed_tokens.onnx   input_ids [B,T] -> inputs_embeds [B,T,H]          (Gemma's scaled embedding:
                        the sqrt(hidden) factor is in the embedding, so image features stay unscaled,
                        exactly as HF merges them)
    decoder.onnx        inputs_embeds, attention_mask [B,past+T], position_ids [B,T],
                        prefix_mask [B,past+T], past_key_values.{i}.key/.value
                        -> logits, present.{i}.key/.value

What differs from LLaVA, all inside the graphs or the manifest:

* **prefix-LM attention**: the image and the prompt (``token_type_ids == 0`` in HF's processor
  output) attend to each other both ways; generated tokens are causal.  The decoder graph takes
  ``prefix_mask`` (1 on the start step's real tokens, 0 on generated tokens; ``[decoder]
  prefix_mask`` in model.toml) and allows key ``j`` for query ``i`` when ``j <= i`` or both are in
  the prefix (HF's ``blockwise_overlay`` of ``block_sequence_ids = where(token_type_ids == 0, 0,
  -1)``), padding keys excluded;
* **1-based positions**: HF's PaliGemma adds 1 to generate()'s ``cumsum(mask) - 1`` position ids;
  the graph adds it, so tessera's position rule stays the generic one;
* **prompt layout**: ``PaliGemmaProcessor`` writes ``<image>`` x P, then ``<bos>``, the prompt and
  ``"\\n"``, tokenized without special tokens: template ``"{image}<bos>{prompt}\\n"``, add_bos =
  false.

``--tiny`` builds a seeded random model of the real classes with a tiny sentencepiece-BPE Gemma
tokenizer (Gemma's special ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3) and the real
``PaliGemmaProcessor`` (which adds <image> and the 1024 <locNNNN> / 128 <segNNN> tokens); the
references are HF ``generate`` with the processor's ``token_type_ids``.
"""

from __future__ import annotations

import json
import random
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C
import prefix_decoder as PD

DEFAULT_SEED = 0
DEFAULT_EOS_SCALE = 4.0
DEFAULT_INIT_STD = 1.0
MEAN = [0.5, 0.5, 0.5]
STD = [0.5, 0.5, 0.5]
TEMPLATE = "{image}<bos>{prompt}\n"
#: --shape choices ("tiny" first: the default, the test fixture with references).
SHAPES = ["tiny", "mid"]
#: init std / EOS logit scale of the benchmark shape (HF-like init; benchmarks force the caption length).
BENCH_INIT_STD = 0.02
BENCH_EOS_SCALE = 1.0
REF_PROMPTS = ["caption en", "describe the river delta", "answer en is there a city near the coast?"]

_WORDS = ("forest river city desert farmland lake coast harbor airport mountain glacier wetland road "
          "bridge village field orchard beach island canal dense green dry flooded bright dark sandy "
          "a the of and with is there in this image near caption en describe answer what where").split()


# --------------------------------------------------------------------------------------
# Tiny tokenizer and model
# --------------------------------------------------------------------------------------


def build_tiny_tokenizer(tmp: Path, vocab_size: int = 300):
    """A Gemma-style ``GemmaTokenizer``: sentencepiece BPE with byte fallback and split digits, no
    dummy prefix, identity normalisation, <pad> 0 / <eos> 1 / <bos> 2 / <unk> 3 / <mask> 4."""
    import sentencepiece as spm
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    rng = random.Random(7)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 12))) for _ in range(3000)]
    lines += REF_PROMPTS
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp / "gemma"), num_threads=1, hard_vocab_limit=False,
        character_coverage=1.0, minloglevel=2, vocab_size=vocab_size, model_type="bpe", pad_id=0, eos_id=1,
        bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<mask>"], byte_fallback=True, split_digits=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, normalization_rule_name="identity", allow_whitespace_only_pieces=True)
    sp = spm.SentencePieceProcessor(model_file=str(tmp / "gemma.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return GemmaTokenizer(vocab=vocab, merges=generate_merges(vocab, scores), padding_side="left")


def build_processor(tok, size: int, tokens: int):
    """The real ``PaliGemmaProcessor`` on a SigLIP image processor (it adds <image> and the loc/seg tokens)."""
    from transformers import PaliGemmaProcessor, SiglipImageProcessor

    ip = SiglipImageProcessor(size={"height": size, "width": size}, image_mean=MEAN, image_std=STD,
                              resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=True)
    ip.image_seq_length = tokens
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)
    proc.tokenizer.padding_side = "left"
    return proc


def build_tiny(seed: int, init_std: float, eos_scale: float, tmp: Path, shape: str = "tiny"):
    """(model, processor) of a seeded random PaliGemma (SigLIP 32 px / patch 8 -> 16 image tokens,
    Gemma 2 layers, hidden 64, 4 heads, 1 kv head as Gemma-2b).

    ``shape="mid"`` (benchmarks, no references): a small Gemma of Gemma-2b's layout (head_dim 256,
    1 kv head, GeGLU) at hidden 1024, 4 heads, ffn 4096, 8 layers (~120 M parameters besides the
    tiny vocabulary), and a small SigLIP at 224 px / patch 28 (64 image tokens)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    tok = build_tiny_tokenizer(tmp)
    size, patch = (32, 8) if shape == "tiny" else (224, 28)
    tokens = (size // patch) ** 2
    proc = build_processor(tok, size, tokens)
    tok = proc.tokenizer
    V = len(tok)
    torch.manual_seed(seed)
    if shape == "tiny":
        vis = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        lm = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=16)
    elif shape == "mid":
        vis = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
        lm = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=256)
    else:
        raise ValueError(f"unknown paligemma --shape {shape!r}")
    cfg = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", **vis, image_size=size, patch_size=patch,
                           vision_use_head=False),
        text_config=dict(model_type="gemma", vocab_size=V, **lm,
                         max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_index=proc.image_token_id, projection_dim=lm["hidden_size"], hidden_size=lm["hidden_size"],
        vocab_size=V,
    )
    cfg._attn_implementation = "eager"
    model = PaliGemmaForConditionalGeneration(cfg)
    PD.reinit(model, init_std)
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] *= eos_scale  # tied: the embedding row too, as HF's own
    model.eval()
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    return model, proc


# --------------------------------------------------------------------------------------
# Wrappers (the three graphs)
# --------------------------------------------------------------------------------------


class Prefix(nn.Module):
    """SigLIP last_hidden_state -> multi_modal_projector (PaliGemmaModel.get_image_features)."""

    def __init__(self, model):
        super().__init__()
        self.m = model.model

    def forward(self, pixel_values):
        hs = self.m.vision_tower(pixel_values).last_hidden_state
        return self.m.multi_modal_projector(hs)


def prefix_lm_mask(attention_mask, prefix_mask, q_len_like, dtype) -> torch.Tensor:
    """[B,1,T,K] additive mask: key j visible to query i when mask[j] == 1 and (j <= i, or both i
    and j are in the prefix).  A padding query may see itself (no row fully masked)."""
    ones_k = torch.ones_like(attention_mask[:1, :])
    k_idx = torch.cumsum(ones_k, dim=1) - 1                                     # [1, K]
    total = torch.sum(ones_k, dim=1, keepdim=True)                              # [1, 1]
    ones_q = torch.ones_like(q_len_like[:1, :, 0], dtype=torch.long)            # [1, T]
    q_idx = torch.cumsum(ones_q, dim=1) - 1 + (total - torch.sum(ones_q, dim=1, keepdim=True))  # [1, T]
    causal = k_idx[:, None, :] <= q_idx[:, :, None]                             # [1, T, K]
    diag = k_idx[:, None, :] == q_idx[:, :, None]
    pm = prefix_mask != 0                                                       # [B, K]
    pm_q = torch.gather(pm.long(), 1, q_idx.expand(pm.shape[0], -1)) != 0      # [B, T]
    block = pm_q[:, :, None] & pm[:, None, :]                                   # [B, T, K]
    allowed = ((causal | block) & (attention_mask[:, None, :] != 0)) | diag
    zero = torch.zeros((), dtype=dtype)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed[:, None], zero, neg)


def _attend(q, k, v, mask_add, n_rep: int, scaling: float):
    if n_rep > 1:
        b, h, s, d = k.shape
        k = k[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)
        v = v[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)
    w = torch.matmul(q, k.transpose(2, 3)) * scaling + mask_add
    w = torch.softmax(w.float(), dim=-1).to(q.dtype)
    return torch.matmul(w, v).transpose(1, 2)


class GemmaDecoderStep(nn.Module):
    """HF GemmaModel + lm_head (eager) with explicit positions, a tensor KV cache and, for
    PaliGemma, the prefix-LM mask input and 1-based positions.  Every weight and sub-module is HF's
    (the sqrt(hidden) factor is in the embedding, not here).

    forward: ``(inputs_embeds, attention_mask, position_ids, *past)``; with ``prefix_lm``:
    ``(inputs_embeds, attention_mask, position_ids, prefix_mask, *past)``."""

    def __init__(self, text_model, lm_head, cfg, *, prefix_lm: bool = False, position_offset: int = 0):
        super().__init__()
        self.m = text_model
        self.lm_head = lm_head
        self.prefix_lm, self.position_offset = prefix_lm, position_offset
        self.n_layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def forward(self, inputs_embeds, attention_mask, position_ids, *rest):
        from transformers.models.gemma.modeling_gemma import apply_rotary_pos_emb

        if self.prefix_lm:
            prefix_mask, past = rest[0], rest[1:]
        else:
            prefix_mask, past = torch.zeros_like(attention_mask), rest
        m = self.m
        h = inputs_embeds
        cos, sin = m.rotary_emb(h, position_ids + self.position_offset)
        mask_add = prefix_lm_mask(attention_mask, prefix_mask, inputs_embeds, h.dtype)
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
        return (PD.last_position_logits(self.lm_head, h), *presents)


# Gemma (1) as a plain causal language model of the registry; PaliGemma passes its own
# prefix-LM instance (PaliGemmaParts).
PD.register_lm_step("gemma", lambda backbone, head, cfg: GemmaDecoderStep(backbone, head, cfg))

#: decoder checks (check_decoder_against_hf, ONNX verification): the first CHECK_PREFIX steps are
#: the bidirectional prefix (token_type_ids 0), the rest causal (1)
CHECK_PREFIX = 5


class PaliGemmaParts(PD.PrefixParts):
    """PaliGemma on the prefix-decoder seam: the prefix-LM Gemma step (extra decoder input
    ``prefix_mask``), the prompt rule and ``token_type_ids`` of the real ``PaliGemmaProcessor``."""

    decoder_extra_input_names = ("prefix_mask",)

    def __init__(self, model, proc, size: int, mean, std):
        cfg = model.config
        tc = cfg.text_config
        if tc.model_type != "gemma":
            raise SystemExit(f"export: paligemma: the language model is '{tc.model_type}'; only Gemma 1 "
                             "(PaliGemma 1) is supported (PaliGemma 2's Gemma 2 has soft-capping and sliding windows)")
        tok = proc.tokenizer
        vc = cfg.vision_config
        lm = model.model.language_model
        super().__init__(model, tok, size, mean, std, kind="paligemma", architecture="paligemma-gemma",
                         prefix=Prefix(model), embed=lm.embed_tokens, lm_backbone=lm, lm_head=model.lm_head,
                         text_cfg=tc, tokens=(vc.image_size // vc.patch_size) ** 2,
                         image_token_id=cfg.image_token_id, template=TEMPLATE.replace("<bos>", tok.bos_token),
                         add_bos=False, ref_prompts=(REF_PROMPTS[0], REF_PROMPTS, REF_PROMPTS[:2]),
                         decoder=GemmaDecoderStep(lm, model.lm_head, tc, prefix_lm=True, position_offset=1))
        self.proc, self.tok = proc, tok
        self.max_positions -= 1  # 1-based positions
        self._token_type_ids: dict[bytes, np.ndarray] = {}

    # -- the processor ---------------------------------------------------------------------
    def processor(self, images_u8: np.ndarray, prompts: list[str]) -> dict:
        """HF PaliGemmaProcessor output (input_ids, attention_mask, token_type_ids, pixel_values)."""
        from PIL import Image

        imgs = [Image.fromarray(np.ascontiguousarray(x)) for x in images_u8]
        # "<image>" first, as the processor asks; it adds <bos> after the last one and "\n" at the end
        texts = [self.image_token + p for p in prompts]
        self.proc.tokenizer.padding_side = "left"
        enc = self.proc(images=imgs, text=texts, padding=True, return_tensors="np")
        return {k: np.asarray(v) for k, v in enc.items()}

    def processor_ids(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The processor's input_ids / attention_mask (its token_type_ids kept for hf_inputs)."""
        images = C.make_reference_images(self.size)[1][:1].repeat(len(prompts), axis=0)
        enc = self.processor(images, prompts)
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        self._token_type_ids[ids.tobytes()] = enc["token_type_ids"].astype(np.int64)
        return ids, mask

    def hf_inputs(self, ids, mask, pixels) -> dict:
        """HF forward/generate inputs with the processor's token_type_ids (0 on every prompt token:
        without them HF's eager mask silently becomes causal)."""
        tt = self._token_type_ids.get(ids.tobytes())
        if tt is None:  # the template layout: the same ids as the processor's, all prompt tokens
            tt = np.zeros_like(ids)
        return dict(pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(ids),
                    attention_mask=torch.from_numpy(mask), token_type_ids=torch.from_numpy(tt))

    # -- the decoder checks: prefix of CHECK_PREFIX steps, then causal ----------------------------
    def decoder_extra_inputs(self, mask: np.ndarray, t0: int, t1: int) -> list[np.ndarray]:
        m = mask[:, :t1].copy()
        m[:, CHECK_PREFIX:] = 0
        return [np.ascontiguousarray(m)]

    def decoder_extra_axes(self) -> dict:
        return {"prefix_mask": {0: "batch", 1: "total"}}

    def hf_lm_logits(self, emb, mask, pos):
        """HF's PaliGemma forward on inputs_embeds with token_type_ids (0 on the first CHECK_PREFIX
        steps) and its 1-based positions."""
        tt = np.zeros_like(mask)
        tt[:, CHECK_PREFIX:] = 1
        return self.model(inputs_embeds=emb, attention_mask=torch.from_numpy(mask),
                          position_ids=torch.from_numpy(pos + 1), token_type_ids=torch.from_numpy(tt),
                          use_cache=False).logits

    def manifest_extra(self) -> list:
        return [("decoder", [("prefix_mask", "prefix_mask",
                              "int64 [B,past+T]: 1 on image + prompt, 0 on generated (prefix-LM)")])]

    def reference_extra(self) -> dict:
        """The prefix-LM mask on its own: the processor's token_type_ids for a batch of prompts
        of different lengths, the prefix mask tessera feeds at the start step, our additive mask
        vs HF's create_causal_mask, and HF generate with vs without token_type_ids."""
        names, images_u8 = C.make_reference_images(self.size)
        prompts = list(REF_PROMPTS)
        enc = self.processor(images_u8[:3], prompts)
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        tt = enc["token_type_ids"].astype(np.int64)
        pixels = C.preprocess_u8(images_u8[:3], self.mean, self.std)
        prefix = mask * (tt == 0)
        kw = dict(max_new_tokens=8, do_sample=False, num_beams=1, bos_token_id=self.bos, eos_token_id=self.eos,
                  pad_token_id=self.pad)
        g = self.hf_inputs(ids, mask, pixels)
        with_tt = self.model.generate(**g, **kw)[:, ids.shape[1]:].numpy()
        causal = self.model.generate(**{k: v for k, v in g.items() if k != "token_type_ids"},
                                     **kw)[:, ids.shape[1]:].numpy()
        return {"prefix_lm": {
            "what": "PaliGemmaProcessor on images 0..2 with these prompts (left padding)",
            "prompts": prompts, "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
            "token_type_ids": tt.tolist(), "prefix_mask": prefix.tolist(),
            "prefix_mask_rule": "attention_mask on the start step's columns, 0 on generated tokens",
            "additive_mask_equal_hf_create_causal_mask": check_mask_against_hf(self, prefix, mask, tt),
            "processor_pixels_max_abs_diff": float(np.abs(enc["pixel_values"] - pixels).max()),
            "generate_with_token_type_ids": with_tt.tolist(),
            "generate_without_token_type_ids": causal.tolist(),
            "position_ids_rule": "tessera feeds cumsum(attention_mask) - 1 (0 on padding); the graph adds 1",
        }}


def check_mask_against_hf(parts: PaliGemmaParts, prefix_mask: np.ndarray, attention_mask: np.ndarray,
                          token_type_ids: np.ndarray) -> bool:
    """Our additive mask allows exactly what HF's create_causal_mask (block_sequence_ids from the
    processor's token_type_ids) allows, on the rows of real tokens."""
    from transformers.masking_utils import create_causal_mask

    B, T = attention_mask.shape
    emb = torch.zeros(B, T, parts.hidden)
    cfg = parts.model.config.get_text_config()
    hf = create_causal_mask(config=cfg, inputs_embeds=emb, attention_mask=torch.from_numpy(attention_mask),
                            cache=None, position_ids=torch.from_numpy(PD.position_ids_from_mask(attention_mask)),
                            block_sequence_ids=torch.where(torch.from_numpy(token_type_ids) == 0, 0, -1))
    hf_allowed = (hf == 0) if hf.dtype != torch.bool else hf
    ours = prefix_lm_mask(torch.from_numpy(attention_mask), torch.from_numpy(prefix_mask), emb, torch.float32) == 0
    real = torch.from_numpy(attention_mask).bool()
    return bool(torch.equal(hf_allowed[:, 0][real], ours[:, 0][real]))


def check_prefix_lm_matters(parts: PaliGemmaParts) -> float:
    """The same inputs through the step with a causal prefix mask differ from HF's prefix-LM
    logits (the mask input is not a no-op); returns the relative difference."""
    gen = torch.Generator().manual_seed(7)
    B, T = 2, 9
    emb = torch.randn(B, T, parts.hidden, generator=gen)
    mask = np.ones((B, T), np.int64)
    pos = PD.position_ids_from_mask(mask)
    ref = parts.hf_lm_logits(emb, mask, pos)
    causal = parts.decoder(emb, torch.from_numpy(mask), torch.from_numpy(pos), torch.zeros(B, T, dtype=torch.long),
                           *PD.empty_past(parts, B))[0]
    ref = ref[:, -1:]  # the step gives the last position's logits
    d = float((causal - ref).abs().max()) / max(1.0, float(ref.abs().max()))
    if d < 1e-3:
        raise RuntimeError("the prefix-LM mask has no effect on the logits")
    return d


# --------------------------------------------------------------------------------------
# Manifest, checkpoints, command
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Grounding fixture (--grounding-fixture): a tiny model that answers `detect ...` with boxes
# --------------------------------------------------------------------------------------

#: The official recipe's pattern (big-vision/paligemma-hf demo, app.py, ``_SEGMENT_DETECT_RE``).
_SEGMENT_DETECT_RE = re.compile(r"(.*?)" + r"<loc(\d{4})>" * 4 + r"\s*" + "(?:%s)?" % (r"<seg(\d{3})>" * 16)
                                + r"\s*([^;<>]+)? ?(?:; )?")


def extract_objs(text: str, width: int, height: int) -> list[dict]:
    """The demo's ``extract_objs`` (boxes only): ``y1, x1, y2, x2`` from ``<locYYYY>`` / 1024 times
    the image height / width, ``round``-ed; ``coords``: the characters of the four tokens."""
    objs, at = [], 0
    while text[at:]:
        m = _SEGMENT_DETECT_RE.match(text[at:])
        if not m:
            break
        gs = list(m.groups())
        gs.pop(0)
        name = gs.pop()
        y1, x1, y2, x2 = [int(x) / 1024 for x in gs[:4]]
        y1, x1, y2, x2 = map(round, (y1 * height, x1 * width, y2 * height, x2 * width))
        objs.append({"bbox": [x1, y1, x2, y2], "phrase": (name or "").strip(), "recipe_name": name,
                     "coords": (at + m.start(2) - 4, at + m.end(5) + 1)})
        at += len(m.group())
    return objs


#: --prompts entry -> the answer the fixture is forced to write on reference image 0.
GROUNDING_ANSWERS = {
    "ship": "<loc0256><loc0384><loc0640><loc0896> ship ; <loc0100><loc0050><loc0300><loc0200> ship",
    "storage tank": "<loc0612><loc0700><loc0900><loc1000> storage tank",
}


def grounding() -> PD.Grounding:
    return PD.Grounding(
        prompt="detect {prompt}", output="paligemma_detect", answers=GROUNDING_ANSWERS, parse=extract_objs,
        recipe_skips_special=True,
        convention="<locYYYY> x4 = y0, x0, y1, x1 in 1024 bins of the input height/width, then the label; ' ; ' between objects",
        recipe="big-vision/paligemma-hf (Hugging Face space) app.py extract_objs: _SEGMENT_DETECT_RE, int(loc) / 1024 * size, round")


def load_checkpoint(src: str) -> PaliGemmaParts:
    """A save_pretrained folder (or hub id in the local cache) with the processor files."""
    from transformers import AutoProcessor, PaliGemmaForConditionalGeneration

    pp = C.image_processor_config(src)  # SystemExit when the checkpoint has none
    cfg = C.read_json(src, "config.json") or {}
    if cfg.get("model_type") != "paligemma":
        raise SystemExit(f"export: {src}: config.json model_type is {cfg.get('model_type')!r}, not 'paligemma'")
    lm = (cfg.get("text_config") or {}).get("model_type", "gemma")
    if lm != "gemma":
        raise SystemExit(f"export: {src}: text_config.model_type is '{lm}'; only Gemma 1 (PaliGemma 1) is supported")
    proc = AutoProcessor.from_pretrained(src)
    model = PaliGemmaForConditionalGeneration.from_pretrained(src, attn_implementation="eager",
                                                              dtype=torch.float32).eval()
    vc = model.config.vision_config
    size = C.square_size(pp, vc.image_size)
    if size != vc.image_size:
        raise SystemExit(f"export: {src}: image processor size {size} != vision_config.image_size {vc.image_size}")
    parts = PaliGemmaParts(model, proc, size, pp["image_mean"], pp["image_std"])
    if getattr(proc, "image_seq_length", parts.tokens) != parts.tokens:
        raise SystemExit(f"export: {src}: the processor expands <image> to {proc.image_seq_length} tokens, "
                         f"the model yields {parts.tokens}")
    proc.tokenizer.padding_side = "left"
    return parts


def tiny_parts(shape: str = "tiny", seed=None, init_std=None, eos_scale=None, tmp: Path | None = None):
    """(parts, seed, init_std, eos_scale) of ``--tiny [--shape S]`` with these overrides (None: the
    defaults); also what bench/peer_caption_prefix.py builds to time HF generate on the same weights."""
    bench = shape != "tiny"
    seed = DEFAULT_SEED if seed is None else seed
    init_std = (BENCH_INIT_STD if bench else DEFAULT_INIT_STD) if init_std is None else init_std
    eos_scale = (BENCH_EOS_SCALE if bench else DEFAULT_EOS_SCALE) if eos_scale is None else eos_scale
    if tmp is None:
        with tempfile.TemporaryDirectory() as t:
            return tiny_parts(shape, seed, init_std, eos_scale, Path(t))
    model, proc = build_tiny(seed, init_std, eos_scale, tmp, shape)
    parts = PaliGemmaParts(model, proc, model.config.vision_config.image_size, MEAN, STD)
    return parts, seed, init_std, eos_scale


def export_paligemma(args) -> None:
    tv = transformers.__version__
    seed_info = None
    shape = getattr(args, "shape", "tiny")
    if shape != "tiny" and not args.tiny:
        raise SystemExit("--shape only applies with --tiny")
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            parts, seed, init_std, eos_scale = tiny_parts(shape, args.seed, args.init_std, args.eos_scale, Path(tmp))
            model, proc = parts.model, parts.proc
            name = args.name or f"paligemma-{shape}-random"
            source = (f"random init, seed {seed}, init std {init_std}, eos logit scale {eos_scale}, "
                      + ("" if shape == "tiny" else f"shape {shape}, ")
                      + f"transformers {tv}, torch {torch.__version__}")
            trained = False
            if args.save_pretrained:
                sp = Path(args.save_pretrained)
                model.save_pretrained(sp)
                proc.save_pretrained(sp)
                print(f"export: wrote save_pretrained folder {sp}", file=sys.stderr)
            if shape == "tiny" and not args.no_reference:
                seed_info = dict(seed=seed, init_std=init_std, eos_logit_scale=eos_scale)
        else:
            parts = load_checkpoint(args.source)
            name = args.name or Path(args.source.rstrip("/")).name
            source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
            trained = True
    d = check_prefix_lm_matters(parts)
    print(f"export: a causal mask changes the logits by {d:.3g} (relative): the prefix-LM mask matters",
          file=sys.stderr)
    g = None
    if getattr(args, "grounding_fixture", False):
        if not args.tiny or shape != "tiny":
            raise SystemExit("--grounding-fixture only applies with --tiny (shape tiny)")
        g = grounding()
        g.force(parts)
        name = args.name or "paligemma-det-tiny-random"
        source += f", lm_head forced to write detect answers on reference image 0 ({PD.FORCING_NOTE})"
    elif trained:
        g = grounding()  # a checkpoint detects with its [grounding] section (no forcing, no reference)
    PD.export_prefix_package(args, parts, name=name, source=source, trained=trained, reference_seed_info=seed_info,
                             max_new_tokens=64 if g and not trained else 20, grounding=g)


def add_parser(sub, command: str) -> None:
    c = sub.add_parser(command, help="export PaliGemma (PaliGemmaForConditionalGeneration, Gemma 1) as an "
                                     "image-text-decoder package",
                       description="Export PaliGemma: image_prefix.onnx, embed_tokens.onnx, decoder.onnx "
                                   "(prefix-LM mask input, KV cache), tokenizer.json, model.toml.")
    C.add_source_args(c, from_help="save_pretrained folder of a PaliGemma checkpoint with its processor files",
                      tiny_help="seeded random model of the real architecture (the test fixture, with reference/)")
    C.add_out_arg(c)
    PD.add_prefix_args(c, seed=DEFAULT_SEED, init_std=DEFAULT_INIT_STD, eos_scale=DEFAULT_EOS_SCALE)
    c.add_argument("--shape", choices=SHAPES, default="tiny",
                   help="--tiny: 'tiny' (the test fixture) or 'mid' (benchmarks: a ~120 M-parameter Gemma of "
                        f"Gemma-2b's layout, small SigLIP at 224 px, 64 image tokens; init std {BENCH_INIT_STD}, "
                        "no reference/)")
    c.add_argument("--grounding-fixture", action="store_true",
                   help="--tiny: the detection fixture (paligemma-det-tiny): lm_head changed (least norm) so that "
                        "'detect ship' and 'detect storage tank' are answered with <loc> boxes on reference image 0; "
                        "a [grounding] section; reference.json gains the HF answers, log-probabilities and the "
                        "official recipe's boxes")
    c.set_defaults(func=export_paligemma)
