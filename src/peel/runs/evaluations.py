"""eval.json: one evaluation of a model, optionally with the baseline it is compared against.

Format: the dict `evaluate` returns plus "model" (what was evaluated) and, when known,
"baseline" (the same shape, for the original model).
"""

from __future__ import annotations

from pathlib import Path

from peel.errors import PeelError
from peel.runs.folder import EVAL_FILE, read_json, write_json



def write_evaluation(folder: str | Path, model: str, results: dict, baseline: dict | None = None) -> Path:
    record = {"model": model, **results}
    if baseline is not None:
        record["baseline"] = baseline
    path = Path(folder) / EVAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)  # whole or not at all: report and resume read it
    return path


def read_evaluation(folder: str | Path) -> dict | None:
    """The folder's eval.json, None when it has none, a PeelError when it is not readable."""
    path = Path(folder) / EVAL_FILE
    if not path.is_file():
        return None
    record = read_json(path, "eval.json as peel eval writes it")
    if not isinstance(record, dict) or not isinstance(record.get("accuracy"), dict):
        raise PeelError(f"{path} has no 'accuracy' mapping; was it written by peel eval?")
    return record


def measured_line(folder: str | Path) -> str:
    """What a finished run measured, in one line: each task's accuracy beside the baseline's (eval.json),
    or that nothing was evaluated and how to have it."""
    record = read_evaluation(folder)
    if record is None:
        return "measured: nothing (eval.tasks is empty); peel eval RUN --tasks ... or eval.tasks=[...] evaluates it"
    baseline = (record.get("baseline") or {}).get("accuracy", {})
    parts = [f"{task} {accuracy:.4f}" + (f" (baseline {baseline[task]:.4f})" if task in baseline else "")
             for task, accuracy in record["accuracy"].items()]
    return f"measured: {', '.join(parts)}; chance 0.25 on four choices (eval.json)"
