"""Loss functions: pure tensor code, one table from config name to function.

Every loss returns one value per example (shape [batch]): tokens are averaged within an example,
padding never counts. The engine sums examples and divides by the global batch size, so a step's
loss does not depend on how the batch is split into micro-batches or processes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real (mask = 1) tokens of each example: [batch, tokens] -> [batch]."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


# Forget losses: logits [batch, tokens, vocab] of the probe, pushed toward maximum entropy.


def random_ce(logits: torch.Tensor, mask: torch.Tensor, random_targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to uniformly random token targets, divided by log(vocab)."""
    vocab = logits.shape[-1]
    per_token = F.cross_entropy(
        logits.float().flatten(0, 1), random_targets.flatten(), reduction="none"
    ).view(random_targets.shape)
    return token_mean(per_token, mask) / math.log(vocab)


def max_entropy_kl(logits: torch.Tensor, mask: torch.Tensor, random_targets: torch.Tensor | None = None) -> torch.Tensor:
    """KL(uniform || p) = -log V - mean_v log p_v, divided by log(vocab); zero at maximum entropy."""
    vocab = logits.shape[-1]
    log_probs = F.log_softmax(logits.float(), dim=-1)
    per_token = -math.log(vocab) - log_probs.mean(dim=-1)
    return token_mean(per_token, mask) / math.log(vocab)


FORGET_LOSSES = {"random_ce": random_ce, "max_entropy_kl": max_entropy_kl}


# Retain losses: keep the model where the original was.


def l2_distance(current: dict[int, torch.Tensor], reference: dict[int, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """L2 norm of (current - original) hidden state per token, averaged over tokens, then over layers."""
    per_layer = [token_mean((current[layer].float() - reference[layer].float()).norm(dim=-1), mask) for layer in current]
    return torch.stack(per_layer).mean(dim=0)


def kl_divergence(reference_logits: torch.Tensor, current_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(original || current) on next-token distributions, summed over the vocabulary."""
    reference_log_probs = F.log_softmax(reference_logits.float(), dim=-1)
    current_log_probs = F.log_softmax(current_logits.float(), dim=-1)
    per_token = (reference_log_probs.exp() * (reference_log_probs - current_log_probs)).sum(dim=-1)
    return token_mean(per_token, mask)


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Language-model loss: position t predicts token t+1; a target counts when it is a real token."""
    per_token = F.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), input_ids[:, 1:].flatten(), reduction="none"
    ).view(input_ids.shape[0], -1)
    return token_mean(per_token, mask[:, 1:])
