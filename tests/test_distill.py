"""peel distill: the student's starting point at both ends of alpha, training that lowers the KL,
one process against two, a run stopped by SIGTERM against one never stopped, and bad inputs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import peel.distill
from peel.cli import main
from peel.config import load_config
from peel.distill import distill
from peel.unlearning.engine import unlearn
from peel.errors import Preempted

from test_distributed import worker_environment
from test_resume import settings


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models, corpora) -> Path:
    """A completed unlearning run on the tiny GPT-NeoX (2 steps): the teacher."""
    folder = tmp_path_factory.mktemp("distill") / "unlearned"
    unlearn(load_config(None, settings(tiny_models["gpt_neox"], corpora, folder, "data.num_examples=16", "unlearn.layers=[3]")))
    return folder


def distill_config(run: Path, output_dir: Path, *extra: str):
    """What `peel distill RUN --output-dir OUTPUT key=value...` builds."""
    overrides = ["distill.per_device_batch_size=4", "distill.global_batch_size=8", "distill.lr=1e-2",
                 *extra, f"output_dir={output_dir}", f"distill.run={run.resolve()}"]
    return load_config(run / "config.yaml", overrides)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model" / "model.safetensors")


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_alpha_zero_and_zero_steps_return_the_unlearned_model(run, tmp_path):
    folder = distill(distill_config(run, tmp_path / "same", "distill.alpha=0", "distill.steps=0"))
    result, unlearned = weights(folder), weights(run)
    assert result.keys() == unlearned.keys()
    assert all(torch.equal(result[name], unlearned[name]) for name in unlearned)
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"


def test_alpha_one_is_the_seeded_fresh_init_and_one_half_the_midpoint(run, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    fresh = distill(distill_config(run, tmp_path / "fresh", "distill.alpha=1", "distill.steps=0", "distill.seed=3"))
    torch.manual_seed(3)
    expected = dict(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run / "model")).named_parameters())
    loaded = dict(AutoModelForCausalLM.from_pretrained(fresh / "model").named_parameters())
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)
    result, unlearned = weights(fresh), weights(run)
    assert not torch.equal(result["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"], unlearned["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"])

    half = weights(distill(distill_config(run, tmp_path / "half", "distill.alpha=0.5", "distill.steps=0", "distill.seed=3")))
    for name in result:
        torch.testing.assert_close(half[name], (result[name] + unlearned[name]) / 2)


def test_a_few_steps_lower_the_kl_and_the_result_is_a_target(run, tmp_path):
    from transformers import AutoModelForCausalLM

    from peel.runs.targets import resolve_target

    folder = distill(distill_config(run, tmp_path / "trained", "distill.alpha=1", "distill.steps=8", "distill.warmup_ratio=0",
                                  "distill.lr=1e-3"))  # measured: KL 0.0027 -> 0.0006
    losses = [record["distill_loss"] for record in metrics(folder)]
    assert [record["step"] for record in metrics(folder)] == list(range(1, 9))
    assert losses[-1] < 0.5 * losses[0]
    AutoModelForCausalLM.from_pretrained(folder / "model")  # transformers reads it as it is
    target = resolve_target(str(folder), [])
    assert target.model == str(folder / "model") and target.config.distill.alpha == 1
    report = tmp_path / "report.md"
    assert main(["report", str(folder), "--output", str(report)]) == 0
    assert "| trained |" in report.read_text()


def test_with_forget_distills_on_the_forget_text_too(run, tmp_path):
    from peel.data import load_texts, tokenize

    plain = peel.distill.prepare(distill_config(run, tmp_path / "retain_only", "distill.num_examples=6"))
    mixed = peel.distill.prepare(distill_config(run, tmp_path / "mixed", "distill.num_examples=6", "distill.with_forget=true"))
    config = load_config(run / "config.yaml", [])
    forget = tokenize(load_texts(config.data.forget, 6, config.distill.seed), plain.tokenizer, config.data.max_length)
    assert len(plain.examples) == 6 and mixed.examples == plain.examples + forget

    folder = distill(distill_config(run, tmp_path / "trained", "distill.num_examples=6", "distill.with_forget=true",
                                    "distill.steps=2", "distill.alpha=0.5"))
    alone = distill(distill_config(run, tmp_path / "trained_alone", "distill.num_examples=6", "distill.steps=2", "distill.alpha=0.5"))
    assert [r["distill_loss"] for r in metrics(folder)] != [r["distill_loss"] for r in metrics(alone)]


def torchrun_distill(arguments: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(__file__).parent / "peel_with_test_tasks.py"), "distill", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=worker_environment())


def test_two_processes_equal_one(run, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    common = ["distill.alpha=0.5", "distill.steps=4", "distill.global_batch_size=8", "distill.lr=1e-2"]
    two = tmp_path / "two"
    result = torchrun_distill([str(run), *common, "distill.per_device_batch_size=4", "--output-dir", str(two)])
    assert result.returncode == 0, result.stderr[-3000:]
    one = distill(distill_config(run, tmp_path / "one", *common, "distill.per_device_batch_size=8"))
    assert json.loads((two / "run.json").read_text())["parallel"] == "ddp"
    records_one, records_two = metrics(one), metrics(two)
    assert [record["step"] for record in records_two] == [1, 2, 3, 4]
    for a, b in zip(records_one, records_two):
        for key in ("distill_loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    weights_one, weights_two = weights(one), weights(two)
    assert weights_one.keys() == weights_two.keys()
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("checkpoint_every", [0, 2])
def test_a_run_stopped_by_sigterm_resumes_to_the_uninterrupted_run(run, tmp_path, monkeypatch, checkpoint_every):
    common = ["distill.alpha=0.5", "distill.steps=6", f"distill.checkpoint_every={checkpoint_every}"]
    reference = distill(distill_config(run, tmp_path / "reference", *common))
    config = distill_config(run, tmp_path / "stopped", *common)
    real = peel.distill.kl_backward
    calls = []

    def signalled_mid_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # two micro-batches a step: the second step's last, the fourth step's first
            signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(peel.distill, "kl_backward", signalled_mid_step)
    with pytest.raises(Preempted, match="stopped by SIGTERM after step 2"):
        distill(config)
    monkeypatch.setattr(peel.distill, "kl_backward", real)
    assert json.loads((tmp_path / "stopped" / "run.json").read_text())["status"] == "preempted"
    assert not (tmp_path / "stopped" / "model").exists()
    distill(config)

    assert metrics(tmp_path / "stopped") == metrics(reference)
    after, expected = weights(tmp_path / "stopped"), weights(reference)
    assert all(torch.equal(after[name], expected[name]) for name in expected)
    assert not (tmp_path / "stopped" / "checkpoint.safetensors").exists()


def bad_cases(run: Path, root: Path) -> dict[str, tuple[list[str], str]]:
    unfinished = root / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((run / "config.yaml").read_text())
    (unfinished / "run.json").write_text(json.dumps({"status": "preempted"}))
    return {
        "alpha above 1": ([str(run), "distill.alpha=1.5"], "'distill.alpha' got 1.5; accepted: a number in [0, 1]"),
        "alpha below 0": ([str(run), "distill.alpha=-0.1"], "'distill.alpha' got -0.1; accepted: a number in [0, 1]"),
        "negative steps": ([str(run), "distill.steps=-3"], "'distill.steps' got -3; accepted: an integer >= 0"),
        "not a run folder": ([str(root / "nowhere")], "is not a run folder (no config.yaml)"),
        "unfinished run": ([str(unfinished)], "holds no completed run (run.json status 'preempted')"),
        "with_forget not a bool": ([str(run), "distill.with_forget=maybe"], "'distill.with_forget' got 'maybe'; accepted: true or false"),
        "missing data": ([str(run), f"distill.data.path={root / 'missing.jsonl'}"], "missing.jsonl' does not exist"),
        "batch shape": ([str(run), "distill.global_batch_size=6", "distill.per_device_batch_size=4"], "is not a multiple of"),
        "generated 0 texts": ([str(run), "distill.data=generated", "distill.generated.num_texts=0"],
                              "'distill.generated.num_texts' got 0; accepted: an integer >= 1"),
        "generated at temperature 0": ([str(run), "distill.data=generated", "distill.generated.temperature=0"],
                                       "'distill.generated.temperature' got 0.0; accepted: a number > 0"),
        "generated at a nan temperature": ([str(run), "distill.data=generated", "distill.generated.temperature=nan"],
                                           "'distill.generated.temperature' got nan"),
        # a word distill.data does not know is read as a data source's path, as distill.data=PATH is
        "data an unknown word": ([str(run), "distill.data=generate"], "cannot load dataset 'generate'"),
    }


def test_bad_values_give_one_line_and_exit_2(run, tmp_path, capsys):
    for name, (arguments, expected) in bad_cases(run, tmp_path).items():
        output = tmp_path / "out" / name.replace(" ", "_")
        assert main(["distill", *arguments, "--output-dir", str(output)]) == 2, name
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("peel distill: error: ") and expected in lines[0], (name, lines)
        assert not output.exists(), name
    # And as a shell sees it.
    result = subprocess.run([sys.executable, "-m", "peel", "distill", str(run), "distill.alpha=2"],
                            capture_output=True, text=True, env=worker_environment())
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_peel_distill_writes_a_card_that_names_the_student_and_its_teacher(run, tmp_path):
    output = tmp_path / "carded"
    assert main(["distill", str(run), "--output-dir", str(output), "distill.steps=2", "distill.alpha=0.5",
                 "distill.per_device_batch_size=4", "distill.global_batch_size=8"]) == 0
    card = (output / "model" / "README.md").read_text()
    assert "unlearned by peel, then distilled" in card and "tags:\n- peel\n- unlearning\n- distillation" in card
    assert "This folder holds a student distilled from an unlearned model (`peel distill`)" in card
    assert f"| teacher (the unlearned model) | {run.name} |" in card
    assert "| initial student | (1 - 0.5) x the teacher + 0.5 x a fresh initialisation |" in card
    assert "| distillation | 2 steps of KL(teacher || student)" in card
    assert "| forget loss |" in card  # the teacher's unlearning, below the distillation rows
