"""The argparse tree of `jit-sidecar`, and the checks of arguments the sidecar would misread."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import flag_name, setting_fields
from .exits import EXIT_CODES, usage_error

#: The first paragraph of the command's help.
DESCRIPTION = "The `jit-sidecar` command: `serve`, and client subcommands for people."
MAX_UINT32 = 2**32 - 1


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file with settings (see docs).")
    for f in setting_fields():
        meta = f.metadata
        if meta["env_only"]:
            continue  # a secret: never a flag (docs/configuration.md)
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"], "default": None}
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        if meta["repeat"]:
            kwargs["action"] = "append"
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if f.type in ("bool", bool):  # `--flag` alone means true; `--flag false` still works
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        parser.add_argument(flag_name(f.name), **kwargs)


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket", help="agent socket (default $JIT_SIDECAR_SOCKET or var/sidecar.sock)"
    )
    parser.add_argument(
        "--identity-token-file", type=Path, help="file holding the caller's JWT-SVID / OIDC token"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def _admin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin-socket",
        help="operator socket (default $JIT_SIDECAR_ADMIN_SOCKET or var/admin.sock)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every subcommand, its flags, and the exit statuses."""
    p = argparse.ArgumentParser(
        prog="jit-sidecar",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"jit-sidecar {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    # No abbreviations: `--broker-postgres-dsn SECRET` must be refused, not taken for
    # `--broker-postgres-dsn-file` (and then echoed in the error naming the file).
    serve = sub.add_parser("serve", help="run the sidecar", allow_abbrev=False)
    _add_serve_flags(serve)

    from ..console.settings import add_flags as add_console_flags

    console = sub.add_parser(
        "console", help="operator: the approvals console, a web page (docs/console.md)"
    )
    add_console_flags(console)
    console.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    console.add_argument("--log-format", choices=("json", "text"), default="text")

    task = sub.add_parser("task", help="begin, heartbeat or complete a task")
    task_sub = task.add_subparsers(dest="task_command", required=True)
    begin = task_sub.add_parser("begin", help="open a task")
    _client_flags(begin)
    begin.add_argument("--goal", default="")
    begin.add_argument("--task-id", default="")
    begin.add_argument("--max-duration", type=int, default=0, help="seconds (0: default)")
    begin.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    begin.add_argument("-q", "--quiet", action="store_true", help="print only the task id")
    begin.add_argument(
        "--subject-token-file",
        type=_token_file,
        default=None,
        metavar="PATH",
        help="the person the task acts for: a file holding their token (docs/delegation.md); "
        "a file, never an argument, so that the token is not in the process list",
    )
    begin.add_argument(
        "--hold",
        action="store_true",
        help="keep the task alive until it ends: a background `task hold` sends its heartbeats "
        "(people type slower than the heartbeat interval; agents use the SDK instead)",
    )
    complete = task_sub.add_parser("complete", help="complete a task (revokes its grants)")
    _client_flags(complete)
    complete.add_argument("task_id")
    complete.add_argument(
        "--outcome", choices=("succeeded", "failed", "errored"), default="succeeded"
    )
    complete.add_argument("--detail", default="")
    beat = task_sub.add_parser("heartbeat", help="send one heartbeat")
    _client_flags(beat)
    beat.add_argument("task_id")
    hold = task_sub.add_parser(
        "hold",
        help="send heartbeats until the task ends (completed, deadline, operator); "
        "Ctrl-C stops, and the task then crashes after its missed heartbeats",
    )
    _client_flags(hold)
    hold.add_argument("task_id")

    grant = sub.add_parser("grant", help="request a grant for one intent")
    _client_flags(grant)
    grant.add_argument("task_id")
    grant.add_argument("action")
    grant.add_argument("resource")
    grant.add_argument("--justification", default="")
    grant.add_argument("--ttl", type=int, default=60, help="requested lifetime in seconds")
    grant.add_argument("--context", default="", help="JSON object for the policy")
    grant.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the token (for scripts); nothing when denied",
    )

    grants = sub.add_parser("grants", help="list a task's grants")
    _client_flags(grants)
    grants.add_argument("task_id")
    grants.add_argument("--all", action="store_true", help="include revoked and expired")

    revoke = sub.add_parser("revoke", help="operator: revoke grants (admin socket)")
    _admin_flags(revoke)
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("grant_id", nargs="?")
    which.add_argument("--task", dest="task_id")
    which.add_argument("--subject", help="kill switch: every grant of this identity")
    which.add_argument("--all", action="store_true", help="every grant of every agent")
    which.add_argument(
        "--principal", help="kill switch: every task acting for this person (sub), by any agent"
    )
    revoke.add_argument("--reason", default="")

    keys = sub.add_parser("keys", help="operator: signing keys (admin socket)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_sub.add_parser(
        "rotate", help="generate a new signing key (or --reload the key file) and use it now"
    )
    _admin_flags(rotate)
    rotate.add_argument(
        "--reload",
        action="store_true",
        help="reload the configured key file instead of generating a key",
    )

    approvals = sub.add_parser("approvals", help="operator: human approvals (admin socket)")
    approvals_sub = approvals.add_subparsers(dest="approvals_command", required=True)
    listing = approvals_sub.add_parser("list", help="pending (and with --all, decided) requests")
    _admin_flags(listing)
    listing.add_argument("--all", action="store_true", help="include decided and expired")
    for verb in ("approve", "deny"):
        decide = approvals_sub.add_parser(verb, help=f"{verb} a pending request")
        _admin_flags(decide)
        decide.add_argument("approval_id")
        decide.add_argument(
            "--reason", required=verb == "deny", default="", help="why (recorded in the audit log)"
        )
        decide.add_argument(
            "--approver", default="", help="who decides (default: the current user)"
        )

    policy = sub.add_parser("policy", help="policy tools")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    explain = policy_sub.add_parser(
        "explain", help="ask the running OPA for the decision on an intent, and why"
    )
    explain.add_argument("action")
    explain.add_argument("resource")
    explain.add_argument("--justification", default="")
    explain.add_argument("--context", default="", help="JSON object (intent.context)")
    explain.add_argument(
        "--subject", default="spiffe://jit.local/agent/dev", help="the agent's workload identity"
    )
    explain.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="identity claims the policy may use",
    )
    explain.add_argument("--goal", default="")
    explain.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    explain.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="ACTION=RESOURCE",
        help="grants the task already holds (for per-task limits); also in its history",
    )
    explain.add_argument(
        "--history",
        action="append",
        default=[],
        metavar="ACTION=RESOURCE",
        help="grants the task was issued that have ended (input.task.history, for flow rules)",
    )
    explain.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="ACTION=RESOURCE",
        help="a step of the task's declared plan (input.task.plan)",
    )
    explain.add_argument(
        "--denials", type=int, default=0, help="denials the task had in the last minute"
    )
    explain.add_argument(
        "--remaining", type=int, default=300, help="seconds left in the task (default 300)"
    )
    explain.add_argument("--ttl", type=int, default=60)
    explain.add_argument(
        "--opa-url", default="", help="default $JIT_SIDECAR_OPA_URL or http://127.0.0.1:8181"
    )
    explain.add_argument("--decision-path", default="/v1/data/jit/decision")
    explain.add_argument("--trace", action="store_true", help="print OPA's full evaluation trace")
    explain.add_argument("--json", action="store_true")

    introspect = sub.add_parser("introspect", help="is this token active? (- reads stdin)")
    _client_flags(introspect)
    introspect.add_argument("token")

    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="check the hash chain, its start, its signed checkpoint and the store",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument(
        "files",
        nargs="+",
        type=Path,
        help="log files in order (rotated ones first); a directory's "
        "rotated files are found from the active file's name",
    )
    verify.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a signed checkpoint to compare with (repeatable; e.g. a copy kept off-host); "
        "default: <active log>.checkpoint when it exists",
    )
    key_source = verify.add_mutually_exclusive_group()
    key_source.add_argument(
        "--jwks",
        metavar="FILE|URL",
        help="the sidecar's JWKS (file, or e.g. http://127.0.0.1:9464/.well-known/jwks.json) "
        "to verify checkpoint signatures; a checkpoint is then required",
    )
    key_source.add_argument(
        "--key",
        type=Path,
        metavar="PEM",
        help="the sidecar's signing key file, instead of --jwks",
    )
    verify.add_argument(
        "--state",
        metavar="[sqlite:]PATH",
        help="the SQLite state store: the last record it applied must be in the log",
    )
    verify.add_argument("--json", action="store_true")
    return p


def check_usage(args: argparse.Namespace) -> None:
    """Refuse arguments the sidecar would misread, before anything is sent."""
    labels: set[str] = set()
    for item in getattr(args, "label", None) or ():
        key, sep, _ = item.partition("=")
        # A label dropped for want of `=` could be the one a policy restricts on (purpose).
        if not sep or not key:
            raise usage_error(f"--label {item!r} is not KEY=VALUE")
        if key in labels:
            raise usage_error(f"--label {key!r} is given twice")
        labels.add(key)
    if args.command == "grant" and not 1 <= args.ttl <= MAX_UINT32:
        raise usage_error(f"--ttl must be a whole number of seconds from 1, got {args.ttl}")
    if args.command == "introspect" and not args.token:
        raise usage_error("introspect needs a token (use - to read it from stdin)")


def _token_file(path: str) -> str:
    """The token a file holds (surrounding whitespace removed); never echoes its content."""
    try:
        token = Path(path).read_text().strip()
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise argparse.ArgumentTypeError(f"{path} is not text") from err
    if not token:
        raise argparse.ArgumentTypeError(f"{path} is empty")
    return token
