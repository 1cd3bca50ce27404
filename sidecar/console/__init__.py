"""The approvals console: a web page for approvers and operators (docs/console.md).

`jit-sidecar console` runs it as its own process. It talks to one or more sidecars through
their admin sockets (`jit.v1.AdminService`), so its login, sessions and CSRF state stay out
of the sidecar, and one console serves several sidecars.
"""
