"""Sweeps: a grid of config values, one run folder per point, run here or as Slurm jobs.

    peel sweep CONFIG --grid unlearn.remove_coef=10,20,30 --grid unlearn.retain_coef=5,50

makes six run folders under the config's output_dir, named after the swept values
(`remove_coef=10,retain_coef=5`, ...). Each gets its resolved config.yaml at once, so what a job
runs is fixed when it is submitted. Then either every run goes one after another in this process
(`--local`), or each becomes a Slurm job through submitit that launches torchrun across the job's
nodes and GPUs. A rerun of the sweep skips completed runs and runs already submitted; a failed
run is submitted again and resumes from its checkpoint.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from peel import distributed
from peel.runs import folder as run_folder, resume, tracking
from peel.config import Config, load_config, save_config
from peel.errors import PeelError, RunFailed
from peel.runs.jobs import check_unique, parse_grid, points, run_name, slurm_job_ended_badly
from peel.runs.folder import CONFIG_FILE, METRICS_FILE, RUN_FILE

STATES = ("pending", "running", "preempted", "completed", "failed")
# States in which a submitted job still owns its run (a preempted job is requeued by Slurm).
UNDER_WAY = ("pending", "running", "preempted")


@dataclass
class Run:
    name: str
    overrides: list[str]  # the swept values, as dotted key=value
    config: Config

    @property
    def folder(self) -> Path:
        return Path(self.config.output_dir)


# --------------------------------------------------------------------------------------------
# The grid


def plan(config_file: str, overrides: list[str], grid_items: list[str]) -> list[Run]:
    """Every point of the grid as a checked config whose output_dir is its own run folder."""
    grid = parse_grid(grid_items)
    if not grid:
        raise PeelError("give at least one --grid dotted.key=value1,value2,...")
    base = load_config(config_file, overrides)
    sweep_dir = run_folder.check_writable(base.output_dir, "output_dir (the sweep folder)").resolve()
    tracking.check(base.track.to)  # here, not in each job
    runs = []
    for point in points(grid):
        name = run_name(point)
        swept = [f"{key}={value}" for key, value in point]
        config = load_config(config_file, [*overrides, *swept, f"output_dir={sweep_dir / name}"])
        runs.append(Run(name, swept, config))
    check_unique([run.name for run in runs], "run folder name")
    return runs


# --------------------------------------------------------------------------------------------
# The sweep folder


def to_do(runs: list[Run]) -> list[Run]:
    """The runs to start: not completed, and not already submitted as a job that is pending or running.

    Reads only. A folder that holds a different config is refused before anything is written.
    """
    remaining = []
    for run in runs:
        folder_state = resume.folder_state(run.folder, run.config, force=False)  # raises on a different config
        state, job_id = run_state(run.folder), run_folder.read_run_record(run.folder).get("job_id")
        if folder_state == resume.COMPLETED:
            print(f"{run.name}: completed")
        elif state in UNDER_WAY and job_id:
            print(f"{run.name}: {state} as job {job_id}, not started again")
        else:
            remaining.append(run)
    return remaining


def write(runs: list[Run]) -> None:
    """sweep.json (the runs and their swept values) and each run's config.yaml."""
    sweep_dir = runs[0].folder.parent
    sweep_dir.mkdir(parents=True, exist_ok=True)
    run_folder.write_json(sweep_dir / run_folder.SWEEP_FILE, {"runs": [{"name": run.name, "overrides": run.overrides} for run in runs]})
    for run in runs:
        run.folder.mkdir(exist_ok=True)
        if not (run.folder / CONFIG_FILE).exists():
            save_config(run.config, run.folder / CONFIG_FILE)


def run_state(folder: Path) -> str:
    """pending (not started), running, completed or failed: what the run folder says, unless
    Slurm says its job is over (the run's jobs are in the sweep folder's jobs/)."""
    record = run_folder.read_run_record(folder)
    state = record.get("status") if record.get("status") in STATES else "pending"
    if state in UNDER_WAY and record.get("job_id") and slurm_job_ended_badly(folder.parent / "jobs", record["job_id"]):
        return "failed"
    return state


def status(sweep_dir: Path) -> list[dict]:
    """One row per run of the sweep in `sweep_dir`: name, state, job id, steps written."""
    index = sweep_dir / run_folder.SWEEP_FILE
    if not index.exists():
        raise PeelError(f"{sweep_dir} is not a sweep folder (no sweep.json); accepted: the output_dir of a peel sweep")
    rows = []
    entries = run_folder.read_json(index, "sweep.json as peel sweep writes it")
    if not isinstance(entries, dict) or not isinstance(entries.get("runs"), list):
        raise PeelError(f"{index} has no list of runs; accepted: sweep.json as peel sweep writes it")
    for entry in entries["runs"]:
        folder = sweep_dir / entry["name"]
        metrics = folder / METRICS_FILE
        rows.append({
            "run": entry["name"],
            "state": run_state(folder),
            "job": run_folder.read_run_record(folder).get("job_id") or "-",
            "steps": metrics.read_text().count("\n") if metrics.exists() else 0,
        })
    return rows


# --------------------------------------------------------------------------------------------
# Running


def run_locally(runs: list[Run]) -> int:
    """Each run in this process, one after another; the number that failed."""
    from peel.outputs.model_card import write_model_cards
    from peel.unlearning.engine import unlearn

    failed = 0
    for run in runs:
        print(f"{run.name}: running")
        try:
            unlearn(run.config)
            if distributed.is_main():
                write_model_cards(run.folder)
        except (PeelError, RunFailed) as error:
            failed += 1
            if distributed.is_main():
                mark_failed(run.folder, str(error))
            print(f"{run.name}: failed: {error}", file=sys.stderr)
    return failed


def mark_failed(folder: Path, error: str) -> None:
    record = run_folder.read_run_record(folder)
    if record.get("status") != "completed":
        run_folder.write_json(folder / RUN_FILE, {**record, "status": "failed", "error": error})


def submit(runs: list[Run], executor, nproc_per_node: int) -> list:
    """Submit one job per run; each job id goes into its run.json (status pending)."""
    jobs = []
    for run in runs:
        executor.update_parameters(name=f"peel-{run.name}")
        job = executor.submit(TorchrunJob(str(run.folder / CONFIG_FILE), nproc_per_node, str(Path.cwd())))
        run_folder.write_json(run.folder / RUN_FILE, {"status": "pending", "job_id": str(job.job_id)})
        print(f"{run.name}: submitted as job {job.job_id}")
        jobs.append(job)
    return jobs


# torchrun passes these signals on to its workers (by default SIGUSR1/2 would kill it instead), and
# waits this long for them to finish their step and write a checkpoint before it kills them.
TORCHRUN_SIGNAL_OPTIONS = {"signals_to_handle": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2", "shutdown_timeout": "80"}
_running: dict[str, subprocess.Popen] = {}  # the job's torchrun process (a Popen does not pickle with the job)


@dataclass
class TorchrunJob:
    """One run as a job: torchrun across the job's nodes and GPUs, running `peel unlearn` on the run's config.

    Preempted or out of time, Slurm signals the job and submitit calls `checkpoint`: it passes the
    signal on to torchrun, waits (up to `grace_seconds`, inside Slurm's warning time) while the
    workers finish their step and write a checkpoint, then requeues the same job, which continues
    at the next step. A job that ends badly marks its run failed.
    """

    config_file: str
    nproc_per_node: int
    working_dir: str
    grace_seconds: float = 80.0

    def __call__(self) -> None:
        import submitit

        environment = submitit.JobEnvironment()
        main_host = environment.hostnames[0] if environment.num_nodes > 1 else "localhost"
        command = torchrun_command(self.config_file, self.nproc_per_node, environment.num_nodes, main_host, str(environment.job_id))
        process = subprocess.Popen(command, cwd=self.working_dir)
        _running["torchrun"] = process
        # Poll rather than block in wait(): submitit's signal handler runs on this thread and calls
        # `checkpoint`, whose own wait for the process would stall behind a blocked wait() here.
        while (returncode := process.poll()) is None:
            time.sleep(1)
        if returncode != 0:
            folder = Path(self.config_file).parent
            if environment.global_rank == 0 and run_folder.read_run_record(folder).get("status") != "preempted":
                error = f"peel unlearn exited with status {returncode}; its output: {environment.paths.stderr}"
                mark_failed(folder, error)
            raise RuntimeError(f"peel unlearn exited with status {returncode}")

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        process = _running.get("torchrun")
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGUSR1)  # the scheduler may have signalled this process alone
            try:
                process.wait(timeout=self.grace_seconds)
            except subprocess.TimeoutExpired:
                pass  # requeue anyway: the run continues from its last periodic checkpoint
        return DelayedSubmission(self)


def torchrun_command(config_file: str, nproc_per_node: int, num_nodes: int, main_host: str, job_id: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}"]
    if num_nodes == 1:
        launcher.append("--standalone")
    else:
        port = 29400 + int(re.sub(r"\D", "", job_id) or 0) % 1000  # jobs sharing a node get different ports
        launcher += [f"--nnodes={num_nodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={main_host}:{port}", f"--rdzv_id={job_id}"]
    return [*launcher, *torchrun_signal_options(), "-m", "peel", "unlearn", config_file]


def torchrun_signal_options() -> list[str]:
    """TORCHRUN_SIGNAL_OPTIONS as torchrun flags, those this torch's launcher knows (torch 2.8 and newer)."""
    import dataclasses

    from torch.distributed.launcher.api import LaunchConfig

    known = {field.name for field in dataclasses.fields(LaunchConfig)}
    return [f"--{name}={value}" for name, value in TORCHRUN_SIGNAL_OPTIONS.items() if name in known]
