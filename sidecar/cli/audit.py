"""`jit-sidecar audit verify`: the hash chain, its start, its signed checkpoints and the
state store's applied seq."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..audit import log_files, verify
from ..errors import ConfigError
from .exits import EXIT_FAIL, EXIT_OK, CliError
from .output import show

if TYPE_CHECKING:
    from ..jws import VerifyKey


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
    from ..jws import parse_jwks, verify_key_from_jwk
    from ..tokens import SigningKey, load_private_key

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


def run_audit(args: argparse.Namespace) -> int:
    """Verify the audit log; exit EXIT_FAIL on any break, missing anchor or removed end."""
    from ..checkpoints import CheckpointError, checkpoint_path, coverage, read_checkpoint

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
        show(
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
        show(args, data, "\n".join([*failed, "chain: " + lines[0], *lines[1:]]))
        return EXIT_FAIL
    show(args, data, "\n".join(["OK: " + lines[0], *lines[1:]]))
    return EXIT_OK
