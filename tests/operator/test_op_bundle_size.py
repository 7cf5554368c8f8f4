"""An access bundle against the API server's 1 MiB limit on a Secret.

The pure size check of the renderer (`render.access_file_bytes`: plain text while small,
gzip-compressed when long, `AccessBundleTooLarge` with the numbers when even that does not
fit), and the reconciler against the API emulator over HTTP, which refuses a Secret over
1 MiB as kube-apiserver does (422): a bundle that grows past the limit becomes the
Database condition `AccessBundleTooLarge` with an Event and a log line instead of an API
error, the previous bundle stays in force, and shrinking it clears the condition.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from rdsgate.operator import access, render
from rdsgate.operator.handlers import Reconciler
from rdsgate.proxy.access import AccessFile, Grant, LabelSelector, Role, Rule, access_bytes
from tests.fixtures.k8s import Api, ApiServer
from tests.operator.world import example, reconciler_for

LIMIT = render.SECRET_DATA_LIMIT

# The pure size check


def bundle(grants: int) -> AccessFile:
    """A namespace's bundle as the operator writes it for `grants` Tokens made through the
    admission webhooks (requester stamped) with a TTL: the largest grants of the usual kind."""
    expiry = datetime(2026, 12, 1, tzinfo=UTC)
    return AccessFile(
        roles=[Role(name="app-rw", allow=Rule(databases=LabelSelector()))],
        grants=[
            Grant(
                identity=f"shop/orders-app-{i:05d}",
                secret_sha256=hashlib.sha256(f"secret {i}".encode()).hexdigest(),
                roles=["app-rw"],
                expires_at=expiry + timedelta(seconds=37 * i),
                requested_by=f"system:serviceaccount:ci:deployer-{i % 50}",
            )
            for i in range(grants)
        ],
    )


def test_a_small_bundle_is_written_as_plain_yaml() -> None:
    text = access.bundle_yaml(bundle(10))
    assert render.access_file_bytes(text, 10) == text.encode()


def test_10000_grants_fit_only_compressed_and_the_proxy_reads_them_back() -> None:
    text = access.bundle_yaml(bundle(10_000))
    assert len(text.encode()) > 2 * LIMIT  # as YAML it would be refused
    data = render.access_file_bytes(text, 10_000)
    assert len(data) < LIMIT / 2
    assert render.access_file_bytes(text, 10_000) == data  # no timestamp: unchanged stays so
    assert access_bytes(data) == text.encode()
    secret = render.access_secret(render.Database(_database("shop")), text, 10_000)
    assert base64.b64decode(secret["data"][render.ACCESS_KEY]) == data


def test_a_bundle_over_the_limit_is_refused_with_the_numbers() -> None:
    text = access.bundle_yaml(bundle(3))
    with pytest.raises(render.AccessBundleTooLarge) as raised:
        render.access_file_bytes(text, 3, limit=100)
    exc = raised.value
    assert (exc.size, exc.text_size, exc.grants, exc.limit) == (len(text), len(text), 3, 100)
    assert exc.reason == "AccessBundleTooLarge"
    assert f"{len(text)} bytes (YAML) for 3 grants, over the 100-byte limit" in exc.message
    assert "the proxies keep the previous one" in exc.message


def test_the_condition_appears_once_and_clears_once() -> None:
    too_large = render.AccessBundleTooLarge(2_000_000, 9_000_000, 40_000, LIMIT)
    db: dict[str, Any] = {"status": {"conditions": []}}
    assert render.access_bundle_condition(db, None, 500, 3) is None  # never too large: silent
    appears = render.access_bundle_condition(db, too_large, 2_000_000, 40_000)
    assert appears is not None
    assert (appears.type, appears.status, appears.reason) == (
        "AccessBundleTooLarge",
        "True",
        "OverSecretLimit",
    )
    assert (appears.event, appears.event_reason) == ("Warning", "AccessBundleTooLarge")
    db["status"]["conditions"] = [
        {
            "type": appears.type,
            "status": "True",
            "reason": appears.reason,
            "message": appears.message,
        }
    ]
    assert render.access_bundle_condition(db, too_large, 2_000_000, 40_000) is None
    clears = render.access_bundle_condition(db, None, 900_000, 30_000)
    assert clears is not None and (clears.status, clears.reason) == ("False", "WithinLimit")
    assert f"900000 bytes of {LIMIT} for 30000 grants" in clears.message


# The reconciler against the emulator


@pytest.fixture
def k8s_api(private_k8s_api: ApiServer) -> ApiServer:
    """Not the session's: the operator process must not act on these namespaces."""
    return private_k8s_api


@pytest.fixture
def reconciler(k8s_api: ApiServer) -> Iterator[Reconciler]:
    with reconciler_for(k8s_api) as reconciler:
        yield reconciler


def _database(namespace: str) -> dict[str, Any]:
    doc = example("database.yaml", namespace)
    doc["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    return doc


#: Roles whose deny lists of random database names make the bundle of the one Token holding
#: them big: 3 x 16,000 names of 32 random characters do not fit in 1 MiB even compressed,
#: 2 x 16,000 do (each Role stays far below the 1.5 MiB etcd holds per object).
BULK_ROLES = ("bulk-a", "bulk-b", "bulk-c")
BULK_NAMES = 16_000


def _bulk_role(namespace: str, name: str, names: int) -> dict[str, Any]:
    return {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "allow": {"databases": {}},
            "deny": {"databaseNames": [secrets.token_urlsafe(24) for _ in range(names)]},
        },
    }


def _bundle_in_force(api: Api, namespace: str) -> tuple[str, AccessFile]:
    secret = api.get("Secret", namespace, "orders-rdsgate-access")
    assert secret is not None
    raw = base64.b64decode(secret["data"]["access.yaml"])
    doc = yaml.safe_load(access_bytes(raw))
    return secret["metadata"]["resourceVersion"], AccessFile.model_validate(doc)


def _bundle_condition(api: Api, namespace: str) -> dict[str, Any] | None:
    return Api.condition(api.get("Database", namespace, "orders"), "AccessBundleTooLarge")


@pytest.mark.timeout(60)
def test_a_bundle_too_large_is_a_condition_and_shrinking_it_clears_it(
    reconciler: Reconciler, api: Api, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    api.create(example("database.yaml", namespace))
    api.create(example("role-app-rw.yaml", namespace))
    for name in BULK_ROLES:
        api.create(_bulk_role(namespace, name, 10))
    orders_app = example("token-orders-app.yaml", namespace)
    orders_app["spec"]["roles"] = ["app-rw", *BULK_ROLES]
    api.create(orders_app)
    reconciler.reconcile_database(namespace, "orders")
    version, before = _bundle_in_force(api, namespace)
    assert [g.identity for g in before.grants] == [f"{namespace}/orders-app"]
    assert _bundle_condition(api, namespace) is None  # a bundle that fits says nothing

    for name in BULK_ROLES:
        api.replace(_bulk_role(namespace, name, BULK_NAMES))
    with caplog.at_level(logging.WARNING, logger="rdsgate.operator.handlers"):
        reconciler.sync_access(namespace)  # no Retry: writing it again cannot help

    condition = _bundle_condition(api, namespace)
    assert condition is not None, api.get("Database", namespace, "orders")
    assert (condition["status"], condition["reason"]) == ("True", "OverSecretLimit")
    assert "for 1 grants, over the 1048576-byte limit of a Secret" in condition["message"]
    assert "gzip-compressed from" in condition["message"]
    assert "the proxies keep the previous one" in condition["message"]
    events = [e for e in api.events(namespace, "orders") if e["reason"] == "AccessBundleTooLarge"]
    assert [e["type"] for e in events] == ["Warning"]
    assert events[0]["message"] == condition["message"]
    assert any(
        "orders-rdsgate-access not written" in r.getMessage() and "limit 1048576" in r.getMessage()
        for r in caplog.records
    ), caplog.text
    # The previous bundle stays in force, untouched.
    assert _bundle_in_force(api, namespace) == (version, before)

    reconciler.sync_access(namespace)  # the same problem: no second Event
    assert (
        len([e for e in api.events(namespace, "orders") if e["reason"] == "AccessBundleTooLarge"])
        == 1
    )

    api.replace(_bulk_role(namespace, "bulk-c", 10))
    reconciler.sync_access(namespace)
    condition = _bundle_condition(api, namespace)
    assert condition is not None
    assert (condition["status"], condition["reason"]) == ("False", "WithinLimit")
    assert "for 1 grants, written" in condition["message"]
    new_version, after = _bundle_in_force(api, namespace)
    assert new_version != version
    bulk_b = next(r for r in after.roles if r.name == "bulk-b")
    assert len(bulk_b.deny.database_names) == BULK_NAMES
    assert [e["reason"] for e in api.events(namespace, "orders")].count("AccessBundleWritten") == 1
