"""The `peel` command: one subcommand per module in `peel.commands`.

Each command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Command modules import torch and friends inside `run`, so `peel --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import traceback

from peel.errors import PREEMPTED_EXIT_STATUS, PeelError, Preempted, RunFailed, first_line

# name -> module under peel.commands; the order is the order `peel --help` lists them in.
COMMANDS = {
    "unlearn": "peel.commands.unlearn",
    "distill": "peel.commands.distill",
    "eval": "peel.commands.evaluate",
    "tamper": "peel.commands.tamper",
    "probe": "peel.commands.probe",
    "report": "peel.commands.report",
    "sweep": "peel.commands.sweep",
    "testbed": "peel.commands.testbed",
    "elements": "peel.commands.elements",
    "demo": "peel.commands.demo",
}


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in the same one-line form as every other bad input."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="peel",
        description="Sequential back-to-front unlearning: unlearn, evaluate, attack, report.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = subparsers.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command_parser)
        command_parser.set_defaults(run=module.run)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    # argparse stops filling a positional list at the first option, so `key=value` words that come
    # after an option (`peel tamper RUN --output-dir D tamper.steps=4`) arrive as unknown arguments.
    args, unknown = parser.parse_known_args(argv)
    stray = [word for word in unknown if "=" not in word or word.startswith("-")]
    if stray or (unknown and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or unknown)}")
    if unknown:
        args.overrides = [*(args.overrides or []), *unknown]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run a command; every way it can end is one line on stderr and an exit status:
    0 done, 2 bad input, 1 failed (the traceback of an unexpected error goes to a file, named
    in the line), 75 stopped by a signal after a checkpoint (run again to continue), 130 interrupted."""
    args = parse(argv)
    try:
        return args.run(args)
    except PeelError as error:
        print(f"peel {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(f"peel {args.command}: failed: {error}", file=sys.stderr)
        return 1
    except Preempted as error:
        print(f"peel {args.command}: {error}; run the same command again to continue", file=sys.stderr)
        return PREEMPTED_EXIT_STATUS
    except KeyboardInterrupt:
        print(f"peel {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        log = write_traceback(error)
        print(f"peel {args.command}: internal error: {type(error).__name__}: {first_line(error)}; "
              f"full traceback in {log}", file=sys.stderr)
        return 1


def write_traceback(error: BaseException) -> str:
    """Keep an unexpected error's traceback in a file of its own, so the terminal gets one line."""
    handle, path = tempfile.mkstemp(prefix="peel-error-", suffix=".log")
    with os.fdopen(handle, "w") as log:
        log.write("".join(traceback.format_exception(error)))
    return path


if __name__ == "__main__":
    raise SystemExit(main())
