"""`jit-sidecar serve`: the settings from flags, environment and file, then the server."""

from __future__ import annotations

import argparse
import asyncio
import os

from ..config import load, setting_fields
from .exits import EXIT_OK


def run_serve(args: argparse.Namespace) -> int:
    """Run the sidecar until it is stopped."""
    from .. import logs
    from ..server import serve

    overrides = {f.name: getattr(args, f.name, None) for f in setting_fields()}  # env-only: None
    config = load(overrides, env=os.environ, config_file=args.config)
    logs.setup(config.log_level, config.log_format)
    if config.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(config))
    else:
        asyncio.run(serve(config))
    return EXIT_OK
