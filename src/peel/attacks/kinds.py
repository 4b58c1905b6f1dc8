"""The attack kinds: one table, each kind's settings, bounds, description and run in its own module.

A grid point chooses its kind with `kind:` (default fine_tune), e.g. `{kind: quantize, bits: 4}`;
its other keys are the kind's own options (bounded like any config key) and the tamper keys the
kind reads. Nothing outside this table names a kind: planning, the folder, results and the report
ask the table what a kind needs (its corpus, the original model) and what its curve means (whether
its step 0 is the untouched model).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from peel.attacks import few_shot, fine_tune, latent, orthogonalize, prompt, prune, quantize, soft_prompt
from peel.config import GRID_WIDE_KEYS, TamperConfig, build, deep_merge, flatten, to_dict
from peel.errors import PeelError

DEFAULT_KIND = "fine_tune"
FEW_SHOT = "few_shot"  # the kind of tamper.few_shot's attacks
# Tamper keys added after attack files were first written, recorded only when set (unset, they
# change nothing), so a grid's earlier attack files still match their attacks and resume.
UNSET_LATER_KEYS = {"eval_steps": []}
# The tamper keys a kind that trains its own tensors with the fine-tuning loop reads (its lr is its own).
TRAINING_KEYS = ("tasks", "dtype", "data", "max_length", "seed", "steps", "eval_every", "eval_steps", "per_device_batch_size",
                 "num_examples", "epochs", "optimizer", "lr_scheduler", "warmup_ratio", "warmup_steps", "weight_decay",
                 "max_grad_norm")


@dataclass(frozen=True)
class Kind:
    options: type | None  # dataclass of the kind's own keys; None: it has none
    tamper_keys: tuple[str, ...] | None  # the tamper keys its numbers depend on; None: every one of one attack
    run: Callable  # (Attack, Session) -> {"curve": [...], ["error": why it ended early]}
    untouched: Callable[[dict], bool]  # from a record's settings: is step 0 of its curve the model as it is?
    corpus: Callable | None = None  # (Attack) -> (DataSource, examples, seed, required) it reads, or None; found before loading
    needs_original: bool | Callable = False  # it compares the target with the model it was made from (or (Attack) -> whether)
    # (Attack) -> evaluations it runs after step 0; None: one, or none when it leaves the model as it is
    evaluations: Callable | None = None
    check: Callable | None = None  # (options, num_layers, where) -> None: refuses options the target's model cannot take
    variants: Callable | None = None  # (options) -> [(name suffix, options)]: the attacks one grid point stands for


KINDS = {
    "fine_tune": Kind(None, None, fine_tune.run, fine_tune.untouched, fine_tune.corpus, evaluations=fine_tune.evaluations),
    "few_shot": Kind(few_shot.Options, ("tasks", "dtype"), few_shot.run, few_shot.untouched),
    "quantize": Kind(quantize.Options, ("tasks", "dtype"), quantize.run, quantize.untouched),
    "orthogonalize": Kind(orthogonalize.Options, ("tasks", "dtype", "data", "max_length", "seed"),
                          orthogonalize.run, orthogonalize.untouched, orthogonalize.corpus, needs_original=True,
                          check=orthogonalize.check),
    "soft_prompt": Kind(soft_prompt.Options, TRAINING_KEYS, soft_prompt.run, soft_prompt.untouched, fine_tune.corpus,
                        evaluations=soft_prompt.evaluations),
    "latent": Kind(latent.Options, TRAINING_KEYS, latent.run, latent.untouched, fine_tune.corpus, evaluations=latent.evaluations,
                   check=latent.check),
    "prune": Kind(prune.Options, ("tasks", "dtype", "data", "max_length", "seed"), prune.run, prune.untouched, prune.corpus,
                  needs_original=prune.needs_original),
    "prompt": Kind(prompt.Options, ("tasks", "dtype"), prompt.run, prompt.untouched, variants=prompt.variants),
}


def kind(name: str, where: str = "tamper.kind") -> Kind:
    if name not in KINDS:
        raise PeelError(f"config key {where!r} got {name!r}; accepted: {', '.join(KINDS)}")
    return KINDS[name]


def needs_original(attack) -> bool:
    """Whether an attack compares the target with the model it was made from."""
    needs = KINDS[attack.kind].needs_original
    return needs(attack) if callable(needs) else needs


def variants(name: str, options: Any) -> list[tuple[str, Any]]:
    """(name suffix, options) of each attack a grid point of kind `name` stands for: itself alone, for most kinds."""
    entry = KINDS[name]
    return entry.variants(options) if entry.variants is not None else [("", options)]


def point_settings(section: TamperConfig, point: dict, where: str) -> tuple[str, TamperConfig, Any]:
    """(kind, tamper settings, the kind's options) of one grid point, every key checked."""
    if not isinstance(point, dict):
        raise PeelError(f"config key {where!r} got {point!r}; accepted: a mapping of tamper keys")
    name = point.get("kind", DEFAULT_KIND)
    entry = kind(name if isinstance(name, str) else repr(name), f"{where}.kind")
    rest = {key: value for key, value in point.items() if key != "kind"}
    own = {field.name for field in dataclasses.fields(entry.options)} if entry.options else set()
    if entry.tamper_keys is not None:
        accepted = ["kind", *sorted(own), *entry.tamper_keys]
        stray = sorted(key for key in rest if key not in own and key not in entry.tamper_keys)
        if stray:
            raise PeelError(f"unknown config key '{where}.{stray[0]}' for kind {name}; accepted keys here: {', '.join(accepted)}")
    options = build(entry.options, {key: rest[key] for key in own if key in rest}, prefix=f"{where}.") if entry.options else None
    return name, attack_settings(section, {key: value for key, value in rest.items() if key not in own}, where), options


def refuse_kind_options(overrides: list[str]) -> None:
    """`tamper.bits=4` names a kind's own option, which only a grid point can set: say so, rather
    than the config's "unknown config key" (the config does not know the kinds)."""
    section = {field.name for field in dataclasses.fields(TamperConfig)}
    for item in overrides:
        key, _, value = item.partition("=")
        parts = key.split(".")
        if len(parts) != 2 or parts[0] != "tamper" or parts[1] in section:
            continue
        owners = [name for name, entry in KINDS.items()
                  if entry.options and parts[1] in {field.name for field in dataclasses.fields(entry.options)}]
        if owners:
            raise PeelError(f"{item}: {parts[1]} is an option of the attack kind {' / '.join(owners)}, set per attack; accepted: "
                            f"--grid tamper.kind={owners[0]} --grid {key}={value or 'V1,V2'}, or "
                            f"tamper.grid=[{{kind: {owners[0]}, {parts[1]}: {value or 'V'}}}]")


def attack_settings(section: TamperConfig, point: dict, where: str) -> TamperConfig:
    """The tamper settings of one attack: the section with the point's keys (nested as in the
    section) replacing its own; the grid and few-shot lists, which describe the whole grid, left empty."""
    wide = [key for key in GRID_WIDE_KEYS if key in point]
    if wide:
        raise PeelError(f"config key '{where}.{wide[0]}' is not one attack's setting; accepted: other tamper keys")
    base = {**to_dict(section), "grid": [], "few_shot": []}  # tasks stay the section's
    return build(TamperConfig, deep_merge(base, point), prefix=f"{where}.")


def description(name: str, settings: TamperConfig, options: Any) -> dict:
    """The settings that decide an attack's numbers, as flat JSON values: the kind's options, then
    the tamper keys it reads (all of one attack's, for fine-tuning)."""
    entry = KINDS[name]
    # A kind whose options read differently in its records says how (few_shot's `few_shot: N`).
    own = {} if options is None else options.described() if hasattr(options, "described") else to_dict(options)
    tamper = {key: value for key, value in flatten(to_dict(settings)).items() if key.split(".")[0] not in ("grid", "few_shot")}
    if entry.tamper_keys is not None:
        tamper = {key: value for key, value in tamper.items() if key.split(".")[0] in entry.tamper_keys}
    tamper = {key: value for key, value in tamper.items() if not (key in UNSET_LATER_KEYS and value == UNSET_LATER_KEYS[key])}
    return {**own, **tamper}


def untouched_at_zero(record: dict) -> bool:
    """Whether step 0 of an attack record's curve is the model as it is (records of the first
    releases name no kind: they were fine-tuning attacks)."""
    entry = KINDS.get(record.get("kind", DEFAULT_KIND))
    return entry is not None and entry.untouched(record.get("settings", {}))


def evaluations(attack) -> int:
    """How many evaluations of the tracked tasks an attack adds to the untouched model's step 0,
    which every attack of a grid shares (what --dry-run estimates)."""
    entry = KINDS[attack.kind]
    if entry.evaluations is not None:
        return entry.evaluations(attack)
    return 0 if entry.untouched(attack.description()["settings"]) else 1
