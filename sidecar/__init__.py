"""jit-sidecar: just-in-time, scoped, short-lived credentials for AI agents."""

from __future__ import annotations

__version__ = "0.1.0"
