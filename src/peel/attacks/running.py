"""Running an attack grid: every attack of every target here, one after another, or as Slurm jobs.

Locally, SIGTERM / SIGUSR1 / SIGUSR2 stop the grid at the next optimizer step: the attack in
progress is dropped (it runs again from its start on the rerun), the finished ones stay, and the
command exits with Preempted's status. On Slurm each attack is a job (through submitit, with
peel sweep's --slurm settings) that writes its attack file and tamper.json itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from peel.runs import jobs, preemption
from peel.attacks import kinds
from peel.attacks.baseline import evaluate_baseline
from peel.attacks.folder import attack_file, collect, finished, write_plan
from peel.attacks.plan import Attack, TargetPlan
from peel.config import Config, EvalConfig
from peel.errors import Preempted
from peel.runs.targets import Target, load_target_model
from peel.runs.folder import read_json, write_json


@dataclass
class Session:
    """What an attack kind's `run` is handed: the freshly loaded target (its own to change), how
    to evaluate it, the grid's shared step-0 row and the original model when the kind asks for it."""

    model: object
    tokenizer: object
    evaluation: EvalConfig
    tasks: list[str]
    untouched_rows: dict  # (dtype, tasks) -> the untouched model's step-0 row, shared by the grid's attacks
    key: tuple
    should_stop: Callable[[], str | None] | None = None
    original: Target | None = None
    dtype: str | None = None

    def accuracy(self, tasks: list[str], shots: int = 0, template: str | None = None) -> dict[str, float]:
        """`tasks`' accuracies, with `shots` examples and each question put into `template` when given."""
        from peel.evaluation import evaluate

        evaluation = self.evaluation
        return evaluate(self.model, self.tokenizer, tasks, evaluation.batch_size, evaluation.max_length,
                        evaluation.limit, shots, evaluation.include_path, template)["accuracy"]

    def known_untouched(self) -> dict[str, float] | None:
        """The untouched model's accuracies when another attack of the grid measured them."""
        row = self.untouched_rows.get(self.key)
        return None if row is None else {task: value for task, value in row.items() if task != "step"}

    def untouched(self) -> dict:
        """The untouched model's step-0 row, measured now unless another attack measured it."""
        if self.key not in self.untouched_rows:
            self.untouched_rows[self.key] = {"step": 0, **self.accuracy(self.tasks)}
        return self.untouched_rows[self.key]

    def load_original(self):
        """The model the target was made from, in the attack's dtype, on the target's device."""
        model, _ = load_target_model(self.original, self.dtype)
        return model.eval()


def run_locally(plans: list[TargetPlan], force: bool = False) -> dict[Path, dict]:
    """Every attack of every plan in this process, one after another; each target's tamper.json."""
    done = [finished(target_plan, force) for target_plan in plans]  # every folder checked before any attack
    documents = {}
    with preemption.stop_on_signals():
        for target_plan, finished_attacks in zip(plans, done):
            documents[target_plan.folder] = run_target(target_plan, finished_attacks)
    return documents


def run_target(target_plan: TargetPlan, done: dict[str, dict]) -> dict:
    write_plan(target_plan)
    untouched: dict[tuple, dict] = {}  # (dtype, tasks) -> the model's step-0 row, shared by every attack
    for record in done.values():
        if kinds.untouched_at_zero(record):  # a prompted or quantized model is not the untouched one
            untouched.setdefault(step_zero_key(record["settings"]), record["curve"][0])
    for attack in target_plan.attacks:
        if attack.name in done:
            print(f"{target_plan.folder}: {attack.name}: finished earlier")
            continue
        if preemption.requested():
            raise Preempted(f"stopped by {preemption.requested()} between attacks")
        print(f"{target_plan.folder}: {attack.name}: attacking", flush=True)
        record = run_attack(target_plan, attack, untouched, should_stop=preemption.requested)
        write_json(attack_file(target_plan.folder, attack.name), record)
        collect(target_plan.folder)
    return collect(target_plan.folder)


def step_zero_key(settings: dict) -> tuple:
    return settings.get("dtype"), tuple(settings.get("tasks", ()))


def run_attack(target_plan: TargetPlan, attack: Attack, untouched: dict, should_stop=None) -> dict:
    """One attack on a freshly loaded model: its record, with the curve (and why it ended early, if it did)."""
    settings, config = attack.settings, target_plan.target.config
    key = (settings.dtype, tuple(settings.tasks))
    model, tokenizer = load_target_model(target_plan.target, settings.dtype)
    original = None if target_plan.original is None else Target(target_plan.original, None, config)
    session = Session(model, tokenizer, config.eval, list(settings.tasks), untouched, key, should_stop, original, settings.dtype)
    record = {**target_plan.expected(attack), **kinds.KINDS[attack.kind].run(attack, session)}
    if kinds.untouched_at_zero(record):
        untouched.setdefault(key, record["curve"][0])
    return record


# --------------------------------------------------------------------------------------------
# Slurm: one job per attack, through submitit (the --slurm settings are peel sweep's)


def submit(plans: list[TargetPlan], executor, force: bool = False) -> list:
    """A job for every attack not finished and not already submitted (pending or running)."""
    submitted = []
    for target_plan in plans:
        done = finished(target_plan, force)
        write_plan(target_plan)
        for attack in target_plan.attacks:
            job_path = target_plan.attacks_folder / f"{attack.name}.job.json"
            previous = read_json(job_path, "a job record as peel tamper writes it") if job_path.is_file() else {}
            active = previous.get("status") == "submitted" and not jobs.slurm_job_ended_badly(
                executor.folder, previous.get("job_id", ""))
            if attack.name in done or active:
                print(f"{target_plan.folder}: {attack.name}: {'finished' if attack.name in done else 'submitted'} earlier")
                continue
            executor.update_parameters(name=f"peel-tamper-{attack.name}")
            job = executor.submit(AttackJob(target_plan, attack))
            write_json(job_path, {"job_id": str(job.job_id), "status": "submitted"})
            print(f"{target_plan.folder}: {attack.name}: submitted as job {job.job_id}")
            submitted.append(job)
    return submitted


@dataclass
class AttackJob:
    """One attack as a Slurm job; requeued from its start when preempted (submitit calls `checkpoint`)."""

    target_plan: TargetPlan
    attack: Attack

    def __call__(self) -> None:
        folder, name = self.target_plan.folder, self.attack.name
        job_path = self.target_plan.attacks_folder / f"{name}.job.json"
        try:
            record = run_attack(self.target_plan, self.attack, {})
            write_json(attack_file(folder, name), record)
            collect(folder)
        except BaseException as error:
            submitted = read_json(job_path, "a job record") if job_path.is_file() else {}
            write_json(job_path, {**submitted, "status": "failed", "error": str(error)})
            raise

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


@dataclass
class BaselineJob:
    """The baseline model's evaluation as a job of its own, so no login node evaluates a large model."""

    source: dict
    config: Config
    folders: list[Path]

    def __call__(self) -> None:
        evaluate_baseline(self.source, self.config)
        for folder in self.folders:
            collect(folder)
