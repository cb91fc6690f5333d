"""InstructBLIP with a Vicuna (Llama) language model -> an ``image-text-decoder`` package.

Reached by ``export.py instructblip`` when the checkpoint's ``text_config.model_type`` is
``llama`` (or ``--tiny --language-model llama``; registered for (instructblip, llama) in
common.py's language-model registry), and by ``export.py instructblip-vicuna`` directly.  Built on
the prefix-decoder seam (``prefix_decoder.py``); a package::

    model.toml              manifest, family = "image-text-decoder", architecture = "instructblip-llama"
    image_prefix.onnx       pixel_values [B,3,S,S] f32, qformer_input_ids [B,Lq] i64,
                            qformer_attention_mask [B,Lq] i64 -> prefix_embeds [B,Q,H] f32
                            (ViT -> instruction-aware Q-Former: the query tokens AND the prompt's
                            BERT tokens, only the query outputs kept -> language_projection)
    embed_tokens.onnx       input_ids [B,T] i64 -> inputs_embeds [B,T,H] f32
    decoder.onnx            the Llama step of prefix_decoder.py (one merged graph with KV cache)
    tokenizer.json          the Llama tokenizer (BPE, Metaspace "first", post-processor ``<s> $A``)
    qformer_tokenizer.json  the Q-Former's BERT tokenizer (``[CLS] $A [SEP]``)
    reference/              (--tiny only) HF ``generate`` references

What ``InstructBlipProcessor`` + ``InstructBlipForConditionalGeneration.generate`` do in
transformers 5.24, and how the runtime reproduces it:

* the prompt is tokenized twice: by the Q-Former's BERT tokenizer (``[CLS] p [SEP]``, right
  padded; the manifest's ``[image] qformer_input_ids`` / ``qformer_attention_mask`` and
  ``[qformer_tokenizer]``) and by the Llama tokenizer (``<s> p``, left padded); so the image
  prefix depends on the prompt and is computed per (tile, prompt);
* the LLM row is ``num_query_tokens`` image tokens, THEN the tokenized prompt (BOS after the
  image tokens; padding of a batch sits between them and BOS).  The manifest says it with
  ``template = "{image}{prompt}"``, ``add_bos = true`` and ``image_ids_first = true``: the image
  token ids are put in front of the tokenized prompt rather than tokenized within one text, since
  after an added token a Llama (Metaspace "first") tokenizer drops the first word's ``▁``;
  tessera left-pads the whole row, which gives the real tokens the same positions
  (``cumsum(mask) - 1``) as HF's middle padding (checked: same tokens from HF generate);
* without a prompt HF starts from ``[image]*Q + [bos]`` = the empty prompt's row (checked);
* the Q-Former has ``qformer_config.max_position_embeddings`` text positions: a prompt of more
  BERT tokens is refused (``[prompt] max_qformer_tokens``), not truncated (the processor does not
  truncate by default, and HF's Q-Former fails on it).
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C
import prefix_decoder as P
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

ARCHITECTURE = "instructblip-llama"
DEFAULT_SEED = 5
DEFAULT_INIT_STD = 0.5
#: --tiny: the lm_head row of </s> is multiplied by this, so that some references end early.
DEFAULT_EOS_SCALE = 1.5
NUM_QUERY_TOKENS = 4
#: --tiny: the Q-Former's text positions (a prompt of more BERT tokens is refused).
TINY_QFORMER_POSITIONS = 24
TEMPLATE = "{image}{prompt}"
REF_PROMPT = "What is in this image?"
REF_BATCH_PROMPTS = ["What is in this image?", "Describe it.",
                     "Write a short caption for this satellite scene with a river:"]

# --------------------------------------------------------------------------------------
# Tiny tokenizers: Llama (BPE, Metaspace) and the Q-Former's BERT (WordPiece)
# --------------------------------------------------------------------------------------

_SUBJECTS = ["forest", "river", "city", "desert", "farmland", "lake", "coast", "harbor", "airport",
             "mountain", "glacier", "wetland", "vineyard", "road", "bridge", "village", "field"]
_ADJS = ["dense", "green", "dry", "flooded", "bright", "dark", "sandy", "snowy", "urban", "rural"]
_FRAMES = ["a satellite image of a {a} {s}", "What is in this image? A {a} {s}.",
           "Describe the scene: {a} {s}, {t}, clouds.", "Is there a {s} here? Yes, a {a} one near the {t}.",
           "Write a short caption: the {s} is {a}."]


def caption_corpus() -> list[str]:
    out = []
    for i in range(300):
        s, t = _SUBJECTS[i % len(_SUBJECTS)], _SUBJECTS[(i * 7 + 3) % len(_SUBJECTS)]
        a = _ADJS[(i * 5 + i // 9) % len(_ADJS)]
        out.append(_FRAMES[i % len(_FRAMES)].format(a=a, s=s, t=t))
    return out


def build_llama_tokenizer():
    """A transformers 5 ``LlamaTokenizer`` (tokenizers-backed: BPE with byte fallback, Metaspace
    prepend "first", ``<s> $A``) on a small BPE vocabulary: <unk>=0, <s>=1, </s>=2, then the
    merges learned per word (``tokenizers`` BPE trainer, deterministic) and ``<pad>``;
    ``InstructBlipProcessor`` adds its ``<image>`` special token."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    raw = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation))
    raw.train_from_iterator(caption_corpus(), trainer=trainer)
    m = json.loads(raw.to_str())["model"]
    merges = [tuple(x.split(" ")) if isinstance(x, str) else tuple(x) for x in m["merges"]]
    tok = LlamaTokenizer(vocab=m["vocab"], merges=merges, add_bos_token=True, add_eos_token=False)
    tok.add_tokens([AddedToken("<pad>", normalized=False, special=True)], special_tokens=True)
    tok.pad_token = "<pad>"
    return tok


def build_bert_tokenizer():
    """The Q-Former's tokenizer: an uncased BERT WordPiece (``[CLS] $A [SEP]``), its vocabulary
    built (specials, the corpus's characters and ``##`` continuations, its words), not trained."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = {w for line in caption_corpus() for w, _ in pre.pre_tokenize_str(norm.normalize_str(line))}
    chars = sorted({c for w in words for c in w})
    pieces = specials + chars + ["##" + c for c in chars] + sorted(w for w in words if len(w) > 1)
    raw = Tokenizer(models.WordPiece(vocab={p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    raw.normalizer, raw.pre_tokenizer, raw.decoder = norm, pre, decoders.WordPiece()
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                   cls_token="[CLS]", mask_token="[MASK]", padding_side="right")


def image_processor(size: int, mean, std):
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": size, "width": size}, image_mean=list(mean), image_std=list(std))


# --------------------------------------------------------------------------------------
# The tiny model (real classes) and the image-graph wrapper
# --------------------------------------------------------------------------------------


def build_tiny(seed: int, init_std: float, eos_scale: float):
    """(model, processor): a seeded random ``InstructBlipForConditionalGeneration`` whose
    ``text_config`` is a Llama (GQA, untied head), with its ``InstructBlipProcessor``."""
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor

    tok, qtok = build_llama_tokenizer(), build_bert_tokenizer()
    proc = InstructBlipProcessor(image_processor=image_processor(32, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
                                 tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=NUM_QUERY_TOKENS)
    image_id = tok.convert_tokens_to_ids("<image>")
    torch.manual_seed(seed)
    cfg = InstructBlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            encoder_hidden_size=32, max_position_embeddings=TINY_QFORMER_POSITIONS,
                            vocab_size=len(qtok), pad_token_id=qtok.pad_token_id),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False),
        num_query_tokens=NUM_QUERY_TOKENS, image_token_index=image_id)
    cfg._attn_implementation = "eager"
    model = InstructBlipForConditionalGeneration(cfg)
    P.reinit(model, init_std)
    with torch.no_grad():
        model.language_model.lm_head.weight[tok.eos_token_id] *= eos_scale
    model.eval()
    gc = model.language_model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    return model, proc


class InstructBlipPrefix(nn.Module):
    """``get_image_features`` of InstructBLIP: ViT -> Q-Former over [query tokens; the prompt's
    BERT tokens] cross-attending to the image -> the query outputs -> language_projection."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, pixel_values, qformer_input_ids, qformer_attention_mask):
        m = self.m
        img = m.vision_model(pixel_values, return_dict=True).last_hidden_state
        img_mask = torch.ones_like(img[:, :, 0], dtype=torch.long)
        q = m.query_tokens.expand(img.shape[0], -1, -1)
        q_mask = torch.ones_like(q[:, :, 0], dtype=torch.long)
        out = m.qformer(input_ids=qformer_input_ids, attention_mask=torch.cat([q_mask, qformer_attention_mask], 1),
                        query_embeds=q, encoder_hidden_states=img, encoder_attention_mask=img_mask,
                        return_dict=True).last_hidden_state[:, :q.shape[1], :]
        return m.language_projection(out)


PREFIX_INPUTS = ["pixel_values", "qformer_input_ids", "qformer_attention_mask"]


class InstructBlipLlamaParts(P.PrefixParts):
    """The prefix-decoder parts of InstructBLIP/Llama: the image graph also takes the prompt's
    Q-Former tokens; the LLM row is the processor's (image tokens, then ``<s> prompt``)."""

    def __init__(self, model, proc, size: int, mean, std):
        tc = model.config.text_config
        if tc.model_type != "llama":
            raise ValueError(f"language model {tc.model_type!r} is not a Llama (export.py instructblip handles t5)")
        lm = model.language_model
        super().__init__(model, proc.tokenizer, size, mean, std, architecture=ARCHITECTURE,
                         prefix=InstructBlipPrefix(model), embed=model.get_input_embeddings(),
                         lm_backbone=lm.model, lm_head=lm.lm_head, text_cfg=tc,
                         tokens=int(model.config.num_query_tokens), image_token_id=int(model.config.image_token_id),
                         template=TEMPLATE, add_bos=True,
                         ref_prompts=(REF_PROMPT, REF_BATCH_PROMPTS, REF_BATCH_PROMPTS[:2]),
                         gen_model=lm, kind="instructblip")
        self.proc, self.qtok = proc, proc.qformer_tokenizer
        self.qpad = int(self.qtok.pad_token_id)
        self.qformer_positions = int(model.config.qformer_config.max_position_embeddings)
        #: unpadded LLM ids row -> the prompt it was made of (HF's forward needs the Q-Former ids
        #: of the rows the shared reference code hands over as ids only)
        self._prompt_of: dict[tuple, str] = {}

    # -- the prompt rules ---------------------------------------------------------------------
    def qformer_ids(self, prompt: str) -> list[int]:
        return list(self.qtok(prompt)["input_ids"])

    def template_ids(self, prompt: str) -> list[int]:
        """The Rust rule (``image_ids_first``): P image ids, then the prompt with the tokenizer's BOS."""
        ids = [self.image_token_id] * self.tokens + list(self.hf_tok(prompt, add_special_tokens=True)["input_ids"])
        self._prompt_of[tuple(ids)] = prompt
        return ids

    def processor_ids(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids/attention_mask from ``InstructBlipProcessor`` itself (text and images; the
        images are blank, only the text outputs are used)."""
        blank = [np.zeros((self.size, self.size, 3), np.uint8) for _ in prompts]
        enc = self.proc(images=blank, text=prompts, padding=True)
        ids, mask = np.asarray(enc["input_ids"], np.int64), np.asarray(enc["attention_mask"], np.int64)
        for r, p in enumerate(prompts):
            self._prompt_of[tuple(int(t) for t, m in zip(ids[r], mask[r]) if m)] = p
            assert list(enc["qformer_input_ids"][r][:sum(enc["qformer_attention_mask"][r])]) == self.qformer_ids(p)
        return ids, mask

    def prompts_of(self, ids: np.ndarray, mask: np.ndarray) -> list[str]:
        return [self._prompt_of[tuple(int(t) for t, m in zip(ids[r], mask[r]) if m)] for r in range(ids.shape[0])]

    def qformer_batch(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The Q-Former's ids of a batch, right padded with the pad id (what tessera feeds)."""
        rows = [self.qformer_ids(p) for p in prompts]
        n = max(len(r) for r in rows)
        ids, mask = np.full((len(rows), n), self.qpad, np.int64), np.zeros((len(rows), n), np.int64)
        for b, r in enumerate(rows):
            ids[b, :len(r)], mask[b, :len(r)] = r, 1
        return ids, mask

    # -- HF and the torch reconstruction ------------------------------------------------------
    def hf_inputs(self, ids, mask, pixels) -> dict:
        q = self.qtok(self.prompts_of(ids, mask), padding=True, return_tensors="pt")
        return dict(pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(ids),
                    attention_mask=torch.from_numpy(mask), qformer_input_ids=q["input_ids"],
                    qformer_attention_mask=q["attention_mask"])

    def assemble_embeds(self, ids: np.ndarray, pixels: np.ndarray) -> torch.Tensor:
        mask = (ids != self.pad).astype(np.int64)
        self._current = self.prompts_of(ids, mask)
        return super().assemble_embeds(ids, pixels)

    def prefix_embeds(self, pixels: np.ndarray) -> torch.Tensor:
        qids, qmask = self.qformer_batch(self._current)
        return self.prefix(torch.from_numpy(pixels), torch.from_numpy(qids), torch.from_numpy(qmask))

    # -- the image graph's extra inputs -------------------------------------------------------
    def prefix_input_names(self) -> list[str]:
        return list(PREFIX_INPUTS)

    def prefix_example_inputs(self, batch: int) -> tuple:
        qids, qmask = self.qformer_batch((["a", "What is in this image?"] * batch)[:batch])
        return (torch.zeros(batch, 3, self.size, self.size), torch.from_numpy(qids), torch.from_numpy(qmask))

    def prefix_axes(self) -> dict:
        return {"pixel_values": {0: "batch"}, "qformer_input_ids": {0: "batch", 1: "qformer_sequence"},
                "qformer_attention_mask": {0: "batch", 1: "qformer_sequence"}, "prefix_embeds": {0: "batch"}}

    def prefix_verify_inputs(self, batch: int, gen: torch.Generator) -> tuple:
        prompts = (REF_BATCH_PROMPTS * batch)[:batch]
        qids, qmask = self.qformer_batch(prompts)
        return (torch.randn(batch, 3, self.size, self.size, generator=gen), torch.from_numpy(qids),
                torch.from_numpy(qmask))

    def manifest_extra(self) -> list[tuple[str, list]]:
        return [
            ("image", [("qformer_input_ids", "qformer_input_ids", "int64 [B,Lq]: the prompt's [qformer_tokenizer] ids"),
                       ("qformer_attention_mask", "qformer_attention_mask", "int64 [B,Lq]")]),
            ("prompt", [("image_ids_first", True, "image token ids, then the tokenized prompt (as the processor)"),
                        ("max_qformer_tokens", self.qformer_positions,
                         "the Q-Former's positions: longer prompts are refused")]),
            ("qformer_tokenizer", [("file", "qformer_tokenizer.json", "the Q-Former's BERT WordPiece"),
                                   ("eos_token_id", int(self.qtok.sep_token_id), "[SEP]"),
                                   ("pad_token_id", self.qpad, "")]),
        ]

    def reference_extra(self) -> dict:
        return {"num_query_tokens": self.tokens, "qformer_max_positions": self.qformer_positions,
                "qformer_pad_token_id": self.qpad}


# --------------------------------------------------------------------------------------
# Checks of our own beyond the shared references
# --------------------------------------------------------------------------------------


def extra_references(parts: InstructBlipLlamaParts) -> dict:
    """The Q-Former ids of every reference prompt, HF generate without a prompt (its own start:
    image tokens + [bos]) against the empty prompt's row, the processor's pixels against ours,
    and a prompt too long for the Q-Former."""
    names, images_u8 = C.make_reference_images(parts.size)
    pixels = C.preprocess_u8(images_u8, parts.mean, parts.std)
    prompts = sorted({REF_PROMPT, *REF_BATCH_PROMPTS, ""})
    qformer_ids = {p: parts.qformer_ids(p) for p in prompts}
    llm_ids = {p: parts.template_ids(p) for p in prompts}
    enc = parts.proc(images=list(images_u8), text=[""] * len(names), return_tensors="pt")
    pixel_diff = float((enc["pixel_values"] - torch.from_numpy(pixels)).abs().max())
    gen = dict(max_new_tokens=12, do_sample=False, bos_token_id=parts.bos, eos_token_id=parts.eos,
               pad_token_id=parts.pad)
    cases = []
    for nb in (1, 3):
        q = parts.qtok([""] * 2, padding=True, return_tensors="pt")
        px = torch.from_numpy(pixels[[1, 2]])
        own = parts.model.generate(pixel_values=px, qformer_input_ids=q["input_ids"],
                                   qformer_attention_mask=q["attention_mask"], num_beams=nb, **gen)
        ids, mask = parts.left_pad([parts.template_ids("")] * 2)
        ours = parts.hf_generate(ids, mask, pixels[[1, 2]], num_beams=nb, **gen)
        own_new = own[:, ids.shape[1]:].numpy()
        trimmed = [P._trim(r, parts.eos)[0] for r in own_new]
        cases.append({"name": f"{'greedy' if nb == 1 else 'beam3'}_batch2_empty_prompt", "images": [1, 2],
                      "prompts": ["", ""], "generation": {"num_beams": nb, "max_new_tokens": 12},
                      "new_tokens": trimmed,
                      "checks": {"hf_no_prompt_start_equals_empty_prompt_row": bool(np.array_equal(own_new, ours))}})
        print(f"export: {cases[-1]['name']}: {trimmed} hf-start==empty-row {np.array_equal(own_new, ours)}",
              file=sys.stderr)
    words = " ".join(["forest"] * (parts.qformer_positions - 1))
    return {"qformer_ids": qformer_ids, "llm_ids": llm_ids, "processor_pixel_max_abs_diff": pixel_diff,
            "empty_prompt_cases": cases,
            "too_long_prompt": {"prompt": words, "qformer_tokens": len(parts.qformer_ids(words)),
                                "max_qformer_tokens": parts.qformer_positions}}


# --------------------------------------------------------------------------------------
# Loading a real checkpoint, the tiny save_pretrained folder
# --------------------------------------------------------------------------------------


def load_checkpoint(src: str) -> InstructBlipLlamaParts:
    from transformers import AutoTokenizer, InstructBlipForConditionalGeneration, InstructBlipProcessor

    pp = C.image_processor_config(src)
    tok = AutoTokenizer.from_pretrained(src)
    qtok = AutoTokenizer.from_pretrained(src, subfolder="qformer_tokenizer")
    model = InstructBlipForConditionalGeneration.from_pretrained(src, attn_implementation="eager",
                                                                 dtype=torch.float32).eval()
    vc = model.config.vision_config
    size = C.square_size(pp, vc.image_size)
    if size != vc.image_size:
        raise ValueError(f"image processor size {size} != vision_config.image_size {vc.image_size}")
    pc = C.read_json(src, "processor_config.json") or {}
    if pc.get("num_query_tokens") not in (None, model.config.num_query_tokens):
        raise ValueError(f"processor num_query_tokens {pc['num_query_tokens']} != model "
                         f"{model.config.num_query_tokens}")
    proc = InstructBlipProcessor(image_processor=image_processor(size, pp["image_mean"], pp["image_std"]),
                                 tokenizer=tok, qformer_tokenizer=qtok,
                                 num_query_tokens=model.config.num_query_tokens)
    if proc.tokenizer.convert_tokens_to_ids("<image>") != model.config.image_token_id:
        raise ValueError(f"the tokenizer's <image> is not the model's image_token_id {model.config.image_token_id}")
    return InstructBlipLlamaParts(model, proc, size, pp["image_mean"], pp["image_std"])


def save_pretrained_dir(parts: InstructBlipLlamaParts, sp: Path) -> None:
    """A --tiny model as a hub-like folder (to test --from): model, tokenizers, processor files."""
    parts.model.save_pretrained(sp)
    parts.hf_tok.save_pretrained(sp)
    parts.qtok.save_pretrained(sp / "qformer_tokenizer")
    pre = {"image_mean": parts.mean, "image_std": parts.std, "do_normalize": True, "do_rescale": True,
           "rescale_factor": 1 / 255, "image_processor_type": "BlipImageProcessor",
           "size": {"height": parts.size, "width": parts.size}}
    proc = {"processor_class": "InstructBlipProcessor", "num_query_tokens": parts.tokens}
    (sp / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    (sp / "processor_config.json").write_text(json.dumps(proc, indent=1))


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def export_instructblip_llama(args) -> None:
    """``export.py instructblip`` for a Llama (Vicuna) language model, ``export.py instructblip-vicuna``."""
    if getattr(args, "command", None) == "instructblip-vicuna" and not args.tiny:
        lm = C.language_model_type(args, "llama")
        if lm != "llama":
            raise SystemExit(f"export.py instructblip-vicuna: the checkpoint's language model is {lm!r}, "
                             "not llama (use export.py instructblip)")
    for k, v in dict(fp16=False, opset=C.DEFAULT_OPSET).items():
        if not hasattr(args, k):
            setattr(args, k, v)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tv = transformers.__version__
    seed_info = None
    if args.tiny:
        seed = DEFAULT_SEED if args.seed is None else args.seed
        init_std = DEFAULT_INIT_STD if args.init_std is None else args.init_std
        eos_scale = DEFAULT_EOS_SCALE if args.eos_scale is None else args.eos_scale
        model, proc = build_tiny(seed, init_std, eos_scale)
        parts = InstructBlipLlamaParts(model, proc, model.config.vision_config.image_size, OPENAI_CLIP_MEAN,
                                       OPENAI_CLIP_STD)
        name = args.name or f"{ARCHITECTURE}-tiny-random"
        source = (f"random init, seed {seed}, init std {init_std}, </s> row of lm_head x{eos_scale}, "
                  f"transformers {tv}, torch {torch.__version__}")
        trained = False
        if not args.no_reference:
            seed_info = dict(seed=seed, init_std=init_std, eos_logit_scale=eos_scale)
        if getattr(args, "save_pretrained", None):
            save_pretrained_dir(parts, Path(args.save_pretrained))
            print(f"export: wrote save_pretrained folder {args.save_pretrained}", file=sys.stderr)
    else:
        parts = load_checkpoint(args.source)
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
        trained = True
    C.save_plain_tokenizer_json(parts.qtok, out / "qformer_tokenizer.json")
    P.export_prefix_package(args, parts, name=name, source=source, trained=trained,
                            reference_seed_info=seed_info)
    if seed_info is not None:
        path = out / "reference" / "reference.json"
        ref = json.loads(path.read_text(encoding="utf-8"))
        ref.update(extra_references(parts))
        path.write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")


# ``export.py instructblip`` (t5_export) hands a Llama language model over to this module.
C.register_language_model_exporter("instructblip", "llama", export_instructblip_llama)


def add_parser(sub, command: str) -> None:
    """Add the ``instructblip-vicuna`` subcommand (export.py's subparsers)."""
    c = sub.add_parser(command, help="export InstructBLIP with a Vicuna/Llama language model "
                                     "(InstructBlipForConditionalGeneration) as an image-text-decoder package "
                                     "(also reached by 'instructblip' on a Llama checkpoint)",
                       description="Export InstructBLIP / Vicuna: image_prefix.onnx (ViT, instruction-aware "
                                   "Q-Former reading the prompt's qformer_input_ids), embed_tokens.onnx, "
                                   "decoder.onnx (Llama step with KV cache), tokenizer.json, "
                                   "qformer_tokenizer.json, model.toml.")
    C.add_source_args(c, from_help="hub id (e.g. Salesforce/instructblip-vicuna-7b) or a save_pretrained folder "
                                   "with the processor files and qformer_tokenizer/",
                      tiny_help="seeded random InstructBlipForConditionalGeneration with a Llama of the real classes")
    C.add_out_arg(c)
    P.add_prefix_args(c, seed=DEFAULT_SEED, init_std=DEFAULT_INIT_STD, eos_scale=DEFAULT_EOS_SCALE, tolerance=1e-4)
    c.set_defaults(func=export_instructblip_llama)
