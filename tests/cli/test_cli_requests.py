"""Access requests from the CLI: `db connect --request --reason`, `requests ls | approve |
deny` (docs/cli.md, docs/access-requests.md).

A world of this module's own, as in test_cli_admission.py: the API emulator calling the
operator's admission webhooks and answering SubjectAccessReviews from its RBAC objects, a
real `rdsgate-operator` (`start_gated_operator`) and the orders proxy pod. Besides app-rw
and readonly there is `orders-admin`, which allows `app` on orders too but requires
approval. Requesters get what docs/cli.md says a requester needs (`request` on
orders-admin), approvers what it says an approver needs (`approve` on it); every request
they sent is held against that RBAC afterwards.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from rdsgate.lab.rdsproxy import RdsProxyStandIn
from rdsgate.proxy.access import parse_access
from tests.cli.conftest import (
    ORDERS,
    ROLES,
    Background,
    MakePerson,
    Person,
    ProxyPod,
    World,
    build_world,
    psql,
    running_proxy_pod,
)
from tests.cli.rbac_docs import (
    allow_approvals,
    allow_requests,
    assert_within_documented_rbac,
    direct,
    give,
    grant,
)
from tests.fixtures.k8s import Api, ApiServer, OperatorProcess, start_gated_operator, wait_for
from tests.fixtures.lab import DbIdentity, LabCA

#: Like app-rw for `app` on orders, but every Token naming it waits for an approval.
ORDERS_ADMIN: dict[str, Any] = {
    "apiVersion": "rdsgate.dev/v1alpha1",
    "kind": "Role",
    "metadata": {"name": "orders-admin"},
    "spec": {
        "allow": {
            "databases": {"matchLabels": {"env": "test"}},
            "databaseNames": ["orders"],
            "databaseUsers": ["app"],
        },
        "options": {"requireApproval": True, "maxTokenTTL": "2h"},
    },
}
REASON = "INC-4711: fix stuck order"
LOGIN = ["--db-user", "app", "--db-name", "orders"]


@pytest.fixture(scope="module")
def gated_operator(
    private_k8s_api: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = start_gated_operator(private_k8s_api, tmp_path_factory.mktemp("requests-operator"))
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


@pytest.fixture(scope="module")
def proxy_pod(
    world: World, proxy_identity: DbIdentity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyPod]:
    with running_proxy_pod(world, proxy_identity, tmp_path_factory.mktemp("pod")) as pod:
        yield pod


# Helpers


def request_args(world: World, reason: str = REASON) -> list[str]:
    """`db connect orders --request --reason R` with the login, straight to the proxy, the
    environment printed (the command then exits)."""
    return ["db", "connect", ORDERS, "--request", "--reason", reason, *direct(world, *LOGIN)]


def one_line(text: str) -> str:
    return " ".join(text.split())


def approved_condition(world: World, name: str) -> dict[str, Any] | None:
    return Api.condition(world.api.get("Token", world.ns, name), "Approved")


def pending_token(world: World, who: Person, known: Sequence[str] = ()) -> dict[str, Any]:
    """`who`'s request (not one of `known`) once the operator says it waits for approval."""

    def found() -> dict[str, Any] | None:
        for token in who.tokens(world.api):
            cond = Api.condition(token, "Approved")
            if token["metadata"]["name"] not in known and cond and cond["reason"] == "Pending":
                return token
        return None

    token: dict[str, Any] = wait_for(found, f"{who.username}'s pending request", 30)
    return token


def wait_for_text(process: Background, text: str, timeout: float = 30) -> str:
    """The process's stderr once it says `text`."""

    def said() -> str | None:
        err = process.err()
        if text in err:
            return err
        if process.process.poll() is not None:
            pytest.fail(f"rdsgate exited with {process.process.returncode}:\n{err}")
        return None

    err: str = wait_for(said, f"the CLI to say {text!r}", timeout)
    return err


def grants(world: World) -> dict[str, Any]:
    """The grants of the orders proxy's access bundle, by identity."""
    secret = world.api.get("Secret", world.ns, "orders-rdsgate-access")
    assert secret is not None
    return dict(parse_access(yaml.safe_load(Api.secret_text(secret, "access.yaml"))).by_identity)


def listed(who: Person, *args: str) -> list[dict[str, Any]]:
    out = who.main("requests", "ls", "-o", "json", *args)
    assert out.code == 0, out.err
    rows: list[dict[str, Any]] = json.loads(out.out)["requests"]
    return rows


def row_of(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (row,) = [r for r in rows if r["name"] == name]
    return row


# The flows


def test_request_then_approve_then_psql_and_the_audit_names_both(
    world: World, proxy_pod: ProxyPod, person: MakePerson, tmp_path: Path
) -> None:
    alice, bob = person("alice"), person("bob")
    allow_requests(world, alice, "orders-admin")
    allow_approvals(world, bob, "orders-admin")

    waiting = alice.start(*request_args(world), stderr=tmp_path / "alice.err")
    try:
        token = pending_token(world, alice)
        name = token["metadata"]["name"]
        # Without --role: the Role she may request, not app-rw (which she may not even ask for).
        assert token["spec"]["roles"] == ["orders-admin"]
        assert token["metadata"]["annotations"]["rdsgate.dev/request-reason"] == REASON
        err = wait_for_text(waiting, "requests approve")
        assert f"✓ Requested access: Token {world.ns}/{name} (roles orders-admin)" in err
        assert (
            'Ask someone with the verb approve on roles.rdsgate.dev "orders-admin" in '
            f'{world.ns} to run:\n  rdsgate requests approve {name} -n {world.ns} --reason "..."'
        ) in err
        wait_for_text(waiting, f"Waiting for someone to approve Token {world.ns}/{name}")
        assert f"{world.ns}/{name}" not in grants(world)

        # The approver's view: the table and JSON.
        table = bob.main("requests", "ls")
        assert table.code == 0, table.err
        header, *rows = table.out.splitlines()
        assert header.split() == [
            "NAMESPACE", "NAME", "REQUESTER", "ROLES", "DATABASE", "USER", "AGE", "STATE",
            "APPROVER", "REASON",
        ]  # fmt: skip
        (row,) = [r for r in rows if r.split()[:2] == [world.ns, name]]
        assert row.split()[:6] == [world.ns, name, "alice", "orders-admin", ORDERS, "app"]
        assert row.split()[7:9] == ["Pending", "-"]
        assert row.endswith(REASON)
        assert (
            f'Decide on a pending request: rdsgate requests approve {name} -n {world.ns} --reason "..."'
            in table.out
        )
        pending = row_of(listed(bob), name)
        assert {
            k: pending[k] for k in ("namespace", "requestedBy", "roles", "reason", "state")
        } == {
            "namespace": world.ns,
            "requestedBy": "alice",
            "roles": ["orders-admin"],
            "reason": REASON,
            "state": "Pending",
        }
        assert (pending["database"], pending["databaseUser"], pending["databaseName"]) == (
            ORDERS,
            "app",
            "orders",
        )
        assert pending["approver"] is None and pending["age"].endswith("s")

        decided = bob.main("requests", "approve", name, "--reason", "on call, 30 min")
        assert decided.code == 0, decided.err
        assert decided.out.splitlines() == [
            f"✓ bob approved {world.ns}/{name}: alice's request for Role orders-admin (database "
            "user app on orders of Database orders, for 1h)",
            f"  asked because: {REASON}",
            "  approved because: on call, 30 min",
        ]

        env, marker = waiting.printed_env()
        assert waiting.process.wait(30) == 0, waiting.err()
    finally:
        waiting.kill()
    err = waiting.err()
    assert "✓ Approved by bob: on call, 30 min" in err
    assert (
        f"✓ Granted Token {world.ns}/{name} (roles orders-admin; approved by bob; expires " in err
    )
    assert f"Token {world.ns}/{name}" in marker
    result = psql(env, "select current_user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"

    started = [
        e
        for e in proxy_pod.audit()
        if e["event"] == "session.start" and e.get("identity") == f"{world.ns}/{name}"
    ]
    assert started, proxy_pod.audit()[-5:]
    assert {k: started[-1].get(k) for k in ("requested_by", "approved_by", "request_reason")} == {
        "requested_by": "alice",
        "approved_by": "bob",
        "request_reason": REASON,
    }
    assert started[-1]["approval_reason"] == "on call, 30 min"

    after = row_of(listed(bob), name)
    assert (after["state"], after["approver"], after["decisionReason"]) == (
        "Approved",
        "bob",
        "on call, 30 min",
    )
    # The next connect reuses the granted Token, and says who approved it.
    again = alice.run(*request_args(world))
    assert again.returncode == 0, again.stderr
    assert f"✓ Reusing Token {world.ns}/{name} (roles orders-admin; approved by bob;" in (
        again.stderr
    )
    assert len(alice.tokens(world.api)) == 1
    assert_within_documented_rbac(world, alice)
    assert_within_documented_rbac(world, bob)


def test_request_then_deny_ends_the_wait_with_who_and_why(
    world: World, proxy_pod: ProxyPod, person: MakePerson, tmp_path: Path
) -> None:
    carl, bob = person("carl"), person("bob-2")
    allow_requests(world, carl, "orders-admin")
    allow_approvals(world, bob, "orders-admin")
    waiting = carl.start(*request_args(world), stderr=tmp_path / "carl.err")
    try:
        name = pending_token(world, carl)["metadata"]["name"]
        decided = bob.main("requests", "deny", name, "--reason", "use the read replica")
        assert decided.code == 0, decided.err
        assert decided.out.splitlines()[0] == (
            f"✓ bob-2 denied {world.ns}/{name}: carl's request for Role orders-admin (database "
            "user app on orders of Database orders, for 1h)"
        )
        assert waiting.process.wait(30) == 5
    finally:
        waiting.kill()
    assert waiting.process.stdout is not None and waiting.process.stdout.read() == ""
    assert (
        f"error: your request {world.ns}/{name} was denied by bob-2: use the read replica"
        in one_line(waiting.err())
    )

    cond = approved_condition(world, name)
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "Denied")
    assert cond["message"].endswith(": use the read replica")
    ready = Api.condition(world.api.get("Token", world.ns, name), "Ready")
    assert ready is not None and ready["reason"] == "AccessDenied"
    denials = [e for e in world.api.events(world.ns, name) if e["reason"] == "AccessDenied"]
    assert denials and "bob-2" in denials[0]["message"]
    assert f"{world.ns}/{name}" not in grants(world)
    row = row_of(listed(bob), name)
    assert (row["state"], row["approver"], row["decisionReason"]) == (
        "Denied",
        "bob-2",
        "use the read replica",
    )
    # A denied request is not taken up again: the same command asks anew.
    again = carl.start(*request_args(world), stderr=tmp_path / "again.err")
    try:
        second = pending_token(world, carl, known=[name])["metadata"]["name"]
        err = wait_for_text(again, "Waiting for someone to approve")
        assert f"✓ Requested access: Token {world.ns}/{second}" in err
        assert "Found your request" not in err
        assert again.interrupt() == 130
    finally:
        again.kill()
    assert sorted(t["metadata"]["name"] for t in carl.tokens(world.api)) == sorted([name, second])
    assert_within_documented_rbac(world, carl)
    assert_within_documented_rbac(world, bob)


def test_who_may_approve_and_the_approver_recorded_is_the_real_one(
    world: World, proxy_pod: ProxyPod, person: MakePerson, tmp_path: Path
) -> None:
    """dana may request and approve orders-admin, but not her own request; erik approves
    app-rw requests only; bob's client claims someone else approved: the API server's word
    is recorded."""
    dana, erik, bob = person("dana"), person("erik"), person("bob-3")
    allow_requests(world, dana, "orders-admin")
    allow_approvals(world, dana, "orders-admin")
    allow_approvals(world, erik, "app-rw")
    allow_approvals(world, bob, "orders-admin")
    # --timeout does not run while a person decides: it counts from the approval.
    waiting = dana.start(*request_args(world), "--timeout", "4s", stderr=tmp_path / "dana.err")
    try:
        name = pending_token(world, dana)["metadata"]["name"]
        wait_for_text(waiting, "Waiting for someone to approve")
        time.sleep(4.5)
        assert waiting.process.poll() is None, waiting.err()

        own = dana.main("requests", "approve", name, "--reason", "trust me")
        assert own.code == 5, own.err
        assert own.out == ""
        assert (
            f'error: cannot approve Token {world.ns}/{name}: admission webhook "tokens.rdsgate.dev" '
            "denied the request: dana may not approve their own request: someone else with the "
            "verb approve on its Roles must"
        ) in one_line(own.err)

        other = erik.main("requests", "approve", name, "--reason", "looks fine")
        assert other.code == 5, other.err
        assert one_line(other.err).endswith(
            f'erik may not approve requests for Role "orders-admin" in namespace "{world.ns}" '
            '(needs verb approve on roles.rdsgate.dev "orders-admin")'
        )
        denied = erik.main("requests", "deny", name, "--reason", "no")
        assert denied.code == 5 and "erik may not deny requests for Role" in one_line(denied.err)
        assert approved_condition(world, name)["reason"] == "Pending"  # type: ignore[index]

        # bob's client sends approved-by "dana"; the webhook writes who bob is.
        forged = Api(world.server.url, bob.token).patch(
            "Token",
            world.ns,
            name,
            {
                "metadata": {
                    "annotations": {
                        "rdsgate.dev/approved-by": "dana",
                        "rdsgate.dev/approval-reason": "INC-4711 confirmed",
                    }
                }
            },
        )
        assert forged["metadata"]["annotations"]["rdsgate.dev/approved-by"] == "bob-3"
        waiting.printed_env()
        assert waiting.process.wait(30) == 0
    finally:
        waiting.kill()
    assert "✓ Approved by bob-3: INC-4711 confirmed" in waiting.err()
    token = world.api.get("Token", world.ns, name)
    assert token is not None and token["status"]["approvedBy"] == "bob-3"
    assert row_of(listed(bob), name)["approver"] == "bob-3"
    grant_ = grants(world)[f"{world.ns}/{name}"]
    assert (grant_.requested_by, grant_.approved_by) == ("dana", "bob-3")

    again = erik.main("requests", "approve", "no-such-token", "--reason", "x")
    assert again.code == 3 and f"Token {world.ns}/no-such-token not found" in again.err
    late = bob.main("requests", "deny", name, "--reason", "changed my mind")
    assert late.code == 5 and "the decision on this Token is recorded" in one_line(late.err)
    for who in (dana, erik, bob):
        assert_within_documented_rbac(world, who)


def test_ctrl_c_leaves_the_request_pending_and_the_same_command_takes_it_up(
    world: World, proxy_pod: ProxyPod, person: MakePerson, tmp_path: Path
) -> None:
    fay, bob = person("fay"), person("bob-4")
    allow_requests(world, fay, "orders-admin")
    allow_approvals(world, bob, "orders-admin")
    args = request_args(world)
    first = fay.start(*args, stderr=tmp_path / "first.err")
    try:
        name = pending_token(world, fay)["metadata"]["name"]
        wait_for_text(first, "Waiting for someone to approve")
        assert first.interrupt() == 130
    finally:
        first.kill()
    err = first.err()
    assert f"! Stopped waiting. Your request {world.ns}/{name} stays pending (it expires at " in err
    assert "unless someone approves it first). To come back to it, run the same command:" in err
    assert f"\n  rdsgate {shlex.join(args)}\n" in err
    assert "Traceback" not in err
    assert approved_condition(world, name)["reason"] == "Pending"  # type: ignore[index]

    second = fay.start(*args, stderr=tmp_path / "second.err")
    try:
        err = wait_for_text(second, "Waiting for someone to approve")
        assert f"✓ Found your request {world.ns}/{name}, asked " in err
        assert f"ago: {REASON}" in err
        assert "Requested access" not in err
        assert f"rdsgate requests approve {name} -n {world.ns}" in err
        assert [t["metadata"]["name"] for t in fay.tokens(world.api)] == [name]
        decided = bob.main("requests", "approve", name, "--reason", "ok")
        assert decided.code == 0, decided.err
        second.printed_env()
        assert second.process.wait(30) == 0
    finally:
        second.kill()
    assert [t["metadata"]["name"] for t in fay.tokens(world.api)] == [name]
    assert_within_documented_rbac(world, fay)


def test_usage_and_a_role_that_requires_approval_without_request(
    world: World, person: MakePerson
) -> None:
    gus = person("gus")
    # gus may bind orders-admin: it still requires an approval.
    grant(world, gus, "orders-admin")
    reason_only = gus.main("db", "connect", ORDERS, *LOGIN, "--reason", "why not")
    assert reason_only.code == 2
    assert "error: --reason goes with --request" in reason_only.err
    request_only = gus.main("db", "connect", ORDERS, *LOGIN, "--request")
    assert request_only.code == 2
    assert 'error: --request needs --reason "why you need it"' in request_only.err

    refused = gus.main("db", "connect", ORDERS, *direct(world, *LOGIN))
    assert refused.code == 5, refused.err
    assert refused.out == ""
    assert (
        'admission webhook "tokens.rdsgate.dev" denied the request: Role "orders-admin" requires '
        "approval: say why you need access in the annotation rdsgate.dev/request-reason"
    ) in one_line(refused.err)
    assert one_line(refused.err).endswith(
        'To ask for an approval, add --request --reason "why you need it"'
    )
    assert gus.tokens(world.api) == []
    assert_within_documented_rbac(world, gus)


def test_requests_ls_everywhere_and_nothing_to_list(world: World, person: MakePerson) -> None:
    """Tokens that carry a request reason or wait(ed) for an approval are requests; others
    are not. -A lists every namespace's."""
    hana, admin = person("hana"), person("cluster-admin")
    allow_requests(world, hana, "orders-admin")
    give(
        world,
        admin,
        "reader",
        [{"apiGroups": ["rdsgate.dev"], "resources": ["tokens"], "verbs": ["list"]}],
    )

    def token(name: str, role: str, annotations: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Token",
            "metadata": {"name": name, "namespace": world.ns, "annotations": annotations},
            "spec": {
                "roles": [role],
                "ttl": "1h",
                "database": ORDERS,
                # A waiting Token is held by a key or a ServiceAccount, never a Secret.
                "subject": {"serviceAccount": {"name": name}},
            },
        }

    reason = {"rdsgate.dev/request-reason": "INC-1: look at orders"}
    Api(world.server.url, hana.token).create(token("hana-asks", "orders-admin", reason))
    world.api.create(token("hana-needs-no-approval", "readonly", {}))  # the cluster admin binds
    wait_for(
        lambda: (c := approved_condition(world, "hana-asks")) and c["reason"] == "Pending",
        "hana's request to be pending",
        30,
    )
    wait_for(
        lambda: approved_condition(world, "hana-needs-no-approval"), "the other Token's status", 30
    )
    everywhere = listed(admin, "-A")
    names = [r["name"] for r in everywhere]
    assert "hana-asks" in names and "hana-needs-no-approval" not in names
    # The only namespace with Tokens in this emulator; "age" is reckoned at each listing.
    ageless = [{k: v for k, v in r.items() if k != "age"} for r in everywhere]
    assert ageless == [{k: v for k, v in r.items() if k != "age"} for r in listed(admin)]
    row = row_of(everywhere, "hana-asks")
    assert (row["requestedBy"], row["state"], row["reason"]) == (
        "hana",
        "Pending",
        "INC-1: look at orders",
    )
    assert names.index("hana-asks") < min(
        [i for i, r in enumerate(everywhere) if r["state"] != "Pending"], default=len(names)
    ), "pending requests come first"

    empty = admin.main("requests", "ls", "-n", "nobody-here")
    assert (empty.code, empty.out) == (0, "")
    assert "No access requests in namespace nobody-here." in empty.err
    as_yaml = admin.main("requests", "ls", "-n", "nobody-here", "-o", "yaml")
    assert yaml.safe_load(as_yaml.out) == {"requests": []}
    world.api.delete("Token", world.ns, "hana-asks")
    world.api.delete("Token", world.ns, "hana-needs-no-approval")


def test_a_request_that_needs_no_approval_is_granted_at_once_for_its_ttl(
    world: World, proxy_pod: ProxyPod, person: MakePerson
) -> None:
    """jan may bind app-rw, which requires no approval: `--request` changes nothing but the
    reason on record, and the Token expires after its TTL like any other."""
    jan = person("jan")
    grant(world, jan, "app-rw")
    out = jan.run(
        "db", "connect", ORDERS, "--role", "app-rw", "--request", "--reason", "INC-9: a look",
        *direct(world, *LOGIN),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Ask someone" not in out.stderr and "Approved by" not in out.stderr
    (token,) = jan.tokens(world.api)
    name = token["metadata"]["name"]
    cond = Api.condition(token, "Approved")
    assert cond is not None and cond["reason"] == "NotRequired"
    row = row_of(listed(jan), name)
    assert (row["state"], row["reason"]) == ("NotRequired", "INC-9: a look")
    assert_within_documented_rbac(world, jan)
    # Its TTL runs from its creation.
    assert f"✓ Created Token {world.ns}/{name} (roles app-rw; expires " in out.stderr
    assert token["status"].get("expiresAt"), token["status"]
