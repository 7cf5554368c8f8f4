"""A local TCP port forwarded to a pod behind a Service, through the API's `pods/portforward`.

What `kubectl port-forward svc/NAME LOCAL:PORT` does, without needing kubectl: the
Service's port resolves to its targetPort on one Ready pod that the Service's selector
picks; every accepted local connection opens its own websocket to
`pods/<pod>/portforward` (the `kubernetes` client's `stream.portforward`, which speaks the
`v4.channel.k8s.io` protocol) and is bridged byte for byte. When a forward fails (the pod
went away), the next connection picks a pod again.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CliError
from .kubeapi import KubeApi, core_path
from .kubeconfig import Cluster, connect


@dataclass(frozen=True)
class Target:
    pod: str
    port: int  # the container port on that pod


def _ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _container_port(pod: Mapping[str, Any], target: int | str) -> int | None:
    if isinstance(target, int):
        return target
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return None


def resolve(api: KubeApi, namespace: str, service: str, service_port: int) -> Target:
    """The Ready pod and container port that `service:service_port` leads to."""
    svc = api.get(core_path(namespace, "services", service), f"read Service {namespace}/{service}")
    if svc is None:
        raise CliError(
            f"Service {namespace}/{service} not found: the operator creates it for the Database; "
            "see the Database's conditions (kubectl get rdsdb -o wide)",
            exit_code=4,
        )
    spec = svc.get("spec") or {}
    entry = next((p for p in spec.get("ports") or [] if p.get("port") == service_port), None)
    if entry is None:
        raise CliError(f"Service {namespace}/{service} has no port {service_port}", exit_code=4)
    target: int | str = entry.get("targetPort") or service_port
    selector = spec.get("selector") or {}
    if not selector:
        raise CliError(
            f"Service {namespace}/{service} has no selector, so there is no pod to forward to; "
            "use --address HOST:PORT to connect to it directly",
            exit_code=4,
        )
    label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    pods = api.list(
        core_path(namespace, "pods"),
        f"list the pods of Service {namespace}/{service}",
        selector=label_selector,
    )
    ready = sorted((p for p in pods if _ready(p)), key=lambda p: str(p["metadata"]["name"]))
    if not ready:
        seen = ", ".join(
            f"{p['metadata']['name']} ({(p.get('status') or {}).get('phase', 'Pending')})"
            for p in pods
        )
        raise CliError(
            f"no Ready pod behind Service {namespace}/{service} (selector {label_selector}"
            + (f"; pods: {seen}" if seen else "; no pods")
            + f"): kubectl -n {namespace} get pods -l {label_selector}",
            exit_code=4,
        )
    for pod in ready:
        port = _container_port(pod, target)
        if port is not None:
            return Target(str(pod["metadata"]["name"]), port)
    raise CliError(
        f"the pods of Service {namespace}/{service} have no container port named {target!r}",
        exit_code=4,
    )


class PortForwarder:
    """Serves a local listener whose connections reach a pod behind a Service."""

    def __init__(
        self,
        cluster: Cluster,
        service: str,
        service_port: int,
        *,
        local_host: str = "127.0.0.1",
        local_port: int = 0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        # Its own ApiClient: stream.portforward swaps the client's request method while it
        # opens a websocket, which must not race the command's other API calls.
        self._cluster = connect(cluster.context, cluster.namespace)
        self.namespace = cluster.namespace
        self.service = service
        self.service_port = service_port
        self._local = (local_host, local_port)
        self._on_error = on_error or (lambda message: None)
        self._open_lock = threading.Lock()
        self._target: Target | None = None
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self._active: set[socket.socket] = set()
        self._active_lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def target(self) -> Target | None:
        return self._target

    @property
    def local_port(self) -> int:
        assert self._listener is not None, "start() first"
        return int(self._listener.getsockname()[1])

    @property
    def local_host(self) -> str:
        return self._local[0]

    def start(self) -> Target:
        """Picks the pod and listens; raises CliError when there is nothing to forward to."""
        target = resolve(KubeApi(self._cluster), self.namespace, self.service, self.service_port)
        self._target = target
        try:
            self._listener = socket.create_server(self._local)
        except OSError as exc:
            raise CliError(
                f"cannot listen on {self._local[0]}:{self._local[1]}: {exc.strerror or exc}"
                " - choose another --local-port",
                exit_code=2,
            ) from exc
        self._listener.settimeout(1.0)  # a backstop: close() also shuts the socket down
        threading.Thread(target=self._accept_loop, name="rdsgate-forward", daemon=True).start()
        return target

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        with self._active_lock:
            active = list(self._active)
        for sock in active:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> PortForwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _open(self) -> tuple[Any, Target]:
        from kubernetes import client
        from kubernetes.stream import portforward

        with self._open_lock:
            target = self._target
            if target is None:
                target = resolve(
                    KubeApi(self._cluster), self.namespace, self.service, self.service_port
                )
                self._target = target
            core = client.CoreV1Api(self._cluster.api)
            forward = portforward(
                core.connect_get_namespaced_pod_portforward,
                target.pod,
                self.namespace,
                ports=str(target.port),
            )
        return forward, target

    def _fail(self, message: str) -> None:
        self.last_error = message
        self._target = None  # pick a pod again for the next connection
        self._on_error(message)

    def _serve(self, conn: socket.socket) -> None:
        with self._active_lock:
            self._active.add(conn)
        try:
            try:
                forward, target = self._open()
            except CliError as exc:
                self._fail(str(exc))
                return
            except Exception as exc:  # the client wraps every handshake failure in ApiException
                reason = getattr(exc, "reason", None) or exc
                pod = self._target.pod if self._target else "?"
                self._fail(f"cannot open a port-forward to pod {self.namespace}/{pod}: {reason}")
                return
            remote = forward.socket(target.port)
            try:
                _bridge(conn, remote)
            finally:
                _close_gently(remote)
            error = forward.error(target.port)
            if error:
                self._fail(
                    f"port-forward to pod {self.namespace}/{target.pod}:{target.port}: {error}"
                )
        finally:
            with self._active_lock:
                self._active.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()


def _close_gently(sock: Any, linger: float = 2.0) -> None:
    """Half-closes, reads what is still coming, then closes: a socket closed with unread
    data is reset, and the `kubernetes` client's forwarding thread at the other end of the
    pair then dies with a ConnectionResetError traceback on the user's terminal."""
    deadline = time.monotonic() + linger
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    with contextlib.suppress(OSError):
        sock.close()


def _bridge(local: socket.socket, remote: Any) -> None:
    """Copies both ways until either side closes."""
    pair = [local, remote]
    try:
        while True:
            readable, _, _ = select.select(pair, [], [])
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (remote if sock is local else local).sendall(data)
    except OSError:
        return
