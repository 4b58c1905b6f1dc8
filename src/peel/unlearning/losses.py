"""Loss functions: pure tensor code.

Every loss is a per-example reduction of per-token values: `*_tokens` functions give the value
of each position ([batch, tokens]) from that position's logits alone, and `token_mean` averages
the positions that count (padding never does). The per-example losses below compose the two;
`chunked.py` computes the same sums a chunk of positions at a time, from the final hidden states,
so the [batch, tokens, vocab] logits never exist whole. The engine sums examples and divides by
the global batch size, so a step's loss does not depend on how the batch is split into
micro-batches or processes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the counted (mask = 1) tokens of each example: [batch, tokens] -> [batch]."""
    return (values * mask.to(values.dtype)).sum(dim=1)


def token_count(mask: torch.Tensor) -> torch.Tensor:
    """Counted tokens of each example (at least 1, so an example with none gives 0, not NaN)."""
    return mask.float().sum(dim=1).clamp(min=1)


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real (mask = 1) tokens of each example: [batch, tokens] -> [batch]."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


# Per-token values, [batch, tokens(, vocab)] -> [batch, tokens]. Forget losses push the probe's
# logits toward maximum entropy or away from the original model; retain losses keep the model
# where the original was.


def random_ce_tokens(logits: torch.Tensor, random_targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to uniformly random token targets, divided by log(vocab)."""
    vocab = logits.shape[-1]
    per_token = F.cross_entropy(logits.float().flatten(0, 1), random_targets.flatten(), reduction="none")
    return per_token.view(random_targets.shape) / math.log(vocab)


def max_entropy_kl_tokens(logits: torch.Tensor) -> torch.Tensor:
    """KL(uniform || p) = -log V - mean_v log p_v, divided by log(vocab); zero at maximum entropy."""
    vocab = logits.shape[-1]
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return (-math.log(vocab) - log_probs.mean(dim=-1)) / math.log(vocab)


def top_k_entropy_tokens(logits: torch.Tensor, k: int) -> torch.Tensor:
    """KL(uniform over K || softmax of the K largest logits), divided by log K: maximum entropy
    among the candidates the model ranks highest, leaving the long tail alone."""
    top = logits.float().topk(k, dim=-1).values
    return (-math.log(k) - F.log_softmax(top, dim=-1).mean(dim=-1)) / math.log(k)


def token_log_probs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token_ids) under each position's logits: the text's own next tokens when `token_ids`
    are the input ids shifted by one."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return log_probs.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def npo_tokens(log_probs: torch.Tensor, reference_log_probs: torch.Tensor, beta: float) -> torch.Tensor:
    """-log sigmoid(-beta r_t), r_t = log p(x_t) - log p_original(x_t): NPO of each token."""
    return -F.logsigmoid(-beta * (log_probs - reference_log_probs))


def npo_of_mean_ratio(mean_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """-log sigmoid(-beta mean_t r_t): per-sequence NPO, the nonlinearity after the tokens' mean."""
    return -F.logsigmoid(-beta * mean_ratio)


def kl_tokens(reference_logits: torch.Tensor, current_logits: torch.Tensor) -> torch.Tensor:
    """KL(original || current) of each position's next-token distribution, summed over the vocabulary."""
    reference_log_probs = F.log_softmax(reference_logits.float(), dim=-1)
    current_log_probs = F.log_softmax(current_logits.float(), dim=-1)
    return (reference_log_probs.exp() * (reference_log_probs - current_log_probs)).sum(dim=-1)


def nll_tokens(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """-log p(token_ids): the language-model loss of each position."""
    per_token = F.cross_entropy(logits.float().flatten(0, 1), token_ids.flatten(), reduction="none")
    return per_token.view(token_ids.shape)


# Per-example losses on whole logits: [batch, tokens, vocab] -> [batch].


def random_ce(logits: torch.Tensor, mask: torch.Tensor, random_targets: torch.Tensor) -> torch.Tensor:
    return token_mean(random_ce_tokens(logits, random_targets), mask)


def max_entropy_kl(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return token_mean(max_entropy_kl_tokens(logits), mask)


def top_k_entropy(logits: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    return token_mean(top_k_entropy_tokens(logits, k), mask)


def next_token_log_probs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(x_{t+1} | x_<=t) of the text's own next tokens: [batch, tokens - 1]."""
    return token_log_probs(logits[:, :-1], input_ids[:, 1:])


def npo(log_probs: torch.Tensor, reference_log_probs: torch.Tensor, mask: torch.Tensor, beta: float, per_token: bool) -> torch.Tensor:
    """Negative preference optimisation against the original model on the text's own tokens.

    With r_t = log p(x_t) - log p_original(x_t): per token, -log sigmoid(-beta r_t) averaged over
    the tokens; per sequence, -log sigmoid(-beta mean_t r_t). log 2 where the model is the original;
    it falls toward 0 as the model makes the text less likely than the original did.
    """
    if per_token:
        return token_mean(npo_tokens(log_probs, reference_log_probs, beta), mask)
    return npo_of_mean_ratio(token_mean(log_probs - reference_log_probs, mask), beta)


def l2_distance(current: dict[int, torch.Tensor], reference: dict[int, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """L2 norm of (current - original) hidden state per token, averaged over tokens, then over layers."""
    per_layer = [token_mean((current[layer].float() - reference[layer].float()).norm(dim=-1), mask) for layer in current]
    return torch.stack(per_layer).mean(dim=0)


def kl_divergence(reference_logits: torch.Tensor, current_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(original || current) on next-token distributions, summed over the vocabulary."""
    return token_mean(kl_tokens(reference_logits, current_logits), mask)


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Language-model loss: position t predicts token t+1; a target counts when it is a real token."""
    return token_mean(nll_tokens(logits[:, :-1], input_ids[:, 1:]), mask[:, 1:])
