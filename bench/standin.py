"""`python bench/standin.py`: the lab's AWS (moto) and RDS Proxy stand-in, as a child of the
benchmark, so that neither shares an interpreter (and its GIL) with the client being timed.

The stand-in must live in the process that runs moto (it reads access-key secrets from
moto's memory, as RDS Proxy asks IAM). This process creates an RDS Proxy in moto with a
secret for the benchmark's database user, an IAM user allowed `rds-db:connect` as that
user on it (as `tests/fixtures/lab.py` does), and starts `RdsProxyStandIn` in front of the
benchmark's PostgreSQL with the given log-in delay. When it listens, it writes
`--ready-file` (JSON: endpoint, ids, and the IAM user's keys and environment), then serves
until SIGTERM (or until its parent is gone) and stops everything it started.

Auth entries are cached for the whole run (`auth_cache_seconds`), as RDS Proxy does not
re-read its secrets on every log-in; the default 1 s re-read would put a Secrets Manager
round trip into one log-in a second, on both sides of the comparison.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from rdsgate.lab.aws import AwsLab
from rdsgate.lab.rdsproxy import RdsProxyStandIn
from rdsgate.operator import pki

# Run as a script: it imports only the installed `rdsgate` package, never `bench`.

#: For the whole run: the benchmark changes no secret while it measures.
AUTH_CACHE_SECONDS = 24 * 3600.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/standin.py", description=__doc__)
    p.add_argument("--ready-file", type=Path, required=True)
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, required=True)
    p.add_argument("--pg-ca-file", type=Path, required=True)
    p.add_argument("--ca-cert", type=Path, required=True, help="lab CA certificate (PEM)")
    p.add_argument("--ca-key", type=Path, required=True, help="lab CA key (PEM)")
    p.add_argument("--db-user", required=True)
    p.add_argument("--db-password", required=True)
    p.add_argument("--login-delay", type=float, default=0.0, help="seconds")
    return p.parse_args(argv)


def serve(args: argparse.Namespace, stop: threading.Event) -> None:
    ca = pki.KeyPair(args.ca_cert.read_bytes(), args.ca_key.read_bytes())
    parent = os.getppid()
    with AwsLab() as aws:
        db_proxy = aws.create_rds_proxy(
            f"bench-{os.urandom(3).hex()}", {args.db_user: args.db_password}
        )
        identity = aws.iam_for(db_proxy.resource_id).user(args.db_user)
        with RdsProxyStandIn(
            aws,
            db_proxy,
            upstream_host=args.pg_host,
            upstream_port=args.pg_port,
            upstream_ca_file=args.pg_ca_file,
            ca=ca,
            auth_cache_seconds=AUTH_CACHE_SECONDS,
            login_delay=args.login_delay,
        ) as standin:
            ready = {
                "host": standin.host,
                "port": standin.port,
                "region": standin.region,
                "account_id": standin.account_id,
                "resource_id": standin.resource_id,
                "login_delay": standin.login_delay,
                "identity_arn": identity.arn,
                "credentials": asdict(identity.credentials),
                "env": identity.env,
            }
            partial = args.ready_file.with_suffix(".partial")
            partial.write_text(json.dumps(ready))
            partial.chmod(0o600)
            partial.rename(args.ready_file)
            # Until told to stop, or orphaned (the benchmark was killed outright).
            while not stop.wait(0.5) and os.getppid() == parent:
                pass


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    serve(args, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
