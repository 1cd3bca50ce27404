#!/usr/bin/env bash
# Build spire-server and spire-agent (pinned) into .tools/spire for `make test-spire`.
# A scratch Go module outside the repository holds the tool dependencies; spire-server
# needs cgo and gcc (SQLite). Measured on the 2-core dev machine: ~7 minutes.
set -euo pipefail
VERSION=v1.13.3
DEST="$(cd "$(dirname "$0")/.." && pwd)/.tools/spire"
if [[ -x "$DEST/spire-server" && -x "$DEST/spire-agent" ]]; then
  exit 0
fi
command -v go >/dev/null || { echo "build-spire: go is required" >&2; exit 1; }
command -v gcc >/dev/null || { echo "build-spire: gcc is required (cgo, SQLite)" >&2; exit 1; }
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
cd "$SCRATCH"
go mod init scratch/spire >/dev/null 2>&1
go get -tool "github.com/spiffe/spire/cmd/spire-server@$VERSION" \
  "github.com/spiffe/spire/cmd/spire-agent@$VERSION"
mkdir -p "$DEST"
CGO_ENABLED=1 go build -o "$DEST/" github.com/spiffe/spire/cmd/spire-server \
  github.com/spiffe/spire/cmd/spire-agent
echo "build-spire: spire-server and spire-agent $VERSION in $DEST"
