"""Run folders -> the research log's markdown tables, evaluation-state labels and plots.

Reads only what runs leave behind (config.yaml, metrics.jsonl, run.json, eval.json,
tamper.json): no model is loaded, so a report can be rebuilt anywhere from copied folders.
Runs that share every setting except the swept ones form one table (a "family"), headed by the
baseline row, as in the seed log. In metrics.jsonl, lines with `forget_loss` are optimizer steps
and lines with an `eval` mapping ({"step", "phase", "layer", "eval": {task: accuracy}}) are the
per-phase evaluations `eval.every_phase` asks for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from peel.config import UnlearnConfig, flatten, is_number_field
from peel.errors import PeelError, reading
from peel.outputs.markdown import TASK_ROLES, TASK_TITLES, table
from peel.outputs.probe_tables import probe_section
from peel.outputs.tamper_tables import tamper_section
from peel.unlearning.methods import all_read_keys, described
from peel.runs.evaluations import read_evaluation
from peel.plots import CHANCE
from peel.runs.folder import CONFIG_FILE, METRICS_FILE, TAMPER_FILE, TAMPER_PLOT, read_run_record
from peel.attacks.results import read_tamper, with_baseline

# Settings a sweep varies inside one table; each becomes a column when it varies (or always, below).
SWEPT = {
    "unlearn.remove_coef": "remove_coef",
    "unlearn.retain_coef": "retain_coef",
    "unlearn.l2sp_coef": "l2sp_coef",
    "train.lr": "lr",
    "data.num_examples": "examples",
    "train.max_grad_norm": "max_grad_norm",
    "train.epochs_per_layer": "epochs_per_layer",
    "train.seed": "seed",
    "unlearn.layers": "layers",
    "train.muon_lr": "muon_lr",
    # and the numbers a method choice reads (top_k, npo_beta, the adversaries' settings): methods.py's rows
    **{f"unlearn.{key}": key for key in all_read_keys() if is_number_field(UnlearnConfig, key)},
}
ALWAYS_SHOWN = ("unlearn.remove_coef", "unlearn.retain_coef", "train.lr")
# Settings that never split families: where results went, what they are called, how they are checked,
# where they are watched.
IGNORED_PREFIXES = ("output_dir", "notes", "eval.", "tamper.", "track.", "probe.", "train.checkpoint_every", "distill.")
# A distilled student (peel distill) keeps its teacher's config beside its distill section: its
# family is its teacher's students, titled by them, with these settings as columns.
STUDENT_SETTINGS = {"distill.alpha": "alpha", "distill.steps": "distill steps", "distill.lr": "distill lr",
                    "distill.with_forget": "with forget"}
# Settings named in a family's title, in this order; an adversary joins them when there is one.
TITLE_KEYS = ("unlearn.adapter", "unlearn.forget_loss", "unlearn.retain_loss", "unlearn.retain_layers",
              "unlearn.grad_filter", "unlearn.retain_ramp")
ADVERSARY_KEY = "unlearn.adversary"
# A task has "held" when it lost under 20% of the way from baseline to chance, is "gone" past 80%.
HELD_BELOW, GONE_ABOVE = 0.2, 0.8
FINAL_WINDOW = 10  # final losses are the mean over this many last optimizer steps


@dataclass
class Run:
    name: str
    folder: Path
    settings: dict  # flattened config.yaml: dotted key -> value
    steps: list  # metrics.jsonl training lines
    phase_evaluations: list  # metrics.jsonl lines carrying {"eval": {task: accuracy}}
    record: dict  # run.json (empty when absent)
    evaluation: dict | None
    tamper: dict | None  # tamper.json as a document (attacks/results.py), against the run's baseline


def read_run(folder: str | Path) -> Run:
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file() and (folder / TAMPER_FILE).is_file():  # peel tamper MODEL --output-dir FOLDER
        evaluation = read_evaluation(folder)
        baseline = ((evaluation or {}).get("baseline") or {}).get("accuracy")
        return Run(folder.resolve().name, folder, {}, [], [], {}, evaluation, with_baseline(read_tamper(folder), baseline))
    if not config_path.is_file():
        raise PeelError(f"{str(folder)!r} is not a run folder: it has no config.yaml")
    with reading(str(config_path), "config.yaml as peel writes it"):
        config = yaml.safe_load(config_path.read_text())
    if not isinstance(config, dict):
        raise PeelError(f"{config_path} must hold a mapping of config sections")
    lines = read_lines(folder / METRICS_FILE)
    record = read_run_record(folder)
    evaluation = read_evaluation(folder)
    tamper = read_tamper(folder)
    if tamper is not None:  # a tamper.json written without a baseline is measured against eval.json's
        tamper = with_baseline(tamper, ((evaluation or {}).get("baseline") or {}).get("accuracy"))
    return Run(
        name=folder.resolve().name,
        folder=folder,
        settings=flatten(config, leaves=("layers",)),  # a layer range is one setting
        steps=[line for line in lines if "forget_loss" in line],
        phase_evaluations=[line for line in lines if isinstance(line.get("eval"), dict)],
        record=record,
        evaluation=evaluation,
        tamper=tamper,
    )


def read_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = []
    with reading(str(path), "metrics.jsonl as peel writes it"):
        text_lines = path.read_text().splitlines()
    for number, text in enumerate(text_lines, start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            raise PeelError(f"{path}:{number} is not valid JSON (a run killed mid-write? delete that line)") from None
        if not isinstance(line, dict) or "step" not in line:
            raise PeelError(f"{path}:{number} is not a metrics record (no 'step')")
        lines.append(line)
    return lines


# --------------------------------------------------------------------------------------------
# Families, columns and labels


def teacher(run: Run) -> str | None:
    """The run folder a distilled student learned from (distill.run), None for an unlearning run."""
    return run.settings.get("distill.run")


def family_key(run: Run) -> tuple:
    fixed = {k: v for k, v in run.settings.items() if k not in SWEPT and not k.startswith(IGNORED_PREFIXES)}
    if teacher(run):
        fixed = {"distill.run": teacher(run)}  # students of one teacher share a table
    return tuple(sorted((key, json.dumps(value, sort_keys=True)) for key, value in fixed.items()))


def families(runs: list[Run]) -> list[list[Run]]:
    grouped: dict[tuple, list[Run]] = {}
    for run in runs:
        grouped.setdefault(family_key(run), []).append(run)
    return list(grouped.values())


def layers_text(run: Run) -> str:
    if teacher(run):
        return "-"  # a student trains every layer
    layers = run.record.get("layers") or list(dict.fromkeys(step["layer"] for step in run.steps if "layer" in step))
    if not layers:
        value = run.settings.get("unlearn.layers")
        if isinstance(value, dict) and {"start", "end", "step"} <= set(value):
            return f"{value['start']}→{value['end']} (step {value['step']})"
        return "-" if value is None else ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    gaps = {a - b for a, b in zip(layers, layers[1:])}
    if len(layers) >= 2 and len(gaps) == 1:
        return f"{layers[0]}→{layers[-1]} (step {gaps.pop()})"
    return ", ".join(map(str, layers))


def number_text(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value != 0 and abs(value) < 0.01:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"


def final_loss(run: Run, key: str) -> str:
    values = [step[key] for step in run.steps[-FINAL_WINDOW:] if step.get(key) is not None]
    return f"{sum(values) / len(values):.2f}" if values else ""


def roles(tasks: list[str]) -> tuple[str | None, str | None]:
    forget = next((task for task in tasks if TASK_ROLES.get(task) == "forget"), None)
    retain = next((task for task in tasks if TASK_ROLES.get(task) == "retain"), None)
    return forget, retain


def distance_to_chance(accuracy: float, baseline: float) -> float:
    """0 at the baseline, 1 at chance: how much of what the model knew is gone."""
    return (baseline - accuracy) / max(baseline - CHANCE, 1e-9)


def state_label(accuracy: dict, baseline: dict, forget: str | None, retain: str | None) -> str:
    """The seed's four states; a fifth names the pathological case where only retain drops."""
    if not forget or not retain or not all(t in accuracy and t in baseline for t in (forget, retain)):
        return ""
    forget_gone = distance_to_chance(accuracy[forget], baseline[forget])
    retain_gone = distance_to_chance(accuracy[retain], baseline[retain])
    if forget_gone >= GONE_ABOVE and retain_gone >= GONE_ABOVE:
        return "both near chance"
    if retain_gone < HELD_BELOW:
        return "both near baseline" if forget_gone < HELD_BELOW else "forget dropped, retain held"
    if forget_gone < HELD_BELOW:
        return "retain dropped, forget held"
    return "both partial"


def differential(accuracy: dict, baseline: dict, forget: str | None, retain: str | None) -> float | None:
    """Forget accuracy lost minus retain accuracy lost: what 'best result' means in the tables."""
    if not forget or not retain or not all(t in accuracy and t in baseline for t in (forget, retain)):
        return None
    return (baseline[forget] - accuracy[forget]) - (baseline[retain] - accuracy[retain])


# --------------------------------------------------------------------------------------------
# Rendering


def family_table(family: list[Run]) -> list[str]:
    shown = [key for key in SWEPT if key != "unlearn.layers" and (
        key in ALWAYS_SHOWN
        or len({json.dumps(run.settings.get(key)) for run in family}) > 1
        or (key == "unlearn.l2sp_coef" and any(run.settings.get(key) for run in family)))]
    if teacher(family[0]):  # the teacher's unlearning settings are its own table's
        shown = list(STUDENT_SETTINGS)
    baseline_record = next((run.evaluation["baseline"] for run in family if run.evaluation and run.evaluation.get("baseline")), None)
    baseline = baseline_record["accuracy"] if baseline_record else {}
    tasks = list(dict.fromkeys([*baseline, *(t for run in family if run.evaluation for t in run.evaluation["accuracy"])]))
    forget, retain = roles(tasks)
    scores = {run.name: differential(run.evaluation["accuracy"], baseline, forget, retain) for run in family if run.evaluation}
    positive = {name: score for name, score in scores.items() if score is not None and score > 0}
    best = max(positive, key=positive.get) if positive else None

    # correct_prob and the update's rank get columns only where some run has them.
    baseline_probability = (baseline_record or {}).get("correct_prob", {})
    probability_tasks = [task for task in tasks if task in baseline_probability
                         or any(task in (run.evaluation or {}).get("correct_prob", {}) for run in family)]
    with_rank = any(run.record.get("update_rank") for run in family)

    header = ["Run", "Layers", *({**SWEPT, **STUDENT_SETTINGS}[key] for key in shown), "Steps", "retain_loss", "forget_loss",
              *(TASK_TITLES.get(task, task) for task in tasks),
              *(f"{TASK_TITLES.get(task, task)} p(correct)" for task in probability_tasks),
              *(["Stable rank", "Effective rank"] if with_rank else []), "State", "Notes"]
    rows = [header]
    if baseline:
        rows.append(["-"] * (len(shown) + 5) + [f"{baseline[t]:.4f}" if t in baseline else "" for t in tasks]
                    + [f"{baseline_probability[t]:.4f}" if t in baseline_probability else "" for t in probability_tasks]
                    + ["-"] * (2 if with_rank else 0) + ["-", "Baseline"])
    for run in sorted(family, key=lambda run: natural_key(run.name)):
        accuracy = run.evaluation["accuracy"] if run.evaluation else {}
        cells = []
        for task in tasks:
            text = f"{accuracy[task]:.4f}" if task in accuracy else ""
            cells.append(f"**{text}**" if run.name == best and task in (forget, retain) and text else text)
        probability = (run.evaluation or {}).get("correct_prob", {})
        cells += [f"{probability[task]:.4f}" if task in probability else "" for task in probability_tasks]
        rank = run.record.get("update_rank") or {}
        if with_rank:
            cells += [f"{rank[key]:.2f}" if key in rank else "" for key in ("mean_stable_rank", "mean_effective_rank")]
        notes = [run.settings.get("notes") or ""]
        if run.record.get("status") not in (None, "completed"):
            notes.append(f"status: {run.record['status']}")
        rows.append([
            run.name, layers_text(run), *(number_text(run.settings.get(key)) for key in shown),
            str(len(run.steps) or run.record.get("total_steps") or ""), final_loss(run, "retain_loss"),
            final_loss(run, "forget_loss"), *cells, state_label(accuracy, baseline, forget, retain),
            "; ".join(note for note in notes if note),
        ])
    return table(rows)


def family_title(family: list[Run], all_families: list[list[Run]]) -> str:
    settings = family[0].settings
    if teacher(family[0]):
        return f"distilled students of {Path(teacher(family[0])).name} (teacher: its model/; alpha: the share re-initialised)"
    title = " · ".join(f"{key.split('.')[-1]} {number_text(settings.get(key))}" for key in TITLE_KEYS if key in settings)
    if settings.get(ADVERSARY_KEY, "none") != "none":  # as the adversary describes itself (methods.py)
        unlearn = {key.removeprefix("unlearn."): value for key, value in settings.items() if key.startswith("unlearn.")}
        title += f" · adversary {described('adversary', unlearn)}"
    # Settings that tell this family apart from the others, beyond the usual ones in the title.
    differing = sorted({key for other in all_families if not teacher(other[0])  # students are titled by their teacher
                        for key, _ in set(family_key(family[0])) ^ set(family_key(other[0]))})
    shown_keys = {*TITLE_KEYS, ADVERSARY_KEY}
    extra = [f"{key}={number_text(settings.get(key))}" for key in differing if key not in shown_keys and not key.startswith("distill.")]
    return title + (f" ({', '.join(extra)})" if extra else "")


def render(runs: list[Run], plots: dict[str, list[str]] | None = None, probes: dict[str, dict] | None = None) -> str:
    """The whole report; `plots` maps a section ('tamper' or a run name) to image paths to link."""
    plots = plots or {}
    grouped = families([run for run in runs if run.settings])  # a model only attacked has no unlearning row
    lines = ["# Unlearning report", ""]
    for family in grouped:
        lines += [f"## {family_title(family, grouped)}", "", *family_table(family), ""]
    lines += [
        f"State: how far each accuracy moved from the baseline toward chance ({CHANCE}); under {HELD_BELOW:.0%} of "
        f"the way is held, past {GONE_ABOVE:.0%} is near chance. Bold: the largest forget drop minus retain drop. "
        f"Losses: mean of the last {FINAL_WINDOW} optimizer steps.",
        "",
    ]
    if any(run.tamper for run in runs):
        lines += tamper_section({run.name: run.tamper for run in runs if run.tamper}, plots.get("tamper", []),
                                {run.name: run.settings.get("data.retain.path") for run in runs})
    if probes:
        lines += probe_section(probes, plots)
    linked = [run for run in runs if plots.get(run.name)]
    if linked:
        lines += ["## Runs", ""]
        for run in linked:
            lines += [f"### {run.name}", "", *(f"![{Path(path).stem}]({path})" for path in plots[run.name]), ""]
    return "\n".join(lines).rstrip() + "\n"


def draw_plots(runs: list[Run], folder: Path, relative_to: Path, probes: dict[str, dict] | None = None) -> dict[str, list[str]]:
    """Loss curves and accuracy vs phase per run, tamper curves overlaid, probe accuracy vs layer;
    returns links for `render`."""
    from peel.plots import plot_losses, plot_phase_accuracy, plot_probe, plot_tamper

    links: dict[str, list[str]] = {}

    def link(key: str, path: Path) -> None:
        links.setdefault(key, []).append(str(path.relative_to(relative_to)))

    for run in runs:
        baseline = (run.evaluation or {}).get("baseline", {}).get("accuracy")
        if run.steps:
            link(run.name, plot_losses(run.steps, folder / f"{run.name}_losses.png"))
        if run.phase_evaluations:
            rows = [{"phase": line.get("phase"), "layer": line.get("layer"), "accuracy": line["eval"]} for line in run.phase_evaluations]
            link(run.name, plot_phase_accuracy(rows, folder / f"{run.name}_phase_accuracy.png", baseline))
    documents = {run.name: run.tamper for run in runs if run.tamper and (run.tamper["attacks"] or run.tamper["pending"])}
    if documents:
        link("tamper", plot_tamper(documents, folder / TAMPER_PLOT))
    for name, document in (probes or {}).items():
        link(f"probe:{name}", plot_probe(document, folder / f"{name}_probe.png"))
    return links


def natural_key(name: str) -> list:
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
