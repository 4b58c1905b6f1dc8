"""`peel probe TARGET...`: is the forget knowledge still in the representations? -> probe.json, probe.png."""

from __future__ import annotations

import argparse

from peel.commands.arguments import TargetsAndOverrides
from peel.errors import PeelError
from peel.runs.folder import PROBE_FILE

HELP = "Linear probes and the logit lens at every layer: is the knowledge still in the hidden states?"
DESCRIPTION = """\
For each TARGET (a run folder, a model folder, a hub id, testbed:base / testbed:filtered, ...) and
each layer, fit a linear probe (logistic regression) on the layer's hidden states for a task's
questions, on a training share of them, and report its accuracy on the rest; and read the task
through the logit lens (the layer's output through the final norm and unembedding). A task whose
questions share their choices (A-D letters) is probed for the answer's index; one whose choices
are per-question text (the testbed's cloze questions) for the answer's text as a class of the
context's hidden state, its choices ranked by their classes' scores (probe.cloze=choice instead: a
binary probe on context + choice, the highest-scoring choice counting as the answer). The split is fixed by probe.seed, the same for
every target, so targets compare. For a target made from another model (a run folder: the model it
unlearned; or --baseline MODEL), the depth reader also scores the task with the target's layer
output finished by the original's later layers and head: where that still answers, the unlearning
has not acted yet. Writes probe.json and probe.png (accuracy vs layer, a line per
target, chance dotted) into --output-dir, or into the run folder when TARGET is one run folder.

Settings come from the first run folder's config.yaml (or the defaults), then key=value
overrides: probe.tasks ([] = eval.tasks), probe.layers, probe.pooling, probe.cloze,
probe.train_share, probe.seed, probe.limit; batches and context length are eval.batch_size and eval.max_length;
your own lm-eval task YAMLs are found with eval.include_path=FOLDER.

example:
  peel probe testbed:base runs/testbed_lora testbed:filtered --output-dir probes/testbed

"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peel.config import ProbeConfig, help_lines

    parser.description = DESCRIPTION + "\n".join(help_lines(ProbeConfig(), prefix="probe."))
    parser.add_argument("targets", nargs="+", metavar="TARGET", action=TargetsAndOverrides,
                        help="Run folders, model folders, hub ids or testbed:NAME; then key=value overrides, "
                             "e.g. probe.layers=[0,4,7].")
    parser.add_argument("--tasks", help="Comma-separated tasks, forget first (overrides probe.tasks).")
    parser.add_argument("--output-dir", help="Where probe.json and probe.png go (default: the run folder, for one run folder).")
    parser.add_argument("--baseline", metavar="MODEL",
                        help="The model the targets were made from, for the depth reader (each target's layer output "
                             "finished by MODEL's later layers); default: a run folder's own model. Not read for MODEL itself.")
    parser.set_defaults(overrides=[])


def run(args: argparse.Namespace) -> int:
    from peel.runs.targets import output_folder, resolve_targets
    from peel.runs.folder import check_writable

    overrides = list(args.overrides)
    if not args.targets:
        raise PeelError("give at least one TARGET (a run folder, a model folder, a hub id or testbed:NAME)")
    if args.tasks is not None:
        overrides.append(f"probe.tasks=[{args.tasks}]")
    targets = resolve_targets(args.targets, overrides)
    if args.tasks is not None and not targets[0].config.probe.tasks:
        raise PeelError(f"--tasks {args.tasks!r} names no task; accepted: comma-separated task names such as testbed_forget,testbed_retain")
    if args.output_dir is not None:
        folder = check_writable(args.output_dir, "--output-dir")
    elif len(targets) == 1:
        folder = output_folder(targets[0], None, "probe")
    else:
        raise PeelError("peel probe of several targets needs --output-dir (one probe.json holds them all)")

    from peel.probing.runner import probe_targets

    originals = [depth_original(target, name, args.baseline, overrides) for target, name in zip(targets, args.targets)]
    document = probe_targets(targets, args.targets, folder, originals=originals)
    from peel.outputs.probe_tables import best_lines

    print("\n".join(best_lines(document)) + "\n(best layer L of each reader, as in peel report's probe table)")
    print(f"wrote {folder / PROBE_FILE} and {folder / 'probe.png'}")
    return 0


def depth_original(target, name: str, baseline: str | None, overrides: list[str]):
    """The model the depth reader finishes `target` with: --baseline (not for the baseline itself),
    else the model a run folder unlearned, else none."""
    from peel.runs.targets import Target, resolve_target
    from peel.models import model_location

    if baseline is not None:
        return None if name == baseline else resolve_target(baseline, overrides)
    if target.run_folder is None:
        return None
    model = target.config.model
    return Target(model_location(model.name_or_path, model.gguf_file), None, target.config)
