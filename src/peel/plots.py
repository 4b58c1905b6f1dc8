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


def task_names(documents: dict[str, dict]) -> list[str]:
    """The tasks measured in any document, else the tasks they track (a grid whose attacks are all pending)."""
    names: list[str] = []
    for record in documents.values():
        for row in record["worst_case"]:
            names.extend(key for key in row if key != "step" and key not in names)
    return names or list(dict.fromkeys(task for record in documents.values() for task in record.get("tasks", [])))


def plot_tamper(documents: dict[str, dict], path: str | Path) -> Path:
    """Accuracy vs attack step: a row of panels per task, a column per model (tamper.json
    documents by name); each attack a thin line (a few-shot attack a point at step 0), the worst
    case of a forget task a bold line over them, the baseline dashed and chance dotted."""
    pyplot = _pyplot()
    tasks = task_names(documents) or ["nothing measured"]
    figure, axes = pyplot.subplots(len(tasks), len(documents), figsize=(5.5 * len(documents), 4 * len(tasks)),
                                   squeeze=False, sharey=True)
    colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for column, (name, record) in enumerate(documents.items()):
        baseline = record.get("baseline") or {}
        for row, task in enumerate(tasks):
            axis = axes[row][column]
            axis.set(title=f"{name}: {task}", xlabel="attack step", ylabel="accuracy", ylim=(0, 1))
            if not any(task in point for point in record["worst_case"]):
                waiting = f"pending: {len(record['pending'])} attacks" if record.get("pending") else "not measured"
                axis.text(0.5, 0.5, waiting, transform=axis.transAxes, ha="center", color="grey")
                axis.set_xticks([])
                continue
            for index, attack in enumerate(record["attacks"]):
                points = [(point["step"], point[task]) for point in attack["curve"] if task in point]
                style = {"marker": "o", "linestyle": "none"} if len(points) == 1 else {"linewidth": 0.8, "alpha": 0.7}
                axis.plot([s for s, _ in points], [a for _, a in points], color=colours[index % len(colours)],
                          label=attack["name"], **style)
            if task in record["summary"]:  # a forget task: the highest accuracy any attack reached
                envelope = [(point["step"], point[task]) for point in record["worst_case"] if task in point]
                axis.plot([s for s, _ in envelope], [a for _, a in envelope], color="black", linewidth=2.5, label="worst case")
            if task in baseline:
                axis.axhline(baseline[task], color="black", linestyle="--", linewidth=1, label=f"baseline {baseline[task]:.3f}")
            axis.axhline(CHANCE, color="grey", linestyle=":", label=f"chance {CHANCE}")
            axis.legend(fontsize="x-small")
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


def plot_probe(document: dict, path: str | Path) -> Path:
    """Accuracy vs layer from probe.json: a column per task, the linear probe's held-out accuracy in
    the top row, the logit lens's below it and, when some target has one, the depth reader's at the
    bottom; a line per target, chance dotted."""
    pyplot = _pyplot()
    from matplotlib.ticker import MaxNLocator

    tasks = document["tasks"]
    readers = [("probe", "linear probe (held out)"), ("logit_lens", "logit lens")]
    if any("depth" in entry for entry in document["targets"].values()):
        readers.append(("depth", "depth: original's layers after it"))
    figure, axes = pyplot.subplots(len(readers), len(tasks), figsize=(5.5 * len(tasks), 4 * len(readers)), squeeze=False, sharey=True)
    colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for column, task in enumerate(tasks):
        for row, (key, title) in enumerate(readers):
            axis = axes[row][column]
            for index, (name, entry) in enumerate(document["targets"].items()):
                points = [(point["layer"], point[task]) for point in entry.get(key, []) if task in point]
                if not points:
                    continue
                # One colour per model in every panel, also where a model has no row (depth needs an original).
                axis.plot([layer for layer, _ in points], [value for _, value in points], marker="o", label=name,
                          color=colours[index % len(colours)])
            chance = document["chance"].get(task)
            if chance is not None:
                axis.axhline(chance, color="grey", linestyle=":", label=f"chance {chance:.3f}")
            axis.set(title=f"{task}: {title}", xlabel="layer (its output)", ylabel="accuracy", ylim=(0, 1.02))
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.legend(fontsize="x-small")
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
