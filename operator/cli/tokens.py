"""The caller's Tokens from `db connect`: made (or reused) for the caller's own key, awaited.

A Token is labelled as the caller's (`caller.py`), asks for exactly one login
(`spec.database`, `spec.databaseUser`, `spec.databaseName`), lives `spec.ttl` and carries
the public half of the caller's key pair (`spec.publicKey`, `keypair.py`). The operator
writes no Secret for it: it signs a client certificate for that key into
`status.certificate`. Nothing here reads a Secret, so a person needs no RBAC on Secrets.

With `db connect --request` the Token also carries the caller's reason
(`rdsgate.dev/request-reason`) and, if one of its Roles requires approval or the caller may
only `request` it, waits for someone else to approve it (`approval.py`). The wait for a
person has no deadline of the CLI's (the operator expires the request); Ctrl-C leaves the
request pending, and the next `db connect` for the same login, roles and key takes it up
again instead of asking anew.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.text import Text

from rdsgate.proxy.durations import format_duration, parse_duration

from ..objects import meta_of, spec_of
from ..status import parse_timestamp
from .approval import (
    APPROVED,
    DENIED,
    EXPIRED,
    PENDING,
    REQUEST_REASON,
    Standing,
    program,
    quoted_roles,
    standing,
)
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
    {
        "RoleInvalid",
        "InvalidSpec",
        "Expired",
        "BindRevoked",
        "RequesterUnverified",
        "AccessDenied",
        "RequestExpired",
    }
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
    #: Who approved it, for a Token that waited for an approval.
    approved_by: str | None = None


@dataclass(frozen=True)
class Asking:
    """What `db connect` says about access requests: the caller's reason (`--request
    --reason`; None without `--request`), whose `approve` it needs, and the command that
    comes back to it after Ctrl-C."""

    reason: str | None
    approval_roles: Sequence[str]
    resume: str


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
    reason: str | None = None,
) -> dict[str, Any]:
    annotations = {
        ANNOTATION_OWNER_NAME: caller.username,
        ANNOTATION_OWNER_SOURCE: caller.source,
    }
    if reason:
        annotations[REQUEST_REASON] = reason
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
            "annotations": annotations,
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
    """Who asked for the Token: the operator's word in its status (it checked the webhook's
    signature), else the annotation until the operator has looked (None: not recorded)."""
    status = token.get("status")
    value = status.get("requestedBy") if isinstance(status, Mapping) else None
    if not value and not (isinstance(status, Mapping) and "identity" in status):
        annotations = meta_of(token).get("annotations")
        value = (
            annotations.get(ANNOTATION_REQUESTED_BY) if isinstance(annotations, Mapping) else None
        )
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


def _same_login(
    token: Mapping[str, Any],
    db: str,
    user: str,
    dbname: str,
    roles: Sequence[str],
    public_key: str,
) -> bool:
    """For the same Database, user, database name and roles, and for this key."""
    spec = spec_of(token)
    if (spec.get("database"), spec.get("databaseUser"), spec.get("databaseName")) != (
        db,
        user,
        dbname,
    ) or sorted(spec.get("roles") or []) != sorted(roles):
        return False
    return same_public_key(str(spec.get("publicKey") or ""), public_key)


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
        if not _same_login(token, db, user, dbname, roles, public_key):
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


def _created(token: Mapping[str, Any]) -> str:
    return str(meta_of(token).get("creationTimestamp") or "")


def open_request(
    tokens: Sequence[Mapping[str, Any]],
    db: str,
    user: str,
    dbname: str,
    roles: Sequence[str],
    public_key: str,
    now: datetime,
    min_left: timedelta,
) -> Mapping[str, Any] | None:
    """The caller's newest request for the same login, roles and key that may still be
    granted: pending (or not yet judged by the operator), or approved with at least
    `min_left` of its TTL left. Denied and expired requests are never taken up again."""
    found = []
    for token in tokens:
        if not _same_login(token, db, user, dbname, roles, public_key):
            continue
        st = standing(token)
        if not (st.is_request and st.open) or token_expired(token, now):
            continue
        ready = condition(token, "Ready") or {}
        if ready.get("status") == "False" and ready.get("reason") in FINAL_REASONS:
            continue
        expires = token_expires_at(token)
        if expires is not None and expires - now < min_left:
            continue
        found.append(token)
    return max(found, key=_created) if found else None


_EXPIRES_AT = re.compile(r"expires at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")
_NOT_ANSWERED_BY = re.compile(r"not answered by (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")


def _moment(pattern: re.Pattern[str], message: object) -> str | None:
    """A time the operator's message names, as the CLI prints times."""
    found = pattern.search(str(message or ""))
    if found is None:
        return None
    try:
        return parse_timestamp(found.group(1)).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return None


def _request_deadline(st: Standing) -> str | None:
    """When a pending request expires, as the operator's Approved condition says."""
    return _moment(_EXPIRES_AT, st.message)


def _ask_for_approval(progress: Progress, ns: str, name: str, asking: Asking) -> None:
    """Whom to ask, and what they run."""
    roles = quoted_roles(asking.approval_roles)
    progress.console.print(
        Text(
            f"Ask someone with the verb approve on roles.rdsgate.dev {roles} in {ns} to run:\n"
            f'  {program()} requests approve {name} -n {ns} --reason "..."'
        ),
        soft_wrap=True,
    )


def _stopped_waiting(progress: Progress, ns: str, name: str, st: Standing, asking: Asking) -> None:
    """After Ctrl-C: where the request stands, and how to come back to it."""
    if st.state == APPROVED:
        where = f"Your request {ns}/{name} is approved"
    elif st.state == PENDING:
        deadline = _request_deadline(st)
        where = f"Your request {ns}/{name} stays pending" + (
            f" (it expires at {deadline} unless someone approves it first)" if deadline else ""
        )
    else:
        where = f"Your request {ns}/{name} stays"
    progress.warn(f"Stopped waiting. {where}. To come back to it, run the same command:")
    progress.console.print(Text(f"  {asking.resume}"), soft_wrap=True)


def wait_for_token(
    s: Session,
    name: str,
    db: str,
    public_key: str,
    backoff: Backoff,
    timeout: float,
    progress: Progress,
    asking: Asking | None = None,
) -> Grantee:
    """The Token once the operator granted it on `db` and signed a certificate for our key.

    While it waits for a person's approval, `timeout` waits too: it counts again from the
    approval. A denial or the request's expiry ends the wait at once."""
    ns = s.ns
    path = custom_path(ns, "tokens", name)
    st: Standing | None = None
    asked = approved = False
    try:
        with progress.waiting(f"Waiting for Token {ns}/{name} to be granted…") as update:
            while True:
                token = s.api.get(path, f"read Token {ns}/{name}")
                if token is None:
                    raise CliError(
                        f"Token {ns}/{name} was deleted while waiting for it", EXIT_ERROR
                    )
                st = standing(token)
                if st.state == APPROVED and not approved and st.is_request:
                    approved = True
                    why = f": {st.decision_reason}" if st.decision_reason else ""
                    progress.done(f"Approved by {st.decided_by or 'someone'}{why}")
                cert = granted_certificate(token, db, public_key)
                if cert is not None:
                    by = st.decided_by if st.state == APPROVED else None
                    return Grantee(token, cert, reused=False, approved_by=by)
                ready = condition(token, "Ready") or {}
                if st.state == DENIED:
                    raise CliError(
                        f"your request {ns}/{name} was denied by {st.decided_by or 'someone'}"
                        + (f": {st.decision_reason}" if st.decision_reason else ""),
                        EXIT_DENIED,
                    )
                if st.state == EXPIRED:
                    by = _moment(_NOT_ANSWERED_BY, ready.get("message"))
                    raise CliError(
                        f"your request {ns}/{name} expired: nobody approved it "
                        + (f"by {by}" if by else "in time")
                        + (
                            f". To ask again, run the same command: {asking.resume}"
                            if asking is not None
                            else ""
                        ),
                        EXIT_TIMEOUT,
                    )
                if ready.get("status") == "False" and ready.get("reason") in FINAL_REASONS:
                    raise CliError(
                        f"Token {ns}/{name} cannot be used: Ready=False ({ready.get('reason')}): "
                        f"{ready.get('message')}",
                        EXIT_DENIED if ready.get("reason") == "BindRevoked" else EXIT_ERROR,
                    )
                if st.state == PENDING:
                    if not asked and asking is not None:
                        asked = True
                        _ask_for_approval(progress, ns, name, asking)
                    # A person decides: no deadline of ours (the operator expires it).
                    backoff.restart(timeout)
                    deadline = _request_deadline(st)
                    update(
                        f"Waiting for someone to approve Token {ns}/{name}"
                        + (f" (the request expires at {deadline})" if deadline else "")
                        + "… Ctrl-C stops waiting and leaves the request pending"
                    )
                elif backoff.expired:
                    found = conditions_text(token) or (
                        "it has no status yet - is the rdsgate operator running? (it signs "
                        "the Token's certificate)"
                    )
                    raise CliError(
                        f"Token {ns}/{name} was not ready within {format_duration(timeout)}: "
                        f"{found}",
                        EXIT_TIMEOUT,
                    )
                elif ready.get("status") == "True":
                    update(f"Waiting for Token {ns}/{name}: the operator signs its certificate…")
                elif ready:
                    update(
                        f"Waiting for Token {ns}/{name}: Ready={ready.get('status')} "
                        f"({ready.get('reason')}) {ready.get('message') or ''}".rstrip()
                    )
                backoff.sleep()
    except KeyboardInterrupt:
        if asking is not None and st is not None and st.is_request:
            _stopped_waiting(progress, ns, name, st, asking)
        raise


def create_token(s: Session, body: Mapping[str, Any], *, asking: bool = False) -> None:
    """POSTs the Token; a refusal by the rdsgate admission webhooks is shown in the API
    server's words (`alice may not bind Role "app-rw" …`) and exits "denied". When the
    Token needed a request reason and `db connect` was not asked to request, says how."""
    from kubernetes.client.exceptions import ApiException

    what = f"create Token {s.ns}/{name_of(body)}"
    try:
        s.api.create(custom_path(s.ns, "tokens"), body, raw_errors=True)
    except ApiException as exc:
        message = status_message(exc)
        if "admission webhook" in message and "denied the request" in message:
            if REQUEST_REASON in message:  # it needs an approval, so a reason
                hint = (
                    ""
                    if asking
                    else '. To ask for an approval, add --request --reason "why you need it"'
                )
                raise CliError(f"cannot {what}: {message}{hint}", EXIT_DENIED) from exc
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


def _age(token: Mapping[str, Any], now: datetime) -> str | None:
    try:
        created = parse_timestamp(_created(token))
    except ValueError:
        return None
    return format_duration(max(0.0, (now - created).total_seconds()))


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
    asking: Asking | None = None,
) -> Grantee:
    """A granted Token of the caller's for this login and key: reused, or taken up from an
    open request of theirs, or created (with `asking.reason`, a request), and awaited."""
    now = datetime.now(UTC)
    mine = caller_tokens(s.api, s.ns, s.caller)
    forget_expired(s, mine, now)
    public_key = keys.public_pem
    min_left = min(REUSE_MIN_LEFT, timedelta(seconds=parse_duration(ttl) / 2))
    found = reusable(mine, db, user, dbname, roles, public_key, now, min_left)
    if found is not None:
        token, cert = found
        st = standing(token)
        by = st.decided_by if st.state == APPROVED else None
        return Grantee(dict(token), cert, reused=True, approved_by=by)
    request = open_request(mine, db, user, dbname, roles, public_key, now, min_left)
    if request is not None:
        name = name_of(request)
        st = standing(request)
        age = _age(request, now)
        progress.done(
            f"Found your request {s.ns}/{name}"
            + (f", asked {age} ago" if age else "")
            + (f": {st.request_reason}" if st.request_reason else "")
        )
        return wait_for_token(s, name, db, public_key, backoff, timeout, progress, asking)
    name = token_name_for(db, s.caller)
    reason = asking.reason if asking is not None else None
    body = token_body(s.ns, name, s.caller, db, user, dbname, roles, ttl, public_key, reason)
    create_token(s, body, asking=reason is not None)
    if reason is not None:
        progress.done(f"Requested access: Token {s.ns}/{name} (roles {', '.join(roles)})")
    return wait_for_token(s, name, db, public_key, backoff, timeout, progress, asking)
