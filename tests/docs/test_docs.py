"""The README and docs stay true: generated parts fresh, set-up commands first, links whole."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_generated_parts_of_the_readme_are_fresh() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_the_first_two_commands_are_the_whole_set_up() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block[1].splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_relative_links_point_at_files_that_exist() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([\w./-]+\.\w+)(?:#[\w-]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_every_example_the_readme_names_exists() -> None:
    text = (ROOT / "README.md").read_text()
    for path in set(re.findall(r"deploy/examples/[\w.-]+\.yaml", text)):
        assert (ROOT / path).exists(), path
