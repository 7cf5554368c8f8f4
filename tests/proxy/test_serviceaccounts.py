"""ServiceAccount tokens as identities, checked with TokenReview on a Kubernetes API over HTTP."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from rdsgate.lab.postgres import free_port
from tests.fixtures.k8s import ApiServer
from tests.fixtures.lab import DbIdentity
from tests.fixtures.proxy import DEFAULT_ACCESS, RunningProxy

Start = Callable[..., RunningProxy]


def jwt(subject: str, lifetime: float = 3600) -> str:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    claims = {"sub": subject, "exp": int(time.time() + lifetime)}
    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


WEB = jwt("system:serviceaccount:shop:web")
OTHER = jwt("system:serviceaccount:shop:other")
WRONG_AUDIENCE = jwt("system:serviceaccount:shop:web-default-audience")
FORGED = jwt("system:serviceaccount:shop:web", lifetime=60) + "x"


class TokenReviews:
    """What the API server knows about tokens, and how often it was asked."""

    def __init__(self) -> None:
        self.known = {
            WEB: ("shop", "web", ["rdsgate"]),
            OTHER: ("shop", "other", ["rdsgate"]),
            WRONG_AUDIENCE: ("shop", "web", ["https://kubernetes.default.svc"]),
        }
        self.calls = 0
        self.lock = threading.Lock()

    def review(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls += 1
        spec = body.get("spec", {})
        wanted = spec.get("audiences") or ["https://kubernetes.default.svc"]
        status: dict[str, Any]
        entry = self.known.get(spec.get("token", ""))
        if entry is None:
            status = {"authenticated": False, "error": "invalid bearer token"}
        elif not set(wanted) & set(entry[2]):
            status = {
                "authenticated": False,
                "error": f"[invalid bearer token, token audiences {json.dumps(entry[2])} is "
                f"invalid for the target audiences {json.dumps(wanted)}]",
            }
        else:
            ns, name, _ = entry
            status = {
                "authenticated": True,
                "user": {
                    "username": f"system:serviceaccount:{ns}:{name}",
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}"],
                },
                "audiences": [a for a in wanted if a in entry[2]],
            }
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": spec,
            "status": status,
        }


@pytest.fixture(scope="module")
def token_api() -> Iterator[tuple[ApiServer, TokenReviews]]:
    """A Kubernetes API of this module's own that answers TokenReview."""
    reviews = TokenReviews()
    server = ApiServer()
    server.emulator.review_token = reviews.review  # type: ignore[method-assign, assignment]
    server.start()
    yield server, reviews
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


def kube_env(identity: DbIdentity, kubeconfig: Path) -> dict[str, str]:
    return {**identity.env, "KUBECONFIG": str(kubeconfig)}


def login(proxy: RunningProxy, password: str) -> str:
    async def go() -> str:
        conn = await asyncpg.connect(proxy.url(password=password), timeout=15)
        try:
            return str(await conn.fetchval("select current_user"))
        finally:
            await conn.close()

    return asyncio.run(go())


def refusal(proxy: RunningProxy, password: str) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as info:
        login(proxy, password)
    return info.value


@pytest.fixture(scope="module")
def sa_proxy(
    proxy_lab: Any,
    token_api: tuple[ApiServer, TokenReviews],
    proxy_identity: DbIdentity,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningProxy]:
    server, _ = token_api
    kubeconfig = server.kubeconfig(tmp_path_factory.mktemp("kube") / "config")
    running = proxy_lab.start(access=sa_access(), env=kube_env(proxy_identity, kubeconfig))
    yield running
    running.stop()


def test_a_service_account_token_is_an_identity(
    sa_proxy: RunningProxy, token_api: tuple[ApiServer, TokenReviews]
) -> None:
    _, reviews = token_api
    mark = len(sa_proxy.audit)
    before = reviews.calls
    assert login(sa_proxy, WEB) == "app"
    assert login(sa_proxy, WEB) == "app"
    assert reviews.calls == before + 1, "the second log-in should use the cached review"
    start = sa_proxy.wait_audit(
        "session.start", lambda e: e["auth_method"] == "serviceaccount", start=mark
    )
    assert start["identity"] == "system:serviceaccount:shop:web"
    assert start["auth_method"] == "serviceaccount"


def test_an_unauthenticated_token_is_refused(sa_proxy: RunningProxy) -> None:
    err = refusal(sa_proxy, FORGED)
    assert err.sqlstate == "28P01"
    assert (
        err.message == "ServiceAccount token rejected by the Kubernetes API: invalid bearer token"
    )


def test_a_token_for_another_audience_is_refused(sa_proxy: RunningProxy) -> None:
    err = refusal(sa_proxy, WRONG_AUDIENCE)
    assert err.sqlstate == "28P01"
    assert 'is invalid for the target audiences ["rdsgate"]' in err.message
    assert err.hint is not None and "audience: rdsgate" in err.hint


def test_a_service_account_without_a_grant(sa_proxy: RunningProxy) -> None:
    err = refusal(sa_proxy, OTHER)
    assert err.message == "ServiceAccount shop/other has no Token granting access here"


def test_api_unreachable_fails_closed(
    start_proxy: Start,
    proxy_identity: DbIdentity,
    token_api: tuple[ApiServer, TokenReviews],
    tmp_path: Path,
) -> None:
    server, _ = token_api
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        server.kubeconfig(tmp_path / "real")
        .read_text()
        .replace(server.url, f"http://127.0.0.1:{free_port()}")
    )
    proxy = start_proxy(access=sa_access(), env=kube_env(proxy_identity, kubeconfig))
    err = refusal(proxy, WEB)
    assert err.sqlstate == "08004"
    assert err.message.startswith(
        "cannot verify the ServiceAccount token: the Kubernetes API is unreachable"
    )
    assert proxy.metric("rdsgate_auth_failures_total", {"reason": "tokenreview_unreachable"}) == 1


def test_no_token_in_any_output(sa_proxy: RunningProxy) -> None:
    login(sa_proxy, WEB)
    _, metrics = sa_proxy.http("/metrics")
    for token in (WEB, OTHER, WRONG_AUDIENCE, FORGED):
        for text in (metrics, "\n".join(sa_proxy.logs), json.dumps(sa_proxy.audit)):
            assert token not in text
            assert token.split(".")[1] not in text
