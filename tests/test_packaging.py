"""peel as an installed package, outside a clone: the wheel holds what the commands read (the
configs `peel demo` runs are package data, src/peel/configs; a clone's configs/ links to them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGED_CONFIGS = REPOSITORY / "src" / "peel" / "configs"

# Run in the unpacked wheel, from a folder that is not a clone: where peel and the demo's configs
# come from, and that each of them loads.
OUTSIDE = """
import sys
from pathlib import Path
import peel
from peel.commands.demo import SCENARIOS, demo_config
from peel.config import load_config
site = Path(sys.argv[1]).resolve()
assert Path(peel.__file__).resolve().is_relative_to(site), peel.__file__
for name, scenario in SCENARIOS.items():
    path = Path(demo_config(None, scenario, name))
    assert path.resolve().is_relative_to(site), path
    assert load_config(path).model.name_or_path == scenario.base
full = Path(demo_config("configs/testbed_full.yaml", SCENARIOS["testbed"], "testbed"))
assert full.resolve().is_relative_to(site) and load_config(full).unlearn.adapter == "full"
print("outside a clone: ok")
"""


def test_the_top_level_configs_folder_is_a_link_to_the_packaged_ones():
    link = REPOSITORY / "configs"
    assert link.is_symlink() and link.resolve() == PACKAGED_CONFIGS.resolve()


def test_the_wheel_holds_every_config_and_the_demo_runs_from_it_outside_a_clone(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the working tree
    shutil.copytree(REPOSITORY / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPOSITORY / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", str(source), "-w", str(tmp_path / "wheel")],
        check=True, capture_output=True, timeout=600,
    )
    (wheel,) = (tmp_path / "wheel").glob("peel-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"peel/configs/{path.relative_to(PACKAGED_CONFIGS)}" for path in PACKAGED_CONFIGS.rglob("*") if path.is_file()}
    assert "peel/configs/testbed_lora.yaml" in configs and "peel/configs/keywords/bio_terms.txt" in configs
    assert sorted(configs - names) == []

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel installs by unpacking
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {**os.environ, "PYTHONPATH": str(site)}
    completed = subprocess.run([sys.executable, "-c", OUTSIDE, str(site)], cwd=elsewhere, env=environment,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "outside a clone: ok" in completed.stdout
