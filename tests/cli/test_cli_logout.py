"""`rdsgate db logout`: the caller's CLI Tokens and files go, nobody else's.

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


def test_logout_deletes_the_callers_tokens_and_files(
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
    files = jack.cache / "rdsgate" / "kmock" / world.ns
    assert sorted(p.name for p in files.iterdir()) == names

    other = jack.main("db", "logout", BILLING)
    assert other.code == 0
    assert "Nothing to remove" in other.out
    assert len(jack.tokens(world.api)) == 2

    result = jack.main("db", "logout", ORDERS)
    assert result.code == 0, result.err
    deleted = [
        f"Deleted Token {world.ns}/{t['metadata']['name']} (Database orders, "
        f"user {t['spec']['databaseUser']}, database orders)"
        for t in sorted(mine, key=lambda t: str(t["metadata"]["name"]))
    ]
    assert result.out.splitlines() == deleted + [f"Removed {files / n}" for n in names]
    # Tokens with a ttl carry the operator's finalizer: gone once it has let go.
    wait_for(lambda: not jack.tokens(world.api), "jack's Tokens to be deleted", 20)
    assert list(files.iterdir()) == []
    assert len(kim.tokens(world.api)) == 1  # somebody else's

    again = jack.main("db", "logout")
    assert again.code == 0
    assert "Nothing to remove: no Tokens of yours (jack-kubeconfig)" in again.out
