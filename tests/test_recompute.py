"""Selective activation checkpointing (`train.gradient_checkpointing: selective`): the same losses
and gradients as keeping every activation, and a policy that keeps exactly the expensive outputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.checkpoint import CheckpointPolicy

from peel.unlearning import recompute

from test_chunked import assert_same, forget_batch, full_weights, lora_weights, losses_and_gradients
from test_right_padding import OBJECTIVES


@pytest.fixture(autouse=True)
def tiny_short_contraction(monkeypatch):
    """The tiny models' products contract over 32 or 64 values and their adapters' over 4: with
    this bound the first are kept and the second remade, as at real sizes (hidden 768+, rank 8-128)."""
    monkeypatch.setattr(recompute, "SHORT_CONTRACTION", 8)


def changed_weights(path, adapter: str, selective: bool):
    """Weights whose current model differs from the original (test_chunked's), with SDPA."""
    weights = (lora_weights if adapter == "lora" else full_weights)(path, "sdpa")
    if selective:
        recompute.apply(weights.model, weights.anatomy, "selective")
    return weights


@pytest.mark.parametrize("adapter", ["lora", "full"])
@pytest.mark.parametrize("architecture", ["gpt_neox", "llama", "qwen2"])
def test_selective_checkpointing_gives_the_same_losses_and_gradients(tiny_models, architecture, adapter):
    plain = changed_weights(tiny_models[architecture], adapter, selective=False)
    selective = changed_weights(tiny_models[architecture], adapter, selective=True)
    batch = dataclasses.replace(forget_batch(plain.model.config.vocab_size), right_padded=True)
    for name, objective in OBJECTIVES.items():
        expected = losses_and_gradients(plain, lambda: objective(plain, batch))
        assert expected[0].abs().sum() > 0, name
        assert_same(expected, losses_and_gradients(selective, lambda: objective(selective, batch)))


class Decisions:
    """Records the policy's decision for each operation of a layer's forward."""

    def __init__(self):
        self.made: list[tuple[str, CheckpointPolicy]] = []
        self.policy = recompute.keep_products

    def __call__(self, context, operation, *args, **kwargs):
        decision = self.policy(context, operation, *args, **kwargs)
        if not context.is_recompute:
            self.made.append((operation.__name__, decision))
        return decision


def test_the_policy_keeps_products_and_attention_and_remakes_the_rest(tiny_models, monkeypatch):
    decisions = Decisions()
    monkeypatch.setattr(recompute, "keep_products", decisions)
    weights = changed_weights(tiny_models["gpt_neox"], "lora", selective=True)
    batch = dataclasses.replace(forget_batch(weights.model.config.vocab_size), right_padded=True)
    OBJECTIVES["retain l2"](weights, batch)
    kept = {name.split(".")[0] for name, decision in decisions.made if decision == CheckpointPolicy.MUST_SAVE}
    remade = {name.split(".")[0] for name, decision in decisions.made if decision == CheckpointPolicy.PREFER_RECOMPUTE}
    assert "_scaled_dot_product_flash_attention_for_cpu" in kept
    assert kept & {"mm", "addmm"}  # the base weights' products
    assert {"native_layer_norm", "gelu"} <= remade
    # The adapters' second product contracts over the rank (4): cheap to remake, as large as the base's output.
    ranks = [decision for name, decision in decisions.made if name.startswith("mm") or name.startswith("addmm")]
    assert CheckpointPolicy.PREFER_RECOMPUTE in ranks and CheckpointPolicy.MUST_SAVE in ranks


def test_no_checkpoint_without_gradient(tiny_models, monkeypatch):
    decisions = Decisions()
    monkeypatch.setattr(recompute, "keep_products", decisions)
    weights = changed_weights(tiny_models["gpt_neox"], "lora", selective=True)
    batch = forget_batch(weights.model.config.vocab_size)
    with torch.no_grad():
        weights.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert decisions.made == []
