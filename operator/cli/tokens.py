"""The caller's Tokens from `db connect`: made (or reused) for the caller's own key, awaited.

A Token is labelled as the caller's (`caller.py`), asks for exactly one login
(`spec.database`, `spec.databaseUser`, `spec.databaseName`), lives `spec.ttl` and carries
the public half of the caller's key pair (`spec.publicKey`, `keypair.py`). The operator
writes no Secret for it: it signs a client certificate for that key into
`status.certificate`. Nothing here reads a Secret, so a person needs no RBAC on Secrets.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rdsgate.proxy.durations import format_duration, parse_duration

from ..objects import meta_of, spec_of
from .caller import (
    ANNOTATION_OWNER_NAME,
    ANNOTATION_OWNER_SOURCE,
    ANNOTATION_REQUESTED_BY,
    CREATED_BY_CLI,
    LABEL_CREATED_BY,
    LABEL_DATABASE,
    LABEL_OWNER,
    Caller,
    name_slug,
)
from .errors import CliError
from .exitcodes import EXIT_DENIED, EXIT_ERROR, EXIT_NOT_FOUND, EXIT_TIMEOUT
from .keypair import Certificate, KeyPair, cache_dir, parse_certificate, same_public_key
from .kubeapi import GROUP, VERSION, core_path, custom_path, status_message
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

#: A Token is reused while it (and its certificate) has this much life left, or half its
#: TTL if that is less.
REUSE_MIN_LEFT = timedelta(minutes=5)

#: Token reasons that waiting does not fix.
FINAL_REASONS = frozenset(
    {"RoleInvalid", "InvalidSpec", "Expired", "BindRevoked", "RequesterUnverified"}
)

#: The ConfigMap with the proxies' CA in every namespace with a Database (render.py).
CA_CONFIG_MAP = "rdsgate-ca"
CA_KEY = "ca.crt"


def read_ca(s: Session) -> str:
    """The CA the proxies' certificates chain to, from the namespace's `rdsgate-ca`."""
    ns = s.ns
    found = s.api.get(
        core_path(ns, "configmaps", CA_CONFIG_MAP), f"read ConfigMap {ns}/{CA_CONFIG_MAP}"
    )
    pem = ((found or {}).get("data") or {}).get(CA_KEY)
    if found is None or not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
        what = (
            f"no ConfigMap {CA_CONFIG_MAP} in namespace {ns}"
            if found is None
            else f"ConfigMap {ns}/{CA_CONFIG_MAP} has no {CA_KEY}"
        )
        raise CliError(
            f"{what}: is the rdsgate operator running, and does the namespace have a Database?",
            EXIT_NOT_FOUND,
        )
    return pem


# Tokens


@dataclass
class Grantee:
    """A Token the caller can use now, with the certificate the operator signed for it."""

    token: dict[str, Any]
    certificate: Certificate
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
    public_key: str,
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
            "database": db,
            "databaseUser": user,
            "databaseName": dbname,
            "publicKey": public_key,
        },
    }


def requested_by(token: Mapping[str, Any]) -> str | None:
    """Who asked for the Token, as the API server authenticated them (None: not recorded)."""
    annotations = meta_of(token).get("annotations")
    value = annotations.get(ANNOTATION_REQUESTED_BY) if isinstance(annotations, Mapping) else None
    if not value:
        status = token.get("status")
        value = status.get("requestedBy") if isinstance(status, Mapping) else None
    return str(value) if value else None


def granted_certificate(token: Mapping[str, Any], db: str, public_key: str) -> Certificate | None:
    """The Token's certificate once the operator granted it on `db` and signed our key."""
    ready = condition(token, "Ready") or {}
    status = token.get("status")
    status = status if isinstance(status, Mapping) else {}
    if ready.get("status") != "True" or db not in (status.get("databases") or []):
        return None
    cert = parse_certificate(status.get("certificate"))
    if cert is None or not same_public_key(cert.public_pem, public_key):
        return None
    return cert


def reusable(
    tokens: Sequence[Mapping[str, Any]],
    db: str,
    user: str,
    dbname: str,
    roles: Sequence[str],
    public_key: str,
    now: datetime,
    min_left: timedelta,
) -> tuple[Mapping[str, Any], Certificate] | None:
    """The caller's granted Token for the same login and roles and for this key, whose
    certificate has the most life left (and at least `min_left`)."""
    found = []
    for token in tokens:
        spec = spec_of(token)
        if (spec.get("database"), spec.get("databaseUser"), spec.get("databaseName")) != (
            db,
            user,
            dbname,
        ) or sorted(spec.get("roles") or []) != sorted(roles):
            continue
        if not same_public_key(str(spec.get("publicKey") or ""), public_key):
            continue
        expires = token_expires_at(token)
        cert = granted_certificate(token, db, public_key)
        if cert is None or expires is None:
            continue
        if min(expires, cert.not_after) - now >= min_left:
            found.append((cert.not_after, token, cert))
    if not found:
        return None
    _, token, cert = max(found, key=lambda entry: entry[0])
    return token, cert


def wait_for_token(
    s: Session,
    name: str,
    db: str,
    public_key: str,
    backoff: Backoff,
    timeout: float,
    progress: Progress,
) -> Grantee:
    """The Token once the operator granted it on `db` and signed a certificate for our key."""
    ns = s.ns
    path = custom_path(ns, "tokens", name)
    with progress.waiting(f"Waiting for Token {ns}/{name} to be granted…") as update:
        while True:
            token = s.api.get(path, f"read Token {ns}/{name}")
            if token is None:
                raise CliError(f"Token {ns}/{name} was deleted while waiting for it", EXIT_ERROR)
            cert = granted_certificate(token, db, public_key)
            if cert is not None:
                return Grantee(token, cert, reused=False)
            ready = condition(token, "Ready") or {}
            if ready.get("status") == "False" and ready.get("reason") in FINAL_REASONS:
                raise CliError(
                    f"Token {ns}/{name} cannot be used: Ready=False ({ready.get('reason')}): "
                    f"{ready.get('message')}",
                    EXIT_DENIED if ready.get("reason") == "BindRevoked" else EXIT_ERROR,
                )
            if backoff.expired:
                found = conditions_text(token) or (
                    "it has no status yet - is the rdsgate operator running? (it signs the "
                    "Token's certificate)"
                )
                raise CliError(
                    f"Token {ns}/{name} was not ready within {format_duration(timeout)}: {found}",
                    EXIT_TIMEOUT,
                )
            if ready.get("status") == "True":
                update(f"Waiting for Token {ns}/{name}: the operator signs its certificate…")
            elif ready:
                update(
                    f"Waiting for Token {ns}/{name}: Ready={ready.get('status')} "
                    f"({ready.get('reason')}) {ready.get('message') or ''}".rstrip()
                )
            backoff.sleep()


def create_token(s: Session, body: Mapping[str, Any]) -> None:
    """POSTs the Token; a refusal by the rdsgate admission webhooks is shown in the API
    server's words (`alice may not bind Role "app-rw" …`) and exits "denied"."""
    from kubernetes.client.exceptions import ApiException

    what = f"create Token {s.ns}/{name_of(body)}"
    try:
        s.api.create(custom_path(s.ns, "tokens"), body, raw_errors=True)
    except ApiException as exc:
        message = status_message(exc)
        if "admission webhook" in message and "denied the request" in message:
            code = EXIT_DENIED if exc.status == 403 else EXIT_ERROR
            raise CliError(f"cannot {what}: {message}", code) from exc
        if "failed calling webhook" in message:
            raise CliError(
                f"cannot {what}: {message} - is the rdsgate operator running? (its admission "
                "webhooks must answer before any Token can be created)",
                EXIT_ERROR,
            ) from exc
        raise s.api.error(exc, what) from exc


def forget_expired(s: Session, tokens: Sequence[Mapping[str, Any]], now: datetime) -> None:
    """Deletes the caller's expired CLI Tokens and their certificates, so they do not pile up."""
    for token in tokens:
        if not token_expired(token, now):
            continue
        name = name_of(token)
        try:
            s.api.delete(custom_path(s.ns, "tokens", name), f"delete expired Token {s.ns}/{name}")
        except CliError as exc:
            Progress(s.err).warn(str(exc))
            continue
        database = str(spec_of(token).get("database") or "")
        if database:
            (cache_dir(s.cluster.context, s.ns) / database / f"{name}.crt").unlink(missing_ok=True)
        Progress(s.err).done(f"Deleted your expired Token {s.ns}/{name}")


def obtain_token(
    s: Session,
    db: str,
    user: str,
    dbname: str,
    roles: Sequence[str],
    ttl: str,
    keys: KeyPair,
    backoff: Backoff,
    timeout: float,
    progress: Progress,
) -> Grantee:
    """A granted Token of the caller's for this login and key: reused, or created and awaited."""
    now = datetime.now(UTC)
    mine = caller_tokens(s.api, s.ns, s.caller)
    forget_expired(s, mine, now)
    public_key = keys.public_pem
    min_left = min(REUSE_MIN_LEFT, timedelta(seconds=parse_duration(ttl) / 2))
    found = reusable(mine, db, user, dbname, roles, public_key, now, min_left)
    if found is not None:
        token, cert = found
        return Grantee(dict(token), cert, reused=True)
    name = token_name_for(db, s.caller)
    create_token(s, token_body(s.ns, name, s.caller, db, user, dbname, roles, ttl, public_key))
    return wait_for_token(s, name, db, public_key, backoff, timeout, progress)
