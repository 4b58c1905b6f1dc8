"""The one exception type the CLI turns into a one-line message and exit code 2."""


class PeelError(Exception):
    """Bad input: a missing file, an unknown key, a value outside what is accepted.

    The message is a single line naming the bad value and what would be accepted.
    """


class RunFailed(Exception):
    """A run that started but could not finish (e.g. a non-finite loss); run.json says `failed`."""
