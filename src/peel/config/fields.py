"""The field machinery every config section is built with: a field's default, help and accepted
range (`option`, `Bound`), building a section from a mapping with every key and value checked
(`build`), and the `--help` text made from the fields (`help_lines`). Nothing here knows a section.

An unknown key or a wrong type is a `PeelError` naming the key, the value and what is accepted.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

import yaml

from peel.errors import PeelError


@dataclass(frozen=True)
class Bound:
    """The accepted range of a numeric field, declared beside its default and shown by `--help`.

    Applies to the field's value, or to each item of a list; None (where a field allows it) is
    always accepted. Every float is also required to be finite, whatever its bound.
    """

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False

    def accepts(self, value: float) -> bool:
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
            return False
        if self.maximum is not None and (value >= self.maximum if self.exclusive_maximum else value > self.maximum):
            return False
        return True

    def __str__(self) -> str:
        low = None if self.minimum is None else f"{'>' if self.exclusive_minimum else '>='} {self.minimum:g}"
        high = None if self.maximum is None else f"{'<' if self.exclusive_maximum else '<='} {self.maximum:g}"
        if low and high:
            return f"in {'(' if self.exclusive_minimum else '['}{self.minimum:g}, {self.maximum:g}{')' if self.exclusive_maximum else ']'}"
        return low or high or "any finite number"


POSITIVE = Bound(minimum=0, exclusive_minimum=True)
NON_NEGATIVE = Bound(minimum=0)
AT_LEAST_ONE = Bound(minimum=1)
FRACTION = Bound(minimum=0, maximum=1)


def option(default: Any = dataclasses.MISSING, help: str = "", bound: Bound | None = None, **kwargs: Any) -> Any:
    """A dataclass field with help text and, for numbers, its accepted range; mutable defaults
    are copied per instance."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        value = default
        kwargs["default_factory"] = lambda: copy.deepcopy(value)
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(metadata={"help": help, "bound": bound}, **kwargs)



def deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def to_dict(config: Any) -> Any:
    """Plain dicts and lists, the form saved as config.yaml."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, list):
        return [to_dict(item) for item in config]
    return config


def flatten(values: dict, prefix: str = "", leaves: tuple[str, ...] = (), separator: str = ".") -> dict:
    """`{"train": {"lr": 1}}` -> `{"train.lr": 1}`; mappings under a key in `leaves` stay whole."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key not in leaves:
            flat.update(flatten(value, f"{prefix}{key}{separator}", leaves, separator))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
            values[name] = check_bound(convert(hints[name], raw[name], key, spec), spec.metadata.get("bound"), key)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise PeelError(f"config key {key!r} is required")
    section = cls(**values)
    if hasattr(section, "validate"):  # checks across a section's keys, after each key's own
        section.validate()
    return section


def is_number_field(section: type, name: str) -> bool:
    """Whether `section`'s field `name` holds one number (an int or a float, possibly null)."""
    hint = typing.get_type_hints(section)[name]
    options = [option for option in typing.get_args(hint) if option is not type(None)] or [hint]
    return all(option in (int, float) for option in options)


def check_bound(value: Any, bound: Bound | None, key: str) -> Any:
    """`value` when it (or each number in it, for a list) lies in `bound`; a PeelError otherwise."""
    if bound is None:
        return value
    items = value if isinstance(value, list) else [value]
    for index, item in enumerate(items):
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not bound.accepts(item):
            where = f"{key}[{index}]" if isinstance(value, list) else key
            kind = "an integer" if isinstance(item, int) else "a number"
            raise PeelError(f"config key {where!r} got {item!r}; accepted: {kind} {bound}")
    return value


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
    if origin is dict:
        # Only tamper.grid's points are free mappings; their values are checked where they apply.
        if not isinstance(value, dict) or not all(isinstance(name, str) for name in value):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: a mapping of setting: value")
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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: a string")
        return value
    raise TypeError(f"peel.config does not know how to check type {hint!r} (key {key})")


def describe(hint: Any, choice: Callable[[Any], str] = str) -> str:
    """A type as errors and the reference name what is accepted; `choice` writes each literal choice."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return "{" + ", ".join(f.name for f in dataclasses.fields(hint)) + "}"
    if origin is Literal:
        return " | ".join(choice(value) for value in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(arm, choice) for arm in typing.get_args(hint))
    if origin is list:
        return f"list of {describe(typing.get_args(hint)[0], choice)}"
    if origin is dict:
        return "mapping"
    if hint is type(None):
        return "null"
    if hint is bool:
        return "true | false"
    return getattr(hint, "__name__", str(hint))


def help_lines(section: Any, prefix: str = "") -> list[str]:
    """Two lines per leaf key of `section` (`dotted.key = default`, then its help): the text of `--help`."""
    lines = []
    for spec in dataclasses.fields(section):
        value = getattr(section, spec.name)
        key = f"{prefix}{spec.name}"
        # A field declared as one section is shown key by key; one that may also be something else
        # (unlearn.layers: a list or a range) is one value.
        if dataclasses.is_dataclass(typing.get_type_hints(type(section))[spec.name]):
            lines.extend(help_lines(value, prefix=f"{key}."))
        else:
            shown = yaml.safe_dump(to_dict(value), default_flow_style=True, width=math.inf).strip().removesuffix("...").strip()
            bound = spec.metadata.get("bound")
            accepted = f"  ({bound})" if bound is not None else ""
            lines.append(f"  {key} = {shown}{accepted}\n      {spec.metadata.get('help', '')}")
    return lines
