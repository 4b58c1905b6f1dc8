"""The forward passes behind each loss, and their backward.

Each function runs its passes, calls backward on `scale * sum(per-example loss)` and returns the
detached per-example losses. Backward runs inside the same `original_from` context as forward,
so gradient checkpointing recomputes exactly what the forward computed. Losses on logits read
them through `chunked.Outputs`: whole, or made a chunk of positions at a time from the final
hidden states when the micro-batch has more than `chunk_tokens` tokens (chunked.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from peel.unlearning import losses
from peel.errors import PeelError
from peel.unlearning.chunked import Outputs, chunk_width, token_means, token_values
from peel.unlearning.collapse import projecting_gradient
from peel.anatomy import adding_to_output, final_hidden_states, hidden_states, logits


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    random_targets: torch.Tensor | None = None  # uniformly random token ids for the random_ce forget loss
    loss_mask: torch.Tensor | None = None  # tokens the forget loss counts (keyword masks); None = every real token
    right_padded: bool = False  # every example's padding comes after its tokens (batches.Corpus makes them so)

    @property
    def counted(self) -> torch.Tensor:
        """1 where a token counts in the loss: a real token, inside the keyword mask when there is one."""
        return self.attention_mask if self.loss_mask is None else self.attention_mask * self.loss_mask

    @property
    def model_mask(self) -> torch.Tensor | None:
        """The attention mask the model's forward is given: none for a right-padded batch.

        Under causal attention a real token attends only to the tokens before it, never to the
        padding after the example, so without a mask every real position's output is the same;
        padded positions differ, and no loss counts them. Without a mask, SDPA takes its causal
        path, which skips the masked half of the scores and keeps no per-layer float copy of a
        [batch, 1, tokens, tokens] mask for backward (384 MB per pass at 2 x 2048 tokens, 12 layers).
        """
        return None if self.right_padded else self.attention_mask


def model_outputs(weights, batch: Batch, chunk_tokens: int) -> Outputs:
    """The model's outputs on `batch` as the token losses read them: the final hidden states, to be
    made into logits chunk by chunk, when chunks save memory and the model's head is known
    exactly; else the model's own whole logits."""
    head = weights.anatomy.output_head
    width = None if head is None else chunk_width(*batch.input_ids.shape, chunk_tokens)
    if width is None:
        return Outputs(logits(weights.model, batch.input_ids, batch.model_mask))
    return Outputs(final_hidden_states(weights.anatomy, batch.input_ids, batch.model_mask), head, width)


def _backward(per_example: torch.Tensor, scale: float) -> None:
    # A zero coefficient (the first step of a from_zero ramp) contributes no gradient: skip the pass.
    if scale != 0:
        (scale * per_example.sum()).backward()


# Forget losses on the probe: (the probe's outputs, batch, the original model's next-token
# log-probabilities or None, the unlearn settings) -> one loss per example.


def random_ce_of_probe(probe: Outputs, batch: Batch, reference, unlearn) -> torch.Tensor:
    return token_means(losses.random_ce_tokens, [probe], [batch.random_targets], batch.counted)


def max_entropy_kl_of_probe(probe: Outputs, batch: Batch, reference, unlearn) -> torch.Tensor:
    return token_means(losses.max_entropy_kl_tokens, [probe], [], batch.counted)


def top_k_entropy_of_probe(probe: Outputs, batch: Batch, reference, unlearn) -> torch.Tensor:
    return token_means(lambda logits: losses.top_k_entropy_tokens(logits, unlearn.top_k), [probe], [], batch.counted)


def npo_of_probe(probe: Outputs, batch: Batch, reference, unlearn) -> torch.Tensor:
    # Position t predicts token t+1, whose probability falls: the mask of the predicted token counts.
    mask, next_tokens, beta = batch.counted[:, 1:], batch.input_ids[:, 1:], unlearn.npo_beta
    if unlearn.npo_per_token:
        def per_token(logits, tokens, reference_log_probs):
            return losses.npo_tokens(losses.token_log_probs(logits, tokens), reference_log_probs, beta)

        return token_means(per_token, [probe.shifted()], [next_tokens, reference], mask)

    # Per sequence: the log-ratios are averaged over the tokens first, the nonlinearity comes after.
    def log_ratio(logits, tokens, reference_log_probs):
        return losses.token_log_probs(logits, tokens) - reference_log_probs

    return losses.npo_of_mean_ratio(token_means(log_ratio, [probe.shifted()], [next_tokens, reference], mask), beta)


def top_k_within_vocabulary(unlearn, vocab_size: int) -> None:
    if unlearn.top_k > vocab_size:
        raise PeelError(f"unlearn.top_k={unlearn.top_k} is larger than the vocabulary ({vocab_size}); accepted: 2..{vocab_size}")


def no_check(unlearn, vocab_size: int) -> None:
    pass


@dataclass(frozen=True)
class ForgetObjective:
    loss: Callable  # (the probe's outputs, batch, the original's log-probabilities or None, unlearn) -> per example
    needs_reference: bool = False  # it compares with the original model's log-probabilities
    random_targets: bool = False  # its batches carry uniformly random token targets (batches.RandomTargets)
    check: Callable[[object, int], None] = no_check  # (unlearn settings, vocabulary size): before weights load


# `unlearn.forget_loss` -> what the loss computes and what it needs.
FORGET_OBJECTIVES = {
    "random_ce": ForgetObjective(random_ce_of_probe, random_targets=True),
    "max_entropy_kl": ForgetObjective(max_entropy_kl_of_probe),
    "top_k_entropy": ForgetObjective(top_k_entropy_of_probe, check=top_k_within_vocabulary),
    "npo": ForgetObjective(npo_of_probe, needs_reference=True),
}


def forget_backward(weights, batch: Batch, layer: int, unlearn, scale: float, chunk_tokens: int = 0,
                    perturbation: torch.Tensor | None = None, collapse_basis: torch.Tensor | None = None) -> torch.Tensor:
    """The probe: current layers up to `layer`, original layers after, pushed by the forget loss.

    `perturbation` (the latent adversary's) is added to the target layer's output in the probe
    only, never in the original model's reference pass. `collapse_basis` (collapse.py): the
    gradient flowing back into the target layer's output is projected off its columns.

    A loss that compares with the original model (NPO) gets the original's log-probabilities of
    the text's own next tokens from a no-grad pass with every layer original: the same weights,
    adapters off (LoRA) or original values exchanged in (full fine-tuning), never a copy.
    """
    objective = FORGET_OBJECTIVES[unlearn.forget_loss]
    reference = None
    if objective.needs_reference:
        with torch.no_grad(), weights.original_from(0):
            original = model_outputs(weights, batch, chunk_tokens).shifted()
            reference = token_values(losses.token_log_probs, [original], [batch.input_ids[:, 1:]])
    target = weights.anatomy.layers[layer]
    with weights.original_from(layer + 1), adding_to_output(target, perturbation), projecting_gradient(target, collapse_basis):
        probe = model_outputs(weights, batch, chunk_tokens)
        per_example = objective.loss(probe, batch, reference, unlearn)
        # The loss keeps what its backward needs; whole [batch, tokens, vocab] logits themselves
        # are not, and releasing them lowers the step's peak by one such tensor.
        del probe
        _backward(per_example, scale)
    return per_example.detach()


def l2_retain_backward(weights, batch: Batch, layers: list[int], scale: float, chunk_tokens: int = 0) -> torch.Tensor:
    """Hidden-state distance to the original at `layers`; both passes stop at the deepest of them."""
    with torch.no_grad(), weights.original_from(0):
        reference = hidden_states(weights.anatomy, batch.input_ids, batch.model_mask, layers)
    current = hidden_states(weights.anatomy, batch.input_ids, batch.model_mask, layers)
    per_example = losses.l2_distance(current, reference, batch.attention_mask)
    _backward(per_example, scale)
    return per_example.detach()


def kl_retain_backward(weights, batch: Batch, layers: list[int], scale: float, chunk_tokens: int = 0) -> torch.Tensor:
    """KL(original || current) of the next-token distributions (chunked: the original's logits are
    made from its final hidden states chunk by chunk too, never kept whole)."""
    with torch.no_grad(), weights.original_from(0):
        reference = model_outputs(weights, batch, chunk_tokens)
    current = model_outputs(weights, batch, chunk_tokens)
    per_example = token_means(lambda current_logits, reference_logits: losses.kl_tokens(reference_logits, current_logits),
                              [current, reference], [], batch.attention_mask)
    del current, reference
    _backward(per_example, scale)
    return per_example.detach()


def nll_retain_backward(weights, batch: Batch, layers: list[int], scale: float, chunk_tokens: int = 0) -> torch.Tensor:
    current = model_outputs(weights, batch, chunk_tokens).shifted()
    per_example = token_means(losses.nll_tokens, [current], [batch.input_ids[:, 1:]], batch.attention_mask[:, 1:])
    del current
    _backward(per_example, scale)
    return per_example.detach()


# `unlearn.retain_loss` -> the passes that compute it.
RETAIN_OBJECTIVES = {"l2": l2_retain_backward, "kl": kl_retain_backward, "nll": nll_retain_backward}
