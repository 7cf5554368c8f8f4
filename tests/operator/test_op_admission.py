"""Token admission decisions (operator/admission.py): what the webhooks allow and refuse.

The `may_bind` answers stand in for the API server's SubjectAccessReviews here; the
webhooks over HTTPS against the emulator's RBAC are tested in test_op_webhooks.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x25519

from rdsgate.operator import admission, pki
from rdsgate.operator.admission import Refused, Requester, Verdict
from rdsgate.proxy.access import RoleOptions

ALICE = {"username": "alice", "uid": "u-1", "groups": ["devs", "system:authenticated"]}
KEY = admission.stamp_key(b"the CA's private key")
#: What the mutating webhook stamps on alice's Token shop/t.
STAMPED = admission.stamp(ALICE, KEY, "shop", "t")


MayBind = Callable[[Requester, str, str], Verdict]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def review(
    operation: str,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None,
    userinfo: dict[str, Any],
    may_bind: MayBind,
) -> None:
    """A review where nobody may request or approve and no Role needs approval."""

    def may(requester: Requester, namespace: str, role: str, verb: str) -> Verdict:
        return may_bind(requester, namespace, role) if verb == "bind" else Verdict(False)

    ctx = admission.Context(KEY, may, lambda ns, role: RoleOptions(), NOW, timedelta(hours=1))
    admission.review(operation, new, old, userinfo, ctx)


def token(*roles: str, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Token",
        "metadata": {"name": "t", "namespace": "shop", "annotations": dict(annotations or {})},
        "spec": {"roles": list(roles), **spec},
    }


def binds(*allowed: str, asked: list[tuple[str, str, str]] | None = None) -> MayBind:
    """An RBAC where the requester may bind exactly `allowed` ("*": any Role)."""

    def may_bind(requester: Requester, namespace: str, role: str) -> Verdict:
        if asked is not None:
            asked.append((requester.username, namespace, role))
        return Verdict("*" in allowed or role in allowed, "")

    return may_bind


def public_pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_the_requester_is_stamped_from_the_api_servers_user_info_and_signed() -> None:
    assert STAMPED["rdsgate.dev/requested-by"] == "alice"
    assert STAMPED["rdsgate.dev/requested-by-groups"] == '["devs","system:authenticated"]'
    assert admission.read_stamp(token(annotations=STAMPED), KEY) == admission.Stamp(
        Requester("alice", ("devs", "system:authenticated"))
    )
    assert admission.read_stamp(token(), KEY) == admission.Stamp(None, forged=False)


@pytest.mark.parametrize(
    "change",
    [
        {"rdsgate.dev/requested-by": "cluster-admin"},
        {"rdsgate.dev/requested-by-groups": '["system:masters"]'},
        {"rdsgate.dev/requested-by-signature": "0" * 64},
        {"rdsgate.dev/requested-by-signature": None},
    ],
    ids=["user", "groups", "signature", "unsigned"],
)
def test_a_stamp_not_signed_by_the_webhook_is_not_a_requester(change: dict[str, Any]) -> None:
    forged = {k: v for k, v in {**STAMPED, **change}.items() if v is not None}
    assert admission.read_stamp(token(annotations=forged), KEY) == admission.Stamp(
        None, forged=True
    )
    other_ca = admission.stamp_key(b"another CA's key")
    assert admission.read_stamp(token(annotations=STAMPED), other_ca).forged


def test_a_stamp_is_for_one_token_name_and_namespace() -> None:
    moved = token(annotations=STAMPED)
    moved["metadata"]["name"] = "another"
    assert admission.read_stamp(moved, KEY).forged
    moved = token(annotations=STAMPED)
    moved["metadata"]["namespace"] = "prod"
    assert admission.read_stamp(moved, KEY).forged


def test_a_server_side_apply_that_leaves_the_stamp_out_gets_it_back() -> None:
    old = token("app-ro", annotations={**STAMPED, "team": "a"})
    applied = token("app-ro", annotations={"team": "b"})
    assert admission.restored(applied, old) == STAMPED
    assert admission.restored(token("app-ro", annotations=STAMPED), old) == {}
    assert admission.restored(token("app-ro"), token("app-ro")) == {}


def test_a_new_ttl_is_a_new_grant_and_needs_bind() -> None:
    old = token("app-rw", annotations=STAMPED, ttl="1h")
    bob = {"username": "bob", "groups": []}
    for new_ttl in ("30d", None):
        new = token("app-rw", annotations=STAMPED)
        if new_ttl:
            new["spec"]["ttl"] = new_ttl
        with pytest.raises(Refused) as refused:
            review("UPDATE", new, old, bob, binds())
        assert refused.value.message.startswith('bob may not bind Role "app-rw"')
    review("UPDATE", token("app-rw", annotations=STAMPED, ttl="30d"), old, bob, binds("app-rw"))


def test_a_review_without_its_objects_is_refused() -> None:
    for operation, new, old in [
        ("CREATE", None, None),
        ("UPDATE", token("r", annotations=STAMPED), None),
        ("DELETE", token("r"), token("r")),
    ]:
        with pytest.raises(Refused) as refused:
            review(operation, new, old, ALICE, binds("*"))
        assert refused.value.code == 500


def test_creating_a_token_needs_bind_on_each_role() -> None:
    asked: list[tuple[str, str, str]] = []
    review(
        "CREATE", token("app-ro", annotations=STAMPED), None, ALICE, binds("app-ro", asked=asked)
    )
    assert asked == [("alice", "shop", "app-ro")]
    with pytest.raises(Refused) as refused:
        review("CREATE", token("app-rw", annotations=STAMPED), None, ALICE, binds("app-ro"))
    assert refused.value.code == 403
    assert refused.value.message == (
        'alice may not bind Role "app-rw" in namespace "shop" '
        '(needs verb bind on roles.rdsgate.dev "app-rw")'
    )


def test_the_refusal_names_every_role_missing() -> None:
    with pytest.raises(Refused) as refused:
        review(
            "CREATE",
            token("app-ro", "app-rw", "admin", annotations=STAMPED),
            None,
            ALICE,
            binds("app-ro"),
        )
    assert refused.value.message == (
        'alice may not bind Roles "app-rw" and "admin" in namespace "shop" '
        '(needs verb bind on roles.rdsgate.dev "app-rw" and "admin")'
    )


def test_no_answer_from_the_api_server_refuses_and_says_to_retry() -> None:
    def down(requester: Requester, namespace: str, role: str) -> Verdict:
        return Verdict(None, "connection refused")

    with pytest.raises(Refused) as refused:
        review("CREATE", token("app-ro", annotations=STAMPED), None, ALICE, down)
    assert refused.value.code == 503
    assert "connection refused" in refused.value.message


def test_a_token_without_the_stamp_is_refused_fail_closed() -> None:
    """Only the mutating webhook puts the requester there: without it, no Token is made."""
    forged = {**STAMPED, "rdsgate.dev/requested-by": "bob"}
    for stamp in ({}, forged):
        with pytest.raises(Refused) as refused:
            review("CREATE", token("app-ro", annotations=stamp), None, ALICE, binds("*"))
        assert "requester.tokens.rdsgate.dev did not run" in refused.value.message


def test_an_update_adding_a_role_needs_bind_on_that_role_only() -> None:
    old = token("app-ro", annotations=STAMPED)
    bob = {"username": "bob", "groups": ["oncall"]}
    asked: list[tuple[str, str, str]] = []
    review(
        "UPDATE",
        token("app-ro", "app-rw", annotations=STAMPED),
        old,
        bob,
        binds("app-rw", asked=asked),
    )
    assert asked == [("bob", "shop", "app-rw")]
    with pytest.raises(Refused) as refused:
        review("UPDATE", token("app-ro", "app-rw", annotations=STAMPED), old, bob, binds())
    assert refused.value.message.startswith('bob may not bind Role "app-rw" in namespace "shop"')


def test_an_update_that_keeps_the_roles_asks_nothing() -> None:
    """The operator's own writes (finalizers, kopf's annotations), a ttl or label edit."""
    old = token("app-rw", annotations=STAMPED)
    new = token("app-rw", annotations={**STAMPED, "rdsgate.dev/last-handled-configuration": "{}"})
    new["metadata"]["finalizers"] = ["rdsgate.dev/finalizer"]
    asked: list[tuple[str, str, str]] = []
    review("UPDATE", new, old, {"username": "system:serviceaccount:rdsgate:op"}, binds(asked=asked))
    assert asked == []


@pytest.mark.parametrize(
    "annotations",
    [
        {**STAMPED, "rdsgate.dev/requested-by": "mallory"},
        {**STAMPED, "rdsgate.dev/requested-by-groups": '["system:masters"]'},
        {"rdsgate.dev/requested-by-groups": STAMPED["rdsgate.dev/requested-by-groups"]},
        {},
    ],
    ids=["changed", "groups changed", "removed", "both removed"],
)
def test_the_requester_annotations_never_change(annotations: dict[str, str]) -> None:
    with pytest.raises(Refused) as refused:
        review(
            "UPDATE",
            token("app-rw", annotations=annotations),
            token("app-rw", annotations=STAMPED),
            ALICE,
            binds("*"),
        )
    assert refused.value.code == 422
    assert (
        "records who created this Token and cannot be changed or removed" in refused.value.message
    )


def test_a_token_from_before_the_webhooks_cannot_be_given_a_requester() -> None:
    with pytest.raises(Refused):
        review("UPDATE", token("app-rw", annotations=STAMPED), token("app-rw"), ALICE, binds("*"))


def test_who_holds_the_grant_never_changes() -> None:
    key = public_pem(ec.generate_private_key(ec.SECP256R1()))
    other = public_pem(ec.generate_private_key(ec.SECP256R1()))
    cases = [
        (
            token("r", annotations=STAMPED, publicKey=key),
            token("r", annotations=STAMPED, publicKey=other),
        ),
        (token("r", annotations=STAMPED), token("r", annotations=STAMPED, publicKey=key)),
        (
            token("r", annotations=STAMPED, subject={"serviceAccount": {"name": "web"}}),
            token("r", annotations=STAMPED, subject={"serviceAccount": {"name": "mallory"}}),
        ),
    ]
    for old, new in cases:
        with pytest.raises(Refused) as refused:
            review("UPDATE", new, old, ALICE, binds("*"))
        assert "cannot be changed; create a new Token instead" in refused.value.message


KEYS: list[tuple[str, Callable[[], Any]]] = [
    ("ECDSA P-256", lambda: ec.generate_private_key(ec.SECP256R1())),
    ("ECDSA P-384", lambda: ec.generate_private_key(ec.SECP384R1())),
    ("Ed25519", ed25519.Ed25519PrivateKey.generate),
    ("RSA 2048", lambda: rsa.generate_private_key(65537, 2048)),
]


@pytest.mark.parametrize(("what", "make"), KEYS, ids=[k[0] for k in KEYS])
def test_accepted_public_keys(what: str, make: Callable[[], Any]) -> None:
    review(
        "CREATE",
        token("r", annotations=STAMPED, publicKey=public_pem(make())),
        None,
        ALICE,
        binds("*"),
    )


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda: public_pem(ec.generate_private_key(ec.SECP521R1())),
            "ECDSA curve secp521r1 is not accepted: use P-256 or P-384",
        ),
        (
            lambda: public_pem(rsa.generate_private_key(65537, 1024)),  # noqa: S505 - refused
            "RSA key of 1024 bits is too short: use at least 2048",
        ),
        (
            lambda: public_pem(ed448.Ed448PrivateKey.generate()),
            "Ed448PublicKey keys are not accepted",
        ),
        (lambda: public_pem(dsa.generate_private_key(2048)), "DSAPublicKey keys are not accepted"),
        (
            lambda: public_pem(x25519.X25519PrivateKey.generate()),
            "X25519PublicKey keys are not accepted",
        ),
        (
            lambda: (
                ec.generate_private_key(ec.SECP256R1())
                .private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                .decode()
            ),
            "this is a private key: put only the public key here",
        ),
        (lambda: "ssh-ed25519 AAAAC3Nza alice@laptop", "expected a PEM public key starting with"),
        (
            lambda: "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
            "not a readable PEM public key",
        ),
    ],
    ids=["P-521", "RSA-1024", "Ed448", "DSA", "X25519", "private key", "ssh key", "garbage"],
)
def test_refused_public_keys_say_why(make: Callable[[], str], reason: str) -> None:
    with pytest.raises(Refused) as refused:
        review("CREATE", token("r", annotations=STAMPED, publicKey=make()), None, ALICE, binds("*"))
    assert refused.value.code == 422
    assert refused.value.message.startswith("spec.publicKey: ")
    assert reason in refused.value.message
    with pytest.raises(pki.BadPublicKey):
        pki.load_public_key(make())


def test_a_public_key_and_a_service_account_exclude_each_other() -> None:
    key = public_pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(Refused) as refused:
        review(
            "CREATE",
            token(
                "r", annotations=STAMPED, publicKey=key, subject={"serviceAccount": {"name": "web"}}
            ),
            None,
            ALICE,
            binds("*"),
        )
    assert "exclude each other" in refused.value.message


def test_groups_annotation_is_compact_json() -> None:
    stamped = admission.stamp(
        {"username": "arn:aws:sts::111122223333:assumed-role/Dev/alice", "groups": ["a", "b"]},
        KEY,
        "shop",
        "t",
    )
    assert json.loads(stamped["rdsgate.dev/requested-by-groups"]) == ["a", "b"]
    assert stamped["rdsgate.dev/requested-by"] == "arn:aws:sts::111122223333:assumed-role/Dev/alice"


# Access requests: request, approve, deny (docs/access-requests.md)

BOB = {"username": "bob", "groups": ["oncall-leads"]}


def ctx(
    *,
    verbs: dict[tuple[str, str], set[str]],
    needing: frozenset[str] | set[str] = frozenset(),
    now: datetime = NOW,
) -> admission.Context:
    """An RBAC where `verbs[(user, role)]` are what the user may do on the Role."""

    def may(user: Requester, namespace: str, role: str, verb: str) -> Verdict:
        return Verdict(verb in verbs.get((user.username, role), set()))

    def options(namespace: str, role: str) -> RoleOptions:
        return RoleOptions(require_approval=role in needing or None)

    return admission.Context(KEY, may, options, now, timedelta(hours=1))


def asked(*roles: str, reason: str | None = "INC-4711", created: datetime = NOW) -> dict[str, Any]:
    """alice's Token (for an hour) as the API server stored it after admission."""
    annotations = admission.stamp(ALICE, KEY, "shop", "t", reason)
    if reason is not None:
        annotations["rdsgate.dev/request-reason"] = reason
    t = token(
        *roles, annotations=annotations, ttl="1h", subject={"serviceAccount": {"name": "job"}}
    )
    t["metadata"]["uid"] = "uid-of-t"
    t["metadata"]["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    return t


def approval(
    old: dict[str, Any],
    by: dict[str, Any],
    *,
    deny: bool = False,
    reason: str = "ok",
    covers: tuple[str, ...] = ("prod-admin",),
) -> dict[str, Any]:
    """The update an approver sends, as the mutating webhook passes it on (covering the
    Roles that need the approval)."""
    new: dict[str, Any] = json.loads(json.dumps(old))
    annotations = new["metadata"]["annotations"]
    annotations["rdsgate.dev/denied-by" if deny else "rdsgate.dev/approved-by"] = "whoever"
    if reason:
        annotations["rdsgate.dev/denial-reason" if deny else "rdsgate.dev/approval-reason"] = reason
    annotations.update(admission.stamp_decision(by, KEY, new, old, NOW, lambda: list(covers)))
    return new


def test_request_makes_a_pending_token_that_needs_a_reason() -> None:
    may_request = ctx(verbs={("alice", "prod-admin"): {"request"}})
    created = token(
        "prod-admin",
        annotations=admission.stamp(ALICE, KEY, "shop", "t"),
        subject={"serviceAccount": {"name": "job"}},
    )
    with pytest.raises(Refused) as refused:
        admission.review("CREATE", created, None, ALICE, may_request)
    assert refused.value.message.startswith(
        'you may only request Role "prod-admin": say why you need access in the annotation '
        "rdsgate.dev/request-reason"
    )
    admission.review("CREATE", asked("prod-admin"), None, ALICE, may_request)
    # bind on a Role that requires approval still needs the reason (and an approval).
    may_bind = ctx(verbs={("alice", "prod-admin"): {"bind"}}, needing={"prod-admin"})
    with pytest.raises(Refused) as refused:
        admission.review("CREATE", created, None, ALICE, may_bind)
    assert refused.value.message.startswith('Role "prod-admin" requires approval')
    nothing = ctx(verbs={})
    with pytest.raises(Refused) as refused:
        admission.review("CREATE", asked("prod-admin"), None, ALICE, nothing)
    assert refused.value.message.startswith('alice may not bind Role "prod-admin"')


def test_a_token_cannot_be_created_approved() -> None:
    t = asked("prod-admin")
    t["metadata"]["annotations"]["rdsgate.dev/approved-by"] = "bob"
    with pytest.raises(Refused) as refused:
        admission.review(
            "CREATE", t, None, ALICE, ctx(verbs={("alice", "prod-admin"): {"request"}})
        )
    assert "not created approved" in refused.value.message


def test_an_approval_by_someone_else_with_approve() -> None:
    old = asked("prod-admin")
    rules = ctx(
        verbs={("bob", "prod-admin"): {"approve"}, ("alice", "prod-admin"): {"request", "approve"}},
        needing={"prod-admin"},
    )
    admission.review("UPDATE", approval(old, BOB), old, BOB, rules)
    admission.review("UPDATE", approval(old, BOB, deny=True), old, BOB, rules)
    new = approval(old, BOB)
    assert new["metadata"]["annotations"]["rdsgate.dev/approved-by"] == "bob"
    decision, forged = admission.read_decision(new, KEY)
    assert decision is not None and not forged
    assert (decision.approved, decision.by, decision.reason, decision.at) == (
        True,
        "bob",
        "ok",
        NOW,
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("self", "alice may not approve their own request"),
        (
            "no approve",
            'bob may not approve requests for Role "prod-admin" in namespace "shop" (needs verb approve on roles.rdsgate.dev "prod-admin")',
        ),
        ("no reason", "say why you approve Token 't': set rdsgate.dev/approval-reason"),
        ("both", "set rdsgate.dev/approved-by or rdsgate.dev/denied-by, not both"),
        ("unsigned", "the mutating webhook requester.tokens.rdsgate.dev did not run"),
        ("expired", "the request expired at 2026-03-01T11:00:00Z, not answered within 1h"),
        ("not pending", "Token 't' is not waiting for an approval"),
        ("spec too", "approve or deny a Token in an update of its own"),
    ],
)
def test_approvals_that_are_refused(case: str, message: str) -> None:
    needing = {"prod-admin"} if case != "not pending" else set()
    verbs = {("bob", "prod-admin"): {"approve"}, ("alice", "prod-admin"): {"bind", "approve"}}
    old = asked("prod-admin", created=NOW - timedelta(hours=2) if case == "expired" else NOW)
    approver = ALICE if case == "self" else BOB
    if case == "no approve":
        verbs = {}
    new = approval(
        old,
        approver,
        reason="" if case == "no reason" else "ok",
        covers=() if case == "not pending" else ("prod-admin",),
    )
    if case == "both":
        new["metadata"]["annotations"]["rdsgate.dev/denied-by"] = "bob"
    if case == "unsigned":
        new["metadata"]["annotations"]["rdsgate.dev/decision-signature"] = "0" * 64
    if case == "spec too":
        new["spec"]["ttl"] = "30d"
    with pytest.raises(Refused) as refused:
        admission.review("UPDATE", new, old, approver, ctx(verbs=verbs, needing=needing))
    assert message in refused.value.message


def test_a_recorded_decision_and_a_requested_tokens_roles_never_change() -> None:
    rules = ctx(
        verbs={("bob", "prod-admin"): {"approve", "bind"}, ("bob", "app-rw"): {"bind"}},
        needing={"prod-admin"},
    )
    old = approval(asked("prod-admin"), BOB)
    for change in (
        {"rdsgate.dev/approval-reason": "changed"},
        {"rdsgate.dev/approved-by": "carol"},
    ):
        new = json.loads(json.dumps(old))
        new["metadata"]["annotations"].update(change)
        with pytest.raises(Refused) as refused:
            admission.review("UPDATE", new, old, BOB, rules)
        assert "the decision on this Token is recorded" in refused.value.message
    new = json.loads(json.dumps(old))
    new["spec"]["roles"] = ["prod-admin", "app-rw"]
    with pytest.raises(Refused) as refused:
        admission.review("UPDATE", new, old, BOB, rules)
    assert "spec.roles of a requested Token cannot change" in refused.value.message
    # The request reason is the requester's and never changes either.
    pending = asked("prod-admin")
    new = json.loads(json.dumps(pending))
    new["metadata"]["annotations"]["rdsgate.dev/request-reason"] = "something else"
    with pytest.raises(Refused) as refused:
        admission.review("UPDATE", new, pending, BOB, rules)
    assert "rdsgate.dev/request-reason records who created this Token" in refused.value.message


def test_an_approval_must_cover_every_role_that_needs_one() -> None:
    """A Token naming prod-admin (requires approval) and app-ro (which alice may only
    request): an approver with approve on prod-admin alone cannot approve it."""
    old = asked("prod-admin", "app-ro")
    verbs = {
        ("alice", "prod-admin"): {"request"},
        ("alice", "app-ro"): {"request"},
        ("bob", "prod-admin"): {"approve"},
    }
    rules = ctx(verbs=verbs, needing={"prod-admin"})
    needing = admission.needing_approval(old, Requester("alice", ("devs",)), rules)
    assert needing == ["prod-admin", "app-ro"]
    new = approval(old, BOB, covers=("app-ro", "prod-admin"))
    with pytest.raises(Refused) as refused:
        admission.review("UPDATE", new, old, BOB, rules)
    assert 'bob may not approve requests for Role "app-ro"' in refused.value.message
    # What the approval covers is what needs one now, signed: a stale set is refused.
    stale = approval(old, BOB, covers=("prod-admin",))
    with pytest.raises(Refused) as refused:
        admission.review("UPDATE", stale, old, BOB, rules)
    assert refused.value.code == 409
    verbs[("bob", "app-ro")] = {"approve"}
    admission.review("UPDATE", new, old, BOB, ctx(verbs=verbs, needing={"prod-admin"}))


def test_a_token_without_a_verified_requester_cannot_be_decided_on() -> None:
    """Else its creator could approve it (self-approval needs a known requester)."""
    old = token("prod-admin", annotations={"rdsgate.dev/request-reason": "x"}, ttl="1h")
    old["metadata"]["uid"] = "uid-of-t"
    rules = ctx(verbs={("alice", "prod-admin"): {"approve"}}, needing={"prod-admin"})
    with pytest.raises(Refused) as refused:
        admission.review("UPDATE", approval(old, ALICE), old, ALICE, rules)
    assert "has no requester stamped by the admission webhook" in refused.value.message


def test_a_request_needs_a_ttl_unless_a_role_caps_it() -> None:
    annotations = {
        **admission.stamp(ALICE, KEY, "shop", "t", "INC-1"),
        "rdsgate.dev/request-reason": "INC-1",
    }
    created = token(
        "prod-admin", annotations=annotations, subject={"serviceAccount": {"name": "job"}}
    )
    rules = ctx(verbs={("alice", "prod-admin"): {"request"}})
    with pytest.raises(Refused) as refused:
        admission.review("CREATE", created, None, ALICE, rules)
    assert "a Token that waits for an approval needs spec.ttl" in refused.value.message
    # ... and its requester's key or a ServiceAccount, never a Secret.
    del created["spec"]["subject"]
    created["spec"]["ttl"] = "1h"
    with pytest.raises(Refused) as refused:
        admission.review("CREATE", created, None, ALICE, rules)
    assert "must be held by its requester's own key" in refused.value.message


def test_a_decision_is_for_one_token_and_what_it_asked() -> None:
    """The signature covers the Token's uid, its ttl and who holds it."""
    decided = approval(asked("prod-admin"), BOB)
    assert admission.read_decision(decided, KEY)[0] is not None
    for change in (
        ("metadata", "uid", "uid-of-a-new-t"),
        ("spec", "ttl", "30d"),
        ("spec", "publicKey", "PEM"),
    ):
        other = json.loads(json.dumps(decided))
        other[change[0]][change[1]] = change[2]
        assert admission.read_decision(other, KEY) == (None, True), change
