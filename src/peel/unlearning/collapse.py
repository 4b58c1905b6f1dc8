"""Representation collapse (`unlearn.collapse_components`, after CIR: Sondej & Yang 2025): the forget
loss's gradient is kept off the directions that general text uses most at the target layer, so the
update removes what is specific to the forget domain rather than machinery an attacker can re-aim.

Once per phase, with no gradient, the *original* model reads the retain corpus up to the target
layer's output; the top k eigenvectors of those hidden states' second moment (principal components
without centring, so a direction every token shares is among them) are an orthonormal basis U
([hidden, k]). In the probe, the gradient that flows back into the target layer's output is
projected off them, g <- g - U (U^T g), before it reaches any trained parameter (every one sits at
or below the target layer, so all of the forget gradient passes there). CIR collapses per module,
on activations and output gradients; peel does it once, where the probe splices the current layers
to the original ones. The basis depends on the original model and the retain corpus only, so a
resumed run computes the same one, and every process computes it whole.

k = 0 computes nothing and adds no hook: plain peel bit for bit.
"""

from __future__ import annotations

import contextlib

import torch

from peel.anatomy import changing_output, hidden_states


def retain_components(weights, retain, layer: int, count: int, batch_size: int) -> torch.Tensor | None:
    """The top `count` directions of the original model's hidden states at `layer`'s output on the
    retain corpus (`retain`, a batches.Corpus; real tokens only), as orthonormal float32 columns."""
    if count == 0:
        return None
    moment = None
    with torch.no_grad(), weights.original_from(0):
        for start in range(0, len(retain), batch_size):
            batch = retain.batch(torch.arange(start, min(start + batch_size, len(retain))))
            states = hidden_states(weights.anatomy, batch.input_ids, batch.model_mask, [layer])[layer]
            real = states[batch.attention_mask.bool()].double()
            moment = real.T @ real if moment is None else moment + real.T @ real
    _, vectors = torch.linalg.eigh(moment)  # ascending eigenvalues
    return vectors[:, -count:].flip(-1).float().contiguous()


class _ProjectedGradient(torch.autograd.Function):
    """The identity forward; backward removes the gradient's components along `basis`'s columns."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(basis)
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        (basis,) = ctx.saved_tensors
        flat = gradient.float()
        return (flat - (flat @ basis) @ basis.T).to(gradient.dtype), None


def projecting_gradient(layer: torch.nn.Module, basis: torch.Tensor | None) -> contextlib.AbstractContextManager:
    """Inside, the gradient reaching `layer`'s output hidden state is projected off `basis`; None
    changes nothing (anatomy.changing_output: a recomputing backward projects again)."""
    return changing_output(layer, None if basis is None else lambda hidden: _ProjectedGradient.apply(hidden, basis))
