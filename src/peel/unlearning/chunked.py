"""Token losses without the whole [batch, tokens, vocabulary] logits.

Every loss peel computes from logits is a per-example reduction of per-token values
(`losses.*_tokens`). Such a sum can be taken a chunk of positions at a time: each chunk's logits
are made from the final hidden states by the model's own head (unembedding), turned into
per-token values and summed, and only the chunk's sums are kept. In backward,
`torch.utils.checkpoint` recomputes the chunk's logits instead of having stored them, so at most
one chunk of logits (and its gradient) exists at any moment. The sums are the ones over the whole
logits, taken in another order: values and gradients equal the unchunked ones up to float
rounding (a test).

When chunks are used (`chunk_width`): when a micro-batch has more tokens than
`train.loss_chunk_tokens`; with fewer, one chunk would be the whole logits and recomputing them
would cost time for no memory. Only models whose logits peel can make exactly from the final
hidden state (`models.Anatomy.output_head`) take the chunked path; the others keep whole logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from peel.unlearning.losses import token_count, token_sum


def chunk_width(batch_size: int, tokens: int, chunk_tokens: int) -> int | None:
    """Positions per chunk for a [batch_size, tokens] micro-batch; None: whole logits (no chunking
    asked for, or the micro-batch fits one chunk anyway)."""
    if chunk_tokens <= 0 or batch_size * tokens <= chunk_tokens:
        return None
    return max(1, chunk_tokens // batch_size)


@dataclass
class Outputs:
    """One forward pass as a token loss reads it: its whole logits (`head` None), or its final hidden
    states and the head that makes logits of them, `width` positions at a time."""

    values: torch.Tensor  # [batch, tokens, vocab] logits, or [batch, tokens, hidden] final hidden states
    head: Callable[[torch.Tensor], torch.Tensor] | None = None
    width: int | None = None

    def shifted(self) -> Outputs:
        """Positions 0..T-2: those that predict the text's next tokens 1..T-1."""
        return Outputs(self.values[:, :-1], self.head, self.width)

    def logits(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        values = self.values[:, start:end]
        return values if self.head is None else self.head(values)


def token_sums(per_token: Callable, outputs: list[Outputs], extras: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Sum over the counted positions t of `per_token(logits_1[:, t], ..., extras[:, t])`, per example.

    `per_token` maps the logits of each of `outputs` (same positions) and the `extras` (per-position
    tensors such as targets) to [batch, positions] values. -> [batch]
    """
    width, tokens = outputs[0].width, mask.shape[1]
    if outputs[0].head is None:
        return token_sum(per_token(*[output.logits() for output in outputs], *extras), mask)
    heads = [output.head for output in outputs]

    def chunk_sum(mask_chunk, *chunks):
        states, chunk_extras = chunks[: len(heads)], chunks[len(heads) :]
        return token_sum(per_token(*[head(state) for head, state in zip(heads, states)], *chunk_extras), mask_chunk)

    recompute = torch.is_grad_enabled() and any(output.values.requires_grad for output in outputs)
    total = None
    for start in range(0, tokens, width):
        chunks = [tensor[:, start : start + width] for tensor in (mask, *[o.values for o in outputs], *extras)]
        if recompute:
            # The chunk's logits are not kept for backward: checkpoint recomputes them there.
            part = checkpoint(chunk_sum, *chunks, use_reentrant=False, preserve_rng_state=False)
        else:
            part = chunk_sum(*chunks)
        total = part if total is None else total + part
    return total


def token_means(per_token: Callable, outputs: list[Outputs], extras: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """`token_sums` divided by each example's count of counted positions: the per-example mean."""
    return token_sums(per_token, outputs, extras, mask) / token_count(mask)


def token_values(per_token: Callable, outputs: list[Outputs], extras: list[torch.Tensor]) -> torch.Tensor:
    """`per_token` at every position, [batch, positions], without gradient (e.g. the original
    model's log-probabilities of the text): chunk by chunk when the outputs are chunked."""
    with torch.no_grad():
        if outputs[0].head is None:
            return per_token(*[output.logits() for output in outputs], *extras)
        width, tokens = outputs[0].width, outputs[0].values.shape[1]
        parts = [
            per_token(*[output.logits(start, start + width) for output in outputs], *[e[:, start : start + width] for e in extras])
            for start in range(0, tokens, width)
        ]
        return torch.cat(parts, dim=1)
