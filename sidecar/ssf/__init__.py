"""Shared Signals (OpenID SSF 1.0, CAEP 1.0): revocations that reach resource servers.

`transmitter` (streams, SETs, push and poll delivery), `queue` (the durable outbox),
`events` (what a SET says), `routes` (the HTTP endpoints) and `receiver` (the resource
server's side, used by `sidecar.verify`). See docs/shared-signals.md.
"""
