"""Losses from the final hidden states a chunk of positions at a time, against whole logits.

For every forget loss (with padding and a keyword mask) and the logit retain losses, the chunked
computation must give the unchunked per-example values and the same gradients for every
trainable parameter, and never make logits for more positions than one chunk at a time.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, CohereConfig, Gemma2Config

from peel.unlearning.chunked import chunk_width
from peel.config import LoraOptions, UnlearnConfig
from peel.models import load_model_and_tokenizer
from peel.anatomy import final_hidden_states, find_anatomy, logits
from peel.unlearning.objectives import RETAIN_OBJECTIVES, Batch, forget_backward
from peel.unlearning.weights import FullWeights, LoraWeights

from test_probe import padded_batch

FORGET_CASES = {
    "random_ce": {},
    "max_entropy_kl": {},
    "top_k_entropy": {"top_k": 7},
    "npo per token": {"forget_loss": "npo", "npo_per_token": True, "npo_beta": 2.0},
    "npo per sequence": {"forget_loss": "npo", "npo_per_token": False, "npo_beta": 2.0},
}


def lora_weights(path, attn_implementation: str = "eager") -> LoraWeights:
    model, _ = load_model_and_tokenizer(str(path), attn_implementation=attn_implementation)
    assert model.config._attn_implementation == attn_implementation
    torch.manual_seed(0)
    weights = LoraWeights(model, LoraOptions(rank=4, alpha=8))
    for name, parameter in weights.model.named_parameters():
        if "lora_B" in name:  # adapters that change the model, so the probe differs from the original
            parameter.data.normal_(std=0.3)
    return weights


def full_weights(path, attn_implementation: str = "eager") -> FullWeights:
    model, _ = load_model_and_tokenizer(str(path), attn_implementation=attn_implementation)
    assert model.config._attn_implementation == attn_implementation
    weights = FullWeights(model)
    weights.begin_phase(1)
    with torch.no_grad():
        torch.manual_seed(0)
        for parameter in weights.trainable_parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return weights


def forget_batch(vocab_size: int) -> Batch:
    input_ids, attention_mask = padded_batch(vocab_size)
    generator = torch.Generator().manual_seed(3)
    keywords = (torch.rand(input_ids.shape, generator=generator) < 0.6).long()
    keywords[0, 0] = 1
    targets = torch.randint(vocab_size, input_ids.shape, generator=generator)
    return Batch(input_ids, attention_mask, random_targets=targets, loss_mask=keywords)


def losses_and_gradients(weights, run) -> tuple[torch.Tensor, list[torch.Tensor]]:
    parameters = weights.trainable_parameters()
    for parameter in parameters:
        parameter.grad = None
    per_example = run()
    gradients = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in parameters]
    return per_example, gradients


def assert_same(whole, chunked):
    (whole_losses, whole_gradients), (chunked_losses, chunked_gradients) = whole, chunked
    torch.testing.assert_close(chunked_losses, whole_losses, rtol=1e-5, atol=1e-6)
    assert any(gradient.abs().sum() > 0 for gradient in whole_gradients)
    for whole_gradient, chunked_gradient in zip(whole_gradients, chunked_gradients):
        # Sums taken in another order round differently: float32 error scales with the gradient's
        # largest entries, so a near-zero entry is held to a share of those, not to 1e-6 alone.
        scale = whole_gradient.abs().max().item()
        torch.testing.assert_close(chunked_gradient, whole_gradient, rtol=1e-4, atol=max(1e-6, 1e-5 * scale))


class HeadCalls:
    """Records the number of positions each call of the unembedding saw."""

    def __init__(self, anatomy):
        self.positions = []
        self.handle = anatomy.unembedding.register_forward_hook(
            lambda module, args, output: self.positions.append(args[0].shape[1]))


@pytest.mark.parametrize("case", FORGET_CASES)
@pytest.mark.parametrize("architecture", ["gpt_neox", "llama"])
@pytest.mark.parametrize("chunk_tokens", [5, 8])  # widths 1 and 2 on 3 x 9 tokens: single positions, and a short last chunk
def test_chunked_forget_losses_equal_whole_logits(tiny_models, architecture, case, chunk_tokens):
    weights = lora_weights(tiny_models[architecture])
    unlearn = UnlearnConfig(**{"forget_loss": case, **FORGET_CASES[case]})
    batch = forget_batch(weights.model.config.vocab_size)
    whole = losses_and_gradients(weights, lambda: forget_backward(weights, batch, 1, unlearn, 1.0, chunk_tokens=0))
    calls = HeadCalls(weights.anatomy)
    chunked = losses_and_gradients(weights, lambda: forget_backward(weights, batch, 1, unlearn, 1.0, chunk_tokens=chunk_tokens))
    assert_same(whole, chunked)
    width = chunk_width(*batch.input_ids.shape, chunk_tokens)
    assert calls.positions and max(calls.positions) == width  # logits never made for more than a chunk


@pytest.mark.parametrize("retain_loss", ["kl", "nll"])
@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_chunked_retain_losses_equal_whole_logits(tiny_models, retain_loss, adapter):
    path = tiny_models["qwen2"]
    weights = lora_weights(path) if adapter == "lora" else full_weights(path)
    batch = forget_batch(weights.model.config.vocab_size)
    objective = RETAIN_OBJECTIVES[retain_loss]
    whole = losses_and_gradients(weights, lambda: objective(weights, batch, [3], 1.0, chunk_tokens=0))
    calls = HeadCalls(weights.anatomy)
    chunked = losses_and_gradients(weights, lambda: objective(weights, batch, [3], 1.0, chunk_tokens=7))
    assert_same(whole, chunked)
    assert max(calls.positions) == 2
    assert whole[0].abs().sum() > 0  # the current model differs from the original


def test_chunks_only_where_they_save_memory():
    assert chunk_width(4, 512, 0) is None  # off
    assert chunk_width(4, 256, 1024) is None  # one chunk would be the whole logits
    assert chunk_width(4, 512, 1024) == 256
    assert chunk_width(2048, 8, 1024) == 1  # more examples than the chunk's tokens: one position at a time


@pytest.mark.parametrize("architecture", ["gpt_neox", "llama", "qwen2"])
def test_output_head_makes_the_models_logits(tiny_models, architecture):
    model, _ = load_model_and_tokenizer(str(tiny_models[architecture]))
    anatomy = find_anatomy(model)
    input_ids, attention_mask = padded_batch(model.config.vocab_size)
    with torch.no_grad():
        made = anatomy.output_head(final_hidden_states(anatomy, input_ids, attention_mask))
        assert torch.equal(made, logits(model, input_ids, attention_mask))


def test_soft_capped_head_is_made_exactly_and_unknown_heads_keep_whole_logits():
    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, head_dim=8, max_position_embeddings=64)
    torch.manual_seed(0)
    gemma = AutoModelForCausalLM.from_config(Gemma2Config(**common, final_logit_softcapping=0.5), attn_implementation="eager")
    anatomy = find_anatomy(gemma)
    input_ids, attention_mask = padded_batch(64)
    with torch.no_grad():
        expected = logits(gemma, input_ids, attention_mask)
        assert expected.abs().max() <= 0.5  # the cap binds at this size
        torch.testing.assert_close(anatomy.output_head(final_hidden_states(anatomy, input_ids, attention_mask)), expected)
    # Cohere scales its logits (logit_scale): peel does not write that out, so it keeps the plain path.
    cohere = AutoModelForCausalLM.from_config(CohereConfig(**{k: v for k, v in common.items() if k != "head_dim"}))
    assert find_anatomy(cohere).output_head is None
