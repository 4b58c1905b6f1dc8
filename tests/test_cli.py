import pytest

from peel.cli import COMMANDS, parse


def test_overrides_may_follow_options():
    args = parse(["tamper", "runs/a", "tamper.lr=1e-4", "--output-dir", "out", "tamper.steps=4"])
    assert args.targets == ["runs/a"] and args.output_dir == "out"
    assert args.overrides == ["tamper.lr=1e-4", "tamper.steps=4"]


def test_stray_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["unlearn", "config.yaml", "--no-such-flag"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: peel {command}" in capsys.readouterr().out
