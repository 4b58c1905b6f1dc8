"""Multiple-choice questions stored as local JSONL files, turned into datasets lm-eval can read.

Schema of one line: {"prompt": str, "choices": [4 strings], "answer": int}. Loading happens in
Python rather than through a `data_files:` path in YAML because such paths would have to be
absolute, and peel's task YAMLs must work from wherever the package is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

from peel.errors import PeelError, reading

REQUIRED_FIELDS = {"prompt": str, "choices": list, "answer": int}


def read_multiple_choice(path: str | Path) -> list[dict]:
    """Read and check every line of a multiple-choice JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise PeelError(f"multiple-choice file {str(path)!r} does not exist")
    rows = []
    with reading(f"multiple-choice file {str(path)!r}", "UTF-8 JSONL"):
        lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise PeelError(f"{path}:{number} is not valid JSON") from None
        for name, kind in REQUIRED_FIELDS.items():
            if not isinstance(row.get(name), kind):
                raise PeelError(f"{path}:{number} needs field {name!r} of type {kind.__name__}")
        if not 0 <= row["answer"] < len(row["choices"]):
            raise PeelError(f"{path}:{number} has answer {row['answer']} outside its {len(row['choices'])} choices")
        rows.append({name: row[name] for name in REQUIRED_FIELDS})
    if not rows:
        raise PeelError(f"multiple-choice file {str(path)!r} holds no questions")
    return rows


def load_multiple_choice(path: str | Path, fewshot_path: str | Path | None = None):
    """A `DatasetDict` with a `test` split (and a `fewshot` split when given), the form lm-eval's
    `custom_dataset` returns."""
    import datasets

    splits = {"test": path} if fewshot_path is None else {"test": path, "fewshot": fewshot_path}
    return datasets.DatasetDict({name: datasets.Dataset.from_list(read_multiple_choice(file)) for name, file in splits.items()})


def load_scenario_multiple_choice(task: str):
    """The question set behind scenario task `task` (testbed_forget, elements_retain, ...), with
    its own few-shot examples (a `fewshot` split) where the scenario names some."""
    from peel import scenarios

    paths = [scenarios.question_file(task)]
    fewshot = scenarios.fewshot_file(task)
    if fewshot is not None:
        paths.append(fewshot)
    scenario = task.partition("_")[0]
    for path in paths:
        if not path.is_file():
            raise PeelError(f"{scenario} question set {str(path)!r} is missing; build it with `peel {scenario} build`")
    return load_multiple_choice(*paths)
