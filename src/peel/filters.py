"""How the forget and retain gradients of one parameter combine into the update.

Each filter takes the two (already coefficient-scaled) gradients of a tensor and returns the
combined gradient. They run on the gradients of a whole optimizer step, after accumulation and
after the reduction across processes, so the result does not depend on how a batch was split.
"""

from __future__ import annotations

import torch


def plain_sum(forget: torch.Tensor, retain: torch.Tensor) -> torch.Tensor:
    return forget + retain


def same_sign(forget: torch.Tensor, retain: torch.Tensor) -> torch.Tensor:
    """Keep only the elements where both gradients push the same way (a zero agrees with nothing)."""
    agree = (forget * retain) > 0
    return torch.where(agree, forget + retain, torch.zeros_like(forget))


def asymmetric(forget: torch.Tensor, retain: torch.Tensor) -> torch.Tensor:
    """Drop forget elements that disagree with retain; keep the whole retain gradient."""
    agree = (forget * retain) > 0
    return torch.where(agree, forget, torch.zeros_like(forget)) + retain


GRADIENT_FILTERS = {"none": plain_sum, "same_sign": same_sign, "asymmetric": asymmetric}
