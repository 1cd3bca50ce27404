-- The SQLite store's schema at version 3, verbatim from sidecar/store/sqlite.py of
-- main before flows (schema 3: leases and delegation): migration tests open a real
-- state file of that version. Never edit: it is what older sidecars wrote. Version 1 is
-- everything before the comment that starts schema 2 (versions 2 and 3 only added tables).
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
  task_id TEXT PRIMARY KEY,
  subject TEXT NOT NULL,
  goal TEXT NOT NULL,
  labels TEXT NOT NULL,
  started_at REAL NOT NULL,
  deadline REAL NOT NULL,
  heartbeat_interval INTEGER NOT NULL,
  state TEXT NOT NULL,
  last_heartbeat REAL NOT NULL,
  pop_jkt TEXT NOT NULL DEFAULT '',
  ended_at REAL,
  end_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tasks_active ON tasks (subject) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS grants (
  grant_id TEXT PRIMARY KEY,
  task_id TEXT NOT NULL,
  subject TEXT NOT NULL,
  action TEXT NOT NULL,
  resource TEXT NOT NULL,
  justification TEXT NOT NULL,
  tier TEXT NOT NULL,
  audience TEXT NOT NULL,
  scope TEXT NOT NULL,
  issued_at REAL NOT NULL,
  expires_at REAL NOT NULL,
  kid TEXT NOT NULL,
  decision_id TEXT NOT NULL,
  cnf_jkt TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL,
  end_reason TEXT NOT NULL DEFAULT '',
  ended_at REAL
);
CREATE INDEX IF NOT EXISTS grants_by_task ON grants (task_id);
CREATE INDEX IF NOT EXISTS grants_active ON grants (expires_at) WHERE state = 'active';
CREATE INDEX IF NOT EXISTS grants_by_kid ON grants (kid, expires_at);
CREATE TABLE IF NOT EXISTS approvals (
  approval_id TEXT PRIMARY KEY,
  task_id TEXT NOT NULL,
  subject TEXT NOT NULL,
  intent TEXT NOT NULL,
  intent_hash TEXT NOT NULL,
  requested_ttl INTEGER NOT NULL,
  record TEXT NOT NULL,
  created_at REAL NOT NULL,
  expires_at REAL NOT NULL,
  state TEXT NOT NULL,
  decided_by TEXT NOT NULL DEFAULT '',
  decision_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS approvals_open ON approvals (expires_at)
  WHERE state IN ('pending', 'approved');
CREATE TABLE IF NOT EXISTS keys (
  kid TEXT PRIMARY KEY,
  jwk TEXT NOT NULL,
  retire_at REAL NOT NULL
);
-- schema 2: broker leases (docs/brokers.md). state: active, revoking (grant ended; the
-- broker revocation is due: the durable queue), revoked.
CREATE TABLE IF NOT EXISTS leases (
  grant_id TEXT PRIMARY KEY,
  task_id TEXT NOT NULL,
  broker TEXT NOT NULL,
  handle TEXT NOT NULL,
  expires_at REAL NOT NULL,
  details TEXT NOT NULL,
  state TEXT NOT NULL,
  issued_at REAL NOT NULL,
  revoked_at REAL
);
CREATE INDEX IF NOT EXISTS leases_by_task ON leases (task_id);
CREATE INDEX IF NOT EXISTS leases_open ON leases (state) WHERE state != 'revoked';
-- schema 3: delegation (docs/delegation.md): the person of a task, and the person and `act`
-- claim of a delegated grant, in tables of their own (CREATE TABLE IF NOT EXISTS adds them).
CREATE TABLE IF NOT EXISTS task_principals (
  task_id TEXT PRIMARY KEY,
  principal TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS grant_actors (
  grant_id TEXT PRIMARY KEY,
  principal TEXT NOT NULL,
  act TEXT NOT NULL
);
