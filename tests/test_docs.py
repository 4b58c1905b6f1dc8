"""The documentation: the reference pages are what the code generates, the site builds with
`mkdocs build --strict` (every page in nav, every link and anchor resolves), and the pages that map
configs to the research log's tables name every shipped config."""

import re
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).parent.parent
DOCS = REPOSITORY / "docs"


def test_the_reference_pages_are_what_the_code_generates():
    from peel.reference import pages  # imported here: it builds every command's parser

    stale = [name for name, text in pages().items() if (DOCS / "reference" / name).read_text() != text]
    assert stale == [], f"docs/reference/{stale} out of date: run `python -m peel.reference docs/reference`"


def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--config-file", str(REPOSITORY / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, timeout=300, cwd=REPOSITORY,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_experiments_page_maps_every_real_model_config_to_its_table():
    configs = sorted((REPOSITORY / "configs").glob("*.yaml"))
    real = [path.name for path in configs if not path.name.startswith(("testbed_", "elements_"))]
    page = (DOCS / "experiments.md").read_text()
    assert real and [name for name in real if f"`{name}`" not in page] == []


def test_the_readme_is_short_and_its_links_resolve():
    readme = (REPOSITORY / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    targets = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", readme) if "://" not in target]
    assert targets and [target for target in targets if target and not (REPOSITORY / target).exists()] == []


def test_every_results_table_says_where_it_came_from():
    """A results page's table follows its provenance line: the date, and the commit that recorded it
    ("from an earlier commit (HASH)" where no one command reproduces it)."""
    for page in sorted((DOCS / "results").glob("*.md")):
        blocks = page.read_text().split("\n\n")
        for index, block in enumerate(blocks):
            if block.lstrip().startswith("|") and "|---" in block:
                before = "\n\n".join(blocks[max(0, index - 3):index])
                assert re.search(r"\d{4}-\d{2}-\d{2}, (commit `|from an earlier commit \()[0-9a-f]{7}", before), \
                    f"{page.name}: a table without its date and commit:\n{block[:200]}"
