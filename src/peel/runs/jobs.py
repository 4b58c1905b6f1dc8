"""What peel sweep and peel tamper share: --grid words into points and names, and Slurm jobs
through submitit (--slurm words, the executor, whether a job ended without finishing)."""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

from peel.errors import PeelError

# --------------------------------------------------------------------------------------------
# Grids: --grid key=v1,v2 words


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """`key=v1,v2` -> (key, [v1, v2]); commas inside brackets stay (`unlearn.layers=[3,1],[2]`)."""
    grid = []
    for item in items:
        key, separator, text = item.partition("=")
        values = split_values(text)
        if not separator or not key or not all(values):
            raise PeelError(f"--grid {item!r} is not of the form dotted.key=value1,value2,...")
        if key in (existing for existing, _ in grid):
            raise PeelError(f"--grid names {key!r} twice; give all its values in one --grid")
        grid.append((key, values))
    return grid


def split_values(text: str) -> list[str]:
    values, depth, current = [], 0, ""
    for character in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(character, 0)
        if character == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += character
    values.append(current.strip())
    return values


def run_name(point: list[tuple[str, str]]) -> str:
    """`remove_coef=10,retain_coef=5`: the last part of each key (the whole key where two would clash)."""
    leaves = [key.rsplit(".", 1)[-1] for key, _ in point]
    parts = []
    for (key, value), leaf in zip(point, leaves):
        label = leaf if leaves.count(leaf) == 1 else key
        parts.append(f"{label}={re.sub(r'[^A-Za-z0-9._+-]', '', value.replace(',', '-')) or 'empty'}")
    return ",".join(parts)


def points(grid: list[tuple[str, list[str]]]) -> list[list[tuple[str, str]]]:
    """Every combination of the grid's values, as (key, value) pairs in the grid's key order."""
    return [[(key, value) for (key, _), value in zip(grid, values)] for values in itertools.product(*(v for _, v in grid))]


def check_unique(names: list[str], what: str) -> None:
    if len(set(names)) != len(names):
        raise PeelError(f"two grid points give the same {what} ({names}); use values that differ after cleaning")


# --------------------------------------------------------------------------------------------
# Slurm through submitit

# --slurm key -> (submitit parameter, how to read the value). `cluster` picks submitit's executor.
SLURM_OPTIONS = {
    "nodes": ("nodes", int),
    "gpus_per_node": ("gpus_per_node", int),
    "partition": ("slurm_partition", str),
    "time": ("timeout_min", lambda text: minutes(text)),
    "account": ("slurm_account", str),
    "qos": ("slurm_qos", str),
    "constraint": ("slurm_constraint", str),
    "cpus_per_task": ("cpus_per_task", int),
    "mem_gb": ("mem_gb", float),
    "cluster": ("cluster", str),
}
DEFAULT_SLURM = {"nodes": 1, "gpus_per_node": 1, "timeout_min": 240}
CLUSTERS = ("slurm", "local", "debug")


def minutes(text: str) -> int:
    """Slurm time: minutes, or [days-]hours:minutes:seconds."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+):(\d+)", text)
    if match:
        days, hours, mins, seconds = (int(part or 0) for part in match.groups())
        return days * 1440 + hours * 60 + mins + (1 if seconds else 0)
    if text.isdigit():
        return int(text)
    raise ValueError(text)


def slurm_parameters(items: list[str]) -> dict:
    parameters = dict(DEFAULT_SLURM)
    for item in items:
        key, separator, text = item.partition("=")
        if key not in SLURM_OPTIONS or not separator:
            raise PeelError(f"--slurm {item!r}: accepted keys are {', '.join(SLURM_OPTIONS)} (as key=value)")
        name, read = SLURM_OPTIONS[key]
        try:
            parameters[name] = read(text)
        except ValueError:
            raise PeelError(f"--slurm {item!r}: {text!r} is not a valid {key}") from None
    if parameters.get("cluster", "slurm") not in CLUSTERS:
        raise PeelError(f"--slurm cluster={parameters['cluster']}: accepted {', '.join(CLUSTERS)}")
    # Slurm's default of one CPU would put every torchrun worker of the job on the same core.
    parameters.setdefault("cpus_per_task", 4 * max(1, parameters["gpus_per_node"]))
    return parameters


def make_executor(jobs_dir: Path, parameters: dict):
    import submitit

    parameters = dict(parameters)
    cluster = parameters.pop("cluster", "slurm")
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise PeelError("Slurm is not available here (no sbatch on PATH); run in this process instead "
                        "(peel sweep --local, peel tamper without --slurm)")
    executor = submitit.AutoExecutor(folder=jobs_dir, cluster=cluster)
    executor.update_parameters(tasks_per_node=1, **parameters)  # one torchrun per node starts the GPU processes
    return executor


# Slurm job states (as sacct prints them) of a job that is over without having finished its run.
ENDED_BADLY = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED")


def slurm_job_ended_badly(jobs_dir: Path, job_id: str) -> bool:
    """Where Slurm can be asked (sacct), whether the job is over while its run folder still says
    pending or running: a job killed outright (node failure, out of memory, scancel) marks nothing."""
    if shutil.which("sacct") is None:
        return False
    import submitit

    return submitit.SlurmJob(folder=jobs_dir, job_id=job_id).state.startswith(ENDED_BADLY)
