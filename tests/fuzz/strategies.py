"""Hypothesis strategies for hostile input: adversarial strings (controls, NUL, bidi
overrides, confusables, zero-width and fullwidth forms, sizes at and around every limit),
JSON-like values for Struct contexts, and JWT-shaped tokens."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from hypothesis import strategies as st

from sidecar.validation import (
    MAX_ACTION_BYTES,
    MAX_JUSTIFICATION_BYTES,
    MAX_LABEL_VALUE_BYTES,
    MAX_RESOURCE_BYTES,
)


def examples(n: int) -> int:
    """`n` examples under the ci profile, ten times as many under HYPOTHESIS_PROFILE=deep."""
    return n * 10 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else n


ADVERSARIAL = [
    "",
    " ",
    "\x00",
    "docs.read\x00",
    "docs.re\x00ad",
    "docs.read\n",
    "docs.read\r\nX-Injected: 1",
    "\x1b[31mred",
    "docs.r\u0435ad",  # Cyrillic e
    "\uff44\uff4f\uff43\uff53.read",  # fullwidth
    "docs\u200b.read",  # zero-width space
    "docs.read\u202e",  # right-to-left override
    "\u2066docs.read\u2069",
    "\ufeffdocs.read",
    "docs.read\u0301",  # combining accent
    "../../etc/passwd",
    "docs://../../etc/passwd",
    "docs://a b",
    "docs://a\tb",
    "docs:/",
    "docs:",
    "://x",
    "javascript:alert(1)",
    "docs://%00",
    "docs://a?b=c#d",
    "\U0001d41d\U0001d428\U0001d41c\U0001d42c.read",  # mathematical bold
    "docs.read" + "\U0010ffff",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "'; DROP TABLE grants; --",
    "\\",
    '"',
    "spiffe://jit.local/agent/dev",
]
VALID_ACTIONS = ["docs.read", "docs.list", "tickets.update", "tickets.read", "secrets.read"]
VALID_RESOURCES = ["docs://a", "docs://reports/q3", "tickets://1", "payments://orders/42"]
LIMITS = [MAX_ACTION_BYTES, MAX_RESOURCE_BYTES, MAX_JUSTIFICATION_BYTES, MAX_LABEL_VALUE_BYTES]


def _sized() -> st.SearchStrategy[str]:
    """Strings at, just below and just above each byte limit (ASCII and multi-byte)."""
    sizes = sorted({n + d for n in LIMITS for d in (-1, 0, 1)} | {10_000, 70_000})
    return st.builds(
        lambda n, ch, prefix: (prefix + ch * n)[: max(n, 0)],
        st.sampled_from(sizes),
        st.sampled_from(["a", "\u00e9", "\U0001d41d", "\x00"]),
        st.sampled_from(["", "docs.", "docs://"]),
    )


def hostile_text(*, valid: list[str] | None = None) -> st.SearchStrategy[str]:
    """Any Unicode text (no lone surrogates: protobuf strings are UTF-8), adversarial
    samples, sizes around the limits, and — when given — valid values, often."""
    parts: list[st.SearchStrategy[str]] = [
        st.text(st.characters(exclude_categories=["Cs"]), max_size=64),
        st.sampled_from(ADVERSARIAL),
        _sized(),
        st.builds(
            lambda a, b: a + b,
            st.sampled_from(valid or ADVERSARIAL),
            st.sampled_from(ADVERSARIAL),
        ),
    ]
    if valid:
        parts = [st.sampled_from(valid), st.sampled_from(valid), *parts]
    return st.one_of(*parts)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63),
    hostile_text(),
)


def json_values(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    return st.recursive(
        json_scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=6),
            st.dictionaries(hostile_text(), children, max_size=6),
        ),
        max_leaves=max_leaves,
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment() -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda v: b64(json.dumps(v).encode()), json_values(10)),
        st.builds(b64, st.binary(max_size=80)),
        st.text(max_size=40),
        st.sampled_from(["", "e30", "bnVsbA", "W10", "=", "====", b64(b"[" * 5000)]),
    )


def jwt_like() -> st.SearchStrategy[str]:
    """Token-shaped garbage: 1-5 dot-separated segments of JSON, bytes or text."""
    return st.one_of(
        st.lists(_segment(), min_size=1, max_size=5).map(".".join),
        st.text(max_size=200),
        st.sampled_from(["", ".", "..", "a.b.c", "Bearer x", "\x00.\x00.\x00"]),
    )
