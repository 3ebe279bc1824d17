"""Every ```python block of the README and docs/ runs, in order, one namespace per page."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_code_blocks_run(page):
    blocks = BLOCK.findall(page.read_text())
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"{page.name}, python block {number}", "exec")
        exec(code, namespace)


def test_pages_have_code():
    assert sum(len(BLOCK.findall(page.read_text())) for page in PAGES) >= 8


def test_readme_first_block_is_the_two_setup_commands():
    first = re.search(r"^```\w*\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    lines = first.group(1).strip().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("python -m weightnorm demo")
    assert "pytest" in lines[1]
