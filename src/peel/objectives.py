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
    loss_mask: torch.Tensor | None = None  # tokens the forget loss counts (keyword masks); None = every real token

    @property
    def counted(self) -> torch.Tensor:
        """1 where a token counts in the loss: a real token, inside the keyword mask when there is one."""
        return self.attention_mask if self.loss_mask is None else self.attention_mask * self.loss_mask


def _backward(per_example: torch.Tensor, scale: float) -> None:
    # A zero coefficient (the first step of a from_zero ramp) contributes no gradient: skip the pass.
    if scale != 0:
        (scale * per_example.sum()).backward()


# Forget losses on the probe's logits: (probe logits, batch, the original model's next-token
# log-probabilities or None, the unlearn settings) -> one loss per example.


def random_ce_of_probe(probe_logits, batch: Batch, reference, unlearn) -> torch.Tensor:
    return losses.random_ce(probe_logits, batch.counted, batch.random_targets)


def max_entropy_kl_of_probe(probe_logits, batch: Batch, reference, unlearn) -> torch.Tensor:
    return losses.max_entropy_kl(probe_logits, batch.counted)


def top_k_entropy_of_probe(probe_logits, batch: Batch, reference, unlearn) -> torch.Tensor:
    return losses.top_k_entropy(probe_logits, batch.counted, unlearn.top_k)


def npo_of_probe(probe_logits, batch: Batch, reference, unlearn) -> torch.Tensor:
    # Token t+1 is the one whose probability falls: the mask of the predicted token counts.
    log_probs = losses.next_token_log_probs(probe_logits, batch.input_ids)
    return losses.npo(log_probs, reference, batch.counted[:, 1:], unlearn.npo_beta, unlearn.npo_per_token)


# `unlearn.forget_loss` -> (the loss of the probe, whether it compares with the original model).
FORGET_OBJECTIVES = {
    "random_ce": (random_ce_of_probe, False),
    "max_entropy_kl": (max_entropy_kl_of_probe, False),
    "top_k_entropy": (top_k_entropy_of_probe, False),
    "npo": (npo_of_probe, True),
}


def forget_backward(weights, batch: Batch, layer: int, unlearn, scale: float) -> torch.Tensor:
    """The probe: current layers up to `layer`, original layers after, pushed by the forget loss.

    A loss that compares with the original model (NPO) gets the original's log-probabilities of
    the text's own next tokens from a no-grad pass with every layer original: the same weights,
    adapters off (LoRA) or original values exchanged in (full fine-tuning), never a copy.
    """
    loss, needs_reference = FORGET_OBJECTIVES[unlearn.forget_loss]
    reference = None
    if needs_reference:
        with torch.no_grad(), weights.original_from(0):
            reference = losses.next_token_log_probs(logits(weights.model, batch.input_ids, batch.attention_mask), batch.input_ids)
    with weights.original_from(layer + 1):
        probe_logits = logits(weights.model, batch.input_ids, batch.attention_mask)
        per_example = loss(probe_logits, batch, reference, unlearn)
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
