"""What `rdsgate db connect` says when it cannot connect, and that it creates no Token then.

Each message names the fix; each exit code is the one `--help` documents.
"""

from __future__ import annotations

from pathlib import Path

from rdsgate.lab.postgres import free_port
from tests.cli.conftest import BILLING, ORDERS, MakePerson, World, write_kubeconfig


def test_a_missing_database_is_named(world: World, person: MakePerson) -> None:
    frank = person("frank")
    result = frank.main("db", "connect", "nope", "--db-user", "app", "--db-name", "orders")
    assert result.code == 3
    assert f"Database {world.ns}/nope not found" in result.err
    # -n picks another namespace, as with kubectl.
    other = frank.main(
        "db", "connect", ORDERS, "-n", "elsewhere", "--db-user", "app", "--db-name", "orders"
    )
    assert other.code == 3
    assert "Database elsewhere/orders not found" in other.err


def test_a_database_that_is_not_ready_quotes_its_condition(
    world: World, person: MakePerson
) -> None:
    ready = world.ready(BILLING)
    assert ready is not None and ready["status"] == "False"
    result = person("frank").main(
        "db", "connect", BILLING, "--db-user", "app", "--db-name", "orders"
    )
    assert result.code == 4
    assert (
        f"Database {world.ns}/{BILLING} is not Ready (ProxiesNotReady): {ready['message']}"
        in result.err
    )


def test_the_rule_that_refuses_is_named_and_no_token_is_made(
    world: World, person: MakePerson
) -> None:
    gail = person("gail")
    deny = gail.main("db", "connect", ORDERS, "--db-user", "postgres", "--db-name", "orders")
    assert deny.code == 5
    err = deny.err
    assert (
        f"access denied for database user 'postgres' on database 'orders' of Database "
        f"{world.ns}/orders: role 'app-rw' denies database user 'postgres' "
        "(deny.databaseUsers 'postgres')"
    ) in err

    given = gail.main(
        "db", "connect", ORDERS, "--role", "readonly", "--db-user", "app", "--db-name", "orders"
    )
    assert given.code == 5
    assert (
        "no role allows database user 'app' on database 'orders' here (roles: 'readonly')"
        in given.err
    )

    missing = gail.main(
        "db", "connect", ORDERS, "--role", "nope", "--db-user", "app", "--db-name", "orders"
    )
    assert missing.code == 3
    assert f"Role {world.ns}/nope not found (Roles in {world.ns}: app-rw, readonly)" in (
        missing.err
    )
    assert gail.tokens(world.api) == []


def test_psql_missing_says_how_to_install_it(
    world: World, person: MakePerson, tmp_path: Path
) -> None:
    hank = person("hank")
    hank.env_extra["PATH"] = str(tmp_path)  # no psql here
    result = hank.main("db", "connect", ORDERS, "--db-user", "app", "--db-name", "orders")
    assert result.code == 7
    err = result.err
    assert "psql is not installed" in err
    assert "apt-get install postgresql-client" in err
    assert "--print-env" in err
    assert hank.tokens(world.api) == []


def test_kubeconfig_problems(world: World, person: MakePerson, tmp_path: Path) -> None:
    ivan = person("ivan")
    ivan.env_extra["KUBECONFIG"] = str(tmp_path / "missing")
    result = ivan.main("db", "ls")
    assert result.code == 2
    assert f"cannot load the kubeconfig ({tmp_path / 'missing'})" in result.err

    ivan.env_extra.pop("KUBECONFIG")
    result = ivan.main("db", "ls", "--context", "nope")
    assert result.code == 2
    assert "context 'nope' is not in the kubeconfig" in result.err
    assert "it has: " in result.err

    closed = f"http://127.0.0.1:{free_port()}"
    ivan.env_extra["KUBECONFIG"] = str(
        write_kubeconfig(tmp_path / "closed", closed, "ivan", ivan.token, world.ns)
    )
    result = ivan.main("db", "ls")
    assert result.code == 2
    assert f"cannot reach the Kubernetes API at {closed}" in result.err
