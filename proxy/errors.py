"""Domain errors of the data plane.

Each carries the SQLSTATE and the words a Postgres client shows; the session turns them
into an ErrorResponse in one place (`session.Session._fail`).
"""

from __future__ import annotations


class ProxyError(Exception):
    """An error a client sees as an ErrorResponse."""

    sqlstate = "XX000"
    severity = "FATAL"

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint
        if sqlstate is not None:
            self.sqlstate = sqlstate


class ProtocolViolation(ProxyError):
    """The client sent bytes that are not the Postgres protocol at this point."""

    sqlstate = "08P01"


class TLSRequired(ProxyError):
    """A plaintext StartupMessage: rdsgate only speaks Postgres inside TLS."""

    sqlstate = "28000"
    reason = "no_tls"


class AuthenticationFailed(ProxyError):
    """The client's credential was not accepted; `reason` labels the metric."""

    sqlstate = "28P01"

    def __init__(self, message: str, *, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class AccessDenied(ProxyError):
    """The identity is known but its roles do not allow this user and database."""

    sqlstate = "28000"

    def __init__(self, message: str, *, reason: str = "denied") -> None:
        super().__init__(message)
        self.reason = reason


class TooManyConnections(ProxyError):
    sqlstate = "53300"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class UpstreamUnavailable(ProxyError):
    """rdsgate could not reach or set up the upstream connection."""

    sqlstate = "08001"


class UpstreamRejected(ProxyError):
    """The upstream refused the login: its own SQLSTATE and message, with rdsgate's hint."""


class CredentialsUnavailable(ProxyError):
    """No AWS credentials to sign an IAM auth token with."""

    sqlstate = "08001"


class SessionTerminated(ProxyError):
    """rdsgate ends a running session (drain, idle, duration limit, revocation)."""

    sqlstate = "57P01"


class NotReady(ProxyError):
    """The proxy cannot serve yet (TLS material or access file not loaded)."""

    sqlstate = "57P03"


class ConfigError(Exception):
    """A config or access file that cannot be used; `problems` lists each one."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems
