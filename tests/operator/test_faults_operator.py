"""Fault 7 of issue 14: the operator is SIGKILLed in the middle of its work, then restarted.

The real `rdsgate-operator` process runs against an API emulator of this module's own. A
`Gate` (tests/operator/hooks.py) holds one chosen request of the operator's — the POST of a
Database's Deployment, the PATCH of an access Secret — so the process is provably half-way
when it gets SIGKILL; the emulator then abandons the held request when its connection drops
(aiohttp cancels the handler, as kube-apiserver cancels a request's context), so that write
never happens. A second process must converge from that state: every child exactly once and owned, nothing re-created that was complete, no
Secret without a live owner, and no grant in a bundle for a Token deleted while no
operator ran.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.fixtures.k8s import (
    OPERATOR_NAMESPACE,
    Api,
    ApiCall,
    ApiServer,
    OperatorProcess,
    start_operator,
    wait_for,
)
from tests.operator.hooks import Gate, in_front_of
from tests.operator.test_op_operator import CHILDREN, bundle, can_login, example

#: The bearer token of the operator's kubeconfig (ApiServer.kubeconfig): its requests.
OPERATOR = "test-token"
KINDS = ("Secret", "ConfigMap", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget")


@pytest.fixture(scope="module")
def k8s(private_k8s_api: ApiServer) -> ApiServer:
    return private_k8s_api


class HeldRequest(Gate):
    """A Gate that also tells when the API server gave up the held request (`abandoned`):
    its client went away before it was let through."""

    def __init__(self, matches: Any) -> None:
        super().__init__(matches)
        self.abandoned = threading.Event()

    async def __call__(self, request: kmock.Request) -> None:
        try:
            await super().__call__(request)
        except asyncio.CancelledError:
            self.abandoned.set()
            raise


def operator_request(verb: str, resource: str, ns: str, name: str = "") -> HeldRequest:
    """Holds the operator's first `verb` of `resource` (named `name`) in `ns`."""

    def matches(call: ApiCall) -> bool:
        return (call.user, call.verb, call.resource, call.namespace) == (
            OPERATOR,
            verb,
            resource,
            ns,
        ) and call.name == name

    return HeldRequest(matches)


def sigkill(op: OperatorProcess) -> None:
    """SIGKILL, as the kubelet's after a failed liveness probe or the OOM killer: no
    handler runs, no finalizer is released, no request is finished."""
    op.process.send_signal(signal.SIGKILL)
    assert op.process.wait(10) == -signal.SIGKILL


@pytest.fixture
def operators(k8s: ApiServer, tmp_path: Path) -> Iterator[list[OperatorProcess]]:
    """The operator processes a test starts (each in its own directory), stopped at the end."""
    started: list[OperatorProcess] = []
    yield started
    for op in started:
        if op.process.poll() is None:
            op.stop()


def start(k8s: ApiServer, tmp_path: Path, operators: list[OperatorProcess]) -> OperatorProcess:
    op = start_operator(k8s, tmp_path / f"operator-{len(operators)}", "--resync-interval", "600")
    operators.append(op)
    return op


def inventory(api: Api, ns: str) -> dict[str, list[str]]:
    """The names of every object of the operator's kinds in the namespace, by kind."""
    return {kind: sorted(o["metadata"]["name"] for o in api.objects(kind, ns)) for kind in KINDS}


def orphans(api: Api, ns: str) -> list[str]:
    """Secrets with no owner, or whose owners no longer exist."""
    live = {
        o["metadata"]["uid"]
        for kind in ("Database", "Token", "Role")
        for o in api.objects(kind, ns)
    }
    return [
        s["metadata"]["name"]
        for s in api.objects("Secret", ns)
        if not {r["uid"] for r in s["metadata"].get("ownerReferences") or []} & live
    ]


def uids(api: Api, ns: str, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    found = {}
    for kind, name in pairs:
        obj = api.get(kind, ns, name)
        if obj is not None:
            found[(kind, name)] = str(obj["metadata"]["uid"])
    return found


def token(name: str, ns: str) -> dict[str, Any]:
    doc = example("token-orders-app.yaml", ns)
    doc["metadata"]["name"] = name
    doc["spec"]["secretName"] = f"{name}-db"
    return doc


def test_killed_while_creating_a_databases_children(
    k8s: ApiServer, tmp_path: Path, operators: list[OperatorProcess]
) -> None:
    api, ns = Api(k8s.url), "fault-children"
    op = start(k8s, tmp_path, operators)
    ca_before = api.get("Secret", OPERATOR_NAMESPACE, "rdsgate-ca")
    assert ca_before is not None
    api.create(example("role-app-rw.yaml", ns))
    api.create(example("token-orders-app.yaml", ns))
    gate = operator_request("create", "deployments", ns)
    with in_front_of(k8s, gate):
        api.create(example("database.yaml", ns))
        assert gate.arrived.wait(30), op.tail()
        # Provably mid-way: the children before the Deployment exist, those after do not.
        for kind, name in CHILDREN[:4]:
            assert api.get(kind, ns, name) is not None, f"{kind} {name} before the kill"
        assert api.get("Service", ns, "orders") is None
        assert api.get("PodDisruptionBudget", ns, "orders-rdsgate") is None
        sigkill(op)
        try:
            assert gate.abandoned.wait(10), "the emulator kept the dead client's request"
        finally:
            gate.opened.set()
    before = uids(api, ns, CHILDREN)
    assert [name for _, name in before] == [name for _, name in CHILDREN[:4]]
    tls_before = api.get("Secret", ns, "orders-rdsgate-tls")
    assert tls_before is not None

    op = start(k8s, tmp_path, operators)
    for kind, name in CHILDREN:
        wait_for(partial(api.get, kind, ns, name), f"{kind} {name} after the restart", 30, op.tail)
    wait_for(lambda: can_login(api, ns, "orders-app-db", "app", "orders"), "the grant", 30, op.tail)
    wait_for(
        lambda: (
            (Api.condition(api.get("Database", ns, "orders"), "Progressing") or {}).get("reason")
            == "RollingOut"
        ),
        "the Database's status",
        30,
        op.tail,
    )

    db = api.get("Database", ns, "orders")
    assert db is not None
    assert inventory(api, ns) == {
        "Secret": ["orders-app-db", "orders-rdsgate-access", "orders-rdsgate-tls"],
        "ConfigMap": ["orders-rdsgate", "rdsgate-ca"],
        "ServiceAccount": ["orders-rdsgate"],
        "Deployment": ["orders-rdsgate"],
        "Service": ["orders"],
        "PodDisruptionBudget": ["orders-rdsgate"],
    }
    for kind, name in CHILDREN:
        child = api.get(kind, ns, name)
        assert child is not None
        assert [r["uid"] for r in child["metadata"]["ownerReferences"]] == [db["metadata"]["uid"]]
    # What the killed process completed was kept, not made again (same object, same key).
    assert uids(api, ns, list(before)) == before
    tls_after = api.get("Secret", ns, "orders-rdsgate-tls")
    assert tls_after is not None and tls_after["data"] == tls_before["data"]
    assert db["metadata"]["finalizers"] == ["rdsgate.dev/finalizer"]
    assert orphans(api, ns) == []
    ca_after = api.get("Secret", OPERATOR_NAMESPACE, "rdsgate-ca")
    assert ca_after is not None and ca_after["metadata"]["uid"] == ca_before["metadata"]["uid"]
    # Nothing was reported twice either: one Event per object, reason and message.
    events = [(e["involvedObject"]["uid"], e["reason"], e["message"]) for e in api.events(ns)]
    assert events and len(events) == len(set(events))
    assert op.process.poll() is None


def test_killed_while_compiling_access(
    k8s: ApiServer, tmp_path: Path, operators: list[OperatorProcess]
) -> None:
    api, ns = Api(k8s.url), "fault-access"
    op = start(k8s, tmp_path, operators)
    api.create(example("database.yaml", ns))
    api.create(example("role-app-rw.yaml", ns))
    api.create(token("keep", ns))
    api.create(token("gone", ns))
    both = (["app-rw"], [f"{ns}/gone", f"{ns}/keep"])
    wait_for(lambda: bundle(api, ns) == both, "two grants", 30, op.tail)
    wait_for(partial(api.get, "Deployment", ns, "orders-rdsgate"), "the proxies", 30, op.tail)

    gate = operator_request("patch", "secrets", ns, "orders-rdsgate-access")
    with in_front_of(k8s, gate):
        api.create(token("late", ns))
        assert gate.arrived.wait(30), op.tail()
        # Provably mid-compile: the new Token's Secret is written, its grant and status not.
        late_secret = api.get("Secret", ns, "late-db")
        assert late_secret is not None
        assert bundle(api, ns) == both
        late = api.get("Token", ns, "late")
        assert late is not None and not (late.get("status") or {}).get("conditions")
        sigkill(op)
        try:
            assert gate.abandoned.wait(10), "the emulator kept the dead client's request"
        finally:
            gate.opened.set()
    assert bundle(api, ns) == both

    # While no operator runs, a Token is deleted: its grant is now one that should be gone.
    assert can_login(api, ns, "gone-db", "app", "orders")
    api.delete("Token", ns, "gone")
    assert bundle(api, ns) == both

    op = start(k8s, tmp_path, operators)
    two = (["app-rw"], [f"{ns}/keep", f"{ns}/late"])
    wait_for(lambda: bundle(api, ns) == two, "the deleted Token's grant to go", 30, op.tail)
    wait_for(lambda: api.get("Token", ns, "gone") is None, "the Token to go", 30, op.tail)
    wait_for(lambda: api.get("Secret", ns, "gone-db") is None, "its Secret to go", 30, op.tail)
    ready = wait_for(
        lambda: (
            (c := Api.condition(api.get("Token", ns, "late"), "Ready")) and c["status"] == "True"
        ),
        "the late Token to be Ready",
        30,
        op.tail,
    )
    assert ready
    # The Secret the killed process wrote is the credential, not replaced by a second one.
    late_now = api.get("Secret", ns, "late-db")
    assert late_now is not None
    assert late_now["metadata"]["uid"] == late_secret["metadata"]["uid"]
    assert late_now["data"]["token"] == late_secret["data"]["token"]
    assert can_login(api, ns, "late-db", "app", "orders")
    assert can_login(api, ns, "keep-db", "app", "orders")
    assert inventory(api, ns)["Secret"] == [
        "keep-db",
        "late-db",
        "orders-rdsgate-access",
        "orders-rdsgate-tls",
    ]
    assert orphans(api, ns) == []
    assert op.process.poll() is None
