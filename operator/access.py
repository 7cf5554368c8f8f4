"""Roles + Tokens + Database labels → the access bundle of each Database; Token → its Secret.

Pure. The bundle uses the proxy's own models (`rdsgate.proxy.access`), so a bundle the
operator writes is one the proxy loads, and it means what `rdsgate.proxy.rbac` decides:

- A Token's grant goes into the bundle of every Database that the `allow.databases`
  selector of one of its valid Roles matches (the Databases it "touches"), with all of
  its Roles, so that a deny in one Role still beats an allow in another.
- A Role that does not validate (say, a bad regular expression) is compiled as "deny every
  login everywhere": it may have carried deny rules, so the grants holding it fail closed
  until it is fixed. A Role that does not exist is left out (the proxy ignores missing
  roles, and a missing Role denies nothing).
- An expired grant is left out everywhere; the proxy also refuses it by `expiresAt`.
- One Token per ServiceAccount: the proxy keeps one grant per ServiceAccount, so of two
  Tokens naming the same one, the second (by name) is refused with a problem, not dropped
  silently.
- Only `secret_digest(secret)` of a secret credential goes into a bundle; a Token with
  `spec.publicKey` is bound by `public_key_digest` (its uid and key), never a password.
- Access follows live RBAC (docs/access-control.md): a grant carries its requester
  (`requestedBy`); a Token whose requester may no longer `bind` one of its Roles has no
  grant and is listed under `revoked` in the bundles it reached, with the reason the
  proxies give when they end its sessions.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from rdsgate.proxy.access import (
    AccessFile,
    Grant,
    LabelSelector,
    Revocation,
    Role,
    Rule,
    ServiceAccountRef,
)
from rdsgate.proxy.durations import format_duration, parse_duration

from . import admission, pki
from .admission import Decision, Requester, bind_refusal
from .ca import b64
from .objects import labels_of, meta_of, name_of, spec_of, spec_problems
from .render import READ_ONLY_SUFFIX
from .status import Condition, InvalidSpec, Problem, ReferenceNotFound, parse_timestamp, timestamp

DEFAULT_MOUNT_PATH = "/var/run/secrets/rdsgate"
SERVICE_PORT = 5432
#: Keys the operator owns in a Token Secret; those it does not write are removed.
TOKEN_SECRET_KEYS = (
    "token",
    "ca.crt",
    "tls.crt",
    "tls.key",
    "PGHOST",
    "PGHOST_RO",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGSSLMODE",
    "PGPASSWORD",
    "PGSSLROOTCERT",
)


class RoleInvalid(Problem):
    reason = "RoleInvalid"


class Expired(Problem):
    reason = "Expired"


class NoDatabase(Problem):
    reason = "NoDatabase"


class DuplicateServiceAccount(Problem):
    reason = "DuplicateServiceAccount"


class BindRevoked(Problem):
    reason = "BindRevoked"


class BindCheckFailed(Problem):
    reason = "BindCheckFailed"


class RequesterUnverified(Problem):
    reason = "RequesterUnverified"


#: Problems of the requester: the Token gets no grant whatever else holds.
REQUESTER_PROBLEMS = (BindRevoked, BindCheckFailed, RequesterUnverified)


def new_secret() -> str:
    """32 random bytes, base64url without padding (43 characters, safe in a libpq URI)."""
    return secrets.token_urlsafe(32)


def identity(namespace: str, token_name: str) -> str:
    return f"{namespace}/{token_name}"


def live(objs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Objects not being deleted, by name."""
    return sorted(
        (o for o in objs if not meta_of(o).get("deletionTimestamp") and name_of(o)), key=name_of
    )


def by_name(objs: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """One list call's objects by name. A compile lists the namespace's Token Secrets (and
    access Secrets) once and looks each up here; it reads one by one only those it does not
    find (new, stripped of their labels, someone else's), so a compile where nothing changed
    costs the same few requests however many Tokens there are."""
    return {name_of(o): o for o in objs if name_of(o)}


# Roles


@dataclass(frozen=True)
class CompiledRole:
    name: str
    role: Role | None
    problems: tuple[Problem, ...] = ()

    @property
    def in_bundle(self) -> Role:
        """The Role as bundles carry it: itself, or deny-everything while invalid."""
        if self.role is not None:
            return self.role
        return Role(name=self.name, deny=Rule(databases=LabelSelector()))


def compile_role(obj: Mapping[str, Any]) -> CompiledRole:
    """A Role resource as the proxy's Role model, or the problems that keep it from being one."""
    name = name_of(obj)
    raw = obj.get("spec")
    if raw is not None and not isinstance(raw, Mapping):
        return CompiledRole(name, None, (InvalidSpec("spec must be an object"),))
    try:
        role = Role.model_validate({**(raw or {}), "name": name})
    except ValidationError as exc:
        problems = spec_problems(exc, lambda loc: ".".join(["spec", *map(str, loc)]))
        return CompiledRole(name, None, tuple(problems))
    return CompiledRole(name, role)


def _patterns(values: Sequence[Any]) -> str:
    return ",".join(getattr(v, "text", str(v)) for v in values) or "-"


def _selector_text(sel: LabelSelector | None, omitted: str) -> str:
    if sel is None:
        return omitted
    parts = [f"{k}={v}" for k, v in sorted(sel.match_labels.items())]
    for e in sel.match_expressions:
        if e.operator in ("In", "NotIn"):
            parts.append(f"{e.key} {e.operator.lower()} ({','.join(e.values)})")
        else:
            parts.append(e.key if e.operator == "Exists" else f"!{e.key}")
    return ",".join(parts) or "all"


def rule_summary(rule: Rule, *, allow: bool) -> str:
    """One line for `kubectl get rdsrole`: users, names and which Databases."""
    via = f" via {','.join(rule.endpoints)}" if rule.endpoints is not None else ""
    if allow:
        on = _selector_text(rule.databases, "no Database")
        users, names = _patterns(rule.database_users), _patterns(rule.database_names)
        return f"users {users} dbs {names} on [{on}]{via}"
    if not rule.database_users and not rule.database_names:
        if rule.databases is None and rule.endpoints is None:
            return "-"
        return f"everything on [{_selector_text(rule.databases, 'every Database')}]{via}"
    parts = []
    if rule.database_users:
        parts.append(f"users {_patterns(rule.database_users)}")
    if rule.database_names:
        parts.append(f"dbs {_patterns(rule.database_names)}")
    return " ".join([*parts, f"on [{_selector_text(rule.databases, 'every Database')}]{via}"])


# Tokens


def spec_ttl(token: Mapping[str, Any]) -> float | None:
    """`spec.ttl` in seconds; InvalidSpec for one that is not a duration (the CRD's pattern
    normally stops it)."""
    ttl = spec_of(token).get("ttl")
    if ttl is None:
        return None
    try:
        return parse_duration(str(ttl))
    except ValueError as exc:
        raise InvalidSpec(f"spec.ttl: {exc}") from exc


def _created(token: Mapping[str, Any], now: datetime) -> datetime:
    created = meta_of(token).get("creationTimestamp")
    if isinstance(created, str):
        with contextlib.suppress(ValueError):
            return parse_timestamp(created)
    return now


def token_expiry(
    token: Mapping[str, Any],
    now: datetime,
    cap: float | None = None,
    start: datetime | Literal["created"] | None = "created",
) -> datetime | None:
    """When the Token expires: the start of its TTL (creation, or as the compile says: the
    approval, or None while it waits for one) + `spec.ttl` cut to `cap` seconds (a Role's
    maxTokenTTL), and never later than the `status.expiresAt` written before (a later ttl
    edit does not lengthen a grant; a new cap shortens it). None: no end, or not yet known.

    Raises InvalidSpec for a ttl that is not a duration.
    """
    stored: datetime | None = None
    status = token.get("status")
    if isinstance(status, Mapping) and isinstance(status.get("expiresAt"), str):
        with contextlib.suppress(ValueError):
            stored = parse_timestamp(status["expiresAt"])
    seconds = spec_ttl(token)
    if cap is not None:
        seconds = cap if seconds is None else min(seconds, cap)
    begins = _created(token, now) if start == "created" else start
    fresh = (
        (begins + timedelta(seconds=seconds)).replace(microsecond=0)
        if seconds is not None and begins is not None
        else None
    )
    if stored is None or fresh is None:
        return stored or fresh
    return min(stored, fresh)


def expired_by_status(token: Mapping[str, Any], now: datetime) -> bool:
    """Whether the operator already wrote that the Token's grant has expired."""
    status = token.get("status")
    if not isinstance(status, Mapping) or not isinstance(status.get("expiresAt"), str):
        return False
    try:
        return parse_timestamp(status["expiresAt"]) <= now
    except ValueError:
        return False


def token_roles(token: Mapping[str, Any]) -> list[str]:
    roles = spec_of(token).get("roles")
    if not isinstance(roles, list):
        return []
    return list(dict.fromkeys(str(r) for r in roles))


def service_account_subject(token: Mapping[str, Any]) -> ServiceAccountRef | None:
    subject = spec_of(token).get("subject")
    if not isinstance(subject, Mapping):
        return None
    sa = subject.get("serviceAccount")
    if not isinstance(sa, Mapping) or not sa.get("name"):
        return None
    namespace = sa.get("namespace") or meta_of(token).get("namespace") or "default"
    return ServiceAccountRef(namespace=str(namespace), name=str(sa["name"]))


def secret_name(token: Mapping[str, Any]) -> str:
    return str(spec_of(token).get("secretName") or f"{name_of(token)}-rdsgate")


def public_key_pem(token: Mapping[str, Any]) -> str | None:
    """The Token's own public key (`spec.publicKey`), when its holder keeps the private key."""
    pem = spec_of(token).get("publicKey")
    return str(pem) if pem else None


def public_key_digest(uid: str, key: pki.PublicKey) -> str:
    """The grant's `publicKeySha256`: SHA-256 over the Token's uid and its key (DER), so that
    a certificate names one key of one Token, and re-creating the Token retires it."""
    return hashlib.sha256(uid.encode() + b"\0" + pki.public_key_der(key)).hexdigest()


def subject_text(token: Mapping[str, Any]) -> str:
    sa = service_account_subject(token)
    if sa is not None:
        return f"serviceaccount:{sa.namespace}/{sa.name}"
    return "publickey" if public_key_pem(token) else "secret"


@dataclass(frozen=True)
class RequesterCheck:
    """What the API server said of a Token's requester (handlers.py asks it).

    `requester` None: the Token has no verified requester: none at all (created before the
    admission webhooks), or annotations the webhook did not sign (`forged`); `lost`: Roles
    the requester may no longer bind; `unknown`: why no answer could be had (and the grant
    was not in force before, so it waits for one).
    """

    requester: Requester | None
    lost: tuple[str, ...] = ()
    unknown: str | None = None
    forged: bool = False
    #: The grant is in force now (in an access bundle): an unknown answer does not end it.
    in_force: bool = False
    #: Roles the requester may only `request` (not `bind`): the Token waits for an approval.
    requested: tuple[str, ...] = ()
    #: The approval or denial the webhook signed, if any; unsigned decision annotations.
    decision: Decision | None = None


class ApprovalPending(Problem):
    reason = "ApprovalPending"


class AccessDenied(Problem):
    reason = "AccessDenied"


class RequestExpired(Problem):
    reason = "RequestExpired"


class ApprovalNotCovered(Problem):
    reason = "ApprovalNotCovered"


@dataclass(frozen=True)
class Approval:
    """Where a Token stands on approval: `state` is the Approved condition's reason."""

    state: str  # NotRequired, Pending, Approved, Denied, Expired, NotCovered
    roles: tuple[str, ...] = ()  # what it waits for approval of
    decision: Decision | None = None
    request_reason: str | None = None
    deadline: datetime | None = None  # a pending request expires then

    @property
    def approved(self) -> bool:
        return self.state == "Approved"


#: What the operator knows about a Token's secret credential: its digest, or why there is none.
Credential = str | Problem


@dataclass
class TokenFindings:
    name: str
    identity: str
    subject: str
    secret_name: str | None
    expires_at: datetime | None
    expired: bool
    databases: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    grant: Grant | None = None
    requested_by: str | None = None
    #: Why the requester's grant was withdrawn (lost `bind`), as the proxies say it.
    revoked: str | None = None
    #: The requester annotations are there but not the webhook's (see RequesterCheck).
    forged_stamp: bool = False
    #: The API server could not say whether the requester may still bind (the grant stands).
    unchecked: str | None = None
    approval: Approval = field(default_factory=lambda: Approval("NotRequired"))
    #: The TTL in force, and what cut spec.ttl to it (a Role's maxTokenTTL), if anything.
    ttl: float | None = None
    ttl_cut_by: str | None = None
    #: A Token with `spec.publicKey`: its client certificate (PEM) and when that ends, set by
    #: the handlers once the grant is known.
    certificate: tuple[bytes, datetime] | None = None


@dataclass
class RoleFindings:
    compiled: CompiledRole
    databases: list[str]


@dataclass
class NamespaceAccess:
    """Everything one namespace compiles to: one bundle per Database, findings per resource."""

    bundles: dict[str, AccessFile]
    roles: dict[str, RoleFindings]
    tokens: dict[str, TokenFindings]


def _requester_problems(
    check: RequesterCheck, namespace: str, require_verified: bool
) -> tuple[list[Problem], str | None]:
    """Problems that keep a Token's grant out for its requester's sake, and the revocation
    reason the proxies give (when the requester lost `bind`)."""
    requester = check.requester
    if requester is None:
        if not require_verified:
            return [], None
        why = (
            "its requester annotations were not written by the admission webhook"
            if check.forged
            else "the Token has no rdsgate.dev/requested-by annotation (it was created before "
            "the admission webhooks)"
        )
        return [
            RequesterUnverified(
                f"{why} and the operator runs with --require-verified-requester: re-create it "
                "so that its requester is recorded"
            )
        ], None
    if check.lost:
        reason = bind_refusal(requester.username, namespace, check.lost, lost=True)
        return [BindRevoked(f"{reason}; the grant was withdrawn")], reason
    if check.unknown and not check.in_force:
        return [
            BindCheckFailed(
                f"cannot check whether {requester.username} may bind its Roles: "
                f"{check.unknown} (retrying)"
            )
        ], None
    return [], None


def _ttl_cap(wanted: Sequence[str], roles: Mapping[str, CompiledRole]) -> tuple[float, str] | None:
    """The shortest maxTokenTTL of the Token's Roles, and which Role says so."""
    caps = [
        (float(c.role.options.max_token_ttl), name)
        for name in wanted
        if (c := roles.get(name)) is not None
        and c.role is not None
        and c.role.options.max_token_ttl is not None
    ]
    return min(caps) if caps else None


def _approval(
    token: Mapping[str, Any],
    wanted: Sequence[str],
    roles: Mapping[str, CompiledRole],
    check: RequesterCheck,
    now: datetime,
    request_timeout: timedelta,
) -> Approval:
    needing = tuple(
        name
        for name in wanted
        if name in check.requested
        or (
            (c := roles.get(name)) is not None
            and c.role is not None
            and c.role.options.require_approval
        )
    )
    reason = admission.request_reason(token)
    decision = check.decision
    if decision is not None and not decision.approved:
        return Approval("Denied", needing or decision.roles, decision, reason)  # final
    if not needing:
        return Approval("NotRequired", (), decision, reason)
    if decision is not None:
        uncovered = tuple(r for r in needing if r not in decision.roles)
        if uncovered:
            return Approval("NotCovered", uncovered, decision, reason)
        return Approval("Approved", needing, decision, reason)
    created = meta_of(token).get("creationTimestamp")
    deadline = None
    if isinstance(created, str):
        with contextlib.suppress(ValueError):
            deadline = parse_timestamp(created) + request_timeout
    state = "Expired" if deadline is not None and now >= deadline else "Pending"
    return Approval(state, needing, None, reason, deadline)


def _approval_problem(approval: Approval, requested_by: str | None) -> Problem | None:
    roles = ", ".join(approval.roles)
    if approval.state == "Pending":
        until = f" until {timestamp(approval.deadline)}" if approval.deadline else ""
        return ApprovalPending(
            f"waiting{until} for someone with the verb approve on Role(s) {roles} (not the "
            f"requester{f', {requested_by}' if requested_by else ''}) to approve it"
        )
    if approval.state == "Denied":
        assert approval.decision is not None
        return AccessDenied(
            f"denied by {approval.decision.by}: {approval.decision.reason}; ask again with a "
            "new Token"
        )
    if approval.state == "Expired":
        assert approval.deadline is not None
        return RequestExpired(
            f"the request was not answered by {timestamp(approval.deadline)}; ask again with a "
            "new Token"
        )
    if approval.state == "NotCovered":
        assert approval.decision is not None
        return ApprovalNotCovered(
            f"the approval by {approval.decision.by} covers Role(s) "
            f"{', '.join(approval.decision.roles) or 'none'}, but Role(s) {roles} need one now "
            "(a Role that came to require approval, or a requester who may no longer bind it); "
            "ask again with a new Token"
        )
    return None


def _token_findings(
    token: Mapping[str, Any],
    namespace: str,
    roles: Mapping[str, CompiledRole],
    database_names: set[str],
    credential: Credential | None,
    now: datetime,
    check: RequesterCheck,
    require_verified: bool,
    request_timeout: timedelta,
) -> TokenFindings:
    name = name_of(token)
    sa = service_account_subject(token)
    own_key = public_key_pem(token) is not None
    problems, revoked = _requester_problems(check, namespace, require_verified)
    wanted = token_roles(token)
    cap = _ttl_cap(wanted, roles)
    approval = _approval(token, wanted, roles, check, now, request_timeout)
    # The TTL runs from the approval of a Token that needed one, and not at all before.
    start: datetime | Literal["created"] | None = "created"
    if approval.decision is not None and approval.decision.approved:
        start = approval.decision.at
    elif approval.state != "NotRequired":
        start = None
    ttl: float | None = None
    ttl_cut_by: str | None = None
    try:
        ttl = spec_ttl(token)
        if cap is not None and (ttl is None or cap[0] < ttl):
            ttl, ttl_cut_by = cap
        expires_at = token_expiry(token, now, cap[0] if cap else None, start)
    except InvalidSpec as exc:
        problems.append(exc)
        expires_at = None
    expired = expires_at is not None and now >= expires_at
    if not wanted:
        problems.append(InvalidSpec("spec.roles: name at least one Role"))
    for role_name in wanted:
        compiled = roles.get(role_name)
        if compiled is None:
            problems.append(
                ReferenceNotFound(
                    f"Role {role_name!r} does not exist in namespace {namespace!r}: "
                    "create it or remove it from spec.roles"
                )
            )
        elif compiled.role is None:
            problems.append(
                RoleInvalid(
                    f"Role {role_name!r} is invalid (see its status); logins with this "
                    "Token are refused until it is fixed"
                )
            )
    database = spec_of(token).get("database")
    if database and str(database) not in database_names:
        problems.append(
            ReferenceNotFound(
                f"spec.database: Database {database!s} does not exist in namespace "
                f"{namespace!r}; PGHOST names a Service that is not there"
            )
        )
    findings = TokenFindings(
        name=name,
        identity=identity(namespace, name),
        subject=subject_text(token),
        secret_name=None if sa is not None or own_key else secret_name(token),
        expires_at=expires_at,
        expired=expired,
        problems=problems,
        requested_by=check.requester.username if check.requester else None,
        revoked=revoked,
        forged_stamp=check.forged,
        unchecked=check.unknown if check.in_force and not check.lost else None,
        approval=approval,
        ttl=ttl,
        ttl_cut_by=ttl_cut_by,
    )
    waiting = _approval_problem(findings.approval, findings.requested_by)
    if waiting is not None:
        problems.insert(0, waiting)
        return findings
    if expired or any(isinstance(p, REQUESTER_PROBLEMS) for p in problems):
        return findings
    digest: str | None = None
    if sa is None:
        if isinstance(credential, Problem):
            problems.append(credential)
        elif credential is not None:
            digest = credential
        if digest is None:
            return findings
    findings.grant = Grant(
        identity=findings.identity,
        secret_sha256=None if own_key else digest,
        public_key_sha256=digest if own_key else None,
        service_account=sa,
        roles=wanted,
        expires_at=expires_at,
        requested_by=findings.requested_by,
    )
    decision = findings.approval.decision
    if findings.approval.approved and decision is not None:
        findings.grant = findings.grant.model_copy(
            update={
                "approved_by": decision.by,
                "approval_reason": decision.reason,
                "request_reason": findings.approval.request_reason,
            }
        )
    return findings


def compile_namespace(
    namespace: str,
    databases: Sequence[Mapping[str, Any]],
    roles: Sequence[Mapping[str, Any]],
    tokens: Sequence[Mapping[str, Any]],
    credentials: Mapping[str, Credential],
    now: datetime,
    requesters: Mapping[str, RequesterCheck] | None = None,
    *,
    require_verified: bool = False,
    request_timeout: timedelta = timedelta(hours=1),
) -> NamespaceAccess:
    """The access bundle of every live Database in a namespace, and what each Role and Token
    contributes; `credentials` maps Token names to their credential's digest (or its
    problem), `requesters` to what the API server said of their requester (a Token not in
    it is checked against the requester stamped on it, with no Role lost)."""
    dbs = {name_of(d): labels_of(d) for d in live(databases)}
    compiled = {r.name: r for r in (compile_role(obj) for obj in live(roles))}

    role_findings = {
        name: RoleFindings(
            c,
            sorted(
                db
                for db, labels in dbs.items()
                if c.role is not None
                and c.role.allow.databases is not None
                and c.role.allow.databases.matches(labels)
            ),
        )
        for name, c in compiled.items()
    }

    grants_by_db: dict[str, list[Grant]] = {db: [] for db in dbs}
    revoked_by_db: dict[str, list[Revocation]] = {db: [] for db in dbs}
    token_findings: dict[str, TokenFindings] = {}
    #: ServiceAccount → the Token (the first by name) whose grant it is.
    holders: dict[tuple[str, str], str] = {}
    for token in live(tokens):
        check = (requesters or {}).get(name_of(token)) or RequesterCheck(None)
        found = _token_findings(
            token,
            namespace,
            compiled,
            set(dbs),
            credentials.get(name_of(token)),
            now,
            check,
            require_verified,
            request_timeout,
        )
        token_findings[found.name] = found
        if found.revoked is not None:
            for role_name in token_roles(token):
                for db in role_findings[role_name].databases if role_name in role_findings else ():
                    revocation = Revocation(identity=found.identity, reason=found.revoked)
                    if revocation not in revoked_by_db[db]:
                        revoked_by_db[db].append(revocation)
        if found.grant is None:
            continue
        sa = found.grant.service_account
        if sa is not None:
            holder = holders.setdefault((sa.namespace, sa.name), found.name)
            if holder != found.name:
                found.problems.append(
                    DuplicateServiceAccount(
                        f"ServiceAccount {sa.namespace}/{sa.name} already has Token {holder!r}: "
                        "one Token per ServiceAccount; put the roles on that Token"
                    )
                )
                found.grant = None
                continue
        touched: set[str] = set()
        for role_name in found.grant.roles:
            if role_name in role_findings:
                touched.update(role_findings[role_name].databases)
        found.databases = sorted(touched)
        for db in found.databases:
            grants_by_db[db].append(found.grant)
        if not touched and not found.problems:
            found.problems.append(
                NoDatabase(
                    f"no Database in namespace {namespace!r} is selected by the allow rules of "
                    f"its roles ({', '.join(found.grant.roles)}); label a Database or fix "
                    "spec.allow.databases of a Role"
                )
            )

    bundles = {}
    for db, grants in grants_by_db.items():
        role_names = sorted({r for g in grants for r in g.roles if r in compiled})
        bundles[db] = AccessFile(
            roles=[compiled[r].in_bundle for r in role_names],
            grants=sorted(grants, key=lambda g: g.identity),
            revoked=sorted(revoked_by_db[db], key=lambda r: r.identity),
        )
    return NamespaceAccess(bundles, role_findings, token_findings)


#: Fields added to the access file with the admission webhooks and access requests, left
#: out when unused: a bundle that needs none of them is what earlier proxies can load.
_OPTIONAL_GRANT_FIELDS = (
    "publicKeySha256",
    "requestedBy",
    "approvedBy",
    "approvalReason",
    "requestReason",
)
#: Role options that are the operator's business only: never sent to the proxies.
_OPERATOR_ROLE_OPTIONS = ("requireApproval", "maxTokenTTL")


def bundle_yaml(bundle: AccessFile) -> str:
    """The access file's text: deterministic, so that an unchanged bundle is an unchanged Secret."""
    doc = bundle.dump()
    for role in doc["roles"]:
        for key in _OPERATOR_ROLE_OPTIONS:
            role["options"].pop(key, None)
    for grant in doc["grants"]:
        for key in _OPTIONAL_GRANT_FIELDS:
            if grant.get(key) is None:
                grant.pop(key, None)
    if not doc["revoked"]:
        del doc["revoked"]
    # libyaml's dumper writes the same text ~5x faster: a namespace compile renders one
    # bundle per Database, each with every grant that reaches it.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(doc, Dumper=dumper, sort_keys=False, default_flow_style=False)


# Status


def role_status(found: RoleFindings) -> tuple[dict[str, Any], list[Condition]]:
    c = found.compiled
    fields: dict[str, Any] = {"databases": found.databases}
    if c.role is not None:
        fields["allow"] = rule_summary(c.role.allow, allow=True)
        fields["deny"] = rule_summary(c.role.deny, allow=False)
        ready = Condition(
            "Ready",
            "True",
            "Valid",
            f"selects {len(found.databases)} Database(s)"
            + (f": {', '.join(found.databases)}" if found.databases else ""),
        )
    else:
        fields["allow"] = fields["deny"] = "invalid"
        ready = Condition(
            "Ready",
            "False",
            c.problems[0].reason,
            "; ".join(p.message for p in c.problems)
            + " - Tokens holding this Role are refused until it is fixed",
            event="Warning",
        )
    return fields, [ready]


def requester_condition(found: TokenFindings) -> Condition:
    if found.unchecked is not None:
        return Condition(
            "RequesterVerified",
            "Unknown",
            "BindCheckFailed",
            f"cannot check whether {found.requested_by} may still bind the Token's Roles: "
            f"{found.unchecked}; the grant stands until the API server answers (retrying)",
            event="Warning",
        )
    if found.requested_by is None and found.forged_stamp:
        return Condition(
            "RequesterVerified",
            "False",
            "StampNotVerified",
            "the Token's rdsgate.dev/requested-by annotations were not written by the "
            "admission webhook (they carry no valid signature), so who asked for it is not "
            "known and audit lines name nobody; re-create it to record its requester",
            event="Warning",
        )
    if found.requested_by is None:
        return Condition(
            "RequesterVerified",
            "False",
            "CreatedBeforeAdmission",
            "the Token has no rdsgate.dev/requested-by annotation: it was created before the "
            "admission webhooks were installed, so who asked for it is not known; re-create "
            "it to record its requester (docs/access-control.md, the upgrade path)",
        )
    return Condition(
        "RequesterVerified",
        "True",
        "AdmissionStamped",
        f"requested by {found.requested_by}, as the API server authenticated them",
    )


def approval_condition(found: TokenFindings) -> Condition:
    """The Approved condition, whose changes are the AccessRequested/-Approved/-Denied/
    -RequestExpired Events (naming the requester, the approver, the reasons and Roles)."""
    a = found.approval
    roles = ", ".join(a.roles)
    who = found.requested_by or "someone (not recorded)"
    asked = f" ({a.request_reason})" if a.request_reason else ""
    if a.state == "NotRequired":
        return Condition("Approved", "True", "NotRequired", "no Role of this Token needs approval")
    if a.state == "Pending":
        until = f"; the request expires at {timestamp(a.deadline)}" if a.deadline else ""
        message = (
            f"{who} asks for Role(s) {roles}{asked}: waiting for someone else with the verb "
            f"approve on them{until}"
        )
        return Condition(
            "Approved",
            "Unknown",
            "Pending",
            message,
            event="Normal",
            event_reason="AccessRequested",
        )
    if a.state == "NotCovered":
        assert a.decision is not None
        return Condition(
            "Approved",
            "False",
            "NotCovered",
            f"{a.decision.by}'s approval covers Role(s) {', '.join(a.decision.roles)}; Role(s) "
            f"{roles} need an approval now",
            event="Warning",
        )
    if a.state == "Expired":
        return Condition(
            "Approved",
            "False",
            "Expired",
            f"{who}'s request for Role(s) {roles}{asked} was not answered in time",
            event="Warning",
            event_reason="AccessRequestExpired",
        )
    d = a.decision
    assert d is not None
    verb = "approved" if d.approved else "denied"
    message = f"{d.by} {verb} {who}'s request for Role(s) {roles}{asked}: {d.reason}"
    if d.approved:
        return Condition(
            "Approved", "True", "Approved", message, event="Normal", event_reason="AccessApproved"
        )
    return Condition(
        "Approved", "False", "Denied", message, event="Warning", event_reason="AccessDenied"
    )


def token_status(found: TokenFindings) -> tuple[dict[str, Any], list[Condition]]:
    cert = found.certificate if found.grant is not None else None
    decision = found.approval.decision
    approved = decision if decision is not None and decision.approved else None
    fields: dict[str, Any] = {
        "identity": found.identity,
        "subject": found.subject,
        "requestedBy": found.requested_by,
        "databases": found.databases,
        "secretName": found.secret_name,
        "expiresAt": timestamp(found.expires_at) if found.expires_at else None,
        "ttl": format_duration(found.ttl) if found.ttl is not None else None,
        "approvedBy": approved.by if approved else None,
        "approvedAt": timestamp(approved.at) if approved else None,
        "certificate": cert[0].decode() if cert else None,
        "certificateNotAfter": timestamp(cert[1]) if cert else None,
    }
    verified = requester_condition(found)
    approval = approval_condition(found)
    if found.expired:
        assert found.expires_at is not None
        when = timestamp(found.expires_at)
        expired = Condition(
            "Expired",
            "True",
            "TTLElapsed",
            f"the grant expired at {when} and was removed from every access bundle; "
            "create a new Token for further access",
            event="Warning",
        )
        ready = Condition("Ready", "False", "Expired", f"expired at {when}")
        return fields, [ready, expired, verified, approval]
    cut = (
        f" (spec.ttl cut to {format_duration(found.ttl)} by the maxTokenTTL of Role "
        f"{found.ttl_cut_by})"
        if found.ttl_cut_by and found.ttl is not None
        else ""
    )
    if found.expires_at:
        expired = Condition(
            "Expired", "False", "NotExpired", f"expires at {timestamp(found.expires_at)}{cut}"
        )
    elif found.ttl is not None:
        expired = Condition(
            "Expired",
            "False",
            "NotExpired",
            f"expires {format_duration(found.ttl)} after its approval{cut}",
        )
    else:
        expired = Condition("Expired", "False", "NoTTL", "no spec.ttl")
    if found.problems:
        waiting = isinstance(found.problems[0], ApprovalPending)
        ready = Condition(
            "Ready",
            "False",
            found.problems[0].reason,
            "; ".join(p.message for p in found.problems),
            event=None if waiting else "Warning",
        )
    else:
        ready = Condition(
            "Ready",
            "True",
            "Granted",
            f"{found.identity} may log in to {', '.join(found.databases)}",
        )
    return fields, [ready, expired, verified, approval]


# The Token Secret


def token_secret_data(
    token: Mapping[str, Any],
    *,
    namespace: str,
    secret: str,
    ca_pem: bytes,
    client: pki.KeyPair,
    readers: Collection[str] = (),
) -> dict[str, str | None]:
    """The Token Secret's `data` (base64), with None for every owned key it must not carry.
    `readers`: the namespace's Databases with a read-only endpoint; a Token naming one gets
    `PGHOST_RO`, its `-ro` Service (same port, user, database and CA)."""
    spec = spec_of(token)
    values: dict[str, str | bytes] = {
        "token": secret,
        "ca.crt": ca_pem,
        "tls.crt": client.cert_pem,
        "tls.key": client.key_pem,
    }
    database, user, dbname = (
        spec.get("database"),
        spec.get("databaseUser"),
        spec.get("databaseName"),
    )
    if database or user or dbname:
        mount = str(spec.get("mountPath") or DEFAULT_MOUNT_PATH).rstrip("/") or ""
        values |= {
            "PGPORT": str(SERVICE_PORT),
            "PGSSLMODE": "verify-full",
            "PGPASSWORD": secret,
            "PGSSLROOTCERT": f"{mount}/ca.crt",
        }
        if database:
            values["PGHOST"] = f"{database}.{namespace}.svc"
            if str(database) in readers:
                values["PGHOST_RO"] = f"{database}{READ_ONLY_SUFFIX}.{namespace}.svc"
        if user:
            values["PGUSER"] = str(user)
        if dbname:
            values["PGDATABASE"] = str(dbname)
    return {key: (b64(values[key]) if key in values else None) for key in TOKEN_SECRET_KEYS}


def tokenreview_subjects(
    current: Any, namespace: str, service_accounts: list[str]
) -> list[dict[str, str]]:
    """The binding's subjects with this namespace's entries replaced by these accounts."""
    kept = [
        dict(s)
        for s in (current if isinstance(current, list) else [])
        if isinstance(s, Mapping)
        and not (s.get("kind") == "ServiceAccount" and s.get("namespace") == namespace)
    ]
    ours = [{"kind": "ServiceAccount", "name": n, "namespace": namespace} for n in service_accounts]
    return sorted(kept + ours, key=lambda s: (s.get("namespace", ""), s.get("name", "")))
