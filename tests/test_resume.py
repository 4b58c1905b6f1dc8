"""Runs that are killed and run again: the result must be the run that was never interrupted."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peel.runs import checkpoint
from peel.config import load_config
from peel.unlearning.engine import unlearn
from peel.errors import PeelError
from peel.runs.folder import CHECKPOINT_FILE

SETTINGS = [
    "data.num_examples=64",
    "data.max_length=16",
    "train.global_batch_size=8",
    "train.per_device_batch_size=4",
    "train.dtype=float32",
    "train.lr=1e-2",
    "train.checkpoint_every=3",  # does not divide the 8 steps of a phase: mid-phase and phase-end checkpoints mix
    "unlearn.layers=[3, 2, 1]",
    "unlearn.grad_filter=same_sign",
    "unlearn.l2sp_coef=0.1",
]


@pytest.fixture
def on_cpu(monkeypatch):
    """These are comparisons of CPU runs: hide any GPU from this process and the workers it starts."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def settings(model: Path, corpora: dict, output_dir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model}", f"data.forget.path={corpora['forget']}",
            f"data.retain.path={corpora['retain']}", *SETTINGS, f"output_dir={output_dir}", *extra]


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def launch(config_file: Path, arguments: list[str]) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "peel", "unlearn", str(config_file), *arguments],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


def steps_written(folder: Path) -> int:
    path = folder / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def kill_after_progress(process: subprocess.Popen, folder: Path, rng: random.Random) -> bool:
    """SIGKILL `process` at a random moment after it has written a step; False if it finished first."""
    before = steps_written(folder)
    deadline = time.time() + 120
    while steps_written(folder) <= before and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.2))  # anywhere: mid-step, mid-checkpoint write, mid-metrics append
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def test_sigkilled_full_fine_tuning_run_resumes_to_the_uninterrupted_result(tiny_models, corpora, tmp_path, on_cpu):
    config_file = tmp_path / "config.yaml"
    config_file.write_text("notes: resume\n")
    model = tiny_models["llama"]
    killed = tmp_path / "killed"
    full = ["unlearn.adapter=full", "train.epochs_per_layer=2"]  # 48 steps: room for 5 kills however fast the machine
    arguments = settings(model, corpora, killed, *full)

    rng = random.Random(0)
    kills = 0
    while kills < 5:
        process = launch(config_file, arguments)
        assert kill_after_progress(process, killed, rng), "the run finished before it could be killed"
        kills += 1
        saved = checkpoint.load(killed)
        print(f"kill {kills}: {steps_written(killed)} steps written, checkpoint at step {saved['position']['step'] if saved else None}")
        lines = (killed / "metrics.jsonl").read_text().splitlines()
        # Every line that made it to disk is whole JSON, or the last one is cut; resume drops both kinds past the checkpoint.
        assert all(line.startswith("{") for line in lines)
    finished = launch(config_file, arguments)
    _, stderr = finished.communicate(timeout=180)
    assert finished.returncode == 0, stderr[-3000:]

    reference = unlearn(load_config(config_file, settings(model, corpora, tmp_path / "reference", *full)))
    resumed_records, reference_records = metrics(killed), metrics(reference)
    assert [r["step"] for r in resumed_records] == list(range(1, 49))  # every step exactly once
    for a, b in zip(resumed_records, reference_records):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9)
    after, expected = load_file(killed / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(after[name], expected[name], rtol=1e-6, atol=1e-7)
    assert not (killed / CHECKPOINT_FILE).exists()

    # Run again: completed, so nothing happens and exit status is 0.
    again = launch(config_file, arguments)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr[-2000:]
    assert "holds a completed run" in stdout
    assert [r["step"] for r in metrics(killed)] == list(range(1, 49))


def test_lora_run_stopped_mid_phase_resumes_to_the_uninterrupted_result(tiny_models, corpora, tmp_path, monkeypatch):
    """A crash right after a mid-phase checkpoint (adapter, optimizer, scheduler) and steps past it."""
    model = tiny_models["gpt_neox"]
    stopped = tmp_path / "stopped"
    config = load_config(None, settings(model, corpora, stopped, "unlearn.lora.dropout=0.1"))
    reference = unlearn(load_config(None, settings(model, corpora, tmp_path / "reference", "unlearn.lora.dropout=0.1")))

    real_save = checkpoint.save
    saves = []

    def save_or_stop(*args, **kwargs):
        saves.append(args[2])
        if len(saves) == 5:  # dies at step 12 before saving: steps 10-12 are in metrics.jsonl past the checkpoint
            raise KeyboardInterrupt
        real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save_or_stop)
    with pytest.raises(KeyboardInterrupt):
        unlearn(config)
    assert saves[-2:] == [checkpoint.Position(1, 1, 9), checkpoint.Position(1, 4, 12)]
    assert len(metrics(stopped)) == 12
    monkeypatch.setattr(checkpoint, "save", real_save)
    unlearn(config)

    assert [r["step"] for r in metrics(stopped)] == list(range(1, 25))
    assert metrics(stopped) == metrics(reference)  # dropout draws resumed from the saved generator state
    after, expected = load_file(stopped / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert all(torch.equal(after[name], expected[name]) for name in expected)


def test_a_different_config_is_refused_unless_forced(tiny_models, corpora, tmp_path):
    folder = tmp_path / "run"
    arguments = settings(tiny_models["gpt_neox"], corpora, folder, "unlearn.layers=[3]")
    unlearn(load_config(None, arguments))
    changed = load_config(None, [*arguments, "unlearn.remove_coef=20"])
    with pytest.raises(PeelError, match=r"different config \(unlearn.remove_coef: 10.0 in the folder, 20.0 now\)"):
        unlearn(changed)
    (folder / "tamper.json").write_text("{}")  # a result of the old model
    (folder / "notes.txt").write_text("mine")
    unlearn(changed, force=True)
    assert load_config(folder / "config.yaml").unlearn.remove_coef == 20
    assert not (folder / "tamper.json").exists() and (folder / "notes.txt").exists()
    assert [r["step"] for r in metrics(folder)] == list(range(1, 9))


def test_a_changed_distill_section_does_not_refuse_the_unlearning_run(tmp_path):
    """peel unlearn does not read distill.*: its run folder resumes whatever that section says;
    peel distill, which reads it, still compares it."""
    from peel.runs import resume
    from peel.config import load_config, save_config

    saved = load_config(None, ["distill.alpha=0.3"])
    save_config(saved, tmp_path / "config.yaml")
    given = load_config(None, ["distill.alpha=0.8"])
    assert resume.config_differences(saved, given, uncompared=("distill.",)) == []
    assert resume.config_differences(saved, given) == ["distill.alpha: 0.3 in the folder, 0.8 now"]
