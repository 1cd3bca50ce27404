"""An agent process for GrantStream crash tests and bench/stream_crash.py.

`python -m tests.stream_agent SOCKET [GRANTS]` begins a task through the SDK (which opens
its GrantStream), takes GRANTS standing grants (default 1), prints one JSON line
`{"task_id": ..., "grant_ids": [...]}` (ids, never tokens) and then waits to be killed:
it never completes the task and sends no heartbeats, so only the stream says it is alive.
"""

from __future__ import annotations

import json
import sys
import time

from sidecar.client import AccessClient


def main() -> None:
    socket = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    client = AccessClient(socket)
    task = client.task("stream agent", heartbeats=False).open()
    if task._stream is None:
        raise SystemExit("the sidecar offered no GrantStream")
    ids = [task.grant("docs.read", f"docs://handbook/p{i}").grant_id for i in range(count)]
    print(json.dumps({"task_id": task.task_id, "grant_ids": ids}), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
