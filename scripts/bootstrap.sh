#!/usr/bin/env bash
# Installs what `make run` and `make test` need, idempotently, and caches downloads and
# builds outside the checkout so that a fresh clone on the same machine installs quickly.
#
#   scripts/bootstrap.sh venv       .venv with the package and its dev extras
#   scripts/bootstrap.sh opa        OPA v$OPA_VERSION in .tools/bin (unless `opa` is on PATH)
#   scripts/bootstrap.sh redis      Debian's redis-server (apt-get) unless already installed
#   scripts/bootstrap.sh promtool   promtool from Debian's prometheus package into .tools/bin
#   scripts/bootstrap.sh regal      Regal v$REGAL_VERSION into .tools/bin
set -euo pipefail

OPA_VERSION=1.22.3
REGAL_VERSION=0.42.0
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
  promtool)
    if [ -x "$tools/promtool" ]; then exit 0; fi
    if existing=$(on_path promtool); then ln -sf "$existing" "$tools/promtool"; exit 0; fi
    deb=$(ls "$cache"/prometheus_*.deb 2>/dev/null | head -1 || true)
    if [ -z "$deb" ]; then
      log "downloading Debian's prometheus package (for promtool only)"
      if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
      (cd "$cache" && { apt-get download prometheus >/dev/null 2>&1 || { $SUDO apt-get update -qq >/dev/null && apt-get download prometheus >/dev/null; }; })
      deb=$(ls "$cache"/prometheus_*.deb | head -1)
    fi
    tmp=$(mktemp -d)
    dpkg-deb -x "$deb" "$tmp"
    cp "$tmp/usr/bin/promtool" "$tools/promtool"
    rm -rf "$tmp"
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
  *)
    echo "usage: $0 venv|opa|redis|promtool|regal" >&2
    exit 2
    ;;
esac
