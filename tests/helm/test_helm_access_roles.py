"""Who may do what with rdsgate's resources (docs/access-control.md): the chart's aggregated
ClusterRoles and the RBAC examples in deploy/examples/rbac/.

Requests are decided by tests/fixtures/rbac.py as the API server's RBAC authorizer decides
them, with Kubernetes' own `view`, `edit` and `admin` aggregating as the API server
bootstraps them (view into edit into admin). `bind` on roles.rdsgate.dev is asked the way the
validating webhook asks it, with a SubjectAccessReview for verb bind on the Role's name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.fixtures.k8s import EXAMPLES_DIR
from tests.fixtures.rbac import Policy
from tests.helm.chart import (
    AGGREGATE,
    KUBERNETES_USER_ROLES,
    crd_schema,
    may,
    objects,
    one,
    render,
    validate_kubernetes,
)

RBAC_EXAMPLES = EXAMPLES_DIR / "rbac"
RDSGATE = "rdsgate.dev"
RBAC_GROUP = "rbac.authorization.k8s.io"
SHOP = "shop"
ELSEWHERE = "billing"


@pytest.fixture(scope="module")
def chart() -> list[dict[str, Any]]:
    return render({})


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def rbac_examples() -> dict[str, list[dict[str, Any]]]:
    return {p.name: load(p) for p in sorted(RBAC_EXAMPLES.glob("*.yaml"))}


def binding(
    name: str, role_kind: str, role: str, subject_kind: str, subject: str
) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": SHOP},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": role_kind, "name": role},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": subject_kind, "name": subject}],
    }


# The aggregated ClusterRoles


def test_the_aggregated_roles_are_as_designed(chart: list[dict[str, Any]]) -> None:
    rules: dict[str, list[dict[str, Any]]] = {}
    for name, into in (("view", "view"), ("edit", "edit"), ("admin", "admin")):
        role = one(chart, "ClusterRole", f"rdsgate-{name}")
        labels = role["metadata"]["labels"]
        assert {k: v for k, v in labels.items() if k.startswith(AGGREGATE)} == {
            AGGREGATE + into: "true"
        }
        assert labels["app.kubernetes.io/instance"] == "rdsgate"
        assert "aggregationRule" not in role
        rules[name] = role["rules"]
    assert rules["view"] == [
        {
            "apiGroups": [RDSGATE],
            "resources": ["databases", "roles", "tokens"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert rules["edit"] == [
        {
            "apiGroups": [RDSGATE],
            "resources": ["tokens"],
            "verbs": ["create", "update", "patch", "delete", "deletecollection"],
        }
    ]
    assert rules["admin"] == [
        {
            "apiGroups": [RDSGATE],
            "resources": ["databases", "roles"],
            "verbs": ["create", "update", "patch", "delete", "deletecollection"],
        },
        {"apiGroups": [RDSGATE], "resources": ["roles"], "verbs": ["bind"]},
    ]
    # Only admin binds; nobody gets the status subresources (the operator's) or Secrets.
    for name, role_rules in rules.items():
        verbs = {v for r in role_rules for v in r["verbs"]}
        resources = {res for r in role_rules for res in r["resources"]}
        assert ("bind" in verbs) == (name == "admin"), name
        assert not {"*", "escalate", "impersonate"} & verbs
        assert not [r for r in resources if "/" in r or r in ("*", "secrets")]


def test_the_aggregated_roles_follow_the_release_and_can_be_left_out() -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"fullnameOverride": "dbgate"}, "rdsgate", "dbgate"),
        ({}, "team-a", "team-a-rdsgate"),
        ({"rbac": {"create": False}}, "rdsgate", "rdsgate"),  # people's roles, not the operator's
    ]
    for values, release, prefix in cases:
        names = {
            d["metadata"]["name"] for d in objects(render(values, release=release), "ClusterRole")
        }
        assert {f"{prefix}-view", f"{prefix}-edit", f"{prefix}-admin"} <= names, values
    off = render({"rbac": {"aggregateRoles": False}})
    assert not [
        d for d in objects(off, "ClusterRole") if AGGREGATE[:-1] in str(d["metadata"]["labels"])
    ]
    assert sorted(d["metadata"]["name"] for d in objects(off, "ClusterRole")) == [
        "rdsgate-operator",
        "rdsgate-proxy-tokenreview",
    ]


READ = [
    (verb, resource)
    for resource in ("databases", "roles", "tokens")
    for verb in ("get", "list", "watch")
]
TOKENS = [(verb, "tokens") for verb in ("create", "update", "patch", "delete", "deletecollection")]
ADMIN = [
    (verb, resource)
    for resource in ("databases", "roles")
    for verb in ("create", "update", "patch", "delete", "deletecollection")
]


def test_binding_kubernetes_view_edit_admin(chart: list[dict[str, Any]]) -> None:
    """A RoleBinding of Kubernetes' view, edit or admin in shop gives, there, what the
    chart's README says; and no bind short of admin."""
    docs = [
        *chart,
        *KUBERNETES_USER_ROLES,
        binding("viewer", "ClusterRole", "view", "User", "vera"),
        binding("editor", "ClusterRole", "edit", "User", "ed"),
        binding("admin", "ClusterRole", "admin", "User", "ada"),
    ]
    expected = {"vera": READ, "ed": READ + TOKENS, "ada": READ + TOKENS + ADMIN}
    everything = READ + TOKENS + ADMIN
    for user, allowed in expected.items():
        for verb, resource in everything:
            name = "" if verb in ("list", "watch", "create", "deletecollection") else "x"
            got = may(docs, user, [], verb, resource, SHOP, name, RDSGATE)
            assert got == ((verb, resource) in allowed), (user, verb, resource)
            assert not may(docs, user, [], verb, resource, ELSEWHERE, name, RDSGATE)
        for role in ("app-ro", "app-rw", "made-up-later"):
            assert may(docs, user, [], "bind", "roles", SHOP, role, RDSGATE) == (user == "ada")
            assert not may(docs, user, [], "bind", "roles", ELSEWHERE, role, RDSGATE)
        for status in ("databases/status", "roles/status", "tokens/status"):
            assert not may(docs, user, [], "patch", status, SHOP, "x", RDSGATE)


# The examples


def test_the_rbac_examples_are_valid_and_say_what_they_allow(chart: list[dict[str, Any]]) -> None:
    examples = rbac_examples()
    assert set(examples) == {"team-app-ro.yaml", "oncall-shop.yaml"}
    chart_cluster_roles = {d["metadata"]["name"] for d in objects(chart, "ClusterRole")}
    rdsgate_roles = {
        d["metadata"]["name"]
        for p in EXAMPLES_DIR.glob("*.yaml")
        for d in load(p)
        if d["apiVersion"].startswith(f"{RDSGATE}/") and d["kind"] == "Role"
    }
    for name, docs in examples.items():
        text = (RBAC_EXAMPLES / name).read_text()
        header = text[: text.index("apiVersion:")]
        assert header.startswith("#") and "Allows:" in header and "Does not allow:" in header
        roles_here = {d["metadata"]["name"] for d in docs if d["kind"] == "Role"}
        for doc in docs:
            validate_kubernetes(doc)
            assert doc["apiVersion"] == f"{RBAC_GROUP}/v1", name
            assert doc["metadata"]["namespace"] == SHOP, name
            if doc["kind"] == "RoleBinding":
                ref = doc["roleRef"]
                known = chart_cluster_roles if ref["kind"] == "ClusterRole" else roles_here
                assert ref["name"] in known, f"{name}: {ref} is not installed"
            for rule in doc.get("rules") or ():
                if rule["resources"] == ["roles"]:
                    assert set(rule.get("resourceNames") or ()) <= rdsgate_roles


def test_the_role_app_ro_example() -> None:
    (role,) = load(EXAMPLES_DIR / "role-app-ro.yaml")
    crds = objects(render({}, "--include-crds"), "CustomResourceDefinition")
    (schema,) = [crd_schema(d) for d in crds if d["spec"]["names"]["kind"] == "Role"]
    jsonschema.Draft7Validator(schema).validate(role)
    assert (role["kind"], role["metadata"]) == ("Role", {"name": "app-ro", "namespace": SHOP})
    allow = role["spec"]["allow"]
    assert allow["databaseUsers"] == ["app_ro"]
    assert allow["databaseNames"] == ["orders"]


#: What `kubectl rdsgate db connect` asks of the API in shop (docs/cli.md), besides `bind`:
#: (verb, resource, name, group). It never reads a Secret (docs/access-control.md).
CONNECT = [
    ("list", "databases", "", RDSGATE),
    ("get", "databases", "orders", RDSGATE),
    ("list", "roles", "", RDSGATE),
    ("create", "tokens", "", RDSGATE),
    ("get", "tokens", "orders-dana-x7k2p", RDSGATE),
    ("watch", "tokens", "", RDSGATE),
    ("delete", "tokens", "orders-dana-x7k2p", RDSGATE),
    ("list", "pods", "", ""),
    ("create", "pods/portforward", "orders-rdsgate-7d4b9-x2x7p", ""),
    ("get", "pods/portforward", "orders-rdsgate-7d4b9-x2x7p", ""),
    ("get", "services", "orders", ""),
    ("get", "configmaps", "rdsgate-ca", ""),
]
#: What neither group may do anywhere.
NEVER = [
    ("get", "secrets", "orders-app-db", ""),
    ("list", "secrets", "", ""),
    ("watch", "secrets", "", ""),
    ("get", "configmaps", "orders-rdsgate", ""),
    ("create", "roles", "", RDSGATE),
    ("patch", "roles", "app-ro", RDSGATE),
    ("delete", "databases", "orders", RDSGATE),
    ("patch", "tokens/status", "orders-app", RDSGATE),
    ("create", "pods", "", ""),
    ("create", "pods/exec", "orders-rdsgate-7d4b9-x2x7p", ""),
    ("create", "rolebindings", "", RBAC_GROUP),
    ("create", "roles", "", RBAC_GROUP),
    ("bind", "clusterroles", "rdsgate-admin", RBAC_GROUP),
    ("escalate", "roles", "team-analytics", RBAC_GROUP),
]


def with_examples(chart: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*chart, *KUBERNETES_USER_ROLES, *(d for docs in rbac_examples().values() for d in docs)]


def rules_anywhere_but(
    docs: list[dict[str, Any]], groups: Iterable[str], namespace: str
) -> list[Any]:
    """The rules that apply to a member of `groups` cluster-wide or in another namespace."""
    policy = Policy(docs)
    groups = [*groups, "system:authenticated"]
    found = [rule for _, rule, _ in policy.visit_rules("someone", groups, "")]
    namespaces = {d["metadata"].get("namespace") for d in docs} - {None, namespace}
    for other in namespaces | {ELSEWHERE}:
        found += [
            rule
            for source, rule, _ in policy.visit_rules("someone", groups, other)
            if not source.startswith("ClusterRoleBinding")
        ]
    return found


def test_team_analytics_may_bind_app_ro_only(chart: list[dict[str, Any]]) -> None:
    docs = with_examples(chart)
    group = ["team-analytics"]
    assert may(docs, "dana", group, "bind", "roles", SHOP, "app-ro", RDSGATE)
    for role in ("app-rw", "readonly", "made-up-later"):
        assert not may(docs, "dana", group, "bind", "roles", SHOP, role, RDSGATE), role
    for verb, resource, name, api_group in CONNECT:
        assert may(docs, "dana", group, verb, resource, SHOP, name, api_group), (verb, resource)
    for verb, resource, name, api_group in NEVER:
        assert not may(docs, "dana", group, verb, resource, SHOP, name, api_group), (verb, resource)
    # Nothing outside shop, and no rule that names Secrets at all.
    assert rules_anywhere_but(docs, group, SHOP) == []
    for _, rule, _ in Policy(docs).visit_rules("dana", [*group, "system:authenticated"], SHOP):
        assert rule is not None
        assert not {"secrets", "*"} & rule.resources and "*" not in rule.verbs
    # Membership is what grants it.
    for verb, resource, name, api_group in CONNECT:
        assert not may(docs, "dana", ["oncall-ish"], verb, resource, SHOP, name, api_group)


def test_oncall_may_bind_every_role_of_shop_and_nothing_elsewhere(
    chart: list[dict[str, Any]],
) -> None:
    docs = with_examples(chart)
    group = ["oncall"]
    for role in ("app-ro", "app-rw", "readonly", "made-up-later"):
        assert may(docs, "olga", group, "bind", "roles", SHOP, role, RDSGATE), role
        assert not may(docs, "olga", group, "bind", "roles", ELSEWHERE, role, RDSGATE), role
        assert not may(docs, "olga", group, "bind", "roles", "", role, RDSGATE), role
    for verb, resource, name, api_group in CONNECT:
        assert may(docs, "olga", group, verb, resource, SHOP, name, api_group), (verb, resource)
        assert not may(docs, "olga", group, verb, resource, ELSEWHERE, name, api_group)
    for verb, resource, name, api_group in NEVER:
        assert not may(docs, "olga", group, verb, resource, SHOP, name, api_group), (verb, resource)
    assert rules_anywhere_but(docs, group, SHOP) == []


def test_someone_in_neither_group_gets_nothing(chart: list[dict[str, Any]]) -> None:
    docs = with_examples(chart)
    for verb, resource, name, api_group in [*CONNECT, ("bind", "roles", "app-ro", RDSGATE)]:
        assert not may(docs, "eve", ["developers"], verb, resource, SHOP, name, api_group)
