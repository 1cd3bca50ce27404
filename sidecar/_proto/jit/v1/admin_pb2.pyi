import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from sidecar._proto.jit.v1 import access_pb2 as _access_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApprovalState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_STATE_UNSPECIFIED: _ClassVar[ApprovalState]
    APPROVAL_STATE_PENDING: _ClassVar[ApprovalState]
    APPROVAL_STATE_APPROVED: _ClassVar[ApprovalState]
    APPROVAL_STATE_DENIED: _ClassVar[ApprovalState]
    APPROVAL_STATE_EXPIRED: _ClassVar[ApprovalState]
    APPROVAL_STATE_USED: _ClassVar[ApprovalState]
APPROVAL_STATE_UNSPECIFIED: ApprovalState
APPROVAL_STATE_PENDING: ApprovalState
APPROVAL_STATE_APPROVED: ApprovalState
APPROVAL_STATE_DENIED: ApprovalState
APPROVAL_STATE_EXPIRED: ApprovalState
APPROVAL_STATE_USED: ApprovalState

class RevokeRequest(_message.Message):
    __slots__ = ("grant_id", "task_id", "subject", "all", "principal", "reason")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    task_id: str
    subject: str
    all: bool
    principal: str
    reason: str
    def __init__(self, grant_id: _Optional[str] = ..., task_id: _Optional[str] = ..., subject: _Optional[str] = ..., all: _Optional[bool] = ..., principal: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("revoked_grants",)
    REVOKED_GRANTS_FIELD_NUMBER: _ClassVar[int]
    revoked_grants: int
    def __init__(self, revoked_grants: _Optional[int] = ...) -> None: ...

class RotateSigningKeyRequest(_message.Message):
    __slots__ = ("reload_from_file",)
    RELOAD_FROM_FILE_FIELD_NUMBER: _ClassVar[int]
    reload_from_file: bool
    def __init__(self, reload_from_file: _Optional[bool] = ...) -> None: ...

class RotateSigningKeyResponse(_message.Message):
    __slots__ = ("kid", "previous_kid", "previous_retires_at")
    KID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_KID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RETIRES_AT_FIELD_NUMBER: _ClassVar[int]
    kid: str
    previous_kid: str
    previous_retires_at: _timestamp_pb2.Timestamp
    def __init__(self, kid: _Optional[str] = ..., previous_kid: _Optional[str] = ..., previous_retires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("approval_id", "state", "task_id", "subject", "intent", "reasons", "created_at", "expires_at", "decided_by", "decision_reason", "ttl_seconds", "task_goal", "task_labels", "tier", "task_grants", "four_eyes", "owners", "principal")
    class TaskLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    DECISION_REASON_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TASK_GOAL_FIELD_NUMBER: _ClassVar[int]
    TASK_LABELS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TASK_GRANTS_FIELD_NUMBER: _ClassVar[int]
    FOUR_EYES_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    state: ApprovalState
    task_id: str
    subject: str
    intent: _access_pb2.Intent
    reasons: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    decided_by: str
    decision_reason: str
    ttl_seconds: int
    task_goal: str
    task_labels: _containers.ScalarMap[str, str]
    tier: _access_pb2.Tier
    task_grants: _containers.RepeatedCompositeFieldContainer[_access_pb2.Grant]
    four_eyes: bool
    owners: _containers.RepeatedScalarFieldContainer[str]
    principal: _access_pb2.Principal
    def __init__(self, approval_id: _Optional[str] = ..., state: _Optional[_Union[ApprovalState, str]] = ..., task_id: _Optional[str] = ..., subject: _Optional[str] = ..., intent: _Optional[_Union[_access_pb2.Intent, _Mapping]] = ..., reasons: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decided_by: _Optional[str] = ..., decision_reason: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., task_goal: _Optional[str] = ..., task_labels: _Optional[_Mapping[str, str]] = ..., tier: _Optional[_Union[_access_pb2.Tier, str]] = ..., task_grants: _Optional[_Iterable[_Union[_access_pb2.Grant, _Mapping]]] = ..., four_eyes: _Optional[bool] = ..., owners: _Optional[_Iterable[str]] = ..., principal: _Optional[_Union[_access_pb2.Principal, _Mapping]] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("include_decided",)
    INCLUDE_DECIDED_FIELD_NUMBER: _ClassVar[int]
    include_decided: bool
    def __init__(self, include_decided: _Optional[bool] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class DecideApprovalRequest(_message.Message):
    __slots__ = ("approval_id", "approve", "reason", "approver")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    approve: bool
    reason: str
    approver: str
    def __init__(self, approval_id: _Optional[str] = ..., approve: _Optional[bool] = ..., reason: _Optional[str] = ..., approver: _Optional[str] = ...) -> None: ...

class DecideApprovalResponse(_message.Message):
    __slots__ = ("approval",)
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("subject",)
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    def __init__(self, subject: _Optional[str] = ...) -> None: ...

class TaskView(_message.Message):
    __slots__ = ("task", "grants")
    TASK_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    task: _access_pb2.Task
    grants: _containers.RepeatedCompositeFieldContainer[_access_pb2.Grant]
    def __init__(self, task: _Optional[_Union[_access_pb2.Task, _Mapping]] = ..., grants: _Optional[_Iterable[_Union[_access_pb2.Grant, _Mapping]]] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskView]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskView, _Mapping]]] = ...) -> None: ...

class QueryAuditRequest(_message.Message):
    __slots__ = ("task_id", "subject", "grant_id", "events", "since", "until", "limit", "verify")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    subject: str
    grant_id: str
    events: _containers.RepeatedScalarFieldContainer[str]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    limit: int
    verify: bool
    def __init__(self, task_id: _Optional[str] = ..., subject: _Optional[str] = ..., grant_id: _Optional[str] = ..., events: _Optional[_Iterable[str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., verify: _Optional[bool] = ...) -> None: ...

class AuditChainStatus(_message.Message):
    __slots__ = ("ok", "records", "first_seq", "last_seq", "last_hash", "problem", "bad_file", "bad_line")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_HASH_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    BAD_FILE_FIELD_NUMBER: _ClassVar[int]
    BAD_LINE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records: int
    first_seq: int
    last_seq: int
    last_hash: str
    problem: str
    bad_file: str
    bad_line: int
    def __init__(self, ok: _Optional[bool] = ..., records: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., last_hash: _Optional[str] = ..., problem: _Optional[str] = ..., bad_file: _Optional[str] = ..., bad_line: _Optional[int] = ...) -> None: ...

class QueryAuditResponse(_message.Message):
    __slots__ = ("records", "truncated", "chain")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    truncated: bool
    chain: AuditChainStatus
    def __init__(self, records: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., truncated: _Optional[bool] = ..., chain: _Optional[_Union[AuditChainStatus, _Mapping]] = ...) -> None: ...
