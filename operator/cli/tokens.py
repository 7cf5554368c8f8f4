"""The caller's Tokens from `db connect`: made (or reused), awaited, and cached locally.

A Token is labelled as the caller's (`caller.py`), asks for exactly one login
(`spec.database`, `spec.databaseUser`, `spec.databaseName`) and lives `spec.ttl`. The
operator grants it and writes its Secret; the CA and client certificate are kept under
`~/.cache/rdsgate/<context>/<namespace>/<token>/` (0600 files, 0700 directories), the
password never on disk.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rdsgate.proxy.durations import format_duration, parse_duration

from ..objects import meta_of, spec_of
from .caller import (
    ANNOTATION_OWNER_NAME,
    ANNOTATION_OWNER_SOURCE,
    CREATED_BY_CLI,
    LABEL_CREATED_BY,
    LABEL_DATABASE,
    LABEL_OWNER,
    Caller,
    name_slug,
)
from .errors import CliError
from .exitcodes import EXIT_ERROR, EXIT_TIMEOUT
from .kubeapi import GROUP, VERSION, core_path, custom_path
from .progress import Backoff, Progress
from .resources import (
    Session,
    caller_tokens,
    condition,
    conditions_text,
    name_of,
    token_expired,
    token_expires_at,
)

#: A Token is reused while it has this much life left (or half its TTL, if that is less).
REUSE_MIN_LEFT = timedelta(minutes=5)


#: Token reasons that waiting does not fix.
_FINAL_REASONS = {"RoleInvalid", "SecretConflict", "InvalidSpec", "Expired"}


# The local cache


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "rdsgate"


def cache_dir(context: str | None, ns: str) -> Path:
    """Per kubeconfig context and namespace (an EKS context name holds ':' and '/')."""
    return cache_root() / quote(context or "default", safe="") / ns


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    root = cache_root()
    for part in (path, *path.parents):
        if part == root or root in part.parents:
            part.chmod(0o700)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def save_token_files(
    directory: Path, secret: Mapping[str, bytes], token: Mapping[str, Any], caller: Caller
) -> Path:
    """ca.crt, tls.crt, tls.key and a note of what they are for; returns ca.crt's path."""
    _private_dir(directory)
    for key in ("ca.crt", "tls.crt", "tls.key"):
        if key in secret:
            _write_private(directory / key, secret[key])
    spec = spec_of(token)
    note = {
        "token": name_of(token),
        "namespace": meta_of(token).get("namespace"),
        "owner": caller.username,
        "database": spec.get("database"),
        "databaseUser": spec.get("databaseUser"),
        "databaseName": spec.get("databaseName"),
        "expiresAt": (token.get("status") or {}).get("expiresAt"),
    }
    _write_private(directory / "token.json", json.dumps(note, indent=2).encode())
    return directory / "ca.crt"


# Tokens


@dataclass
class Grantee:
    """A Token the caller can use now, with its Secret's data (decoded)."""

    token: dict[str, Any]
    secret: dict[str, bytes]
    reused: bool


def token_name_for(db: str, caller: Caller) -> str:
    alphabet = string.ascii_lowercase + string.digits
    suffix = "".join(secrets.choice(alphabet) for _ in range(5))
    return f"{db[:24].rstrip('-')}-{name_slug(caller.username)}-{suffix}"


def token_body(
    ns: str,
    name: str,
    caller: Caller,
    db: str,
    user: str,
    dbname: str,
    roles: Sequence[str],
    ttl: str,
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Token",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                LABEL_CREATED_BY: CREATED_BY_CLI,
                LABEL_OWNER: caller.label,
                LABEL_DATABASE: db,
            },
            "annotations": {
                ANNOTATION_OWNER_NAME: caller.username,
                ANNOTATION_OWNER_SOURCE: caller.source,
            },
        },
        "spec": {
            "roles": list(roles),
            "ttl": ttl,
            "secretName": f"{name}-rdsgate",
            "database": db,
            "databaseUser": user,
            "databaseName": dbname,
        },
    }


def reusable(
    tokens: Sequence[Mapping[str, Any]],
    db: str,
    user: str,
    dbname: str,
    roles: Sequence[str],
    now: datetime,
    min_left: timedelta,
) -> Mapping[str, Any] | None:
    """The caller's Ready Token for the same login and roles with the most life left."""
    found = []
    for token in tokens:
        spec = spec_of(token)
        if (spec.get("database"), spec.get("databaseUser"), spec.get("databaseName")) != (
            db,
            user,
            dbname,
        ) or sorted(spec.get("roles") or []) != sorted(roles):
            continue
        expires = token_expires_at(token)
        ready = condition(token, "Ready")
        if expires is None or expires - now < min_left or not ready:
            continue
        if ready.get("status") == "True" and db in (
            (token.get("status") or {}).get("databases") or []
        ):
            found.append((expires, token))
    return max(found, key=lambda pair: pair[0])[1] if found else None


def secret_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    data = secret.get("data")
    if not isinstance(data, Mapping):
        return {}
    return {str(k): base64.b64decode(v) for k, v in data.items() if isinstance(v, str)}


def wait_for_token(
    s: Session, name: str, db: str, backoff: Backoff, timeout: float, progress: Progress
) -> Grantee:
    """The Token once the operator granted it on `db` and wrote its Secret."""
    ns = s.ns
    path = custom_path(ns, "tokens", name)
    with progress.waiting(f"Waiting for Token {ns}/{name} to be granted…") as update:
        while True:
            token = s.api.get(path, f"read Token {ns}/{name}")
            if token is None:
                raise CliError(f"Token {ns}/{name} was deleted while waiting for it", EXIT_ERROR)
            ready = condition(token, "Ready") or {}
            status = token.get("status") or {}
            if ready.get("status") == "True" and db in (status.get("databases") or []):
                secret_name = status.get("secretName") or spec_of(token).get("secretName")
                secret = s.api.get(
                    core_path(ns, "secrets", str(secret_name)), f"read Secret {ns}/{secret_name}"
                )
                data = secret_data(secret or {})
                if "token" in data and "ca.crt" in data:
                    return Grantee(token, data, reused=False)
            elif ready.get("status") == "False" and ready.get("reason") in _FINAL_REASONS:
                raise CliError(
                    f"Token {ns}/{name} cannot be used: Ready=False ({ready.get('reason')}): "
                    f"{ready.get('message')}",
                    EXIT_ERROR,
                )
            if backoff.expired:
                found = conditions_text(token) or (
                    "it has no status yet - is the rdsgate operator running? (it writes the "
                    "Token's Secret)"
                )
                raise CliError(
                    f"Token {ns}/{name} was not ready within {format_duration(timeout)}: {found}",
                    EXIT_TIMEOUT,
                )
            if ready:
                update(
                    f"Waiting for Token {ns}/{name}: Ready={ready.get('status')} "
                    f"({ready.get('reason')}) {ready.get('message') or ''}".rstrip()
                )
            backoff.sleep()


def forget_expired(s: Session, tokens: Sequence[Mapping[str, Any]], now: datetime) -> None:
    """Deletes the caller's expired CLI Tokens and their files, so they do not pile up."""
    for token in tokens:
        if not token_expired(token, now):
            continue
        name = name_of(token)
        try:
            s.api.delete(custom_path(s.ns, "tokens", name), f"delete expired Token {s.ns}/{name}")
        except CliError as exc:
            Progress(s.err).warn(str(exc))
            continue
        shutil.rmtree(cache_dir(s.cluster.context, s.ns) / name, ignore_errors=True)
        Progress(s.err).done(f"Deleted your expired Token {s.ns}/{name}")


def obtain_token(
    s: Session,
    db: str,
    user: str,
    dbname: str,
    roles: Sequence[str],
    ttl: str,
    backoff: Backoff,
    timeout: float,
    progress: Progress,
) -> Grantee:
    """An unexpired Token of the caller's for this login: reused, or created and awaited."""
    now = datetime.now(UTC)
    mine = caller_tokens(s.api, s.ns, s.caller)
    forget_expired(s, mine, now)
    min_left = min(REUSE_MIN_LEFT, timedelta(seconds=parse_duration(ttl) / 2))
    found = reusable(mine, db, user, dbname, roles, now, min_left)
    if found is not None:
        status = found.get("status") or {}
        secret_name = status.get("secretName") or spec_of(found).get("secretName")
        secret = s.api.get(
            core_path(s.ns, "secrets", str(secret_name)), f"read Secret {s.ns}/{secret_name}"
        )
        data = secret_data(secret or {})
        if "token" in data and "ca.crt" in data:
            return Grantee(dict(found), data, reused=True)
    name = token_name_for(db, s.caller)
    body = token_body(s.ns, name, s.caller, db, user, dbname, roles, ttl)
    s.api.create(custom_path(s.ns, "tokens"), body, f"create Token {s.ns}/{name}")
    return wait_for_token(s, name, db, backoff, timeout, progress)
