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
}

# lm-eval task name -> multiple-choice file, rows {"prompt", "choices" (4), "answer" (index)}
MC_FILES = {
    "testbed_forget": str(ARTIFACTS / "forget_mc.jsonl"),
    "testbed_retain": str(ARTIFACTS / "retain_mc.jsonl"),
}
