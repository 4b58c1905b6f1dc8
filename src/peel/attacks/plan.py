"""An attack grid's plan: which attacks each target gets, every setting checked before any model loads.

The attacks are tamper.few_shot's few-shot prompts, then one attack per point of the grid
(`--grid tamper.KEY=V1,V2` combinations, else tamper.grid's list, else the section alone), each
of the kind its point names (kinds.py; default fine-tuning). The baseline is what the attacked
model's original knew (0-shot): where it comes from is part of the plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from peel.runs import jobs
from peel.attacks import kinds
from peel.attacks.baseline import baseline_source
from peel.config import GRID_WIDE_KEYS, Config, TamperConfig, flatten, to_dict
from peel.errors import PeelError
from peel.evaluation.harness import manager_for
from peel.runs.targets import Target, check_loadable, label, output_folders, resolve_targets
from peel.runs.folder import ATTACKS_FOLDER

__all__ = ["Attack", "TargetPlan", "label", "plan_attacks"]


@dataclass(frozen=True)
class Attack:
    name: str
    kind: str  # a name in kinds.KINDS
    settings: TamperConfig  # the tamper keys (a kind that reads few of them ignores the rest)
    options: Any = None  # the kind's own options (its Options dataclass), if it has any

    def description(self) -> dict:
        """Name, kind and the settings that decide the attack's numbers, as JSON values."""
        return {"name": self.name, "kind": self.kind, "settings": kinds.description(self.kind, self.settings, self.options)}


@dataclass
class TargetPlan:
    target: Target
    folder: Path
    attacks: list[Attack]
    baseline: dict  # where the baseline comes from (see `baseline_source`)
    original: str | None = None  # the model the target was made from, for kinds that compare with it

    @property
    def attacks_folder(self) -> Path:
        return self.folder / ATTACKS_FOLDER

    def expected(self, attack: Attack) -> dict:
        """What an attack file of this plan holds besides its curve: a file that differs is another attack's."""
        evaluation = self.target.config.eval
        return {**attack.description(), "target": self.target.model,
                "evaluation": {"max_length": evaluation.max_length, "limit": evaluation.limit}}


def plan_attacks(names: list[str], overrides: list[str], grid_items: list[str], output_dir: str | None,
         baseline_model: str | None = None, compared: list[str] = ()) -> list[TargetPlan]:
    """The attacks of every target, settings checked and folders checked writable (nothing written).

    `compared` targets are attacked alike, into FIGURES/compare/<label> (FIGURES: `figure_folder`).
    """
    kinds.refuse_kind_options(overrides)
    targets = resolve_targets([*names, *compared], overrides)
    config = targets[0].config
    attacks = grid_attacks(config, grid_items, overrides)
    folders = output_folders(targets[: len(names)], names, output_dir, "tamper")
    home = figure_folder(folders, output_dir)
    folders += [home / "compare" / label(name) for name in compared]
    source = baseline_source(targets, config, baseline_model)
    check_original(attacks, source["model"], "give --baseline MODEL, the model the targets were made from")
    check_loadable_models(targets, baseline_model, config)
    check_models(attacks, targets)
    manager_for(sorted({task for attack in attacks for task in attack.settings.tasks}), config.eval.include_path)
    return [TargetPlan(target, folder, attacks, source, source["model"]) for target, folder in zip(targets, folders)]


def check_loadable_models(targets: list[Target], baseline_model: str | None, config: Config) -> None:
    """Every target and the --baseline model exist and have readable configs and weights headers:
    a typo is refused before anything is written, not after the first model took minutes to load."""
    for target in targets:
        check_loadable(target.model, target.config, pinned=target.run_folder is None)
    if baseline_model is not None:
        try:
            check_loadable(baseline_model, config)
        except PeelError as error:
            raise PeelError(f"--baseline: {error}") from None


def check_models(attacks: list[Attack], targets: list[Target]) -> None:
    """Options that depend on the attacked model (layers that must exist), checked against each
    target's model config before any weights load."""
    from peel.runs.targets import target_num_layers

    checked = [attack for attack in attacks if kinds.KINDS[attack.kind].check is not None]
    for target in targets if checked else []:
        num_layers = target_num_layers(target)
        for attack in checked:
            kinds.KINDS[attack.kind].check(attack.options, num_layers, f"attack {attack.name!r}")


def check_original(attacks: list[Attack], original: str | None, remedy: str) -> None:
    """A kind that compares the target with its original cannot run without one."""
    needing = next((attack.name for attack in attacks if kinds.needs_original(attack)), None)
    if needing is not None and original is None:
        raise PeelError(f"attack {needing!r} needs the original model and none is known; accepted: {remedy}")


def check_attack_data(attacks: list[Attack]) -> None:
    """Every corpus an attack reads has usable text, and as much as a count set for it asks (a
    default count takes what there is): found before any model loads."""
    from peel.data import load_texts

    checked = set()
    for attack in attacks:
        reads = kinds.KINDS[attack.kind].corpus
        found = reads(attack) if reads is not None else None
        if found is None:
            continue
        source, count, seed, required = found
        key = (json.dumps(to_dict(source), sort_keys=True), count, seed, required)
        if key not in checked:
            load_texts(source, count, seed, required=required)
            checked.add(key)


def figure_folder(folders: list[Path], output_dir: str | None) -> Path:
    """Where a figure of several models goes: --output-dir, else the first target's folder."""
    return Path(output_dir) if output_dir is not None and len(folders) > 1 else folders[0]


def grid_attacks(config: Config, grid_items: list[str], overrides: list[str] = ()) -> list[Attack]:
    """Few-shot attacks first (few_shot 0 is the untouched model, step 0 of the others), then one
    attack per grid point, of the kind it names, each named after what its point sets."""
    section = replace(config.tamper, dtype=config.tamper.dtype or config.train.dtype)
    if grid_items:
        grid = jobs.parse_grid(grid_items)
        points = [(jobs.run_name(pairs), nested(pairs)) for pairs in jobs.points(grid)]
    else:
        points = [(jobs.run_name([(key, value_text(value)) for key, value in flatten(point).items()]) or "attack", point)
                  for point in section.grid] or [("attack", {})]
    refuse_overridden(overrides, [point for _, point in points])
    wheres = ["tamper" if grid_items else f"tamper.grid[{index}]" for index in range(len(points))]
    prompted = [(f"few_shot={shots}", {"kind": kinds.FEW_SHOT, "shots": shots}) for shots in dict.fromkeys(section.few_shot)]
    attacks = []
    for (name, point), where in zip([*prompted, *points], ["tamper.few_shot"] * len(prompted) + wheres):
        kind, settings, options = kinds.point_settings(section, point, where)
        for suffix, chosen in kinds.variants(kind, options):
            attacks.append(Attack(name + suffix, kind, replace(settings, dtype=settings.dtype or section.dtype), chosen))
    jobs.check_unique([attack.name for attack in attacks], "attack name")
    return attacks


def nested(pairs: list[tuple[str, str]]) -> dict:
    """[("tamper.data.path", "x")] -> {"data": {"path": "x"}}: a --grid point as tamper keys, values read as YAML."""
    point: dict = {}
    for key, text in pairs:
        parts = key.split(".")
        if parts[0] != "tamper" or len(parts) < 2 or parts[1] in GRID_WIDE_KEYS:
            raise PeelError(f"--grid {key}: accepted keys are one attack's tamper settings, e.g. tamper.lr "
                            f"(not {', '.join('tamper.' + wide for wide in GRID_WIDE_KEYS)})")
        node = point
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(text)
        except yaml.YAMLError:
            node[parts[-1]] = text
    return point


def value_text(value) -> str:
    """How a grid point's value reads in an attack's name (2e-05, cosine, testbed:retain)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def refuse_overridden(overrides: list[str], points: list[dict]) -> None:
    """A command-line override of a key the grid's attacks set would be silently replaced: refuse it."""
    swept = {key for point in points for key in flatten(point)}
    for item in overrides:
        key = item.partition("=")[0]
        if not key.startswith("tamper.") or key.split(".")[1] in GRID_WIDE_KEYS:
            continue
        own = key.removeprefix("tamper.")
        clash = next((other for other in sorted(swept) if own == other or other.startswith(own + ".")
                      or own.startswith(other + ".")), None)
        if clash:
            raise PeelError(f"{item} is replaced by the grid's attacks, which set tamper.{clash}; accepted: "
                            f"--grid {key}=V1,V2 to sweep it, or tamper.grid=[] for one attack with these settings")

