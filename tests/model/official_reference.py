"""An independent re-implementation of the authors' ``DiT`` (SonyResearch/micro_diffusion), for tests.

It reproduces their module tree (parameter and buffer names, shapes) and their forward so that a
state dict taken from it is laid out exactly like a released checkpoint. It deliberately imports
nothing from ``microdit``: ``test_official.py`` loads its weights into our model through
``microdit.model.official.load_official_checkpoint`` and compares outputs.

Their conventions reproduced here: weight-only LayerNorms (``bias=False``); parameterless
QK-norms ``ln_q``/``ln_k`` over the full projected width before the head split; fused qkv
reshaped (B, N, 3, H, hd); cross-attention kv reshaped (B, L, 2, H, hd); a persistent
``pos_embed`` buffer (MAE sin-cos in NumPy float64) and a zero ``mask_token`` buffer; caption
input shaped (N, 1, L, Dy); forward returns ``{'sample', 'mask'}``; masking by
``argsort(torch.rand)``, keeping the first K; one-hot expert-choice MoE.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _ln(dim: int, eps: float, affine: bool = True) -> nn.LayerNorm:
    """Their ``layernorm`` (weight only) or ``np_layernorm`` (no parameters)."""
    return nn.LayerNorm(dim, eps=eps, elementwise_affine=affine, bias=False)


def _ceil_to(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _pos_table(dim: int, grid: int, pos_interp_scale: float) -> np.ndarray:
    """(grid*grid, dim) float64: first dim/2 channels from the column coordinate, each half [sin, cos]."""
    coords = np.arange(grid, dtype=np.float64) / pos_interp_scale
    col, row = np.meshgrid(coords, coords)  # col varies along a row (x / w), row along a column

    def one_axis(pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
        angles = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(col), one_axis(row)], axis=1)


class RefMlp(nn.Module):
    """timm-style Mlp: fc1 -> GELU(tanh) -> LayerNorm(weight only) -> fc2, biases on the linears."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.act = nn.GELU(approximate="tanh")
        self.norm = _ln(d_hidden, eps)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.fc2(self.norm(self.act(self.fc1(x))))


class RefPatchEmbed(nn.Module):
    def __init__(self, patch: int, channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class RefTimestep(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(512, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))

    def forward(self, t):
        k = torch.arange(256, dtype=torch.float32)
        freqs = torch.exp(-math.log(10000.0) * k / 256)
        args = t.float()[:, None] * freqs[None, :]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class RefCaptionProjection(nn.Module):
    def __init__(self, caption_channels: int, dim: int, eps: float):
        super().__init__()
        self.y_proj = RefMlp(caption_channels, dim, dim, eps)

    def forward(self, y):
        return self.y_proj(y)


class RefSelfAttention(nn.Module):
    def __init__(self, dim: int, hidden: int, head_dim: int, bias: bool, eps: float):
        super().__init__()
        self.heads, self.hd = hidden // head_dim, head_dim
        self.qkv = nn.Linear(dim, 3 * hidden, bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.ln_q = _ln(hidden, eps, affine=False)
        self.ln_k = _ln(hidden, eps, affine=False)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.hd).unbind(2)  # (b, n, H, hd) each
        q = self.ln_q(q.reshape(b, n, -1)).reshape(b, n, self.heads, self.hd)
        k = self.ln_k(k.reshape(b, n, -1)).reshape(b, n, self.heads, self.hd)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, n, self.heads * self.hd))


class RefCrossAttention(nn.Module):
    def __init__(self, dim: int, head_dim: int, bias: bool, eps: float):
        super().__init__()
        self.heads, self.hd = dim // head_dim, head_dim
        self.q_linear = nn.Linear(dim, dim, bias=bias)
        self.kv_linear = nn.Linear(dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.ln_q = _ln(dim, eps, affine=False)
        self.ln_k = _ln(dim, eps, affine=False)

    def forward(self, x, cond):
        b, n, _ = x.shape
        q = self.ln_q(self.q_linear(x)).reshape(b, n, self.heads, self.hd)
        k, v = self.kv_linear(cond).reshape(b, -1, 2, self.heads, self.hd).unbind(2)
        k = self.ln_k(k.reshape(b, k.shape[1], -1)).reshape(b, -1, self.heads, self.hd)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class RefSwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class RefExpertChoiceMoE(nn.Module):
    """Their one-hot formulation: gather and scatter as einsums with a float one-hot matrix."""

    def __init__(self, dim: int, hidden: int, num_experts: int, capacity: float):
        super().__init__()
        self.num_experts, self.capacity = num_experts, capacity
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))

    def forward(self, x):
        n, t, d = x.shape
        k = int(self.capacity * t / self.num_experts)
        probs = F.softmax(self.gate(x), dim=-1)  # [n, t, e]
        g, idx = torch.topk(probs.permute(0, 2, 1), k, dim=-1)  # [n, e, k]
        onehot = F.one_hot(idx, num_classes=t).float()  # [n, e, k, t]
        xin = torch.einsum("nekt,ntd->nekd", onehot, x)
        h = F.gelu(torch.einsum("nekd,edf->nekf", xin, self.w1))  # exact GELU
        h = torch.einsum("nekf,efd->nekd", h, self.w2)
        return torch.einsum("nekt,nekd->ntd", onehot, g.unsqueeze(-1) * h)


class RefBlock(nn.Module):
    def __init__(
        self, dim, cond_dim, head_dim, qkv_ratio, mlp_ratio, multiple_of, eps, bias, moe, experts, cap
    ):
        super().__init__()
        hq = _ceil_to(int(dim * qkv_ratio), 2 * head_dim) if qkv_ratio != 1 else dim
        self.norm1 = _ln(dim, eps)
        self.attn = RefSelfAttention(dim, hq, head_dim, bias, eps)
        self.cross_attn = RefCrossAttention(dim, head_dim, bias, eps)
        self.norm2 = _ln(dim, eps)
        self.norm3 = _ln(dim, eps)
        if moe:
            self.mlp = RefExpertChoiceMoE(dim, _ceil_to(int(dim * mlp_ratio), multiple_of), experts, cap)
        else:
            hidden = _ceil_to(int(2 * int(dim * mlp_ratio) / 3), multiple_of)
            self.mlp = RefSwiGLU(dim, hidden, bias)
        self.adaLN_modulation = nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(cond_dim, 6 * dim))

    def forward(self, x, y, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=1
        )
        x = x + gate_msa.unsqueeze(1) * self.attn(_modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + self.cross_attn(self.norm2(x), y)
        return x + gate_mlp.unsqueeze(1) * self.mlp(_modulate(self.norm3(x), shift_mlp, scale_mlp))


class RefPromptBlock(nn.Module):
    """``y_emb_preprocess``: a pre-norm block over caption tokens, SwiGLU ratio 4."""

    def __init__(self, dim, head_dim, multiple_of, eps, bias):
        super().__init__()
        self.norm1 = _ln(dim, eps)
        self.attn = RefSelfAttention(dim, dim, head_dim, bias, eps)
        self.norm2 = _ln(dim, eps)
        self.mlp = RefSwiGLU(dim, _ceil_to(int(2 * int(dim * 4.0) / 3), multiple_of), bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefFinalLayer(nn.Module):
    def __init__(self, dim, patch, channels, eps):
        super().__init__()
        self.norm_final = _ln(dim, eps)
        self.adaLN_modulation = nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch * patch * channels)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class RefDiT(nn.Module):
    """Their ``DiT(**kwargs)``: same keyword arguments, module names, buffers and forward."""

    def __init__(
        self,
        input_size=32,
        patch_size=2,
        in_channels=4,
        dim=1152,
        depth=28,
        head_dim=64,
        multiple_of=256,
        caption_channels=1024,
        pos_interp_scale=1.0,
        norm_eps=1e-6,
        depth_init=True,
        qkv_multipliers=(1.0,),
        ffn_multipliers=(4.0,),
        use_patch_mixer=True,
        patch_mixer_depth=4,
        patch_mixer_dim=512,
        patch_mixer_qkv_ratio=1.0,
        patch_mixer_mlp_ratio=1.0,
        use_bias=True,
        num_experts=8,
        expert_capacity=1,
        experts_every_n=2,
    ):
        super().__init__()
        del depth_init  # only affects their initialisation; tests re-initialise every parameter
        self.patch_size, self.out_channels = patch_size, in_channels
        self.use_patch_mixer = use_patch_mixer
        eps = norm_eps
        grid = input_size // patch_size
        self.x_embedder = RefPatchEmbed(patch_size, in_channels, dim)
        self.t_embedder = RefTimestep(dim)
        table = torch.from_numpy(_pos_table(dim, grid, pos_interp_scale)).float()[None]
        self.register_buffer("pos_embed", table)  # (1, T, D), persistent as in their checkpoints
        self.y_embedder = RefCaptionProjection(caption_channels, dim, eps)
        self.y_emb_preprocess = RefPromptBlock(dim, head_dim, multiple_of, eps, use_bias)
        self.pooled_y_emb_process = RefMlp(dim, dim, dim, eps)

        def block(width, qkv_ratio, mlp_ratio, moe):
            return RefBlock(
                width,
                dim,
                head_dim,
                qkv_ratio,
                mlp_ratio,
                multiple_of,
                eps,
                use_bias,
                moe,
                num_experts,
                expert_capacity,
            )

        if use_patch_mixer:
            self.patch_mixer = nn.ModuleList(
                block(
                    patch_mixer_dim,
                    patch_mixer_qkv_ratio,
                    patch_mixer_mlp_ratio,
                    i >= 1 and (i + 1) % experts_every_n == 0,
                )
                for i in range(patch_mixer_depth)
            )
            if patch_mixer_dim != dim:
                self.patch_mixer_map_xin = nn.Sequential(
                    _ln(dim, eps), nn.Linear(dim, patch_mixer_dim, bias=use_bias)
                )
                self.patch_mixer_map_xout = nn.Sequential(
                    _ln(patch_mixer_dim, eps), nn.Linear(patch_mixer_dim, dim, bias=use_bias)
                )
                self.patch_mixer_map_y = nn.Sequential(
                    _ln(dim, eps), nn.Linear(dim, patch_mixer_dim, bias=use_bias)
                )
            else:
                self.patch_mixer_map_xin = nn.Identity()
                self.patch_mixer_map_xout = nn.Identity()
                self.patch_mixer_map_y = nn.Identity()

        qkv = list(qkv_multipliers)
        ffn = list(ffn_multipliers)
        if len(qkv) != depth:  # their split form: each value repeated over an equal share of blocks
            qkv = [m for m in qkv for _ in range(depth // len(qkv))]
            ffn = [m for m in ffn for _ in range(depth // len(ffn))]
        self.blocks = nn.ModuleList(
            block(dim, qkv[i], ffn[i], i < depth - 1 and (i + 1) % experts_every_n == 0) for i in range(depth)
        )
        self.register_buffer("mask_token", torch.zeros(1, 1, patch_size**2 * in_channels))
        self.final_layer = RefFinalLayer(dim, patch_size, in_channels, eps)
        self.last_ids_keep: torch.Tensor | None = None

    def forward(self, x, t, y, mask_ratio=0.0):
        """x (N, C, H, W), t (N,), y (N, 1, L, Dy) -> {'sample': (N, C, H, W), 'mask': (N, T) or None}."""
        gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.x_embedder(x) + self.pos_embed
        t = self.t_embedder(t.expand(x.shape[0]))
        y = self.y_embedder(y)  # (N, 1, L, D)
        y = self.y_emb_preprocess(y.squeeze(1)).unsqueeze(1)
        t = t + self.pooled_y_emb_process(y.mean(dim=-2).squeeze(1))
        if self.use_patch_mixer:
            x = self.patch_mixer_map_xin(x)
            y_mixer = self.patch_mixer_map_y(y)
            for blk in self.patch_mixer:
                x = blk(x, y_mixer, t)
        mask = ids_restore = None
        self.last_ids_keep = None
        if mask_ratio > 0:
            n, length = x.shape[0], x.shape[1]
            keep = int(length * (1 - mask_ratio))
            ids_shuffle = torch.argsort(torch.rand(n, length), dim=1)
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            ids_keep = ids_shuffle[:, :keep]
            mask = torch.ones(n, length)
            mask[:, :keep] = 0
            mask = torch.gather(mask, 1, ids_restore)
            x = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, x.shape[-1]))
            self.last_ids_keep = ids_keep
        if self.use_patch_mixer:
            x = self.patch_mixer_map_xout(x)
        for blk in self.blocks:
            x = blk(x, y, t)
        x = self.final_layer(x, t)
        if mask_ratio > 0:
            fill = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] - x.shape[1], 1)
            x = torch.cat([x, fill], dim=1)
            x = torch.gather(x, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        p, c = self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], gh, gw, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return {"sample": x.reshape(x.shape[0], c, gh * p, gw * p), "mask": mask}
