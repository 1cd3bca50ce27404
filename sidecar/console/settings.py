"""The console's settings: one frozen object, built once from its command-line flags."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..config import is_loopback_host
from ..errors import ConfigError

ROLES = ("viewer", "approver", "operator")
"""viewer: reads everything; approver: decides approvals; operator: revokes (kill switch)."""


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    sidecars: Mapping[str, Path]
    """Name → the admin socket of each sidecar this console serves."""
    host: str = "127.0.0.1"
    port: int = 8700
    public_url: str = ""
    """The origin browsers use (redirect URI and the Origin check); from host:port if empty."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = field(default="", repr=False)
    oidc_ca_file: Path | None = None
    user_claim: str = "email"
    """The ID token claim that names the person (falls back to `sub`); recorded as approver."""
    roles_claim: str = "groups"
    role_map: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Group (a value of `roles_claim`) → console roles."""
    dev_token: str = field(default="", repr=False)
    """A static bearer credential for development (empty: none accepted)."""
    dev_user: str = "dev@localhost"
    dev_roles: tuple[str, ...] = ROLES
    session_ttl: int = 8 * 3600
    poll_interval: float = 1.0
    """Seconds between the console's looks at each sidecar (live updates)."""

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def origin(self) -> str:
        """Scheme://host[:port] of the console as browsers see it (RFC 6454 §6.1)."""
        if self.public_url:
            parts = urlsplit(self.public_url)
            return f"{parts.scheme}://{parts.netloc}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def validate(self) -> None:
        problems = []
        if not self.sidecars:
            problems.append("name at least one sidecar (--sidecar NAME=ADMIN_SOCKET)")
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("--tls-cert and --tls-key go together")
        if not self.tls and not is_loopback_host(self.host):
            problems.append(
                f"--listen {self.host} is not a loopback address: configure --tls-cert and "
                "--tls-key to serve other hosts"
            )
        if self.public_url and urlsplit(self.public_url).scheme not in ("http", "https"):
            problems.append("--public-url must be an http(s) URL")
        if bool(self.oidc_issuer) != bool(self.oidc_client_id):
            problems.append("--oidc-issuer and --oidc-client-id go together")
        if not self.oidc_issuer and not self.dev_token:
            problems.append("configure an OIDC login (--oidc-issuer) or --dev-token-file")
        if self.dev_token and len(self.dev_token) < 16:
            problems.append("the dev token must hold at least 16 characters")
        for group, roles in self.role_map.items():
            for role in roles:
                if role not in ROLES:
                    problems.append(f"--role-map {group}: unknown role {role!r}")
        if self.session_ttl < 60:
            problems.append("--session-ttl must be at least 60 seconds")
        if problems:
            raise ConfigError("; ".join(problems))


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sidecar",
        action="append",
        default=[],
        metavar="NAME=ADMIN_SOCKET",
        help="a sidecar to serve, by its admin socket (repeat for several; "
        "default local=var/admin.sock)",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:8700", help="HOST:PORT (loopback unless TLS is set)"
    )
    parser.add_argument("--public-url", default="", help="URL browsers use, if not --listen")
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--oidc-issuer", default="", help="OIDC issuer URL for the login")
    parser.add_argument("--oidc-client-id", default="")
    parser.add_argument("--oidc-client-secret-file", type=Path)
    parser.add_argument("--oidc-ca-file", type=Path, help="CA bundle for the issuer")
    parser.add_argument("--user-claim", default="email")
    parser.add_argument("--roles-claim", default="groups")
    parser.add_argument(
        "--role-map",
        action="append",
        default=[],
        metavar="GROUP=ROLE[+ROLE]",
        help="map a value of --roles-claim to console roles (viewer, approver, operator)",
    )
    parser.add_argument("--dev-token-file", type=Path, help="static bearer credential (dev)")
    parser.add_argument("--dev-user", default="dev@localhost")
    parser.add_argument("--dev-roles", default=",".join(ROLES))
    parser.add_argument("--session-ttl", type=int, default=8 * 3600)
    parser.add_argument("--poll-interval", type=float, default=1.0)


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{flag}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _secret(path: Path | None, what: str) -> str:
    if path is None:
        return ""
    try:
        return path.read_text().strip()
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from err


def from_args(args: argparse.Namespace) -> ConsoleSettings:
    host, sep, port = str(args.listen).rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen: expected HOST:PORT, got {args.listen!r}")
    sidecars = _pairs(args.sidecar, "--sidecar") or {"local": "var/admin.sock"}
    settings = ConsoleSettings(
        sidecars={name: Path(path) for name, path in sidecars.items()},
        host=host.strip("[]"),
        port=int(port),
        public_url=args.public_url,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        oidc_issuer=args.oidc_issuer,
        oidc_client_id=args.oidc_client_id,
        oidc_client_secret=_secret(args.oidc_client_secret_file, "--oidc-client-secret-file"),
        oidc_ca_file=args.oidc_ca_file,
        user_claim=args.user_claim,
        roles_claim=args.roles_claim,
        role_map={
            group: tuple(r.strip() for r in roles.split("+") if r.strip())
            for group, roles in _pairs(args.role_map, "--role-map").items()
        },
        dev_token=_secret(args.dev_token_file, "--dev-token-file"),
        dev_user=args.dev_user,
        dev_roles=tuple(r.strip() for r in args.dev_roles.split(",") if r.strip()),
        session_ttl=args.session_ttl,
        poll_interval=args.poll_interval,
    )
    settings.validate()
    if any(r not in ROLES for r in settings.dev_roles):
        raise ConfigError(f"--dev-roles: roles are {', '.join(ROLES)}")
    return settings
