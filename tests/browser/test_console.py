"""The approvals console in a real browser: Debian's Chromium, headless, driven by Playwright,
against a real `jit-sidecar console` process, a real sidecar process and the real OPA binary,
with people signing in through a real OIDC issuer (tests/oidc_issuer.py) over HTTP.

Figures (page load, how fast a request appears, the approve round trip) are printed, never
asserted (docs/performance.md). UPDATE_SCREENSHOTS=1 writes the screenshots of the main
screens into docs/img/ (docs/console.md); otherwise they go to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from playwright import sync_api as playwright_sync

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar._proto.jit.v1 import access_pb2_grpc as pb_grpc
from sidecar.client import AccessClient, AdminClient, socket_target
from tests.harness import ROOT, ConsoleProcess, OpaServer, SidecarProcess
from tests.oidc_issuer import OidcIssuer

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / ".tools/axe/node_modules/axe-core/axe.min.js"
SCREENSHOTS = ROOT / "docs/img"
AGENT = "spiffe://jit.local/agent/dev"
CLIENT_ID = "jit-console"

POLICY = """
package jit

default decision := {"allow": false, "reasons": ["default_deny: not in the test catalog"]}

decision := {
	"allow": true,
	"tier": "jit",
	"approval_required": input.intent.context.amount > 1000,
	"four_eyes": true,
	"owners": ["alice@example.com"],
	"ttl_seconds": 120,
	"audience": "payments",
	"scope": [input.intent.action],
	"reasons": [
		"tier_approval: refunds above 1000 need a human",
		sprintf("amount: %v is above the 1000 limit", [input.intent.context.amount]),
	],
	"cache_seconds": 0,
} if input.intent.action == "payments.refund"

decision := {
	"allow": true,
	"tier": "standing",
	"approval_required": false,
	"ttl_seconds": 300,
	"audience": "docs",
	"scope": [input.intent.action],
	"reasons": ["standing_read: docs are readable while the task runs"],
	"cache_seconds": 0,
} if input.intent.action == "docs.read"
"""

USERS = {
    "alice": {"sub": "u-alice", "email": "alice@example.com", "groups": ["approvers"]},
    "bob": {"sub": "u-bob", "email": "bob@example.com", "groups": ["approvers"]},
    "victor": {"sub": "u-victor", "email": "victor@example.com", "groups": ["viewers"]},
    "olga": {"sub": "u-olga", "email": "olga@example.com", "groups": ["operators", "viewers"]},
}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Stack:
    """OPA, a sidecar, an OIDC issuer and the console, all real processes or servers."""

    def __init__(self, opa: OpaServer, sidecar: SidecarProcess, issuer: OidcIssuer) -> None:
        self.opa = opa
        self.sidecar = sidecar
        self.issuer = issuer
        self.console: ConsoleProcess | None = None
        self.shots: Path = sidecar.workdir

    @property
    def url(self) -> str:
        assert self.console is not None
        return self.console.url

    def agent(self) -> AccessClient:
        return AccessClient(self.sidecar.socket)

    def pending(self) -> list[Any]:
        with AdminClient(self.sidecar.admin_socket) as admin:
            return admin.list_approvals()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make test` (scripts/bootstrap.sh chromium)")
    root = tmp_path_factory.mktemp("console")
    policies = root / "policies"
    policies.mkdir()
    (policies / "test.rego").write_text(POLICY)
    opa = OpaServer(root, policy_dirs=[policies]).start()
    sidecar = SidecarProcess(root / "sidecar", opa.url).start()
    issuer = OidcIssuer()
    issuer.users = USERS
    issuer.start()
    token_file = root / "dev-token"
    token_file.write_text("dev-token-0123456789abcdef\n")
    stack = Stack(opa, sidecar, issuer)
    console = ConsoleProcess(root / "console", {"local": sidecar.admin_socket})
    issuer.clients[CLIENT_ID] = console.url + "/login/callback"
    console.extra = [
        "--oidc-issuer",
        issuer.url,
        "--oidc-client-id",
        CLIENT_ID,
        "--role-map",
        "approvers=approver",
        "--role-map",
        "viewers=viewer",
        "--role-map",
        "operators=operator",
        "--dev-token-file",
        str(token_file),
        "--dev-user",
        "dev@localhost",
        "--poll-interval",
        "0.3",
    ]
    stack.console = console.start()
    stack.shots = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else root
    try:
        yield stack
    finally:
        console.stop()
        sidecar.stop(timeout=15)
        issuer.stop()
        opa.stop()


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    """Pages in fresh browser contexts (separate cookie jars: separate people)."""
    contexts: list[Any] = []

    def make(**options: Any) -> Any:
        context = browser.new_context(viewport={"width": 1100, "height": 820}, **options)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def sign_in(stack: Stack, page: Any, user: str) -> float:
    """The OIDC login as a person does it; returns the approvals page's load time (ms)."""
    page.goto(stack.url + "/")
    assert page.url.endswith("/login")
    page.get_by_role("link", name="Sign in with SSO").click()
    page.get_by_label("User name").fill(user)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(stack.url + "/")
    page.get_by_role("heading", name="Pending approvals").wait_for()
    return load_ms(page)


def load_ms(page: Any) -> float:
    nav = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
    entry = json.loads(nav)
    return float(entry["loadEventEnd"] - entry["startTime"])


def begin(stack: Stack, goal: str, **labels: str) -> str:
    with stack.agent() as agent:
        return str(agent.begin_task(goal, labels=labels, max_duration=600).task_id)


def ask_refund(stack: Stack, task_id: str, amount: int) -> pb.RequestGrantResponse:
    with stack.agent() as agent:
        return agent.request_grant_raw(
            task_id,
            "payments.refund",
            f"payments://orders/{amount}",
            justification="customer ticket 4711: double charge",
            context={"amount": amount},
            ttl_seconds=60,
        )


def read_docs(stack: Stack, task_id: str) -> pb.RequestGrantResponse:
    with stack.agent() as agent:
        return agent.request_grant_raw(
            task_id, "docs.read", "docs://handbook/refunds", ttl_seconds=120
        )


def await_approval(stack: Stack, approval_id: str, timeout: float) -> pb.RequestGrantResponse:
    with grpc.insecure_channel(socket_target(stack.sidecar.socket)) as channel:
        stub = pb_grpc.AccessServiceStub(channel)
        response = stub.AwaitApproval(
            pb.AwaitApprovalRequest(approval_id=approval_id), timeout=timeout
        )
        return response.result


def card(page: Any, approval_id: str) -> Any:
    return page.locator(f"#approval-{approval_id}")


def shown(page: Any, approval_id: str) -> Any:
    """The request's card, once the page shows it (live: nobody reloads)."""
    item = card(page, approval_id)
    item.wait_for(timeout=10_000)
    return item


def shot(stack: Stack, page: Any, name: str) -> None:
    page.screenshot(path=str(stack.shots / f"console-{name}.png"))


def test_request_appears_live_and_approver_approves(stack: Stack, new_page: Any) -> None:
    """A new request appears without a reload, with its reasons, task and grants so far; an
    approver approves it and the agent's AwaitApproval returns GRANTED, audited as theirs."""
    page = new_page()
    load = sign_in(stack, page, "bob")
    task_id = begin(stack, "refund a double charge", ticket="4711", purpose="refunds")
    assert read_docs(stack, task_id).decision == pb.DECISION_GRANTED
    asked = time.perf_counter()
    pending = ask_refund(stack, task_id, 5000)
    assert pending.decision == pb.DECISION_PENDING_APPROVAL
    item = shown(page, pending.approval_id)
    appeared = (time.perf_counter() - asked) * 1000
    text = item.inner_text()
    for expected in (
        AGENT,
        "refund a double charge",
        "ticket=4711",
        "customer ticket 4711: double charge",
        "tier_approval: refunds above 1000 need a human",
        "amount: 5000 is above the 1000 limit",
        "docs.read",
        "alice@example.com",
    ):
        assert expected in text, expected
    assert page.locator("#pending-count").inner_text() == "1"
    shot(stack, page, "approvals")

    result: dict[str, Any] = {}

    def agent_waits() -> None:
        result["answer"] = await_approval(stack, pending.approval_id, 30)
        result["at"] = time.perf_counter()

    waiter = threading.Thread(target=agent_waits)
    waiter.start()
    item.get_by_label("Comment (optional)").fill("matches ticket 4711")
    clicked = time.perf_counter()
    item.get_by_role("button", name="Approve").click()
    page.get_by_role("status").filter(has_text=f"Approved {pending.approval_id}").wait_for()
    confirmed = (time.perf_counter() - clicked) * 1000
    waiter.join(30)
    assert result["answer"].decision == pb.DECISION_GRANTED
    round_trip = (result["at"] - clicked) * 1000
    decided = stack.sidecar.events("approval_decided")[-1]
    assert decided["approval_id"] == pending.approval_id
    assert decided["approver"] == "bob@example.com"
    assert decided["approved"] is True
    assert decided["reason"] == "matches ticket 4711"
    print(
        f"\nconsole figures: approvals page load {load:.0f} ms; request visible "
        f"{appeared:.0f} ms after RequestGrant; approve click to GRANTED at the agent "
        f"{round_trip:.0f} ms (page confirms in {confirmed:.0f} ms)"
    )


def settle(stack: Stack, task_id: str) -> None:
    """Deny what a test left pending and end its task, so the next one starts clean."""
    with AdminClient(stack.sidecar.admin_socket) as admin:
        for approval in admin.list_approvals():
            admin.decide_approval(
                approval.approval_id, approve=False, reason="test cleanup", approver="cleanup"
            )
    with stack.agent() as agent:
        agent.complete_task(task_id)


def csrf_of(page: Any) -> str:
    return str(page.locator("input[name=csrf]").first.get_attribute("value"))


def post_decision(page: Any, stack: Stack, approval_id: str, **headers: str) -> Any:
    """A decision POSTed with the page's cookies but without its form (what a crafted
    request, or a person with another role, would send)."""
    form = {"sidecar": "local", "approval_id": approval_id, "verdict": "approve", "reason": "x"}
    if "csrf" not in headers:
        form["csrf"] = csrf_of(page)
    headers.pop("csrf", None)
    return page.request.post(
        stack.url + "/approvals/decide",
        form=form,
        headers={"Origin": stack.url, **headers},
        max_redirects=0,
    )


def test_four_eyes_owner_cannot_approve_but_may_deny(stack: Stack, new_page: Any) -> None:
    """When the policy says four-eyes, the agent's owner sees no Approve button, and the
    sidecar itself refuses their approval (PERMISSION_DENIED four_eyes); they may deny,
    and the agent's AwaitApproval answers DENIED with their name and comment."""
    page = new_page()
    sign_in(stack, page, "alice")
    task_id = begin(stack, "refund for a friend")
    pending = ask_refund(stack, task_id, 2500)
    item = shown(page, pending.approval_id)
    assert item.get_by_role("button", name="Approve").count() == 0
    assert item.get_by_role("button", name="Deny").count() == 1
    assert "you answer for this agent" in item.inner_text()
    response = post_decision(page, stack, pending.approval_id)
    body = response.text()
    assert response.status == 403
    assert "four_eyes" in body
    assert pending.approval_id in [a.approval_id for a in stack.pending()]
    page.goto(stack.url + "/")
    item.get_by_label("Comment (optional)").fill("not without a second look")
    item.get_by_role("button", name="Deny").click()
    page.get_by_role("status").filter(has_text=f"Denied {pending.approval_id}").wait_for()
    answer = await_approval(stack, pending.approval_id, 10)
    assert answer.decision == pb.DECISION_DENIED
    assert list(answer.reasons) == ["approval_denied: alice@example.com: not without a second look"]
    settle(stack, task_id)


def test_viewer_cannot_approve(stack: Stack, new_page: Any) -> None:
    """A viewer sees the request but no Approve or Deny button, and the console refuses
    their crafted approval (403 role_missing): the request stays pending."""
    page = new_page()
    sign_in(stack, page, "victor")
    task_id = begin(stack, "refund seen by a viewer")
    pending = ask_refund(stack, task_id, 3000)
    item = shown(page, pending.approval_id)
    assert item.get_by_role("button").count() == 0
    assert "deciding needs the approver role" in item.inner_text()
    response = post_decision(page, stack, pending.approval_id)
    body = response.text()
    assert response.status == 403
    assert "role_missing" in body
    assert pending.approval_id in [a.approval_id for a in stack.pending()]
    settle(stack, task_id)


class Attacker:
    """Another origin serving a page whose form posts to the console by itself."""

    def __init__(self, target: str, approval_id: str) -> None:
        page = (
            "<!doctype html><html><body><form id=f method=post action="
            f'"{target}/approvals/decide"><input name=sidecar value=local>'
            f"<input name=approval_id value={approval_id}><input name=verdict value=approve>"
            "</form><script>document.getElementById('f').submit()</script></body></html>"
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        # `localhost` is another site than `127.0.0.1` for the browser.
        self.url = f"http://localhost:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_csrf_from_another_origin_fails(stack: Stack, new_page: Any) -> None:
    """A signed-in approver lured to another site approves nothing: the browser withholds
    the SameSite=Strict cookie, a forged Origin is refused (csrf_origin), and a request
    without the session's CSRF token is refused (csrf_token)."""
    page = new_page()
    sign_in(stack, page, "bob")
    task_id = begin(stack, "refund an attacker wants")
    pending = ask_refund(stack, task_id, 9000)
    attacker = Attacker(stack.url, pending.approval_id)
    try:
        lure = page.context.new_page()
        lure.goto(attacker.url)
        lure.wait_for_url(stack.url + "/approvals/decide")
        refused = lure.content()
        assert "not_signed_in" in refused or "csrf_origin" in refused
    finally:
        attacker.close()
    forged = post_decision(page, stack, pending.approval_id, Origin="http://evil.example")
    forged_body = forged.text()
    assert forged.status == 403
    assert "csrf_origin" in forged_body
    tokenless = post_decision(page, stack, pending.approval_id, csrf="")
    tokenless_body = tokenless.text()
    assert tokenless.status == 403
    assert "csrf_token" in tokenless_body
    assert pending.approval_id in [a.approval_id for a in stack.pending()]
    assert not [
        e
        for e in stack.sidecar.events("approval_decided")
        if e["approved"] and e["approval_id"] == pending.approval_id
    ]
    settle(stack, task_id)


def test_keyboard_only_approve(stack: Stack, new_page: Any) -> None:
    """The approve flow works with the keyboard alone: skip link, Tab to the comment,
    type, Tab to Approve, Enter; the agent's AwaitApproval returns GRANTED."""
    page = new_page()
    sign_in(stack, page, "bob")
    task_id = begin(stack, "refund by keyboard")
    pending = ask_refund(stack, task_id, 1200)
    shown(page, pending.approval_id)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    comment = f"approval-{pending.approval_id}-reason"
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == comment:
            break
    assert page.evaluate("document.activeElement.id") == comment
    page.keyboard.type("checked by keyboard")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Approve"
    page.keyboard.press("Enter")
    page.get_by_role("status").filter(has_text=f"Approved {pending.approval_id}").wait_for()
    answer = await_approval(stack, pending.approval_id, 20)
    assert answer.decision == pb.DECISION_GRANTED
    decided = stack.sidecar.events("approval_decided")[-1]
    assert (decided["approver"], decided["reason"]) == ("bob@example.com", "checked by keyboard")


def test_audit_story_complete_and_verified(stack: Stack, new_page: Any) -> None:
    """After a task that needed an approval ends, its story in the console runs from
    begin to the last revocation, and the hash chain is shown verified."""
    page = new_page()
    sign_in(stack, page, "bob")
    task_id = begin(stack, "refund with a story", ticket="5150")
    assert read_docs(stack, task_id).decision == pb.DECISION_GRANTED
    pending = ask_refund(stack, task_id, 4000)
    item = shown(page, pending.approval_id)
    item.get_by_role("button", name="Approve").click()
    page.get_by_role("status").filter(has_text=f"Approved {pending.approval_id}").wait_for()
    assert await_approval(stack, pending.approval_id, 20).decision == pb.DECISION_GRANTED
    with stack.agent() as agent:
        assert agent.complete_task(task_id).revoked_grants == 2
    page.get_by_role("link", name="Audit").click()
    page.get_by_label("Task id").fill(task_id)
    page.get_by_role("button", name="Search").click()
    assert "Chain verified" in page.locator(".chain").inner_text()
    page.get_by_role("link", name=task_id).first.click()
    page.get_by_role("heading", name=f"Story of task {task_id}").wait_for()
    story = page.locator("ol.story").inner_text()
    for event in ("task_begun", "grant_pending", "approval_decided", "task_completed"):
        assert event in story, event
    assert story.count("grant_issued") == 2
    assert story.count("grant_revoked") == 2
    assert page.locator("#story-status").inner_text() == (
        "Complete: from begin to the last revocation."
    )
    assert "Chain verified" in page.locator(".chain").inner_text()
    shot(stack, page, "audit")


def test_kill_switch_from_the_ui(stack: Stack, new_page: Any) -> None:
    """An operator sees the agent's live grants with their TTL, uses the kill switch behind
    its confirmation, and the agent's token is inactive at once; an approver has no kill
    switch and the console refuses it to them (role_missing)."""
    task_id = begin(stack, "read the handbook", purpose="support")
    granted = read_docs(stack, task_id)
    assert granted.decision == pb.DECISION_GRANTED
    approver = new_page()
    sign_in(stack, approver, "bob")
    approver.goto(stack.url + "/live")
    assert approver.get_by_role("button", name=f"Kill switch: revoke all of {AGENT}").count() == 0
    refused = approver.request.get(stack.url + f"/revoke?sidecar=local&what=subject&target={AGENT}")
    refused_body = refused.text()
    assert refused.status == 403
    assert "role_missing" in refused_body

    page = new_page()
    sign_in(stack, page, "olga")
    page.get_by_role("link", name="Live").click()
    page.get_by_role("heading", name="Live tasks and grants").wait_for()
    row = page.get_by_role("row").filter(has_text=granted.grant.grant_id)
    assert "left" in row.locator("time[data-expires]").inner_text()
    shot(stack, page, "live")
    page.get_by_role("button", name=f"Kill switch: revoke all of {AGENT}").click()
    page.get_by_role("heading", name="Confirm").wait_for()
    page.get_by_label("Reason (recorded in the audit log)").fill("agent misbehaves")
    page.get_by_role("button", name="Confirm revocation").click()
    page.get_by_role("status").filter(has_text="Revoked").wait_for()
    with stack.agent() as agent:
        assert agent.introspect(granted.grant.token).active is False
    revoked = [
        e for e in stack.sidecar.events("grant_revoked") if e["grant_id"] == granted.grant.grant_id
    ]
    assert [e["reason"] for e in revoked] == ["kill_switch"]
    ended = [e for e in stack.sidecar.events("task_completed") if e["task_id"] == task_id]
    assert [(e["reason"], e["detail"]) for e in ended] == [
        ("kill_switch", "agent misbehaves (by olga@example.com)")
    ]
    recent = page.locator("table.audit").inner_text()
    assert "grant_revoked" in recent


def test_accessibility_axe_zero_serious(stack: Stack, new_page: Any) -> None:
    """axe-core finds no serious or critical violation on the sign-in, approvals (with a
    request), live, audit and story pages."""
    if not AXE.exists():
        pytest.fail("axe-core is missing: run `make test` (scripts/bootstrap.sh axe)")
    # Only so that axe itself can be injected: the console's CSP refuses inline script.
    page = new_page(bypass_csp=True)
    page.goto(stack.url + "/login")
    pages = {"login": check_axe(page)}
    sign_in(stack, page, "olga")
    task_id = begin(stack, "refund for the accessibility pass", ticket="1")
    pending = ask_refund(stack, task_id, 1500)
    shown(page, pending.approval_id)
    pages["approvals"] = check_axe(page)
    for path in ("/live", "/audit", f"/audit/task?sidecar=local&task={task_id}"):
        page.goto(stack.url + path)
        pages[path] = check_axe(page)
    serious = {k: v for k, v in pages.items() if v}
    assert serious == {}
    settle(stack, task_id)


def check_axe(page: Any) -> list[str]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run()")
    assert len(result["passes"]) > 10  # axe did look at the page
    minor = [f"{v['id']} ({v['impact']})" for v in result["violations"]]
    print(f"\naxe on {page.url}: {len(result['passes'])} rules pass; other findings: {minor}")
    return [
        f"{v['id']}: {v['help']}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_dev_token_login_and_security_headers(stack: Stack, new_page: Any) -> None:
    """The dev bearer credential signs in (a wrong one does not); every page carries the
    strict CSP, has no inline script, style or handler; live updates need a session."""
    page = new_page()
    page.goto(stack.url + "/login")
    page.get_by_label("Bearer token").fill("wrong-token-0123456789")
    page.get_by_role("button", name="Sign in with token").click()
    assert "token_invalid" in page.content()
    page.get_by_label("Bearer token").fill("dev-token-0123456789abcdef")
    page.get_by_role("button", name="Sign in with token").click()
    page.get_by_role("heading", name="Pending approvals").wait_for()
    assert "dev@localhost" in page.locator("header").inner_text()
    for path in ("/", "/live", "/audit", "/login"):
        response = page.request.get(stack.url + path)
        html = response.text()
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        assert response.headers["x-frame-options"] == "DENY"
        assert "<script>" not in html
        assert " style=" not in html
        assert " onclick=" not in html
    cookie = next(c for c in page.context.cookies() if c["name"] == "jitc_session")
    assert (cookie["sameSite"], cookie["httpOnly"]) == ("Strict", True)
    anonymous = page.context.browser.new_context().request.get(stack.url + "/events")
    assert anonymous.status == 401


# Stands in for the desktop: a real notification needs a visible desktop and a person's
# permission click, which a headless browser cannot give on demand. The page's own script
# runs unchanged against it.
FAKE_DESKTOP = """
window.__notes = [];
window.Notification = class {
  constructor(title, options) { window.__notes.push(title + ": " + options.body); }
  static requestPermission() { return Promise.resolve("granted"); }
};
window.Notification.permission = "granted";
Object.defineProperty(document, "hidden", { get: () => true });
"""


def test_new_request_is_announced_and_notified(stack: Stack, new_page: Any) -> None:
    """A new request is announced in the live region and, in a background tab with
    permission, raises one desktop notification naming the intent and the agent."""
    page = new_page()
    page.add_init_script(FAKE_DESKTOP)
    sign_in(stack, page, "bob")
    task_id = begin(stack, "refund to notify about")
    pending = ask_refund(stack, task_id, 7000)
    shown(page, pending.approval_id)
    announce = page.locator("#announce")
    announce.filter(has_text="New approval request").wait_for()
    notes = page.evaluate("window.__notes")
    assert announce.inner_text() == (
        f"New approval request: payments.refund on payments://orders/7000 from {AGENT}"
    )
    assert notes == [f"Approval requested: payments.refund on payments://orders/7000 by {AGENT}"]
    settle(stack, task_id)


def test_live_update_never_takes_the_approvers_focus(stack: Stack, new_page: Any) -> None:
    """While an approver types a comment, a new request does not re-render the page under
    them: a button offers the update, their text stays, and the button shows both requests."""
    page = new_page()
    sign_in(stack, page, "bob")
    task_id = begin(stack, "two refunds")
    first = ask_refund(stack, task_id, 1100)
    shown(page, first.approval_id)
    comment = card(page, first.approval_id).get_by_label("Comment (optional)")
    comment.fill("half-written thought")
    second = ask_refund(stack, task_id, 1300)
    offer = page.get_by_role("button", name="New updates: show them")
    offer.wait_for(timeout=10_000)
    kept = comment.input_value()
    focused = page.evaluate("document.activeElement.name")
    shown_before = card(page, second.approval_id).count()
    offer.click()
    shown(page, second.approval_id)
    assert (kept, focused, shown_before) == ("half-written thought", "reason", 0)
    assert card(page, first.approval_id).count() == 1
    settle(stack, task_id)


def test_one_console_serves_two_sidecars(stack: Stack, new_page: Any, tmp_path: Path) -> None:
    """One console shows both sidecars' requests, each labelled, sends a decision to the
    sidecar that holds the request, and keeps working when one sidecar goes away."""
    other = SidecarProcess(tmp_path / "b", stack.opa.url).start()
    token_file = tmp_path / "token"
    token_file.write_text("dev-token-abcdef0123456789")
    console = ConsoleProcess(
        tmp_path / "console",
        {"a": stack.sidecar.admin_socket, "b": other.admin_socket},
        "--dev-token-file",
        str(token_file),
        "--poll-interval",
        "0.3",
    ).start()
    try:
        page = new_page()
        page.goto(console.url + "/login")
        page.get_by_label("Bearer token").fill("dev-token-abcdef0123456789")
        page.get_by_role("button", name="Sign in with token").click()
        with AccessClient(other.socket) as agent:
            task = agent.begin_task("refund on b")
            pending = agent.request_grant_raw(
                task.task_id,
                "payments.refund",
                "payments://orders/b",
                justification="ticket on sidecar b",
                context={"amount": 2000},
            )
        item = shown(page, pending.approval_id)
        labelled = (item.locator("dt").first.inner_text(), item.locator("dd").first.inner_text())
        item.get_by_role("button", name="Approve").click()
        page.get_by_role("status").filter(has_text=f"Approved {pending.approval_id}").wait_for()
        with grpc.insecure_channel(socket_target(other.socket)) as channel:
            answer = pb_grpc.AccessServiceStub(channel).AwaitApproval(
                pb.AwaitApprovalRequest(approval_id=pending.approval_id), timeout=10
            )
        other.stop(timeout=15)
        page.goto(console.url + "/")
        alert = page.get_by_role("alert").inner_text()
        heading = page.get_by_role("heading", name="Pending approvals").count()
    finally:
        console.stop()
        if other.proc is not None:
            other.kill()
    assert labelled == ("Sidecar", "b")
    assert answer.result.decision == pb.DECISION_GRANTED
    assert alert.startswith("b: ")
    assert "sidecar_unreachable" in alert
    assert heading == 1
