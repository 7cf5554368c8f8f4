"""The operator's only door to the Kubernetes API: read, create, merge-patch, delete, Events.

Objects are plain dicts. `apply` is idempotent: it reads the object, computes the JSON merge
patch (RFC 7386) that makes it carry every field the operator renders, and sends nothing
when it already does. A merge patch replaces lists whole, so a list the operator owns (the
Service's ports, the Deployment's containers) is restored exactly, never merged with
entries someone added by hand; maps (labels, annotations) are merged, so other
controllers' keys survive; a rendered `None` removes a key.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import kubernetes
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from .status import EventSpec, timestamp

log = logging.getLogger(__name__)

COMPONENT = "rdsgate-operator"


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = (
            f"{root}/namespaces/{namespace}/{self.plural}"
            if self.namespaced
            else (f"{root}/{self.plural}")
        )
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


DATABASE = Kind("rdsgate.dev", "v1alpha1", "databases", "Database")
ROLE = Kind("rdsgate.dev", "v1alpha1", "roles", "Role")
TOKEN = Kind("rdsgate.dev", "v1alpha1", "tokens", "Token")
DATABASE_DISCOVERY = Kind("rdsgate.dev", "v1alpha1", "databasediscoveries", "DatabaseDiscovery")
SECRET = Kind("", "v1", "secrets", "Secret")
CONFIG_MAP = Kind("", "v1", "configmaps", "ConfigMap")
SERVICE = Kind("", "v1", "services", "Service")
SERVICE_ACCOUNT = Kind("", "v1", "serviceaccounts", "ServiceAccount")
EVENT = Kind("", "v1", "events", "Event")
DEPLOYMENT = Kind("apps", "v1", "deployments", "Deployment")
PDB = Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
HPA = Kind("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
CERTIFICATE = Kind("cert-manager.io", "v1", "certificates", "Certificate")
POD = Kind("", "v1", "pods", "Pod")
CLUSTER_ROLE_BINDING = Kind(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False
)
VALIDATING_WEBHOOKS = Kind(
    "admissionregistration.k8s.io",
    "v1",
    "validatingwebhookconfigurations",
    "ValidatingWebhookConfiguration",
    False,
)
MUTATING_WEBHOOKS = Kind(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    False,
)
SUBJECT_ACCESS_REVIEW = Kind(
    "authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", False
)

KINDS = {
    (k.api_version, k.kind): k
    for k in (
        DATABASE,
        DATABASE_DISCOVERY,
        ROLE,
        TOKEN,
        SECRET,
        CONFIG_MAP,
        SERVICE,
        SERVICE_ACCOUNT,
        EVENT,
        DEPLOYMENT,
        PDB,
        HPA,
        CERTIFICATE,
        POD,
        CLUSTER_ROLE_BINDING,
        VALIDATING_WEBHOOKS,
        MUTATING_WEBHOOKS,
        SUBJECT_ACCESS_REVIEW,
    )
}


def kind_of(obj: Mapping[str, Any]) -> Kind:
    return KINDS[(str(obj.get("apiVersion")), str(obj.get("kind")))]


class KubeError(Exception):
    """The API answered with an error (or could not be reached); `status` is the HTTP code."""

    def __init__(self, status: int, reason: str, message: str, what: str) -> None:
        super().__init__(f"{what}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.what = what


def strip_none(value: Any) -> Any:
    """The value without None entries at any depth: what to send when creating."""
    if isinstance(value, Mapping):
        return {k: strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_none(v) for v in value]
    return value


def covers(current: Any, desired: Any) -> bool:
    """Whether `current` already carries every field of `desired` (None: must be absent).

    Fields the API server adds (defaults, status, bookkeeping) are ignored, also inside
    list entries; a list must have the same length and each entry must cover its peer.
    """
    if isinstance(desired, Mapping):
        if not isinstance(current, Mapping):
            return False
        return all(_covers_key(current, k, v) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(current, list)
            and len(current) == len(desired)
            and all(covers(c, d) for c, d in zip(current, desired, strict=True))
        )
    if isinstance(desired, bool) or isinstance(current, bool):
        return current is desired
    return bool(current == desired)


def _covers_key(current: Mapping[str, Any], key: str, desired: Any) -> bool:
    if desired is None:
        return key not in current
    if key not in current:
        # An absent map is an empty one (the API server drops empty labels, annotations).
        return isinstance(desired, Mapping) and not strip_none(desired)
    return covers(current[key], desired)


def merge_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The smallest JSON merge patch turning `current` into something that covers `desired`."""
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        have = current.get(key)
        if want is None:
            if key in current:
                patch[key] = None
        elif isinstance(want, Mapping) and isinstance(have, Mapping):
            sub = merge_patch(have, want)
            if sub:
                patch[key] = sub
        elif not _covers_key(current, key, want):
            patch[key] = strip_none(want)
    return patch


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(isinstance(r, Mapping) and r.get("uid") == uid for r in refs)


ApplyResult = Literal["created", "updated", "unchanged"]


class Kube:
    """A thin JSON client over the kubernetes package's ApiClient (thread-safe, pooled)."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()

    @classmethod
    def connect(cls) -> Kube:
        """In-cluster credentials when in a pod, else the kubeconfig (KUBECONFIG), like kopf."""
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        return cls(ApiClient())

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            response = self.api.call_api(
                path,
                method,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=(5, 30),
            )
        except ApiException as exc:
            raise _error(exc, what) from None
        except (HTTPError, OSError) as exc:
            raise KubeError(0, "Unreachable", str(exc), what) from None
        data = response.data
        return json.loads(data) if data else None

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self._call(
                "GET", kind.path(namespace, name), f"get {kind.kind} {namespace}/{name}"
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def list(
        self, kind: Kind, namespace: str, selector: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        path = kind.path(namespace)
        if selector:
            path += "?labelSelector=" + quote(",".join(f"{k}={v}" for k, v in selector.items()))
        result = self._call("GET", path, f"list {kind.plural} in {namespace}")
        items = (result or {}).get("items") or []
        for item in items:  # lists omit these per item
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return list(items)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind, meta = kind_of(obj), obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "")
        name = meta.get("name", meta.get("generateName"))
        created: dict[str, Any] = self._call(
            "POST",
            kind.path(ns),
            f"create {kind.kind} {ns + '/' if ns else ''}{name or ''}".rstrip(),
            strip_none(obj),
        )
        return created

    def review_access(
        self,
        user: str,
        groups: Sequence[str],
        attributes: Mapping[str, str],
        *,
        uid: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[bool, str, str]:
        """A SubjectAccessReview (`authorization.k8s.io/v1`): may `user` with `groups` do
        what `attributes` (resourceAttributes) say? Returns (allowed, the authorizer's
        reason, its evaluationError). Raises KubeError when the API server gives no answer."""
        spec: dict[str, Any] = {
            "user": user,
            "groups": list(groups),
            "resourceAttributes": dict(attributes),
        }
        if uid:
            spec["uid"] = uid
        if extra:
            spec["extra"] = {k: list(v) for k, v in extra.items()}
        review = self.create(
            {
                "apiVersion": SUBJECT_ACCESS_REVIEW.api_version,
                "kind": SUBJECT_ACCESS_REVIEW.kind,
                "metadata": {},
                "spec": spec,
            }
        )
        status = (review or {}).get("status") or {}
        allowed = bool(status.get("allowed")) and not status.get("denied")
        return allowed, str(status.get("reason") or ""), str(status.get("evaluationError") or "")

    def patch(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        patched: dict[str, Any] = self._call(
            "PATCH",
            kind.path(namespace, name, subresource),
            f"patch {kind.kind} {namespace}/{name}" + (f"/{subresource}" if subresource else ""),
            dict(patch),
            content_type="application/merge-patch+json",
        )
        return patched

    def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        try:
            self._call(
                "DELETE",
                kind.path(namespace, name),
                f"delete {kind.kind} {namespace}/{name}",
                {"propagationPolicy": "Background"},
            )
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def apply(
        self,
        desired: Mapping[str, Any],
        current: Mapping[str, Any] | None = None,
        *,
        known: bool = False,
    ) -> tuple[ApplyResult, dict[str, Any]]:
        """Create the object, or merge-patch the fields it lacks; nothing when it has them.

        `known`: `current` was just read, so None means the object does not exist (and it is
        not read again before the create)."""
        kind, meta = kind_of(desired), desired["metadata"]
        ns, name = str(meta.get("namespace") or ""), meta["name"]
        if current is None and not known:
            current = self.get(kind, ns, name)
        if current is None:
            try:
                return "created", self.create(desired)
            except KubeError as exc:
                if exc.status != 409:
                    raise
                current = self.get(kind, ns, name)
                if current is None:
                    raise
        patch = merge_patch(current, desired)
        if not patch:
            return "unchanged", dict(current)
        log.info("updating %s %s/%s: %s", kind.kind, ns, name, sorted(patch))
        return "updated", self.patch(kind, ns, name, patch)

    def patch_status(
        self, obj: Mapping[str, Any], fields: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Merge `fields` into the status, if they are not all there already."""
        current = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
        patch = merge_patch(current or {}, fields)
        if not patch:
            return None
        kind, meta = kind_of(obj), obj["metadata"]
        try:
            return self.patch(kind, meta["namespace"], meta["name"], {"status": patch}, "status")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def post_event(self, obj: Mapping[str, Any], event: EventSpec) -> None:
        """A core/v1 Event about `obj`; failing to post one is logged, never fatal."""
        meta = obj.get("metadata") or {}
        now = timestamp(datetime.now(UTC))
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}",
                "namespace": meta.get("namespace"),
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": f"rdsgate.dev/{COMPONENT}",
            "reportingInstance": self.instance[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.create(body)
        except KubeError as exc:
            log.warning("could not post Event %s about %s: %s", event.reason, meta.get("name"), exc)


def _error(exc: ApiException, what: str) -> KubeError:
    message = exc.reason or ""
    reason = exc.reason or "Error"
    if exc.body:
        try:
            status = json.loads(exc.body)
            message = str(status.get("message") or message)
            reason = str(status.get("reason") or reason)
        except (ValueError, AttributeError):
            message = str(exc.body)[:500]
    return KubeError(int(exc.status or 0), reason, message, what)
