"""The forward passes behind each loss, and their backward.

Each function runs its passes, calls backward on `scale * sum(per-example loss)` and returns the
detached per-example losses. Backward runs inside the same `original_from` context as forward,
so gradient checkpointing recomputes exactly what the forward computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from peel import losses
from peel.models import hidden_states, logits


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    random_targets: torch.Tensor | None = None  # uniformly random token ids for the random_ce forget loss


def _backward(per_example: torch.Tensor, scale: float) -> None:
    # A zero coefficient (the first step of a from_zero ramp) contributes no gradient: skip the pass.
    if scale != 0:
        (scale * per_example.sum()).backward()


def forget_backward(weights, batch: Batch, layer: int, loss_name: str, scale: float) -> torch.Tensor:
    """The probe: current layers up to `layer`, original layers after, pushed to maximum entropy."""
    with weights.original_from(layer + 1):
        probe_logits = logits(weights.model, batch.input_ids, batch.attention_mask)
        per_example = losses.FORGET_LOSSES[loss_name](probe_logits, batch.attention_mask, batch.random_targets)
        # The loss keeps what its backward needs; the [batch, tokens, vocab] logits themselves
        # are not, and releasing them lowers the step's peak by one such tensor.
        del probe_logits
        _backward(per_example, scale)
    return per_example.detach()


def l2_retain_backward(weights, batch: Batch, layers: list[int], scale: float) -> torch.Tensor:
    """Hidden-state distance to the original at `layers`; both passes stop at the deepest of them."""
    with torch.no_grad(), weights.original_from(0):
        reference = hidden_states(weights.anatomy, batch.input_ids, batch.attention_mask, layers)
    current = hidden_states(weights.anatomy, batch.input_ids, batch.attention_mask, layers)
    per_example = losses.l2_distance(current, reference, batch.attention_mask)
    _backward(per_example, scale)
    return per_example.detach()


def kl_retain_backward(weights, batch: Batch, layers: list[int], scale: float) -> torch.Tensor:
    with torch.no_grad(), weights.original_from(0):
        reference = logits(weights.model, batch.input_ids, batch.attention_mask)
    current = logits(weights.model, batch.input_ids, batch.attention_mask)
    per_example = losses.kl_divergence(reference, current, batch.attention_mask)
    _backward(per_example, scale)
    return per_example.detach()


def nll_retain_backward(weights, batch: Batch, layers: list[int], scale: float) -> torch.Tensor:
    current = logits(weights.model, batch.input_ids, batch.attention_mask)
    per_example = losses.next_token_nll(current, batch.input_ids, batch.attention_mask)
    _backward(per_example, scale)
    return per_example.detach()


# `unlearn.retain_loss` -> the passes that compute it.
RETAIN_OBJECTIVES = {"l2": l2_retain_backward, "kl": kl_retain_backward, "nll": nll_retain_backward}
