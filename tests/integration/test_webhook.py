"""The approval webhook against a real aiohttp server on a loopback port: retries (stamina,
in its test mode so no wait is real), the signature format, and giving up."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import stamina
from aiohttp import web

from sidecar.approvals import Approval, WebhookNotifier
from sidecar.model import Intent, PolicyDecision, Tier
from tests.fakes import ManualClock

SECRET = b"webhook-secret-0123456789abcdef"


def _approval() -> Approval:
    decision = PolicyDecision(
        True, Tier.JIT, True, 60, "payments", ("payments.refund",), ("big",), 0
    )
    intent = Intent("payments.refund", "payments://orders/42", "duplicate charge", {"amount": 5000})
    return Approval("ap-1", "t-1", "spiffe://t/agent/a", intent, "h", 60, decision, 0.0, 600.0)


async def _deliver(statuses: list[int], attempts: int = 3) -> tuple[WebhookNotifier, list[Any]]:
    """Serve `statuses` in order (then 204) and send one approval; the requests received."""
    received: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=statuses.pop(0) if statuses else 204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    clock = ManualClock()
    notifier = WebhookNotifier(
        f"http://127.0.0.1:{port}/hook", SECRET, clock=clock, attempts=attempts
    )
    try:
        with stamina.set_testing(True, attempts=attempts):
            notifier.notify(_approval())
            await notifier.drain()
    finally:
        await notifier.aclose()
        await runner.cleanup()
    return notifier, received


def test_fails_twice_then_accepts_with_the_same_signed_body() -> None:
    """Two 503s, then 204: three POSTs of the identical body, each signed
    `sha256=HMAC(secret, "<timestamp>.<body>")` with the injected clock's time; delivered."""
    notifier, received = asyncio.run(_deliver([503, 503]))
    bodies = {body for _, body in received}
    (body,) = bodies
    expected = "sha256=" + hmac.new(SECRET, b"1800000000." + body, hashlib.sha256).hexdigest()
    assert len(received) == 3
    assert [h["X-JIT-Timestamp"] for h, _ in received] == ["1800000000"] * 3
    assert [h["X-JIT-Signature"] for h, _ in received] == [expected] * 3
    assert json.loads(body)["approval_id"] == "ap-1"
    assert (notifier.delivered, notifier.failed) == (1, 0)


def test_gives_up_after_its_attempts() -> None:
    """A receiver that keeps failing gets exactly `attempts` POSTs; the delivery counts as
    failed, never as delivered."""
    notifier, received = asyncio.run(_deliver([500, 502, 503, 504]))
    assert len(received) == 3
    assert (notifier.delivered, notifier.failed) == (0, 1)


def test_a_refusal_is_not_retried() -> None:
    """A 4xx other than 429 (the receiver refuses this request) is final: one POST."""
    notifier, received = asyncio.run(_deliver([401]))
    assert len(received) == 1
    assert (notifier.delivered, notifier.failed) == (0, 1)
