"""tamper.json: the attacks on one model, their worst case and how fast it recovers.

    {"target": what was attacked, "tasks": [...], "retain_task": name or null,
     "baseline": {task: accuracy} or null, "pending": [attacks not finished yet],
     "attacks": [{"name", "kind": a name in kinds.KINDS, "settings": {...},
                  "curve": [{"step", TASK: accuracy, ...}], ["error": why it stopped early]}],
     "worst_case": [{"step", TASK: max over the attacks evaluated at that step}],
     "summary": {FORGET_TASK: {"step0", "worst", "worst_step", "worst_attack", "retain_at_worst",
                               "steps_to_recover": {"50": step or null, "90": step or null} or null}}}

`steps_to_recover` is null without a baseline, and when step 0 is already at or above the
baseline: nothing was lost, so there is nothing to recover (it never reads "step 0" then).

The tracked tasks are the forget task(s) first and, with two or more, the retain task last. A
few-shot, quantization or orthogonalization attack's curve is its one evaluation, at step 0. Pure functions on plain data (no torch),
so `peel report` reads results anywhere. The first peel releases wrote a bare curve (a list of
rows); `read_tamper` turns one into a document with a single attack.
"""

from __future__ import annotations

from pathlib import Path

from peel.attacks.kinds import DEFAULT_KIND, untouched_at_zero
from peel.config import split_tasks
from peel.errors import PeelError
from peel.runs.folder import TAMPER_FILE, read_json, write_json

# Shares of the lost accuracy (baseline - step 0) whose recovery is reported, in percent.
RECOVERY_SHARES = (50, 90)
# Comparisons of accuracies computed different ways (a difference of sums) must not hinge on rounding.
TOLERANCE = 1e-9


def worst_case(curves: list[list[dict]]) -> list[dict]:
    """At every evaluated step, each task's maximum over the curves that evaluated it there."""
    envelope: dict[int, dict] = {}
    for curve in curves:
        for row in curve:
            point = envelope.setdefault(row["step"], {"step": row["step"]})
            for task, accuracy in row.items():
                if task != "step":
                    point[task] = max(point.get(task, accuracy), accuracy)
    return [envelope[step] for step in sorted(envelope)]


def step_zero(attacks: list[dict], task: str) -> float | None:
    """The untouched model's accuracy: step 0 of the attacks whose step 0 is the model as it is
    (fine-tuning attacks have not trained yet at step 0; a 0-shot prompt is no attack)."""
    unprompted = [attack for attack in attacks if untouched_at_zero(attack)]
    values = [row[task] for attack in (unprompted or attacks) for row in attack["curve"] if row["step"] == 0 and task in row]
    return min(values) if values else None


def steps_to_recover(worst: list[dict], task: str, start: float, baseline: float) -> dict[str, int | None] | None:
    """For each share s in RECOVERY_SHARES: the first evaluated step at which the worst case has
    regained s% of what was lost (baseline - start); None when it never does. None as a whole
    when nothing was lost (start at or above the baseline): every share would read "step 0"."""
    if not lost(start, baseline):
        return None
    found = {}
    for share in RECOVERY_SHARES:
        target = start + share / 100 * (baseline - start)
        found[str(share)] = next((row["step"] for row in worst if task in row and row[task] >= target - TOLERANCE), None)
    return found


def lost(start: float, baseline: float) -> bool:
    """Whether the untouched model lost anything against the baseline (recovery means nothing otherwise)."""
    return start < baseline - TOLERANCE


def strongest(attacks: list[dict], task: str) -> tuple[float, int, str] | None:
    """(accuracy, step, attack name) of the highest accuracy any attack reached; ties go to the
    earliest step, then to the attack listed first."""
    best = None
    for attack in attacks:
        for row in attack["curve"]:
            if task in row and (best is None or row[task] > best[0] + TOLERANCE
                                or (abs(row[task] - best[0]) <= TOLERANCE and row["step"] < best[1])):
                best = (row[task], row["step"], attack["name"])
    return best


def summarize(attacks: list[dict], tasks: list[str], baseline: dict[str, float] | None) -> dict:
    """The summary of each forget task: step 0, the worst case, which attack reached it (and when),
    the retain task's accuracy in that attack at that step, and the steps to recover."""
    forget_tasks, retain_task = split_tasks(tasks)
    worst = worst_case([attack["curve"] for attack in attacks])
    by_name = {attack["name"]: attack for attack in attacks}
    summary = {}
    for task in forget_tasks:
        found, start = strongest(attacks, task), step_zero(attacks, task)
        if found is None or start is None:
            continue
        accuracy, step, name = found
        retain = next((row.get(retain_task) for row in by_name[name]["curve"] if row["step"] == step), None)
        recovery = None
        if baseline and task in baseline:
            recovery = steps_to_recover(worst, task, start, baseline[task])
        summary[task] = {"step0": start, "worst": accuracy, "worst_step": step, "worst_attack": name,
                         "retain_at_worst": retain, "steps_to_recover": recovery}
    return summary


def document(target: str, tasks: list[str], attacks: list[dict], baseline: dict[str, float] | None,
             pending: list[str] = ()) -> dict:
    """tamper.json for `attacks` (finished ones, in grid order)."""
    return {
        "target": target,
        "tasks": list(tasks),
        "retain_task": split_tasks(tasks)[1],
        "baseline": baseline,
        "pending": list(pending),
        "attacks": attacks,
        "worst_case": worst_case([attack["curve"] for attack in attacks]),
        "summary": summarize(attacks, tasks, baseline),
    }


def with_baseline(record: dict, baseline: dict[str, float] | None) -> dict:
    """`record` re-summarised against `baseline` when it has none of its own (a report that knows
    the run's baseline from eval.json, reading a tamper.json written without one)."""
    if record.get("baseline") or not baseline:
        return record
    return document(record["target"], record["tasks"], record["attacks"], baseline, record.get("pending", []))


def write_tamper(folder: str | Path, record: dict) -> Path:
    path = Path(folder) / TAMPER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)  # whole or not at all, like every file a report reads
    return path


def read_tamper(folder: str | Path) -> dict | None:
    """The folder's tamper.json as a document (a bare curve of the first releases becomes one
    attack named "attack"); None when there is none, a PeelError when it is malformed."""
    path = Path(folder) / TAMPER_FILE
    if not path.is_file():
        return None
    accepted = 'tamper.json as peel tamper writes it: {"attacks": [{"name", "curve": [{"step", TASK: accuracy}]}], ...}'
    value = read_json(path, accepted)
    if isinstance(value, list) and is_curve(value):
        tasks = list(dict.fromkeys(key for row in value for key in row if key != "step"))
        attack = {"name": "attack", "kind": DEFAULT_KIND, "settings": {}, "curve": value}
        return document(str(Path(folder)), tasks, [attack], None)
    attacks = value.get("attacks") if isinstance(value, dict) else None
    if not isinstance(attacks, list) or not all(
        isinstance(attack, dict) and isinstance(attack.get("name"), str) and is_curve(attack.get("curve")) for attack in attacks
    ):
        raise PeelError(f"{path} is not a tamper record; accepted: {accepted}")
    tasks = value.get("tasks") or list(dict.fromkeys(key for a in attacks for row in a["curve"] for key in row if key != "step"))
    baseline = value.get("baseline") if isinstance(value.get("baseline"), dict) else None
    return document(str(value.get("target", folder)), tasks, attacks, baseline, value.get("pending") or [])


def readable(attack: dict, retain_text: str | None = None) -> str:
    """An attack's name as a person reads it: `adapter=full,lr=0.001,path=testbedretain` (the file-safe
    name, which stays the attack's key) -> `full, lr 1e-3, on testbed:retain (benign)`, each value as
    the record's settings hold it. Benign: the attack's text is `retain_text`, the run's retain corpus."""
    settings = attack.get("settings") or {}
    parts = []
    for part in attack["name"].split(","):
        key, separator, shown = part.partition("=")
        if not separator:
            return attack["name"]  # a name peel did not make from settings ("attack")
        held = next((value for name, value in settings.items() if name == key or name.rsplit(".", 1)[-1] == key), shown)
        value = short_number(held) if isinstance(held, float) else str(held)
        parts.append(value if key in ("adapter", "kind") else f"on {value}" if key == "path"
                     else f"{value}-shot prompt" if key == "few_shot" else f"{key} {value}")
    benign = retain_text is not None and settings.get("data.path") == retain_text
    return ", ".join(parts) + (" (benign)" if benign else "")


def label_of(document: dict, name: str, retain_text: str | None = None) -> str:
    """`readable` for the attack of `document` called `name` (the name itself where it is not there)."""
    attack = next((attack for attack in document["attacks"] if attack["name"] == name), None)
    return name if attack is None else readable(attack, retain_text)


def short_number(value: float) -> str:
    """1e-3 rather than 0.001; 0.1 and 2 as they are."""
    if value != 0 and abs(value) < 0.01:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"


def is_curve(rows) -> bool:
    return isinstance(rows, list) and all(
        isinstance(row, dict) and isinstance(row.get("step"), int)
        and all(isinstance(v, (int, float)) for k, v in row.items() if k != "step") for row in rows
    )
