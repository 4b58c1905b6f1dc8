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


# Forget losses: logits [batch, tokens, vocab] of the probe, pushed toward maximum entropy or away
# from the original model. `mask` says which tokens count (padding, and tokens outside a keyword
# mask, do not).


def random_ce(logits: torch.Tensor, mask: torch.Tensor, random_targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to uniformly random token targets, divided by log(vocab)."""
    vocab = logits.shape[-1]
    per_token = F.cross_entropy(
        logits.float().flatten(0, 1), random_targets.flatten(), reduction="none"
    ).view(random_targets.shape)
    return token_mean(per_token, mask) / math.log(vocab)


def max_entropy_kl(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(uniform || p) = -log V - mean_v log p_v, divided by log(vocab); zero at maximum entropy."""
    vocab = logits.shape[-1]
    log_probs = F.log_softmax(logits.float(), dim=-1)
    per_token = -math.log(vocab) - log_probs.mean(dim=-1)
    return token_mean(per_token, mask) / math.log(vocab)


def top_k_entropy(logits: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """KL(uniform over K || softmax of the K largest logits), divided by log K: maximum entropy
    among the candidates the model ranks highest, leaving the long tail alone."""
    top = logits.float().topk(k, dim=-1).values
    per_token = -math.log(k) - F.log_softmax(top, dim=-1).mean(dim=-1)
    return token_mean(per_token, mask) / math.log(k)


def next_token_log_probs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(x_{t+1} | x_<=t) of the text's own next tokens: [batch, tokens - 1]."""
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def npo(log_probs: torch.Tensor, reference_log_probs: torch.Tensor, mask: torch.Tensor, beta: float, per_token: bool) -> torch.Tensor:
    """Negative preference optimisation against the original model on the text's own tokens.

    With r_t = log p(x_t) - log p_original(x_t): per token, -log sigmoid(-beta r_t) averaged over
    the tokens; per sequence, -log sigmoid(-beta mean_t r_t). log 2 where the model is the original;
    it falls toward 0 as the model makes the text less likely than the original did.
    """
    ratio = log_probs - reference_log_probs
    if per_token:
        return token_mean(-F.logsigmoid(-beta * ratio), mask)
    return -F.logsigmoid(-beta * token_mean(ratio, mask))


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
