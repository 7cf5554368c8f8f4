"""Access requests through the webhooks: request, approve or deny, expiry, TTLs, live RBAC.

The real `rdsgate-operator` with its webhooks registered (`start_gated_operator`, with a
short `--request-timeout`); the emulator calls them and answers SubjectAccessReviews from
its RBAC objects. Alice may only `request` prod-admin (a Role with `requireApproval` and
`maxTokenTTL: 2h`); Bob and Carol may `approve` it; Dave may `bind` app-ro, which needs no
approval, and nothing else. What each test asserts is what `kubectl` shows.
"""

from __future__ import annotations

import itertools
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import yaml

from rdsgate.operator.status import parse_timestamp
from rdsgate.proxy.access import parse_access
from tests.fixtures.k8s import (
    EXAMPLES_DIR,
    RBAC_V1,
    Api,
    ApiError,
    ApiServer,
    OperatorProcess,
    start_gated_operator,
    wait_for,
)

PEOPLE = {
    "alice-token": {"username": "alice", "groups": ["developers", "system:authenticated"]},
    "bob-token": {"username": "bob", "groups": ["oncall-leads", "system:authenticated"]},
    "carol-token": {"username": "carol", "groups": ["oncall-leads", "system:authenticated"]},
    "dave-token": {"username": "dave", "groups": ["system:authenticated"]},
}
REQUEST_TIMEOUT = 4


@pytest.fixture(scope="module")
def k8s(private_k8s_api: ApiServer) -> ApiServer:
    private_k8s_api.emulator.users.update(PEOPLE)
    return private_k8s_api


@pytest.fixture(scope="module")
def operator(k8s: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = start_gated_operator(
        k8s, tmp_path_factory.mktemp("operator"), "--request-timeout", f"{REQUEST_TIMEOUT}s"
    )
    yield op
    op.stop()


_namespaces = itertools.count(1)


def rbac_role(ns: str, name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_V1,
        "kind": "Role",
        "metadata": {"name": name, "namespace": ns},
        "rules": rules,
    }


def binding(ns: str, role: str, kind: str, subject: str) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_V1,
        "kind": "RoleBinding",
        "metadata": {"name": f"{role}-{subject}", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject}],
    }


def rule(verb: str, role: str) -> dict[str, Any]:
    return {
        "apiGroups": ["rdsgate.dev"],
        "resources": ["roles"],
        "resourceNames": [role],
        "verbs": [verb],
    }


@pytest.fixture
def ns(k8s: ApiServer, operator: OperatorProcess) -> str:
    name = f"requests-{next(_namespaces)}"
    api = Api(k8s.url)
    database = yaml.safe_load((EXAMPLES_DIR / "database.yaml").read_text())
    database["metadata"]["namespace"] = name
    database["metadata"]["labels"] = {"env": "prod"}
    api.create(database)
    for example in ("role-prod-admin.yaml", "role-app-ro.yaml"):
        doc = yaml.safe_load((EXAMPLES_DIR / example).read_text())
        doc["metadata"]["namespace"] = name
        api.create(doc)
    tokens = {
        "apiGroups": ["rdsgate.dev"],
        "resources": ["tokens"],
        "verbs": ["get", "list", "create", "update", "patch", "delete"],
    }
    api.create(rbac_role(name, "token-user", [tokens]))
    api.create(rbac_role(name, "request-prod-admin", [rule("request", "prod-admin")]))
    api.create(rbac_role(name, "approve-prod-admin", [rule("approve", "prod-admin")]))
    api.create(rbac_role(name, "bind-app-ro", [rule("bind", "app-ro")]))
    for group in ("developers", "oncall-leads"):
        api.create(binding(name, "token-user", "Group", group))
    api.create(binding(name, "token-user", "User", "dave"))
    api.create(binding(name, "request-prod-admin", "Group", "developers"))
    api.create(binding(name, "approve-prod-admin", "Group", "oncall-leads"))
    api.create(binding(name, "bind-app-ro", "User", "dave"))
    return name


def metric(op: OperatorProcess, sample: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def as_user(k8s: ApiServer, who: str) -> Api:
    return Api(k8s.url, f"{who}-token")


def request(
    ns: str, name: str, *roles: str, reason: str | None = "INC-4711: fix a stuck order", **spec: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if reason is not None:
        meta["annotations"] = {"rdsgate.dev/request-reason": reason}
    return {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Token",
        "metadata": meta,
        "spec": {"roles": list(roles), "subject": {"serviceAccount": {"name": name}}, **spec},
    }


def refusal(call: Any) -> ApiError:
    with pytest.raises(ApiError) as refused:
        call()
    return refused.value


def approved(api: Api, ns: str, name: str, reason: str) -> dict[str, Any] | None:
    cond = Api.condition(api.get("Token", ns, name), "Approved")
    return cond if cond and cond["reason"] == reason else None


def bundle_grants(api: Api, ns: str) -> dict[str, Any]:
    secret = api.get("Secret", ns, "orders-rdsgate-access")
    if secret is None:
        return {}
    return dict(parse_access(yaml.safe_load(Api.secret_text(secret, "access.yaml"))).by_identity)


def decide(k8s: ApiServer, who: str, ns: str, name: str, verb: str, reason: str) -> dict[str, Any]:
    by, why = (
        ("approved-by", "approval-reason") if verb == "approve" else ("denied-by", "denial-reason")
    )
    return as_user(k8s, who).patch(
        "Token",
        ns,
        name,
        {
            "metadata": {
                "annotations": {f"rdsgate.dev/{by}": "the boss", f"rdsgate.dev/{why}": reason}
            }
        },
    )


def test_a_request_waits_then_an_approval_grants_it_for_the_roles_ttl(
    k8s: ApiServer, ns: str, operator: OperatorProcess
) -> None:
    api = Api(k8s.url)
    refused = refusal(
        lambda: as_user(k8s, "alice").create(request(ns, "no-reason", "prod-admin", reason=None))
    )
    assert refused.status == 422
    assert (
        'Role "prod-admin" requires approval: say why you need access in the annotation rdsgate.dev/request-reason'
        in refused.message
    )

    as_user(k8s, "alice").create(request(ns, "alice-prod", "prod-admin", ttl="8h"))
    pending = wait_for(
        lambda: approved(api, ns, "alice-prod", "Pending"), "Approved=Pending", 20, operator.tail
    )
    assert pending["status"] == "Unknown"
    assert "alice asks for Role(s) prod-admin (INC-4711: fix a stuck order)" in pending["message"]
    token = api.get("Token", ns, "alice-prod")
    assert token is not None
    ready = Api.condition(token, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "ApprovalPending")
    assert "expiresAt" not in token["status"], "the TTL has not started"
    assert f"{ns}/alice-prod" not in bundle_grants(api, ns)
    events = {e["reason"]: e for e in api.events(ns, "alice-prod")}
    assert "INC-4711" in events["AccessRequested"]["message"]

    # Not alice herself, not dave (no approve), and a forged approver name is replaced.
    refused = refusal(lambda: decide(k8s, "alice", ns, "alice-prod", "approve", "lgtm"))
    assert refused.status == 403
    assert "alice may not approve their own request" in refused.message
    refused = refusal(lambda: decide(k8s, "dave", ns, "alice-prod", "approve", "lgtm"))
    assert refused.message.endswith(
        f'dave may not approve requests for Role "prod-admin" in namespace "{ns}" '
        '(needs verb approve on roles.rdsgate.dev "prod-admin")'
    )
    refused = refusal(
        lambda: as_user(k8s, "bob").patch(
            "Token",
            ns,
            "alice-prod",
            {"metadata": {"annotations": {"rdsgate.dev/approved-by": "bob"}}},
        )
    )
    assert (
        "say why you approve Token 'alice-prod': set rdsgate.dev/approval-reason" in refused.message
    )
    decided = decide(k8s, "bob", ns, "alice-prod", "approve", "INC-4711 confirmed, 2h max")
    annotations = decided["metadata"]["annotations"]
    assert annotations["rdsgate.dev/approved-by"] == "bob"
    decided_at = parse_timestamp(annotations["rdsgate.dev/decided-at"])

    done = wait_for(
        lambda: approved(api, ns, "alice-prod", "Approved"), "Approved=True", 20, operator.tail
    )
    assert done["message"] == (
        "bob approved alice's request for Role(s) prod-admin (INC-4711: fix a stuck order): "
        "INC-4711 confirmed, 2h max"
    )
    status = wait_for(
        lambda: (
            (t := api.get("Token", ns, "alice-prod"))
            and t["status"].get("expiresAt")
            and t["status"]
        ),
        "status.expiresAt",
        20,
    )
    # The TTL runs from the approval, cut from 8h to the Role's maxTokenTTL.
    assert parse_timestamp(status["expiresAt"]) == decided_at + timedelta(hours=2)
    assert (status["approvedBy"], status["ttl"]) == ("bob", "2h")
    assert parse_timestamp(status["approvedAt"]) == decided_at
    expired = Api.condition({"status": status}, "Expired")
    assert (
        expired is not None
        and "(spec.ttl cut to 2h by the maxTokenTTL of Role prod-admin)" in expired["message"]
    )
    grant = wait_for(lambda: bundle_grants(api, ns).get(f"{ns}/alice-prod"), "the grant", 20)
    assert (grant.requested_by, grant.approved_by, grant.approval_reason, grant.request_reason) == (
        "alice",
        "bob",
        "INC-4711 confirmed, 2h max",
        "INC-4711: fix a stuck order",
    )
    assert "AccessApproved" in {e["reason"] for e in api.events(ns, "alice-prod")}
    assert metric(operator, 'rdsgate_operator_access_requests_total{outcome="requested"}') >= 1
    assert metric(operator, 'rdsgate_operator_access_requests_total{outcome="approved"}') >= 1
    assert metric(operator, "rdsgate_operator_access_request_decision_seconds_count") >= 1

    # Once decided, nobody changes it, not even the cluster admin.
    refused = refusal(lambda: decide(k8s, "carol", ns, "alice-prod", "deny", "changed my mind"))
    assert refused.status == 422 and "the decision on this Token is recorded" in refused.message
    refused = refusal(lambda: api.patch("Token", ns, "alice-prod", {"spec": {"ttl": "30d"}}))
    assert "spec.ttl of a requested Token cannot change" in refused.message

    # The approver losing `approve` changes nothing (rechecks keep coming every second)...
    api.delete("RoleBinding", ns, "approve-prod-admin-oncall-leads", api_version=RBAC_V1)
    rechecks = len([c for c in k8s.emulator.calls if c.resource == "subjectaccessreviews"])
    wait_for(
        lambda: (
            len([c for c in k8s.emulator.calls if c.resource == "subjectaccessreviews"])
            >= rechecks + 2
        ),
        "two more rechecks",
        20,
    )
    assert f"{ns}/alice-prod" in bundle_grants(api, ns)
    ready = Api.condition(api.get("Token", ns, "alice-prod"), "Ready")
    assert ready is not None and ready["reason"] == "Granted"
    # ... the requester losing `request` ends it.
    api.delete("RoleBinding", ns, "request-prod-admin-developers", api_version=RBAC_V1)
    revoked = wait_for(
        lambda: (
            (c := Api.condition(api.get("Token", ns, "alice-prod"), "Ready"))
            and c["reason"] == "BindRevoked"
            and c
        ),
        "the grant to go with alice's request",
        20,
        operator.tail,
    )
    assert revoked["message"].startswith(
        f'alice may no longer bind Role "prod-admin" in namespace "{ns}"'
    )


def test_a_denial_grants_nothing_and_says_who_and_why(
    k8s: ApiServer, ns: str, operator: OperatorProcess
) -> None:
    api = Api(k8s.url)
    as_user(k8s, "alice").create(request(ns, "alice-deny", "prod-admin"))
    wait_for(lambda: approved(api, ns, "alice-deny", "Pending"), "Pending", 20, operator.tail)
    decided = decide(k8s, "carol", ns, "alice-deny", "deny", "use the read replica")
    assert decided["metadata"]["annotations"]["rdsgate.dev/denied-by"] == "carol"
    cond = wait_for(lambda: approved(api, ns, "alice-deny", "Denied"), "Denied", 20, operator.tail)
    assert cond["status"] == "False"
    assert cond["message"].endswith(": use the read replica")
    ready = Api.condition(api.get("Token", ns, "alice-deny"), "Ready")
    assert ready is not None and ready["reason"] == "AccessDenied"
    assert ready["message"].startswith("denied by carol: use the read replica")
    events = [e for e in api.events(ns, "alice-deny") if e["reason"] == "AccessDenied"]
    assert events and events[0]["type"] == "Warning" and "carol" in events[0]["message"]
    assert f"{ns}/alice-deny" not in bundle_grants(api, ns)


def test_a_token_cannot_be_created_approved(k8s: ApiServer, ns: str) -> None:
    forged = request(ns, "alice-forged", "prod-admin")
    forged["metadata"]["annotations"] |= {
        "rdsgate.dev/approved-by": "bob",
        "rdsgate.dev/approval-reason": "trust me",
    }
    refused = refusal(lambda: as_user(k8s, "alice").create(forged))
    assert refused.status == 422
    assert "a Token is approved by an update of it, by someone else, not created approved" in (
        refused.message
    )


def test_an_unanswered_request_expires(k8s: ApiServer, ns: str, operator: OperatorProcess) -> None:
    api = Api(k8s.url)
    as_user(k8s, "alice").create(request(ns, "alice-late", "prod-admin"))
    cond = wait_for(
        lambda: approved(api, ns, "alice-late", "Expired"), "Expired", 30, operator.tail
    )
    assert cond["status"] == "False"
    assert "AccessRequestExpired" in {e["reason"] for e in api.events(ns, "alice-late")}
    refused = refusal(lambda: decide(k8s, "bob", ns, "alice-late", "approve", "sorry, late"))
    assert "the request expired at" in refused.message


def test_request_works_for_any_role_and_bind_needs_no_approval(
    k8s: ApiServer, ns: str, operator: OperatorProcess
) -> None:
    """dave binds app-ro: granted at once, and nobody can "approve" it; alice may not even
    request app-ro (she has no verb on it)."""
    api = Api(k8s.url)
    as_user(k8s, "dave").create(request(ns, "dave-ro", "app-ro", reason=None))
    wait_for(lambda: approved(api, ns, "dave-ro", "NotRequired"), "NotRequired", 20, operator.tail)
    wait_for(lambda: bundle_grants(api, ns).get(f"{ns}/dave-ro"), "dave's grant", 20)
    refused = refusal(lambda: decide(k8s, "bob", ns, "dave-ro", "approve", "why not"))
    assert "is not waiting for an approval" in refused.message
    refused = refusal(lambda: as_user(k8s, "alice").create(request(ns, "alice-ro", "app-ro")))
    assert refused.message.endswith(
        f'alice may not bind Role "app-ro" in namespace "{ns}" (needs verb bind on roles.rdsgate.dev "app-ro")'
    )
