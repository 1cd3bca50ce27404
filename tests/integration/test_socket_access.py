"""Socket hardening of a real sidecar process: file and directory modes, and that the modes
(not just convention) keep other local users out. Tests run as root, so the unprivileged
caller is a subprocess that drops to `nobody` before connecting."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import load
from sidecar.errors import ConfigError
from tests.harness import OpaServer, SidecarProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user"),
    pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs /usr/bin/python3"),
]
NOBODY = pwd.getpwnam("nobody")
# The unprivileged caller runs the system Python (it cannot reach the root-owned venv). It
# connects and speaks the HTTP/2 preface; exit 0 = the gRPC server answered with SETTINGS,
# 13 = EACCES, 2 = another failure.
SYSTEM_PYTHON = "/usr/bin/python3"
PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except PermissionError:
    sys.exit(13)
except OSError as err:
    print(err); sys.exit(2)
s.sendall(b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
frame = s.recv(9)
sys.exit(0 if len(frame) == 9 and frame[3] == 4 else 2)
"""


def _probe(socket: Path, uid: int, gid: int) -> subprocess.CompletedProcess[str]:
    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return subprocess.run(
        [SYSTEM_PYTHON, "-c", PROBE, str(socket)],
        preexec_fn=drop,
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is 0700, which would hide the
    effect of our own modes)."""
    root = Path(tempfile.mkdtemp(prefix="jit-socket-"))
    root.chmod(0o755)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


def test_other_users_cannot_connect(open_root: Path, opa: OpaServer) -> None:
    """run/ is 0750 and the socket 0660 (root:root): nobody is refused by the directory, and
    still by the socket file when the directory is opened up; a member of the socket's group
    is served."""
    process = SidecarProcess(open_root / "sc", opa.url)
    (open_root / "sc").chmod(0o755)
    process.start()
    try:
        dir_mode = stat.S_IMODE(process.socket.parent.stat().st_mode)
        sock_mode = stat.S_IMODE(process.socket.stat().st_mode)
        behind_dir = _probe(process.socket, NOBODY.pw_uid, NOBODY.pw_gid)
        process.socket.parent.chmod(0o751)  # let others traverse: only the file mode is left
        behind_file = _probe(process.socket, NOBODY.pw_uid, NOBODY.pw_gid)
        process.socket.parent.chmod(0o750)
        group_member = _probe(process.socket, NOBODY.pw_uid, process.socket.stat().st_gid)
    finally:
        process.stop()
    assert dir_mode == 0o750
    assert sock_mode == 0o660
    assert behind_dir.returncode == 13, behind_dir.stdout + behind_dir.stderr
    assert behind_file.returncode == 13, behind_file.stdout + behind_file.stderr
    assert group_member.returncode == 0, group_member.stdout + group_member.stderr


def test_dev_mode_refuses_world_accessible_socket() -> None:
    """Dev identity trusts every caller of the socket, so a socket mode open to every local
    user is a configuration error."""
    with pytest.raises(ConfigError) as err:
        load({"identity": "dev", "socket_mode": "666"})
    assert "socket_mode" in err.value.message
