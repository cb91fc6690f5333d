"""PaliGemma (SigLIP + Gemma, prefix-LM) -> ``image-text-decoder`` packages (``export.py paligemma``).

Hugging Face ``PaliGemmaForConditionalGeneration`` (transformers 5.24, Gemma 1 language model).
The package is the image-text-decoder layout (see decoder_export.py and tools/export/README.md)::

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
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C

DEFAULT_SEED = 0
DEFAULT_EOS_SCALE = 4.0
DEFAULT_INIT_STD = 1.0
MEAN = [0.5, 0.5, 0.5]
STD = [0.5, 0.5, 0.5]
TEMPLATE = "{image}<bos>{prompt}\n"
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


def _reinit(model: nn.Module, std: float) -> None:
    """Re-draw every Linear/Embedding/Conv weight N(0, std) (biases N(0, std/4)); norms stay."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.normal_(m.bias, 0.0, std / 4)
        elif isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_tiny(seed: int, init_std: float, eos_scale: float, tmp: Path):
    """(model, processor) of a seeded random PaliGemma (SigLIP 32 px / patch 8 -> 16 image tokens,
    Gemma 2 layers, hidden 64, 4 heads, 1 kv head as Gemma-2b)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    tok = build_tiny_tokenizer(tmp)
    size, patch = 32, 8
    tokens = (size // patch) ** 2
    proc = build_processor(tok, size, tokens)
    tok = proc.tokenizer
    V = len(tok)
    torch.manual_seed(seed)
    cfg = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=size, patch_size=patch,
                           vision_use_head=False),
        text_config=dict(model_type="gemma", vocab_size=V, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_index=proc.image_token_id, projection_dim=64, hidden_size=64, vocab_size=V,
    )
    cfg._attn_implementation = "eager"
    model = PaliGemmaForConditionalGeneration(cfg)
    _reinit(model, init_std)
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


class EmbedTokens(nn.Module):
    """Gemma's scaled embedding (x sqrt(hidden)), as HF embeds the text ids."""

    def __init__(self, emb: nn.Module):
        super().__init__()
        self.emb = emb

    def forward(self, input_ids):
        return self.emb(input_ids)


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
    """HF GemmaModel + lm_head (eager) with explicit positions (+1: PaliGemma's 1-based ids), the
    prefix-LM mask and a tensor KV cache.  Every weight and sub-module is HF's."""

    def __init__(self, text_model, lm_head, cfg):
        super().__init__()
        self.m = text_model
        self.lm_head = lm_head
        self.n_layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def forward(self, inputs_embeds, attention_mask, position_ids, prefix_mask, *past):
        from transformers.models.gemma.modeling_gemma import apply_rotary_pos_emb

        m = self.m
        h = inputs_embeds
        cos, sin = m.rotary_emb(h, position_ids + 1)
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
        return (self.lm_head(h), *presents)


class Parts:
    """One loaded PaliGemma: model, processor, graphs' wrappers and the prompt rule."""

    def __init__(self, model, proc, size: int, mean, std):
        self.model, self.proc, self.tok = model, proc, proc.tokenizer
        self.size, self.mean, self.std = size, list(mean), list(std)
        cfg = model.config
        tc = cfg.text_config
        if tc.model_type != "gemma":
            raise SystemExit(f"export: paligemma: the language model is '{tc.model_type}'; only Gemma 1 "
                             "(PaliGemma 1) is supported (PaliGemma 2's Gemma 2 has soft-capping and sliding windows)")
        self.architecture = "paligemma-gemma"
        self.prefix = Prefix(model).eval()
        self.embed = EmbedTokens(model.model.language_model.embed_tokens).eval()
        self.decoder = GemmaDecoderStep(model.model.language_model, model.lm_head, tc).eval()
        vc = cfg.vision_config
        self.tokens = (vc.image_size // vc.patch_size) ** 2
        self.image_token_id = int(cfg.image_token_id)
        self.image_token = self.tok.convert_ids_to_tokens(self.image_token_id)
        self.template = TEMPLATE.replace("<bos>", self.tok.bos_token)
        self.add_bos = False
        d = self.decoder
        self.layers, self.kv_heads, self.head_dim = d.n_layers, d.kv_heads, d.head_dim
        self.hidden = int(tc.hidden_size)
        self.vocab = int(tc.vocab_size)
        self.max_positions = int(tc.max_position_embeddings) - 1  # positions are 1-based
        self.bos, self.eos, self.pad = tc.bos_token_id, tc.eos_token_id, tc.pad_token_id
        if isinstance(self.eos, (list, tuple)):
            self.eos = self.eos[0]
        if self.pad is None:
            self.pad = self.tok.pad_token_id

    def prompt_text(self, prompt: str) -> str:
        return self.template.replace("{image}", self.image_token * self.tokens).replace("{prompt}", prompt)

    def template_ids(self, prompt: str) -> list[int]:
        return self.tok(self.prompt_text(prompt), add_special_tokens=self.add_bos)["input_ids"]

    def left_pad(self, seqs):
        n = max(len(s) for s in seqs)
        ids = np.full((len(seqs), n), self.pad, np.int64)
        mask = np.zeros((len(seqs), n), np.int64)
        for r, s in enumerate(seqs):
            ids[r, n - len(s):] = s
            mask[r, n - len(s):] = 1
        return ids, mask

    def processor(self, images_u8: np.ndarray, prompts: list[str]) -> dict:
        """HF PaliGemmaProcessor output (input_ids, attention_mask, token_type_ids, pixel_values)."""
        from PIL import Image

        imgs = [Image.fromarray(np.ascontiguousarray(x)) for x in images_u8]
        # "<image>" first, as the processor asks; it adds <bos> after the last one and "\n" at the end
        texts = [self.image_token + p for p in prompts]
        enc = self.proc(images=imgs, text=texts, padding=True, return_tensors="np")
        return {k: np.asarray(v) for k, v in enc.items()}

    def assemble_embeds(self, ids: np.ndarray, pixels: np.ndarray) -> torch.Tensor:
        emb = self.embed(torch.from_numpy(ids)).clone()
        pre = self.prefix(torch.from_numpy(pixels))
        for b in range(ids.shape[0]):
            rows = np.nonzero(ids[b] == self.image_token_id)[0]
            assert len(rows) == self.tokens, (len(rows), self.tokens)
            emb[b, torch.from_numpy(rows)] = pre[b]
        return emb


def position_ids_from_mask(mask: np.ndarray) -> np.ndarray:
    p = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 0, p).astype(np.int64)


def empty_past(parts: Parts, batch: int, length: int = 0) -> list[torch.Tensor]:
    return [torch.zeros(batch, parts.kv_heads, length, parts.head_dim) for _ in range(2 * parts.layers)]


def check_decoder_against_hf(parts: Parts, tol: float = 1e-5) -> float:
    """The Gemma step (prefill + cached steps, prefix-LM mask) reproduces HF's PaliGemma forward on
    inputs_embeds with token_type_ids (prefix of 6 tokens, then 4 suffix tokens; left padding)."""
    gen = torch.Generator().manual_seed(7)
    B, T, P = 2, 10, 6
    emb = torch.randn(B, T, parts.hidden, generator=gen)
    mask = np.ones((B, T), np.int64)
    mask[1, :3] = 0
    tt = np.zeros((B, T), np.int64)
    tt[:, P:] = 1
    pos = position_ids_from_mask(mask)
    ref = parts.model(inputs_embeds=emb, attention_mask=torch.from_numpy(mask),
                      position_ids=torch.from_numpy(pos + 1), token_type_ids=torch.from_numpy(tt),
                      use_cache=False).logits
    prefix = mask * (tt == 0)
    worst = 0.0
    res = parts.decoder(emb[:, :P], torch.from_numpy(mask[:, :P]), torch.from_numpy(pos[:, :P]),
                        torch.from_numpy(prefix[:, :P]), *empty_past(parts, B))
    logits, past = [res[0]], list(res[1:])
    for t in range(P, T):
        res = parts.decoder(emb[:, t:t + 1], torch.from_numpy(mask[:, :t + 1]), torch.from_numpy(pos[:, t:t + 1]),
                            torch.from_numpy(prefix[:, :t + 1]), *past)
        logits.append(res[0])
        past = list(res[1:])
    got = torch.cat(logits, 1)
    valid = torch.from_numpy(mask).bool()
    worst = float((got - ref).abs()[valid].max()) / max(1.0, float(ref.abs()[valid].max()))
    # and the same inputs as one causal prefill differ (the prefix mask matters)
    causal = parts.decoder(emb, torch.from_numpy(mask), torch.from_numpy(pos), torch.zeros(B, T, dtype=torch.long),
                           *empty_past(parts, B))[0]
    if float((causal - ref).abs()[valid].max()) < 1e-3:
        raise RuntimeError("the prefix-LM mask has no effect on the logits")
    if not worst < tol:
        raise RuntimeError(f"decoder wrapper differs from HF by {worst}")
    return worst


def check_mask_against_hf(parts: Parts, prefix_mask: np.ndarray, attention_mask: np.ndarray,
                          token_type_ids: np.ndarray) -> bool:
    """Our additive mask allows exactly what HF's create_causal_mask (block_sequence_ids from the
    processor's token_type_ids) allows, on the rows of real tokens."""
    from transformers.masking_utils import create_causal_mask

    B, T = attention_mask.shape
    emb = torch.zeros(B, T, parts.hidden)
    cfg = parts.model.config.get_text_config()
    hf = create_causal_mask(config=cfg, inputs_embeds=emb, attention_mask=torch.from_numpy(attention_mask),
                            cache=None, position_ids=torch.from_numpy(position_ids_from_mask(attention_mask)),
                            block_sequence_ids=torch.where(torch.from_numpy(token_type_ids) == 0, 0, -1))
    hf_allowed = (hf == 0) if hf.dtype != torch.bool else hf
    ours = prefix_lm_mask(torch.from_numpy(attention_mask), torch.from_numpy(prefix_mask), emb, torch.float32) == 0
    real = torch.from_numpy(attention_mask).bool()
    return bool(torch.equal(hf_allowed[:, 0][real], ours[:, 0][real]))


# --------------------------------------------------------------------------------------
# Export and verification
# --------------------------------------------------------------------------------------


def decoder_io_names(layers: int) -> tuple[list[str], list[str]]:
    past, present = [], []
    for i in range(layers):
        past += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        present += [f"present.{i}.key", f"present.{i}.value"]
    return ["inputs_embeds", "attention_mask", "position_ids", "prefix_mask"] + past, ["logits"] + present


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
            "position_ids": {0: "batch", 1: "sequence"}, "prefix_mask": {0: "batch", 1: "total"},
            "logits": {0: "batch", 1: "sequence"}}
    for n in ins[4:]:
        axes[n] = {0: "batch", 2: "past"}
    for n in outs[1:]:
        axes[n] = {0: "batch", 2: "total"}
    past_len, T = 3, 2
    args = (torch.randn(B, T, parts.hidden), torch.ones(B, past_len + T, dtype=torch.long),
            torch.arange(past_len, past_len + T).repeat(B, 1), torch.ones(B, past_len + T, dtype=torch.long),
            *empty_past(parts, B, past_len))
    C.export_onnx(parts.decoder, args, out / "decoder.onnx", ins, outs, axes, opset)


def verify_onnx_against_torch(parts: Parts, out: Path, tol: float) -> dict:
    """ORT vs PyTorch (relative to max(1, max|ref|)): prefix, embed, decoder prefill + cached steps."""
    gen = torch.Generator().manual_seed(1234)
    pre, emb, dec = (C.ort_session(out / n) for n in ("image_prefix.onnx", "embed_tokens.onnx", "decoder.onnx"))
    ins, _ = decoder_io_names(parts.layers)
    worst = {"prefix": 0.0, "embed": 0.0, "decoder": 0.0}
    for B in (1, 3):
        px = torch.randn(B, 3, parts.size, parts.size, generator=gen)
        worst["prefix"] = max(worst["prefix"], C.rel_diff(pre.run(None, {"pixel_values": px.numpy()})[0],
                                                          parts.prefix(px).numpy()))
        ids = torch.randint(0, parts.vocab, (B, 5), generator=gen)
        worst["embed"] = max(worst["embed"], C.rel_diff(emb.run(None, {"input_ids": ids.numpy()})[0],
                                                        parts.embed(ids).numpy()))
        T = 7
        e = torch.randn(B, T, parts.hidden, generator=gen)
        mask = np.ones((B, T), np.int64)
        if B > 1:
            mask[1, :2] = 0
        pos = position_ids_from_mask(mask)
        prefix = mask.copy()
        prefix[:, 4:] = 0
        for steps in ([T], [4, 5, 7]):
            past_t = empty_past(parts, B)
            past_o = [p.numpy() for p in past_t]
            t0 = 0
            for t1 in steps:
                sl = slice(t0, t1)
                ref = parts.decoder(e[:, sl], torch.from_numpy(mask[:, :t1]), torch.from_numpy(pos[:, sl]),
                                    torch.from_numpy(prefix[:, :t1]), *past_t)
                feed = {"inputs_embeds": e[:, sl].numpy(), "attention_mask": mask[:, :t1],
                        "position_ids": pos[:, sl], "prefix_mask": prefix[:, :t1]}
                feed.update(dict(zip(ins[4:], past_o)))
                got = dec.run(None, feed)
                for r, g in zip(ref, got):
                    worst["decoder"] = max(worst["decoder"], C.rel_diff(g, r.numpy()))
                past_t, past_o, t0 = list(ref[1:]), got[1:], t1
    print("export: ONNX vs PyTorch max diff / max(1, max|ref|): "
          + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()), file=sys.stderr)
    for k, v in worst.items():
        if not v < tol:
            raise RuntimeError(f"{k}: ONNX Runtime differs from PyTorch by {v} (tolerance {tol})")
    return worst


# --------------------------------------------------------------------------------------
# References (--tiny): HF generate with the processor's token_type_ids
# --------------------------------------------------------------------------------------


def _gen_kwargs(parts: Parts, *, num_beams: int, min_new_tokens: int = 0, repetition_penalty: float = 1.0,
                max_new_tokens: int = 12) -> dict:
    return dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_beams=num_beams,
                do_sample=False, repetition_penalty=repetition_penalty, length_penalty=1.0,
                early_stopping=False, num_return_sequences=1, no_repeat_ngram_size=0,
                bos_token_id=parts.bos, eos_token_id=parts.eos, pad_token_id=parts.pad)


def reference_cases() -> list[dict]:
    q, qb, qb2 = REF_PROMPTS[0], REF_PROMPTS, REF_PROMPTS[:2]
    cases = [dict(name=f"greedy_img{k}", images=[k], prompts=[q], kw=dict(num_beams=1)) for k in range(3)]
    cases += [
        dict(name="greedy_batch3", images=[0, 1, 2], prompts=qb, kw=dict(num_beams=1)),
        dict(name="beam3_img3", images=[3], prompts=[q], kw=dict(num_beams=3)),
        dict(name="beam3_img0_rep1.3", images=[0], prompts=[q], kw=dict(num_beams=3, repetition_penalty=1.3)),
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


def compute_references(parts: Parts, seed: int, init_std: float, eos_scale: float):
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    out_cases = []
    for c in reference_cases():
        idx, prompts = c["images"], c["prompts"]
        enc = parts.processor(images_u8[idx], prompts)
        ids, mask, tt = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64), \
            enc["token_type_ids"].astype(np.int64)
        px = pixels[idx]
        pixel_diff = float(np.abs(enc["pixel_values"] - px).max())
        gids, gmask = parts.left_pad([parts.template_ids(p) for p in prompts])
        kw = _gen_kwargs(parts, **c["kw"])
        g = dict(pixel_values=torch.from_numpy(px), input_ids=torch.from_numpy(ids),
                 attention_mask=torch.from_numpy(mask), token_type_ids=torch.from_numpy(tt))
        new = parts.model.generate(**g, **kw)[:, ids.shape[1]:].numpy()
        causal = parts.model.generate(**{k: v for k, v in g.items() if k != "token_type_ids"},
                                      **kw)[:, ids.shape[1]:].numpy()
        prefix = mask * (tt == 0)  # what tessera feeds at the start step: its attention mask
        trimmed = [_trim(r, parts.eos) for r in new]
        out_cases.append({
            "name": c["name"], "images": idx, "prompts": prompts,
            "prompt_texts": [parts.prompt_text(p) for p in prompts],
            "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "token_type_ids": tt.tolist(),
            "template_input_ids": gids.tolist(), "template_attention_mask": gmask.tolist(),
            "generation": dict(kw),
            "output_ids": new.tolist(),
            "new_tokens": [t for t, _ in trimmed], "hit_eos": [h for _, h in trimmed],
            "text": [parts.tok.decode(t, skip_special_tokens=True) for t, _ in trimmed],
            "checks": {
                "template_ids_equal_processor_ids": bool(np.array_equal(ids, gids) and np.array_equal(mask, gmask)),
                "prefix_mask_equal_attention_mask": bool(np.array_equal(prefix, mask)),
                "prefix_lm_mask_equal_hf": check_mask_against_hf(parts, prefix, mask, tt),
                "processor_pixels_max_abs_diff": pixel_diff,
                "causal_generate_differs": bool(not np.array_equal(new, causal)),
            },
        })
        print(f"export: {c['name']}: {[t for t, _ in trimmed]} eos={[h for _, h in trimmed]} "
              f"checks={out_cases[-1]['checks']}", file=sys.stderr)
    c0 = out_cases[0]
    ids0, m0, t0 = (torch.tensor(c0[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    logits0 = parts.model(pixel_values=torch.from_numpy(pixels[c0["images"]]), input_ids=ids0, attention_mask=m0,
                          token_type_ids=t0).logits[0, -1].detach().numpy()
    ref = {
        "description": "PyTorch generate() references for this package (tools/export/export.py paligemma); "
                       "new tokens only, prompt excluded; token_type_ids as PaliGemmaProcessor makes them.",
        "architecture": parts.architecture,
        "seed": seed, "init_std": init_std, "eos_logit_scale": eos_scale,
        "transformers": transformers.__version__, "torch": torch.__version__,
        **C.images_block(names, parts.size, len(names)),
        "mean": parts.mean, "std": parts.std,
        "template": parts.template, "add_bos": parts.add_bos, "image_tokens": parts.tokens,
        "image_token_id": parts.image_token_id,
        "bos_token_id": parts.bos, "eos_token_id": parts.eos, "pad_token_id": parts.pad,
        "position_ids_rule": "cumsum(attention_mask) - 1, 0 where attention_mask == 0 (the graph adds 1)",
        "prefix_mask_rule": "attention_mask on the start step's columns, 0 on generated tokens",
        "cases": out_cases,
        "first_step_logits": {"case": c0["name"], "row": 0,
                              "what": "HF forward logits at the last prompt position",
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
# Manifest, checkpoints, command
# --------------------------------------------------------------------------------------


def write_manifest(path: Path, parts: Parts, *, name: str, trained: bool, source: str,
                   max_new_tokens: int = 20) -> None:
    C.write_toml(path, [
        (None, [("family", "image-text-decoder", ""), ("architecture", parts.architecture, ""),
                ("name", name, ""), ("trained", trained, ""), ("source", source, "")]),
        ("image", [("onnx", "image_prefix.onnx", ""),
                   ("input", "pixel_values", "float32 [B,3,S,S], already normalised"),
                   ("output", "prefix_embeds", "float32 [B,P,H]"),
                   ("tokens", parts.tokens, "P: image tokens per image")]),
        ("embed", [("onnx", "embed_tokens.onnx", ""), ("input", "input_ids", "int64 [B,T]"),
                   ("output", "inputs_embeds", "float32 [B,T,H], times sqrt(H) (Gemma)")]),
        ("decoder", [("onnx", "decoder.onnx", ""), ("inputs_embeds", "inputs_embeds", "float32 [B,T,H]"),
                     ("attention_mask", "attention_mask", "int64 [B,past+T]"),
                     ("position_ids", "position_ids", "int64 [B,T] (0-based; the graph adds 1)"),
                     ("prefix_mask", "prefix_mask", "int64 [B,past+T]: 1 on image + prompt, 0 on generated"),
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
                    ("add_bos", parts.add_bos, "the template carries <bos> after the image tokens")]),
        C.preprocess_section(parts.size, parts.mean, parts.std),
        ("tokenizer", [("file", "tokenizer.json", ""), ("bos_token_id", parts.bos, ""),
                       ("eos_token_id", parts.eos, ""), ("pad_token_id", parts.pad, "")]),
        ("generation", [("max_new_tokens", max_new_tokens, ""), ("num_beams", 1, ""),
                        ("repetition_penalty", 1.0, "")]),
    ])


def load_checkpoint(src: str) -> Parts:
    """A save_pretrained folder (or hub id in the local cache) with the processor files."""
    from transformers import AutoProcessor, PaliGemmaForConditionalGeneration

    pp = C.image_processor_config(src)  # SystemExit when the checkpoint has none
    cfg = C.read_json(src, "config.json") or {}
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
    parts = Parts(model, proc, size, pp["image_mean"], pp["image_std"])
    if getattr(proc, "image_seq_length", parts.tokens) != parts.tokens:
        raise SystemExit(f"export: {src}: the processor expands <image> to {proc.image_seq_length} tokens, "
                         f"the model yields {parts.tokens}")
    proc.tokenizer.padding_side = "left"
    return parts


def export_paligemma(args) -> None:
    out = Path(args.out)
    tv = transformers.__version__
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            seed = DEFAULT_SEED if args.seed is None else args.seed
            init_std = DEFAULT_INIT_STD if args.init_std is None else args.init_std
            eos_scale = DEFAULT_EOS_SCALE if args.eos_scale is None else args.eos_scale
            model, proc = build_tiny(seed, init_std, eos_scale, Path(tmp))
            parts = Parts(model, proc, model.config.vision_config.image_size, MEAN, STD)
            name = args.name or "paligemma-tiny-random"
            source = (f"random init, seed {seed}, init std {init_std}, eos logit scale {eos_scale}, "
                      f"transformers {tv}, torch {torch.__version__}")
            trained = False
            if args.save_pretrained:
                sp = Path(args.save_pretrained)
                model.save_pretrained(sp)
                proc.save_pretrained(sp)
                print(f"export: wrote save_pretrained folder {sp}", file=sys.stderr)
        else:
            parts = load_checkpoint(args.source)
            name = args.name or Path(args.source.rstrip("/")).name
            source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
            trained = True
    out.mkdir(parents=True, exist_ok=True)
    worst = check_decoder_against_hf(parts)
    print(f"export: decoder wrapper vs HF PaliGemma forward (token_type_ids): max diff / max(1, max|ref|) {worst:.3g}",
          file=sys.stderr)
    export_graphs(parts, out, args.opset)
    if not args.skip_verify:
        verify_onnx_against_torch(parts, out, args.tolerance)
    C.save_plain_tokenizer_json(parts.tok, out / "tokenizer.json")
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


def add_parser(sub, command: str) -> None:
    c = sub.add_parser(command, help="export PaliGemma (PaliGemmaForConditionalGeneration, Gemma 1) as an "
                                     "image-text-decoder package",
                       description="Export PaliGemma: image_prefix.onnx, embed_tokens.onnx, decoder.onnx "
                                   "(prefix-LM mask input, KV cache), tokenizer.json, model.toml.")
    C.add_source_args(c, from_help="save_pretrained folder of a PaliGemma checkpoint with its processor files",
                      tiny_help="seeded random model of the real architecture (the test fixture, with reference/)")
    C.add_out_arg(c)
    C.add_opset_arg(c)
    c.add_argument("--seed", type=int, default=None, help=f"--tiny: seed (default {DEFAULT_SEED})")
    c.add_argument("--init-std", type=float, default=None, help=f"--tiny: init std (default {DEFAULT_INIT_STD})")
    c.add_argument("--eos-scale", type=float, default=None,
                   help=f"--tiny: factor on the EOS row of lm_head (default {DEFAULT_EOS_SCALE})")
    c.add_argument("--save-pretrained", metavar="DIR", default=None,
                   help="--tiny: also write the model + processor with save_pretrained (to test --from)")
    C.add_name_arg(c)
    C.add_no_reference_arg(c)
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, 1e-3, "max diff / max(1, max|ref|) allowed between ONNX Runtime and PyTorch")
    c.set_defaults(func=export_paligemma)
