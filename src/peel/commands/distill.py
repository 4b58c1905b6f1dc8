"""peel distill RUN [dotted.key=value ...]"""

from __future__ import annotations

import argparse
from pathlib import Path
from peel.runs.folder import CONFIG_FILE

HELP = "Distill an unlearned model into a mix of itself and a fresh initialisation (unlearn, then distill)."
DESCRIPTION = """\
The student starts as RUN/model's weights mixed with a fresh initialisation of the same
architecture, (1 - distill.alpha) x unlearned + distill.alpha x re-initialised (alpha 1 is a fresh
model), and is trained for distill.steps steps to match the unlearned model's next-token
distributions (KL(teacher || student) per token) on retain text: the run's data.retain corpus,
or distill.data. What the unlearning only hid, the student is never shown. With
distill.with_forget=true it also learns the teacher's (unlearned) outputs on data.forget.

The result is a run folder like peel unlearn's (default RUN/distill, or --output-dir): config.yaml
(RUN's config with the distill section and output_dir), metrics.jsonl (distill_loss, grad_norm,
lr per step), run.json, model/ (safetensors, loadable by transformers, with a model card) and
eval.json against the model RUN unlearned, on RUN's eval.tasks (where those are empty and RUN's
model is a scenario's, such as testbed:base, on the scenario's tasks); it ends by printing what it
measured. peel eval, tamper, probe and report take it as a target. Running the same command again
resumes from the last checkpoint; under torchrun each process takes its share of every batch and
DDP averages the gradients.

  peel unlearn configs/testbed_resistant.yaml && peel distill runs/testbed_resistant   # its distill section
  peel distill runs/testbed_lora distill.alpha=1 distill.steps=600 --output-dir runs/testbed_lora_fresh
  peel tamper runs/testbed_resistant/distill

Config keys (distill.key = default (range)), overridable as key=value; the student's dtype is
train.dtype, its texts' length data.max_length, its chunked KL train.loss_chunk_tokens:
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peel.config import DistillConfig, help_lines

    parser.description = DESCRIPTION + "\n".join(help_lines(DistillConfig(), prefix="distill."))
    parser.add_argument("run_folder", metavar="RUN", help="A run folder that peel unlearn completed.")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="Dotted config overrides.")
    parser.add_argument("--output-dir", help="The distillation's run folder (default: RUN/distill).")
    parser.add_argument("--dry-run", action="store_true",
                        help="Check RUN, the output folder, the text and the batch shape, print the plan, and write nothing.")
    parser.add_argument("--force", action="store_true",
                        help="Start over in an output folder that holds a distillation (without it, the same config resumes).")


def evaluated_by_default(config):
    """The student is evaluated on RUN's eval.tasks; where RUN evaluated nothing and its model is a
    scenario's (testbed:base), on that scenario's tasks: a distillation that measures nothing
    cannot say whether the student kept what the teacher still knew."""
    from dataclasses import replace

    from peel import scenarios

    if config.eval.tasks:
        return config
    tasks = scenarios.defaults(config.model.name_or_path).get("eval", {}).get("tasks", [])
    return replace(config, eval=replace(config.eval, tasks=tasks)) if tasks else config


def run(args: argparse.Namespace) -> int:
    from peel import distributed
    from peel.config import load_config
    from peel.distill import check_run, distill

    folder = check_run(args.run_folder)
    # RUN's config (its model, data, eval and tamper settings), then the command line's keys.
    placed = [f"output_dir={args.output_dir}"] if args.output_dir else []
    overrides = [f"output_dir={folder / 'distill'}", *args.overrides, *placed, f"distill.run={Path(folder).resolve()}"]
    config = load_config(folder / CONFIG_FILE, overrides, relative_to_file=False)  # a run record, not a config file
    config = evaluated_by_default(config)
    output_dir = distill(config, force=args.force, dry_run=args.dry_run)
    if distributed.is_main() and not args.dry_run:
        from peel.outputs.model_card import write_model_cards

        write_model_cards(output_dir)  # over peft's blank template, which names the base by its local path
        from peel.runs.evaluations import measured_line

        print(measured_line(output_dir))
        print(f"run folder: {output_dir}")
    return 0
