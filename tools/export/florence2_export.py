"""Florence-2 (``Florence2ForConditionalGeneration``) -> ``cross-attention-decoder`` packages,
encoder-decoder kind.

Used by ``export.py florence2`` (see tools/export/README.md, "Florence-2").  A package::

    model.toml          manifest, family = "cross-attention-decoder", architecture = "florence2"
    encoder.onnx        pixel_values [B,3,S,S] f32, input_ids [B,L] i64, attention_mask [B,L] i64
                        -> memory [B,N+L,E] f32, memory_mask [B,N+L] i64 (once per tile):
                        DaViT + projector -> N image tokens, then the prompt's token embeddings,
                        through the BART encoder (the merged sequence exactly as HF builds it)
    cross_kv.onnx       memory [B,M,E] -> cross.{i}.key / cross.{i}.value [B,heads,M,head_dim]
    decoder.onnx        one merged BART decoder step graph (prefill = past length 0):
                        input_ids [B,T], attention_mask [B,past+T], position_ids [B,T],
                        memory_mask [B,M], cross.{i}.key/value, past.{i}.key/value
                        -> logits [B,T,V], present.{i}.key/value
    tokenizer.json      HF tokenizers file (byte-level BPE, RoBERTa/BART post-processor
                        ``<s> $A </s>``, Florence-2's added tokens incl. <loc_0>..<loc_999>)
    reference/          (--tiny only) PyTorch ``generate`` references

How HF turns a task into the encoder's tokens (transformers 5.24, ``Florence2Processor``):

* ``_construct_prompts``: a task token without input (``<CAPTION>``, ``<OCR>``, ``<OD>``, ...)
  must be the whole prompt and becomes its fixed text ("What does the image describe?"); a task
  with input (``<CAPTION_TO_PHRASE_GROUNDING>``, ...) has the token removed, the rest stripped
  and put in its template's ``{input}``; any other prompt is used as it is.  The manifest's
  ``[tasks.prompts]`` is that table, read from the processor (not retyped).
* the text becomes ``<image> * N + "<s>" + prompt + "</s>"``, tokenized WITHOUT special tokens:
  the same ids as tokenizing the prompt WITH the tokenizer's special tokens, after N image
  placeholders.  The placeholders are replaced by the N projected image features
  (``masked_scatter``), so the encoder graph takes the prompt ids only and prepends the image
  tokens itself (``memory_mask`` = N ones, then the prompt mask).
* batches are right padded (BART: positions count from 0 over the whole sequence, padding is
  masked out of the encoder and the cross-attention), so a batch item encodes as it does alone.
* the decoder starts from ``decoder_start_token_id`` (``</s>``, 2) and ends on ``eos`` (``</s>``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C

DEFAULT_SEED = 0
DEFAULT_INIT_STD = 0.15
#: --tiny: added to the </s> logit (through the last layer norm's bias), so that some references end.
DEFAULT_EOS_SCALE = 1.3
#: --tiny: factor on the cross-attention and feed-forward output weights of the decoder.
TINY_BLOCK_SCALE = 1.0

FAMILY = "cross-attention-decoder"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

#: Florence-2's added tokens, in the order of the original processor (ids 50265.. in the real
#: vocabulary, after BART's 50265): 4 + 1000 location tokens + 20; then <image>.
FLORENCE_TOKENS = (['<od>', '</od>', '<ocr>', '</ocr>'] + [f'<loc_{x}>' for x in range(1000)]
                   + ['<cap>', '</cap>', '<ncap>', '</ncap>', '<dcap>', '</dcap>', '<grounding>',
                      '</grounding>', '<seg>', '</seg>', '<sep>', '<region_cap>', '</region_cap>',
                      '<region_to_desciption>', '</region_to_desciption>', '<proposal>', '</proposal>',
                      '<poly>', '</poly>', '<and>'])
IMAGE_TOKEN = "<image>"

#: Florence-2's generation defaults as published with the checkpoints (microsoft/Florence-2-*
#: config.json text_config, and the model cards' ``num_beams=3``; not re-checked offline).  --tiny
#: sets them as the tiny model's generation_config; --from reads the checkpoint's instead.
FLORENCE_GENERATION = dict(num_beams=3, no_repeat_ngram_size=3, early_stopping=True,
                           forced_bos_token_id=0, forced_eos_token_id=2)

#: The caption tasks of this package kind (the others produce boxes/polygons: a later issue).
CAPTION_TASKS = ["<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OCR>"]

# --------------------------------------------------------------------------------------
# Tiny byte-level BPE tokenizer (BART layout) with Florence-2's added tokens
# --------------------------------------------------------------------------------------

_SUBJECTS = ["forest", "river", "city", "desert", "farmland", "lake", "coast", "harbor", "airport",
             "mountain", "road", "bridge", "village", "field", "beach", "island", "canal"]
_ADJS = ["dense", "green", "dry", "flooded", "bright", "dark", "sandy", "snowy", "urban", "rural",
         "small", "large", "narrow", "wide"]
_FRAMES = ["A satellite image of a {a} {s}.",
           "The image shows a {a} {s} next to a {t}.",
           "In this aerial photo, a {s} is {a} and surrounded by {t}.",
           "There is a {a} {s} with a {t} in the middle of the picture.",
           "STOP 24 {S} ROAD",
           "a {s} at the {t}"]


def tokenizer_corpus(prompt_texts: list[str]) -> list[str]:
    lines = [p.replace("{input}", "a green field") for p in prompt_texts] * 3
    for i in range(300):
        s = _SUBJECTS[i % len(_SUBJECTS)]
        t = _SUBJECTS[(i * 7 + 3) % len(_SUBJECTS)]
        a = _ADJS[(i * 5 + i // 9) % len(_ADJS)]
        lines.append(_FRAMES[i % len(_FRAMES)].format(a=a, s=s, t=t, S=s.upper()))
    return lines


def build_tiny_tokenizer(folder: Path, prompt_texts: list[str], vocab_size: int = 320):
    """A BartTokenizer (transformers 5: the tokenizers-backed RobertaTokenizer) over a tiny
    byte-level BPE: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, the trained pieces,
    ``<mask>``, Florence-2's 1024 added tokens, ``<image>``; post-processor ``<s> $A </s>``.

    The real BART vocabulary (50265 pieces) is in no locally installed package and would not fit
    a 3 MB fixture; the layout, the added tokens and the class are Florence-2's.  Written to
    ``folder`` as tokenizer.json + tokenizer_config.json and loaded back with AutoTokenizer, as a
    checkpoint's tokenizer is.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(prompt_texts), trainer=trainer)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False)])
    tok.add_special_tokens([AddedToken(t, normalized=False) for t in FLORENCE_TOKENS])
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, normalized=False)])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False,
                                                      trim_offsets=True)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BartTokenizer", "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
        "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
        "add_prefix_space": False, "model_max_length": 1024,
        "extra_special_tokens": {"image_token": IMAGE_TOKEN},
        "additional_special_tokens": FLORENCE_TOKENS}))
    return AutoTokenizer.from_pretrained(str(folder))


# --------------------------------------------------------------------------------------
# Tiny model
# --------------------------------------------------------------------------------------


def _reinit(model: nn.Module, std: float) -> None:
    """Re-draw every Linear/Embedding/Conv weight N(0, std) (biases N(0, std/4)); norms stay."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.normal_(m.bias, 0.0, std / 4)


#: --tiny: the processor's ``post_processor_config`` (the checkpoints' processor_config.json has
#: one; without it ``post_process_generation`` refuses every task). The banned grounding phrases
#: are the tiny fixture's: the real list comes with a checkpoint (--from) and goes to the manifest.
TINY_POST_PROCESSOR = {"ocr": {"PATTERN": None, "AREA_THRESHOLD": 0.0},
                       "phrase_grounding": {"banned_grounding_tokens": ["the image"]},
                       "pure_text": {}, "description_with_bboxes": {}, "description_with_polygons": {},
                       "polygons": {}, "bboxes": {}, "description_with_bboxes_or_polygons": {}}


def tiny_processor(hf_tok, size: int, image_tokens: int):
    from transformers import CLIPImageProcessor, Florence2Processor

    ip = CLIPImageProcessor(size={"height": size, "width": size}, do_resize=True, do_center_crop=False,
                            do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    ip.image_seq_length = image_tokens
    return Florence2Processor(image_processor=ip, tokenizer=hf_tok, post_processor_config=TINY_POST_PROCESSOR)


#: --shape choices ("tiny": the test fixture with references; "mid": a random benchmark model
#: without reference/: Florence-2-base's BART (d_model 768, 6 + 6 layers, 12 heads, ffn 3072, vocab
#: 51289) on the tiny DaViT at 224 px (7 x 7 + 1 = 50 image tokens)).
SHAPES = ["tiny", "mid", "od"]
#: init std / </s> logit offset of the benchmark shape (benchmarks force the caption length).
BENCH_INIT_STD = 0.02
BENCH_EOS_SCALE = 1.0
#: Florence-2's vocabulary size: the mid shape's logits are this wide, although the tiny tokenizer
#: only knows its first ids (ids past it decode to nothing).
FLORENCE_VOCAB = 51289


def build_tiny(seed: int, init_std: float, eos_scale: float, scratch: Path, shape: str = "tiny"):
    """(model, hf_tok, processor): a seeded random Florence2ForConditionalGeneration of the real
    classes: a 4-stage DaViT (strides 4,2,2,2 as Florence-2, window 2) on 64x64 images -> 2x2
    spatial + 1 temporal = 5 image tokens, and a 2+2 layer BART of width 32.

    The LM head is untied from the word embeddings (``tie_word_embeddings=False``; Florence-2
    ties them): a tied random head predicts the token it was fed.
    """
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    prompt_texts = list(_task_tables(None)[0].values())
    hf_tok = build_tiny_tokenizer(scratch / "tokenizer", prompt_texts)
    V = len(hf_tok)
    torch.manual_seed(seed)
    mid = shape == "mid"
    size = 224 if mid else 64
    text = (dict(vocab_size=FLORENCE_VOCAB, d_model=768, encoder_layers=6, decoder_layers=6,
                 encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                 decoder_ffn_dim=3072, max_position_embeddings=1024) if mid else
            dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                 encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                 decoder_ffn_dim=64, max_position_embeddings=128))
    cfg = Florence2Config(
        vision_config=dict(depths=[1, 1, 1, 1], embed_dim=[16, 24, 32, 48], num_heads=[1, 2, 2, 4],
                           num_groups=[1, 2, 2, 4], window_size=2, projection_dim=768 if mid else 32,
                           drop_path_rate=0.0, max_position_embeddings=50, max_temporal_embeddings=100),
        text_config=dict(model_type="bart", **text, bos_token_id=0, pad_token_id=1,
                         eos_token_id=2, decoder_start_token_id=2, dropout=0.0, attention_dropout=0.0,
                         activation_dropout=0.0, scale_embedding=False, tie_word_embeddings=False),
        image_token_id=hf_tok.image_token_id,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    model = Florence2ForConditionalGeneration(cfg)
    _reinit(model, init_std)
    with torch.no_grad():
        # Florence-2's head has no bias: give the last layer norm a bias c and add
        # eos_scale * c / |c|^2 to the </s> row, so that the </s> logit rises by about eos_scale.
        ln = model.model.language_model.decoder.layers[-1].final_layer_norm
        c = 0.3 * torch.randn(ln.bias.shape[0])
        ln.bias.copy_(c)
        model.lm_head.weight[2] += eos_scale * c / c.dot(c)
        for layer in (model.model.language_model.decoder.layers if not mid else []):
            layer.encoder_attn.out_proj.weight.mul_(TINY_BLOCK_SCALE)
            layer.fc2.weight.mul_(TINY_BLOCK_SCALE)
    if shape == "od":
        write_boxes(model, hf_tok)
    model.eval()
    for k, v in FLORENCE_GENERATION.items():
        setattr(model.generation_config, k, v)
    image_tokens = (size // 32) ** 2 + 1
    return model, hf_tok, tiny_processor(hf_tok, size, image_tokens), size


#: --shape od: the answer the biased model writes, one entry per decoder position from 1 (position
#: 0, the start token, gives the forced <s>): tokens by name, or (first, count) location ranges
#: whose tokens are raised alike (the image and the random weights pick one). Two boxes: "ROAD"
#: and "the image" (a banned grounding phrase of the tiny processor), then </s>.
OD_ANSWER = ["ĠROAD", (100, 40), (200, 40), (500, 40), (600, 40),
             "Ġthe", "Ġimage", (300, 40), (20, 40), (900, 40), (940, 40), "</s>"]
#: --shape od: the position signal added to the decoder's position embeddings, and the head's
#: gain along it.
OD_POSITION_SCALE = 20.0
OD_HEAD_GAIN = 3.0
#: --shape od: generation length (the answer is 13 tokens with <s>).
OD_MAX_NEW_TOKENS = 16


def write_boxes(model, hf_tok) -> None:
    """--shape od: make the tiny model write ``OD_ANSWER`` whatever the task: position p of the
    decoder gets a large embedding along a unit direction u_p of its own (mean zero, so layer norms
    keep it; u_p orthogonal to the others), and the head's rows of position p's tokens get
    ``OD_HEAD_GAIN * u_p``. The random weights, the image and the prompt still move every logit, so
    the location picked in each range, and the probabilities, are the model's."""
    with torch.no_grad():
        _write_boxes(model, hf_tok)


def _write_boxes(model, hf_tok) -> None:
    dec = model.model.language_model.decoder
    d = int(dec.embed_positions.weight.shape[1])
    if 2 * len(OD_ANSWER) > d:
        raise SystemExit("export: --shape od: the answer is longer than the decoder width allows")
    off = int(dec.embed_positions.offset)
    for p, want in enumerate(OD_ANSWER, start=1):
        u = torch.zeros(d)
        u[2 * (p - 1)], u[2 * (p - 1) + 1] = 2 ** -0.5, -(2 ** -0.5)
        ids = ([hf_tok.convert_tokens_to_ids(want)] if isinstance(want, str)
               else [hf_tok.convert_tokens_to_ids(f"<loc_{k}>") for k in range(want[0], want[0] + want[1])])
        if any(i is None or i == hf_tok.unk_token_id for i in ids):
            raise SystemExit(f"export: --shape od: the tiny tokenizer has no {want}")
        dec.embed_positions.weight[p + off] += OD_POSITION_SCALE * u
        for i in ids:
            model.lm_head.weight[i] += OD_HEAD_GAIN * u


def _task_tables(processor):
    """(prompts, outputs): task token -> prompt text (``{input}`` where the task takes text),
    task token -> HF post-processing type; from a Florence2Processor's own tables."""
    if processor is None:
        # The tables are set in Florence2Processor.__init__ before it touches its arguments'
        # contents; build a bare instance's tables without an image processor or tokenizer.
        from transformers import Florence2Processor

        class _Stub:
            image_seq_length = 0
            image_token = IMAGE_TOKEN
            image_token_id = 0
            all_special_tokens: list[str] = []

        p = Florence2Processor.__new__(Florence2Processor)
        try:
            Florence2Processor.__init__(p, image_processor=_Stub(), tokenizer=_Stub())
        except Exception:  # noqa: BLE001 - ProcessorMixin rejects the stubs after the tables are set
            pass
        processor = p
    prompts = dict(processor.task_prompts_without_inputs)
    prompts.update(processor.task_prompts_with_input)
    return prompts, dict(processor.tasks_answer_post_processing_type)


# --------------------------------------------------------------------------------------
# Wrappers (what goes into the three graphs)
# --------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """pixel_values + prompt ids/mask -> BART encoder output over [image tokens, prompt], mask.

    HF: ``inputs_embeds = embed(input_ids)`` with N ``<image>`` placeholders first, replaced by
    the projected image features; ``language_model.encoder(inputs_embeds, attention_mask)``.
    """

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, pixel_values, input_ids, attention_mask):
        img = self.m.model.get_image_features(pixel_values).pooler_output
        emb = self.m.get_input_embeddings()(input_ids)
        x = torch.cat([img.to(emb.dtype), emb], dim=1)
        ones = torch.ones_like(img[:, :, 0], dtype=attention_mask.dtype)
        mask = torch.cat([ones, attention_mask], dim=1)
        mem = self.m.model.language_model.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state
        return mem, mask


class CrossKV(nn.Module):
    """Every decoder layer's cross-attention (``encoder_attn``) key/value projections."""

    def __init__(self, decoder, heads: int, head_dim: int):
        super().__init__()
        self.layers = decoder.layers
        self.heads, self.head_dim = heads, head_dim

    def forward(self, memory):
        B, M = memory.shape[0], memory.shape[1]
        out = []
        for layer in self.layers:
            a = layer.encoder_attn
            out.append(a.k_proj(memory).view(B, M, self.heads, self.head_dim).transpose(1, 2))
            out.append(a.v_proj(memory).view(B, M, self.heads, self.head_dim).transpose(1, 2))
        return tuple(out)


def _additive_mask(attention_mask: torch.Tensor, ids: torch.Tensor, dtype) -> torch.Tensor:
    """[B,1,T,past+T]: 0 where key j <= query position and mask[b,j] == 1, else finfo.min
    (a padding query may attend to itself, so that no row is fully masked)."""
    ones_k = torch.ones_like(attention_mask[:1, :])
    k_idx = torch.cumsum(ones_k, dim=1) - 1
    total = torch.sum(ones_k, dim=1, keepdim=True)
    ones_q = torch.ones_like(ids[:1, :])
    q_idx = torch.cumsum(ones_q, dim=1) - 1 + (total - torch.sum(ones_q, dim=1, keepdim=True))
    causal = k_idx[:, None, :] <= q_idx[:, :, None]
    diag = k_idx[:, None, :] == q_idx[:, :, None]
    allowed = (causal[:, None, :, :] & (attention_mask[:, None, None, :] != 0)) | diag[:, None, :, :]
    return torch.where(allowed, torch.zeros((), dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype))


def _attend(q, k, v, mask_add, scaling):
    w = torch.matmul(q, k.transpose(-1, -2)) * scaling + mask_add
    return torch.matmul(torch.softmax(w, dim=-1), v)


class DecoderStep(nn.Module):
    """HF BartDecoder (eager, post-LN) + Florence-2's lm_head, with explicit position ids, a
    tensor self-attention cache and precomputed cross-attention keys/values."""

    def __init__(self, model):
        super().__init__()
        self.dec = model.model.language_model.decoder
        self.lm_head = model.lm_head
        tc = model.config.text_config
        self.n_layers = int(tc.decoder_layers)
        self.heads = int(tc.decoder_attention_heads)
        self.head_dim = int(tc.d_model) // self.heads

    def forward(self, input_ids, attention_mask, position_ids, memory_mask, *kv):
        L = self.n_layers
        cross, past = kv[:2 * L], kv[2 * L:]
        d = self.dec
        h = d.embed_tokens(input_ids) + d.embed_positions.weight[position_ids + d.embed_positions.offset]
        h = d.layernorm_embedding(h)
        self_mask = _additive_mask(attention_mask, input_ids, h.dtype)
        neg = torch.tensor(torch.finfo(h.dtype).min, dtype=h.dtype)
        cross_mask = torch.where(memory_mask[:, None, None, :] != 0, torch.zeros((), dtype=h.dtype), neg)
        B = h.shape[0]
        presents = []
        for i, layer in enumerate(d.layers):
            a = layer.self_attn
            q = a.q_proj(h).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(h).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            ctx = _attend(q, k, v, self_mask, a.scaling).transpose(1, 2).reshape(B, -1, self.heads * self.head_dim)
            h = layer.self_attn_layer_norm(h + a.out_proj(ctx))
            c = layer.encoder_attn
            q = c.q_proj(h).view(B, -1, self.heads, self.head_dim).transpose(1, 2)
            ctx = C.attend_item_rows(q, cross[2 * i], cross[2 * i + 1], cross_mask,
                                     lambda q, k, v, m: _attend(q, k, v, m, c.scaling))
            ctx = ctx.transpose(1, 2).reshape(B, -1, self.heads * self.head_dim)
            h = layer.encoder_attn_layer_norm(h + c.out_proj(ctx))
            h = layer.final_layer_norm(h + layer.fc2(layer.activation_fn(layer.fc1(h))))
        return (self.lm_head(h), *presents)


# --------------------------------------------------------------------------------------
# Model plumbing
# --------------------------------------------------------------------------------------


class Parts:
    """Everything the exporter needs about one loaded Florence-2 model."""

    def __init__(self, model, hf_tok, processor, size: int, mean, std, generation: dict):
        self.model, self.hf_tok, self.processor = model, hf_tok, processor
        self.size, self.mean, self.std = size, list(mean), list(std)
        tc = model.config.text_config
        self.encoder = Encoder(model).eval()
        self.decoder = DecoderStep(model).eval()
        self.layers, self.heads, self.head_dim = self.decoder.n_layers, self.decoder.heads, self.decoder.head_dim
        self.cross = CrossKV(model.model.language_model.decoder, self.heads, self.head_dim).eval()
        self.hidden = int(tc.d_model)
        self.vocab = int(tc.vocab_size)
        self.max_positions = int(tc.max_position_embeddings)
        self.bos, self.eos, self.pad = int(hf_tok.bos_token_id), int(hf_tok.eos_token_id), int(hf_tok.pad_token_id)
        self.decoder_start = int(tc.decoder_start_token_id)
        self.image_token_id = int(model.config.image_token_id)
        self.image_tokens = int(processor.num_image_tokens)
        self.task_prompts, self.task_outputs = _task_tables(processor)
        loc = [hf_tok.convert_tokens_to_ids(f"<loc_{k}>") for k in range(1000)]
        if loc != list(range(loc[0], loc[0] + 1000)):
            raise SystemExit("export: the tokenizer's <loc_0>..<loc_999> are not one contiguous id range")
        self.loc_first = int(loc[0])
        self.generation = generation
        self.max_new_tokens = 12
        ppc = getattr(processor, "post_processor_config", None) or {}
        self.banned_phrases = [str(t) for t in ppc.get("phrase_grounding", {}).get("banned_grounding_tokens", [])]

    # -- the prompt rule the Rust side implements (manifest [tasks] + [prompt]) --------------
    def prompt_text(self, prompt: str) -> str:
        """Florence2Processor._construct_prompts, re-stated from the manifest's table."""
        for token, text in self.task_prompts.items():
            if token in prompt:
                if "{input}" in text:
                    return text.format(input=prompt.replace(token, "").strip())
                if prompt != token:
                    raise ValueError(f"Task token {token} should be the only content in the prompt.")
                return text
        return prompt

    def prompt_ids(self, prompt: str) -> list[int]:
        return list(self.hf_tok(self.prompt_text(prompt))["input_ids"])

    def hf_inputs(self, images_u8: np.ndarray, prompts: list[str]):
        """The HF processor's own inputs (text and images)."""
        imgs = [images_u8[k] for k in range(images_u8.shape[0])]
        return self.processor(text=prompts, images=imgs, return_tensors="pt", padding=True)

    def hf_generate(self, images_u8: np.ndarray, pixels: np.ndarray, prompts: list[str], **kw):
        """HF generate from the processor's inputs, with the package's exact pixels (the
        processor's resize/rescale path is checked separately): new tokens per item."""
        enc = self.hf_inputs(images_u8, prompts)
        out = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                  pixel_values=torch.from_numpy(pixels), **kw)
        # encoder-decoder: the output starts with decoder_start_token_id
        return [trim(r.tolist()[1:], self.eos) for r in out]


def trim(row: list[int], eos: int) -> list[int]:
    """New tokens up to and including the first end token (the rest of a row is padding)."""
    out = []
    for t in row:
        out.append(int(t))
        if t == eos:
            break
    return out


def empty_past(parts: Parts, batch: int) -> list[torch.Tensor]:
    return [torch.zeros(batch, parts.heads, 0, parts.head_dim) for _ in range(2 * parts.layers)]


def right_padded(parts: Parts, prompts: list[str]):
    rows = [parts.prompt_ids(p) for p in prompts]
    L = max(len(r) for r in rows)
    ids = np.full((len(rows), L), parts.pad, np.int64)
    mask = np.zeros((len(rows), L), np.int64)
    for k, r in enumerate(rows):
        ids[k, :len(r)] = r
        mask[k, :len(r)] = 1
    return ids, mask


def check_against_hf(parts: Parts, images_u8: np.ndarray, pixels: np.ndarray, prompts: list[str]) -> float:
    """The processor's ids are N image tokens + the manifest rule's ids; the encoder wrapper
    gives HF's encoder output; the step graph (prefill + cached steps) gives HF's logits."""
    enc = parts.hf_inputs(images_u8, prompts)
    N = parts.image_tokens
    ids, mask = right_padded(parts, prompts)
    if not (enc["input_ids"][:, :N] == parts.image_token_id).all():
        raise SystemExit("export: the processor's input does not start with the image tokens")
    if enc["input_ids"][:, N:].tolist() != ids.tolist() or enc["attention_mask"][:, N:].tolist() != mask.tolist():
        raise SystemExit(f"export: processor ids {enc['input_ids'][:, N:].tolist()} != prompt rule {ids.tolist()}")
    # the processor's pixels equal the package preprocessing (resize is the identity at size S)
    pp = enc["pixel_values"].numpy()
    worst_px = float(np.abs(pp - pixels).max())
    if worst_px > 1e-5:
        raise SystemExit(f"export: processor pixel_values differ from (v/255-mean)/std by {worst_px:.3g}")
    px = torch.from_numpy(pixels)
    ref = parts.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=px,
                      decoder_input_ids=None, use_cache=False)
    mem, mmask = parts.encoder(px, torch.from_numpy(ids), torch.from_numpy(mask))
    worst = float((mem - ref.encoder_last_hidden_state).abs().max())
    # decoder: a random continuation after decoder_start, full forward vs prefill + steps
    gen = torch.Generator().manual_seed(7)
    B, T = pixels.shape[0], 7
    dids = torch.randint(4, parts.vocab, (B, T), generator=gen)
    dids[:, 0] = parts.decoder_start
    full = parts.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=px,
                       decoder_input_ids=dids, use_cache=False).logits
    cross = parts.cross(mem)
    split = 4
    out = parts.decoder(dids[:, :split], torch.ones(B, split, dtype=torch.long),
                        torch.arange(split)[None].expand(B, -1), mmask, *cross, *empty_past(parts, B))
    worst = max(worst, float((out[0] - full[:, :split]).abs().max()))
    past = list(out[1:])
    for t in range(split, T):
        out = parts.decoder(dids[:, t:t + 1], torch.ones(B, t + 1, dtype=torch.long),
                            torch.full((B, 1), t, dtype=torch.long), mmask, *cross, *past)
        past = list(out[1:])
        worst = max(worst, float((out[0][:, 0] - full[:, t]).abs().max()))
    if worst > 1e-4:
        raise SystemExit(f"export: wrappers differ from HF Florence2ForConditionalGeneration by {worst:.3g}")
    return worst


def io_names(layers: int):
    cross = [f"cross.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    past = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return cross, past, present


def export_graphs(parts: Parts, out: Path, opset: int) -> None:
    L = parts.layers
    cross_names, past_names, present_names = io_names(L)
    px = torch.zeros(2, 3, parts.size, parts.size)
    ids = torch.tensor([[parts.bos, 5, 6, parts.eos], [parts.bos, 7, parts.eos, parts.pad]])
    mask = (ids != parts.pad).long()
    C.export_onnx(parts.encoder, (px, ids, mask), out / "encoder.onnx",
                  ["pixel_values", "input_ids", "attention_mask"], ["memory", "memory_mask"],
                  {"pixel_values": {0: "batch"}, "input_ids": {0: "batch", 1: "prompt"},
                   "attention_mask": {0: "batch", 1: "prompt"}, "memory": {0: "batch", 1: "memory"},
                   "memory_mask": {0: "batch", 1: "memory"}}, opset, external_data_bytes=1 << 30)
    mem, mmask = parts.encoder(px, ids, mask)
    axes = {"memory": {0: "batch", 1: "memory"}}
    axes.update({n: {0: "batch", 2: "memory"} for n in cross_names})
    C.export_onnx(parts.cross, (mem,), out / "cross_kv.onnx", ["memory"], cross_names, axes, opset,
                  external_data_bytes=1 << 30)
    cross = parts.cross(mem)
    B, T, P = 2, 3, 2
    dids = torch.full((B, T), parts.decoder_start, dtype=torch.long)
    dmask = torch.ones(B, P + T, dtype=torch.long)
    pos = torch.arange(P, P + T)[None].expand(B, -1).contiguous()
    past = [torch.zeros(B, parts.heads, P, parts.head_dim) for _ in range(2 * L)]
    ins = ["input_ids", "attention_mask", "position_ids", "memory_mask", *cross_names, *past_names]
    outs = ["logits", *present_names]
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "new"}, "memory_mask": {0: "batch", 1: "memory"},
            "logits": {0: "batch", 1: "new"}}
    axes.update({n: {0: "batch", 2: "memory"} for n in cross_names})
    axes.update({n: {0: "batch", 2: "past"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    C.export_onnx(parts.decoder, (dids, dmask, pos, mmask, *cross, *past), out / "decoder.onnx", ins, outs, axes,
                  opset, external_data_bytes=1 << 30)


def verify_onnx_against_torch(parts: Parts, out: Path, pixels: np.ndarray, prompts: list[str], tol: float) -> float:
    """ONNX Runtime vs the torch wrappers: memory + mask, cross K/V, prefill and a cached step,
    on a right-padded batch of different prompts."""
    enc, crs, dec = (C.ort_session(out / n) for n in ("encoder.onnx", "cross_kv.onnx", "decoder.onnx"))
    cross_names, past_names, _ = io_names(parts.layers)
    ids, mask = right_padded(parts, prompts)
    mem, mmask = enc.run(None, {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask})
    mem_t, mmask_t = parts.encoder(torch.from_numpy(pixels), torch.from_numpy(ids), torch.from_numpy(mask))
    if mmask.tolist() != mmask_t.tolist():
        raise SystemExit("export: ONNX memory_mask differs from PyTorch")
    worst = C.rel_diff(mem, mem_t.numpy())
    cross = crs.run(None, {"memory": mem})
    cross_t = parts.cross(mem_t)
    for a, b in zip(cross, cross_t):
        worst = max(worst, C.rel_diff(a, b.numpy()))
    B = pixels.shape[0]
    feeds = {"input_ids": np.array([[parts.decoder_start, 9, 12]] * B, np.int64),
             "attention_mask": np.ones((B, 3), np.int64),
             "position_ids": np.tile(np.arange(3, dtype=np.int64), (B, 1)), "memory_mask": mmask}
    feeds.update(dict(zip(cross_names, cross)))
    feeds.update({n: np.zeros((B, parts.heads, 0, parts.head_dim), np.float32) for n in past_names})
    order = ["input_ids", "attention_mask", "position_ids", "memory_mask", *cross_names, *past_names]
    got = dec.run(None, feeds)
    ref = parts.decoder(*(torch.from_numpy(feeds[n]) for n in order))
    for a, b in zip(got, ref):
        worst = max(worst, C.rel_diff(a, b.numpy()))
    # one cached step
    feeds2 = dict(feeds)
    feeds2.update({"input_ids": np.full((B, 1), 14, np.int64), "attention_mask": np.ones((B, 4), np.int64),
                   "position_ids": np.full((B, 1), 3, np.int64)})
    feeds2.update(dict(zip(past_names, got[1:])))
    got2 = dec.run(None, feeds2)
    ref2 = parts.decoder(*(torch.from_numpy(feeds2[n]) for n in order))
    for a, b in zip(got2, ref2):
        worst = max(worst, C.rel_diff(a, b.numpy()))
    C.verify_item_rows(lambda f: dec.run(None, f), feeds2, ["memory_mask", *cross_names], tol)
    if worst > tol:
        raise SystemExit(f"export: ONNX Runtime differs from PyTorch by {worst:.3g} (> {tol})")
    print(f"export: ONNX Runtime vs PyTorch: max rel diff {worst:.3g}", file=sys.stderr)
    return worst


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------

#: The plain search (no n-gram blocking, no forced tokens, HF early_stopping=False) of most cases;
#: the florence_defaults_* cases use Florence-2's own defaults, the *_ngram* / *_early_stop* cases
#: one setting each.
SUPPORTED = dict(no_repeat_ngram_size=0, forced_bos_token_id=None, forced_eos_token_id=None, early_stopping=False)


def reference_cases(n_images: int) -> list[dict]:
    greedy = dict(max_new_tokens=12, num_beams=1, do_sample=False, **SUPPORTED)
    beams = dict(max_new_tokens=12, num_beams=3, do_sample=False, length_penalty=1.0, **SUPPORTED)
    cases = []
    for i in range(n_images):
        cases.append(dict(name=f"greedy_caption_img{i}", images=[i], prompts=["<CAPTION>"], gen=greedy))
    for k, task in enumerate(CAPTION_TASKS[1:]):
        cases.append(dict(name=f"greedy_{task.strip('<>').lower()}_img{k}", images=[k], prompts=[task], gen=greedy))
    cases.append(dict(name="greedy_empty_prompt_img1", images=[1], prompts=[""], gen=greedy))
    cases.append(dict(name="greedy_free_text_img2", images=[2], prompts=["a satellite image of"], gen=greedy))
    cases.append(dict(name="beam3_caption_img1", images=[1], prompts=["<CAPTION>"], gen=beams))
    cases.append(dict(name="beam3_ocr_img3", images=[3], prompts=["<OCR>"], gen=beams))
    cases.append(dict(name="greedy_batch_tasks", images=[0, 1, 2, 3], prompts=CAPTION_TASKS, gen=greedy))
    cases.append(dict(name="beam3_batch_tasks", images=[3, 2, 1, 0], prompts=CAPTION_TASKS, gen=beams))
    cases.append(dict(name="greedy_batch_caption", images=[0, 1, 2, 3], prompts=["<CAPTION>"] * 4, gen=greedy))
    cases.append(dict(name="greedy_penalties_img3", images=[3], prompts=["<DETAILED_CAPTION>"],
                      gen=dict(max_new_tokens=10, min_new_tokens=6, num_beams=1, do_sample=False,
                               repetition_penalty=1.5, **SUPPORTED)))
    # Florence-2's own defaults (n-gram blocking, forced <s>/</s>, early stopping): the package's
    # [generation].
    fl = dict(max_new_tokens=12, do_sample=False, **FLORENCE_GENERATION)
    cases.append(dict(name="florence_defaults_caption_img0", images=[0], prompts=["<CAPTION>"], gen=fl))
    cases.append(dict(name="florence_defaults_batch_tasks", images=[0, 1, 2, 3], prompts=CAPTION_TASKS, gen=fl))
    # One of those settings at a time, where it changes the tokens of this tiny model.
    plain = {**SUPPORTED}
    cases.append(dict(name="greedy_ngram2_batch_tasks", images=[0, 1, 2, 3], prompts=CAPTION_TASKS,
                      gen=dict(greedy, no_repeat_ngram_size=2)))
    cases.append(dict(name="beam3_ngram2_batch_tasks", images=[0, 1, 2, 3], prompts=CAPTION_TASKS,
                      gen=dict(beams, max_new_tokens=20, no_repeat_ngram_size=2)))
    mixed = dict(images=[1, 1, 2, 3], prompts=["<CAPTION>", "<DETAILED_CAPTION>", "<CAPTION>", "<OCR>"])
    for name, es, lp in [("beam3_early_stop_false_batch", False, 1.0), ("beam3_early_stop_true_batch", True, 1.0),
                         ("beam3_early_stop_never_lp2_batch", "never", 2.0),
                         ("beam3_early_stop_true_lp2_batch", True, 2.0)]:
        cases.append(dict(name=name, **mixed, gen=dict(max_new_tokens=20, num_beams=3, do_sample=False,
                                                       length_penalty=lp, **dict(plain, early_stopping=es))))
    cases.append(dict(name="greedy_forced_bos_eos_batch_tasks", images=[0, 1, 2, 3], prompts=CAPTION_TASKS,
                      gen=dict(greedy, forced_bos_token_id=0, forced_eos_token_id=2)))
    return cases


def compute_references(parts: Parts, seed: int, init_std: float, eos_scale: float):
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    out_cases = []
    for c in reference_cases(len(names)):
        sel = c["images"]
        px = np.ascontiguousarray(pixels[sel])
        u8 = images_u8[sel]
        new = parts.hf_generate(u8, px, c["prompts"], **c["gen"])
        alone = [parts.hf_generate(u8[k:k + 1], px[k:k + 1], [p], **c["gen"])[0] for k, p in enumerate(c["prompts"])]
        gen = {"max_new_tokens": 20, "min_new_tokens": 0, "num_beams": 1, "repetition_penalty": 1.0,
               "length_penalty": 1.0, "early_stopping": False, "no_repeat_ngram_size": 0,
               "forced_bos_token_id": None, "forced_eos_token_id": None}
        gen.update({k: v for k, v in c["gen"].items() if k != "do_sample"})
        out_cases.append({
            "name": c["name"],
            "supported": True,
            "images": sel,
            "prompts": c["prompts"],
            "prompt_texts": [parts.prompt_text(p) for p in c["prompts"]],
            "encoder_input_ids": [parts.prompt_ids(p) for p in c["prompts"]],
            "decoder_start_ids": [parts.decoder_start],
            "generation": gen,
            "new_tokens": new,
            "hit_eos": [bool(t and t[-1] == parts.eos) for t in new],
            "text": [parts.hf_tok.decode(t, skip_special_tokens=True) for t in new],
            "checks": {"batch_equals_items": new == alone},
        })
        print(f"export: {c['name']}: {new} batch==items={new == alone}", file=sys.stderr)
    ids, mask = right_padded(parts, ["<CAPTION>"])
    mem, _ = parts.encoder(torch.from_numpy(pixels[:1]), torch.from_numpy(ids), torch.from_numpy(mask))
    ref = {
        "description": "PyTorch Florence2ForConditionalGeneration.generate() references for this package "
                       "(tools/export/export.py florence2), inputs from Florence2Processor; new tokens only "
                       "(the decoder start token excluded). Cases florence_defaults_* use Florence-2's "
                       "generation defaults (the package's [generation]).",
        "architecture": "florence2",
        "seed": seed, "init_std": init_std, "eos_scale": eos_scale,
        "transformers": transformers.__version__, "torch": torch.__version__,
        **C.images_block(names, parts.size, len(names)),
        "mean": parts.mean, "std": parts.std,
        "bos_token_id": parts.bos, "eos_token_id": parts.eos, "pad_token_id": parts.pad,
        "decoder_start_token_id": parts.decoder_start, "image_tokens": parts.image_tokens,
        "image_token_id": parts.image_token_id,
        "hf_generation_defaults": {k: parts.generation.get(k) for k in FLORENCE_GENERATION},
        "memory_shape": list(mem.shape), "memory_img0_caption_first8": mem[0, 0, :8].tolist(),
        "memory_img0_caption_prompt_first8": mem[0, parts.image_tokens, :8].tolist(),
        "cases": out_cases,
    }
    return ref, images_u8, pixels


#: --shape od reference cases: (name, images, prompts, generation overrides of the package's).
OD_CASES = [
    ("od_img{k}", "each", ["<OD>"], {}),
    ("ovd_ship_img{k}", "each", ["<OPEN_VOCABULARY_DETECTION>ship"], {}),
    ("grounding_img{k}", "each", ["<CAPTION_TO_PHRASE_GROUNDING>the image and a ROAD"], {}),
    ("region_proposal_img0", [0], ["<REGION_PROPOSAL>"], {}),
    ("od_greedy_batch", [0, 1, 2, 3], ["<OD>"] * 4, {"num_beams": 1}),
]


def compute_od_references(parts: Parts, seed: int, init_std: float, eos_scale: float):
    """--shape od: HF generate under the package's [generation] (and greedy), each answer's
    token log-probabilities (``compute_transition_scores``), its text
    (``batch_decode(..., skip_special_tokens=False)``) and ``post_process_generation``."""
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    base = dict(max_new_tokens=parts.max_new_tokens, do_sample=False, **FLORENCE_GENERATION)
    cases = []
    for name, sel, prompts, over in OD_CASES:
        groups = [[k] for k in range(len(names))] if sel == "each" else [sel]
        for g in groups:
            gen = {**base, **over}
            px = np.ascontiguousarray(pixels[g])
            enc = parts.hf_inputs(images_u8[g], prompts)
            out = parts.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                       pixel_values=torch.from_numpy(px), output_scores=True,
                                       return_dict_in_generate=True, **gen)
            lps = parts.model.compute_transition_scores(out.sequences, out.scores, getattr(out, "beam_indices", None),
                                                        normalize_logits=gen["num_beams"] == 1)
            items = []
            for b in range(len(g)):
                seq = out.sequences[b].tolist()
                new = trim(seq[1:], parts.eos)
                text = parts.processor.batch_decode([seq], skip_special_tokens=False)[0]
                task = next(t for t in parts.task_prompts if t in prompts[b])
                parsed = parts.processor.post_process_generation(text, task=task, image_size=(parts.size, parts.size))
                items.append({"image": g[b], "prompt": prompts[b], "task": task, "new_tokens": new,
                              "logprobs": [float(x) for x in lps[b, :len(new)].tolist()],
                              "text": text,
                              "new_text": parts.hf_tok.decode(new, skip_special_tokens=False),
                              "post_processed": parsed[task]})
            cname = name.format(k=g[0])
            cases.append({"name": cname, "generation": {k: v for k, v in gen.items() if k != "do_sample"},
                          "items": items})
            print(f"export: {cname}: {[i['new_tokens'] for i in items]} -> {[i['post_processed'] for i in items]}",
                  file=sys.stderr)
    ref = {
        "description": "Florence-2 --shape od references (tools/export/export.py florence2 --tiny --shape od): "
                       "HF generate's new tokens (the decoder start excluded), their log-probabilities "
                       "(compute_transition_scores: normalised for greedy, the processed beam log-probabilities "
                       "for beams), the sequence decoded with special tokens and "
                       "Florence2Processor.post_process_generation of it at image_size (S, S).",
        "architecture": "florence2", "seed": seed, "init_std": init_std, "eos_scale": eos_scale,
        "od_answer": [w if isinstance(w, str) else list(w) for w in OD_ANSWER],
        "transformers": transformers.__version__, "torch": torch.__version__,
        **C.images_block(names, parts.size, len(names)),
        "mean": parts.mean, "std": parts.std, "eos_token_id": parts.eos,
        "loc_first_token_id": parts.loc_first, "image_size": [parts.size, parts.size],
        "cases": cases,
    }
    return ref, images_u8, pixels


def ort_greedy(parts: Parts, out: Path, pixels: np.ndarray, prompts: list[str], max_new: int) -> list[list[int]]:
    """The package's rules run with ONNX Runtime alone (what the Rust runtime does): right-padded
    prompt ids into the encoder, the cross K/V once, the decoder from [decoder_start] with
    positions 0, 1, ..., greedy, ended rows fed the pad id."""
    enc, crs, dec = (C.ort_session(out / n) for n in ("encoder.onnx", "cross_kv.onnx", "decoder.onnx"))
    cross_names, past_names, _ = io_names(parts.layers)
    ids, mask = right_padded(parts, prompts)
    mem, mmask = enc.run(None, {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask})
    cross = dict(zip(cross_names, crs.run(None, {"memory": mem})))
    B = pixels.shape[0]
    past = {n: np.zeros((B, parts.heads, 0, parts.head_dim), np.float32) for n in past_names}
    tokens = np.full((B, 1), parts.decoder_start, np.int64)
    rows: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    for t in range(max_new):
        got = dec.run(None, {"input_ids": tokens, "attention_mask": np.ones((B, t + 1), np.int64),
                             "position_ids": np.full((B, 1), t, np.int64), "memory_mask": mmask,
                             **cross, **past})
        past = dict(zip(past_names, got[1:]))
        nxt = got[0][:, -1].argmax(-1)
        for b in range(B):
            if not done[b]:
                rows[b].append(int(nxt[b]))
                done[b] = int(nxt[b]) == parts.eos
        if all(done):
            break
        tokens = np.array([[parts.pad if done[b] else int(nxt[b])] for b in range(B)], np.int64)
    return rows


def degeneracy_report(ref: dict) -> tuple[bool, str]:
    greedy = [c for c in ref["cases"] if c["name"].startswith("greedy_caption_img")]
    outs = [tuple(c["new_tokens"][0]) for c in greedy]
    distinct = len(set(outs)) == len(outs)
    max_distinct = max(len(set(t)) for c in ref["cases"] for t in c["new_tokens"])
    eos_cases = [c["name"] for c in ref["cases"] if any(c["hit_eos"])]
    long_cases = [c["name"] for c in ref["cases"] if not all(c["hit_eos"])]
    task_batch = next(c for c in ref["cases"] if c["name"] == "greedy_batch_tasks")
    tasks_differ = len({tuple(t) for t in task_batch["new_tokens"]}) > 1
    ok = distinct and max_distinct >= 5 and len(eos_cases) > 0 and len(long_cases) > 0 and tasks_differ
    return ok, (f"distinct across images {distinct}, most distinct tokens in a caption {max_distinct}, "
                f"ends in {len(eos_cases)} cases, runs to max_new_tokens in {len(long_cases)}, "
                f"task prompts change the output {tasks_differ}")


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def _q(key: str) -> str:
    """A quoted TOML key (task tokens contain '<', '>')."""
    return json.dumps(key)


def write_manifest(path: Path, parts: Parts, *, name: str, trained: bool, source: str) -> None:
    caption_tasks = [t for t, kind in parts.task_outputs.items() if kind == "pure_text"]
    C.write_toml(path, [
        (None, [("family", FAMILY, ""), ("architecture", "florence2", ""), ("name", name, ""),
                ("trained", trained, ""), ("source", source, "")]),
        ("encoder", [("onnx", "encoder.onnx", "run once per tile"),
                     ("pixel_values", "pixel_values", "float32 [B,3,S,S], already normalised"),
                     ("input_ids", "input_ids", "int64 [B,L]: <s> prompt text </s>, right padded"),
                     ("attention_mask", "attention_mask", "int64 [B,L]"),
                     ("memory", "memory", "float32 [B,M,E], M = query_tokens + L"),
                     ("memory_mask", "memory_mask", "int64 [B,M] output: the cross-attention mask"),
                     ("query_tokens", parts.image_tokens, "memory rows before the prompt's (image tokens)")]),
        *C.cross_decoder_sections(layers=parts.layers, heads=parts.heads, head_dim=parts.head_dim,
                                  hidden=parts.hidden, cross_width=parts.hidden, vocab=parts.vocab,
                                  position_ids="int64 [B,T]: 0 for the start token (BART)",
                                  max_positions=(parts.max_positions, "decoder positions; also the encoder's M")),
        ("prompt", [("add_special_tokens", True, "tokenize the prompt text as <s> text </s>"),
                    ("empty_prompt_ids", parts.prompt_ids(""), "HF with no text: <s></s>"),
                    ("start_token_id", parts.decoder_start, "the decoder starts from </s> alone (its decoder_start_token_id)")]),
        ("tasks", [("default", "<CAPTION>", "the prompt when none is given"),
                   ("caption", caption_tasks, "tasks answered with plain text (the caption command)")]),
        ("tasks.prompts", [(_q(t), p, "") for t, p in parts.task_prompts.items()]),
        ("tasks.outputs", [(_q(t), k, "") for t, k in parts.task_outputs.items()]),
        ("locations", [("first_token_id", parts.loc_first, "<loc_0>; <loc_k> = first_token_id + k"),
                       ("count", 1000, "<loc_0>..<loc_999>"),
                       ("bins", [1000, 1000], "x, y: coordinate = (k + 0.5) * size / bins")]),
        ("grounding", [("task", "<OD>", "tessera detect without --prompts"),
                       ("prompt", "<OPEN_VOCABULARY_DETECTION>{prompt}", "what each --prompts entry becomes"),
                       ("banned_phrases", parts.banned_phrases,
                        "phrase grounding drops these (processor banned_grounding_tokens)")]),
        C.preprocess_section(parts.size, parts.mean, parts.std),
        ("tokenizer", [("file", "tokenizer.json", "byte-level BPE (BART) + Florence-2's added tokens"),
                       ("bos_token_id", parts.bos, "<s>"),
                       ("eos_token_id", parts.eos, "</s>: generation ends here"),
                       ("pad_token_id", parts.pad, "<pad>")]),
        ("generation", [("max_new_tokens", parts.max_new_tokens, ""), ("num_beams", int(parts.generation.get("num_beams") or 1),
                                                     "the checkpoint's generation_config, as the rest"),
                        ("repetition_penalty", 1.0, "")] + generation_keys(parts.generation)),
    ])


def generation_keys(g: dict) -> list:
    """``[generation]`` keys for the checkpoint's n-gram blocking, forced tokens and early stopping
    (HF generation_config names), the ones it sets."""
    keys = []
    if g.get("no_repeat_ngram_size"):
        n = int(g["no_repeat_ngram_size"])
        keys.append(("no_repeat_ngram_size", n, f"no {n} tokens twice in the same order"))
    es = g.get("early_stopping")
    if es is not None and es is not False:
        keys.append(("early_stopping", es, "beam search stops once each item has num_beams finished"
                     if es is True else ""))
    if g.get("forced_bos_token_id") is not None:
        keys.append(("forced_bos_token_id", int(g["forced_bos_token_id"]), "<s> as the first generated token"))
    if g.get("forced_eos_token_id") is not None:
        eos = g["forced_eos_token_id"]
        if isinstance(eos, (list, tuple)):
            if len(eos) != 1:
                raise SystemExit(f"export: forced_eos_token_id {eos}: tessera takes one token")
            eos = eos[0]
        keys.append(("forced_eos_token_id", int(eos), "</s> as the token at max_new_tokens"))
    return keys


# --------------------------------------------------------------------------------------
# Loading a real checkpoint
# --------------------------------------------------------------------------------------


def load_checkpoint(src: str) -> Parts:
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    pp = C.image_processor_config(src)
    proc = AutoProcessor.from_pretrained(src)
    model = Florence2ForConditionalGeneration.from_pretrained(src, attn_implementation="eager",
                                                              dtype=torch.float32).eval()
    # Florence-2 resizes to size (768x768) without a centre crop; its crop_size is unused.
    ip = proc.image_processor
    sz = ip.crop_size if getattr(ip, "do_center_crop", False) else ip.size
    size = C.square_size({"size": dict(sz)}, 768)
    if not getattr(ip, "do_resize", True):
        raise SystemExit(f"export: {src}: the image processor does not resize; tessera needs a fixed size")
    g = model.generation_config.to_dict()
    return Parts(model, proc.tokenizer, proc, size, pp["image_mean"], pp["image_std"],
                 {k: g.get(k) for k in FLORENCE_GENERATION})


def tiny_parts(scratch: Path, shape: str = "tiny", seed=None, init_std=None, eos_scale=None):
    """(parts, seed, init_std, eos_scale) of ``--tiny [--shape S]`` with these overrides (None: the
    defaults; ``scratch``: a folder for the tokenizer files); also what bench/peer_caption_xdec.py
    builds to time HF generate on the same weights."""
    bench = shape not in ("tiny", "od")
    seed = DEFAULT_SEED if seed is None else seed
    init_std = (BENCH_INIT_STD if bench else DEFAULT_INIT_STD) if init_std is None else init_std
    eos_scale = (BENCH_EOS_SCALE if bench else DEFAULT_EOS_SCALE) if eos_scale is None else eos_scale
    model, hf_tok, proc, size = build_tiny(seed, init_std, eos_scale, scratch, shape)
    parts = Parts(model, hf_tok, proc, size, IMAGENET_MEAN, IMAGENET_STD, dict(FLORENCE_GENERATION))
    return parts, seed, init_std, eos_scale


def export_florence2(args) -> None:
    import tempfile

    shape = getattr(args, "shape", "tiny")
    if shape != "tiny" and not args.tiny:
        raise SystemExit("--shape only applies with --tiny")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tv = transformers.__version__
    with tempfile.TemporaryDirectory(prefix="florence2-export-") as tmp:
        if args.tiny:
            parts, seed, init_std, eos_scale = tiny_parts(Path(tmp), shape, args.seed, args.init_std, args.eos_scale)
            name = args.name or f"florence2-{shape}-random"
            source = (f"random init, seed {seed}, init std {init_std}, </s> logit +{eos_scale}, untied head, "
                      + ("" if shape == "tiny" else f"shape {shape}, ")
                      + f"transformers {tv}, torch {torch.__version__}")
            trained = False
        else:
            parts = load_checkpoint(args.source)
            name = args.name or Path(args.source.rstrip("/")).name
            source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
            trained = True
        names, images_u8 = C.make_reference_images(parts.size)
        pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
        worst = check_against_hf(parts, images_u8[:3], pixels[:3], ["<CAPTION>", "<MORE_DETAILED_CAPTION>", "<OCR>"])
        print(f"export: wrappers vs HF Florence2ForConditionalGeneration: max abs diff {worst:.3g}", file=sys.stderr)
        export_graphs(parts, out, args.opset)
        if not args.skip_verify:
            verify_onnx_against_torch(parts, out, pixels[:3], ["<CAPTION>", "<DETAILED_CAPTION>", "<OCR>"],
                                      args.tolerance)
        C.save_plain_tokenizer_json(parts.hf_tok, out / "tokenizer.json")
        if shape == "od":
            parts.max_new_tokens = OD_MAX_NEW_TOKENS
        write_manifest(out / "model.toml", parts, name=name, trained=trained, source=source)
        if args.tiny and shape == "tiny" and not args.no_reference:
            ref, images_u8, pixels = compute_references(parts, seed, init_std, eos_scale)
            ok, msg = degeneracy_report(ref)
            ref["degeneracy_check"] = {"ok": ok, "summary": msg}
            print(f"export: reference outputs: {msg}", file=sys.stderr)
            if not ok:
                print("export: WARNING the reference outputs are degenerate (see above)", file=sys.stderr)
            case = next(c for c in ref["cases"] if c["name"] == "greedy_batch_tasks")
            got = ort_greedy(parts, out, np.ascontiguousarray(pixels[case["images"]]), case["prompts"],
                             case["generation"]["max_new_tokens"])
            if got != case["new_tokens"]:
                raise SystemExit(f"export: ONNX Runtime greedy loop {got} != HF generate {case['new_tokens']}")
            print("export: ONNX Runtime greedy loop over the package == HF generate (greedy_batch_tasks)",
                  file=sys.stderr)
            ref["checks"] = {"ort_greedy_equals_hf": "greedy_batch_tasks"}
            C.write_reference(out, ref, C.image_bins(images_u8, pixels))
        if args.tiny and shape == "od" and not args.no_reference:
            ref, images_u8, pixels = compute_od_references(parts, seed, init_std, eos_scale)
            # The plain greedy loop of ort_greedy against HF's plain greedy search.
            sel, prompts = [0, 1, 2, 3], ["<OD>"] * 4
            px = np.ascontiguousarray(pixels[sel])
            got = ort_greedy(parts, out, px, prompts, parts.max_new_tokens)
            want = parts.hf_generate(images_u8[sel], px, prompts, max_new_tokens=parts.max_new_tokens,
                                     num_beams=1, do_sample=False, **SUPPORTED)
            if got != want:
                raise SystemExit(f"export: ONNX Runtime greedy loop {got} != HF generate {want}")
            boxes = sum(len(i["post_processed"].get("bboxes", [])) for c in ref["cases"] for i in c["items"])
            if boxes == 0:
                raise SystemExit("export: --shape od: the processor parsed no box from the references")
            print(f"export: ONNX Runtime greedy loop == HF generate (od_greedy_batch); {boxes} reference boxes",
                  file=sys.stderr)
            ref["checks"] = {"ort_greedy_equals_hf": "plain greedy <OD> on images 0-3"}
            C.write_reference(out, ref, C.image_bins(images_u8, pixels))
    C.report_done(out)


def add_parser(sub, command: str) -> None:
    """Add the ``florence2`` subcommand (export.py's subparsers)."""
    c = sub.add_parser(command, help="export Florence-2 (Florence2ForConditionalGeneration) as an encoder-decoder "
                                     "cross-attention-decoder package",
                       description="Export Florence-2: encoder.onnx (DaViT + projector + BART encoder over image "
                                   "tokens and the task prompt), cross_kv.onnx (every decoder layer's "
                                   "cross-attention keys/values), decoder.onnx (BART decoder step with a "
                                   "self-attention cache), tokenizer.json, model.toml with the task prompts.")
    C.add_source_args(c, from_help="hub id (e.g. florence-community/Florence-2-base) or a save_pretrained folder "
                                   "with the processor files (transformers-native Florence-2, not the "
                                   "trust_remote_code microsoft/ repos)",
                      tiny_help="seeded random Florence2ForConditionalGeneration of the real classes")
    C.add_out_arg(c)
    C.add_opset_arg(c)
    c.add_argument("--seed", type=int, default=None, help=f"--tiny: seed (default {DEFAULT_SEED})")
    c.add_argument("--init-std", type=float, default=None, help=f"--tiny: init std (default {DEFAULT_INIT_STD})")
    c.add_argument("--eos-scale", type=float, default=None,
                   help=f"--tiny: added to the </s> logit (default {DEFAULT_EOS_SCALE})")
    c.add_argument("--shape", choices=SHAPES, default="tiny",
                   help="--tiny: 'tiny' (default: the test fixture with reference/), 'mid', a random benchmark "
                        "model without reference/ (Florence-2-base's BART: d_model 768, 6 + 6 layers, vocab "
                        "51289; the tiny DaViT at 224 px), or 'od': 'tiny' with position embeddings and head "
                        "rows biased so that it writes two boxes of location tokens, with detection "
                        "references (tokens, log-probabilities, post_process_generation)")
    C.add_name_arg(c)
    C.add_no_reference_arg(c)
    C.add_skip_verify_arg(c)
    C.add_tolerance_arg(c, 1e-4, "max diff / max(1, max|ref|) allowed between ONNX Runtime and PyTorch "
                                 "(default 1e-4)")
    c.set_defaults(func=export_florence2)
