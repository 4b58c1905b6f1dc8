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
