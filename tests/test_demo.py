"""A reduced `peel demo` end to end through the CLI, on the shipped testbed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peel import testbed

# Fewer unlearning examples and a short attack keep this under a minute on 2 cores.
REDUCED = ["data.num_examples=64", "tamper.steps=10", "tamper.eval_every=5", "tamper.num_examples=32"]


@pytest.mark.skipif(not (testbed.ARTIFACTS / "base").is_dir(), reason="testbed artifacts not built")
def test_reduced_demo_writes_a_summary_and_unlearns(tmp_path):
    output = tmp_path / "demo"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "peel", "demo", "--output-dir", str(output), *REDUCED],
        capture_output=True, text=True, env=environment, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    summary = json.loads((output / "summary.json").read_text())
    assert set(summary) == {"models", "tamper", "wall_seconds"}
    assert set(summary["models"]) == {"base", "filtered", "unlearned"}
    for row in summary["models"].values():
        assert set(row) == {"forget_acc", "retain_acc"} and all(0 <= value <= 1 for value in row.values())
    assert set(summary["tamper"]) == {"unlearned", "filtered"}
    for curve in summary["tamper"].values():
        assert [point["step"] for point in curve] == [0, 5, 10]
        assert all(0 <= point["forget_acc"] <= 1 for point in curve)
    assert summary["wall_seconds"] > 0
    assert summary["models"]["unlearned"]["forget_acc"] < summary["models"]["base"]["forget_acc"]
    assert (output / "summary.md").read_text().startswith("| model |")
    assert (output / "tamper.png").stat().st_size > 0
    assert (output / "unlearn" / "model").is_dir()

    # The run folder carries the demo's evaluation and attack, so a report can be built from it.
    from peel.report import read_run

    run = read_run(output / "unlearn")
    assert run.evaluation["accuracy"]["testbed_forget"] == summary["models"]["unlearned"]["forget_acc"]
    assert run.evaluation["baseline"]["accuracy"]["testbed_forget"] == summary["models"]["base"]["forget_acc"]
    assert [row["testbed_forget"] for row in run.tamper] == [point["forget_acc"] for point in summary["tamper"]["unlearned"]]


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
