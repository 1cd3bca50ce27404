#!/usr/bin/env bash
# `make run`: OPA on rego/ (127.0.0.1:8181) and the sidecar in dev mode, in the foreground.
# Ctrl-C (or SIGTERM) stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
mkdir -p var
chmod 750 var

opa run --server --disable-telemetry --addr "${OPA_ADDR:-127.0.0.1:8181}" \
  --log-level error --watch rego/ &
opa_pid=$!
cleanup() {
  kill -TERM "$opa_pid" 2>/dev/null || true
  wait "$opa_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for _ in $(seq 1 50); do
  curl -fsS "http://${OPA_ADDR:-127.0.0.1:8181}/health" >/dev/null 2>&1 && break
  kill -0 "$opa_pid" 2>/dev/null || { echo "OPA failed to start" >&2; exit 1; }
  sleep 0.1
done

# The bearer credential /introspect and /revoke require (RFC 7662 §2.1, RFC 7009 §2.1).
if [ ! -s var/http-token ]; then
  (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >var/http-token)
fi

cat >&2 <<'TXT'
------------------------------------------------------------------------------------------
 jit-sidecar dev mode: every local caller is trusted as spiffe://jit.local/agent/dev.
 Agent socket var/sidecar.sock, admin socket var/admin.sock, HTTP http://127.0.0.1:9464
 (metrics, JWKS, /introspect). /introspect and /revoke need the credential in
 var/http-token: curl -H "Authorization: Bearer $(cat var/http-token)" ...
 Try the README walkthrough in another terminal. Ctrl-C stops.
------------------------------------------------------------------------------------------
TXT
jit-sidecar serve --identity dev --http-token-file var/http-token \
  --log-format "${JIT_SIDECAR_LOG_FORMAT:-text}" "$@" &
sidecar_pid=$!
trap 'kill -TERM "$sidecar_pid" 2>/dev/null; wait "$sidecar_pid"; exit 130' INT
trap 'kill -TERM "$sidecar_pid" 2>/dev/null; wait "$sidecar_pid"; exit 143' TERM
wait "$sidecar_pid"
