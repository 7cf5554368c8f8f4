"""A request nobody answers expires, and `db connect --request` says so at once.

A world of this module's own whose operator expires pending requests after 3 seconds
(`--request-timeout 3s`); no proxy runs (nothing gets that far).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from rdsgate.lab.rdsproxy import RdsProxyStandIn
from tests.cli.conftest import ROLES, MakePerson, World, build_world
from tests.cli.rbac_docs import allow_approvals, allow_requests, assert_within_documented_rbac
from tests.cli.test_cli_requests import (
    ORDERS_ADMIN,
    approved_condition,
    listed,
    one_line,
    request_args,
    row_of,
)
from tests.fixtures.k8s import ApiServer, OperatorProcess, start_gated_operator
from tests.fixtures.lab import LabCA


@pytest.fixture(scope="module")
def gated_operator(
    private_k8s_api: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = start_gated_operator(
        private_k8s_api, tmp_path_factory.mktemp("expiring-operator"), "--request-timeout", "3s"
    )
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
        private_k8s_api, gated_operator, rds_proxy, lab_ca, roles=[*ROLES, ORDERS_ADMIN]
    )


def test_an_unanswered_request_expires_and_the_cli_says_so(
    world: World, person: MakePerson, tmp_path: Path
) -> None:
    ida, bob = person("ida"), person("bob")
    allow_requests(world, ida, "orders-admin")
    allow_approvals(world, bob, "orders-admin")
    args = request_args(world)
    out = ida.run(*args, timeout=60)
    assert out.returncode == 6, out.stderr
    assert out.stdout == ""
    (token,) = ida.tokens(world.api)
    name = token["metadata"]["name"]
    err = one_line(out.stderr)
    assert "Ask someone with the verb approve" in err  # it was pending first
    assert f"error: your request {world.ns}/{name} expired: nobody approved it by 20" in err
    assert err.endswith(
        f" UTC. To ask again, run the same command: rdsgate {one_line(shlex.join(args))}"
    )

    cond = approved_condition(world, name)
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "Expired")
    assert "AccessRequestExpired" in {e["reason"] for e in world.api.events(world.ns, name)}
    assert row_of(listed(bob), name)["state"] == "Expired"
    late = bob.main("requests", "approve", name, "--reason", "sorry, late")
    assert late.code == 5
    assert "the request expired at" in one_line(late.err)

    # The same command asks again, with a new Token: an expired request is not taken up.
    again = ida.run(*args, timeout=60)
    assert again.returncode == 6
    assert "Found your request" not in again.stderr
    assert len(ida.tokens(world.api)) == 2
    assert_within_documented_rbac(world, ida)
    assert_within_documented_rbac(world, bob)
