"""Attack grids through `peel tamper`: expansion and names, bad settings refused before anything
runs, tamper.json from a real grid on a tiny model, resuming (after a real SIGTERM too), several
targets with a baseline and a comparison, and Slurm jobs through submitit."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peel import testbed
from peel.attacks import plan, running
from peel.cli import main
from peel.config import load_config
from tiny_lm import TEXTS, save_tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "evaluation"
SMALL = ["tamper.tasks=[testbed_forget,testbed_retain]", "tamper.steps=2", "tamper.eval_every=1",
         "tamper.per_device_batch_size=4", "tamper.max_length=32", "tamper.dtype=float32",
         "eval.batch_size=8", "eval.max_length=64"]


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A tiny model, attack text, the testbed tasks on the small fixture question sets, a private eval cache."""
    monkeypatch.setitem(testbed.MC_FILES, "testbed_forget", str(FIXTURES / "forget_mc.jsonl"))
    monkeypatch.setitem(testbed.MC_FILES, "testbed_retain", str(FIXTURES / "retain_mc.jsonl"))
    monkeypatch.setenv("PEEL_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "attack.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    return {"model": save_tiny_model(tmp_path / "model"), "data": f"tamper.data.path={data}", "out": tmp_path / "out"}


def test_the_default_grid_is_the_seed_sweep_after_the_few_shot_attacks():
    attacks = plan.grid_attacks(load_config(None, []), [])
    assert [attack.name for attack in attacks] == [
        "few_shot=0", "few_shot=5",
        "lr=2e-05,lr_scheduler=cosine,warmup_ratio=0.1", "lr=0.0002,lr_scheduler=cosine,warmup_ratio=0.1",
        "lr=0.001,lr_scheduler=cosine,warmup_ratio=0.1", "lr=0.0002,lr_scheduler=cosine,warmup_ratio=0.01",
        "lr=0.0002,lr_scheduler=cosine,warmup_ratio=0.033", "lr=0.0002,lr_scheduler=constant,warmup_ratio=0.1",
        "lr=2e-05,lr_scheduler=cosine,warmup_ratio=0.01,epochs=2",
    ]
    paper = attacks[-1].settings
    assert (paper.lr, paper.lr_scheduler, paper.warmup_ratio, paper.epochs, paper.steps) == (2e-5, "cosine", 0.01, 2, 100)
    assert all(attack.settings.dtype == "bfloat16" for attack in attacks)  # tamper.dtype null = train.dtype
    assert attacks[0].description()["settings"] == {"few_shot": 0, "tasks": ["wmdp_bio_robust", "mmlu"], "dtype": "bfloat16"}
    configs = Path(__file__).parent.parent / "configs"
    assert load_config(configs / "lora_l2_retain.yaml").tamper.grid == load_config(None, []).tamper.grid  # written out there


def test_command_line_grids_are_every_combination_and_nest_their_keys():
    config = load_config(None, ["tamper.few_shot=[]", "tamper.lr=1e-5"])
    attacks = plan.grid_attacks(config, ["tamper.adapter=full,lora", "tamper.data.path=a.jsonl,testbed:retain"])
    assert [attack.name for attack in attacks] == [
        "adapter=full,path=a.jsonl", "adapter=full,path=testbedretain", "adapter=lora,path=a.jsonl", "adapter=lora,path=testbedretain"]
    last = attacks[-1].settings
    assert (last.adapter, last.data.path, last.data.text_field, last.lr) == ("lora", "testbed:retain", "text", 1e-5)
    single = plan.grid_attacks(load_config(None, ["tamper.grid=[]", "tamper.few_shot=[]", "tamper.lr=3e-4"]), [])
    assert [(attack.name, attack.settings.lr) for attack in single] == [("attack", 3e-4)]


@pytest.mark.parametrize("arguments, message", [
    (["tamper.lr_scheduler=cosin"], "'tamper.lr_scheduler' got 'cosin'; accepted: constant, cosine, linear"),
    (["tamper.steps=-1"], "'tamper.steps' got -1; accepted: an integer >= 0"),
    (["tamper.eval_every=0"], "'tamper.eval_every' got 0; accepted: an integer >= 1"),
    (["tamper.few_shot=[5,-1]"], "'tamper.few_shot[1]' got -1"),
    (["tamper.grid=[{lrr: 1}]"], "unknown config key 'tamper.grid[0].lrr'"),
    (["tamper.grid=[{lr: .inf}]"], "'tamper.grid[0].lr' got inf; accepted: a finite number"),
    (["--grid", "tamper.lr_scheduler=cosine,cosin"], "'tamper.lr_scheduler' got 'cosin'"),
    (["--grid", "tamper.steps=10,-5"], "'tamper.steps' got -5"),
    (["--grid", "tamper.eval_every=0"], "'tamper.eval_every' got 0"),
    (["--grid", "train.lr=1e-4,1e-3"], "accepted keys are one attack's tamper settings"),
    (["--grid", "tamper.tasks=[a],[b]"], "accepted keys are one attack's tamper settings"),
    (["--grid", "tamper.lr=1e-3,1e-3"], "same attack name"),
    (["tamper.lr=1e-4"], "tamper.lr=1e-4 is replaced by the grid's attacks"),
    (["tamper.grid=[]", "tamper.few_shot=[]", "--grid", "tamper.seed=1", "tamper.seed=2"], "replaced by the grid's attacks"),
    (["tamper.grid=[]", "tamper.few_shot=[]", "--slurm", "nodes=2"], "an attack runs in one process"),
])
def test_bad_attack_settings_are_one_line_errors_before_anything_runs(world, arguments, message, capsys, monkeypatch):
    import peel.models

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(peel.models, "load_model", no_loading)
    assert main(["tamper", world["model"], "--output-dir", str(world["out"]), *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error
    assert not world["out"].exists()


def test_dry_run_prints_each_attack_and_the_grids_size_and_loads_no_model(world, capsys, monkeypatch):
    import peel.models

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(peel.models, "load_model", no_loading)
    capsys.readouterr()
    assert main(["tamper", world["model"], "testbed:base", "--output-dir", str(world["out"]), *SMALL, "tamper.steps=5",
                 "tamper.eval_every=2", world["data"], "tamper.few_shot=[0, 3]",
                 "--grid", "tamper.lr=1e-4,1e-3", "--grid", "tamper.adapter=full,lora", "--dry-run"]) == 0
    output = capsys.readouterr().out
    assert f"target {world['model']} -> {world['out'] / 'model'}" in output
    assert "few_shot=3: few_shot (few_shot 3)" in output
    assert ("lr=1e-3,adapter=lora: fine_tune (adapter lora, lora_rank 16, optimizer adamw, lr 0.001, lr_scheduler constant, "
            "warmup_ratio 0, steps 5, per_device_batch_size 4") in output
    # 4 fine-tuning attacks evaluated at steps 2, 4 and 5, the 3-shot prompt, and step 0 shared: 14 per target
    assert ("6 attacks: 4 fine-tuning (20 optimizer steps in all), 2 that train nothing; about 14 evaluations of "
            "testbed_forget, testbed_retain per target (28 for 2 targets)") in output
    assert not world["out"].exists()


def test_a_grid_writes_every_attack_its_worst_case_and_resumes_without_rerunning(world, monkeypatch, capsys):
    command = ["tamper", world["model"], "--output-dir", str(world["out"]), *SMALL, world["data"],
               "tamper.few_shot=[0,1]", "--grid", "tamper.lr=1e-3,1e-2"]
    assert main(command) == 0
    record = json.loads((world["out"] / "tamper.json").read_text())
    assert [attack["name"] for attack in record["attacks"]] == ["few_shot=0", "few_shot=1", "lr=1e-3", "lr=1e-2"]
    assert record["pending"] == [] and record["retain_task"] == "testbed_retain" and record["baseline"] is None
    untouched, prompted, *tuned = (attack["curve"] for attack in record["attacks"])
    assert [row["step"] for row in prompted] == [0] and [[row["step"] for row in curve] for curve in tuned] == [[0, 1, 2]] * 2
    assert all(curve[0] == untouched[0] for curve in tuned)  # step 0 is the untouched model, measured once
    assert prompted[0]["testbed_retain"] == untouched[0]["testbed_retain"]  # few-shot prompts the forget task only
    assert [row["step"] for row in record["worst_case"]] == [0, 1, 2]
    for row in record["worst_case"]:
        values = [point["testbed_forget"] for curve in (untouched, prompted, *tuned) for point in curve if point["step"] == row["step"]]
        assert row["testbed_forget"] in values and all(row["testbed_forget"] >= value for value in values)
    entry = record["summary"]["testbed_forget"]
    assert entry["steps_to_recover"] is None and entry["worst"] == max(row["testbed_forget"] for row in record["worst_case"])
    assert set(record["summary"]) == {"testbed_forget"}
    held = {path.name: path.read_bytes() for path in (world["out"] / "attacks").glob("*.json")}
    assert set(held) == {"grid.json", "few_shot=0.json", "few_shot=1.json", "lr=1e-3.json", "lr=1e-2.json"}
    assert (world["out"] / "tamper.png").stat().st_size > 0

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished attack ran again")

    run_attack = running.run_attack
    monkeypatch.setattr(running, "run_attack", must_not_run)
    capsys.readouterr()
    assert main(command) == 0
    assert capsys.readouterr().out.count("finished earlier") == 4
    assert {path.name: path.read_bytes() for path in (world["out"] / "attacks").glob("*.json")} == held

    changed = [*command, "tamper.steps=3"]
    assert main(changed) == 2
    assert "with other settings steps" in capsys.readouterr().err
    monkeypatch.setattr(running, "run_attack", run_attack)
    assert main([*changed, "--force"]) == 0
    steps = [[row["step"] for row in a["curve"]] for a in json.loads((world["out"] / "tamper.json").read_text())["attacks"]]
    assert steps[2:] == [[0, 1, 2, 3]] * 2


def test_several_targets_a_baseline_and_a_comparison_side_by_side(world, tmp_path):
    other = save_tiny_model(tmp_path / "other")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "tamper.json").write_text(json.dumps([{"step": 0, "testbed_forget": 0.2}, {"step": 1, "testbed_forget": 0.4}]))
    command = ["tamper", world["model"], other, "--output-dir", str(world["out"]), "--baseline", world["model"],
               "--compare", str(earlier), *SMALL, world["data"], "tamper.steps=1", "tamper.grid=[]", "tamper.few_shot=[]"]
    assert main(command) == 0
    for name in ("model", "other"):
        record = json.loads((world["out"] / name / "tamper.json").read_text())
        assert [attack["name"] for attack in record["attacks"]] == ["attack"]
        assert set(record["baseline"]) == {"testbed_forget", "testbed_retain"}  # --baseline, evaluated and cached
        entry, baseline = record["summary"]["testbed_forget"], record["baseline"]["testbed_forget"]
        if entry["step0"] < baseline - 1e-9:
            assert set(entry["steps_to_recover"]) == {"50", "90"}
        else:  # nothing lost (the baseline model attacked is itself): nothing to recover, not "step 0"
            assert entry["steps_to_recover"] is None
        if name == "model":
            assert entry["step0"] == baseline and entry["steps_to_recover"] is None
        assert (world["out"] / name / "tamper.png").is_file()
    assert (world["out"] / "tamper.png").is_file()  # the three side by side
    assert list((tmp_path / "cache" / "baselines").glob("*.json"))


def test_sigterm_stops_the_grid_between_attacks_and_the_rerun_finishes_it(world, capsys):
    command = [sys.executable, str(Path(__file__).parent / "peel_with_test_tasks.py"), "tamper", world["model"],
               "--output-dir", str(world["out"]), *SMALL, world["data"], "tamper.few_shot=[]",
               "tamper.steps=4", "tamper.eval_every=4", "--grid", "tamper.lr=1e-4,2e-4,3e-4,4e-4"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    first = world["out"] / "attacks" / "lr=1e-4.json"
    deadline = time.time() + 180
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("peel tamper: stopped by SIGTERM")
    kept = {path.name: path.stat().st_mtime_ns for path in (world["out"] / "attacks").glob("lr=*.json")}
    assert "lr=1e-4.json" in kept and len(kept) < 4, f"the grid was not stopped midway: {sorted(kept)}"
    record = json.loads((world["out"] / "tamper.json").read_text())
    assert record["pending"] and [a["name"] for a in record["attacks"]] == [name[:-5] for name in sorted(kept, key=lambda n: float(n[3:-5]))]

    capsys.readouterr()
    assert main(command[2:]) == 0  # the same command again, in this process (the fixture points at the same questions)
    assert capsys.readouterr().out.count("finished earlier") == len(kept)
    assert all((world["out"] / "attacks" / name).stat().st_mtime_ns == mtime for name, mtime in kept.items())
    assert json.loads((world["out"] / "tamper.json").read_text())["pending"] == []


def test_slurm_jobs_run_one_attack_each_and_record_failures(world, tmp_path):
    import submitit

    present, missing = world["data"].split("=", 1)[1], tmp_path / "missing.jsonl"
    missing.write_text(Path(present).read_text())  # there when the grid is planned and checked ...
    plans = plan.plan_attacks([world["model"]], [*SMALL, "tamper.few_shot=[0]", "tamper.steps=1"],
                             [f"tamper.data.path={present},{missing}"], str(world["out"]))
    missing.unlink()  # ... and gone when its job runs
    job = running.AttackJob(plans[0], plans[0].attacks[1])
    assert pickle.loads(pickle.dumps(job)).attack == job.attack  # what submitit sends to the cluster

    executor = submitit.DebugExecutor(folder=world["out"] / "jobs")
    jobs = running.submit(plans, executor)
    assert len(jobs) == 3
    jobs[0].result(), jobs[1].result()
    assert "does not exist" in str(jobs[2].exception())  # (result() would open a debugger on a DebugJob)
    attacks = world["out"] / "attacks"
    failed = next(attacks.glob("*missing*.job.json"))
    assert json.loads(failed.read_text())["status"] == "failed"
    record = json.loads((world["out"] / "tamper.json").read_text())
    assert len(record["attacks"]) == 2 and len(record["pending"]) == 1

    again = running.submit(plans, submitit.DebugExecutor(folder=world["out"] / "jobs"))
    assert len(again) == 1  # only the failed attack goes out again
