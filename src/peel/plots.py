"""Figures for tamper curves and run histories, drawn with matplotlib's file-only Agg backend."""

from __future__ import annotations

from pathlib import Path

# Every task peel ships has four options; a model that knows nothing scores 1 in 4.
CHANCE = 0.25


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters
    import matplotlib.pyplot as pyplot

    return pyplot


def task_names(curves: dict[str, list[dict]]) -> list[str]:
    names: list[str] = []
    for rows in curves.values():
        for row in rows:
            names.extend(key for key in row if key != "step" and key not in names)
    return names


def plot_tamper(curves: dict[str, list[dict]], path: str | Path, baseline: dict[str, float] | None = None) -> Path:
    """Accuracy vs attack step, one panel per task, one line per model, with baseline and chance."""
    pyplot = _pyplot()
    tasks = task_names(curves)
    figure, axes = pyplot.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for label, rows in curves.items():
            points = [(row["step"], row[task]) for row in rows if task in row]
            axis.plot([s for s, _ in points], [a for _, a in points], marker="o", label=label)
        if baseline and task in baseline:
            axis.axhline(baseline[task], color="black", linestyle="--", label=f"baseline {baseline[task]:.3f}")
        axis.axhline(CHANCE, color="grey", linestyle=":", label=f"chance {CHANCE}")
        axis.set(title=task, xlabel="attack step", ylabel="accuracy", ylim=(0, 1))
        axis.legend(fontsize="small")
    return _save(figure, pyplot, path)


def plot_losses(steps: list[dict], path: str | Path) -> Path:
    """forget_loss and retain_loss per optimizer step, phases separated and labelled by layer."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4))
    for axis, key in zip(axes, ("forget_loss", "retain_loss")):
        axis.plot([row["step"] for row in steps], [row.get(key) for row in steps], linewidth=1)
        axis.set(title=key, xlabel="optimizer step")
        for row, previous in zip(steps[1:], steps):
            if row.get("phase") != previous.get("phase"):
                axis.axvline(row["step"], color="grey", linewidth=0.5)
        for row in _phase_starts(steps):
            axis.annotate(f"L{row.get('layer')}", (row["step"], 1), xycoords=("data", "axes fraction"), fontsize="x-small", va="top")
    return _save(figure, pyplot, path)


def plot_phase_accuracy(evaluations: list[dict], path: str | Path, baseline: dict[str, float] | None = None) -> Path:
    """Accuracy after each phase (rows {"phase", "layer", "accuracy": {task: acc}})."""
    pyplot = _pyplot()
    figure, axis = pyplot.subplots(figsize=(6, 4))
    labels = [f"L{row.get('layer')}" for row in evaluations]
    tasks = list(dict.fromkeys(task for row in evaluations for task in row["accuracy"]))
    for task in tasks:
        line = axis.plot(range(len(evaluations)), [row["accuracy"].get(task) for row in evaluations], marker="o", label=task)
        if baseline and task in baseline:
            axis.axhline(baseline[task], color=line[0].get_color(), linestyle="--", linewidth=0.8)
    axis.axhline(CHANCE, color="grey", linestyle=":", label="chance")
    axis.set_xticks(range(len(evaluations)), labels)
    axis.set(xlabel="after phase (target layer)", ylabel="accuracy", ylim=(0, 1))
    axis.legend(fontsize="small")
    return _save(figure, pyplot, path)


def _phase_starts(steps: list[dict]) -> list[dict]:
    return [row for index, row in enumerate(steps) if index == 0 or row.get("phase") != steps[index - 1].get("phase")]


def _save(figure, pyplot, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path
