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
#: By tiny LM: 0.8 makes the tiny MPT end at once on most prompts, 0.7 gives ended and unended outputs.
DEFAULT_EOS_SCALES = {"llama": 0.8, "mpt": 0.7, "gpt_neox": 0.8}
TEMPLATE = "<image>{prompt}"
EOC, IMAGE, PAD = "<|endofchunk|>", "<image>", "<PAD>"

_WORDS = ("An image of a an the with and forest river city desert farmland lake coast harbor airport "
          "mountain glacier wetland road bridge village field beach island canal dam highway green dense "
          "dry flooded bright dark sandy snowy urban rural small large narrow wide there are many few two "
          "three near next to surrounded by satellite aerial photo scene showing buildings trees water "
          "fields roads clouds . , : ? what is in picture").split()


#: The language models the step graph restates, by ``config.model_type``: OpenFlamingo's
#: ``decoder_layers_attr_name`` for each (``factory._infer_decoder_layers_attr_name``).
LM_LAYERS = {"llama": "model.layers", "mpt": "transformer.blocks", "gpt_neox": "gpt_neox.layers"}
#: ``--lm`` of ``--tiny`` -> model_type.
TINY_LMS = {"llama": "llama", "mpt": "mpt", "gpt-neox": "gpt_neox"}
#: What ``Flamingo`` builds (``PerceiverResampler(dim)``, ``GatedCrossAttentionBlock(dim, dim_visual)``).
PERCEIVER_DEFAULT = {"depth": 6, "heads": 8, "dim_head": 64}
CROSS_ATTN_DEFAULT = {"heads": 8, "dim_head": 64}


def build_tokenizer(kind: str = "llama", flamingo_tokens: bool = True):
    """A word-level tokenizer with the LM's specials: LLaMA's (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2,
    ``<s> $A`` post-processor) or GPT-NeoX-20B's (the MPT and RedPajama tokenizer: ``<|endoftext|>``
    0 as bos/eos/unk, nothing added to a text); then, with ``flamingo_tokens``, what
    ``create_model_and_transforms`` adds: ``<|endofchunk|>``, ``<image>`` and ``<PAD>`` (the pad token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"] if kind == "llama" else ["<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(specials + list(dict.fromkeys(_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    if kind == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                     padding_side="left")
    else:
        e = specials[0]
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=e, eos_token=e, unk_token=e, padding_side="left")
    if flamingo_tokens:
        add_flamingo_tokens(hf)
    return hf


def add_flamingo_tokens(tok) -> None:
    """``create_model_and_transforms``'s additions to the LM tokenizer."""
    tok.add_special_tokens({"additional_special_tokens": [EOC, IMAGE]})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD})
    tok.padding_side = "left"


def tiny_lm_config(kind: str, vocab: int, pad: int):
    """The tiny LM configs: 4 layers, 32 wide, 2 heads, 64 positions (``kind`` a model_type)."""
    from transformers import GPTNeoXConfig, LlamaConfig, MptConfig

    if kind == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                          tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=pad)
    elif kind == "mpt":
        # ALiBi with 2 heads: slopes 1/2^4, 1/2^8 (alibi_bias_max 8); the head tied to wte as in MPT.
        cfg = MptConfig(vocab_size=vocab, d_model=32, n_heads=2, n_layers=4, expansion_ratio=4, max_seq_len=64,
                        attn_config={"alibi": True, "alibi_bias_max": 8}, bos_token_id=0, eos_token_id=0,
                        pad_token_id=pad)
    elif kind == "gpt_neox":
        # RedPajama-INCITE's shape in small: partial rotary (rotary_pct 0.25 -> 4 of 16 dims),
        # parallel residual, untied embed_out.
        cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                            num_attention_heads=2, max_position_embeddings=64, rotary_pct=0.25,
                            use_parallel_residual=True, tie_word_embeddings=False, bos_token_id=0,
                            eos_token_id=0, pad_token_id=pad)
    else:
        raise SystemExit(f"export.py openflamingo: no tiny {kind} language model")
    cfg._attn_implementation = "eager"
    return cfg


def lm_kind(lang) -> str:
    kind = getattr(lang.config, "model_type", None)
    if kind not in LM_LAYERS:
        raise SystemExit(f"export.py openflamingo: language model type {kind!r} is not restated by the step graph "
                         f"(supported: {', '.join(sorted(LM_LAYERS))})")
    return kind


def assemble(visual, lang, tok, vis_dim: int, every_n: int, perceiver: dict, cross_attn: dict):
    """``Flamingo`` around ``visual`` (an open_clip VisionTransformer) and ``lang`` (an HF causal
    LM) as ``create_model_and_transforms`` builds it, with the perceiver and gated blocks of the
    given sizes (rebuilt with the package's classes where they differ from ``Flamingo``'s)."""
    from open_flamingo.src.flamingo import Flamingo
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.helpers import GatedCrossAttentionBlock, PerceiverResampler
    from open_flamingo.src.utils import extend_instance

    visual.output_tokens = True
    holder = nn.Module()
    holder.visual = visual
    kind = lm_kind(lang)
    extend_instance(lang, FlamingoLMMixin)
    lang.set_decoder_layers_attr_name(LM_LAYERS[kind])
    eoc, media = tok.encode(EOC, add_special_tokens=False)[-1], tok.encode(IMAGE, add_special_tokens=False)[-1]
    model = Flamingo(holder, lang, eoc, media, vis_dim=vis_dim, cross_attn_every_n_layers=every_n)
    if perceiver != {**PERCEIVER_DEFAULT, "num_latents": 64}:
        model.perceiver = PerceiverResampler(dim=vis_dim, **perceiver)
    if cross_attn != CROSS_ATTN_DEFAULT:
        dim = int(lang.config.hidden_size)
        lang.gated_cross_attn_layers = nn.ModuleList([
            GatedCrossAttentionBlock(dim=dim, dim_visual=vis_dim, **cross_attn) if (i + 1) % every_n == 0 else None
            for i in range(len(lang.old_decoder_blocks))])
        lang.init_flamingo_layers(False)
    return model


def build_tiny(seed: int, init_std: float, eos_scale: float, kind: str = "llama"):
    """A seeded random ``Flamingo`` of the real classes: an open_clip ViT (2 layers, 40 wide,
    32x32, patch 8), a tiny LM of ``kind`` (``tiny_lm_config``: LlamaForCausalLM, MptForCausalLM or
    GPTNeoXForCausalLM, 4 layers, 32 wide, 2 heads) with ``cross_attn_every_n_layers = 2`` (blocks
    before layers 1 and 3), and the package's ``PerceiverResampler`` (2 layers, 6 latents, 2 heads
    of 16) and ``GatedCrossAttentionBlock`` (2 heads of 16) in place of the 64x8 defaults
    ``Flamingo`` builds (3 MB fixture); gates N(0, 1)."""
    import open_clip  # noqa: F401
    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer(kind)
    torch.manual_seed(seed)
    visual = _build_vision_tower(32, CLIPVisionCfg(**TINY_VISION_CFG))
    cfg = tiny_lm_config(kind, len(tok), tok.pad_token_id)
    # The class itself (not from_config, whose eager forward differs from it in the last bit).
    lang = AutoModelForCausalLM._model_mapping[type(cfg)](cfg)
    model = assemble(visual, lang, tok, 40, 2, TINY_PERCEIVER, TINY_CROSS_ATTN)
    eoc = model.eoc_token_id
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, init_std)
            if getattr(m, "bias", None) is not None:
                nn.init.normal_(m.bias, 0.0, init_std / 4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attn_gate") or name.endswith("ff_gate") or name.endswith("latents"):
                p.normal_(0.0, 1.0)
        u = _mean_hidden(model, model.media_token_id, tok)
        head = model.lang_encoder.get_output_embeddings()
        head.weight[eoc] += eos_scale * u / u.norm()
        if kind != "llama":
            # Keep <image> out of the generated tokens (see Parts.hf_generate): its row - 2 u/|u|.
            head.weight[model.media_token_id] -= IMAGE_ROW_SCALE * u / u.norm()
    model.eval()
    return model, tok


#: The tiny MPT / GPT-NeoX head's <image> row is lowered by this times the mean hidden direction.
IMAGE_ROW_SCALE = 2.0
TINY_VISION_CFG = dict(layers=2, width=40, head_width=20, mlp_ratio=2.0, patch_size=8, image_size=32)
TINY_PERCEIVER = {"depth": 2, "dim_head": 16, "heads": 2, "num_latents": 6}
TINY_CROSS_ATTN = {"dim_head": 16, "heads": 2}


def _mean_hidden(model, media: int, tok) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, 60, (2, 12), generator=g)
    ids[:, 0], ids[:, 1] = tok.bos_token_id, media
    px = torch.randn(2, 1, 1, 3, 32, 32, generator=g)
    return _final_hidden(model, px, ids).mean(dim=(0, 1))


def _final_hidden(model, px, ids):
    """The final normed hidden states (the LM head's input) of Flamingo.forward."""
    store = {}
    hook = model.lang_encoder.get_output_embeddings().register_forward_hook(lambda m, i, o: store.setdefault("h", i[0]))
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


def alibi_slopes(heads: int, bias_max: float) -> torch.Tensor:
    """MPT's ALiBi slopes, [heads] (``build_mpt_alibi_tensor``)."""
    import math

    n2 = 2 ** math.ceil(math.log2(heads))
    base = torch.arange(1, n2 + 1, dtype=torch.int64).float() * (bias_max / n2)
    slopes = 1.0 / torch.pow(2, base)
    if n2 != heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:heads]
    return slopes


class DecoderStep(nn.Module):
    """The Flamingo language model's step with explicit masks and a tensor cache: before each
    decoder layer with one, the ``GatedCrossAttentionBlock``; the decoder layer itself restated for
    its ``kind`` (eager attention):

    * ``llama``: RMSNorm, rotary on ``position_ids``, ``h + attn``, ``h + mlp``;
    * ``mpt``: bias-free LayerNorm, fused ``Wqkv``, ALiBi (``slope_h * (k - (K - 1))`` over the key
      slots k of the cache, K its length; no position ids: a left padded row differs by a constant
      per query row, which softmax drops), ``h + attn``, ``h + ffn``;
    * ``gpt_neox``: LayerNorm, ``query_key_value`` laid out per head ``[q | k | v]``, rotary on
      the first ``rotary_ndims`` of each head, parallel residual ``h + attn(ln1 h) + mlp(ln2 h)``
      (or sequential when ``use_parallel_residual`` is false).
    """

    def __init__(self, model):
        super().__init__()
        lm = model.lang_encoder
        self.lm = lm
        self.kind = lm_kind(lm)
        self.pairs = _layers(model)
        self.decs = nn.ModuleList([d for d, _ in self.pairs])
        self.blocks = nn.ModuleList([g for _, g in self.pairs if g is not None])
        cfg = lm.config
        self.n_layers, self.n_cross = len(self.pairs), len(self.blocks)
        self.heads = int(cfg.num_attention_heads) if self.kind != "mpt" else int(cfg.n_heads)
        self.head_dim = int(cfg.hidden_size) // self.heads
        self.uses_positions = self.kind != "mpt"
        if self.kind == "llama":
            from transformers.models.llama import modeling_llama as ml

            self._rope = ml.apply_rotary_pos_emb
        elif self.kind == "gpt_neox":
            from transformers.models.gpt_neox import modeling_gpt_neox as mn

            self._rope = mn.apply_rotary_pos_emb
        else:
            ac = cfg.attn_config
            if not getattr(ac, "alibi", True):
                raise SystemExit("export.py openflamingo: an MPT without ALiBi (attn_config.alibi = false) is not restated")
            self.register_buffer("slopes", alibi_slopes(self.heads, float(ac.alibi_bias_max)).view(1, -1, 1, 1),
                                 persistent=False)

    def input_names(self) -> list[str]:
        return [n for n in DECODER_INPUTS if self.uses_positions or n != "position_ids"]

    def _embed(self, ids):
        lm = self.lm
        return {"llama": lambda: lm.model.embed_tokens(ids), "mpt": lambda: lm.transformer.wte(ids),
                "gpt_neox": lambda: lm.gpt_neox.embed_in(ids)}[self.kind]()

    def _head(self, h):
        lm = self.lm
        norm = {"llama": lambda: lm.model.norm, "mpt": lambda: lm.transformer.norm_f,
                "gpt_neox": lambda: lm.gpt_neox.final_layer_norm}[self.kind]()
        return lm.get_output_embeddings()(norm(h))

    @staticmethod
    def _attend(q, k, v, scale, mask, B, T, bias=None):
        w = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
        if bias is not None:
            w = w + bias
        return torch.matmul(torch.softmax(w, dim=-1), v).transpose(1, 2).reshape(B, T, -1)

    def forward(self, input_ids, attention_mask, *rest):
        if self.uses_positions:
            position_ids, rest = rest[0], rest[1:]
        image_attention_mask, kv = rest[0], rest[1:]
        J = self.n_cross
        cross, past = kv[:2 * J], kv[2 * J:]
        h = self._embed(input_ids)
        B, T = input_ids.shape[0], input_ids.shape[1]
        H, D = self.heads, self.head_dim
        mask = _additive_mask(attention_mask, input_ids, h.dtype)
        flag = (image_attention_mask != 0).to(h.dtype)[:, None, :, None]
        if self.kind == "llama":
            cos, sin = self.lm.model.rotary_emb(h, position_ids)
        elif self.kind == "gpt_neox":
            cos, sin = self.lm.gpt_neox.rotary_emb(h, position_ids)
        else:
            k_idx = torch.cumsum(torch.ones_like(attention_mask[:1, :]), dim=1) - 1
            rel = (k_idx - k_idx[:, -1:]).to(h.dtype)  # k - (K - 1)
            bias = self.slopes * rel[:, None, None, :]
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
            if self.kind == "llama":
                sa = layer.self_attn
                x = layer.input_layernorm(h)
                q = sa.q_proj(x).view(B, T, H, D).transpose(1, 2)
                k = sa.k_proj(x).view(B, T, H, D).transpose(1, 2)
                v = sa.v_proj(x).view(B, T, H, D).transpose(1, 2)
                q, k = self._rope(q, k, cos, sin)
                k = torch.cat([past[2 * i], k], dim=2)
                v = torch.cat([past[2 * i + 1], v], dim=2)
                h = h + sa.o_proj(self._attend(q, k, v, sa.scaling, mask, B, T))
                h = h + layer.mlp(layer.post_attention_layernorm(h))
            elif self.kind == "mpt":
                sa = layer.attn
                qkv = sa.Wqkv(layer.norm_1(h))
                if sa.clip_qkv:
                    qkv = qkv.clamp(min=-sa.clip_qkv, max=sa.clip_qkv)
                q, k, v = (t.reshape(B, T, H, D).transpose(1, 2) for t in qkv.chunk(3, dim=2))
                k = torch.cat([past[2 * i], k], dim=2)
                v = torch.cat([past[2 * i + 1], v], dim=2)
                h = h + sa.out_proj(self._attend(q, k, v, sa.softmax_scale, mask, B, T, bias))
                f = layer.ffn
                h = h + f.down_proj(f.act(f.up_proj(layer.norm_2(h))))
            else:
                sa = layer.attention
                qkv = sa.query_key_value(layer.input_layernorm(h)).view(B, T, H, 3 * D).transpose(1, 2)
                q, k, v = qkv.chunk(3, dim=-1)
                q, k = self._rope(q, k, cos, sin)
                k = torch.cat([past[2 * i], k], dim=2)
                v = torch.cat([past[2 * i + 1], v], dim=2)
                att = sa.dense(self._attend(q, k, v, sa.scaling, mask, B, T))
                if layer.use_parallel_residual:
                    h = h + att + layer.mlp(layer.post_attention_layernorm(h))
                else:
                    h = h + att
                    h = h + layer.mlp(layer.post_attention_layernorm(h))
            presents += [k, v]
        return (self._head(h), *presents)


# --------------------------------------------------------------------------------------
# Plumbing
# --------------------------------------------------------------------------------------


class Parts:
    def __init__(self, model, tok, size: int = 32, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
        self.model, self.hf_tok = model, tok
        self.size, self.mean, self.std, self.template = size, list(mean), list(std), TEMPLATE
        self.encoder, self.cross, self.decoder = VisionEncoder(model).eval(), CrossKV(model).eval(), DecoderStep(model).eval()
        cfg = model.lang_encoder.config
        self.kind = self.decoder.kind
        self.layers, self.cross_layers = self.decoder.n_layers, self.decoder.n_cross
        self.heads, self.head_dim, self.hidden = self.decoder.heads, self.decoder.head_dim, int(cfg.hidden_size)
        self.cross_width = int(model.vis_dim)
        self.vocab = int(model.lang_encoder.get_output_embeddings().out_features)
        self.max_positions = int(cfg.max_seq_len if self.kind == "mpt" else cfg.max_position_embeddings)
        self.eos, self.pad, self.bos = int(model.eoc_token_id), int(tok.pad_token_id), int(tok.bos_token_id)
        self.image_id = int(model.media_token_id)
        self.inputs = self.decoder.input_names()
        # LLaMA's tokenizer puts <s> first; GPT-NeoX-20B's (MPT, RedPajama) adds nothing.
        self.add_special = tok("a")["input_ids"] != tok("a", add_special_tokens=False)["input_ids"]

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
        # A generated <image> re-conditions the media locations of the whole step (every beam and
        # item: FlamingoLMMixin.forward), which the runtime's per-row rule does not reproduce; the
        # references must not contain one, in any beam at any step.
        from transformers import LogitsProcessor, LogitsProcessorList

        image_id, width = self.image_id, enc["input_ids"].shape[1]

        class Seen(LogitsProcessor):
            hit = False

            def __call__(self, input_ids, scores):
                Seen.hit |= bool((input_ids[:, width:] == image_id).any())
                return scores

        kw["logits_processor"] = LogitsProcessorList([Seen()])
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
        if Seen.hit or bool((out[:, L:] == image_id).any()):
            raise SystemExit(f"export: a beam generated <image> for {prompts}: OpenFlamingo's generate then "
                             "re-conditions every row's media; choose another --seed / --eos-scale")
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
    def step(a, b, m):
        extra = [pos[:, a:b]] if parts.decoder.uses_positions else []
        return parts.decoder(ids[:, a:b], m, *extra, flags[:, a:b], *cross, *past)

    out = step(0, split, mask[:, :split])
    full = mask.all(dim=1)
    worst = float((out[0] - ref[:, :split])[full].abs().max())
    past = list(out[1:])
    for t in range(split, T):
        out = step(t, t + 1, mask[:, :t + 1])
        past = list(out[1:])
        worst = max(worst, float((out[0][:, 0] - ref[:, t])[full].abs().max()))
    if worst > 1e-4:
        raise SystemExit(f"export: decoder wrapper differs from Flamingo.forward by {worst:.3g}")
    return worst


GRAPH_FILES = ("encoder.onnx", "cross_kv.onnx", "decoder.onnx")


def export_graphs(parts: Parts, out: Path, opset: int, external: int | None = None) -> None:
    """The three graphs; one whose weights exceed ``external`` bytes keeps them in
    ``<graph>.onnx.data`` (ONNX external data: OpenFlamingo-9B's decoder is 28 GB in float32)."""
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
    pos = [torch.arange(P, P + T)[None].expand(B, -1).contiguous()] if parts.decoder.uses_positions else []
    args = (torch.full((B, T), parts.bos, dtype=torch.long), torch.ones(B, P + T, dtype=torch.long),
            *pos, torch.ones(B, T, dtype=torch.long),
            *cross, *[torch.zeros(B, parts.heads, P, parts.head_dim) for _ in range(2 * parts.layers)])
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "new"}, "image_attention_mask": {0: "batch", 1: "new"},
            "logits": {0: "batch", 1: "new"}}
    if not parts.decoder.uses_positions:
        del axes["position_ids"]
    axes.update({n: {0: "batch", 2: "memory"} for n in cross_names})
    axes.update({n: {0: "batch", 2: "past"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    C.export_onnx(parts.decoder, args, out / "decoder.onnx", [*parts.inputs, *cross_names, *past_names],
                  ["logits", *present_names], axes, opset, external_data_bytes=external)


def verify_onnx(parts: Parts, out: Path, pixels, tol: float) -> float:
    enc, crs, dec = (C.ort_session(out / n) for n in GRAPH_FILES)
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
    if not parts.decoder.uses_positions:
        del feeds["position_ids"]
    got = dec.run(None, feeds)
    ref = parts.decoder(*(torch.from_numpy(feeds[n]) for n in [*parts.inputs, *cross_names, *past_names]))
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
    positions = [("position_ids", "position_ids", "")] if parts.decoder.uses_positions else []
    bos_note = "<s>" if parts.kind == "llama" else "<|endoftext|> (not added to prompts)"
    lm_note = {"llama": "", "mpt": "MPT (ALiBi: no position ids)", "gpt_neox": "GPT-NeoX"}[parts.kind]
    C.write_toml(path, [
        (None, [("family", FAMILY, ""), ("architecture", "openflamingo", ""), ("name", name, ""),
                ("trained", False, ""), ("source", source, "")]),
        ("encoder", [("onnx", "encoder.onnx", "open_clip ViT tokens + perceiver resampler, once per tile"),
                     ("pixel_values", "pixel_values", ""), ("memory", "memory", "float32 [B,N,D]")]),
        ("cross", [("onnx", "cross_kv.onnx", "once per tile, shared by its beams"), ("memory", "memory", ""),
                   ("key", "cross.{i}.key", "{i} = gated cross-attention block"), ("value", "cross.{i}.value", "")]),
        ("decoder", [("onnx", "decoder.onnx", lm_note), ("input_ids", "input_ids", ""),
                     ("attention_mask", "attention_mask", ""), *positions,
                     ("image_attention", "image_attention_mask", "int64 [B,T]: media locations (text_time == 1)"),
                     ("cross_key", "cross.{i}.key", ""), ("cross_value", "cross.{i}.value", ""),
                     ("past_key", "past.{i}.key", ""), ("past_value", "past.{i}.value", ""), ("logits", "logits", ""),
                     ("present_key", "present.{i}.key", ""), ("present_value", "present.{i}.value", ""),
                     ("layers", parts.layers, ""), ("cross_layers", parts.cross_layers, ""),
                     ("heads", parts.heads, ""), ("head_dim", parts.head_dim, ""), ("hidden", parts.hidden, ""),
                     ("cross_width", parts.cross_width, "vis_dim"), ("vocab", parts.vocab, ""),
                     ("max_positions", parts.max_positions, "")]),
        ("prompt", [("template", parts.template, "OpenFlamingo's <image>{text}"),
                    ("add_special_tokens", parts.add_special, "<s> first (LLaMA)" if parts.add_special else ""),
                    ("image_token_id", parts.image_id, "<image>")]),
        C.preprocess_section(parts.size, parts.mean, parts.std),
        ("tokenizer", [("file", "tokenizer.json", ""), ("bos_token_id", parts.bos, bos_note),
                       ("eos_token_id", parts.eos, "<|endofchunk|>: Flamingo.generate's end"),
                       ("pad_token_id", parts.pad, "<PAD>")]),
        ("generation", [("max_new_tokens", 20, ""), ("num_beams", 1, ""), ("repetition_penalty", 1.0, "")]),
    ])


def load_from(src: Path):
    """An OpenFlamingo checkpoint folder (tools/export/README.md, "OpenFlamingo", ``--from``)::

        SRC/checkpoint.pt              OpenFlamingo's state dict (``torch.load``; a dict holding
                                       ``model_state_dict`` is accepted too): the trained parameters
                                       at least (``perceiver.*``, ``lang_encoder.gated_cross_attn_layers.*``,
                                       the resized embeddings), or the whole model
        SRC/lm/                        the language model's Hugging Face folder: config.json
                                       (model_type llama, mpt or gpt_neox), the tokenizer files, and
                                       its weights unless checkpoint.pt holds them
        SRC/vision/open_clip_config.json   open_clip's config ({"model_cfg": {"vision_cfg": ...},
                                       "preprocess_cfg": {"mean", "std"}}, as on the hub)
        SRC/vision/open_clip_model.safetensors | open_clip_pytorch_model.bin
                                       the CLIP weights (``visual.*`` used), unless checkpoint.pt
                                       holds ``vision_encoder.*``
        SRC/flamingo.json              optional: {"cross_attn_every_n_layers": n, "perceiver": {"depth",
                                       "heads", "dim_head", "num_latents"}, "cross_attn": {"heads",
                                       "dim_head"}}; absent keys are read from the checkpoint's
                                       tensors or take ``Flamingo``'s sizes (8 heads of 64)

    Built as ``create_model_and_transforms`` builds it (the LM tokenizer gets ``<|endofchunk|>``,
    ``<image>`` and, without a pad token, ``<PAD>``; the embeddings are resized), then
    ``load_state_dict(checkpoint, strict=False)``; every parameter must come from one of the files."""
    import json
    import re

    import open_clip  # noqa: F401
    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    def need(path: Path, what: str) -> Path:
        if not path.exists():
            raise SystemExit(f"export.py openflamingo: {path}: missing ({what})")
        return path

    ckpt_path = need(src / "checkpoint.pt", "OpenFlamingo's checkpoint")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the file is user input: say what it is
        raise SystemExit(f"export.py openflamingo: {ckpt_path}: not a torch state dict ({e})")
    if isinstance(ckpt, dict) and "model_state_dict" in ckpt:
        ckpt = ckpt["model_state_dict"]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise SystemExit(f"export.py openflamingo: {ckpt_path}: not a state dict of tensors")
    ckpt = {k.removeprefix("module."): v for k, v in ckpt.items()}
    lm_dir = need(src / "lm", "the language model's Hugging Face folder")
    need(lm_dir / "config.json", "the language model's config")
    vis_cfg_path = need(src / "vision" / "open_clip_config.json", "open_clip's vision config")
    extra = json.loads((src / "flamingo.json").read_text()) if (src / "flamingo.json").exists() else {}
    ocfg = json.loads(vis_cfg_path.read_text())
    mcfg = ocfg.get("model_cfg", ocfg)
    if "vision_cfg" not in mcfg:
        raise SystemExit(f"export.py openflamingo: {vis_cfg_path}: no model_cfg.vision_cfg")
    pre = ocfg.get("preprocess_cfg", {})
    vcfg = CLIPVisionCfg(**mcfg["vision_cfg"])
    size = vcfg.image_size if isinstance(vcfg.image_size, int) else vcfg.image_size[0]

    tok = AutoTokenizer.from_pretrained(str(lm_dir))
    add_flamingo_tokens(tok)
    lcfg = AutoConfig.from_pretrained(str(lm_dir))
    if getattr(lcfg, "model_type", None) not in LM_LAYERS:
        raise SystemExit(f"export.py openflamingo: {lm_dir / 'config.json'}: model_type {lcfg.model_type!r} is not "
                         f"restated by the step graph (supported: {', '.join(sorted(LM_LAYERS))})")
    weights = [f for f in lm_dir.iterdir() if f.suffix in (".safetensors", ".bin") and "model" in f.name]
    # What each file provides is tracked by tensor (the modules are wrapped, not copied, by
    # Flamingo; resize_token_embeddings makes new embedding tensors whose added rows must come
    # from the checkpoint).
    loaded: set[int] = set()
    if weights:
        lang = AutoModelForCausalLM.from_pretrained(str(lm_dir), attn_implementation="eager", dtype=torch.float32)
        loaded |= {id(t) for t in lang.state_dict(keep_vars=True).values()}
    else:
        lang = AutoModelForCausalLM.from_config(lcfg, attn_implementation="eager", dtype=torch.float32)
    lang.resize_token_embeddings(len(tok))
    visual = _build_vision_tower(int(mcfg.get("embed_dim", 512)), vcfg)
    vis_files = [src / "vision" / n for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")]
    vis_file = next((f for f in vis_files if f.exists()), None)
    if vis_file is not None:
        if vis_file.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(vis_file))
        else:
            sd = torch.load(vis_file, map_location="cpu", weights_only=True)
        vis = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
        missing, _ = visual.load_state_dict(vis, strict=False)
        if missing:
            raise SystemExit(f"export.py openflamingo: {vis_file}: no visual.{missing[0]} (and {len(missing) - 1} more)")
        loaded |= {id(t) for k, t in visual.state_dict(keep_vars=True).items() if k in vis}

    # The gated blocks under either name (training's checkpoints keep the FlamingoLayer's).
    pat = re.compile(r"lang_encoder\.(?:gated_cross_attn_layers\.(\d+)\.|.*\.(\d+)\.gated_cross_attn_layer\.)")
    gated = sorted({int(m.group(1) or m.group(2)) for k in ckpt for m in [pat.match(k)] if m})
    every_n = int(extra.get("cross_attn_every_n_layers", gated[0] + 1 if gated else 1))
    depth = len({m.group(1) for k in ckpt for m in [re.match(r"perceiver\.layers\.(\d+)\.", k)] if m})
    perceiver = {**PERCEIVER_DEFAULT, **({"depth": depth} if depth else {})}
    if "perceiver.latents" in ckpt:
        perceiver["num_latents"] = int(ckpt["perceiver.latents"].shape[0])
    perceiver = {"num_latents": 64, **perceiver, **extra.get("perceiver", {})}
    cross_attn = {**CROSS_ATTN_DEFAULT, **extra.get("cross_attn", {})}
    model = assemble(visual, lang, tok, int(vcfg.width), every_n, perceiver, cross_attn)
    # The same tensors appear under several names (FlamingoLayer wraps the blocks that
    # gated_cross_attn_layers / old_decoder_blocks also hold).
    state = model.state_dict(keep_vars=True)
    unexpected = sorted(set(ckpt) - set(state))
    if unexpected:
        raise SystemExit(f"export.py openflamingo: {ckpt_path}: {unexpected[0]} (and {len(unexpected) - 1} more) "
                         f"do not fit the model built from {lm_dir} and {vis_cfg_path}")
    try:
        model.load_state_dict(ckpt, strict=False)
    except RuntimeError as e:
        raise SystemExit(f"export.py openflamingo: {ckpt_path}: {str(e).splitlines()[-1].strip()}")
    loaded |= {id(state[k]) for k in ckpt}
    missing = sorted({n for n, t in state.items() if id(t) not in loaded} - set(ckpt))
    # Report one name per tensor (the FlamingoLayer one).
    seen, report = set(), []
    for n in missing:
        if id(state[n]) not in seen:
            seen.add(id(state[n]))
            report.append(n)
    if report:
        raise SystemExit(f"export.py openflamingo: {src}: no weights for {report[0]} (and {len(report) - 1} more) in "
                         f"{ckpt_path.name}, {lm_dir.name}/ or vision/")
    model.eval()
    mean = tuple(pre.get("mean", OPENAI_CLIP_MEAN))
    std = tuple(pre.get("std", OPENAI_CLIP_STD))
    return model, tok, size, mean, std


def save_checkpoint_folder(model, tok, kind: str, dest: Path, form: str) -> None:
    """Write ``model`` as an OpenFlamingo checkpoint folder that ``--from`` reads (the layout of
    ``load_from``): the LM's config and base tokenizer (no Flamingo tokens) in lm/, the open_clip
    vision config in vision/, the sizes in flamingo.json, and

    * ``form = "full"``: the whole ``Flamingo.state_dict()`` in checkpoint.pt;
    * ``form = "trained"``: what OpenFlamingo's training saves (``filter_state_dict_to_trainable``):
      ``perceiver.*``, the gated blocks under their FlamingoLayer names and the LM's embeddings
      (input, and output where untied) in checkpoint.pt; the LM in lm/model.safetensors with its
      base vocabulary (the embedding rows of the Flamingo tokens cut off), the ViT in
      vision/open_clip_model.safetensors (``visual.*``), as the hub ships them."""
    import copy
    import json

    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "lm").mkdir(exist_ok=True)
    (dest / "vision").mkdir(exist_ok=True)
    base = build_tokenizer(kind, flamingo_tokens=False)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lang = model.lang_encoder
    attr = LM_LAYERS[kind]
    if form == "full":
        torch.save(sd, dest / "checkpoint.pt")
        cfg = copy.deepcopy(lang.config)
        cfg.vocab_size = len(base)
        cfg.pad_token_id = None  # the base LM has none: <PAD> is one of the Flamingo tokens
        cfg.save_pretrained(str(dest / "lm"))
    else:
        emb = {"lang_encoder." + n + ".weight" for n, m in lang.named_modules()
               if m is lang.get_input_embeddings() or m is lang.get_output_embeddings()}
        trained = {k: v for k, v in sd.items()
                   if k.startswith("perceiver.") or f".{attr}." in "." + k.removeprefix("lang_encoder.")
                   and ".gated_cross_attn_layer." in k or k in emb}
        torch.save(trained, dest / "checkpoint.pt")
        # The plain LM: a fresh one of the base vocabulary, given the Flamingo LM's weights.
        from transformers import AutoModelForCausalLM

        cfg = copy.deepcopy(lang.config)
        cfg.vocab_size = len(base)
        cfg.pad_token_id = None  # the base LM has none: <PAD> is one of the Flamingo tokens
        plain = AutoModelForCausalLM.from_config(cfg)
        flat = {}
        for k, v in sd.items():
            if not k.startswith("lang_encoder.") or "gated_cross_attn_layer" in k or "old_decoder_blocks" in k:
                continue
            k = k.removeprefix("lang_encoder.").replace(".decoder_layer.", ".")
            flat[k] = v[:len(base)] if k.endswith(("wte.weight", "embed_tokens.weight", "embed_in.weight",
                                                   "embed_out.weight", "lm_head.weight")) else v
        missing, unexpected = plain.load_state_dict(flat, strict=False)
        assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
        plain.save_pretrained(str(dest / "lm"))
        save_file({"visual." + k[len("vision_encoder."):]: v.contiguous() for k, v in sd.items()
                   if k.startswith("vision_encoder.")}, str(dest / "vision" / "open_clip_model.safetensors"))
    base.save_pretrained(str(dest / "lm"))
    (dest / "vision" / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 32, "vision_cfg": TINY_VISION_CFG},
        "preprocess_cfg": {"mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)}}, indent=1))
    (dest / "flamingo.json").write_text(json.dumps({"cross_attn_every_n_layers": 2, "perceiver": TINY_PERCEIVER,
                                                    "cross_attn": TINY_CROSS_ATTN}, indent=1))


def export_openflamingo(args) -> None:
    out = Path(args.out)
    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention, in the
    # open_clip ViT) has no ONNX export; the regular path computes the same.
    torch.backends.mha.set_fastpath_enabled(False)
    if args.tiny:
        seed = DEFAULT_SEED if args.seed is None else args.seed
        init_std = DEFAULT_INIT_STD if args.init_std is None else args.init_std
        kind = TINY_LMS[args.lm]
        eos_scale = DEFAULT_EOS_SCALES[kind] if args.eos_scale is None else args.eos_scale
        model, tok = build_tiny(seed, init_std, eos_scale, kind)
        if args.save_checkpoint:
            save_checkpoint_folder(model, tok, kind, Path(args.save_checkpoint), args.checkpoint_form)
        parts = Parts(model, tok)
        lm_name = {"llama": "", "mpt": "language model MptForCausalLM, ",
                   "gpt_neox": "language model GPTNeoXForCausalLM, "}[kind]
        source = (f"random init, seed {seed}, init std {init_std}, <|endofchunk|> head row + {eos_scale} x mean hidden "
                  f"direction, {lm_name}open_flamingo 2.0.1, transformers {transformers.__version__}, "
                  f"torch {torch.__version__}")
        default_name = "openflamingo-tiny-random" if kind == "llama" else f"openflamingo-{args.lm}-tiny-random"
        meta = {"seed": seed, "init_std": init_std, "eos_row_scale": eos_scale}
    else:
        if args.save_checkpoint:
            raise SystemExit("export.py openflamingo: --save-checkpoint goes with --tiny")
        src = Path(args.source)
        if not src.is_dir():
            raise SystemExit(f"export.py openflamingo: --from {src}: not a folder (see tools/export/README.md, OpenFlamingo)")
        model, tok, size, mean, std = load_from(src)
        parts = Parts(model, tok, size, mean, std)
        source = f"OpenFlamingo checkpoint folder {src.name} (language model {parts.kind})"
        default_name = f"openflamingo-{src.name}"
        meta = {"source": str(src.name)}
    out.mkdir(parents=True, exist_ok=True)
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    worst = check_decoder_against_flamingo(parts, pixels)
    print(f"export: decoder wrapper vs Flamingo.forward: max abs diff {worst:.3g}", file=sys.stderr)
    export_graphs(parts, out, args.opset, int(args.external_data_over * (1 << 20)))
    if args.fp16:
        for g in GRAPH_FILES:
            C.to_fp16(out / g)
        source += ", fp16"
    if not args.skip_verify:
        verify_onnx(parts, out, pixels[:3], max(args.tolerance, C.FP16_TOLERANCE) if args.fp16 else args.tolerance)
    C.save_plain_tokenizer_json(tok, out / "tokenizer.json")
    write_manifest(out / "model.toml", parts, args.name or default_name, source)
    if args.fp16 and not args.no_reference:
        print("export: --fp16: no reference.json (the references are float32 Flamingo generate)", file=sys.stderr)
    elif not args.no_reference:
        ref, images_u8, pixels = compute_references(parts, meta)
        ends = sum(any(c["hit_eos"]) for c in ref["cases"])
        print(f"export: reference outputs: ends in {ends} of {len(ref['cases'])} cases", file=sys.stderr)
        C.write_reference(out, ref, C.image_bins(images_u8, pixels))
    C.report_done(out)


def add_parser(sub, command: str) -> None:
    c = sub.add_parser(command, help="export OpenFlamingo (open_flamingo Flamingo) as a cross-attention-decoder package",
                       description="Export OpenFlamingo in the IDEFICS package layout: encoder.onnx (open_clip ViT + "
                                   "perceiver), cross_kv.onnx (gated cross-attention keys/values), decoder.onnx.")
    C.add_source_args(c, from_help="an OpenFlamingo checkpoint folder: checkpoint.pt, lm/ (HF folder of a llama, mpt "
                                   "or gpt_neox LM), vision/open_clip_config.json (+ weights), optional flamingo.json "
                                   "(tools/export/README.md, OpenFlamingo)",
                      tiny_help="seeded random Flamingo of the real classes")
    c.add_argument("--lm", choices=sorted(TINY_LMS), default="llama",
                   help="with --tiny: the language model (LlamaForCausalLM, MptForCausalLM, GPTNeoXForCausalLM)")
    c.add_argument("--save-checkpoint", metavar="DIR",
                   help="with --tiny: also write the model as an OpenFlamingo checkpoint folder for --from")
    c.add_argument("--checkpoint-form", choices=["full", "trained"], default="trained",
                   help="with --save-checkpoint: the whole state dict in checkpoint.pt, or the trained "
                        "parameters only (the LM and ViT weights in lm/ and vision/, as published)")
    C.add_out_arg(c)
    C.add_opset_arg(c)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--init-std", type=float, default=None)
    c.add_argument("--eos-scale", type=float, default=None)
    C.add_name_arg(c)
    C.add_no_reference_arg(c)
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, 1e-4, "max relative ONNX Runtime vs PyTorch difference "
                                 f"(default 1e-4; at least {C.FP16_TOLERANCE} with --fp16)")
    c.add_argument("--external-data-over", type=float, default=1024.0, metavar="MIB",
                   help="a graph whose weights exceed MIB mebibytes keeps them in <graph>.onnx.data next to it "
                        "(ONNX external data; default 1024; 0 forces it for every graph)")
    c.add_argument("--fp16", action="store_true",
                   help="store weights and compute in float16 (graph inputs/outputs stay float32; model.toml "
                        "gets precision = \"fp16\"; no reference.json then)")
    c.set_defaults(func=export_openflamingo)
