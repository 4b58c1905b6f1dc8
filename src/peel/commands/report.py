"""`peel report RUNS...`: the research log's tables and plots, from run folders alone."""

from __future__ import annotations

import argparse
import shutil

from peel.errors import PeelError
from peel.runs.folder import CONFIG_FILE, PROBE_FILE, TAMPER_FILE
from pathlib import Path

HELP = "Render markdown tables and plots from run folders (no model loading)."
DESCRIPTION = """\
Read run folders (config.yaml, metrics.jsonl, run.json, eval.json, tamper.json, probe.json) and
folders `peel probe --output-dir` wrote, and write a markdown report: one table per experiment
family (runs that differ only in swept settings such as remove_coef, retain_coef, lr), baseline
row first, the best forget-minus-retain result in bold, each run labelled with its evaluation
state; a tampering table; a probe table (best layer's probe and logit-lens accuracy per model and
task); and plots (loss curves per phase, accuracy vs phase, overlaid tamper curves, probe accuracy
vs layer) in a folder beside the report.

A sweep folder (peel sweep's output_dir) stands for its runs; a folder peel tamper --output-dir
wrote (a model attacked without a run, such as testbed:filtered) joins the tamper tables. Anything
else among RUN (a file, a folder of peel eval, any other folder) is skipped with a one-line note.

example:
  peel report runs/* --output report.md
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="Run folders, sweep folders (their runs), and folders peel probe wrote probe.json into; "
                        "anything else is skipped with a note.")
    parser.add_argument("--output", default="report.md", help="Markdown file to write (plots go to <name>_plots/).")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peel.outputs.probe_tables import read_probes
    from peel.outputs.report import draw_plots, read_run, render
    from peel.runs.folder import check_writable

    output = Path(args.output)
    if output.is_dir():
        raise PeelError(f"--output {args.output!r} is a folder; accepted: a markdown file to write, e.g. report.md")
    check_writable(output.parent, "the folder of --output")
    run_folders, probe_folders = sort_folders(args.runs)
    probes = read_probes(probe_folders)
    runs = [read_run(folder) for folder in run_folders]
    output.parent.mkdir(parents=True, exist_ok=True)
    plots = output.parent / f"{output.stem}_plots"
    # Drawn into a folder of its own first: a failure leaves the previous report's plots, not half of them.
    drawing = plots.with_name(f"{plots.name}.partial")
    shutil.rmtree(drawing, ignore_errors=True)
    try:
        drawn = draw_plots(runs, drawing, relative_to=drawing, probes=probes)
        links = {key: [str(plots.relative_to(output.parent) / path) for path in paths] for key, paths in drawn.items()}
        text = render(runs, links, probes)
    except BaseException:
        shutil.rmtree(drawing, ignore_errors=True)
        raise
    shutil.rmtree(plots, ignore_errors=True)
    if drawing.is_dir():
        drawing.rename(plots)
    output.write_text(text)
    print(f"wrote {output}")
    return 0


# Files that say what made a folder that is not a run folder, for the note that skips it.
OTHER_OUTPUTS = {"eval.json": "peel eval", "tamper.json": "peel tamper", "summary.json": "peel demo"}


def sort_folders(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """(run folders, probe folders) among `paths`, as `runs/*` gives them: a sweep folder becomes
    its runs; a file or another folder is skipped with a note. Nothing to report is an error."""
    from pathlib import Path

    from peel.runs.folder import SWEEP_FILE, read_json

    runs, probes, skipped = [], [], []
    for text in paths:
        path = Path(text)
        if not path.exists():
            raise PeelError(f"{text!r} does not exist; accepted: run folders, sweep folders, folders peel probe wrote")
        if (path / CONFIG_FILE).is_file() or (path / TAMPER_FILE).is_file():  # a run, or peel tamper --output-dir's folder
            runs.append(path)
        elif (path / SWEEP_FILE).is_file():
            index = read_json(path / SWEEP_FILE, "sweep.json as peel sweep writes it")
            entries = index.get("runs") if isinstance(index, dict) else None
            if not isinstance(entries, list):
                raise PeelError(f"{path / SWEEP_FILE} has no list of runs; accepted: sweep.json as peel sweep writes it")
            found = [path / entry["name"] for entry in entries
                     if isinstance(entry, dict) and isinstance(entry.get("name"), str) and (path / entry["name"] / CONFIG_FILE).is_file()]
            print(f"peel report: {text}: a sweep folder, reading its {len(found)} run(s)")
            runs += found
        if (path / PROBE_FILE).is_file():
            probes.append(path)
        elif path not in runs and not (path / SWEEP_FILE).is_file():
            skipped.append(text)
            print(f"peel report: skipping {text}: it is {what_it_is(path)}")
    if not runs and not probes:
        raise PeelError(f"nothing to report: {skipped[0]!r} is {what_it_is(Path(skipped[0]))}; "
                        "accepted: run folders (with config.yaml), sweep folders (with sweep.json), folders peel probe wrote")
    return runs, probes


def what_it_is(path) -> str:
    """Why a path is not a run folder, in a few words."""
    if path.is_file():
        return "a file, not a run folder"
    made_by = next((command for name, command in OTHER_OUTPUTS.items() if (path / name).is_file()), None)
    return f"not a run folder (no config.yaml; {made_by} output)" if made_by else "not a run folder (no config.yaml)"
