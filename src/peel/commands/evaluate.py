"""`peel eval TARGET`: lm-eval accuracy of a run's model, a model folder or a hub id -> eval.json."""

from __future__ import annotations

import argparse

from peel.errors import PeelError

HELP = "Evaluate a model with lm-eval-harness (0-shot multiple choice) and write eval.json."
DESCRIPTION = """\
Evaluate TARGET (a run folder, whose model/ is used; a model folder; a .gguf file or a folder with
model.gguf_file=NAME; smollm2-135m; testbed:base / elements:base; or a hub id) on lm-eval tasks,
0-shot, in process, and write eval.json with one accuracy per task and group.

peel's own tasks:
  wmdp_bio_robust              six WMDP-Bio-Robust subsets (wmdp_bio_robust_SUBSET), weighted by size
  wmdp_bio_cloze               the cloze-compatible WMDP-Bio questions, each answer scored as a
                               continuation of the question; read acc_norm (answers differ in length)
  wmdp_bio_cloze_correct_prob  the same questions: the probability given to the right answer
  testbed_forget, testbed_retain, elements_forget, elements_retain
                               the built-in scenarios' cloze questions (forget, retain)
any lm-eval task name works too (e.g. mmlu), and your own task YAMLs with eval.include_path=FOLDER.

Settings come from the run's config.yaml (for a run folder) or the defaults, then key=value
overrides: eval.batch_size, eval.max_length, eval.limit, eval.tasks, eval.include_path.

examples:
  peel eval runs/lora_l2 --tasks wmdp_bio_robust,mmlu
  peel eval testbed:base --tasks testbed_forget,testbed_retain --output-dir out/base
  peel eval runs/lora_l2 --tasks my_task eval.include_path=my_tasks/   # a folder of lm-eval task YAMLs
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="Run folder, model folder, hub id or testbed:NAME.")
    parser.add_argument("--tasks", help="Comma-separated tasks (overrides eval.tasks).")
    parser.add_argument("--output-dir", help="Where eval.json goes (default: the run folder).")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="For a run folder, also evaluate the run's original model (cached) and store it as the baseline.",
    )
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="Config overrides, e.g. eval.limit=100.")


def run(args: argparse.Namespace) -> int:
    from peel.evaluation import cached_baseline, evaluate_with, load_baseline
    from peel.runs.evaluations import write_evaluation
    from peel.runs.targets import load_target_model, output_folder, resolve_target
    from peel.models import model_location

    overrides = list(args.overrides)
    if args.tasks:
        overrides.append(f"eval.tasks=[{args.tasks}]")
    target = resolve_target(args.target, overrides)
    settings = target.config.eval
    folder = output_folder(target, args.output_dir, "eval")
    if not settings.tasks:
        raise PeelError("no tasks to evaluate; pass --tasks wmdp_bio_robust,mmlu or eval.tasks=[...]")

    from peel.evaluation.harness import manager_for

    manager_for(settings.tasks, settings.include_path)  # unknown task names fail before any model loads

    def evaluate_folder(name: str) -> dict:
        from peel.runs.targets import Target

        model, tokenizer = load_target_model(Target(name, None, target.config))
        return {"model": name, **evaluate_with(model, tokenizer, settings)}

    results = evaluate_folder(target.model)
    baseline = None
    if target.run_folder is not None:
        original = model_location(target.config.model.name_or_path, target.config.model.gguf_file)
        cache_arguments = (original, settings.tasks, settings.limit, settings.max_length)
        where = {"revision": target.config.model.revision, "include_path": settings.include_path}
        if args.baseline:
            baseline = cached_baseline(*cache_arguments, compute=lambda: evaluate_folder(original), **where)
        else:
            baseline = load_baseline(*cache_arguments, **where) or earlier_baseline(folder, settings.tasks)
    path = write_evaluation(folder, results.pop("model"), results, baseline)
    if target.run_folder is not None:
        from peel.outputs.model_card import write_model_cards

        write_model_cards(target.run_folder)  # the run's model cards show the new accuracies
    for name, accuracy in results["accuracy"].items():
        reference = f" (baseline {baseline['accuracy'][name]:.4f})" if baseline and name in baseline["accuracy"] else ""
        print(f"{name}: {accuracy:.4f}{reference}")
    print(f"wrote {path}")
    return 0


def earlier_baseline(folder, tasks: list[str]) -> dict | None:
    """The baseline an earlier eval.json in `folder` holds for the same tasks (e.g. from peel unlearn)."""
    from peel.runs.evaluations import read_evaluation

    earlier = read_evaluation(folder)
    baseline = (earlier or {}).get("baseline")
    return baseline if baseline and set(tasks) <= set(baseline.get("accuracy", {})) else None
