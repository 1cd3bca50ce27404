"""HTTP listener settings: the credential default, the anonymous opt-in, timeouts and the
connection cap are validated at start-up, and `--flag` alone turns a boolean setting on."""

from __future__ import annotations

import pytest

from sidecar.cli import build_parser
from sidecar.config import load
from sidecar.errors import ConfigError
from sidecar.server import HTTP_FD_SHARE

ANONYMOUS = {"http_allow_anonymous_loopback": "true"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"identity": "jwt-svid", "http_addr": "0.0.0.0:9464", "http_token_file": "t"}
            | ANONYMOUS,
            "http_allow_anonymous_loopback is refused while http_addr is bound beyond",
        ),
        (
            {"identity": "dev", "http_token_file": "t"} | ANONYMOUS,
            "set either http_token_file or http_allow_anonymous_loopback",
        ),
        ({"identity": "dev", "http_max_connections": "0"}, "http_max_connections must be at"),
        ({"identity": "dev", "http_header_timeout": "0"}, "http_header_timeout must be greater"),
        ({"identity": "dev", "http_body_timeout": "-1"}, "http_body_timeout must be greater"),
    ],
)
def test_unusable_http_settings_are_refused(overrides: dict[str, str], message: str) -> None:
    """Anonymous access beyond loopback, or next to a credential, and non-positive limits
    are refused with a message naming the setting."""
    with pytest.raises(ConfigError, match=message):
        load(overrides, env={})


def test_defaults_require_a_credential_and_bound_the_listener() -> None:
    """By default nothing opens /introspect anonymously, and the listener has finite
    timeouts and a cap."""
    config = load({"identity": "dev"}, env={})
    assert config.http_token_file is None
    assert config.http_allow_anonymous_loopback is False
    assert config.http_header_timeout == 10.0
    assert config.http_body_timeout == 10.0
    assert config.http_max_connections == 128
    assert HTTP_FD_SHARE >= 2


def test_boolean_flag_alone_means_true() -> None:
    """`--http-allow-anonymous-loopback` alone is true; `--redis-cluster false` still parses."""
    args = build_parser().parse_args(
        ["serve", "--identity", "dev", "--http-allow-anonymous-loopback"]
    )
    config = load(
        {"identity": "dev", "http_allow_anonymous_loopback": args.http_allow_anonymous_loopback},
        env={},
    )
    explicit = build_parser().parse_args(["serve", "--redis-cluster", "false"])
    assert config.http_allow_anonymous_loopback is True
    assert explicit.redis_cluster == "false"
