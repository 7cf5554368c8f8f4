"""`rdsgate db logout`: the caller's CLI Tokens and key pairs go, nobody else's.

Also who "the caller" is when the API has no SelfSubjectReview: the kubeconfig's user.
"""

from __future__ import annotations

from tests.cli.conftest import BILLING, ORDERS, MakePerson, Person, ProxyPod, World
from tests.fixtures.k8s import wait_for


def connect(who: Person, world: World, user: str, *extra: str) -> None:
    """A `db connect --print-env` straight to the proxy (it ends once the proxy accepts)."""
    result = who.main(
        "db", "connect", ORDERS, "--db-user", user, "--db-name", "orders",
        "--address", f"127.0.0.1:{world.port}", "--print-env", *extra,
    )  # fmt: skip
    assert result.code == 0, result.err


def test_logout_deletes_the_callers_tokens_and_key_pair(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    jack = person(None, kubeconfig_user="jack-kubeconfig")  # the API cannot say who he is
    kim = person("kim")
    connect(jack, world, "app")
    connect(jack, world, "reporting")
    connect(kim, world, "app")

    mine = jack.tokens(world.api)
    assert len(mine) == 2
    for token in mine:
        assert token["metadata"]["labels"]["rdsgate.dev/owner"] == "jack-kubeconfig"
        assert token["metadata"]["annotations"]["rdsgate.dev/owner-source"] == "kubeconfig"
    names = sorted(t["metadata"]["name"] for t in mine)
    assert all(n.startswith("orders-jack-kubeconfig-") for n in names)
    assert [p.name for p in jack.keys.iterdir()] == [ORDERS]
    assert sorted(p.name for p in (jack.keys / ORDERS).iterdir()) == sorted(
        ["ca.crt", "tls.key", *(f"{n}.crt" for n in names)]
    )

    other = jack.main("db", "logout", BILLING)
    assert other.code == 0
    assert "Nothing to remove" in other.out
    assert len(jack.tokens(world.api)) == 2
    assert (jack.keys / ORDERS / "tls.key").exists()

    result = jack.main("db", "logout", ORDERS)
    assert result.code == 0, result.err
    deleted = [
        f"Deleted Token {world.ns}/{t['metadata']['name']} (Database orders, "
        f"user {t['spec']['databaseUser']}, database orders)"
        for t in sorted(mine, key=lambda t: str(t["metadata"]["name"]))
    ]
    assert result.out.splitlines() == [
        *deleted,
        f"Removed {jack.keys / ORDERS} (your key pair)",
    ]
    # Tokens with a ttl carry the operator's finalizer: gone once it has let go.
    wait_for(lambda: not jack.tokens(world.api), "jack's Tokens to be deleted", 20)
    assert list(jack.keys.iterdir()) == []
    # Somebody else's: their Token and their key pair stay.
    assert len(kim.tokens(world.api)) == 1
    assert (kim.keys / ORDERS / "tls.key").exists()

    again = jack.main("db", "logout")
    assert again.code == 0
    assert "Nothing to remove: no Tokens of yours (jack-kubeconfig)" in again.out

    # A new connect after logout makes a new key pair and a new Token for it.
    connect(jack, world, "app")
    (token,) = jack.tokens(world.api)
    assert token["metadata"]["name"] not in names
    assert (jack.keys / ORDERS / "tls.key").exists()


def test_logout_without_a_name_removes_every_key_pair_of_the_namespace(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    lena = person("lena")
    connect(lena, world, "reporting")
    (token,) = lena.tokens(world.api)
    stray = lena.keys / BILLING  # a key pair left from a connect that never got a Token
    stray.mkdir(mode=0o700)
    (stray / "tls.key").write_text("x")

    result = lena.main("db", "logout")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"Deleted Token {world.ns}/{token['metadata']['name']} (Database orders, user "
        "reporting, database orders)",
        f"Removed {lena.keys / BILLING} (your key pair)",
        f"Removed {lena.keys / ORDERS} (your key pair)",
    ]
    assert list(lena.keys.iterdir()) == []
    wait_for(lambda: not lena.tokens(world.api), "lena's Token to be deleted", 20)
