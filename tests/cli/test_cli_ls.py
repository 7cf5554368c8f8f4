"""`rdsgate db ls`: the Databases, their readiness, and what the caller's roles allow."""

from __future__ import annotations

import json

import yaml

from tests.cli.conftest import BILLING, ORDERS, MakePerson, ProxyPod, World


def test_ls_table_shows_readiness_and_what_the_roles_allow(
    world: World, person: MakePerson
) -> None:
    dana = person("dana")  # no Tokens yet: the table shows what every Role allows
    result = dana.main("db", "ls")
    assert result.code == 0, result.err
    lines = [line.rstrip() for line in result.out.splitlines()]
    assert lines[0].split() == [
        "NAME", "ENGINE", "ENDPOINT", "READY", "USERS", "DATABASES", "ROLES",
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[1:3]}
    endpoint = world.api.get("Database", world.ns, ORDERS)["spec"]["endpoint"]  # type: ignore[index]
    billing_ready = world.ready(BILLING)
    assert billing_ready is not None
    for name in (ORDERS, BILLING):
        assert rows[name].split()[:3] == [name, "postgres", endpoint]
        # Both Roles select both Databases (labels env=test); the deny is shown as such.
        assert "app, ^app_[a-z]+$, reporting (not postgres)" in rows[name]
        assert "orders, *" in rows[name]
        assert rows[name].endswith("app-rw, readonly")
    assert rows[ORDERS].split()[3] == "True"
    assert rows[BILLING].split()[3:5] == ["False", "(ProxiesNotReady)"]
    assert lines[3:] == [
        f"billing: {billing_ready['message']}",
        "Access for dana from every Role in the namespace (you have no Tokens here): "
        "app-rw, readonly.",
    ]


def test_ls_json_and_yaml_follow_the_callers_tokens(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    erin = person("erin")
    connected = erin.run(
        "db", "connect", ORDERS, "--db-user", "reporting", "--db-name", "orders",
        "--role", "readonly", "--address", f"127.0.0.1:{world.port}", "--print-env",
    )  # fmt: skip
    assert connected.returncode == 0, connected.stderr
    (token,) = erin.tokens(world.api)

    result = erin.main("db", "ls", "-o", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["namespace"] == world.ns
    assert doc["caller"] == {"username": "erin", "source": "SelfSubjectReview"}
    assert doc["roles"] == {"basis": "your Tokens", "names": ["readonly"]}
    dbs = {d["name"]: d for d in doc["databases"]}
    assert sorted(dbs) == [BILLING, ORDERS]
    orders = dbs[ORDERS]
    assert orders["engine"] == "postgres"
    assert orders["service"] == f"orders.{world.ns}.svc:5432"
    assert orders["ready"]["status"] == "True" and orders["ready"]["reason"] == "ProxiesReady"
    assert orders["access"] == {
        "roles": ["readonly"],
        "databaseUsers": ["reporting"],
        "databaseNames": ["*"],
        "deniedDatabaseUsers": [],
        "deniedDatabaseNames": [],
        "deniedBy": [],
    }
    assert orders["tokens"] == [
        {
            "name": token["metadata"]["name"],
            "databaseUser": "reporting",
            "databaseName": "orders",
            "roles": ["readonly"],
            "expiresAt": token["status"]["expiresAt"],
            # The API server's word where admission stamped it (test_cli_admission.py).
            "requestedBy": token["metadata"]["annotations"].get("rdsgate.dev/requested-by"),
        }
    ]
    assert dbs[BILLING]["ready"]["reason"] == "ProxiesNotReady"
    assert dbs[BILLING]["tokens"] == []

    # The table lists the caller's Tokens under the Databases, with who asked for each.
    table = erin.main("db", "ls")
    assert table.code == 0, table.err
    lines = [line.rstrip() for line in table.out.splitlines()]
    at = lines.index("")
    assert lines[at + 1].split() == [
        "TOKEN", "DATABASE", "USER", "DB-NAME", "ROLES", "EXPIRES", "REQUESTED-BY",
    ]  # fmt: skip
    expires = token["status"]["expiresAt"].replace("T", " ").replace("Z", " UTC")
    requested = token["metadata"]["annotations"].get("rdsgate.dev/requested-by")
    assert lines[at + 2].split() == [
        token["metadata"]["name"], ORDERS, "reporting", "orders", "readonly",
        *expires.split(), *(requested or "not recorded").split(),
    ]  # fmt: skip
    assert lines[at + 3] == "Access for erin from your Tokens: readonly."

    # --role adds a Role's access to the Tokens' (here: the deny of app-rw shows).
    as_yaml = yaml.safe_load(erin.main("db", "ls", "-o", "yaml", "--role", "app-rw").out)
    assert as_yaml["roles"] == {
        "basis": "your Tokens and --role",
        "names": ["readonly", "app-rw"],
    }
    access = {d["name"]: d["access"] for d in as_yaml["databases"]}[ORDERS]
    assert access["databaseUsers"] == ["reporting", "app", "^app_[a-z]+$"]
    assert access["deniedDatabaseUsers"] == ["postgres"]

    unknown = erin.main("db", "ls", "--role", "nope")
    assert unknown.code == 3
    assert f"Role {world.ns}/nope not found (Roles in {world.ns}: app-rw, readonly)" in unknown.err


def test_ls_shows_who_makes_rds_proxy_pin_sessions(world: World, person: MakePerson) -> None:
    """The operator sums the proxies' /pinning into `status.pinning` (tested in
    tests/proxy/test_pinning.py); `db ls` shows it as a table, and in its JSON rows. billing
    has no proxy pod, so no diagnosis pass rewrites what is written here."""
    pinning = [
        {"identity": f"{world.ns}/orders-app", "reason": "named_statement", "statements": 1250},
        {"identity": f"{world.ns}/batch", "reason": "set", "statements": 12},
    ]
    world.api.patch("Database", world.ns, BILLING, {"status": {"pinning": pinning}}, "status")
    try:
        frank = person("frank")
        result = frank.main("db", "ls")
        assert result.code == 0, result.err
        lines = [line.split() for line in result.out.splitlines()]
        at = lines.index(["Pinning", "RDS", "Proxy", "sessions"])
        assert lines[at + 1 : at + 4] == [
            ["DATABASE", "IDENTITY", "REASON", "STATEMENTS"],
            [BILLING, f"{world.ns}/orders-app", "named_statement", "1250"],
            [BILLING, f"{world.ns}/batch", "set", "12"],
        ]
        doc = json.loads(frank.main("db", "ls", "-o", "json").out)
        dbs = {d["name"]: d for d in doc["databases"]}
        assert dbs[BILLING]["pinning"] == pinning
    finally:
        world.api.patch("Database", world.ns, BILLING, {"status": {"pinning": None}}, "status")
