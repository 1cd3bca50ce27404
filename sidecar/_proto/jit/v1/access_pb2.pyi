import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_ACTIVE: _ClassVar[TaskState]
    TASK_STATE_SUCCEEDED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_ERRORED: _ClassVar[TaskState]
    TASK_STATE_CRASHED: _ClassVar[TaskState]
    TASK_STATE_EXPIRED: _ClassVar[TaskState]

class GrantState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANT_STATE_UNSPECIFIED: _ClassVar[GrantState]
    GRANT_STATE_ACTIVE: _ClassVar[GrantState]
    GRANT_STATE_REVOKED: _ClassVar[GrantState]
    GRANT_STATE_EXPIRED: _ClassVar[GrantState]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_GRANTED: _ClassVar[Decision]
    DECISION_DENIED: _ClassVar[Decision]
    DECISION_PENDING_APPROVAL: _ClassVar[Decision]

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_STANDING: _ClassVar[Tier]
    TIER_JIT: _ClassVar[Tier]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCEEDED: _ClassVar[Outcome]
    OUTCOME_FAILED: _ClassVar[Outcome]
    OUTCOME_ERRORED: _ClassVar[Outcome]
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_ACTIVE: TaskState
TASK_STATE_SUCCEEDED: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_ERRORED: TaskState
TASK_STATE_CRASHED: TaskState
TASK_STATE_EXPIRED: TaskState
GRANT_STATE_UNSPECIFIED: GrantState
GRANT_STATE_ACTIVE: GrantState
GRANT_STATE_REVOKED: GrantState
GRANT_STATE_EXPIRED: GrantState
DECISION_UNSPECIFIED: Decision
DECISION_GRANTED: Decision
DECISION_DENIED: Decision
DECISION_PENDING_APPROVAL: Decision
TIER_UNSPECIFIED: Tier
TIER_STANDING: Tier
TIER_JIT: Tier
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCEEDED: Outcome
OUTCOME_FAILED: Outcome
OUTCOME_ERRORED: Outcome

class Intent(_message.Message):
    __slots__ = ("action", "resource", "justification", "context")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    action: str
    resource: str
    justification: str
    context: _struct_pb2.Struct
    def __init__(self, action: _Optional[str] = ..., resource: _Optional[str] = ..., justification: _Optional[str] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "goal", "subject", "state", "started_at", "deadline", "heartbeat_interval_seconds", "labels", "pop_jkt", "ended_at", "principal", "flow_labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    POP_JKT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    FLOW_LABELS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    goal: str
    subject: str
    state: TaskState
    started_at: _timestamp_pb2.Timestamp
    deadline: _timestamp_pb2.Timestamp
    heartbeat_interval_seconds: int
    labels: _containers.ScalarMap[str, str]
    pop_jkt: str
    ended_at: _timestamp_pb2.Timestamp
    principal: Principal
    flow_labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_id: _Optional[str] = ..., goal: _Optional[str] = ..., subject: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_interval_seconds: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., pop_jkt: _Optional[str] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., principal: _Optional[_Union[Principal, _Mapping]] = ..., flow_labels: _Optional[_Iterable[str]] = ...) -> None: ...

class Principal(_message.Message):
    __slots__ = ("subject", "issuer", "claims")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    subject: str
    issuer: str
    claims: _struct_pb2.Struct
    def __init__(self, subject: _Optional[str] = ..., issuer: _Optional[str] = ..., claims: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("grant_id", "token", "tier", "audience", "scope", "issued_at", "expires_at", "intent", "task_id", "state", "revocation_reason", "decision_id", "lease", "actor", "flow_labels")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_REASON_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    FLOW_LABELS_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    token: str
    tier: Tier
    audience: str
    scope: _containers.RepeatedScalarFieldContainer[str]
    issued_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    intent: Intent
    task_id: str
    state: GrantState
    revocation_reason: str
    decision_id: str
    lease: Lease
    actor: str
    flow_labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, grant_id: _Optional[str] = ..., token: _Optional[str] = ..., tier: _Optional[_Union[Tier, str]] = ..., audience: _Optional[str] = ..., scope: _Optional[_Iterable[str]] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., intent: _Optional[_Union[Intent, _Mapping]] = ..., task_id: _Optional[str] = ..., state: _Optional[_Union[GrantState, str]] = ..., revocation_reason: _Optional[str] = ..., decision_id: _Optional[str] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ..., actor: _Optional[str] = ..., flow_labels: _Optional[_Iterable[str]] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("broker", "handle", "expires_at", "state", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BROKER_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    broker: str
    handle: str
    expires_at: _timestamp_pb2.Timestamp
    state: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, broker: _Optional[str] = ..., handle: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("broker", "handle", "dsn", "username", "password", "expires_at")
    BROKER_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    DSN_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    broker: str
    handle: str
    dsn: str
    username: str
    password: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, broker: _Optional[str] = ..., handle: _Optional[str] = ..., dsn: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class BeginTaskRequest(_message.Message):
    __slots__ = ("task_id", "goal", "max_duration_seconds", "labels", "pop_jwk", "pop_proof", "subject_token", "subject_token_type", "plan")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    POP_JWK_FIELD_NUMBER: _ClassVar[int]
    POP_PROOF_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    goal: str
    max_duration_seconds: int
    labels: _containers.ScalarMap[str, str]
    pop_jwk: _struct_pb2.Struct
    pop_proof: str
    subject_token: str
    subject_token_type: str
    plan: _containers.RepeatedCompositeFieldContainer[Intent]
    def __init__(self, task_id: _Optional[str] = ..., goal: _Optional[str] = ..., max_duration_seconds: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., pop_jwk: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., pop_proof: _Optional[str] = ..., subject_token: _Optional[str] = ..., subject_token_type: _Optional[str] = ..., plan: _Optional[_Iterable[_Union[Intent, _Mapping]]] = ...) -> None: ...

class BeginTaskResponse(_message.Message):
    __slots__ = ("task", "plan")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    task: Task
    plan: PlanEvaluation
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., plan: _Optional[_Union[PlanEvaluation, _Mapping]] = ...) -> None: ...

class RequestGrantRequest(_message.Message):
    __slots__ = ("task_id", "intent", "ttl_seconds")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    intent: Intent
    ttl_seconds: int
    def __init__(self, task_id: _Optional[str] = ..., intent: _Optional[_Union[Intent, _Mapping]] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class RequestGrantResponse(_message.Message):
    __slots__ = ("decision", "grant", "reasons", "decision_id", "approval_id", "credential")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    grant: Grant
    reasons: _containers.RepeatedScalarFieldContainer[str]
    decision_id: str
    approval_id: str
    credential: Credential
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., grant: _Optional[_Union[Grant, _Mapping]] = ..., reasons: _Optional[_Iterable[str]] = ..., decision_id: _Optional[str] = ..., approval_id: _Optional[str] = ..., credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("task", "next_heartbeat_before")
    TASK_FIELD_NUMBER: _ClassVar[int]
    NEXT_HEARTBEAT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    task: Task
    next_heartbeat_before: _timestamp_pb2.Timestamp
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., next_heartbeat_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CompleteTaskRequest(_message.Message):
    __slots__ = ("task_id", "outcome", "detail")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    outcome: Outcome
    detail: str
    def __init__(self, task_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class CompleteTaskResponse(_message.Message):
    __slots__ = ("revoked_grants", "task")
    REVOKED_GRANTS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    revoked_grants: int
    task: Task
    def __init__(self, revoked_grants: _Optional[int] = ..., task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class RevokeGrantRequest(_message.Message):
    __slots__ = ("grant_id", "reason")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    reason: str
    def __init__(self, grant_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeGrantResponse(_message.Message):
    __slots__ = ("revoked", "grant")
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    revoked: bool
    grant: Grant
    def __init__(self, revoked: _Optional[bool] = ..., grant: _Optional[_Union[Grant, _Mapping]] = ...) -> None: ...

class IntrospectTokenRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class IntrospectTokenResponse(_message.Message):
    __slots__ = ("active", "grant_id", "subject", "scope", "audience", "expires_at", "task_id", "revocation_reason", "lease", "actor", "principal")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_REASON_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    active: bool
    grant_id: str
    subject: str
    scope: _containers.RepeatedScalarFieldContainer[str]
    audience: str
    expires_at: _timestamp_pb2.Timestamp
    task_id: str
    revocation_reason: str
    lease: Lease
    actor: str
    principal: Principal
    def __init__(self, active: _Optional[bool] = ..., grant_id: _Optional[str] = ..., subject: _Optional[str] = ..., scope: _Optional[_Iterable[str]] = ..., audience: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., task_id: _Optional[str] = ..., revocation_reason: _Optional[str] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ..., actor: _Optional[str] = ..., principal: _Optional[_Union[Principal, _Mapping]] = ...) -> None: ...

class ListGrantsRequest(_message.Message):
    __slots__ = ("task_id", "include_inactive")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    include_inactive: bool
    def __init__(self, task_id: _Optional[str] = ..., include_inactive: _Optional[bool] = ...) -> None: ...

class ListGrantsResponse(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    def __init__(self, grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ...) -> None: ...

class AwaitApprovalRequest(_message.Message):
    __slots__ = ("approval_id",)
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    def __init__(self, approval_id: _Optional[str] = ...) -> None: ...

class AwaitApprovalResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: RequestGrantResponse
    def __init__(self, result: _Optional[_Union[RequestGrantResponse, _Mapping]] = ...) -> None: ...

class PlanStep(_message.Message):
    __slots__ = ("index", "intent", "decision", "tier", "reasons", "approval_id")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    index: int
    intent: Intent
    decision: Decision
    tier: Tier
    reasons: _containers.RepeatedScalarFieldContainer[str]
    approval_id: str
    def __init__(self, index: _Optional[int] = ..., intent: _Optional[_Union[Intent, _Mapping]] = ..., decision: _Optional[_Union[Decision, str]] = ..., tier: _Optional[_Union[Tier, str]] = ..., reasons: _Optional[_Iterable[str]] = ..., approval_id: _Optional[str] = ...) -> None: ...

class PlanEvaluation(_message.Message):
    __slots__ = ("allowed", "steps", "approval_steps", "decision_id")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    steps: _containers.RepeatedCompositeFieldContainer[PlanStep]
    approval_steps: _containers.RepeatedScalarFieldContainer[int]
    decision_id: str
    def __init__(self, allowed: _Optional[bool] = ..., steps: _Optional[_Iterable[_Union[PlanStep, _Mapping]]] = ..., approval_steps: _Optional[_Iterable[int]] = ..., decision_id: _Optional[str] = ...) -> None: ...

class EvaluatePlanRequest(_message.Message):
    __slots__ = ("task_id", "request_approvals")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_APPROVALS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    request_approvals: bool
    def __init__(self, task_id: _Optional[str] = ..., request_approvals: _Optional[bool] = ...) -> None: ...

class EvaluatePlanResponse(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: PlanEvaluation
    def __init__(self, plan: _Optional[_Union[PlanEvaluation, _Mapping]] = ...) -> None: ...

class GrantStreamRequest(_message.Message):
    __slots__ = ("request_id", "task_id", "intents")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INTENTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    task_id: str
    intents: _containers.RepeatedCompositeFieldContainer[GrantStreamIntent]
    def __init__(self, request_id: _Optional[str] = ..., task_id: _Optional[str] = ..., intents: _Optional[_Iterable[_Union[GrantStreamIntent, _Mapping]]] = ...) -> None: ...

class GrantStreamIntent(_message.Message):
    __slots__ = ("intent", "ttl_seconds")
    INTENT_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    intent: Intent
    ttl_seconds: int
    def __init__(self, intent: _Optional[_Union[Intent, _Mapping]] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class GrantStreamResponse(_message.Message):
    __slots__ = ("request_id", "results", "task")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    results: _containers.RepeatedCompositeFieldContainer[GrantStreamResult]
    task: Task
    def __init__(self, request_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[GrantStreamResult, _Mapping]]] = ..., task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class GrantStreamResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: RequestGrantResponse
    error: _status_pb2.Status
    def __init__(self, response: _Optional[_Union[RequestGrantResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...
