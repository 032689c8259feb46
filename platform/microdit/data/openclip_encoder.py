"""OpenCLIP text encoder: ``ln_final`` states of all tokens, open_clip's zero padding, no projection.

The paper's captions (SPEC §4) are OpenCLIP ``hf-hub:apple/DFN5B-CLIP-ViT-H-14-378`` states: the
open_clip tokenizer (``<start_of_text>`` caption ``<end_of_text>``, truncated to the context and
padded with token id 0), then token_embedding + positional_embedding -> the text transformer with
its causal mask -> ``ln_final``, for every one of the 77 positions (padding included), with no
pooling and no ``text_projection`` (1024-d for DFN5B). That is the official code's
``openclip_text_encoder.forward_fxn``.

It does not ``import open_clip``: open_clip's package ``__init__`` and its ``utils`` (imported by
``transformer.py``) import torchvision, whose PyPI build does not load beside the CPU torch here
(SPEC §7). So this module runs open_clip's text path itself: the same modules under the same
state-dict keys (``nn.MultiheadAttention`` self-attention with the additive ``-inf`` causal mask,
``ResidualAttentionBlock`` order, open_clip's ``LayerNorm`` / ``QuickGELU`` / ``LayerScale``) on
open_clip's own checkpoint files, and open_clip's ``SimpleTokenizer`` (the OpenAI CLIP BPE, MIT
licence) on the vocabulary file shipped in the ``open-clip-torch`` wheel. Install that wheel without
its dependencies (``pip install --no-deps open-clip-torch``) plus ``pip install ftfy`` (the
``openclip`` extra); a local model directory may instead hold ``bpe_simple_vocab_16e6.txt.gz``.

Names: ``hf-hub:ORG/REPO`` (``open_clip_config.json`` + ``open_clip_model.safetensors`` or
``open_clip_pytorch_model.bin`` through the Hugging Face cache), or a local directory holding those
files (or a checkpoint file beside its ``open_clip_config.json``), optionally prefixed
``open_clip:`` / ``openclip:`` (the official spelling) and ``local-dir:``.
"""

from __future__ import annotations

import gzip
import html
import importlib.metadata
import json
import string
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from microdit.errors import ConfigError

NAME_PREFIXES = ("open_clip:", "openclip:")
HUB, LOCAL_DIR = "hf-hub:", "local-dir:"
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
INSTALL = "pip install --no-deps open-clip-torch && pip install ftfy"
# text_cfg keys that change the computation in ways this module does not run (HF towers, CoCa, ...)
_UNSUPPORTED = (
    "hf_model_name",
    "embed_cls",
    "block_type",
    "qk_norm",
    "scaled_cosine_attn",
    "scale_heads",
    "scale_attn_inner",
    "scale_attn",
    "scale_fc",
    "hf_tokenizer_name",
    "tokenizer_mode",
)


def is_open_clip_name(name: str) -> bool:
    return name.startswith(NAME_PREFIXES + (HUB,))


def _strip(name: str) -> str:
    for prefix in NAME_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _hub_download(repo_id: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, library_name="open_clip")


def resolve(name: str) -> tuple[dict[str, Any], Path, Path | None]:
    """(model_cfg, weights file, local directory or None) for an OpenCLIP name."""
    ident = _strip(name)
    if ident.startswith(HUB):
        repo = ident[len(HUB) :]
        try:
            config_path = Path(_hub_download(repo, CONFIG_FILE))
        except Exception as err:  # offline, not cached, no such repo: all one answer
            raise ConfigError(
                f"text_encoder.name={name!r}: no {CONFIG_FILE} in the hub repo or cache: {err}"
            ) from err
        weights, errors = None, []
        for filename in WEIGHT_FILES:
            try:
                weights = Path(_hub_download(repo, filename))
                break
            except Exception as err:
                errors.append(f"{filename}: {err}")
        if weights is None:
            raise ConfigError(
                f"text_encoder.name={name!r}: no OpenCLIP weights in the hub repo or cache: {errors}"
            )
        local = None
    else:
        path = Path(ident.removeprefix(LOCAL_DIR)).expanduser()
        if path.is_dir():
            local = path
            found = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
            if not found:  # a lone training checkpoint (epoch_32.pt, ...)
                found = sorted(
                    p for ext in ("safetensors", "bin", "pt", "pth") for p in path.glob(f"*.{ext}")
                )
                if len(found) > 1:
                    raise ConfigError(f"text_encoder.name={name!r}: several checkpoints in {path}; name one")
            weights = found[0] if found else None
        elif path.is_file():
            local, weights = path.parent, path
        else:
            raise ConfigError(
                f"text_encoder.name={name!r}: not an hf-hub: id, a local directory or a checkpoint file"
            )
        config_path = local / CONFIG_FILE
        if weights is None or not config_path.is_file():
            raise ConfigError(
                f"text_encoder.name={name!r}: needs {CONFIG_FILE} and OpenCLIP weights in {local}"
            )
    raw = json.loads(config_path.read_text(encoding="utf-8"))
    return raw.get("model_cfg", raw), weights, local


def bpe_path(local: Path | None) -> Path:
    """The CLIP BPE merges: a model directory's own copy, else the one in the open-clip-torch wheel."""
    if local is not None and (local / BPE_FILE).is_file():
        return local / BPE_FILE
    try:
        path = Path(importlib.metadata.distribution("open-clip-torch").locate_file(f"open_clip/{BPE_FILE}"))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ConfigError(f"text_encoder kind open_clip needs the open_clip BPE vocabulary ({INSTALL})")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class ClipTokenizer:
    """open_clip's ``SimpleTokenizer`` (OpenAI CLIP BPE): ``(ids (N, L) long, lengths (N,))``."""

    def __init__(
        self, bpe: Path, context_length: int, clean: str = "lower", special: list[str] | None = None
    ) -> None:
        try:
            import ftfy
            import regex
        except ImportError as err:
            raise ConfigError(f"text_encoder kind open_clip needs ftfy and regex ({INSTALL})") from err
        if clean not in ("lower", "whitespace", "canonicalize"):
            raise ConfigError(f"text_encoder: open_clip tokenizer clean={clean!r} is not supported")
        self._ftfy, self.clean, self.context_length = ftfy, clean, context_length
        self.byte_encoder = _bytes_to_unicode()
        merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        specials = ["<start_of_text>", "<end_of_text>"] + list(special or [])
        self.encoder = {t: i for i, t in enumerate(vocab + specials)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {t: t for t in specials}
        self.pat = regex.compile(
            "|".join(specials) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot, self.eot = self.encoder[specials[0]], self.encoder[specials[1]]

    def _clean(self, text: str) -> str:
        text = html.unescape(html.unescape(self._ftfy.fix_text(text))).strip()
        if self.clean == "canonicalize":
            text = text.replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
        text = " ".join(text.split()).strip()
        return text.lower() if self.clean == "lower" else text

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:]))
            first, second = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if (first, second) not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def encode(self, text: str) -> list[int]:
        ids = []
        for token in self.pat.findall(self._clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(texts), self.context_length, dtype=torch.long)  # pad id 0, as open_clip
        lengths = torch.zeros(len(texts), dtype=torch.long)
        for i, text in enumerate(texts):
            tokens = [self.sot] + self.encode(text) + [self.eot]
            if len(tokens) > self.context_length:
                tokens = tokens[: self.context_length]
                tokens[-1] = self.eot
            ids[i, : len(tokens)] = torch.tensor(tokens)
            lengths[i] = len(tokens)
        return ids, lengths


class LayerNorm(nn.LayerNorm):
    """open_clip's ``LayerNorm``: torch's, cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ResidualAttentionBlock(nn.Module):
    """open_clip's pre-LN block: x + ls_1(attn(ln_1 x)); x + ls_2(mlp(ln_2 x)) (batch first)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, ls: float | None, act, norm) -> None:
        super().__init__()
        self.ln_1 = norm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = LayerScale(width, ls) if ls is not None else nn.Identity()
        self.ln_2 = norm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, hidden)), ("gelu", act()), ("c_proj", nn.Linear(hidden, width))]
            )
        )
        self.ls_2 = LayerScale(width, ls) if ls is not None else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        q = self.ln_1(x)
        mask = attn_mask.to(q.dtype) if attn_mask is not None else None
        x = x + self.ls_1(self.attn(q, q, q, need_weights=False, attn_mask=mask)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class OpenClipTextTower(nn.Module):
    """The text half of an open_clip ``CLIP`` (same state-dict keys), returning ``ln_final`` states."""

    def __init__(self, text_cfg: dict[str, Any], quick_gelu: bool = False) -> None:
        super().__init__()
        bad = [k for k in _UNSUPPORTED if text_cfg.get(k)]
        if bad:
            raise ConfigError(f"text_encoder: open_clip text_cfg options not supported here: {bad}")
        width, layers = int(text_cfg.get("width", 512)), int(text_cfg.get("layers", 12))
        self.context_length = int(text_cfg.get("context_length", 77))
        self.causal = not text_cfg.get("no_causal_mask", False)
        norm = partial(LayerNorm, **(text_cfg.get("norm_kwargs") or {}))  # e.g. {"eps": 1e-6}
        act = partial(QuickGELU if quick_gelu else nn.GELU, **(text_cfg.get("act_kwargs") or {}))
        self.token_embedding = nn.Embedding(int(text_cfg.get("vocab_size", 49408)), width)
        self.positional_embedding = nn.Parameter(torch.empty(self.context_length, width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ResidualAttentionBlock(
                width,
                int(text_cfg.get("heads", 8)),
                float(text_cfg.get("mlp_ratio", 4.0)),
                text_cfg.get("ls_init_value"),
                act,
                norm,
            )
            for _ in range(layers)
        )
        self.ln_final = norm(width)
        self.width = width

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N, L, width) ``ln_final`` states (open_clip ``encode_text`` before pooling)."""
        length = ids.shape[1]
        dtype = self.transformer.resblocks[0].mlp.c_fc.weight.dtype  # open_clip's cast dtype
        x = self.token_embedding(ids).to(dtype) + self.positional_embedding[:length].to(dtype)
        mask = None
        if self.causal:  # open_clip's build_causal_mask: additive, -inf above the diagonal
            mask = torch.full((length, length), float("-inf"), device=ids.device).triu_(1)
        for block in self.transformer.resblocks:
            x = block(x, attn_mask=mask)
        return self.ln_final(x)


def _text_state_dict(weights: Path, wanted: set[str]) -> dict[str, torch.Tensor]:
    """The text-tower tensors of an open_clip checkpoint (CLIP or CustomTextCLIP ``text.`` layout)."""
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            prefix = "text." if "text.positional_embedding" in keys else ""
            return {
                k[len(prefix) :]: f.get_tensor(k)
                for k in keys
                if k[len(prefix) :] in wanted and k.startswith(prefix)
            }
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch.save format cannot be memory-mapped
        state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        key = key.removeprefix("text.") if "positional_embedding" not in state else key
        if key in wanted:
            out[key] = value
    return out


class OpenClipTextEncoder:
    """open_clip tokenizer + text tower -> (states (N, L, width) float32, lengths (N,) int64)."""

    def __init__(self, config: Any, device: torch.device) -> None:
        model_cfg, weights, local = resolve(config.name)
        text_cfg = dict(model_cfg.get("text_cfg") or {})
        with torch.device("meta"):
            tower = OpenClipTextTower(text_cfg, quick_gelu=bool(model_cfg.get("quick_gelu", False)))
        if config.max_length > tower.context_length:
            raise ConfigError(
                f"text_encoder.max_length={config.max_length} exceeds the OpenCLIP context length "
                f"{tower.context_length} (official: 77)"
            )
        wanted = set(tower.state_dict())
        state = _text_state_dict(weights, wanted)
        missing = sorted(wanted - set(state))
        if missing:
            raise ConfigError(
                f"text_encoder.name={config.name!r}: {weights} lacks text weights {missing[:5]}"
            )
        tower.load_state_dict(state, strict=True, assign=True)
        self.model = tower.float().to(device).eval()  # fp32 weights and compute, as open_clip's default
        kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
        unknown = set(kwargs) - {"clean", "additional_special_tokens"}
        if unknown:
            raise ConfigError(f"text_encoder: open_clip tokenizer_kwargs {sorted(unknown)} not supported")
        self.tokenizer = ClipTokenizer(
            bpe_path(local),
            config.max_length,
            kwargs.get("clean", "lower"),
            kwargs.get("additional_special_tokens"),
        )
        self.name, self.location, self.device = config.name, str(local or weights.parent), device
        self.kind, self.max_length, self.dim = "open_clip", config.max_length, tower.width

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer(list(captions))

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, lengths = self.tokenize(captions)  # (N, L) zero-padded, (N,) tokens incl. start/end
        return self.model(ids.to(self.device)).float(), lengths

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.location,
            "kind": self.kind,
            "max_length": self.max_length,
            "dim": self.dim,
            "output": "ln_final states of all tokens, zero padding, no projection",
        }
