"""Real kernel faults on demand, for fault-injection tests: a full disk (a tiny tmpfs) and
files nobody may write (chattr +i, which stops even root's writes through descriptors that are
already open). Both need root; a test that cannot get them fails and says why."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "64k") mounted at `path` for the block: writes past it fail
    with ENOSPC."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(f"this test needs `mount -t tmpfs` (root): {mounted.stderr.decode()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """chattr +i on the existing `paths` for the block: every write fails (EPERM)."""
    done = []
    try:
        for p in paths:
            if p.exists():
                r = subprocess.run(["chattr", "+i", str(p)], capture_output=True, check=False)
                if r.returncode != 0:
                    pytest.fail(f"this test needs chattr +i (root, ext4): {r.stderr.decode()}")
                done.append(p)
        yield
    finally:
        for p in done:
            subprocess.run(["chattr", "-i", str(p)], check=False)
