"""Exit statuses of the `jit-sidecar` command, and the error that stops a command with one."""

from __future__ import annotations

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DENIED = 0, 1, 2, 3
EXIT_CODES = """exit status:
  0  success (a grant granted, a token active, an audit log intact)
  1  error: the sidecar refused or is unreachable, a token is inactive, the audit log
     does not verify
  2  usage error: bad arguments (nothing was sent)
  3  denied: the policy denied the grant, or it waits for human approval"""


class CliError(Exception):
    """Stops a command with `jit-sidecar: <message>` on stderr and exit status `code`."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def usage_error(message: str) -> CliError:
    """A CliError for bad arguments (exit status 2: nothing was sent)."""
    return CliError(message, EXIT_USAGE)
