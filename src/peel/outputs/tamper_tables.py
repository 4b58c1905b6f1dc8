"""The report's tamper section: per forget task the resistance table (step 0, the worst case,
recovery) and the worst case at a few steps, with what the attacks were and which are pending."""

from __future__ import annotations

from collections import Counter

from peel.attacks.results import label_of, lost
from peel.outputs.markdown import TASK_TITLES, table


def trains_nothing(attack: dict) -> bool:
    """An attack evaluated once, at step 0 (a few-shot prompt, quantization, orthogonalization)."""
    return all(row["step"] == 0 for row in attack["curve"])


STEP_ZERO_NOTE = ("Attacks that train nothing (few-shot prompts, quantization, orthogonalization) are evaluated once "
                  "and score at step 0: the worst case at step 0, and a recovery \"at step 0\", is such an attack's "
                  "score beside the model's own step 0.")


def tamper_section(documents: dict[str, dict], plots: list[str], retain_texts: dict[str, str | None] | None = None) -> list[str]:
    """The whole section for tamper.json documents by model name; a grid with attacks still
    pending says so (what `peel tamper --slurm` leaves while its jobs are queued). `retain_texts`:
    each model's retain corpus, so an attack on it reads as benign."""
    lines = ["## Tampering attack", "", *resistance_table(documents, retain_texts or {}), *tamper_table(documents)]
    for name, document in documents.items():
        if document.get("pending"):
            finished = len(document["attacks"])
            lines += [f"{name}: pending, {len(document['pending'])} of {finished + len(document['pending'])} attacks not "
                      f"finished yet ({', '.join(document['pending'])}); run the same peel tamper command again once they "
                      "are.", ""]
    kinds = Counter(attack.get("kind", "fine_tune") for document in documents.values() for attack in document["attacks"])
    named = ", ".join(f"{kind} ({count})" for kind, count in kinds.items())
    lines += ["Worst case: at each evaluated step, the highest accuracy over the model's attacks"
              + (f" (kinds: {named})" if named else "") + ". N% back: the first step at which it regained N% of "
              "(baseline - step 0); n/a: step 0 at or above the baseline, nothing to recover."
              + (f" {STEP_ZERO_NOTE}" if any(trains_nothing(a) for d in documents.values() for a in d["attacks"]) else ""), ""]
    return lines + [f"![tamper curves]({path})" for path in plots] + [""]


def resistance_table(documents: dict[str, dict], retain_texts: dict[str, str | None] | None = None) -> list[str]:
    """Per forget task, one row per attacked model: step 0, the worst case over the attacks within
    the attack budget, which attack (readably), the steps to recover 50% / 90% of what was lost, and
    the retain task's accuracy in that attack at that step."""
    retain_texts = retain_texts or {}
    attacked = {name: document for name, document in documents.items() if document["summary"]}
    lines = []
    for task in dict.fromkeys(task for document in attacked.values() for task in document["summary"]):
        budget = max(row["step"] for document in attacked.values() for row in document["worst_case"])
        rows = [["Model", "Attacks", "Step 0", f"Worst (≤ {budget} steps)", "Worst attack", "50% back", "90% back",
                 "Retain at worst"]]
        for name, document in attacked.items():
            entry = document["summary"].get(task)
            if entry is None:
                continue
            back = recovery_text(entry["steps_to_recover"], entry["step0"], (document.get("baseline") or {}).get(task))
            retain, retain_task = entry["retain_at_worst"], document["retain_task"]
            retain_text = "-" if retain is None else f"{retain:.4f} ({TASK_TITLES.get(retain_task, retain_task)})"
            rows.append([name, str(len(document["attacks"])), f"{entry['step0']:.4f}",
                         f"{entry['worst']:.4f} (step {entry['worst_step']})",
                         label_of(document, entry["worst_attack"], retain_texts.get(name)), *back, retain_text])
        lines += [f"### Tamper resistance: {TASK_TITLES.get(task, task)}", "", *table(rows), ""]
    return lines


def recovery_text(recovery: dict | None, step0: float, baseline: float | None) -> list[str]:
    """The 50% / 90% cells: a step, never, n/a (step 0 at or above the baseline: nothing was lost),
    or - (no baseline)."""
    if recovery is None:
        return ["n/a", "n/a"] if baseline is not None and not lost(step0, baseline) else ["-", "-"]
    return ["never" if recovery[share] is None else f"step {recovery[share]}" for share in ("50", "90")]


def tamper_table(documents: dict[str, dict]) -> list[str]:
    """The worst case over the attacks at the first, second and last evaluated step."""
    # Forget tasks only: the highest retain accuracy over the attacks says nothing about resistance.
    tasks = list(dict.fromkeys(task for document in documents.values() for task in document["summary"]))
    lines = []
    for task in tasks:
        all_steps = sorted({row["step"] for document in documents.values() for row in document["worst_case"] if task in row})
        steps = list(dict.fromkeys([all_steps[0], *all_steps[1:2], all_steps[-1]]))
        rows = [["Model", *(f"Step {step}" for step in steps)]]
        baseline = next((document["baseline"][task] for document in documents.values()
                         if document.get("baseline") and task in document["baseline"]), None)
        if baseline is not None:
            rows.append(["Baseline (target)", f"{baseline:.4f}", *["-"] * (len(steps) - 1)])
        for name, document in documents.items():
            found = {row["step"]: row[task] for row in document["worst_case"] if task in row}
            rows.append([name, *(f"{found[step]:.4f}" if step in found else "-" for step in steps)])
        lines += [f"### {TASK_TITLES.get(task, task)} during the attack (worst case)", "", *table(rows), ""]
    return lines
