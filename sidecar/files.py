"""Small files replaced whole or not at all (keys, audit checkpoints)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def replace_atomically(path: Path, data: bytes, mode: int) -> None:
    """Make `data` the content of `path`, with `mode` from its first byte: a crash leaves the
    old content or the new one, never a part (temporary file, fsync, rename, fsync of the
    directory so the rename itself survives a power loss)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
