"""The rdsgate objects as the `db` commands read them, and what the Roles allow.

Objects stay the dicts the API returns. The access decision is the proxy's own: the Role
specs are compiled by the operator's `compile_role` into the proxy's models and judged by
`rdsgate.proxy.rbac.authorize`, so the CLI refuses exactly what the proxy would, with the
same words. The models load pydantic, so they are imported where used (`--help` stays
quick).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console

from ..objects import meta_of
from ..status import parse_timestamp
from .caller import Caller, who_am_i
from .errors import CliError
from .exitcodes import EXIT_DENIED, EXIT_NOT_FOUND, EXIT_NOT_READY
from .kubeapi import KubeApi, custom_path
from .kubeconfig import Cluster, connect

if TYPE_CHECKING:
    from rdsgate.proxy.rbac import Decision

    from ..access import CompiledRole


@dataclass
class Session:
    """What every `db` command works with: the cluster, the API, who calls, and stderr."""

    cluster: Cluster
    api: KubeApi
    caller: Caller
    err: Console

    @property
    def ns(self) -> str:
        return self.cluster.namespace


def open_session(args: argparse.Namespace) -> Session:
    # urllib3 logs each retry of a refused connection; the CliError says it once.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    cluster = connect(args.context, args.namespace)
    return Session(cluster, KubeApi(cluster), who_am_i(cluster), Console(stderr=True))


# Plain accessors on API objects (dicts), never raising on odd input


def name_of(obj: Mapping[str, Any]) -> str:
    return str(meta_of(obj).get("name", ""))


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    labels = meta_of(obj).get("labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    status = obj.get("status")
    for cond in (status.get("conditions") if isinstance(status, Mapping) else None) or []:
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None


def conditions_text(obj: Mapping[str, Any]) -> str:
    status = obj.get("status")
    conds = (status.get("conditions") if isinstance(status, Mapping) else None) or []
    parts = [
        f"{c.get('type')}={c.get('status')} ({c.get('reason')}): {c.get('message')}"
        for c in conds
        if isinstance(c, Mapping)
    ]
    return "; ".join(parts)


def token_expires_at(token: Mapping[str, Any]) -> datetime | None:
    status = token.get("status")
    value = status.get("expiresAt") if isinstance(status, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def token_expired(token: Mapping[str, Any], now: datetime) -> bool:
    expires = token_expires_at(token)
    expired = condition(token, "Expired")
    return (expires is not None and expires <= now) or bool(
        expired and expired.get("status") == "True"
    )


# Reading


def get_database(api: KubeApi, ns: str, name: str) -> dict[str, Any]:
    db = api.get(custom_path(ns, "databases", name), f"read Database {ns}/{name}")
    if db is None:
        raise CliError(
            f"Database {ns}/{name} not found (rdsgate db ls -n {ns} lists them)",
            exit_code=EXIT_NOT_FOUND,
        )
    return db


def check_ready(db: Mapping[str, Any], ns: str) -> None:
    ready = condition(db, "Ready")
    name = name_of(db)
    if ready is None:
        raise CliError(
            f"Database {ns}/{name} is not Ready: it has no status yet - is the rdsgate "
            "operator running?",
            exit_code=EXIT_NOT_READY,
        )
    if ready.get("status") != "True":
        raise CliError(
            f"Database {ns}/{name} is not Ready ({ready.get('reason')}): {ready.get('message')}",
            exit_code=EXIT_NOT_READY,
        )


def list_roles(api: KubeApi, ns: str) -> dict[str, CompiledRole]:
    """The namespace's Roles as the proxy's models (an invalid one denies everything)."""
    from ..access import compile_role

    roles = api.list(custom_path(ns, "roles"), f"list the Roles of namespace {ns}")
    live = (r for r in roles if not meta_of(r).get("deletionTimestamp") and name_of(r))
    return {name_of(r): compile_role(r) for r in live}


def caller_tokens(api: KubeApi, ns: str, caller: Caller) -> list[dict[str, Any]]:
    """The Tokens `db connect` created for the caller in the namespace (expired ones too)."""
    tokens = api.list(
        custom_path(ns, "tokens"), f"list your Tokens in namespace {ns}", caller.selector
    )
    return [t for t in tokens if caller.owns(t) and not meta_of(t).get("deletionTimestamp")]


# Deciding, as the proxy will


def decide(
    roles: Mapping[str, CompiledRole],
    names: Sequence[str],
    labels: Mapping[str, str],
    user: str,
    dbname: str,
    now: datetime,
) -> Decision:
    """The proxy's decision for a Token holding `names`, from the Role specs."""
    from rdsgate.proxy.access import AccessFile, AccessPolicy, Grant
    from rdsgate.proxy.rbac import authorize

    grant = Grant(identity="rdsgate-cli/check", secret_sha256="0" * 64, roles=list(names))
    bundle = AccessFile(roles=[roles[n].in_bundle for n in names if n in roles], grants=[grant])
    return authorize(AccessPolicy.build(bundle), grant, labels, user, dbname, now)


def choose_roles(
    roles: Mapping[str, CompiledRole],
    requested: Sequence[str],
    db: Mapping[str, Any],
    ns: str,
    user: str,
    dbname: str,
    now: datetime,
) -> list[str]:
    """The Token's roles: `requested` if they allow the login, else every Role that on its
    own allows it; a CliError naming the refusing rule when none does."""
    labels = labels_of(db)
    what = f"database user {user!r} on database {dbname!r} of Database {ns}/{name_of(db)}"
    if requested:
        wanted = list(dict.fromkeys(requested))
        missing = [r for r in wanted if r not in roles]
        if missing:
            known = ", ".join(sorted(roles)) or "none"
            raise CliError(
                f"Role {ns}/{missing[0]} not found (Roles in {ns}: {known})",
                exit_code=EXIT_NOT_FOUND,
            )
        for name in wanted:
            problems = roles[name].problems
            if problems:
                raise CliError(
                    f"Role {ns}/{name} is invalid, so it denies every login until fixed: "
                    + "; ".join(p.message for p in problems),
                    exit_code=EXIT_DENIED,
                )
        decision = decide(roles, wanted, labels, user, dbname, now)
        if not decision.allowed:
            raise CliError(f"access denied for {what}: {decision.reason}", exit_code=EXIT_DENIED)
        return wanted
    valid = sorted(n for n, c in roles.items() if c.role is not None)
    allowing = [n for n in valid if decide(roles, [n], labels, user, dbname, now).allowed]
    if allowing:
        return allowing
    if not roles:
        raise CliError(
            f"access denied for {what}: there is no Role in namespace {ns}; ask an admin for one",
            exit_code=EXIT_DENIED,
        )
    decision = decide(roles, valid, labels, user, dbname, now)
    raise CliError(
        f"access denied for {what}: {decision.reason} (rdsgate db ls -n {ns} shows what the "
        "roles allow)",
        exit_code=EXIT_DENIED,
    )


def may_bind(api: KubeApi, ns: str, role: str, verb: str = "bind") -> bool | None:
    """Whether the caller may `bind` the Role (or another verb on it: `request`), per a
    SelfSubjectAccessReview (what `kubectl auth can-i bind roles.rdsgate.dev/ROLE` asks);
    None when the API server does not answer one. The admission webhook asks the same of
    the API server for the Token."""
    from kubernetes.client.exceptions import ApiException

    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": ns,
                "verb": verb,
                "group": "rdsgate.dev",
                "resource": "roles",
                "name": role,
            }
        },
    }
    try:
        out = api.create(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review, raw_errors=True
        )
    except ApiException as exc:
        if exc.status in (403, 404, 405):
            return None
        raise api.error(exc, f"ask the API server whether you may {verb} Role {ns}/{role}") from exc
    allowed = (out.get("status") or {}).get("allowed")
    return allowed if isinstance(allowed, bool) else None


def prefer_bindable(
    api: KubeApi, ns: str, roles: Sequence[str], verbs: Sequence[str] = ("bind",)
) -> list[str]:
    """Of the default roles, those the caller may `bind` (or, with `verbs`, `request`: for
    `db connect --request`); a Token naming any other is refused at admission. When they
    may bind none, or the API server cannot say, all of them: the API server has the last
    word, and a cluster without the webhooks needs no `bind`."""
    allowed = []
    for role in roles:
        for verb in verbs:
            verdict = may_bind(api, ns, role, verb)
            if verdict is None:
                return list(roles)
            if verdict:
                allowed.append(role)
                break
    return allowed or list(roles)


def unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def access_on(labels: Mapping[str, str], roles: Sequence[CompiledRole]) -> dict[str, Any]:
    """What these roles allow and deny on a Database with these labels."""
    allow_roles: list[str] = []
    users: list[str] = []
    names: list[str] = []
    denied_users: list[str] = []
    denied_names: list[str] = []
    deny_all: list[str] = []
    invalid: list[str] = []
    for compiled in roles:
        role = compiled.role
        if role is None:
            invalid.append(compiled.name)
            continue
        if role.allow.databases is not None and role.allow.databases.matches(labels):
            allow_roles.append(role.name)
            users += [p.text for p in role.allow.database_users]
            names += [p.text for p in role.allow.database_names]
        deny = role.deny
        if deny.databases is not None and not deny.databases.matches(labels):
            continue
        if deny.database_users or deny.database_names:
            denied_users += [p.text for p in deny.database_users]
            denied_names += [p.text for p in deny.database_names]
        elif deny.databases is not None:
            deny_all.append(role.name)
    return {
        "roles": allow_roles,
        "databaseUsers": unique(users),
        "databaseNames": unique(names),
        "deniedDatabaseUsers": unique(denied_users),
        "deniedDatabaseNames": unique(denied_names),
        "deniedBy": deny_all + invalid,
    }
