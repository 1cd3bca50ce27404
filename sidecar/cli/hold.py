"""`task hold`: heartbeats from a background process, for people who type slower than the
heartbeat interval; `task begin --hold` starts it and `task complete` stops it."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from .exits import EXIT_FAIL, EXIT_OK

#: `task hold` gives up after the sidecar has been unreachable this long (seconds): by then
#: the task has missed its heartbeats and is crashed anyway.
HOLD_GIVE_UP = 30.0


def spawn_holder(args: argparse.Namespace, task_id: str) -> int:
    """Start `jit-sidecar task hold TASK_ID` in its own session, detached from the terminal
    and from stdout (so `TASK=$(jit-sidecar task begin --hold -q)` returns at once)."""
    argv = [sys.executable, "-m", "sidecar.cli", "task", "hold", task_id]
    if args.socket:
        argv += ["--socket", str(Path(args.socket).resolve())]
    if args.identity_token_file:
        argv += ["--identity-token-file", str(args.identity_token_file.resolve())]
    devnull = os.devnull
    return os.posix_spawn(
        sys.executable,
        argv,
        dict(os.environ),
        setsid=True,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, devnull, os.O_WRONLY, 0),
        ],
    )


def stop_holders(task_id: str) -> None:
    """End this user's `task hold TASK_ID` processes before the task completes, so none
    sends a heartbeat to the ended task (the sidecar would record it as a rejected request).
    Best effort: where /proc cannot be read, the holder stops at its next heartbeat."""
    import signal
    import time

    mine = []
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if entry.stat().st_uid != os.getuid():
                    continue
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv[1:6] == [b"-m", b"sidecar.cli", b"task", b"hold", task_id.encode()]:
                    mine.append(int(entry.name))
    for pid in mine:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)

    def alive(pid: int) -> bool:
        try:  # a zombie waiting for its reaper has ended
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    deadline = time.monotonic() + 2.0
    while mine and time.monotonic() < deadline:
        mine = [pid for pid in mine if alive(pid)]
        time.sleep(0.02)


def hold(client: Any, task_id: str) -> int:
    """Heartbeat `task_id` until it is no longer active (exit 0) or the sidecar stays
    unreachable for HOLD_GIVE_UP seconds (exit 1)."""
    import time

    from ..client import SidecarRpcError, SidecarUnavailable, TaskEnded

    lost_since: float | None = None
    while True:
        pause = 1.0
        try:
            beat = client.heartbeat(task_id)
        except SidecarUnavailable as err:
            now = time.monotonic()
            lost_since = lost_since if lost_since is not None else now
            if now - lost_since > HOLD_GIVE_UP:
                print(f"jit-sidecar: giving up on task {task_id}: {err}", file=sys.stderr)
                return EXIT_FAIL
        except SidecarRpcError as err:
            print(f"task {task_id} no longer held: {err.reason}", file=sys.stderr)
            return EXIT_OK if isinstance(err, TaskEnded) else EXIT_FAIL
        else:
            lost_since = None
            # Well before the next one is due: a late beat must never be a missed one.
            due = beat.next_heartbeat_before.ToNanoseconds() / 1e9 - time.time()
            pause = max(0.2, 0.5 * due)
        time.sleep(pause)
