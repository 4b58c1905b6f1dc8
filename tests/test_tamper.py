"""The tampering attack on a tiny model: its schedule of evaluations, that it trains, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peel import testbed
from peel.cli import main
from peel.data import collate, tokenize
from peel.errors import PeelError
from peel.tamper import read_curve, tamper
from tiny_lm import TEXTS, save_tiny_model, tiny_model, tiny_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "evaluation"


def language_model_loss(model, tokenizer, examples) -> float:
    input_ids, attention_mask = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids.masked_fill(attention_mask == 0, -100)).loss.item()


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_tamper_evaluates_on_schedule_and_learns_the_text(adapter):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    examples = tokenize(TEXTS[:4], tokenizer, max_length=32)
    before = language_model_loss(model, tokenizer, examples)
    embedding = model.get_input_embeddings().weight.detach().clone()
    measured = []

    def measure(current):
        measured.append(current.training)
        return {"testbed_forget": 0.25 + 0.01 * len(measured)}

    history = tamper(model, tokenizer, examples, adapter=adapter, lr=1e-2, steps=7, per_device_batch_size=2,
                     eval_every=3, seed=0, measure=measure)

    assert [row["step"] for row in history] == [0, 3, 6, 7]
    assert history[1] == {"step": 3, "testbed_forget": 0.27}
    assert language_model_loss(model, tokenizer, examples) < before
    changed = not torch.equal(model.get_input_embeddings().weight, embedding)
    assert changed == (adapter == "full")  # LoRA trains adapters only


def test_tamper_rejects_too_few_examples():
    tokenizer = tiny_tokenizer()
    with pytest.raises(PeelError, match="at least 4 examples"):
        tamper(tiny_model(tokenizer), tokenizer, [[1, 2]], adapter="full", lr=1e-3, steps=1,
               per_device_batch_size=4, eval_every=1, seed=0, measure=lambda _: {})


def test_peel_tamper_writes_curve_and_plot_and_overlays_comparisons(tmp_path, monkeypatch):
    monkeypatch.setitem(testbed.MC_FILES, "testbed_forget", str(FIXTURES / "forget_mc.jsonl"))
    folder = save_tiny_model(tmp_path / "model")
    data = tmp_path / "tamper.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    filtered = tmp_path / "filtered"
    filtered.mkdir()
    (filtered / "tamper.json").write_text(json.dumps([{"step": 0, "testbed_forget": 0.2}, {"step": 4, "testbed_forget": 0.3}]))
    overrides = [
        f"tamper.data.path={data}", "tamper.tasks=[testbed_forget]", "tamper.steps=4", "tamper.eval_every=2",
        "tamper.num_examples=8", "tamper.per_device_batch_size=4", "tamper.max_length=32", "tamper.lr=1e-3",
        "train.dtype=float32", "eval.batch_size=8", "eval.max_length=64",
    ]
    output = tmp_path / "out"

    assert main(["tamper", folder, *overrides, "--output-dir", str(output), "--compare", str(filtered)]) == 0

    history = read_curve(output)
    assert [row["step"] for row in history] == [0, 2, 4]
    assert all(0 <= row["testbed_forget"] <= 1 for row in history)
    assert (output / "tamper.png").stat().st_size > 0


def test_malformed_tamper_json_is_a_clear_error(tmp_path):
    (tmp_path / "tamper.json").write_text('{"step": 0}')
    with pytest.raises(PeelError, match="must be a list"):
        read_curve(tmp_path)
