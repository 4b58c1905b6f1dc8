"""How the forget and retain gradients of one parameter combine into the update.

Each filter takes the two (already coefficient-scaled) gradients of a tensor and returns the
combined gradient. They run on the gradients of a whole optimizer step, after accumulation and
after the reduction across processes, so the result does not depend on how a batch was split.
"""

from __future__ import annotations

import torch


def plain_sum(forget: torch.Tensor, retain: torch.Tensor) -> torch.Tensor:
    return forget + retain


def disagree(forget: torch.Tensor, retain: torch.Tensor) -> torch.Tensor:
    """Elements where the two gradients have opposite signs.

    A zero gradient disagrees with nothing: at the first step the model equals the original, so
    the L2 and KL retain gradients are exactly zero, and a filter that treated zero as
    disagreement would stop every update before the first one.
    """
    return (forget * retain) < 0


def same_sign(forget: torch.Tensor, retain: torch.Tensor) -> torch.Tensor:
    """Keep only the elements where the two gradients do not push opposite ways."""
    return torch.where(disagree(forget, retain), torch.zeros_like(forget), forget + retain)


def asymmetric(forget: torch.Tensor, retain: torch.Tensor) -> torch.Tensor:
    """Drop forget elements that disagree with retain; keep the whole retain gradient."""
    return torch.where(disagree(forget, retain), torch.zeros_like(forget), forget) + retain


GRADIENT_FILTERS = {"none": plain_sum, "same_sign": same_sign, "asymmetric": asymmetric}
