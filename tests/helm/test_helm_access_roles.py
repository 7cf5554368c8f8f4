"""Who may do what with rdsgate's resources (docs/access-control.md, docs/access-requests.md):
the chart's aggregated ClusterRoles, the RBAC examples in deploy/examples/rbac/ and the Role
examples they name.

Requests are decided by tests/fixtures/rbac.py as the API server's RBAC authorizer decides
them, with Kubernetes' own `view`, `edit` and `admin` aggregating as the API server
bootstraps them (view into edit into admin). `bind`, `request` and `approve` on
roles.rdsgate.dev are asked the way the validating webhook asks them, with a
SubjectAccessReview for that verb on the Role's name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from rdsgate.proxy.durations import parse_duration
from tests.fixtures.k8s import EXAMPLES_DIR
from tests.fixtures.rbac import Policy, selector_matches
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
#: The verbs on roles.rdsgate.dev that decide who may hand out and who may approve access.
ROLE_VERBS = ("bind", "request", "approve")


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
            "resources": ["databases", "databasediscoveries", "roles", "tokens"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert rules["edit"] == [
        {
            "apiGroups": [RDSGATE],
            "resources": ["tokens"],
            "verbs": ["create", "update", "patch", "delete", "deletecollection"],
        },
        {"apiGroups": [RDSGATE], "resources": ["roles"], "verbs": ["request"]},
    ]
    assert rules["admin"] == [
        {
            "apiGroups": [RDSGATE],
            "resources": ["databases", "databasediscoveries", "roles"],
            "verbs": ["create", "update", "patch", "delete", "deletecollection"],
        },
        {"apiGroups": [RDSGATE], "resources": ["roles"], "verbs": ["bind", "approve"]},
    ]
    # edit requests (and admin, which aggregates edit); only admin binds and approves; the
    # three verbs are on roles only, with no resourceNames (every Role of the namespace).
    # Nobody gets the status subresources (the operator's) or Secrets.
    own = {"view": set(), "edit": {"request"}, "admin": {"bind", "approve"}}
    for name, role_rules in rules.items():
        verbs = {v for r in role_rules for v in r["verbs"]}
        resources = {res for r in role_rules for res in r["resources"]}
        assert verbs & set(ROLE_VERBS) == own[name], name
        for rule in role_rules:
            if set(rule["verbs"]) & set(ROLE_VERBS):
                assert rule["resources"] == ["roles"] and "resourceNames" not in rule
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
    for resource in ("databases", "databasediscoveries", "roles", "tokens")
    for verb in ("get", "list", "watch")
]
TOKENS = [(verb, "tokens") for verb in ("create", "update", "patch", "delete", "deletecollection")]
ADMIN = [
    (verb, resource)
    for resource in ("databases", "databasediscoveries", "roles")
    for verb in ("create", "update", "patch", "delete", "deletecollection")
]


def test_binding_kubernetes_view_edit_admin(chart: list[dict[str, Any]]) -> None:
    """A RoleBinding of Kubernetes' view, edit or admin in shop gives, there, what the
    chart's README says: edit may request every Role (and wait for an approval), only admin
    may bind and approve them."""
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
        role_verbs = {"vera": set(), "ed": {"request"}, "ada": {"request", "bind", "approve"}}
        for role in ("app-ro", "app-rw", "prod-admin", "made-up-later"):
            for verb in ROLE_VERBS:
                got = may(docs, user, [], verb, "roles", SHOP, role, RDSGATE)
                assert got == (verb in role_verbs[user]), (user, verb, role)
                assert not may(docs, user, [], verb, "roles", ELSEWHERE, role, RDSGATE)
        for status in (
            "databases/status",
            "databasediscoveries/status",
            "roles/status",
            "tokens/status",
        ):
            assert not may(docs, user, [], "patch", status, SHOP, "x", RDSGATE)


# The examples


def test_the_rbac_examples_are_valid_and_say_what_they_allow(chart: list[dict[str, Any]]) -> None:
    examples = rbac_examples()
    assert set(examples) == {
        "team-app-ro.yaml",
        "oncall-shop.yaml",
        "developers-request-prod-admin.yaml",
        "oncall-leads-approve-prod-admin.yaml",
    }
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
                if "roles" in rule["resources"] and RDSGATE in rule["apiGroups"]:
                    assert rule["resources"] == ["roles"], name
                    assert set(rule["verbs"]) <= set(ROLE_VERBS), name
                    assert set(rule.get("resourceNames") or ()) <= rdsgate_roles


@pytest.fixture(scope="module")
def role_schema() -> dict[str, Any]:
    crds = objects(render({}, "--include-crds"), "CustomResourceDefinition")
    (schema,) = [crd_schema(d) for d in crds if d["spec"]["names"]["kind"] == "Role"]
    return schema


def undeclared(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """The fields of `value` its structural schema does not declare: the API server prunes
    them on the way in, silently (a CRD's schema need not say additionalProperties: false,
    so jsonschema alone lets them through)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                found += undeclared(item, properties[key], f"{path}.{key}")
            elif isinstance(additional, dict):
                found += undeclared(item, additional, f"{path}.{key}")
            elif additional is not True:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += undeclared(item, schema["items"], f"{path}[{i}]")
    return found


def role_examples() -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d
        for p in sorted(EXAMPLES_DIR.glob("*.yaml"))
        for d in load(p)
        if d["apiVersion"].startswith(f"{RDSGATE}/") and d["kind"] == "Role"
    }


def test_the_role_examples_are_valid_and_keep_every_field(role_schema: dict[str, Any]) -> None:
    roles = role_examples()
    assert {"app-ro", "app-rw", "prod-admin"} <= set(roles)
    for name, role in roles.items():
        jsonschema.Draft7Validator(role_schema).validate(role)
        # metadata is ObjectMeta, never pruned.
        fields = {k: v for k, v in role.items() if k != "metadata"}
        assert undeclared(fields, role_schema) == [], f"{name}: fields the API server drops"
        assert role["metadata"]["namespace"] == SHOP


def test_the_role_app_ro_example() -> None:
    role = role_examples()["app-ro"]
    assert (role["kind"], role["metadata"]) == ("Role", {"name": "app-ro", "namespace": SHOP})
    allow = role["spec"]["allow"]
    assert allow["databaseUsers"] == ["app_ro"]
    assert allow["databaseNames"] == ["orders"]


def test_the_role_prod_admin_example() -> None:
    """app_admin on every database of the prod Databases, only with an approval, for 2 hours
    at most (docs/access-requests.md)."""
    text = (EXAMPLES_DIR / "role-prod-admin.yaml").read_text()
    assert text.startswith("#") and "requireApproval" in text[: text.index("apiVersion:")]
    role = role_examples()["prod-admin"]
    assert role["metadata"] == {"name": "prod-admin", "namespace": SHOP}
    assert role["spec"]["options"] == {"requireApproval": True, "maxTokenTTL": "2h"}
    assert parse_duration(role["spec"]["options"]["maxTokenTTL"]) == 2 * 3600
    allow = role["spec"]["allow"]
    assert allow == {
        "databases": {"matchLabels": {"env": "prod"}},
        "databaseNames": ["*"],
        "databaseUsers": ["app_admin"],
    }
    # It selects the example Database (orders, env: prod).
    (database,) = load(EXAMPLES_DIR / "database.yaml")
    assert database["metadata"]["namespace"] == SHOP
    assert selector_matches(allow["databases"], database["metadata"]["labels"])
    assert not selector_matches(allow["databases"], {"env": "staging"})


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
#: What no group of the examples may do anywhere.
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


def test_someone_in_none_of_the_groups_gets_nothing(chart: list[dict[str, Any]]) -> None:
    docs = with_examples(chart)
    role_requests = [
        (verb, "roles", role, RDSGATE) for verb in ROLE_VERBS for role in ("app-ro", "prod-admin")
    ]
    for verb, resource, name, api_group in [*CONNECT, *role_requests]:
        assert not may(docs, "eve", ["contractors"], verb, resource, SHOP, name, api_group)


# Access requests (docs/access-requests.md): who may ask for prod-admin, who may approve it


def test_team_analytics_and_oncall_may_request_but_not_approve(
    chart: list[dict[str, Any]],
) -> None:
    """Both bind rdsgate-edit, which requests every Role: a Token of theirs naming a Role they
    may not bind waits for an approval, which neither group may give."""
    docs = with_examples(chart)
    for user, group in (("dana", "team-analytics"), ("olga", "oncall")):
        for role in ("app-ro", "app-rw", "prod-admin", "made-up-later"):
            assert may(docs, user, [group], "request", "roles", SHOP, role, RDSGATE), role
            assert not may(docs, user, [group], "approve", "roles", SHOP, role, RDSGATE), role
            assert not may(docs, user, [group], "request", "roles", ELSEWHERE, role, RDSGATE)


def test_developers_may_request_prod_admin_only(chart: list[dict[str, Any]]) -> None:
    docs = with_examples(chart)
    group = ["developers"]
    assert may(docs, "dev", group, "request", "roles", SHOP, "prod-admin", RDSGATE)
    assert not may(docs, "dev", group, "request", "roles", ELSEWHERE, "prod-admin", RDSGATE)
    for role in ("prod-admin", "app-ro", "app-rw", "readonly", "made-up-later"):
        assert not may(docs, "dev", group, "bind", "roles", SHOP, role, RDSGATE), role
        assert not may(docs, "dev", group, "approve", "roles", SHOP, role, RDSGATE), role
        if role != "prod-admin":
            assert not may(docs, "dev", group, "request", "roles", SHOP, role, RDSGATE), role
    # Creating Tokens, and all of db connect.
    for verb, resource, name, api_group in CONNECT:
        assert may(docs, "dev", group, verb, resource, SHOP, name, api_group), (verb, resource)
        assert not may(docs, "dev", group, verb, resource, ELSEWHERE, name, api_group)
    # A decision is the approver's: no update or patch of Tokens.
    for verb in ("update", "patch", "deletecollection"):
        assert not may(docs, "dev", group, verb, "tokens", SHOP, "orders-dev-x7k2p", RDSGATE)
    for verb, resource, name, api_group in NEVER:
        assert not may(docs, "dev", group, verb, resource, SHOP, name, api_group), (verb, resource)
    assert rules_anywhere_but(docs, group, SHOP) == []
    # Not rdsgate-edit (its request covers every Role), and no rule naming Secrets.
    for source, rule, _ in Policy(docs).visit_rules("dev", [*group, "system:authenticated"], SHOP):
        assert "rdsgate-edit" not in source
        assert rule is not None
        assert not {"secrets", "*"} & rule.resources and "*" not in rule.verbs


#: What approving asks of the API: find the pending Tokens, read one, annotate it.
APPROVE = [
    ("list", "tokens", ""),
    ("get", "tokens", "orders-dev-x7k2p"),
    ("update", "tokens", "orders-dev-x7k2p"),
    ("patch", "tokens", "orders-dev-x7k2p"),
]


def test_oncall_leads_may_approve_prod_admin_only(chart: list[dict[str, Any]]) -> None:
    docs = with_examples(chart)
    group = ["oncall-leads"]
    assert may(docs, "lee", group, "approve", "roles", SHOP, "prod-admin", RDSGATE)
    for namespace in (ELSEWHERE, ""):
        assert not may(docs, "lee", group, "approve", "roles", namespace, "prod-admin", RDSGATE)
    for role in ("app-ro", "app-rw", "readonly", "made-up-later"):
        assert not may(docs, "lee", group, "approve", "roles", SHOP, role, RDSGATE), role
    for role in ("prod-admin", "app-ro", "app-rw", "made-up-later"):
        for verb in ("bind", "request"):
            assert not may(docs, "lee", group, verb, "roles", SHOP, role, RDSGATE), (verb, role)
    for verb, resource, name in APPROVE:
        assert may(docs, "lee", group, verb, resource, SHOP, name, RDSGATE), verb
        assert not may(docs, "lee", group, verb, resource, ELSEWHERE, name, RDSGATE), verb
    # Nothing else: no Tokens of their own, no db connect, no Databases or Roles, no status.
    others = [
        ("create", "tokens", ""),
        ("delete", "tokens", "orders-dev-x7k2p"),
        ("deletecollection", "tokens", ""),
        ("watch", "tokens", ""),
        ("patch", "tokens/status", "orders-dev-x7k2p"),
        ("get", "roles", "prod-admin"),
        ("list", "databases", ""),
    ]
    for verb, resource, name in others:
        assert not may(docs, "lee", group, verb, resource, SHOP, name, RDSGATE), (verb, resource)
    for verb, resource, name, api_group in [*CONNECT[7:], *NEVER]:
        assert not may(docs, "lee", group, verb, resource, SHOP, name, api_group), (verb, resource)
    assert rules_anywhere_but(docs, group, SHOP) == []
    rules = [
        rule
        for _, rule, _ in Policy(docs).visit_rules("lee", [*group, "system:authenticated"], SHOP)
    ]
    assert {(v, res) for r in rules if r is not None for v in r.verbs for res in r.resources} == {
        ("approve", "roles"),
        *((verb, resource) for verb, resource, _ in APPROVE),
    }


def test_requesters_and_approvers_are_different_people(chart: list[dict[str, Any]]) -> None:
    """No group of the examples both requests and approves prod-admin; with Kubernetes'
    admin one may do both, and the webhook refuses approving one's own request."""
    docs = with_examples(chart)
    groups = ["team-analytics", "oncall", "developers", "oncall-leads"]
    for group in groups:
        request = may(docs, "x", [group], "request", "roles", SHOP, "prod-admin", RDSGATE)
        approve = may(docs, "x", [group], "approve", "roles", SHOP, "prod-admin", RDSGATE)
        assert not (request and approve), group
    assert [
        g for g in groups if may(docs, "x", [g], "approve", "roles", SHOP, "prod-admin", RDSGATE)
    ] == ["oncall-leads"]
