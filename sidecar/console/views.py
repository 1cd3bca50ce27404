"""The console's pages, rendered on the server as plain HTML (every value escaped).

No inline script or style anywhere: behaviour comes from /static/console.js and looks from
/static/console.css, so the Content-Security-Policy can be `default-src 'self'`. Every
state-changing form carries the session's CSRF token. Buttons a role may not use are left
out; the server refuses them anyway (sidecar.console.app).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from google.protobuf import timestamp_pb2

from .._proto.jit.v1 import access_pb2 as pb
from .._proto.jit.v1 import admin_pb2 as admin_pb
from ..service import struct_to_dict
from .auth import User

_TIER = {pb.TIER_STANDING: "standing", pb.TIER_JIT: "jit"}
_GRANT_STATE = {
    pb.GRANT_STATE_ACTIVE: "active",
    pb.GRANT_STATE_REVOKED: "revoked",
    pb.GRANT_STATE_EXPIRED: "expired",
}
NAV = (("approvals", "/", "Approvals"), ("live", "/live", "Live"), ("audit", "/audit", "Audit"))
RECENT_EVENTS = ("grant_denied", "grant_revoked", "request_rejected", "revocation_ordered")


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def seconds(value: timestamp_pb2.Timestamp) -> float:
    return float(value.ToNanoseconds()) / 1e9


def clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


def _time(epoch: float, attr: str, text: str) -> str:
    """A time that console.js keeps current (`data-expires`: countdown; `data-since`: age)."""
    iso = datetime.fromtimestamp(epoch, UTC).isoformat()
    return f'<time datetime="{e(iso)}" {attr}="{epoch:.0f}">{e(text)}</time>'


def countdown(epoch: float, now: float) -> str:
    left = max(0, int(epoch - now))
    return _time(epoch, "data-expires", f"{left} s left" if left else "expired")


def age(epoch: float, now: float) -> str:
    return _time(epoch, "data-since", f"{max(0, int(now - epoch))} s")


def csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{e(csrf)}">'


def layout(
    title: str,
    body: str,
    *,
    user: User | None,
    csrf: str = "",
    active: str = "",
    refresh: str = "",
    pending: int | None = None,
    live: str = "",
) -> str:
    """The whole document. `refresh` names what live updates re-render (`approvals`,
    `live`), read by console.js from <main data-refresh>."""
    nav = ""
    if user is not None:
        links = []
        for key, href, label in NAV:
            current = ' aria-current="page"' if key == active else ""
            badge = ""
            if key == "approvals":
                count = "" if pending is None else str(pending)
                badge = (
                    f' <span id="pending-count" class="badge" aria-label="pending requests">'
                    f"{e(count)}</span>"
                )
            links.append(f'<li><a href="{href}"{current}>{label}{badge}</a></li>')
        roles = ", ".join(sorted(user.roles))
        nav = (
            f'<nav aria-label="Console"><ul>{"".join(links)}</ul></nav>'
            f'<div class="who"><span>{e(user.name)} <span class="roles">({e(roles)})</span></span>'
            f'<button type="button" id="notify" class="quiet" hidden>Desktop notifications'
            f"</button>"
            f'<form method="post" action="/logout">{csrf_field(csrf)}'
            f'<button type="submit" class="quiet">Sign out</button></form></div>'
        )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · jit-sidecar console</title>"
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/console.js" defer></script></head>'
        f'<body><a class="skip" href="#main">Skip to content</a>'
        f'<header><span class="brand">jit-sidecar console</span>{nav}</header>'
        f'<main id="main" tabindex="-1" data-refresh="{e(refresh)}" data-live="{e(live)}">'
        f"{body}</main>"
        '<div id="announce" class="visually-hidden" role="status" aria-live="polite"></div>'
        "</body></html>"
    )


def notice(message: str, kind: str = "ok") -> str:
    role = "alert" if kind == "error" else "status"
    return f'<p class="notice {e(kind)}" role="{role}">{e(message)}</p>'


def error_page(user: User | None, csrf: str, status: int, reason: str, message: str) -> str:
    body = (
        f"<h1>Refused ({status})</h1>"
        + notice(message, "error")
        + f'<p>Reason code: <code class="reason">{e(reason)}</code></p>'
        + '<p><a href="/">Back to the approvals</a></p>'
    )
    return layout("Refused", body, user=user, csrf=csrf)


# ------------------------------------------------------------------ login
def login_page(*, oidc: bool, dev: bool, message: str = "") -> str:
    parts = ["<h1>Sign in</h1>"]
    if message:
        parts.append(notice(message, "error"))
    if oidc:
        parts.append('<p><a class="button primary" href="/login/oidc">Sign in with SSO</a></p>')
    if dev:
        parts.append(
            '<form method="post" action="/login/token" class="card">'
            "<h2>Development credential</h2>"
            '<label for="token">Bearer token</label>'
            '<input id="token" name="token" type="password" autocomplete="off" required>'
            '<button type="submit">Sign in with token</button></form>'
        )
    return layout("Sign in", "".join(parts), user=None)


def continue_page(target: str) -> str:
    """After the issuer's redirect: a same-site step, so the SameSite=Strict session cookie
    is sent (a cross-site redirect chain would not carry it)."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="0;url={e(target)}">'
        "<title>Signed in · jit-sidecar console</title></head>"
        f'<body><main><p><a href="{e(target)}">Continue to the console</a></p></main></body></html>'
    )


# ------------------------------------------------------------------ approvals
def _dl(rows: Iterable[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return '<span class="none">none</span>'
    items = "".join(f"<li><code>{e(k)}={e(v)}</code></li>" for k, v in sorted(labels.items()))
    return f'<ul class="labels">{items}</ul>'


def _grants_table(grants: Sequence[pb.Grant], now: float, caption: str) -> str:
    if not grants:
        return f'<p class="none">{e(caption)}: none yet.</p>'
    rows = "".join(
        f"<tr><td><code>{e(g.intent.action)}</code></td><td><code>{e(g.intent.resource)}</code>"
        f"</td><td>{e(_TIER.get(g.tier, '?'))}</td><td>{e(_GRANT_STATE.get(g.state, '?'))}</td>"
        f"<td>{clock(seconds(g.issued_at))}</td></tr>"
        for g in grants
    )
    return (
        f"<table><caption>{e(caption)}</caption><thead><tr><th scope=col>Action</th>"
        "<th scope=col>Resource</th><th scope=col>Tier</th><th scope=col>State</th>"
        f"<th scope=col>Issued (UTC)</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _person(principal: pb.Principal) -> str:
    """The person a task acts for: their `sub`, and the issuer that vouched for them."""
    issuer = f' <span class="note">from <code>{e(principal.issuer)}</code></span>'
    return f"<code>{e(principal.subject)}</code>" + (issuer if principal.issuer else "")


def may_approve(user: User, approval: admin_pb.Approval) -> bool:
    """What the page offers; the sidecar decides again (four-eyes) and the server checks
    the role."""
    if not user.can("approver"):
        return False
    if approval.four_eyes:
        who = user.name.casefold()
        return all(who != owner.strip().casefold() for owner in approval.owners)
    return True


def approval_card(
    sidecar: str, a: admin_pb.Approval, user: User, csrf: str, now: float, *, many: bool
) -> str:
    anchor = f"approval-{a.approval_id}"
    context = json.dumps(struct_to_dict(a.intent.context), indent=1, sort_keys=True)
    rows = [
        ("Agent", f"<code>{e(a.subject)}</code>"),
        ("Task goal", e(a.task_goal) or '<span class="none">none given</span>'),
        ("Task labels", _labels(a.task_labels)),
        ("Justification", e(a.intent.justification) or '<span class="none">none</span>'),
        ("Context", f"<pre>{e(context)}</pre>" if a.intent.HasField("context") else "none"),
        ("Tier", e(_TIER.get(a.tier, "?")) + f" · {a.ttl_seconds} s requested"),
        ("Waiting", age(seconds(a.created_at), now)),
        ("Expires", countdown(seconds(a.expires_at), now)),
    ]
    if a.HasField("principal"):  # issue 23: the person, if the agent acts for one
        rows.insert(1, ("Person (delegated)", _person(a.principal)))
    if many:
        rows.insert(0, ("Sidecar", e(sidecar)))
    if a.owners:
        rows.append(("Owners", ", ".join(e(o) for o in a.owners)))
    if a.four_eyes:
        rows.append(("Four-eyes", "required: an owner may not approve"))
    reasons = "".join(f"<li>{e(r)}</li>" for r in a.reasons) or "<li>none given</li>"
    grants = _grants_table(a.task_grants, now, "Grants of this task so far")
    actions = ""
    if user.can("approver"):
        approve = (
            '<button type="submit" name="verdict" value="approve" class="primary">Approve</button>'
            if may_approve(user, a)
            else '<p class="note">Four-eyes: you answer for this agent, so someone else must '
            "approve.</p>"
        )
        actions = (
            f'<form method="post" action="/approvals/decide" class="decide">{csrf_field(csrf)}'
            f'<input type="hidden" name="sidecar" value="{e(sidecar)}">'
            f'<input type="hidden" name="approval_id" value="{e(a.approval_id)}">'
            f'<label for="{anchor}-reason">Comment (optional)</label>'
            f'<textarea id="{anchor}-reason" name="reason" rows="2" maxlength="1000"></textarea>'
            f'<div class="buttons">{approve}'
            '<button type="submit" name="verdict" value="deny" class="danger">Deny</button>'
            "</div></form>"
        )
    else:
        actions = '<p class="note">Viewing only: deciding needs the approver role.</p>'
    return (
        f'<article class="card approval" id="{anchor}" aria-labelledby="{anchor}-title">'
        f'<h2 id="{anchor}-title"><code>{e(a.intent.action)}</code> on '
        f"<code>{e(a.intent.resource)}</code></h2>"
        f'<div class="cols"><div>{_dl(rows)}</div><div><h3>Policy reasons</h3>'
        f'<ul class="reasons">{reasons}</ul>{grants}</div></div>{actions}</article>'
    )


def approvals_page(
    items: Sequence[tuple[str, admin_pb.Approval]],
    errors: Sequence[str],
    user: User,
    csrf: str,
    *,
    many: bool,
    flash: str = "",
) -> str:
    now = time.time()
    parts = ["<h1>Pending approvals</h1>"]
    if flash:
        parts.append(notice(flash))
    parts.extend(notice(err, "error") for err in errors)
    if not items:
        parts.append('<p class="empty">No request is waiting. New ones appear here at once.</p>')
    parts.extend(approval_card(s, a, user, csrf, now, many=many) for s, a in items)
    return "".join(parts)


# ------------------------------------------------------------------ live
def _confirm_button(sidecar: str, what: str, target: str, label: str, title: str) -> str:
    return (
        f'<form method="get" action="/revoke" class="inline">'
        f'<input type="hidden" name="sidecar" value="{e(sidecar)}">'
        f'<input type="hidden" name="what" value="{e(what)}">'
        f'<input type="hidden" name="target" value="{e(target)}">'
        f'<button type="submit" class="danger" aria-label="{e(title)}">{e(label)}</button></form>'
    )


def live_page(
    views: Sequence[tuple[str, admin_pb.TaskView]],
    recent: Sequence[tuple[str, dict[str, Any]]],
    errors: Sequence[str],
    user: User,
    *,
    many: bool,
    flash: str = "",
) -> str:
    now = time.time()
    operator = user.can("operator")
    parts = ["<h1>Live tasks and grants</h1>"]
    if flash:
        parts.append(notice(flash))
    parts.extend(notice(err, "error") for err in errors)
    by_agent: dict[tuple[str, str], list[admin_pb.TaskView]] = {}
    for sidecar, view in views:
        by_agent.setdefault((sidecar, view.task.subject), []).append(view)
    if not by_agent:
        parts.append('<p class="empty">No active task.</p>')
    for (sidecar, subject), tasks in sorted(by_agent.items()):
        kill = (
            _confirm_button(
                sidecar, "subject", subject, "Kill switch", f"Kill switch: revoke all of {subject}"
            )
            if operator
            else ""
        )
        where = f" <span class=sidecar>on {e(sidecar)}</span>" if many else ""
        parts.append(
            f'<section class="card agent" aria-label="Agent {e(subject)}">'
            f'<div class="row"><h2><code>{e(subject)}</code>{where}</h2>{kill}</div>'
        )
        for view in tasks:
            t = view.task
            revoke_task = (
                _confirm_button(
                    sidecar, "task", t.task_id, "Revoke task", f"Revoke task {t.task_id}"
                )
                if operator
                else ""
            )
            rows = "".join(
                f"<tr><td><code>{e(g.grant_id)}</code></td><td><code>{e(g.intent.action)}</code>"
                f"</td><td><code>{e(g.intent.resource)}</code></td>"
                f"<td>{e(_TIER.get(g.tier, '?'))}</td>"
                f"<td>{countdown(seconds(g.expires_at), now)}</td><td>"
                + (
                    _confirm_button(
                        sidecar, "grant", g.grant_id, "Revoke", f"Revoke grant {g.grant_id}"
                    )
                    if operator
                    else ""
                )
                + "</td></tr>"
                for g in view.grants
            )
            table = (
                "<table><caption>Active grants</caption><thead><tr><th scope=col>Grant</th>"
                "<th scope=col>Action</th><th scope=col>Resource</th><th scope=col>Tier</th>"
                "<th scope=col>TTL</th><th scope=col><span class=visually-hidden>Actions"
                f"</span></th></tr></thead><tbody>{rows}</tbody></table>"
                if view.grants
                else '<p class="none">No active grant.</p>'
            )
            parts.append(
                f'<div class="task"><div class="row"><h3>Task <code>{e(t.task_id)}</code></h3>'
                f"{revoke_task}</div>"
                + _dl(
                    [
                        ("Goal", e(t.goal) or '<span class="none">none given</span>'),
                        *(
                            [("Person (delegated)", _person(t.principal))]
                            if t.HasField("principal")
                            else []
                        ),
                        ("Labels", _labels(t.labels)),
                        *(  # issue 22: what the task's grants carried, for the flow rules
                            [
                                (
                                    "Flow labels",
                                    ", ".join(f"<code>{e(x)}</code>" for x in t.flow_labels),
                                )
                            ]
                            if t.flow_labels
                            else []
                        ),
                        ("Ends", countdown(seconds(t.deadline), now)),
                    ]
                )
                + table
                + "</div>"
            )
        parts.append("</section>")
    parts.append("<h2>Recent denials and revocations</h2>")
    parts.append(audit_table(recent, many=many, caption="Newest first"))
    return "".join(parts)


def confirm_page(sidecar: str, what: str, target: str, csrf: str) -> str:
    question = {
        "grant": f"Revoke grant {target}?",
        "task": f"Revoke every grant of task {target}?",
        "subject": f"Kill switch: revoke every grant of {target}?",
    }[what]
    body = (
        f"<h1>Confirm</h1><form method=post action=/revoke class=card>{csrf_field(csrf)}"
        f"<p id=question>{e(question)} The tokens stop working at once.</p>"
        f'<input type="hidden" name="sidecar" value="{e(sidecar)}">'
        f'<input type="hidden" name="what" value="{e(what)}">'
        f'<input type="hidden" name="target" value="{e(target)}">'
        '<label for="reason">Reason (recorded in the audit log)</label>'
        '<input id="reason" name="reason" maxlength="1000" required>'
        '<div class="buttons"><button type="submit" class="danger" aria-describedby="question">'
        'Confirm revocation</button><a class="button" href="/live">Cancel</a></div></form>'
    )
    return body


# ------------------------------------------------------------------ audit
def describe(record: Mapping[str, Any]) -> str:
    """One line about an audit record, from its documented fields (docs/api.md)."""
    event = str(record.get("event", ""))
    intent = record.get("intent") if isinstance(record.get("intent"), dict) else {}
    what = ""
    if isinstance(intent, dict) and intent.get("action"):
        what = f"{intent.get('action')} on {intent.get('resource')}"
    elif record.get("action"):
        what = f"{record.get('action')} on {record.get('resource', '')}"
    bits = {
        "task_begun": f"goal: {record.get('goal', '')}",
        "grant_pending": f"{what}: waits for approval",
        "approval_decided": (
            f"{'approved' if record.get('approved') else 'denied'} by {record.get('approver')}"
            + (f": {record.get('reason')}" if record.get("reason") else "")
        ),
        "grant_issued": f"{what}, grant {record.get('grant_id', '')}",
        "grant_denied": what,
        "grant_revoked": (
            f"grant {record.get('grant_id', '')}: {record.get('reason', '')}"
            + (f" ({record.get('detail')})" if record.get("detail") else "")
        ),
        "grant_expired": f"grant {record.get('grant_id', '')}",
        "task_completed": f"{record.get('state', '')} {record.get('detail', '') or ''}".strip(),
        "revocation_ordered": f"{record.get('scope', '')}: {record.get('detail', '')}",
        "request_rejected": f"{record.get('rpc', '')}: {record.get('detail', '')}",
    }
    text = bits.get(event, what)
    reasons = record.get("reasons")
    if isinstance(reasons, list) and reasons and event in ("grant_denied", "grant_pending"):
        text += " — " + "; ".join(str(r) for r in reasons)
    return text


def audit_table(
    records: Sequence[tuple[str, Mapping[str, Any]]], *, many: bool, caption: str
) -> str:
    if not records:
        return '<p class="empty">No matching record.</p>'
    head = "<th scope=col>Sidecar</th>" if many else ""
    rows = []
    for sidecar, r in records:
        cell = f"<td>{e(sidecar)}</td>" if many else ""
        task = str(r.get("task_id", ""))
        href = e("/audit/task?" + urlencode({"sidecar": sidecar, "task": task}))
        task_link = f'<a href="{href}"><code>{e(task)}</code></a>' if task else ""
        rows.append(
            f"<tr>{cell}<td>{e(r.get('seq', ''))}</td><td>{e(r.get('time', ''))}</td>"
            f"<td><code>{e(r.get('event', ''))}</code></td><td><code>{e(r.get('subject', ''))}"
            f"</code></td><td>{task_link}</td><td>{e(describe(r))}</td></tr>"
        )
    return (
        f"<table class=audit><caption>{e(caption)}</caption><thead><tr>{head}"
        "<th scope=col>Seq</th><th scope=col>Time</th><th scope=col>Event</th>"
        "<th scope=col>Agent</th><th scope=col>Task</th><th scope=col>What</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def chain_status(sidecar: str, chain: admin_pb.AuditChainStatus | None) -> str:
    if chain is None:
        return ""
    if chain.ok:
        return (
            f'<p class="chain ok" role="status"><strong>Chain verified</strong> ({e(sidecar)}): '
            f"{chain.records} records, seq {chain.first_seq} to {chain.last_seq}, last hash "
            f"<code>{e(chain.last_hash[:16])}…</code></p>"
        )
    return (
        f'<p class="chain bad" role="alert"><strong>Chain broken</strong> ({e(sidecar)}): '
        f"{e(chain.problem)} ({e(chain.bad_file)} line {chain.bad_line})</p>"
    )


def audit_page(
    sidecars: Sequence[str],
    form: Mapping[str, str],
    records: Sequence[tuple[str, Mapping[str, Any]]],
    chains: Mapping[str, admin_pb.AuditChainStatus | None],
    errors: Sequence[str],
    *,
    truncated: bool,
) -> str:
    many = len(sidecars) > 1
    options = "".join(
        f'<option value="{e(s)}"{" selected" if form.get("sidecar") == s else ""}>{e(s)}</option>'
        for s in sidecars
    )

    def field(name: str, label: str, kind: str = "text", hint: str = "") -> str:
        described = f' aria-describedby="{name}-hint"' if hint else ""
        small = f'<small id="{name}-hint">{e(hint)}</small>' if hint else ""
        return (
            f'<div class="field"><label for="{name}">{e(label)}</label>'
            f'<input id="{name}" name="{name}" type="{kind}" value="{e(form.get(name, ""))}"'
            f"{described}>{small}</div>"
        )

    parts = ["<h1>Audit trail</h1>"]
    parts.extend(chain_status(s, c) for s, c in chains.items())
    parts.extend(notice(err, "error") for err in errors)
    parts.append(
        '<form method="get" action="/audit" class="card search" role="search">'
        '<div class="field"><label for="sidecar">Sidecar</label>'
        f'<select id="sidecar" name="sidecar">{options}</select></div>'
        + field("task", "Task id")
        + field("agent", "Agent")
        + field("grant", "Grant id")
        + field("since", "From", hint="UTC, e.g. 2026-11-30T10:00:00")
        + field("until", "To", hint="UTC")
        + '<div class="buttons"><button type="submit">Search</button></div></form>'
    )
    if truncated:
        parts.append(notice("More records matched: showing the newest. Narrow the search."))
    parts.append(audit_table(records, many=many, caption="Oldest first"))
    return "".join(parts)


def story_page(
    sidecar: str,
    task_id: str,
    records: Sequence[Mapping[str, Any]],
    chain: admin_pb.AuditChainStatus | None,
) -> str:
    issued = {str(r.get("grant_id")) for r in records if r.get("event") == "grant_issued"}
    ended = {
        str(r.get("grant_id"))
        for r in records
        if r.get("event") in ("grant_revoked", "grant_expired")
    }
    begun = any(r.get("event") == "task_begun" for r in records)
    finished = any(r.get("event") == "task_completed" for r in records)
    checks = [
        ("begun", begun),
        ("ended", finished),
        (f"every grant ended ({len(issued & ended)}/{len(issued)})", issued <= ended),
    ]
    complete = all(ok for _, ok in checks)
    summary = "".join(
        f'<li class="{"ok" if ok else "missing"}">{e(label)}: {"yes" if ok else "not yet"}</li>'
        for label, ok in checks
    )
    items = "".join(
        f'<li><span class="seq">#{e(r.get("seq", ""))}</span> <time>{e(r.get("time", ""))}</time> '
        f"<code>{e(r.get('event', ''))}</code> {e(describe(r))}</li>"
        for r in records
    )
    body = (
        f"<h1>Story of task <code>{e(task_id)}</code></h1>"
        + chain_status(sidecar, chain)
        + f'<p class="story-status {"ok" if complete else "open"}" id="story-status">'
        + ("Complete: from begin to the last revocation." if complete else "Not complete yet.")
        + f"</p><ul class=checks>{summary}</ul><ol class=story>{items}</ol>"
        + '<p><a href="/audit">Back to the search</a></p>'
    )
    return body
