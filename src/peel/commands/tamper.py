"""`peel tamper TARGET...`: a grid of attacks on each target -> tamper.json (worst case, recovery) and tamper.png."""

from __future__ import annotations

import argparse
from pathlib import Path

from peel.commands.arguments import TargetsAndOverrides
from peel.errors import PeelError
from peel.runs.folder import TAMPER_FILE

HELP = ("Attack models with a grid of fine-tuning, few-shot, quantization, orthogonalization, pruning, prompt, "
        "soft-prompt and latent attacks; report the worst case.")
DESCRIPTION = """\
Attack each TARGET (a run folder, a model folder, a hub id or testbed:NAME) with every attack of
a grid and report the worst case: at each evaluated step, each task's highest accuracy over the
attacks. Attacks:
  - few-shot prompts: tamper.few_shot (default [0, 5]) examples before each forget question
    (lm-eval num_fewshot); 0 shots is the model as it is, also step 0 of every fine-tuning attack;
  - fine-tuning: one attack per grid point, on tamper.data (forget-domain text; retain or general
    text makes it a benign attack), evaluating tamper.tasks at step 0 and every tamper.eval_every
    steps (or at tamper.eval_steps, e.g. [10, 30, 100, 300] of a 1000-step attack). The grid: --grid tamper.KEY=V1,V2 (repeatable; every combination), else tamper.grid (a
    list of attacks; default: the seed group's standard sweep of seven, warmup as a share of
    tamper.steps); tamper.grid=[] is one attack with the section's settings;
  - no training, a grid entry with a kind, evaluated once (step 0):
    {kind: quantize, bits: 4} (bits 2, 3, 4, 8 or 16 = as is; group_size 128, 0 = per output row):
    each linear weight of the decoder layers rounded to that many bits and back (rtn_absmax);
    {kind: orthogonalize, components: 1} (num_examples 64): the top principal components of
    (target - original) hidden states on tamper.data projected out of every layer's output; the
    original is --baseline MODEL or the model a run folder unlearned;
    {kind: prune, sparsity: 0.1} (by: wanda, or change = where the unlearning changed the weights
    most, which needs the original): that share of each decoder weight row set to zero;
    {kind: prompt} (template: jailbreak, expert, prefill or your own text with {question}; none =
    one attack per built-in one): each forget question put into the template;
  - trained perturbations, the weights untouched, evaluated like fine-tuning with their own lr:
    {kind: soft_prompt, tokens: 16}: input embeddings before every prompt;
    {kind: latent, epsilon: 0.1}: a vector per layer added to the residual stream, at most epsilon
    x each token's hidden-state norm.
The attack's seed is a grid key too: --grid tamper.seed=0,1,2.

tamper.tasks: the forget task(s) first, the retain task last (default [wmdp_bio_robust, mmlu]);
your own lm-eval task YAMLs are found with eval.include_path=FOLDER. A scenario's model as TARGET
(testbed:filtered) brings its scenario's attack text, tasks and float32 unless set otherwise.
Everything that can be checked (targets, --baseline, weights, tasks, include_path, attack text) is
checked before anything is written or any weights load; --dry-run checks the same.

Writes into the run folder or --output-dir (with several targets, --output-dir/<name> each):
  attacks/NAME.json  one finished attack (a rerun does not run it again; other settings under the
                     same name are refused unless --force), attacks/grid.json the plan;
  tamper.json        {"attacks": [{"name", "kind", "settings", "curve": [{"step", TASK: acc}]}],
                     "worst_case": [{"step", TASK: max over attacks}], "summary": {FORGET_TASK:
                     {"step0", "worst", "worst_step", "worst_attack", "retain_at_worst",
                     "steps_to_recover": {"50": step, "90": step}}}, "baseline", "pending"};
                     steps_to_recover: first step at which the worst case regained that share of
                     (baseline - step 0), null if never; steps_to_recover is null without
                     a baseline or when step 0 is at or above it (nothing was lost);
  tamper.png         a panel per task: each attack a thin line, the worst case bold, baseline and
                     chance; several targets or --compare side by side (in --output-dir, else the
                     first target's folder).

The baseline (0-shot accuracy of the original model) is --baseline MODEL (evaluated once, then
from the eval cache), else a run folder's eval.json baseline or the cached evaluation of the
model it unlearned. All targets use the settings of the first run folder among them (or the
defaults) with the key=value overrides; an override of a key the grid sets is refused.

--compare OTHER: a folder holding tamper.json is read; any other target is attacked alike, under
<figure folder>/compare/<name>/.

--slurm KEY=VALUE (the keys of peel sweep: partition, time, account, gpus_per_node, ...): one
job per attack through submitit instead of running here; each job writes its attack and
tamper.json. Run the same command again to submit what is missing; once nothing is left it
draws the figure. Locally, SIGTERM / SIGUSR1 stop the grid at the next step (exit 75; the
unfinished attack is dropped); run the same command again to continue.

examples:
  peel tamper runs/lora_l2 --compare EleutherAI/deep-ignorance-e2e-strong-filter
  peel tamper runs/a runs/b --output-dir tamper/ab --grid tamper.lr=2e-5,2e-4 --grid tamper.adapter=full,lora
  peel tamper testbed:filtered --output-dir out/filtered --baseline testbed:base \\
      tamper.data.path=testbed:tamper tamper.tasks=[testbed_forget,testbed_retain] tamper.grid=[]
  peel tamper runs/lora_l2 --slurm partition=gpu --slurm time=04:00:00

Attack keys (tamper.key = default (range)), overridable as key=value; evaluation uses
eval.batch_size, eval.max_length, eval.limit:
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peel.config import TamperConfig, help_lines

    parser.description = DESCRIPTION + "\n".join(help_lines(TamperConfig(), prefix="tamper."))
    parser.add_argument("targets", nargs="+", metavar="TARGET", action=TargetsAndOverrides,
                        help="Run folders, model folders, hub ids or testbed:NAME; then key=value overrides.")
    parser.add_argument("--output-dir", help="Where the results go (default: the run folder; several targets: DIR/<name>).")
    parser.add_argument("--grid", action="append", default=[], metavar="tamper.KEY=V1,V2",
                        help="An attack setting and its values; repeat for more keys (every combination is an attack).")
    parser.add_argument("--baseline", metavar="MODEL", help="The original model, for recovery (evaluated once, then cached).")
    parser.add_argument("--compare", action="append", default=[], metavar="OTHER",
                        help="Another model beside the targets in tamper.png (its tamper.json, or attacked alike).")
    parser.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                        help="Submit one Slurm job per attack with this setting (as peel sweep); repeatable.")
    parser.add_argument("--force", action="store_true", help="Attack again where a folder holds attacks with other settings.")
    parser.add_argument("--dry-run", action="store_true",
                        help="Check the targets, settings, folders and attack data, print each attack and the grid's size "
                        "(attacks, optimizer steps, estimated evaluations), and write nothing.")
    parser.set_defaults(overrides=[])


def run(args: argparse.Namespace) -> int:
    from peel.runs import jobs, tracking
    from peel.attacks import baseline, folder, running
    from peel.attacks.plan import check_attack_data, label, plan_attacks
    from peel.attacks.results import read_tamper

    targets, overrides = args.targets, list(args.overrides)
    if not targets:
        raise PeelError("give at least one TARGET (a run folder, a model folder, a hub id or testbed:NAME)")
    slurm = slurm_parameters(args.slurm) if args.slurm else None  # a bad --slurm word is found first
    read_only = [other for other in args.compare if Path(other).is_dir() and (Path(other) / TAMPER_FILE).is_file()]
    plans = plan_attacks(targets, overrides, args.grid, args.output_dir, args.baseline,
                         compared=[other for other in args.compare if other not in read_only])
    compared = {label(other): read_tamper(other) for other in read_only}
    config = plans[0].target.config
    tracking.check(config.track.to)
    check_attack_data(plans[0].attacks)  # the corpora last: they may take a moment to load
    source = plans[0].baseline
    if args.dry_run:
        from peel.unlearning.dry_run import tamper_lines

        print("\n".join(["checked, nothing written:", *tamper_lines(plans, evaluated=bool(args.baseline))]))
        return 0
    if not args.baseline and not baseline.find_baseline(source):
        from peel.unlearning.dry_run import baseline_line

        print(baseline_line(source), flush=True)  # said before the attacks, not discovered after them

    if args.slurm:
        executor = jobs.make_executor(plans[0].attacks_folder / "jobs", slurm)
        submitted = running.submit(plans, executor, args.force)
        if args.baseline and not has_all(baseline.find_baseline(source), source["tasks"]):
            executor.update_parameters(name="peel-tamper-baseline")
            job = executor.submit(running.BaselineJob(source, config, [target_plan.folder for target_plan in plans]))
            print(f"baseline {args.baseline}: submitted as job {job.job_id}")
            submitted.append(job)
        if submitted:
            print(f"{len(submitted)} jobs submitted; run the same command again once they finished to draw tamper.png")
            return 0
        documents = {target_plan.folder: folder.collect(target_plan.folder) for target_plan in plans}
    else:
        if args.baseline:
            baseline.evaluate_baseline(source, config)
        documents = running.run_locally(plans, args.force)
    from peel.outputs.model_card import write_model_cards

    for target_plan in plans:
        print_summary(target_plan.folder, documents[target_plan.folder])
        track(target_plan, documents[target_plan.folder])
        if target_plan.target.run_folder is not None:
            write_model_cards(target_plan.target.run_folder)  # its model cards show the attacks
    draw(plans, documents, compared, args.output_dir)
    return 0


def track(plan, document: dict) -> None:
    """Each attack's curve and the worst case to the trackers (track.to), into the run's tracked
    runs when the target is a run folder that has them."""
    from peel.runs import tracking
    from peel.config import to_dict

    config = plan.target.config
    if config.track.to:
        curves = {attack["name"]: attack["curve"] for attack in document["attacks"]}
        tracking.log_curves(config.track, to_dict(config), plan.folder, {**curves, "worst_case": document["worst_case"]})


def has_all(baseline: dict | None, tasks: list[str]) -> bool:
    return baseline is not None and all(task in baseline for task in tasks)


def slurm_parameters(items: list[str]) -> dict:
    from peel.runs import jobs

    parameters = jobs.slurm_parameters(items)
    if parameters.get("nodes", 1) != 1:
        raise PeelError(f"--slurm nodes={parameters['nodes']}: an attack runs in one process; accepted: nodes=1")
    return parameters


def draw(plans, documents: dict, compared: dict, output_dir: str | None) -> None:
    """tamper.png in each target's folder, and the models side by side where there are several."""
    from peel.plots import plot_tamper
    from peel.attacks.plan import figure_folder, label

    named = {label(plan.target.model if plan.target.run_folder is None else str(plan.target.run_folder)): documents[plan.folder]
             for plan in plans}
    for plan, name in zip(plans, named):
        print(f"wrote {plot_tamper({name: documents[plan.folder]}, plan.folder / 'tamper.png')}")
    if len(named) + len(compared) > 1:  # replaces the first target's own figure when that is where it goes
        home = figure_folder([plan.folder for plan in plans], output_dir)
        print(f"wrote {plot_tamper({**named, **compared}, home / 'tamper.png')}")


def print_summary(folder: Path, document: dict) -> None:
    from peel.attacks.results import label_of

    for task, entry in document["summary"].items():
        recovery, baseline = entry["steps_to_recover"], (document.get("baseline") or {}).get(task)
        nothing_lost = f"nothing to recover (step 0 at or above the baseline {baseline:.4f})" if baseline is not None else "no baseline"
        recovered = nothing_lost if recovery is None else ", ".join(
            f"{share}% back at step {step}" if step is not None else f"{share}% never" for share, step in recovery.items())
        retain = "" if entry["retain_at_worst"] is None else f"; {document['retain_task']} there {entry['retain_at_worst']:.4f}"
        print(f"{folder}: {task}: step 0 {entry['step0']:.4f}, worst {entry['worst']:.4f} "
              f"({label_of(document, entry['worst_attack'])}, step {entry['worst_step']}); {recovered}{retain}")
    if document["pending"]:
        print(f"{folder}: not finished yet: {', '.join(document['pending'])}")
