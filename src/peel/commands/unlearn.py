"""peel unlearn CONFIG [dotted.key=value ...]"""

from __future__ import annotations

import argparse

from peel.config import Config, help_lines

HELP = "Run sequential back-to-front unlearning from a YAML config."
DESCRIPTION = (
    "Run every phase of a config and leave a run folder at output_dir:\n"
    "config.yaml, metrics.jsonl, run.json, model/ (and adapter/ for LoRA).\n"
    "Running it again on the same output_dir resumes from the last checkpoint.\n"
    "Under torchrun (torchrun --nproc_per_node=N -m peel unlearn ...) LoRA runs use DDP, full fine-tuning FSDP2.\n\n"
    "  peel unlearn configs/testbed_lora.yaml unlearn.remove_coef=30 train.lr=5e-4\n\n"
    "Config keys (dotted.key = default), any of which can be overridden as key=value:\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION + "\n".join(help_lines(Config()))
    parser.add_argument("config", help="YAML config file (see configs/).")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="Dotted config overrides.")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Check everything that can be checked without training (config, output folder, model config, "
        "tokenizer, data, plan, tasks), print the plan, and write nothing.",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="Start over in an output_dir that holds a run (without it, the same config resumes "
        "and a different one is an error).",
    )


def run(args: argparse.Namespace) -> int:
    from peel import distributed
    from peel.config import load_config
    from peel.unlearning.engine import unlearn

    config = load_config(args.config, args.overrides)
    output_dir = unlearn(config, force=args.force, dry_run=args.dry_run)
    if distributed.is_main() and not args.dry_run:
        from peel.outputs.model_card import write_model_cards

        write_model_cards(output_dir)  # over peft's blank template, which names the base by its local path
        from peel.runs.evaluations import measured_line

        print(measured_line(output_dir))
        print(f"run folder: {output_dir}")
    return 0
