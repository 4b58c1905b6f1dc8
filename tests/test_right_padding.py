"""A right-padded batch runs through the model without an attention mask (`Batch.model_mask`).

Under causal attention a real token never sees the padding after it, so every loss and gradient
must be the one computed with the mask, for every objective, architecture and attention
implementation; and the engine's batches must really be right-padded to be marked so.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from peel.unlearning.batches import Corpus
from peel.config import UnlearnConfig
from peel.unlearning.objectives import RETAIN_OBJECTIVES, forget_backward

from test_batches import corpus_examples
from test_chunked import FORGET_CASES, assert_same, forget_batch, lora_weights, losses_and_gradients


def objectives():
    for case, settings in FORGET_CASES.items():
        unlearn = UnlearnConfig(**{"forget_loss": case, **settings})
        yield f"forget {case}", lambda weights, batch, unlearn=unlearn: forget_backward(weights, batch, 1, unlearn, 1.0, chunk_tokens=8)
    for retain_loss, objective in RETAIN_OBJECTIVES.items():
        yield f"retain {retain_loss}", lambda weights, batch, objective=objective: objective(weights, batch, [0, 2], 1.0, chunk_tokens=8)


OBJECTIVES = dict(objectives())


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ["gpt_neox", "llama", "qwen2"])
def test_right_padded_batches_give_the_masked_losses_and_gradients(tiny_models, architecture, attn_implementation):
    weights = lora_weights(tiny_models[architecture], attn_implementation)
    masked = forget_batch(weights.model.config.vocab_size)
    assert masked.model_mask is masked.attention_mask
    unmasked = dataclasses.replace(masked, right_padded=True)
    assert unmasked.model_mask is None
    for name, objective in OBJECTIVES.items():
        with_mask = losses_and_gradients(weights, lambda: objective(weights, masked))
        without_mask = losses_and_gradients(weights, lambda: objective(weights, unmasked))
        assert with_mask[0].abs().sum() > 0, name
        assert_same(with_mask, without_mask)


def test_the_mask_matters_where_padding_comes_first(tiny_models):
    """The check above can fail: left padding is seen by the real tokens after it."""
    weights = lora_weights(tiny_models["llama"], "sdpa")
    batch = forget_batch(weights.model.config.vocab_size)
    left = dataclasses.replace(batch, input_ids=batch.input_ids.flip(1), attention_mask=batch.attention_mask.flip(1),
                               random_targets=batch.random_targets.flip(1), loss_mask=batch.loss_mask.flip(1))
    objective = OBJECTIVES["retain l2"]
    with_mask = objective(weights, left)
    without_mask = objective(weights, dataclasses.replace(left, right_padded=True))
    assert not torch.allclose(with_mask, without_mask)


def test_corpus_batches_are_right_padded_and_marked_so():
    examples = corpus_examples()
    corpus = Corpus(examples, pad_token_id=1, device="cpu")
    batch = corpus.batch(torch.arange(len(examples)))
    assert batch.right_padded and batch.model_mask is None
    lengths = torch.tensor([len(ids) for ids in examples])
    assert torch.equal(batch.attention_mask.sum(1), lengths)
    # Every row is ones then zeros: a mask that never rises again after it falls.
    assert not (batch.attention_mask[:, 1:] > batch.attention_mask[:, :-1]).any()
    assert (batch.attention_mask == 0).any()  # the check is not vacuous: some rows are padded
