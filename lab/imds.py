"""The IMDSv2 hop-limit lab: an instance metadata service, a node and a pod in network namespaces.

On EKS a pod reaches 169.254.169.254 through its node, one routed hop away. IMDS sends
the answer to `PUT /latest/api/token` with an IP TTL of `HttpPutResponseHopLimit`; with
the default of 1 the node drops it, so the pod's PUT times out while TCP connects and
token-less GETs (401 under `HttpTokens: required`) still answer. This lab builds exactly
that, with no cloud:

    [imds] eth0 169.254.169.254/24 -- up0 169.254.169.1/24 [node]
    [node] pod0 169.254.170.1/24 -- eth0 169.254.170.2/24 [pod]

`node` forwards (net.ipv4.ip_forward=1) and silently drops 169.254.172.0/24 (a blackhole
route), an "unroutable VPC subnet" for connect-timeout tests. The IMDS server runs in
this process with its listening socket in `imds`; it sets `IP_TTL` to the hop limit on
the accepted socket before answering a token PUT, and serves role credentials (static,
or fresh from STS). Servers of the tests (moto, TLS) can be placed in any namespace with
`run_in_netns`; programs run in one with `ip netns exec` (`ImdsLab.exec`).

Namespace names are unique per lab, and `close()` removes them and their /etc/netns files.
Needs root and iproute2; `netns_unavailable_reason()` says why not when they are missing.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
IMDS_ADDRESS = "169.254.169.254"
NODE_IMDS_SIDE = "169.254.169.1"
NODE_POD_SIDE = "169.254.170.1"
POD_ADDRESS = "169.254.170.2"
#: Addresses here are routed from the pod to the node and silently dropped there.
UNROUTABLE_SUBNET = "169.254.172.0/24"
UNROUTABLE_ADDRESS = "169.254.172.10"
DEFAULT_TTL = 64
HttpTokens = Literal["required", "optional"]


class NetnsError(RuntimeError):
    pass


def netns_unavailable_reason() -> str | None:
    """Why network-namespace labs cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root, as CI does)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed: apt-get install iproute2"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces"
    return None


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(name: str, fn: Callable[[], T]) -> T:
    """Calls `fn` in a new thread that has joined network namespace `name`.

    Sockets created there stay in that namespace, and threads that `fn` starts inherit
    it, so a server started this way keeps serving inside the namespace.
    """
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            _setns(f"/run/netns/{name}")
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


# ---------------------------------------------------------------------------------------
# Credentials the IMDS serves


@dataclass(frozen=True)
class RoleCredentials:
    access_key_id: str
    secret_access_key: str
    token: str
    expiration: datetime

    def document(self) -> dict[str, str]:
        """The body of GET /latest/meta-data/iam/security-credentials/ROLE."""
        now = datetime.now(UTC)
        return {
            "Code": "Success",
            "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Type": "AWS-HMAC",
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.token,
            "Expiration": self.expiration.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


_LAB_KEY_ID = "ASIAIMDSLABEXAMPLE01"
_LAB_SECRET = "imds-lab-secret-key"
_LAB_TOKEN = "imds-lab-session-token"


def static_credentials(
    access_key_id: str = _LAB_KEY_ID,
    secret_access_key: str = _LAB_SECRET,
    token: str = _LAB_TOKEN,
    lifetime: timedelta = timedelta(hours=6),
) -> Callable[[], RoleCredentials]:
    creds = RoleCredentials(access_key_id, secret_access_key, token, datetime.now(UTC) + lifetime)
    return lambda: creds


def sts_credentials(
    endpoint_url: str,
    role_arn: str,
    session_name: str,
    *,
    region: str = "us-east-1",
    access_key_id: str = _LAB_KEY_ID,
    secret_access_key: str = _LAB_SECRET,
) -> Callable[[], RoleCredentials]:
    """Credentials of `role_arn` assumed through STS at `endpoint_url` (moto), as EC2 does."""
    import boto3

    def fetch() -> RoleCredentials:
        sts = boto3.client(
            "sts",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
        )
        try:
            out = sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name)["Credentials"]
        finally:
            sts.close()
        return RoleCredentials(
            out["AccessKeyId"], out["SecretAccessKey"], out["SessionToken"], out["Expiration"]
        )

    cache: list[RoleCredentials] = []

    def cached() -> RoleCredentials:
        if not cache or cache[0].expiration - datetime.now(UTC) < timedelta(minutes=5):
            cache[:] = [fetch()]
        return cache[0]

    return cached


# ---------------------------------------------------------------------------------------
# The metadata service


@dataclass(frozen=True)
class ImdsRequest:
    method: str
    path: str
    with_token: bool
    status: int
    client: str


@dataclass
class ImdsSettings:
    """What `aws ec2 modify-instance-metadata-options` changes, plus what the instance is."""

    hop_limit: int = 1
    http_tokens: HttpTokens = "required"
    instance_id: str = "i-0123456789abcdef0"
    role_name: str = "eks-node-role"
    region: str = "eu-west-1"
    account_id: str = "123456789012"
    credentials: Callable[[], RoleCredentials] = field(default_factory=static_credentials)


class _Handler(BaseHTTPRequestHandler):
    server: ImdsServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _set_ttl(self, ttl: int) -> None:
        self.connection.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)

    def _answer(self, status: int, body: str | bytes = b"", ctype: str = "text/plain") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _record(self, status: int, with_token: bool) -> None:
        self.server.record(
            ImdsRequest(self.command, self.path, with_token, status, self.client_address[0])
        )

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        settings = self.server.settings
        if self.path != "/latest/api/token":
            self._set_ttl(DEFAULT_TTL)
            self._record(404, False)
            self._answer(404, "Not Found")
            return
        ttl_header = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl_header.isdigit() or not 1 <= int(ttl_header) <= 21600:
            self._set_ttl(DEFAULT_TTL)
            self._record(400, False)
            self._answer(400, "Bad Request")
            return
        token = self.server.issue_token(int(ttl_header))
        # What HttpPutResponseHopLimit does: the answer may cross this many hops.
        self._set_ttl(settings.hop_limit)
        self._record(200, False)
        self._answer(200, token)

    def do_GET(self) -> None:
        self._set_ttl(DEFAULT_TTL)
        settings = self.server.settings
        token = self.headers.get("X-aws-ec2-metadata-token")
        if token is not None and not self.server.valid_token(token):
            self._record(401, True)
            self._answer(401, "Unauthorized")
            return
        if token is None and settings.http_tokens == "required":
            self._record(401, False)
            self._answer(401, "Unauthorized")
            return
        status, body, ctype = self._route(settings)
        self._record(status, token is not None)
        self._answer(status, body, ctype)

    def _route(self, s: ImdsSettings) -> tuple[int, str, str]:
        path = self.path.split("?", 1)[0]
        creds_path = "/latest/meta-data/iam/security-credentials/"
        if path == "/latest/meta-data/instance-id":
            return 200, s.instance_id, "text/plain"
        if path == "/latest/meta-data/placement/region":
            return 200, s.region, "text/plain"
        if path == creds_path.rstrip("/") or path == creds_path:
            return 200, s.role_name, "text/plain"
        if path == creds_path + s.role_name:
            return 200, json.dumps(s.credentials().document()), "text/plain"
        if path == "/latest/dynamic/instance-identity/document":
            doc = {"instanceId": s.instance_id, "region": s.region, "accountId": s.account_id}
            return 200, json.dumps(doc), "application/json"
        return 404, "Not Found", "text/plain"


class ImdsServer(ThreadingHTTPServer):
    """IMDS on an already bound socket (the lab binds it inside the `imds` namespace)."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, settings: ImdsSettings) -> None:
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.settings = settings
        self.requests: list[ImdsRequest] = []
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def issue_token(self, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + ttl
        return token

    def valid_token(self, token: str) -> bool:
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and expiry > time.monotonic()

    def record(self, request: ImdsRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="imds", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()


# ---------------------------------------------------------------------------------------
# The namespaces


def _unique_suffix() -> str:
    return f"{os.getpid() % 100000}{secrets.token_hex(2)}"


class ImdsLab:
    """Three namespaces (`imds`, `node`, `pod`) and an IMDS whose PUT answers obey a hop limit."""

    def __init__(
        self,
        settings: ImdsSettings | None = None,
        *,
        hosts: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings or ImdsSettings()
        suffix = _unique_suffix()
        self.imds_ns = f"rdsg-imds-{suffix}"
        self.node_ns = f"rdsg-node-{suffix}"
        self.pod_ns = f"rdsg-pod-{suffix}"
        self.hosts = dict(hosts or {})
        self.server: ImdsServer | None = None
        self._created: list[str] = []
        self._cleanups: list[Callable[[], None]] = []

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.imds_ns, self.node_ns, self.pod_ns)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        reason = netns_unavailable_reason()
        if reason is not None:
            raise NetnsError(reason)
        for ns in self.namespaces:
            _ip("netns", "add", ns)
            self._created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        imds, node, pod = self.namespaces
        _ip("-n", imds, "link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", node)
        _ip("-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "pod0", "netns", node)
        for ns, dev, addr in (
            (imds, "eth0", f"{IMDS_ADDRESS}/24"),
            (node, "up0", f"{NODE_IMDS_SIDE}/24"),
            (node, "pod0", f"{NODE_POD_SIDE}/24"),
            (pod, "eth0", f"{POD_ADDRESS}/24"),
        ):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", imds, "route", "add", "169.254.170.0/24", "via", NODE_IMDS_SIDE)
        _ip("-n", pod, "route", "add", "default", "via", NODE_POD_SIDE)
        _ip("-n", node, "route", "add", "blackhole", UNROUTABLE_SUBNET)
        subprocess.run(
            ["ip", "netns", "exec", node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
            check=True,
            capture_output=True,
        )
        self._write_etc(pod)
        sock = run_in_netns(imds, lambda: socket.create_server((IMDS_ADDRESS, 80)))
        self.server = ImdsServer(sock, self.settings)
        self.server.start()

    def _write_etc(self, ns: str) -> None:
        """/etc/netns/NS/{hosts,resolv.conf}, which `ip netns exec` mounts over /etc.

        Unknown names fail at once (no resolver answers in the namespace) rather than
        going to the machine's resolver.
        """
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        self._cleanups.append(lambda: shutil.rmtree(etc, ignore_errors=True))
        lines = ["127.0.0.1 localhost"] + [f"{ip} {name}" for name, ip in self.hosts.items()]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def set_hop_limit(self, hop_limit: int) -> None:
        """Like `aws ec2 modify-instance-metadata-options --http-put-response-hop-limit N`."""
        self.settings.hop_limit = hop_limit

    def add_cleanup(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def run_in(self, ns: str, fn: Callable[[], T]) -> T:
        return run_in_netns(ns, fn)

    def exec(
        self,
        argv: Sequence[str],
        *,
        ns: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Runs a program in a namespace (the pod's by default), as `ip netns exec` does."""
        return subprocess.run(
            ["ip", "netns", "exec", ns or self.pod_ns, *argv],
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        while self._cleanups:
            self._cleanups.pop()()
        while self._created:
            ns = self._created.pop()
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
