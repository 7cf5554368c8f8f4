"""The CLI's world: the operator, a Database in front of the RDS Proxy stand-in, its real
proxy pod, and people with kubeconfigs of their own.

The `rdsgate` executable runs as a subprocess with a kubeconfig for the Kubernetes API
emulator (over HTTP) and its own cache directory. The session's real `rdsgate-operator`
turns the Database and Roles into the proxy's objects, and signs a client certificate
into the status of each Token the CLI creates for its own key pair; the proxy runs the
command of the Deployment the operator rendered, with its ConfigMap and Secrets mounted
in the kubelet's layout (tests/fixtures/pods.py), refreshed from the API every 0.2 s as
the kubelet's volume sync would (faster); the Pod object in the API points at it
(`status.podIP` 127.0.0.1), so the CLI's port-forward through `pods/portforward` reaches
it for real. `build_world` and `running_proxy_pod` make the same world for a module with
an operator of its own (test_cli_admission.py: with its admission webhooks).

People: each test makes its own (`person`), so Tokens, reuse and logout never mix. The
emulator answers SelfSubjectReview for a person's bearer token with their username; a
person made with `username=None` is unknown to it (404, as before Kubernetes 1.28), so the
CLI falls back to the kubeconfig's user name. Whatever a test does, no request a person's
kubeconfig sent may touch a Secret: `person` checks the emulator's request log after
every test.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from rdsgate.lab.lifecycle import stop_process
from rdsgate.lab.postgres import free_port
from rdsgate.lab.rdsproxy import RdsProxyStandIn
from rdsgate.operator.cli.main import main
from tests.fixtures.k8s import Api, ApiCall, ApiError, ApiServer, OperatorProcess, wait_for
from tests.fixtures.lab import DbIdentity, LabCA, database_manifest
from tests.fixtures.pods import Pod, mount_namespaces_unavailable

RDSGATE = Path(sys.executable).with_name("rdsgate")
ORDERS, BILLING = "orders", "billing"
POD_NAME = "orders-rdsgate-7d4b9-x2x7p"


ROLES: list[dict[str, Any]] = [
    {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Role",
        "metadata": {"name": "app-rw"},
        "spec": {
            "allow": {
                "databases": {"matchLabels": {"env": "test"}},
                "databaseNames": ["orders"],
                "databaseUsers": ["app", "^app_[a-z]+$"],
            },
            "deny": {"databaseUsers": ["postgres"]},
        },
    },
    {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Role",
        "metadata": {"name": "readonly"},
        "spec": {
            "allow": {"databases": {}, "databaseNames": ["*"], "databaseUsers": ["reporting"]}
        },
    },
]


def mark_rolled_out(api: Api, ns: str, name: str) -> None:
    """What the Deployment controller reports once the pods are ready."""
    dep = api.get("Deployment", ns, name)
    assert dep is not None
    n = dep["spec"]["replicas"]
    status = {"replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}
    status["observedGeneration"] = dep["metadata"]["generation"]
    api.patch("Deployment", ns, name, {"status": status}, sub="status")


def create_ready_pod(api: Api, ns: str, deployment: dict[str, Any], name: str) -> None:
    """The proxy's Pod as the API shows it once the kubelet runs it: ready, on 127.0.0.1."""
    template = deployment["spec"]["template"]
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
        }
    )
    api.patch(
        "Pod",
        ns,
        name,
        {
            "status": {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        },
        sub="status",
    )


@dataclass
class World:
    server: ApiServer
    api: Api
    ns: str
    port: int  # where the orders proxy listens (its container port)
    operator: OperatorProcess

    def ready(self, name: str) -> dict[str, Any] | None:
        return Api.condition(self.api.get("Database", self.ns, name), "Ready")


_namespaces = itertools.count(1)


def build_world(
    server: ApiServer,
    op: OperatorProcess,
    rds_proxy: RdsProxyStandIn,
    lab_ca: LabCA,
    roles: list[dict[str, Any]] = ROLES,
) -> World:
    """Databases `orders` (Ready, one proxy pod in the API) and `billing` (never Ready) and
    the `roles`, in a namespace of the CLI tests' own."""
    api = Api(server.url)
    ns = f"cli-{os.getpid()}-{next(_namespaces)}"
    port = free_port()
    ca_pem = lab_ca.cert_file.read_text()
    api.create(database_manifest(ORDERS, ns, rds_proxy, ca_pem, port))
    api.create(database_manifest(BILLING, ns, rds_proxy, ca_pem, free_port()))
    for role in roles:
        api.create({**role, "metadata": {**role["metadata"], "namespace": ns}})
    for kind, name in (
        ("ConfigMap", "rdsgate-ca"),
        ("ConfigMap", "orders-rdsgate"),
        ("Secret", "orders-rdsgate-tls"),
        ("Secret", "orders-rdsgate-access"),
        ("Service", ORDERS),
    ):
        wait_for(partial(api.get, kind, ns, name), f"{kind} {name}", 30, op.tail)
    deployment = wait_for(
        partial(api.get, "Deployment", ns, "orders-rdsgate"), "the Deployment", 30, op.tail
    )
    create_ready_pod(api, ns, deployment, POD_NAME)
    mark_rolled_out(api, ns, "orders-rdsgate")
    world = World(server, api, ns, port, op)
    wait_for(
        lambda: (c := world.ready(ORDERS)) and c["status"] == "True", "orders Ready", 30, op.tail
    )
    wait_for(
        lambda: (c := world.ready(BILLING)) and c["reason"] == "ProxiesNotReady",
        "billing to settle on ProxiesNotReady",
        30,
        op.tail,
    )
    return world


@pytest.fixture(scope="package")
def world(
    k8s_api: ApiServer, rdsgate_operator: OperatorProcess, rds_proxy: RdsProxyStandIn, lab_ca: LabCA
) -> World:
    """The world of `build_world` with the session's API emulator and operator, and the Roles
    `app-rw` and `readonly`."""
    return build_world(k8s_api, rdsgate_operator, rds_proxy, lab_ca)


class Kubelet:
    """Refreshes the pod's volumes from the API every 0.2 s, as the kubelet's sync does."""

    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(LookupError, ApiError, OSError):
                self.pod.sync()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class ProxyPod:
    process: subprocess.Popen[bytes]
    log: Path

    def audit(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line) if line.startswith("{") else None
                if isinstance(doc, dict) and "event" in doc:
                    out.append(doc)
        return out


@contextlib.contextmanager
def running_proxy_pod(world: World, identity: DbIdentity, root: Path) -> Iterator[ProxyPod]:
    """The orders proxy, running the operator-rendered Deployment's command and volumes."""
    reason = mount_namespaces_unavailable()
    if reason is not None:
        pytest.skip(reason)
    deployment = world.api.get("Deployment", world.ns, "orders-rdsgate")
    assert deployment is not None
    pod = Pod(world.api, deployment, root)
    log = root / "proxy.log"
    with log.open("wb") as out:
        process = pod.start(dict(os.environ) | identity.env, stdout=out, stderr=out)
    kubelet = Kubelet(pod)

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the proxy exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", world.port), timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_for(listening, "the proxy to listen", 30, log.read_text)
        yield ProxyPod(process, log)
    finally:
        kubelet.stop()
        stop_process(process, 20)


@pytest.fixture(scope="package")
def proxy_pod(
    world: World, proxy_identity: DbIdentity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyPod]:
    with running_proxy_pod(world, proxy_identity, tmp_path_factory.mktemp("pod")) as pod:
        yield pod


# People and the CLI


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@dataclass
class Person:
    username: str | None  # what SelfSubjectReview says; None: the API does not know
    kubeconfig_user: str
    token: str
    kubeconfig: Path
    cache: Path
    ns: str
    in_process: Callable[[Person, tuple[str, ...]], Result]
    env_extra: dict[str, str] = field(default_factory=dict)

    def main(self, *args: str) -> Result:
        """`rdsgate ARGS` as this person, in this process (quick; for commands that end)."""
        return self.in_process(self, args)

    def env(self) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PG") and k not in ("KUBECONFIG", "XDG_CACHE_HOME")
        }
        # COLUMNS: rich wraps what it prints to a pipe at 80 columns otherwise.
        return base | {
            "KUBECONFIG": str(self.kubeconfig),
            "XDG_CACHE_HOME": str(self.cache),
            "COLUMNS": "1000",
        }

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`rdsgate ARGS` as this person; its output and exit code."""
        return subprocess.run(
            [str(RDSGATE), *args],
            env=self.env() | self.env_extra,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str, stderr: Path) -> Background:
        """`rdsgate ARGS` in the background, its stdout read line by line."""
        with stderr.open("w") as err:
            process = subprocess.Popen(
                [str(RDSGATE), *args],
                env=self.env() | self.env_extra,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        return Background(process, stderr)

    def tokens(self, api: Api) -> list[dict[str, Any]]:
        """The Tokens the CLI labelled as this person's."""
        return [
            t
            for t in api.objects("Token", self.ns)
            if (t["metadata"].get("annotations") or {}).get("rdsgate.dev/owner-name")
            == (self.username or self.kubeconfig_user)
        ]

    @property
    def keys(self) -> Path:
        """Where `db connect` keeps this person's key pairs for the world's namespace."""
        return self.cache / "rdsgate" / "kmock" / self.ns

    def calls(self, server: ApiServer) -> list[ApiCall]:
        """Every request this person's kubeconfig sent to the API."""
        return [c for c in list(server.emulator.calls) if c.user == self.token]


class Background:
    def __init__(self, process: subprocess.Popen[str], stderr: Path) -> None:
        self.process = process
        self.stderr = stderr
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def printed_env(self, timeout: float = 45) -> tuple[dict[str, str], str]:
        """The `export K=V` lines up to the `# rdsgate:` line, and that line."""
        deadline = time.monotonic() + timeout
        env: dict[str, str] = {}
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no '# rdsgate:' line within {timeout}s; stderr:\n{self.err()}")
            if line is None:
                pytest.fail(f"rdsgate exited with {self.process.wait()}; stderr:\n{self.err()}")
            if line.startswith("# rdsgate:"):
                return env, line
            words = shlex.split(line)
            assert words[0] == "export" and len(words) == 2, line
            key, _, value = words[1].partition("=")
            env[key] = value

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def interrupt(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def write_kubeconfig(path: Path, server: str, user: str, token: str, ns: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "kmock",
                        "context": {"cluster": "kmock", "user": user, "namespace": ns},
                    }
                ],
                "current-context": "kmock",
            }
        )
    )
    return path


_people = itertools.count(1)
MakePerson = Callable[..., Person]


def secret_calls(calls: list[ApiCall]) -> list[ApiCall]:
    return [c for c in calls if c.resource == "secrets"]


@pytest.fixture
def person(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MakePerson]:
    """Makes people: `person("alice@example.com")`; `person(None)` is unknown to the API.
    After the test: none of them sent a request about a Secret."""
    people: list[Person] = []

    def in_process(who: Person, args: tuple[str, ...]) -> Result:
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("PG")]:
                m.delenv(key)
            for key, value in (who.env() | who.env_extra).items():
                m.setenv(key, value)
            capsys.readouterr()
            code = main(list(args))
            captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def make(username: str | None, kubeconfig_user: str = "kmock-user") -> Person:
        n = next(_people)
        token = f"cli-person-{n}"
        if username is not None:
            world.server.emulator.users[token] = {
                "username": username,
                "groups": ["system:authenticated"],
            }
        home = tmp_path / f"person-{n}"
        home.mkdir()
        kubeconfig = write_kubeconfig(
            home / "kubeconfig", world.server.url, kubeconfig_user, token, world.ns
        )
        cache = home / "cache"
        who = Person(username, kubeconfig_user, token, kubeconfig, cache, world.ns, in_process)
        people.append(who)
        return who

    yield make
    for who in people:
        assert secret_calls(who.calls(world.server)) == [], f"{who.username} touched Secrets"


def psql(env: dict[str, str], sql: str) -> subprocess.CompletedProcess[str]:
    """psql with exactly this PG* environment (as `eval "$(... --print-env)"` would give)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        ["psql", "-XAtc", sql],
        env=base | env | {"PGCONNECT_TIMEOUT": "10"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
