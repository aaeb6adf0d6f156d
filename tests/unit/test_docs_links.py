"""Every link between the project's Markdown files resolves: the file, and the #anchor as GitHub
renders headings into anchors."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]"  # [text], one level of [] inside
                   r"\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")  # (target "title")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def documents() -> list[Path]:
    """The Markdown files whose links are checked: the top level's and everything under docs/."""
    top = sorted(ROOT.glob("*.md"))
    return top + sorted((ROOT / "docs").rglob("*.md"))


def _prose_lines(text: str) -> Iterator[str]:
    """The lines outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation and symbols dropped
    (letters, digits, '-' and '_' kept), spaces turned into hyphens."""
    text = _LINK.sub(lambda match: match.group(1), heading)
    text = _INLINE_CODE.sub(lambda match: match.group(2), text)
    kept = [char for char in text.lower()
            if char in " -_" or unicodedata.category(char)[0] in "LNM"]
    return "".join(kept).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor of a document's headings, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in _prose_lines(text):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> Iterator[str]:
    """The targets of a document's inline links and images, code left out."""
    for line in _prose_lines(text):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            yield match.group(2).strip("<>")


def broken_links(document: Path) -> list[str]:
    """The links of one document that lead nowhere, each with the reason."""
    broken = []
    own_anchors = anchors(document.read_text(encoding="utf-8"))
    for target in links(document.read_text(encoding="utf-8")):
        if _EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (document.parent / path_part).resolve() if path_part else document
        if not resolved.exists():
            broken.append(f"{target}: no such file")
            continue
        if not anchor:
            continue
        if resolved.suffix != ".md" or resolved.is_dir():
            broken.append(f"{target}: an anchor into something other than a Markdown file")
            continue
        targets = own_anchors if resolved == document else anchors(
            resolved.read_text(encoding="utf-8"))
        if anchor not in targets:
            broken.append(f"{target}: no heading with that anchor")
    return broken


@pytest.mark.parametrize("document", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_resolves(document: Path) -> None:
    assert broken_links(document) == []


def test_the_documents_include_the_readme_and_the_docs() -> None:
    names = {str(path.relative_to(ROOT)) for path in documents()}
    assert {"README.md", "docs/performance.md", "docs/benchmarks/README.md"} <= names


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Where it runs: Linux", "where-it-runs-linux"),
    ("Ownership: a request belongs to the key that submitted it",
     "ownership-a-request-belongs-to-the-key-that-submitted-it"),
    ("`titanic bench --compare` (2026-11-25, at commit 251135b)",
     "titanic-bench---compare-2026-11-25-at-commit-251135b"),
    ("Measured 2026-12-07, 06:02–06:23 UTC", "measured-2026-12-07-06020623-utc"),
    ("The [store](store.md) and its *API*", "the-store-and-its-api"),
    ("CPU per job, µs", "cpu-per-job-µs"),
    ("snake_case names", "snake_case-names"),
])
def test_slug_follows_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_repeated_headings_are_numbered() -> None:
    text = "# Notes\n\n## Figures\n\n## Figures\n\n```sh\n# a comment, not a heading\n```\n"
    assert anchors(text) == {"notes", "figures", "figures-1"}


def test_broken_files_and_anchors_are_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## Kept section\n", encoding="utf-8")
    document = tmp_path / "doc.md"
    document.write_text(
        "# Doc\n\n## Here\n\n"
        "[fine](other.md#kept-section), [self](#here), [site](https://example.com/x#y)\n"
        "[gone](missing.md), [wrong](other.md#lost-section), [nowhere](#there)\n"
        "`[in code](missing-too.md)`\n\n```md\n[fenced](missing-three.md)\n```\n",
        encoding="utf-8")
    assert broken_links(document) == [
        "missing.md: no such file",
        "other.md#lost-section: no heading with that anchor",
        "#there: no heading with that anchor",
    ]
