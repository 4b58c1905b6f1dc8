"""Paths in a config file are relative to that file, as its `base:` is.

`read_yaml` hands each file's raw mapping here before it is merged with its base or with
command-line overrides (those stay relative to where peel runs, as a shell's paths are). A
relative path becomes absolute, so the resolved config.yaml a run folder keeps means the same
thing wherever it is read from (a sweep's jobs, `peel tamper RUN`, a resumed run).

Data and model keys also take hub ids (`EleutherAI/deep-ignorance-unfiltered`), which look like
relative paths. Such a value is read as a path when it names something beside the config file,
starts with ./ or ../, or ends in a suffix peel reads from disk; otherwise it stays a hub id.
Scenario names (`testbed:forget`) and absolute or ~ paths are left as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from peel import scenarios

# Keys (dotted, within a config file) whose value is a path or a hub id.
PATH_OR_HUB_KEYS = ("model.name_or_path", "data.forget.path", "data.retain.path", "data.chat.path", "tamper.data.path",
                    "distill.data.path")
# Data sections that a bare string stands for: `distill.data=PATH` is `distill.data.path=PATH`; the words
# a section also takes (`distill.data: generated`) stay words.
SOURCE_KEYS = ("data.forget", "data.retain", "data.chat", "tamper.data", "distill.data")
SOURCE_WORDS = {"distill.data": ("generated",)}
# Keys whose value is always a local file or folder (or a scenario name).
PATH_KEYS = ("data.forget.keywords", "eval.include_path")
# Suffixes of the files peel reads from disk (data, keyword lists, GGUF models).
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt", ".csv", ".gguf")


def resolve_paths(raw: dict, folder: Path) -> dict:
    """A copy of a config file's mapping with its relative paths made absolute against `folder`
    (the file's folder); tamper.grid's attacks are config sections too (`data: {path: ...}`). A data
    section given as a bare string is read as its path first (`distill.data: x.jsonl`)."""
    resolved = raw
    for key in SOURCE_KEYS:
        words = SOURCE_WORDS.get(key, ())
        resolved = _at(resolved, key, lambda value, words=words: {"path": value} if isinstance(value, str) and value not in words else value)
    resolved = _with(resolved, PATH_KEYS, folder, always=True)
    resolved = _with(resolved, PATH_OR_HUB_KEYS, folder, always=False)
    tamper = resolved.get("tamper")
    if isinstance(tamper, dict) and isinstance(tamper.get("grid"), list):
        grid = [_with(point, ("data.path",), folder, always=False) if isinstance(point, dict) else point
                for point in tamper["grid"]]
        resolved = {**resolved, "tamper": {**tamper, "grid": grid}}
    return resolved


def _at(raw: dict, key: str, change) -> dict:
    """`raw` with `change` applied to the value at the dotted key, where there is one (copied, never changed in place)."""
    head, _, rest = key.partition(".")
    if head not in raw:
        return raw
    value = raw[head]
    if rest:
        return {**raw, head: _at(value, rest, change)} if isinstance(value, dict) else raw
    return {**raw, head: change(value)}


def _with(raw: dict, keys: tuple[str, ...], folder: Path, always: bool) -> dict:
    """`raw` with the value at each dotted key resolved (nested mappings copied, never changed in place)."""
    for key in keys:
        head, _, rest = key.partition(".")
        value = raw.get(head)
        if rest and isinstance(value, dict):
            raw = {**raw, head: _with(value, (rest,), folder, always)}
        elif not rest and isinstance(value, str):
            raw = {**raw, head: resolve(value, folder, always)}
    return raw


def resolve(value: str, folder: Path, always: bool) -> str:
    """`value` made absolute against `folder` when it is a relative local path (see the module's
    docstring); `always`: the key takes only local paths, so any relative value is one."""
    if not value or scenarios.is_scenario_name(value) or value.startswith("~") or Path(value).is_absolute():
        return value
    candidate = folder / value
    if always or candidate.exists() or value.startswith(("./", "../")) or Path(value).suffix in LOCAL_SUFFIXES:
        return os.path.abspath(candidate)
    return value

