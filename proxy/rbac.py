"""Who may log in as which database user to which database: pure decisions over an AccessPolicy.

Rules (docs/access-file.md):
- allow: the Role's `databases` selector must match this Database's labels (omitted matches
  none, `{}` all), and its `databaseNames` and `databaseUsers` must each match (an empty
  list matches none).
- allow `endpoints` (omitted: both): the listeners the role admits on, `read-write`
  (Service `<db>`) and `read-only` (`<db>-ro`).
- deny: scoped by `databases` (omitted: every Database) and `endpoints` (omitted: both);
  it refuses a login when the database user or the database name matches, or everything
  in its scope when it lists neither (a deny with no scope at all refuses nothing).
  Deny beats allow.
- options: the most restrictive value across the grant's roles wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from .access import AccessPolicy, Grant, Role, matches_any
from .config import READ_WRITE


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What the grant's roles impose on a session; None means the Database's default."""

    max_connections: int | None = None
    max_session_duration: float | None = None
    audit_queries: bool | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    options: SessionOptions = SessionOptions()


def _deny_match(
    role: Role, labels: Mapping[str, str], user: str, dbname: str, endpoint: str
) -> str | None:
    deny = role.deny
    if deny.databases is not None and not deny.databases.matches(labels):
        return None
    if not deny.on_endpoint(endpoint):
        return None
    if not deny.database_users and not deny.database_names:
        if deny.endpoints is not None:
            return (
                f"role {role.name!r} denies every login on the {endpoint} endpoint "
                f"(deny.endpoints [{', '.join(deny.endpoints)}])"
            )
        if deny.databases is None:
            return None
        return f"role {role.name!r} denies every login to this Database (deny.databases)"
    p = matches_any(deny.database_users, user)
    if p is not None:
        return f"role {role.name!r} denies database user {user!r} (deny.databaseUsers {p.text!r})"
    p = matches_any(deny.database_names, dbname)
    if p is not None:
        return f"role {role.name!r} denies database {dbname!r} (deny.databaseNames {p.text!r})"
    return None


def _allows(role: Role, labels: Mapping[str, str], user: str, dbname: str) -> bool:
    """Whether the role's allow rule admits this login, on whichever endpoint."""
    allow = role.allow
    return (
        allow.databases is not None
        and allow.databases.matches(labels)
        and matches_any(allow.database_users, user) is not None
        and matches_any(allow.database_names, dbname) is not None
    )


def session_options(roles: list[Role]) -> SessionOptions:
    """The most restrictive options of these roles: smallest limits, auditing if any asks."""
    max_conn = [r.options.max_connections for r in roles if r.options.max_connections]
    max_dur = [
        r.options.max_session_duration for r in roles if r.options.max_session_duration is not None
    ]
    audit = [r.options.audit_queries for r in roles if r.options.audit_queries is not None]
    return SessionOptions(
        max_connections=min(max_conn) if max_conn else None,
        max_session_duration=min(max_dur) if max_dur else None,
        audit_queries=any(audit) if audit else None,
    )


def authorize(
    policy: AccessPolicy,
    grant: Grant,
    labels: Mapping[str, str],
    user: str,
    dbname: str,
    now: datetime,
    endpoint: str = READ_WRITE,
) -> Decision:
    """May `grant` log in as `user` to `dbname` on the Database with these labels, through
    its `endpoint` listener (`read-write` or `read-only`)?"""
    if grant.expired(now):
        assert grant.expires_at is not None
        return Decision(False, f"token expired at {grant.expires_at.isoformat()}")
    roles = [policy.roles[name] for name in grant.roles if name in policy.roles]
    missing = [name for name in grant.roles if name not in policy.roles]
    for role in roles:
        why = _deny_match(role, labels, user, dbname, endpoint)
        if why is not None:
            return Decision(False, why)
    admitting = [role for role in roles if _allows(role, labels, user, dbname)]
    if any(role.allow.on_endpoint(endpoint) for role in admitting):
        return Decision(True, "allowed", session_options(roles))
    if admitting:
        role = admitting[0]
        allowed = ", ".join(role.allow.endpoints or ())
        return Decision(
            False,
            f"role {role.name!r} allows database user {user!r} on database {dbname!r} only "
            f"through the {allowed} endpoint (allow.endpoints [{allowed}]), not {endpoint}",
        )
    names = ", ".join(repr(r.name) for r in roles) or "none"
    reason = f"no role allows database user {user!r} on database {dbname!r} here (roles: {names})"
    if missing:
        reason += f"; roles not found: {', '.join(repr(m) for m in missing)}"
    return Decision(False, reason)
