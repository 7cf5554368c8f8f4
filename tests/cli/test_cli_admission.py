"""`rdsgate db` where the API server gates Tokens: the operator's admission webhooks, RBAC
`bind` on Roles, and the requester stamped on every Token (docs/access-control.md).

A world of this module's own: an API emulator that calls admission webhooks and answers
SubjectAccessReviews from the RBAC objects it stores, a real `rdsgate-operator` serving
its webhooks over HTTPS (`--admission-url`) and re-checking `bind` every second, and the
orders proxy pod. People get exactly the RBAC that docs/cli.md says a person needs (its
YAML is read from the page), plus `bind` on some Roles; everything their kubeconfig sends
is then held against that RBAC, as the API server's authorizer would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from rdsgate.lab.rdsproxy import RdsProxyStandIn
from tests.cli.conftest import (
    ORDERS,
    ROLES,
    MakePerson,
    ProxyPod,
    World,
    build_world,
    psql,
    running_proxy_pod,
)
from tests.cli.rbac_docs import assert_within_documented_rbac, direct, exports, grant
from tests.fixtures.k8s import (
    RBAC_V1,
    Api,
    ApiServer,
    OperatorProcess,
    start_gated_operator,
    wait_for,
)
from tests.fixtures.lab import DbIdentity, LabCA

#: A Role that, like readonly, allows `reporting`: a person who may bind only readonly gets
#: a Token naming only readonly by default, not one the webhook would refuse.
ALSO_REPORTING: dict[str, Any] = {
    "apiVersion": "rdsgate.dev/v1alpha1",
    "kind": "Role",
    "metadata": {"name": "reporting-too"},
    "spec": {"allow": {"databases": {}, "databaseNames": ["*"], "databaseUsers": ["reporting"]}},
}


@pytest.fixture(scope="module")
def gated_operator(
    private_k8s_api: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """An operator of this module's own, with its admission webhooks registered."""
    op = start_gated_operator(private_k8s_api, tmp_path_factory.mktemp("gated-operator"))
    yield op
    op.stop()


@pytest.fixture(scope="module")
def world(
    private_k8s_api: ApiServer,
    gated_operator: OperatorProcess,
    rds_proxy: RdsProxyStandIn,
    lab_ca: LabCA,
) -> World:
    return build_world(
        private_k8s_api, gated_operator, rds_proxy, lab_ca, roles=[*ROLES, ALSO_REPORTING]
    )


@pytest.fixture(scope="module")
def proxy_pod(
    world: World, proxy_identity: DbIdentity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyPod]:
    with running_proxy_pod(world, proxy_identity, tmp_path_factory.mktemp("pod")) as pod:
        yield pod


def test_connect_with_the_documented_rbac_and_the_requester_recorded(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    alice = person("alice")
    grant(world, alice, "app-rw", "readonly")
    out = alice.run(
        "db", "connect", ORDERS, *direct(world, "--db-user", "app", "--db-name", "orders")
    )
    assert out.returncode == 0, out.stderr
    result = psql(exports(out.stdout), "select current_user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"

    (token,) = alice.tokens(world.api)
    name = token["metadata"]["name"]
    assert token["metadata"]["annotations"]["rdsgate.dev/requested-by"] == "alice"
    assert json.loads(token["metadata"]["annotations"]["rdsgate.dev/requested-by-groups"]) == [
        "system:authenticated"
    ]
    assert token["status"]["requestedBy"] == "alice"
    started = [
        e
        for e in proxy_pod.audit()
        if e["event"] == "session.start" and e.get("identity") == f"{world.ns}/{name}"
    ]
    assert started and started[-1]["requested_by"] == "alice", proxy_pod.audit()[-5:]

    listed = alice.main("db", "ls", "-o", "json")
    assert listed.code == 0, listed.err
    (orders,) = [d for d in json.loads(listed.out)["databases"] if d["name"] == ORDERS]
    assert [(t["name"], t["requestedBy"]) for t in orders["tokens"]] == [(name, "alice")]
    table = alice.main("db", "ls")
    (row,) = [line for line in table.out.splitlines() if line.startswith(name)]
    assert row.split()[-1] == "alice"

    assert_within_documented_rbac(world, alice)


def test_default_roles_are_the_ones_you_may_bind(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    """readonly and reporting-too both allow reporting; bruno may bind only readonly."""
    bruno = person("bruno")
    grant(world, bruno, "readonly")
    out = bruno.run(
        "db", "connect", ORDERS, *direct(world, "--db-user", "reporting", "--db-name", "orders")
    )
    assert out.returncode == 0, out.stderr
    (token,) = bruno.tokens(world.api)
    assert token["spec"]["roles"] == ["readonly"]
    assert_within_documented_rbac(world, bruno)


def test_a_role_you_may_not_bind_is_refused_by_the_api_server(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    chen = person("chen")
    grant(world, chen, "readonly")
    named = chen.main(
        "db", "connect", ORDERS, "--role", "app-rw",
        *direct(world, "--db-user", "app", "--db-name", "orders"),
    )  # fmt: skip
    assert named.code == 5, named.err
    refusal = (
        'admission webhook "tokens.rdsgate.dev" denied the request: chen may not bind Role '
        f'"app-rw" in namespace "{world.ns}" (needs verb bind on roles.rdsgate.dev "app-rw")'
    )
    assert f"error: cannot create Token {world.ns}/orders-chen-" in named.err
    assert refusal in " ".join(named.err.split())
    assert named.out == ""

    # By default too: app-rw is the only Role that allows app, so it is asked for anyway.
    default = chen.main(
        "db", "connect", ORDERS, *direct(world, "--db-user", "app", "--db-name", "orders")
    )
    assert default.code == 5, default.err
    assert refusal in " ".join(default.err.split())
    assert chen.tokens(world.api) == []
    assert_within_documented_rbac(world, chen)


def test_a_token_is_yours_when_the_api_server_says_you_asked_for_it(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    """A Token labelled and annotated as dana's, but created by someone else, is not hers:
    `db ls` does not show it and `db logout` leaves it."""
    dana = person("dana")
    grant(world, dana, "readonly")
    connected = dana.run(
        "db", "connect", ORDERS, *direct(world, "--db-user", "reporting", "--db-name", "orders")
    )
    assert connected.returncode == 0, connected.stderr
    (own,) = dana.tokens(world.api)
    forged = Api(world.server.url).create(  # the cluster admin, as far as admission knows
        {
            "kind": "Token",
            "metadata": {
                "name": "orders-dana-forged",
                "namespace": world.ns,
                "labels": own["metadata"]["labels"],
                "annotations": {
                    "rdsgate.dev/owner-name": "dana",
                    "rdsgate.dev/owner-source": "SelfSubjectReview",
                    "rdsgate.dev/requested-by": "dana",  # overwritten by admission
                },
            },
            "spec": {"roles": ["readonly"], "ttl": "1h", "database": ORDERS},
        }
    )
    assert forged["metadata"]["annotations"]["rdsgate.dev/requested-by"] == "kubernetes-admin"

    listed = json.loads(dana.main("db", "ls", "-o", "json").out)
    (orders,) = [d for d in listed["databases"] if d["name"] == ORDERS]
    assert [t["name"] for t in orders["tokens"]] == [own["metadata"]["name"]]

    out = dana.main("db", "logout", ORDERS)
    assert out.code == 0, out.err
    assert f"Deleted Token {world.ns}/{own['metadata']['name']}" in out.out
    assert "forged" not in out.out
    wait_for(
        lambda: world.api.get("Token", world.ns, own["metadata"]["name"]) is None,
        "dana's Token to go",
        20,
    )
    assert world.api.get("Token", world.ns, "orders-dana-forged") is not None
    world.api.delete("Token", world.ns, "orders-dana-forged")


def test_a_withdrawn_bind_ends_the_grant_and_a_new_token_is_refused(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    emil = person("emil")
    binding = grant(world, emil, "readonly")
    args = direct(world, "--db-user", "reporting", "--db-name", "orders")
    first = emil.run("db", "connect", ORDERS, *args)
    assert first.returncode == 0, first.stderr
    (token,) = emil.tokens(world.api)
    name = token["metadata"]["name"]

    world.api.delete("RoleBinding", world.ns, binding, api_version=RBAC_V1)
    revoked = wait_for(
        lambda: (
            (c := Api.condition(world.api.get("Token", world.ns, name), "Ready"))
            and c["reason"] == "BindRevoked"
            and c
        ),
        "the operator to withdraw emil's grant",
        30,
        world.operator.tail,
    )
    assert "emil may no longer bind Role" in revoked["message"]

    again = emil.main("db", "connect", ORDERS, *args)
    assert again.code == 5, again.err
    assert "Reusing" not in again.err
    assert "emil may not bind Role" in " ".join(again.err.split())
