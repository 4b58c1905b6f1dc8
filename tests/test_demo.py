"""A reduced `peel demo` end to end through the CLI, on the shipped testbed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peel import testbed

# Fewer unlearning examples, short attacks and 20 questions per task keep this near a minute on 2 cores.
REDUCED = ["data.num_examples=64", "tamper.steps=4", "tamper.eval_every=2", "tamper.num_examples=32", "eval.limit=20",
           "probe.limit=40"]
ATTACKS = ["few_shot=0", "few_shot=5", "adapter=full,lr=0.0002", "adapter=full,lr=0.001", "adapter=lora,lr=0.0002",
           "adapter=lora,lr=0.001", "adapter=full,lr=0.001,path=testbedretain",
           "kind=quantize,bits=8", "kind=quantize,bits=4", "kind=orthogonalize,components=1"]


@pytest.mark.skipif(not (testbed.ARTIFACTS / "base").is_dir(), reason="testbed artifacts not built")
def test_reduced_demo_writes_a_summary_and_unlearns(tmp_path):
    output = tmp_path / "demo"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "peel", "demo", "--output-dir", str(output), *REDUCED],
        capture_output=True, text=True, env=environment,  # no time limit: a busy machine is slow, not wrong
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    summary = json.loads((output / "summary.json").read_text())
    assert set(summary) == {"models", "probe", "tamper", "attacks", "resistance", "wall_seconds"}
    assert set(summary["models"]) == {"base", "filtered", "unlearned"}
    for row in summary["models"].values():
        assert set(row) == {"forget_acc", "retain_acc"} and all(0 <= value <= 1 for value in row.values())

    # Every model probed at every layer, on the demo's tasks; the summary keeps each reader's best layer.
    probes = json.loads((output / "probe" / "probe.json").read_text())
    assert list(probes["targets"]) == ["base", "unlearned", "filtered"]
    assert probes["tasks"] == ["testbed_forget", "testbed_retain"]
    assert set(summary["probe"]["models"]) == set(summary["models"])
    for name, entry in probes["targets"].items():
        assert [row["layer"] for row in entry["probe"]] == list(range(8))
        for key, task in (("forget_acc", "testbed_forget"), ("retain_acc", "testbed_retain")):
            best = summary["probe"]["models"][name][key]["lens"]
            assert best["accuracy"] == max(row[task] for row in entry["logit_lens"])
            assert entry["logit_lens"][best["layer"]][task] == best["accuracy"]
    assert summary["probe"]["chance"] == {"forget_acc": probes["chance"]["testbed_forget"], "retain_acc": probes["chance"]["testbed_retain"]}
    assert (output / "probe" / "probe.png").stat().st_size > 0
    assert set(summary["tamper"]) == set(summary["attacks"]) == set(summary["resistance"]) == {"unlearned", "filtered"}
    for name, curve in summary["tamper"].items():  # the worst case over the attacks, in the rows of earlier demos
        assert [point["step"] for point in curve] == [0, 2, 4]
        assert all(set(point) == {"step", "forget_acc"} and 0 <= point["forget_acc"] <= 1 for point in curve)
        attacks = summary["attacks"][name]
        assert [attack["name"] for attack in attacks] == ATTACKS
        assert [attack["label"] for attack in attacks if attack["label"].endswith("(benign)")] == ["full, lr 1e-3, on testbed:retain (benign)"]
        assert all(set(point) == {"step", "forget_acc", "retain_acc"} for attack in attacks for point in attack["curve"])
        assert summary["resistance"][name]["worst"] == max(point["forget_acc"] for point in curve)
        assert summary["resistance"][name]["steps_to_recover"] is not None  # measured against the base model
    assert summary["models"]["unlearned"]["forget_acc"] == summary["attacks"]["unlearned"][0]["curve"][0]["forget_acc"]
    assert summary["wall_seconds"] > 0
    assert summary["models"]["unlearned"]["forget_acc"] < summary["models"]["base"]["forget_acc"]
    markdown = (output / "summary.md").read_text()
    assert markdown.startswith("**What this showed.** Unlearning took forget accuracy from ")
    assert "| model | forget accuracy | retain accuracy | forget probe" in markdown
    assert "Probes (best layer" in markdown and "| Chance |" in markdown
    assert (output / "tamper.png").stat().st_size > 0
    assert (output / "unlearn" / "model").is_dir() and (output / "filtered" / "tamper.json").is_file()

    # The run folder carries the demo's evaluation and attacks, so a report can be built from it.
    from peel.outputs.report import read_run

    run = read_run(output / "unlearn")
    assert run.evaluation["accuracy"]["testbed_forget"] == summary["models"]["unlearned"]["forget_acc"]
    assert run.evaluation["baseline"]["accuracy"]["testbed_forget"] == summary["models"]["base"]["forget_acc"]
    assert [row["testbed_forget"] for row in run.tamper["worst_case"]] == [point["forget_acc"] for point in summary["tamper"]["unlearned"]]


def test_demo_rejects_a_missing_config_in_one_line(tmp_path, capsys):
    from peel.cli import main

    assert main(["demo", "--output-dir", str(tmp_path), "--config", str(tmp_path / "missing.yaml")]) == 2
    error = capsys.readouterr().err
    assert "missing.yaml" in error and error.count("\n") == 1


def test_demo_scenario_must_match_its_config_in_one_line(tmp_path, capsys):
    from peel.cli import main

    config = Path(__file__).parent.parent / "configs" / "testbed_lora.yaml"
    assert main(["demo", "--scenario", "elements", "--output-dir", str(tmp_path), "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "elements:base" in error and "testbed:base" in error and error.count("\n") == 1
    assert not (tmp_path / "unlearn").exists()
