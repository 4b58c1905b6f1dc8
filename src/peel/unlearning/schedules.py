"""Which layers are targeted, in what order, and how the loss coefficients move within a phase."""

from __future__ import annotations

from peel.errors import PeelError


def retain_layer_set(retain_layers: list[int] | str, target: int, num_layers: int) -> list[int]:
    """Layers compared by the l2 retain loss in the phase that targets `target`."""
    if retain_layers == "all":
        return list(range(num_layers))
    if retain_layers == "target":
        return [target]
    for layer in retain_layers:
        if not 0 <= layer < num_layers:
            raise PeelError(f"unlearn.retain_layers contains layer {layer}; the model has layers 0..{num_layers - 1}")
    if not retain_layers:
        raise PeelError("unlearn.retain_layers is an empty list; accepted: a list of layers, all, or target")
    return sorted(set(retain_layers))


def progress(step_in_phase: int, steps_in_phase: int) -> float:
    """0 at a phase's first step, 1 at its last."""
    return step_in_phase / (steps_in_phase - 1) if steps_in_phase > 1 else 1.0


RETAIN_RAMPS = {
    "from_zero": lambda p: p,
    "from_quarter": lambda p: 0.25 + 0.75 * p,
}


def retain_coefficient(retain_coef: float, ramp: str, p: float) -> float:
    return retain_coef * RETAIN_RAMPS[ramp](p)


def forget_coefficient(remove_coef: float, p: float) -> float:
    """The forget coefficient eases from remove_coef to 0.75 remove_coef over a phase."""
    return remove_coef * (1 - 0.25 * p)
