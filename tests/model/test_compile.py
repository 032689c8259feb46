"""The CUDA-path switches, pinned on CPU: a compiled training step makes one static graph per phase
(no graph break, no recompile), also under activation checkpointing, and a pinned attention backend
holds in the checkpointed recompute.

The graph counts are Dynamo's (``torch._dynamo.utils.counters``): they are decided while tracing,
before a backend compiles anything, so the default run counts them with the ``eager`` backend (the
same counts as inductor, measured: 1, 1, 1, 2, 2, 2 under both) and checks the compiled numerics
with ``aot_eager`` (AOTAutograd's forward/backward split of the checkpointed blocks, as under
inductor, without inductor's minutes of C++ codegen on 2 cores); ``-m slow`` repeats the count with
inductor itself.

Before these fixes (measured on this CPU with the same tiny model and steps): without checkpointing
2, 3, 3 graphs after the 3 steps of phase 1 (a ``torch.Generator`` graph break, then a recompile on
the position-cache dict guard at step 2), with checkpointing 13 graphs (the MoE's stored router
statistics: "HOP: Unsafe side effect", so every block compiled on its own).
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters

from microdit.diffusion import EDMDenoiser, edm_loss
from microdit.model import MicroDiT
from microdit.model.sizes import model_config
from microdit.train.parallel import compile_model

# 2 mixer blocks (one MoE) + 2 backbone blocks (one MoE) at width 64: every block kind, small graphs
TINY = dict(caption_dim=8, latent_channels=3, depth=2, mixer_depth=2, width=64, mixer_width=64, head_dim=32,
            multiple_of=32)
PHASES = [(32, 0.5), (16, 0.0)]  # (latent size, mask ratio): 256 -> 128 tokens, then 64 unmasked
STEPS = 3


class GraphRecorder:
    """A backend that notes each graph it gets (and whether any input has a symbolic shape), then
    hands it to a real backend."""

    def __init__(self, backend: str):
        self.backend = lookup_backend(backend)
        self.symbolic: list[bool] = []

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        self.symbolic.append(any(isinstance(x, torch.SymInt) or (isinstance(x, torch.Tensor) and any(
            isinstance(s, torch.SymInt) for s in x.shape)) for x in example_inputs))
        return self.backend(graph, example_inputs)


def _train(checkpointing: bool, backend: str) -> tuple[list[int], int, GraphRecorder]:
    """3 steps in each of 2 phases through the loop's ``compile_model``; graphs after each step."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = MicroDiT(model_config("MicroDiT_Nano_4", **TINY))
    model.activation_checkpointing = checkpointing
    recorder = GraphRecorder(backend)
    compiled = compile_model(model, backend=recorder)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    graphs = []
    for latent, ratio in PHASES:
        x0, y = torch.randn(2, 3, latent, latent), torch.randn(2, 8, 8)
        for step in range(STEPS):
            generator = torch.Generator().manual_seed(step)  # the loop's per-step generator
            out = edm_loss(EDMDenoiser(compiled), x0, y, p_mean=-0.6, p_std=1.2, mask_ratio=ratio,
                           generator=generator)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            assert out.output.router_stats  # the MoE statistics still come back from a compiled forward
            graphs.append(counters["stats"]["unique_graphs"])
    return graphs, sum(counters["graph_break"].values()), recorder


@pytest.mark.parametrize("checkpointing", [False, True])
def test_one_static_graph_per_phase_without_breaks_or_recompiles(checkpointing):
    graphs, breaks, recorder = _train(checkpointing, "eager")
    assert breaks == 0
    assert graphs == [1, 1, 1, 2, 2, 2]  # a graph at each phase start, none in between
    assert recorder.symbolic == [False, False]  # the second phase's shapes are static too


@pytest.mark.slow
def test_inductor_compiles_one_graph_per_phase_under_checkpointing():
    graphs, breaks, recorder = _train(True, "inductor")
    assert (graphs, breaks, recorder.symbolic) == ([1, 1, 1, 2, 2, 2], 0, [False, False])


def test_compiled_checkpointed_step_equals_eager():
    """The compiled step, blocks checkpointed, computes the eager function (same loss, gradients and
    router stats)."""
    torch.manual_seed(0)
    model = MicroDiT(model_config("MicroDiT_Nano_4", **TINY))
    model.activation_checkpointing = True
    with torch.no_grad():  # the paper's init outputs zeros: random weights exercise every path
        for param in model.parameters():
            param.normal_(0.0, 0.05)
    torch._dynamo.reset()
    compiled = compile_model(model, backend="aot_eager")
    x0, y = torch.randn(2, 3, 32, 32), torch.randn(2, 8, 8)
    results = []
    for net in (model, compiled):
        model.zero_grad(set_to_none=True)
        out = edm_loss(EDMDenoiser(net), x0, y, p_mean=-0.6, p_std=1.2, mask_ratio=0.5,
                       generator=torch.Generator().manual_seed(7))
        out.loss.backward()
        results.append((out.loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]),
                        out.output.keep_idx, out.output.router_stats))
    (loss, grads, keep, stats), (c_loss, c_grads, c_keep, c_stats) = results
    assert torch.equal(keep, c_keep)  # the same mask, drawn outside the compiled graph
    torch.testing.assert_close(c_loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_grads, grads, rtol=1e-4, atol=1e-6)
    assert c_stats.keys() == stats.keys()
    for key in stats:
        torch.testing.assert_close(c_stats[key], stats[key])


def test_pinned_attention_backend_holds_in_the_checkpointed_recompute():
    """``attention_kernel`` on the model pins SDPA's backend in the forward and in the recompute that
    activation checkpointing runs inside ``backward()``, even when backward is called outside any
    context (before: ``CheckpointError ... different metadata``, the recompute ran the default backend)."""
    torch.manual_seed(0)
    model = MicroDiT(model_config("MicroDiT_Nano_4", **TINY))
    model.activation_checkpointing = True
    model.attention_kernel = "math"
    flash_enabled: list[bool] = []  # SDPA's flash switch as each self-attention runs
    for block in [*model.patch_mixer, *model.blocks]:
        block.attn.register_forward_pre_hook(lambda *_: flash_enabled.append(torch.backends.cuda.flash_sdp_enabled()))
    out = edm_loss(EDMDenoiser(model), torch.randn(2, 3, 32, 32), torch.randn(2, 8, 8), p_mean=-0.6, p_std=1.2,
                   mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    forward_calls = len(flash_enabled)
    out.loss.backward()  # outside any sdpa_kernel context
    assert forward_calls == 4 and len(flash_enabled) == 8  # each block ran again in backward
    assert flash_enabled == [False] * 8  # math only, forward and recompute
    assert torch.backends.cuda.flash_sdp_enabled()  # and the pin is gone after the forward
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
