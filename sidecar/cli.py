"""The `jit-sidecar` command: `serve`, and client subcommands for people.

jit-sidecar serve --identity dev
jit-sidecar task begin --goal "refund order 42" --label purpose=refunds --hold
jit-sidecar grant TASK_ID payments.refund payments://orders/42 --justification "ticket 991"
jit-sidecar grants TASK_ID --all
jit-sidecar task complete TASK_ID
jit-sidecar revoke GRANT_ID | --task TASK_ID | --subject SPIFFE_ID | --all
jit-sidecar introspect TOKEN
jit-sidecar audit verify var/audit.jsonl --key var/signing-key.pem --state var/state.db
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from . import __version__
from .audit import log_files, verify
from .config import Config, flag_name, load
from .errors import ConfigError

if TYPE_CHECKING:
    from .jws import VerifyKey

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DENIED = 0, 1, 2, 3
EXIT_CODES = """exit status:
  0  success (a grant granted, a token active, an audit log intact)
  1  error: the sidecar refused or is unreachable, a token is inactive, the audit log
     does not verify
  2  usage error: bad arguments (nothing was sent)
  3  denied: the policy denied the grant, or it waits for human approval"""
MAX_UINT32 = 2**32 - 1


class CliError(Exception):
    """Stops a command with `jit-sidecar: <message>` on stderr and exit status `code`."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _usage(message: str) -> CliError:
    return CliError(message, EXIT_USAGE)


#: `task hold` gives up after the sidecar has been unreachable this long (seconds): by then
#: the task has missed its heartbeats and is crashed anyway.
HOLD_GIVE_UP = 30.0


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file with settings (see docs).")
    for f in fields(Config):
        meta = f.metadata
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
    p = argparse.ArgumentParser(
        prog="jit-sidecar",
        description=__doc__.split("\n\n")[0],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"jit-sidecar {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the sidecar")
    _add_serve_flags(serve)

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


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)


def _msg(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def _access_client(args: argparse.Namespace) -> Any:
    from .client import AccessClient

    token = args.identity_token_file.read_text().strip() if args.identity_token_file else None
    return AccessClient(args.socket, identity_token=token)


def _run_serve(args: argparse.Namespace) -> int:
    from . import logs
    from .server import serve

    overrides = {f.name: getattr(args, f.name) for f in fields(Config)}
    config = load(overrides, env=os.environ, config_file=args.config)
    logs.setup(config.log_level, config.log_format)
    if config.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(config))
    else:
        asyncio.run(serve(config))
    return EXIT_OK


def _run_client(args: argparse.Namespace) -> int:
    from .client import AccessDenied, AdminClient, ApprovalPending

    if args.command == "task":
        with _access_client(args) as client:
            if args.task_command == "begin":
                labels = dict(item.split("=", 1) for item in args.label if "=" in item)
                task = client.begin_task(
                    args.goal, task_id=args.task_id, labels=labels, max_duration=args.max_duration
                )
                holder = _spawn_holder(args, task.task_id) if args.hold else None
                if args.quiet:
                    print(task.task_id)
                    return EXIT_OK
                _print(
                    args,
                    _msg(task) | ({"holder_pid": holder} if holder else {}),
                    f"task {task.task_id} active until {task.deadline.ToJsonString()} "
                    + (
                        f"(held by process {holder} until it ends)"
                        if holder
                        else f"(heartbeat every {task.heartbeat_interval_seconds} s)"
                    ),
                )
            elif args.task_command == "complete":
                _stop_holders(args.task_id)
                done = client.complete_task(args.task_id, args.outcome, args.detail)
                _print(
                    args,
                    _msg(done),
                    f"task {args.task_id} completed ({args.outcome}); "
                    f"{done.revoked_grants} grant(s) revoked",
                )
            elif args.task_command == "hold":
                return _hold(client, args.task_id)
            else:
                beat = client.heartbeat(args.task_id)
                _print(
                    args,
                    _msg(beat),
                    f"task {args.task_id} alive until {beat.next_heartbeat_before.ToJsonString()}",
                )
        return EXIT_OK
    if args.command == "grant":
        context = _json_object(args.context, "--context") if args.context else None
        with _access_client(args) as client:
            try:
                grant = client.request_grant(
                    args.task_id,
                    args.action,
                    args.resource,
                    justification=args.justification,
                    ttl_seconds=args.ttl,
                    context=context,
                )
            except AccessDenied as denied:
                if args.quiet:
                    print("DENIED: " + "; ".join(denied.reasons), file=sys.stderr)
                    return EXIT_DENIED
                _print(
                    args,
                    {"decision": "DENIED", "reasons": denied.reasons},
                    "DENIED\n" + "\n".join(f"  - {r}" for r in denied.reasons),
                )
                return EXIT_DENIED
            except ApprovalPending as pending:
                _print(
                    args,
                    {
                        "decision": "PENDING_APPROVAL",
                        "approval_id": pending.approval_id,
                        "reasons": pending.reasons,
                    },
                    f"PENDING_APPROVAL {pending.approval_id}",
                )
                return EXIT_DENIED
        if args.quiet:
            print(grant.token)
            return EXIT_OK
        tier = "standing" if grant.tier == 1 else "jit"
        _print(
            args,
            _msg(grant),
            f"GRANTED {tier} grant {grant.grant_id}, scope {' '.join(grant.scope)}, "
            f"audience {grant.audience}, expires {grant.expires_at.ToJsonString()}\n"
            f"token: {grant.token}",
        )
        return EXIT_OK
    if args.command == "grants":
        with _access_client(args) as client:
            items = client.list_grants(args.task_id, include_inactive=args.all)
        lines = [
            f"{g.grant_id}  {_state(g.state):8s} {g.intent.action} {g.intent.resource}  "
            f"expires {g.expires_at.ToJsonString()}"
            + (f"  ({g.revocation_reason})" if g.revocation_reason else "")
            for g in items
        ]
        _print(args, [_msg(g) for g in items], "\n".join(lines) or "(no grants)")
        return EXIT_OK
    if args.command == "introspect":
        from_stdin = args.token == "-"  # noqa: S105
        token = sys.stdin.read().strip() if from_stdin else args.token
        if not token:
            raise _usage("introspect needs a token (it was empty)")
        with _access_client(args) as client:
            result = client.introspect(token)
        _print(
            args,
            _msg(result) | {"active": result.active},
            "active"
            if result.active
            else "inactive"
            + (f" ({result.revocation_reason})" if result.revocation_reason else ""),
        )
        return EXIT_OK if result.active else EXIT_FAIL
    if args.command == "revoke":
        with AdminClient(args.admin_socket) as admin:
            count = admin.revoke(
                grant_id=args.grant_id or "",
                task_id=args.task_id or "",
                subject=args.subject or "",
                everything=args.all,
                reason=args.reason,
            )
        _print(args, {"revoked_grants": count}, f"{count} grant(s) revoked")
        return EXIT_OK
    if args.command == "approvals":
        with AdminClient(args.admin_socket) as admin:
            if args.approvals_command == "list":
                items = admin.list_approvals(include_decided=args.all)
                lines = [
                    f"{a.approval_id}  {_APPROVAL_STATES.get(a.state, '?'):8s} "
                    f"{a.subject}  {a.intent.action} {a.intent.resource}  "
                    f"task {a.task_id}  expires {a.expires_at.ToJsonString()}\n"
                    f"    justification: {a.intent.justification!r}\n"
                    + "".join(f"    - {r}\n" for r in a.reasons)
                    for a in items
                ]
                _print(args, [_msg(a) for a in items], "".join(lines).rstrip() or "(no approvals)")
                return EXIT_OK
            approver = args.approver or getpass.getuser()
            decided = admin.decide_approval(
                args.approval_id,
                approve=args.approvals_command == "approve",
                reason=args.reason,
                approver=approver,
            )
        _print(
            args,
            _msg(decided),
            f"approval {decided.approval_id} {_APPROVAL_STATES.get(decided.state, '?')} "
            f"by {approver}",
        )
        return EXIT_OK
    if args.command == "keys":
        with AdminClient(args.admin_socket) as admin:
            rotated = admin.rotate_signing_key(reload_from_file=args.reload)
        text = f"signing key {rotated.kid} is current"
        if rotated.previous_kid:
            text += (
                f"; {rotated.previous_kid} stays in the JWKS until "
                f"{rotated.previous_retires_at.ToJsonString()}"
            )
        _print(args, _msg(rotated), text)
        return EXIT_OK
    raise AssertionError(args.command)


def _spawn_holder(args: argparse.Namespace, task_id: str) -> int:
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


def _stop_holders(task_id: str) -> None:
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


def _hold(client: Any, task_id: str) -> int:
    """Heartbeat `task_id` until it is no longer active (exit 0) or the sidecar stays
    unreachable for HOLD_GIVE_UP seconds (exit 1)."""
    import time

    from .client import SidecarRpcError, SidecarUnavailable, TaskEnded

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


_APPROVAL_STATES = {1: "pending", 2: "approved", 3: "denied", 4: "expired", 5: "used"}


def _run_policy_explain(args: argparse.Namespace) -> int:
    """Ask OPA as the sidecar would (same input builder, same client and checks, so `unix://`
    OPA URLs work too); exit EXIT_DENIED on a deny, EXIT_FAIL when there is no usable
    decision."""
    import time

    from .errors import InvalidArgument, PolicyError
    from .identity import trust_domain_of
    from .model import Grant, GrantState, Identity, Intent, Task, Tier
    from .policy import OpaClient, build_input

    def pairs(items: list[str]) -> list[tuple[str, str]]:
        return [(k, v) for k, _, v in (item.partition("=") for item in items if "=" in item)]

    now = time.time()
    try:
        identity = Identity(
            args.subject, trust_domain_of(args.subject), "explain", "", dict(pairs(args.claim))
        )
        context = json.loads(args.context) if args.context else {}
    except ValueError as err:
        print(f"jit-sidecar: {err}", file=sys.stderr)
        return EXIT_USAGE
    task = Task(
        "t-explain", args.subject, args.goal, dict(pairs(args.label)), now, now + args.remaining, 0
    )
    held = [
        Grant("", task.task_id, args.subject, a, r, Tier.JIT, "", (), now, now, "")
        for a, r in pairs(args.grant)
    ]
    ended = [
        Grant("", task.task_id, args.subject, a, r, Tier.JIT, "", (), now, now, "")
        for a, r in pairs(args.history)
    ]
    for grant in ended:
        grant.state, grant.end_reason = GrantState.EXPIRED, "expired"
    for _ in range(args.denials):
        task.flow.record_denial(now - 1)
    intent = Intent(args.action, args.resource, args.justification, context)
    try:
        # As the sidecar would: a non-canonical resource never reaches the policy.
        task.flow.plan = tuple(Intent(a, r) for a, r in pairs(args.plan))
        policy_input = build_input(identity, intent, task, held, args.ttl, now)
    except InvalidArgument as err:
        print(f"jit-sidecar: {err} (refused before the policy is asked)", file=sys.stderr)
        return EXIT_USAGE
    url = args.opa_url or os.environ.get("JIT_SIDECAR_OPA_URL") or "http://127.0.0.1:8181"

    async def ask() -> tuple[Any, dict[str, Any]]:
        client = OpaClient(url, args.decision_path, 10.0)
        try:
            # As the sidecar would have: each earlier grant carries the labels the policy
            # gave its intent, and the task holds them all.
            for grant in ended + held:
                alone = Task("t-explain", args.subject, "", {}, now, now + 60, 0)
                earlier = Intent(grant.action, grant.resource)
                given = await client.decide(build_input(identity, earlier, alone, [], 0, now))
                grant.flow_labels = given.flow.labels if given.flow else ()
                task.flow.record_grant(grant)
            policy_input["task"] |= task.flow.as_input()
            return await client.explain(policy_input, trace=args.trace)
        finally:
            await client.aclose()

    try:
        decision, body = asyncio.run(ask())
    except ValueError as err:  # an OPA URL the client cannot use
        print(f"jit-sidecar: --opa-url: {err}", file=sys.stderr)
        return EXIT_USAGE
    except PolicyError as err:
        print(f"jit-sidecar: no usable decision from OPA at {url}: {err}", file=sys.stderr)
        return EXIT_FAIL
    except InvalidArgument as err:  # a --grant or --history resource
        print(f"jit-sidecar: {err} (refused before the policy is asked)", file=sys.stderr)
        return EXIT_USAGE
    verdict = EXIT_OK if decision.allow else EXIT_DENIED
    raw = body["result"]
    if args.json:
        print(
            json.dumps(
                {
                    "input": policy_input,
                    "decision": raw,
                    "decision_id": decision.decision_id,
                    "metrics": body.get("metrics", {}),
                },
                indent=2,
                sort_keys=True,
            )
        )
        return verdict
    word = "ALLOW" if decision.allow else "DENY"
    if decision.allow and decision.approval_required:
        word = "ALLOW after human approval"
    print(f"{word}  {args.subject} → {args.action} {args.resource}")
    for key in ("tier", "ttl_seconds", "audience", "scope", "cache_seconds"):
        if key in raw:
            print(f"  {key}: {raw[key]}")
    for reason in decision.reasons:
        print(f"  - {reason}")
    flow = decision.flow
    if flow is not None:  # which labels the task had, and which flow rule escalated it
        print(f"  flow: class {flow.cls or '-'}, labels {', '.join(flow.labels) or '-'}")
        print(f"  flow: the task held {', '.join(flow.task_labels) or 'no labels'}")
        if flow.rules:
            print(f"  flow: rules fired: {', '.join(flow.rules)}")
        if flow.plan_deviation:
            print("  flow: outside the declared plan")
    if decision.decision_id:
        print(f"  decision_id: {decision.decision_id}")
    eval_ns = body.get("metrics", {}).get("timer_rego_query_eval_ns")
    if eval_ns:
        print(f"  (evaluated in {eval_ns / 1000:.0f} µs)")
    for line in body.get("explanation", []) if args.trace else []:
        print(line)
    return verdict


def _state(value: int) -> str:
    return {1: "active", 2: "revoked", 3: "expired"}.get(value, "unknown")


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise _usage(f"{flag} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise _usage(f"{flag} must be a JSON object ({{...}}), got {type(value).__name__}")
    return value


def _check_usage(args: argparse.Namespace) -> None:
    """Refuse arguments the sidecar would misread, before anything is sent."""
    labels: set[str] = set()
    for item in getattr(args, "label", None) or ():
        key, sep, _ = item.partition("=")
        # A label dropped for want of `=` could be the one a policy restricts on (purpose).
        if not sep or not key:
            raise _usage(f"--label {item!r} is not KEY=VALUE")
        if key in labels:
            raise _usage(f"--label {key!r} is given twice")
        labels.add(key)
    if args.command == "grant" and not 1 <= args.ttl <= MAX_UINT32:
        raise _usage(f"--ttl must be a whole number of seconds from 1, got {args.ttl}")
    if args.command == "introspect" and not args.token:
        raise _usage("introspect needs a token (use - to read it from stdin)")


def _audit_files(given: list[Path]) -> tuple[list[Path], Path, bool]:
    """The files to verify, the active log's path, and whether the files end with it (so
    that a checkpoint past their end means records were removed)."""
    if len(given) == 1 and not given[0].name[-1:].isdigit():
        return log_files(given[0]), given[0], True
    last = given[-1]
    rotated = last.name[-1:].isdigit()
    return list(given), last.with_suffix("") if rotated else last, not rotated


def _checkpoint_keys(args: argparse.Namespace) -> dict[str, VerifyKey] | None:
    """Keys that verify checkpoints (by kid), or None when none were given."""
    from .jws import parse_jwks, verify_key_from_jwk
    from .tokens import SigningKey, load_private_key

    if args.key is not None:
        try:
            key = SigningKey.from_private_key(load_private_key(args.key))
        except ConfigError as err:
            raise CliError(err.message) from None
        return {key.kid: verify_key_from_jwk(key.jwk)}
    if not args.jwks:
        return None
    try:
        if args.jwks.startswith(("http://", "https://")):
            import requests

            response = requests.get(args.jwks, timeout=10)
            response.raise_for_status()
            raw = response.content
        else:
            raw = Path(args.jwks).read_bytes()
        keys, _skipped = parse_jwks(raw)
    except Exception as err:  # requests, OS and JSON errors: all mean no keys
        raise CliError(f"cannot read the JWKS {args.jwks}: {err}") from None
    return dict(keys)


def _store_applied_seq(state: str) -> int:
    """The last audit record the SQLite store applied (its `meta` row, sidecar.store.sqlite),
    read without writing anything."""
    import sqlite3

    path = Path(state.removeprefix("sqlite:"))
    if state.startswith(("redis://", "rediss://")) or not path.is_file():
        raise CliError(f"--state {state}: no SQLite store there")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'applied_seq'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise CliError(f"--state {state}: cannot read the store: {err}") from None
    if row is None:
        raise CliError(f"--state {state}: the store records no applied seq")
    return int(row[0])


def _run_audit(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError, checkpoint_path, coverage, read_checkpoint

    paths, active, whole = _audit_files(args.files)
    if not paths:
        raise CliError(f"no audit log at {args.files[0]}")
    keys = _checkpoint_keys(args)
    sources = args.checkpoint or [checkpoint_path(active)]
    checkpoints = []
    problems: list[str] = []
    for source in sources:
        try:
            checkpoints.append(read_checkpoint(source.read_text(), keys))
        except FileNotFoundError:
            if args.checkpoint or keys is not None:
                problems.append(f"no checkpoint at {source}: the end of the log is not anchored")
        except (OSError, UnicodeDecodeError) as err:
            problems.append(f"cannot read the checkpoint {source}: {err}")
        except CheckpointError as err:
            problems.append(f"checkpoint {source}: {err.message}")
    result = verify(paths, at={c.seq for c in checkpoints})
    data: dict[str, Any] = {
        "ok": result.ok,
        "records": result.count,
        "first_seq": result.first_seq,
        "last_seq": result.last_seq,
        "files": [str(p) for p in paths],
    }
    if not result.ok:
        data |= {"file": result.bad_file, "line": result.bad_line, "problem": result.problem}
        where = f" at {result.bad_file}:{result.bad_line}" if result.bad_line else ""
        shown = result.problem if result.bad_line else f"{result.bad_file}: {result.problem}"
        _print(
            args,
            data,
            f"BROKEN{where}: {shown} ({result.count} records verified before it)",
        )
        return EXIT_FAIL
    start = "its genesis" if result.first_seq == 1 else "a log_rotated record"
    lines = [
        f"{result.count} records, chain intact (last seq {result.last_seq}, "
        f"{len(paths)} file(s)), starting at {start} (seq {result.first_seq})"
    ]
    data["checkpoints"] = []
    for checkpoint in checkpoints:
        covered = coverage(result, checkpoint, whole=whole)
        data["checkpoints"].append(covered.as_dict(checkpoint))
        if covered.ok:
            lines.append(covered.text)
        else:
            problems.append(covered.text)
    if not checkpoints and not problems:
        lines.append(
            "no checkpoint: records removed from the end would not be detected "
            "(the sidecar writes <log>.checkpoint; give --jwks or --key to require it)"
        )
    if args.state:
        applied = _store_applied_seq(args.state)
        data["store_applied_seq"] = applied
        if applied > result.last_seq and whole:
            problems.append(
                f"the state store applied record {applied} but the log ends at seq "
                f"{result.last_seq}: records were removed from its end"
            )
        elif applied > result.last_seq:
            lines.append(f"store: applied through seq {applied}, past the files given")
        elif applied < result.last_seq:
            lines.append(
                f"store: applied through seq {applied}; the {result.last_seq - applied} "
                "record(s) after it are replayed at the next start"
            )
        else:
            lines.append(f"store: applied through seq {applied}, as the log says")
    if problems:
        data |= {"ok": False, "problem": "; ".join(problems)}
        failed = [f"FAILED: {p}" for p in problems]
        _print(args, data, "\n".join([*failed, "chain: " + lines[0], *lines[1:]]))
        return EXIT_FAIL
    _print(args, data, "\n".join(["OK: " + lines[0], *lines[1:]]))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _run_serve(args)
        _check_usage(args)
        if args.command == "audit":
            return _run_audit(args)
        if args.command == "policy":
            return _run_policy_explain(args)
        return _run_client(args)
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
        from .client import SidecarClientError

        # A file the command was told to read (--identity-token-file, ...) is not there.
        if isinstance(err, SidecarClientError) or (
            isinstance(err, OSError) and args.command != "serve"
        ):
            print(f"jit-sidecar: {err}", file=sys.stderr)
            return EXIT_FAIL
        raise


if __name__ == "__main__":
    sys.exit(main())
