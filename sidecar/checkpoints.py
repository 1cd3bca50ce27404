"""Signed checkpoints of the audit log: the end of the chain, anchored outside it.

A hash chain shows that a log is consistent from its start, never that records were cut
from its end. In the spirit of Certificate Transparency's signed tree head (RFC 6962 §3.5),
the sidecar signs the seq, hash and time of its last synced record every
`audit_checkpoint_interval` seconds (when the log grew) and once more at shutdown, with the
key that signs its tokens, and keeps the newest in `<audit log>.checkpoint`. The checkpoint is
a compact JWS with the token key's `kid`, so the JWKS verifies it, and its own `typ`, so no
resource server takes it for an access token (RFC 8725 §3.11). `audit verify` fails when the
log is shorter than a checkpoint says, or holds another record at its seq.

Not detected: records cut after the newest checkpoint (at most one interval's worth), and a
log rewritten together with its checkpoint by someone holding the signing key. A copy of
the checkpoint kept elsewhere also catches both files rolled back together
(docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import jws
from .audit import FILE_MODE, AuditFile, AuditWriteError, Head, VerifyResult
from .clock import Clock, rfc3339
from .files import replace_atomically
from .tokens import SigningKey

log = logging.getLogger("jit_sidecar.checkpoints")
CHECKPOINT_TYPE = "jit-audit-checkpoint+jwt"
ALGORITHMS = frozenset({"EdDSA", "ES256"})
"""What the sidecar signs with (config SIGNING_ALGS)."""
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class CheckpointError(Exception):
    """A checkpoint that cannot be read, or whose signature does not verify."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a checkpoint vouches for: the log's record `seq` had hash `hash` at `signed_at`."""

    seq: int
    hash: str
    signed_at: float
    kid: str
    issuer: str
    verified: bool
    """True when its signature was checked against a key given to the reader."""


def checkpoint_path(audit_log: Path) -> Path:
    """Where the sidecar keeps the newest checkpoint of the log at `audit_log`."""
    return audit_log.with_name(audit_log.name + ".checkpoint")


def sign_checkpoint(key: SigningKey, *, issuer: str, head: Head, at: float) -> str:
    claims = {"iss": issuer, "iat": int(at), "seq": head.seq, "hash": head.hash}
    return key.sign_typed(claims, CHECKPOINT_TYPE)


def read_checkpoint(token: str, keys: Mapping[str, jws.VerifyKey] | None) -> Checkpoint:
    """Parse a checkpoint and, when `keys` (by kid) are given, verify its signature.

    The JOSE rules are those of every other token the sidecar reads (sidecar.jws): an
    algorithm allow-list, no key references in the header, no `crit`.
    """
    try:
        parsed = jws.parse(token.strip())
        alg = jws.check_header(parsed.header, ALGORITHMS)
        kid = jws.kid_of(parsed.header)
        if parsed.header.get("typ") != CHECKPOINT_TYPE:
            raise CheckpointError(f"not an audit checkpoint (typ is not {CHECKPOINT_TYPE})")
        if keys is not None:
            key = keys.get(kid)
            if key is None:
                raise CheckpointError(f"signed by kid {kid}, which none of the given keys has")
            jws.verify_signature(parsed, alg, key)
    except jws.JwsError as err:
        raise CheckpointError(err.message) from err
    claims = parsed.claims
    seq, digest, iat, iss = (claims.get(k) for k in ("seq", "hash", "iat", "iss"))
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise CheckpointError("the checkpoint has no usable seq")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        raise CheckpointError("the checkpoint has no usable hash")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise CheckpointError("the checkpoint has no usable iat")
    return Checkpoint(seq, digest, float(iat), kid, str(iss or ""), keys is not None)


@dataclass(frozen=True, slots=True)
class Coverage:
    """How a verified chain relates to one checkpoint."""

    ok: bool
    status: str
    """covered, rewritten, truncated, beyond (files given end before it) or before."""
    text: str
    uncovered: int = 0
    """Records after the checkpoint (covered only)."""

    def as_dict(self, checkpoint: Checkpoint) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "status": self.status,
            "seq": checkpoint.seq,
            "signed_at": rfc3339(checkpoint.signed_at),
            "kid": checkpoint.kid,
            "signature_verified": checkpoint.verified,
            "uncovered_records": self.uncovered,
            "detail": self.text,
        }


def coverage(result: VerifyResult, checkpoint: Checkpoint, *, whole: bool) -> Coverage:
    """Compare an intact chain (`verify(…, at=[checkpoint.seq])`) with a checkpoint.

    `whole`: the files end with the active log, so a checkpoint past their end means records
    were removed from it (with only rotated files given, it lies in a later file).
    """
    by = f"signed at {rfc3339(checkpoint.signed_at)} by kid {checkpoint.kid}"
    if not checkpoint.verified:
        by += " (signature not checked: give --jwks or --key)"
    found = result.found.get(checkpoint.seq)
    if found is not None:
        if found.hash != checkpoint.hash:
            return Coverage(
                False,
                "rewritten",
                f"record {checkpoint.seq} ({found.file}:{found.line}) is not the one the "
                f"checkpoint {by} names: the log was rewritten",
            )
        after = result.last_seq - checkpoint.seq
        return Coverage(
            True,
            "covered",
            f"records {result.first_seq}..{checkpoint.seq} covered by a checkpoint {by}; "
            f"{after} record(s) after it are not yet covered",
            after,
        )
    if checkpoint.seq > result.last_seq:
        if whole:
            return Coverage(
                False,
                "truncated",
                f"the log ends at seq {result.last_seq} but a checkpoint {by} covers seq "
                f"{checkpoint.seq}: records were removed from its end",
            )
        return Coverage(
            True,
            "beyond",
            f"a checkpoint {by} covers seq {checkpoint.seq}, past the files given "
            f"(they end at seq {result.last_seq}); give the later files to compare",
        )
    return Coverage(
        True,
        "before",
        f"a checkpoint {by} covers seq {checkpoint.seq}, before the first record given "
        f"(seq {result.first_seq}); nothing to compare",
    )


def _sync(path: Path) -> None:
    # With --durability flush the records are written but maybe not on disk yet: a
    # checkpoint must never cover records a power loss could take. (A record rotated away
    # meanwhile was synced by the rotation.)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Writes a signed checkpoint of the audit log every `interval` seconds when the log
    grew, and at stop. Failing to write one is logged and retried: the log itself, not the
    checkpoint, stands between a request and its token."""

    def __init__(
        self,
        audit: AuditFile,
        key: Callable[[], SigningKey],
        *,
        interval: float,
        issuer: str,
        clock: Clock,
    ) -> None:
        self.path = checkpoint_path(audit.path)
        self._audit = audit
        self._key = key
        self._interval = interval
        self._issuer = issuer
        self._clock = clock
        self._written: Head | None = None
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        """One write at a time: a cancelled loop's write may still run in its thread when
        stop() writes, and the later write must read (and leave) the later head."""

    async def start(self) -> None:
        """Refuse a log shorter than its checkpoint; checkpoint it now, then periodically."""
        await asyncio.to_thread(self._check_log)
        await asyncio.to_thread(self.write)
        self._task = asyncio.create_task(self._run(), name="audit-checkpoints")

    async def stop(self) -> None:
        """Stop the loop and checkpoint the end of the log. Call it after the journal has
        written its last batch, so that the checkpoint covers every record."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.to_thread(self.write)
        except Exception:  # shutdown goes on; the log itself is complete
            log.exception("final audit checkpoint failed")

    def write(self) -> bool:
        """Sign and store a checkpoint of the last record, unless it has one already."""
        with self._lock:
            return self._write()

    def _write(self) -> bool:
        # Only what the log's own fsync made durable: a record appended after it (an AuthZEN
        # decision within its SYNC_WINDOW) is cut away if that fsync fails, and a checkpoint
        # covering it would then leave the log shorter than its checkpoint.
        head = self._audit.synced  # one read: seq and hash of the same record
        if head.seq == 0 or head == self._written:
            return False
        key = self._key()
        try:
            _sync(self._audit.path)
            token = sign_checkpoint(key, issuer=self._issuer, head=head, at=self._clock.now())
            replace_atomically(self.path, token.encode("ascii") + b"\n", FILE_MODE)
        except OSError as err:
            if not self._failing:
                log.error(
                    "cannot write the audit checkpoint %s: %s (retrying)",
                    self.path,
                    err.strerror or err,
                    extra={"reason": "audit_unavailable"},
                )
            self._failing = True
            return False
        if self._failing:
            log.info("audit checkpoint %s written again", self.path)
        self._failing = False
        self._written = head
        log.debug("audit checkpoint at seq %d", head.seq, extra={"kid": key.kid})
        return True

    def _check_log(self) -> None:
        try:
            token = self.path.read_text()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as err:
            raise AuditWriteError(f"cannot read the audit checkpoint {self.path}: {err}") from err
        try:
            checkpoint = read_checkpoint(token, None)
        except CheckpointError as err:
            raise AuditWriteError(
                f"{self.path} is not an audit checkpoint ({err.message}); run `jit-sidecar "
                "audit verify` and remove it before starting"
            ) from None
        head = self._audit.head
        if checkpoint.seq == head.seq and checkpoint.hash != head.hash:
            raise AuditWriteError(
                f"the last record of the audit log {self._audit.path} is not the one its "
                f"checkpoint {self.path} names: was the log replaced? Run `jit-sidecar audit "
                "verify` before starting."
            )
        if checkpoint.seq > head.seq:
            raise AuditWriteError(
                f"the audit checkpoint {self.path} covers record {checkpoint.seq} but the log "
                f"{self._audit.path} ends at {head.seq}: was the log truncated or "
                "replaced? Run `jit-sidecar audit verify` before starting."
            )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await asyncio.to_thread(self.write)
            except Exception:  # a bug here must not end checkpointing for good
                log.exception("audit checkpoint failed")
