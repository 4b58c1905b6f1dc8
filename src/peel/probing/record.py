"""probe.json: what `peel probe` measured, per target and layer.

{"targets": {NAME: {"model", "probe": [{"layer", TASK: held-out accuracy, ...}],
                    "logit_lens": [{"layer", TASK: accuracy over every question, ...}],
                    ["original", "depth": [{"layer", TASK: accuracy with the original's later layers}]]}},
 "chance": {TASK: held-out accuracy of a probe that reads nothing}, "tasks",
 "kinds": {TASK: "label" | "answer" | "choice"} (linear.py),
 "questions": {TASK: {"train", "held_out"[, "answer_seen"]}}, "pooling", "train_share", "seed", "limit"}
"""

from __future__ import annotations

from pathlib import Path

from peel.errors import PeelError
from peel.runs.folder import PROBE_FILE, read_json, write_json

ACCEPTED = "probe.json as peel probe writes it (targets with probe and logit_lens rows, chance)"


def write_probe(folder: str | Path, document: dict) -> Path:
    path = Path(folder) / PROBE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, document)  # whole or not at all: peel report reads it
    return path


def read_probe(folder: str | Path) -> dict | None:
    """The folder's probe.json, None when it has none, a PeelError when it is not one."""
    path = Path(folder) / PROBE_FILE
    if not path.is_file():
        return None
    document = read_json(path, ACCEPTED)
    targets = document.get("targets") if isinstance(document, dict) else None
    if not isinstance(targets, dict) or not isinstance(document.get("chance"), dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("probe"), list) and isinstance(entry.get("logit_lens"), list)
        for entry in targets.values()
    ):
        raise PeelError(f"{path} is not a probe record; accepted: {ACCEPTED}")
    tasks = document.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(task, str) for task in tasks):
        # an older or hand-edited probe.json: its tasks are the ones it measured, chance's keys first
        measured = [key for entry in targets.values() for rows in entry.values() if isinstance(rows, list)
                    for row in rows if isinstance(row, dict) for key in row if key != "layer"]
        document = {**document, "tasks": list(dict.fromkeys([*document["chance"], *measured]))}
    return document


def best_layer(rows: list[dict], task: str) -> tuple[int, float] | None:
    """The layer with the highest accuracy on `task` among probe.json rows (the first on a tie)."""
    measured = [(row[task], -row["layer"]) for row in rows if isinstance(row.get(task), (int, float))]
    if not measured:
        return None
    accuracy, layer = max(measured)
    return -layer, accuracy
