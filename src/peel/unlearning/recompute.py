"""Which activations the decoder layers keep for backward (`train.gradient_checkpointing`).

- false      every one autograd saves;
- true       each layer's input only: backward runs the whole layer again (transformers'
             activation checkpointing; the most memory saved, one more forward pass of compute);
- selective  the outputs of the layer's matrix products and attention kernel, which are what
             costs FLOPs to remake; backward remakes the rest from them: norms, activation
             functions, rotary embeddings, residual sums and the low-rank adapter products
             (torch.utils.checkpoint's selective policy). On the long CPU benchmark (Pythia-160M
             shape, 2 x 2048 tokens, LoRA) a layer keeps about half of what it kept, for no
             measurable time.

Layers are wrapped one by one, as `models.compile_layers` compiles them: the wrapper is the
layer's `forward`, so hooks (the hidden-state capture, FSDP2's) stay outside it, and a pass without
gradient runs the layer as it is.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from peel.anatomy import Anatomy, causal_lm

aten = torch.ops.aten
MATRIX_PRODUCTS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}
# The fused attention kernels of every device; eager attention decomposes into products and a softmax.
ATTENTION_KERNELS = {
    getattr(aten, name).default
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_flash_attention_forward",
        "_efficient_attention_forward",
    )
    if hasattr(aten, name)
}
# A product contracting over at most this many values costs that many multiply-adds per output
# element: a low-rank adapter's B(A x) (rank 8-128) is remade for a sliver of the layer's FLOPs,
# while its output is as large as the base weight's.
SHORT_CONTRACTION = 128


def contraction(operation, args) -> int:
    """The summed-over dimension of a matrix product: the last of its left factor."""
    left = args[1] if operation in (aten.addmm.default, aten.baddbmm.default) else args[0]
    return left.shape[-1]


def keep_products(context, operation, *args, **kwargs) -> CheckpointPolicy:
    """The selective policy: keep what is expensive to remake, remake the rest."""
    if operation in ATTENTION_KERNELS:
        return CheckpointPolicy.MUST_SAVE
    if operation in MATRIX_PRODUCTS and contraction(operation, args) > SHORT_CONTRACTION:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_selectively(anatomy: Anatomy) -> None:
    """Wrap each decoder layer's forward in a selective checkpoint (passes with gradient only)."""
    context = functools.partial(create_selective_checkpoint_contexts, keep_products)
    for layer in anatomy.layers:
        layer.forward = functools.partial(_checkpointed, layer.forward, context)


def _checkpointed(forward, context, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, context_fn=context, **kwargs)


def checkpoint_whole_layers(model: torch.nn.Module) -> None:
    """transformers' own: each layer's input kept, the layer recomputed in backward. Non-reentrant,
    so a pass whose inputs need no gradient (frozen embeddings) still gets gradients for the
    layers' own parameters."""
    inner = causal_lm(model)
    options = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # the name since transformers 5.2x
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


# `train.gradient_checkpointing` -> what is done to (the model, its anatomy); false: nothing.
ACTIVATION_CHECKPOINTING = {
    True: lambda model, anatomy: checkpoint_whole_layers(model),
    "selective": lambda model, anatomy: checkpoint_selectively(anatomy),
}


def apply(model: torch.nn.Module, anatomy: Anatomy, choice: bool | str) -> None:
    if choice is not False:
        ACTIVATION_CHECKPOINTING[choice](model, anatomy)
