"""Forget-token masks from a keyword list: only tokens inside a keyword count in the forget loss.

A keyword list is a text file (one keyword per line, `#` lines are comments) or a CSV file with a
`keyword` column (or `testbed:keywords`, the testbed's forget-domain values). The
keywords become one case-insensitive pattern, longest first (so "anthrax toxin" wins over
"anthrax"), and a token counts when its characters overlap a match, as the tokenizer's offsets
place it. Masks are computed once per run, with the token ids, in the same tokenizer call.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from peel.errors import PeelError, reading

ACCEPTED = "a .txt file with one keyword per line (# starts a comment), a .csv file with a 'keyword' column, or testbed:keywords"


def read_keywords(path: str | Path) -> list[str]:
    """The non-blank keywords of a list, in file order, each once."""
    from peel import scenarios

    if scenarios.is_scenario_name(str(path)):
        path = scenarios.resolve(str(path))
    path = Path(path).expanduser()
    if not path.is_file():
        raise PeelError(f"data.forget.keywords file {str(path)!r} does not exist; accepted: {ACCEPTED}")
    with reading(f"keyword list {str(path)!r}", ACCEPTED):
        text = path.read_text()
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and "keyword" not in rows[0]:
            raise PeelError(f"keyword list {str(path)!r} has no 'keyword' column (columns: {list(rows[0])}); accepted: {ACCEPTED}")
        candidates = [row["keyword"] or "" for row in rows]
    else:
        candidates = [line for line in text.splitlines() if not line.lstrip().startswith("#")]  # comments
    keywords = list(dict.fromkeys(word.strip() for word in candidates if word and word.strip()))
    if not keywords:
        raise PeelError(f"keyword list {str(path)!r} holds no keywords ({len(candidates)} blank entries); accepted: {ACCEPTED}")
    return keywords


def keyword_pattern(keywords: list[str]) -> re.Pattern:
    """One case-insensitive alternation, longest keyword first, each matched literally."""
    ordered = sorted(keywords, key=len, reverse=True)
    return re.compile("|".join(re.escape(word) for word in ordered), re.IGNORECASE)


def tokenize_with_masks(texts: list[str], tokenizer, max_length: int, pattern: re.Pattern) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each text (as `data.tokenize` gives them) and 1 / 0 per token: inside a match or not."""
    if not getattr(tokenizer, "is_fast", False):
        raise PeelError("data.forget.keywords needs a fast tokenizer (one that reports character offsets); this model's is not")
    encoded = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False, return_offsets_mapping=True)
    masks = [overlaps(offsets, [match.span() for match in pattern.finditer(text)])
             for text, offsets in zip(texts, encoded["offset_mapping"])]
    return encoded["input_ids"], masks


def overlaps(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token span that overlaps one of `spans` (sorted, disjoint), in one pass over both."""
    mask, index = [], 0
    for start, end in offsets:
        while index < len(spans) and spans[index][1] <= start:
            index += 1
        mask.append(int(end > start and index < len(spans) and spans[index][0] < end))
    return mask
