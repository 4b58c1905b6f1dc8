"""Probe a list of targets on the same questions and layers: probe.json and probe.png in one folder.

Everything that can be checked is checked before the first model loads: the task names and
their questions (lm-eval), the layers against each target's model config, the targets' labels.
"""

from __future__ import annotations

from pathlib import Path

from peel.errors import PeelError
from peel.probing.features import read_task
from peel.probing.lens import lens_accuracy
from peel.probing.linear import PROBES, answers_seen, chance, probe_accuracy, probe_kind, question_split
from peel.probing.record import write_probe
from peel.probing.tasks import ProbeTask, load_tasks
from peel.runs.folder import PROBE_PLOT


def probe_model(model, tokenizer, tasks: list[ProbeTask], layers: list[int], pooling: str, cloze: str,
                train_share: float, seed: int, batch_size: int, max_length: int, name: str = "", original=None) -> dict:
    """{"probe": [{"layer", TASK: held-out probe accuracy}], "logit_lens": [{"layer", TASK: lens accuracy}]}
    for one model, and with `original` (the model it was made from) "depth": [{"layer", TASK:
    accuracy with the original's later layers}]; `layers` are decoder layer indices (the layer's
    output is read)."""
    rows = {key: [{"layer": layer} for layer in layers] for key in ("probe", "logit_lens", *(("depth",) if original is not None else ()))}
    for task in tasks:
        kind = probe_kind(task, cloze)
        readout = read_task(model, tokenizer, task, layers, pooling, PROBES[kind][1], batch_size, max_length,
                            f"{name} {task.name}".strip(), original)
        train, test = question_split(len(task.questions), train_share, seed)
        for index, layer in enumerate(layers):
            rows["probe"][index][task.name] = probe_accuracy(kind, task, readout.features[layer], train, test, seed)
            rows["logit_lens"][index][task.name] = lens_accuracy(task, readout.lens_scores[layer])
            if original is not None:
                rows["depth"][index][task.name] = lens_accuracy(task, readout.depth_scores[layer])
    return rows


def question_counts(task: ProbeTask, kind: str, train, test) -> dict:
    counts = {"train": len(train), "held_out": len(test)}
    if kind == "answer":
        counts["answer_seen"] = answers_seen(task, train, test)
    return counts


def probed_layers(target, setting, key: str = "probe.layers") -> list[int]:
    """The layers `setting` names for the target's model, from its config alone, front to back."""
    from peel.runs.targets import target_num_layers
    from peel.layers import target_layers

    return sorted(target_layers(setting, target_num_layers(target), key))


def check_original(target, original) -> None:
    """The depth reader feeds the target's hidden states to the original's layers: both must have
    the same layers and width (the target made from the original), found from their configs alone."""
    from peel.runs.targets import target_num_layers
    from peel.models import load_model_config

    def shape(of) -> tuple[int, int]:
        config = load_model_config(of.model, of.config.model.revision if of.run_folder is None else None,
                                   of.config.model.trust_remote_code)
        return target_num_layers(of), getattr(config, "hidden_size", None) or config.get_text_config().hidden_size

    target_shape, original_shape = shape(target), shape(original)
    if target_shape != original_shape:
        raise PeelError(f"the depth reader continues {target.model!r} (layers, width {target_shape}) with the layers of "
                        f"{original.model!r} ({original_shape}); accepted: an original the target was made from")


def probe_targets(targets: list, names: list[str], folder: str | Path, labels: list[str] | None = None,
                  originals: list | None = None) -> dict:
    """Probe each target (peel.runs.targets.Target, as resolve_targets gives them; `names` as
    the user wrote them) with the first target's probe settings (probe.tasks empty = eval.tasks;
    batches and length as eval.batch_size / eval.max_length); writes FOLDER/probe.json and
    FOLDER/probe.png and returns probe.json's document. `labels` name the targets in probe.json
    (default: each name's last part, which must differ). `originals`, one per target, are the
    models the depth reader finishes each target's states with (a Target, or None: no depth)."""
    from peel.runs.targets import distinct_labels, load_target_model
    from peel.plots import plot_probe

    settings, evaluation = targets[0].config.probe, targets[0].config.eval
    labels = distinct_labels(names) if labels is None else labels
    layers = {label: probed_layers(target, settings.layers) for label, target in zip(labels, targets)}
    originals = originals or [None] * len(targets)
    for target, original in zip(targets, originals):
        if original is not None:
            check_original(target, original)
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
    for label, target, name, original in zip(labels, targets, names, originals):
        model, tokenizer = load_target_model(target)
        # the original in the target's dtype, on its device: the depth reader needs both at once
        original_model = None if original is None else load_target_model(original, target.config.train.dtype)[0].eval()
        measured = probe_model(model, tokenizer, tasks, layers[label], settings.pooling, settings.cloze,
                               settings.train_share, settings.seed, evaluation.batch_size, evaluation.max_length, label,
                               original_model)
        document["targets"][label] = {"model": name, **({"original": original.model} if original is not None else {}), **measured}
        del model, tokenizer, original_model  # one target (and its original) in memory at a time
    folder = Path(folder)
    write_probe(folder, document)
    plot_probe(document, folder / PROBE_PLOT)
    return document
