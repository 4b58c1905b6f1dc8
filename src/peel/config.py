"""Configuration: nested dataclasses, YAML files, dotted `key=value` overrides, validation.

Every default lives in a dataclass field below and every field's `help` is what
`peel unlearn --help` prints, so the documentation cannot drift from the code.
Values are checked against the field's type when loaded; an unknown key or a wrong type is a
`PeelError` naming the key, the value and what is accepted.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from peel.errors import PeelError


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with help text; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        value = default
        kwargs["default_factory"] = lambda: copy.deepcopy(value)
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(metadata={"help": help}, **kwargs)


@dataclass
class ModelConfig:
    name_or_path: str = option(
        "testbed:base",
        "Hugging Face hub id, local folder in save_pretrained layout, .gguf file, smollm2-135m (a packaged "
        "GGUF file), or a scenario model: testbed:base / testbed:filtered / elements:base.",
    )
    gguf_file: str | None = option(
        None, "GGUF file inside the name_or_path folder (dequantized to float32 once, cached); None = not GGUF."
    )
    revision: str | None = option(None, "Hub revision (branch, tag or commit) to load.")
    attn_implementation: str | None = option(
        None, "Attention kernel passed to from_pretrained (sdpa, eager, flash_attention_2); None = library default."
    )
    trust_remote_code: bool = option(False, "Run model code shipped with a hub repository. Off unless you ask.")


@dataclass
class DataSource:
    path: str = option("", "Hub dataset id, or a local .jsonl / .parquet / .txt file or folder, or testbed:NAME / elements:NAME.")
    name: str | None = option(None, "Hub dataset configuration name (e.g. wikitext-103-raw-v1).")
    split: str = option("train", "Dataset split.")
    text_field: str = option("text", "Column holding the text.")


@dataclass
class ChatSource:
    path: str | None = option(None, "Chat dataset mixed into retain data (e.g. HuggingFaceH4/ultrachat_200k); None = off.")
    name: str | None = option(None, "Hub dataset configuration name.")
    split: str = option("train_sft", "Dataset split.")
    messages_field: str = option("messages", "Column holding the list of {role, content} messages.")
    fraction: float = option(0.25, "Share of the retain examples taken from the chat data, rendered with the chat template.")


@dataclass
class DataConfig:
    forget: DataSource = option(DataSource(path="testbed:forget"), "Forget corpus (the knowledge to remove).")
    retain: DataSource = option(DataSource(path="testbed:retain"), "Retain corpus (the knowledge to keep).")
    chat: ChatSource = option(ChatSource(), "Optional chat data mixed into the retain corpus.")
    num_examples: int = option(1024, "Forget examples per phase (and as many retain examples).")
    max_length: int = option(512, "Tokens per example; longer texts are truncated.")


@dataclass
class LayerRange:
    start: int | None = option(None, "First (deepest) target layer; None = the model's last layer.")
    end: int = option(0, "Last (shallowest) target layer, inclusive when the step lands on it.")
    step: int = option(4, "Distance between target layers.")


@dataclass
class LoraOptions:
    rank: int = option(16, "LoRA rank r.")
    alpha: int = option(16, "LoRA alpha (scale = alpha / r).")
    dropout: float = option(0.0, "LoRA dropout.")
    target_modules: list[str] | str = option(
        "all-linear", "Modules given adapters: all-linear, or a list of module names (e.g. [query_key_value])."
    )


@dataclass
class UnlearnConfig:
    layers: list[int] | LayerRange = option(
        LayerRange(start=None, end=0, step=4),
        "Target layers, back to front: {start, end, step} or an explicit list such as [28, 24, 20, 16].",
    )
    adapter: Literal["lora", "full"] = option("lora", "lora: adapters in every layer; full: only the target layer trains in its phase.")
    lora: LoraOptions = option(LoraOptions(), "LoRA settings (adapter: lora).")
    forget_loss: Literal["random_ce", "max_entropy_kl"] = option(
        "random_ce", "Forget loss on the probe logits, divided by log(vocab)."
    )
    retain_loss: Literal["l2", "kl", "nll"] = option(
        "l2", "l2: hidden-state distance to the original; kl: KL(original || current) on logits; nll: language-model loss."
    )
    retain_layers: list[int] | Literal["all", "target"] = option(
        "all", "Layers whose hidden states the l2 retain loss compares: a list, all, or target."
    )
    remove_coef: float = option(10.0, "Forget loss coefficient (ramps to 0.75x within a phase).")
    retain_coef: float = option(5.0, "Retain loss coefficient (ramped within a phase, see retain_ramp).")
    retain_ramp: Literal["from_zero", "from_quarter"] = option(
        "from_zero", "Retain coefficient within a phase: from_zero = coef*p, from_quarter = coef*(0.25+0.75p)."
    )
    grad_filter: Literal["none", "same_sign", "asymmetric"] = option(
        "none",
        "Combine forget and retain gradients: none = sum; same_sign = keep elements where they agree; "
        "asymmetric = drop forget elements that disagree, keep all retain.",
    )
    l2sp_coef: float = option(0.0, "L2-SP: coef * ||w - w0||^2 on the target layer; 0 = off.")


@dataclass
class TrainConfig:
    lr: float = option(1e-4, "Peak learning rate.")
    optimizer: Literal["adamw"] = option("adamw", "Optimizer.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Clip the combined gradient to this norm; 0 = off.")
    lr_scheduler: Literal["linear", "constant", "cosine"] = option(
        "linear", "Learning-rate schedule within each phase (a fresh optimizer per phase)."
    )
    warmup_ratio: float = option(0.0, "Share of each phase spent warming up the learning rate.")
    per_device_batch_size: int = option(4, "Examples per forward pass on one device.")
    global_batch_size: int = option(32, "Examples per optimizer step over all devices; accumulation is derived.")
    epochs_per_layer: int = option(1, "Passes over the examples in each phase.")
    dtype: Literal["bfloat16", "float32"] = option("bfloat16", "Weight and compute dtype.")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward to save memory.")
    seed: int = option(0, "Seed for data order, random targets and initialisation.")
    checkpoint_every: int = option(0, "Save a resumable checkpoint every N optimizer steps (and at each phase end); 0 = phase ends only.")


@dataclass
class EvalConfig:
    tasks: list[str] = option([], "lm-eval tasks run on the baseline and the result, e.g. [wmdp_bio_robust, mmlu].")
    batch_size: int = option(16, "lm-eval batch size.")
    max_length: int = option(2048, "Longest sequence lm-eval feeds the model.")
    limit: int | None = option(None, "Evaluate only the first N documents of each task (quick checks).")
    every_phase: bool = option(False, "Also evaluate after each phase (accuracy vs phase in metrics.jsonl).")


@dataclass
class TamperConfig:
    data: DataSource = option(
        DataSource(path="Unlearning/WMDP-Bio-Remove-Dataset"), "Text the attacker fine-tunes on."
    )
    adapter: Literal["full", "lora"] = option("full", "Fine-tune all weights or a LoRA adapter.")
    lr: float = option(2e-5, "Attack learning rate.")
    steps: int = option(100, "Attack optimizer steps.")
    per_device_batch_size: int = option(4, "Examples per attack step.")
    num_examples: int = option(512, "Attack examples.")
    max_length: int = option(512, "Tokens per attack example.")
    tasks: list[str] = option(["wmdp_bio_robust"], "Tasks evaluated during the attack.")
    eval_every: int = option(10, "Evaluate every N attack steps (and at step 0).")
    seed: int = option(0, "Seed for the attack's data order.")


@dataclass
class Config:
    model: ModelConfig = option(ModelConfig(), "The model to unlearn.")
    data: DataConfig = option(DataConfig(), "Forget and retain corpora.")
    unlearn: UnlearnConfig = option(UnlearnConfig(), "The unlearning method.")
    train: TrainConfig = option(TrainConfig(), "Optimisation.")
    eval: EvalConfig = option(EvalConfig(), "Evaluation with lm-eval-harness.")
    tamper: TamperConfig = option(TamperConfig(), "The fine-tuning (tampering) attack.")
    output_dir: str = option("runs/default", "The run folder.")
    notes: str = option("", "Free text shown in the Notes column of reports.")


# --------------------------------------------------------------------------------------------
# Loading, overriding and checking


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file (and the files it names as `base`), then `dotted.key=value` overrides."""
    raw = read_yaml(Path(path)) if path is not None else {}
    config = build(Config, raw, prefix="")
    return apply_overrides(config, overrides)


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file as a mapping. `base: other.yaml` (relative to the file) is read first and
    deep-merged under it, so a family of configs states only what differs from its base."""
    if not path.is_file():
        raise PeelError(f"config file {str(path)!r} does not exist")
    if path.resolve() in seen:
        raise PeelError(f"config file {str(path)!r} names itself as a base (through {[str(p) for p in seen]})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise PeelError(f"config file {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise PeelError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise PeelError(f"config key 'base' in {str(path)!r} got {base!r}; accepted: a path to another config file")
    return deep_merge(read_yaml(path.parent / base, (*seen, path.resolve())), raw)


def deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Return a copy of `config` with each `dotted.key=value` applied (the value is parsed as YAML)."""
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
    return build(Config, raw, prefix="")


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


def to_dict(config: Any) -> Any:
    """Plain dicts and lists, the form saved as config.yaml."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, list):
        return [to_dict(item) for item in config]
    return config


def flatten(values: dict, prefix: str = "", leaves: tuple[str, ...] = ()) -> dict:
    """`{"train": {"lr": 1}}` -> `{"train.lr": 1}`; mappings under a key in `leaves` stay whole."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key not in leaves:
            flat.update(flatten(value, f"{prefix}{key}.", leaves))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, checking every key and value."""
    if not isinstance(raw, dict):
        raise PeelError(f"config key {prefix.rstrip('.') or 'config'!r} got {raw!r}; accepted: a mapping of {describe(cls)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise PeelError(f"unknown config key {key!r}; accepted keys here: {', '.join(known)}")
    values = {}
    for name, spec in known.items():
        key = f"{prefix}{name}"
        if name in raw:
            values[name] = convert(hints[name], raw[name], key, spec)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise PeelError(f"config key {key!r} is required")
    return cls(**values)


def convert(hint: Any, value: Any, key: str, spec: dataclasses.Field | None = None) -> Any:
    """Check `value` against type `hint` and return it in that type (ints widen to floats)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        default = spec.default_factory() if spec is not None and spec.default_factory is not dataclasses.MISSING else None
        if isinstance(value, dict) and type(default) is hint:
            # A partial section (e.g. only `lr`) keeps the field's own defaults for the rest.
            value = {**to_dict(default), **value}
        return build(hint, value, prefix=f"{key}.")
    if origin in (Union, types.UnionType):
        options = [candidate for candidate in typing.get_args(hint) if candidate is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if isinstance(value, dict):
            for candidate in options:
                if dataclasses.is_dataclass(candidate):
                    return convert(candidate, value, key, spec)
        for candidate in options:
            if dataclasses.is_dataclass(candidate):
                continue
            try:
                return convert(candidate, value, key)
            except PeelError:
                pass
        accepted = " or ".join(describe(candidate) for candidate in typing.get_args(hint))
        raise PeelError(f"config key {key!r} got {value!r}; accepted: {accepted}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise PeelError(f"config key {key!r} got {value!r}; accepted: {', '.join(map(str, choices))}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: a list of {describe(item_type)}")
        return [convert(item_type, item, f"{key}[{index}]") for index, item in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: an integer")
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads `5e-4` (no dot) as a string; accept what Python reads as a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: a string")
        return value
    raise TypeError(f"config.py does not know how to check type {hint!r} (key {key})")


def describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return "{" + ", ".join(f.name for f in dataclasses.fields(hint)) + "}"
    if origin is Literal:
        return " | ".join(map(str, typing.get_args(hint)))
    if origin is list:
        return f"list of {describe(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def help_lines(section: Any = None, prefix: str = "") -> list[str]:
    """Two lines per leaf key (`dotted.key = default`, then its help): the text of `--help`."""
    section = Config() if section is None else section
    lines = []
    for spec in dataclasses.fields(section):
        value = getattr(section, spec.name)
        key = f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, LayerRange):
            lines.extend(help_lines(value, prefix=f"{key}."))
        else:
            shown = yaml.safe_dump(to_dict(value), default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"  {key} = {shown}\n      {spec.metadata.get('help', '')}")
    return lines
