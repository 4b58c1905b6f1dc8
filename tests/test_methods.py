"""Each method choice is one row of methods.py that describes itself; the rows that compute
(objectives, filters, adversaries) name the same choices, and the config accepts exactly them."""

from __future__ import annotations

import typing

import pytest

from peel.config import UnlearnConfig, to_dict
from peel.outputs.model_card import method_rows
from peel.unlearning import methods
from peel.unlearning.adversaries import ADVERSARIES
from peel.unlearning.dry_run import loss_lines
from peel.unlearning.filters import GRADIENT_FILTERS
from peel.unlearning.objectives import FORGET_OBJECTIVES, RETAIN_OBJECTIVES

COMPUTING = {"forget_loss": FORGET_OBJECTIVES, "retain_loss": RETAIN_OBJECTIVES, "grad_filter": GRADIENT_FILTERS,
             "adversary": ADVERSARIES}


@pytest.mark.parametrize("setting", list(methods.CHOICES))
def test_each_choice_has_one_describing_row_one_computing_row_and_is_accepted_by_the_config(setting):
    accepted = typing.get_args(typing.get_type_hints(UnlearnConfig)[setting])
    assert list(methods.CHOICES[setting]) == list(COMPUTING[setting]) == list(accepted)
    keys = {field for field in UnlearnConfig.__dataclass_fields__}
    for choice in methods.CHOICES[setting].values():
        assert set(choice.reads) <= keys  # every key a row names is a real unlearn key


def test_a_choice_shows_the_keys_it_reads_in_the_dry_run_and_the_model_card():
    unlearn = UnlearnConfig(forget_loss="npo", npo_beta=0.2, npo_per_token=False, adversary="latent", latent_epsilon=0.05,
                            latent_steps=3)
    lines = loss_lines(unlearn, None)
    assert lines[0].startswith("forget loss: npo (beta 0.2, per sequence), coefficient")
    assert lines[-1] == "adversary: latent (the target layer's output perturbed within 0.05 of each token's norm, " \
                        "chosen by 3 projected gradient steps)"
    rows = dict(method_rows({"unlearn": to_dict(unlearn)}, [3, 1]))
    assert rows["forget loss"].startswith("npo (beta 0.2, per sequence)")
    assert rows["adversary (tamper resistance)"].startswith("latent (the target layer's output perturbed within 0.05")
    # plain peel's dry run has no adversary line, as before the adversaries existed
    assert not any(line.startswith("adversary") for line in loss_lines(UnlearnConfig(), None))
    assert methods.chosen_keys(to_dict(unlearn)) == ["npo_beta", "npo_per_token", "retain_layers", "latent_epsilon", "latent_steps"]


def test_an_option_is_a_config_key_and_shows_itself_only_when_on():
    keys = {field for field in UnlearnConfig.__dataclass_fields__}
    for key, option in methods.OPTIONS.items():
        assert key in keys and UnlearnConfig.__dataclass_fields__[key].default == option.off
    unlearn = UnlearnConfig(adversary="sam", sam_rho=0.02, collapse_components=16)
    lines = loss_lines(unlearn, None)
    assert lines[-2] == "adversary: sam (sharpness-aware: the forget gradient at the worst point within 0.02 of the trained " \
                        "parameters, one ascent step)"
    assert lines[-1].startswith("collapse_components: the forget gradient at the target layer's output projected off the top 16")
    rows = dict(method_rows({"unlearn": to_dict(unlearn)}, [3, 1]))
    assert rows["collapse components"].startswith("the forget gradient at the target layer's output projected off the top 16")
    assert methods.chosen_keys(to_dict(unlearn)) == ["retain_layers", "sam_rho", "collapse_components"]
    assert "collapse_components" in methods.all_read_keys()
    # off (and absent from an older run's config): no line, no row
    assert not any(line.startswith("collapse") for line in loss_lines(UnlearnConfig(), None))
    assert "collapse components" not in dict(method_rows({"unlearn": {"adversary": "none"}}, [3]))
