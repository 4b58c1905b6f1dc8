"""The run folder: the contract between a run and everything that reads it later.

Its layout is named here once (every file and folder a command writes into a run folder), and
every reader and writer takes the names from here. Files that readers rely on are written whole:
to a temporary name first, then renamed.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

from peel.errors import PeelError, RunFailed, first_line, reading

PACKAGES = ("peel", "torch", "transformers", "peft", "datasets", "lm_eval")

# The layout. What peel unlearn and peel distill write:
CONFIG_FILE = "config.yaml"  # the resolved config, every local path absolute
RUN_FILE = "run.json"  # status (running, completed, failed, preempted, pending), timings, versions, job id
METRICS_FILE = "metrics.jsonl"  # one object per optimizer step
ERROR_LOG = "error.log"  # the traceback of a failure that was not a known one
CHECKPOINT_FILE = "checkpoint.safetensors"  # the state to resume from; removed once model/ is in place
MODEL_FOLDER = "model"  # the result, in save_pretrained layout (LoRA merged), with a model card
ADAPTER_FOLDER = "adapter"  # LoRA runs: the adapter alone, as peft saves it
PARTIAL_SUFFIX = ".partial"  # model.partial/, adapter.partial/: written whole before they move into place
CARD_FILE = "README.md"  # the model card inside model/ and adapter/
DISTILL_FOLDER = "distill"  # peel distill RUN's default output folder, inside RUN
GENERATED_FILE = "generated.json"  # peel distill with distill.data: generated: the texts the original model wrote, and their settings
TRACKING_FILE = "tracking.json"  # the trackers' run ids, so a resumed run continues the same tracked runs
TENSORBOARD_FOLDER = "tensorboard"
# What peel eval, peel tamper and peel probe add:
EVAL_FILE = "eval.json"
TAMPER_FILE = "tamper.json"  # every attack's curve and the worst case over them
TAMPER_PLOT = "tamper.png"
ATTACKS_FOLDER = "attacks"  # beside tamper.json: the plan (grid.json) and one file per finished attack
GRID_FILE = "grid.json"  # in attacks/
PROBE_FILE = "probe.json"
PROBE_PLOT = "probe.png"
# Beside run folders:
SWEEP_FILE = "sweep.json"  # in a sweep folder: the runs (folders beside it) and their swept values
SUMMARY_FILE = "summary.json"  # peel demo's summary, beside its run folders
# What a run's result is: stale once the run starts over (resume.rewind removes it).
RESULTS = (MODEL_FOLDER, ADAPTER_FOLDER, EVAL_FILE, TAMPER_FILE, TAMPER_PLOT, ATTACKS_FOLDER, PROBE_FILE, PROBE_PLOT)


def read_json(path: Path, accepted: str):
    """The JSON value stored in `path`; a one-line PeelError naming the file when it cannot be had."""
    with reading(str(path), accepted):
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise PeelError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}); accepted: {accepted}") from None


def read_run_record(folder: Path) -> dict:
    """run.json of a run folder ({} when there is none yet)."""
    path = Path(folder) / RUN_FILE
    if not path.exists():
        return {}
    record = read_json(path, "run.json as peel writes it (an object with a status)")
    if not isinstance(record, dict):
        raise PeelError(f"{path} is not a run record; accepted: run.json as peel writes it (an object with a status)")
    return record


def sweep_of(folder: Path) -> str | None:
    """The name of the sweep whose run `folder` is (its parent's sweep.json lists it), or None."""
    index = Path(folder).absolute().parent / SWEEP_FILE
    if not index.is_file():
        return None
    entries = read_json(index, "sweep.json as peel sweep writes it")
    runs = entries.get("runs") if isinstance(entries, dict) else None
    listed = isinstance(runs, list) and any(isinstance(run, dict) and run.get("name") == Path(folder).name for run in runs)
    return index.parent.name if listed else None


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


def check_writable(folder: str | Path, what: str) -> Path:
    """`folder` as a Path, once it is known that it is, or can be made, a folder this process
    writes into. Checked before anything heavy runs; creates nothing (a probe file in the nearest
    existing folder is removed at once)."""
    folder = Path(folder).expanduser()
    accepted = "a folder you can write to, or a path where one can be created"
    if folder.exists() and not folder.is_dir():
        raise PeelError(f"{what} {str(folder)!r} is an existing file; accepted: {accepted}")
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PeelError(f"{what} {str(folder)!r} cannot be created: {str(existing)!r} is a file; accepted: {accepted}")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".peel-write-check-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise PeelError(
            f"{what} {str(folder)!r} is not writable ({error.strerror} in {str(existing)!r}); accepted: {accepted}"
        ) from None
    return folder


def remove_partial(folder: Path) -> None:
    """Drop half-written results (`*.partial` folders, `*.tmp` files) a failed run leaves."""
    for path in list(folder.glob("*.partial")) + list(folder.glob("*.tmp")):
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def mark_failed(folder: Path, error: BaseException, started: float, device) -> Path | None:
    """run.json `failed` with the reason, and no half-written results. An unexpected error's
    traceback is kept in error.log, whose path is returned (None for a known failure, or when the
    folder itself cannot be written: the original error is then what the caller reports)."""
    log = None
    reason = first_line(error)
    try:
        remove_partial(folder)
        if not isinstance(error, (PeelError, RunFailed, KeyboardInterrupt)):
            log = folder / ERROR_LOG
            log.write_text("".join(traceback.format_exception(error)))
            reason = f"{type(error).__name__}: {reason}"
        extra = {"error": reason} if log is None else {"error": reason, "error_log": str(log)}
        write_json(folder / RUN_FILE, run_record("failed", started, device, **extra))
    except OSError:
        return None  # the folder went away or the disk is full: nothing more can be recorded there
    return log


def replace_folder(source: Path, destination: Path) -> None:
    """Move a finished folder into place so readers never see half of it."""
    if destination.exists():
        shutil.rmtree(destination)
    os.replace(source, destination)
