"""Several intents of one task decided together (GrantStream, docs/api.md).

Each intent follows the order of a grant (core.py) and gets its own answer or its own
error, exactly as RequestGrant would give it; only the I/O is shared: the intents the
decision cache does not answer go to the policy in one evaluation when it offers batch
evaluation (`rego/jit/batch.rego`), and every grant and denial of the message is made
durable by one journal commit (one audit append, one fsync, one store transaction). Tokens
leave only after that commit, as always.

In a batch, each intent is decided against the task's grants as they were before the
message (`policy_inputs` builds every input, in one place), and, for the flow rules
(engine/flows.py), as if every earlier intent of the message had been granted: each earlier
intent is in its `input.task.history` as a `batched` entry whose flow labels the policy
looks up, so a message that reads a ticket, a customer record and then sends email meets the
trifecta on its last intent exactly as three RequestGrants would (assuming a grant the
policy may then deny errs on the strict side). The decision cache answers an intent only
while every earlier intent of the message was answered by it, allowed, with no flow label
the task did not already hold (the key is the task's flow as it was at the start). An
earlier intent of the message the policy denied is one of `input.task.denials` of the later
ones (the probing rule): those decided past a denial are asked again (`_evaluate`). The
sidecar's own per-task grant limit still counts every grant as it is added. Each allowed
intent goes through step 6 of its own (a downstream credential from the broker its decision
names, docs/brokers.md): a broker failure is that intent's error only; a commit that fails
revokes every credential the message's grants were issued.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..clock import rfc3339
from ..errors import Internal, PolicyError, SidecarError
from ..events import Event
from ..journal import CommitError
from ..model import Identity, Intent, PolicyDecision, Task
from ..policy import build_input
from ..validation import check_intent, check_ttl
from . import flows
from .issuance import FlowMoved, flow_moved
from .limits import check_grant_room
from .outcome import GrantOutcome, Prepared, pending

if TYPE_CHECKING:
    from .core import Engine

#: The answer to one intent: what RequestGrant returns, or the error it raises.
Result = GrantOutcome | SidecarError


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One intent of a GrantStream message."""

    intent: Intent
    ttl_seconds: int
    """As RequestGrant's: 0 asks for the longest lifetime the bounds allow."""


class BatchPolicy(Protocol):
    """A policy engine that can decide several inputs in one evaluation."""

    async def decide_many(self, inputs: Sequence[dict[str, Any]]) -> list[PolicyDecision] | None:
        """The decisions in order, or None when the policy offers no batch evaluation."""


@dataclass(slots=True)
class _Made:
    """What a message's items made before their one commit."""

    events: list[Event] = field(default_factory=list)
    issuing: dict[int, Prepared] = field(default_factory=dict)
    """Grants prepared (live, not yet committed), by item."""
    denied: dict[int, GrantOutcome] = field(default_factory=dict)


async def request_grants(
    engine: Engine, identity: Identity, task_id: str, items: Sequence[BatchItem]
) -> list[Result]:
    """The answers to `items`, in order. Never raises a SidecarError: each intent's error
    is its result (counted and audited as RequestGrant's would be)."""
    if len(items) == 1:
        # One intent: exactly RequestGrant's path (and its own error bookkeeping).
        item = items[0]
        try:
            return [await engine.request_grant(identity, task_id, item.intent, item.ttl_seconds)]
        except SidecarError as err:
            return [err]
    results: list[Result | None] = [None] * len(items)
    await _decide_and_issue(engine, identity, task_id, items, results)
    answers = [r if r is not None else Internal("the intent got no answer") for r in results]
    for i, answer in enumerate(answers):
        if isinstance(answer, SidecarError):
            engine.metrics.errored()
            if not isinstance(answer, PolicyError):  # audited as policy_error already
                await engine.record.rejection(
                    "GrantStream", identity, answer, task_id=task_id, intent=items[i].intent
                )
    return answers


async def _decide_and_issue(
    engine: Engine,
    identity: Identity,
    task_id: str,
    items: Sequence[BatchItem],
    results: list[Result | None],
) -> None:
    for i, item in enumerate(items):
        try:
            i_ = item.intent
            check_intent(i_.action, i_.resource, i_.justification, i_.context)
            check_ttl(item.ttl_seconds, engine.settings.max_requested_ttl)
        except SidecarError as err:
            results[i] = err
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
        return
    try:
        task = await engine._tasks.active(identity, task_id)
        now = engine.clock.now()
        if now >= task.deadline:
            await engine._end_overdue(task)
    except SidecarError as err:
        for i in todo:
            results[i] = err
        return

    decisions: dict[int, PolicyDecision] = {}
    known: dict[int, Set[str]] = {}
    """The flow labels each decision's input held (Issuance.prepare refuses on more)."""
    ask: list[int] = []
    flow_key = task.flow.cache_key()
    start = set(task.flow.held_labels())
    as_started = True  # every earlier intent left the task's flow as it was: the cache may answer
    for i in todo:
        intent = items[i].intent
        try:
            check_grant_room(task, engine.settings.max_grants_per_task)
            if engine.approvals:
                shortcut = await engine._approval_shortcut(identity, task.task_id, intent, now)
                if shortcut is not None:
                    results[i] = shortcut
                    as_started = False
                    continue
        except SidecarError as err:
            results[i] = err
            continue
        # A delegated decision depends on the person too: never cached (docs/delegation.md).
        key = engine.cache.key(identity, intent, task.labels, flow_key)
        cached = engine.cache.get(key) if task.principal is None and as_started else None
        if cached is not None:
            engine.metrics.cache_hit.inc()
            decisions[i] = cached
            known[i] = start
            held = task.flow.held_labels()
            if not cached.allow or (cached.flow and not set(cached.flow.labels) <= held):
                as_started = False
        else:
            ask.append(i)
            as_started = False
    if ask:
        granting = [i for i in todo if _granting(decisions.get(i), results[i])]
        decisions.update(
            await _evaluate(engine, identity, task, items, ask, results, now, granting, known)
        )
    await _issue_all(engine, identity, task, items, decisions, results, now, known)


def policy_inputs(
    engine: Engine,
    identity: Identity,
    task: Task,
    items: Sequence[BatchItem],
    ask: Sequence[int],
    now: float,
    granting: Sequence[int] = (),
    denied: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """The policy input of each intent in `ask` (indexes of `items`), the one place that
    builds them. Each sees the task's grants as they were at the start of the batch, and
    every earlier intent of the message that is asked about or being granted (`ask`,
    `granting`) as a `batched` entry of its history: the flow rules see what the message is
    about to do (module docstring). Each earlier intent the policy denied (`denied`) is one
    more of `input.task.denials`, as RequestGrant's denial would be (the probing rule)."""
    held = engine.live.grants_of(task)
    played = sorted({*ask, *granting})
    inputs = []
    for i in ask:
        policy_input = build_input(identity, items[i].intent, task, held, items[i].ttl_seconds, now)
        earlier = [batched_entry(items[j].intent, now) for j in played if j < i]
        if earlier:
            policy_input["task"]["history"] = [*policy_input["task"]["history"], *earlier]
        refused = [rfc3339(now) for j in denied if j < i]
        if refused:
            policy_input["task"]["denials"] = [*policy_input["task"]["denials"], *refused]
        inputs.append(policy_input)
    return inputs


def _granting(decision: PolicyDecision | None, result: Result | None) -> bool:
    """Allowed by the cache, or an approved grant being collected."""
    if decision is not None:
        return decision.allow
    return isinstance(result, GrantOutcome) and result.decision == "granted"


def batched_entry(intent: Intent, now: float) -> dict[str, Any]:
    """An earlier intent of the same message in `input.task.history`: its labels are the
    policy's to look up (flows.rego reads a `batched` entry's from data)."""
    return {
        "action": intent.action,
        "resource": intent.resource,
        "class": "",
        "tier": "",
        "labels": [],
        "time": rfc3339(now),
        "state": "batched",
        "end_reason": "",
    }


async def _evaluate(
    engine: Engine,
    identity: Identity,
    task: Task,
    items: Sequence[BatchItem],
    ask: list[int],
    results: list[Result | None],
    now: float,
    granting: Sequence[int],
    known: dict[int, Set[str]],
) -> dict[int, PolicyDecision]:
    """The decisions of the intents in `ask` (`known`: the flow labels each one's input
    held, filled in). An intent the policy denies is a denial of
    the task for every later one (the probing rule: a message of many probes must get no
    more answers than as many RequestGrants would), which one evaluation cannot see: the
    intents decided after the first denial are asked again with it, until no later intent
    was decided past a denial (at most once per denial of the message)."""
    decisions: dict[int, PolicyDecision] = {}
    denied: list[int] = []
    while ask:
        found = await _evaluate_once(
            engine, identity, task, items, ask, results, now, granting, denied, known
        )
        decisions.update(found)
        first = next((i for i in ask if i in found and not found[i].allow), None)
        if first is None:
            break
        denied.append(first)
        ask = [i for i in ask if i > first and i in found]
    return decisions


async def _evaluate_once(
    engine: Engine,
    identity: Identity,
    task: Task,
    items: Sequence[BatchItem],
    ask: list[int],
    results: list[Result | None],
    now: float,
    granting: Sequence[int],
    denied: Sequence[int],
    known: dict[int, Set[str]],
) -> dict[int, PolicyDecision]:
    """One policy evaluation for every intent in `ask` (one call each when the policy
    offers no batch evaluation); a policy error is the error of each intent it left
    undecided. `granting`: the intents already allowed (cache, approval), which the flow
    rules of later ones must see; `denied`: the intents of the message denied so far."""
    inputs = policy_inputs(engine, identity, task, items, ask, now, granting, denied)
    held = set(task.flow.held_labels())
    # The keys of the flow the inputs were built on: other requests of the task may change it
    # while the policy decides (a denial counted, a grant's labels), and a decision stored
    # under the flow as it is then would answer for a flow the policy never saw.
    flow_key = task.flow.cache_key()
    cacheable = {
        i
        for i, x in zip(ask, inputs, strict=True)
        # no batched entry, no denial of the message
        if len(x["task"]["history"]) == len(task.flow.history)
        and len(x["task"]["denials"]) == len(task.flow.denials)
    }
    decide_many = getattr(engine.policy, "decide_many", None)
    started = time.perf_counter()
    found: list[PolicyDecision | BaseException]
    try:
        batch = await decide_many(inputs) if decide_many is not None and len(ask) > 1 else None
        if batch is not None:
            found = list(batch)
        else:
            found = list(
                await asyncio.gather(
                    *(engine.policy.decide(x) for x in inputs), return_exceptions=True
                )
            )
    except PolicyError as err:
        found = [err] * len(ask)
    finally:
        engine.metrics.policy_eval.observe(time.perf_counter() - started)
    decisions: dict[int, PolicyDecision] = {}
    failed: dict[int, PolicyError] = {}
    for i, answer in zip(ask, found, strict=True):
        if isinstance(answer, PolicyError):
            failed[i] = answer
        elif isinstance(answer, BaseException):
            raise answer  # a bug, not a policy answer
        else:
            if i in cacheable:
                # Decided on the task's flow as it was (no batched entry): cacheable as usual.
                key = engine.cache.key(identity, items[i].intent, task.labels, flow_key)
                engine._remember(key, answer, task)
            decisions[i] = answer
            known[i] = held
    for i, failure in failed.items():
        await engine._policy_failed(failure, identity, [items[i].intent], task.task_id, now)
        results[i] = failure
    return decisions


async def _issue_all(
    engine: Engine,
    identity: Identity,
    task: Task,
    items: Sequence[BatchItem],
    decisions: dict[int, PolicyDecision],
    results: list[Result | None],
    now: float,
    known: dict[int, Set[str]],
) -> None:
    """Grants and denials of the message, made durable by one commit."""
    made = _Made()
    try:
        await _prepare_all(engine, identity, task, items, decisions, results, now, made, known)
    except BaseException:
        # Cancelled (the stream closed, the message timed out) while a later item's broker
        # worked: the grants prepared so far were never committed; no ghost, no orphan.
        for prepared in made.issuing.values():
            engine.issuance.undo(prepared.grant)
        raise
    events, issuing, denied = made.events, made.issuing, made.denied
    if not events:
        return
    try:
        await engine.journal.commit(events)
    except CommitError as err:
        for i, prepared in issuing.items():
            await engine.issuance.abort(prepared.grant, err)  # revokes its credential too
            results[i] = err
        for i in denied:
            results[i] = err
        return
    for i, outcome in denied.items():
        engine.record.denial_committed(task.task_id, now)
        results[i] = outcome
    for i, prepared in issuing.items():
        try:
            results[i] = engine.issuance.issued(prepared)
        except SidecarError as err:
            results[i] = err


async def _prepare_all(
    engine: Engine,
    identity: Identity,
    task: Task,
    items: Sequence[BatchItem],
    decisions: dict[int, PolicyDecision],
    results: list[Result | None],
    now: float,
    made: _Made,
    known: dict[int, Set[str]],
) -> None:
    """Each decided item: a denial's event, an approval parked, or a grant prepared (step 6
    included), collected in `made`. An item's decision saw, besides the labels its input
    held (`known`), those of the earlier items of the message (batched entries)."""
    for i in sorted(decisions):
        decision = decisions[i]
        intent = items[i].intent
        flow_flagged = flows.flagged(identity, task, intent, decision, now)
        if flow_flagged is not None:  # before the outcome's own record, as in RequestGrant
            made.events.append(flow_flagged)
        try:
            if not decision.allow:
                event, outcome = engine.record.denied(
                    identity, task.task_id, intent, now, decision.reasons, decision.decision_id
                )
                made.events.append(event)
                made.denied[i] = outcome
                continue
            # Before parking an approval too: a malformed credential object is refused now.
            await engine.issuance.credential_spec(identity, intent, task.task_id, decision, now)
            earlier = {x for p in made.issuing.values() for x in p.grant.flow_labels}
            seen = known.get(i, set()) | earlier
            if decision.approval_required:
                if flow_moved(task, seen):  # an approver must see what the task holds
                    raise FlowMoved.of(task)
                approval = await engine.approvals.park(
                    identity, task, intent, items[i].ttl_seconds, decision
                )
                results[i] = pending(approval)
            else:
                prepared = await engine.issuance.prepare(
                    identity,
                    task,
                    intent,
                    items[i].ttl_seconds,
                    decision,
                    known=seen,
                )
                made.events.extend(prepared.events)
                made.issuing[i] = prepared
        except SidecarError as err:
            results[i] = err
