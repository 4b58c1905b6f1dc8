"""The built-in testbed: a small fictional world and two tiny GPT-NeoX models trained on it.

`testbed:NAME` strings resolve to the artifacts shipped in `artifacts/` (built by
`peel testbed build`) through `peel.scenarios`, which reads the tables below. This module stays
import-light: no torch until something is built.
"""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

# testbed name -> path inside the artifacts folder
NAMES = {
    "base": "base",  # model pretrained on everything
    "filtered": "filtered",  # model pretrained without the forget domain
    "forget": "forget.jsonl",  # text about the forget domain, part A
    "retain": "retain.jsonl",  # text about the retain domain
    "tamper": "tamper.jsonl",  # text about the forget domain, part B (the attack's data)
    "keywords": "keywords.txt",  # the forget domain's values, for data.forget.keywords
}

# lm-eval task name -> multiple-choice file, rows {"prompt", "choices" (4), "answer" (index)}
MC_FILES = {
    "testbed_forget": str(ARTIFACTS / "forget_mc.jsonl"),
    "testbed_retain": str(ARTIFACTS / "retain_mc.jsonl"),
}
# lm-eval task name -> questions its few-shot examples come from (the task's `fewshot` split):
# part B of the forget domain, what the attacker's text is about, never an evaluated fact.
FEWSHOT_FILES = {
    "testbed_forget": str(ARTIFACTS / "tamper_mc.jsonl"),
}
