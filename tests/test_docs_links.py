"""Every relative link of README.md, BENCHMARKS.md and docs/*.md reaches a file of the repository,
and its anchor, when it names one in a Markdown page, a heading of that page (GitHub's slugs). Fast:
files only, no network, no rendering."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+).*?\1")
# [text](target) and ![alt](target); the text may hold one level of brackets, the target no space.
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced blocks, numbered from 1, with their code spans blanked."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, _CODE_SPAN.sub("", line)))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose(page.read_text(encoding="utf-8")):
        heading = _HEADING.match(line)
        if not heading:
            continue
        base = slug(heading[2])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """The relative links of a page (no scheme, no mail), with their line."""
    return [
        (number, match[1])
        for number, line in _prose(page.read_text(encoding="utf-8"))
        for match in _LINK.finditer(line)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", match[1], re.IGNORECASE)
    ]


def broken(page: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with a page's relative links, one line each."""
    problems = []
    for number, target in links(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / unquote(path_part)).resolve() if path_part else page
        where = f"{page.relative_to(root)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file")
        elif not resolved.is_relative_to(root):
            problems.append(f"{where}: outside the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading #{anchor} in {resolved.relative_to(root)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    assert broken(page) == []


def test_every_docs_page_is_in_the_index() -> None:
    index = ROOT / "docs" / "README.md"
    listed = {(index.parent / target.partition("#")[0]).resolve() for _, target in links(index)}
    pages = {page.resolve() for page in (ROOT / "docs").glob("*.md") if page != index}
    assert pages - listed == set()


def test_the_checks_catch_what_they_should(tmp_path: Path) -> None:
    assert slug("The whole life: simulation, `placement`, dispatch") == (
        "the-whole-life-simulation-placement-dispatch"
    )
    assert slug("Operators' actions") == "operators-actions"
    (tmp_path / "README.md").write_text("# A README\n")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "probe.md"
    page.write_text(
        "# Probe\n## Twice\n## Twice\n"
        "[ok](#twice-1) [ok](../README.md) [gone](nowhere.md) [bad](#nope)"
        " ![img](missing.png) `[in code](nowhere.md)` [web](https://example.com/x.md)\n"
        "```\n[fenced](nowhere.md)\n```\n"
    )
    problems = broken(page, root=tmp_path)
    assert [problem.split(": ", 1)[1] for problem in problems] == [
        "nowhere.md: no such file",
        "#nope: no heading #nope in docs/probe.md",
        "missing.png: no such file",
    ]
