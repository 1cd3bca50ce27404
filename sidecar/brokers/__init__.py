"""Credential brokers: turn a granted intent into a credential a real system accepts, and take
it back when access ends (docs/brokers.md).

A broker is one module implementing `Broker` (`base.py`). The engine asks it for a credential
after the decision and before the grant is persisted; the lease it returns is part of the
grant (stored, audited, listed), and revoking the grant revokes the lease, durably.
"""

from __future__ import annotations

from .base import (
    Broker,
    BrokerError,
    BrokerUnavailable,
    CredentialSpec,
    CredentialSpecInvalid,
    IssuedCredential,
    Lease,
    LeaseRequest,
)

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "CredentialSpec",
    "CredentialSpecInvalid",
    "IssuedCredential",
    "Lease",
    "LeaseRequest",
]
