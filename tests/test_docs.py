"""The README and every page of docs/ are tested, so no example can rot.

The rules for every page, enforced here:

- Every ```python block runs, in page order, one namespace per page. There is
  no way to skip a python block.
- Only shell and text blocks (```bash, ```console, ```shell, ```sh, ```text)
  are not executed. A fence with any other language, or none, fails the test.
- A ```text block right after a python block (blank lines only between them)
  is that block's expected result: what it prints, or, when the block raises,
  `ExceptionType: message` exactly as Python shows the error's last line.
- A python block without such a text block must not raise.
- Every page of docs/ is in the mkdocs nav and every nav entry is a page, so
  no page is orphaned; the README's links into docs/ point at pages.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import re
import sys
import textwrap
import types
from typing import NamedTuple

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
NOT_EXECUTED = frozenset({"bash", "console", "shell", "sh", "text"})
# A fence opens with ``` or ~~~ (possibly indented, e.g. inside an admonition) and an
# info string, and closes with the same fence at the same indentation.
FENCE = re.compile(
    r"^(?P<indent>[ ]*)(?P<fence>```|~~~)(?P<info>[^\n`~]*)\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ ]*$",
    re.MULTILINE | re.DOTALL,
)


class Block(NamedTuple):
    language: str
    code: str
    line: int
    start: int  # offset of the opening fence
    end: int  # offset just past the closing fence


def _blocks(text: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(text):
        info = match["info"].strip().lstrip("{").lstrip(".")
        language = info.split()[0].rstrip("}") if info else ""
        code = textwrap.dedent(match["body"])
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(language, code, line, match.start(), match.end()))
    return blocks


def _cases(text: str) -> list[tuple[Block, str | None]]:
    """(python block, its expected text or None) for every python block of a page."""
    blocks = _blocks(text)
    cases = []
    for index, block in enumerate(blocks):
        if block.language != "python":
            continue
        expected = None
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        if following is not None and following.language == "text":
            if not text[block.end : following.start].strip():
                expected = following.code
        cases.append((block, expected))
    return cases


def _name(page: pathlib.Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _shown(error: BaseException) -> str:
    """The error as the last line of Python's traceback shows it, without notes."""
    cls = type(error)
    name = cls.__qualname__
    if cls.__module__ not in ("builtins", "__main__"):
        name = f"{cls.__module__}.{name}"
    return f"{name}: {error}" if str(error) else name


def _clean(output: str) -> str:
    return "\n".join(line.rstrip() for line in output.strip().splitlines())


@pytest.fixture
def page_module(request):
    """A module for one page's code, in `sys.modules` as a script's `__main__` would be
    (Haiku looks up the module of a class it names)."""
    module = types.ModuleType(f"docs_{request.node.callspec.id.replace('/', '_')}")
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


@pytest.mark.parametrize("page", PAGES, ids=[_name(page) for page in PAGES])
def test_code_blocks_run(page, page_module):
    text = page.read_text()
    namespace = page_module.__dict__
    for block, expected in _cases(text):
        where = f"{_name(page)}, python block at line {block.line}"
        stdout = io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout):
                exec(compile(block.code, where, "exec"), namespace)
        except Exception as error:
            shown = _shown(error)
            if expected is None:
                raise AssertionError(f"{where} raised {shown}") from error
            assert _clean(shown) == _clean(expected), f"{where} raised:\n{shown}"
            continue
        if expected is not None:
            printed = stdout.getvalue()
            assert _clean(printed) == _clean(expected), f"{where} printed:\n{printed}"


@pytest.mark.parametrize("page", PAGES, ids=[_name(page) for page in PAGES])
def test_fences_are_python_or_shell_or_text(page):
    for block in _blocks(page.read_text()):
        allowed = block.language == "python" or block.language in NOT_EXECUTED
        assert allowed, (
            f"{_name(page)}, line {block.line}: a ```{block.language} block. Use ```python "
            f"(executed) or one of {sorted(NOT_EXECUTED)} (shown, not executed)."
        )


def test_the_block_parser_pairs_code_with_its_output():
    text = (
        "```python\nprint(1)\n```\n\n```text\n1\n```\n"
        "  ```python\n  x = 2\n  ```\nprose\n```text\nnot output\n```\n"
        "~~~python\nraise ValueError\n~~~\n~~~text\nValueError\n~~~\n"
    )
    cases = _cases(text)
    assert [(block.code, expected) for block, expected in cases] == [
        ("print(1)\n", "1\n"),
        ("x = 2\n", None),
        ("raise ValueError\n", "ValueError\n"),
    ]
    assert [block.language for block in _blocks("```\nx\n```\n```py\ny\n```\n")] == ["", "py"]


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    return []


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = [page for page in _nav_pages(config["nav"]) if "://" not in page]
    pages = sorted(page.relative_to(DOCS).as_posix() for page in DOCS.rglob("*.md"))
    assert len(nav) == len(set(nav)), "a page is listed twice in the mkdocs nav"
    assert sorted(set(pages) - set(nav)) == [], "pages missing from the nav in mkdocs.yml"
    assert sorted(set(nav) - set(pages)) == [], "nav entries in mkdocs.yml without a page"


def test_readme_links_into_docs_exist():
    links = re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text())
    assert links, "the README links into the docs"
    assert [link for link in links if not (ROOT / link).is_file()] == []


def test_pages_have_code():
    # Guards the parser: if it stopped finding blocks, every page would pass vacuously.
    assert sum(len(_cases(page.read_text())) for page in PAGES) >= 50


def test_readme_first_block_is_the_two_setup_commands():
    first = _blocks((ROOT / "README.md").read_text())[0]
    lines = first.code.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("python -m weightnorm demo")
    assert "pytest" in lines[1]
