"""Preparing the socket path: stale sockets are replaced, anything else is refused."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from sidecar.errors import ConfigError
from sidecar.server import prepare_socket_path


def test_creates_the_directory_0750(tmp_path: Path) -> None:
    """A missing parent directory is created with mode 0750 whatever the umask."""
    old = os.umask(0)
    try:
        prepare_socket_path(tmp_path / "run" / "s.sock")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o750


def test_stale_socket_is_removed(tmp_path: Path) -> None:
    """A socket nobody listens on (left by a crash) is replaced."""
    path = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    prepare_socket_path(path)
    assert not path.exists()


def test_live_socket_is_refused(tmp_path: Path) -> None:
    """A socket another process serves on is never taken over."""
    path = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen()
    try:
        with pytest.raises(ConfigError, match="another process is serving"):
            prepare_socket_path(path)
    finally:
        s.close()
    assert path.exists()


def test_regular_file_is_refused(tmp_path: Path) -> None:
    """A regular file at the socket path is not deleted."""
    path = tmp_path / "s.sock"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="is not a socket"):
        prepare_socket_path(path)
    assert path.read_text() == "precious"


def test_world_writable_directory_is_refused(tmp_path: Path) -> None:
    """A world-writable directory without the sticky bit could let others swap the socket."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(ConfigError, match="world-writable"):
        prepare_socket_path(open_dir / "s.sock")
