"""Sharpness-aware unlearning (`unlearn.adversary: sam`) and representation collapse
(`unlearn.collapse_components`), as tests/test_adversary.py holds the other adversaries.

At zero strength each is plain peel bit for bit (sam runs its whole path: both passes, the move and
the restore, with a zero radius); at non-zero strength each changes the run. sam's ascent moves the
trained parameters along the normalised forget gradient and puts them back exactly; collapse onto
every direction leaves no forget gradient at all (the projection sits where all of it passes); 2
processes equal 1; a run stopped by SIGTERM and resumed equals one never stopped.
"""

from __future__ import annotations


import pytest
import torch

from peel.config import UnlearnConfig
from peel.parallel import Local
from peel.unlearning.adversaries import ADVERSARIES
from peel.unlearning.collapse import retain_components
from peel.unlearning.gradients import take_gradients
from peel.unlearning.phase import Phase

from test_adversary import metrics, model_weights, phase_two, plain_records, run
from test_distributed import assert_same_run, on_cpu, run_both_ways  # noqa: F401 (on_cpu is a fixture)

SAM = ["unlearn.adversary=sam", "unlearn.sam_rho=0.5"]


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_zero_radius_and_zero_components_are_plain_peel_bit_for_bit(tiny_models, corpora, tmp_path, adapter):
    plain = run(tiny_models, corpora, tmp_path / "plain", f"unlearn.adapter={adapter}")
    zero = {
        "sam": run(tiny_models, corpora, tmp_path / "sam", f"unlearn.adapter={adapter}", "unlearn.adversary=sam", "unlearn.sam_rho=0"),
        "collapse": run(tiny_models, corpora, tmp_path / "collapse", f"unlearn.adapter={adapter}", "unlearn.collapse_components=0"),
    }
    expected = model_weights(plain)
    for name, folder in zero.items():
        assert plain_records(folder) == metrics(plain), name
        weights = model_weights(folder)
        assert all(torch.equal(weights[key], expected[key]) for key in expected), name
    assert "attacked_forget_loss" in metrics(zero["sam"])[0]  # the second pass ran at every step

    strong = {
        "sam": run(tiny_models, corpora, tmp_path / "sam_on", f"unlearn.adapter={adapter}", *SAM),
        "collapse": run(tiny_models, corpora, tmp_path / "collapse_on", f"unlearn.adapter={adapter}", "unlearn.collapse_components=8"),
    }
    for name, folder in strong.items():
        assert plain_records(folder)[-1]["forget_grad_norm"] != metrics(plain)[-1]["forget_grad_norm"], name


def sam_phase(tiny_models, corpora, adapter: str, rho: float, basis=None):
    model, weights, parameters, corpus = phase_two(tiny_models, corpora, adapter, 8)
    unlearn_settings = UnlearnConfig(adversary="sam", sam_rho=rho, forget_loss="max_entropy_kl")
    adversary = ADVERSARIES["sam"](Phase(weights=weights, parallelism=Local(weights), parameters=parameters, layer=2,
                                         unlearn=unlearn_settings, examples_per_process=8, collapse_basis=basis))
    return model, parameters, adversary, [corpus.batch(torch.arange(0, 4)), corpus.batch(torch.arange(4, 8))]


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_sam_takes_the_gradient_at_the_ascended_point_and_restores_the_parameters(tiny_models, corpora, adapter):
    model, parameters, adversary, batches = sam_phase(tiny_models, corpora, adapter, 0.3)
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    losses, gradients, statistics = adversary.step_forget_gradients(0, batches, 1.0, 1.0 / 8)
    after = model.state_dict()
    assert all(torch.equal(after[name], before[name]) for name in before)  # back, bit for bit
    assert all(parameter.grad is None for parameter in parameters)

    # By hand: the plain gradient, a step of 0.3 along it, the gradient there.
    for batch in batches:
        adversary.forget_backward(batch, 1.0 / 8)
    plain = take_gradients(parameters)
    norm = torch.sqrt(sum(gradient.square().sum() for gradient in plain))
    with torch.no_grad():
        for parameter, gradient in zip(parameters, plain):
            parameter.add_(0.3 * gradient / norm)
    ascended = [adversary.forget_backward(batch, 1.0 / 8) for batch in batches]
    expected = take_gradients(parameters)
    for gradient, wanted in zip(gradients, expected):
        torch.testing.assert_close(gradient, wanted, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(gradients, plain))
    assert statistics["attacked_forget_loss"] == pytest.approx(float(torch.cat(ascended).mean()), rel=1e-5)
    assert float(statistics["attacked_forget_loss"]) > float(losses.mean())  # the ascent raised the forget loss


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_collapse_onto_every_direction_leaves_no_forget_gradient(tiny_models, corpora, adapter):
    """Every trained parameter sits at or below the target layer, so the whole forget gradient passes
    its output: projected off the whole space, nothing reaches them."""
    from peel.data import load_texts, tokenize
    from peel.config import DataSource
    from peel.unlearning.batches import Corpus

    model, weights, parameters, _ = phase_two(tiny_models, corpora, adapter, 8)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["gpt_neox"])
    retain = Corpus(tokenize(load_texts(DataSource(path=str(corpora["retain"])), 8, 0), tokenizer, 16), tokenizer.pad_token_id, "cpu")
    hidden = model.config.hidden_size
    basis = retain_components(weights, retain, 2, hidden, 4)
    torch.testing.assert_close(basis.T @ basis, torch.eye(hidden), atol=1e-5, rtol=0)  # orthonormal
    assert retain_components(weights, retain, 2, 0, 4) is None
    top = retain_components(weights, retain, 2, 3, 4)
    torch.testing.assert_close(top.abs(), basis[:, :3].abs(), atol=1e-5, rtol=0)  # the leading directions (up to sign)

    def largest_forget_gradient(projected_off) -> float:
        _, _, adversary, batches = sam_phase(tiny_models, corpora, adapter, 0.0, projected_off)
        _, gradients, _ = ADVERSARIES["none"].step_forget_gradients(adversary, 0, batches, 1.0, 1.0 / 8)
        return max(float(gradient.abs().max()) for gradient in gradients)

    plain = largest_forget_gradient(None)
    assert largest_forget_gradient(basis) < 1e-4 * plain
    assert largest_forget_gradient(top) > 1e-2 * plain  # three directions of 32 leave most of it


@pytest.mark.parametrize("method", [SAM, ["unlearn.adversary=latent", "unlearn.latent_steps=2", "unlearn.latent_epsilon=0.5",
                                          "unlearn.collapse_components=8"]], ids=["sam", "latent_with_collapse"])
def test_two_processes_equal_one(tiny_models, corpora, tmp_path, on_cpu, method):  # noqa: F811
    one, two = run_both_ways(tiny_models["gpt_neox"], corpora, tmp_path, "unlearn.adapter=lora", *method)
    assert_same_run(one, two)
    if method is SAM:
        for a, b in zip(one[0], two[0]):
            assert a["attacked_forget_loss"] == pytest.approx(b["attacked_forget_loss"], rel=1e-5, abs=1e-7)
