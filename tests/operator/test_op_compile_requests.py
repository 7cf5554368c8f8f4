"""What a namespace's access compile costs in API requests, counted by the API emulator.

A compile runs on every Role, Token and Database change and once per resync interval, in
namespaces of thousands of Tokens: when nothing about a Token changed it must cost no
request of that Token's (its Secret comes from one labelled list, its status is patched only
when it differs), and what did change must still be written. The reconciler runs in this
process against the emulator over HTTP (as in test_op_reconcile.py), so each compile's
requests are exactly the ones between two counts.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from rdsgate.operator import access, render
from rdsgate.operator.handlers import Reconciler
from rdsgate.proxy.access import AccessPolicy, parse_access
from tests.fixtures.k8s import (
    Api,
    ApiCall,
    ApiServer,
    label_selector_matches,
)
from tests.operator.world import example, reconciler_for, token

#: The requests of a compile where nothing changed, whatever the number of Tokens: the
#: lists of Databases, Roles, Tokens, Token Secrets and access Secrets, and the GET of the
#: namespace's CA ConfigMap (one per namespace).
UNCHANGED_COMPILE_REQUESTS = 6


@pytest.fixture
def k8s_api(private_k8s_api: ApiServer) -> ApiServer:
    """Not the session's: no operator process may act on these namespaces meanwhile."""
    return private_k8s_api


@pytest.fixture
def reconciler(k8s_api: ApiServer) -> Iterator[Reconciler]:
    with reconciler_for(k8s_api) as reconciler:
        yield reconciler


def public_key_pem() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def tokens(namespace: str, first: int, count: int) -> list[dict[str, Any]]:
    """Every kind of Token a compile treats apart: plain secret credentials, with a TTL,
    with PG* variables, bound to a public key, and ServiceAccount subjects."""
    made = []
    for i in range(first, first + count):
        name = f"app-{i:03d}"
        match i % 5:
            case 1:
                made.append(token(namespace, name, ttl="12h"))
            case 2:
                made.append(
                    token(
                        namespace,
                        name,
                        database="orders",
                        databaseUser="app",
                        databaseName="orders",
                    )
                )
            case 3:
                made.append(token(namespace, name, publicKey=public_key_pem()))
            case 4:
                made.append(token(namespace, name, subject={"serviceAccount": {"name": name}}))
            case _:
                made.append(token(namespace, name))
    return made


def compile_calls(k8s_api: ApiServer, reconciler: Reconciler, ns: str) -> list[ApiCall]:
    before = len(k8s_api.emulator.calls)
    reconciler.sync_access(ns)
    return k8s_api.emulator.calls[before:]


def summary(calls: list[ApiCall]) -> collections.Counter[str]:
    return collections.Counter(f"{c.verb} {c.resource}/{c.subresource}".rstrip("/") for c in calls)


def passwords(api: Api, ns: str) -> dict[str, str]:
    """Every Token Secret's password, by Secret name."""
    return {
        s["metadata"]["name"]: Api.secret_text(s, "token")
        for s in api.objects("Secret", ns)
        if s["metadata"]["name"].startswith("app-")
    }


def policy(api: Api, ns: str) -> AccessPolicy:
    secret = api.get("Secret", ns, "orders-rdsgate-access")
    assert secret is not None
    return parse_access(yaml.safe_load(Api.secret_text(secret, render.ACCESS_KEY)))


def identities(api: Api, ns: str) -> set[str]:
    return {g.identity for g in policy(api, ns).file.grants}


def settle(k8s_api: ApiServer, reconciler: Reconciler, ns: str) -> None:
    """Compile until a compile writes nothing (the first writes every Secret and status)."""
    for _ in range(3):
        before = len(k8s_api.emulator.writes)
        reconciler.sync_access(ns)
        if len(k8s_api.emulator.writes) == before:
            return
    raise AssertionError(f"compiles keep writing: {k8s_api.emulator.writes[before:]}")


def namespace_of(api: Api, ns: str, count: int) -> None:
    api.create(example("database.yaml", ns))
    api.create(example("role-app-rw.yaml", ns))
    for obj in tokens(ns, 0, count):
        api.create(obj)


# The pure part


def test_every_secret_the_compile_writes_is_in_the_list_it_reads() -> None:
    """A Token Secret or access Secret the selector missed would cost a GET per compile."""
    tok = token("shop", "x" * 80)
    tok["metadata"]["uid"] = "u-1"
    secret = render.token_secret(tok, "x-rdsgate", {"token": "c2VjcmV0"})
    selector = ",".join(f"{k}={v}" for k, v in render.TOKEN_SECRET_SELECTOR.items())
    assert label_selector_matches(selector, secret["metadata"]["labels"])

    db = example("database.yaml", "shop")
    db["metadata"]["uid"] = "u-2"
    bundle = render.access_secret(render.Database(db), "version: 1\n")
    selector = ",".join(f"{k}={v}" for k, v in render.ACCESS_SECRET_SELECTOR.items())
    assert label_selector_matches(selector, bundle["metadata"]["labels"])
    assert not label_selector_matches(selector, secret["metadata"]["labels"])

    listed = access.by_name([secret, bundle, {"metadata": {}}])
    assert sorted(listed) == ["orders-rdsgate-access", "x-rdsgate"]


# Against the emulator


def test_an_unchanged_namespace_compiles_in_a_few_requests_whatever_its_token_count(
    reconciler: Reconciler, api: Api, k8s_api: ApiServer, namespace: str
) -> None:
    ns = namespace
    namespace_of(api, ns, 20)
    settle(k8s_api, reconciler, ns)
    with_20 = compile_calls(k8s_api, reconciler, ns)
    secrets_before = passwords(api, ns)
    assert len(secrets_before) == 12  # 20 Tokens, of which 4 are ServiceAccounts', 4 keys

    for obj in tokens(ns, 20, 20):
        api.create(obj)
    settle(k8s_api, reconciler, ns)
    writes = len(k8s_api.emulator.writes)
    with_40 = compile_calls(k8s_api, reconciler, ns)

    assert len(with_40) <= UNCHANGED_COMPILE_REQUESTS, summary(with_40)
    assert summary(with_40) == summary(with_20)
    assert k8s_api.emulator.writes[writes:] == []  # not one status patch, not one Event
    # Nothing changed, so nothing did: every password kept, every grant still there.
    after = passwords(api, ns)
    assert {k: v for k, v in after.items() if k in secrets_before} == secrets_before
    assert len(after) == 24
    assert identities(api, ns) == {f"{ns}/app-{i:03d}" for i in range(40)}

    # A Role edit writes what it changes: the access Secret and the Role's status, no more.
    api.patch("Role", ns, "app-rw", {"spec": {"options": {"maxConnections": 51}}})
    writes = len(k8s_api.emulator.writes)
    edit = compile_calls(k8s_api, reconciler, ns)
    assert len(edit) <= UNCHANGED_COMPILE_REQUESTS + 2, summary(edit)
    assert sorted(k8s_api.emulator.writes[writes:]) == [
        ("patch", f"roles/{ns}/app-rw/status"),
        ("patch", f"secrets/{ns}/orders-rdsgate-access"),
    ]
    assert policy(api, ns).file.roles[0].options.max_connections == 51
    assert passwords(api, ns) == after


def test_what_changed_is_still_written(
    reconciler: Reconciler, api: Api, k8s_api: ApiServer, namespace: str
) -> None:
    """A Token created since, a Secret deleted or stripped of its labels by hand, a Secret
    someone else owns: each is read and written as before, and only those cost."""
    ns = namespace
    namespace_of(api, ns, 10)
    settle(k8s_api, reconciler, ns)
    kept = passwords(api, ns)

    # A Token created since the last compile gets its Secret and its grant.
    api.create(token(ns, "late"))
    calls = compile_calls(k8s_api, reconciler, ns)
    secret = api.get("Secret", ns, "late-rdsgate")
    assert secret is not None and Api.secret_text(secret, "token")
    assert f"{ns}/late" in identities(api, ns)
    ready = Api.condition(api.get("Token", ns, "late"), "Ready")
    assert ready is not None and ready["reason"] == "Granted"
    per_token = summary(calls) - summary(compile_calls(k8s_api, reconciler, ns))
    # Its own: the GET that finds no Secret, the create, its Event, its status, the bundle.
    assert sum(per_token.values()) <= 6, per_token

    # Labels stripped by hand: the Secret is not listed, so it is read; its password stays
    # and the labels come back.
    api.patch(
        "Secret",
        ns,
        "app-000-rdsgate",
        {"metadata": {"labels": {render.LABEL_MANAGED_BY: None, render.LABEL_NAME: None}}},
    )
    reconciler.sync_access(ns)
    stripped = api.get("Secret", ns, "app-000-rdsgate")
    assert stripped is not None
    assert stripped["metadata"]["labels"][render.LABEL_MANAGED_BY] == render.MANAGED_BY
    now = passwords(api, ns)
    assert {k: now[k] for k in kept} == kept

    # Deleted by hand: written anew (with a new secret, as the docs say).
    api.delete("Secret", ns, "app-005-rdsgate")
    reconciler.sync_access(ns)
    renewed = api.get("Secret", ns, "app-005-rdsgate")
    assert renewed is not None and Api.secret_text(renewed, "token") != kept["app-005-rdsgate"]

    # Someone else's Secret, even one carrying the operator's labels, is never taken over.
    labels = dict(render.TOKEN_SECRET_SELECTOR)
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "theirs", "namespace": ns, "labels": labels},
            "stringData": {"token": "not-the-operator's"},
        }
    )
    api.create(token(ns, "clash", secretName="theirs"))
    reconciler.sync_access(ns)
    ready = Api.condition(api.get("Token", ns, "clash"), "Ready")
    assert ready is not None and ready["reason"] == "SecretConflict", ready
    theirs = api.get("Secret", ns, "theirs")
    assert theirs is not None and Api.secret_text(theirs, "token") == "not-the-operator's"
    assert f"{ns}/clash" not in identities(api, ns)
