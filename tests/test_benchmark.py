"""The step benchmark's quick preset on a tiny model: it runs, writes every key, and its two-copy
reference computes the same losses as peel (else its timings would compare different work); its
presets and its table of device peaks."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "step_bench.py"
MODE_KEYS = {
    "peel_ms", "reference_ms", "floor_ms", "peel_peak_mb", "reference_peak_mb", "floor_peak_mb",
    "time_vs_reference", "time_vs_floor", "memory_vs_reference", "first_step_losses", "losses_agree", "rates", "gflops",
}


def load_benchmark():
    spec = importlib.util.spec_from_file_location("step_bench", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_bench"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_quick_preset_writes_results_and_reference_matches_peel(tmp_path):
    output = tmp_path / "quick.json"
    arguments = ["--quick", "--model", "tiny", "--steps", "2", "--sweep-layers", "0,3", "--sweep-steps", "1",
                 "--memory-jobs", "3", "--output", str(output)]
    load_benchmark().main(arguments)

    result = json.loads(output.read_text())
    assert {"date", "machine", "versions", "settings", "modes", "full_original_weights", "target_layer_sweep"} <= result.keys()
    for mode in ("lora", "full"):
        row = result["modes"][mode]
        assert MODE_KEYS <= row.keys(), MODE_KEYS - row.keys()
        assert row["peel_peak_mb"] > 0 and row["reference_ms"] > 0
        peel_losses, reference_losses = row["first_step_losses"]["peel"], row["first_step_losses"]["reference"]
        # Step 1: the model is the original, so the retain loss is 0 and the probe is the whole
        # original model. Step 2 follows one identical update, so it checks the gradients too.
        assert peel_losses[0][1] == 0.0
        assert peel_losses[1][1] > 0.0
        for peel_step, reference_step in zip(peel_losses, reference_losses):
            for peel_value, reference_value in zip(peel_step, reference_step):
                assert abs(peel_value - reference_value) <= 1e-4 * max(1.0, abs(reference_value))
        assert row["losses_agree"]
        rates = row["rates"]
        for name in ("peel", "reference", "floor"):  # counted FLOPs over the median step time
            assert rates["tflops_per_s"][name] == pytest.approx(row["gflops"][name] / row[f"{name}_ms"], rel=0.02)
        assert rates["peak_tflops_per_s"] is None and rates["share_of_peak"] is None  # no peak for a CPU
    originals = result["full_original_weights"]
    assert originals["held_mb"] <= originals["bound_mb"]
    assert [row["layer"] for row in result["target_layer_sweep"]["rows"]] == [0, 3]


def test_forget_loss_benchmark_reports_every_variant(tmp_path):
    load_benchmark()  # the forget-loss benchmark imports the step benchmark's pieces
    spec = importlib.util.spec_from_file_location("forget_loss_bench", BENCHMARK.parent / "forget_loss_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["forget_loss_bench"] = module
    spec.loader.exec_module(module)
    output = tmp_path / "forget.json"
    module.main(["--quick", "--model", "tiny", "--steps", "1", "--modes", "lora", "--output", str(output)])

    row = json.loads(output.read_text())["modes"]["lora"]
    assert set(row["step_ms"]) == set(row["peak_mb"]) == {"max_entropy_kl", "top_k_entropy", "npo", "keyword_mask"}
    assert row["time_vs_max_entropy_kl"]["max_entropy_kl"] == 1.0 and row["extra_peak_mb"]["max_entropy_kl"] == 0.0
    assert all(value > 0 for value in row["step_ms"].values())


def test_adversary_benchmark_reports_every_adversary(tmp_path):
    load_benchmark()
    spec = importlib.util.spec_from_file_location("adversary_bench", BENCHMARK.parent / "adversary_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["adversary_bench"] = module
    spec.loader.exec_module(module)
    output = tmp_path / "adversary.json"
    module.main(["--quick", "--model", "tiny", "--steps", "1", "--modes", "lora", "--output", str(output)])

    row = json.loads(output.read_text())["modes"]["lora"]
    assert set(row["step_ms"]) == set(row["peak_mb"]) == {"none", "finetune", "latent", "sam"}
    assert row["time_vs_none"]["none"] == 1.0 and row["peak_vs_none"]["none"] == 1.0
    assert all(row["time_vs_none"][name] > 1 for name in ("finetune", "latent", "sam"))  # each runs extra passes


def test_attack_cost_benchmark_times_every_kind_and_counts_its_evaluations(tmp_path):
    spec = importlib.util.spec_from_file_location("attack_cost_bench", BENCHMARK.parent / "attack_cost_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "attack_cost.json"
    module.main(["--steps", "2", "--eval-every", "2", "--limit", "4", "--output", str(output)])

    rows = json.loads(output.read_text())["attacks"]
    assert {row["kind"] for row in rows.values()} == {"evaluation", "fine_tune", "soft_prompt", "latent", "prune", "prompt"}
    assert all(row["wall_s"] > 0 and row["cpu_s"] > 0 for row in rows.values())
    # steps 0 and 2 of each training attack; the prompt attack's untouched row and its prompted forget task
    assert [rows[name]["evaluations"] for name in ("kind=fine_tune", "kind=soft_prompt", "kind=latent")] == [2, 2, 2]
    assert (rows["kind=prompt,template=prefill"]["evaluations"], rows["kind=prompt,template=prefill"]["task_evaluations"]) == (2, 3)
    import peel.evaluation
    from peel.evaluation.harness import evaluate

    assert peel.evaluation.evaluate is evaluate  # the counting is undone


def test_long_preset_is_the_issues_shape():
    settings, _ = load_benchmark().parse_settings(["--preset", "long", "--threads", "2"])
    assert (settings.model, settings.batch_size, settings.seq_len) == ("pythia-160m", 2, 2048)
    assert (settings.forget_loss, settings.retain_layers, settings.modes) == ("max_entropy_kl", "all", ["lora"])
    assert settings.memory_jobs == 1 and settings.threads == 2 and settings.loss_chunk_tokens == 1024


@pytest.mark.parametrize("device_name, dtype, peak", [
    ("NVIDIA H200", "bfloat16", 989.5),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.5),
    ("NVIDIA H100 PCIe", "bfloat16", 756.5),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
    ("NVIDIA A100-SXM4-80GB", "float32", None),  # the table holds bf16 tensor-core peaks only
    ("Some Future GPU", "bfloat16", None),
])
def test_dense_peak_of_known_devices(monkeypatch, device_name, dtype, peak):
    load_benchmark()
    from stepbench import hardware

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: device_name)
    assert hardware.dense_peak_tflops("cuda", dtype) == peak
    assert hardware.dense_peak_tflops("cpu", "bfloat16") is None
    rates = hardware.achieved({"peel": 100.0}, {"peel": 0.5}, peak)  # 100 GFLOP in 0.5 ms: 200 TFLOP/s
    assert rates["tflops_per_s"]["peel"] == 200.0
    assert rates["share_of_peak"] == (None if peak is None else {"peel": pytest.approx(200.0 / peak, rel=1e-3)})
