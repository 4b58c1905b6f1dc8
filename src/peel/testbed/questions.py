"""Four-option cloze multiple-choice questions from facts (the testbed's and the elements').

The prompt is a sentence start; each choice is a continuation beginning with a space. Scoring
options by summed log-probability favours options with fewer tokens, so the three distractors are
the pool values whose lengths are closest to the answer's; the answer's position is random.
A length is a token count, or a tuple compared in order (token count, then characters).
"""

from __future__ import annotations

import random
from typing import Callable

NUM_CHOICES = 4
Length = int | tuple[int, ...]


def gap(length: Length, target: Length) -> Length:
    if isinstance(target, tuple):
        return tuple(abs(value - goal) for value, goal in zip(length, target))
    return abs(length - target)


def multiple_choice(items: list[dict], measure: Callable[[str], Length], seed: int) -> list[dict]:
    """`items` with "prompt", "answer_text" and "pool"; returns `{"prompt", "choices", "answer"}` rows."""
    rng = random.Random(seed)
    rows = []
    for item in items:
        answer = item["answer_text"]
        target = measure(" " + answer)
        others = [value for value in item["pool"] if value != answer]
        rng.shuffle(others)  # random tie-breaking among equally long values
        others.sort(key=lambda value: gap(measure(" " + value), target))
        choices = [" " + value for value in others[: NUM_CHOICES - 1]]
        position = rng.randrange(NUM_CHOICES)
        choices.insert(position, " " + answer)
        rows.append({"prompt": item["prompt"], "choices": choices, "answer": position})
    return rows


def length_guesser_accuracy(rows: list[dict], measure: Callable[[str], Length], pick: Callable = min) -> float:
    """Expected accuracy of a guesser that sees only lengths: it takes the shortest choice (`pick`
    = min) or the longest (max), uniformly among ties. Near 0.25 means length gives nothing away."""
    total = 0.0
    for row in rows:
        lengths = [measure(choice) for choice in row["choices"]]
        chosen = [index for index, length in enumerate(lengths) if length == pick(lengths)]
        total += (row["answer"] in chosen) / len(chosen)
    return total / len(rows)
