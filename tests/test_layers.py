"""The package's shape: the import layers of pyproject.toml hold, no import circle, short modules,
and loading a config (what every command does first) imports neither torch nor transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "peel"
LONGEST_MODULE = 420  # lines: "no module over ~400"


def test_the_import_layers_hold():
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], capture_output=True, text=True,
                            cwd=PACKAGE.parents[1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_no_module_imports_itself_through_others():
    import grimp

    graph = grimp.build_graph("peel")
    circles = []
    for module in sorted(graph.modules):
        # a module that some module it imports leads back to (lazy imports count: grimp reads every import statement)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                circles.append((module, imported))
    assert circles == []


def test_no_module_is_longer_than_about_400_lines():
    lengths = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {name: length for name, length in lengths.items() if length > LONGEST_MODULE} == {}


@pytest.mark.parametrize("code", [
    "from peel.config import load_config; load_config('configs/testbed_lora.yaml')",
    "import peel.outputs.report, peel.outputs.model_card",
])
def test_reading_configs_and_run_folders_imports_no_torch(code):
    check = f"import sys; {code}; print(sorted(m for m in ('torch', 'transformers', 'peft', 'lm_eval') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=PACKAGE.parents[1])  # the repository root, where configs/ is
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
