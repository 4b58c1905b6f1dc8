"""Attack grids: every attack of a grid on each target, here one after another or as Slurm jobs.

The attacks are tamper.few_shot's few-shot prompts and one fine-tuning attack per point of the
grid (`--grid tamper.KEY=V1,V2` combinations, else tamper.grid's list, else the section alone).
A target's folder (its run folder, or --output-dir) holds:

  attacks/grid.json        the plan: each attack's name, kind, settings, and where the baseline comes from
  attacks/NAME.json        one finished attack: {"name", "kind", "settings", "target", "evaluation", "curve"}
  attacks/NAME.job.json    the Slurm job running that attack: {"job_id", "status"}
  tamper.json              the finished attacks, their worst case and summary (tamper_results.py)

Each attack is written whole once it ends, and tamper.json again after it, so a rerun reads the
finished attacks instead of running them again. Locally, SIGTERM / SIGUSR1 / SIGUSR2 stop the
grid at the next optimizer step: the attack in progress is dropped (it runs again from its start
on the rerun), the finished ones stay, and the command exits with Preempted's status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from peel import preemption, sweep, tamper_results
from peel.config import GRID_WIDE_KEYS, Config, TamperConfig, attack_settings, flatten, to_dict
from peel.errors import PeelError, Preempted
from peel.evaluation.targets import Target, label, load_target_model, output_folders, resolve_targets
from peel.models import model_location
from peel.run_folder import read_json, write_json
from peel.tamper_results import ATTACKS_FOLDER, FEW_SHOT, FINE_TUNE

GRID_FILE = "grid.json"


@dataclass(frozen=True)
class Attack:
    name: str
    kind: str  # FINE_TUNE or FEW_SHOT
    settings: TamperConfig  # a few-shot attack uses its tasks and dtype
    shots: int = 0

    def description(self) -> dict:
        """Name, kind and the settings that decide the attack's numbers, as JSON values."""
        if self.kind == FEW_SHOT:
            settings = {"few_shot": self.shots, "tasks": self.settings.tasks, "dtype": self.settings.dtype}
        else:
            settings = {key: value for key, value in flatten(to_dict(self.settings)).items()
                        if key.split(".")[0] not in ("grid", "few_shot")}
        return {"name": self.name, "kind": self.kind, "settings": settings}


@dataclass
class TargetPlan:
    target: Target
    folder: Path
    attacks: list[Attack]
    baseline: dict  # where the baseline comes from (see `baseline_source`)

    @property
    def attacks_folder(self) -> Path:
        return self.folder / ATTACKS_FOLDER

    def expected(self, attack: Attack) -> dict:
        """What an attack file of this plan holds besides its curve: a file that differs is another attack's."""
        evaluation = self.target.config.eval
        return {**attack.description(), "target": self.target.model,
                "evaluation": {"max_length": evaluation.max_length, "limit": evaluation.limit}}


# --------------------------------------------------------------------------------------------
# Planning: everything is checked here, before any model loads or any folder is made


def plan(names: list[str], overrides: list[str], grid_items: list[str], output_dir: str | None,
         baseline_model: str | None = None, compared: list[str] = ()) -> list[TargetPlan]:
    """The attacks of every target, settings checked and folders checked writable (nothing written).

    `compared` targets are attacked alike, into FIGURES/compare/<label> (FIGURES: `figure_folder`).
    """
    targets = resolve_targets([*names, *compared], overrides)
    config = targets[0].config
    attacks = grid_attacks(config, grid_items, overrides)
    folders = output_folders(targets[: len(names)], names, output_dir, "tamper")
    home = figure_folder(folders, output_dir)
    folders += [home / "compare" / label(name) for name in compared]
    source = baseline_source(targets, config, baseline_model)
    return [TargetPlan(target, folder, attacks, source) for target, folder in zip(targets, folders)]


def check_attack_data(attacks: list[Attack]) -> None:
    """Every fine-tuning attack's corpus has usable text, and as much as a count set for it asks
    (the default count takes what there is): found before any model loads."""
    from peel.data import load_texts
    from peel.tamper import attack_examples

    checked = set()
    for attack in attacks:
        settings = attack.settings
        key = (json.dumps(to_dict(settings.data), sort_keys=True), settings.num_examples, settings.seed)
        if attack.kind == FINE_TUNE and key not in checked:
            load_texts(settings.data, attack_examples(settings), settings.seed, required=settings.num_examples is not None)
            checked.add(key)


def figure_folder(folders: list[Path], output_dir: str | None) -> Path:
    """Where a figure of several models goes: --output-dir, else the first target's folder."""
    return Path(output_dir) if output_dir is not None and len(folders) > 1 else folders[0]


def grid_attacks(config: Config, grid_items: list[str], overrides: list[str] = ()) -> list[Attack]:
    """Few-shot attacks first (few_shot 0 is the untouched model, step 0 of the others), then one
    fine-tuning attack per grid point, each named after what its point sets."""
    section = replace(config.tamper, dtype=config.tamper.dtype or config.train.dtype)
    if grid_items:
        grid = sweep.parse_grid(grid_items)
        points = [(sweep.run_name(pairs), nested(pairs)) for pairs in sweep.points(grid)]
    else:
        points = [(sweep.run_name([(key, value_text(value)) for key, value in flatten(point).items()]) or "attack", point)
                  for point in section.grid] or [("attack", {})]
    refuse_overridden(overrides, [point for _, point in points])
    attacks = [Attack(f"few_shot={shots}", FEW_SHOT, section, shots) for shots in dict.fromkeys(section.few_shot)]
    for index, (name, point) in enumerate(points):
        where = "tamper" if grid_items else f"tamper.grid[{index}]"
        settings = attack_settings(section, point, where)
        attacks.append(Attack(name, FINE_TUNE, replace(settings, dtype=settings.dtype or section.dtype)))
    sweep.check_unique([attack.name for attack in attacks], "attack name")
    return attacks


def nested(pairs: list[tuple[str, str]]) -> dict:
    """[("tamper.data.path", "x")] -> {"data": {"path": "x"}}: a --grid point as tamper keys, values read as YAML."""
    point: dict = {}
    for key, text in pairs:
        parts = key.split(".")
        if parts[0] != "tamper" or len(parts) < 2 or parts[1] in GRID_WIDE_KEYS:
            raise PeelError(f"--grid {key}: accepted keys are one attack's tamper settings, e.g. tamper.lr "
                            f"(not {', '.join('tamper.' + wide for wide in GRID_WIDE_KEYS)})")
        node = point
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(text)
        except yaml.YAMLError:
            node[parts[-1]] = text
    return point


def value_text(value) -> str:
    """How a grid point's value reads in an attack's name (2e-05, cosine, testbed:retain)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def refuse_overridden(overrides: list[str], points: list[dict]) -> None:
    """A command-line override of a key the grid's attacks set would be silently replaced: refuse it."""
    swept = {key for point in points for key in flatten(point)}
    for item in overrides:
        key = item.partition("=")[0]
        if not key.startswith("tamper.") or key.split(".")[1] in GRID_WIDE_KEYS:
            continue
        own = key.removeprefix("tamper.")
        clash = next((other for other in sorted(swept) if own == other or other.startswith(own + ".")
                      or own.startswith(other + ".")), None)
        if clash:
            raise PeelError(f"{item} is replaced by the grid's attacks, which set tamper.{clash}; accepted: "
                            f"--grid {key}=V1,V2 to sweep it, or tamper.grid=[] for one attack with these settings")


# --------------------------------------------------------------------------------------------
# The baseline: what the attacked model's original knew (0-shot)


def baseline_source(targets: list[Target], config: Config, model: str | None) -> dict:
    """Where the baseline comes from: --baseline MODEL, else the first run folder's own baseline
    (the eval cache for the model it unlearned, else its eval.json). Kept in grid.json; a caller
    that measured the baseline itself puts it under "given" instead."""
    run = next((target.run_folder for target in targets if target.run_folder is not None), None)
    original = model or (model_location(config.model.name_or_path, config.model.gguf_file) if run is not None else None)
    return {
        "model": original,
        "revision": config.model.revision if model is None else None,
        "eval_json": str(run) if run is not None and model is None else None,
        "tasks": list(config.tamper.tasks),
        "limit": config.eval.limit,
        "max_length": config.eval.max_length,
    }


def find_baseline(source: dict) -> dict[str, float] | None:
    """The baseline accuracies known now, without evaluating anything: given, else cached for
    exactly these tasks and settings, else the run's eval.json."""
    from peel.evaluation import load_baseline, read_evaluation

    found: dict[str, float] = {}
    if source.get("eval_json"):
        evaluation = read_evaluation(source["eval_json"]) or {}
        found.update((evaluation.get("baseline") or {}).get("accuracy", {}))
    if source.get("model"):
        cached = load_baseline(source["model"], source["tasks"], source["limit"], source["max_length"], source["revision"])
        found.update((cached or {}).get("accuracy", {}))
    found.update(source.get("given") or {})
    found = {task: accuracy for task, accuracy in found.items() if task in source["tasks"]}
    return found or None


def evaluate_baseline(source: dict, config: Config) -> None:
    """Evaluate the baseline model into the eval cache, unless it is there already."""
    from peel.evaluation import cached_baseline, evaluate

    def compute() -> dict:
        model, tokenizer = load_target_model(Target(source["model"], None, config))
        return evaluate(model, tokenizer, source["tasks"], config.eval.batch_size, source["max_length"], source["limit"])

    cached_baseline(source["model"], source["tasks"], source["limit"], source["max_length"], compute, source["revision"])


# --------------------------------------------------------------------------------------------
# The folder: finished attacks and the assembled tamper.json


def attack_file(folder: Path, name: str) -> Path:
    return folder / ATTACKS_FOLDER / f"{name}.json"


def write_plan(target_plan: TargetPlan) -> None:
    target_plan.attacks_folder.mkdir(parents=True, exist_ok=True)
    write_json(target_plan.attacks_folder / GRID_FILE, {
        "target": target_plan.target.model,
        "tasks": target_plan.attacks[0].settings.tasks,
        "baseline_source": target_plan.baseline,
        "attacks": [target_plan.expected(attack) for attack in target_plan.attacks],
    })


def finished(target_plan: TargetPlan, force: bool = False) -> dict[str, dict]:
    """The plan's attacks already in the folder (name -> record). One of the same name run with
    other settings is an error, or with `force` is removed to run again."""
    done = {}
    for attack in target_plan.attacks:
        path = attack_file(target_plan.folder, attack.name)
        if not path.is_file():
            continue
        record = read_json(path, "an attack record as peel tamper writes it")
        expected = target_plan.expected(attack)
        held = {key: record.get(key) for key in expected} if isinstance(record, dict) else {}
        if held == json.loads(json.dumps(expected)) and tamper_results.is_curve(record.get("curve")):
            done[attack.name] = record
        elif force:
            path.unlink()
        else:
            differences = sorted(key for key in expected["settings"]
                                 if (held.get("settings") or {}).get(key) != expected["settings"][key])
            what = f"settings {', '.join(differences[:3])}" if differences else "target or evaluation settings"
            raise PeelError(f"{path} holds attack {attack.name!r} with other {what}; accepted: the same "
                            "settings to resume, another --output-dir, or --force to attack again")
    return done


def collect(folder: Path) -> dict:
    """Assemble tamper.json from grid.json and the finished attacks; again while attacks finish
    meanwhile (Slurm jobs collect concurrently: the last writer has seen every attack)."""
    grid = read_json(folder / ATTACKS_FOLDER / GRID_FILE, "grid.json as peel tamper writes it")
    seen, document = None, None
    while True:
        attacks, pending = [], []
        for expected in grid["attacks"]:
            path = attack_file(folder, expected["name"])
            record = read_json(path, "an attack record as peel tamper writes it") if path.is_file() else None
            if record is not None and all(record.get(key) == value for key, value in expected.items()):
                attacks.append({key: record[key] for key in ("name", "kind", "settings", "curve", "error") if key in record})
            else:
                pending.append(expected["name"])
        names = [attack["name"] for attack in attacks]
        if names == seen:
            return document
        document = tamper_results.document(grid["target"], grid["tasks"], attacks, find_baseline(grid["baseline_source"]), pending)
        tamper_results.write_tamper(folder, document)
        seen = names


# --------------------------------------------------------------------------------------------
# Running


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
        if record["settings"].get("few_shot", 0) == 0:  # a prompted model is not the untouched one
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
    from peel.evaluation import evaluate
    from peel.tamper import AttackDiverged
    from peel.tamper import attack as fine_tune

    settings, evaluation = attack.settings, target_plan.target.config.eval
    key = (settings.dtype, tuple(settings.tasks))
    model, tokenizer = load_target_model(target_plan.target, settings.dtype)

    def accuracy(tasks: list[str], shots: int = 0) -> dict[str, float]:
        return evaluate(model, tokenizer, tasks, evaluation.batch_size, evaluation.max_length, evaluation.limit, shots)["accuracy"]

    record = target_plan.expected(attack)
    if attack.kind == FEW_SHOT:
        if key not in untouched:
            untouched[key] = {"step": 0, **accuracy(settings.tasks)}
        forget_tasks, _ = tamper_results.split_tasks(settings.tasks)
        prompted = accuracy(forget_tasks, attack.shots) if attack.shots else {}
        return {**record, "curve": [{**untouched[key], **prompted}]}
    initial = {task: value for task, value in untouched[key].items() if task != "step"} if key in untouched else None
    try:
        curve = fine_tune(model, tokenizer, settings, evaluation, initial=initial, should_stop=should_stop)
    except AttackDiverged as diverged:  # what it reached until then counts; rerunning would diverge again
        print(f"{attack.name}: {diverged}")
        return {**record, "curve": diverged.history, "error": str(diverged)}
    untouched.setdefault(key, curve[0])
    return {**record, "curve": curve}


# --------------------------------------------------------------------------------------------
# Slurm: one job per attack, through submitit (the --slurm settings are peel sweep's)


def submit(plans: list[TargetPlan], executor, force: bool = False) -> list:
    """A job for every attack not finished and not already submitted (pending or running)."""
    jobs = []
    for target_plan in plans:
        done = finished(target_plan, force)
        write_plan(target_plan)
        for attack in target_plan.attacks:
            job_path = target_plan.attacks_folder / f"{attack.name}.job.json"
            previous = read_json(job_path, "a job record as peel tamper writes it") if job_path.is_file() else {}
            active = previous.get("status") == "submitted" and not sweep.slurm_job_ended_badly(
                executor.folder, previous.get("job_id", ""))
            if attack.name in done or active:
                print(f"{target_plan.folder}: {attack.name}: {'finished' if attack.name in done else 'submitted'} earlier")
                continue
            executor.update_parameters(name=f"peel-tamper-{attack.name}")
            job = executor.submit(AttackJob(target_plan, attack))
            write_json(job_path, {"job_id": str(job.job_id), "status": "submitted"})
            print(f"{target_plan.folder}: {attack.name}: submitted as job {job.job_id}")
            jobs.append(job)
    return jobs


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
