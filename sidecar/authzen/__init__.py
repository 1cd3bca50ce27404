"""The OpenID AuthZEN Authorization API 1.0 on the HTTP listener, with the Access Request and
Approval Profile (ARAP, draft 1). See docs/authzen.md.

- `GET /.well-known/authzen-configuration`: PDP metadata (AuthZEN §9).
- `POST /access/v1/evaluation` and `/access/v1/evaluations` (§6, §7): each request's
  `subject`, `action`, `resource` and `context` go to OPA verbatim as the input at
  `--authzen-decision-path`; the policy answers `{"decision": bool, "context": {...}}`.
  Anything else is `{"decision": false}` with a reason in `context` (fail closed).
- `POST /access/v1/requests`, `GET /access/v1/requests/{id}`, `POST …/{id}/cancel` (ARAP
  "Access Request Endpoint", "Task Status Endpoint"): a requestable denial becomes an
  approval in the engine's approval desk; once an operator approves it, re-evaluating
  with `context.approval` answers true until `approved_until`.

Every decision is audited (`authzen_decision`, never a token) and counted
(`jit_authzen_evaluations_total{decision}`). Handlers only parse, ask and format: the
approval desk, the journal and the metrics come in through `AuthzenDesk`.

One module per concept (docs/architecture.md, "AuthZEN"):

- `service`: `AuthzenService`, the routes and aiohttp handlers;
- `documents`: reading the body and checking AuthZEN requests;
- `errors`: `BadRequest` (400) and `Problem` (an ARAP problem
  document);
- `decider`: `OpaDecider`, OPA's answers, single and batched, and `check_decision`;
- `evaluation`: the batch semantics, auditing and counting of decisions;
- `access_requests`: ARAP on the approval desk: requestable denials, submissions,
  re-evaluation with an approval, cancellation;
- `binding`: the digest and binding token that tie an access request to its denial;
- `tasks`: an access request's ARAP task status and Task Handle;
- `desk`: `AuthzenDesk`, what the endpoints need from the engine.
"""

from __future__ import annotations

from .access_requests import AUTHZEN_TASK
from .binding import Requestable, bound_digest, context_names
from .decider import OpaDecider, check_decision
from .desk import AuthzenDesk
from .documents import parse_evaluation, parse_evaluations, read_json, request_id
from .errors import BadRequest, Problem
from .service import AuthzenService
from .tasks import AccessRequest, task_status

__all__ = [
    "AUTHZEN_TASK",
    "AccessRequest",
    "AuthzenDesk",
    "AuthzenService",
    "BadRequest",
    "OpaDecider",
    "Problem",
    "Requestable",
    "bound_digest",
    "check_decision",
    "context_names",
    "parse_evaluation",
    "parse_evaluations",
    "read_json",
    "request_id",
    "task_status",
]
