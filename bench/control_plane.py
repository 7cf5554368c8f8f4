"""Control-plane scale: the real `rdsgate-operator` against the Kubernetes API emulator,
and the proxy with a large access file.

1. **Operator** (`--tokens`, default 1,000; `--databases`, default 50; one namespace): the
   API emulator of the tests (`tests/fixtures/k8s.py`, served over HTTP from this process)
   and the real operator process on a kubeconfig pointing at it. One Role selecting every
   Database, then the Databases and the Tokens are created as fast as one client can.

   - `converge_s`: from the first create until the operator has **converged**: every
     Database has all of its children (ServiceAccount, ConfigMap, server-certificate and
     access Secrets, Deployment, Service) and every access Secret's bundle holds exactly
     the grant of every Token (checked by decoding each bundle as the proxy does);
   - `role_edit_s`: from a change to the Role (its `maxConnections`) until every access
     Secret carries it (seen in the emulator's write log, then checked in every bundle);
   - `requests`: the API requests the operator made (counted in the emulator by the
     operator's bearer token): during convergence, per kind of reconcile run meanwhile
     (the operator's own `rdsgate_operator_reconciles_total`), for the Role edit (one
     namespace compile), and for one Database reconcile (set off by a Deployment status
     change, as the Deployment controller makes them), each until the operator was quiet
     for `--quiet` seconds (default 2);
   - `operator_rss_mib` after convergence and `operator_peak_rss_mib` (VmHWM).

   The periodic timers (diagnosis, resync, access recheck) are set to an hour so that
   they do not mix into the counts. The emulator is Python in this process: its share of
   the time is in the figures, as a real API server's would be.

2. **Access file** (`--grants`, default 10,000): a bundle as the operator renders it
   (each grant with a secret digest, a requester and an expiry, one Role), its size as
   YAML and as written to the Secret (gzip-compressed past `COMPRESS_ABOVE`), the grants
   that fit in the 1 MiB limit in each form (extrapolated from the bytes per grant), the
   time `load_access` takes (what the proxy runs on a start and a reload), and a running
   `rdsgate-proxy`: its RSS with that file against a one-grant file, and the time from
   the file's swap (in the kubelet's layout) to the proxy's "loaded" log line, with the
   longest wait for an answer to an SSLRequest on its listener meanwhile (the reload runs
   on the event loop that serves the listener).

`--json` prints only the figures, as JSON, on stdout; progress goes to stderr.
`tests/bench/test_control_plane_smoke.py` runs it tiny in CI.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/control_plane.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from bench.rig import (
    STATIC_AWS_ENV,
    BenchError,
    Service,
    clean_env,
    http_get,
    proxy_command,
    rss_bytes,
)
from rdsgate.lab.kubelet import ProjectedVolume
from rdsgate.lab.postgres import free_port
from rdsgate.operator import access, pki, render
from rdsgate.proxy.access import (
    AccessFile,
    Grant,
    LabelSelector,
    Role,
    Rule,
    access_bytes,
    load_access,
)
from tests.fixtures.k8s import OPERATOR_NAMESPACE, Api, ApiServer, operator_command

NAMESPACE = "bench"
ROLE = "app-rw"
#: The operator's bearer token in the emulator's kubeconfig (how its requests are told apart).
OPERATOR_TOKEN = "test-token"  # noqa: S105 - the emulator's fixed name for the kubeconfig user
#: The operator is quiet when it made no request for this long (`--quiet`).
QUIET = 2.0
HOUR = "3600"
MIB = 1024 * 1024


def progress(message: str) -> None:
    print(f"[control-plane] {message}", file=sys.stderr, flush=True)


def wait(what: str, probe: Callable[[], bool], timeout: float, interval: float = 0.2) -> float:
    """Polls `probe` until it holds; the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)  # polling a condition in another process; nothing to wait on
    return time.monotonic()


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the largest resident set the process has had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"/proc/{pid}/status has no VmHWM line")


# -- 1. the operator ----------------------------------------------------------------------


def _database(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Database",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"env": "bench"}},
        "spec": {
            "engine": "postgres",
            "endpoint": f"{name}.proxy-abc123.eu-west-1.rds.amazonaws.com:5432",
            "aws": {"region": "eu-west-1"},
            "proxy": {"replicas": 1},
        },
    }


def _role(max_connections: int) -> dict[str, Any]:
    return {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Role",
        "metadata": {"name": ROLE, "namespace": NAMESPACE},
        "spec": {
            "allow": {"databases": {}, "databaseNames": ["app"], "databaseUsers": ["app"]},
            "options": {"maxConnections": max_connections},
        },
    }


def _token(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Token",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"roles": [ROLE]},
    }


class Cluster:
    """The emulator, its client, and the operator's requests counted in it."""

    def __init__(self, server: ApiServer, quiet_s: float = QUIET) -> None:
        self.server = server
        self.quiet_s = quiet_s
        self.api = Api(server.url)

    def operator_requests(self) -> int:
        return sum(1 for call in self.server.emulator.calls if call.user == OPERATOR_TOKEN)

    def quiet(self, since: int | None = None, timeout: float = 120) -> int:
        """Waits until the operator made no request for QUIET seconds; its request count."""
        deadline = time.monotonic() + timeout
        last, last_change = self.operator_requests(), time.monotonic()
        while time.monotonic() - last_change < self.quiet_s:
            if time.monotonic() > deadline:
                raise BenchError(f"the operator was not quiet within {timeout:g}s")
            time.sleep(0.1)  # sampling a counter
            now = self.operator_requests()
            if now != last:
                last, last_change = now, time.monotonic()
        return last - (since or 0)

    def access_writes_since(self, index: int) -> set[str]:
        """The access Secrets written since `index` in the emulator's write log."""
        return {
            path.split("/")[-1]
            for _verb, path in self.server.emulator.writes[index:]
            if path.startswith(f"secrets/{NAMESPACE}/") and path.endswith("-rdsgate-access")
        }


def _children_exist(api: Api, databases: list[str]) -> bool:
    names = {
        kind: {o["metadata"]["name"] for o in api.objects(kind, NAMESPACE)}
        for kind in ("ServiceAccount", "ConfigMap", "Deployment", "Service")
    }
    for db in databases:
        child = f"{db}-rdsgate"
        if not (
            child in names["ServiceAccount"]
            and child in names["ConfigMap"]
            and child in names["Deployment"]
            and db in names["Service"]
        ):
            return False
    return True


def _bundles(api: Api) -> dict[str, AccessFile]:
    """Every access Secret's bundle, decoded as the proxy decodes the mounted file."""
    found = {}
    for secret in api.objects("Secret", NAMESPACE):
        name = secret["metadata"]["name"]
        if name.endswith("-rdsgate-access"):
            raw = base64.b64decode(secret["data"][render.ACCESS_KEY])
            found[name] = AccessFile.model_validate(yaml.safe_load(access_bytes(raw)))
    return found


def _converged(api: Api, databases: list[str], identities: set[str]) -> bool:
    """Every Database's children exist and every bundle holds exactly every Token's grant."""
    dbs = {d["metadata"]["name"]: d for d in api.objects("Database", NAMESPACE)}
    # Cheap first: the compile writes status.grants right after each access Secret.
    if any(
        ((dbs.get(db) or {}).get("status") or {}).get("grants") != len(identities)
        for db in databases
    ):
        return False
    if not _children_exist(api, databases):
        return False
    secrets = {s["metadata"]["name"] for s in api.objects("Secret", NAMESPACE)}
    if any(f"{db}-rdsgate-tls" not in secrets for db in databases):
        return False
    bundles = _bundles(api)
    return all(
        {g.identity for g in bundles.get(f"{db}-rdsgate-access", AccessFile()).grants} == identities
        for db in databases
    )


def _reconciles(metrics_port: int) -> dict[str, float]:
    """The operator's `rdsgate_operator_reconciles_total` by kind (ok and error alike)."""
    text = http_get(f"http://127.0.0.1:{metrics_port}/metrics") or ""
    counts: dict[str, float] = {}
    for m in re.finditer(r"^rdsgate_operator_reconciles_total\{([^}]*)\} (\S+)$", text, re.M):
        kind = re.search(r'kind="([^"]*)"', m[1])
        if kind:
            counts[kind[1]] = counts.get(kind[1], 0) + float(m[2])
    return counts


def _start_operator(server: ApiServer, work: Path) -> tuple[Service, int]:
    kubeconfig = server.kubeconfig(work / "kubeconfig")
    metrics_port = free_port()
    env = {k: v for k, v in clean_env().items() if not k.startswith(("KUBERNETES_", "RDSGATE_"))}
    env |= {"KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    cmd = [
        *operator_command(),
        "--operator-namespace", OPERATOR_NAMESPACE,
        "--proxy-image", "rdsgate:bench",
        "--metrics-port", str(metrics_port),
        "--resync-interval", HOUR,
        "--diagnose-interval", HOUR,
        "--access-recheck-interval", "300",  # its maximum
    ]  # fmt: skip
    operator = Service("rdsgate-operator", cmd, env, work / "operator.log")
    api = Api(server.url)
    operator.wait_until(
        "started (its CA Secret created)",
        lambda: api.get("Secret", OPERATOR_NAMESPACE, "rdsgate-ca") is not None,
        60,
    )
    return operator, metrics_port


def measure_operator(
    tokens: int, databases: int, work: Path, timeout: float, quiet_s: float = QUIET
) -> dict[str, Any]:
    server = ApiServer().start()
    try:
        with contextlib.ExitStack() as stack:
            operator, metrics_port = _start_operator(server, work)
            stack.callback(operator.stop)
            cluster = Cluster(server, quiet_s)
            api = cluster.api
            db_names = [f"db-{i:03d}" for i in range(databases)]
            token_names = [f"app-{i:05d}" for i in range(tokens)]
            identities = {f"{NAMESPACE}/{t}" for t in token_names}
            cluster.quiet()
            before = cluster.operator_requests()
            reconciles_before = _reconciles(metrics_port)

            progress(f"creating 1 Role, {databases} Databases and {tokens} Tokens")
            started = time.monotonic()
            api.create(_role(50))
            for name in db_names:
                api.create(_database(name))
            for i, name in enumerate(token_names, 1):
                api.create(_token(name))
                if i % 250 == 0:
                    progress(f"  {i} Tokens created ({time.monotonic() - started:.1f}s)")
            created_s = time.monotonic() - started
            progress("waiting for the operator to converge")
            converged_at = wait(
                "the operator to converge",
                lambda: _converged(api, db_names, identities),
                timeout,
                interval=0.5,
            )
            converge_s = converged_at - started
            progress(f"converged after {converge_s:.1f}s")
            rss = rss_bytes(operator.pid)
            requests_converge = cluster.quiet(before)
            reconciles = {
                k: v - reconciles_before.get(k, 0) for k, v in _reconciles(metrics_port).items()
            }

            progress("editing the Role")
            before = cluster.operator_requests()
            index = len(server.emulator.writes)
            edited = time.monotonic()
            api.patch("Role", NAMESPACE, ROLE, {"spec": {"options": {"maxConnections": 51}}})
            wanted = {f"{db}-rdsgate-access" for db in db_names}
            reached = wait(
                "the Role edit to reach every access Secret",
                lambda: wanted <= cluster.access_writes_since(index),
                timeout,
                interval=0.05,
            )
            role_edit_s = reached - edited
            requests_role_edit = cluster.quiet(before)
            bundles = _bundles(api)
            if any(
                b.roles[0].options.max_connections != 51 or len(b.grants) != tokens
                for b in bundles.values()
            ):
                raise BenchError(
                    "a bundle does not carry the Role edit after the operator wrote it"
                )
            progress(f"the Role edit reached every bundle after {role_edit_s:.2f}s")

            progress("one Database reconcile (a Deployment status change)")
            before = cluster.operator_requests()
            dep = api.get("Deployment", NAMESPACE, f"{db_names[0]}-rdsgate")
            assert dep is not None
            status = {"observedGeneration": dep["metadata"]["generation"], "replicas": 1}
            status |= {"updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
            api.patch(
                "Deployment", NAMESPACE, dep["metadata"]["name"], {"status": status}, "status"
            )
            wait(
                "the Database to report its ready proxy",
                lambda: (
                    ((api.get("Database", NAMESPACE, db_names[0]) or {}).get("status") or {}).get(
                        "readyReplicas"
                    )
                    == 1
                ),
                60,
                interval=0.05,
            )
            requests_db = cluster.quiet(before)
            peak = peak_rss_bytes(operator.pid)
            return {
                "tokens": tokens,
                "databases": databases,
                "create_s": round(created_s, 2),
                "converge_s": round(converge_s, 2),
                "role_edit_s": round(role_edit_s, 2),
                "requests": {
                    "converge": requests_converge,
                    "converge_reconciles": {k: int(v) for k, v in sorted(reconciles.items())},
                    "role_edit": requests_role_edit,
                    "database_reconcile": requests_db,
                },
                "operator_rss_mib": round(rss / MIB, 1),
                "operator_peak_rss_mib": round(peak / MIB, 1),
            }
    finally:
        server.stop()


# -- 2. the access file -------------------------------------------------------------------


def bundle(grants: int, salt: str = "") -> AccessFile:
    """`grants` grants as the operator writes them for Tokens made through the admission
    webhooks (requester stamped) with a TTL, all holding one Role."""
    expiry = datetime(2026, 12, 1, tzinfo=UTC)
    return AccessFile(
        roles=[
            Role(
                name=ROLE,
                allow=Rule(
                    databases=LabelSelector(), database_names=["app"], database_users=["app"]
                ),
            )
        ],
        grants=[
            Grant(
                identity=f"shop/orders-app-{i:05d}",
                secret_sha256=hashlib.sha256(f"secret {salt}{i}".encode()).hexdigest(),
                roles=[ROLE],
                expires_at=expiry + timedelta(seconds=37 * i),
                requested_by=f"system:serviceaccount:ci:deployer-{i % 50}",
            )
            for i in range(grants)
        ],
    )


def _proxy_config(directory: Path, access_file: Path) -> Path:
    ca = pki.make_ca("bench CA")
    pair = pki.issue_server_cert(ca, ["localhost"], ["127.0.0.1"])
    (directory / "tls.crt").write_bytes(pair.cert_pem)
    (directory / "tls.key").write_bytes(pair.key_pem)
    (directory / "tls.key").chmod(0o600)
    config = {
        "database": {"name": "app", "namespace": "shop", "labels": {"env": "bench"}},
        "listen": {"address": "127.0.0.1", "port": free_port()},
        "tls": {"certFile": str(directory / "tls.crt"), "keyFile": str(directory / "tls.key")},
        # Nothing listens there: no session is made, only the access file is measured.
        "upstream": {"endpoint": f"127.0.0.1:{free_port()}"},
        "aws": {"region": "eu-west-1"},
        "access": {"file": str(access_file)},
        "metrics": {"address": "127.0.0.1", "port": free_port()},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _loaded_lines(service: Service) -> list[str]:
    text = service.log_file.read_text(errors="replace")
    return [line for line in text.splitlines() if "access file" in line and "loaded" in line]


@contextlib.contextmanager
def _running_proxy(
    directory: Path, files: dict[str, bytes]
) -> Iterator[tuple[Service, ProjectedVolume, int]]:
    directory.mkdir()
    volume = ProjectedVolume(directory / "access")
    volume.write(files)
    config_path = _proxy_config(directory, volume.path(render.ACCESS_KEY))
    listen_port = yaml.safe_load(config_path.read_text())["listen"]["port"]
    service = Service(
        "rdsgate-proxy",
        [*proxy_command(), "--config", str(config_path)],
        clean_env() | STATIC_AWS_ENV,
        log_file=directory / "proxy.log",
        stdout_file=directory / "audit.log",
    )
    try:
        service.wait_until("loaded its access file", lambda: bool(_loaded_lines(service)), 120)
        yield service, volume, listen_port
    finally:
        service.stop()


def _settled_rss(pid: int) -> int:
    """The RSS once it stops moving (the proxy's start-up checks run after the load)."""
    last = rss_bytes(pid)
    for _ in range(20):
        time.sleep(0.25)  # sampling another process's memory
        now = rss_bytes(pid)
        if abs(now - last) < 256 * 1024:
            return now
        last = now
    return last


class _Stalls:
    """The longest answer to an SSLRequest on the proxy's listener while running: the
    listener is served by the event loop, which a reload keeps busy (/healthz is not: it
    has a thread of its own)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock,
            ):
                sock.sendall(struct.pack("!II", 8, 80877103))  # SSLRequest
                sock.recv(1)  # b"S"
            self.longest = max(self.longest, time.perf_counter() - started)
            self._stop.wait(0.01)

    def __enter__(self) -> _Stalls:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(35)


def measure_access_file(grants: int, work: Path) -> dict[str, Any]:
    progress(f"rendering a bundle of {grants} grants")
    text = access.bundle_yaml(bundle(grants))
    plain = text.encode()
    stored = render.access_file_bytes(text, grants, limit=sys.maxsize)  # what the Secret holds
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    gzipped = deflate.compress(plain) + deflate.flush()
    per_plain, per_gzip = len(plain) / grants, len(gzipped) / grants

    files = work / "files"
    files.mkdir()
    (files / "plain.yaml").write_bytes(plain)
    (files / "gzip.yaml").write_bytes(gzipped)
    load_s = {}
    for form in ("plain", "gzip"):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            policy = load_access(files / f"{form}.yaml")
            times.append(time.perf_counter() - started)
            assert len(policy.file.grants) == grants
        load_s[form] = round(statistics.median(times), 3)
    progress(f"load_access: {load_s}")

    small = access.bundle_yaml(bundle(1)).encode()
    with _running_proxy(work / "proxy-small", {render.ACCESS_KEY: small}) as (service, _, _port):
        rss_small = _settled_rss(service.pid)
    with _running_proxy(work / "proxy-large", {render.ACCESS_KEY: stored}) as (
        service,
        volume,
        port,
    ):
        rss_large = _settled_rss(service.pid)
        progress("reloading the large file in the running proxy")
        loaded = len(_loaded_lines(service))
        changed = render.access_file_bytes(access.bundle_yaml(bundle(grants, "2")), grants)
        with _Stalls(port) as stalls:
            swapped = time.monotonic()
            volume.write({render.ACCESS_KEY: changed})
            service.wait_until("reloaded", lambda: len(_loaded_lines(service)) > loaded, 120)
            reload_s = time.monotonic() - swapped
        rss_after_reload = _settled_rss(service.pid)
    limit = render.SECRET_DATA_LIMIT
    return {
        "grants": grants,
        "yaml_bytes": len(plain),
        "secret_bytes": len(stored),
        "secret_limit_bytes": limit,
        "compressed": stored != plain,
        "bytes_per_grant": {"yaml": round(per_plain, 1), "gzip": round(per_gzip, 1)},
        "grants_that_fit": {"yaml": int(limit // per_plain), "gzip": int(limit // per_gzip)},
        "load_s": load_s,
        "proxy_rss_mib": {
            "one_grant": round(rss_small / MIB, 1),
            "large": round(rss_large / MIB, 1),
            "large_after_reload": round(rss_after_reload / MIB, 1),
        },
        "reload_s": round(reload_s, 2),
        "reload_poll_interval_s": 1.0,
        "listener_stall_s": round(stalls.longest, 3),
    }


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--databases", type=int, default=50)
    parser.add_argument("--grants", type=int, default=10_000, help="0 skips the access file")
    parser.add_argument("--timeout", type=float, default=1800, help="per wait, seconds")
    parser.add_argument(
        "--quiet", type=float, default=QUIET, help="seconds without a request: the operator is done"
    )
    parser.add_argument("--json", action="store_true", help="only the figures, on stdout")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rdsgate-bench-cp-") as tmp:
        work = Path(tmp)
        try:
            if args.tokens and args.databases:
                (work / "operator").mkdir()
                results["operator"] = measure_operator(
                    args.tokens, args.databases, work / "operator", args.timeout, args.quiet
                )
            if args.grants:
                (work / "access").mkdir()
                results["access_file"] = measure_access_file(args.grants, work / "access")
        except BenchError as exc:
            print(f"control-plane bench failed: {exc}", file=sys.stderr)
            return 1
    results["machine"] = {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(yaml.safe_dump(results, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
