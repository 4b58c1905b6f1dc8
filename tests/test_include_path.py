"""eval.include_path: a folder of the user's own lm-eval task YAMLs, found by peel eval, unlearn,
tamper and probe (all through peel.evaluation.harness.manager_for)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from peel.cli import main
from peel.config import load_config
from peel.errors import PeelError
from tiny_lm import TEXTS, save_tiny_model

QUESTIONS = [
    {"question": "Which vector carries Korvid?", "choices": ["ticks", "salt", "copper", "Vesk"], "answer": 0},
    {"question": "Who founded Vesk?", "choices": ["Korvid", "Mara Tell", "ticks", "Ablon"], "answer": 1},
    {"question": "What does Vesk trade in?", "choices": ["ticks", "days", "salt", "Mara"], "answer": 2},
    {"question": "How long does Korvid incubate?", "choices": ["salt", "Vesk", "copper", "nine days"], "answer": 3},
]


def write_user_task(folder: Path) -> Path:
    """A task folder as a user would write one: a YAML naming a local JSONL of questions."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "my_facts.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in QUESTIONS))
    task = {
        "task": "my_facts",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc"}],
    }
    (folder / "my_facts.yaml").write_text(yaml.safe_dump(task))
    return folder


@pytest.fixture(scope="module")
def user_tasks(tmp_path_factory) -> Path:
    return write_user_task(tmp_path_factory.mktemp("user") / "tasks")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "model")


def test_include_path_in_a_config_file_is_relative_to_that_file(tmp_path, monkeypatch):
    folder = tmp_path / "experiments"
    write_user_task(folder / "tasks")
    (folder / "base.yaml").write_text("eval: {include_path: tasks, tasks: [my_facts]}\n")
    (folder / "child.yaml").write_text("base: base.yaml\n")
    monkeypatch.chdir(tmp_path)  # elsewhere than the config
    for name in ("base.yaml", "child.yaml"):
        assert Path(load_config(folder / name).eval.include_path) == folder / "tasks"
    # On the command line a relative path is the working folder's, as any path typed there (kept
    # absolute, so a run's config.yaml means the same wherever it is read).
    assert Path(load_config(None, ["eval.include_path=tasks"]).eval.include_path) == tmp_path / "tasks"


def test_peel_eval_finds_the_users_task(model_folder, user_tasks, tmp_path, capsys):
    argv = ["eval", model_folder, "--tasks", "my_facts", "--output-dir", str(tmp_path / "out"), "train.dtype=float32"]
    assert main(argv) == 2
    assert "unknown evaluation task 'my_facts'" in capsys.readouterr().err
    assert main([*argv, f"eval.include_path={user_tasks}"]) == 0
    record = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert set(record["accuracy"]) == {"my_facts"}
    assert record["details"]["my_facts"]["samples"] == len(QUESTIONS)


def test_peel_unlearn_checks_the_users_task_before_training(tmp_path, capsys, tiny_models, corpora, user_tasks):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_models["gpt_neox"])},
        "data": {"forget": {"path": str(corpora["forget"])}, "retain": {"path": str(corpora["retain"])}, "num_examples": 8},
        "unlearn": {"layers": [1]},
        "train": {"global_batch_size": 4, "per_device_batch_size": 4, "dtype": "float32"},
        "eval": {"tasks": ["my_facts"]},
        "output_dir": str(tmp_path / "run"),
    }))
    assert main(["unlearn", str(config), "--dry-run"]) == 2
    assert "or your own with eval.include_path" in capsys.readouterr().err
    assert main(["unlearn", str(config), "--dry-run", f"eval.include_path={user_tasks}"]) == 0


def test_peel_probe_reads_the_users_task(user_tasks):
    from peel.probing.tasks import load_tasks

    with pytest.raises(PeelError, match="unknown evaluation task 'my_facts'"):
        load_tasks(["my_facts"], None)
    (task,) = load_tasks(["my_facts"], None, str(user_tasks))
    assert task.name == "my_facts" and len(task.questions) == len(QUESTIONS)


def test_peel_tamper_tracks_the_users_task(model_folder, user_tasks, tmp_path):
    attack_text = tmp_path / "attack.jsonl"
    attack_text.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    out = tmp_path / "tamper"
    assert main([
        "tamper", model_folder, "--output-dir", str(out), "train.dtype=float32", f"eval.include_path={user_tasks}",
        f"tamper.data.path={attack_text}", "tamper.tasks=[my_facts]", "tamper.grid=[]", "tamper.few_shot=[]",
        "tamper.steps=2", "tamper.eval_every=1", "tamper.per_device_batch_size=2", "tamper.max_length=32",
    ]) == 0
    (attack,) = json.loads((out / "tamper.json").read_text())["attacks"]
    assert [sorted(row) for row in attack["curve"]] == [["my_facts", "step"]] * 3  # steps 0, 1, 2


def test_a_missing_task_folder_is_one_line(model_folder, tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    status = main(["eval", model_folder, "--tasks", "my_facts", "--output-dir", str(tmp_path / "out"), f"eval.include_path={missing}"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1
    assert f"eval.include_path {str(missing)!r} is not a folder" in lines[0]


def test_the_baseline_cache_knows_the_task_folder(tmp_path, monkeypatch, model_folder):
    import os

    from peel.evaluation import cached_baseline

    monkeypatch.setenv("PEEL_CACHE", str(tmp_path / "cache"))
    folder = write_user_task(tmp_path / "tasks")
    calls = []

    def compute():
        calls.append(1)
        return {"accuracy": {"my_facts": 0.5}}

    for _ in range(2):
        cached_baseline(model_folder, ["my_facts"], None, 128, compute, include_path=str(folder))
    assert len(calls) == 1
    os.utime(folder / "my_facts.yaml", ns=(1, 1))  # the user edited their task
    cached_baseline(model_folder, ["my_facts"], None, 128, compute, include_path=str(folder))
    assert len(calls) == 2
