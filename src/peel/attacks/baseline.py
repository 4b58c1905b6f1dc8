"""The baseline of an attack grid: what the attacked model's original knew (0-shot), and where it comes from."""

from __future__ import annotations

from peel.config import Config
from peel.runs.targets import Target, load_target_model
from peel.models import model_location


def baseline_source(targets: list[Target], config: Config, model: str | None) -> dict:
    """Where the baseline comes from: --baseline MODEL, else the first run folder's own baseline
    (the eval cache for the model it unlearned, else its eval.json). Kept in grid.json; a caller
    that measured the baseline itself puts it under "given" instead."""
    run = next((target.run_folder for target in targets if target.run_folder is not None), None)
    original = model or (model_location(config.model.name_or_path, config.model.gguf_file) if run is not None else None)
    return {
        "model": original,
        "revision": config.model.revision if model is None else None,
        "eval_json": str(run) if run is not None and model is None else None,
        "tasks": list(config.tamper.tasks),
        "limit": config.eval.limit,
        "max_length": config.eval.max_length,
        "include_path": config.eval.include_path,
    }


def find_baseline(source: dict) -> dict[str, float] | None:
    """The baseline accuracies known now, without evaluating anything: given, else cached for
    exactly these tasks and settings, else the run's eval.json."""
    from peel.evaluation import load_baseline
    from peel.runs.evaluations import read_evaluation

    found: dict[str, float] = {}
    if source.get("eval_json"):
        evaluation = read_evaluation(source["eval_json"]) or {}
        found.update((evaluation.get("baseline") or {}).get("accuracy", {}))
    if source.get("model"):
        cached = load_baseline(source["model"], source["tasks"], source["limit"], source["max_length"], source["revision"],
                               source.get("include_path"))
        found.update((cached or {}).get("accuracy", {}))
    found.update(source.get("given") or {})
    found = {task: accuracy for task, accuracy in found.items() if task in source["tasks"]}
    return found or None


def evaluate_baseline(source: dict, config: Config) -> None:
    """Evaluate the baseline model into the eval cache, unless it is there already."""
    from peel.evaluation import cached_baseline, evaluate

    def compute() -> dict:
        model, tokenizer = load_target_model(Target(source["model"], None, config))
        return evaluate(model, tokenizer, source["tasks"], config.eval.batch_size, source["max_length"], source["limit"],
                        include_path=source.get("include_path"))

    cached_baseline(source["model"], source["tasks"], source["limit"], source["max_length"], compute, source["revision"],
                    source.get("include_path"))
