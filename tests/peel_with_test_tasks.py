"""`python -m peel` with the testbed evaluation tasks reading the small question sets in
tests/fixtures: for torchrun workers, which a pytest monkeypatch does not reach."""

import sys
from pathlib import Path

from peel import testbed
from peel.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "evaluation"
testbed.MC_FILES.update(testbed_forget=str(FIXTURES / "forget_mc.jsonl"), testbed_retain=str(FIXTURES / "retain_mc.jsonl"))
raise SystemExit(main(sys.argv[1:]))
