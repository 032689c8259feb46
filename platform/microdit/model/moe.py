"""Expert-choice mixture-of-experts feed-forward (Zhou et al. 2022, "Mixture-of-Experts with
Expert Choice Routing"), as MicroDiT uses it (SPEC §1).

Each expert picks its top-k tokens of each sample by router probability, k = int(capacity*T/E),
so every expert processes exactly k tokens: perfect load balance without an auxiliary loss. A
token picked by several experts receives the sum of their probability-weighted outputs; a
token picked by none gets only the block's residual. Experts are stored as stacked weights
and run as one batched matmul over (sample, expert): no Python loop over tokens or samples.

The forward *returns* its routing statistics with its output instead of storing them on the
module: a stored attribute is a side effect, which ``torch.compile`` refuses inside an activation
checkpoint (the whole forward then fell back to eager, block by block).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ExpertChoiceMoE(nn.Module):
    """E experts, each Linear d->h -> GELU (exact) -> Linear h->d (no biases), routed by expert choice."""

    def __init__(self, width: int, hidden: int, num_experts: int, capacity: float):
        super().__init__()
        self.num_experts = num_experts
        self.capacity = capacity
        self.gate = nn.Linear(width, num_experts, bias=False)
        # Stacked expert weights in (E, in, out) layout, as in the official checkpoints.
        self.w1 = nn.Parameter(torch.empty(num_experts, width, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, width))
        for weight in (self.w1, self.w2):  # Xavier per expert; MicroDiT re-initialises these anyway
            bound = math.sqrt(6.0 / (weight.shape[1] + weight.shape[2]))
            nn.init.uniform_(weight, -bound, bound)

    def tokens_per_expert(self, num_tokens: int) -> int:
        """k = int(capacity * T / E), at least 1 and at most T."""
        return max(1, min(num_tokens, int(self.capacity * num_tokens / self.num_experts)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x (N, T, d) -> (out (N, T, d), router statistics of this call: see ``_router_stats``)."""
        n, t, d = x.shape
        k = self.tokens_per_expert(t)
        probs = F.softmax(self.gate(x).float(), dim=-1)  # (N, T, E) softmax over experts per token
        gates, token_idx = probs.transpose(1, 2).topk(k, dim=-1)  # (N, E, k) each expert's top-k tokens
        picked = torch.gather(
            x.unsqueeze(1).expand(n, self.num_experts, t, d),
            2,
            token_idx.unsqueeze(-1).expand(n, self.num_experts, k, d),
        )  # (N, E, k, d)
        hidden = torch.einsum("nekd,edh->nekh", picked, self.w1)  # (N, E, k, h)
        out = torch.einsum("nekh,ehd->nekd", F.gelu(hidden), self.w2)  # (N, E, k, d)
        out = out * gates.unsqueeze(-1).to(out.dtype)  # scale by routing probability
        combined = x.new_zeros(n, t, d, dtype=out.dtype).scatter_add_(
            1, token_idx.reshape(n, -1, 1).expand(n, self.num_experts * k, d), out.reshape(n, -1, d)
        )  # (N, T, d): a token picked by several experts gets the sum
        stats = self._router_stats(probs.detach(), token_idx.detach(), t)
        return combined, stats  # in the experts' matmul dtype (bf16 under autocast), as the official einsum

    def _router_stats(
        self, probs: torch.Tensor, token_idx: torch.Tensor, num_tokens: int
    ) -> dict[str, torch.Tensor]:
        """Logged by the training loop: unrouted fraction, experts per token, per-expert load.

        Per-expert load is the share of router probability mass each expert receives over all
        tokens (1/E when balanced); with expert choice every expert processes exactly k tokens,
        so the token count itself is constant and uninformative.
        """
        n = probs.shape[0]
        counts = torch.zeros(n, num_tokens, device=probs.device)
        counts.scatter_add_(
            1, token_idx.reshape(n, -1), torch.ones_like(token_idx.reshape(n, -1), dtype=counts.dtype)
        )
        stats = {
            "router/unrouted_frac": (counts == 0).float().mean(),
            "router/experts_per_token": counts.mean(),
        }
        load = probs.mean(dim=(0, 1))  # (E,)
        for e in range(self.num_experts):
            stats[f"router/load_e{e}"] = load[e]
        return stats
