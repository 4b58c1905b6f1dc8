"""Config files: defaults, then a YAML file (and the files it names as `base:`), then dotted
`key=value` overrides; and the run's config.yaml written back. Paths in a file are relative to it
(paths.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from peel.config.fields import build, deep_merge, to_dict
from peel import scenarios
from peel.config.paths import resolve_paths
from peel.config.root import Config
from peel.errors import PeelError, reading


def load_config(path: str | Path | None = None, overrides: list[str] = (), relative_to_file: bool = True,
                model: str | None = None) -> Config:
    """Defaults, then a scenario model's defaults, then the YAML file (and the files it names as
    `base`), then `dotted.key=value` overrides.

    Relative paths in the file are relative to it; a run folder's config.yaml is read with
    `relative_to_file=False`: it records paths as peel was given them (absolute since paths became
    relative to their file; relative to where peel ran in older runs). The model whose scenario
    defaults apply (scenarios.defaults: testbed:base brings the testbed's data, tasks and float32)
    is the overrides' model.name_or_path, else the file's, else `model` (a command's TARGET)."""
    raw = read_yaml(Path(path), relative_to_file=relative_to_file) if path is not None else {}
    named = [item.partition("=")[2] for item in overrides if item.partition("=")[0] == "model.name_or_path"]
    from_file = raw.get("model", {}).get("name_or_path") if isinstance(raw.get("model"), dict) else None
    raw = deep_merge(scenarios.defaults((named or [None])[-1] or from_file or model), raw)
    config = build(Config, raw, prefix="")
    return apply_overrides(config, overrides)


def read_yaml(path: Path, seen: tuple[Path, ...] = (), relative_to_file: bool = True) -> dict:
    """A config file as a mapping. `base: other.yaml` (relative to the file) is read first and
    deep-merged under it, so a family of configs states only what differs from its base. Paths
    in the file (data, keyword lists, local models) are relative to it too (paths.py)."""
    if path.is_dir():
        raise PeelError(f"config file {str(path)!r} is a folder; accepted: a YAML config file, such as "
                        "configs/testbed_lora.yaml")
    if not path.is_file():
        raise PeelError(f"config file {str(path)!r} does not exist; accepted: a YAML config file")
    if path.resolve() in seen:
        raise PeelError(f"config file {str(path)!r} names itself as a base (through {[str(p) for p in seen]})")
    with reading(f"config file {str(path)!r}", "a YAML mapping of config sections"):
        check_not_foreign(path, path.open("rb").read(4096))
        raw = parse_yaml(path.read_text(), path)
    if not isinstance(raw, dict):
        raise PeelError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    check_sections(path, raw)
    base = raw.pop("base", None)
    if relative_to_file:  # the file's paths, like its base, are relative to it
        raw = resolve_paths(raw, path.parent)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise PeelError(f"config key 'base' in {str(path)!r} got {base!r}; accepted: a path to another config file")
    return deep_merge(read_yaml(path.parent / base, (*seen, path.resolve()), relative_to_file), raw)


CONFIG_EXPECTED = "a peel config: a YAML mapping of sections such as model, data, unlearn, train (e.g. configs/testbed_lora.yaml)"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def check_not_foreign(path: Path, head: bytes) -> None:
    """A file that is plainly something else (weights, a data file) is named as what it looks like,
    rather than as a codec or YAML error about its bytes."""
    suffix = path.suffix.lower()
    lines = [line.strip() for line in head.splitlines() if line.strip()]
    if suffix in WEIGHT_SUFFIXES or head.startswith(b"GGUF"):
        looks = "model weights"
    elif suffix == ".parquet" or head.startswith(b"PAR1"):
        looks = "a Parquet data file"
    elif suffix == ".jsonl" or (len(lines) > 1 and all(line.startswith(b"{") for line in lines[:-1])):
        looks = "a JSON Lines data file (one record per line)"
    elif b"\x00" in head:
        looks = "a binary file"
    else:
        return
    raise PeelError(f"config file {str(path)!r} looks like {looks}; accepted: {CONFIG_EXPECTED}")


def check_sections(path: Path, raw: dict) -> None:
    """A mapping with no config section but a model's keys (architectures, model_type) is a model's
    config.json, which would otherwise be refused as holding the "unknown config key 'architectures'"."""
    sections = {field.name for field in dataclasses.fields(Config)}
    if set(raw) & sections or not {"architectures", "model_type"} & set(raw):
        return  # a misspelt section is left to the unknown-key error, which lists the accepted ones
    keys = ", ".join(sorted(map(str, raw))[:4])
    raise PeelError(f"config file {str(path)!r} looks like a model's config.json (keys {keys}, ...), not a peel config; "
                    f"accepted: {CONFIG_EXPECTED}")


def parse_yaml(text: str, path: Path) -> Any:
    """A YAML document's value; a syntax error is one line with where it is (`first_line` of
    PyYAML's message would keep only "while scanning for the next token")."""
    try:
        return yaml.safe_load(text) or {}
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        problem = error.problem or error.context or "invalid YAML"
        tab = " (YAML indents with spaces, never tabs)" if "'\\t'" in problem else ""
        raise PeelError(f"config file {str(path)!r} is not valid YAML at {where}: {problem}{tab}; "
                        "accepted: a YAML mapping of config sections") from None


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Return a copy of `config` with each `dotted.key=value` applied (the value is parsed as YAML).

    Relative paths left after them are relative to where peel runs, and are made absolute here,
    so the config.yaml a run keeps means the same from any folder (a sweep's job reads it as a file)."""
    raw = to_dict(config)
    for item in overrides:
        key, separator, text = item.partition("=")
        if not separator or not key:
            raise PeelError(f"override {item!r} is not of the form dotted.key=value")
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        _set_dotted(raw, key, value)
    return build(Config, resolve_paths(raw, Path.cwd()), prefix="")


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            if part not in node:
                raise PeelError(f"unknown config key {'.'.join(parts[: depth + 1])!r} in override {key!r}")
            child = {}  # e.g. unlearn.layers.step when layers is currently a list
            node[part] = child
        node = child
    node[parts[-1]] = value


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
