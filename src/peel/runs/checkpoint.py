"""Resumable checkpoints: one file in the run folder, replaced whole or not at all.

`checkpoint.safetensors` holds what a killed run needs to continue as if it had never stopped
(tensors as safetensors entries, everything else as JSON in the file's metadata, so loading it
runs no pickle):
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

import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from peel import distributed
from peel.errors import PeelError, reading
from peel.parallel import full_tensor, shard_like
from peel.runs.folder import CHECKPOINT_FILE, METRICS_FILE



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
    metrics = output_dir / METRICS_FILE
    record = {
        "position": position._asdict(),
        "parameters": parameters,
        "optimizer": optimizer_state,
        "random_states": random_states,
        "metrics_bytes": metrics.stat().st_size if metrics.exists() else 0,
    }
    tensors, metadata = flatten_record(record)
    temporary = output_dir / (CHECKPOINT_FILE + ".tmp")
    save_file(tensors, temporary, metadata={"peel": json.dumps(metadata)})
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())  # on disk before it replaces the last good checkpoint
    os.replace(temporary, output_dir / CHECKPOINT_FILE)


def flatten_record(record: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a checkpoint into named tensors and JSON: `parameters/NAME`, `optimizer/INDEX/KEY`,
    `random/RANK/DEVICE`; the JSON keeps the rest and the non-tensor optimizer values."""
    tensors = {f"parameters/{name}": value for name, value in record["parameters"].items()}
    metadata = {key: record[key] for key in ("position", "metrics_bytes")}
    if record["optimizer"] is not None:
        state = record["optimizer"]["optimizer"]
        scalars = {}
        for index, values in state["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer/{index}/{key}"] = value
                else:
                    scalars.setdefault(str(index), {})[key] = value
        metadata["optimizer"] = {"param_groups": state["param_groups"], "scalars": scalars,
                                 "scheduler": record["optimizer"]["scheduler"]}
    for rank, states in enumerate(record["random_states"]):
        for device, value in states.items():
            tensors[f"random/{rank}/{device}"] = value
    metadata["random_processes"] = len(record["random_states"])
    return {name: tensor.contiguous() for name, tensor in tensors.items()}, metadata


def unflatten_record(tensors: dict[str, torch.Tensor], metadata: dict) -> dict:
    """The inverse of `flatten_record`."""
    groups: dict[str, dict] = {"parameters": {}, "optimizer": {}, "random": {}}
    for name, tensor in tensors.items():
        kind, _, rest = name.partition("/")
        groups[kind][rest] = tensor
    optimizer = None
    if "optimizer" in metadata:
        state: dict[int, dict] = {int(index): dict(values) for index, values in metadata["optimizer"]["scalars"].items()}
        for name, tensor in groups["optimizer"].items():
            index, key = name.split("/", 1)
            state.setdefault(int(index), {})[key] = tensor
        optimizer = {
            "optimizer": {"state": state, "param_groups": metadata["optimizer"]["param_groups"]},
            "scheduler": metadata["optimizer"]["scheduler"],
        }
    random_states = [{} for _ in range(metadata["random_processes"])]
    for name, tensor in groups["random"].items():
        rank, device = name.split("/", 1)
        random_states[int(rank)][device] = tensor
    return {
        "position": metadata["position"],
        "parameters": groups["parameters"],
        "optimizer": optimizer,
        "random_states": random_states,
        "metrics_bytes": metadata["metrics_bytes"],
    }


def whole(tensor: torch.Tensor) -> torch.Tensor | None:
    """The whole tensor in CPU memory of the main process (gathering shards takes every process)."""
    gathered = full_tensor(tensor)
    return gathered.cpu() if distributed.is_main() else None


def load(output_dir: Path) -> dict | None:
    path = output_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    accepted = "a checkpoint written by peel (delete it, or pass --force, to start the run over)"
    with reading(str(path), accepted):
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = json.loads(handle.metadata()["peel"])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        return unflatten_record(tensors, metadata)


def remove(output_dir: Path) -> None:
    (output_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    (output_dir / (CHECKPOINT_FILE + ".tmp")).unlink(missing_ok=True)


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
