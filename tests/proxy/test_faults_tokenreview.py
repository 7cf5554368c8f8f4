"""Fault: the Kubernetes API cannot answer TokenReview (issue 14, fault 5).

The API emulator sits behind a `Gate`: closed, it refuses connections (the API server is
down); held, it accepts them and never answers (a partition). ServiceAccount log-ins whose
token was not reviewed fail closed with 08004; password and certificate log-ins carry on;
when the API is back, ServiceAccount log-ins work again with no restart. A token reviewed
within the last 30 s is not asked about again (TokenReviewer's cache), so it keeps working.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import ssl
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from rdsgate.lab.postgres import LabCA
from rdsgate.operator import pki
from rdsgate.proxy.access import secret_digest
from tests.fixtures.credsources import Gate
from tests.fixtures.k8s import ApiServer
from tests.fixtures.lab import DbIdentity
from tests.fixtures.proxy import APP_SECRET, DEFAULT_ACCESS, RunningProxy

Start = Callable[..., RunningProxy]
UNREACHABLE = "cannot verify the ServiceAccount token: the Kubernetes API is unreachable ("


def sa_token(serial: int) -> str:
    """A projected token of ServiceAccount shop/web for audience rdsgate (one per serial)."""

    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    claims = {"sub": "system:serviceaccount:shop:web", "exp": int(time.time()) + 3600}
    return f"{part({'alg': 'RS256'})}.{part(claims | {'jti': serial})}.c2lnbmF0dXJl"


TOKENS = [sa_token(n) for n in range(4)]


def review(body: dict[str, Any]) -> dict[str, Any]:
    """The API server's authenticator: TOKENS are shop/web's, for audience rdsgate."""
    spec = body.get("spec", {})
    status: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token"}
    if spec.get("token") in TOKENS and "rdsgate" in (spec.get("audiences") or []):
        status = {
            "authenticated": True,
            "user": {
                "username": "system:serviceaccount:shop:web",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:shop"],
            },
            "audiences": ["rdsgate"],
        }
    return {**body, "status": status}


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[ApiServer, Gate]]:
    """This module's own API server answering TokenReview, reached through a Gate."""
    server = ApiServer()
    server.emulator.review_token = review  # type: ignore[method-assign, assignment]
    server.start()
    parts = urlsplit(server.url)
    gate = Gate((parts.hostname or "127.0.0.1", parts.port or 80))
    yield server, gate
    gate.close()
    server.stop()


def sa_access() -> dict[str, Any]:
    doc = copy.deepcopy(DEFAULT_ACCESS)
    doc["grants"].append(
        {
            "identity": "shop/web-sa",
            "serviceAccount": {"namespace": "shop", "name": "web"},
            "roles": ["orders-rw"],
        }
    )
    return doc


@pytest.fixture
def sa_proxy(
    start_proxy: Start,
    api: tuple[ApiServer, Gate],
    proxy_identity: DbIdentity,
    tmp_path: Path,
) -> RunningProxy:
    """A proxy whose kubeconfig names the Gate; its own, so no review is cached yet."""
    server, gate = api
    gate.open()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        server.kubeconfig(tmp_path / "direct")
        .read_text()
        .replace(server.url, f"http://{gate.address}")
    )
    return start_proxy(
        {"limits": {"startupTimeout": "10s"}, "upstream": {"warm": {"perKey": 0}}},
        access=sa_access(),
        env={**proxy_identity.env, "KUBECONFIG": str(kubeconfig)},
    )


def connect(proxy: RunningProxy, password: str | None, ctx: ssl.SSLContext | None = None) -> str:
    """Logs in as app with a password, or with the client certificate in `ctx`."""

    async def go() -> str:
        conn = await asyncpg.connect(
            host="localhost",
            port=proxy.port,
            user="app",
            database="orders",
            password=password,
            ssl=ctx or proxy.ssl_context(),
            timeout=20,
        )
        try:
            return str(await conn.fetchval("select current_user"))
        finally:
            await conn.close()

    return asyncio.run(go())


def refusal(proxy: RunningProxy, password: str) -> tuple[asyncpg.PostgresError, float]:
    started = time.monotonic()
    with pytest.raises(asyncpg.PostgresError) as info:
        connect(proxy, password)
    return info.value, time.monotonic() - started


def certificate(proxy: RunningProxy, lab_ca: LabCA, tmp_path: Path) -> ssl.SSLContext:
    """A TLS context presenting shop/orders-app's client certificate."""
    kp = pki.issue_client_cert(
        lab_ca.keypair, "shop/orders-app", secret_sha256=secret_digest(APP_SECRET)
    )
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_bytes(kp.cert_pem)
    key.write_bytes(kp.key_pem)
    ctx = proxy.ssl_context()
    ctx.load_cert_chain(cert, key)
    return ctx


def by_method(method: str, event: dict[str, Any]) -> bool:
    return bool(event["auth_method"] == method)


def others_carry_on(proxy: RunningProxy, lab_ca: LabCA, tmp_path: Path) -> None:
    """Password and certificate log-ins work, and are audited as such."""
    mark = len(proxy.audit)
    assert connect(proxy, APP_SECRET) == "app"
    assert connect(proxy, None, certificate(proxy, lab_ca, tmp_path)) == "app"
    for method in ("password", "certificate"):
        start = proxy.wait_audit("session.start", partial(by_method, method), start=mark)
        assert start["identity"] == "shop/orders-app"
    assert proxy.http("/readyz")[0] == 200


def assert_failed_closed(
    proxy: RunningProxy, err: asyncpg.PostgresError, mark: int, failures: float
) -> None:
    assert err.sqlstate == "08004"
    assert err.message.startswith(UNREACHABLE), err.message
    denied = proxy.wait_audit("auth.denied", start=mark)
    assert denied["reason"] == err.message
    assert denied["sqlstate"] == "08004"
    assert denied["identity"] is None
    reason = {"reason": "tokenreview_unreachable"}
    assert proxy.metric("rdsgate_auth_failures_total", reason) == failures
    assert proxy.events("session.start", mark) == []


def test_api_refusing_connections_fails_service_accounts_closed_and_recovers(
    sa_proxy: RunningProxy, api: tuple[ApiServer, Gate], lab_ca: LabCA, tmp_path: Path
) -> None:
    _, gate = api
    assert connect(sa_proxy, TOKENS[0]) == "app"
    sa_proxy.wait_audit("session.end")
    gate.close()

    mark = len(sa_proxy.audit)
    err, took = refusal(sa_proxy, TOKENS[1])
    assert_failed_closed(sa_proxy, err, mark, 1)
    assert took < 5, f"a refused connection should fail at once, took {took:.1f}s"
    others_carry_on(sa_proxy, lab_ca, tmp_path)
    # Reviewed moments ago, before the outage: still cached, not asked about again.
    assert connect(sa_proxy, TOKENS[0]) == "app"

    gate.open()
    mark = len(sa_proxy.audit)
    assert connect(sa_proxy, TOKENS[1]) == "app"
    start = sa_proxy.wait_audit("session.start", start=mark)
    assert (start["identity"], start["auth_method"]) == (
        "system:serviceaccount:shop:web",
        "serviceaccount",
    )
    assert (
        sa_proxy.metric("rdsgate_auth_failures_total", {"reason": "tokenreview_unreachable"}) == 1
    )


def test_api_not_answering_fails_service_accounts_closed_in_time_and_recovers(
    sa_proxy: RunningProxy, api: tuple[ApiServer, Gate], lab_ca: LabCA, tmp_path: Path
) -> None:
    _, gate = api
    gate.hold()
    mark = len(sa_proxy.audit)
    err, took = refusal(sa_proxy, TOKENS[2])
    assert_failed_closed(sa_proxy, err, mark, 1)
    # TokenReview waits 5 s for an answer: the client hears 08004, not limits.startupTimeout.
    assert took < 9, f"took {took:.1f}s"
    others_carry_on(sa_proxy, lab_ca, tmp_path)

    gate.open()
    assert connect(sa_proxy, TOKENS[2]) == "app"
