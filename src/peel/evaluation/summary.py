"""lm-eval's output -> what peel keeps: each task's headline metric, correct_prob, sample counts.

A task's headline number is its accuracy (`acc`), unless HEADLINE_METRICS names another of its
metrics (the cloze WMDP set is read with `acc_norm`; its correct_prob twin reports correct_prob).
correct_prob, the probability the model gives the correct answer among the choices (a softmax
over the choices' log-likelihoods), is computed here from the per-sample log-likelihoods of every
multiple-choice task, so it is there for peel's tasks, lm-eval's and the testbed's alike. A group
(wmdp_bio_robust, mmlu) gets the mean over all of its documents, which is what weighting its
subtasks by size gives.
"""

from __future__ import annotations

import math
from importlib import metadata

from peel.errors import PeelError

# task -> the lm-eval metric that is its headline number; every other task reports acc.
HEADLINE_METRICS = {"wmdp_bio_cloze": "acc_norm", "wmdp_bio_cloze_correct_prob": "correct_prob"}
DEFAULT_METRIC = "acc"


def choice_probability(sample: dict) -> float | None:
    """Softmax over one multiple-choice sample's choice log-likelihoods, at the correct choice."""
    target, responses = sample.get("target"), sample.get("filtered_resps")
    if isinstance(target, bool) or not isinstance(target, int) or not isinstance(responses, list) or not responses:
        return None
    try:
        log_likelihoods = [float(response[0]) for response in responses]
    except (TypeError, IndexError, ValueError):
        return None
    if not 0 <= target < len(log_likelihoods):
        return None
    return probability_of(log_likelihoods, target)


def probability_of(log_likelihoods: list[float], index: int) -> float:
    """Softmax over the choices' log-likelihoods, at choice `index`."""
    top = max(log_likelihoods)
    weights = [math.exp(value - top) for value in log_likelihoods]
    return weights[index] / sum(weights)


def correct_probabilities(samples: dict[str, list], subtasks: dict[str, list]) -> dict[str, float]:
    """Mean correct_prob of each task and group with multiple-choice samples."""
    per_task = {name: [p for p in map(choice_probability, rows) if p is not None] for name, rows in samples.items()}

    def documents(name: str) -> list[float]:
        return per_task.get(name) or [p for child in subtasks.get(name, []) for p in documents(child)]

    names = set(per_task) | set(subtasks)
    return {name: sum(values) / len(values) for name in names if (values := documents(name))}


def summarize(output: dict, tasks: list[str], limit: int | None) -> dict:
    """{"tasks", "accuracy": {task: headline}, "correct_prob": {task: p}, "details": {every task and
    group: {"accuracy", "metric", "stderr", "samples"[, "correct_prob", "subtasks"]}}, "limit",
    "num_fewshot", "lm_eval_version"}."""
    counts = {name: value["effective"] for name, value in output.get("n-samples", {}).items()}
    subtasks = output.get("group_subtasks", {})
    probabilities = correct_probabilities(output.get("samples") or {}, subtasks)

    def count(name: str) -> int:
        if name in counts:
            return counts[name]
        return sum(count(child) for child in subtasks.get(name, []))

    details = {}
    for name, values in output["results"].items():
        metric = HEADLINE_METRICS.get(name, DEFAULT_METRIC)
        if f"{metric},none" not in values:
            continue
        entry = {
            "accuracy": float(values[f"{metric},none"]),
            "metric": metric,
            "stderr": as_number(values.get(f"{metric}_stderr,none")),
            "samples": count(name),
        }
        if name in probabilities:
            entry["correct_prob"] = probabilities[name]
        if subtasks.get(name):
            entry["subtasks"] = list(subtasks[name])
        details[name] = entry
    missing = [name for name in tasks if name not in details]
    if missing:
        expected = HEADLINE_METRICS.get(missing[0], DEFAULT_METRIC)
        raise PeelError(f"lm-eval returned no {expected} for {missing[0]!r}; accepted: multiple-choice tasks")
    return {
        "tasks": list(tasks),
        "accuracy": {name: details[name]["accuracy"] for name in tasks},
        "correct_prob": {name: details[name]["correct_prob"] for name in tasks if "correct_prob" in details[name]},
        "details": details,
        "limit": limit,
        # What lm-eval used, not what was asked: a task config that fixes its own count shows here.
        "num_fewshot": max((shots for name, shots in output.get("n-shot", {}).items() if name in details), default=0),
        "lm_eval_version": metadata.version("lm_eval"),
    }


def as_number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" when it has no standard error
