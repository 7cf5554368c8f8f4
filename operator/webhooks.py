"""The operator's admission webhooks: served over HTTPS with kopf, registered with the API server.

kopf serves the AdmissionReviews (`kopf.WebhookServer`, one path per handler id) and runs
the `@kopf.on.validate` / `@kopf.on.mutate` handlers of handlers.py. This module adds
what kopf leaves to us:

- the server certificate, issued by the operator's CA for the names the API server dials
  (the Service's DNS names, or the host of `--admission-url`), written to a private
  temporary directory that kopf watches, and re-issued before it is due (kopf restarts
  its listener when the files change); or, with `--admission-cert-dir`, cert-manager's
  files, which kopf watches the same way;
- the two webhook configurations (`configurations`, pure), created or brought back to
  what they should be at start-up and every minute after (`register`): with a Service
  reference (`--admission-service`, the Helm chart) or a URL (`--admission-url`, an
  operator outside the cluster), and the CA as `caBundle`. Nothing else is ever removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kopf

from . import pki
from .admission import MUTATING_ID, MUTATING_WEBHOOK, VALIDATING_ID, VALIDATING_WEBHOOK
from .ca import b64, is_current
from .kube import MUTATING_WEBHOOKS, TOKEN, VALIDATING_WEBHOOKS, Kube, KubeError

log = logging.getLogger(__name__)

DEFAULT_CONFIGURATION = "rdsgate-tokens"
TIMEOUT_SECONDS = 10
SERVER_CERT_DAYS = 90
#: How often the certificate's due date and the configurations are looked at.
UPKEEP_INTERVAL = 60.0


@dataclass(frozen=True)
class Target:
    """How the API server reaches the webhooks: a URL, or a Service (namespace, name, port)."""

    url: str | None = None
    service: tuple[str, str, int] | None = None

    def client_config(self, path: str, ca_bundle: bytes | None) -> dict[str, Any]:
        config: dict[str, Any]
        if self.url is not None:
            config = {"url": self.url.rstrip("/") + path}
        else:
            assert self.service is not None
            ns, name, port = self.service
            config = {"service": {"namespace": ns, "name": name, "port": port, "path": path}}
        if ca_bundle is not None:
            config["caBundle"] = b64(ca_bundle)
        return config

    def server_names(self, cluster_domain: str) -> tuple[list[str], list[str]]:
        """The DNS names and IP addresses the server certificate must carry."""
        if self.service is not None:
            ns, name, _ = self.service
            base = f"{name}.{ns}.svc"
            return [base, f"{base}.{cluster_domain}", f"{name}.{ns}", name], []
        host = urlsplit(self.url or "").hostname or "localhost"
        try:
            return [], [str(ipaddress.ip_address(host))]
        except ValueError:
            return [host], []


def parse_service(text: str) -> tuple[str, str, int]:
    """`NAMESPACE/NAME[:PORT]` (port 443 when omitted)."""
    ref, _, port = text.strip().partition(":")
    ns, _, name = ref.partition("/")
    if not ns or not name or (port and not port.isdigit()):
        raise ValueError(
            f"expected NAMESPACE/NAME[:PORT], like rdsgate/rdsgate-webhook:443, not {text!r}"
        )
    return ns, name, int(port or 443)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` ([::]:9443 for IPv6)."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, like 0.0.0.0:9443, not {text!r}")
    return host, int(port)


def parse_url(text: str) -> str:
    """`https://HOST[:PORT][/PATH]`: the webhooks are then served under PATH too."""
    parts = urlsplit(text.strip())
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(
            f"expected https://HOST[:PORT][/PATH] (the API server calls webhooks over HTTPS "
            f"only), not {text!r}"
        )
    return text.strip().rstrip("/")


def _webhook(
    name: str,
    path: str,
    operations: Sequence[str],
    target: Target,
    ca_bundle: bytes | None,
    namespaces: Sequence[str],
    timeout: int,
) -> dict[str, Any]:
    hook: dict[str, Any] = {
        "name": name,
        "clientConfig": target.client_config(path, ca_bundle),
        "rules": [
            {
                "apiGroups": [TOKEN.group],
                "apiVersions": ["*"],
                "resources": [TOKEN.plural],
                "operations": list(operations),
                "scope": "Namespaced",
            }
        ],
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "matchPolicy": "Equivalent",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": timeout,
    }
    if namespaces:
        hook["namespaceSelector"] = {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "In",
                    "values": sorted(namespaces),
                }
            ]
        }
    return hook


def configurations(
    name: str,
    target: Target,
    ca_bundle: bytes | None,
    namespaces: Sequence[str] = (),
    timeout: int = TIMEOUT_SECONDS,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Validating- and MutatingWebhookConfiguration `name` (docs/access-control.md).

    `namespaces`: the exact namespaces the operator serves (globs cannot be a selector, so
    with a glob every namespace's Tokens are gated).
    """
    exact = [] if any(c in ns for ns in namespaces for c in "*?[") else list(namespaces)
    labels = {"app.kubernetes.io/name": "rdsgate", "app.kubernetes.io/component": "webhook"}
    validating = {
        "apiVersion": VALIDATING_WEBHOOKS.api_version,
        "kind": VALIDATING_WEBHOOKS.kind,
        "metadata": {"name": name, "labels": labels},
        "webhooks": [
            _webhook(
                VALIDATING_WEBHOOK,
                f"/{VALIDATING_ID}",
                ["CREATE", "UPDATE"],
                target,
                ca_bundle,
                exact,
                timeout,
            )
        ],
    }
    mutating_hook = _webhook(
        MUTATING_WEBHOOK, f"/{MUTATING_ID}", ["CREATE", "UPDATE"], target, ca_bundle, exact, timeout
    )
    mutating_hook["reinvocationPolicy"] = "Never"
    mutating = {
        "apiVersion": MUTATING_WEBHOOKS.api_version,
        "kind": MUTATING_WEBHOOKS.kind,
        "metadata": {"name": name, "labels": labels},
        "webhooks": [mutating_hook],
    }
    return validating, mutating


def register(
    kube: Kube,
    name: str,
    target: Target,
    ca_bundle: bytes | None,
    namespaces: Sequence[str],
    timeout: int = TIMEOUT_SECONDS,
) -> None:
    """Create both configurations, or bring them back to what they should be."""
    for desired in configurations(name, target, ca_bundle, namespaces, timeout):
        result, _ = kube.apply(desired)
        if result != "unchanged":
            log.info("%s the %s %s", result, desired["kind"], name)


def _write_private(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    tmp = directory / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


@dataclass
class Registration:
    """What `register` needs, kept together for the server's upkeep."""

    kube: Kube
    name: str
    target: Target
    namespaces: tuple[str, ...]
    timeout: int = TIMEOUT_SECONDS


class AdmissionServer(kopf.WebhookServer):
    """kopf's HTTPS webhook server with a certificate from the operator's CA (or from a
    directory cert-manager keeps), which also keeps the webhook configurations registered."""

    def __init__(
        self,
        *,
        addr: str,
        port: int,
        ca: pki.KeyPair | None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        cert_dir: Path | None = None,
        path: str | None = None,
        registration: Registration | None = None,
    ) -> None:
        self.ca = ca
        self.dns_names = list(dns_names)
        self.ip_addresses = list(ip_addresses)
        self.registration = registration
        self._pair: pki.KeyPair | None = None
        cafile: Path | None = None
        cadata: bytes | None = None
        if cert_dir is not None:
            certfile, pkeyfile = cert_dir / "tls.crt", cert_dir / "tls.key"
            cafile = cert_dir / "ca.crt" if (cert_dir / "ca.crt").exists() else None
            self._files_dir: Path | None = None
        else:
            assert ca is not None
            self._files_dir = Path(tempfile.mkdtemp(prefix="rdsgate-webhook-"))
            # Key and certificate in one file, replaced at once: kopf (which reloads when
            # the file changes) never reads a new key with an old certificate.
            certfile = pkeyfile = self._files_dir / PEM_FILE
            cadata = ca.cert_pem
            self.renew()
        super().__init__(
            addr=addr,
            port=port,
            path=path or None,
            certfile=certfile,
            pkeyfile=pkeyfile,
            cadata=cadata,
            cafile=cafile,
            file_check_interval=5.0,
        )

    @property
    def ca_bundle(self) -> bytes | None:
        """What the API server is to trust: the operator's CA, or cert-manager's ca.crt."""
        if self.cafile is not None:
            return Path(self.cafile).read_bytes()
        return self.cadata

    def renew(self) -> bool:
        """Issue the server certificate again if it is missing or due; whether it was."""
        if self._files_dir is None or self.ca is None:
            return False
        now = datetime.now(UTC)
        if is_current(self._pair, self.ca, now, dns_names=self.dns_names):
            return False
        self._pair = pki.issue_server_cert(
            self.ca,
            self.dns_names,
            self.ip_addresses,
            days=SERVER_CERT_DAYS,
            common_name=(self.dns_names or self.ip_addresses or ["rdsgate-webhook"])[0],
        )
        _write_private(self._files_dir, PEM_FILE, self._pair.key_pem + self._pair.cert_pem)
        log.info(
            "issued the admission webhooks' server certificate for %s",
            ", ".join([*self.dns_names, *self.ip_addresses]),
        )
        return True

    def _register(self) -> None:
        reg = self.registration
        if reg is None:
            return
        try:
            register(reg.kube, reg.name, reg.target, self.ca_bundle, reg.namespaces, reg.timeout)
        except (KubeError, OSError) as exc:
            log.error(
                "cannot register the admission webhooks %s (retrying every %.0fs): %s",
                reg.name,
                UPKEEP_INTERVAL,
                exc,
            )

    def _upkeep_once(self) -> None:
        try:
            self.renew()
        except Exception:  # the next round tries again; serving goes on meanwhile
            log.exception("cannot renew the admission webhooks' server certificate")
        self._register()

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(UPKEEP_INTERVAL)
            await asyncio.to_thread(self._upkeep_once)

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async def normalised(request: Any, **kwargs: Any) -> Any:
            hook = kwargs.get("webhook")
            if hook not in KNOWN_PATHS:
                # kopf would answer a path with no handler "allowed": refuse it instead.
                return _refusal(request, f"no webhook at {hook!r}: use {' or '.join(KNOWN_PATHS)}")
            _fill_namespace(request)
            return await fn(request, **kwargs)

        upkeep = asyncio.create_task(self._upkeep())
        try:
            async for client_config in super().__call__(normalised):
                await asyncio.to_thread(self._register)
                yield client_config
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep


#: The handler ids the server answers for, which are the last part of the URL path.
KNOWN_PATHS = (VALIDATING_ID, MUTATING_ID)
PEM_FILE = "tls.pem"


def _refusal(review: Any, message: str) -> dict[str, Any]:
    request = review.get("request") if isinstance(review, dict) else None
    uid = request.get("uid", "") if isinstance(request, dict) else ""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": False, "status": {"code": 404, "message": message}},
    }


def _fill_namespace(review: Any) -> None:
    """The object of a CREATE may come without `metadata.namespace` (the request's URL says
    it): fill it in, so the handlers read the namespace from one place."""
    request = review.get("request") if isinstance(review, dict) else None
    if not isinstance(request, dict) or not request.get("namespace"):
        return
    for key in ("object", "oldObject"):
        obj = request.get(key)
        if isinstance(obj, dict):
            meta = obj.setdefault("metadata", {})
            if isinstance(meta, dict) and not meta.get("namespace"):
                meta["namespace"] = request["namespace"]
