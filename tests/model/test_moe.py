"""Expert-choice MoE: k = int(capacity*T/E) tokens per expert and sample, equality with a slow
per-sample, per-expert loop, router statistics, and where MoE layers sit in the network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_testing import inputs, nano, randomised

from microdit.model.moe import ExpertChoiceMoE
from microdit.model.sizes import model_config

CASES = [  # (tokens T, experts E, capacity, expected k)
    (64, 4, 2.0, 32),
    (50, 8, 1.5, 9),  # 9.375 -> 9: k*E/T = 1.44, not exact
    (64, 8, 2.0, 16),  # the paper's E = 8, capacity 2
    (16, 4, 0.5, 2),
]


def _moe(width: int, hidden: int, experts: int, capacity: float, seed: int = 0) -> ExpertChoiceMoE:
    torch.manual_seed(seed)
    moe = ExpertChoiceMoE(width, hidden, experts, capacity)
    with torch.no_grad():
        moe.gate.weight.normal_(0.0, 0.5)  # a router with clear preferences (no near-ties)
        moe.w1.normal_(0.0, 0.1)
        moe.w2.normal_(0.0, 0.1)
    return moe


def _loop_reference(moe: ExpertChoiceMoE, x: torch.Tensor) -> tuple[torch.Tensor, list[list[list[int]]]]:
    """Slow, obvious expert choice: for each sample, for each expert, its top-k tokens."""
    n, t, d = x.shape
    k = int(moe.capacity * t / moe.num_experts)
    out = torch.zeros_like(x)
    chosen = []
    for i in range(n):
        probs = torch.softmax(x[i] @ moe.gate.weight.T, dim=-1)  # (T, E): softmax over experts
        chosen.append([])
        for e in range(moe.num_experts):
            order = torch.argsort(probs[:, e], descending=True, stable=True)[:k]  # its k best tokens
            chosen[i].append(sorted(order.tolist()))
            hidden = F.gelu(x[i, order] @ moe.w1[e])  # (k, h), exact GELU
            out[i].index_add_(0, order, probs[order, e, None] * (hidden @ moe.w2[e]))
    return out, chosen


@pytest.mark.parametrize("tokens,experts,capacity,k", CASES)
def test_moe_equals_the_loop_reference(tokens, experts, capacity, k):
    moe = _moe(32, 48, experts, capacity)
    x = torch.randn(3, tokens, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, _ = moe(x)
        expected, _ = _loop_reference(moe, x)
    assert moe.tokens_per_expert(tokens) == k
    assert expected.abs().max() > 0.05
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("tokens,experts,capacity,k", CASES)
def test_each_expert_processes_exactly_k_tokens_per_sample(tokens, experts, capacity, k, monkeypatch):
    moe = _moe(32, 48, experts, capacity)
    seen = []
    original = ExpertChoiceMoE._router_stats

    def spy(self, probs, token_idx, num_tokens):  # the routing decision of the forward
        seen.append(token_idx.clone())
        return original(self, probs, token_idx, num_tokens)

    monkeypatch.setattr(ExpertChoiceMoE, "_router_stats", spy)
    x = torch.randn(3, tokens, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        moe(x)
        _, chosen = _loop_reference(moe, x)
    (token_idx,) = seen
    assert token_idx.shape == (3, experts, k)
    for i in range(3):
        for e in range(experts):
            picked = token_idx[i, e]
            assert picked.unique().numel() == k  # k distinct tokens of this sample
            assert sorted(picked.tolist()) == chosen[i][e]  # and the top-k by router probability


@pytest.mark.parametrize("tokens,experts,capacity,k", CASES)
def test_router_stats(tokens, experts, capacity, k):
    moe = _moe(32, 48, experts, capacity)
    x = torch.randn(3, tokens, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, stats = moe(x)  # returned with the output, never stored on the module
        _, chosen = _loop_reference(moe, x)
    assert not hasattr(moe, "last_stats")
    unrouted = stats["router/unrouted_frac"].item()
    assert 0.0 <= unrouted <= 1.0
    picked_by_any = sum(len(set().union(*map(set, chosen[i]))) for i in range(3))
    assert unrouted == pytest.approx(1 - picked_by_any / (3 * tokens), abs=1e-6)
    assert stats["router/experts_per_token"].item() == pytest.approx(k * experts / tokens, abs=1e-6)
    if k * experts == capacity * tokens:  # exact: experts per token = capacity
        assert stats["router/experts_per_token"].item() == pytest.approx(capacity, abs=1e-6)
    loads = torch.stack([stats[f"router/load_e{e}"] for e in range(experts)])
    assert loads.sum().item() == pytest.approx(1.0, abs=1e-5) and (loads > 0).all()


def test_capacity_of_all_experts_takes_every_token():
    moe = _moe(16, 32, 4, 4.0)  # k = T: every expert processes every token
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        got, stats = moe(x)
        expected, _ = _loop_reference(moe, x)
    assert stats["router/unrouted_frac"].item() == 0.0
    assert stats["router/experts_per_token"].item() == pytest.approx(4.0)
    assert (got - expected).abs().max().item() < 1e-5


def test_router_and_experts_receive_gradients():
    moe = _moe(16, 32, 4, 2.0)
    moe(torch.randn(2, 12, 16))[0].square().sum().backward()
    for param in (moe.gate.weight, moe.w1, moe.w2):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_moe_positions_in_the_network():
    model = randomised(nano(latent_channels=4))  # depth 4, mixer 2, every 2
    assert [b.is_moe for b in model.blocks] == [False, True, False, False]  # the last block stays dense
    assert [b.is_moe for b in model.patch_mixer] == [False, True]  # no last-block exception in the mixer
    assert all(not b.is_moe for b in randomised(nano(dense_twin=True)).blocks)
    with torch.device("meta"):
        from microdit.model import MicroDiT

        xl = MicroDiT(model_config("MicroDiT_XL_2"))
    assert [i for i, b in enumerate(xl.blocks) if b.is_moe] == list(range(1, 27, 2))  # 13 of 28
    assert [i for i, b in enumerate(xl.patch_mixer) if b.is_moe] == [1, 3, 5]


def test_router_stats_in_a_model_forward():
    cfg = nano(latent_channels=4)
    model = randomised(cfg)
    x, c_noise, y = inputs(cfg, n=2, latent=32)
    with torch.no_grad():
        stats = model(x, c_noise, y, mask_ratio=0.75, generator=torch.Generator().manual_seed(0)).router_stats
    # mixer MoE: T = 256, k = 128; backbone MoE: T = 64, k = 32; E = 4 -> 2 experts per token in both
    assert stats["router/experts_per_token"].item() == pytest.approx(2.0)
    assert 0.0 <= stats["router/unrouted_frac"].item() <= 1.0
