"""The Kubernetes API calls of the `db` commands, as plain JSON, with errors a user can act on.

Objects stay dicts (the shape `kubectl get -o json` shows and the operator's pure code
takes), so nothing depends on the generated models accepting what a server sends. Every
failure becomes a `CliError`: unreachable API and refused credentials exit 2 (the
kubeconfig is the thing to fix), anything else the API refuses exits 1 with its message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .errors import CliError
from .kubeconfig import Cluster

GROUP, VERSION = "rdsgate.dev", "v1alpha1"
REQUEST_TIMEOUT = 15


def custom_path(namespace: str, plural: str, name: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{plural}"
    return path + (f"/{quote(name)}" if name else "")


def custom_path_all(plural: str) -> str:
    """The collection across every namespace (`kubectl get -A`)."""
    return f"/apis/{GROUP}/{VERSION}/{plural}"


def core_path(namespace: str, plural: str, name: str | None = None) -> str:
    path = f"/api/v1/namespaces/{quote(namespace)}/{plural}"
    return path + (f"/{quote(name)}" if name else "")


class KubeApi:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.client = cluster.api

    @property
    def host(self) -> str:
        return str(self.client.configuration.host)

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One call; ApiException for what the server refused, CliError when it is not there."""
        from urllib3.exceptions import HTTPError

        try:
            response = self.client.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except (HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise CliError(
                f"cannot reach the Kubernetes API at {self.host}: {reason}", exit_code=2
            ) from exc
        data = response[0].data if isinstance(response, tuple) else response.data
        return json.loads(data) if data else None

    def request(self, method: str, path: str, what: str, **kw: Any) -> Any:
        """One call; `what` completes "cannot …" in the error message."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(method, path, **kw)
        except ApiException as exc:
            raise self.error(exc, what) from exc

    def error(self, exc: Exception, what: str) -> CliError:
        """The CliError for an ApiException: the server's own message, and what to check."""
        status = int(getattr(exc, "status", 0) or 0)
        message = status_message(exc)
        if status == 0:
            return CliError(
                f"cannot reach the Kubernetes API at {self.host}: {message}", exit_code=2
            )
        if status == 401:
            return CliError(
                f"the Kubernetes API at {self.host} refused your credentials (401 Unauthorized) "
                "- log in again or check the kubeconfig's user (kubectl auth whoami)",
                exit_code=2,
            )
        if status == 403:
            return CliError(f"cannot {what}: forbidden - {message}")
        return CliError(f"cannot {what}: {status} {message}")

    def get(self, path: str, what: str) -> dict[str, Any] | None:
        """GET; None when the object does not exist."""
        try:
            return self._checked("GET", path, what)
        except _NotFound:
            return None

    def _checked(self, method: str, path: str, what: str, **kw: Any) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            out = self._call(method, path, **kw)
        except ApiException as exc:
            if exc.status == 404:
                raise _NotFound from exc
            raise self.error(exc, what) from exc
        return out if isinstance(out, dict) else {}

    def list(self, path: str, what: str, selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        try:
            out = self._checked("GET", path, what, query=query)
        except _NotFound as exc:
            raise CliError(
                f"cannot {what}: the API at {self.host} does not serve {path.rsplit('/', 1)[-1]}"
                " - are the rdsgate CRDs installed (kubectl get crd | grep rdsgate.dev)?",
                exit_code=3,
            ) from exc
        return [i for i in out.get("items") or [] if isinstance(i, dict)]

    def create(
        self, path: str, body: Mapping[str, Any], what: str = "", *, raw_errors: bool = False
    ) -> dict[str, Any]:
        """POST; with `raw_errors` an ApiException propagates for the caller to judge."""
        if raw_errors:
            out = self._call("POST", path, body=dict(body))
            return out if isinstance(out, dict) else {}
        result = self.request("POST", path, what, body=dict(body))
        return result if isinstance(result, dict) else {}

    def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH as a JSON merge patch; an ApiException propagates for the caller to judge."""
        out = self._call(
            "PATCH", path, body=dict(body), content_type="application/merge-patch+json"
        )
        return out if isinstance(out, dict) else {}

    def delete(self, path: str, what: str) -> bool:
        """DELETE; False when it was already gone."""
        try:
            self._checked("DELETE", path, what)
        except _NotFound:
            return False
        return True


class _NotFound(Exception):
    pass


def status_message(exc: Exception) -> str:
    """The API server's own words from an ApiException (its Status `message`)."""
    body = getattr(exc, "body", None)
    if body:
        try:
            doc = json.loads(body)
        except (TypeError, ValueError):
            doc = None
        if isinstance(doc, dict) and doc.get("message"):
            return str(doc["message"])
    reason = getattr(exc, "reason", None)
    return str(reason or exc)
