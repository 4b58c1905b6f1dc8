"""Unlearning depth: a target's layer-L output finished by the *original* model's layers L+1.. and
its head, each choice scored as lm-eval scores it.

This is peel's own forget probe read back as a measurement. Where the target's state, continued by
the original's later layers, still gives the answers, the change that hides them has not happened
yet at that depth; the layer where the answers stop coming is where the unlearning acts. It reads
only targets made from the original (same architecture and width: an unlearned model against the
model it was unlearned from); a model trained apart, like the testbed's filtered one, has hidden
states the original's layers cannot read.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from peel.probing.lens import continuation_log_likelihood


@contextlib.contextmanager
def replaced_output(layer: torch.nn.Module, hidden: torch.Tensor) -> Iterator[None]:
    """The layer's output replaced by `hidden` for the passes inside (its other outputs kept). The
    hook goes first, so hooks registered earlier on the layer (peel's capture) see the replacement."""
    from peel.anatomy import with_layer_output

    handle = layer.register_forward_hook(lambda module, args, output: with_layer_output(output, hidden), prepend=True)
    try:
        yield
    finally:
        handle.remove()


def spliced_scores(original, states: dict[int, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor,
                   contexts: torch.Tensor, ends: torch.Tensor) -> dict[int, torch.Tensor]:
    """layer -> per row, the continuation's summed log-probability when the target's output at that
    layer (`states`) replaces the original's and the original computes the rest. `original` is the
    original model's peel.models.Anatomy."""
    from peel.anatomy import hidden_states

    last = original.num_layers - 1
    scores = {}
    for layer, state in states.items():
        with replaced_output(original.layers[layer], state):
            final = hidden_states(original, ids, mask, [last])[last]  # the last layer's output, before the final norm
        scores[layer] = continuation_log_likelihood(original, final, ids, contexts, ends)
    return scores
