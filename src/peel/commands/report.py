"""`peel report RUNS...`: the research log's tables and plots, from run folders alone."""

from __future__ import annotations

import argparse

from peel.errors import PeelError

HELP = "Render markdown tables and plots from run folders (no model loading)."
DESCRIPTION = """\
Read run folders (config.yaml, metrics.jsonl, run.json, eval.json, tamper.json, probe.json) and
folders `peel probe --output-dir` wrote, and write a markdown report: one table per experiment
family (runs that differ only in swept settings such as remove_coef, retain_coef, lr), baseline
row first, the best forget-minus-retain result in bold, each run labelled with its evaluation
state; a tampering table; a probe table (best layer's probe and logit-lens accuracy per model and
task); and plots (loss curves per phase, accuracy vs phase, overlaid tamper curves, probe accuracy
vs layer) in a folder beside the report.

example:
  peel report runs/* --output report.md
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="Run folders, and folders peel probe wrote probe.json into.")
    parser.add_argument("--output", default="report.md", help="Markdown file to write (plots go to <name>_plots/).")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peel.report import draw_plots, read_probes, read_run, render
    from peel.run_folder import check_writable

    output = Path(args.output)
    if output.is_dir():
        raise PeelError(f"--output {args.output!r} is a folder; accepted: a markdown file to write, e.g. report.md")
    check_writable(output.parent, "the folder of --output")
    probes = read_probes(args.runs)
    # a folder that holds only probe.json (peel probe --output-dir) is not a run folder
    runs = [read_run(folder) for folder in args.runs
            if Path(folder).resolve().name not in probes or (Path(folder) / "config.yaml").is_file()]
    output.parent.mkdir(parents=True, exist_ok=True)
    links = draw_plots(runs, output.parent / f"{output.stem}_plots", relative_to=output.parent, probes=probes)
    output.write_text(render(runs, links, probes))
    print(f"wrote {output}")
    return 0
