"""The quantization attack: round the weights to a few bits and back, then evaluate; no training.

Scheme (named `rtn_absmax` in records): weight-only, symmetric round-to-nearest. Each linear
weight of the decoder layers is cut along its input dimension into groups of `group_size`
weights per output row (0: the whole row, i.e. per output channel); each group is scaled by its
largest magnitude onto the integers -(2^(b-1) - 1) .. 2^(b-1) - 1, rounded, and scaled back.
Embeddings, norms and the head stay as they are, as in the usual weight-only 4- and 8-bit
schemes. Unlearning by small weight changes can fall below the quantization step: Zhang et al.
(ICLR 2025) found 4-bit quantization restores much of what such methods removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peel.config import NON_NEGATIVE, option

SCHEME = "rtn_absmax"
AS_THEY_ARE = 16  # bits that leave the weights untouched: the grid's reference point


@dataclass
class Options:
    bits: Literal[2, 3, 4, 8, 16] = option(4, "Bits per weight; 16 leaves the weights as they are.")
    group_size: int = option(128, "Weights per scale along each output row; 0 = one scale per output row.", NON_NEGATIVE)

    def described(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "scheme": SCHEME}


def quantized(weight, bits: int, group_size: int):
    """`weight` (out x in) rounded to `bits` per group of `group_size` inputs and scaled back, in its dtype."""
    import torch

    if bits >= AS_THEY_ARE:
        return weight
    levels = 2 ** (bits - 1) - 1
    values = weight.detach().float()
    rows, columns = values.shape
    width = columns if group_size == 0 or group_size >= columns else group_size
    padded = torch.nn.functional.pad(values, (0, (-columns) % width)).reshape(rows, -1, width)
    # A group of zeros keeps scale 1 (any scale rounds it to zeros) instead of dividing by zero.
    scale = padded.abs().amax(dim=-1, keepdim=True) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    rounded = (torch.round(padded / scale).clamp(-levels, levels) * scale).reshape(rows, -1)[:, :columns]
    return rounded.to(weight.dtype)


def quantize_model(model, bits: int, group_size: int) -> int:
    """Round every linear weight of the decoder layers in place; the number of weights rounded."""
    import torch

    from peel.anatomy import find_anatomy

    count = 0
    with torch.no_grad():
        for module in find_anatomy(model).layers.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(quantized(module.weight, bits, group_size))
                count += 1
    return count


def untouched(settings: dict) -> bool:
    return settings.get("bits") == AS_THEY_ARE


def run(attack, session) -> dict:
    if quantize_model(session.model, attack.options.bits, attack.options.group_size) == 0:
        from peel.errors import PeelError

        raise PeelError("the quantize attack found no torch.nn.Linear weight in the decoder layers; "
                        "accepted: models whose layers use nn.Linear (GPT-NeoX, Llama, Qwen2, ...)")
    return {"curve": [{"step": 0, **session.accuracy(attack.settings.tasks)}]}
