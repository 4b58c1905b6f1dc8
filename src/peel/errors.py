"""The one exception type the CLI turns into a one-line message and exit code 2."""


class PeelError(Exception):
    """Bad input: a missing file, an unknown key, a value outside what is accepted.

    The message is a single line naming the bad value and what would be accepted.
    """


class RunFailed(Exception):
    """A run that started but could not finish (e.g. a non-finite loss); run.json says `failed`."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (or its type's name), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
