"""The method's choices as they describe themselves: each forget loss, retain loss, gradient filter
and adversary is one row, naming the `unlearn.*` keys it reads beside its own name and saying how
it reads in a line of `--dry-run`, a model card and `peel report`; an option that combines with every
choice (representation collapse) is one row of OPTIONS, saying how it reads when on. Those three ask
this module and know no choice by name.

The rows that compute live beside their code (objectives.FORGET_OBJECTIVES, RETAIN_OBJECTIVES,
filters.GRADIENT_FILTERS, adversaries.ADVERSARIES), which import torch; these rows do not, so a
report or a model card is written without it. tests/test_methods.py holds each table to the same
names as its computing twin and as the config's accepted values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping


def number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Choice:
    reads: tuple[str, ...] = ()  # unlearn keys it reads besides its own name
    # (its name, the unlearn section's values) -> how it reads in a line, e.g. "npo (beta 0.1, per token)"
    describe: Callable[[str, Mapping[str, Any]], str] = lambda name, unlearn: name


FORGET_LOSSES = {
    "random_ce": Choice(),
    "max_entropy_kl": Choice(),
    "top_k_entropy": Choice(("top_k",), lambda name, u: f"{name} (top_k {u['top_k']})"),
    "npo": Choice(("npo_beta", "npo_per_token"),
                  lambda name, u: f"{name} (beta {number(u['npo_beta'])}, {'per token' if u['npo_per_token'] else 'per sequence'})"),
}
RETAIN_LOSSES = {
    "l2": Choice(("retain_layers",), lambda name, u: f"{name} on layers {u['retain_layers']}"),
    "kl": Choice(),
    "nll": Choice(),
}
GRADIENT_FILTERS = {"none": Choice(), "same_sign": Choice(), "asymmetric": Choice()}
ADVERSARIES = {
    "none": Choice(),
    "finetune": Choice(
        ("adversary_every", "adversary_steps", "adversary_lr", "adversary_coef"),
        lambda name, u: (f"{name} (every {u['adversary_every']} step(s), a simulated attack of {u['adversary_steps']} AdamW "
                         f"steps at lr {number(u['adversary_lr'])} on data.adversary, its forget gradient times "
                         f"{number(u['adversary_coef'])})"),
    ),
    "latent": Choice(
        ("latent_epsilon", "latent_steps"),
        lambda name, u: (f"{name} (the target layer's output perturbed within {number(u['latent_epsilon'])} of each "
                         f"token's norm, chosen by {u['latent_steps']} projected gradient steps)"),
    ),
    "sam": Choice(
        ("sam_rho",),
        lambda name, u: (f"{name} (sharpness-aware: the forget gradient at the worst point within {number(u['sam_rho'])} "
                         f"of the trained parameters, one ascent step)"),
    ),
}



@dataclass(frozen=True)
class Option:
    """A setting that is not a choice among names but is on or off beside every choice."""

    off: Any  # the value at which it changes nothing
    describe: Callable[[Mapping[str, Any]], str]  # (the unlearn section's values) -> how it reads when on


# unlearn key -> the option it sets (each combines with every choice above)
OPTIONS = {
    "collapse_components": Option(
        0, lambda u: (f"the forget gradient at the target layer's output projected off the top {u['collapse_components']} "
                      "principal components of the original model's retain hidden states there")),
}

# unlearn key -> the table of its choices
CHOICES = {"forget_loss": FORGET_LOSSES, "retain_loss": RETAIN_LOSSES, "grad_filter": GRADIENT_FILTERS,
           "adversary": ADVERSARIES}


def described(setting: str, unlearn: Mapping[str, Any]) -> str:
    """How the choice `unlearn[setting]` reads, with the settings it reads (a name the table does not
    know, from a run folder of another version, reads as itself)."""
    name = unlearn.get(setting)
    choice = CHOICES[setting].get(name)
    return str(name) if choice is None else choice.describe(name, unlearn)


def chosen_keys(unlearn: Mapping[str, Any]) -> list[str]:
    """The unlearn keys the chosen forget loss, retain loss, filter and adversary read, and the options that are on."""
    return [*(key for setting, table in CHOICES.items() for key in getattr(table.get(unlearn.get(setting)), "reads", ())),
            *(key for key, option in OPTIONS.items() if unlearn.get(key, option.off) != option.off)]


def all_read_keys() -> list[str]:
    """Every unlearn key some choice reads, and the options (what a sweep may vary within one method)."""
    return list(dict.fromkeys([*(key for table in CHOICES.values() for choice in table.values() for key in choice.reads),
                               *OPTIONS]))


def options_on(unlearn: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, how it reads) for each option that is on (absent from an older run's config: off)."""
    return [(key, option.describe(unlearn)) for key, option in OPTIONS.items() if unlearn.get(key, option.off) != option.off]
