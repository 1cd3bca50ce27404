#!/usr/bin/env bash
# `make deploy-check`: static validation of deploy/ and the Dockerfile. No cluster, no Docker
# engine and no network: every validator and schema was installed by scripts/bootstrap.sh.
#   promtool        check rules + rule unit tests (deploy/prometheus), compose's prometheus.yml
#   hadolint        Dockerfile
#   kustomize       renders deploy/kubernetes/base and every overlay
#   kubeconform     strict schema validation of the rendered core resources, per K8s version
#   crd-check       prometheus-operator resources (PodMonitor), which kubeconform cannot check
#   compose-check   deploy/compose/docker-compose.yml with compose-go (Docker Compose's loader)
# The deploy tests in tests/unit/test_deploy_*.py check the content (metrics, hardening, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"

step() { printf '\n== %s\n' "$*"; }

step "promtool check rules / test rules"
promtool check rules deploy/prometheus/*.rules.yml
promtool test rules deploy/prometheus/tests/*.yml
promtool check config --syntax-only deploy/compose/prometheus.yml

step "hadolint Dockerfile"
hadolint --failure-threshold info Dockerfile && echo "Dockerfile: no findings"

step "kustomize build + kubeconform"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for dir in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
  name=$(basename "$dir")
  kustomize build "$dir" >"$out/$name.yaml"
  echo "rendered $dir"
done
for version in $(scripts/bootstrap.sh k8s-versions); do
  echo "Kubernetes $version:"
  kubeconform -strict -summary -kubernetes-version "$version" \
    -schema-location "$PWD/.tools/k8s-schemas/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -skip PodMonitor,ServiceMonitor,PrometheusRule \
    "$out"/*.yaml
done

step "prometheus-operator resources"
# The PrometheusRule exactly as docs/operations.md tells operators to create it.
{ printf 'apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: jit-sidecar\nspec:\n'
  sed 's/^/  /' deploy/prometheus/jit-sidecar.rules.yml; } >"$out/prometheusrule.yaml"
node .tools/crd-check/validate.mjs "$out"/*.yaml

step "compose-check"
compose-check deploy/compose/docker-compose.yml
