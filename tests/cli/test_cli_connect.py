"""`rdsgate db connect`: a key pair of the caller's, a Token for its public half, the
certificate the operator signs, a port-forward through the API, psql.

Everything is real: the operator signs the Token's certificate into its status, the proxy
(run from the operator's Deployment and Secrets) loads the grant, the CLI's port-forward
goes through the emulator's `pods/portforward` websocket to the proxy, which takes the
client certificate (no password exists) and logs in to PostgreSQL through the RDS Proxy
stand-in with an IAM auth token.
"""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from rdsgate.lab.postgres import free_port
from tests.cli.conftest import (
    ORDERS,
    POD_NAME,
    MakePerson,
    Person,
    ProxyPod,
    World,
    psql,
    secret_calls,
)


def public_half(key_file: Path) -> str:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def exports(stdout: str) -> dict[str, str]:
    env = {}
    for line in stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
    return env


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
        keys = alice.keys / ORDERS
        assert env == {
            "PGHOST": f"orders.{world.ns}.svc",
            "PGHOSTADDR": "127.0.0.1",
            "PGPORT": str(local_port),
            "PGUSER": "app",
            "PGDATABASE": "orders",
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(keys / "ca.crt"),
            "PGSSLCERT": str(keys / f"{name}.crt"),
            "PGSSLKEY": str(keys / "tls.key"),
        }
        assert f"to pod {world.ns}/{POD_NAME}:{world.port}" in marker
        assert "Made your key pair for Database" in bg.err()

        out = psql(env, "select current_user, current_database()")
        assert out.returncode == 0, out.stderr + bg.err()
        assert out.stdout.strip() == "app|orders"
        started = [
            e
            for e in proxy_pod.audit()
            if e["event"] == "session.start" and e.get("identity") == f"{world.ns}/{name}"
        ]
        assert started, proxy_pod.audit()[-5:]
        assert started[-1]["db_user"] == "app"
        assert started[-1]["auth_method"] == "certificate"

        # The Token: the caller's, short-lived, for exactly this login, held by the local key.
        fresh = world.api.get("Token", world.ns, name)
        assert fresh is not None
        token = fresh
        meta = token["metadata"]
        assert meta["labels"]["rdsgate.dev/created-by"] == "rdsgate-cli"
        assert meta["labels"]["rdsgate.dev/owner"].startswith("alice-example.com-")
        assert meta["annotations"]["rdsgate.dev/owner-name"] == "alice@example.com"
        assert meta["annotations"]["rdsgate.dev/owner-source"] == "SelfSubjectReview"
        assert token["spec"] == {
            "roles": ["app-rw"],
            "ttl": "1h",
            "database": "orders",
            "databaseUser": "app",
            "databaseName": "orders",
            "publicKey": public_half(keys / "tls.key"),
        }
        status = token["status"]
        assert status["subject"] == "publickey"
        assert status.get("secretName") is None
        assert world.api.get("Secret", world.ns, f"{name}-rdsgate") is None

        # The certificate psql presented is the one the operator signed for the key.
        cert_file = keys / f"{name}.crt"
        assert cert_file.read_text() == status["certificate"]
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
        assert [u.split("#")[0] for u in uris] == [f"rdsgate://{world.ns}/{name}"]

        # Private files, in private directories; the CA is the namespace's ConfigMap's.
        for file in ("ca.crt", f"{name}.crt", "tls.key"):
            assert mode(keys / file) == 0o600, file
        for directory in (keys, keys.parent, keys.parent.parent, alice.cache / "rdsgate"):
            assert mode(directory) == 0o700, directory
        ca = world.api.get("ConfigMap", world.ns, "rdsgate-ca")
        assert ca is not None
        assert (keys / "ca.crt").read_text() == ca["data"]["ca.crt"]

        # Nothing the person's kubeconfig sent was about a Secret; a Token was created.
        calls = alice.calls(world.server)
        assert secret_calls(calls) == []
        assert [c.verb for c in calls if c.resource == "tokens"].count("create") == 1
        assert any(c.resource == "configmaps" and c.name == "rdsgate-ca" for c in calls)
    finally:
        code = bg.interrupt()
    assert code == 0, bg.err()
    assert "Traceback" not in bg.err()


def test_connect_runs_psql_and_reuses_the_token_and_the_key(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    bob = person("bob")
    args = ["db", "connect", ORDERS, "--db-user", "app", "--db-name", "orders"]
    first = bob.run(*args, "--", "-XAtc", "select current_user")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "app"
    assert "Made your key pair for Database" in first.stderr
    assert "Created Token" in first.stderr
    assert "Forwarding 127.0.0.1:" in first.stderr and POD_NAME in first.stderr
    assert "Traceback" not in first.stderr  # the forward's threads end quietly
    key = (bob.keys / ORDERS / "tls.key").read_bytes()

    again = bob.run(*args, "--", "-XAtc", "select current_database()")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "orders"
    assert "Reusing Token" in again.stderr
    assert "Made your key pair" not in again.stderr
    assert len(bob.tokens(world.api)) == 1
    assert (bob.keys / ORDERS / "tls.key").read_bytes() == key

    # psql's own exit code comes back.
    failing = bob.run(*args, "--", "-XAtc", "select 1/0")
    assert failing.returncode == 1
    assert "division by zero" in failing.stderr


def connect_direct(who: Person, world: World, user: str, *extra: str) -> dict[str, str]:
    """`db connect --print-env --address` straight to the proxy: it ends once the proxy
    accepts the certificate; the printed environment."""
    out = who.run(
        "db", "connect", ORDERS, "--db-user", user, "--db-name", "orders",
        "--address", f"127.0.0.1:{world.port}", "--print-env", *extra,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].startswith("# rdsgate: direct to 127.0.0.1:")
    return exports(out.stdout)


def test_address_skips_the_port_forward(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    """--address is for a reachable Service: the command prints and exits."""
    carol = person("carol")
    env = connect_direct(carol, world, "reporting", "--ttl", "15m")
    assert env["PGHOSTADDR"] == "127.0.0.1" and env["PGPORT"] == str(world.port)
    assert "PGPASSWORD" not in env
    result = psql(env, "select current_user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reporting"
    (token,) = carol.tokens(world.api)
    # No --role: every Role that allows reporting on orders, and only those.
    assert token["spec"]["roles"] == ["readonly"]
    assert token["spec"]["ttl"] == "15m"


def test_one_key_per_database_and_a_certificate_per_token(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    """Two logins to one Database: two Tokens for the same key, each its own certificate,
    so a running psql of one never picks up the other's."""
    dora = person("dora")
    as_app = connect_direct(dora, world, "app")
    as_reporting = connect_direct(dora, world, "reporting")
    tokens = {t["spec"]["databaseUser"]: t for t in dora.tokens(world.api)}
    assert sorted(tokens) == ["app", "reporting"]
    key_file = dora.keys / ORDERS / "tls.key"
    assert as_app["PGSSLKEY"] == as_reporting["PGSSLKEY"] == str(key_file)
    assert {t["spec"]["publicKey"] for t in tokens.values()} == {public_half(key_file)}
    assert as_app["PGSSLCERT"] != as_reporting["PGSSLCERT"]
    for user, env in (("app", as_app), ("reporting", as_reporting)):
        assert Path(env["PGSSLCERT"]).name == f"{tokens[user]['metadata']['name']}.crt"
        result = psql(env, "select current_user")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == user
    assert sorted(p.name for p in (dora.keys / ORDERS).iterdir()) == sorted(
        ["ca.crt", "tls.key", *(f"{t['metadata']['name']}.crt" for t in tokens.values())]
    )
