"""`peel tamper TARGET`: the fine-tuning attack, its accuracy curve (tamper.json) and plot (tamper.png)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

HELP = "Fine-tune a model on forget-domain text and track forget accuracy (the tampering attack)."
DESCRIPTION = """\
Fine-tune TARGET (a run folder, a model folder, a hub id or testbed:NAME) with a causal-LM loss on
tamper.data and evaluate tamper.tasks at step 0 and every tamper.eval_every steps. Writes
tamper.json ([{"step": .., "<task>": accuracy}, ...]) and tamper.png (accuracy vs step with the
baseline and chance as lines) into the run folder or --output-dir.

--compare overlays other targets: a folder that already holds tamper.json is read; any other
target is attacked with the same settings first (results under OUTPUT/compare/NAME/).

Keys (key=value): tamper.data.path, tamper.adapter (full|lora), tamper.lr, tamper.steps,
tamper.per_device_batch_size, tamper.num_examples, tamper.max_length, tamper.tasks,
tamper.eval_every, tamper.seed; evaluation uses eval.batch_size, eval.max_length, eval.limit.

example:
  peel tamper runs/lora_l2 tamper.steps=100 --compare EleutherAI/deep-ignorance-e2e-strong-filter
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="Run folder, model folder, hub id or testbed:NAME.")
    parser.add_argument("--output-dir", help="Where tamper.json and tamper.png go (default: the run folder).")
    parser.add_argument(
        "--compare", action="append", default=[], metavar="OTHER", help="Another target to overlay on the plot (repeatable)."
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="Config overrides, e.g. tamper.lr=1e-4.")


def run(args: argparse.Namespace) -> int:
    from peel.evaluation import load_baseline, read_evaluation
    from peel.evaluation.targets import output_folder, resolve_target
    from peel.models import model_location
    from peel.plots import plot_tamper
    from peel.tamper import attack, read_curve, write_curve

    target = resolve_target(args.target, list(args.overrides))
    config = target.config
    folder = output_folder(target, args.output_dir, "tamper")

    def attack_target(name: str) -> list[dict]:
        return attack(name, config.tamper, config.eval, dtype=config.train.dtype)

    curves = {label(args.target): attack_target(target.model)}
    print(f"wrote {write_curve(folder, curves[label(args.target)])}")
    for other in args.compare:
        history = read_curve(other) if Path(other).is_dir() else None
        if history is None:
            history = attack_target(resolve_target(other, list(args.overrides)).model)
            write_curve(folder / "compare" / label(other), history)
        curves[label(other)] = history

    baseline = None
    evaluation = read_evaluation(target.run_folder) if target.run_folder is not None else None
    if evaluation is not None and evaluation.get("baseline"):
        baseline = evaluation["baseline"]["accuracy"]
    elif target.run_folder is not None:
        original = model_location(config.model.name_or_path, config.model.gguf_file)
        cached = load_baseline(original, config.tamper.tasks, config.eval.limit, config.eval.max_length)
        baseline = cached["accuracy"] if cached else None
    print(f"wrote {plot_tamper(curves, folder / 'tamper.png', baseline)}")
    return 0


def label(target: str) -> str:
    """A short, file-safe name for a target: the run folder's name or the hub id's last part."""
    name = Path(target.rstrip("/")).name or target
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
