"""`peel testbed build`: regenerate the testbed's world, tokenizer and models."""

from __future__ import annotations

import argparse

from peel.errors import PeelError

HELP = "Rebuild the built-in testbed (world, tokenizer, base and filtered models)."
DESCRIPTION = """\
Rebuild the built-in testbed deterministically from a seed:

  peel testbed build --output-dir DIR

writes world.json, forget/retain/tamper.jsonl, forget_mc/retain_mc.jsonl, tokenizer/, base/ and
filtered/ into DIR. The shipped artifacts (src/peel/testbed/artifacts) were built with the
defaults; base and filtered train side by side, one CPU thread each (22 minutes measured on
2 shared cores).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["build"], help="What to do (only build for now).")
    parser.add_argument("--output-dir", required=True, help="Folder to write the artifacts into.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for the world, the questions and the models.")
    parser.add_argument("--steps", type=int, default=None, help="Pretraining steps per model (default: the shipped value).")
    parser.add_argument("--entities", type=int, default=100, help="Entities per domain (pathogens, towns).")
    parser.add_argument("--sequential", action="store_true", help="Train the two models one after the other.")


def run(args: argparse.Namespace) -> int:
    from peel.testbed.build import build_testbed
    from peel.testbed.pretrain import Schedule

    steps = Schedule.steps if args.steps is None else args.steps
    if steps < 1:
        raise PeelError(f"--steps got {steps}; accepted: a positive integer")
    if args.entities < 2:
        raise PeelError(f"--entities got {args.entities}; accepted: an integer of at least 2 (parts A and B)")
    from peel.runs.folder import check_writable

    check_writable(args.output_dir, "--output-dir")
    summary = build_testbed(args.output_dir, seed=args.seed, steps=steps,
                            entities_per_domain=args.entities, parallel=not args.sequential)
    print(f"testbed built in {summary['wall_seconds']:.0f}s: {args.output_dir}")
    return 0
