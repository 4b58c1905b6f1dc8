"""torchrun with 2 processes (gloo, CPU) against 1 process with the same global batch.

2 processes x per-device batch 4 must give the same per-step losses and final weights as
1 process x batch 8: DDP for LoRA, FSDP2 for full fine-tuning. Both sides accumulate two
micro-batches per step, so the gradient sync of DDP / FSDP2 is off and on within a step, and
the early-exit retain pass (retain_layers: target) leaves later layers unused. The full
fine-tuning run also evaluates after each phase and at the end, which under FSDP2 every process
must take part in.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peel.config import load_config
from peel.unlearning.engine import unlearn

SETTINGS = [
    "data.num_examples=32",
    "data.max_length=16",
    "train.global_batch_size=16",
    "train.dtype=float32",
    "train.lr=1e-2",
    "unlearn.layers=[3, 1]",
    "unlearn.retain_layers=target",
    "unlearn.grad_filter=same_sign",
    "unlearn.forget_loss=random_ce",
]


def worker_environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def torchrun(processes: int, arguments: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(Path(__file__).parent / "peel_with_test_tasks.py"), "unlearn", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=worker_environment())


@pytest.fixture
def on_cpu(monkeypatch):
    """These are comparisons of CPU runs: hide any GPU from this process and the workers it starts."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def run_both_ways(model: Path, corpora: dict, tmp_path: Path, *extra: str):
    common = [f"model.name_or_path={model}", f"data.forget.path={corpora['forget']}",
              f"data.retain.path={corpora['retain']}", *SETTINGS, *extra]
    config_file = tmp_path / "config.yaml"
    config_file.write_text("notes: invariance\n")
    two = tmp_path / "two"
    result = torchrun(2, [str(config_file), *common, "train.per_device_batch_size=4", f"output_dir={two}"])
    assert result.returncode == 0, result.stderr[-3000:]
    one = unlearn(load_config(config_file, [*common, "train.per_device_batch_size=8", f"output_dir={tmp_path / 'one'}"]))
    return read_run(one), read_run(two)


def read_run(folder: Path):
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return records, load_file(folder / "model" / "model.safetensors")


def assert_same_run(one, two):
    (records_one, weights_one), (records_two, weights_two) = one, two
    assert [r["step"] for r in records_two] == [1, 2, 3, 4]
    for a, b in zip(records_one, records_two):
        for key in ("forget_loss", "retain_loss", "l2sp", "forget_grad_norm", "retain_grad_norm", "grad_norm"):
            # Measured: within 2e-7 relative (float32 sums in a different order).
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert weights_one.keys() == weights_two.keys()
    for name in weights_one:
        # Measured: at most 3e-6 apart; Adam's division by sqrt(v) magnifies rounding in tiny gradients.
        torch.testing.assert_close(weights_one[name], weights_two[name], rtol=1e-4, atol=1e-5)


def test_lora_with_ddp_matches_one_process(tiny_models, corpora, tmp_path, on_cpu):
    one, two = run_both_ways(tiny_models["gpt_neox"], corpora, tmp_path, "unlearn.adapter=lora")
    assert_same_run(one, two)
    assert (tmp_path / "two" / "adapter").is_dir()
    assert json.loads((tmp_path / "two" / "run.json").read_text())["status"] == "completed"


def test_lora_with_fsdp2_matches_one_process(tiny_models, corpora, tmp_path, on_cpu):
    """LoRA sharded (train.parallel=fsdp, as auto chooses for a model larger than one device), with
    L2-SP on the adapters' deltas, chunked losses and selective activation checkpointing inside the
    sharded layers: the run of one process, adapter included."""
    one, two = run_both_ways(tiny_models["gpt_neox"], corpora, tmp_path, "unlearn.adapter=lora", "train.parallel=fsdp",
                             "unlearn.l2sp_coef=0.1", "train.loss_chunk_tokens=16", "train.gradient_checkpointing=selective")
    assert_same_run(one, two)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["parallel"] == "fsdp"
    ranks = [json.loads((tmp_path / name / "run.json").read_text())["update_rank"] for name in ("one", "two")]
    assert ranks[1] == pytest.approx(ranks[0], rel=1e-4)  # the adapters' deltas gathered whole from their shards
    adapters = [load_file(tmp_path / name / "adapter" / "adapter_model.safetensors") for name in ("one", "two")]
    assert adapters[0].keys() == adapters[1].keys() and adapters[0]
    for name in adapters[0]:
        # Sharded and whole sums round in another order, and AdamW's normalised steps carry that
        # rounding into entries whose gradients are near zero: the error scales with the matrix's
        # largest entries, so the absolute tolerance is a share (0.1%) of those; a real mismatch
        # (a shard's update lost or doubled) is of the order of the entries themselves.
        scale = adapters[0][name].abs().max().item()
        torch.testing.assert_close(adapters[1][name], adapters[0][name], rtol=1e-4, atol=1e-3 * scale)


def test_full_fine_tuning_with_fsdp2_matches_one_process(tiny_models, corpora, tmp_path, on_cpu, monkeypatch):
    from peel import testbed

    fixtures = Path(__file__).parent / "fixtures" / "evaluation"
    monkeypatch.setitem(testbed.MC_FILES, "testbed_forget", str(fixtures / "forget_mc.jsonl"))
    monkeypatch.setitem(testbed.MC_FILES, "testbed_retain", str(fixtures / "retain_mc.jsonl"))
    evaluation = ["eval.tasks=[testbed_forget, testbed_retain]", "eval.every_phase=true", "eval.batch_size=4"]
    one, two = run_both_ways(tiny_models["llama"], corpora, tmp_path, "unlearn.adapter=full", "unlearn.l2sp_coef=0.1",
                             "track.to=[tensorboard]", *evaluation)
    assert_same_run(one, two)
    records_one, records_two = one[0], two[0]
    assert [r.get("eval") for r in records_two] == [r.get("eval") for r in records_one]
    assert records_two[1]["eval"].keys() == {"testbed_forget", "testbed_retain"}
    accuracy = [json.loads((tmp_path / name / "eval.json").read_text())["accuracy"] for name in ("one", "two")]
    assert accuracy[0] == accuracy[1]
    # Only the main process tracks: one event file, each step once, the accuracies it alone has.
    from tensorboard.backend.event_processing import event_accumulator

    assert len(list((tmp_path / "two" / "tensorboard").glob("events.*"))) == 1
    events = event_accumulator.EventAccumulator(str(tmp_path / "two" / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("forget_loss")] == [1, 2, 3, 4]
    assert [event.step for event in events.Scalars("eval/testbed_forget")] == [2, 4]
    # Per-layer freezing held under sharding: only the two target layers moved.
    original = load_file(tiny_models["llama"] / "model.safetensors")
    _, weights = two
    changed = {int(name.split(".")[2]) for name in weights if not torch.equal(weights[name], original[name])}
    assert changed == {1, 3}


def test_adapters_outside_the_decoder_are_refused_under_ddp(tiny_models, tmp_path):
    """DDP sits on the decoder; an adapter on the unembedding would train unreduced, so it is an error."""
    import torch.distributed as dist

    from peel import parallel
    from peel.config import LoraOptions
    from peel.errors import PeelError
    from peel.models import load_model_and_tokenizer
    from peel.unlearning.weights import LoraWeights

    model, _ = load_model_and_tokenizer(str(tiny_models["llama"]))
    weights = LoraWeights(model, LoraOptions(target_modules=["q_proj", "lm_head"]))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        with pytest.raises(PeelError, match="lm_head.lora_A.default.weight is outside it"):
            parallel.Replicated(weights)
    finally:
        dist.destroy_process_group()


def test_lora_under_fsdp2_resumes_after_preemption(tiny_models, corpora, tmp_path, on_cpu):
    """Stopped by the scheduler's signal under torchrun and run again: the uninterrupted run, exactly
    (that one equals one process's run, as the test above shows)."""
    from test_preemption import wait_for_steps
    from test_resume import metrics, settings, steps_written

    config_file = tmp_path / "config.yaml"
    config_file.write_text("notes: LoRA under FSDP2, resumed\n")
    common = ["train.checkpoint_every=0", "train.epochs_per_layer=2", "unlearn.adapter=lora", "train.per_device_batch_size=2",
              "train.parallel=fsdp"]
    arguments = settings(tiny_models["gpt_neox"], corpora, tmp_path / "stopped", *common)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "peel", "unlearn", str(config_file), *arguments]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_environment())
    wait_for_steps(process, tmp_path / "stopped", 2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=180)
    assert json.loads((tmp_path / "stopped" / "run.json").read_text())["status"] == "preempted", stderr[-3000:]
    assert 0 < steps_written(tmp_path / "stopped") < 48
    assert (tmp_path / "stopped" / "checkpoint.safetensors").exists()

    resumed = torchrun(2, [str(config_file), *arguments])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = torchrun(2, [str(config_file), *settings(tiny_models["gpt_neox"], corpora, tmp_path / "straight", *common)])
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert [r["step"] for r in metrics(tmp_path / "stopped")] == list(range(1, 49))
    assert metrics(tmp_path / "stopped") == metrics(tmp_path / "straight")
    after, expected = read_run(tmp_path / "stopped")[1], read_run(tmp_path / "straight")[1]
    assert all(torch.equal(after[name], expected[name]) for name in expected)


def test_engine_choice(tiny_models, monkeypatch):
    """auto: DDP for LoRA while the weights take at most half a device, FSDP2 beyond; full: FSDP2."""
    from peel import distributed, parallel
    from peel.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(tiny_models["llama"]))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "all_agree", lambda value: value)  # one process stands in for both
    cpu = torch.device("cpu")
    for memory, expected in ((2 * weight_bytes, "ddp"), (2 * weight_bytes - 1, "fsdp")):
        monkeypatch.setattr(parallel, "device_memory", lambda device, memory=memory: memory)
        assert parallel.choose("auto", "lora", model, cpu) == expected
    assert parallel.choose("ddp", "lora", model, cpu) == "ddp"
    assert parallel.choose("auto", "full", model, cpu) == "fsdp"
    monkeypatch.setattr(distributed, "world_size", lambda: 1)
    assert parallel.choose("fsdp", "lora", model, cpu) == "local"


@pytest.mark.parametrize("overrides, world_size, message", [
    (["train.parallel=ddp", "unlearn.adapter=full"], 1, "full fine-tuning is sharded with FSDP2"),
    (["train.optimizer=muon", "unlearn.adapter=full"], 2, "Muon's update needs whole matrices"),
    (["train.optimizer=muon", "train.parallel=fsdp"], 2, "Muon's update needs whole matrices"),
])
def test_engines_that_cannot_run_are_refused(overrides, world_size, message):
    from peel.errors import PeelError
    from peel.unlearning.planning import check_parallel

    with pytest.raises(PeelError, match=message):
        check_parallel(load_config(None, overrides), world_size)
    check_parallel(load_config(None, ["train.optimizer=muon"]), world_size)  # LoRA under DDP (or one process) takes Muon
