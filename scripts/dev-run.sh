#!/usr/bin/env bash
# `make run`: OPA on rego/ (127.0.0.1:8181) and the sidecar in dev mode, in the foreground.
# Ctrl-C (or SIGTERM) stops both. If OPA dies, it is restarted (a line on stderr says so);
# if it keeps dying right after starting, everything stops with a message naming its log.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
mkdir -p var
chmod 750 var

opa_addr="${OPA_ADDR:-127.0.0.1:8181}"
opa_log="${OPA_LOG:-var/opa.log}"
# Seconds OPA must stay up for its exit to count as a crash of a running server rather than
# a failure to start; this many failures to start in a row stop `make run`.
opa_min_uptime=5
opa_max_quick_failures=3
opa_pid=
sidecar_pid=

say() { printf 'make run: %s\n' "$*" >&2; }

start_opa() {
  # Console decision logging gives every decision a decision_id (answer, audit record,
  # RequestGrant response); the decision log lines go to var/opa.log with OPA's own errors.
  opa run --server --skip-version-check --set decision_logs.console=true \
    --addr "$opa_addr" --log-level error --watch rego/ >>"$opa_log" 2>&1 &
  opa_pid=$!
  opa_started=$SECONDS
  for _ in $(seq 1 50); do
    curl -fsS "http://$opa_addr/health" >/dev/null 2>&1 && return 0
    kill -0 "$opa_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

stop() {
  [[ -n $sidecar_pid ]] && kill -TERM "$sidecar_pid" 2>/dev/null && wait "$sidecar_pid" || true
  [[ -n $opa_pid ]] && kill -TERM "$opa_pid" 2>/dev/null && wait "$opa_pid" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! start_opa; then
  say "OPA failed to start on $opa_addr; its log: $opa_log"
  tail -n 5 "$opa_log" >&2 || true
  exit 1
fi

# The bearer credential /introspect and /revoke require (RFC 7662 §2.1, RFC 7009 §2.1).
if [ ! -s var/http-token ]; then
  (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >var/http-token)
fi

cat >&2 <<'TXT'
------------------------------------------------------------------------------------------
 jit-sidecar dev mode: every local caller is trusted as spiffe://jit.local/agent/dev.
 Agent socket var/sidecar.sock, admin socket var/admin.sock, HTTP http://127.0.0.1:9464
 (metrics, JWKS, /introspect). OPA's log and decision log: var/opa.log.
 /introspect and /revoke need the credential in var/http-token:
 curl -H "Authorization: Bearer $(cat var/http-token)" ...
 Try the README walkthrough in another terminal. Ctrl-C stops.
------------------------------------------------------------------------------------------
TXT
jit-sidecar serve --identity dev --http-token-file var/http-token \
  --log-format "${JIT_SIDECAR_LOG_FORMAT:-text}" "$@" &
sidecar_pid=$!

# Watch both: the sidecar ending ends `make run` with its status; OPA ending is restarted.
# (The sidecar fails closed while OPA is away: grants get UNAVAILABLE policy_unavailable.)
quick_failures=0
while kill -0 "$sidecar_pid" 2>/dev/null; do
  if ! kill -0 "$opa_pid" 2>/dev/null; then
    status=0
    wait "$opa_pid" 2>/dev/null || status=$?
    if ((SECONDS - opa_started < opa_min_uptime)); then
      quick_failures=$((quick_failures + 1))
    else
      quick_failures=0
    fi
    if ((quick_failures >= opa_max_quick_failures)); then
      say "OPA exited (status $status) $quick_failures times right after starting; stopping."
      say "See $opa_log. Is $opa_addr taken, or a policy in rego/ broken?"
      exit 1
    fi
    say "OPA (pid $opa_pid) exited with status $status; restarting it (log: $opa_log)"
    if start_opa; then
      say "OPA is back (pid $opa_pid)"
    fi
  fi
  sleep 1
done
status=0
wait "$sidecar_pid" || status=$?
sidecar_pid=
exit "$status"
