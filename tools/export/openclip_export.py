"""The ``openclip`` family: OpenCLIP checkpoints -> tessera model packages (``export.py openclip``).

For RemoteCLIP, GeoRSCLIP, SkyCLIP and any other checkpoint of an OpenCLIP architecture with
the built-in CLIP text tower::

    python tools/export/export.py openclip --arch ViT-B-32 --from RemoteCLIP-ViT-B-32.pt \\
        --out models/remoteclip-b32
    python tools/export/export.py openclip --arch ViT-B-32-quickgelu --from RS5M_ViT-B-32.pt \\
        --templates georsclip --out models/georsclip-b32
    python tools/export/export.py openclip --tiny --out sample_data/models/openclip-tiny

The package (family ``openclip``)::

    model.toml            manifest; no [text] attention_mask (OpenCLIP's text tower takes none)
    image_encoder.onnx    pixel_values [B,3,S,S] f32 -> image_embeds [B,D] f32 (model.encode_image)
    text_encoder.onnx     input_ids [B,L] i64         -> text_embeds  [B,D] f32 (model.encode_text)
    tokenizer.json        open_clip's SimpleTokenizer as a `tokenizers` file (see below)
    reference/            (only with --tiny) PyTorch-computed parity fixtures

``--from`` takes what ``open_clip.create_model(arch, pretrained=FILE)`` loads: a ``torch.save``d
state_dict (the RemoteCLIP / GeoRSCLIP form), a training checkpoint dict with a ``state_dict``
key (SkyCLIP's ``epoch_20.pt``; ``module.`` prefixes are stripped), or a ``.safetensors`` file.
Before anything is written the file's tensors are compared with the architecture's: a file
that does not fit ``--arch`` fails with one line naming the file, the arch, the cause and the
built-in architectures it does fit.

Tokenization.  open_clip pads with 0, truncates to the context keeping ``<end_of_text>`` last,
and the text tower pools at the argmax id (``<end_of_text>`` = 49407, the largest).  Its
cleaning is ``ftfy.fix_text`` + ``html.unescape`` twice + whitespace collapsing + lower case;
tokenizer.json reproduces the deterministic, character-level part of that in its normalizer
(curly quotes, Latin ligatures, full-/half-width forms, control characters, C1 controls as
Windows-1252, the common HTML entities), generated from ftfy's own tables.  What it does not
reproduce: ftfy's mojibake repair and rarer HTML entities (tools/export/README.md).

``--tiny`` registers a small OpenCLIP config (ViT vision tower, CLIP text tower, real BPE
vocabulary, context 77), builds it seeded, saves its state_dict to a temporary ``.pt`` and
exports it through the same ``--from`` path (``create_model(arch, pretrained=FILE)``).
"""

from __future__ import annotations

import html
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import common as C

# --------------------------------------------------------------------------------------
# Prompt ensembles published with the remote-sensing OpenCLIP checkpoints
# --------------------------------------------------------------------------------------

#: SkyCLIP (wangzhecheng/SkyScript, prompt_templates.py, commit df09dc8): the templates its
#: zero-shot scene classification uses for every scene dataset (aid, eurosat, millionaid,
#: fmow, patternnet, nwpu, SkyScript_cls, rsicb256).  The second has no full stop, as
#: published.
SKYCLIP_TEMPLATES = ["a satellite photo of {}.", "a satellite image of {}"]


def _georsclip_templates() -> list[str]:
    """GeoRSCLIP (om-ai-lab/RS5M, inference/classname_and_prompt/RSAID.py, RSEuroSAT.py and
    RSRESISC45.py, commit d83abfb: the same 105 templates in all three files): the CLIP
    ImageNet-style modifiers applied to "remote sensing image", "aerial image" and "satellite
    image", in the published order.  Generated here; test_openclip_export.py checks count,
    order and a few entries against the published text."""
    out = []
    for article, noun in (("a", "remote sensing image"), ("an", "aerial image"), ("a", "satellite image")):
        out += [f"{article} {noun} of many {{}}.", f"{article} {noun} of a {{}}.", f"{article} {noun} of the {{}}.",
                f"{article} {noun} of the hard to see {{}}.", f"{article} {noun} of a hard to see {{}}."]
        for adj in ("low resolution", "bad", "cropped", "bright", "dark", "close-up", "black and white",
                    "jpeg corrupted", "blurry", "good"):
            out += [f"a {adj} {noun} of the {{}}.", f"a {adj} {noun} of a {{}}."]
        for adj in ("large", "nice", "small", "weird", "cool"):
            out += [f"{article} {noun} of the {adj} {{}}.", f"{article} {noun} of a {adj} {{}}."]
    return out


GEORSCLIP_TEMPLATES = _georsclip_templates()

#: name -> templates, or None where no published set could be verified (README says so).
#: RemoteCLIP (ChenDelong1999/RemoteCLIP): its README, notebooks and retrieval script carry no
#: zero-shot classification prompt set, so none is invented here.
TEMPLATE_SETS: dict[str, list[str] | None] = {
    "remoteclip": None,
    "georsclip": GEORSCLIP_TEMPLATES,
    "skyclip": SKYCLIP_TEMPLATES,
    "none": [],
}

# --------------------------------------------------------------------------------------
# The tiny model
# --------------------------------------------------------------------------------------

TINY_ARCH = "tessera-tiny-ViT"
#: A real OpenCLIP CLIP config, shrunk.  The 49408 x width token embedding dominates the
#: package: text width 4 keeps the package under 3 MB with the real vocabulary.
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 16, "head_width": 8, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 4, "heads": 2, "layers": 2},
}
#: Default seed of --tiny.  Picked by scanning seeds 0..99 so that the random model separates
#: the fixed reference images both with REF_TEMPLATES (3 distinct top-1 labels over the 4
#: images, smallest top1-top2 margin 0.15) and with the package templates (2, margin 0.92).
DEFAULT_TINY_SEED = 13
#: logit_scale of the tiny model: exp = 100, the value trained CLIP checkpoints reach (and
#: what makes the tiny model's top-1 margins usable in tests).
TINY_LOGIT_SCALE = float(np.log(100.0))
#: Default --templates of --tiny: a package default the parity test can see being used.
TINY_TEMPLATES = "skyclip"

REF_LABELS = ["forest", "river", "city", "desert"]
REF_TEMPLATES = ["a satellite photo of {}.", "an aerial image of {}."]
#: Tokenizer cases recorded from open_clip's own tokenizer (each reproduced exactly).
REF_TOKENIZER_TEXTS = [
    "a satellite image of a forest",
    "  Flooded   RIVER delta, 2023!  ",
    "Sentinel-2 L2A scene: cloud-free? yes.",
    " ".join(["farmland"] * 80) + " and a long river",
    "",
    "it\u2019s a \u201criver\u201d \u2014 isn't it",
    "Fish &amp; chips &lt;3 &amp;amp; &quot;x&quot; &#39;y&#39;",
    "\uff26\uff35\uff2c\uff2c width \uff11\uff12\uff13",
    "\ufb01eld \ufb02ood \u01c5",
    "Caf\u00e9 na\u00efve e\u0301te\u0301 \u00c6r\u00f8 stra\u00dfe",
    "tab\there\nnewline\u00a0nbsp",
    "\u65e5\u672c\u8a9e \U0001f332 forest",
    "don't you'll we've I'm he'd x'sy a...b!!?",
    "<start_of_text>hi<end_of_text> <|endoftext|>",
]

# --------------------------------------------------------------------------------------
# Errors: one line, naming the file
# --------------------------------------------------------------------------------------


def fail(msg: str) -> None:
    raise SystemExit(f"export: {msg}")


def _quiet_open_clip():
    logging.getLogger().setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", module="open_clip")
    import open_clip
    from open_clip import factory

    # The --tiny config is an architecture like the built-in ones (--arch tessera-tiny-ViT
    # --from FILE works too), registered the way open_clip's own config files are.
    factory._MODEL_CONFIGS.setdefault(TINY_ARCH, dict(TINY_CONFIG))
    return open_clip


# --------------------------------------------------------------------------------------
# Checkpoint reading and the fit check
# --------------------------------------------------------------------------------------


def read_state_dict(path: Path) -> tuple[dict, bool]:
    """(state_dict, plain) of a checkpoint file; ``plain`` when open_clip can load the file as
    it is (a bare state_dict without prefixes, or safetensors)."""
    if not path.is_file():
        fail(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is "not a checkpoint"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(f"{path}: not a readable tensor checkpoint ({reason[:200]})")
    plain = True
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj, plain = obj["state_dict"], False
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        fail(f"{path}: holds no state_dict (a mapping of names to tensors, or a dict with a 'state_dict' key)")
    if any(k.startswith("module.") for k in obj):
        obj, plain = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}, False
    return obj, plain


def _expected(open_clip, arch: str, **kw) -> torch.nn.Module:
    """The architecture built on the meta device (shapes only, no memory, no init)."""
    with torch.device("meta"):
        return open_clip.create_model(arch, device="meta", **kw)


def _comparable(open_clip, model, sd: dict) -> dict:
    """What open_clip's load_checkpoint would hand to load_state_dict (third-party key
    conversion, old text layout, scalar logit_scale), without resizing anything."""
    from open_clip.factory import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    sd = convert_state_dict(model, dict(sd))
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    if "logit_scale" in sd and model.logit_scale.ndim != sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    sd.pop("text.transformer.embeddings.position_ids", None)
    return sd


def fit_problems(model, sd: dict) -> tuple[list[str], list[str], list[tuple[str, list, list]]]:
    """(missing keys, unexpected keys, [(key, file shape, arch shape)])."""
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    got = {k: list(v.shape) for k, v in sd.items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    shapes = [(k, got[k], want[k]) for k in want if k in got and got[k] != want[k]]
    # The patch embedding, then the rest of the image tower first: the most telling.
    shapes.sort(key=lambda t: (t[0] != "visual.conv1.weight", not t[0].startswith("visual.")))
    return missing, unexpected, shapes


def _plain_clip_configs(open_clip) -> list[str]:
    out = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        if ("timm_model_name" in cfg.get("vision_cfg", {}) or "hf_model_name" in cfg.get("text_cfg", {})
                or "multimodal_cfg" in cfg or cfg.get("custom_text")):
            continue
        out.append(name)
    return out


def fitting_archs(open_clip, sd: dict, limit: int = 3) -> list[str]:
    """Built-in architectures (plain CLIP towers) whose tensors the file fits exactly."""
    fits = []
    for name in _plain_clip_configs(open_clip):
        try:
            model = _expected(open_clip, name)
        except Exception:  # noqa: BLE001 - a config that does not build is no candidate
            continue
        if fit_problems(model, _comparable(open_clip, model, sd)) == ([], [], []):
            fits.append(name)
            if len(fits) >= limit:
                break
    return fits


def check_fits(open_clip, path: Path, arch: str, sd: dict) -> None:
    """Fail with one line when the checkpoint's tensors do not fit ``arch``."""
    try:
        model = _expected(open_clip, arch)
    except Exception as e:  # noqa: BLE001
        fail(f"--arch {arch}: not an open_clip architecture ({str(e).splitlines()[0][:160]})")
    missing, unexpected, shapes = fit_problems(model, _comparable(open_clip, model, sd))
    if not (missing or unexpected or shapes):
        return
    causes = []
    if shapes:
        k, a, b = shapes[0]
        causes.append(f"{len(shapes)} tensors have other shapes ({k} {a} vs {b})")
    if missing:
        causes.append(f"{len(missing)} tensors missing ({missing[0]}{', ...' if len(missing) > 1 else ''})")
    if unexpected:
        causes.append(f"{len(unexpected)} unexpected tensors ({unexpected[0]}{', ...' if len(unexpected) > 1 else ''})")
    fits = fitting_archs(open_clip, sd)
    hint = f"; is it {' or '.join(fits)}?" if fits else "; it fits no built-in open_clip CLIP architecture"
    fail(f"{path}: does not fit --arch {arch}: {'; '.join(causes)}{hint}")


def load_model(open_clip, path: Path, arch: str):
    """The checkpoint as an open_clip model, through ``create_model(arch, pretrained=FILE)``."""
    sd, plain = read_state_dict(path)
    check_fits(open_clip, path, arch, sd)
    if "logit_bias" in sd:
        fail(f"{path}: has a logit_bias (a SigLIP-style sigmoid model): export it with the siglip family")
    with tempfile.TemporaryDirectory(prefix="tessera-openclip-") as tmp:
        src = path
        if not plain:  # open_clip reads the bare state_dict we normalised
            src = Path(tmp) / "state_dict.pt"
            torch.save(sd, src)
        del sd
        try:
            model = open_clip.create_model(arch, pretrained=str(src), device="cpu")
        except Exception as e:  # noqa: BLE001
            fail(f"{path}: open_clip could not load it as {arch}: {str(e).strip().splitlines()[0][:200]}")
    return model.eval()


# --------------------------------------------------------------------------------------
# Model checks, preprocessing, graphs
# --------------------------------------------------------------------------------------


def check_supported(open_clip, model, arch: str, path: str):
    """Only the plain CLIP class with its own text tower, argmax/eos pooling and the default
    SimpleTokenizer: what tessera's tokenization reproduces."""
    if type(model).__name__ != "CLIP":
        fail(f"{path}: --arch {arch} is an open_clip {type(model).__name__} (custom text tower); "
             "only the built-in CLIP text tower is supported")
    if model.text_pool_type not in ("argmax", "eos"):
        fail(f"{path}: --arch {arch} pools text at '{model.text_pool_type}'; only argmax/eos pooling is supported")
    tok = open_clip.get_tokenizer(arch)
    if type(tok).__name__ != "SimpleTokenizer" or tok.reduction_fn is not None or getattr(tok.clean_fn, "__name__", "") != "_clean_lower":
        fail(f"{path}: --arch {arch} uses another tokenizer ({type(tok).__name__}); only open_clip's default "
             "CLIP SimpleTokenizer is supported")
    return tok


def preprocess_of(model) -> tuple[int, list[float], list[float]]:
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", None))
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            fail(f"non-square image size {size} is not supported")
        size = size[0]
    mean = cfg.get("mean", getattr(model.visual, "image_mean", C.OPENAI_CLIP_MEAN))
    std = cfg.get("std", getattr(model.visual, "image_std", C.OPENAI_CLIP_STD))
    return int(size), [float(x) for x in mean], [float(x) for x in std]


class ImageEncoder(torch.nn.Module):
    """pixel_values [B,3,S,S] -> model.encode_image (raw, not normalised)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


class TextEncoder(torch.nn.Module):
    """input_ids [B,L] -> model.encode_text (raw, not normalised; pools at the argmax id)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)


# --------------------------------------------------------------------------------------
# tokenizer.json: open_clip's SimpleTokenizer in `tokenizers` form
# --------------------------------------------------------------------------------------


def _replace(pattern: str, content: str, regex: bool = False) -> dict:
    return {"type": "Replace", "pattern": {"Regex" if regex else "String": pattern}, "content": content}


def _regex_class(codepoints) -> str:
    return "[" + "".join(f"\\x{{{c:X}}}" for c in codepoints) + "]"


def open_clip_cleaning_normalizers() -> list[dict]:
    """Replace normalizers for what ``ftfy.fix_text`` + ``html.unescape`` x2 do character by
    character, from ftfy's own tables; followed by the CLIP normalizers (NFC, whitespace, lower)."""
    from ftfy import chardata

    steps: list[dict] = []
    # HTML entities (three passes: ftfy's unescape, then html.unescape twice in basic_clean),
    # '&amp;' last in each pass so a pass never decodes what it just produced.
    ents = [(r"&lt;?", "<"), (r"&gt;?", ">"), (r"&quot;?", '"'), (r"&apos;", "'"), (r"&nbsp;?", "\u00a0"),
            (r"&#0*39;?", "'"), (r"&#[xX]0*27;?", "'"), (r"&#0*34;?", '"'), (r"&#[xX]0*22;?", '"'),
            (r"&#0*38;?", "&"), (r"&#[xX]0*26;?", "&"), (r"&amp;?", "&")]
    for _ in range(3):
        steps += [_replace(p, c, regex=True) for p, c in ents]
    # fix_c1_controls: U+0080..U+009F read as Windows-1252 (where it defines the byte).
    for cp in range(0x80, 0xA0):
        try:
            ch = bytes([cp]).decode("windows-1252")
        except UnicodeDecodeError:
            continue
        steps.append(_replace(chr(cp), ch))
    steps += [_replace(chr(cp), s) for cp, s in sorted(chardata.LIGATURES.items())]
    steps += [_replace(chr(cp), s) for cp, s in sorted(chardata.WIDTH_MAP.items())]
    steps.append(_replace(chardata.DOUBLE_QUOTE_RE.pattern, '"', regex=True))
    steps.append(_replace(chardata.SINGLE_QUOTE_RE.pattern, "'", regex=True))
    steps.append(_replace(_regex_class(sorted(chardata.CONTROL_CHARS)), "", regex=True))
    return steps


def build_tokenizer_json(path: Path, context_length: int, bpe_vocab: str | None) -> None:
    """tokenizer.json reproducing ``open_clip.get_tokenizer(arch)`` (ids; the pad id 0 and the
    cut keeping <end_of_text> last are the manifest's)."""
    import json

    from tokenizers import Tokenizer

    tok = C.build_real_vocab_tokenizer(C.find_bpe_vocab(bpe_vocab), context_length)
    j = json.loads(tok.backend_tokenizer.to_str())
    rename = {"<|startoftext|>": "<start_of_text>", "<|endoftext|>": "<end_of_text>"}
    vocab = j["model"]["vocab"]
    for old, new in rename.items():
        vocab[new] = vocab.pop(old)
    j["model"]["unk_token"] = None
    for t in j["added_tokens"]:
        # open_clip matches its special tokens in the cleaned (lower-cased) text.
        t["content"] = rename[t["content"]]
        t["normalized"] = True
    pp = j["post_processor"]
    pp["sep"] = [rename[pp["sep"][0]], pp["sep"][1]]
    pp["cls"] = [rename[pp["cls"][0]], pp["cls"][1]]
    split = j["pre_tokenizer"]["pretokenizers"][0]
    split["pattern"]["Regex"] = split["pattern"]["Regex"].replace(
        r"<\|startoftext\|>|<\|endoftext\|>", "<start_of_text>|<end_of_text>")
    j["normalizer"]["normalizers"] = open_clip_cleaning_normalizers() + j["normalizer"]["normalizers"]
    backend = Tokenizer.from_str(json.dumps(j))
    backend.enable_truncation(max_length=context_length)
    backend.enable_padding(length=context_length, pad_id=0, pad_token=backend.id_to_token(0), direction="right")
    backend.save(str(path), pretty=False)


def tessera_tokenize(path: Path, texts: list[str], context_length: int) -> np.ndarray:
    """What tessera does with tokenizer.json (the manifest's cut and pad), for the export check."""
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(path))
    t.no_padding()
    t.no_truncation()
    out = np.zeros((len(texts), context_length), np.int64)
    for i, s in enumerate(texts):
        ids = t.encode(s).ids
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = 49407
        out[i, :len(ids)] = ids
    return out


def open_clip_tokenize(tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Reference ids from open_clip's own tokenizer, and the mask of its real tokens."""
    ids = tok(texts).numpy().astype(np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(texts):
        mask[i, : min(len(tok.encode(s)) + 2, ids.shape[1])] = 1
    return ids, mask


def check_tokenizer(path: Path, tok, context_length: int) -> None:
    texts = REF_TOKENIZER_TEXTS + [t.format(lab) for lab in REF_LABELS for t in GEORSCLIP_TEMPLATES[:6]]
    want, _ = open_clip_tokenize(tok, texts)
    got = tessera_tokenize(path, texts, context_length)
    bad = [texts[i] for i in range(len(texts)) if not np.array_equal(want[i], got[i])]
    if bad:
        raise RuntimeError(f"tokenizer.json differs from open_clip's tokenizer on {bad[0]!r} (+{len(bad) - 1} more)")


# --------------------------------------------------------------------------------------
# Manifest, verification, reference
# --------------------------------------------------------------------------------------


def write_manifest(path: Path, *, name: str, arch: str, trained: bool, source: str, size: int, mean, std,
                   context_length: int, logit_scale: float, templates: list[str], template_source: str) -> None:
    sections = [
        (None, [
            ("family", "openclip", ""),
            ("name", name, ""),
            ("architecture", arch, "open_clip model config"),
            ("trained", trained, ""),
            ("source", source, ""),
        ]),
        ("image", [
            ("onnx", "image_encoder.onnx", ""),
            ("input", "pixel_values", "float32 [B,3,S,S], already normalised"),
            ("output", "image_embeds", "float32 [B,D], not L2-normalised"),
        ]),
        ("text", [
            ("onnx", "text_encoder.onnx", ""),
            ("input_ids", "input_ids", "int64 [B,L]; no attention mask (OpenCLIP)"),
            ("output", "text_embeds", "float32 [B,D], not L2-normalised"),
        ]),
        C.preprocess_section(size, mean, std),
        ("tokenizer", [
            ("file", "tokenizer.json", ""),
            ("context_length", int(context_length), "pad/truncate to this length"),
            ("pad_token_id", 0, "open_clip pads with 0"),
            ("bos_token_id", 49406, "<start_of_text>"),
            ("eos_token_id", 49407, "<end_of_text>, kept last when cut"),
        ]),
        ("scores", [
            ("logit_scale", float(logit_scale), "exp(logit_scale) of the checkpoint"),
        ]),
    ]
    if templates:
        sections.append(("prompts", [("templates", list(templates), template_source)]))
    C.write_toml(path, sections)


def verify_onnx(out: Path, image_enc, text_enc, tok, size: int, tol: float) -> dict:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("export: onnxruntime not installed, skipping ONNX/PyTorch parity check", file=sys.stderr)
        return {}
    img_sess = C.ort_session(out / "image_encoder.onnx")
    txt_sess = C.ort_session(out / "text_encoder.onnx")
    gen = torch.Generator().manual_seed(1234)
    texts = ["a satellite photo of forest.", "an aerial image of a big city at night, with lights", "desert"]
    worst = {"image": 0.0, "text": 0.0}
    for batch in (1, 3):
        px = torch.randn(batch, 3, size, size, generator=gen)
        ref = image_enc(px).numpy()
        got = img_sess.run(None, {"pixel_values": px.numpy()})[0]
        worst["image"] = max(worst["image"], C.rel_diff(got, ref))
        ids = tok(texts[:batch])
        ref = text_enc(ids).numpy()
        got = txt_sess.run(None, {"input_ids": ids.numpy().astype(np.int64)})[0]
        worst["text"] = max(worst["text"], C.rel_diff(got, ref))
    print(f"export: ONNX vs PyTorch max rel diff: image {worst['image']:.3g}, text {worst['text']:.3g}",
          file=sys.stderr)
    for k, v in worst.items():
        if not v < tol:
            raise RuntimeError(f"{k} encoder: ONNX Runtime differs from PyTorch by {v} (tolerance {tol})")
    return worst


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _label_probs(img: np.ndarray, text_enc, tok, labels, templates, logit_scale):
    prompts = [t.format(label) for label in labels for t in templates]
    ids, mask = open_clip_tokenize(tok, prompts)
    txt = text_enc(torch.from_numpy(ids)).numpy()
    t = _l2n(txt.astype(np.float64)).reshape(len(labels), len(templates), -1)
    label_embeds = _l2n(t.mean(axis=1))
    probs = _softmax(logit_scale * (_l2n(img.astype(np.float64)) @ label_embeds.T))
    return prompts, ids, mask, txt, label_embeds, probs


def compute_reference(image_enc, text_enc, tok, size, mean, std, context_length, logit_scale,
                      default_templates: list[str]):
    names, images_u8 = C.make_reference_images(size)
    pixels = C.preprocess_u8(images_u8, mean, std)
    img = image_enc(torch.from_numpy(pixels)).numpy()
    prompts, ids, mask, txt, label_embeds, probs = _label_probs(img, text_enc, tok, REF_LABELS, REF_TEMPLATES,
                                                                logit_scale)
    *_, dlabel, dprobs = _label_probs(img, text_enc, tok, REF_LABELS, default_templates, logit_scale)
    cases_ids, cases_mask = open_clip_tokenize(tok, REF_TOKENIZER_TEXTS)
    n = len(names)
    ref = {
        "description": "PyTorch (open_clip)-computed parity fixtures for this model package "
                       "(tools/export/export.py openclip --tiny).",
        "labels": REF_LABELS,
        "templates": REF_TEMPLATES,
        "prompts": prompts,
        "prompt_order": "label-major: for each label, for each template",
        "context_length": context_length,
        "token_ids": ids.tolist(),
        "token_ids_source": "open_clip.get_tokenizer(arch)(prompts)",
        "attention_mask": mask.tolist(),
        "tokenizer_cases": [
            {"text": s, "token_ids": i.tolist(), "attention_mask": m.tolist()}
            for s, i, m in zip(REF_TOKENIZER_TEXTS, cases_ids, cases_mask)
        ],
        **C.images_block(names, size, n),
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "image_embeds": img.astype(np.float64).tolist(),
        "text_embeds": txt.astype(np.float64).tolist(),
        "label_embeds": label_embeds.tolist(),
        "label_embeds_formula": "per label: l2norm(mean over templates of l2norm(text_embeds)))",
        "logit_scale": float(logit_scale),
        "probs": probs.tolist(),
        "probs_formula": "softmax over labels of logit_scale * cos(l2norm(image_embed), label_embed)",
        "top1": [REF_LABELS[int(i)] for i in probs.argmax(axis=1)],
        "default_templates": list(default_templates),
        "default_label_embeds": dlabel.tolist(),
        "default_probs": dprobs.tolist(),
        "default_probs_formula": "as probs, with the package's [prompts] templates",
    }
    return ref, images_u8, pixels


def separation(probs: np.ndarray) -> tuple[int, float]:
    s = np.sort(probs, axis=1)
    return len(set(probs.argmax(axis=1).tolist())), float((s[:, -1] - s[:, -2]).min())


# --------------------------------------------------------------------------------------
# The `openclip` subcommand
# --------------------------------------------------------------------------------------


def build_tiny(open_clip, seed: int, path: Path) -> None:
    """Register the tiny config, build it seeded, torch.save its state_dict to ``path``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = open_clip.create_model(TINY_ARCH, device="cpu")
    model.logit_scale.data.fill_(TINY_LOGIT_SCALE)
    torch.save(model.state_dict(), path)


def resolve_templates(choice: str) -> list[str]:
    templates = TEMPLATE_SETS[choice]
    if templates is None:
        fail(f"--templates {choice}: no published zero-shot prompt set of {choice} could be verified "
             "(tools/export/README.md, OpenCLIP); use --templates none, or pass --template to tessera classify")
    return list(templates)


def export_openclip(args) -> None:
    open_clip = _quiet_open_clip()
    choice = args.templates or (TINY_TEMPLATES if args.tiny else "none")
    templates = resolve_templates(choice)
    template_source = {"georsclip": "GeoRSCLIP (om-ai-lab/RS5M inference/classname_and_prompt)",
                       "skyclip": "SkyCLIP (wangzhecheng/SkyScript prompt_templates.py)"}.get(choice, "")
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="tessera-openclip-tiny-") as tmp:
        if args.tiny:
            seed = DEFAULT_TINY_SEED if args.seed is None else args.seed
            arch = TINY_ARCH
            if args.arch not in (None, TINY_ARCH):
                fail("--arch does not apply with --tiny (the tiny config is registered as " + TINY_ARCH + ")")
            src = Path(tmp) / "tiny_state_dict.pt"
            build_tiny(open_clip, seed, src)
            name = args.name or "openclip-tiny-random"
            source = (f"random init, seed {seed}, open_clip {open_clip.__version__} config {TINY_ARCH}, "
                      f"torch {torch.__version__}")
            trained = False
        else:
            if not args.arch:
                fail("--arch NAME is required with --from (e.g. ViT-B-32, RN50, ViT-L-14)")
            arch, src = args.arch, Path(args.source)
            name = args.name or src.stem
            source = f"{src.name} as {arch}, exported with open_clip {open_clip.__version__}, torch {torch.__version__}"
            trained = True
        model = load_model(open_clip, src, arch)
    tok = check_supported(open_clip, model, arch, str(src))
    size, mean, std = preprocess_of(model)
    context_length = int(model.context_length)
    if tok.context_length != context_length:
        fail(f"{src}: tokenizer context {tok.context_length} != text tower context {context_length}")
    logit_scale = float(model.logit_scale.detach().exp())
    image_enc, text_enc = ImageEncoder(model).eval(), TextEncoder(model).eval()

    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention) has no
    # ONNX export; the regular path computes the same numbers.
    torch.backends.mha.set_fastpath_enabled(False)
    out.mkdir(parents=True, exist_ok=True)
    dummy_px = torch.zeros(2, 3, size, size)
    dummy_ids = tok(["a photo", "an aerial image of a river"])
    print(f"export: writing {out}/image_encoder.onnx (opset {args.opset})", file=sys.stderr)
    C.export_onnx(image_enc, (dummy_px,), out / "image_encoder.onnx", ["pixel_values"], ["image_embeds"],
                  {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}, args.opset,
                  external_data_bytes=1 << 30)
    print(f"export: writing {out}/text_encoder.onnx (opset {args.opset})", file=sys.stderr)
    C.export_onnx(text_enc, (dummy_ids,), out / "text_encoder.onnx", ["input_ids"], ["text_embeds"],
                  {"input_ids": {0: "batch"}, "text_embeds": {0: "batch"}}, args.opset,
                  external_data_bytes=1 << 30)
    build_tokenizer_json(out / "tokenizer.json", context_length, args.bpe_vocab)
    check_tokenizer(out / "tokenizer.json", tok, context_length)
    write_manifest(out / "model.toml", name=name, arch=arch, trained=trained, source=source, size=size,
                   mean=mean, std=std, context_length=context_length, logit_scale=logit_scale,
                   templates=templates, template_source=template_source)
    if not args.skip_verify:
        verify_onnx(out, image_enc, text_enc, tok, size, args.tolerance)
    if args.tiny and not args.no_reference:
        ref, images_u8, pixels = compute_reference(image_enc, text_enc, tok, size, mean, std, context_length,
                                                   logit_scale, templates or REF_TEMPLATES)
        ref["seed"] = seed
        ref["architecture"] = arch
        ref["onnx_precision"] = "fp32"
        ref["tolerance"] = {"embeds_rel": 1e-4, "probs_abs": 1e-4}
        n_top1, margin = separation(np.asarray(ref["probs"]))
        dn, dm = separation(np.asarray(ref["default_probs"]))
        ref["separation"] = {"distinct_top1": n_top1, "min_top1_margin": margin,
                             "default_distinct_top1": dn, "default_min_top1_margin": dm}
        if min(n_top1, dn) < 2 or min(margin, dm) <= 0.05:
            print(f"export: WARNING seed {seed} separates the reference images poorly "
                  f"(distinct top-1 {n_top1}, min margin {margin:.3f})", file=sys.stderr)
        C.write_reference(out, ref, C.image_bins(images_u8, pixels))
        print(f"export: reference top-1 {ref['top1']} (margin {margin:.3f}); with the package templates "
              f"{[REF_LABELS[int(i)] for i in np.asarray(ref['default_probs']).argmax(1)]} (margin {dm:.3f})",
              file=sys.stderr)
    C.report_done(out)


def add_parser(sub, command: str) -> None:
    assert command == "openclip", command
    c = sub.add_parser(
        "openclip",
        help="export an OpenCLIP checkpoint (RemoteCLIP, GeoRSCLIP, SkyCLIP, ...) as a model package",
        description="Export an OpenCLIP checkpoint: image encoder = model.encode_image, text encoder = "
                    "model.encode_text (no attention mask, pooled at <end_of_text>), both raw and with a "
                    "dynamic batch axis; tokenizer.json reproduces open_clip.get_tokenizer(arch).",
    )
    C.add_source_args(
        c,
        from_help="a checkpoint file: a torch.save'd state_dict (.pt/.pth/.bin), a training checkpoint "
                  "dict with a 'state_dict' key, or .safetensors (needs --arch)",
        tiny_help="build a seeded, random tiny OpenCLIP model of a registered small config and export it "
                  "through the same --from path (test fixture, trained = false)",
    )
    c.add_argument("--arch", default=None, metavar="NAME",
                   help="the open_clip architecture of the checkpoint, e.g. ViT-B-32, ViT-B-32-quickgelu, RN50, "
                        "ViT-L-14, ViT-H-14 (the activation is not stored in a checkpoint: models fine-tuned "
                        "from OpenAI weights may need the -quickgelu name; tools/export/README.md)")
    C.add_out_arg(c, help="output package directory (created)")
    c.add_argument("--templates", choices=sorted(TEMPLATE_SETS), default=None,
                   help="the package's default prompt ensemble ([prompts] templates) as published with "
                        "that checkpoint family; default none (--tiny: skyclip)")
    C.add_opset_arg(c, help=f"ONNX opset version (default {C.DEFAULT_OPSET})")
    c.add_argument("--seed", type=int, default=None,
                   help=f"--tiny only: torch seed of the random init (default {DEFAULT_TINY_SEED})")
    C.add_name_arg(c, help="manifest 'name' (default: the checkpoint file's stem)")
    C.add_bpe_vocab_arg(c, help=f"path to {C.BPE_FILENAME} (default: the copy open_clip ships)")
    C.add_no_reference_arg(c, help="--tiny only: do not write reference/")
    C.add_skip_verify_arg(c, help="skip the ONNX Runtime vs PyTorch parity check")
    C.add_tolerance_arg(c, 1e-5, "max relative diff allowed between ONNX Runtime and PyTorch (default 1e-5)")
    c.set_defaults(func=export_openclip)
