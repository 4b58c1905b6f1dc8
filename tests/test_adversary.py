"""The adversaries inside the unlearning step (`unlearn.adversary`, adversary.py).

At zero strength each is plain peel bit for bit, while running its whole path (the finetune
attack runs and is undone; the latent search runs with a zero-radius ball); at non-zero strength
each changes the run. The attack copies only the trained parameters and restores them exactly;
2 processes equal 1; a run stopped by SIGTERM and resumed equals one never stopped; bad values
are one line and exit 2.
"""

from __future__ import annotations

import signal

import pytest
import torch
from safetensors.torch import load_file

from peel.unlearning import engine
from peel.unlearning.adversaries import ADVERSARIES
from peel.unlearning.phase import Phase
from peel.unlearning.batches import Corpus
from peel.cli import main
from peel.config import UnlearnConfig, load_config
from peel.unlearning.engine import unlearn
from peel.errors import PeelError, Preempted
from peel.unlearning.gradients import take_gradients
from peel.models import load_model_and_tokenizer
from peel.unlearning.planning import check_parallel
from peel.unlearning.weights import WEIGHTS

from test_distributed import assert_same_run, on_cpu, run_both_ways  # noqa: F401 (on_cpu is a fixture)
from test_resume import metrics, settings

ADVERSARY_KEYS = ("adversary_nll", "attacked_forget_loss")
FINETUNE = ["unlearn.adversary=finetune", "unlearn.adversary_every=2", "unlearn.adversary_steps=2", "unlearn.adversary_lr=1e-2"]
LATENT = ["unlearn.adversary=latent", "unlearn.latent_steps=2"]


def run(tiny_models, corpora, folder, *extra: str):
    arguments = settings(tiny_models["gpt_neox"], corpora, folder, "unlearn.layers=[3, 1]", "train.checkpoint_every=0", *extra)
    return unlearn(load_config(None, arguments))


def plain_records(folder) -> list[dict]:
    return [{key: value for key, value in record.items() if key not in ADVERSARY_KEYS} for record in metrics(folder)]


def model_weights(folder) -> dict:
    return load_file(folder / "model" / "model.safetensors")


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_each_adversary_at_zero_strength_is_plain_peel_bit_for_bit(tiny_models, corpora, tmp_path, adapter):
    plain = run(tiny_models, corpora, tmp_path / "plain", f"unlearn.adapter={adapter}")
    zero = {
        "finetune": run(tiny_models, corpora, tmp_path / "finetune", f"unlearn.adapter={adapter}", *FINETUNE, "unlearn.adversary_coef=0"),
        "latent": run(tiny_models, corpora, tmp_path / "latent", f"unlearn.adapter={adapter}", *LATENT, "unlearn.latent_epsilon=0"),
    }
    expected = model_weights(plain)
    for name, folder in zero.items():
        assert plain_records(folder) == metrics(plain), name
        weights = model_weights(folder)
        assert all(torch.equal(weights[key], expected[key]) for key in expected), name
    assert "attacked_forget_loss" in metrics(zero["finetune"])[0]  # the attack ran (steps 0, 2, ... of each phase)
    assert "attacked_forget_loss" not in metrics(zero["finetune"])[1]

    # At non-zero strength each adversary changes the run: the comparison above can fail.
    strong = {
        "finetune": run(tiny_models, corpora, tmp_path / "finetune_on", f"unlearn.adapter={adapter}", *FINETUNE),
        "latent": run(tiny_models, corpora, tmp_path / "latent_on", f"unlearn.adapter={adapter}", *LATENT, "unlearn.latent_epsilon=0.5"),
    }
    for name, folder in strong.items():
        assert plain_records(folder)[-1]["forget_grad_norm"] != metrics(plain)[-1]["forget_grad_norm"], name


def phase_two(tiny_models, corpora, adapter: str, examples: int):
    """The tiny GPT-NeoX in phase 2 (layers 0-2 trained) and `examples` forget texts: (model, weights, parameters, corpus)."""
    from peel.config import DataSource
    from peel.data import load_texts, tokenize

    model, tokenizer = load_model_and_tokenizer(str(tiny_models["gpt_neox"]))
    weights = WEIGHTS[adapter](model, UnlearnConfig().lora)
    weights.begin_phase(2)
    texts = tokenize(load_texts(DataSource(path=str(corpora["forget"])), examples, 0), tokenizer, 16)
    return model, weights, weights.trainable_parameters(), Corpus(texts, tokenizer.pad_token_id, "cpu")


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_the_attack_copies_only_the_trained_parameters_and_restores_them_exactly(tiny_models, corpora, monkeypatch, adapter):
    model, weights, parameters, corpus = phase_two(tiny_models, corpora, adapter, 16)
    settings_ = UnlearnConfig(adversary="finetune", adversary_steps=3, adversary_lr=1e-2, forget_loss="max_entropy_kl")
    from peel.parallel import Local

    adversary = ADVERSARIES["finetune"](Phase(weights=weights, parallelism=Local(weights), parameters=parameters, layer=2, unlearn=settings_,
                                                 examples_per_process=8, attack_text=corpus, steps=4, global_batch_size=8,
                                                 per_device_batch_size=4))
    forget_batches = [corpus.batch(torch.arange(0, 4)), corpus.batch(torch.arange(4, 8))]
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}

    # The plain forget gradient at the current point, for comparison with the attacked one.
    for batch in forget_batches:
        adversary.forget_backward(batch, 1.0 / 8)
    current = take_gradients(parameters)

    cloned = []
    real_clone = torch.Tensor.clone

    def counting_clone(tensor, *args, **kwargs):
        cloned.append(tensor.numel())
        return real_clone(tensor, *args, **kwargs)

    moved = []
    real_attack = type(adversary).attack

    def watched_attack(self, number):
        result = real_attack(self, number)
        moved.append(any(not torch.equal(p, before_p) for p, before_p in zip(parameters, saved_values)))
        return result

    saved_values = [real_clone(p.detach()) for p in parameters]
    monkeypatch.setattr(torch.Tensor, "clone", counting_clone)
    monkeypatch.setattr(type(adversary), "attack", watched_attack)
    attacked, statistics = adversary.attacked_forget_gradients(0, forget_batches, 1.0 / 8)
    monkeypatch.undo()

    assert moved == [True]  # the attack moved the trained parameters...
    after = model.state_dict()
    assert all(torch.equal(after[name], before[name]) for name in before)  # ...and they are back, bit for bit
    assert sum(cloned) == sum(parameter.numel() for parameter in parameters)  # one copy of the trained parameters, nothing else
    assert sum(cloned) < sum(value.numel() for value in before.values()) / 2
    assert all(parameter.grad is None for parameter in parameters)  # nothing left in the step's gradients
    assert any(not torch.equal(a, c) for a, c in zip(attacked, current))  # the gradient is the attacked point's
    assert set(statistics) == {"adversary_nll", "attacked_forget_loss"}


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_the_latent_search_records_no_graph_through_the_layers_up_to_the_target(tiny_models, corpora, adapter):
    from peel.parallel import Local

    _, weights, parameters, corpus = phase_two(tiny_models, corpora, adapter, 4)
    batch = corpus.batch(torch.arange(0, 4))
    settings_ = UnlearnConfig(adversary="latent", latent_steps=2, latent_epsilon=0.5, forget_loss="max_entropy_kl")
    adversary = ADVERSARIES["latent"](Phase(weights=weights, parallelism=Local(weights), parameters=parameters, layer=2, unlearn=settings_,
                                               examples_per_process=4))

    graphed = {}  # layer -> whether its output carried a graph, during the search's passes
    hooks = [layer.register_forward_hook(lambda module, inputs, output, index=index: graphed.setdefault(index, []).append(
        (output[0] if isinstance(output, tuple) else output).requires_grad)) for index, layer in enumerate(weights.anatomy.layers)]
    perturbation = adversary.perturbation(batch)
    for hook in hooks:
        hook.remove()
    assert not any(any(graphed[index]) for index in range(3))  # the target (2) and below: no activations kept
    assert all(any(graphed[index]) for index in range(3, len(weights.anatomy.layers)))  # after it: the search's graph
    assert perturbation.abs().sum() > 0
    assert all(parameter.requires_grad for parameter in parameters)  # trainable again for the step's own passes


@pytest.mark.parametrize("adversary", [FINETUNE, [*LATENT, "unlearn.latent_epsilon=0.5"]], ids=["finetune", "latent"])
def test_two_processes_equal_one(tiny_models, corpora, tmp_path, on_cpu, adversary):  # noqa: F811
    one, two = run_both_ways(tiny_models["gpt_neox"], corpora, tmp_path, "unlearn.adapter=lora", *adversary)
    assert_same_run(one, two)
    if adversary is FINETUNE:
        for a, b in zip(one[0], two[0]):
            for key in ADVERSARY_KEYS:
                assert (key in a) == (key in b)
                if key in a:
                    assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


# sam and representation collapse (test_resistance.py) resume as the first adversaries do
@pytest.mark.parametrize("adversary", [FINETUNE, [*LATENT, "unlearn.latent_epsilon=0.5"], ["unlearn.adversary=sam", "unlearn.sam_rho=0.5"],
                                       ["unlearn.collapse_components=8", "unlearn.adapter=full"]],
                         ids=["finetune", "latent", "sam", "collapse_full"])
def test_a_run_stopped_by_sigterm_and_resumed_equals_one_never_stopped(tiny_models, corpora, tmp_path, monkeypatch, adversary):
    reference = run(tiny_models, corpora, tmp_path / "reference", *adversary)
    config = load_config(None, settings(tiny_models["gpt_neox"], corpora, tmp_path / "stopped", "unlearn.layers=[3, 1]",
                                        "train.checkpoint_every=0", *adversary))
    real = engine.compute_gradients
    calls = []

    def signalled_mid_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # phase 0, step 6 (of 8) follows: an attack step, its attack index 3
            signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "compute_gradients", signalled_mid_step)
    with pytest.raises(Preempted, match="stopped by SIGTERM after step 6"):
        unlearn(config)
    monkeypatch.setattr(engine, "compute_gradients", real)
    unlearn(config)

    assert metrics(tmp_path / "stopped") == metrics(reference)
    after, expected = model_weights(tmp_path / "stopped"), model_weights(reference)
    assert all(torch.equal(after[name], expected[name]) for name in expected)


BAD = [
    ("unknown adversary", ["unlearn.adversary=tar"], "'unlearn.adversary' got 'tar'; accepted: none, finetune, latent"),
    ("negative coefficient", ["unlearn.adversary=finetune", "unlearn.adversary_coef=-1"], "'unlearn.adversary_coef' got -1.0"),
    ("negative epsilon", ["unlearn.adversary=latent", "unlearn.latent_epsilon=-0.1"], "'unlearn.latent_epsilon' got -0.1"),
    ("attack steps 0", ["unlearn.adversary=finetune", "unlearn.adversary_steps=0"], "'unlearn.adversary_steps' got 0"),
    ("latent steps 0", ["unlearn.adversary=latent", "unlearn.latent_steps=0"], "'unlearn.latent_steps' got 0"),
    ("attack every 0", ["unlearn.adversary=finetune", "unlearn.adversary_every=0"], "'unlearn.adversary_every' got 0"),
    ("attack lr 0", ["unlearn.adversary=finetune", "unlearn.adversary_lr=0"], "'unlearn.adversary_lr' got 0.0"),
    ("missing attack text", ["unlearn.adversary=finetune", "data.adversary.path=/nonexistent/attack.jsonl"], "/nonexistent/attack.jsonl"),
]


@pytest.mark.parametrize("overrides, fragment", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_values_are_one_line_and_exit_2(tiny_models, corpora, tmp_path, capsys, overrides, fragment):
    config = tmp_path / "config.yaml"
    config.write_text("notes: bad adversary values\n")
    arguments = settings(tiny_models["llama"], corpora, tmp_path / "run", *overrides)
    capsys.readouterr()
    status = main(["unlearn", str(config), *arguments])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2
    assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("adapter, parallel", [("full", "auto"), ("lora", "fsdp")])
def test_fsdp2_is_refused_in_one_line(tiny_models, corpora, tmp_path, adapter, parallel):
    config = load_config(None, settings(tiny_models["llama"], corpora, tmp_path / "run", "unlearn.adversary=latent",
                                        f"unlearn.adapter={adapter}", f"train.parallel={parallel}"))
    check_parallel(config, 1)  # one process: accepted
    with pytest.raises(PeelError, match="unlearn.adversary=latent under FSDP2 .* is not supported"):
        check_parallel(config, 2)
