"""The throwaway PostgreSQL: TLS verified with the lab CA, SCRAM logins, clean start and stop."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from rdsgate.lab.postgres import LabCA, PostgresNotInstalled, PostgresServer


def psql(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        ["psql", dsn, "-X", "-Atc", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_roles_log_in_over_verified_tls(pg: PostgresServer, lab_ca: LabCA) -> None:
    dsn = pg.dsn("app", dbname="orders", sslrootcert=str(lab_ca.cert_file))

    result = psql(dsn, "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app|t"


def test_a_wrong_password_is_refused_with_28p01(pg: PostgresServer) -> None:
    async def run() -> Any:
        return await asyncpg.connect(
            host=pg.host,
            port=pg.port,
            user="reporting",
            password="not-the-password",
            database="orders",
            ssl=pg.ssl_context(),
        )

    with pytest.raises(asyncpg.PostgresError) as info:
        asyncio.run(run())

    assert info.value.sqlstate == "28P01"
    assert info.value.message == 'password authentication failed for user "reporting"'


def test_plaintext_tcp_is_refused(pg: PostgresServer) -> None:
    result = psql(pg.dsn("app", dbname="orders", sslmode="disable"), "select 1")

    assert result.returncode == 2
    assert "no pg_hba.conf entry" in result.stderr
    assert "no encryption" in result.stderr


def test_settings_suit_the_tests(pg: PostgresServer) -> None:
    assert pg.execute("show max_connections") == "400"
    assert pg.execute("show fsync") == "off"
    assert pg.execute("select datdba::regrole from pg_database where datname = 'orders'") == "app"


def test_trust_auth_and_stop_removes_everything(lab_ca: LabCA) -> None:
    server = PostgresServer(ca=lab_ca.keypair, host_auth="trust").start()
    try:
        root, port = server.root, server.port
        result = psql(
            server.dsn("postgres", password="", sslrootcert=str(lab_ca.cert_file)), "select 1"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1"
    finally:
        server.stop()

    assert not root.exists()
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_missing_binaries_say_how_to_install_them(tmp_path: Path) -> None:
    with pytest.raises(PostgresNotInstalled) as info:
        PostgresServer(bin_dir=tmp_path).start()

    assert "sudo apt-get install postgresql postgresql-contrib" in str(info.value)
    assert "make test" in str(info.value)
