"""What `peel eval` and `peel tamper` accept as TARGET: a run folder, a model folder, a .gguf file
(or a folder with model.gguf_file=NAME), a named model (smollm2-135m, testbed:base) or a hub id."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from peel.config import Config, load_config
from peel.errors import PeelError
from peel.models import LOCAL_RULE, looks_local, missing_path_message, model_location
from peel.runs.folder import CONFIG_FILE, MODEL_FOLDER


TARGET_ACCEPTED = "a run folder, a model folder, a .gguf file, a hub id or a scenario model such as testbed:base"


@dataclass(frozen=True)
class Target:
    model: str  # what load_model_and_tokenizer receives
    run_folder: Path | None  # set when TARGET is a run folder
    config: Config  # the run's resolved config (or defaults), with the command line's overrides


def resolve_target(target: str, overrides: list[str]) -> Target:
    """A run folder brings its own config (so its eval and tamper settings apply); others use defaults."""
    path = Path(target).expanduser()
    if not path.exists() and looks_local(target):
        raise PeelError(f"{missing_path_message('target', target)}; {LOCAL_RULE}; accepted: {TARGET_ACCEPTED}")
    if (path / CONFIG_FILE).is_file():
        model_folder = path / MODEL_FOLDER
        if not (model_folder / "config.json").is_file():
            raise PeelError(f"run folder {target!r} has no model/ (the run did not finish; see its run.json)")
        return Target(str(model_folder), path, load_config(path / CONFIG_FILE, overrides, relative_to_file=False))
    config = load_config(None, overrides, model=target)  # a scenario's model brings its data, tasks and dtype
    if config.model.gguf_file is not None:  # TARGET is the folder holding the GGUF file
        return Target(model_location(target, config.model.gguf_file), None, config)
    if path.is_dir() and not (path / "config.json").is_file():
        raise PeelError(
            f"{target!r} is neither a run folder (config.yaml + model/) nor a model folder (config.json); "
            "for a folder of GGUF files add model.gguf_file=NAME.gguf"
        )
    return Target(target, None, config)


def resolve_targets(names: list[str], overrides: list[str]) -> list[Target]:
    """Several targets treated alike: each takes the config of the first run folder among them
    (its eval and tamper settings), or the defaults, with the overrides. A hub id or model folder
    does not take that run's model revision, which belongs to the run's own model."""
    resolved = [resolve_target(name, overrides) for name in names]
    shared = next((target.config for target in resolved if target.run_folder is not None), None)
    if shared is None:
        return resolved
    unpinned = dataclasses.replace(shared, model=dataclasses.replace(shared.model, revision=None))
    return [Target(target.model, target.run_folder, shared if target.run_folder is not None else unpinned)
            for target in resolved]


def label(name: str) -> str:
    """A short, file-safe name for a target: the run folder's name or the hub id's last part."""
    short = Path(name.rstrip("/")).name or name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", short)


def distinct_labels(names: list[str]) -> list[str]:
    """Each target's `label`, refused when two targets would share one (their results would mix)."""
    labels = [label(name) for name in names]
    if len(set(labels)) < len(labels):
        raise PeelError(f"targets {names} share a name ({labels}); accepted: targets whose last path parts differ")
    return labels


def output_folders(targets: list[Target], names: list[str], output_dir: str | None, command: str) -> list[Path]:
    """One folder per target, each checked writable: with one target as `output_folder`; with
    several, OUTPUT/<label> under --output-dir, or each run folder itself."""
    if len(targets) == 1:
        return [output_folder(targets[0], output_dir, command)]
    labels = distinct_labels(names)
    if output_dir is None:
        return [output_folder(target, None, command) for target in targets]
    from peel.runs.folder import check_writable

    root = check_writable(output_dir, "--output-dir")
    return [root / name for name in labels]


def output_folder(target: Target, output_dir: str | None, command: str) -> Path:
    """Where the command writes, checked writable before any model loads."""
    from peel.runs.folder import check_writable

    if output_dir is not None:
        return check_writable(output_dir, "--output-dir")
    if target.run_folder is not None:
        return check_writable(target.run_folder, "run folder")
    raise PeelError(f"peel {command} on a model folder or hub id needs --output-dir (only run folders have a home)")


def target_num_layers(target: Target) -> int:
    """The number of decoder layers of the target's model, from its config alone (no weights load)."""
    from peel.models import load_model_config

    model = target.config.model
    config = load_model_config(target.model, model.revision if target.run_folder is None else None, model.trust_remote_code)
    return getattr(config, "num_hidden_layers", None) or getattr(config.get_text_config(), "num_hidden_layers")


def check_loadable(model: str, config: Config, pinned: bool = True) -> None:
    """What can be known of a model without loading its weights: its config is readable (a bad name
    fails here) and a local folder's safetensors headers are whole. `pinned`: the config's model
    revision applies (a hub id or model folder, not a run folder's own model)."""
    from peel.models import check_weights, load_model_config

    settings = config.model
    load_model_config(model, settings.revision if pinned else None, settings.trust_remote_code)
    check_weights(model)


def load_target_model(target: Target, dtype: str | None = None):
    """Model and tokenizer on the GPU when there is one, in `dtype` or the run's training dtype."""
    import torch

    from peel.models import load_model_and_tokenizer

    settings = target.config.model
    model, tokenizer = load_model_and_tokenizer(
        target.model,
        dtype=dtype or target.config.train.dtype,
        attn_implementation=settings.attn_implementation,
        revision=settings.revision if target.run_folder is None else None,
        trust_remote_code=settings.trust_remote_code,
    )
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer
