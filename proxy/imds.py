"""Probing the EC2 instance metadata service the way botocore uses it, to explain failures.

botocore asks IMDS for a session token (`PUT /latest/api/token`) and waits
`AWS_METADATA_SERVICE_TIMEOUT` (1 s) for it; if none comes it falls back to IMDSv1, a
token-less GET, which a node with `HttpTokens: required` answers with 401. On EKS the PUT
response leaves the instance with an IP TTL of `HttpPutResponseHopLimit`; with the default
of 1 it dies at the node's bridge and never reaches a pod, while TCP connects and
token-less GETs (ordinary TTL) still answer. This module takes each of those steps on its
own, with timings, so the diagnosis can say which one failed.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "http://169.254.169.254"
IPV6_ENDPOINT = "http://[fd00:ec2::254]"
TOKEN_PATH = "/latest/api/token"  # noqa: S105
ROLE_PATH = "/latest/meta-data/iam/security-credentials/"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"

Verdict = Literal["disabled", "unreachable", "imdsv2", "hop-limit", "token-refused", "unknown"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request to IMDS: its HTTP status, or the error, and how long it took."""

    ok: bool
    elapsed_ms: float
    status: int | None = None
    error: str | None = None
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "elapsedMs": round(self.elapsed_ms, 1)}
        if self.status is not None:
            out["status"] = self.status
        if self.error is not None:
            out["error"] = self.error
        if self.timed_out:
            out["timedOut"] = True
        return out


@dataclass(frozen=True, slots=True)
class ImdsProbe:
    endpoint: str
    timeout: float
    disabled: bool = False
    tcp: Attempt | None = None
    token_put: Attempt | None = None
    tokenless_get: Attempt | None = None
    #: Whether a metadata read worked without a token (HttpTokens: optional).
    imdsv1_enabled: bool = False
    instance_id: str | None = None
    role_name: str | None = None

    @property
    def verdict(self) -> Verdict:
        if self.disabled:
            return "disabled"
        if self.tcp is None or not self.tcp.ok:
            return "unreachable"
        if self.token_put is not None and self.token_put.ok:
            return "imdsv2"
        if self.token_put is not None and self.token_put.timed_out:
            # The request went out on a working TCP connection; only the answer is missing.
            return "hop-limit"
        if self.token_put is not None and self.token_put.status in (403, 404, 405):
            return "token-refused"
        return "unknown"

    def to_evidence(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "timeoutSeconds": self.timeout,
            "verdict": self.verdict,
        }
        if self.disabled:
            out["disabledBy"] = "AWS_EC2_METADATA_DISABLED=true"
        for name, attempt in (
            ("tcpConnect", self.tcp),
            ("tokenPut", self.token_put),
            ("tokenlessGet", self.tokenless_get),
        ):
            if attempt is not None:
                out[name] = attempt.to_dict()
        if self.tokenless_get is not None:
            out["imdsv1Enabled"] = self.imdsv1_enabled
        if self.instance_id:
            out["instanceId"] = self.instance_id
        if self.role_name:
            out["instanceProfileRole"] = self.role_name
        return out


def metadata_endpoint(env: Mapping[str, str] | None = None) -> str:
    """The IMDS base URL botocore would use: the override, IPv6 mode, or 169.254.169.254."""
    env = os.environ if env is None else env
    custom = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
    if custom:
        return custom.rstrip("/")
    if env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "").lower() == "ipv6":
        return IPV6_ENDPOINT
    return DEFAULT_ENDPOINT


def metadata_disabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("AWS_EC2_METADATA_DISABLED", "false").lower() == "true"


def botocore_timeout(env: Mapping[str, str] | None = None) -> float:
    """How long botocore waits on each IMDS request (AWS_METADATA_SERVICE_TIMEOUT, default 1 s)."""
    env = os.environ if env is None else env
    try:
        return max(0.1, float(env.get("AWS_METADATA_SERVICE_TIMEOUT", "1")))
    except ValueError:
        return 1.0


def _host_port(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    return parts.hostname or "169.254.169.254", parts.port or 80


def _request(
    endpoint: str,
    method: str,
    path: str,
    headers: Mapping[str, str],
    timeout: float,
) -> tuple[Attempt, bytes]:
    host, port = _host_port(endpoint)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=dict(headers))
        response = conn.getresponse()
        body = response.read(64 * 1024)
    except TimeoutError:
        return Attempt(
            ok=False,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            error=f"no answer within {timeout:g}s",
            timed_out=True,
        ), b""
    except (OSError, http.client.HTTPException) as exc:
        return Attempt(
            ok=False,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            error=str(exc) or type(exc).__name__,
        ), b""
    finally:
        conn.close()
    elapsed = (time.perf_counter() - started) * 1000
    return Attempt(ok=response.status == 200, elapsed_ms=elapsed, status=response.status), body


def _tcp_connect(endpoint: str, timeout: float) -> Attempt:
    host, port = _host_port(endpoint)
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        return Attempt(
            ok=False,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            error=f"TCP connect timed out after {timeout:g}s",
            timed_out=True,
        )
    except OSError as exc:
        return Attempt(
            ok=False,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            error=exc.strerror or str(exc),
        )
    return Attempt(ok=True, elapsed_ms=(time.perf_counter() - started) * 1000)


def _text(body: bytes) -> str | None:
    text = body.decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else None


def probe(
    endpoint: str | None = None,
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> ImdsProbe:
    """TCP connect, token PUT and token-less GET against IMDS, each with its own timeout.

    Honours `AWS_EC2_METADATA_DISABLED` like botocore: when set, nothing is sent.
    """
    env = os.environ if env is None else env
    endpoint = (endpoint or metadata_endpoint(env)).rstrip("/")
    timeout = botocore_timeout(env) if timeout is None else timeout
    if metadata_disabled(env):
        return ImdsProbe(endpoint=endpoint, timeout=timeout, disabled=True)
    tcp = _tcp_connect(endpoint, timeout)
    if not tcp.ok:
        return ImdsProbe(endpoint=endpoint, timeout=timeout, tcp=tcp)
    put, token_body = _request(
        endpoint,
        "PUT",
        TOKEN_PATH,
        {"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        timeout,
    )
    get, role_body = _request(endpoint, "GET", ROLE_PATH, {}, timeout)
    token = token_body.decode().strip() if put.ok else None
    auth = {"X-aws-ec2-metadata-token": token} if token else None
    instance_id = role = None
    if auth is not None or get.ok:
        headers = auth or {}
        id_attempt, id_body = _request(endpoint, "GET", INSTANCE_ID_PATH, headers, timeout)
        instance_id = _text(id_body) if id_attempt.ok else None
        if auth is not None:
            role_attempt, role_body = _request(endpoint, "GET", ROLE_PATH, auth, timeout)
            role = _text(role_body) if role_attempt.ok else None
        else:
            role = _text(role_body)
    return ImdsProbe(
        endpoint=endpoint,
        timeout=timeout,
        tcp=tcp,
        token_put=put,
        tokenless_get=get,
        imdsv1_enabled=get.ok,
        instance_id=instance_id,
        role_name=role,
    )
