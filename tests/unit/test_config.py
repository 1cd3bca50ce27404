"""Configuration: precedence, validation, and the generated reference staying in sync."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import load, markdown_reference
from sidecar.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    """Flags beat environment, which beats the TOML file, which beats defaults."""
    toml = tmp_path / "c.toml"
    toml.write_text('opa-timeout = 0.5\nmax_ttl = 600\nsocket_mode = "640"\n')
    env = {"JIT_SIDECAR_MAX_TTL": "700", "JIT_SIDECAR_IDENTITY": "dev"}
    config = load({"max_ttl": "800"}, env=env, config_file=toml)
    assert config.opa_timeout == 0.5
    assert config.max_ttl == 800
    assert config.socket_mode == 0o640
    assert load({}, env=env, config_file=toml).max_ttl == 700


def test_unknown_file_key_is_an_error(tmp_path: Path) -> None:
    """A typo in the TOML file is reported, never silently ignored."""
    toml = tmp_path / "c.toml"
    toml.write_text("opa_tiemout = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'opa_tiemout'"):
        load({"identity": "dev"}, env={}, config_file=toml)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"identity": "root"}, "identity must be one of"),
        ({"identity": "dev", "max_ttl": "0"}, "max_ttl must be at least 1"),
        ({"identity": "dev", "opa_url": "ftp://x"}, "opa_url must start with"),
        ({"identity": "dev", "http_addr": "0.0.0.0:9464"}, "dev identity trusts every"),
        ({"identity": "dev", "http_addr": "nonsense"}, "http_addr must be HOST:PORT"),
        ({"identity": "dev", "max_requested_ttl": "10"}, "max_requested_ttl must be at least"),
        ({"identity": "dev", "state": "mysql://x"}, "state must be sqlite:PATH"),
        ({"identity": "dev", "authzen_decision_path": "/v1/data/x"}, "authzen_decision_path must"),
        ({"identity": "dev", "principal_leeway": "61"}, "principal_leeway must be between"),
        (
            {"identity": "dev", "principal_issuer": "http://idp.example.com"},
            "principal_issuer 'http://idp.example.com' must be an https:// URL",
        ),
        (
            {
                "identity": "oidc",
                "oidc_issuer": "https://k8s.example",
                "oidc_subject_map": "{a}=spiffe://x/{a}",
                "principal_issuer": "https://k8s.example",
            },
            "needs a principal_audience other than audience",
        ),
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, str], message: str) -> None:
    """Each unusable setting is refused at start-up with a message naming it."""
    with pytest.raises(ConfigError, match=message):
        load(overrides, env={})


def test_broker_admin_dsn_is_a_secret_from_the_environment_only(tmp_path: Path) -> None:
    """The postgres broker's admin DSN is read from JIT_SIDECAR_BROKER_POSTGRES_DSN, never
    from a flag or the TOML file, is not in the Config's repr, and the reference says so."""
    secret = "host=db user=admin password=hunter2"
    config = load({"identity": "dev"}, env={"JIT_SIDECAR_BROKER_POSTGRES_DSN": secret})
    toml = tmp_path / "c.toml"
    toml.write_text(f'broker_postgres_dsn = "{secret}"\n')
    with pytest.raises(ConfigError) as as_flag:
        load({"identity": "dev", "broker_postgres_dsn": secret}, env={})
    with pytest.raises(ConfigError) as in_file:
        load({"identity": "dev"}, env={}, config_file=toml)
    assert config.broker_postgres_dsn == secret
    assert "hunter2" not in repr(config)
    assert "hunter2" not in as_flag.value.message + in_file.value.message
    assert "JIT_SIDECAR_BROKER_POSTGRES_DSN" in as_flag.value.message
    assert "| (environment only) | `JIT_SIDECAR_BROKER_POSTGRES_DSN` |" in markdown_reference()


def test_broker_admin_dsn_from_file_and_environment_is_ambiguous(tmp_path: Path) -> None:
    """Both sources at once are refused rather than one silently winning."""
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("host=db\n")
    with pytest.raises(ConfigError, match="not both"):
        load(
            {"identity": "dev", "broker_postgres_dsn_file": str(dsn_file)},
            env={"JIT_SIDECAR_BROKER_POSTGRES_DSN": "host=db"},
        )


def test_serve_requires_identity_mode() -> None:
    """`serve` without --identity is refused: there is no silently-trusting default."""
    with pytest.raises(ConfigError, match="identity must be one of"):
        load({}, env={})


def test_docs_configuration_reference_is_in_sync() -> None:
    """docs/configuration.md is exactly what `python -m sidecar.config --markdown` prints."""
    assert (ROOT / "docs/configuration.md").read_text() == markdown_reference()


def test_api_docs_list_every_reason_code() -> None:
    """docs/api.md documents every reason code the sidecar can answer."""
    from sidecar.errors import Reason

    text = (ROOT / "docs/api.md").read_text()
    missing = [r.value for r in Reason if f"`{r.value}`" not in text]
    assert missing == []


def test_egress_secret_variables_are_read_with_the_config(tmp_path: Path) -> None:
    """The config takes exactly the variables the egress file names as secret sources (so
    the proxy never reads the environment itself), and never shows them in its repr."""
    egress = tmp_path / "egress.toml"
    egress.write_text(
        'listen = "127.0.0.1:9480"\n'
        '[upstreams.a]\nurl = "https://a.example"\ninject = "header"\nsecret_env = "A_KEY"\n'
        '[upstreams.b]\nurl = "https://b.example"\ninject = "oauth2"\n'
        'token_url = "https://idp.example/token"\nclient_id = "c"\n'
        'client_secret_env = "B_SECRET"\n'
    )
    env = {
        "JIT_SIDECAR_IDENTITY": "dev",
        "JIT_SIDECAR_EGRESS_CONFIG": str(egress),
        "A_KEY": "a-value-123",
        "B_SECRET": "b-value-456",
        "UNRELATED": "x",
    }
    config = load({}, env=env)
    assert dict(config.egress_env) == {"A_KEY": "a-value-123", "B_SECRET": "b-value-456"}
    assert "a-value-123" not in repr(config)
    assert "b-value-456" not in repr(config)
    assert load({}, env={"JIT_SIDECAR_IDENTITY": "dev"}).egress_env == {}
    assert "egress-env" not in markdown_reference()
