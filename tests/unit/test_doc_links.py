"""Every relative link and anchor in README.md and docs/*.md resolves."""

from __future__ import annotations

import re
from pathlib import Path

from tests.harness import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) and [text](target "title"); images too. Inline code is removed first.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose_lines(markdown: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub generates for a document's headings (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    result = set()
    fenced = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        text = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        count = seen.get(text, 0)
        seen[text] = count + 1
        result.add(text if count == 0 else f"{text}-{count}")
    return result


def _links(path: Path) -> list[str]:
    return [m.group(1) for line in _prose_lines(path.read_text()) for m in _LINK.finditer(line)]


def test_anchor_rules_match_github() -> None:
    """Headings become GitHub's anchors: punctuation dropped, spaces to hyphens, duplicates
    numbered, headings inside code blocks ignored."""
    text = "# A, b: `c`!\n## Keys\n```sh\n# not a heading\n```\n## Keys\n"
    assert anchors(text) == {"a-b-c", "keys", "keys-1"}


def test_every_relative_link_and_anchor_resolves() -> None:
    """Each relative link in README.md and docs/*.md names an existing file, and each
    #anchor a heading of the linked Markdown document."""
    broken = []
    checked = 0
    for doc in DOCS:
        for target in _links(doc):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            checked += 1
            file_part, _, anchor = target.partition("#")
            linked = (doc.parent / file_part).resolve() if file_part else doc
            where = f"{doc.relative_to(ROOT)} -> {target}"
            if not linked.exists():
                broken.append(f"{where}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
                broken.append(f"{where}: no such heading")
    assert broken == []
    assert checked >= 30
