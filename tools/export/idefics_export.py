"""IDEFICS (``IdeficsForVisionText2Text``, Flamingo-style gated cross-attention) ->
``cross-attention-decoder`` packages.

Used by ``export.py idefics`` (tools/export/README.md, "IDEFICS").  A package::

    model.toml     family = "cross-attention-decoder", architecture = "idefics"
    encoder.onnx   pixel_values [B,3,S,S] f32 -> memory [B,N,E] f32: the vision tower and the
                   perceiver resampler (N latents; the ViT's tokens when use_resampler = False),
                   once per tile
    cross_kv.onnx  memory -> cross.{j}.key / cross.{j}.value [B,heads,N,head_dim] for every gated
                   cross-attention layer j (k_proj / v_proj, then k_layer_norm when
                   qk_layer_norms), once per tile, shared by the tile's beams
    decoder.onnx   one merged step graph (prefill = past length 0, then one token a step):
                   input_ids [B,T], attention_mask [B,past+T], position_ids [B,T],
                   image_attention_mask [B,T] (1: the token attends to the tile's image),
                   cross.{j}.*, past.{i}.key/value [B,heads,past,hd]
                   -> logits [B,T,V+additional], present.{i}.*
    tokenizer.json

The step graph re-states HF's eager ``IdeficsModel.forward`` reading every weight from its
modules: Llama decoder layers (RMSNorm, rotary positions from the explicit position ids, SiLU
MLP), and before decoder layer i, when ``i % cross_layer_interval == 0``, the gated
cross-attention layer ``i // cross_layer_interval``: ``h + tanh(alpha_cross_attn) * gate *
cross_attn(norm(h))`` then ``h + tanh(alpha_dense) * mlp(norm(h))``; the decoupled embedding and
LM head (``additional_vocab_size`` extra rows for ``<fake_token_around_image>`` / ``<image>``).

The image attention mask is IdeficsProcessor's (``image_attention_mask_for_packed_input_ids``
with one image per tile): a token attends to the image from the first ``<image>`` token on
(tokens before it, left padding included, do not; a second ``<image>`` or an ``</s>`` closes
it); HF ``generate`` then repeats the last prompt token's row for every new token.  With one
image the mask row of an attending token is all zeros and of the others all ``finfo.min``, and
HF zeroes the cross-attention output of the latter (``cross_attention_gate``): the graph
multiplies the cross-attention output by the 0/1 flag, which is the same.  The runtime builds
the flags from the prompt tokens (``[prompt] image_token_id``, the tokenizer's eos).

Prompt: the manifest's ``[prompt] template`` with ``{prompt}`` replaced, tokenized without
special tokens, is what IdeficsProcessor gives for ``["User:", image, prompt, "\\nAssistant:"]``
with ``add_end_of_utterance_token=True``:
``<s>User:<fake_token_around_image><image><fake_token_around_image>{prompt}<end_of_utterance>\\nAssistant:``
(the reference cases run the processor itself and record its ids).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

FAMILY = "cross-attention-decoder"
DEFAULT_SEED = 0
DEFAULT_INIT_STD = 0.25
#: --tiny: added to the </s> row of the LM head along the mean final hidden state, so that some
#: references end before the limit.
DEFAULT_EOS_SCALE = 0.8
#: IdeficsProcessor's chat form for one image and one text, add_end_of_utterance_token=True.
TEMPLATE = ("<s>User:<fake_token_around_image><image><fake_token_around_image>{prompt}"
            "<end_of_utterance>\nAssistant:")
FAKE, IMAGE, EOU = "<fake_token_around_image>", "<image>", "<end_of_utterance>"

# --------------------------------------------------------------------------------------
# Tiny tokenizer: word level (deterministic), Llama's special tokens + IDEFICS's image tokens
# --------------------------------------------------------------------------------------

_WORDS = ("User Assistant describe this image . what is in the picture ? a an the of with and "
          "forest river city desert farmland lake coast harbor airport mountain glacier wetland "
          "road bridge village field beach island canal dam highway green dense dry flooded bright "
          "dark sandy snowy urban rural small large narrow wide there are many few two three near "
          "next to surrounded by : , satellite aerial photo scene shows showing buildings trees "
          "water fields roads clouds").split()


def build_tiny_tokenizer():
    """(tokenizers.Tokenizer, base vocab size, ids): ``<unk> <s> </s> <end_of_utterance>``, the
    words, then the two additional tokens ``<fake_token_around_image> <image>`` (ids V, V+1:
    the decoupled embedding's extra rows, as in idefics-9b)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    base = ["<unk>", "<s>", "</s>", EOU]
    words = list(dict.fromkeys(_WORDS))
    vocab = {t: i for i, t in enumerate(base + words)}
    V = len(vocab)
    vocab[FAKE], vocab[IMAGE] = V, V + 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ["<unk>", "<s>", "</s>", EOU, FAKE, IMAGE]])
    ids = {t: vocab[t] for t in ["<unk>", "<s>", "</s>", EOU, FAKE, IMAGE]}
    return tok, V, ids


def hf_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>", padding_side="left",
                                   extra_special_tokens={"image_token": IMAGE},
                                   additional_special_tokens=[FAKE, IMAGE, EOU])


def _mean_hidden(model, ids) -> torch.Tensor:
    """The mean final (normed) hidden state over a fixed random text and image (seeded)."""
    g = torch.Generator().manual_seed(11)
    cfg = model.config
    tokens = torch.randint(4, cfg.vocab_size, (2, 12), generator=g)
    tokens[:, 0], tokens[:, 2] = ids["<s>"], ids[IMAGE]
    px = torch.randn(2, 1, 3, cfg.vision_config.image_size, cfg.vision_config.image_size, generator=g)
    imask = torch.ones(2, 12, 1, dtype=torch.long)
    imask[:, :2] = 0
    h = model.model(input_ids=tokens, pixel_values=px, image_attention_mask=imask, use_cache=False).last_hidden_state
    return h.mean(dim=(0, 1))


def build_tiny(seed: int, init_std: float, eos_scale: float):
    """A seeded random ``IdeficsForVisionText2Text`` of the real classes: 4 Llama layers with a
    gated cross-attention layer before layers 0 and 2 (``cross_layer_interval = 2``), a perceiver
    resampler (6 latents), a ViT 40 wide (the text is 32 wide: the cross-attention keys map
    40 -> 32), query/key norms in the cross-attention (as idefics-80b), vector gates drawn
    N(0, 1) (HF initialises them to 0: the image would not matter), an untied head."""
    from transformers import IdeficsConfig, IdeficsForVisionText2Text

    tok, V, ids = build_tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = IdeficsConfig(
        vocab_size=V, additional_vocab_size=2, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=2, cross_layer_interval=2, qk_layer_norms=True, alpha_type="vector",
        alpha_initializer="zeros", max_position_embeddings=64, tie_word_embeddings=False,
        pad_token_id=ids["<unk>"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
        use_resampler=True, freeze_text_layers=False, freeze_vision_layers=False,
        vision_config=dict(embed_dim=40, image_size=32, patch_size=8, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=80),
        perceiver_config=dict(use_resampler=True, resampler_n_latents=6, resampler_depth=2, resampler_n_heads=2,
                              resampler_head_dim=16),
    )
    cfg._attn_implementation = "eager"
    model = IdeficsForVisionText2Text(cfg)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, init_std)
            if getattr(m, "bias", None) is not None:
                nn.init.normal_(m.bias, 0.0, init_std / 4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha_cross_attn") or name.endswith("alpha_dense"):
                p.normal_(0.0, 1.0)
            elif name.endswith("class_embedding") or name.endswith("latents"):
                p.normal_(0.0, 1.0)
        # A random head almost never picks </s>: add eos_scale * the unit mean final hidden state
        # of a sample batch to its row (as a bias would), so that some references end.
        u = _mean_hidden(model, ids)
        model.lm_head.weight[ids["</s>"]] += eos_scale * u / u.norm()
    model.generation_config.pad_token_id = ids["<unk>"]
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.bos_token_id = ids["<s>"]
    model.eval()
    return model, hf_tokenizer(tok)


# --------------------------------------------------------------------------------------
# Wrappers (what goes into the three graphs)
# --------------------------------------------------------------------------------------


class VisionEncoder(nn.Module):
    """HF IdeficsModel.forward's image path: ``vision_model(pixel_values).last_hidden_state``,
    then ``perceiver_resampler`` when ``use_resampler``."""

    def __init__(self, model):
        super().__init__()
        self.v = model.model.vision_model
        self.resampler = model.model.perceiver_resampler if model.config.use_resampler else None

    def forward(self, pixel_values):
        h = self.v(pixel_values=pixel_values).last_hidden_state
        return self.resampler(h) if self.resampler is not None else h


class CrossKV(nn.Module):
    """Every gated cross-attention layer's keys (k_layer_norm applied when qk_layer_norms) and
    values of the memory."""

    def __init__(self, model):
        super().__init__()
        self.layers = model.model.gated_cross_attn_layers

    def forward(self, memory):
        B, M = memory.shape[0], memory.shape[1]
        out = []
        for layer in self.layers:
            a = layer.cross_attn
            k = a.k_proj(memory).view(B, M, a.num_heads, a.head_dim).transpose(1, 2)
            v = a.v_proj(memory).view(B, M, a.num_heads, a.head_dim).transpose(1, 2)
            if a.qk_layer_norms:
                k = a.k_layer_norm(k)
            out += [k, v]
        return tuple(out)


def _additive_mask(attention_mask, ids, dtype):
    """[B,1,T,past+T]: 0 where key j <= query position and mask[b,j] == 1, else finfo.min; a
    padding query attends to itself (no fully masked row; rows of real tokens are HF's)."""
    ones_k = torch.ones_like(attention_mask[:1, :])
    k_idx = torch.cumsum(ones_k, dim=1) - 1
    total = torch.sum(ones_k, dim=1, keepdim=True)
    ones_q = torch.ones_like(ids[:1, :])
    q_idx = torch.cumsum(ones_q, dim=1) - 1 + (total - torch.sum(ones_q, dim=1, keepdim=True))
    causal = k_idx[:, None, :] <= q_idx[:, :, None]
    diag = k_idx[:, None, :] == q_idx[:, :, None]
    allowed = (causal[:, None, :, :] & (attention_mask[:, None, None, :] != 0)) | diag[:, None, :, :]
    return torch.where(allowed, torch.zeros((), dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype))


def _attend(q, k, v, scaling, mask_add=None):
    w = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if mask_add is not None:
        w = w + mask_add
    return torch.matmul(torch.softmax(w, dim=-1), v)


class DecoderStep(nn.Module):
    """HF IdeficsModel (eager) + lm_head with explicit position ids, a tensor self-attention
    cache, precomputed cross keys/values and the per-token image attention flag."""

    def __init__(self, model):
        super().__init__()
        self.m = model.model
        self.head = model.lm_head
        cfg = model.config
        self.n_layers = cfg.num_hidden_layers
        self.n_cross = len(self.m.gated_cross_attn_layers)
        self.interval = cfg.cross_layer_interval
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        from transformers.models.idefics import modeling_idefics as mi

        self._rope = mi.apply_rotary_pos_emb

    def embed(self, ids):
        e = self.m.embed_tokens
        n = e.num_embeddings
        base = nn.functional.embedding(torch.clamp(ids, max=n - 1), e.weight)
        if e.num_additional_embeddings == 0:
            return base
        extra = e.additional_embedding(torch.clamp(ids - n, min=0))
        return torch.where((ids >= n)[..., None], extra, base)

    def forward(self, input_ids, attention_mask, position_ids, image_attention_mask, *kv):
        J = self.n_cross
        cross, past = kv[:2 * J], kv[2 * J:]
        h = self.embed(input_ids)
        B, T = input_ids.shape[0], input_ids.shape[1]
        self_mask = _additive_mask(attention_mask, input_ids, h.dtype)
        gate = (image_attention_mask != 0).to(h.dtype)[:, :, None]
        presents = []
        for i, layer in enumerate(self.m.layers):
            if i % self.interval == 0:
                j = i // self.interval
                g = self.m.gated_cross_attn_layers[j]
                a = g.cross_attn
                x = g.input_layernorm(h)
                q = a.q_proj(x).view(B, T, a.num_heads, a.head_dim).transpose(1, 2)
                if a.qk_layer_norms:
                    q = a.q_layer_norm(q)
                ctx = _attend(q, cross[2 * j], cross[2 * j + 1], a.scaling)
                ctx = a.o_proj(ctx.transpose(1, 2).reshape(B, T, -1))
                h = h + torch.tanh(g.alpha_cross_attn) * (ctx * gate)
                h = h + torch.tanh(g.alpha_dense) * g.mlp(g.post_attention_layernorm(h))
            a = layer.self_attn
            x = layer.input_layernorm(h)
            q = a.q_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
            v = a.v_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
            cos, sin = a.rotary_emb(v, position_ids)
            q, k = self._rope(q, k, cos, sin)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            ctx = _attend(q, k, v, a.scaling, self_mask).transpose(1, 2).reshape(B, T, -1)
            h = h + a.o_proj(ctx)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return (self.head(self.m.norm(h)), *presents)


# --------------------------------------------------------------------------------------
# Model plumbing
# --------------------------------------------------------------------------------------


class Parts:
    """Everything the exporter needs about one loaded IDEFICS model."""

    def __init__(self, model, hf_tok, size: int, mean, std, template: str = TEMPLATE):
        self.model, self.hf_tok = model, hf_tok
        self.size, self.mean, self.std, self.template = size, list(mean), list(std), template
        cfg = model.config
        self.encoder = VisionEncoder(model).eval()
        self.cross = CrossKV(model).eval()
        self.decoder = DecoderStep(model).eval()
        self.layers, self.cross_layers = self.decoder.n_layers, self.decoder.n_cross
        self.heads, self.head_dim = self.decoder.heads, self.decoder.head_dim
        self.hidden = int(cfg.hidden_size)
        self.cross_width = int(cfg.vision_config.embed_dim)
        self.vocab = int(cfg.vocab_size + cfg.additional_vocab_size)
        self.max_positions = int(cfg.max_position_embeddings)
        self.eos = int(hf_tok.eos_token_id)
        self.pad = int(hf_tok.pad_token_id if hf_tok.pad_token_id is not None else 0)
        self.bos = int(hf_tok.bos_token_id)
        self.image_id = int(hf_tok.convert_tokens_to_ids(IMAGE))

    def processor(self):
        from transformers import IdeficsImageProcessor, IdeficsProcessor

        ip = IdeficsImageProcessor(image_size=self.size, image_mean=self.mean, image_std=self.std)
        return IdeficsProcessor(ip, self.hf_tok, image_size=self.size)

    def process(self, images_u8: np.ndarray, prompts: list[str]):
        """IdeficsProcessor on ``["User:", image, prompt, "\\nAssistant:"]`` per item (left padded):
        input_ids, attention_mask, image_attention_mask [B,L,1]."""
        from PIL import Image

        proc = self.processor()
        prompts_lists = [["User:", Image.fromarray(im), p, "\nAssistant:"] for im, p in zip(images_u8, prompts)]
        enc = proc(text=prompts_lists, add_end_of_utterance_token=True, return_tensors="pt")
        return enc

    def template_ids(self, prompt: str) -> list[int]:
        """What the runtime does: the template with the prompt, tokenized without special tokens."""
        return self.hf_tok(self.template.replace("{prompt}", prompt), add_special_tokens=False)["input_ids"]

    def hf_generate(self, images_u8, pixels: np.ndarray, prompts: list[str], **kw):
        enc = self.process(images_u8, prompts)
        px = torch.from_numpy(np.ascontiguousarray(pixels))[:, None]
        out = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                  pixel_values=px, image_attention_mask=enc["image_attention_mask"], **kw)
        L = enc["input_ids"].shape[1]
        new = [trim(r.tolist(), self.eos) for r in out[:, L:]]
        rows = [[int(t) for t, m in zip(ids, mask) if m] for ids, mask in
                zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist())]
        img_mask = [[int(x[0]) for x, m in zip(im, mask) if m] for im, mask in
                    zip(enc["image_attention_mask"].tolist(), enc["attention_mask"].tolist())]
        return new, rows, img_mask, enc


def trim(row: list[int], eos: int) -> list[int]:
    out = []
    for t in row:
        out.append(int(t))
        if t == eos:
            break
    return out


def image_flags(ids: list[int], image_id: int, eos: int) -> list[int]:
    """IdeficsProcessor's image attention for one image (what the runtime implements)."""
    count, seen_eod, out = -1, False, []
    for t in ids:
        if t == image_id:
            count += 1
            seen_eod = False
        out.append(0 if seen_eod or count != 0 else 1)
        if t == eos:
            seen_eod = True
    return out


def empty_past(parts: Parts, batch: int):
    return [torch.zeros(batch, parts.heads, 0, parts.head_dim) for _ in range(2 * parts.layers)]


def check_decoder_against_hf(parts: Parts, images_u8, pixels: np.ndarray) -> float:
    """The step graph (prefill + cached steps) reproduces HF's forward logits on processor inputs."""
    prompts = ["describe this image .", "what is in the picture ?"][:pixels.shape[0]]
    enc = parts.process(images_u8, prompts)
    ids, mask, imask = enc["input_ids"], enc["attention_mask"], enc["image_attention_mask"]
    gen = torch.Generator().manual_seed(7)
    extra = torch.randint(4, parts.vocab - 2, (ids.shape[0], 3), generator=gen)
    ids = torch.cat([ids, extra], 1)
    mask = torch.cat([mask, torch.ones_like(extra)], 1)
    imask = torch.cat([imask, imask[:, -1:].expand(-1, 3, -1)], 1)
    px = torch.from_numpy(np.ascontiguousarray(pixels))
    ref = parts.model(input_ids=ids, attention_mask=mask, pixel_values=px[:, None], image_attention_mask=imask,
                      use_cache=False).logits
    mem = parts.encoder(px)
    cross = parts.cross(mem)
    pos = mask.cumsum(-1) - 1
    pos = pos.masked_fill(mask == 0, 0)
    B, T = ids.shape
    split = T - 3
    flag = imask[..., 0].long()
    out = parts.decoder(ids[:, :split], mask[:, :split], pos[:, :split], flag[:, :split], *cross,
                        *empty_past(parts, B))
    real = mask[:, :split].bool()
    worst = float((out[0] - ref[:, :split]).abs()[real].max())
    past = list(out[1:])
    for t in range(split, T):
        out = parts.decoder(ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], flag[:, t:t + 1], *cross, *past)
        past = list(out[1:])
        worst = max(worst, float((out[0][:, 0] - ref[:, t]).abs().max()))
    if worst > 1e-4:
        raise SystemExit(f"export: decoder wrapper differs from HF IdeficsForVisionText2Text by {worst:.3g}")
    return worst


def io_names(layers: int, cross_layers: int):
    cross = [f"cross.{j}.{kv}" for j in range(cross_layers) for kv in ("key", "value")]
    past = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return cross, past, present


DECODER_INPUTS = ["input_ids", "attention_mask", "position_ids", "image_attention_mask"]


def export_graphs(parts: Parts, out: Path, opset: int, external: int | None = None) -> None:
    """The three graphs; a graph whose weights exceed ``external`` bytes keeps them in one
    ``<graph>.onnx.data`` file next to it (ONNX external data: a protobuf holds 2 GB at most,
    IDEFICS-9B's decoder is 36 GB in float32)."""
    cross_names, past_names, present_names = io_names(parts.layers, parts.cross_layers)
    px = torch.zeros(2, 3, parts.size, parts.size)
    C.export_onnx(parts.encoder, (px,), out / "encoder.onnx", ["pixel_values"], ["memory"],
                  {"pixel_values": {0: "batch"}, "memory": {0: "batch"}}, opset, external_data_bytes=external)
    mem = parts.encoder(px)
    axes = {"memory": {0: "batch", 1: "memory"}}
    axes.update({n: {0: "batch", 2: "memory"} for n in cross_names})
    C.export_onnx(parts.cross, (mem,), out / "cross_kv.onnx", ["memory"], cross_names, axes, opset,
                  external_data_bytes=external)
    cross = parts.cross(mem)
    B, T, P = 2, 3, 2
    ids = torch.full((B, T), parts.bos, dtype=torch.long)
    mask = torch.ones(B, P + T, dtype=torch.long)
    pos = torch.arange(P, P + T)[None].expand(B, -1).contiguous()
    flag = torch.ones(B, T, dtype=torch.long)
    past = [torch.zeros(B, parts.heads, P, parts.head_dim) for _ in range(2 * parts.layers)]
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "new"}, "image_attention_mask": {0: "batch", 1: "new"},
            "logits": {0: "batch", 1: "new"}}
    axes.update({n: {0: "batch", 2: "memory"} for n in cross_names})
    axes.update({n: {0: "batch", 2: "past"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    C.export_onnx(parts.decoder, (ids, mask, pos, flag, *cross, *past), out / "decoder.onnx",
                  [*DECODER_INPUTS, *cross_names, *past_names], ["logits", *present_names], axes, opset,
                  external_data_bytes=external)


def verify_onnx_against_torch(parts: Parts, out: Path, pixels: np.ndarray, tol: float) -> float:
    enc, crs, dec = (C.ort_session(out / n) for n in ("encoder.onnx", "cross_kv.onnx", "decoder.onnx"))
    cross_names, past_names, _ = io_names(parts.layers, parts.cross_layers)
    px = torch.from_numpy(np.ascontiguousarray(pixels))
    mem_t = parts.encoder(px)
    cross_t = parts.cross(mem_t)
    mem = enc.run(None, {"pixel_values": pixels})[0]
    worst = C.rel_diff(mem, mem_t.numpy())
    cross = crs.run(None, {"memory": mem})
    for a, b in zip(cross, cross_t):
        worst = max(worst, C.rel_diff(a, b.numpy()))
    B = pixels.shape[0]
    ids = np.array([[parts.bos, parts.image_id, 9, 12]] * B, np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones((B, 4), np.int64),
             "position_ids": np.tile(np.arange(4, dtype=np.int64), (B, 1)),
             "image_attention_mask": np.array([[0, 1, 1, 1]] * B, np.int64)}
    feeds.update(dict(zip(cross_names, cross)))
    feeds.update({n: np.zeros((B, parts.heads, 0, parts.head_dim), np.float32) for n in past_names})
    got = dec.run(None, feeds)
    ref = parts.decoder(*(torch.from_numpy(feeds[n]) for n in [*DECODER_INPUTS, *cross_names, *past_names]))
    for a, b in zip(got, ref):
        worst = max(worst, C.rel_diff(a, b.numpy()))
    if worst > tol:
        raise SystemExit(f"export: ONNX Runtime differs from PyTorch by {worst:.3g} (> {tol})")
    print(f"export: ONNX Runtime vs PyTorch: max rel diff {worst:.3g}", file=sys.stderr)
    return worst


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------

PROMPTS = ["describe this image .", "what is in the picture ?", "",
           "a satellite photo of the river next to a dense green forest with many roads ."]


def reference_cases(n_images: int) -> list[dict]:
    greedy = dict(max_new_tokens=12, num_beams=1, do_sample=False)
    beams = dict(max_new_tokens=12, num_beams=3, do_sample=False, early_stopping=False, length_penalty=1.0)
    p = PROMPTS
    cases = [dict(name=f"greedy_img{i}", images=[i], prompts=[p[0]], gen=greedy) for i in range(n_images)]
    cases.append(dict(name="greedy_question_img1", images=[1], prompts=[p[1]], gen=greedy))
    cases.append(dict(name="greedy_empty_img2", images=[2], prompts=[""], gen=greedy))
    cases.append(dict(name="beam3_img0", images=[0], prompts=[p[0]], gen=beams))
    cases.append(dict(name="beam3_question_img3", images=[3], prompts=[p[1]], gen=beams))
    cases.append(dict(name="greedy_batch_same", images=list(range(n_images)), prompts=[p[0]] * n_images, gen=greedy))
    cases.append(dict(name="greedy_batch_mixed", images=[1, 2, 3, 0], prompts=p, gen=greedy))
    cases.append(dict(name="beam3_batch_mixed", images=[3, 0, 2], prompts=[p[3], p[2], p[1]], gen=beams))
    cases.append(dict(name="greedy_penalties_img2", images=[2], prompts=[p[1]],
                      gen=dict(max_new_tokens=10, min_new_tokens=6, num_beams=1, do_sample=False,
                               repetition_penalty=1.5)))
    return cases


def compute_references(parts: Parts, meta: dict):
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    out_cases = []
    for c in reference_cases(len(names)):
        idx = c["images"]
        px, ims = np.ascontiguousarray(pixels[idx]), images_u8[idx]
        new, rows, img_mask, _ = parts.hf_generate(ims, px, c["prompts"], **c["gen"])
        alone = [parts.hf_generate(ims[k:k + 1], px[k:k + 1], [pr], **c["gen"])[0][0]
                 for k, pr in enumerate(c["prompts"])]
        for k, pr in enumerate(c["prompts"]):
            if rows[k] != parts.template_ids(pr):
                raise SystemExit(f"export: the template does not give IdeficsProcessor's ids for {pr!r}")
            if img_mask[k] != image_flags(rows[k], parts.image_id, parts.eos):
                raise SystemExit(f"export: image attention rule differs from IdeficsProcessor for {pr!r}")
        gen = {"max_new_tokens": 20, "min_new_tokens": 0, "num_beams": 1, "repetition_penalty": 1.0,
               "length_penalty": 1.0, "early_stopping": False}
        gen.update({k: v for k, v in c["gen"].items() if k != "do_sample"})
        out_cases.append({
            "name": c["name"], "images": idx, "prompts": c["prompts"], "hf_batched": True,
            "prompt_ids": rows, "image_attention_mask": img_mask, "generation": gen,
            "new_tokens": new, "hit_eos": [bool(t and t[-1] == parts.eos) for t in new],
            "text": [parts.hf_tok.decode(t, skip_special_tokens=True) for t in new],
            "checks": {"batch_equals_items": new == alone},
        })
        print(f"export: {c['name']}: {new} batch==items={new == alone}", file=sys.stderr)
    mem = parts.encoder(torch.from_numpy(pixels[:1]))
    ref = {
        "description": "PyTorch IdeficsForVisionText2Text.generate() references (inputs from IdeficsProcessor "
                       "with left padding); new tokens only, prompt excluded.",
        "architecture": "idefics", **meta,
        "transformers": transformers.__version__, "torch": torch.__version__,
        **C.images_block(names, parts.size, len(names)), "mean": parts.mean, "std": parts.std,
        "eos_token_id": parts.eos, "pad_token_id": parts.pad, "image_token_id": parts.image_id,
        "template": parts.template,
        "memory_shape": list(mem.shape), "memory_img0_first8": mem[0, 0, :8].tolist(),
        "cases": out_cases,
    }
    return ref, images_u8, pixels


def degeneracy_report(ref: dict) -> tuple[bool, str]:
    greedy = [c for c in ref["cases"] if c["name"].startswith("greedy_img")]
    outs = [tuple(c["new_tokens"][0]) for c in greedy]
    distinct = len(set(outs)) == len(outs)
    max_distinct = max(len(set(t)) for c in ref["cases"] for t in c["new_tokens"])
    eos = sum(any(c["hit_eos"]) for c in ref["cases"])
    long = sum(not all(c["hit_eos"]) for c in ref["cases"])
    same = all(c["checks"]["batch_equals_items"] for c in ref["cases"])
    ok = distinct and max_distinct >= 4 and eos > 0 and long > 0
    return ok, (f"distinct across images {distinct}, most distinct tokens {max_distinct}, ends in {eos} cases, "
                f"runs to the limit in {long}, every batch equals its items {same}")


# --------------------------------------------------------------------------------------
# Manifest, checkpoints, command
# --------------------------------------------------------------------------------------


def write_manifest(path: Path, parts: Parts, *, name: str, trained: bool, source: str) -> None:
    C.write_toml(path, [
        (None, [("family", FAMILY, ""), ("architecture", "idefics", ""), ("name", name, ""),
                ("trained", trained, ""), ("source", source, "")]),
        ("encoder", [("onnx", "encoder.onnx", "vision tower + perceiver resampler, once per tile"),
                     ("pixel_values", "pixel_values", "float32 [B,3,S,S], already normalised"),
                     ("memory", "memory", "float32 [B,N,E]: the resampled latents")]),
        ("cross", [("onnx", "cross_kv.onnx", "once per tile, shared by its beams"),
                   ("memory", "memory", "float32 [B,N,E]"),
                   ("key", "cross.{i}.key", "float32 [B,heads,N,head_dim], {i} = gated cross-attention layer"),
                   ("value", "cross.{i}.value", "")]),
        ("decoder", [("onnx", "decoder.onnx", "one step graph (prefill: past length 0)"),
                     ("input_ids", "input_ids", "int64 [B,T]"),
                     ("attention_mask", "attention_mask", "int64 [B,past+T] (self-attention)"),
                     ("position_ids", "position_ids", "int64 [B,T]"),
                     ("image_attention", "image_attention_mask", "int64 [B,T]: 1 where the token attends to the image"),
                     ("cross_key", "cross.{i}.key", ""), ("cross_value", "cross.{i}.value", ""),
                     ("past_key", "past.{i}.key", "float32 [B,heads,past,head_dim]"),
                     ("past_value", "past.{i}.value", ""),
                     ("logits", "logits", "float32 [B,T,V]"),
                     ("present_key", "present.{i}.key", "float32 [B,heads,past+T,head_dim]"),
                     ("present_value", "present.{i}.value", ""),
                     ("layers", parts.layers, "self-attention layers"),
                     ("cross_layers", parts.cross_layers, "gated cross-attention layers"),
                     ("heads", parts.heads, ""), ("head_dim", parts.head_dim, ""), ("hidden", parts.hidden, ""),
                     ("cross_width", parts.cross_width, "E: the vision width the cross-attention takes"),
                     ("vocab", parts.vocab, "vocab_size + additional_vocab_size"),
                     ("max_positions", parts.max_positions, "longest prompt + generated sequence")]),
        ("prompt", [("template", parts.template, "IdeficsProcessor's text for [\"User:\", image, prompt, \"\\nAssistant:\"]"),
                    ("add_special_tokens", False, "the template has <s>"),
                    ("image_token_id", parts.image_id, "<image>: tokens from it on attend to the image")]),
        C.preprocess_section(parts.size, parts.mean, parts.std),
        ("tokenizer", [("file", "tokenizer.json", ""), ("bos_token_id", parts.bos, "<s>"),
                       ("eos_token_id", parts.eos, "</s>: generation ends here"),
                       ("pad_token_id", parts.pad, "")]),
        ("generation", [("max_new_tokens", 20, ""), ("num_beams", 1, ""), ("repetition_penalty", 1.0, "")]),
    ])


def load_checkpoint(src: str) -> Parts:
    from transformers import AutoTokenizer, IdeficsForVisionText2Text

    pp = C.image_processor_config(src)
    tok = AutoTokenizer.from_pretrained(src)
    tok.padding_side = "left"
    model = IdeficsForVisionText2Text.from_pretrained(src, attn_implementation="eager", dtype=torch.float32).eval()
    vc = model.config.vision_config
    size = C.square_size(pp, vc.image_size)
    if size != vc.image_size:
        raise ValueError(f"image processor size {size} != vision_config.image_size {vc.image_size}")
    return Parts(model, tok, size, pp["image_mean"], pp["image_std"])


GRAPH_FILES = ("encoder.onnx", "cross_kv.onnx", "decoder.onnx")


def export_idefics(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tv = transformers.__version__
    if args.tiny:
        seed = DEFAULT_SEED if args.seed is None else args.seed
        init_std = DEFAULT_INIT_STD if args.init_std is None else args.init_std
        eos_scale = DEFAULT_EOS_SCALE if args.eos_scale is None else args.eos_scale
        model, tok = build_tiny(seed, init_std, eos_scale)
        if args.save_pretrained:
            model.save_pretrained(args.save_pretrained)
            tok.save_pretrained(args.save_pretrained)
            parts = Parts(model, tok, model.config.vision_config.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
            parts.processor().save_pretrained(args.save_pretrained)
            print(f"export: saved the tiny model to {args.save_pretrained}", file=sys.stderr)
        parts = Parts(model, tok, model.config.vision_config.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        name = args.name or "idefics-tiny-random"
        source = (f"random init, seed {seed}, init std {init_std}, </s> head row + {eos_scale} x mean hidden direction, untied head, "
                  f"transformers {tv}, torch {torch.__version__}")
        trained = False
        meta = {"seed": seed, "init_std": init_std, "eos_row_scale": eos_scale}
    else:
        parts = load_checkpoint(args.source)
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
        trained = True
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    worst = check_decoder_against_hf(parts, images_u8[:2], pixels[:2])
    print(f"export: decoder wrapper vs HF IdeficsForVisionText2Text: max abs diff {worst:.3g}", file=sys.stderr)
    external = int(args.external_data_over * (1 << 20))
    export_graphs(parts, out, args.opset, external)
    if args.fp16:
        for g in GRAPH_FILES:
            C.to_fp16(out / g)
        source += ", fp16"
    if not args.skip_verify:
        verify_onnx_against_torch(parts, out, pixels[:3], max(args.tolerance, C.FP16_TOLERANCE) if args.fp16 else args.tolerance)
    for g in GRAPH_FILES:
        if (out / (g + ".data")).exists():
            print(f"export: {g}: weights in {g}.data (external data)", file=sys.stderr)
    C.save_plain_tokenizer_json(parts.hf_tok, out / "tokenizer.json")
    write_manifest(out / "model.toml", parts, name=name, trained=trained, source=source)
    if args.tiny and not args.no_reference and args.fp16:
        print("export: --fp16: no reference.json (the references are float32 Hugging Face generate)", file=sys.stderr)
    elif args.tiny and not args.no_reference:
        ref, images_u8, pixels = compute_references(parts, meta)
        ok, msg = degeneracy_report(ref)
        ref["degeneracy_check"] = {"ok": ok, "summary": msg}
        print(f"export: reference outputs: {msg}", file=sys.stderr)
        if not ok:
            print("export: WARNING the reference outputs are degenerate (see above)", file=sys.stderr)
        C.write_reference(out, ref, C.image_bins(images_u8, pixels))
    C.report_done(out)


def add_parser(sub, command: str) -> None:
    """Add the ``idefics`` subcommand (export.py's subparsers)."""
    c = sub.add_parser(command, help="export IDEFICS (IdeficsForVisionText2Text) as a cross-attention-decoder package",
                       description="Export IDEFICS: encoder.onnx (vision tower + perceiver resampler), cross_kv.onnx "
                                   "(every gated cross-attention layer's keys/values), decoder.onnx (Llama decoder "
                                   "step with the gated cross-attention layers inside, self-attention cache), "
                                   "tokenizer.json, model.toml.")
    C.add_source_args(c, from_help="a save_pretrained folder of IdeficsForVisionText2Text with its processor files",
                      tiny_help="seeded random IdeficsForVisionText2Text of the real classes")
    C.add_out_arg(c)
    C.add_opset_arg(c)
    c.add_argument("--seed", type=int, default=None, help=f"--tiny: seed (default {DEFAULT_SEED})")
    c.add_argument("--init-std", type=float, default=None, help=f"--tiny: init std (default {DEFAULT_INIT_STD})")
    c.add_argument("--eos-scale", type=float, default=None,
                   help=f"--tiny: added to the </s> row of the LM head along the mean hidden state (default {DEFAULT_EOS_SCALE})")
    c.add_argument("--save-pretrained", default=None,
                   help="--tiny: also save the random model, tokenizer and processor there (for a --from round trip)")
    C.add_name_arg(c)
    C.add_no_reference_arg(c)
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, 1e-4, "max diff / max(1, max|ref|) allowed between ONNX Runtime and PyTorch "
                                 f"(default 1e-4; at least {C.FP16_TOLERANCE} with --fp16)")
    c.add_argument("--external-data-over", type=float, default=1024.0, metavar="MIB",
                   help="a graph whose weights exceed MIB mebibytes keeps them in <graph>.onnx.data next to it "
                        "(ONNX external data; default 1024: IDEFICS-9B/80B; 0 forces it for every graph)")
    c.add_argument("--fp16", action="store_true",
                   help="store weights and compute in float16 (graph inputs/outputs stay float32; model.toml "
                        "gets precision = \"fp16\"; --tiny writes no reference.json then)")
    c.set_defaults(func=export_idefics)
