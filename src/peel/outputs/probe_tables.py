"""The report's probe section: per model and task, the best layer of each reader (linear probe,
logit lens, depth) from the folders' probe.json."""

from __future__ import annotations

from pathlib import Path

from peel.outputs.markdown import TASK_TITLES, table
from peel.probing.record import best_layer, read_probe


def read_probes(folders: list[str | Path]) -> dict[str, dict]:
    """probe.json of each folder that has one (a run folder or a `peel probe --output-dir`), by folder name."""
    documents = {}
    for folder in folders:
        document = read_probe(folder)
        if document is not None:
            documents[Path(folder).resolve().name] = document
    return documents


def probe_table(document: dict) -> list[str]:
    """Per model and task: the best layer's held-out linear-probe accuracy and the best layer's
    logit-lens accuracy (the lens at the last layer is the model's own output)."""
    tasks = document.get("tasks") or list(document["chance"])
    readers = {"probe": "probe", "logit_lens": "lens"}
    if any("depth" in entry for entry in document["targets"].values()):
        readers["depth"] = "depth"
    rows = [["Model", *(f"{TASK_TITLES.get(task, task)} {what}" for task in tasks for what in readers.values())]]
    rows.append(["Chance", *(f"{document['chance'][task]:.3f}" if task in document["chance"] else "-"
                             for task in tasks for _ in readers)])
    for name, entry in document["targets"].items():
        rows.append([name, *(best_cell(entry, key, task) for task in tasks for key in readers)])
    return table(rows)


def best_cell(entry: dict, reader: str, task: str) -> str:
    """A reader's best layer on a task, as the tables and `peel probe`'s own lines write it: 0.600 (L1)."""
    best = best_layer(entry.get(reader, []), task)
    return "-" if best is None else f"{best[1]:.3f} (L{best[0]})"


def best_lines(document: dict) -> list[str]:
    """`peel probe`'s summary: per model and task, each reader's best layer, the numbers of the tables."""
    readers = {"probe": "probe", "logit_lens": "lens", "depth": "depth"}
    return [f"{name} {task}: " + ", ".join(f"{title} {best_cell(entry, key, task)}" for key, title in readers.items() if key in entry)
            + f", chance {document['chance'][task]:.3f}" for name, entry in document["targets"].items() for task in document["tasks"]]


DEPTH_NOTE = "; depth: the layer's output finished by the original model's later layers and head"


def probe_section(probes: dict[str, dict], plots: dict[str, list[str]]) -> list[str]:
    lines = ["## Probes: is the knowledge still in the hidden states?", ""]
    for name, document in probes.items():
        kinds = ", ".join(f"{task}: {kind}" for task, kind in document.get("kinds", {}).items())
        lines += [f"### {name}", "", *probe_table(document), "",
                  f"Best layer (L) of each; probe accuracy on held-out questions ({kinds}; pooling "
                  f"{document.get('pooling', '-')}); lens: the layer read through the final norm and unembedding"
                  f"{DEPTH_NOTE if any('depth' in entry for entry in document['targets'].values()) else ''}.", ""]
        lines += [f"![probe accuracy vs layer]({path})" for path in plots.get(f"probe:{name}", [])] + [""]
    return lines
