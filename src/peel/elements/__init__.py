"""The `elements` scenario: real knowledge in a real model.

Forget domain: the chemical elements (symbol, atomic number, name from symbol, atomic mass), split
into part A (evaluated; the text unlearning removes) and a disjoint part B (text for the tamper
attack only). Retain domain: countries (capital, continent, currency, language). Facts come from
packages (`periodictable`, `countryinfo`, `pycountry`); only those SmolLM2-135M-Instruct answers
in every phrasing are kept. `elements:NAME` strings resolve through `peel.scenarios` to the files
in `artifacts/`, which `peel elements build` regenerates.
"""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

# elements name -> model name resolved by peel.models (there is no filtered SmolLM2)
MODELS = {"base": "smollm2-135m"}

# elements name -> path inside the artifacts folder
NAMES = {
    "forget": "forget.jsonl",  # text about the elements of part A
    "retain": "retain.jsonl",  # text about the countries
    "tamper": "tamper.jsonl",  # text about the elements of part B (the attack's data)
}

# lm-eval task name -> multiple-choice file, rows {"prompt", "choices" (4), "answer" (index)}
MC_FILES = {
    "elements_forget": str(ARTIFACTS / "forget_mc.jsonl"),
    "elements_retain": str(ARTIFACTS / "retain_mc.jsonl"),
}
