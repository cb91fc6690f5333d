"""OpenFlamingo (the ``open_flamingo`` package's ``Flamingo``: an open_clip ViT, a perceiver
resampler, gated cross-attention blocks inserted into a Hugging Face causal LM) ->
``cross-attention-decoder`` packages, in the layout of ``export.py idefics``.

Used by ``export.py openflamingo`` (tools/export/README.md, "OpenFlamingo").  The graphs::

    encoder.onnx   pixel_values -> memory [B,N,D]: ``vision_encoder(x)[1]`` (open_clip ViT
                   tokens, ``output_tokens = True``) then ``perceiver`` (T = F = 1)
    cross_kv.onnx  memory -> cross.{j}.key/value: ``to_kv(memory).chunk(2)`` of every
                   ``gated_cross_attn_layer`` j (the layers i with (i + 1) % n == 0)
    decoder.onnx   the Llama decoder step with, before layer i, its ``GatedCrossAttentionBlock``:
                   ``h + tanh(attn_gate) * to_out(flag * attn(norm(h)))`` then
                   ``h + tanh(ff_gate) * ff(h)``

Media locations (``MaskedCrossAttention``, ``only_attend_immediate_media = True``): a token's
``text_time`` is the count of ``<image>`` tokens up to it; it attends to the image whose number
equals it and its attention is zeroed where it is 0.  With one ``<image>`` per tile that is the
runtime's flag rule (0 before ``<image>``, 1 from it on; new tokens keep the last flag, as
``use_cached_media`` does).  The one difference from IDEFICS's rule: the runtime closes the image
after an end token (``<|endofchunk|>`` here) inside the prompt, OpenFlamingo does not; the
template has none.

References: ``Flamingo.generate`` itself does not run with transformers 5.24
(``FlamingoLMMixin.forward() missing 1 required positional argument: 'attention_mask'``: HF
``generate`` no longer passes it positionally on every call).  The references are HF
``generate`` on the Flamingo language model exactly as ``Flamingo.generate`` drives it
(vision encoded and conditioned once, ``_use_cached_vision_x = True``, ``eos_token_id =
<|endofchunk|>``, vision repeated for beams), with ``FlamingoLMMixin.forward`` given
``attention_mask=None`` as a default (the only change); every greedy case is also checked
against a greedy loop over ``Flamingo.forward`` without a cache (whole sequence each step).
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
DEFAULT_EOS_SCALE = 0.8
TEMPLATE = "<image>{prompt}"
EOC, IMAGE, PAD = "<|endofchunk|>", "<image>", "<PAD>"

_WORDS = ("An image of a an the with and forest river city desert farmland lake coast harbor airport "
          "mountain glacier wetland road bridge village field beach island canal dam highway green dense "
          "dry flooded bright dark sandy snowy urban rural small large narrow wide there are many few two "
          "three near next to surrounded by satellite aerial photo scene showing buildings trees water "
          "fields roads clouds . , : ? what is in picture").split()


def build_tokenizer():
    """A word-level tokenizer with LLaMA's specials (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<s> $A``
    post-processor), then what ``create_model_and_transforms`` adds: ``<|endofchunk|>``,
    ``<image>`` and ``<PAD>`` (the pad token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + list(dict.fromkeys(_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                 padding_side="left")
    hf.add_special_tokens({"additional_special_tokens": [EOC, IMAGE]})
    hf.add_special_tokens({"pad_token": PAD})
    return hf


def build_tiny(seed: int, init_std: float, eos_scale: float):
    """A seeded random ``Flamingo`` of the real classes: an open_clip ViT (2 layers, 40 wide,
    32x32, patch 8), a tiny LlamaForCausalLM (4 layers, 32 wide, 2 heads, untied head) with
    ``cross_attn_every_n_layers = 2`` (blocks before layers 1 and 3), and the package's
    ``PerceiverResampler`` (2 layers, 6 latents, 2 heads of 16) and ``GatedCrossAttentionBlock``
    (2 heads of 16) in place of the 64x8 defaults ``Flamingo`` builds (3 MB fixture); gates N(0, 1)."""
    import open_clip  # noqa: F401
    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    from open_flamingo.src.flamingo import Flamingo
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.helpers import GatedCrossAttentionBlock, PerceiverResampler
    from open_flamingo.src.utils import extend_instance
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    visual = _build_vision_tower(32, CLIPVisionCfg(layers=2, width=40, head_width=20, mlp_ratio=2.0, patch_size=8,
                                                   image_size=32))
    visual.output_tokens = True
    holder = nn.Module()
    holder.visual = visual
    lcfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                       pad_token_id=tok.pad_token_id)
    lcfg._attn_implementation = "eager"
    lang = LlamaForCausalLM(lcfg)
    extend_instance(lang, FlamingoLMMixin)
    lang.set_decoder_layers_attr_name("model.layers")
    eoc, media = tok.encode(EOC, add_special_tokens=False)[-1], tok.encode(IMAGE, add_special_tokens=False)[-1]
    model = Flamingo(holder, lang, eoc, media, vis_dim=40, cross_attn_every_n_layers=2)
    model.perceiver = PerceiverResampler(dim=40, depth=2, dim_head=16, heads=2, num_latents=6)
    lang.gated_cross_attn_layers = nn.ModuleList([
        GatedCrossAttentionBlock(dim=32, dim_visual=40, dim_head=16, heads=2) if (i + 1) % 2 == 0 else None
        for i in range(len(lang.old_decoder_blocks))])
    lang.init_flamingo_layers(False)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, init_std)
            if getattr(m, "bias", None) is not None:
                nn.init.normal_(m.bias, 0.0, init_std / 4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attn_gate") or name.endswith("ff_gate") or name.endswith("latents"):
                p.normal_(0.0, 1.0)
        u = _mean_hidden(model, media)
        lang.lm_head.weight[eoc] += eos_scale * u / u.norm()
    model.eval()
    return model, tok


def _mean_hidden(model, media: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, 60, (2, 12), generator=g)
    ids[:, 0], ids[:, 1] = 1, media
    px = torch.randn(2, 1, 1, 3, 32, 32, generator=g)
    return _final_hidden(model, px, ids).mean(dim=(0, 1))


def _final_hidden(model, px, ids):
    """The final normed hidden states (the LM head's input) of Flamingo.forward."""
    store = {}
    hook = model.lang_encoder.lm_head.register_forward_hook(lambda m, i, o: store.setdefault("h", i[0]))
    model(vision_x=px, lang_x=ids, attention_mask=torch.ones_like(ids))
    hook.remove()
    return store["h"]


# --------------------------------------------------------------------------------------
# Wrappers
# --------------------------------------------------------------------------------------


class VisionEncoder(nn.Module):
    """``Flamingo._encode_vision_x`` for one image per tile: ViT tokens, then the perceiver."""

    def __init__(self, model):
        super().__init__()
        self.v, self.p = model.vision_encoder, model.perceiver

    def forward(self, pixel_values):
        tokens = self.v(pixel_values)[1]
        return self.p(tokens[:, None, None])[:, 0]


def _layers(model):
    """(decoder layer, gated block or None) for each FlamingoLayer."""
    return [(fl.decoder_layer, fl.gated_cross_attn_layer) for fl in model.lang_encoder._get_decoder_layers()]


class CrossKV(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.blocks = nn.ModuleList([g for _, g in _layers(model) if g is not None])

    def forward(self, memory):
        B, M = memory.shape[0], memory.shape[1]
        out = []
        for g in self.blocks:
            a = g.attn
            k, v = a.to_kv(memory).chunk(2, dim=-1)
            out += [k.view(B, M, a.heads, -1).transpose(1, 2), v.view(B, M, a.heads, -1).transpose(1, 2)]
        return tuple(out)


def _additive_mask(attention_mask, ids, dtype):
    """[B,1,T,past+T] causal & padding (a padding query attends to itself)."""
    ones_k = torch.ones_like(attention_mask[:1, :])
    k_idx = torch.cumsum(ones_k, dim=1) - 1
    total = torch.sum(ones_k, dim=1, keepdim=True)
    ones_q = torch.ones_like(ids[:1, :])
    q_idx = torch.cumsum(ones_q, dim=1) - 1 + (total - torch.sum(ones_q, dim=1, keepdim=True))
    causal = k_idx[:, None, :] <= q_idx[:, :, None]
    diag = k_idx[:, None, :] == q_idx[:, :, None]
    allowed = (causal[:, None, :, :] & (attention_mask[:, None, None, :] != 0)) | diag[:, None, :, :]
    return torch.where(allowed, torch.zeros((), dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype))


class DecoderStep(nn.Module):
    """LlamaForCausalLM (eager) with the Flamingo blocks, explicit positions, a tensor cache."""

    def __init__(self, model):
        super().__init__()
        lm = model.lang_encoder
        self.lm = lm
        self.pairs = _layers(model)
        self.decs = nn.ModuleList([d for d, _ in self.pairs])
        self.blocks = nn.ModuleList([g for _, g in self.pairs if g is not None])
        cfg = lm.config
        self.n_layers, self.n_cross = cfg.num_hidden_layers, len(self.blocks)
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        from transformers.models.llama import modeling_llama as ml

        self._rope = ml.apply_rotary_pos_emb

    def forward(self, input_ids, attention_mask, position_ids, image_attention_mask, *kv):
        J = self.n_cross
        cross, past = kv[:2 * J], kv[2 * J:]
        m = self.lm.model
        h = m.embed_tokens(input_ids)
        B, T = input_ids.shape[0], input_ids.shape[1]
        mask = _additive_mask(attention_mask, input_ids, h.dtype)
        flag = (image_attention_mask != 0).to(h.dtype)[:, None, :, None]
        cos, sin = m.rotary_emb(h, position_ids)
        presents, j = [], 0
        for i, (layer, g) in enumerate(self.pairs):
            if g is not None:
                a = g.attn
                q = a.to_q(a.norm(h)).view(B, T, a.heads, -1).transpose(1, 2) * a.scale
                sim = torch.matmul(q, cross[2 * j].transpose(-1, -2))
                sim = sim - sim.amax(dim=-1, keepdim=True)
                attn = sim.softmax(dim=-1) * flag
                out = torch.matmul(attn, cross[2 * j + 1]).transpose(1, 2).reshape(B, T, -1)
                h = a.to_out(out) * g.attn_gate.tanh() + h
                h = g.ff(h) * g.ff_gate.tanh() + h
                j += 1
            sa = layer.self_attn
            x = layer.input_layernorm(h)
            q = sa.q_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
            k = sa.k_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
            v = sa.v_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
            q, k = self._rope(q, k, cos, sin)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            w = torch.matmul(q, k.transpose(-1, -2)) * sa.scaling + mask
            ctx = torch.matmul(torch.softmax(w, dim=-1), v).transpose(1, 2).reshape(B, T, -1)
            h = h + sa.o_proj(ctx)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return (self.lm.lm_head(m.norm(h)), *presents)


# --------------------------------------------------------------------------------------
# Plumbing
# --------------------------------------------------------------------------------------


class Parts:
    def __init__(self, model, tok, size: int = 32, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
        self.model, self.hf_tok = model, tok
        self.size, self.mean, self.std, self.template = size, list(mean), list(std), TEMPLATE
        self.encoder, self.cross, self.decoder = VisionEncoder(model).eval(), CrossKV(model).eval(), DecoderStep(model).eval()
        cfg = model.lang_encoder.config
        self.layers, self.cross_layers = self.decoder.n_layers, self.decoder.n_cross
        self.heads, self.head_dim, self.hidden = self.decoder.heads, self.decoder.head_dim, int(cfg.hidden_size)
        self.cross_width = int(model.vis_dim)
        self.vocab = int(model.lang_encoder.lm_head.out_features)
        self.max_positions = int(cfg.max_position_embeddings)
        self.eos, self.pad, self.bos = int(model.eoc_token_id), int(tok.pad_token_id), int(tok.bos_token_id)
        self.image_id = int(model.media_token_id)

    def ids(self, prompt: str) -> list[int]:
        return self.hf_tok(self.template.replace("{prompt}", prompt))["input_ids"]

    def hf_generate(self, pixels, prompts, **kw):
        """HF generate driven as Flamingo.generate does (see the module docstring)."""
        from open_flamingo.src.flamingo_lm import FlamingoLMMixin

        enc = self.hf_tok([self.template.replace("{prompt}", p) for p in prompts], return_tensors="pt", padding=True)
        vx = torch.from_numpy(np.ascontiguousarray(pixels))[:, None, None]
        nb = kw.pop("num_beams", 1)
        if nb > 1:
            vx = vx.repeat_interleave(nb, dim=0)
        m = self.model
        orig = FlamingoLMMixin.forward
        FlamingoLMMixin.forward = lambda s, input_ids, attention_mask=None, **k: orig(s, input_ids, attention_mask, **k)
        try:
            m.lang_encoder._use_cached_vision_x = True
            m._encode_vision_x(vision_x=vx)
            out = m.lang_encoder.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                          eos_token_id=self.eos, pad_token_id=self.pad, num_beams=nb, **kw)
        finally:
            m.lang_encoder.clear_conditioned_layers()
            m.lang_encoder._use_cached_vision_x = False
            FlamingoLMMixin.forward = orig
        L = enc["input_ids"].shape[1]
        return [trim(r.tolist(), self.eos) for r in out[:, L:]]

    def greedy_forward_loop(self, pixels, prompt: str, n: int) -> list[int]:
        """Greedy decoding by Flamingo.forward on the whole sequence each step (no cache)."""
        ids = torch.tensor([self.ids(prompt)])
        vx = torch.from_numpy(np.ascontiguousarray(pixels))[:, None, None]
        new = []
        for _ in range(n):
            logits = self.model(vision_x=vx, lang_x=ids, attention_mask=torch.ones_like(ids)).logits
            t = int(logits[0, -1].argmax())
            new.append(t)
            if t == self.eos:
                break
            ids = torch.cat([ids, torch.tensor([[t]])], 1)
        return new


def trim(row, eos):
    out = []
    for t in row:
        out.append(int(t))
        if t == eos:
            break
    return out


def image_flags(ids, image_id, eos):
    count, seen, out = -1, False, []
    for t in ids:
        if t == image_id:
            count += 1
            seen = False
        out.append(0 if seen or count != 0 else 1)
        if t == eos:
            seen = True
    return out


def io_names(layers, cross_layers):
    cross = [f"cross.{j}.{kv}" for j in range(cross_layers) for kv in ("key", "value")]
    past = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return cross, past, present


DECODER_INPUTS = ["input_ids", "attention_mask", "position_ids", "image_attention_mask"]


def check_decoder_against_flamingo(parts: Parts, pixels) -> float:
    """Prefill + cached steps of the step graph against Flamingo.forward (left padded batch)."""
    enc = parts.hf_tok([parts.template.replace("{prompt}", p) for p in ["An image of", "what is in the picture ?"]],
                       return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    g = torch.Generator().manual_seed(7)
    extra = torch.randint(3, 60, (2, 3), generator=g)
    ids, mask = torch.cat([ids, extra], 1), torch.cat([mask, torch.ones_like(extra)], 1)
    px = torch.from_numpy(np.ascontiguousarray(pixels[:2]))
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    ref = parts.model(vision_x=px[:, None, None], lang_x=ids, attention_mask=mask).logits
    # HF's Llama takes position ids from the cache length when none are given: compare the
    # unpadded row over the whole sequence, the padded one where positions agree (none padded).
    flags = torch.tensor([image_flags(r, parts.image_id, parts.eos) for r in ids.tolist()])
    cross = parts.cross(parts.encoder(px))
    B, T = ids.shape
    split = T - 3
    past = [torch.zeros(B, parts.heads, 0, parts.head_dim) for _ in range(2 * parts.layers)]
    out = parts.decoder(ids[:, :split], mask[:, :split], pos[:, :split], flags[:, :split], *cross, *past)
    full = mask.all(dim=1)
    worst = float((out[0] - ref[:, :split])[full].abs().max())
    past = list(out[1:])
    for t in range(split, T):
        out = parts.decoder(ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], flags[:, t:t + 1], *cross, *past)
        past = list(out[1:])
        worst = max(worst, float((out[0][:, 0] - ref[:, t])[full].abs().max()))
    if worst > 1e-4:
        raise SystemExit(f"export: decoder wrapper differs from Flamingo.forward by {worst:.3g}")
    return worst


def export_graphs(parts: Parts, out: Path, opset: int) -> None:
    cross_names, past_names, present_names = io_names(parts.layers, parts.cross_layers)
    px = torch.zeros(2, 3, parts.size, parts.size)
    C.export_onnx(parts.encoder, (px,), out / "encoder.onnx", ["pixel_values"], ["memory"],
                  {"pixel_values": {0: "batch"}, "memory": {0: "batch"}}, opset)
    mem = parts.encoder(px)
    axes = {"memory": {0: "batch", 1: "memory"}}
    axes.update({n: {0: "batch", 2: "memory"} for n in cross_names})
    C.export_onnx(parts.cross, (mem,), out / "cross_kv.onnx", ["memory"], cross_names, axes, opset)
    cross = parts.cross(mem)
    B, T, P = 2, 3, 2
    args = (torch.full((B, T), parts.bos, dtype=torch.long), torch.ones(B, P + T, dtype=torch.long),
            torch.arange(P, P + T)[None].expand(B, -1).contiguous(), torch.ones(B, T, dtype=torch.long),
            *cross, *[torch.zeros(B, parts.heads, P, parts.head_dim) for _ in range(2 * parts.layers)])
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "new"}, "image_attention_mask": {0: "batch", 1: "new"},
            "logits": {0: "batch", 1: "new"}}
    axes.update({n: {0: "batch", 2: "memory"} for n in cross_names})
    axes.update({n: {0: "batch", 2: "past"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    C.export_onnx(parts.decoder, args, out / "decoder.onnx", [*DECODER_INPUTS, *cross_names, *past_names],
                  ["logits", *present_names], axes, opset)


def verify_onnx(parts: Parts, out: Path, pixels, tol: float) -> float:
    enc, crs, dec = (C.ort_session(out / n) for n in ("encoder.onnx", "cross_kv.onnx", "decoder.onnx"))
    cross_names, past_names, _ = io_names(parts.layers, parts.cross_layers)
    mem_t = parts.encoder(torch.from_numpy(pixels))
    mem = enc.run(None, {"pixel_values": pixels})[0]
    worst = C.rel_diff(mem, mem_t.numpy())
    cross = crs.run(None, {"memory": mem})
    for a, b in zip(cross, parts.cross(mem_t)):
        worst = max(worst, C.rel_diff(a, b.numpy()))
    B = pixels.shape[0]
    feeds = {"input_ids": np.array([[parts.bos, parts.image_id, 5, 9]] * B, np.int64),
             "attention_mask": np.ones((B, 4), np.int64),
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


PROMPTS = ["An image of", "what is in the picture ?", "", "a satellite photo of the river next to a dense green forest ."]


def reference_cases(n: int) -> list[dict]:
    greedy = dict(max_new_tokens=12, num_beams=1, do_sample=False)
    beams = dict(max_new_tokens=12, num_beams=3, do_sample=False, early_stopping=False, length_penalty=1.0)
    p = PROMPTS
    cases = [dict(name=f"greedy_img{i}", images=[i], prompts=[p[0]], gen=greedy) for i in range(n)]
    cases.append(dict(name="greedy_question_img1", images=[1], prompts=[p[1]], gen=greedy))
    cases.append(dict(name="beam3_img0", images=[0], prompts=[p[0]], gen=beams))
    cases.append(dict(name="beam3_question_img3", images=[3], prompts=[p[1]], gen=beams))
    cases.append(dict(name="greedy_batch_same", images=list(range(n)), prompts=[p[0]] * n, gen=greedy))
    cases.append(dict(name="greedy_batch_mixed", images=[1, 2, 3, 0], prompts=p, gen=greedy))
    cases.append(dict(name="beam3_batch_mixed", images=[3, 0, 2], prompts=[p[3], p[2], p[1]], gen=beams))
    return cases


def compute_references(parts: Parts, meta: dict):
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    out_cases = []
    for c in reference_cases(len(names)):
        px = np.ascontiguousarray(pixels[c["images"]])
        new = parts.hf_generate(px, c["prompts"], **c["gen"])
        alone = [parts.hf_generate(px[k:k + 1], [pr], **c["gen"])[0] for k, pr in enumerate(c["prompts"])]
        loop_ok = None
        if c["gen"]["num_beams"] == 1:
            loops = [parts.greedy_forward_loop(px[k:k + 1], pr, c["gen"]["max_new_tokens"])
                     for k, pr in enumerate(c["prompts"])]
            loop_ok = loops == new
            if not loop_ok:
                raise SystemExit(f"export: {c['name']}: HF generate {new} != greedy loop over forward {loops}")
        ids = [parts.ids(pr) for pr in c["prompts"]]
        gen = {"max_new_tokens": 20, "min_new_tokens": 0, "num_beams": 1, "repetition_penalty": 1.0,
               "length_penalty": 1.0, "early_stopping": False}
        gen.update({k: v for k, v in c["gen"].items() if k != "do_sample"})
        out_cases.append({
            "name": c["name"], "images": c["images"], "prompts": c["prompts"], "hf_batched": True,
            "prompt_ids": ids, "image_attention_mask": [image_flags(r, parts.image_id, parts.eos) for r in ids],
            "generation": gen, "new_tokens": new, "hit_eos": [bool(t and t[-1] == parts.eos) for t in new],
            "text": [parts.hf_tok.decode(t, skip_special_tokens=True) for t in new],
            "checks": {"batch_equals_items": new == alone, "greedy_forward_loop_equal": loop_ok},
        })
        print(f"export: {c['name']}: {new} batch==items={new == alone} loop={loop_ok}", file=sys.stderr)
    ref = {
        "description": "HF generate on the OpenFlamingo language model as Flamingo.generate drives it "
                       "(tools/export/openflamingo_export.py docstring); new tokens only.",
        "architecture": "openflamingo", **meta, "transformers": transformers.__version__, "torch": torch.__version__,
        **C.images_block(names, parts.size, len(names)), "mean": parts.mean, "std": parts.std,
        "eos_token_id": parts.eos, "pad_token_id": parts.pad, "image_token_id": parts.image_id,
        "template": parts.template, "cases": out_cases,
    }
    return ref, images_u8, pixels


def write_manifest(path: Path, parts: Parts, name: str, source: str) -> None:
    C.write_toml(path, [
        (None, [("family", FAMILY, ""), ("architecture", "openflamingo", ""), ("name", name, ""),
                ("trained", False, ""), ("source", source, "")]),
        ("encoder", [("onnx", "encoder.onnx", "open_clip ViT tokens + perceiver resampler, once per tile"),
                     ("pixel_values", "pixel_values", ""), ("memory", "memory", "float32 [B,N,D]")]),
        ("cross", [("onnx", "cross_kv.onnx", "once per tile, shared by its beams"), ("memory", "memory", ""),
                   ("key", "cross.{i}.key", "{i} = gated cross-attention block"), ("value", "cross.{i}.value", "")]),
        ("decoder", [("onnx", "decoder.onnx", ""), ("input_ids", "input_ids", ""),
                     ("attention_mask", "attention_mask", ""), ("position_ids", "position_ids", ""),
                     ("image_attention", "image_attention_mask", "int64 [B,T]: media locations (text_time == 1)"),
                     ("cross_key", "cross.{i}.key", ""), ("cross_value", "cross.{i}.value", ""),
                     ("past_key", "past.{i}.key", ""), ("past_value", "past.{i}.value", ""), ("logits", "logits", ""),
                     ("present_key", "present.{i}.key", ""), ("present_value", "present.{i}.value", ""),
                     ("layers", parts.layers, ""), ("cross_layers", parts.cross_layers, ""),
                     ("heads", parts.heads, ""), ("head_dim", parts.head_dim, ""), ("hidden", parts.hidden, ""),
                     ("cross_width", parts.cross_width, "vis_dim"), ("vocab", parts.vocab, ""),
                     ("max_positions", parts.max_positions, "")]),
        ("prompt", [("template", parts.template, "OpenFlamingo's <image>{text}"),
                    ("add_special_tokens", True, "<s> first (LLaMA)"),
                    ("image_token_id", parts.image_id, "<image>")]),
        C.preprocess_section(parts.size, parts.mean, parts.std),
        ("tokenizer", [("file", "tokenizer.json", ""), ("bos_token_id", parts.bos, "<s>"),
                       ("eos_token_id", parts.eos, "<|endofchunk|>: Flamingo.generate's end"),
                       ("pad_token_id", parts.pad, "<PAD>")]),
        ("generation", [("max_new_tokens", 20, ""), ("num_beams", 1, ""), ("repetition_penalty", 1.0, "")]),
    ])


def export_openflamingo(args) -> None:
    if not args.tiny:
        raise SystemExit("export.py openflamingo: only --tiny is implemented (a checkpoint needs the "
                         "open_flamingo factory with its open_clip and LM paths; see tools/export/README.md)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = DEFAULT_SEED if args.seed is None else args.seed
    init_std = DEFAULT_INIT_STD if args.init_std is None else args.init_std
    eos_scale = DEFAULT_EOS_SCALE if args.eos_scale is None else args.eos_scale
    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention, in the
    # open_clip ViT) has no ONNX export; the regular path computes the same.
    torch.backends.mha.set_fastpath_enabled(False)
    model, tok = build_tiny(seed, init_std, eos_scale)
    parts = Parts(model, tok)
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    worst = check_decoder_against_flamingo(parts, pixels)
    print(f"export: decoder wrapper vs Flamingo.forward: max abs diff {worst:.3g}", file=sys.stderr)
    export_graphs(parts, out, args.opset)
    if not args.skip_verify:
        verify_onnx(parts, out, pixels[:3], args.tolerance)
    C.save_plain_tokenizer_json(tok, out / "tokenizer.json")
    source = (f"random init, seed {seed}, init std {init_std}, <|endofchunk|> head row + {eos_scale} x mean hidden "
              f"direction, open_flamingo 2.0.1, transformers {transformers.__version__}, torch {torch.__version__}")
    write_manifest(out / "model.toml", parts, args.name or "openflamingo-tiny-random", source)
    if not args.no_reference:
        ref, images_u8, pixels = compute_references(parts, {"seed": seed, "init_std": init_std, "eos_row_scale": eos_scale})
        ends = sum(any(c["hit_eos"]) for c in ref["cases"])
        print(f"export: reference outputs: ends in {ends} of {len(ref['cases'])} cases", file=sys.stderr)
        C.write_reference(out, ref, C.image_bins(images_u8, pixels))
    C.report_done(out)


def add_parser(sub, command: str) -> None:
    c = sub.add_parser(command, help="export OpenFlamingo (open_flamingo Flamingo) as a cross-attention-decoder package",
                       description="Export OpenFlamingo in the IDEFICS package layout: encoder.onnx (open_clip ViT + "
                                   "perceiver), cross_kv.onnx (gated cross-attention keys/values), decoder.onnx.")
    C.add_source_args(c, from_help="(not implemented: only --tiny)", tiny_help="seeded random Flamingo of the real classes")
    C.add_out_arg(c)
    C.add_opset_arg(c)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--init-std", type=float, default=None)
    c.add_argument("--eos-scale", type=float, default=None)
    C.add_name_arg(c)
    C.add_no_reference_arg(c)
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, 1e-4, "max relative ONNX Runtime vs PyTorch difference")
    c.set_defaults(func=export_openflamingo)
