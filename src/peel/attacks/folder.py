"""A target's attack folder: the plan, each finished attack, and tamper.json assembled from them.

  attacks/grid.json        the plan: each attack's name, kind, settings, and where the baseline comes from
  attacks/NAME.json        one finished attack: {"name", "kind", "settings", "target", "evaluation", "curve"}
  attacks/NAME.job.json    the Slurm job running that attack: {"job_id", "status"}
  tamper.json              the finished attacks, their worst case and summary (results.py)

Each attack is written whole once it ends, and tamper.json again after it, so a rerun reads the
finished attacks instead of running them again.
"""

from __future__ import annotations

import json
from pathlib import Path

from peel.attacks import results
from peel.attacks.baseline import find_baseline
from peel.attacks.plan import TargetPlan
from peel.errors import PeelError
from peel.runs.folder import ATTACKS_FOLDER, GRID_FILE, read_json, write_json



def attack_file(folder: Path, name: str) -> Path:
    return folder / ATTACKS_FOLDER / f"{name}.json"


def write_plan(target_plan: TargetPlan) -> None:
    target_plan.attacks_folder.mkdir(parents=True, exist_ok=True)
    write_json(target_plan.attacks_folder / GRID_FILE, {
        "target": target_plan.target.model,
        "tasks": target_plan.attacks[0].settings.tasks,
        "baseline_source": target_plan.baseline,
        "attacks": [target_plan.expected(attack) for attack in target_plan.attacks],
    })


def finished(target_plan: TargetPlan, force: bool = False) -> dict[str, dict]:
    """The plan's attacks already in the folder (name -> record). One of the same name run with
    other settings is an error, or with `force` is removed to run again."""
    done = {}
    for attack in target_plan.attacks:
        path = attack_file(target_plan.folder, attack.name)
        if not path.is_file():
            continue
        record = read_json(path, "an attack record as peel tamper writes it")
        expected = target_plan.expected(attack)
        held = {key: record.get(key) for key in expected} if isinstance(record, dict) else {}
        if held == json.loads(json.dumps(expected)) and results.is_curve(record.get("curve")):
            done[attack.name] = record
        elif force:
            path.unlink()
        else:
            differences = sorted(key for key in expected["settings"]
                                 if (held.get("settings") or {}).get(key) != expected["settings"][key])
            what = f"settings {', '.join(differences[:3])}" if differences else "target or evaluation settings"
            raise PeelError(f"{path} holds attack {attack.name!r} with other {what}; accepted: the same "
                            "settings to resume, another --output-dir, or --force to attack again")
    return done


def collect(folder: Path) -> dict:
    """Assemble tamper.json from grid.json and the finished attacks; again while attacks finish
    meanwhile (Slurm jobs collect concurrently: the last writer has seen every attack)."""
    grid = read_json(folder / ATTACKS_FOLDER / GRID_FILE, "grid.json as peel tamper writes it")
    seen, document = None, None
    while True:
        attacks, pending = [], []
        for expected in grid["attacks"]:
            path = attack_file(folder, expected["name"])
            record = read_json(path, "an attack record as peel tamper writes it") if path.is_file() else None
            if record is not None and all(record.get(key) == value for key, value in expected.items()):
                attacks.append({key: record[key] for key in ("name", "kind", "settings", "curve", "error") if key in record})
            else:
                pending.append(expected["name"])
        names = [attack["name"] for attack in attacks]
        if names == seen:
            return document
        document = results.document(grid["target"], grid["tasks"], attacks, find_baseline(grid["baseline_source"]), pending)
        results.write_tamper(folder, document)
        seen = names
