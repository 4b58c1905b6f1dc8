"""Sweeps: grid expansion and names, local sequential runs, submitit jobs, and --status."""

import json
from pathlib import Path

import pytest

from peel.runs import jobs
from peel import sweep
from peel.cli import main
from peel.errors import PeelError


def write_config(tmp_path: Path, model: Path, corpora: dict) -> Path:
    config = tmp_path / "sweep.yaml"
    config.write_text(
        f"model: {{name_or_path: {model}}}\n"
        f"data: {{forget: {{path: {corpora['forget']}}}, retain: {{path: {corpora['retain']}}}, num_examples: 8, max_length: 16}}\n"
        "train: {global_batch_size: 8, per_device_batch_size: 8, dtype: float32}\n"
        "unlearn: {layers: [3]}\n"
        f"output_dir: {tmp_path / 'sweep'}\n"
    )
    return config


def test_grid_expands_into_runs_named_after_their_values(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\n")
    runs = sweep.plan(str(config), ["train.lr=1e-3"], ["unlearn.remove_coef=10,20,30", "unlearn.retain_coef=5,50"])
    assert [run.name for run in runs] == [
        "remove_coef=10,retain_coef=5", "remove_coef=10,retain_coef=50", "remove_coef=20,retain_coef=5",
        "remove_coef=20,retain_coef=50", "remove_coef=30,retain_coef=5", "remove_coef=30,retain_coef=50",
    ]
    last = runs[-1]
    assert (last.config.unlearn.remove_coef, last.config.unlearn.retain_coef, last.config.train.lr) == (30, 50, 1e-3)
    assert last.folder == tmp_path / "out" / "remove_coef=30,retain_coef=50"

    lists = sweep.plan(str(config), [], ["unlearn.layers=[28,24],[31,27,23]", "train.seed=0,1", "tamper.seed=2"])
    assert [run.name for run in lists][:2] == ["layers=28-24,train.seed=0,tamper.seed=2", "layers=28-24,train.seed=1,tamper.seed=2"]
    assert lists[2].config.unlearn.layers == [31, 27, 23]


@pytest.mark.parametrize("grid, message", [
    (["unlearn.remove_coef"], "is not of the form"),
    (["unlearn.remove_coef=1,,2"], "is not of the form"),
    (["unlearn.remove_coef=1", "unlearn.remove_coef=2"], "names 'unlearn.remove_coef' twice"),
    (["unlearn.remove_coef=ten"], "accepted: a finite number"),
    ([], "at least one --grid"),
])
def test_bad_grids_are_one_line_errors(tmp_path, grid, message):
    config = tmp_path / "c.yaml"
    config.write_text("notes: x\n")
    with pytest.raises(PeelError, match=message):
        sweep.plan(str(config), [], grid)


def test_slurm_settings():
    parameters = jobs.slurm_parameters(["partition=gpu", "gpus_per_node=4", "time=1-02:30:00", "account=lab", "nodes=2"])
    assert parameters == {"nodes": 2, "gpus_per_node": 4, "timeout_min": 1590, "slurm_partition": "gpu",
                          "slurm_account": "lab", "cpus_per_task": 16}
    assert jobs.slurm_parameters([])["timeout_min"] == 240
    with pytest.raises(PeelError, match="accepted keys are nodes, gpus_per_node"):
        jobs.slurm_parameters(["gpus=4"])
    with pytest.raises(PeelError, match="not a valid time"):
        jobs.slurm_parameters(["time=soon"])
    command = sweep.torchrun_command("/runs/a/config.yaml", 4, 2, "node17", "4242")
    assert command[-4:] == ["-m", "peel", "unlearn", "/runs/a/config.yaml"]
    assert "--nproc_per_node=4" in command and "--nnodes=2" in command and "--rdzv_endpoint=node17:29642" in command
    assert "--standalone" in sweep.torchrun_command("/c.yaml", 1, 1, "localhost", "7")


def test_local_sweep_runs_one_after_another_and_reports_states(tiny_models, corpora, tmp_path, capsys):
    config = write_config(tmp_path, tiny_models["gpt_neox"], corpora)
    arguments = ["sweep", str(config), "--grid", "unlearn.remove_coef=10,20", "--grid", "data.retain.text_field=text,body", "--local"]
    assert main(arguments) == 1  # the runs reading a missing column fail; the others complete
    sweep_dir = tmp_path / "sweep"
    rows = {row["run"]: row for row in sweep.status(sweep_dir)}
    assert {name: row["state"] for name, row in rows.items()} == {
        "remove_coef=10,text_field=text": "completed", "remove_coef=10,text_field=body": "failed",
        "remove_coef=20,text_field=text": "completed", "remove_coef=20,text_field=body": "failed",
    }
    assert rows["remove_coef=20,text_field=text"]["steps"] == 1
    assert "has no column 'body'" in json.loads((sweep_dir / "remove_coef=10,text_field=body" / "run.json").read_text())["error"]

    capsys.readouterr()
    assert main(["sweep", "--status", str(sweep_dir)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["run", "state", "job", "steps"] and len(listing) == 5

    # Again: completed runs are skipped, failed ones run (and fail) again.
    assert main(arguments) == 1
    output = capsys.readouterr().out
    assert "remove_coef=10,text_field=text: completed" in output and "remove_coef=10,text_field=body: running" in output


def test_submitit_jobs_record_their_ids_and_states(tiny_models, corpora, tmp_path):
    import submitit

    config = write_config(tmp_path, tiny_models["gpt_neox"], corpora)
    runs = sweep.plan(str(config), [], ["data.retain.text_field=text,body"])
    sweep.write(runs)
    assert [row["state"] for row in sweep.status(tmp_path / "sweep")] == ["pending", "pending"]

    executor = submitit.LocalExecutor(folder=tmp_path / "sweep" / "jobs")
    executor.update_parameters(timeout_min=5, gpus_per_node=0)
    jobs = sweep.submit(sweep.to_do(runs), executor, nproc_per_node=1)
    jobs[0].result()  # waits; raises if the job failed
    with pytest.raises(submitit.core.utils.FailedJobError):
        jobs[1].result()

    rows = sweep.status(tmp_path / "sweep")
    assert [(row["run"], row["state"]) for row in rows] == [("text_field=text", "completed"), ("text_field=body", "failed")]
    assert [row["job"] for row in rows] == [str(job.job_id) for job in jobs]
    error = json.loads((runs[1].folder / "run.json").read_text())["error"]
    log = Path(error.split("its output: ")[1])
    assert "exited with status" in error and "has no column 'body'" in log.read_text()
    # A submitted, still pending or running run is not submitted twice; a failed one is.
    assert [run.name for run in sweep.to_do(runs)] == ["text_field=body"]


def test_status_asks_slurm_about_runs_whose_job_died_silently(tmp_path, monkeypatch):
    import shutil

    import submitit

    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\n")
    runs = sweep.plan(str(config), [], ["train.seed=0,1"])
    sweep.write(runs)
    for run, job_id in zip(runs, ["101", "102"]):
        (run.folder / "run.json").write_text(json.dumps({"status": "running", "job_id": job_id}))

    class FakeSlurmJob:
        def __init__(self, folder, job_id):
            self.state = {"101": "RUNNING", "102": "CANCELLED by 1234"}[job_id]

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(submitit, "SlurmJob", FakeSlurmJob)
    assert [row["state"] for row in sweep.status(tmp_path / "out")] == ["running", "failed"]
    assert [run.name for run in sweep.to_do(runs)] == ["seed=1"]  # submitted again, to resume


def test_dry_run_checks_every_run_prints_its_steps_and_writes_nothing(tiny_models, corpora, tmp_path, capsys):
    config = write_config(tmp_path, tiny_models["gpt_neox"], corpora)
    capsys.readouterr()
    assert main(["sweep", str(config), "eval.tasks=[testbed_forget]", "--grid", "unlearn.remove_coef=10,20",
                 "--grid", "train.epochs_per_layer=1,2", "--dry-run"]) == 0
    output = capsys.readouterr().out
    assert "  forget loss: random_ce, coefficient 10 easing to 0.75x within each phase" in output  # the shared settings
    assert "remove_coef=20,epochs_per_layer=2: unlearn.remove_coef=20 train.epochs_per_layer=2; 2 optimizer steps (1 phases); a new run" in output
    assert "4 runs, 6 optimizer steps in all; about 4 evaluations of the results and 1 of the baseline" in output
    assert not (tmp_path / "sweep").exists()
    # each run is checked as peel unlearn --dry-run checks it: a swept value that breaks one run is found
    assert main(["sweep", str(config), "--grid", "data.retain.text_field=text,body", "--dry-run"]) == 2
    assert "has no column 'body'" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()
