"""peel demo --output-dir DIR: the whole pipeline on a built-in scenario, on a CPU, in minutes."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from peel.errors import PeelError
from peel.runs.folder import MODEL_FOLDER, SUMMARY_FILE, TAMPER_PLOT

HELP = "Evaluate, unlearn, re-evaluate and attack a built-in scenario's models; write a summary."
DESCRIPTION = """\
Run peel end to end on a built-in scenario (no GPU, no downloads once installed):

  1. evaluate the scenario's models (testbed: base and filtered; elements: base, SmolLM2-135M)
     on its forget and retain tasks;
  2. unlearn base with the config (default configs/SCENARIO_lora.yaml) through the engine;
  3. evaluate the unlearned model;
  4. probe every model at every layer (peel probe: a linear probe and the logit lens on the
     forget and retain questions; DIR/probe/probe.json and probe.png);
  5. attack the unlearned model and any reference model (filtered) with the config's attack grid
     (the testbed's: full and LoRA fine-tuning on testbed:tamper at two learning rates, a benign
     attack on testbed:retain, 0- and 5-shot prompts; the elements': full fine-tuning on
     elements:tamper; both: 8- and 4-bit weights and one direction per layer projected out,
     estimated against the base model), forget and retain accuracy every tamper.eval_every
     steps, and take the worst case over the attacks;
  6. write DIR/summary.json, DIR/summary.md and DIR/tamper.png (the unlearning run is DIR/unlearn,
     which gets the unlearned model's attacks and tamper.json; a reference model's are in
     DIR/NAME, e.g. DIR/filtered).

  peel demo --output-dir runs/demo
  peel demo --output-dir runs/demo_full --config configs/testbed_full.yaml
  peel demo --scenario elements --output-dir runs/demo_elements
  peel demo --output-dir runs/quick data.num_examples=64 tamper.steps=20 eval.limit=50   # key=value overrides
"""

# The configs are package data (src/peel/configs; a clone's top-level configs/ is a link to it),
# so the demo runs from an installed package as well as from a clone.
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class DemoScenario:
    """What the demo runs for one scenario."""

    config: Path  # default unlearning config
    base: str  # the model unlearned
    references: dict[str, str]  # models evaluated and attacked beside it (label -> name)
    tasks: dict[str, str]  # summary key -> lm-eval task (forget first, then retain)


SCENARIOS = {
    "testbed": DemoScenario(CONFIGS / "testbed_lora.yaml", "testbed:base", {"filtered": "testbed:filtered"},
                            {"forget_acc": "testbed_forget", "retain_acc": "testbed_retain"}),
    # There is no SmolLM2 trained without the elements, so no reference model.
    "elements": DemoScenario(CONFIGS / "elements_lora.yaml", "elements:base", {},
                             {"forget_acc": "elements_forget", "retain_acc": "elements_retain"}),
}


def demo_config(given: str | None, scenario: DemoScenario, name: str) -> str:
    """The config file: the scenario's default, a file at `given`, or a packaged config named by
    `given` as the README writes it (configs/testbed_full.yaml) where no such file is at hand."""
    if given is None:
        return str(scenario.config)
    if Path(given).is_file():
        return given
    packaged = CONFIGS / Path(given).name
    if Path(given).parent in (Path("."), Path("configs")) and packaged.is_file():
        return str(packaged)
    raise PeelError(f"demo config {given!r} does not exist; pass --config with a {name} config such as {scenario.config.name}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, help="Folder for the summary, the plot and the unlearning run.")
    parser.add_argument("--scenario", default="testbed", choices=list(SCENARIOS), help="Built-in scenario (default: testbed).")
    parser.add_argument("--config", help="Unlearning config: a file, or a config peel ships named as configs/NAME.yaml (default: configs/SCENARIO_lora.yaml).")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="Dotted overrides applied to the config.")


def run(args: argparse.Namespace) -> int:
    from peel.config import load_config

    started = time.time()
    output = Path(args.output_dir)
    scenario = SCENARIOS[args.scenario]
    tasks = scenario.tasks
    config_path = demo_config(args.config, scenario, args.scenario)
    # The demo evaluates every model itself, the same way, so the engine's own evaluation is off.
    config = load_config(config_path, [*args.overrides, f"output_dir={output / 'unlearn'}", "eval.tasks=[]"])
    if config.model.name_or_path != scenario.base:
        raise PeelError(f"model.name_or_path={config.model.name_or_path!r}; the {args.scenario} demo unlearns {scenario.base}")
    if config.tamper.tasks != list(tasks.values()):
        raise PeelError(f"tamper.tasks={config.tamper.tasks}; the demo's summary reads {list(tasks.values())} (forget, then retain)")
    from peel.runs.folder import check_writable
    from peel.attacks.plan import check_models, grid_attacks
    from peel.runs.targets import Target

    # The attack settings, checked before anything runs (the base model has the attacked models' layers).
    check_models(grid_attacks(config, [], args.overrides), [Target(scenario.base, None, config)])
    check_writable(output, "--output-dir")
    one_thread_for_the_testbed(args.scenario)
    output.mkdir(parents=True, exist_ok=True)
    evaluation = config.eval

    from peel.unlearning.engine import unlearn
    from peel.runs.evaluations import write_evaluation
    from peel.plots import plot_tamper

    evaluations = {}
    for name, model_name in {"base": scenario.base, **scenario.references}.items():
        evaluations[name] = evaluate_model(model_name, tasks, evaluation.batch_size, evaluation.max_length, evaluation.limit)
        print(f"{name}: {format_row(summary_row(evaluations[name], tasks))}", flush=True)

    run_folder = unlearn(config)
    unlearned_path = str(run_folder / MODEL_FOLDER)
    evaluations["unlearned"] = evaluate_model(unlearned_path, tasks, evaluation.batch_size, evaluation.max_length, evaluation.limit)
    print(f"unlearned: {format_row(summary_row(evaluations['unlearned'], tasks))}", flush=True)
    models = {name: summary_row(results, tasks) for name, results in evaluations.items()}
    probes = probe_models({"base": scenario.base, "unlearned": unlearned_path, **scenario.references}, config, tasks,
                          output / "probe", originals={"unlearned": scenario.base})

    # The unlearning run folder gets what `peel eval` and `peel tamper` would have written, so
    # `peel report DIR/unlearn` shows its accuracies against the base model and its attacks.
    write_evaluation(run_folder, unlearned_path, evaluations["unlearned"], baseline={"model": scenario.base, **evaluations["base"]})
    targets = {"unlearned": (unlearned_path, run_folder),
               **{name: (model_name, output / name) for name, model_name in scenario.references.items()}}
    documents = attack_models(targets, config, evaluations["base"]["accuracy"], scenario.base, args.overrides)
    from peel.outputs.model_card import write_model_cards

    write_model_cards(run_folder)  # the cards show the demo's evaluation and attacks, written into the run above

    summary = {"models": models, "probe": probe_summary(probes, tasks), **attack_summary(documents, tasks, config.data.retain.path),
               "wall_seconds": round(time.time() - started, 1)}
    (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    (output / "summary.md").write_text(markdown(summary, probes))
    plot_tamper(documents, output / TAMPER_PLOT)
    print((output / "summary.md").read_text())
    print(f"demo finished in {summary['wall_seconds']:.0f}s: {output}")
    return 0


def evaluate_model(name_or_path: str, tasks: dict[str, str], batch_size: int, max_length: int, limit: int | None) -> dict:
    from peel.evaluation import evaluate
    from peel.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(name_or_path, dtype="float32")
    return evaluate(model, tokenizer, list(tasks.values()), batch_size=batch_size, max_length=max_length, limit=limit)


def one_thread_for_the_testbed(scenario: str) -> None:
    """The testbed's models are tiny: on CPU one thread steps far faster than all of them once
    anything else runs on the machine, and is slower only on cores left idle
    (benchmarks/thread_bench.py on 2 cores: 2 threads 5-6x as slow as 1 while other work ran, 2.3x
    with one core busy, 0.57x idle). An explicit OMP_NUM_THREADS is left alone."""
    import os

    import torch

    if scenario == "testbed" and "OMP_NUM_THREADS" not in os.environ and not torch.cuda.is_available():
        torch.set_num_threads(1)


def summary_row(results: dict, tasks: dict[str, str]) -> dict[str, float]:
    return {key: results["accuracy"][task] for key, task in tasks.items()}


def probe_models(models: dict[str, str], config, tasks: dict[str, str], folder: Path, originals: dict[str, str]) -> dict:
    """peel probe on the demo's models (label -> model path or scenario name), on the demo's tasks
    with the config's probe settings, the models named in `originals` (label -> the model it was
    made from) also through the depth reader; writes FOLDER/probe.json and probe.png, returns the document."""
    from dataclasses import replace

    from peel.runs.targets import Target
    from peel.probing.runner import probe_targets

    probing = replace(config, probe=replace(config.probe, tasks=list(tasks.values())))
    targets = [Target(model, None, probing) for model in models.values()]
    made_from = [Target(originals[label], None, probing) if label in originals else None for label in models]
    document = probe_targets(targets, list(models.values()), folder, labels=list(models), originals=made_from)
    print(f"probes: {folder / 'probe.json'}", flush=True)
    return document


def probe_summary(document: dict, tasks: dict[str, str]) -> dict:
    """summary.json's "probe": the chance level per task and, per model and task, the best layer's
    held-out probe accuracy, the best layer's logit-lens accuracy and, for a model read by the
    depth reader, its accuracy at each layer (tasks renamed by `tasks`)."""
    from peel.probing.record import best_layer

    def best(rows: list[dict], task: str) -> dict:
        layer, accuracy = best_layer(rows, task)
        return {"accuracy": accuracy, "layer": layer}

    return {
        "chance": {key: document["chance"][task] for key, task in tasks.items()},
        "models": {name: {key: {"probe": best(entry["probe"], task), "lens": best(entry["logit_lens"], task),
                                **({"depth": [{"layer": row["layer"], "accuracy": row[task]} for row in entry["depth"]]}
                                   if "depth" in entry else {})}
                          for key, task in tasks.items()}
                   for name, entry in document["targets"].items()},
    }


def attack_models(targets: dict[str, tuple[str, Path]], config, baseline: dict[str, float], original: str,
                  overrides: list[str] = ()) -> dict[str, dict]:
    """The attack part of a demo: each target (name -> (model path or scenario name, folder for its
    attacks)) attacked with the config's tamper grid, measured against `baseline` ({task:
    accuracy} of `original`, the model the targets are compared with). `overrides`, the command
    line's, may not set what the grid sets. Returns name -> its tamper.json document."""
    from peel.attacks.plan import TargetPlan, grid_attacks
    from peel.attacks.running import run_locally
    from peel.runs.targets import Target
    from peel.runs.folder import check_writable

    attacks = grid_attacks(config, [], overrides)
    source = {"given": baseline, "tasks": list(config.tamper.tasks)}
    plans = [TargetPlan(Target(model, None, config), check_writable(folder, f"the {name} attacks' folder"), attacks, source, original)
             for name, (model, folder) in targets.items()]
    documents = run_locally(plans)
    return {name: documents[plan.folder] for name, plan in zip(targets, plans)}


def attack_summary(documents: dict[str, dict], tasks: dict[str, str], retain_text: str | None = None) -> dict:
    """summary.json's attack fields, tasks renamed by `tasks` (summary key -> lm-eval task):
    "tamper": each model's worst case over its attacks as rows {"step", <forget key>},
    "attacks": each model's attacks {"name", "label" (readable), "kind", "curve": rows {"step", <key>: accuracy}[, "error"]},
    "resistance": each model's worst case in one line (tamper.json's summary of the forget task)."""
    from peel.attacks.results import readable

    renamed = {task: key for key, task in tasks.items()}
    forget_key = next(iter(tasks))
    forget = tasks[forget_key]

    def rows(curve: list[dict], keys: set[str]) -> list[dict]:
        return [{"step": row["step"], **{renamed[t]: v for t, v in row.items() if renamed.get(t) in keys}} for row in curve]

    return {
        "tamper": {name: rows(record["worst_case"], {forget_key}) for name, record in documents.items()},
        "attacks": {name: [{"name": attack["name"], "label": readable(attack, retain_text), "kind": attack["kind"],
                            "curve": rows(attack["curve"], set(tasks)),
                            **({"error": attack["error"]} if "error" in attack else {})}
                           for attack in record["attacks"]] for name, record in documents.items()},
        "resistance": {name: record["summary"].get(forget) for name, record in documents.items()},
    }


def format_row(row: dict[str, float]) -> str:
    return " ".join(f"{key} {value:.3f}" for key, value in row.items())


def markdown(summary: dict, probes: dict) -> str:
    """summary.md: one row per model (accuracies, where its hidden states still hold the forget
    answers, its worst case under attack), then the probes, the worst case and each attack."""
    from peel.outputs.probe_tables import probe_table
    from peel.outputs.tamper_tables import STEP_ZERO_NOTE, recovery_text

    labels = {attack["name"]: attack.get("label", attack["name"]) for attacks in summary["attacks"].values() for attack in attacks}
    lines = [finding(summary, labels), "",
             "| model | forget accuracy | retain accuracy | forget probe, best layer | forget lens, best layer | worst case under attack |",
             "|---|---|---|---|---|---|"]
    for name, row in summary["models"].items():
        readers = summary["probe"]["models"][name]["forget_acc"]
        probe, lens = (f"{readers[key]['accuracy']:.3f} (L{readers[key]['layer']})" for key in ("probe", "lens"))
        attacked = summary["resistance"].get(name)
        worst = "-" if attacked is None else f"{attacked['worst']:.3f} ({labels.get(attacked['worst_attack'], attacked['worst_attack'])})"
        lines.append(f"| {name} | {row['forget_acc']:.3f} | {row['retain_acc']:.3f} | {probe} | {lens} | {worst} |")
    lines += ["", "Probes (best layer L of each reader; the probe on held-out questions, the lens through the final norm "
              "and unembedding; every layer in probe/probe.json and probe/probe.png):", "", *probe_table(probes)]
    budget = max(row["step"] for rows in summary["tamper"].values() for row in rows)
    lines += ["", f"Tamper resistance (forget accuracy; worst case over each model's attacks within {budget} steps):", "",
              "| model | step 0 | worst | worst attack (step) | 50% back | 90% back | retain there |", "|---|---|---|---|---|---|---|"]
    for name, entry in summary["resistance"].items():
        back = recovery_text(entry["steps_to_recover"], entry["step0"], summary["models"]["base"]["forget_acc"])
        retain = "-" if entry["retain_at_worst"] is None else f"{entry['retain_at_worst']:.3f}"
        lines.append(f"| {name} | {entry['step0']:.3f} | {entry['worst']:.3f} | {labels.get(entry['worst_attack'], entry['worst_attack'])} ({entry['worst_step']}) | "
                     f"{' | '.join(back)} | {retain} |")
    curves = summary["tamper"]
    steps = sorted({row["step"] for rows in curves.values() for row in rows})
    lines += ["", "Worst case (forget accuracy vs attack step):", "",
              "| step | " + " | ".join(curves) + " |", "|---" * (len(curves) + 1) + "|"]
    for step in steps:
        found = [next((f"{row['forget_acc']:.3f}" for row in rows if row["step"] == step), "-") for rows in curves.values()]
        lines.append(f"| {step} | " + " | ".join(found) + " |")
    lines += ["", "Each attack at its last step (forget / retain accuracy):", "",
              "| attack | " + " | ".join(summary["attacks"]) + " |", "|---" * (len(summary["attacks"]) + 1) + "|"]
    names = list(dict.fromkeys(attack["name"] for attacks in summary["attacks"].values() for attack in attacks))
    for attack_name in names:
        cells = []
        for attacks in summary["attacks"].values():
            last = next((attack["curve"][-1] for attack in attacks if attack["name"] == attack_name), None)
            cells.append("-" if last is None else f"{last.get('forget_acc', float('nan')):.3f} / {last.get('retain_acc', float('nan')):.3f}")
        lines.append(f"| {labels.get(attack_name, attack_name)} | " + " | ".join(cells) + " |")
    lines += ["", f"{STEP_ZERO_NOTE} Chance is 0.25. Wall time: {summary['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def finding(summary: dict, labels: dict[str, str] | None = None, margin: float = 0.1) -> str:
    """What the demo showed, in one sentence from its numbers: how far unlearning moved the forget
    accuracy, how far the strongest attack brought it back, and where a reference model that never
    learned the domain (testbed:filtered) stays under the same attacks."""
    models, resistance = summary["models"], summary["resistance"]
    base, unlearned = models["base"]["forget_acc"], models["unlearned"]["forget_acc"]
    sentence = f"**What this showed.** Unlearning took forget accuracy from {base:.3f} to {unlearned:.3f} (chance 0.25)"
    attacked = resistance.get("unlearned")
    if attacked is None:
        return sentence + "."
    named = (labels or {}).get(attacked["worst_attack"], attacked["worst_attack"])
    sentence += (f"; the strongest attack ({named}, step {attacked['worst_step']}) brings it back to "
                 f"{attacked['worst']:.3f}")
    others = {name: entry for name, entry in resistance.items() if name not in ("base", "unlearned") and entry}
    for name, entry in others.items():
        sentence += f", while {name} stays at {entry['worst']:.3f} under the same attacks"
    reference = min((entry["worst"] for entry in others.values()), default=0.25)
    hidden = attacked["worst"] - reference > margin and attacked["worst"] - unlearned > margin
    return sentence + (": the knowledge was hidden, not removed." if hidden else
                       ": as far as these attacks can tell, it was removed.")
