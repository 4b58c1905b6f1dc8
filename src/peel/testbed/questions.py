"""Four-option cloze multiple-choice questions from the world's facts.

The prompt is a sentence start; each choice is a continuation beginning with a space. Scoring
options by summed log-probability favours options with fewer tokens, so the three distractors are
the pool values whose token counts are closest to the answer's; the answer's position is random.
"""

from __future__ import annotations

import random
from typing import Callable

NUM_CHOICES = 4


def multiple_choice(items: list[dict], count_tokens: Callable[[str], int], seed: int) -> list[dict]:
    """`items` from `world.cloze_items`; returns `{"prompt", "choices", "answer"}` rows."""
    rng = random.Random(seed)
    rows = []
    for item in items:
        answer = item["answer_text"]
        target = count_tokens(" " + answer)
        others = [value for value in item["pool"] if value != answer]
        rng.shuffle(others)  # random tie-breaking among equally long values
        others.sort(key=lambda value: abs(count_tokens(" " + value) - target))
        choices = [" " + value for value in others[: NUM_CHOICES - 1]]
        position = rng.randrange(NUM_CHOICES)
        choices.insert(position, " " + answer)
        rows.append({"prompt": item["prompt"], "choices": choices, "answer": position})
    return rows
