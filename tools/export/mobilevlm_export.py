"""MobileVLM (Chu et al. 2023; V2: 2024) -> an ``image-text-decoder`` package (``export.py mobilevlm``).

MobileVLM is CLIP ViT-L/14-336 (``hidden_states[mm_vision_select_layer]``, CLS dropped), a
lightweight downsample projector (``mm_projector``) and MobileLLaMA, a Llama-architecture
decoder.  transformers has no MobileVLM class; the projector is implemented here from the
papers, with the published checkpoints' parameter names (``model.mm_projector.*``) so that
their weights load strictly:

* ``ldpnet`` (MobileVLM, "LDP"): ``model.mlp`` = Identity, Linear(mm_hidden, hidden), GELU,
  Linear(hidden, hidden); ``model.mb_block`` = Identity and two MobileNetV3 inverted-residual
  blocks without expansion (depthwise 3x3 conv + channel LayerNorm + Hardswish, squeeze-excite
  with ReLU / Hardsigmoid, pointwise conv + LayerNorm), the first stride 1 with a residual, the
  second stride 2: 24x24 patches -> 12x12 = 144 tokens;
* ``ldpnetv2`` (MobileVLM V2, "LDPv2"): ``mlp.mlp`` = Linear, GELU, Linear; ``dwn`` average
  pooling to 12x12; ``peg`` a depthwise 3x3 conv (with bias) added to its input (positional
  encoding generator).

Prompt assembly is the authors' (``mobilevlm/utils.py`` ``tokenizer_image_token`` and
``prepare_inputs_labels_for_multimodal``): the conversation is split at ``<image>``, every chunk
is tokenized (one BOS kept, at the start), the image features are put in the place of the
``<image>`` and the language model runs ``generate(inputs_embeds=...)``.  A batch is the
per-item sequences left-padded with zero embeddings and an attention mask (the authors' own
inference runs one image at a time).  The package template puts P copies of the special token
``<image>`` there; the references check that the runner's ids and layout give HF's tokens.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

import common as C
import prefix_decoder as PD
from common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

#: mobilevlm/conversation.py conv_vicuna_v1 (the default --conv-mode of scripts/inference.py)
#: after append_message(USER, "<image>\n" + prompt) and append_message(ASSISTANT, None).
TEMPLATES = {
    "v1": ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
           "helpful, detailed, and polite answers to the user's questions. USER: <image>\n{prompt} ASSISTANT:"),
}
PLACEHOLDER = "<image>"
PROJECTORS = ("ldpnet", "ldpnetv2")

#: --tiny seed, chosen when prefix_decoder's decoder check was an absolute 1e-4: seeds 0-2 put the
#: step 0.7e-4 to 2.2e-4 away from HF's forward (float32 rounding on logits of magnitude ~35), seed 3
#: 4e-5.  (The check is now relative to max(1, max|ref|); seed 3 keeps the fixtures as committed.)
DEFAULT_SEED = 3
DEFAULT_INIT_STD = 1.0
DEFAULT_EOS_SCALE = 2.0
REF_PROMPTS = ["What is in this image?",
               "Describe it.",
               "Is there a river or a forest in this satellite scene, and where?"]


# --------------------------------------------------------------------------------------
# The LDP projectors (parameter names as in the published checkpoints)
# --------------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm ``LayerNormAct2d`` without activation)."""

    def forward(self, x):
        return nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                                        self.eps).permute(0, 3, 1, 2)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding (the squeeze width of the squeeze-excite block)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        s = torch.mean(x, dim=(2, 3), keepdim=True)
        s = self.fc2(torch.relu(self.fc1(s)))
        return x * nn.functional.hardsigmoid(s)


class InvertedResidual(nn.Module):
    """MobileNetV3 block with expanded = input = output channels (no expansion layer):
    block.0 depthwise conv + norm + Hardswish, block.1 squeeze-excite, block.2 pointwise conv + norm."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Sequential(nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
                          LayerNorm2d(channels), nn.Hardswish()),
            SqueezeExcitation(channels, _make_divisible(channels // 4, 8)),
            nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), LayerNorm2d(channels)),
        )
        self.use_res_connect = stride == 1

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res_connect else y


def _grid(x: torch.Tensor) -> tuple[int, int]:
    b, n, _ = x.shape
    h = int(math.isqrt(n))
    if h * h != n:
        raise ValueError(f"{n} image tokens are not a square grid")
    return b, h


class LDPBlock(nn.Module):
    def __init__(self, inc: int, ouc: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Identity(), nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))
        self.mb_block = nn.Sequential(nn.Identity(), InvertedResidual(ouc, 1), InvertedResidual(ouc, 2))

    def forward(self, x):
        b, h = _grid(x)
        x = self.mlp(x)
        x = x.permute(0, 2, 1).reshape(b, -1, h, h)
        x = self.mb_block(x)
        return x.flatten(2).permute(0, 2, 1)


class LDPNetProjector(nn.Module):
    """mm_projector_type 'ldpnet' (MobileVLM)."""

    def __init__(self, inc: int, ouc: int):
        super().__init__()
        self.model = LDPBlock(inc, ouc)

    def forward(self, x):
        return self.model(x)


class FeatureIRLayer(nn.Module):
    def __init__(self, inc: int, ouc: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))

    def forward(self, x):
        return self.mlp(x)


class TokenDownLayer(nn.Module):
    def __init__(self, shape: tuple[int, int]):
        super().__init__()
        self.dwn = nn.Sequential(nn.AdaptiveAvgPool2d(shape))

    def forward(self, x):
        b, h = _grid(x)
        x = x.permute(0, 2, 1).reshape(b, x.shape[2], h, h)
        g = self.dwn[0].output_size
        g = (g, g) if isinstance(g, int) else tuple(g)
        if h % g[0] == 0 and h % g[1] == 0:
            # adaptive pooling over an evenly divisible grid is plain average pooling (exported
            # without the static input size that ONNX's adaptive_avg_pool2d needs)
            k = (h // g[0], h // g[1])
            return nn.functional.avg_pool2d(x, k, k).flatten(2).transpose(1, 2)
        return self.dwn(x).flatten(2).transpose(1, 2)


class PosInjectLayer(nn.Module):
    def __init__(self, inc: int, ouc: int, stride: int = 1):
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(inc, ouc, 3, stride, 1, bias=True, groups=ouc))

    def forward(self, x):
        b, h = _grid(x)
        c = x.shape[2]
        feat = x.transpose(1, 2).reshape(b, c, h, h)
        return (self.peg(feat) + feat).flatten(2).transpose(1, 2)


class LDPNetV2Projector(nn.Module):
    """mm_projector_type 'ldpnetv2' (MobileVLM V2): MLP, 12x12 average pooling, PEG."""

    def __init__(self, inc: int, ouc: int, grid: int = 12):
        super().__init__()
        self.mlp = FeatureIRLayer(inc, ouc)
        self.dwn = TokenDownLayer((grid, grid))
        self.peg = PosInjectLayer(ouc, ouc, stride=1)

    def forward(self, x):
        return self.peg(self.dwn(self.mlp(x)))


def build_projector(kind: str, inc: int, ouc: int) -> nn.Module:
    if kind.startswith("ldpnetv2"):
        return LDPNetV2Projector(inc, ouc)
    if kind.startswith("ldpnet"):
        return LDPNetProjector(inc, ouc)
    raise ValueError(kind)


def projector_tokens(kind: str, patches_side: int) -> int:
    if kind.startswith("ldpnetv2"):
        return 12 * 12
    side = (patches_side - 1) // 2 + 1  # the stride-2 3x3 conv with padding 1
    return side * side


def check_projector_against_reference_impl(proj: nn.Module, kind: str, inc: int, ouc: int, n: int) -> float | None:
    """LDP (v1) against the modules the authors build it from (torchvision's MobileNetV3
    ``InvertedResidual`` / ``SqueezeExcitation``, timm's ``LayerNormAct2d``), loading our weights
    strictly: same parameter names and numbers.  None when torchvision or timm is missing, or for v2
    (plain torch layers)."""
    if kind.startswith("ldpnetv2"):
        return None
    try:
        from functools import partial

        from timm.layers.norm_act import LayerNormAct2d
        from torchvision.models.mobilenetv3 import InvertedResidual as TvIR
        from torchvision.models.mobilenetv3 import InvertedResidualConfig
        from torchvision.ops.misc import SqueezeExcitation as TvSE
    except ImportError:
        return None
    norm = partial(LayerNormAct2d, act_layer=None)
    se = partial(TvSE, scale_activation=nn.Hardsigmoid)
    ref = nn.Module()
    ref.model = nn.Module()
    ref.model.mlp = nn.Sequential(nn.Identity(), nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))
    ref.model.mb_block = nn.Sequential(
        nn.Identity(),
        TvIR(InvertedResidualConfig(ouc, 3, ouc, ouc, True, "HS", 1, 1, 1), norm, se),
        TvIR(InvertedResidualConfig(ouc, 3, ouc, ouc, True, "HS", 2, 1, 1), norm, se))
    ref.load_state_dict(proj.state_dict(), strict=True)
    ref.eval()
    x = torch.randn(2, n, inc, generator=torch.Generator().manual_seed(5))
    b, h = _grid(x)
    y = ref.model.mlp(x).permute(0, 2, 1).reshape(b, -1, h, h)
    y = ref.model.mb_block(y).flatten(2).permute(0, 2, 1)
    return float((proj(x) - y).abs().max())


# --------------------------------------------------------------------------------------
# The assembly (a restatement of the authors' inference path)
# --------------------------------------------------------------------------------------


class MobileVLM(nn.Module):
    def __init__(self, vision_tower, mm_projector, llm, tokenizer, *, projector_type: str,
                 select_layer: int = -2, select_feature: str = "patch"):
        super().__init__()
        self.vision_tower, self.mm_projector, self.llm, self.tokenizer = vision_tower, mm_projector, llm, tokenizer
        self.projector_type, self.select_layer, self.select_feature = projector_type, select_layer, select_feature

    def encode_images(self, images):
        """vision_encoder.py feature_select (hidden_states[select_layer], CLS dropped) -> mm_projector."""
        hs = self.vision_tower(images, output_hidden_states=True, return_dict=True).hidden_states
        f = hs[self.select_layer]
        if self.select_feature == "patch":
            f = f[:, 1:]
        return self.mm_projector(f)

    def tokenizer_image_token(self, prompt: str) -> list[int]:
        """mobilevlm/utils.py: the chunks around <image> tokenized, one BOS kept, -1 for the image."""
        chunks = [self.tokenizer(c)["input_ids"] for c in prompt.split(PLACEHOLDER)]
        bos = self.tokenizer.bos_token_id
        offset = 1 if chunks and chunks[0] and chunks[0][0] == bos else 0
        ids = [bos] if offset else []
        for i, c in enumerate(chunks):
            if i > 0:
                ids.append(-1)
            ids.extend(c[offset:])
        return ids

    def context_emb(self, ids: list[int], image: torch.Tensor) -> torch.Tensor:
        """prepare_inputs_labels_for_multimodal for one item: token embeddings, image features in place of -1."""
        emb = self.llm.get_input_embeddings()
        parts, cur = [], []
        for t in ids:
            if t == -1:
                if cur:
                    parts.append(emb(torch.tensor(cur, dtype=torch.long)))
                parts.append(image)
                cur = []
            else:
                cur.append(t)
        if cur:
            parts.append(emb(torch.tensor(cur, dtype=torch.long)))
        return torch.cat(parts, 0)

    def context(self, pixel_values, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.encode_images(pixel_values)
        embs = [self.context_emb(self.tokenizer_image_token(t), img[i]) for i, t in enumerate(texts)]
        n = max(e.shape[0] for e in embs)
        out = torch.zeros(len(embs), n, embs[0].shape[1], dtype=embs[0].dtype)
        mask = torch.zeros(len(embs), n, dtype=torch.long)
        for i, e in enumerate(embs):
            out[i, n - e.shape[0]:] = e
            mask[i, n - e.shape[0]:] = 1
        return out, mask

    @torch.no_grad()
    def generate(self, pixel_values, texts: list[str], **kw) -> np.ndarray:
        embs, mask = self.context(pixel_values, texts)
        return self.llm.generate(inputs_embeds=embs, attention_mask=mask, **kw).numpy()


class Prefix(nn.Module):
    def __init__(self, m: MobileVLM):
        super().__init__()
        self.m = m

    def forward(self, pixel_values):
        return self.m.encode_images(pixel_values)


# --------------------------------------------------------------------------------------
# Tiny model of the same assembly
# --------------------------------------------------------------------------------------


def build_tiny(seed: int, init_std: float, eos_scale: float, projector: str):
    """A seeded random MobileVLM: tiny CLIP vision tower (48 px, patch 2: the real 24x24 grid,
    so both projectors give the real 144 tokens), the LDP projector, a tiny Llama."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    tok, roles, ids = PD.build_tiny_tokenizer("llava-llama")
    hf = PD.hf_tokenizer(tok, roles)
    V = tok.get_vocab_size()
    torch.manual_seed(seed)
    vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                            image_size=48, patch_size=2, projection_dim=32, hidden_act="quick_gelu")
    vcfg._attn_implementation = "eager"
    vision = CLIPVisionModel(vcfg)
    lcfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                       bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                       tie_word_embeddings=False)
    lcfg._attn_implementation = "eager"
    llm = LlamaForCausalLM(lcfg)
    proj = build_projector(projector, vcfg.hidden_size, lcfg.hidden_size)
    for m in (vision, llm, proj):
        PD.reinit(m, init_std)
    with torch.no_grad():
        llm.lm_head.weight[ids["eos"]] *= eos_scale
        for m in proj.modules():  # the norms and the squeeze-excite keep a usable range
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(0.5)
    gc = llm.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    model = MobileVLM(vision.eval(), proj.eval(), llm.eval(), hf, projector_type=projector)
    return model.eval()


# --------------------------------------------------------------------------------------
# Loading a published checkpoint (mtgv/MobileVLM-*, mtgv/MobileVLM_V2-*)
# --------------------------------------------------------------------------------------

_MM_KEYS = ("mm_projector_type", "mm_hidden_size", "mm_vision_select_layer", "mm_vision_select_feature",
            "mm_vision_tower", "vision_tower_type", "mm_use_im_start_end", "mm_use_im_patch_token",
            "use_mm_proj", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "image_aspect_ratio",
            "mm_projector_lr", "vision_tower", "mm_patch_merge_type")
PROJ_PREFIX = "model.mm_projector."
VISION_PREFIX = "model.vision_tower.vision_tower."


def load_checkpoint(args):
    """MobileVLM + (size, mean, std) from --from DIR (config.json with mm_* keys, weights with
    model.mm_projector.*, optionally model.vision_tower.vision_tower.*) and --vision DIR (the CLIP
    vision tower's config, preprocessing and, when the checkpoint carries none, weights)."""
    from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    d = Path(args.source)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise SystemExit(f"{d}: no config.json (--from: a MobileVLM checkpoint folder, e.g. mtgv/MobileVLM_V2-1.7B)")
    cfg = json.loads(cfg_path.read_text())
    kind = cfg.get("mm_projector_type")
    if not isinstance(kind, str) or not kind.startswith(PROJECTORS):
        raise SystemExit(f"{cfg_path}: mm_projector_type {kind!r} is not an LDP projector ({' / '.join(PROJECTORS)})")
    vdir = Path(args.vision) if args.vision else Path(str(cfg.get("mm_vision_tower", "")))
    if not (vdir / "config.json").is_file():
        raise SystemExit(f"{cfg_path}: the vision tower {cfg.get('mm_vision_tower')!r} is not a local folder; "
                         "give --vision DIR (a CLIP folder, e.g. openai/clip-vit-large-patch14-336)")
    vcfg = CLIPVisionConfig.from_pretrained(vdir)
    vcfg._attn_implementation = "eager"
    sd = C.read_state_dict(d, ("model.", "lm_head."))
    pw = sd.get(PROJ_PREFIX + ("model.mlp.1.weight" if not kind.startswith("ldpnetv2") else "mlp.mlp.0.weight"))
    if pw is None:
        raise SystemExit(f"{d}: no {PROJ_PREFIX}* weights of an {kind} projector")
    hidden = int(cfg.get("hidden_size", -1))
    if pw.shape[1] != vcfg.hidden_size or pw.shape[0] != hidden:
        raise SystemExit(f"{d}: the {kind} projector maps {pw.shape[1]} -> {pw.shape[0]}, but the vision tower "
                         f"({vdir}) is {vcfg.hidden_size} wide and the language model {hidden} "
                         "(projector/decoder width mismatch)")
    proj = build_projector(kind, vcfg.hidden_size, hidden)
    C.load_prefixed(proj, sd, PROJ_PREFIX, d)
    vision = CLIPVisionModel(vcfg)
    if any(k.startswith(VISION_PREFIX) for k in sd):
        C.load_prefixed(vision, sd, VISION_PREFIX, d)
    else:
        vsd = C.read_state_dict(vdir, ("vision_model.",))
        C.load_prefixed(vision, vsd, "", vdir)
    lsd = {k: v for k, v in sd.items() if not k.startswith((PROJ_PREFIX, "model.vision_tower."))}
    lfields = {k: v for k, v in cfg.items() if k not in _MM_KEYS and k not in ("architectures", "model_type", "auto_map")}
    lcfg = LlamaConfig(**lfields)
    lcfg._attn_implementation = "eager"
    llm = LlamaForCausalLM(lcfg)
    if "lm_head.weight" not in lsd and lcfg.tie_word_embeddings:
        lsd["lm_head.weight"] = lsd.get("model.embed_tokens.weight")
    C.load_prefixed(llm, lsd, "", d)
    tok = AutoTokenizer.from_pretrained(d)
    pp = C.image_processor_config(str(vdir))
    size = C.square_size(pp, vcfg.image_size)
    if size != vcfg.image_size:
        raise SystemExit(f"{vdir}: image processor size {size} != vision_config.image_size {vcfg.image_size}")
    model = MobileVLM(vision.eval(), proj.eval(), llm.eval(), tok, projector_type=kind,
                      select_layer=int(cfg.get("mm_vision_select_layer", -2)),
                      select_feature=cfg.get("mm_vision_select_feature", "patch"))
    if model.select_feature != "patch":
        raise SystemExit(f"{cfg_path}: mm_vision_select_feature {model.select_feature!r} (only 'patch' is supported)")
    return model.eval(), size, pp["image_mean"], pp["image_std"]


def save_tiny(sp: Path, model: MobileVLM, size: int) -> None:
    """The tiny model in the published layout: sp/mobilevlm (config.json with mm_* keys,
    model.safetensors with model.* / lm_head / model.mm_projector.* / model.vision_tower.vision_tower.*,
    tokenizer) and sp/clip (the CLIP vision tower folder with its preprocessor_config.json)."""
    from safetensors.torch import save_file

    m, c = sp / "mobilevlm", sp / "clip"
    m.mkdir(parents=True, exist_ok=True)
    model.vision_tower.save_pretrained(c)
    pre = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": size},
           "crop_size": {"height": size, "width": size}, "image_mean": OPENAI_CLIP_MEAN,
           "image_std": OPENAI_CLIP_STD, "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255}
    (c / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    cfg = model.llm.config.to_dict()
    cfg.update(model_type="mobilevlm", architectures=["MobileLlamaForCausalLM"],
               mm_projector_type=model.projector_type, mm_hidden_size=model.vision_tower.config.hidden_size,
               mm_vision_select_layer=model.select_layer, mm_vision_select_feature=model.select_feature,
               mm_vision_tower=str(c), vision_tower_type="clip", mm_use_im_start_end=False,
               mm_use_im_patch_token=False)
    cfg.pop("_attn_implementation_autoset", None)
    (m / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    sd = {k: v.contiguous() for k, v in model.llm.state_dict().items()}
    sd.update({PROJ_PREFIX + k: v.contiguous() for k, v in model.mm_projector.state_dict().items()})
    sd.update({VISION_PREFIX + k: v.contiguous() for k, v in model.vision_tower.state_dict().items()})
    save_file(sd, str(m / "model.safetensors"))
    model.tokenizer.save_pretrained(m)
    print(f"export: wrote {m} and {c}", file=sys.stderr)


# --------------------------------------------------------------------------------------
# The package
# --------------------------------------------------------------------------------------


def template_from(args) -> str:
    t = TEMPLATES.get(args.template, args.template)
    if t.count(PLACEHOLDER) != 1:
        raise SystemExit(f"--template {args.template!r}: {t.count(PLACEHOLDER)} image placeholders {PLACEHOLDER} "
                         f"(a package takes one image; give {', '.join(TEMPLATES)} or a text with one "
                         f"{PLACEHOLDER} and {{prompt}})")
    if "{prompt}" not in t:
        raise SystemExit(f"--template {args.template!r}: no {{prompt}} placeholder")
    return t


def image_token_id(tok) -> int:
    """The id of <image>, added as a special token when the tokenizer has none (MobileVLM's
    authors use the out-of-vocabulary index -200 instead; the package replaces token rows)."""
    from tokenizers import AddedToken

    if PLACEHOLDER not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [AddedToken(PLACEHOLDER, special=True, normalized=False)]})
    return int(tok.convert_tokens_to_ids(PLACEHOLDER))


def extended_embedding(emb: nn.Embedding, rows: int) -> nn.Embedding:
    """A copy of ``emb`` with zero rows up to ``rows`` (an image token past the vocabulary)."""
    w = emb.weight.detach()
    if rows <= w.shape[0]:
        return emb
    out = nn.Embedding(rows, w.shape[1])
    with torch.no_grad():
        out.weight.zero_()
        out.weight[: w.shape[0]] = w
    return out


class Parts(PD.PrefixParts):
    """MobileVLM on the prefix-decoder seam: HF generate is LlamaForCausalLM.generate on the
    authors' embeddings (inputs_embeds + attention_mask)."""

    def __init__(self, model: MobileVLM, template: str, size: int, mean, std):
        llm, tok = model.llm, model.tokenizer
        tok.padding_side = "left"
        image_id = image_token_id(tok)
        embed = extended_embedding(llm.get_input_embeddings(), max(llm.config.vocab_size, image_id + 1))
        vc = model.vision_tower.config
        tokens = projector_tokens(model.projector_type, vc.image_size // vc.patch_size)
        super().__init__(llm, tok, size, mean, std, architecture=f"mobilevlm-{model.projector_type}-llama",
                         prefix=Prefix(model), embed=embed, lm_backbone=llm.model, lm_head=llm.lm_head,
                         text_cfg=llm.config, tokens=tokens, image_token_id=image_id,
                         template=template.replace(PLACEHOLDER, "{image}"), add_bos=True,
                         ref_prompts=(REF_PROMPTS[0], REF_PROMPTS, REF_PROMPTS[:2]), kind="mobilevlm")
        self.mv, self.authors_template = model, template
        self._authors: dict = {}

    def authors_text(self, prompt: str) -> str:
        return self.authors_template.replace("{prompt}", prompt)

    def processor_ids(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """tokenizer_image_token's ids with the image index as P image tokens, left-padded."""
        rows = []
        for p in prompts:
            ids = self.mv.tokenizer_image_token(self.authors_text(p))
            k = ids.index(-1)
            rows.append(ids[:k] + [self.image_token_id] * self.tokens + ids[k + 1:])
        return self.left_pad(rows)

    def hf_inputs(self, ids, mask, pixels) -> dict:
        emb = self.assemble_embeds(ids, pixels)
        emb[torch.from_numpy(mask) == 0] = 0.0
        return dict(inputs_embeds=emb, attention_mask=torch.from_numpy(mask))

    def hf_generate(self, ids, mask, pixels, **kw) -> np.ndarray:
        with torch.no_grad():  # generate on inputs_embeds only returns the new tokens
            return self.model.generate(**self.hf_inputs(ids, mask, pixels), **kw).numpy()

    def authors_check(self, pixels: np.ndarray, prompts: list[str]) -> dict:
        """The literal authors' path (MobileVLM.context / generate on the conversation texts)
        against hf_inputs / hf_generate on processor_ids."""
        texts = [self.authors_text(p) for p in prompts]
        with torch.no_grad():
            emb, mask = self.mv.context(torch.from_numpy(pixels), texts)
            ids, m = self.processor_ids(prompts)
            ours = self.hf_inputs(ids, m, pixels)
            kw = dict(max_new_tokens=8, do_sample=False, num_beams=1, eos_token_id=self.eos, pad_token_id=self.pad)
            a = self.mv.generate(torch.from_numpy(pixels), texts, **kw)
            b = self.hf_generate(ids, m, pixels, **kw)
        same_mask = bool(np.array_equal(mask.numpy(), m))
        diff = float((emb - ours["inputs_embeds"]).abs().max()) if same_mask else float("inf")
        return {"prompts": prompts, "embeds_max_abs_diff": diff, "mask_equal": same_mask,
                "greedy_tokens_equal": bool(np.array_equal(a, b))}

    def manifest_extra(self) -> list:
        return [("prompt", [("repetition_penalty_on_prompt", False,
                             "generate(inputs_embeds=...): the penalty counts generated tokens only")])]

    def reference_extra(self) -> dict:
        return {"authors_template": self.authors_template, "authors_path_check": self._authors,
                "projector": self.mv.projector_type, "repetition_penalty_on_prompt": False,
                **({"projector_vs_torchvision_timm_max_abs_diff": self._proj_check}
                   if getattr(self, "_proj_check", None) is not None else {})}


def export_mobilevlm(args) -> None:
    template = template_from(args)
    tv = transformers.__version__
    seed_info = None
    if args.tiny:
        if args.vision:
            raise SystemExit("--vision only applies with --from")
        seed = DEFAULT_SEED if args.seed is None else args.seed
        init_std = DEFAULT_INIT_STD if args.init_std is None else args.init_std
        eos_scale = DEFAULT_EOS_SCALE if args.eos_scale is None else args.eos_scale
        model = build_tiny(seed, init_std, eos_scale, args.projector)
        size, mean, std = model.vision_tower.config.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        name = args.name or ("mobilevlm-tiny-random" if args.projector == "ldpnet" else "mobilevlm2-tiny-random")
        source = (f"random init, seed {seed}, init std {init_std}, eos logit scale {eos_scale}, "
                  f"projector {args.projector}, transformers {tv}, torch {torch.__version__}")
        trained = False
        if args.save_pretrained:
            save_tiny(Path(args.save_pretrained), model, size)
        if not args.no_reference:
            seed_info = dict(seed=seed, init_std=init_std, eos_logit_scale=eos_scale)
    else:
        if args.projector != "ldpnet":
            raise SystemExit("--projector only applies with --tiny (with --from, config.json says)")
        model, size, mean, std = load_checkpoint(args)
        name = args.name or Path(args.source.rstrip("/")).name
        source = f"{args.source}, exported with transformers {tv}, torch {torch.__version__}"
        trained = True
    parts = Parts(model, template, size, mean, std)
    vc = model.vision_tower.config
    n = (vc.image_size // vc.patch_size) ** 2
    parts._proj_check = check_projector_against_reference_impl(model.mm_projector, model.projector_type,
                                                                vc.hidden_size, model.llm.config.hidden_size, n)
    if parts._proj_check is not None:
        print(f"export: LDP projector vs torchvision/timm modules: max abs diff {parts._proj_check:.3g}",
              file=sys.stderr)
        if not parts._proj_check < 1e-5:
            raise RuntimeError(f"the LDP projector differs from torchvision/timm's by {parts._proj_check}")
    _, images_u8 = C.make_reference_images(size)
    pixels = C.preprocess_u8(images_u8, mean, std)
    parts._authors = parts.authors_check(pixels[:3], REF_PROMPTS)
    print(f"export: authors' assembly vs the package layout: {parts._authors}", file=sys.stderr)
    if not (parts._authors["mask_equal"] and parts._authors["embeds_max_abs_diff"] == 0.0
            and parts._authors["greedy_tokens_equal"]):
        raise RuntimeError(f"the package layout differs from the authors' assembly: {parts._authors}")
    PD.export_prefix_package(args, parts, name=name, trained=trained, source=source,
                             reference_seed_info=seed_info)


def add_parser(sub, command: str) -> None:
    c = sub.add_parser(command, help="export MobileVLM / MobileVLM V2 (CLIP ViT, LDP projector, MobileLLaMA) "
                                     "as an image-text-decoder package",
                       description="Export MobileVLM: image_prefix.onnx (CLIP vision tower + LDP / LDPv2 "
                                   "projector), embed_tokens.onnx, decoder.onnx (MobileLLaMA with KV cache), "
                                   "tokenizer.json, model.toml.")
    C.add_source_args(c, from_help="a MobileVLM checkpoint folder (mtgv/MobileVLM-1.7B, mtgv/MobileVLM_V2-1.7B, ...)",
                      tiny_help="seeded random model of the same assembly (test fixture)")
    c.add_argument("--vision", metavar="DIR", default=None,
                   help="--from: the CLIP vision tower folder (openai/clip-vit-large-patch14-336) when "
                        "config.json's mm_vision_tower is not a local folder")
    c.add_argument("--projector", choices=PROJECTORS, default="ldpnet",
                   help="--tiny: ldpnet (MobileVLM, default) or ldpnetv2 (MobileVLM V2)")
    c.add_argument("--template", default="v1",
                   help=f"conversation template: v1 (the authors' conv_vicuna_v1) or a text with one "
                        f"{PLACEHOLDER} and {{prompt}} (default v1)")
    C.add_out_arg(c)
    PD.add_prefix_args(c, seed=DEFAULT_SEED, init_std=DEFAULT_INIT_STD, eos_scale=DEFAULT_EOS_SCALE)
    c.set_defaults(func=export_mobilevlm)
