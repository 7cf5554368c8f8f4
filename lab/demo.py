"""`rdsgate demo`: the whole path on one machine, with no cloud account and no cluster.

A throwaway PostgreSQL, moto for STS / IAM / Secrets Manager / RDS, the RDS Proxy stand-in
(which checks IAM tokens as RDS Proxy does) and a real `rdsgate-proxy` started from the
same kind of config and access files the operator renders. The proxy's AWS identity is a
role it assumes with a web identity token, as IRSA gives a pod on EKS.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import yaml
from rich.console import Console

from rdsgate.operator import pki
from rdsgate.proxy.access import secret_digest
from rdsgate.proxy.config import ProxyConfig

from .aws import AwsLab
from .kubelet import ProjectedVolume
from .lifecycle import stop_process
from .postgres import PostgresNotInstalled, PostgresServer, free_port
from .rdsproxy import RdsProxyStandIn

NAMESPACE = "shop"
DATABASE = "orders"
TOKEN = "orders-app"


@dataclass(frozen=True)
class DemoEndpoints:
    dsn: str
    denied_dsn: str
    direct_dsn: str
    audit_log: str
    metrics_url: str


def _conninfo(**parts: str | int | Path) -> str:
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _access_file(secret: str) -> dict[str, object]:
    return {
        "version": 1,
        "roles": [
            {
                "name": "orders-app",
                "allow": {
                    "databases": {"matchLabels": {"env": "demo"}},
                    "databaseNames": [DATABASE],
                    "databaseUsers": ["app"],
                },
                "deny": {"databaseUsers": ["postgres"]},
            }
        ],
        "grants": [
            {
                "identity": f"{NAMESPACE}/{TOKEN}",
                "secretSha256": secret_digest(secret),
                "roles": ["orders-app"],
            }
        ],
    }


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"rdsgate-proxy exited ({process.returncode}):\n{log.read_text()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2) as resp,  # noqa: S310 - loopback
        ):
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"rdsgate-proxy did not become ready:\n{log.read_text()}")
        time.sleep(0.05)


@contextlib.contextmanager
def running_demo(work: Path, say: Console) -> Iterator[DemoEndpoints]:
    """Starts every part under `work` and stops them all on exit."""
    ca = pki.make_ca("rdsgate demo CA")
    ca_file = work / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    with contextlib.ExitStack() as stack:
        with say.status("Starting a throwaway PostgreSQL"):
            pg = stack.enter_context(PostgresServer(ca=ca))
            app_password = pg.create_role("app")
            pg.create_database(DATABASE, owner="app")
            pg.execute(
                "create table orders (id serial primary key, item text, paid boolean);"
                "insert into orders (item, paid) values ('coffee', true), ('tea', false);"
                "alter table orders owner to app;",
                dbname=DATABASE,
            )
        say.print(f"[green]✓[/] PostgreSQL {pg.port} (database {DATABASE}, login app)")

        with say.status("Starting the AWS API emulator (moto)"):
            aws = stack.enter_context(AwsLab())
            db_proxy = aws.create_rds_proxy("orders-proxy", {"app": app_password})
        say.print(
            f"[green]✓[/] AWS emulator {aws.endpoint_url}: Secrets Manager secret for app, "
            f"RDS Proxy {db_proxy.resource_id} with IAM authentication required"
        )

        with say.status("Starting the RDS Proxy stand-in"):
            standin = stack.enter_context(
                RdsProxyStandIn(
                    aws,
                    db_proxy,
                    upstream_host=pg.host,
                    upstream_port=pg.port,
                    upstream_ca_file=pg.ca_file,
                    ca=ca,
                )
            )
        say.print(f"[green]✓[/] RDS Proxy stand-in {standin.endpoint} (checks IAM auth tokens)")

        with say.status("Creating the proxy's IAM role (rds-db:connect as app)"):
            role = aws.create_connect_role(
                ["app"],
                trusted=[f"arn:aws:iam::{aws.account_id}:root"],
                name="rdsgate-demo-orders",
                resource_id=standin.resource_id,
            )
        say.print(f"[green]✓[/] IAM role {role.arn}")

        secret = secrets.token_urlsafe(32)
        port, metrics_port = free_port(), free_port()
        access = ProjectedVolume(work / "access")
        access.write({"access.yaml": yaml.safe_dump(_access_file(secret))})
        server = pki.issue_server_cert(ca, ["localhost"], ["127.0.0.1"])
        (work / "tls.crt").write_bytes(server.cert_pem)
        (work / "tls.key").write_bytes(server.key_pem)
        token_file = work / "serviceaccount-token"
        token_file.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJkZW1vIn0.ZGVtbw")
        config = ProxyConfig.model_validate(
            {
                "database": {"name": DATABASE, "namespace": NAMESPACE, "labels": {"env": "demo"}},
                "listen": {"address": "127.0.0.1", "port": port},
                "tls": {"certFile": work / "tls.crt", "keyFile": work / "tls.key"},
                "upstream": {
                    "endpoint": standin.endpoint,
                    "tls": {"mode": "verify-full", "caFile": ca_file},
                },
                "aws": {
                    "region": aws.region,
                    "accountId": aws.account_id,
                    "proxyResourceId": standin.resource_id,
                },
                "access": {"file": access.path("access.yaml")},
                "metrics": {"address": "127.0.0.1", "port": metrics_port},
            }
        )
        config_path = work / "config.yaml"
        config_path.write_text(yaml.safe_dump(config.dump(), sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PG"))}
        env |= aws.env() | {
            "AWS_ROLE_ARN": role.arn,
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
            "AWS_ROLE_SESSION_NAME": "rdsgate-demo",
        }
        audit_log = work / "audit.log"
        proxy_log = work / "proxy.log"
        with say.status("Starting rdsgate-proxy"):
            with audit_log.open("wb") as out, proxy_log.open("wb") as err:
                proxy = subprocess.Popen(
                    [sys.executable, "-m", "rdsgate.proxy.main", "--config", str(config_path)],
                    stdout=out,
                    stderr=err,
                    env=env,
                )
            stack.callback(stop_process, proxy, 15)
            _wait_ready(f"http://127.0.0.1:{metrics_port}/readyz", proxy, proxy_log, 30)
        say.print(f"[green]✓[/] rdsgate-proxy on localhost:{port} (config {config_path})")

        common: dict[str, str | int | Path] = {
            "host": "localhost",
            "port": port,
            "sslmode": "verify-full",
        }
        yield DemoEndpoints(
            dsn=_conninfo(
                **common, user="app", dbname=DATABASE, password=secret, sslrootcert=ca_file
            ),
            denied_dsn=_conninfo(
                **common, user="postgres", dbname=DATABASE, password=secret, sslrootcert=ca_file
            ),
            direct_dsn=_conninfo(
                host=pg.host,
                port=pg.port,
                user="app",
                dbname=DATABASE,
                password=app_password,
                sslmode="verify-full",
                sslrootcert=pg.ca_file,
            ),
            audit_log=str(audit_log),
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        )


def _psql(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", dsn, "-X", "-c", sql], capture_output=True, text=True, check=False, timeout=30
    )


def _show(say: Console, ends: DemoEndpoints) -> None:
    ok = _psql(ends.dsn, "select id, item, paid from orders order by id")
    denied = _psql(ends.denied_dsn, "select 1")
    say.print()
    say.print("[bold]Connect through rdsgate[/] (the password is the Token's secret):")
    say.print(f'  psql "{ends.dsn}"', highlight=False, soft_wrap=True)
    say.print(ok.stdout.rstrip() or ok.stderr.rstrip(), highlight=False)
    say.print()
    say.print("[bold]A denied one[/] (the Role denies the database user postgres):")
    say.print(f'  psql "{ends.denied_dsn}"', highlight=False, soft_wrap=True)
    say.print(denied.stderr.rstrip(), highlight=False)
    say.print()
    say.print(f"Audit trail: tail -f {ends.audit_log}", highlight=False)
    say.print(f"Metrics:     curl -s {ends.metrics_url}", highlight=False)
    say.print("Press Ctrl-C to stop and clean up.")


def run_demo(*, json_output: bool = False) -> int:
    """Runs the demo until Ctrl-C or SIGTERM; with `json_output`, stdout's first line is JSON."""
    say = Console(stderr=json_output)
    if shutil.which("psql") is None and not json_output:
        say.print("[red]psql is not installed:[/] sudo apt-get install postgresql-client")
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    previous_int = signal.getsignal(signal.SIGINT)
    work = Path(tempfile.mkdtemp(prefix="rdsgate-demo-"))
    try:
        with running_demo(work, say) as ends:
            # Ctrl-C during set-up interrupts it (the context managers clean up); once
            # running, it is a request to stop, taken even where SIGINT was inherited
            # ignored (a background job of a script), when Python installs no handler.
            signal.signal(signal.SIGINT, on_signal)
            if json_output:
                print(json.dumps(ends.__dict__), flush=True)
            else:
                _show(say, ends)
            while not stop.wait(0.5):
                pass
        say.print("Stopped; everything the demo started is gone.")
        return 0
    except PostgresNotInstalled as exc:
        say.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        shutil.rmtree(work, ignore_errors=True)
