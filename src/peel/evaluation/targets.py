"""What `peel eval` and `peel tamper` accept as TARGET: a run folder, a model folder, a .gguf file
(or a folder with model.gguf_file=NAME), a named model (smollm2-135m, testbed:base) or a hub id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peel.config import Config, load_config
from peel.errors import PeelError
from peel.models import model_location


@dataclass(frozen=True)
class Target:
    model: str  # what load_model_and_tokenizer receives
    run_folder: Path | None  # set when TARGET is a run folder
    config: Config  # the run's resolved config (or defaults), with the command line's overrides


def resolve_target(target: str, overrides: list[str]) -> Target:
    """A run folder brings its own config (so its eval and tamper settings apply); others use defaults."""
    path = Path(target)
    if (path / "config.yaml").is_file():
        model_folder = path / "model"
        if not (model_folder / "config.json").is_file():
            raise PeelError(f"run folder {target!r} has no model/ (the run did not finish; see its run.json)")
        return Target(str(model_folder), path, load_config(path / "config.yaml", overrides))
    config = load_config(None, overrides)
    if config.model.gguf_file is not None:  # TARGET is the folder holding the GGUF file
        return Target(model_location(target, config.model.gguf_file), None, config)
    if path.is_dir() and not (path / "config.json").is_file():
        raise PeelError(
            f"{target!r} is neither a run folder (config.yaml + model/) nor a model folder (config.json); "
            "for a folder of GGUF files add model.gguf_file=NAME.gguf"
        )
    return Target(target, None, config)


def output_folder(target: Target, output_dir: str | None, command: str) -> Path:
    if output_dir is not None:
        return Path(output_dir)
    if target.run_folder is not None:
        return target.run_folder
    raise PeelError(f"peel {command} on a model folder or hub id needs --output-dir (only run folders have a home)")


def load_target_model(target: Target):
    """Model and tokenizer on the GPU when there is one, in the run's training dtype."""
    import torch

    from peel.models import load_model_and_tokenizer

    settings = target.config.model
    model, tokenizer = load_model_and_tokenizer(
        target.model,
        dtype=target.config.train.dtype,
        attn_implementation=settings.attn_implementation,
        revision=settings.revision if target.run_folder is None else None,
        trust_remote_code=settings.trust_remote_code,
    )
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer
