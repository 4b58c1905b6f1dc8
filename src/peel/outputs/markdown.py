"""Markdown pieces every output shares: a table from rows, and what each known task is called."""

from __future__ import annotations

# Which side of the trade-off each known task measures.
TASK_ROLES = {"wmdp_bio_robust": "forget", "testbed_forget": "forget", "elements_forget": "forget",
              "mmlu": "retain", "testbed_retain": "retain", "elements_retain": "retain"}
TASK_TITLES = {"wmdp_bio_robust": "WMDP Bio Robust", "mmlu": "MMLU", "testbed_forget": "Forget", "testbed_retain": "Retain",
               "elements_forget": "Elements", "elements_retain": "Countries"}


def table(rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("-" * (len(cell) + 2) for cell in rows[0]) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows[1:]]
