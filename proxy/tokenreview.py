"""Checks ServiceAccount tokens with the Kubernetes TokenReview API (audience `rdsgate`).

The proxy uses its own in-cluster credentials, or a kubeconfig outside a cluster (both
through the `kubernetes` client's own loaders). A review that cannot be made fails closed.
Positive results are cached briefly — never past the token's own expiry — so a busy app
that reconnects often does not send one review per connection.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .errors import AuthenticationFailed

AUDIENCE = "rdsgate"
CACHE_SECONDS = 30.0
CACHE_ENTRIES = 10_000
SA_PREFIX = "system:serviceaccount:"
AUDIENCE_HINT = (
    "use a projected ServiceAccount token with `audience: rdsgate` "
    "(serviceAccountToken.audience in the pod's projected volume)"
)


def looks_like_jwt(password: str) -> bool:
    """Three base64url segments with a JSON header: a token, not a Token secret."""
    parts = password.split(".")
    return len(parts) == 3 and password.startswith("eyJ") and all(parts)


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim, read without verifying (the API server verifies; this only bounds caching)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else None
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class Reviewed:
    """An authenticated ServiceAccount."""

    namespace: str
    name: str

    @property
    def username(self) -> str:
        return f"{SA_PREFIX}{self.namespace}:{self.name}"


class KubernetesUnreachable(AuthenticationFailed):
    sqlstate = "08004"


class TokenReviewer:
    def __init__(self) -> None:
        # Reviews wait on the API server: their own threads, so a burst of them (even from
        # clients sending made-up tokens) cannot hold up IAM token signing.
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tokenreview")
        self._api: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, tuple[Reviewed, float]] = OrderedDict()

    def _client(self) -> Any:
        with self._lock:
            if self._api is None:
                from kubernetes import client, config

                try:
                    config.load_incluster_config()
                except config.ConfigException:
                    config.load_kube_config()
                self._api = client.AuthenticationV1Api()
            return self._api

    def _review(self, token: str) -> dict[str, Any]:
        from kubernetes.client import V1TokenReview, V1TokenReviewSpec
        from kubernetes.client.exceptions import ApiException

        try:
            api = self._client()
            body = V1TokenReview(spec=V1TokenReviewSpec(token=token, audiences=[AUDIENCE]))
            result = api.create_token_review(body, _request_timeout=5)
        except ApiException as exc:
            raise KubernetesUnreachable(
                f"cannot verify the ServiceAccount token: the Kubernetes API refused the "
                f"TokenReview ({exc.status} {exc.reason})",
                reason="tokenreview_failed",
                hint="the proxy's ServiceAccount needs create on tokenreviews "
                "(authentication.k8s.io); the rdsgate operator grants it",
            ) from exc
        except Exception as exc:  # urllib3, config, DNS: any failure means "not verified"
            raise KubernetesUnreachable(
                "cannot verify the ServiceAccount token: the Kubernetes API is unreachable "
                f"({type(exc).__name__}: {exc})",
                reason="tokenreview_unreachable",
            ) from exc
        status: dict[str, Any] = result.status.to_dict() if result.status else {}
        return status

    async def review(self, token: str) -> Reviewed:
        key = hashlib.sha256(token.encode()).digest()
        now = time.time()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        loop = asyncio.get_running_loop()
        status = await loop.run_in_executor(self._executor, self._review, token)
        if not status.get("authenticated"):
            why = status.get("error") or "the token is not valid"
            raise AuthenticationFailed(
                f"ServiceAccount token rejected by the Kubernetes API: {why}",
                reason="serviceaccount_rejected",
                hint=AUDIENCE_HINT,
            )
        audiences = status.get("audiences") or []
        if AUDIENCE not in audiences:
            raise AuthenticationFailed(
                f"ServiceAccount token is not for audience {AUDIENCE!r} "
                f"(it is for {', '.join(audiences) or 'the API server'})",
                reason="serviceaccount_audience",
                hint=AUDIENCE_HINT,
            )
        username = str((status.get("user") or {}).get("username") or "")
        if not username.startswith(SA_PREFIX) or username.count(":") != 3:
            raise AuthenticationFailed(
                f"the token belongs to {username or 'nobody'}, not a ServiceAccount",
                reason="serviceaccount_rejected",
            )
        namespace, name = username[len(SA_PREFIX) :].split(":")
        reviewed = Reviewed(namespace, name)
        expires = min(now + CACHE_SECONDS, jwt_expiry(token) or now + CACHE_SECONDS)
        self._cache[key] = (reviewed, expires)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return reviewed
