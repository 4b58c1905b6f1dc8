"""The attacks that are not fine-tuning: quantization and orthogonalization, on their own and in a grid.

Quantization at 16 bits and a zero direction leave the model exactly as it is; rounding stays on
its grid and within half a step; a direction planted in one layer's output is the one found
there; a grid of both kinds writes one-row curves into tamper.json and its worst case.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_tamper_grid import SMALL, world  # noqa: F401 (the fixture)

from peel.attacks import kinds
from peel.attacks.orthogonalize import directions, project_out
from peel.attacks.quantize import quantize_model, quantized
from peel.cli import main
from peel.data import collate
from peel.models import load_model_and_tokenizer
from peel.anatomy import find_anatomy


def loaded(folder):
    model, tokenizer = load_model_and_tokenizer(str(folder), dtype="float32", attn_implementation="eager")
    return model.eval(), tokenizer


def batch(tokenizer):
    texts = ["the virus spreads through bats", "the town of river trades salt and grain every autumn"]
    return collate(tokenizer(texts, add_special_tokens=False)["input_ids"], tokenizer.pad_token_id)


def test_quantize_at_16_bits_leaves_every_weight_as_it_is(world):
    model, _ = loaded(world["model"])
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert quantize_model(model, 16, 128) > 0
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


@pytest.mark.parametrize("bits, group_size", [(8, 0), (4, 16), (2, 5)])
def test_rounding_stays_on_each_groups_grid_within_half_a_step(bits, group_size):
    weight = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    weight[0, :5] = 0  # an all-zero group stays zero
    rounded = quantized(weight, bits, group_size)
    levels = 2 ** (bits - 1) - 1
    width = group_size or weight.shape[1]
    for start in range(0, weight.shape[1], width):
        group, result = weight[:, start : start + width], rounded[:, start : start + width]
        step = group.abs().amax(dim=1, keepdim=True) / levels
        assert ((result - group).abs() <= step / 2 + 1e-6).all()
        codes = torch.where(step > 0, result / torch.where(step > 0, step, 1), 0)
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= levels + 1e-4
    assert not torch.equal(rounded, weight) and torch.equal(rounded[0, :5], torch.zeros(5))


def test_a_zero_direction_leaves_the_model_as_it_is(world):
    model, tokenizer = loaded(world["model"])
    input_ids, attention_mask = batch(tokenizer)
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
        hidden = find_anatomy(model).layers[0].mlp.dense_4h_to_h.out_features
        project_out(model, {layer: torch.zeros(1, hidden) for layer in range(find_anatomy(model).num_layers)})
        assert torch.equal(model(input_ids=input_ids, attention_mask=attention_mask).logits, expected)


def test_the_direction_planted_in_one_layer_is_the_one_found_there_and_projected_out(world):
    original, tokenizer = loaded(world["model"])
    model = copy.deepcopy(original)
    layer = 1
    shift = torch.randn(original.config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # every token's output at `layer` moves by `shift`
        find_anatomy(model).layers[layer].mlp.dense_4h_to_h.bias += shift
    examples = tokenizer(["the virus spreads through bats and mice", "the town of river trades wool"],
                         add_special_tokens=False)["input_ids"]
    found = directions(model, original, examples, tokenizer.pad_token_id, components=1)
    assert set(found) == set(range(find_anatomy(model).num_layers)) and found[layer].shape == (1, shift.numel())
    cosine = torch.nn.functional.cosine_similarity(found[layer][0], shift, dim=0).abs()
    assert cosine > 0.999
    outputs = {}
    project_out(model, {layer: found[layer]})
    with torch.no_grad(), find_anatomy(model).layers[layer].register_forward_hook(
            lambda module, args, output: outputs.setdefault("hidden", output[0] if isinstance(output, tuple) else output)):
        input_ids, attention_mask = batch(tokenizer)
        model(input_ids=input_ids, attention_mask=attention_mask)
    # The hook registered after the projection sees its result: nothing left along the direction.
    assert (outputs["hidden"] @ found[layer][0]).abs().max() < 1e-4


def test_directions_are_found_only_at_the_layers_asked_for(world):
    original, tokenizer = loaded(world["model"])
    model = copy.deepcopy(original)
    with torch.no_grad():  # every layer's output differs from the original's from layer 0 on
        find_anatomy(model).layers[0].mlp.dense_4h_to_h.bias += 1.0
    examples = tokenizer(["the virus spreads through bats and mice"], add_special_tokens=False)["input_ids"]
    found = directions(model, original, examples, tokenizer.pad_token_id, components=1, layers=[1])
    assert list(found) == [1] and found[1].abs().sum() > 0


def test_a_grid_of_quantize_and_orthogonalize_attacks_writes_one_row_curves_and_their_worst_case(world):
    grid = "tamper.grid=[{kind: quantize, bits: 4}, {kind: quantize, bits: 16}, {kind: orthogonalize, components: 2}]"
    command = ["tamper", world["model"], "--output-dir", str(world["out"]), "--baseline", world["model"],
               *SMALL, world["data"], "tamper.few_shot=[0]", grid]
    assert main(command) == 0
    record = json.loads((world["out"] / "tamper.json").read_text())
    attacks = {attack["name"]: attack for attack in record["attacks"]}
    assert list(attacks) == ["few_shot=0", "kind=quantize,bits=4", "kind=quantize,bits=16", "kind=orthogonalize,components=2"]
    assert [attack["kind"] for attack in attacks.values()] == ["few_shot", "quantize", "quantize", "orthogonalize"]
    assert attacks["kind=quantize,bits=4"]["settings"] == {
        "bits": 4, "group_size": 128, "scheme": "rtn_absmax", "tasks": ["testbed_forget", "testbed_retain"], "dtype": "float32"}
    assert all(len(attack["curve"]) == 1 and attack["curve"][0]["step"] == 0 for attack in attacks.values())
    # 16 bits is the model as it is: the same row as the untouched model's.
    assert attacks["kind=quantize,bits=16"]["curve"][0] == attacks["few_shot=0"]["curve"][0]
    # Orthogonalizing the model against itself removes nothing (its differences are all zero).
    assert attacks["kind=orthogonalize,components=2"]["curve"][0] == attacks["few_shot=0"]["curve"][0]
    worst = record["worst_case"][0]["testbed_forget"]
    assert worst == max(attack["curve"][0]["testbed_forget"] for attack in attacks.values())
    assert record["summary"]["testbed_forget"]["step0"] == attacks["few_shot=0"]["curve"][0]["testbed_forget"]


def test_an_orthogonalize_attack_without_an_original_model_is_refused_before_anything_loads(world, capsys):
    command = ["tamper", world["model"], "--output-dir", str(world["out"]), *SMALL, world["data"],
               "tamper.grid=[{kind: orthogonalize}]"]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert "needs the original model" in error and "--baseline" in error and error.count("\n") == 1
    assert not world["out"].exists()


def test_orthogonalize_layers_outside_the_model_are_refused_before_anything_loads(world, capsys):
    command = ["tamper", world["model"], "--output-dir", str(world["out"]), "--baseline", world["model"], *SMALL,
               world["data"], "tamper.grid=[{kind: orthogonalize, layers: [1, 9]}]"]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert "attack 'kind=orthogonalize,layers=1-9' layers contains layer 9; the model has layers 0..1" in error
    assert error.count("\n") == 1 and not world["out"].exists()


@pytest.mark.parametrize("grid, message", [
    ("[{kind: pruning}]", "'tamper.grid[0].kind' got 'pruning'; accepted: " + ", ".join(kinds.KINDS)),
    ("[{kind: quantize, bits: 5}]", "'tamper.grid[0].bits' got 5; accepted: 2, 3, 4, 8, 16"),
    ("[{kind: quantize, bits: 4, lr: 1e-3}]", "unknown config key 'tamper.grid[0].lr' for kind quantize"),
    ("[{kind: quantize, group_size: -1}]", "'tamper.grid[0].group_size' got -1"),
    ("[{kind: orthogonalize, components: 0}]", "'tamper.grid[0].components' got 0"),
    ("[{kind: orthogonalize, layers: [-1]}]", "'tamper.grid[0].layers[0]' got -1"),
])
def test_bad_attack_kinds_and_options_are_one_line_errors(world, grid, message, capsys):
    assert main(["tamper", world["model"], "--output-dir", str(world["out"]), *SMALL, f"tamper.grid={grid}"]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error
    assert not world["out"].exists()


def test_command_line_grids_set_kinds_and_their_options():
    from peel.attacks.plan import grid_attacks
    from peel.config import load_config

    attacks = grid_attacks(load_config(None, ["tamper.few_shot=[]"]), ["tamper.kind=quantize", "tamper.bits=4,8"])
    assert [(attack.name, attack.kind, attack.options.bits) for attack in attacks] == [
        ("kind=quantize,bits=4", "quantize", 4), ("kind=quantize,bits=8", "quantize", 8)]
