"""The probe and the reference passes against models spliced together by hand.

A splice is built from state dicts: the current model's weights for embeddings and layers <= L,
an untouched copy of the original for layers > L, final norm and unembedding. Its ordinary
forward must equal peel's probe (one forward pass under `original_from(L + 1)`).
"""

import copy

import pytest
import torch

from peel.config import LoraOptions
from peel.models import load_model_and_tokenizer
from peel.anatomy import causal_lm, find_anatomy, hidden_states, logits
from peel.unlearning.weights import FullWeights, LoraWeights

ARCHITECTURES = ["gpt_neox", "llama", "qwen2"]


def padded_batch(vocab_size: int):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, vocab_size, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # right padding
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 1
    return input_ids, attention_mask


def splice(current: torch.nn.Module, original: torch.nn.Module, layer: int) -> torch.nn.Module:
    """A model with `current`'s embeddings and layers 0..layer and `original`'s everything else."""
    spliced = copy.deepcopy(original)
    original_layers = find_anatomy(spliced).layers
    current_layers = find_anatomy(current).layers
    for index in range(layer + 1):
        original_layers[index].load_state_dict(current_layers[index].state_dict())
    return spliced


def real_token_logits(values, attention_mask):
    return values[attention_mask.bool()]


def load(path, attention):
    model, _ = load_model_and_tokenizer(str(path), attn_implementation=attention)
    return model.eval()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_lora_probe_equals_manual_splice(tiny_models, architecture, attention):
    original = load(tiny_models[architecture], attention)
    weights = LoraWeights(load(tiny_models[architecture], attention), LoraOptions(rank=4, alpha=8))
    torch.manual_seed(0)
    for name, parameter in weights.model.named_parameters():
        if "lora_B" in name:  # make every adapter do something
            parameter.data.normal_(std=0.2)
    current = copy.deepcopy(weights.model).merge_and_unload()
    input_ids, attention_mask = padded_batch(original.config.vocab_size)
    for layer in range(find_anatomy(original).num_layers):
        with torch.no_grad(), weights.original_from(layer + 1):
            probe = logits(weights.model, input_ids, attention_mask)
        expected = logits(splice(current, original, layer), input_ids, attention_mask)
        torch.testing.assert_close(real_token_logits(probe, attention_mask), real_token_logits(expected, attention_mask),
                                   rtol=1e-4, atol=1e-5)
    assert not torch.allclose(probe, logits(original, input_ids, attention_mask))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_adapters_off_equals_base_model(tiny_models, architecture):
    original = load(tiny_models[architecture], "eager")
    weights = LoraWeights(load(tiny_models[architecture], "eager"), LoraOptions(rank=4, alpha=8))
    for name, parameter in weights.model.named_parameters():
        if "lora_B" in name:
            parameter.data.fill_(0.3)
    input_ids, attention_mask = padded_batch(original.config.vocab_size)
    with torch.no_grad(), weights.original_from(0):
        reference = logits(weights.model, input_ids, attention_mask)
    assert torch.equal(reference, logits(original, input_ids, attention_mask))
    with torch.no_grad():
        assert not torch.allclose(logits(weights.model, input_ids, attention_mask), reference)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_full_probe_uses_originals_of_earlier_targets(tiny_models, architecture):
    original = load(tiny_models[architecture], "eager")
    weights = FullWeights(load(tiny_models[architecture], "eager"))
    input_ids, attention_mask = padded_batch(original.config.vocab_size)
    for layer in (3, 1):  # two phases, back to front; "training" perturbs the target layer
        weights.begin_phase(layer)
        assert {id(p) for p in weights.trainable_parameters()} == {id(p) for p in find_anatomy(weights.model).layers[layer].parameters()}
        assert all(p.requires_grad == (id(p) in {id(q) for q in weights.trainable_parameters()}) for p in weights.model.parameters())
        with torch.no_grad():
            for parameter in weights.trainable_parameters():
                parameter.add_(torch.randn_like(parameter) * 0.1)
        with torch.no_grad(), weights.original_from(layer + 1):
            probe = logits(weights.model, input_ids, attention_mask)
        expected = logits(splice(weights.model, original, layer), input_ids, attention_mask)
        torch.testing.assert_close(real_token_logits(probe, attention_mask), real_token_logits(expected, attention_mask))
    with torch.no_grad(), weights.original_from(0):
        torch.testing.assert_close(logits(weights.model, input_ids, attention_mask), logits(original, input_ids, attention_mask))
    # Only the targets were copied: originals of 2 of 4 layers, not a second model.
    assert sorted(weights.originals) == [1, 3]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_hidden_states_stop_at_the_deepest_needed_layer(tiny_models, architecture):
    model = load(tiny_models[architecture], "eager")
    anatomy = find_anatomy(model)
    calls = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in enumerate(anatomy.layers)]
    input_ids, attention_mask = padded_batch(model.config.vocab_size)
    with torch.no_grad():
        states = hidden_states(anatomy, input_ids, attention_mask, [0, 1])
        assert calls == [0, 1]  # layers 2 and 3 never ran
        full = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
    for hook in hooks:
        hook.remove()
    assert len(anatomy.layers) == 4  # the layer list is restored
    torch.testing.assert_close(states[0], full[1])
    torch.testing.assert_close(states[1], full[2])


def test_anatomy_of_a_peft_model_is_the_inner_models(tiny_models):
    weights = LoraWeights(load(tiny_models["llama"], "eager"), LoraOptions())
    assert find_anatomy(weights.model).layers is causal_lm(weights.model).model.layers
