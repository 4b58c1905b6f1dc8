"""Every shipped config loads, and its first line is the command that runs it."""

from pathlib import Path

import pytest

from peel.config import load_config

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


def test_configs_exist():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_loads_and_names_its_command(path):
    config = load_config(path)
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# peel ") and f"configs/{path.name}" in first_line
    assert config.output_dir.startswith("runs/")


def test_keyword_lists_named_by_configs_are_shipped_and_readable():
    from peel.unlearning.masks import read_keywords

    repository = Path(__file__).parent.parent
    named = [load_config(path).data.forget.keywords for path in CONFIGS]
    named = [path for path in named if path is not None]
    assert named  # full_muon_keywords.yaml
    for path in named:
        assert read_keywords(repository / path)


def test_every_choice_the_config_accepts_is_in_its_table():
    import typing

    from peel.unlearning.adversaries import ADVERSARIES
    from peel.config import TrainConfig, UnlearnConfig
    from peel.unlearning.filters import GRADIENT_FILTERS
    from peel.unlearning.objectives import FORGET_OBJECTIVES, RETAIN_OBJECTIVES
    from peel.unlearning.optimizers import OPTIMIZERS

    hints = {**typing.get_type_hints(UnlearnConfig), **typing.get_type_hints(TrainConfig)}
    for key, table in (("forget_loss", FORGET_OBJECTIVES), ("retain_loss", RETAIN_OBJECTIVES),
                       ("grad_filter", GRADIENT_FILTERS), ("optimizer", OPTIMIZERS), ("adversary", ADVERSARIES)):
        assert set(typing.get_args(hints[key])) == set(table), key


def test_configs_mixing_chat_data_run_on_a_tokenizer_without_a_chat_template():
    """The seed's model is a base model (no chat template): its chat configs name a fallback."""
    from peel.data import CHAT_TEMPLATES

    chat = [load_config(path).data.chat for path in CONFIGS if load_config(path).data.chat.path is not None]
    assert len(chat) == 2  # seed runs 21 and 22
    assert all(source.template in CHAT_TEMPLATES for source in chat)

