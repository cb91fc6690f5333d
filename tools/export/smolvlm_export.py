"""SmolVLM (Idefics3 layout: SigLIP, pixel-shuffle connector, SmolLM2 / Llama decoder)
-> ``image-text-decoder`` packages (``export.py smolvlm``).

Hugging Face ``Idefics3ForConditionalGeneration`` (the SmolVLM-256M/500M/Instruct checkpoints) or
``SmolVLMForConditionalGeneration`` (SmolVLM2), transformers 5.24, one image per prompt, **image
splitting off**, on the prefix-decoder seam (``prefix_decoder.py``: ``SmolVLMParts`` subclasses
``PrefixParts``, the language model is the registry's ``llama`` step): a tile is already small, so it is the processor's single "global" image of
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
import prefix_decoder as PD

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
#: --shape choices ("tiny" first: the default, the test fixture with references).
SHAPES = ["tiny", "mid"]
#: init std / EOS logit scale of the benchmark shape (HF-like init; benchmarks force the caption length).
BENCH_INIT_STD = 0.02
BENCH_EOS_SCALE = 1.0
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


def build_tiny(seed: int, init_std: float, eos_scale: float, shape: str = "tiny"):
    """(model, processor): seeded random Idefics3 (SigLIP 32 px / patch 4 -> 64 patches, pixel
    shuffle 2 -> 16 image tokens; Llama 2 layers, hidden 64, 4 heads, 2 kv heads).

    ``shape="mid"`` (benchmarks, no references): SmolLM2-135M's language model (Llama, hidden 576,
    30 layers, 9 heads, 3 kv heads, ffn 1536; ~106 M parameters besides the tiny vocabulary) and a
    small SigLIP at SmolVLM-256M's 512 px / patch 16 with its pixel shuffle 4 (64 image tokens)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    tok = build_tiny_tokenizer()
    if shape == "tiny":
        size, patch, scale = 32, 4, 2
        vis = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        lm = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    elif shape == "mid":
        size, patch, scale = 512, 16, 4
        vis = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
        lm = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, head_dim=64, max_position_embeddings=256)
    else:
        raise ValueError(f"unknown smolvlm --shape {shape!r}")
    tokens = (size // patch) ** 2 // scale ** 2
    proc = build_processor(tok, size, tokens)
    tok = proc.tokenizer
    V = len(tok)
    torch.manual_seed(seed)
    cfg = Idefics3Config(
        vision_config=dict(**vis, image_size=size, patch_size=patch),
        text_config=dict(model_type="llama", vocab_size=V, **lm,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )
    cfg._attn_implementation = "eager"
    model = Idefics3ForConditionalGeneration(cfg)
    PD.reinit(model, init_std)
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


class SmolVLMParts(PD.PrefixParts):
    """SmolVLM / Idefics3 on the prefix-decoder seam: the Llama (SmolLM2) step of the registry, the
    prompt rule of ``Idefics3Processor`` (the chat template, image splitting off), HF generate on
    [B, 1, 3, S, S] pixels, and ``<end_of_utterance>`` (generation_config) as the end token."""

    def __init__(self, model, tok, size: int, mean, std, proc=None):
        cfg = model.config
        tc = cfg.text_config
        if tc.model_type != "llama":
            raise SystemExit(f"export: smolvlm: the language model is '{tc.model_type}'; only Llama "
                             "(SmolLM2) is supported")
        vc = cfg.vision_config
        super().__init__(model, tok, size, mean, std, kind="smolvlm", architecture="smolvlm-llama",
                         prefix=Prefix(model, size), embed=model.model.text_model.get_input_embeddings(),
                         lm_backbone=model.model.text_model, lm_head=model.lm_head, text_cfg=tc,
                         tokens=(size // vc.patch_size) ** 2 // cfg.scale_factor ** 2,
                         image_token_id=cfg.image_token_id, template=TEMPLATE, add_bos=False,
                         ref_prompts=(REF_PROMPTS[0], REF_PROMPTS, REF_PROMPTS[:2]))
        self.proc = proc
        self.tok = tok
        gc = model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else tok.convert_tokens_to_ids("<end_of_utterance>")
        self.eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        self.bos = tok.bos_token_id
        if gc.pad_token_id is not None:
            self.pad = gc.pad_token_id

    def processor(self, images_u8: np.ndarray, prompts: list[str]) -> dict:
        """HF Idefics3Processor on the chat template: input_ids, attention_mask, pixel_values
        [B,1,3,S,S], pixel_attention_mask (and the texts)."""
        from PIL import Image

        msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}] for p in prompts]
        texts = [self.proc.apply_chat_template(m, add_generation_prompt=True) for m in msgs]
        imgs = [[Image.fromarray(np.ascontiguousarray(x))] for x in images_u8]
        self.proc.tokenizer.padding_side = "left"
        enc = self.proc(text=texts, images=imgs, padding=True, return_tensors="np")
        out = {k: np.asarray(v) for k, v in enc.items()}
        out["texts"] = texts
        return out

    def processor_ids(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids/attention_mask of the real processor (the text does not depend on which image
        a row gets: one global image of P tokens each)."""
        images = C.make_reference_images(self.size)[1][:1].repeat(len(prompts), axis=0)
        enc = self.processor(images, prompts)
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    def hf_inputs(self, ids, mask, pixels) -> dict:
        return dict(pixel_values=torch.from_numpy(pixels)[:, None], input_ids=torch.from_numpy(ids),
                    attention_mask=torch.from_numpy(mask))

    def reference_extra(self) -> dict:
        """The processor's own pixels and texts for the reference images (do_image_splitting off)."""
        names, images_u8 = C.make_reference_images(self.size)
        enc = self.processor(images_u8, [REF_PROMPTS[0]] * len(images_u8))
        ours = C.preprocess_u8(images_u8, self.mean, self.std)
        return {"processor": {
            "class": type(self.proc).__name__, "do_image_splitting": False,
            "texts": enc["texts"][:1],
            "pixel_values_shape": list(enc["pixel_values"].shape),
            "pixel_values_max_abs_diff": float(np.abs(enc["pixel_values"][:, 0] - ours).max()),
            "pixel_attention_mask_all_ones": bool(np.all(enc["pixel_attention_mask"] == 1)),
        }}


def check_prefix_against_hf(parts: SmolVLMParts, tol: float = 1e-5) -> float:
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


# --------------------------------------------------------------------------------------
# Manifest, checkpoints, command
# --------------------------------------------------------------------------------------


def load_checkpoint(src: str) -> SmolVLMParts:
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
    parts = SmolVLMParts(model, tok, vc.image_size, pp["image_mean"], pp["image_std"])
    pc = C.read_json(src, "processor_config.json") or {}
    if pc.get("image_seq_len", parts.tokens) != parts.tokens:
        raise SystemExit(f"export: {src}: processor image_seq_len {pc['image_seq_len']} != the model's "
                         f"{parts.tokens} image tokens")
    return parts


def tiny_parts(shape: str = "tiny", seed=None, init_std=None, eos_scale=None):
    """(parts, seed, init_std, eos_scale, processor) of ``--tiny [--shape S]`` with these overrides
    (None: the defaults); also what bench/peer_caption_prefix.py builds to time HF generate on the
    same weights."""
    bench = shape != "tiny"
    seed = DEFAULT_SEED if seed is None else seed
    init_std = (BENCH_INIT_STD if bench else DEFAULT_INIT_STD) if init_std is None else init_std
    eos_scale = (BENCH_EOS_SCALE if bench else DEFAULT_EOS_SCALE) if eos_scale is None else eos_scale
    model, proc = build_tiny(seed, init_std, eos_scale, shape)
    parts = SmolVLMParts(model, proc.tokenizer, model.config.vision_config.image_size, MEAN, STD, proc=proc)
    return parts, seed, init_std, eos_scale, proc


def export_smolvlm(args) -> None:
    tv = transformers.__version__
    seed_info = None
    shape = getattr(args, "shape", "tiny")
    if shape != "tiny" and not args.tiny:
        raise SystemExit("--shape only applies with --tiny")
    if args.tiny:
        parts, seed, init_std, eos_scale, proc = tiny_parts(shape, args.seed, args.init_std, args.eos_scale)
        model = parts.model
        name = args.name or f"smolvlm-{shape}-random"
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
    w = check_prefix_against_hf(parts)
    print(f"export: image prefix vs HF get_image_features: max diff / max(1, max|ref|) {w:.3g}", file=sys.stderr)
    PD.export_prefix_package(args, parts, name=name, source=source, trained=trained, reference_seed_info=seed_info)


def add_parser(sub, command: str) -> None:
    c = sub.add_parser(command, help="export SmolVLM (Idefics3ForConditionalGeneration / "
                                     "SmolVLMForConditionalGeneration) as an image-text-decoder package",
                       description="Export SmolVLM, image splitting off: image_prefix.onnx, embed_tokens.onnx, "
                                   "decoder.onnx (KV cache), tokenizer.json, model.toml.")
    C.add_source_args(c, from_help="save_pretrained folder of an Idefics3 / SmolVLM checkpoint with its processor files",
                      tiny_help="seeded random model of the real architecture (the test fixture, with reference/)")
    C.add_out_arg(c)
    PD.add_prefix_args(c, seed=DEFAULT_SEED, init_std=DEFAULT_INIT_STD, eos_scale=DEFAULT_EOS_SCALE)
    c.add_argument("--shape", choices=SHAPES, default="tiny",
                   help="--tiny: 'tiny' (the test fixture) or 'mid' (benchmarks: SmolLM2-135M's language model, "
                        f"small SigLIP at 512 px, 64 image tokens; init std {BENCH_INIT_STD}, no reference/)")
    c.set_defaults(func=export_smolvlm)
