"""Argument handling the `peel` subcommands share."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

# `key=value` words are overrides unless they name an existing path (a sweep's run folders have '=' in their names).
OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=")


def is_override(word: str) -> bool:
    return bool(OVERRIDE.match(word)) and not Path(word).exists()


class TargetsAndOverrides(argparse.Action):
    """TARGET words and key=value words share the positional list: split them as they are parsed
    (into `targets` and `overrides`; the parser sets `overrides=[]` as its default)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.targets = [word for word in values if not is_override(word)]
        namespace.overrides = [*namespace.overrides, *(word for word in values if is_override(word))]
