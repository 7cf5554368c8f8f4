"""Token admission: who asked (stamped by the API server's word) and whether they may grant it.

Pure. The kopf webhook handlers (handlers.py) pass the AdmissionReview's `userInfo` and a
function that asks the API server whether a user may `bind` a Role (a SubjectAccessReview,
authz.py); these functions decide:

- `stamp`: the requester annotations every new Token gets, whatever the client sent,
  signed with a key derived from the operator's CA key (`read_stamp` checks it), so a
  requester written by anyone but the webhook (while the webhooks were absent, say) is
  never taken for a verified one;
- `stamp_decision`: on an approval (or denial) of a pending Token, the approver and the
  time, signed the same way (`read_decision`);
- `review`: whether a CREATE or UPDATE may go ahead. Naming a Role needs `bind` on it (as
  RBAC's own `bind` stops escalation through RoleBindings), or `request`, which makes the
  Token wait for an approval (as does a Role with `requireApproval`); an approval needs
  `approve` on the Roles and is never the requester's own; the requester and the decision
  annotations are set once and never change; `spec.publicKey` and `spec.subject` say who
  holds the grant, so they never change either (otherwise whoever may update Tokens could
  take over a grant someone else was allowed to make, and the audit would name that
  someone). See docs/access-control.md and docs/access-requests.md.

A refusal is a `Refused` with the message the API server shows the user.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rdsgate.proxy.access import RoleOptions
from rdsgate.proxy.durations import format_duration

from . import pki
from .objects import meta_of, spec_of
from .status import parse_timestamp, timestamp

REQUESTED_BY = "rdsgate.dev/requested-by"
REQUESTED_BY_GROUPS = "rdsgate.dev/requested-by-groups"
REQUESTED_BY_SIGNATURE = "rdsgate.dev/requested-by-signature"
#: The requester's own words, set at creation (required for a Token that needs approval).
REQUEST_REASON = "rdsgate.dev/request-reason"
REQUESTER_ANNOTATIONS = (REQUESTED_BY, REQUESTED_BY_GROUPS, REQUESTED_BY_SIGNATURE, REQUEST_REASON)
APPROVED_BY = "rdsgate.dev/approved-by"
DENIED_BY = "rdsgate.dev/denied-by"
APPROVAL_REASON = "rdsgate.dev/approval-reason"
DENIAL_REASON = "rdsgate.dev/denial-reason"
DECIDED_AT = "rdsgate.dev/decided-at"
#: The Roles the decision covers (JSON list): those the approver was checked for `approve`.
DECIDED_ROLES = "rdsgate.dev/decided-roles"
DECISION_SIGNATURE = "rdsgate.dev/decision-signature"
DECISION_ANNOTATIONS = (
    APPROVED_BY,
    DENIED_BY,
    APPROVAL_REASON,
    DENIAL_REASON,
    DECIDED_AT,
    DECIDED_ROLES,
    DECISION_SIGNATURE,
)
#: The webhooks' names, as the API server quotes them in a refusal.
VALIDATING_WEBHOOK = "tokens.rdsgate.dev"
MUTATING_WEBHOOK = "requester.tokens.rdsgate.dev"
#: The kopf handler ids, which are also the webhooks' URL paths (`/validate-tokens`).
VALIDATING_ID = "validate-tokens"
MUTATING_ID = "mutate-tokens"


class Refused(Exception):
    """The API server is to refuse the request with this message (and HTTP code)."""

    def __init__(self, message: str, code: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Requester:
    """A user as the API server authenticated them: what RBAC decides on."""

    username: str
    groups: tuple[str, ...] = ()

    @classmethod
    def from_userinfo(cls, userinfo: Mapping[str, Any] | None) -> Requester:
        info = userinfo or {}
        groups = info.get("groups") or ()
        return cls(str(info.get("username") or ""), tuple(str(g) for g in groups))

    @classmethod
    def claimed_by(cls, token: Mapping[str, Any]) -> Requester | None:
        """The requester a Token's annotations name, signed or not (see `read_stamp`)."""
        annotations = meta_of(token).get("annotations") or {}
        username = annotations.get(REQUESTED_BY)
        if not isinstance(username, str) or not username:
            return None
        try:
            groups = json.loads(annotations.get(REQUESTED_BY_GROUPS) or "[]")
        except ValueError:
            groups = []
        if not isinstance(groups, list):
            groups = []
        return cls(username, tuple(str(g) for g in groups))

    def groups_text(self) -> str:
        return json.dumps(list(self.groups), separators=(",", ":"))


def stamp_key(ca_key_pem: bytes) -> bytes:
    """The key that signs requester stamps, derived from the CA's private key: whoever could
    forge a stamp could sign client certificates anyway."""
    return hashlib.sha256(b"rdsgate.dev/requested-by-signature/v1\0" + ca_key_pem).digest()


def _hmac(key: bytes, *parts: object) -> str:
    return hmac.new(key, json.dumps(parts).encode(), hashlib.sha256).hexdigest()


def _signature(
    key: bytes, namespace: str, name: str, requester: Requester, reason: str | None
) -> str:
    return _hmac(
        key, "requester", namespace, name, requester.username, list(requester.groups), reason
    )


def _same(given: object, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def request_reason(token: Mapping[str, Any]) -> str | None:
    value = (meta_of(token).get("annotations") or {}).get(REQUEST_REASON)
    return str(value) if value else None


@dataclass(frozen=True)
class Stamp:
    """What a Token says of its requester: verified (signed by the webhook), or not, and why."""

    requester: Requester | None
    #: Requester annotations are there but were not written by the admission webhook.
    forged: bool = False


def read_stamp(token: Mapping[str, Any], key: bytes) -> Stamp:
    claimed = Requester.claimed_by(token)
    annotations = meta_of(token).get("annotations") or {}
    if claimed is None:
        return Stamp(None, forged=any(k in annotations for k in REQUESTER_ANNOTATIONS))
    meta = meta_of(token)
    expected = _signature(
        key,
        str(meta.get("namespace") or ""),
        str(meta.get("name") or ""),
        claimed,
        request_reason(token),
    )
    if not _same(annotations.get(REQUESTED_BY_SIGNATURE), expected):
        return Stamp(None, forged=True)
    return Stamp(claimed)


@dataclass(frozen=True)
class Decision:
    """An approval or a denial of a pending Token, as the webhook recorded it; `roles` are
    those the approver was checked for (an approval covers no other)."""

    approved: bool
    by: str
    reason: str
    at: datetime
    roles: tuple[str, ...] = ()


def _decision_signature(
    key: bytes,
    token: Mapping[str, Any],
    approved: bool,
    by: str,
    reason: str,
    at: str,
    decided_roles: Sequence[str],
) -> str:
    """Over what was decided on: this Token (uid, name, namespace), its Roles, ttl and
    holder, its requester's stamp, and the decision itself."""
    meta = meta_of(token)
    spec = spec_of(token)
    annotations = meta.get("annotations") or {}
    holder = json.dumps([spec.get("publicKey"), spec.get("subject")], sort_keys=True)
    return _hmac(
        key,
        "decision",
        str(meta.get("namespace") or ""),
        str(meta.get("name") or ""),
        str(meta.get("uid") or ""),
        sorted(_roles(token)),
        spec.get("ttl"),
        hashlib.sha256(holder.encode()).hexdigest(),
        annotations.get(REQUESTED_BY_SIGNATURE),
        approved,
        by,
        reason,
        at,
        sorted(decided_roles),
    )


def _decided_roles(annotations: Mapping[str, Any]) -> list[str] | None:
    try:
        roles = json.loads(str(annotations.get(DECIDED_ROLES)))
    except ValueError:
        return None
    return [str(r) for r in roles] if isinstance(roles, list) else None


def read_decision(token: Mapping[str, Any], key: bytes) -> tuple[Decision | None, bool]:
    """The Token's decision if the webhook signed it, and whether there are decision
    annotations it did not sign (which count for nothing)."""
    annotations = meta_of(token).get("annotations") or {}
    present = any(k in annotations for k in DECISION_ANNOTATIONS)
    approved = APPROVED_BY in annotations
    by = annotations.get(APPROVED_BY if approved else DENIED_BY)
    reason = annotations.get(APPROVAL_REASON if approved else DENIAL_REASON) or ""
    at = annotations.get(DECIDED_AT)
    roles = _decided_roles(annotations)
    if not isinstance(by, str) or not isinstance(at, str) or roles is None:
        return None, present
    expected = _decision_signature(key, token, approved, by, str(reason), at, roles)
    if not _same(annotations.get(DECISION_SIGNATURE), expected):
        return None, True
    try:
        when = parse_timestamp(at)
    except ValueError:
        return None, True
    return Decision(approved, by, str(reason), when, tuple(sorted(roles))), False


@dataclass(frozen=True)
class Verdict:
    """The API server's answer to "may this user bind this Role": None when it gave none.
    `failed`: asking failed just now (an earlier answer may stand in for it)."""

    allowed: bool | None
    reason: str = ""
    failed: bool = False


#: (user, namespace, Role name, verb) → the API server's verdict on that verb on that Role.
May = Callable[[Requester, str, str, str], Verdict]


@dataclass(frozen=True)
class Context:
    """What a review needs besides the request: the stamp key, the API server's answers,
    a Role's options (None: no such valid Role), the time, and how long a request may wait."""

    key: bytes
    may: May
    options: Callable[[str, str], RoleOptions | None]
    now: datetime
    request_timeout: timedelta

    def requires_approval(self, namespace: str, role: str) -> bool:
        found = self.options(namespace, role)
        return bool(found is not None and found.require_approval)

    def max_ttl(self, namespace: str, role: str) -> float | None:
        found = self.options(namespace, role)
        return float(found.max_token_ttl) if found and found.max_token_ttl is not None else None


def stamp(
    userinfo: Mapping[str, Any] | None,
    key: bytes,
    namespace: str,
    name: str,
    reason: str | None = None,
) -> dict[str, str]:
    """The annotations the mutating webhook sets on every new Token named `name` (whose
    request reason, if any, the signature covers too)."""
    requester = Requester.from_userinfo(userinfo)
    return {
        REQUESTED_BY: requester.username,
        REQUESTED_BY_GROUPS: requester.groups_text(),
        REQUESTED_BY_SIGNATURE: _signature(key, namespace, name, requester, reason),
    }


def stamp_decision(
    userinfo: Mapping[str, Any] | None,
    key: bytes,
    new: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    now: datetime,
    needing: Callable[[], Sequence[str]],
) -> dict[str, str]:
    """For an UPDATE that newly approves (or denies) a Token: the approver as the API server
    authenticated them over whatever the client wrote, the time, the Roles it covers
    (`needing`: those that need an approval now, which the validating webhook checks the
    approver may approve), and the signature."""
    annotations = meta_of(new).get("annotations") or {}
    before = meta_of(old or {}).get("annotations") or {}
    if any(k in before for k in DECISION_ANNOTATIONS):
        return {}
    approved = APPROVED_BY in annotations
    if not approved and DENIED_BY not in annotations:
        return {}
    by = Requester.from_userinfo(userinfo).username
    reason = str(annotations.get(APPROVAL_REASON if approved else DENIAL_REASON) or "")
    at = timestamp(now)
    roles = sorted(needing())
    # The uid of the stored Token: the object the update is about (the new one may lack it).
    signed = {**new, "metadata": {**meta_of(new), "uid": meta_of(old or {}).get("uid")}}
    return {
        APPROVED_BY if approved else DENIED_BY: by,
        DECIDED_AT: at,
        DECIDED_ROLES: json.dumps(roles, separators=(",", ":")),
        DECISION_SIGNATURE: _decision_signature(key, signed, approved, by, reason, at, roles),
    }


def needing_approval(
    token: Mapping[str, Any], requester: Requester | None, ctx: Context
) -> list[str]:
    """The Roles of a Token that need an approval: those that require one, and those its
    requester may not bind (only request) — every one, when its requester is not known."""
    namespace = str(meta_of(token).get("namespace") or "default")
    roles = _roles(token)
    if requester is None:
        return roles
    return [
        r
        for r in roles
        if ctx.requires_approval(namespace, r)
        or not _asked(ctx.may, requester, namespace, r, "bind")
    ]


def generated_name(generate_name: str) -> str:
    """A name for a Token created with `generateName`, chosen at admission so that the stamp
    can be signed for it (the API server would choose one only after admission)."""
    alphabet = string.ascii_lowercase + string.digits
    return generate_name + "".join(secrets.choice(alphabet) for _ in range(5))


def restored(new: Mapping[str, Any] | None, old: Mapping[str, Any] | None) -> dict[str, str]:
    """The requester and decision annotations an UPDATE left out, put back from the stored
    Token: a server-side apply of a manifest that never had them removes them otherwise
    (they are the webhook's, but SSA counts them as the applier's), and every GitOps sync
    would be refused. A change to them is still refused by `review`."""
    before = meta_of(old or {}).get("annotations") or {}
    after = meta_of(new or {}).get("annotations") or {}
    kept = REQUESTER_ANNOTATIONS + DECISION_ANNOTATIONS
    return {k: before[k] for k in kept if k in before and k not in after}


def _roles(token: Mapping[str, Any] | None) -> list[str]:
    roles = spec_of(token or {}).get("roles")
    return [str(r) for r in roles] if isinstance(roles, list) else []


def _quoted(names: Sequence[str]) -> str:
    quoted = [f'"{n}"' for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def bind_refusal(who: str, namespace: str, roles: Sequence[str], *, lost: bool = False) -> str:
    """`alice may not bind Role "app-rw" in namespace "shop" (needs verb bind on
    roles.rdsgate.dev "app-rw")`; with `lost`, the words of a revocation."""
    noun = "Role" if len(roles) == 1 else "Roles"
    names = _quoted(roles)
    if lost:
        return f'{who} may no longer bind {noun} {names} in namespace "{namespace}"'
    return (
        f'{who} may not bind {noun} {names} in namespace "{namespace}" '
        f"(needs verb bind on roles.rdsgate.dev {names})"
    )


def _asked(may: May, user: Requester, namespace: str, role: str, verb: str) -> bool:
    verdict = may(user, namespace, role, verb)
    if verdict.allowed is None:
        raise Refused(
            f'cannot check whether {user.username} may {verb} Role "{role}" in namespace '
            f'"{namespace}": {verdict.reason}; try again',
            code=503,
        )
    return verdict.allowed


def check_binds(
    requester: Requester, namespace: str, roles: Sequence[str], may: May, *, request: bool = False
) -> list[str]:
    """Refuses unless the requester may bind every one of `roles` (or, with `request`, at
    least request it); returns the Roles they may only request."""
    missing: list[str] = []
    requested: list[str] = []
    for role in roles:
        if _asked(may, requester, namespace, role, "bind"):
            continue
        if request and _asked(may, requester, namespace, role, "request"):
            requested.append(role)
            continue
        missing.append(role)
    if missing:
        raise Refused(bind_refusal(requester.username, namespace, missing))
    return requested


def _check_public_key(spec: Mapping[str, Any]) -> None:
    pem = spec.get("publicKey")
    if pem is None:
        return
    if spec.get("subject"):
        raise Refused(
            "spec.publicKey and spec.subject exclude each other: a Token is held by a key "
            "pair or by a ServiceAccount, not both",
            code=422,
        )
    try:
        pki.load_public_key(str(pem))
    except pki.BadPublicKey as exc:
        raise Refused(f"spec.publicKey: {exc}", code=422) from None


def review(
    operation: str | None,
    new: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    userinfo: Mapping[str, Any] | None,
    ctx: Context,
) -> None:
    """Whether a CREATE or UPDATE of a Token may go ahead; raises Refused if not."""
    if (
        new is None
        or operation not in ("CREATE", "UPDATE")
        or (operation == "UPDATE" and old is None)
    ):
        raise Refused(
            f"cannot review a Token {operation or 'request'} without its object"
            + (" and its stored version" if operation == "UPDATE" else ""),
            code=500,
        )
    if operation == "CREATE":
        _review_create(new, userinfo, ctx)
    else:
        assert old is not None
        _review_update(new, old, userinfo, ctx)


def _review_create(
    new: Mapping[str, Any], userinfo: Mapping[str, Any] | None, ctx: Context
) -> None:
    requester = Requester.from_userinfo(userinfo)
    meta = meta_of(new)
    namespace = str(meta.get("namespace") or "default")
    annotations = meta.get("annotations") or {}
    reason = request_reason(new)
    stamped = {k: annotations.get(k) for k in REQUESTER_ANNOTATIONS if k != REQUEST_REASON}
    if stamped != stamp(userinfo, ctx.key, namespace, str(meta.get("name") or ""), reason):
        raise Refused(
            f"the Token does not carry its requester as the API server authenticated "
            f"them ({REQUESTED_BY}={requester.username!r}): the mutating webhook "
            f"{MUTATING_WEBHOOK} did not run; check the MutatingWebhookConfiguration "
            "that the rdsgate chart installs",
            code=500,
        )
    if any(k in annotations for k in DECISION_ANNOTATIONS):
        raise Refused(
            "a Token is approved by an update of it, by someone else, not created approved: "
            f"leave out {', '.join(k for k in DECISION_ANNOTATIONS if k in annotations)}",
            code=422,
        )
    _check_public_key(spec_of(new))
    roles = _roles(new)
    requested = check_binds(requester, namespace, roles, ctx.may, request=True)
    needing = [r for r in roles if ctx.requires_approval(namespace, r)]
    if (requested or needing) and not reason:
        why = (
            f"Role {_quoted(needing)} requires approval"
            if needing
            else f"you may only request Role {_quoted(requested)}"
        )
        raise Refused(
            f"{why}: say why you need access in the annotation {REQUEST_REASON} "
            "(the approver reads it, and it goes into the audit trail)",
            code=422,
        )
    spec = spec_of(new)
    if (requested or needing) and not spec.get("publicKey") and not spec.get("subject"):
        raise Refused(
            "a Token that waits for an approval must be held by its requester's own key "
            "(spec.publicKey, as `kubectl rdsgate db connect --request` makes it) or by a "
            "ServiceAccount (spec.subject): a Secret could be read by others, and the audit "
            "would name the requester",
            code=422,
        )
    if (
        (requested or needing)
        and spec.get("ttl") is None
        and all(ctx.max_ttl(namespace, r) is None for r in roles)
    ):
        raise Refused(
            "a Token that waits for an approval needs spec.ttl (none of its Roles sets "
            "maxTokenTTL): say how long you need access",
            code=422,
        )


def _review_update(
    new: Mapping[str, Any],
    old: Mapping[str, Any],
    userinfo: Mapping[str, Any] | None,
    ctx: Context,
) -> None:
    requester = Requester.from_userinfo(userinfo)
    namespace = str(meta_of(new).get("namespace") or "default")
    annotations = meta_of(new).get("annotations") or {}
    before = meta_of(old).get("annotations") or {}
    for annotation in REQUESTER_ANNOTATIONS:
        if annotations.get(annotation) != before.get(annotation):
            raise Refused(
                f"the annotation {annotation} records who created this Token and cannot be "
                f"changed or removed (it is {before.get(annotation)!r}); create a new Token "
                "instead",
                code=422,
            )
    spec, old_spec = spec_of(new), spec_of(old)
    for field in ("publicKey", "subject"):
        if spec.get(field) != old_spec.get(field):
            raise Refused(
                f"spec.{field} says who holds this Token's grant and cannot be changed; "
                "create a new Token instead",
                code=422,
            )
    decided_before = any(k in before for k in DECISION_ANNOTATIONS)
    if decided_before:
        for annotation in DECISION_ANNOTATIONS:
            if annotations.get(annotation) != before.get(annotation):
                raise Refused(
                    f"the decision on this Token is recorded ({annotation} is "
                    f"{before.get(annotation)!r}) and cannot be changed; create a new Token",
                    code=422,
                )
    elif APPROVED_BY in annotations or DENIED_BY in annotations:
        if spec != old_spec:
            raise Refused(
                "approve or deny a Token in an update of its own, changing nothing else",
                code=422,
            )
        _review_decision(new, old, requester, ctx)
        return
    elif any(k in annotations for k in DECISION_ANNOTATIONS):
        raise Refused(f"a decision needs {APPROVED_BY} or {DENIED_BY} with its reason", code=422)
    requested = decided_before or bool(before.get(REQUEST_REASON))
    changed = [f for f in ("roles", "ttl") if spec.get(f) != old_spec.get(f)]
    if requested and changed:
        raise Refused(
            f"spec.{changed[0]} of a requested Token cannot change (its approval is for "
            "what was asked); ask again with a new Token",
            code=422,
        )
    if spec.get("ttl") != old_spec.get("ttl"):
        # A new ttl can lengthen a grant someone else was allowed to make: granting anew.
        check_binds(requester, namespace, _roles(new), ctx.may)
        return
    added = [role for role in _roles(new) if role not in _roles(old)]
    check_binds(requester, namespace, added, ctx.may)


def _review_decision(
    new: Mapping[str, Any], old: Mapping[str, Any], approver: Requester, ctx: Context
) -> None:
    """An approval or a denial of a pending Token, by someone with `approve` on its Roles
    who is not its requester, in time."""
    meta = meta_of(new)
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    annotations = meta.get("annotations") or {}
    if APPROVED_BY in annotations and DENIED_BY in annotations:
        raise Refused(f"set {APPROVED_BY} or {DENIED_BY}, not both", code=422)
    approving = APPROVED_BY in annotations
    verb_text = "approve" if approving else "deny"
    reason_key = APPROVAL_REASON if approving else DENIAL_REASON
    if not annotations.get(reason_key):
        raise Refused(
            f"say why you {verb_text} Token {name!r}: set {reason_key} (it goes into the "
            "audit trail)",
            code=422,
        )
    decision, forged = read_decision(new, ctx.key)
    if decision is None or forged or decision.by != approver.username:
        raise Refused(
            f"the decision does not carry its approver as the API server authenticated them: "
            f"the mutating webhook {MUTATING_WEBHOOK} did not run",
            code=500,
        )
    stamp_of_old = read_stamp(old, ctx.key)
    if stamp_of_old.requester is None:
        raise Refused(
            f"Token {name!r} has no requester stamped by the admission webhook (created before "
            "it, or its annotations were not written by it), so it cannot be decided on: the "
            "requester asks again with a new Token",
            code=422,
        )
    requester = stamp_of_old.requester
    if requester.username == approver.username:
        raise Refused(
            f"{approver.username} may not {verb_text} their own request: someone else with "
            "the verb approve on its Roles must",
            code=403,
        )
    needing = needing_approval(new, requester, ctx)
    if not needing:
        raise Refused(
            f"Token {name!r} is not waiting for an approval: none of its Roles requires "
            "one and its requester may bind them all",
            code=422,
        )
    if list(decision.roles) != sorted(needing):
        raise Refused(
            f"the decision covers Roles {list(decision.roles)}, but {sorted(needing)} need an "
            "approval now: try again",
            code=409,
        )
    missing = [r for r in needing if not _asked(ctx.may, approver, namespace, r, "approve")]
    if missing:
        noun = "Role" if len(missing) == 1 else "Roles"
        names = _quoted(missing)
        raise Refused(
            f"{approver.username} may not {verb_text} requests for {noun} {names} in "
            f'namespace "{namespace}" (needs verb approve on roles.rdsgate.dev {names})',
            code=403,
        )
    created = meta_of(old).get("creationTimestamp")
    if isinstance(created, str):
        try:
            deadline = parse_timestamp(created) + ctx.request_timeout
        except ValueError:
            deadline = None
        if deadline is not None and ctx.now >= deadline:
            raise Refused(
                f"the request expired at {timestamp(deadline)}, not answered within "
                f"{format_duration(ctx.request_timeout.total_seconds())}; the requester asks "
                "again with a new Token",
                code=422,
            )
