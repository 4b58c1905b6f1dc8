"""Stopping on the scheduler's signal, and writes that fail halfway.

A preempted run finishes the step it is in, writes a checkpoint and exits with status 75; run
again, it continues at the next step, so no step is lost or done twice. A checkpoint or model
write that fails leaves the previous checkpoint (and no half-made model) behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peel.runs import checkpoint
from peel.unlearning import engine
from peel.config import load_config
from peel.unlearning.engine import unlearn
from peel.errors import PREEMPTED_EXIT_STATUS, Preempted, RunFailed

from test_distributed import worker_environment
from test_resume import launch, metrics, settings, steps_written
from peel.runs.folder import CHECKPOINT_FILE


def wait_for_steps(process: subprocess.Popen, folder: Path, count: int) -> None:
    deadline = time.time() + 180
    while steps_written(folder) < count and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be signalled"


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signalled_run_checkpoints_the_step_it_was_in_and_resumes_without_losing_it(
    tiny_models, corpora, tmp_path, signal_number
):
    config_file = tmp_path / "config.yaml"
    config_file.write_text("notes: preemption\n")
    folder = tmp_path / "run"
    # No periodic checkpoints: the only mid-phase checkpoint is the one the signal asks for.
    arguments = settings(tiny_models["gpt_neox"], corpora, folder, "train.checkpoint_every=0", "train.epochs_per_layer=2")
    process = launch(config_file, arguments)
    wait_for_steps(process, folder, 2)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == PREEMPTED_EXIT_STATUS, stderr[-2000:]
    done = steps_written(folder)
    assert f"stopped by {signal.Signals(signal_number).name} after step {done}" in stderr.strip().splitlines()[-1]
    assert json.loads((folder / "run.json").read_text())["status"] == "preempted"
    saved = checkpoint.load(folder)
    assert saved["position"]["step"] == done  # the step in flight was finished and kept
    assert saved["optimizer"] is not None or saved["position"]["step_in_phase"] == 0
    assert not (folder / "model").exists()
    before = (folder / "metrics.jsonl").read_text().splitlines()

    resumed = launch(config_file, arguments)
    _, stderr = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, stderr[-2000:]
    after = (folder / "metrics.jsonl").read_text().splitlines()
    assert after[:done] == before  # nothing done before the signal was done again
    assert [record["step"] for record in metrics(folder)] == list(range(1, 49))
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"


def test_the_preempted_run_ends_where_the_uninterrupted_one_does(tiny_models, corpora, tmp_path, monkeypatch):
    """In process: the signal lands in the middle of step 5; the resumed run equals one never stopped."""
    model = tiny_models["gpt_neox"]
    reference = unlearn(load_config(None, settings(model, corpora, tmp_path / "reference", "train.checkpoint_every=0")))
    config = load_config(None, settings(model, corpora, tmp_path / "stopped", "train.checkpoint_every=0"))

    real = engine.compute_gradients
    calls = []

    def signalled_mid_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            signal.raise_signal(signal.SIGTERM)  # arrives while the step's gradients are being computed
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "compute_gradients", signalled_mid_step)
    with pytest.raises(Preempted, match="stopped by SIGTERM after step 5"):
        unlearn(config)
    monkeypatch.setattr(engine, "compute_gradients", real)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is only there while training
    unlearn(config)

    assert metrics(tmp_path / "stopped") == metrics(reference)
    after = load_file(tmp_path / "stopped" / "model" / "model.safetensors")
    expected = load_file(reference / "model" / "model.safetensors")
    assert all(torch.equal(after[name], expected[name]) for name in expected)


def test_under_torchrun_every_process_stops_after_the_same_step(tiny_models, corpora, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    config_file = tmp_path / "config.yaml"
    config_file.write_text("notes: preemption under torchrun\n")
    folder = tmp_path / "two"
    arguments = settings(tiny_models["gpt_neox"], corpora, folder, "train.checkpoint_every=0", "train.epochs_per_layer=2",
                         "train.per_device_batch_size=2")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "peel", "unlearn", str(config_file), *arguments]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_environment())
    wait_for_steps(process, folder, 2)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    _, stderr = process.communicate(timeout=180)
    assert process.returncode != 0
    assert json.loads((folder / "run.json").read_text())["status"] == "preempted", stderr[-3000:]
    done = steps_written(folder)
    assert checkpoint.load(folder)["position"]["step"] == done

    # One process continues what two began: same global batch, every step once.
    unlearn(load_config(config_file, arguments))
    assert [record["step"] for record in metrics(folder)] == list(range(1, 49))


def test_a_checkpoint_write_that_fails_halfway_keeps_the_previous_one(tiny_models, corpora, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    config = load_config(None, settings(tiny_models["gpt_neox"], corpora, folder))  # checkpoint every 3 steps
    real_save_file = checkpoint.save_file
    written = []  # the bytes of each whole checkpoint file

    def disk_full_on_the_second(tensors, path, metadata=None):
        if written:
            Path(path).write_bytes(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        real_save_file(tensors, path, metadata=metadata)
        written.append(Path(path).read_bytes())

    monkeypatch.setattr(checkpoint, "save_file", disk_full_on_the_second)
    with pytest.raises(RunFailed, match="No space left on device"):
        unlearn(config)
    monkeypatch.setattr(checkpoint, "save_file", real_save_file)

    assert (folder / CHECKPOINT_FILE).read_bytes() == written[0]
    assert checkpoint.load(folder)["position"]["step"] == 3
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    assert Path(record["error_log"]).read_text().startswith("Traceback")
    assert not list(folder.glob("*.tmp")) and not (folder / "model").exists()

    unlearn(config)  # continues from step 3
    assert [r["step"] for r in metrics(folder)] == list(range(1, 25))


def test_a_model_write_that_fails_halfway_leaves_no_model_and_keeps_the_checkpoint(tiny_models, corpora, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    config = load_config(None, settings(tiny_models["gpt_neox"], corpora, folder))
    real_save_model = engine.save_model

    def fails_halfway(model, tokenizer, target, state_dict=None):
        Path(target).mkdir(parents=True)
        (Path(target) / "config.json").write_text("{}")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(engine, "save_model", fails_halfway)
    with pytest.raises(RunFailed, match="Input/output error"):
        unlearn(config)
    monkeypatch.setattr(engine, "save_model", real_save_model)
    assert not (folder / "model").exists() and not list(folder.glob("*.partial"))
    assert json.loads((folder / "run.json").read_text())["status"] == "failed"
    steps = len(metrics(folder))
    assert checkpoint.load(folder)["position"]["step"] == steps == 24  # training was done and is kept

    unlearn(config)  # saves the model without training again
    assert len(metrics(folder)) == 24 and (folder / "model" / "model.safetensors").is_file()


def test_a_preempted_sweep_job_checkpoints_and_is_requeued(tiny_models, corpora, tmp_path, monkeypatch):
    """submitit's signal reaches only the job's own process here (as on a cluster that signals the
    batch step alone); the job passes it on, waits for the checkpoint, and is requeued."""
    import submitit

    from peel import sweep

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    config = tmp_path / "sweep.yaml"
    config.write_text(
        f"model: {{name_or_path: {tiny_models['gpt_neox']}}}\n"
        f"data: {{forget: {{path: {corpora['forget']}}}, retain: {{path: {corpora['retain']}}}, num_examples: 64, max_length: 16}}\n"
        "train: {global_batch_size: 8, per_device_batch_size: 8, dtype: float32, epochs_per_layer: 2}\n"
        "unlearn: {layers: [3, 1]}\n"
        f"output_dir: {tmp_path / 'sweep'}\n"
    )
    runs = sweep.plan(str(config), [], ["train.seed=0"])
    sweep.write(runs)
    executor = submitit.LocalExecutor(folder=tmp_path / "sweep" / "jobs")
    executor.update_parameters(timeout_min=10, gpus_per_node=0)
    (job,) = sweep.submit(runs, executor, nproc_per_node=1)
    folder = runs[0].folder

    deadline = time.time() + 180
    while steps_written(folder) < 3 and time.time() < deadline:
        time.sleep(0.05)
    # What Slurm's warning signal does to the job's task (submitit's own _interrupt signals the local
    # controller, which does not pass USR2 on).
    (task,) = Path(f"/proc/{job._process.pid}/task/{job._process.pid}/children").read_text().split()
    os.kill(int(task), signal.SIGUSR2)
    while json.loads((folder / "run.json").read_text()).get("status") != "preempted" and time.time() < deadline:
        time.sleep(0.05)
    stopped_at = checkpoint.load(folder)["position"]["step"]
    assert stopped_at >= 3

    job.result()  # the requeued job finishes the run
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"
    assert [record["step"] for record in metrics(folder)] == list(range(1, 33))
    log = Path(job.paths.stdout).read_text() + Path(job.paths.stderr).read_text()
    assert f"after step {stopped_at}" in log and "Requeued" in log


def test_a_run_whose_folder_disappears_reports_its_own_error(tiny_models, corpora, tmp_path, monkeypatch):
    """Recording a failure must not hide it: with the run folder gone, the original error is raised."""
    import shutil

    folder = tmp_path / "run"
    config = load_config(None, settings(tiny_models["gpt_neox"], corpora, folder))

    def folder_removed(*args, **kwargs):
        shutil.rmtree(folder)
        raise ValueError("the error that matters")

    monkeypatch.setattr(engine, "save_model", folder_removed)
    with pytest.raises(ValueError, match="the error that matters"):
        unlearn(config)
