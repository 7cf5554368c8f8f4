"""`rdsgate db connect`: a Token of the caller's, a port-forward through the API, psql.

Everything is real: the operator writes the Token's Secret, the proxy (run from the
operator's Deployment and Secrets) loads the grant, the CLI's port-forward goes through
the emulator's `pods/portforward` websocket to the proxy, which logs in to PostgreSQL
through the RDS Proxy stand-in with an IAM auth token.
"""

from __future__ import annotations

import stat
from pathlib import Path

from rdsgate.lab.postgres import free_port
from tests.cli.conftest import ORDERS, POD_NAME, MakePerson, ProxyPod, World, psql


def test_print_env_gives_psql_a_way_through_the_port_forward(
    world: World, proxy_pod: ProxyPod, person: MakePerson, tmp_path: Path
) -> None:
    alice = person("alice@example.com")
    local_port = free_port()
    bg = alice.start(
        "db", "connect", ORDERS, "--db-user", "app", "--db-name", "orders", "--print-env",
        "--local-port", str(local_port), stderr=tmp_path / "stderr",
    )  # fmt: skip
    try:
        env, marker = bg.printed_env()
        tokens = alice.tokens(world.api)
        assert len(tokens) == 1, bg.err()
        token = tokens[0]
        name = token["metadata"]["name"]
        ca = alice.cache / "rdsgate" / "kmock" / world.ns / name / "ca.crt"
        assert env == {
            "PGHOST": f"orders.{world.ns}.svc",
            "PGHOSTADDR": "127.0.0.1",
            "PGPORT": str(local_port),
            "PGUSER": "app",
            "PGDATABASE": "orders",
            "PGPASSWORD": env["PGPASSWORD"],
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(ca),
        }
        assert f"to pod {world.ns}/{POD_NAME}:{world.port}" in marker

        out = psql(env, "select current_user, current_database()")
        assert out.returncode == 0, out.stderr + bg.err()
        assert out.stdout.strip() == "app|orders"
        started = [
            e
            for e in proxy_pod.audit()
            if e["event"] == "session.start" and e.get("identity") == f"{world.ns}/{name}"
        ]
        assert started and started[-1]["db_user"] == "app", proxy_pod.audit()[-5:]

        # The Token: the caller's, short-lived, for exactly this login.
        meta = token["metadata"]
        assert meta["labels"]["rdsgate.dev/created-by"] == "rdsgate-cli"
        assert meta["labels"]["rdsgate.dev/owner"].startswith("alice-example.com-")
        assert meta["annotations"]["rdsgate.dev/owner-name"] == "alice@example.com"
        assert meta["annotations"]["rdsgate.dev/owner-source"] == "SelfSubjectReview"
        assert token["spec"] == {
            "roles": ["app-rw"],
            "ttl": "1h",
            "secretName": f"{name}-rdsgate",
            "database": "orders",
            "databaseUser": "app",
            "databaseName": "orders",
        }
        secret = world.api.get("Secret", world.ns, f"{name}-rdsgate")
        assert secret is not None
        assert world.api.secret_text(secret, "token") == env["PGPASSWORD"]

        # Its files: private, and the CA the proxy's certificate verifies against.
        for file in ("ca.crt", "tls.crt", "tls.key"):
            path = ca.parent / file
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, file
        assert stat.S_IMODE(ca.parent.stat().st_mode) == 0o700
        assert ca.read_text() == world.api.secret_text(secret, "ca.crt")
    finally:
        code = bg.interrupt()
    assert code == 0, bg.err()


def test_connect_runs_psql_and_reuses_the_token(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    bob = person("bob")
    args = ["db", "connect", ORDERS, "--db-user", "app", "--db-name", "orders"]
    first = bob.run(*args, "--", "-XAtc", "select current_user")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "app"
    assert "Created Token" in first.stderr
    assert "Forwarding 127.0.0.1:" in first.stderr and POD_NAME in first.stderr

    again = bob.run(*args, "--", "-XAtc", "select current_database()")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "orders"
    assert "Reusing Token" in again.stderr
    assert len(bob.tokens(world.api)) == 1

    # psql's own exit code comes back.
    failing = bob.run(*args, "--", "-XAtc", "select 1/0")
    assert failing.returncode == 1
    assert "division by zero" in failing.stderr


def test_address_skips_the_port_forward(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    """--address is for a reachable Service: the command prints and exits."""
    carol = person("carol")
    out = carol.run(
        "db", "connect", ORDERS, "--db-user", "reporting", "--db-name", "orders",
        "--address", f"127.0.0.1:{world.port}", "--print-env", "--ttl", "15m",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    env = {}
    for line in out.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
    assert out.stdout.splitlines()[-1].startswith("# rdsgate: direct to 127.0.0.1:")
    assert env["PGHOSTADDR"] == "127.0.0.1" and env["PGPORT"] == str(world.port)
    result = psql(env, "select current_user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reporting"
    (token,) = carol.tokens(world.api)
    # No --role: every Role that allows reporting on orders, and only those.
    assert token["spec"]["roles"] == ["readonly"]
    assert token["spec"]["ttl"] == "15m"
