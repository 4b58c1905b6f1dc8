"""The exceptions the CLI turns into one line, and the boundary where the outside world's
failures become them.

Everything that reads what a user hands peel (config files, datasets, tokenizers, models, run
folders, tamper and eval records) does so inside `reading(...)`, so a broken file is one line
naming the file, what went wrong and what would be accepted, never a traceback.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


class PeelError(Exception):
    """Bad input: a missing file, an unknown key, a value outside what is accepted.

    The message is a single line naming the bad value and what would be accepted.
    """

    def __init__(self, message: str):
        # One line, whatever the libraries underneath put into it.
        super().__init__(" ".join(str(message).split()))


class RunFailed(Exception):
    """A run that started but could not finish (e.g. a non-finite loss); run.json says `failed`."""


class Preempted(Exception):
    """A run stopped on request (SIGTERM / SIGUSR1 / SIGUSR2) after writing a checkpoint.

    Running the same command again continues where it stopped; the CLI exits with
    `PREEMPTED_EXIT_STATUS` so schedulers and scripts can tell this apart from a failure.
    """


# EX_TEMPFAIL from sysexits.h: "try again later", which is what a preempted run asks for.
PREEMPTED_EXIT_STATUS = 75


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def explain(error: BaseException) -> str:
    """`first_line`, followed by the root cause's where a library wrapped it in a vaguer error
    ("An error occurred while generating the dataset" -> "... (JSON parse error in row 1)")."""
    message = first_line(error)
    cause = error
    while cause.__cause__ is not None or (cause.__context__ is not None and not cause.__suppress_context__):
        cause = cause.__cause__ or cause.__context__
    root = first_line(cause)
    return message if cause is error or root in message else f"{message} ({root})"


@contextlib.contextmanager
def reading(what: str, accepted: str, verb: str = "read") -> Iterator[None]:
    """Turn any failure inside the block into a PeelError about `what` (e.g. "dataset 'x.jsonl'").

    Libraries raise dozens of exception types for a broken file (JSON, Arrow, safetensors,
    tokenizers, the hub); at this boundary all of them mean the same thing to the user.
    """
    try:
        yield
    except PeelError:
        raise
    except Exception as error:
        raise PeelError(f"cannot {verb} {what}: {explain(error)}; accepted: {accepted}") from None
