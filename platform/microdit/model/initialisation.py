"""The paper's initialisation scheme in one place (SPEC §1, "Initialisation").

Xavier-uniform linears with zero bias; the patch conv as a flattened linear; N(0, 0.02) for the
timestep / caption / pooled MLPs; trunc-normal 0.02 on input-side block weights; a depth-scaled
std on output-side weights; zeros wherever a path must start closed (adaLN-Zero, final layer,
the caption block's outputs).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import nn

from microdit.model.blocks import DiTBlock
from microdit.model.feedforward import SwiGLU
from microdit.model.moe import ExpertChoiceMoE

if TYPE_CHECKING:
    from microdit.model.microdit import MicroDiT

INIT_STD = 0.02


def initialise_microdit(model: MicroDiT) -> None:
    cfg = model.config
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    conv = model.x_embedder.proj  # its bias keeps PyTorch's default init, as in the official code
    nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))

    for mlp in (
        model.t_embedder.mlp[0],
        model.t_embedder.mlp[2],
        model.y_embedder.y_proj.fc1,
        model.y_embedder.y_proj.fc2,
        model.pooled_y_emb_process.fc1,
        model.pooled_y_emb_process.fc2,
    ):
        nn.init.normal_(mlp.weight, std=INIT_STD)

    mixer_std = INIT_STD / math.sqrt(2 * max(cfg.depth, 1))
    for i, block in enumerate(model.blocks):
        out_std = INIT_STD / math.sqrt(2 * (i + 1)) if cfg.depth_init else mixer_std
        _init_block(block, out_std)
    for block in getattr(model, "patch_mixer", []):
        _init_block(block, mixer_std)

    caption = model.y_emb_preprocess
    for weight in (caption.attn.qkv.weight, caption.mlp.w1.weight, caption.mlp.w2.weight):
        nn.init.trunc_normal_(weight, std=INIT_STD)
    nn.init.zeros_(caption.attn.proj.weight)
    nn.init.zeros_(caption.mlp.w3.weight)

    final = model.final_layer
    nn.init.zeros_(final.adaLN_modulation[1].weight)
    nn.init.zeros_(final.linear.weight)
    nn.init.zeros_(final.linear.bias)
    for module in model.modules():  # biases of zero-init layers, if any
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def _init_block(block: DiTBlock, out_std: float) -> None:
    nn.init.trunc_normal_(block.attn.qkv.weight, std=INIT_STD)
    nn.init.trunc_normal_(block.cross_attn.q_linear.weight, std=INIT_STD)
    nn.init.trunc_normal_(block.cross_attn.kv_linear.weight, std=INIT_STD)
    nn.init.trunc_normal_(block.attn.proj.weight, std=out_std)
    nn.init.trunc_normal_(block.cross_attn.proj.weight, std=out_std)
    _init_ffn(block.mlp, out_std)
    nn.init.zeros_(block.adaLN_modulation[1].weight)


def _init_ffn(ffn: SwiGLU | ExpertChoiceMoE, out_std: float) -> None:
    if isinstance(ffn, ExpertChoiceMoE):
        nn.init.trunc_normal_(ffn.gate.weight, std=INIT_STD)
        nn.init.trunc_normal_(ffn.w1, std=INIT_STD)
        nn.init.trunc_normal_(ffn.w2, std=out_std)
    else:
        nn.init.trunc_normal_(ffn.w1.weight, std=INIT_STD)
        nn.init.trunc_normal_(ffn.w2.weight, std=out_std)
        nn.init.trunc_normal_(ffn.w3.weight, std=out_std)
