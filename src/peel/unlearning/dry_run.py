"""What `--dry-run` prints: the settings a run or an attack grid will use, checked, in a few lines.

`peel unlearn --dry-run` shows the method (losses, coefficients, adapter, optimizer, batch and
accumulation, the plan of layers and steps, evaluation) and the attack grid the config's tamper
section gives `peel tamper`; `peel tamper --dry-run` the grid per target; `peel sweep --dry-run`
each run. Nothing here loads weights or writes a file; every value printed comes from the
checked config and plan, so what is shown is what would run.
"""

from __future__ import annotations

from peel.config import Config, EvalConfig, LoraOptions, TrainConfig, UnlearnConfig, flatten, to_dict
from peel.runs import resume
from peel.unlearning.methods import described, number, options_on

# tamper keys worth a fine-tuning attack's one line (the rest are in attacks/grid.json when it runs)
ATTACK_KEYS = ("adapter", "lora_rank", "optimizer", "lr", "lr_scheduler", "warmup_ratio", "warmup_steps", "steps",
               "eval_steps", "per_device_batch_size", "epochs", "max_grad_norm", "data.path")


# resume.folder_state's answers, as a dry run says them
FOLDER_STATES = {resume.NEW: "a new run", resume.RESUME: "holds this config's unfinished run: it would resume",
                 resume.COMPLETED: "holds this config's completed run: nothing would run"}


def loss_lines(unlearn: UnlearnConfig, keywords: str | None) -> list[str]:
    """The forget and retain losses with their coefficients, how the two gradients combine, and the
    adversary and the options that are on: each as it describes itself (methods.py)."""
    values = to_dict(unlearn)
    mask = f"; only tokens inside keywords of {keywords} count" if keywords else ""
    l2sp = f"; L2-SP {number(unlearn.l2sp_coef)} on the target layer" if unlearn.l2sp_coef else ""
    adversary = [] if unlearn.adversary == "none" else [f"adversary: {described('adversary', values)}"]
    return [
        f"forget loss: {described('forget_loss', values)}, coefficient {number(unlearn.remove_coef)} easing to 0.75x "
        f"within each phase{mask}",
        f"retain loss: {described('retain_loss', values)}, coefficient {number(unlearn.retain_coef)} (ramp {unlearn.retain_ramp})",
        f"gradients: filter {described('grad_filter', values)}{l2sp}",
        *adversary,
        *(f"{key}: {text}" for key, text in options_on(values)),
    ]


def adapter_line(adapter: str, lora: LoraOptions) -> str:
    if adapter == "lora":
        return (f"adapter: lora in every layer (rank {lora.rank}, alpha {lora.alpha}, dropout {number(lora.dropout)}, "
                f"target modules {lora.target_modules})")
    return "adapter: full (only the target layer trains in its phase)"


def training_lines(train: TrainConfig, accumulation: int, processes: int) -> list[str]:
    """Optimizer, schedule and batch, with the accumulation the plan derived."""
    optimizer = (f"muon (lr {number(train.muon_lr)}, momentum {number(train.muon_momentum)}) for the matrices, adamw "
                 f"(lr {number(train.lr)}) for the rest" if train.optimizer == "muon" else f"adamw, lr {number(train.lr)}")
    clip = f"clip {number(train.max_grad_norm)}" if train.max_grad_norm else "no clipping"
    checkpointing = {False: "off", True: "whole layers", "selective": "selective"}[train.gradient_checkpointing]
    return [
        f"optimizer: {optimizer}, weight decay {number(train.weight_decay)}, {train.lr_scheduler} schedule per phase, "
        f"warmup {number(train.warmup_ratio)}, {clip}",
        f"batch: {train.per_device_batch_size} per device x {processes} process(es) x {accumulation} accumulation "
        f"= {train.global_batch_size} per step; {train.epochs_per_layer} epoch(s) per layer; dtype {train.dtype}; "
        f"gradient checkpointing {checkpointing}; parallel {train.parallel}; seed {train.seed}",
    ]


def evaluation_line(evaluation: EvalConfig, phases: int) -> str:
    if not evaluation.tasks:
        return "evaluation: none (eval.tasks is empty)"
    every = f", and after each of the {phases} phases" if evaluation.every_phase else ""
    limit = f", first {evaluation.limit} documents per task" if evaluation.limit else ""
    return f"evaluation: {', '.join(evaluation.tasks)} on the baseline (cached) and the result{every}{limit}"


def unlearn_lines(config: Config, plan, folder_state: str, processes: int) -> list[str]:
    """Everything `peel unlearn --dry-run` shows: the method, the plan, evaluation and the tamper plan."""
    from peel.attacks.plan import grid_attacks

    return [
        f"model: {config.model.name_or_path}",
        f"output_dir: {config.output_dir} ({FOLDER_STATES[folder_state]})",
        f"data: forget {config.data.forget.path}, retain {config.data.retain.path}"
        + (f" with {number(config.data.chat.fraction)} chat from {config.data.chat.path}" if config.data.chat.path else "")
        + f"; max_length {config.data.max_length}",
        *loss_lines(config.unlearn, config.data.forget.keywords),
        adapter_line(config.unlearn.adapter, config.unlearn.lora),
        *training_lines(config.train, plan.accumulation, processes),
        f"plan: {plan.describe()}",
        evaluation_line(config.eval, len(plan.layers)),
        "then peel tamper RUN would run (the config's tamper section):",
        *("  " + line for line in attack_lines(grid_attacks(config, []), 1)),
    ]


def attack_line(attack) -> str:
    from peel.attacks import kinds

    settings = attack.description()["settings"]
    if kinds.KINDS[attack.kind].tamper_keys is None:  # every tamper key decides it: show the telling ones
        flat = flatten(to_dict(attack.settings))
        settings = {key: flat[key] for key in ATTACK_KEYS if key in flat}
        settings.pop("lora_rank" if attack.settings.adapter == "full" else "", None)
        settings.pop("warmup_ratio" if attack.settings.warmup_steps else "warmup_steps", None)  # the one that applies
        settings.pop("eval_steps" if not attack.settings.eval_steps else "", None)  # shown when it replaces eval_every
    else:
        settings = {key: value for key, value in settings.items() if key not in ("tasks", "dtype") and value is not None}
    shown = ", ".join(f"{key} {number(value)}" for key, value in settings.items())
    return f"{attack.name}: {attack.kind}" + (f" ({shown})" if shown else "")


def attack_lines(attacks: list, targets: int) -> list[str]:
    """One line per attack, then the grid's size: attacks, optimizer steps, estimated evaluations."""
    from peel.attacks import kinds

    training = [attack for attack in attacks if kinds.KINDS[attack.kind].evaluations is not None]
    steps = sum(attack.settings.steps for attack in training)
    evaluations = 1 + sum(kinds.evaluations(attack) for attack in attacks)  # + the shared untouched step 0
    tasks = attacks[0].settings.tasks if attacks else []
    per_target = " per target" if targets > 1 else ""
    total = f" ({evaluations * targets} for {targets} targets)" if targets > 1 else ""
    return [
        *(attack_line(attack) for attack in attacks),
        f"{len(attacks)} attacks: {len(training)} fine-tuning ({steps} optimizer steps in all), "
        f"{len(attacks) - len(training)} that train nothing; about {evaluations} evaluations of "
        f"{', '.join(tasks)}{per_target}{total}",
    ]


def tamper_lines(plans: list, evaluated: bool = False) -> list[str]:
    """What `peel tamper --dry-run` shows: each target, where its results go, the baseline's
    source, then the grid (the same for every target) and its size."""
    lines = []
    for plan in plans:
        lines.append(f"target {plan.target.model} -> {plan.folder}")
    lines.append(baseline_line(plans[0].baseline, evaluated))
    return lines + attack_lines(plans[0].attacks, len(plans))


def baseline_line(source: dict, evaluated: bool = False) -> str:
    """Where the run's baseline will come from, as the run will find it: an evaluation of --baseline
    (`evaluated`), else what the eval cache and the run's eval.json hold now (attacks/baseline.py)."""
    from peel.attacks.baseline import find_baseline

    if evaluated:
        return f"baseline: {source['model']}, evaluated on {', '.join(source['tasks'])} (or read from the eval cache)"
    found = find_baseline(source)
    if found:
        where = " and ".join(filter(None, [source.get("eval_json") and f"the eval.json of {source['eval_json']}",
                                           source.get("model") and f"the eval cache of {source['model']}"]))
        return f"baseline: {', '.join(f'{task} {accuracy:.4f}' for task, accuracy in found.items())} (from {where})"
    remedy = f"give --baseline {source['model']}" if source.get("model") else "give --baseline MODEL"
    return f"baseline: none known for {', '.join(source['tasks'])}, so recovery will not be measured; {remedy} to evaluate it"


def sweep_lines(runs: list, prepared: list, processes: int) -> list[str]:
    """What `peel sweep --dry-run` shows: the shared settings (from the first run), then each run
    with its swept values and plan, and the sweep's size."""
    first = runs[0]
    lines = ["settings shared by the runs (the first run's; each run's swept values follow):",
             *("  " + line for line in unlearn_lines(first.config, prepared[0].plan, prepared[0].folder_state, processes))]
    steps = evaluations = 0
    for run, ready in zip(runs, prepared):
        plan = ready.plan
        steps += plan.steps_per_phase * len(plan.layers)
        if run.config.eval.tasks:
            evaluations += 1 + (len(plan.layers) if run.config.eval.every_phase else 0)
        lines.append(f"{run.name}: {' '.join(run.overrides)}; {plan.steps_per_phase * len(plan.layers)} optimizer steps "
                     f"({len(plan.layers)} phases); {FOLDER_STATES[ready.folder_state]}")
    baselines = len({(run.config.model.name_or_path, tuple(run.config.eval.tasks)) for run in runs if run.config.eval.tasks})
    lines.append(f"{len(runs)} runs, {steps} optimizer steps in all; about {evaluations} evaluations of the results "
                 f"and {baselines} of the baseline (cached once evaluated)")
    return lines
