"""Multiple-choice questions stored as local JSONL files, turned into datasets lm-eval can read.

Schema of one line: {"prompt": str, "choices": [4 strings], "answer": int}. Loading happens in
Python rather than through a `data_files:` path in YAML because such paths would have to be
absolute, and peel's task YAMLs must work from wherever the package is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

from peel.errors import PeelError

REQUIRED_FIELDS = {"prompt": str, "choices": list, "answer": int}


def read_multiple_choice(path: str | Path) -> list[dict]:
    """Read and check every line of a multiple-choice JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise PeelError(f"multiple-choice file {str(path)!r} does not exist")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
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


def load_multiple_choice(path: str | Path):
    """A `DatasetDict` with one `test` split, the form lm-eval's `custom_dataset` returns."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(read_multiple_choice(path))})


def load_scenario_multiple_choice(task: str):
    """The question set behind scenario task `task` (testbed_forget, elements_retain, ...)."""
    from peel import scenarios

    path = scenarios.question_file(task)
    if not path.is_file():
        scenario = task.partition("_")[0]
        raise PeelError(f"{scenario} question set {str(path)!r} is missing; build it with `peel {scenario} build`")
    return load_multiple_choice(path)
