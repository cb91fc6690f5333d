"""SmolVLM (Idefics3 layout: SigLIP, pixel-shuffle connector, SmolLM2 / Llama decoder)
-> ``image-text-decoder`` packages (``export.py smolvlm``).

Hugging Face ``Idefics3ForConditionalGeneration`` (the SmolVLM-256M/500M/Instruct checkpoints) or
``SmolVLMForConditionalGeneration`` (SmolVLM2), transformers 5.24, one image per prompt, **image
splitting off**: a tile is already small, so it is the processor's single "global" image of
``image_seq_len = (S / patch)^2 / scale_factor^2`` tokens.  The package is the image-text-decoder
layout (decoder_export.py, tools/export/README.md)::

    image_prefix.onnx   pixel_values [B,3,S,S] -> prefix_embeds [B,P,H]
                        (SigLIP patch + position embeddings, encoder, post_layernorm, pixel shuffle
                        by scale_factor, modality projection)
    embed_tokens.onnx   input_ids [B,T] -> inputs_embeds [B,T,H]
    decoder.onnx        Llama (SmolLM2) with KV cache, as for LLaVA

The prompt is the processor's: the chat template ``<|im_start|>User:<image>{prompt}<end_of_utterance>
\\nAssistant:`` with ``<image>`` expanded by ``Idefics3Processor`` (``do_image_splitting=False``) to
``<fake_token_around_image><global-img>`` + P x ``<image>`` + ``<fake_token_around_image>``; no BOS is
added by the tokenizer (``<|im_start|>`` is literal text).  Generation ends at ``<end_of_utterance>``.

``--tiny`` builds a seeded random ``Idefics3ForConditionalGeneration`` with a tiny byte-level BPE
tokenizer carrying SmolVLM's special tokens, and computes references with the real
``Idefics3Processor`` (text and pixels) and HF ``generate``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C

DEFAULT_SEED = 0
DEFAULT_EOS_SCALE = 2.0
DEFAULT_INIT_STD = 1.0
MEAN = [0.5, 0.5, 0.5]
STD = [0.5, 0.5, 0.5]
#: SmolVLM's chat template (user turn: image, then text; generation prompt "Assistant:").
CHAT_TEMPLATE = ("<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
                 "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
                 "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
                 "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
                 "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
#: The same prompt as a tessera template ({image}: P image tokens).
TEMPLATE = ("<|im_start|>User:<fake_token_around_image><global-img>{image}<fake_token_around_image>"
            "{prompt}<end_of_utterance>\nAssistant:")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
            "<end_of_utterance>", "<global-img>"]
REF_PROMPTS = ["What is in this image?", "Describe it.",
               "Is there a river or a forest in this satellite scene, and where?"]

_SUBJECTS = ["forest", "river", "city", "desert", "farmland", "lake", "coast", "harbor", "airport",
             "mountain", "glacier", "wetland", "road", "bridge", "village", "field", "beach", "island"]
_ADJS = ["dense", "green", "dry", "flooded", "bright", "dark", "sandy", "snowy", "urban", "rural"]
_FRAMES = ["User: what is in this image? Assistant: a {a} {s}.",
           "User: describe it. Assistant: an aerial photo of the {s} with {a} {t}.",
           "a satellite image of a {a} {s} next to a {t}",
           "is there a {s} in this scene? yes, a {a} one near the {t}, and where?"]


# --------------------------------------------------------------------------------------
# Tiny tokenizer and model
# --------------------------------------------------------------------------------------


def build_tiny_tokenizer(vocab_size: int = 400):
    """Byte-level BPE (SmolLM2's kind) with SmolVLM's special tokens; no BOS post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = []
    for i in range(240):
        s, t = _SUBJECTS[i % len(_SUBJECTS)], _SUBJECTS[(i * 7 + 3) % len(_SUBJECTS)]
        lines.append(_FRAMES[i % len(_FRAMES)].format(a=_ADJS[(i * 5 + i // 9) % len(_ADJS)], s=s, t=t))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines + REF_PROMPTS, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>", padding_side="left",
        extra_special_tokens={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                              "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_processor(tok, size: int, tokens: int):
    """The real ``Idefics3Processor``, image splitting off, tiles of ``size`` (no resize)."""
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    ip = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": size},
                                max_image_size={"longest_edge": size}, image_mean=MEAN, image_std=STD)
    return Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=tokens, chat_template=CHAT_TEMPLATE)


def _reinit(model: nn.Module, std: float) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.normal_(m.bias, 0.0, std / 4)
        elif isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_tiny(seed: int, init_std: float, eos_scale: float):
    """(model, processor): seeded random Idefics3 (SigLIP 32 px / patch 4 -> 64 patches, pixel
    shuffle 2 -> 16 image tokens; Llama 2 layers, hidden 64, 4 heads, 2 kv heads)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    tok = build_tiny_tokenizer()
    size, patch, scale = 32, 4, 2
    tokens = (size // patch) ** 2 // scale ** 2
    proc = build_processor(tok, size, tokens)
    tok = proc.tokenizer
    V = len(tok)
    torch.manual_seed(seed)
    cfg = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=size, patch_size=patch),
        text_config=dict(model_type="llama", vocab_size=V, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )
    cfg._attn_implementation = "eager"
    model = Idefics3ForConditionalGeneration(cfg)
    _reinit(model, init_std)
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] *= eos_scale
    model.eval()
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    return model, proc


# --------------------------------------------------------------------------------------
# Wrappers
# --------------------------------------------------------------------------------------


def _full_image_position_ids(emb, n: int) -> torch.Tensor:
    """The vision position ids HF computes for a full (unpadded) n x n-patch image
    (Idefics3VisionEmbeddings.forward with an all-ones patch mask), batch 1."""
    side = emb.num_patches_per_side
    boundaries = torch.arange(1 / side, 1.0, 1 / side)
    idx = torch.arange(n, dtype=torch.float32)
    frac = torch.clamp(idx[None, :] * (1.0 / torch.tensor([float(n)]))[:, None], max=1 - 1e-6)
    b = torch.bucketize(frac, boundaries, right=True)
    return (b[:, :, None] * side + b[:, None, :]).reshape(1, -1)


class Prefix(nn.Module):
    """Pixels -> image tokens: SigLIP embeddings (position ids of a full image, precomputed: the
    graph has no bucketize), encoder, post_layernorm, connector (pixel shuffle + projection)."""

    def __init__(self, model, size: int):
        super().__init__()
        self.m = model.model
        vm = self.m.vision_model
        n = size // vm.embeddings.patch_size
        self.register_buffer("pos", _full_image_position_ids(vm.embeddings, n), persistent=False)

    def forward(self, pixel_values):
        vm = self.m.vision_model
        e = vm.embeddings
        h = e.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        h = h + e.position_embedding(self.pos)
        h = vm.encoder(inputs_embeds=h).last_hidden_state
        h = vm.post_layernorm(h)
        return self.m.connector(h)


class EmbedTokens(nn.Module):
    def __init__(self, emb: nn.Module):
        super().__init__()
        self.emb = emb

    def forward(self, input_ids):
        return self.emb(input_ids)


def causal_mask(attention_mask, q_len_like, dtype) -> torch.Tensor:
    """[B,1,T,K] additive causal + padding mask (a padding query may see itself)."""
    ones_k = torch.ones_like(attention_mask[:1, :])
    k_idx = torch.cumsum(ones_k, dim=1) - 1
    total = torch.sum(ones_k, dim=1, keepdim=True)
    ones_q = torch.ones_like(q_len_like[:1, :, 0], dtype=torch.long)
    q_idx = torch.cumsum(ones_q, dim=1) - 1 + (total - torch.sum(ones_q, dim=1, keepdim=True))
    causal = k_idx[:, None, :] <= q_idx[:, :, None]
    diag = k_idx[:, None, :] == q_idx[:, :, None]
    allowed = (causal[:, None] & (attention_mask[:, None, None, :] != 0)) | diag[:, None]
    return torch.where(allowed, torch.zeros((), dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype))


def _attend(q, k, v, mask_add, n_rep: int, scaling: float):
    if n_rep > 1:
        b, h, s, d = k.shape
        k = k[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)
        v = v[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)
    w = torch.matmul(q, k.transpose(2, 3)) * scaling + mask_add
    w = torch.softmax(w.float(), dim=-1).to(q.dtype)
    return torch.matmul(w, v).transpose(1, 2)


class LlamaDecoderStep(nn.Module):
    """HF LlamaModel (SmolLM2) + lm_head, eager, explicit positions and a tensor KV cache."""

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
        mask_add = causal_mask(attention_mask, inputs_embeds, h.dtype)
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
    """One loaded SmolVLM: model, tokenizer (+ processor for --tiny), wrappers, prompt rule."""

    def __init__(self, model, tok, size: int, mean, std, proc=None):
        self.model, self.tok, self.proc = model, tok, proc
        self.size, self.mean, self.std = size, list(mean), list(std)
        cfg = model.config
        tc = cfg.text_config
        if tc.model_type != "llama":
            raise SystemExit(f"export: smolvlm: the language model is '{tc.model_type}'; only Llama "
                             "(SmolLM2) is supported")
        self.architecture = "smolvlm-llama"
        self.prefix = Prefix(model, size).eval()
        self.embed = EmbedTokens(model.model.text_model.get_input_embeddings()).eval()
        self.decoder = LlamaDecoderStep(model.model.text_model, model.lm_head, tc).eval()
        vc = cfg.vision_config
        self.tokens = (size // vc.patch_size) ** 2 // cfg.scale_factor ** 2
        self.image_token_id = int(cfg.image_token_id)
        self.image_token = self.tok.convert_ids_to_tokens(self.image_token_id)
        self.template = TEMPLATE
        self.add_bos = False
        d = self.decoder
        self.layers, self.kv_heads, self.head_dim = d.n_layers, d.kv_heads, d.head_dim
        self.hidden = int(tc.hidden_size)
        self.vocab = int(tc.vocab_size)
        self.max_positions = int(tc.max_position_embeddings)
        eos = model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tok.convert_tokens_to_ids("<end_of_utterance>")
        self.eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        self.bos = self.tok.bos_token_id
        pad = model.generation_config.pad_token_id
        self.pad = pad if pad is not None else (self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos)

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
        """HF Idefics3Processor on the chat template: input_ids, attention_mask, pixel_values
        [B,1,3,S,S], pixel_attention_mask."""
        from PIL import Image

        msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}] for p in prompts]
        texts = [self.proc.apply_chat_template(m, add_generation_prompt=True) for m in msgs]
        imgs = [[Image.fromarray(np.ascontiguousarray(x))] for x in images_u8]
        self.proc.tokenizer.padding_side = "left"
        enc = self.proc(text=texts, images=imgs, padding=True, return_tensors="np")
        out = {k: np.asarray(v) for k, v in enc.items()}
        out["texts"] = texts
        return out


def position_ids_from_mask(mask: np.ndarray) -> np.ndarray:
    p = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 0, p).astype(np.int64)


def empty_past(parts: Parts, batch: int, length: int = 0) -> list[torch.Tensor]:
    return [torch.zeros(batch, parts.kv_heads, length, parts.head_dim) for _ in range(2 * parts.layers)]


def check_prefix_against_hf(parts: Parts, tol: float = 1e-5) -> float:
    """The image prefix equals HF's get_image_features (vision model with its own position ids,
    connector) on random pixels."""
    px = torch.randn(2, 3, parts.size, parts.size, generator=torch.Generator().manual_seed(3))
    ref = parts.model.model.get_image_features(px[:, None]).pooler_output
    ref = torch.stack(list(ref)) if isinstance(ref, (list, tuple)) else ref.reshape(2, parts.tokens, -1)
    got = parts.prefix(px)
    worst = float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))
    if not worst < tol:
        raise RuntimeError(f"image prefix differs from HF by {worst}")
    return worst


def check_decoder_against_hf(parts: Parts, tol: float = 1e-5) -> float:
    """The Llama step (prefill + cached steps) reproduces HF's text model + lm_head logits."""
    gen = torch.Generator().manual_seed(7)
    B, T = 2, 9
    emb = torch.randn(B, T, parts.hidden, generator=gen)
    mask = np.ones((B, T), np.int64)
    mask[1, :3] = 0
    pos = position_ids_from_mask(mask)
    out = parts.model.model.text_model(inputs_embeds=emb, attention_mask=torch.from_numpy(mask),
                                       position_ids=torch.from_numpy(pos), use_cache=False)
    ref = parts.model.lm_head(out.last_hidden_state)
    valid = torch.from_numpy(mask).bool()
    worst = 0.0
    for split in (T, 5):
        res = parts.decoder(emb[:, :split], torch.from_numpy(mask[:, :split]), torch.from_numpy(pos[:, :split]),
                            *empty_past(parts, B))
        logits, past = [res[0]], list(res[1:])
        for t in range(split, T):
            res = parts.decoder(emb[:, t:t + 1], torch.from_numpy(mask[:, :t + 1]),
                                torch.from_numpy(pos[:, t:t + 1]), *past)
            logits.append(res[0])
            past = list(res[1:])
        got = torch.cat(logits, 1)
        worst = max(worst, float((got - ref).abs()[valid].max()) / max(1.0, float(ref.abs()[valid].max())))
    if not worst < tol:
        raise RuntimeError(f"decoder wrapper differs from HF by {worst}")
    return worst


# --------------------------------------------------------------------------------------
# Export and verification
# --------------------------------------------------------------------------------------


def decoder_io_names(layers: int) -> tuple[list[str], list[str]]:
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
            "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    for n in ins[3:]:
        axes[n] = {0: "batch", 2: "past"}
    for n in outs[1:]:
        axes[n] = {0: "batch", 2: "total"}
    past_len, T = 3, 2
    args = (torch.randn(B, T, parts.hidden), torch.ones(B, past_len + T, dtype=torch.long),
            torch.arange(past_len, past_len + T).repeat(B, 1), *empty_past(parts, B, past_len))
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
        worst["embed"] = max(worst["embed"], C.rel_diff(emb.run(None, {"input_ids": ids.numpy()})[0],
                                                        parts.embed(ids).numpy()))
        T = 7
        e = torch.randn(B, T, parts.hidden, generator=gen)
        mask = np.ones((B, T), np.int64)
        if B > 1:
            mask[1, :2] = 0
        pos = position_ids_from_mask(mask)
        for steps in ([T], [4, 5, 7]):
            past_t = empty_past(parts, B)
            past_o = [p.numpy() for p in past_t]
            t0 = 0
            for t1 in steps:
                sl = slice(t0, t1)
                ref = parts.decoder(e[:, sl], torch.from_numpy(mask[:, :t1]), torch.from_numpy(pos[:, sl]), *past_t)
                feed = {"inputs_embeds": e[:, sl].numpy(), "attention_mask": mask[:, :t1], "position_ids": pos[:, sl]}
                feed.update(dict(zip(ins[3:], past_o)))
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
# References (--tiny): HF processor + generate
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


def hf_lm_inputs_embeds(parts: Parts, g: dict) -> torch.Tensor:
    """The inputs_embeds HF's own forward feeds its text model (captured with a hook)."""
    seen = []
    h = parts.model.model.text_model.register_forward_pre_hook(
        lambda mod, a, k: seen.append(k.get("inputs_embeds")), with_kwargs=True)
    try:
        parts.model.generate(**g, max_new_tokens=1, do_sample=False, num_beams=1)
    finally:
        h.remove()
    return seen[0]


def assemble_embeds(parts: Parts, ids: np.ndarray, pixels: np.ndarray) -> torch.Tensor:
    emb = parts.embed(torch.from_numpy(ids)).clone()
    pre = parts.prefix(torch.from_numpy(pixels))
    for b in range(ids.shape[0]):
        rows = np.nonzero(ids[b] == parts.image_token_id)[0]
        assert len(rows) == parts.tokens, (len(rows), parts.tokens)
        emb[b, torch.from_numpy(rows)] = pre[b]
    return emb


def compute_references(parts: Parts, seed: int, init_std: float, eos_scale: float):
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    out_cases = []
    for c in reference_cases():
        idx, prompts = c["images"], c["prompts"]
        enc = parts.processor(images_u8[idx], prompts)
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        px = pixels[idx]
        pixel_diff = float(np.abs(enc["pixel_values"][:, 0] - px).max())
        gids, gmask = parts.left_pad([parts.template_ids(p) for p in prompts])
        kw = _gen_kwargs(parts, **c["kw"])
        g = dict(pixel_values=torch.from_numpy(px[:, None]), pixel_attention_mask=torch.from_numpy(
            enc["pixel_attention_mask"]), input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        new = parts.model.generate(**g, **kw)[:, ids.shape[1]:].numpy()
        hf_emb = hf_lm_inputs_embeds(parts, g)
        emb_diff = float((hf_emb - assemble_embeds(parts, ids, px)).abs()[torch.from_numpy(mask).bool()].max())
        trimmed = [_trim(r, parts.eos) for r in new]
        out_cases.append({
            "name": c["name"], "images": idx, "prompts": prompts,
            "prompt_texts": [parts.prompt_text(p) for p in prompts],
            "processor_texts": enc["texts"],
            "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
            "template_input_ids": gids.tolist(), "template_attention_mask": gmask.tolist(),
            "generation": dict(kw),
            "output_ids": new.tolist(),
            "new_tokens": [t for t, _ in trimmed], "hit_eos": [h for _, h in trimmed],
            "text": [parts.tok.decode(t, skip_special_tokens=True) for t, _ in trimmed],
            "checks": {
                "template_ids_equal_processor_ids": bool(np.array_equal(ids, gids) and np.array_equal(mask, gmask)),
                "processor_pixels_max_abs_diff": pixel_diff,
                "pixel_attention_mask_all_ones": bool(np.all(enc["pixel_attention_mask"] == 1)),
                "lm_inputs_embeds_max_abs_diff": emb_diff,
            },
        })
        print(f"export: {c['name']}: {[t for t, _ in trimmed]} eos={[h for _, h in trimmed]} "
              f"checks={out_cases[-1]['checks']}", file=sys.stderr)
    c0 = out_cases[0]
    g0 = dict(pixel_values=torch.from_numpy(pixels[c0["images"]][:, None]), input_ids=torch.tensor(c0["input_ids"]),
              attention_mask=torch.tensor(c0["attention_mask"]))
    logits0 = parts.model(**g0).logits[0, -1].detach().numpy()
    ref = {
        "description": "PyTorch generate() references for this package (tools/export/export.py smolvlm); "
                       "new tokens only, prompt excluded; prompts and pixels from Idefics3Processor.",
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
        "first_step_logits": {"case": c0["name"], "row": 0, "what": "HF forward logits at the last prompt position",
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
                   ("tokens", parts.tokens, "P: image tokens per image ((S/patch)^2 / scale_factor^2)")]),
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
                    ("add_bos", parts.add_bos, "<|im_start|> is in the template")]),
        C.preprocess_section(parts.size, parts.mean, parts.std),
        ("tokenizer", [("file", "tokenizer.json", ""), ("bos_token_id", parts.bos, ""),
                       ("eos_token_id", parts.eos, "<end_of_utterance>"), ("pad_token_id", parts.pad, "")]),
        ("generation", [("max_new_tokens", max_new_tokens, ""), ("num_beams", 1, ""),
                        ("repetition_penalty", 1.0, "")]),
    ])


def load_checkpoint(src: str) -> Parts:
    """A save_pretrained folder of an Idefics3 / SmolVLM checkpoint with its processor files.

    The processor is not instantiated (SmolVLMProcessor needs num2words); its settings are read
    from processor_config.json / preprocessor_config.json and checked against the model."""
    from transformers import AutoTokenizer

    pp = C.image_processor_config(src)  # SystemExit when the checkpoint has none
    cfg = C.read_json(src, "config.json") or {}
    mt = cfg.get("model_type")
    if mt == "idefics3":
        from transformers import Idefics3ForConditionalGeneration as Cls
    elif mt == "smolvlm":
        from transformers import SmolVLMForConditionalGeneration as Cls
    else:
        raise SystemExit(f"export: {src}: config.json model_type is {mt!r}, not 'idefics3' or 'smolvlm'")
    tok = AutoTokenizer.from_pretrained(src)
    missing = [t for t in SPECIALS[1:] if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if missing:
        raise SystemExit(f"export: {src}: the tokenizer lacks SmolVLM's special tokens {missing}")
    model = Cls.from_pretrained(src, attn_implementation="eager", dtype=torch.float32).eval()
    vc = model.config.vision_config
    mx = (pp.get("max_image_size") or {}).get("longest_edge", vc.image_size)
    if mx != vc.image_size:
        raise SystemExit(f"export: {src}: max_image_size {mx} != vision_config.image_size {vc.image_size}")
    parts = Parts(model, tok, vc.image_size, pp["image_mean"], pp["image_std"])
    pc = C.read_json(src, "processor_config.json") or {}
    if pc.get("image_seq_len", parts.tokens) != parts.tokens:
        raise SystemExit(f"export: {src}: processor image_seq_len {pc['image_seq_len']} != the model's "
                         f"{parts.tokens} image tokens")
    return parts


def export_smolvlm(args) -> None:
    out = Path(args.out)
    tv = transformers.__version__
    if args.tiny:
        seed = DEFAULT_SEED if args.seed is None else args.seed
        init_std = DEFAULT_INIT_STD if args.init_std is None else args.init_std
        eos_scale = DEFAULT_EOS_SCALE if args.eos_scale is None else args.eos_scale
        model, proc = build_tiny(seed, init_std, eos_scale)
        parts = Parts(model, proc.tokenizer, model.config.vision_config.image_size, MEAN, STD, proc=proc)
        name = args.name or "smolvlm-tiny-random"
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
    w_pre = check_prefix_against_hf(parts)
    w_dec = check_decoder_against_hf(parts)
    print(f"export: wrappers vs HF (max diff / max(1, max|ref|)): image prefix {w_pre:.3g}, decoder {w_dec:.3g}",
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
    c = sub.add_parser(command, help="export SmolVLM (Idefics3ForConditionalGeneration / "
                                     "SmolVLMForConditionalGeneration) as an image-text-decoder package",
                       description="Export SmolVLM, image splitting off: image_prefix.onnx, embed_tokens.onnx, "
                                   "decoder.onnx (KV cache), tokenizer.json, model.toml.")
    C.add_source_args(c, from_help="save_pretrained folder of an Idefics3 / SmolVLM checkpoint with its processor files",
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
    c.set_defaults(func=export_smolvlm)
