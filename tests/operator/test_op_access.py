"""Roles + Tokens + Database labels → access bundles, checked with the proxy's own RBAC.

Each bundle is loaded the way the proxy loads it (`parse_access` of the YAML text) and the
decisions are asked of `rdsgate.proxy.rbac.authorize`, so these tests say what a login
through a proxy would meet.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from rdsgate.operator import access, admission, pki
from rdsgate.operator.status import InvalidSpec
from rdsgate.proxy.access import AccessPolicy, parse_access, secret_digest
from rdsgate.proxy.rbac import authorize

DIGEST = "0123456789abcdef" * 4
STAMP_KEY = admission.stamp_key(b"the CA key")

NS = "shop"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def database(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS, "labels": labels}, "spec": {}}


def role(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS}, "spec": spec}


def token(
    name: str,
    *roles: str,
    created: datetime = NOW,
    requester: str | None = "alice",
    **spec: Any,
) -> dict[str, Any]:
    """A Token as the API server stores it after admission (stamped with `requester`)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "uid": f"uid-{name}",
        "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if requester is not None:
        userinfo = {"username": requester, "groups": ["devs"]}
        meta["annotations"] = admission.stamp(userinfo, STAMP_KEY, NS, name)
    return {"metadata": meta, "spec": {"roles": list(roles), **spec}}


APP_RW = role(
    "app-rw",
    allow={
        "databases": {"matchLabels": {"env": "prod"}},
        "databaseNames": ["orders"],
        "databaseUsers": ["app", "^app_[a-z]+$"],
    },
    deny={"databaseUsers": ["postgres"]},
    options={"maxConnections": 50, "maxSessionDuration": "8h"},
)
EVERYWHERE = role(
    "everywhere", allow={"databases": {}, "databaseNames": ["*"], "databaseUsers": ["*"]}
)


def compile_(
    databases: list[dict[str, Any]],
    roles: list[dict[str, Any]],
    tokens: list[dict[str, Any]],
    credentials: Mapping[str, access.Credential] | None = None,
    now: datetime = NOW,
) -> access.NamespaceAccess:
    creds = dict(credentials or {})
    for t in tokens:
        creds.setdefault(t["metadata"]["name"], secret_digest(f"secret-of-{t['metadata']['name']}"))
    return access.compile_namespace(NS, databases, roles, tokens, creds, now, checks(tokens))


def checks(tokens: list[dict[str, Any]], **kw: Any) -> dict[str, access.RequesterCheck]:
    """Each Token's requester as the operator reads it (signed stamps only), nothing lost."""
    found = {}
    for t in tokens:
        stamp = admission.read_stamp(t, STAMP_KEY)
        decision, _ = admission.read_decision(t, STAMP_KEY)
        found[t["metadata"]["name"]] = access.RequesterCheck(
            stamp.requester, forged=stamp.forged, decision=decision, **kw
        )
    return found


def policy(result: access.NamespaceAccess, db: str) -> AccessPolicy:
    """The bundle as the proxy loads it from the Secret's file."""
    return parse_access(yaml.safe_load(access.bundle_yaml(result.bundles[db])))


def login(
    result: access.NamespaceAccess,
    db: dict[str, Any],
    token_name: str,
    user: str,
    dbname: str,
    now: datetime = NOW,
) -> tuple[bool, str]:
    pol = policy(result, db["metadata"]["name"])
    grant = pol.grant_for_secret(f"secret-of-{token_name}")
    if grant is None:
        return False, "no grant"
    decision = authorize(pol, grant, db["metadata"]["labels"], user, dbname, now)
    return decision.allowed, decision.reason


def test_a_token_reaches_the_databases_its_roles_select() -> None:
    prod, dev = database("orders", env="prod"), database("orders-dev", env="dev")
    result = compile_([prod, dev], [APP_RW], [token("orders-app", "app-rw")])
    assert login(result, prod, "orders-app", "app", "orders") == (True, "allowed")
    assert login(result, prod, "orders-app", "app_reports", "orders")[0]
    assert login(result, prod, "orders-app", "app", "billing")[0] is False
    assert result.bundles["orders-dev"].grants == []
    assert result.tokens["orders-app"].databases == ["orders"]
    assert result.roles["app-rw"].databases == ["orders"]


def test_only_the_digest_of_the_secret_is_in_the_bundle() -> None:
    result = compile_([database("orders", env="prod")], [APP_RW], [token("orders-app", "app-rw")])
    text = access.bundle_yaml(result.bundles["orders"])
    assert "secret-of-orders-app" not in text
    assert secret_digest("secret-of-orders-app") in text
    assert "shop/orders-app" in text


def test_deny_in_one_role_beats_allow_in_another() -> None:
    prod = database("orders", env="prod")
    no_postgres = role("no-postgres", deny={"databaseUsers": ["postgres"]})
    result = compile_([prod], [EVERYWHERE, no_postgres], [token("t", "everywhere", "no-postgres")])
    assert login(result, prod, "t", "app", "orders")[0]
    allowed, reason = login(result, prod, "t", "postgres", "orders")
    assert not allowed
    assert "no-postgres" in reason
    assert [r.name for r in result.bundles["orders"].roles] == ["everywhere", "no-postgres"]


def test_roles_not_held_by_any_token_stay_out_of_bundles() -> None:
    result = compile_(
        [database("orders", env="prod")], [APP_RW, EVERYWHERE], [token("t", "app-rw")]
    )
    assert [r.name for r in result.bundles["orders"].roles] == ["app-rw"]


def test_a_label_change_reselects_databases() -> None:
    db = database("orders", env="staging")
    t = token("orders-app", "app-rw")
    before = compile_([db], [APP_RW], [t])
    assert before.bundles["orders"].grants == []
    assert before.tokens["orders-app"].problems[0].reason == "NoDatabase"
    relabelled = database("orders", env="prod")
    after = compile_([relabelled], [APP_RW], [t])
    assert login(after, relabelled, "orders-app", "app", "orders")[0]
    assert after.tokens["orders-app"].problems == []


def test_an_invalid_role_fails_closed_and_names_the_field() -> None:
    prod = database("orders", env="prod")
    broken = role(
        "broken", allow={"databases": {}, "databaseUsers": ["^app_[$"], "databaseNames": ["*"]}
    )
    result = compile_([prod], [EVERYWHERE, broken], [token("t", "everywhere", "broken")])
    found = result.roles["broken"].compiled
    assert found.role is None
    assert found.problems[0].reason == "InvalidSpec"
    assert found.problems[0].message.startswith(
        "spec.allow.databaseUsers.0: invalid regular expression"
    )
    assert "Traceback" not in found.problems[0].message
    allowed, reason = login(result, prod, "t", "app", "orders")
    assert not allowed
    assert "broken" in reason
    token_problems = result.tokens["t"].problems
    assert [p.reason for p in token_problems] == ["RoleInvalid"]
    assert "Role 'broken' is invalid" in token_problems[0].message


def test_an_unknown_role_is_a_problem_but_the_known_roles_still_work() -> None:
    prod = database("orders", env="prod")
    result = compile_([prod], [EVERYWHERE], [token("t", "everywhere", "typo")])
    assert login(result, prod, "t", "app", "orders")[0]
    problems = result.tokens["t"].problems
    assert [p.reason for p in problems] == ["ReferenceNotFound"]
    assert problems[0].message == (
        "Role 'typo' does not exist in namespace 'shop': create it or remove it from spec.roles"
    )


def test_a_token_with_only_unknown_roles_reaches_nothing() -> None:
    result = compile_([database("orders", env="prod")], [], [token("t", "ghost")])
    assert result.bundles["orders"].grants == []
    assert result.tokens["t"].databases == []


def test_an_expired_grant_leaves_every_bundle() -> None:
    prod = database("orders", env="prod")
    t = token("t", "everywhere", created=NOW - timedelta(seconds=10), ttl="3s")
    result = compile_([prod], [EVERYWHERE], [t])
    assert result.bundles["orders"].grants == []
    found = result.tokens["t"]
    assert found.expired
    assert found.expires_at == NOW - timedelta(seconds=7)
    fields, conditions = access.token_status(found)
    assert fields["expiresAt"] == "2026-03-01T11:59:53Z"
    assert {c.type: (c.status, c.reason) for c in conditions} == {
        "Ready": ("False", "Expired"),
        "Expired": ("True", "TTLElapsed"),
        "RequesterVerified": ("True", "AdmissionStamped"),
        "Approved": ("True", "NotRequired"),
    }


def test_a_live_grant_carries_its_expiry_to_the_proxy() -> None:
    prod = database("orders", env="prod")
    result = compile_([prod], [EVERYWHERE], [token("t", "everywhere", ttl="1h")])
    grant = result.bundles["orders"].grants[0]
    assert grant.expires_at == NOW + timedelta(hours=1)
    assert login(result, prod, "t", "app", "x")[0]
    assert not login(result, prod, "t", "app", "x", now=NOW + timedelta(hours=1))[0]


def test_expiry_is_set_once_from_the_status() -> None:
    t = token("t", "r", ttl="1h")
    t["status"] = {"expiresAt": "2026-03-01T12:30:00Z"}
    t["spec"]["ttl"] = "10h"
    assert access.token_expiry(t, NOW) == datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def test_a_bad_ttl_is_a_spec_problem() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.ttl: invalid duration"):
        access.token_expiry(token("t", "r", ttl="soon"), NOW)
    result = compile_([], [], [token("t", "r", ttl="soon")])
    assert "spec.ttl" in result.tokens["t"].problems[0].message


def test_a_service_account_subject_has_no_secret() -> None:
    prod = database("orders", env="prod")
    t = token("web-sa", "everywhere", subject={"serviceAccount": {"name": "web"}})
    result = access.compile_namespace(NS, [prod], [EVERYWHERE], [t], {}, NOW)
    grant = result.bundles["orders"].grants[0]
    assert grant.secret_sha256 is None
    assert grant.service_account is not None
    assert (grant.service_account.namespace, grant.service_account.name) == ("shop", "web")
    assert result.tokens["web-sa"].secret_name is None
    assert result.tokens["web-sa"].subject == "serviceaccount:shop/web"
    pol = policy(result, "orders")
    assert pol.by_service_account[("shop", "web")].identity == "shop/web-sa"


def test_one_token_per_service_account_the_second_is_refused() -> None:
    prod = database("orders", env="prod")
    web = {"serviceAccount": {"name": "web"}}
    tokens = [
        token("web-b", "everywhere", subject=web),
        token("web-a", "app-rw", subject=web),
        # The same name in another namespace is another ServiceAccount.
        token(
            "web-other-ns",
            "everywhere",
            subject={"serviceAccount": {"name": "web", "namespace": "x"}},
        ),
    ]
    result = access.compile_namespace(NS, [prod], [EVERYWHERE, APP_RW], tokens, {}, NOW)
    pol = policy(result, "orders")  # loads: the proxy refuses two grants for one account
    assert pol.by_service_account[("shop", "web")].identity == "shop/web-a"  # first by name
    assert pol.by_service_account[("x", "web")].identity == "shop/web-other-ns"
    second = result.tokens["web-b"]
    assert second.grant is None and second.databases == []
    assert [(p.reason, p.message) for p in second.problems] == [
        (
            "DuplicateServiceAccount",
            "ServiceAccount shop/web already has Token 'web-a': one Token per ServiceAccount; "
            "put the roles on that Token",
        )
    ]
    _, conditions = access.token_status(second)
    assert (conditions[0].status, conditions[0].reason) == ("False", "DuplicateServiceAccount")
    assert access.token_status(result.tokens["web-a"])[1][0].reason == "Granted"


def test_an_expired_token_does_not_hold_its_service_account() -> None:
    prod = database("orders", env="prod")
    web = {"serviceAccount": {"name": "web"}}
    old = token("web-a", "everywhere", created=NOW - timedelta(hours=2), ttl="1h", subject=web)
    result = access.compile_namespace(
        NS, [prod], [EVERYWHERE], [old, token("web-b", "everywhere", subject=web)], {}, NOW
    )
    assert policy(result, "orders").by_service_account[("shop", "web")].identity == "shop/web-b"
    assert result.tokens["web-b"].problems == []


def test_a_secret_conflict_keeps_the_grant_out() -> None:
    from rdsgate.operator.status import SecretConflict

    prod = database("orders", env="prod")
    conflict = SecretConflict("Secret 'x' already exists")
    result = compile_([prod], [EVERYWHERE], [token("t", "everywhere")], {"t": conflict})
    assert result.bundles["orders"].grants == []
    assert result.tokens["t"].problems == [conflict]


def test_a_database_reference_must_exist() -> None:
    result = compile_(
        [database("orders", env="prod")], [EVERYWHERE], [token("t", "everywhere", database="order")]
    )
    assert result.tokens["t"].problems[0].reason == "ReferenceNotFound"
    assert "spec.database: Database order does not exist" in result.tokens["t"].problems[0].message


def test_objects_being_deleted_are_left_out() -> None:
    prod = database("orders", env="prod")
    going = token("going", "everywhere")
    going["metadata"]["deletionTimestamp"] = "2026-03-01T00:00:00Z"
    result = compile_([prod], [EVERYWHERE], [going, token("staying", "everywhere")])
    assert [g.identity for g in result.bundles["orders"].grants] == ["shop/staying"]


def test_bundles_are_deterministic() -> None:
    dbs = [database("orders", env="prod")]
    tokens = [token(n, "everywhere") for n in ("c", "a", "b")]
    one = access.bundle_yaml(compile_(dbs, [EVERYWHERE], tokens).bundles["orders"])
    two = access.bundle_yaml(compile_(dbs, [EVERYWHERE], list(reversed(tokens))).bundles["orders"])
    assert one == two
    assert [g["identity"] for g in yaml.safe_load(one)["grants"]] == ["shop/a", "shop/b", "shop/c"]


def test_role_status_summarises_allow_and_deny() -> None:
    result = compile_([database("orders", env="prod")], [APP_RW], [])
    fields, conditions = access.role_status(result.roles["app-rw"])
    assert fields == {
        "databases": ["orders"],
        "allow": "users app,^app_[a-z]+$ dbs orders on [env=prod]",
        "deny": "users postgres on [every Database]",
    }
    assert conditions[0].status == "True"
    assert conditions[0].message == "selects 1 Database(s): orders"


@pytest.mark.parametrize(
    ("rule", "allow", "summary"),
    [
        ({}, True, "users - dbs - on [no Database]"),
        ({}, False, "-"),
        ({"databases": {"matchLabels": {"env": "prod"}}}, False, "everything on [env=prod]"),
        (
            {
                "databases": {
                    "matchExpressions": [
                        {"key": "tier", "operator": "In", "values": ["a", "b"]},
                        {"key": "legacy", "operator": "DoesNotExist"},
                    ]
                },
                "databaseUsers": ["*"],
                "databaseNames": ["x"],
            },
            True,
            "users * dbs x on [tier in (a,b),!legacy]",
        ),
        ({"databases": {}, "databaseNames": ["x"]}, False, "dbs x on [all]"),
    ],
)
def test_rule_summaries(rule: dict[str, Any], allow: bool, summary: str) -> None:
    compiled = access.compile_role(role("r", **({"allow": rule} if allow else {"deny": rule})))
    assert compiled.role is not None
    assert (
        access.rule_summary(compiled.role.allow if allow else compiled.role.deny, allow=allow)
        == summary
    )


def test_an_invalid_role_status_says_what_to_fix() -> None:
    result = compile_([], [role("r", options={"maxConnections": 0})], [])
    fields, conditions = access.role_status(result.roles["r"])
    assert fields["allow"] == "invalid"
    assert conditions[0].status == "False"
    assert conditions[0].reason == "InvalidSpec"
    assert conditions[0].message.startswith("spec.options.maxConnections: Input should be greater")
    assert conditions[0].event == "Warning"


def test_token_status_when_granted() -> None:
    result = compile_(
        [database("orders", env="prod")], [EVERYWHERE], [token("t", "everywhere", ttl="1h")]
    )
    fields, conditions = access.token_status(result.tokens["t"])
    assert fields == {
        "identity": "shop/t",
        "subject": "secret",
        "requestedBy": "alice",
        "databases": ["orders"],
        "secretName": "t-rdsgate",
        "expiresAt": "2026-03-01T13:00:00Z",
        "ttl": "1h",
        "approvedBy": None,
        "approvedAt": None,
        "certificate": None,
        "certificateNotAfter": None,
    }
    assert [(c.type, c.status, c.reason) for c in conditions] == [
        ("Ready", "True", "Granted"),
        ("Expired", "False", "NotExpired"),
        ("RequesterVerified", "True", "AdmissionStamped"),
        ("Approved", "True", "NotRequired"),
    ]


# The Token Secret

CA = pki.make_ca()
CLIENT = pki.issue_client_cert(CA, "shop/orders-app", secret_sha256=DIGEST)


def decoded(data: Mapping[str, str | None]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in data.items() if v is not None}


def test_token_secret_with_connection_settings() -> None:
    t = token("orders-app", "app-rw", database="orders", databaseUser="app", databaseName="orders")
    data = access.token_secret_data(
        t, namespace=NS, secret="s3cret", ca_pem=CA.cert_pem, client=CLIENT
    )
    values = decoded(data)
    assert values["token"] == values["PGPASSWORD"] == "s3cret"
    assert values["PGHOST"] == "orders.shop.svc"
    assert values["PGPORT"] == "5432"
    assert values["PGUSER"] == "app"
    assert values["PGDATABASE"] == "orders"
    assert values["PGSSLMODE"] == "verify-full"
    assert values["PGSSLROOTCERT"] == "/var/run/secrets/rdsgate/ca.crt"
    assert values["ca.crt"] == CA.cert_pem.decode()
    cert = x509.load_pem_x509_certificate(values["tls.crt"].encode())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"rdsgate://shop/orders-app#{DIGEST[:16]}"
    ]


def test_token_secret_mount_path() -> None:
    t = token("t", "r", databaseUser="app", mountPath="/secrets/db/")
    values = decoded(
        access.token_secret_data(t, namespace=NS, secret="s", ca_pem=CA.cert_pem, client=CLIENT)
    )
    assert values["PGSSLROOTCERT"] == "/secrets/db/ca.crt"
    assert "PGHOST" not in values
    assert values["PGUSER"] == "app"


def test_token_secret_without_connection_settings_removes_them() -> None:
    data = access.token_secret_data(
        token("t", "r"), namespace=NS, secret="s", ca_pem=CA.cert_pem, client=CLIENT
    )
    assert set(decoded(data)) == {"token", "ca.crt", "tls.crt", "tls.key"}
    assert data["PGPASSWORD"] is None
    assert set(data) == set(access.TOKEN_SECRET_KEYS)


def test_new_secrets_are_32_random_bytes() -> None:
    one, two = access.new_secret(), access.new_secret()
    assert one != two
    assert len(base64.urlsafe_b64decode(one + "=")) == 32


def test_default_secret_name() -> None:
    assert access.secret_name(token("orders-app", "r")) == "orders-app-rdsgate"
    assert access.secret_name(token("orders-app", "r", secretName="db")) == "db"


# Requesters: live RBAC, and Tokens from before the webhooks


def test_the_grant_names_its_requester_for_the_proxy() -> None:
    result = compile_([database("orders", env="prod")], [APP_RW], [token("t", "app-rw")])
    (grant,) = policy(result, "orders").file.grants
    assert grant.requested_by == "alice"
    assert access.token_status(result.tokens["t"])[0]["requestedBy"] == "alice"


def test_a_requester_who_lost_bind_loses_the_grant_and_the_proxy_is_told_why() -> None:
    prod, other = database("orders", env="prod"), database("billing", env="dev")
    t = token("t", "app-rw")
    lost = access.RequesterCheck(admission.read_stamp(t, STAMP_KEY).requester, ("app-rw",))
    result = access.compile_namespace(
        NS, [prod, other], [APP_RW], [t], {"t": DIGEST}, NOW, {"t": lost}
    )
    loaded = policy(result, "orders")
    assert loaded.file.grants == []
    why = 'alice may no longer bind Role "app-rw" in namespace "shop"'
    assert loaded.revocations == {"shop/t": why}
    assert policy(result, "billing").revocations == {}, "only where the grant was"
    _, conditions = access.token_status(result.tokens["t"])
    ready = next(c for c in conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "BindRevoked")
    assert ready.message == f"{why}; the grant was withdrawn"
    assert ready.event == "Warning"


def test_no_answer_for_a_requester_never_checked_keeps_the_grant_out() -> None:
    t = token("t", "app-rw")
    unknown = access.RequesterCheck(
        admission.read_stamp(t, STAMP_KEY).requester, (), "503 from the API server"
    )
    result = access.compile_namespace(
        NS, [database("orders", env="prod")], [APP_RW], [t], {"t": DIGEST}, NOW, {"t": unknown}
    )
    assert result.bundles["orders"].grants == []
    assert result.bundles["orders"].revoked == []
    assert result.tokens["t"].problems[0].reason == "BindCheckFailed"


def test_a_token_from_before_the_webhooks_keeps_working_but_says_so() -> None:
    prod = database("orders", env="prod")
    t = token("t", "app-rw", requester=None)
    result = compile_([prod], [APP_RW], [t])
    (grant,) = result.bundles["orders"].grants
    assert grant.requested_by is None
    fields, conditions = access.token_status(result.tokens["t"])
    verified = next(c for c in conditions if c.type == "RequesterVerified")
    assert (verified.status, verified.reason) == ("False", "CreatedBeforeAdmission")
    assert fields["requestedBy"] is None
    assert next(c for c in conditions if c.type == "Ready").status == "True"

    strict = access.compile_namespace(
        NS, [prod], [APP_RW], [t], {"t": DIGEST}, NOW, require_verified=True
    )
    assert strict.bundles["orders"].grants == []
    assert strict.tokens["t"].problems[0].reason == "RequesterUnverified"


def test_an_unknown_answer_keeps_a_grant_in_force_and_says_so() -> None:
    """An outage of the API server (or an operator restart during one) revokes nobody."""
    t = token("t", "app-rw")
    unknown = checks([t], unknown="503 from the API server", in_force=True)
    result = access.compile_namespace(
        NS, [database("orders", env="prod")], [APP_RW], [t], {"t": DIGEST}, NOW, unknown
    )
    assert [g.identity for g in result.bundles["orders"].grants] == ["shop/t"]
    _, conditions = access.token_status(result.tokens["t"])
    verified = next(c for c in conditions if c.type == "RequesterVerified")
    assert (verified.status, verified.reason) == ("Unknown", "BindCheckFailed")
    assert "the grant stands until the API server answers" in verified.message
    assert next(c for c in conditions if c.type == "Ready").status == "True"


def test_requester_annotations_the_webhook_did_not_sign_name_nobody() -> None:
    """Written by a client while the webhooks were absent: no more than no annotations."""
    prod = database("orders", env="prod")
    forged = token("t", "app-rw", requester=None)
    forged["metadata"]["annotations"] = {
        "rdsgate.dev/requested-by": "cluster-admin",
        "rdsgate.dev/requested-by-groups": '["system:masters"]',
    }
    copied = token("u", "app-rw")  # a valid stamp, copied onto another Token
    copied["metadata"]["annotations"] = token("t", "app-rw")["metadata"]["annotations"]
    result = compile_([prod], [APP_RW], [forged, copied])
    assert {g.identity: g.requested_by for g in result.bundles["orders"].grants} == {
        "shop/t": None,
        "shop/u": None,
    }
    for name in ("t", "u"):
        _, conditions = access.token_status(result.tokens[name])
        verified = next(c for c in conditions if c.type == "RequesterVerified")
        assert (verified.status, verified.reason) == ("False", "StampNotVerified")
    strict = access.compile_namespace(
        NS, [prod], [APP_RW], [forged], {"t": DIGEST}, NOW, checks([forged]), require_verified=True
    )
    assert strict.bundles["orders"].grants == []
    assert "were not written by the admission webhook" in strict.tokens["t"].problems[0].message


def test_a_bundle_without_the_new_features_is_what_earlier_proxies_load() -> None:
    """No requester, key pair or revocation: the access file has none of their fields."""
    result = compile_(
        [database("orders", env="prod")], [APP_RW], [token("t", "app-rw", requester=None)]
    )
    text = access.bundle_yaml(result.bundles["orders"])
    for field_name in ("requestedBy", "publicKeySha256", "revoked"):
        assert field_name not in text


# Tokens with their own key pair


def test_a_public_key_token_is_bound_to_its_key_and_has_no_secret() -> None:
    key = pki.load_public_key(
        pki.make_ca()
        .cert.public_key()
        .public_bytes(  # any P-256 public key
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        .decode()
    )
    t = token("t", "app-rw", publicKey="(PEM)")
    digest = access.public_key_digest("uid-t", key)
    result = compile_([database("orders", env="prod")], [APP_RW], [t], {"t": digest})
    (grant,) = policy(result, "orders").file.grants
    assert (grant.public_key_sha256, grant.secret_sha256) == (digest, None)
    assert policy(result, "orders").grant_for_secret(digest) is None, "never a password"
    fields, _ = access.token_status(result.tokens["t"])
    assert (fields["subject"], fields["secretName"]) == ("publickey", None)
    assert access.public_key_digest("uid-of-a-new-token", key) != digest


# Access requests: Roles that need approval, decisions, TTLs


PROD_ADMIN = role(
    "prod-admin",
    allow={
        "databases": {"matchLabels": {"env": "prod"}},
        "databaseNames": ["*"],
        "databaseUsers": ["app_admin"],
    },
    options={"requireApproval": True, "maxTokenTTL": "2h"},
)


def requested(name: str, *roles: str, **spec: Any) -> dict[str, Any]:
    t = token(name, *roles, **spec)
    annotations = t["metadata"]["annotations"]
    annotations["rdsgate.dev/request-reason"] = "INC-4711"
    userinfo = {"username": "alice", "groups": ["devs"]}
    annotations.update(admission.stamp(userinfo, STAMP_KEY, NS, name, "INC-4711"))
    return t


def decided(
    t: dict[str, Any],
    *,
    approved: bool,
    by: str = "bob",
    at: datetime = NOW,
    covers: tuple[str, ...] = ("prod-admin",),
) -> dict[str, Any]:
    old = copy.deepcopy(t)
    key = "rdsgate.dev/approved-by" if approved else "rdsgate.dev/denied-by"
    reason_key = "rdsgate.dev/approval-reason" if approved else "rdsgate.dev/denial-reason"
    t["metadata"]["annotations"][key] = "anyone"
    t["metadata"]["annotations"][reason_key] = "ok, 2h"
    stamped = admission.stamp_decision(
        {"username": by}, STAMP_KEY, t, old, at, lambda: list(covers)
    )
    t["metadata"]["annotations"].update(stamped)
    return t


def test_a_request_waits_and_grants_nothing() -> None:
    prod = database("orders", env="prod")
    t = requested("t", "prod-admin", created=NOW - timedelta(minutes=10), ttl="8h")
    result = compile_([prod], [PROD_ADMIN], [t])
    assert result.bundles["orders"].grants == []
    found = result.tokens["t"]
    assert (found.approval.state, found.expires_at) == ("Pending", None)
    fields, conditions = access.token_status(found)
    by_type = {c.type: c for c in conditions}
    assert (by_type["Approved"].status, by_type["Approved"].event_reason) == (
        "Unknown",
        "AccessRequested",
    )
    assert (by_type["Ready"].reason, by_type["Ready"].event) == ("ApprovalPending", None)
    assert (
        by_type["Expired"].message
        == "expires 2h after its approval (spec.ttl cut to 2h by the maxTokenTTL of Role prod-admin)"
    )
    assert fields["expiresAt"] is None and fields["ttl"] == "2h"


def test_an_approval_grants_from_the_approval_for_the_capped_ttl() -> None:
    prod = database("orders", env="prod")
    approved_at = NOW - timedelta(minutes=30)
    t = decided(
        requested("t", "prod-admin", created=NOW - timedelta(hours=1), ttl="8h"),
        approved=True,
        at=approved_at,
    )
    result = compile_([prod], [PROD_ADMIN], [t])
    (grant,) = policy(result, "orders").file.grants
    assert grant.expires_at == approved_at + timedelta(hours=2)
    assert (grant.approved_by, grant.approval_reason, grant.request_reason) == (
        "bob",
        "ok, 2h",
        "INC-4711",
    )
    fields, conditions = access.token_status(result.tokens["t"])
    assert (fields["approvedBy"], fields["approvedAt"]) == ("bob", "2026-03-01T11:30:00Z")
    approved = next(c for c in conditions if c.type == "Approved")
    assert (approved.status, approved.reason, approved.event_reason) == (
        "True",
        "Approved",
        "AccessApproved",
    )
    assert (
        approved.message == "bob approved alice's request for Role(s) prod-admin (INC-4711): ok, 2h"
    )


def test_a_denial_or_an_expired_request_grants_nothing() -> None:
    prod = database("orders", env="prod")
    denied = decided(requested("d", "prod-admin"), approved=False, by="carol")
    late = requested("l", "prod-admin", created=NOW - timedelta(hours=2))
    result = compile_([prod], [PROD_ADMIN], [denied, late])
    assert result.bundles["orders"].grants == []
    assert (
        result.tokens["d"].problems[0].message
        == "denied by carol: ok, 2h; ask again with a new Token"
    )
    assert result.tokens["l"].approval.state == "Expired"
    assert result.tokens["l"].problems[0].reason == "RequestExpired"


def test_an_unsigned_or_altered_decision_counts_for_nothing() -> None:
    prod = database("orders", env="prod")
    hand_written = requested("h", "prod-admin")
    hand_written["metadata"]["annotations"].update(
        {
            "rdsgate.dev/approved-by": "bob",
            "rdsgate.dev/approval-reason": "trust me",
            "rdsgate.dev/decided-at": "2026-03-01T11:59:00Z",
        }
    )
    altered = decided(requested("a", "prod-admin"), approved=True)
    altered["spec"]["roles"] = ["prod-admin", "app-rw"]  # the approval was for prod-admin only
    result = compile_([prod], [PROD_ADMIN, APP_RW], [hand_written, altered])
    assert result.bundles["orders"].grants == []
    assert {result.tokens[n].approval.state for n in ("h", "a")} == {"Pending"}


def test_a_role_the_requester_may_only_request_needs_approval_too() -> None:
    prod = database("orders", env="prod")
    t = requested("t", "app-rw")
    stamp = admission.read_stamp(t, STAMP_KEY)
    only_request = {"t": access.RequesterCheck(stamp.requester, requested=("app-rw",))}
    result = access.compile_namespace(NS, [prod], [APP_RW], [t], {"t": DIGEST}, NOW, only_request)
    assert result.tokens["t"].approval.state == "Pending"
    assert result.tokens["t"].approval.roles == ("app-rw",)
    assert result.bundles["orders"].grants == []


def test_max_token_ttl_caps_tokens_that_need_no_approval() -> None:
    capped = role(
        "capped",
        allow={"databases": {}, "databaseNames": ["*"], "databaseUsers": ["*"]},
        options={"maxTokenTTL": "1h"},
    )
    prod = database("orders", env="prod")
    result = compile_(
        [prod], [capped], [token("forever", "capped"), token("short", "capped", ttl="10m")]
    )
    grants = {g.identity: g.expires_at for g in result.bundles["orders"].grants}
    assert grants == {
        "shop/forever": NOW + timedelta(hours=1),
        "shop/short": NOW + timedelta(minutes=10),
    }
    assert result.tokens["forever"].ttl_cut_by == "capped"
    assert result.tokens["short"].ttl_cut_by is None


def test_a_request_reason_on_a_token_that_needs_no_approval_starts_its_ttl_at_creation() -> None:
    """A reason does not make a Token wait: its TTL (and the Role's cap) run as for any."""
    capped = role(
        "capped",
        allow={"databases": {}, "databaseNames": ["*"], "databaseUsers": ["*"]},
        options={"maxTokenTTL": "1h"},
    )
    t = requested("t", "capped", ttl="8h")
    result = compile_([database("orders", env="prod")], [capped], [t])
    (grant,) = result.bundles["orders"].grants
    assert grant.expires_at == NOW + timedelta(hours=1)
    assert result.tokens["t"].approval.state == "NotRequired"


def test_an_approval_that_no_longer_covers_what_needs_one_grants_nothing() -> None:
    """A Role that comes to require approval after the approval: a new request is needed."""
    prod = database("orders", env="prod")
    t = decided(
        requested("t", "prod-admin", "app-rw", ttl="1h"), approved=True, covers=("prod-admin",)
    )
    app_rw_approval = role(
        "app-rw",
        allow={"databases": {}, "databaseNames": ["*"], "databaseUsers": ["app"]},
        options={"requireApproval": True},
    )
    result = compile_([prod], [PROD_ADMIN, app_rw_approval], [t])
    assert result.bundles["orders"].grants == []
    found = result.tokens["t"]
    assert (found.approval.state, found.problems[0].reason) == ("NotCovered", "ApprovalNotCovered")


def test_a_denial_is_final_even_when_nothing_needs_approval_any_more() -> None:
    prod = database("orders", env="prod")
    t = decided(requested("t", "app-rw", ttl="1h"), approved=False, covers=("app-rw",))
    result = compile_([prod], [APP_RW], [t])
    assert result.bundles["orders"].grants == []
    assert result.tokens["t"].approval.state == "Denied"


def test_a_new_cap_shortens_a_grant_already_in_force() -> None:
    prod = database("orders", env="prod")
    t = token("t", "prod-admin-nocheck", ttl="8h")
    t["status"] = {"expiresAt": "2026-03-01T20:00:00Z"}  # written before the cap
    capped = role(
        "prod-admin-nocheck",
        allow={"databases": {}, "databaseNames": ["*"], "databaseUsers": ["*"]},
        options={"maxTokenTTL": "2h"},
    )
    (grant,) = compile_([prod], [capped], [t]).bundles["orders"].grants
    assert grant.expires_at == NOW + timedelta(hours=2)
