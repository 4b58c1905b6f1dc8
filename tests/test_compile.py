"""`train.compile`: the decoder layers compiled (regional compilation) against the eager step.

The same run, eager and compiled, on CPU with torch's inductor: every logged loss and norm and
the final weights agree to float rounding (compiled kernels sum in another order), with chunked
losses on as well, and selective activation checkpointing inside the compiled layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peel.config import load_config
from peel.unlearning.engine import unlearn

SETTINGS = ["data.num_examples=16", "data.max_length=16", "train.global_batch_size=8", "train.per_device_batch_size=4",
            "train.dtype=float32", "train.lr=1e-3", "unlearn.layers=[3, 1]", "unlearn.forget_loss=max_entropy_kl",
            "train.loss_chunk_tokens=16"]


# Full fine-tuning also with selective activation checkpointing: the checkpoint inside the compiled layer.
@pytest.mark.parametrize("adapter, checkpointing", [("lora", "false"), ("full", "selective")])
def test_compiled_layers_give_the_eager_run(tiny_models, corpora, tmp_path, adapter, checkpointing):
    import torch._dynamo

    common = [f"model.name_or_path={tiny_models['gpt_neox']}", f"data.forget.path={corpora['forget']}",
              f"data.retain.path={corpora['retain']}", *SETTINGS, f"unlearn.adapter={adapter}",
              f"train.gradient_checkpointing={checkpointing}"]
    eager = unlearn(load_config(None, [*common, f"output_dir={tmp_path / 'eager'}"]))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = unlearn(load_config(None, [*common, "train.compile=true", f"output_dir={tmp_path / 'compiled'}"]))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the layers really ran compiled

    records = [[json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()] for folder in (eager, compiled)]
    assert len(records[0]) == len(records[1]) == 4
    for a, b in zip(*records):
        for key in ("forget_loss", "retain_loss", "forget_grad_norm", "retain_grad_norm", "grad_norm"):
            # Measured: within 1.5e-5 relative (Adam's division by sqrt(v) magnifies rounding in tiny gradients).
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), key
    weights = [load_file(Path(folder) / "model" / "model.safetensors") for folder in (eager, compiled)]
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-4, atol=1e-5)  # measured: 4e-6 apart
