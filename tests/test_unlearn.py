"""Whole runs on tiny models: the run folder, what changes, determinism, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peel.config import load_config
from peel.unlearning.engine import unlearn
from peel.errors import PeelError, RunFailed


def overrides(model: Path, corpora: dict, output_dir: Path, *extra: str) -> list[str]:
    return [
        f"model.name_or_path={model}",
        f"data.forget.path={corpora['forget']}",
        f"data.retain.path={corpora['retain']}",
        "data.num_examples=16",
        "data.max_length=16",
        "train.global_batch_size=8",
        "train.per_device_batch_size=4",
        "train.dtype=float32",
        "train.lr=1e-2",
        "unlearn.layers=[3, 1]",
        f"output_dir={output_dir}",
        *extra,
    ]


def cli(tmp_path: Path, arguments: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    config = tmp_path / "config.yaml"
    config.write_text("notes: a test run\n")
    command = [sys.executable, "-m", "peel", "unlearn", str(config), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_cli_run_writes_the_run_folder(tiny_models, corpora, tmp_path):
    output_dir = tmp_path / "run"
    result = cli(tmp_path, overrides(tiny_models["gpt_neox"], corpora, output_dir))
    assert result.returncode == 0, result.stderr
    assert {"config.yaml", "metrics.jsonl", "run.json", "model", "adapter"} <= {p.name for p in output_dir.iterdir()}
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [(r["phase"], r["layer"]) for r in records] == [(0, 3), (0, 3), (1, 1), (1, 1)]
    for key in ("forget_loss", "retain_loss", "forget_coef", "retain_coef", "grad_norm", "lr"):
        assert all(isinstance(r[key], float) for r in records), key
    assert [r["retain_coef"] for r in records] == [0.0, 5.0, 0.0, 5.0]  # from_zero ramp over 2 steps
    run = json.loads((output_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["wall_seconds"] > 0 and "torch" in run["versions"]
    assert load_config(output_dir / "config.yaml").model.name_or_path == str(tiny_models["gpt_neox"])

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(output_dir / "model")
    original = AutoModelForCausalLM.from_pretrained(tiny_models["gpt_neox"])
    changed = [name for name, p in merged.state_dict().items() if not torch.equal(p, original.state_dict()[name])]
    assert changed and not any("lora" in name for name in merged.state_dict())


def test_full_fine_tuning_changes_only_target_layers(tiny_models, corpora, tmp_path):
    config = load_config(None, overrides(tiny_models["llama"], corpora, tmp_path / "run", "unlearn.adapter=full",
                                         "unlearn.retain_layers=target", "unlearn.l2sp_coef=0.1"))
    output_dir = unlearn(config)
    after, before = weights_of(output_dir / "model"), weights_of(tiny_models["llama"])
    changed_layers = {int(name.split(".")[2]) for name in after if not torch.equal(after[name], before[name])}
    assert changed_layers == {1, 3}
    assert all(name.startswith("model.layers.") for name in after if not torch.equal(after[name], before[name]))
    assert not (output_dir / "adapter").exists()


@pytest.mark.parametrize("retain_loss, grad_filter", [("kl", "same_sign"), ("nll", "asymmetric"), ("l2", "none")])
def test_runs_are_deterministic_given_the_seed(tiny_models, corpora, tmp_path, retain_loss, grad_filter):
    def run(name, seed):
        extra = [f"unlearn.retain_loss={retain_loss}", f"unlearn.grad_filter={grad_filter}",
                 "unlearn.forget_loss=random_ce", f"train.seed={seed}"]
        output_dir = unlearn(load_config(None, overrides(tiny_models["qwen2"], corpora, tmp_path / name, *extra)))
        return (output_dir / "metrics.jsonl").read_text(), weights_of(output_dir / "model")

    first_metrics, first = run("a", 0)
    second_metrics, second = run("b", 0)
    assert first_metrics == second_metrics
    assert all(torch.equal(first[name], second[name]) for name in first)
    third_metrics, _ = run("c", 1)
    assert third_metrics != first_metrics


def test_accumulation_does_not_change_the_step(tiny_models, corpora, tmp_path):
    """Batch 8 in one pass vs 2 x 4 accumulated: the same losses and weights."""
    def run(name, per_device):
        extra = [f"train.per_device_batch_size={per_device}", "unlearn.grad_filter=same_sign", "unlearn.forget_loss=random_ce"]
        output_dir = unlearn(load_config(None, overrides(tiny_models["gpt_neox"], corpora, tmp_path / name, *extra)))
        return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()], weights_of(output_dir / "model")

    whole, whole_weights = run("whole", 8)
    split, split_weights = run("split", 4)
    for a, b in zip(whole, split):
        assert a["forget_loss"] == pytest.approx(b["forget_loss"], rel=1e-5)
        assert a["retain_loss"] == pytest.approx(b["retain_loss"], rel=1e-4, abs=1e-7)
    for name in whole_weights:
        # Adam divides by sqrt(v): float rounding in near-zero gradients shows up around 1e-6.
        torch.testing.assert_close(whole_weights[name], split_weights[name], rtol=1e-3, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_run(tiny_models, corpora, tmp_path):
    def run(name, checkpointing):
        extra = [f"train.gradient_checkpointing={checkpointing}", "unlearn.retain_loss=kl"]
        output_dir = unlearn(load_config(None, overrides(tiny_models["llama"], corpora, tmp_path / name, *extra)))
        return weights_of(output_dir / "model")

    plain = run("plain", "false")
    for choice in ("true", "selective"):
        checkpointed = run(f"checkpointed-{choice}", choice)
        for name in plain:
            torch.testing.assert_close(plain[name], checkpointed[name], rtol=1e-4, atol=1e-6)


def test_non_finite_loss_fails_the_run(tiny_models, corpora, tmp_path):
    config = load_config(None, overrides(tiny_models["gpt_neox"], corpora, tmp_path / "run", "train.lr=1e30",
                                         "train.max_grad_norm=0", "unlearn.remove_coef=1e30"))
    with pytest.raises(RunFailed, match="non-finite loss"):
        unlearn(config)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
    assert not (tmp_path / "run" / "model").exists()


def test_unsupported_and_empty_inputs(tmp_path, tiny_models):
    from peel.data import load_texts
    from peel.config import DataSource

    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n')
    with pytest.raises(PeelError, match="holds no usable texts in column 'text': 1 rows, 1 empty or blank"):
        load_texts(DataSource(path=str(empty)), 4, 0)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "data.csv").write_text("text\nhello\n")
    with pytest.raises(PeelError, match="must be one kind of"):
        load_texts(DataSource(path=str(folder)), 1, 0)


def test_evaluation_baseline_is_cached_and_written_beside_the_result(tiny_models, corpora, tmp_path, monkeypatch):
    from peel import testbed
    from peel.evaluation import harness

    fixtures = Path(__file__).parent / "fixtures" / "evaluation"
    monkeypatch.setitem(testbed.MC_FILES, "testbed_forget", str(fixtures / "forget_mc.jsonl"))
    monkeypatch.setitem(testbed.MC_FILES, "testbed_retain", str(fixtures / "retain_mc.jsonl"))
    monkeypatch.setenv("PEEL_CACHE", str(tmp_path / "cache"))
    calls = []
    real_evaluate = harness.evaluate  # every evaluation runs through it
    monkeypatch.setattr(harness, "evaluate", lambda *args, **kwargs: calls.append(1) or real_evaluate(*args, **kwargs))
    extra = ["eval.tasks=[testbed_forget, testbed_retain]", "eval.every_phase=true", "eval.batch_size=4"]
    for name in ("first", "second"):
        unlearn(load_config(None, overrides(tiny_models["gpt_neox"], corpora, tmp_path / name, *extra)))
    # First run: baseline + 2 phases + result; second run: the baseline comes from the cache.
    assert len(calls) == 4 + 3
    record = json.loads((tmp_path / "second" / "eval.json").read_text())
    assert set(record["accuracy"]) == {"testbed_forget", "testbed_retain"}
    assert record["baseline"]["accuracy"].keys() == record["accuracy"].keys()
    phase_ends = [r for r in map(json.loads, (tmp_path / "second" / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
    assert [r["step"] for r in phase_ends] == [2, 4]


def test_adapters_are_added_without_the_deprecation_warning(tiny_models):
    """peft reads transformers' deprecated `is_gradient_checkpointing`, which warned once per run
    (unlearning) and once per LoRA attack: the adapters come without that FutureWarning."""
    import warnings

    from transformers import AutoModelForCausalLM

    from peel.attacks.fine_tune import train_lora_adapter
    from peel.config import LoraOptions
    from peel.unlearning.weights import LoraWeights

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        LoraWeights(AutoModelForCausalLM.from_pretrained(tiny_models["gpt_neox"]), LoraOptions(rank=2, alpha=2))
        train_lora_adapter(AutoModelForCausalLM.from_pretrained(tiny_models["llama"]), 2)


def test_dry_run_prints_the_method_settings_and_writes_nothing(tiny_models, corpora, tmp_path, capsys):
    from peel.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {{name_or_path: {tiny_models['gpt_neox']}}}\n"
        f"data: {{forget: {{path: {corpora['forget']}}}, retain: {{path: {corpora['retain']}}}, num_examples: 16, max_length: 16}}\n"
        "unlearn: {layers: [3, 1], forget_loss: npo, npo_beta: 0.2, retain_loss: kl, remove_coef: 30, grad_filter: same_sign}\n"
        "train: {global_batch_size: 8, per_device_batch_size: 4, lr: 5.0e-4, dtype: float32}\n"
        "tamper: {grid: [{lr: 1.0e-3, steps: 30}], few_shot: [0], eval_every: 10, tasks: [testbed_forget, testbed_retain]}\n"
        f"output_dir: {tmp_path / 'run'}\n"
    )
    capsys.readouterr()
    assert main(["unlearn", str(config), "unlearn.lora.rank=4", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for expected in [
        "forget loss: npo (beta 0.2, per token), coefficient 30 easing to 0.75x within each phase",
        "retain loss: kl, coefficient 5 (ramp from_zero)",
        "gradients: filter same_sign",
        "adapter: lora in every layer (rank 4, alpha 16, dropout 0, target modules all-linear)",
        "optimizer: adamw, lr 0.0005, weight decay 0, linear schedule per phase, warmup 0, clip 1",
        "batch: 4 per device x 1 process(es) x 2 accumulation = 8 per step; 1 epoch(s) per layer; dtype float32; "
        "gradient checkpointing off; parallel auto; seed 0",
        "plan: layers [3, 1] of 4; 16 forget and retain examples per phase; 2 optimizer steps per phase (4 in all), "
        "2 micro-batch(es) per step on each process",
        "  lr=0.001,steps=30: fine_tune (adapter full, optimizer adamw, lr 0.001, lr_scheduler constant, warmup_ratio 0, steps 30, "
        "per_device_batch_size 4, epochs 1, max_grad_norm 0, data.path Unlearning/WMDP-Bio-Remove-Dataset)",
        "  2 attacks: 1 fine-tuning (30 optimizer steps in all), 1 that train nothing; about 4 evaluations of "
        "testbed_forget, testbed_retain",
    ]:
        assert expected in lines, (expected, lines)
    assert not (tmp_path / "run").exists()
