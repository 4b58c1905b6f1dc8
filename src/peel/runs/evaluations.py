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
