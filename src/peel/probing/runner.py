"""Probe a list of targets on the same questions and layers: probe.json and probe.png in one folder.

Everything that can be checked is checked before the first model loads: the task names and
their questions (lm-eval), the layers against each target's model config, the targets' labels.
"""

from __future__ import annotations

from pathlib import Path

from peel.probing.features import read_task
from peel.probing.lens import lens_accuracy
from peel.probing.linear import PROBES, answers_seen, chance, probe_accuracy, probe_kind, question_split
from peel.probing.record import write_probe
from peel.probing.tasks import ProbeTask, load_tasks


def probe_model(model, tokenizer, tasks: list[ProbeTask], layers: list[int], pooling: str, cloze: str,
                train_share: float, seed: int, batch_size: int, max_length: int, name: str = "") -> dict:
    """{"probe": [{"layer", TASK: held-out probe accuracy}], "logit_lens": [{"layer", TASK: lens accuracy}]}
    for one model; `layers` are decoder layer indices (the layer's output is read)."""
    probe_rows = [{"layer": layer} for layer in layers]
    lens_rows = [{"layer": layer} for layer in layers]
    for task in tasks:
        kind = probe_kind(task, cloze)
        readout = read_task(model, tokenizer, task, layers, pooling, PROBES[kind][1], batch_size, max_length,
                            f"{name} {task.name}".strip())
        train, test = question_split(len(task.questions), train_share, seed)
        for probe_row, lens_row in zip(probe_rows, lens_rows):
            layer = probe_row["layer"]
            probe_row[task.name] = probe_accuracy(kind, task, readout.features[layer], train, test, seed)
            lens_row[task.name] = lens_accuracy(task, readout.lens_scores[layer])
    return {"probe": probe_rows, "logit_lens": lens_rows}


def question_counts(task: ProbeTask, kind: str, train, test) -> dict:
    counts = {"train": len(train), "held_out": len(test)}
    if kind == "answer":
        counts["answer_seen"] = answers_seen(task, train, test)
    return counts


def probed_layers(target, setting, key: str = "probe.layers") -> list[int]:
    """The layers `setting` names for the target's model, from its config alone, front to back."""
    from peel.models import load_model_config
    from peel.schedules import target_layers

    model = target.config.model
    config = load_model_config(target.model, model.revision if target.run_folder is None else None, model.trust_remote_code)
    num_layers = getattr(config, "num_hidden_layers", None) or getattr(config.get_text_config(), "num_hidden_layers")
    return sorted(target_layers(setting, num_layers, key))


def probe_targets(targets: list, names: list[str], folder: str | Path) -> dict:
    """Probe each target (peel.evaluation.targets.Target, as resolve_targets gives them; `names` as
    the user wrote them) with the first target's probe settings (probe.tasks empty = eval.tasks;
    batches and length as eval.batch_size / eval.max_length); writes FOLDER/probe.json and
    FOLDER/probe.png and returns probe.json's document."""
    from peel.evaluation.targets import distinct_labels, load_target_model
    from peel.plots import plot_probe

    settings, evaluation = targets[0].config.probe, targets[0].config.eval
    labels = distinct_labels(names)
    layers = {label: probed_layers(target, settings.layers) for label, target in zip(labels, targets)}
    tasks = load_tasks(settings.tasks or evaluation.tasks, settings.limit, evaluation.include_path)
    splits = {task.name: question_split(len(task.questions), settings.train_share, settings.seed) for task in tasks}
    kinds = {task.name: probe_kind(task, settings.cloze) for task in tasks}
    document = {
        "targets": {},
        "chance": {task.name: chance(kinds[task.name], task, *splits[task.name]) for task in tasks},
        "tasks": [task.name for task in tasks],
        "kinds": kinds,
        "questions": {task.name: question_counts(task, kinds[task.name], *splits[task.name]) for task in tasks},
        "pooling": settings.pooling, "train_share": settings.train_share, "seed": settings.seed, "limit": settings.limit,
    }
    for label, target, name in zip(labels, targets, names):
        model, tokenizer = load_target_model(target)
        measured = probe_model(model, tokenizer, tasks, layers[label], settings.pooling, settings.cloze,
                               settings.train_share, settings.seed, evaluation.batch_size, evaluation.max_length, label)
        document["targets"][label] = {"model": name, **measured}
        del model, tokenizer  # one model in memory at a time
    folder = Path(folder)
    write_probe(folder, document)
    plot_probe(document, folder / "probe.png")
    return document
