"""Few-shot attacks: examples of the forget task put in the prompt (lm-eval num_fewshot), no training.

0 shots is the model as it is: the step-0 row every attack whose curve starts untouched shares.
A prompted model's row holds the prompted forget tasks and the untouched model's retain task.
"""

from __future__ import annotations

from dataclasses import dataclass

from peel.config import NON_NEGATIVE, option, split_tasks


@dataclass
class Options:
    shots: int = option(5, "Examples of the forget task before each question (lm-eval num_fewshot).", NON_NEGATIVE)

    def described(self) -> dict:
        return {"few_shot": self.shots}  # the name attack records have always used


def untouched(settings: dict) -> bool:
    return settings.get("few_shot") == 0


def run(attack, session) -> dict:
    forget_tasks, _ = split_tasks(attack.settings.tasks)
    prompted = session.accuracy(forget_tasks, attack.options.shots) if attack.options.shots else {}
    return {"curve": [{**session.untouched(), **prompted}]}
