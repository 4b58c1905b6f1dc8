"""The step benchmark's quick preset on a tiny model: it runs, writes every key, and its two-copy
reference computes the same losses as peel (else its timings would compare different work)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "step_bench.py"
MODE_KEYS = {
    "peel_ms", "reference_ms", "floor_ms", "peel_peak_mb", "reference_peak_mb", "floor_peak_mb",
    "time_vs_reference", "time_vs_floor", "memory_vs_reference", "first_step_losses", "losses_agree",
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
