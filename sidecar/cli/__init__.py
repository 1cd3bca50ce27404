"""The `jit-sidecar` command: `serve`, and client subcommands for people.

jit-sidecar serve --identity dev
jit-sidecar task begin --goal "refund order 42" --label purpose=refunds --hold
jit-sidecar grant TASK_ID payments.refund payments://orders/42 --justification "ticket 991"
jit-sidecar grants TASK_ID --all
jit-sidecar task complete TASK_ID
jit-sidecar revoke GRANT_ID | --task TASK_ID | --subject SPIFFE_ID | --principal SUB | --all
jit-sidecar introspect TOKEN
jit-sidecar audit verify var/audit.jsonl --key var/signing-key.pem --state var/state.db
jit-sidecar console --sidecar local=var/admin.sock --oidc-issuer URL --oidc-client-id ID
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..errors import ConfigError
from .agent import run_agent
from .audit import run_audit
from .console import run_console
from .exits import EXIT_CODES, EXIT_DENIED, EXIT_FAIL, EXIT_OK, EXIT_USAGE, CliError
from .explain import run_explain
from .operator import run_operator
from .parser import build_parser, check_usage
from .serve import run_serve

__all__ = [
    "EXIT_CODES",
    "EXIT_DENIED",
    "EXIT_FAIL",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "build_parser",
    "main",
]

#: Commands for operators, sent over the admin socket; the rest go to the agent socket.
OPERATOR_COMMANDS = frozenset({"revoke", "approvals", "keys"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in `argv` (default: sys.argv) and return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return run_serve(args)
        if args.command == "console":
            return run_console(args)
        check_usage(args)
        if args.command == "audit":
            return run_audit(args)
        if args.command == "policy":
            return run_explain(args)
        if args.command in OPERATOR_COMMANDS:
            return run_operator(args)
        return run_agent(args)
    except CliError as err:
        print(f"jit-sidecar: {err.message}", file=sys.stderr)
        return err.code
    except ConfigError as err:
        print(f"jit-sidecar: configuration error: {err.message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as err:
        from ..client import SidecarClientError

        # A file the command was told to read (--identity-token-file, ...) is not there.
        if isinstance(err, SidecarClientError) or (
            isinstance(err, OSError) and args.command != "serve"
        ):
            print(f"jit-sidecar: {err}", file=sys.stderr)
            return EXIT_FAIL
        raise
