"""docs/security.md cites tests as proof: every cited `file::test` must exist."""

from __future__ import annotations

import re

from tests.harness import ROOT


def test_every_cited_test_exists() -> None:
    """Each `tests/x.py::test_y` in docs/security.md names a test function of that file, and
    each `::test_y` shorthand one of the file cited before it on the same line."""
    text = (ROOT / "docs/security.md").read_text()
    missing = []
    cited = 0
    for line in text.splitlines():
        current = None
        for match in re.finditer(r"`(tests/[\w/]+\.py)::(test_\w+)`|`::(test_\w+)`", line):
            path, name, short = match.groups()
            if path:
                current = path
            else:
                name = short
            if current is None:
                missing.append(f"::{name} without a file")
                continue
            source = (ROOT / current).read_text() if (ROOT / current).exists() else ""
            cited += 1
            if not re.search(rf"^def {name}\(", source, re.MULTILINE):
                missing.append(f"{current}::{name}")
    assert missing == []
    assert cited >= 60


def test_every_named_test_exists_somewhere() -> None:
    """A test named without its file in docs/security.md exists in some test module."""
    text = (ROOT / "docs/security.md").read_text()
    names = set(re.findall(r"`(test_\w+)`", text))
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    missing = sorted(n for n in names if not re.search(rf"^def {n}\(", sources, re.MULTILINE))
    assert missing == []
    assert len(names) >= 10
