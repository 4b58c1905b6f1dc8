"""An alternative LoRA path, measured against peft's: adapters applied through the merged weight.

peft computes W x + s B (A x): besides the base product, two thin matrix products, a scale and an
add per adapted linear layer, each a kernel launch, in forward and again in backward. Here the
layer computes (W + s B A) x with one product, and backward takes the adapters' gradients from
the merged weight's gradient G = dy^T x: dA = s B^T G, dB = s G A^T (the input's gradient is
dy (W + s B A), made from W and the thin factors). Fewer, larger kernels, at the price of G, a
product as large as a full fine-tuning weight gradient. Benchmark-only: `lora_paths_bench.py`
measures it; the engine keeps what wins there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class MergedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        ctx.save_for_backward(x, weight, lora_a, lora_b)
        ctx.scaling = scaling
        return F.linear(x, weight + scaling * (lora_b @ lora_a), bias)  # the merged weight lives for this product only

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, lora_a, lora_b = ctx.saved_tensors
        scaling = ctx.scaling
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_output @ weight + scaling * ((grad_output @ lora_b) @ lora_a)
        merged_grad = grad_output.flatten(0, -2).T @ x.flatten(0, -2)  # [out, in]: the merged weight's gradient
        return grad_x, None, None, scaling * (lora_b.T @ merged_grad), scaling * (merged_grad @ lora_a.T), None


def merged_forward(module, x, *args, **kwargs):
    """peft's `lora.Linear.forward` for one plain adapter without dropout, through the merged weight."""
    if module.disable_adapters:
        return module.base_layer(x, *args, **kwargs)
    (name,) = module.active_adapters
    base = module.base_layer
    return MergedLinear.apply(x, base.weight, base.bias, module.lora_A[name].weight, module.lora_B[name].weight,
                              module.scaling[name])


def use_merged_adapters(model: torch.nn.Module) -> int:
    """Route every LoRA linear layer of `model` through `merged_forward`; the number routed."""
    from peft.tuners.lora import Linear

    layers = [module for module in model.modules() if isinstance(module, Linear)]
    for module in layers:
        module.forward = lambda x, *args, module=module, **kwargs: merged_forward(module, x, *args, **kwargs)
    return len(layers)
