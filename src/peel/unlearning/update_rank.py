"""How many directions the unlearning update uses: the rank of W - W0 over the changed matrices.

Stable rank ||D||_F^2 / ||D||_2^2 counts the directions that carry the update's energy (1 for a
rank-one update, at most the rank); effective rank exp(H(s / sum s)) (Roy and Vetterli, 2007) the
spread of all its singular values. The research line reports both, averaged over matrices:
LoRA updates sit near 1, full fine-tuning a little higher, L2-SP much higher.
"""

from __future__ import annotations

from typing import Iterable

import torch


def stable_and_effective_rank(delta: torch.Tensor) -> tuple[float, float] | None:
    """Both ranks of one update matrix; None when it did not change at all."""
    singular = torch.linalg.svdvals(delta.float())
    if singular[0] <= 0:
        return None
    stable = (singular.pow(2).sum() / singular[0].pow(2)).item()
    shares = singular / singular.sum()
    shares = shares[shares > 0]
    effective = torch.exp(-(shares * shares.log()).sum()).item()
    return stable, effective


def update_rank(deltas: Iterable[torch.Tensor]) -> dict | None:
    """Mean stable and effective rank over the changed matrices (what run.json keeps)."""
    ranks = [rank for rank in map(stable_and_effective_rank, deltas) if rank is not None]
    if not ranks:
        return None
    return {
        "mean_stable_rank": sum(stable for stable, _ in ranks) / len(ranks),
        "mean_effective_rank": sum(effective for _, effective in ranks) / len(ranks),
        "matrices": len(ranks),
    }
