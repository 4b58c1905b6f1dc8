"""Resumable checkpoints: one file in the run folder, replaced whole or not at all.

`checkpoint.pt` holds what a killed run needs to continue as if it had never stopped:
- the position: phase, step within it, global step. Each phase's example order is a pure function
  of (seed, phase), so the position is also the data position;
- the parameters that can differ from the loaded model (adapters, or the layers trained so far),
  gathered whole, so a run can resume on a different number of processes;
- mid-phase only, the optimizer and scheduler state (a phase starts both afresh);
- every process's random number generator state;
- how long metrics.jsonl was, so records written after the checkpoint are dropped on resume.

Original-layer snapshots (full fine-tuning) are not stored: a layer trains only in its own phase,
so its snapshot *is* the loaded model's layer. Resuming loads the model, replays the phases'
`begin_phase` (which takes the snapshots again), and only then restores the trained values.

Every process calls `save` (gathering shards is collective); only the main process writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch

from peel import distributed
from peel.errors import PeelError
from peel.parallel import full_tensor, shard_like

FILE_NAME = "checkpoint.pt"


class Position(NamedTuple):
    """Where training continues: phase `phase`, its step `step_in_phase`; `step` steps done in all."""

    phase: int
    step_in_phase: int
    step: int


START = Position(0, 0, 0)


def save(output_dir: Path, weights, position: Position, optimizer=None, scheduler=None) -> None:
    parameters = {name: whole(parameter.detach()) for name, parameter in weights.changed_parameters().items()}
    optimizer_state = None
    if optimizer is not None:
        state = optimizer.state_dict()
        state["state"] = {
            index: {key: whole(value) if torch.is_tensor(value) else value for key, value in values.items()}
            for index, values in state["state"].items()
        }
        optimizer_state = {"optimizer": state, "scheduler": scheduler.state_dict()}
    random_states = distributed.gather_objects(random_state())
    if not distributed.is_main():
        return
    metrics = output_dir / "metrics.jsonl"
    record = {
        "position": position._asdict(),
        "parameters": parameters,
        "optimizer": optimizer_state,
        "random_states": random_states,
        "metrics_bytes": metrics.stat().st_size if metrics.exists() else 0,
    }
    temporary = output_dir / (FILE_NAME + ".tmp")
    with temporary.open("wb") as handle:
        torch.save(record, handle)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before it replaces the last good checkpoint
    os.replace(temporary, output_dir / FILE_NAME)


def whole(tensor: torch.Tensor) -> torch.Tensor | None:
    """The whole tensor in CPU memory of the main process (gathering shards takes every process)."""
    gathered = full_tensor(tensor)
    return gathered.cpu() if distributed.is_main() else None


def load(output_dir: Path) -> dict | None:
    path = output_dir / FILE_NAME
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def remove(output_dir: Path) -> None:
    (output_dir / FILE_NAME).unlink(missing_ok=True)
    (output_dir / (FILE_NAME + ".tmp")).unlink(missing_ok=True)


def restore(saved: dict | None, weights, layers: list[int]) -> Position:
    """Bring freshly loaded `weights` to the checkpoint's state; the position to continue from.

    Phases are replayed first (snapshots of the original layers are taken from the loaded model),
    then the trained values are copied in.
    """
    if saved is None:
        return START
    position = Position(**saved["position"])
    for layer in layers[: position.phase + 1]:
        weights.begin_phase(layer)
    parameters = weights.changed_parameters()
    missing = sorted(set(saved["parameters"]) - set(parameters))
    if missing:
        raise PeelError(f"the checkpoint in the run folder holds parameters this model does not train: {missing[:3]}")
    with torch.no_grad():
        for name, value in saved["parameters"].items():
            parameters[name].copy_(shard_like(value, parameters[name]))
    states = saved["random_states"]
    if len(states) == distributed.world_size():
        set_random_state(states[distributed.rank()])
    elif distributed.is_main():
        print(
            f"peel: the checkpoint was written by {len(states)} processes, this run has {distributed.world_size()}: "
            "random number generators are not restored (only LoRA dropout draws from them)"
        )
    return position


def restore_optimizer(saved: dict, optimizer, scheduler) -> None:
    """Optimizer and scheduler state of a checkpoint taken mid-phase, shards cut to this process's layout."""
    state = saved["optimizer"]["optimizer"]
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    state["state"] = {
        index: {
            # AdamW's moments have the parameter's layout and are cut like it; its step count stays whole.
            key: value if key == "step" else shard_like(value, parameters[index])
            for key, value in values.items()
        }
        for index, values in state["state"].items()
    }
    optimizer.load_state_dict(state)
    scheduler.load_state_dict(saved["optimizer"]["scheduler"])


def random_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_random_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
