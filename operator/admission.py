"""Token admission: who asked (stamped by the API server's word) and whether they may grant it.

Pure. The kopf webhook handlers (handlers.py) pass the AdmissionReview's `userInfo` and a
function that asks the API server whether a user may `bind` a Role (a SubjectAccessReview,
authz.py); these functions decide:

- `stamp`: the requester annotations every new Token gets, whatever the client sent,
  signed with a key derived from the operator's CA key (`read_stamp` checks it), so a
  requester written by anyone but the webhook (while the webhooks were absent, say) is
  never taken for a verified one;
- `review`: whether a CREATE or UPDATE may go ahead. Naming a Role needs `bind` on it (as
  RBAC's own `bind` stops escalation through RoleBindings); the requester annotations are
  set once and never change; `spec.publicKey` and `spec.subject` say who holds the grant,
  so they never change either (otherwise whoever may update Tokens could take over a grant
  someone else was allowed to make, and the audit would name that someone).

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
from typing import Any

from . import pki
from .objects import meta_of, spec_of

REQUESTED_BY = "rdsgate.dev/requested-by"
REQUESTED_BY_GROUPS = "rdsgate.dev/requested-by-groups"
REQUESTED_BY_SIGNATURE = "rdsgate.dev/requested-by-signature"
REQUESTER_ANNOTATIONS = (REQUESTED_BY, REQUESTED_BY_GROUPS, REQUESTED_BY_SIGNATURE)
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


def _signature(key: bytes, namespace: str, name: str, requester: Requester) -> str:
    message = json.dumps([namespace, name, requester.username, list(requester.groups)])
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


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
        key, str(meta.get("namespace") or ""), str(meta.get("name") or ""), claimed
    )
    given = annotations.get(REQUESTED_BY_SIGNATURE)
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected.encode()):
        return Stamp(None, forged=True)
    return Stamp(claimed)


@dataclass(frozen=True)
class Verdict:
    """The API server's answer to "may this user bind this Role": None when it gave none.
    `failed`: asking failed just now (an earlier answer may stand in for it)."""

    allowed: bool | None
    reason: str = ""
    failed: bool = False


#: (requester, namespace, Role name) → the verdict; `userinfo` extras travel with the requester.
MayBind = Callable[[Requester, str, str], Verdict]


def stamp(
    userinfo: Mapping[str, Any] | None, key: bytes, namespace: str, name: str
) -> dict[str, str]:
    """The annotations the mutating webhook sets on every new Token named `name`."""
    requester = Requester.from_userinfo(userinfo)
    return {
        REQUESTED_BY: requester.username,
        REQUESTED_BY_GROUPS: requester.groups_text(),
        REQUESTED_BY_SIGNATURE: _signature(key, namespace, name, requester),
    }


def generated_name(generate_name: str) -> str:
    """A name for a Token created with `generateName`, chosen at admission so that the stamp
    can be signed for it (the API server would choose one only after admission)."""
    alphabet = string.ascii_lowercase + string.digits
    return generate_name + "".join(secrets.choice(alphabet) for _ in range(5))


def restored(new: Mapping[str, Any] | None, old: Mapping[str, Any] | None) -> dict[str, str]:
    """The requester annotations an UPDATE left out, put back from the stored Token: a
    server-side apply of a manifest that never had them removes them otherwise (they are
    the webhook's, but SSA counts them as the applier's), and every GitOps sync would be
    refused. A change to them is still refused by `review`."""
    before = meta_of(old or {}).get("annotations") or {}
    after = meta_of(new or {}).get("annotations") or {}
    return {k: before[k] for k in REQUESTER_ANNOTATIONS if k in before and k not in after}


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


def check_binds(
    requester: Requester, namespace: str, roles: Sequence[str], may_bind: MayBind
) -> None:
    """Refuses unless the requester may bind every one of `roles`."""
    missing: list[str] = []
    for role in roles:
        verdict = may_bind(requester, namespace, role)
        if verdict.allowed is None:
            raise Refused(
                f'cannot check whether {requester.username} may bind Role "{role}" in '
                f'namespace "{namespace}": {verdict.reason}; try again',
                code=503,
            )
        if not verdict.allowed:
            missing.append(role)
    if missing:
        raise Refused(bind_refusal(requester.username, namespace, missing))


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
    may_bind: MayBind,
    key: bytes,
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
    requester = Requester.from_userinfo(userinfo)
    meta = meta_of(new)
    namespace = str(meta.get("namespace") or "default")
    annotations = meta.get("annotations") or {}
    spec = spec_of(new)
    if operation == "CREATE":
        stamped = {k: annotations.get(k) for k in REQUESTER_ANNOTATIONS}
        if stamped != stamp(userinfo, key, namespace, str(meta.get("name") or "")):
            raise Refused(
                f"the Token does not carry its requester as the API server authenticated "
                f"them ({REQUESTED_BY}={requester.username!r}): the mutating webhook "
                f"{MUTATING_WEBHOOK} did not run; check the MutatingWebhookConfiguration "
                "that the rdsgate chart installs",
                code=500,
            )
        _check_public_key(spec)
        check_binds(requester, namespace, _roles(new), may_bind)
        return
    assert old is not None
    before = meta_of(old).get("annotations") or {}
    for annotation in REQUESTER_ANNOTATIONS:
        if annotations.get(annotation) != before.get(annotation):
            raise Refused(
                f"the annotation {annotation} records who created this Token and cannot be "
                f"changed or removed (it is {before.get(annotation)!r}); create a new Token "
                "instead",
                code=422,
            )
    old_spec = spec_of(old)
    for field in ("publicKey", "subject"):
        if spec.get(field) != old_spec.get(field):
            raise Refused(
                f"spec.{field} says who holds this Token's grant and cannot be changed; "
                "create a new Token instead",
                code=422,
            )
    if spec.get("ttl") != old_spec.get("ttl"):
        # A new ttl can lengthen a grant someone else was allowed to make: granting anew.
        check_binds(requester, namespace, _roles(new), may_bind)
        return
    added = [role for role in _roles(new) if role not in _roles(old)]
    check_binds(requester, namespace, added, may_bind)
