"""`jit-sidecar console`: the approvals console, a web page in a process of its own
(docs/console.md)."""

from __future__ import annotations

import argparse
import asyncio

from .exits import EXIT_OK


def run_console(args: argparse.Namespace) -> int:
    """Serve the console until it is stopped."""
    from .. import logs
    from ..console.app import serve as serve_console
    from ..console.settings import from_args

    settings = from_args(args)
    logs.setup(args.log_level or "info", args.log_format)
    asyncio.run(serve_console(settings))
    return EXIT_OK
