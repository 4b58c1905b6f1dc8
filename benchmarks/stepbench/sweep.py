"""Where peel's cost goes with the target layer: its LoRA step with a target-layer-only L2 retain
loss at several target layers (early exit: the retain passes stop at the target), and the memory
full fine-tuning keeps for original layers."""

from __future__ import annotations

import copy
import dataclasses

from stepbench.timing import Clock, interleave
from stepbench.variants import peel_variant, peel_weights
from stepbench.workload import Settings, batches, tensor_bytes


def evenly_spaced(num_layers: int, points: int) -> list[int]:
    points = min(points, num_layers)
    return sorted({round(index * (num_layers - 1) / max(1, points - 1)) for index in range(points)})


def sweep_target_layer(base_model, settings: Settings) -> dict:
    sweep = dataclasses.replace(settings, retain_layers="target")
    clock = Clock(settings.device)
    weights = peel_weights(copy.deepcopy(base_model), "lora", settings)
    layers = sweep.sweep_layers or evenly_spaced(settings.num_layers, settings.sweep_points)
    forget, retain = batches(settings)
    steps = {layer: peel_variant(weights, sweep, layer, clock) for layer in layers}
    timings = interleave({layer: lambda step=step: step(forget, retain) for layer, step in steps.items()},
                         clock, 1, settings.sweep_steps, "sweep")
    rows = []
    for layer in layers:
        parts = timings.median_parts(layer)
        rows.append({"layer": layer, "step_ms": round(timings.median(layer), 1), "forget_ms": parts["forget"],
                     "retain_ms": parts["retain"], "update_ms": parts["update"]})
    return {"mode": "lora", "retain_layers": "target", "rows": rows}


def original_weights_memory(base_model, settings: Settings) -> dict:
    """Full fine-tuning: bytes held for originals against (targets / layers) x model bytes."""
    weights = peel_weights(copy.deepcopy(base_model), "full", settings)
    held = sum(tensor.numel() * tensor.element_size() for values in weights.originals.values() for tensor in values)
    model_bytes = tensor_bytes(base_model)
    targets, layers = len(settings.schedule), settings.num_layers
    bound = targets / layers * model_bytes * 1.05
    return {
        "targets": settings.schedule,
        "num_layers": layers,
        "held_mb": round(held / 2**20, 1),
        "model_mb": round(model_bytes / 2**20, 1),
        "bound_mb": round(bound / 2**20, 1),
        "held_vs_bound": round(held / bound, 3),
        "met": held <= bound,
    }
