"""lm-eval multiple-choice tasks as plain questions: (context, choices, gold), read through lm-eval.

The context and the choices are the requests lm-eval itself builds for a 0-shot evaluation (the
task's description, doc_to_text, target_delimiter and doc_to_choice), so a probe reads the model
on exactly the text `peel eval` scores. A group (wmdp_bio_robust) pools its tasks' questions.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from peel.errors import PeelError


@dataclass(frozen=True)
class Question:
    context: str
    choices: tuple[str, ...]  # each choice's continuation text, as lm-eval scores it after the context
    gold: int


@dataclass(frozen=True)
class ProbeTask:
    name: str
    questions: list[Question]

    @property
    def shared_choices(self) -> bool:
        """True when every question offers the same choices (the letters A-D of WMDP / MMLU prompts):
        then the answer is a label of the question; otherwise each choice is scored on its own."""
        return len({question.choices for question in self.questions}) == 1


def load_tasks(names: list[str], limit: int | None, include_path: str | None = None) -> list[ProbeTask]:
    """Each task's (or group's) questions, the first `limit` of each task, found among peel's,
    lm-eval's and `include_path`'s tasks (eval.include_path); bad names fail here, before any model loads."""
    if not names:
        raise PeelError("no tasks to probe; pass --tasks testbed_forget,testbed_retain or probe.tasks=[...]")
    from peel.evaluation.harness import manager_for, quiet_lm_eval

    manager = manager_for(names, include_path)  # a PeelError naming an unknown task
    tasks = []
    for name in names:
        with quiet_lm_eval():
            leaves = leaf_tasks(manager, name)
        questions = [question for task_name, task in leaves for question in task_questions(task_name, task, limit)]
        if len(questions) < 2:
            raise PeelError(f"task {name!r} has {len(questions)} question(s); a probe needs at least 2 (raise probe.limit)")
        tasks.append(ProbeTask(name, questions))
    return tasks


def leaf_tasks(manager, name: str) -> list[tuple[str, object]]:
    """The lm-eval Task objects behind a task or group name, in lm-eval's order."""
    if hasattr(manager, "load"):  # lm-eval >= 0.4.10: flat dicts
        return list(manager.load([name])["tasks"].items())
    found = []

    def walk(node):  # older lm-eval: {name or group: Task or nested dict}
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value)
            elif value is not None:
                found.append((getattr(key, "group", key), value))

    walk(manager.load_task_or_group([name]))
    return found


def task_questions(name: str, task, limit: int | None) -> list[Question]:
    if task.OUTPUT_TYPE != "multiple_choice":
        raise PeelError(f"task {name!r} is {task.OUTPUT_TYPE}; accepted: multiple-choice tasks (peel probe scores choices)")
    with contextlib.redirect_stderr(io.StringIO()):  # lm-eval's progress bar for a second's work
        task.build_all_requests(limit=limit, rank=0, world_size=1)
    requests: dict[int, list] = {}
    for instance in task.instances:
        requests.setdefault(instance.doc_id, []).append(instance)
    questions = []
    for doc_id in sorted(requests):
        instances = sorted(requests[doc_id], key=lambda instance: instance.idx)
        choices = tuple(instance.arguments[1] for instance in instances)
        questions.append(Question(instances[0].arguments[0], choices, gold_index(task, instances[0].doc, name)))
    return questions


def gold_index(task, doc, name: str) -> int:
    """lm-eval's target as a choice index (a task's doc_to_target gives an index or the choice's text)."""
    target = task.doc_to_target(doc)
    choices = task.doc_to_choice(doc)
    if isinstance(target, str):
        target = choices.index(target) if target in choices else int(target) if target.isdigit() else -1
    if isinstance(target, list) or not 0 <= target < len(choices):
        raise PeelError(f"task {name!r} has a question whose answer {target!r} is not one of its {len(choices)} choices")
    return int(target)
