"""deploy/kubernetes: what the rendered manifests must say (schemas: make deploy-check).

Renders the kustomize base and overlays with the real kustomize binary; kubeconform and the
PodMonitor validator in scripts/deploy-check.sh check the same output against schemas.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from sidecar.config import ENV_PREFIX, Config, load
from tests.deploy import DEPLOY, ROOT, kustomize_build, load_yaml

K8S = DEPLOY / "kubernetes"
# The policy as OPA loads it: every module and data file of rego/jit except the tests.
POLICY_FILES = sorted(
    p.name
    for p in (ROOT / "rego" / "jit").iterdir()
    if (p.suffix == ".rego" and not p.stem.endswith("_test")) or p.name == "data.json"
)
OPA_IMAGE = "openpolicyagent/opa:1.22.3-static"
# Console decision logs give every decision a decision_id; --disable-telemetry is deprecated.
OPA_ARGS = [
    "run",
    "--server",
    "--skip-version-check",
    "--set",
    "decision_logs.console=true",
    "--addr",
    "127.0.0.1:8181",
]


def _render(name: str) -> dict[str, Any]:
    directory = K8S / "base" if name == "base" else K8S / "overlays" / name
    docs = kustomize_build(directory)
    return {"docs": docs, **{f"{d['kind']}/{d['metadata']['name']}": d for d in docs}}


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return _render("base")


@pytest.fixture(scope="module")
def spire() -> dict[str, Any]:
    return _render("spire")


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    return _render("opa-bundle")


def _pod(rendered: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = rendered["Deployment/agent"]["spec"]["template"]["spec"]
    return spec


def _containers(rendered: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in _pod(rendered)["containers"]}


def _all_containers(rendered: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod(rendered)
    return [*pod.get("initContainers", []), *pod["containers"]]


def _config_map(rendered: dict[str, Any], prefix: str) -> dict[str, Any]:
    (found,) = [
        d
        for d in rendered["docs"]
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix + "-")
    ]
    return found


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def _volume(rendered: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [v for v in _pod(rendered)["volumes"] if v["name"] == name]
    return found


def _under(path: str, mount: dict[str, Any]) -> bool:
    return PurePosixPath(mount["mountPath"]) in PurePosixPath(path).parents


def _sidecar_config(rendered: dict[str, Any]) -> Config:
    """The settings the sidecar process gets: its args, the ConfigMap and its own env."""
    sidecar = _containers(rendered)["jit-sidecar"]
    env = dict(_config_map(rendered, "jit-sidecar-config")["data"])
    env.update({e["name"]: e["value"] for e in sidecar.get("env", []) if "value" in e})
    args = sidecar["args"]
    return load({"identity": args[args.index("--identity") + 1]}, env=env, serving=True)


def test_pod_has_agent_sidecar_and_opa(base: dict[str, Any]) -> None:
    """One pod: the agent, jit-sidecar (jwt-svid identity) and the pinned static OPA image."""
    containers = _containers(base)
    opa = containers["opa"]
    assert list(containers) == ["agent", "jit-sidecar", "opa"]
    assert containers["jit-sidecar"]["args"] == ["serve", "--identity", "jwt-svid"]
    assert opa["image"] == OPA_IMAGE
    assert opa["args"][:7] == OPA_ARGS
    assert opa["args"][-1] == "/policies"


@pytest.mark.parametrize("overlay", ["base", "spire", "opa-bundle"])
def test_every_container_is_locked_down(overlay: str) -> None:
    """Non-root, seccomp, no privilege escalation, read-only root, no capabilities, limits."""
    rendered = _render(overlay)
    pod_security = _pod(rendered)["securityContext"]
    problems = []
    for c in _all_containers(rendered):
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append((c["name"], "allowPrivilegeEscalation"))
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append((c["name"], "readOnlyRootFilesystem"))
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc["capabilities"].get("add"):
            problems.append((c["name"], "capabilities"))
        if sc.get("runAsUser", pod_security["runAsUser"]) == 0 or sc.get("privileged"):
            problems.append((c["name"], "root"))
        for kind in ("requests", "limits"):
            if set(c.get("resources", {}).get(kind, {})) != {"cpu", "memory"}:
                problems.append((c["name"], kind))
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert problems == []


def test_socket_directory_is_shared_and_the_admin_socket_is_not(base: dict[str, Any]) -> None:
    """Agent and sidecar share an in-memory emptyDir for the agent socket; the admin socket
    lives where the agent cannot reach it."""
    containers = _containers(base)
    config = _sidecar_config(base)
    agent_mount = _mounts(containers["agent"])["jit-socket"]
    sidecar_mount = _mounts(containers["jit-sidecar"])["jit-socket"]
    agent_env = {e["name"]: e["value"] for e in containers["agent"]["env"]}
    assert _volume(base, "jit-socket")["emptyDir"]["medium"] == "Memory"
    assert agent_mount["mountPath"] == sidecar_mount["mountPath"]
    assert agent_mount["readOnly"] is True
    assert _under(str(config.socket), sidecar_mount)
    # The sidecar refuses a socket directory anyone may write to; the emptyDir root is one.
    assert config.socket.parent != PurePosixPath(sidecar_mount["mountPath"])
    assert agent_env["JIT_SIDECAR_SOCKET"] == str(config.socket)
    assert not any(_under(str(config.admin_socket), m) for m in containers["agent"]["volumeMounts"])


def test_probes_hit_healthz_and_readyz_on_the_http_listener(base: dict[str, Any]) -> None:
    """Liveness /healthz and readiness /readyz on the sidecar's HTTP port (9464)."""
    sidecar = _containers(base)["jit-sidecar"]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    config = _sidecar_config(base)
    live, ready = sidecar["livenessProbe"]["httpGet"], sidecar["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz"
    assert ready["path"] == "/readyz"
    assert ports[live["port"]] == ports[ready["port"]] == 9464
    assert config.http_host_port == ("0.0.0.0", 9464)


def test_sidecar_settings_are_real_settings_that_validate(base: dict[str, Any]) -> None:
    """Every ConfigMap key is a JIT_SIDECAR_* setting and the whole set passes validation."""
    data = _config_map(base, "jit-sidecar-config")["data"]
    names = {ENV_PREFIX + f.upper() for f in Config.__dataclass_fields__}
    config = _sidecar_config(base)
    assert set(data) <= names
    assert config.identity == "jwt-svid"
    assert config.http_token_file is not None
    assert config.opa_url == "http://127.0.0.1:8181"


def test_signing_key_comes_from_a_read_only_0400_secret(base: dict[str, Any]) -> None:
    """The Secret is mounted read-only with mode 0400, into the init container only, which
    copies it (0600) to a memory volume only the sidecar mounts (it refuses group-readable keys,
    and `keys rotate` writes the new key there)."""
    secret = _volume(base, "jit-secrets")["secret"]
    pod = _pod(base)
    (installer,) = pod["initContainers"]
    keys_volume = _volume(base, "jit-keys")["emptyDir"]
    sidecar_keys = _mounts(_containers(base)["jit-sidecar"])["jit-keys"]
    config = _sidecar_config(base)
    holders = [c["name"] for c in _all_containers(base) if "jit-secrets" in _mounts(c)]
    assert secret == {"secretName": "jit-sidecar-keys", "defaultMode": 0o400}
    assert holders == ["install-keys"]
    assert _mounts(installer)["jit-secrets"]["readOnly"] is True
    assert "0o600" in installer["command"][-1]
    assert keys_volume["medium"] == "Memory"
    assert [c["name"] for c in _pod(base)["containers"] if "jit-keys" in _mounts(c)] == [
        "jit-sidecar"
    ]
    assert config.signing_key is not None
    assert _under(str(config.signing_key), sidecar_keys)
    assert config.http_token_file is not None
    assert _under(str(config.http_token_file), sidecar_keys)


def test_policies_configmap_matches_rego_and_keeps_the_package_path(base: dict[str, Any]) -> None:
    """The policy ConfigMap holds rego/jit's files unchanged, mounted as /policies/jit/...
    so data.json lands at data.jit as with `opa run rego/`."""
    data = _config_map(base, "jit-policies")["data"]
    items = _volume(base, "jit-policies")["configMap"]["items"]
    mount = _mounts(_containers(base)["opa"])["jit-policies"]
    assert data == {name: (ROOT / "rego/jit" / name).read_text() for name in POLICY_FILES}
    assert {i["key"]: i["path"] for i in items} == {name: f"jit/{name}" for name in POLICY_FILES}
    assert mount["mountPath"] == "/policies"
    assert mount["readOnly"] is True


def test_policies_have_one_source() -> None:
    """deploy/ holds no copy of a policy: the ConfigMap is generated from rego/ itself
    (rego/Kustomization), so a policy change cannot miss the Kubernetes manifests."""
    copies = sorted(
        str(p.relative_to(ROOT))
        for p in DEPLOY.rglob("*")
        if p.suffix == ".rego" or (p.name == "data.json" and "policies" in p.parts)
    )
    generator = load_yaml(ROOT / "rego" / "Kustomization")["configMapGenerator"]
    (policies,) = [g for g in generator if g["name"] == "jit-policies"]
    assert copies == []
    assert sorted(f.split("=", 1)[1] for f in policies["files"]) == [
        f"jit/{name}" for name in POLICY_FILES
    ]


def test_trust_bundle_is_mounted_where_the_setting_points(base: dict[str, Any]) -> None:
    """--trust-bundle names a file of the trust-bundle ConfigMap's mount."""
    config = _sidecar_config(base)
    mount = _mounts(_containers(base)["jit-sidecar"])["jit-trust-bundle"]
    data = _config_map(base, "jit-trust-bundle")["data"]
    paths = [Path(p) for p in config.trust_bundle.values()]
    assert paths
    assert all(_under(str(p), mount) and p.name in data for p in paths)


def test_podmonitor_scrapes_the_pods_named_ports(base: dict[str, Any]) -> None:
    """The PodMonitor selects the agent pod's labels and scrapes ports the pod declares."""
    monitor = base["PodMonitor/jit-sidecar"]
    labels = base["Deployment/agent"]["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for c in _pod(base)["containers"] for p in c.get("ports", [])}
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert {e["port"] for e in endpoints} <= ports
    assert {"jit-http"} <= {e["port"] for e in endpoints}
    assert all(e["path"] == "/metrics" for e in endpoints)


def test_spire_overlay_mounts_the_workload_api_socket(spire: dict[str, Any]) -> None:
    """With SPIRE, agent and sidecar get the SPIFFE CSI driver's socket, read-only, and the
    sidecar takes bundles from it instead of a JWKS file."""
    volume = _volume(spire, "spiffe-workload-api")
    containers = _containers(spire)
    config = _sidecar_config(spire)
    for name in ("agent", "jit-sidecar"):
        mount = _mounts(containers[name])["spiffe-workload-api"]
        env = {e["name"]: e.get("value") for e in containers[name]["env"]}
        socket = env["SPIFFE_ENDPOINT_SOCKET"].removeprefix("unix://")
        assert mount["readOnly"] is True
        assert _under(socket, mount)
    assert volume["csi"] == {"driver": "csi.spiffe.io", "readOnly": True}
    assert config.trust_bundle == {}


def test_bundle_overlay_replaces_the_policy_configmap(bundle: dict[str, Any]) -> None:
    """With a bundle server OPA loads its config file, waits for the bundle to be ready, and
    the policy ConfigMap is gone."""
    opa = _containers(bundle)["opa"]
    config = _config_map(bundle, "opa-config")
    settings = yaml.safe_load(config["data"]["opa-config.yaml"])
    config_mount = _mounts(opa)["opa-config"]
    path = opa["args"][opa["args"].index("--config-file") + 1]
    assert opa["args"][:7] == OPA_ARGS
    assert "/policies" not in opa["args"]
    assert "jit-policies" not in _mounts(opa)
    assert not any(d["metadata"]["name"].startswith("jit-policies") for d in bundle["docs"])
    assert _under(path, config_mount)
    assert opa["readinessProbe"]["httpGet"]["path"] == "/health?bundles"
    assert settings["bundles"]["jit"]["service"] in settings["services"]
