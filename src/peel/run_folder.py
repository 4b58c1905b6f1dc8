"""The run folder: the contract between a run and everything that reads it later.

config.yaml (resolved), metrics.jsonl (one object per optimizer step), run.json (status,
timings, versions), model/ (and adapter/ for LoRA). Files that readers rely on are written
whole: to a temporary name first, then renamed.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("peel", "torch", "transformers", "peft", "datasets", "lm_eval")


def write_json(path: Path, value) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(temporary, path)


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return found


def git_revision() -> str | None:
    """The commit of the peel checkout in use, when it is one."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def peak_memory_mb(device) -> float:
    import torch  # here, so readers of run folders (report, eval records) import no torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_record(status: str, started: float, device, **extra) -> dict:
    return {
        "status": status,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 3),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "device": str(device),
        "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"),
        "git_revision": git_revision(),
        "versions": versions(),
        **extra,
    }


def replace_folder(source: Path, destination: Path) -> None:
    """Move a finished folder into place so readers never see half of it."""
    if destination.exists():
        shutil.rmtree(destination)
    os.replace(source, destination)
