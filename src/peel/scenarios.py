"""`NAME:part` names: the built-in scenarios' models, corpora and question sets.

A scenario is a package (`peel.testbed`, `peel.elements`) that ships its artifacts and says what
they are in three tables:
- `NAMES`: part -> file or folder under the package's `ARTIFACTS` (e.g. "forget" -> forget.jsonl);
- `MODELS`: part -> a model name that `peel.models` resolves (e.g. "base" -> smollm2-135m);
- `MC_FILES`: lm-eval task -> its multiple-choice JSONL file (absolute path);
- `FEWSHOT_FILES` (optional): lm-eval task -> the questions its few-shot examples come from, where
  they must not be the evaluated ones (the testbed's part B); other tasks draw them from their
  own other questions.
Data loading, model loading and the evaluation tasks all resolve names through this module, so a
new scenario is a package and one line in `SCENARIOS`.

Import-light: a scenario package is imported only when one of its names is resolved.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from peel.errors import PeelError

# name prefix -> the package holding the scenario
SCENARIOS = {
    "testbed": "peel.testbed",  # a fictional world and two tiny models trained on it
    "elements": "peel.elements",  # chemical elements (forget) and countries (retain) in SmolLM2-135M
}


def package(scenario: str) -> ModuleType:
    if scenario not in SCENARIOS:
        raise PeelError(f"unknown scenario {scenario!r}; accepted: {', '.join(SCENARIOS)}")
    return importlib.import_module(SCENARIOS[scenario])


def is_scenario_name(name: str) -> bool:
    """True for `testbed:base`, `elements:forget`, ...: a known prefix followed by a colon."""
    return isinstance(name, str) and name.partition(":")[0] in SCENARIOS and ":" in name


def resolve(name: str) -> str:
    """The artifact path (absolute) or the model name behind `SCENARIO:part`."""
    scenario, _, part = name.partition(":")
    module = package(scenario)
    if part in getattr(module, "MODELS", {}):
        return module.MODELS[part]
    if part in module.NAMES:
        return str(module.ARTIFACTS / module.NAMES[part])
    accepted = ", ".join(f"{scenario}:{known}" for known in [*getattr(module, "MODELS", {}), *module.NAMES])
    raise PeelError(f"unknown {scenario} name {name!r}; accepted: {accepted}")


def is_scenario_model(name: str) -> bool:
    """True for a scenario's model (`testbed:base`, `testbed:filtered`, `elements:base`), not its data."""
    if not is_scenario_name(name):
        return False
    scenario, _, part = name.partition(":")
    module = package(scenario)
    return part in getattr(module, "MODELS", {}) or (part in module.NAMES and "." not in module.NAMES[part])


def defaults(model: str | None) -> dict:
    """The config a scenario's model brings where the user set nothing else: the scenario's forget,
    retain and attack text, its tasks (forget first, retain last) for evaluation and attacks, and
    float32 (its models are tiny; bfloat16 only loses precision on a CPU). {} for any other model."""
    if not isinstance(model, str) or not is_scenario_model(model):
        return {}
    scenario = model.partition(":")[0]
    tasks = list(package(scenario).MC_FILES)
    return {"data": {"forget": {"path": f"{scenario}:forget"}, "retain": {"path": f"{scenario}:retain"}},
            "eval": {"tasks": tasks}, "tamper": {"data": {"path": f"{scenario}:tamper"}, "tasks": tasks},
            "train": {"dtype": "float32"}}


def question_file(task: str) -> Path:
    """The multiple-choice file of a scenario task (`testbed_forget`, `elements_retain`, ...)."""
    scenario = task.partition("_")[0]
    files = package(scenario).MC_FILES
    if task not in files:
        raise PeelError(f"unknown {scenario} task {task!r}; accepted: {', '.join(files)}")
    return Path(files[task])


def fewshot_file(task: str) -> Path | None:
    """The few-shot question file of a scenario task, when it has one of its own."""
    files = getattr(package(task.partition("_")[0]), "FEWSHOT_FILES", {})
    return Path(files[task]) if task in files else None
