"""A disk cache of baseline evaluations, so each sweep member does not re-evaluate the same model.

The key holds everything that changes the numbers: the model (a hub id with its revision, or a
local folder with the size and modification time of its files, so a rebuilt model misses), the
task set, the document limit, the context length, the lm-eval version, the record format and,
when the user's own tasks are indexed (eval.include_path), the files of that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Callable


# Bumped when what an evaluation record holds changes (2: correct_prob and the headline metric),
# so records cached in an older form are computed again rather than read with keys missing.
RECORD_FORMAT = 2


def cache_directory() -> Path:
    """`$PEEL_CACHE/baselines`, or `~/.cache/peel/baselines`."""
    from peel.models import cache_root

    return cache_root() / "baselines"


def folder_fingerprint(path: Path) -> list:
    """Name, size and modification time of every file under `path`: any rebuilt file misses."""
    files = sorted(item for item in path.rglob("*") if item.is_file())
    return [[str(item.relative_to(path)), item.stat().st_size, item.stat().st_mtime_ns] for item in files]


def model_identity(name_or_path: str, revision: str | None) -> dict:
    from peel.models import resolve_model_path

    path = Path(resolve_model_path(name_or_path))
    if not path.is_dir():
        return {"model": name_or_path, "revision": revision}
    return {"model": str(path.resolve()), "files": folder_fingerprint(path)}


def baseline_key(
    name_or_path: str, tasks: list[str], limit: int | None, max_length: int, revision: str | None = None,
    include_path: str | None = None,
) -> dict:
    # Keys without a task folder stay as they were, so baselines cached before it are still found.
    folder = None if include_path is None else Path(include_path).expanduser().resolve()
    tasks_folder = {} if folder is None else {"include_path": str(folder), "task_files": folder_fingerprint(folder)}
    return {
        **model_identity(name_or_path, revision),
        "tasks": sorted(tasks),
        "limit": limit,
        "max_length": max_length,
        "lm_eval_version": metadata.version("lm_eval"),
        "record_format": RECORD_FORMAT,
        **tasks_folder,
    }


def cache_file(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_directory() / f"{digest}.json"


def load_baseline(
    name_or_path: str, tasks: list[str], limit: int | None, max_length: int, revision: str | None = None,
    include_path: str | None = None,
) -> dict | None:
    """The cached evaluation of this model on these tasks, or None."""
    path = cache_file(baseline_key(name_or_path, tasks, limit, max_length, revision, include_path))
    try:
        return json.loads(path.read_text())["results"]
    except (OSError, ValueError, KeyError):
        return None  # absent or half-written: evaluate again


def store_baseline(
    name_or_path: str, tasks: list[str], limit: int | None, max_length: int, results: dict, revision: str | None = None,
    include_path: str | None = None,
) -> Path:
    key = baseline_key(name_or_path, tasks, limit, max_length, revision, include_path)
    path = cache_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a process reading concurrently never sees half a file.
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"key": key, "results": results}, indent=1))
    os.replace(partial, path)
    return path


def cached_baseline(
    name_or_path: str,
    tasks: list[str],
    limit: int | None,
    max_length: int,
    compute: Callable[[], dict],
    revision: str | None = None,
    include_path: str | None = None,
) -> dict:
    """The cached baseline if there is one; otherwise `compute()`, stored for next time."""
    results = load_baseline(name_or_path, tasks, limit, max_length, revision, include_path)
    if results is None:
        results = compute()
        store_baseline(name_or_path, tasks, limit, max_length, results, revision, include_path)
    return results
