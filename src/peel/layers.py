"""Layer ranges as the config states them ({start, end, step} or a list), read against a model's
number of layers: unlearn.layers, probe.layers and an attack's layers all read the same way."""

from __future__ import annotations

from peel.config import LayerRange
from peel.errors import PeelError


def target_layers(layers: list[int] | LayerRange, num_layers: int, key: str = "unlearn.layers") -> list[int]:
    """The phases' target layers, e.g. {start: 28, end: 16, step: 4} -> [28, 24, 20, 16]; `key` names
    the setting in errors (probe.layers is read the same way)."""
    if isinstance(layers, LayerRange):
        start = num_layers - 1 if layers.start is None else layers.start
        if layers.step < 1:
            raise PeelError(f"{key}.step={layers.step} must be a positive integer")
        if layers.end > start:
            raise PeelError(f"{key}.end={layers.end} is after start={start}; layers run back to front")
        schedule = list(range(start, layers.end - 1, -layers.step))
    else:
        schedule = list(layers)
    if not schedule:
        raise PeelError(f"{key} is empty; give at least one layer")
    for layer in schedule:
        if not 0 <= layer < num_layers:
            raise PeelError(f"{key} contains layer {layer}; the model has layers 0..{num_layers - 1}")
    if len(set(schedule)) != len(schedule):
        raise PeelError(f"{key}={schedule} repeats a layer; each layer is a target at most once")
    return schedule
