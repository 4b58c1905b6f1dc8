"""Run lm-eval-harness in process on an in-memory model, 0-shot or few-shot, with peel's task YAMLs.

The model is wrapped in lm-eval's `HFLM` as it is (no save and reload), so `peel unlearn` can
evaluate after each phase and `peel tamper` during the attack without touching the disk.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

from peel.errors import PeelError, first_line
from peel.evaluation.summary import summarize

TASK_DIRECTORY = Path(__file__).resolve().parent / "tasks"
# Raised by datasets / huggingface_hub when a dataset is neither cached nor reachable.
DATASET_ERRORS = ("DatasetNotFoundError", "HfHubHTTPError", "LocalEntryNotFoundError", "OfflineModeIsEnabled")


@functools.lru_cache(maxsize=4)
def task_manager(include_defaults: bool, include_path: str | None = None):
    """lm-eval's index of tasks: peel's YAMLs, the user's folder `include_path` (eval.include_path)
    and, with `include_defaults`, lm-eval's own ~15k, whose scan takes seconds: hence the cache."""
    from lm_eval.tasks import TaskManager

    folders = [str(TASK_DIRECTORY)] if include_path is None else [str(TASK_DIRECTORY), str(Path(include_path).expanduser())]
    return TaskManager(include_path=folders, include_defaults=include_defaults)


def peel_task_names() -> set[str]:
    """Tasks and groups defined by peel's own YAMLs."""
    return set(task_manager(include_defaults=False).all_tasks)


def check_include_path(include_path: str | None) -> None:
    """eval.include_path names an existing folder (an empty path would index the working folder) of
    task YAML files that parse: lm-eval skips a broken one with a log line, and the task it defined
    would then be refused as unknown, blaming the name instead of the file."""
    if include_path is None:
        return
    folder = Path(include_path).expanduser()
    if not include_path or not folder.is_dir():
        raise PeelError(f"eval.include_path {include_path!r} is not a folder; accepted: a folder of lm-eval task YAML files, or null")
    files = sorted(path for pattern in ("*.yaml", "*.yml") for path in folder.rglob(pattern))
    if not files:
        raise PeelError(f"eval.include_path {include_path!r} holds no .yaml task files; accepted: a folder of lm-eval task YAML files, or null")
    for path in files:
        check_task_yaml(path)


def check_task_yaml(path: Path) -> None:
    """One task file of eval.include_path parses as YAML (lm-eval's tags such as !function accepted)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        yaml.load(path.read_text(), Loader=Loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise PeelError(f"task file {str(path)!r} in eval.include_path is not valid YAML{where}: "
                        f"{error.problem or error.context}; accepted: lm-eval task YAML") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise PeelError(f"cannot read task file {str(path)!r} in eval.include_path: {first_line(error)}; "
                        "accepted: lm-eval task YAML") from None


def manager_for(tasks: list[str], include_path: str | None = None):
    """peel's tasks and the user's (eval.include_path) alone when they suffice (fast); lm-eval's
    built-ins too when asked for one. The one place evaluation, tamper and probe index tasks."""
    check_include_path(include_path)
    manager = task_manager(False, include_path)
    if not set(tasks) <= set(manager.all_tasks):
        manager = task_manager(True, include_path)
    unknown = [name for name in tasks if name not in manager.all_tasks]
    if unknown:
        # Name peel's headline tasks; the six WMDP subsets are reachable but would crowd the message.
        where = "any lm-eval task name (e.g. mmlu)" + (
            f", or a task of eval.include_path {include_path!r}" if include_path else ", or your own with eval.include_path"
        )
        raise PeelError(
            f"unknown evaluation task {unknown[0]!r}; peel's own tasks are "
            f"{', '.join(sorted(name for name in peel_task_names() if '_robust_' not in name))}, plus {where}"
        )
    return manager


def evaluate(
    model,
    tokenizer,
    tasks: list[str],
    batch_size: int,
    max_length: int,
    limit: int | None = None,
    num_fewshot: int = 0,
    include_path: str | None = None,
    template: str | None = None,
) -> dict | None:
    """Accuracy of `model` on each task and group, with `num_fewshot` answered examples before each question.

    peel's task YAMLs name the split their examples come from (`fewshot_split`): without one,
    lm-eval draws them from the test split without leaving out the question being asked. Their
    YAMLs also leave num_fewshot unset, since lm-eval ignores the argument for a task whose YAML
    says 0. `include_path` is a folder of the user's own task YAMLs (eval.include_path).
    `template`, a text with a {question} slot, is put around every question (`templated_questions`).

    Returns {"tasks", "accuracy": {requested name: acc}, "details": {every task and group:
    {"accuracy", "metric", "stderr", "samples"[, "correct_prob", "subtasks"]}}, "correct_prob",
    "limit", "num_fewshot", "lm_eval_version"} (evaluation/summary.py).
    """
    if not tasks:
        raise PeelError("no evaluation tasks given; accepted: a list such as [wmdp_bio_robust, mmlu]")
    if tokenizer.eos_token is None:
        raise PeelError("the tokenizer has no eos token, which lm-eval needs to score empty contexts")
    manager = manager_for(tasks, include_path)

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from peel.anatomy import causal_lm

    network = causal_lm(model)  # lm-eval wants the transformers model, even under a peft wrapper
    was_training = network.training
    network.eval()
    try:
        with quiet_lm_eval(), templated_questions(template):
            language_model = HFLM(pretrained=network, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
            output = lm_eval.simple_evaluate(
                model=language_model,
                tasks=list(tasks),
                task_manager=manager,
                limit=limit,
                num_fewshot=num_fewshot,
                log_samples=True,  # each choice's log-likelihood: correct_prob is computed from them
                # Leave the caller's random state alone: multiple choice draws no random numbers
                # (few-shot examples come from lm-eval's own generator, seeded by its
                # fewshot_random_seed), and re-seeding here would change a run that evaluates
                # between phases.
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
            )
    except (ConnectionError, FileNotFoundError) as error:
        raise PeelError(f"a dataset for tasks {', '.join(tasks)} could not be loaded: {first_line(error)}") from None
    except Exception as error:
        if type(error).__name__ in DATASET_ERRORS:
            raise PeelError(f"a dataset for tasks {', '.join(tasks)} could not be loaded: {first_line(error)}") from None
        raise
    finally:
        network.train(was_training)
    if output is None:  # under torchrun, lm-eval reports to the process with LOCAL_RANK 0 only
        return None
    return summarize(output, tasks, limit)


def evaluate_with(model, tokenizer, settings) -> dict | None:
    """`evaluate` with the tasks, batch size, context length, limit and task folder of an `eval` config section."""
    return evaluate(model, tokenizer, settings.tasks, settings.batch_size, settings.max_length, settings.limit,
                    include_path=settings.include_path)


QUESTION_SLOT = "{question}"


@contextlib.contextmanager
def templated_questions(template: str | None):
    """Within the `with`, every task's question text (its doc_to_text: the question, its choices
    and the answer cue, as the task writes them) is put into `template` at its {question} slot;
    None changes nothing. lm-eval builds each request's context from doc_to_text and scores the
    answer choices after it, so the task is scored exactly as it is, with the template around the
    question. Patched on lm-eval's configurable task class, which every YAML task is."""
    if template is None:
        yield
        return
    from unittest import mock

    from lm_eval.api.task import ConfigurableTask

    plain = ConfigurableTask.doc_to_text

    def doc_to_text(self, doc, doc_to_text=None):
        text = plain(self, doc, doc_to_text)
        return template.replace(QUESTION_SLOT, text) if isinstance(text, str) else text

    with mock.patch.object(ConfigurableTask, "doc_to_text", doc_to_text):
        yield


@contextlib.contextmanager
def quiet_lm_eval():
    """Keep lm-eval's per-call notices (in-memory model, custom dataset) out of long logs, and its
    git call's complaint out of the terminal (see `quiet_git_hash`)."""
    from unittest import mock

    import lm_eval.evaluator

    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", quiet_git_hash):
            yield
    finally:
        logger.setLevel(level)


def quiet_git_hash() -> str | None:
    """What lm-eval's `get_git_commit_hash` answers (the commit of the working directory's
    checkout, for its results' `git_hash`), without the stderr it leaves open: run outside a git
    checkout, every evaluation printed "fatal: not a git repository"."""
    import subprocess

    try:
        result = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None
