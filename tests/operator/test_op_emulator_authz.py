"""The API emulator answers SubjectAccessReviews as kube-apiserver's RBAC authorizer does.

First the authorizer alone (tests/fixtures/rbac.py, over a list of RBAC objects), then the
same decisions asked over HTTP of the emulator, where the objects are created, changed and
deleted through the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.k8s import RBAC_V1, Api, ApiError, ApiServer
from tests.fixtures.rbac import Attributes, Rule, authorize, kubernetes_user_roles

AGGREGATE_TO_EDIT = {"rbac.authorization.k8s.io/aggregate-to-edit": "true"}


def role(
    name: str, namespace: str | None, *rules: dict[str, Any], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"labels": labels} if labels else {})}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": RBAC_V1,
        "kind": "Role" if namespace is not None else "ClusterRole",
        "metadata": meta,
        "rules": list(rules),
    }


def binding(
    name: str, namespace: str | None, ref_kind: str, ref_name: str, *subjects: dict[str, Any]
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": RBAC_V1,
        "kind": "RoleBinding" if namespace is not None else "ClusterRoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": ref_kind, "name": ref_name},
        "subjects": list(subjects),
    }


def user(name: str) -> dict[str, Any]:
    return {"kind": "User", "name": name, "apiGroup": "rbac.authorization.k8s.io"}


def group(name: str) -> dict[str, Any]:
    return {"kind": "Group", "name": name, "apiGroup": "rbac.authorization.k8s.io"}


def rule(
    verbs: list[str], resources: list[str], groups: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"apiGroups": groups or [""], "resources": resources, "verbs": verbs, **extra}


def attrs(verb: str, resource: str, namespace: str = "", name: str = "", **kw: Any) -> Attributes:
    return Attributes(verb=verb, resource=resource, namespace=namespace, name=name, **kw)


READ_CONFIGMAPS = rule(["get", "list"], ["configmaps"])


# The authorizer


def test_a_role_binding_grants_a_user_its_role_in_its_namespace_only() -> None:
    objects = [
        role("reader", "shop", READ_CONFIGMAPS),
        binding("alice-reads", "shop", "Role", "reader", user("alice")),
    ]
    assert authorize(objects, "alice", [], attrs("get", "configmaps", "shop", "c")) == (
        True,
        'RBAC: allowed by RoleBinding "alice-reads/shop" of Role "reader" to User "alice"',
    )
    assert authorize(objects, "alice", [], attrs("list", "configmaps", "shop")) == (
        True,
        ('RBAC: allowed by RoleBinding "alice-reads/shop" of Role "reader" to User "alice"'),
    )
    assert authorize(objects, "alice", [], attrs("get", "configmaps", "other", "c")) == (False, "")
    assert authorize(objects, "alice", [], attrs("delete", "configmaps", "shop", "c"))[0] is False
    assert authorize(objects, "alice", [], attrs("get", "secrets", "shop", "c"))[0] is False
    assert authorize(objects, "bob", [], attrs("get", "configmaps", "shop", "c"))[0] is False
    assert authorize(objects, "alice", [], attrs("get", "configmaps", "", "c"))[0] is False


def test_group_and_service_account_subjects() -> None:
    sa_default_ns = {"kind": "ServiceAccount", "name": "app"}
    sa_other_ns = {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"}
    objects = [
        role("reader", "shop", READ_CONFIGMAPS),
        binding("devs-read", "shop", "Role", "reader", group("devs")),
        binding("sas-read", "shop", "Role", "reader", sa_default_ns, sa_other_ns),
    ]
    get = attrs("get", "configmaps", "shop", "c")
    assert authorize(objects, "carol", ["devs"], get) == (
        True,
        'RBAC: allowed by RoleBinding "devs-read/shop" of Role "reader" to Group "devs"',
    )
    assert authorize(objects, "carol", ["ops"], get)[0] is False
    assert authorize(objects, "system:serviceaccount:shop:app", [], get) == (
        True,
        'RBAC: allowed by RoleBinding "sas-read/shop" of Role "reader" to ServiceAccount "app/shop"',
    )
    assert authorize(objects, "system:serviceaccount:tools:ci", [], get)[1].endswith(
        'to ServiceAccount "ci/tools"'
    )
    assert authorize(objects, "system:serviceaccount:other:app", [], get)[0] is False
    assert authorize(objects, "app", [], get)[0] is False


def test_a_cluster_role_applies_in_the_namespace_of_a_role_binding_or_everywhere() -> None:
    objects = [
        role("reader", None, READ_CONFIGMAPS, rule(["get"], ["namespaces"])),
        binding("alice-reads", "shop", "ClusterRole", "reader", user("alice")),
        binding("bob-reads", None, "ClusterRole", "reader", user("bob")),
    ]
    assert authorize(objects, "alice", [], attrs("get", "configmaps", "shop", "c")) == (
        True,
        'RBAC: allowed by RoleBinding "alice-reads/shop" of ClusterRole "reader" to User "alice"',
    )
    assert authorize(objects, "alice", [], attrs("get", "configmaps", "other", "c"))[0] is False
    assert authorize(objects, "alice", [], attrs("get", "namespaces", "", "shop"))[0] is False
    for namespace in ("shop", "other", ""):
        assert authorize(objects, "bob", [], attrs("list", "configmaps", namespace)) == (
            True,
            'RBAC: allowed by ClusterRoleBinding "bob-reads" of ClusterRole "reader" to User "bob"',
        )
    assert authorize(objects, "bob", [], attrs("get", "namespaces", "", "shop"))[0] is True


@pytest.mark.parametrize(
    ("granted", "asked", "allowed"),
    [
        (rule(["bind"], ["roles"], ["rdsgate.dev"]), ("bind", "roles", "app-rw"), True),
        (
            rule(["bind"], ["roles"], ["rdsgate.dev"], resourceNames=["app-ro"]),
            ("bind", "roles", "app-ro"),
            True,
        ),
        (
            rule(["bind"], ["roles"], ["rdsgate.dev"], resourceNames=["app-ro"]),
            ("bind", "roles", "app-rw"),
            False,
        ),
        # resourceNames never allow a request without a name (create, list, watch).
        (
            rule(["list"], ["roles"], ["rdsgate.dev"], resourceNames=["app-ro"]),
            ("list", "roles", ""),
            False,
        ),
        (rule(["*"], ["*"], ["rdsgate.dev"]), ("bind", "roles", "app-rw"), True),
        (rule(["*"], ["*"], ["*"]), ("bind", "roles", "app-rw"), True),
        # RBAC's own roles are another group.
        (
            rule(["bind"], ["roles"], ["rbac.authorization.k8s.io"]),
            ("bind", "roles", "app-rw"),
            False,
        ),
        (rule(["get"], ["roles"], ["rdsgate.dev"]), ("bind", "roles", "app-rw"), False),
        (rule(["escalate"], ["roles"], ["rdsgate.dev"]), ("bind", "roles", "app-rw"), False),
    ],
)
def test_bind_on_rdsgate_roles(
    granted: dict[str, Any], asked: tuple[str, str, str], allowed: bool
) -> None:
    objects = [
        role("binder", "shop", granted),
        binding("alice-binds", "shop", "Role", "binder", user("alice")),
    ]
    verb, resource, name = asked
    request = attrs(verb, resource, "shop", name, api_group="rdsgate.dev")
    assert authorize(objects, "alice", [], request)[0] is allowed


@pytest.mark.parametrize(
    ("resources", "asked", "allowed"),
    [
        (["databases"], ("databases", ""), True),
        (["databases"], ("databases", "status"), False),
        (["databases/status"], ("databases", "status"), True),
        (["databases/status"], ("databases", ""), False),
        (["*"], ("databases", "status"), True),
        (["*/status"], ("databases", "status"), True),
        (["*/status"], ("databases", "scale"), False),
        (["*/status"], ("databases", ""), False),
    ],
)
def test_subresources(resources: list[str], asked: tuple[str, str], allowed: bool) -> None:
    granted = Rule.of(rule(["patch"], resources, ["rdsgate.dev"]))
    request = attrs("patch", asked[0], "shop", "d", api_group="rdsgate.dev", subresource=asked[1])
    assert granted.allows(request) is allowed


def test_aggregated_cluster_roles_gather_the_rules_of_the_roles_they_select() -> None:
    chart_edit = role(
        "rdsgate-edit",
        None,
        rule(["create", "delete"], ["tokens"], ["rdsgate.dev"]),
        labels=AGGREGATE_TO_EDIT,
    )
    chart_view = role(
        "rdsgate-view",
        None,
        rule(["get"], ["tokens"], ["rdsgate.dev"]),
        labels={"rbac.authorization.k8s.io/aggregate-to-view": "true"},
    )
    by_expression = {
        **role("custom", None),
        "aggregationRule": {
            "clusterRoleSelectors": [
                {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}]}
            ]
        },
    }
    gold = role("gold", None, rule(["get"], ["secrets"]), labels={"tier": "gold"})
    objects = [
        *kubernetes_user_roles(),
        chart_edit,
        chart_view,
        by_expression,
        gold,
        binding("alice-edits", "shop", "ClusterRole", "edit", user("alice")),
        binding("bob-views", "shop", "ClusterRole", "view", user("bob")),
        binding("carol-admins", "shop", "ClusterRole", "admin", user("carol")),
        binding("dave-custom", "shop", "ClusterRole", "custom", user("dave")),
    ]

    def may(who: str, verb: str, resource: str = "tokens", group: str = "rdsgate.dev") -> bool:
        return authorize(objects, who, [], attrs(verb, resource, "shop", "t", api_group=group))[0]

    assert may("alice", "create") and may("alice", "get")  # edit gets view's too
    assert not may("bob", "create") and may("bob", "get")
    assert may("carol", "create") and may("carol", "get")  # admin gets edit's, and so view's
    assert may("dave", "get", "secrets", "") and not may("dave", "get")
    assert not may("alice", "get", "secrets", "")
    assert authorize(
        objects, "alice", [], attrs("create", "tokens", "shop", api_group="rdsgate.dev")
    ) == (
        True,
        'RBAC: allowed by RoleBinding "alice-edits/shop" of ClusterRole "edit" to User "alice"',
    )


def test_system_masters_may_do_anything() -> None:
    assert authorize([], "root", ["system:masters"], attrs("delete", "nodes", "", "n1")) == (
        True,
        "",
    )
    assert authorize([], "root", ["system:authenticated"], attrs("get", "nodes", "", "n1")) == (
        False,
        "",
    )


def test_a_binding_to_a_missing_role_is_named_in_the_reason() -> None:
    objects = [
        binding("dangling", "shop", "Role", "gone", user("alice")),
        binding("dangling-cluster", None, "ClusterRole", "gone-too", user("alice")),
    ]
    assert authorize(objects, "alice", [], attrs("get", "configmaps", "shop", "c")) == (
        False,
        'RBAC: [clusterrole.rbac.authorization.k8s.io "gone-too" not found, '
        'role.rbac.authorization.k8s.io "gone" not found]',
    )
    assert authorize(objects[:1], "alice", [], attrs("get", "configmaps", "shop", "c")) == (
        False,
        'RBAC: role.rbac.authorization.k8s.io "gone" not found',
    )


def test_non_resource_urls() -> None:
    objects = [
        role("health", None, {"nonResourceURLs": ["/healthz", "/metrics/*"], "verbs": ["get"]}),
        binding("everyone", None, "ClusterRole", "health", group("system:authenticated")),
    ]

    def may(path: str, verb: str = "get") -> bool:
        request = Attributes(verb=verb, path=path, resource_request=False)
        return authorize(objects, "x", ["system:authenticated"], request)[0]

    assert may("/healthz") and may("/metrics/cadvisor")
    assert not may("/healthz/ready") and not may("/api") and not may("/healthz", "post")
    # A non-resource rule allows no resource request.
    assert not authorize(objects, "x", ["system:authenticated"], attrs("get", "pods", "a", "p"))[0]


# SubjectAccessReview over HTTP


@pytest.fixture
def k8s_api() -> Iterator[ApiServer]:
    """An emulator of each test's own: cluster-wide bindings change every answer."""
    server = ApiServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_a_subject_access_review_follows_the_stored_bindings(api: Api) -> None:
    api.create(role("reader", "shop", READ_CONFIGMAPS))
    api.create(binding("alice-reads", "shop", "Role", "reader", user("alice")))
    review: dict[str, Any] = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "metadata": {"creationTimestamp": None},
        "spec": {
            "user": "alice",
            "groups": ["system:authenticated"],
            "uid": "a-1",
            "extra": {"scopes": ["x"]},
            "resourceAttributes": {
                "namespace": "shop",
                "verb": "get",
                "version": "v1",
                "resource": "configmaps",
                "name": "c",
            },
        },
    }
    answer = api.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    assert answer == {
        **review,
        "status": {
            "allowed": True,
            "reason": 'RBAC: allowed by RoleBinding "alice-reads/shop" of Role "reader" to User "alice"',
        },
    }
    assert api.access_review("alice", verb="get", resource="configmaps", namespace="other") == {
        "allowed": False
    }
    api.delete("RoleBinding", "shop", "alice-reads")
    assert api.access_review("alice", verb="get", resource="configmaps", namespace="shop") == {
        "allowed": False
    }
    # The Role alone, or restored under a binding that names another user, grants nothing.
    api.create(binding("alice-reads", "shop", "Role", "reader", user("bob")))
    assert not api.access_review("alice", verb="get", resource="configmaps", namespace="shop")[
        "allowed"
    ]
    assert api.access_review("bob", verb="get", resource="configmaps", namespace="shop")["allowed"]


def test_cluster_role_bindings_and_role_changes_apply_at_once(api: Api) -> None:
    api.create(role("token-reader", None, rule(["get"], ["tokens"], ["rdsgate.dev"])))
    api.create(binding("devs-read-tokens", None, "ClusterRole", "token-reader", group("devs")))

    def may(verb: str, namespace: str) -> bool:
        status = api.access_review(
            "carol",
            ["devs"],
            verb=verb,
            group="rdsgate.dev",
            resource="tokens",
            namespace=namespace,
        )
        return bool(status["allowed"])

    assert may("get", "shop") and may("get", "other")
    assert not may("delete", "shop")
    api.patch(
        "ClusterRole",
        None,
        "token-reader",
        {"rules": [rule(["get", "delete"], ["tokens"], ["rdsgate.dev"])]},
    )
    assert may("delete", "shop")
    api.delete("ClusterRoleBinding", None, "devs-read-tokens")
    assert not may("get", "shop")


def test_edit_bound_to_a_user_picks_up_a_chart_role_that_aggregates_into_it(api: Api) -> None:
    """The ClusterRoles admin, edit and view exist as on a real cluster (their aggregation,
    not their rules), and the aggregation controller fills them in."""
    assert {r["metadata"]["name"] for r in api.objects("ClusterRole", None)} == {
        "admin",
        "edit",
        "view",
    }
    api.create(binding("alice-edits", "shop", "ClusterRole", "edit", user("alice")))

    def may_create_tokens() -> dict[str, Any]:
        return api.access_review(
            "alice", verb="create", group="rdsgate.dev", resource="tokens", namespace="shop"
        )

    assert may_create_tokens() == {"allowed": False}
    tokens = rule(["create"], ["tokens"], ["rdsgate.dev"])
    api.create(role("rdsgate-edit", None, tokens, labels=AGGREGATE_TO_EDIT))
    assert may_create_tokens() == {
        "allowed": True,
        "reason": 'RBAC: allowed by RoleBinding "alice-edits/shop" of ClusterRole "edit" to User "alice"',
    }
    edit, admin = (api.get("ClusterRole", None, n) for n in ("edit", "admin"))
    assert edit is not None and edit["rules"] == [tokens]
    assert admin is not None and admin["rules"] == [tokens]
    view = api.get("ClusterRole", None, "view")
    assert view is not None and view["rules"] == []
    # Unlabelled, the rules leave edit (and admin) again.
    api.patch("ClusterRole", None, "rdsgate-edit", {"metadata": {"labels": None}})
    assert may_create_tokens() == {"allowed": False}
    edit = api.get("ClusterRole", None, "edit")
    assert edit is not None and edit["rules"] == []


def test_system_masters_and_review_validation(api: Api) -> None:
    assert api.access_review("root", ["system:masters"], verb="delete", resource="nodes") == {
        "allowed": True
    }
    with pytest.raises(ApiError) as nobody:
        api.access_review(verb="get", resource="pods")
    assert nobody.value.status == 422
    assert nobody.value.message == (
        'SubjectAccessReview.authorization.k8s.io "" is invalid: spec.user: Invalid value: "": '
        "at least one of user or group must be specified"
    )
    assert api.access_review("alice", verb="get", path="/healthz") == {"allowed": False}


def test_local_and_self_subject_access_reviews(k8s_api: ApiServer) -> None:
    admin = Api(k8s_api.url)
    admin.create(role("reader", "shop", READ_CONFIGMAPS))
    admin.create(binding("alice-reads", "shop", "Role", "reader", user("alice")))
    k8s_api.emulator.users["alice-token"] = {
        "username": "alice",
        "groups": ["system:authenticated"],
    }
    attributes = {"namespace": "shop", "verb": "list", "resource": "configmaps"}
    local = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "LocalSubjectAccessReview",
        "metadata": {"namespace": "shop"},
        "spec": {"user": "alice", "resourceAttributes": attributes},
    }
    path = "/apis/authorization.k8s.io/v1/namespaces/shop/localsubjectaccessreviews"
    assert admin.request("POST", path, local)["status"]["allowed"] is True
    with pytest.raises(ApiError) as elsewhere:
        admin.request("POST", path.replace("/shop/", "/other/"), local)
    assert elsewhere.value.status == 400

    self_review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
    path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    alice = Api(k8s_api.url, token="alice-token")
    assert alice.request("POST", path, self_review)["status"]["allowed"] is True
    nobody = Api(k8s_api.url, token="nobody-token")  # unlisted: the cluster admin
    assert nobody.request("POST", path, self_review)["status"] == {"allowed": True}
    other = {**self_review, "spec": {"resourceAttributes": {**attributes, "verb": "delete"}}}
    assert alice.request("POST", path, other)["status"] == {"allowed": False}


def test_rbac_roles_and_rdsgate_roles_are_told_apart(api: Api) -> None:
    """`Role` is rdsgate's kind in the client; RBAC's Role goes by its apiVersion."""
    api.create(role("reader", "shop", READ_CONFIGMAPS))
    assert api.get("Role", "shop", "reader") is None
    rbac_role = api.get("Role", "shop", "reader", api_version=RBAC_V1)
    assert rbac_role is not None and rbac_role["rules"] == [READ_CONFIGMAPS]
    assert [r["metadata"]["name"] for r in api.objects("Role", "shop", api_version=RBAC_V1)] == [
        "reader"
    ]
