"""Token admission: who asked (stamped by the API server's word) and whether they may grant it.

Pure. The kopf webhook handlers (handlers.py) pass the AdmissionReview's `userInfo` and a
function that asks the API server whether a user may `bind` a Role (a SubjectAccessReview,
authz.py); these functions decide:

- `stamp`: the requester annotations every new Token gets, whatever the client sent;
- `review`: whether a CREATE or UPDATE may go ahead. Naming a Role needs `bind` on it (as
  RBAC's own `bind` stops escalation through RoleBindings); the requester annotations are
  set once and never change; `spec.publicKey` and `spec.subject` say who holds the grant,
  so they never change either (otherwise whoever may update Tokens could take over a grant
  someone else was allowed to make, and the audit would name that someone).

A refusal is a `Refused` with the message the API server shows the user.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import pki
from .objects import meta_of, spec_of

REQUESTED_BY = "rdsgate.dev/requested-by"
REQUESTED_BY_GROUPS = "rdsgate.dev/requested-by-groups"
REQUESTER_ANNOTATIONS = (REQUESTED_BY, REQUESTED_BY_GROUPS)
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
    def of_token(cls, token: Mapping[str, Any]) -> Requester | None:
        """The requester stamped on a Token at its admission; None for a Token without one."""
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

    def annotations(self) -> dict[str, str]:
        return {
            REQUESTED_BY: self.username,
            REQUESTED_BY_GROUPS: json.dumps(list(self.groups), separators=(",", ":")),
        }


@dataclass(frozen=True)
class Verdict:
    """The API server's answer to "may this user bind this Role": None when it gave none."""

    allowed: bool | None
    reason: str = ""


#: (requester, namespace, Role name) → the verdict; `userinfo` extras travel with the requester.
MayBind = Callable[[Requester, str, str], Verdict]


def stamp(userinfo: Mapping[str, Any] | None) -> dict[str, str]:
    """The annotations the mutating webhook sets on every new Token."""
    return Requester.from_userinfo(userinfo).annotations()


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
) -> None:
    """Whether a CREATE or UPDATE of a Token may go ahead; raises Refused if not."""
    if new is None:
        return
    requester = Requester.from_userinfo(userinfo)
    namespace = str(meta_of(new).get("namespace") or "default")
    annotations = meta_of(new).get("annotations") or {}
    spec = spec_of(new)
    if operation == "CREATE":
        stamped = {key: annotations.get(key) for key in REQUESTER_ANNOTATIONS}
        if stamped != requester.annotations():
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
    if operation != "UPDATE" or old is None:
        return
    before = meta_of(old).get("annotations") or {}
    for key in REQUESTER_ANNOTATIONS:
        if annotations.get(key) != before.get(key):
            raise Refused(
                f"the annotation {key} records who created this Token and cannot be "
                f"changed or removed (it is {before.get(key)!r}); create a new Token instead",
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
    added = [role for role in _roles(new) if role not in _roles(old)]
    check_binds(requester, namespace, added, may_bind)
