"""peel demo --output-dir DIR: the whole pipeline on a built-in scenario, on a CPU, in minutes."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from peel.errors import PeelError

HELP = "Evaluate, unlearn, re-evaluate and attack a built-in scenario's models; write a summary."
DESCRIPTION = """\
Run peel end to end on a built-in scenario (no GPU, no downloads once installed):

  1. evaluate the scenario's models (testbed: base and filtered; elements: base, SmolLM2-135M)
     on its forget and retain tasks;
  2. unlearn base with the config (default configs/SCENARIO_lora.yaml) through the engine;
  3. evaluate the unlearned model;
  4. attack the unlearned model and any reference model (filtered) by fine-tuning on the
     scenario's tamper text, measuring forget accuracy every tamper.eval_every steps;
  5. write DIR/summary.json, DIR/summary.md and DIR/tamper.png (the unlearning run is DIR/unlearn).

  peel demo --output-dir runs/demo
  peel demo --output-dir runs/demo_full --config configs/testbed_full.yaml
  peel demo --scenario elements --output-dir runs/demo_elements
  peel demo --output-dir runs/quick data.num_examples=64 tamper.steps=20   # key=value overrides
"""

# The repository's configs folder (the demo is run from a clone, as the README says).
CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@dataclass(frozen=True)
class DemoScenario:
    """What the demo runs for one scenario."""

    config: Path  # default unlearning config
    base: str  # the model unlearned
    references: dict[str, str]  # models evaluated and attacked beside it (label -> name)
    tasks: dict[str, str]  # summary key -> lm-eval task


SCENARIOS = {
    "testbed": DemoScenario(CONFIGS / "testbed_lora.yaml", "testbed:base", {"filtered": "testbed:filtered"},
                            {"forget_acc": "testbed_forget", "retain_acc": "testbed_retain"}),
    # There is no SmolLM2 trained without the elements, so no reference model.
    "elements": DemoScenario(CONFIGS / "elements_lora.yaml", "elements:base", {},
                             {"forget_acc": "elements_forget", "retain_acc": "elements_retain"}),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, help="Folder for the summary, the plot and the unlearning run.")
    parser.add_argument("--scenario", default="testbed", choices=list(SCENARIOS), help="Built-in scenario (default: testbed).")
    parser.add_argument("--config", help="Unlearning config (default: configs/SCENARIO_lora.yaml).")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="Dotted overrides applied to the config.")


def run(args: argparse.Namespace) -> int:
    from peel.config import load_config

    started = time.time()
    output = Path(args.output_dir)
    scenario = SCENARIOS[args.scenario]
    config_path = args.config or str(scenario.config)
    if not Path(config_path).is_file():
        raise PeelError(f"demo config {config_path!r} does not exist; pass --config with a {args.scenario} config such as {scenario.config.name}")
    # The demo evaluates every model itself, the same way, so the engine's own evaluation is off.
    config = load_config(config_path, [*args.overrides, f"output_dir={output / 'unlearn'}", "eval.tasks=[]"])
    if config.model.name_or_path != scenario.base:
        raise PeelError(f"model.name_or_path={config.model.name_or_path!r}; the {args.scenario} demo unlearns {scenario.base}")
    output.mkdir(parents=True, exist_ok=True)
    evaluation = config.eval
    tasks = scenario.tasks

    from peel.engine import unlearn
    from peel.evaluation import write_evaluation
    from peel.tamper import write_curve

    evaluations = {}
    for name, model_name in {"base": scenario.base, **scenario.references}.items():
        evaluations[name] = evaluate_model(model_name, tasks, evaluation.batch_size, evaluation.max_length)
        print(f"{name}: {format_row(summary_row(evaluations[name], tasks))}", flush=True)

    run_folder = unlearn(config)
    unlearned_path = str(run_folder / "model")
    evaluations["unlearned"] = evaluate_model(unlearned_path, tasks, evaluation.batch_size, evaluation.max_length)
    print(f"unlearned: {format_row(summary_row(evaluations['unlearned'], tasks))}", flush=True)
    models = {name: summary_row(results, tasks) for name, results in evaluations.items()}

    histories = {name: attack_history(path, config, tasks) for name, path in {"unlearned": unlearned_path, **scenario.references}.items()}
    curves = {name: [{"step": row["step"], "forget_acc": row[tasks["forget_acc"]]} for row in rows] for name, rows in histories.items()}
    # The unlearning run folder gets what `peel eval` and `peel tamper` would have written, so
    # `peel report DIR/unlearn` shows its accuracies against the base model and its tamper curve.
    write_evaluation(run_folder, unlearned_path, evaluations["unlearned"], baseline={"model": scenario.base, **evaluations["base"]})
    write_curve(run_folder, histories["unlearned"])

    summary = {"models": models, "tamper": curves, "wall_seconds": round(time.time() - started, 1)}
    (output / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (output / "summary.md").write_text(markdown(summary))
    plot(curves, models["base"]["forget_acc"], tasks["forget_acc"], output / "tamper.png")
    print((output / "summary.md").read_text())
    print(f"demo finished in {summary['wall_seconds']:.0f}s: {output}")
    return 0


def evaluate_model(name_or_path: str, tasks: dict[str, str], batch_size: int, max_length: int) -> dict:
    from peel.evaluation import evaluate
    from peel.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(name_or_path, dtype="float32")
    return evaluate(model, tokenizer, list(tasks.values()), batch_size=batch_size, max_length=max_length)


def summary_row(results: dict, tasks: dict[str, str]) -> dict[str, float]:
    return {key: results["accuracy"][task] for key, task in tasks.items()}


def attack_history(name_or_path: str, config, tasks: dict[str, str]) -> list[dict]:
    """The tamper attack's accuracy rows ({"step", forget task}), whatever tasks the config's tamper section names."""
    import dataclasses

    from peel.tamper import attack

    settings = dataclasses.replace(config.tamper, tasks=[tasks["forget_acc"]])
    return attack(name_or_path, settings, config.eval, dtype="float32")


def format_row(row: dict[str, float]) -> str:
    return " ".join(f"{key} {value:.3f}" for key, value in row.items())


def markdown(summary: dict) -> str:
    lines = ["| model | forget accuracy | retain accuracy |", "|---|---|---|"]
    for name, row in summary["models"].items():
        lines.append(f"| {name} | {row['forget_acc']:.3f} | {row['retain_acc']:.3f} |")
    curves = summary["tamper"]
    steps = [row["step"] for row in next(iter(curves.values()))]
    lines += ["", "Tamper attack (forget accuracy vs attack step):", "",
              "| step | " + " | ".join(curves) + " |", "|---" * (len(curves) + 1) + "|"]
    for index, step in enumerate(steps):
        lines.append(f"| {step} | " + " | ".join(f"{rows[index]['forget_acc']:.3f}" for rows in curves.values()) + " |")
    lines += ["", f"Chance is 0.25. Wall time: {summary['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def plot(curves: dict[str, list[dict]], base_forget: float, task: str, path: Path) -> None:
    from peel.plots import plot_tamper

    renamed = {name: [{"step": row["step"], task: row["forget_acc"]} for row in rows] for name, rows in curves.items()}
    plot_tamper(renamed, path, baseline={task: base_forget})
