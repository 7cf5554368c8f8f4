"""The API emulator behaves like the API server where the operator and kopf depend on it."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from tests.fixtures.k8s import Api, ApiError, ApiServer, label_selector_matches


@pytest.fixture
def k8s_api(private_k8s_api: ApiServer) -> ApiServer:
    """Not the session's: the operator process must not act on these objects."""
    return private_k8s_api


def secret(namespace: str, name: str, **meta: Any) -> dict[str, Any]:
    return {
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "stringData": {"k": "v"},
    }


def test_create_stamps_metadata_and_folds_string_data(api: Api, namespace: str) -> None:
    created = api.create(secret(namespace, "s"))
    meta = created["metadata"]
    assert meta["namespace"] == namespace
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    assert meta["generation"] == 1
    assert created["data"] == {"k": "dg=="}
    assert "stringData" not in created
    with pytest.raises(ApiError) as conflict:
        api.create(secret(namespace, "s"))
    assert conflict.value.status == 409


def test_a_no_op_patch_changes_nothing(api: Api, namespace: str) -> None:
    rv = api.create(secret(namespace, "s"))["metadata"]["resourceVersion"]
    assert (
        api.patch("Secret", namespace, "s", {"data": {"k": "dg=="}})["metadata"]["resourceVersion"]
        == rv
    )
    changed = api.patch("Secret", namespace, "s", {"data": {"k": "dw=="}})
    assert int(changed["metadata"]["resourceVersion"]) > int(rv)


def test_merge_patch_replaces_lists_and_removes_nulls(api: Api, namespace: str) -> None:
    api.create(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": namespace, "labels": {"a": "1", "b": "2"}},
            "data": {"x": "1"},
        }
    )
    patched = api.patch(
        "ConfigMap", namespace, "c", {"metadata": {"labels": {"a": None}, "finalizers": ["f"]}}
    )
    assert patched["metadata"]["labels"] == {"b": "2"}
    patched = api.patch("ConfigMap", namespace, "c", {"metadata": {"finalizers": ["g"]}})
    assert patched["metadata"]["finalizers"] == ["g"]


def test_status_is_a_subresource_and_generation_follows_the_spec(api: Api, namespace: str) -> None:
    db = {
        "kind": "Database",
        "metadata": {"name": "d", "namespace": namespace},
        "spec": {"endpoint": "a:1"},
        "status": {"x": 1},
    }
    created = api.create(db)
    assert "status" not in created
    after_main = api.patch(
        "Database",
        namespace,
        "d",
        {"status": {"readyReplicas": 3}, "metadata": {"labels": {"l": "1"}}},
    )
    assert "status" not in after_main
    assert after_main["metadata"]["generation"] == 1
    after_status = api.patch(
        "Database",
        namespace,
        "d",
        {"status": {"readyReplicas": 3}, "spec": {"endpoint": "b:2"}},
        sub="status",
    )
    assert after_status["status"] == {"readyReplicas": 3}
    assert after_status["spec"] == {"endpoint": "a:1"}
    assert after_status["metadata"]["generation"] == 1
    spec_change = api.patch("Database", namespace, "d", {"spec": {"endpoint": "b:2"}})
    assert spec_change["metadata"]["generation"] == 2


def test_json_patch_test_ops_guard_the_resource_version(api: Api, namespace: str) -> None:
    rv = api.create(secret(namespace, "s"))["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]
    patched = api.request(
        "PATCH", Api.path("Secret", namespace, "s"), ops, "application/json-patch+json"
    )
    assert patched["metadata"]["finalizers"] == ["x"]
    with pytest.raises(ApiError) as stale:
        api.request("PATCH", Api.path("Secret", namespace, "s"), ops, "application/json-patch+json")
    assert stale.value.status == 422
    with pytest.raises(ApiError) as ssa:
        api.request("PATCH", Api.path("Secret", namespace, "s"), {}, "application/apply-patch+yaml")
    assert ssa.value.status == 415


def test_finalizers_hold_deletion(api: Api, namespace: str) -> None:
    api.create(secret(namespace, "s", finalizers=["example.com/hold"]))
    api.delete("Secret", namespace, "s")
    held = api.get("Secret", namespace, "s")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    api.patch("Secret", namespace, "s", {"metadata": {"finalizers": None}})
    assert api.get("Secret", namespace, "s") is None


def test_garbage_collection_follows_owner_references(api: Api, namespace: str) -> None:
    owner = api.create({"kind": "ConfigMap", "metadata": {"name": "owner", "namespace": namespace}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    child = api.create(secret(namespace, "child", ownerReferences=[ref]))
    grandchild_ref = {
        "apiVersion": "v1",
        "kind": "Secret",
        "name": "child",
        "uid": child["metadata"]["uid"],
    }
    api.create(secret(namespace, "grandchild", ownerReferences=[grandchild_ref]))
    api.create(secret(namespace, "bystander"))
    api.delete("ConfigMap", namespace, "owner")
    assert api.get("Secret", namespace, "child") is None
    assert api.get("Secret", namespace, "grandchild") is None
    assert api.get("Secret", namespace, "bystander") is not None


def test_list_filters_by_label_selector(api: Api, namespace: str) -> None:
    api.create(secret(namespace, "a", labels={"app": "x", "tier": "db"}))
    api.create(secret(namespace, "b", labels={"app": "y"}))
    path = Api.path("Secret", namespace) + "?labelSelector=app%3Dx"
    assert [s["metadata"]["name"] for s in api.request("GET", path)["items"]] == ["a"]


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("", {}, True),
        ("a=1", {"a": "1"}, True),
        ("a==1,b", {"a": "1"}, False),
        ("a!=1", {}, True),
        ("!a", {"a": "1"}, False),
        ("a in (1,2),b notin (3)", {"a": "2", "b": "4"}, True),
        (
            "app.kubernetes.io/managed-by=rdsgate-operator",
            {"app.kubernetes.io/managed-by": "rdsgate-operator"},
            True,
        ),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert label_selector_matches(selector, labels) is expected


def test_a_selected_watch_sees_objects_enter_and_leave_its_selection(
    api: Api, namespace: str
) -> None:
    """As the API server's watch cache: a label edit that makes an object match is ADDED,
    one that makes it stop matching DELETED (with its last matching state)."""
    rv = api.create(secret(namespace, "s", labels={"team": "a"}))["metadata"]["resourceVersion"]
    api.patch("Secret", namespace, "s", {"metadata": {"labels": {"team": "b"}}})
    api.patch("Secret", namespace, "s", {"metadata": {"labels": {"team": "a", "x": "1"}}})
    path = (
        Api.path("Secret", namespace) + f"?watch=true&labelSelector=team%3Da&resourceVersion={rv}"
    )
    request = urllib.request.Request(api.url + path)  # noqa: S310 - loopback http
    events = []
    with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
        for line in resp:
            if line.strip():
                events.append(json.loads(line))
            if len(events) == 2:
                break
    assert [(e["type"], e["object"]["metadata"]["labels"]) for e in events] == [
        ("DELETED", {"team": "a"}),
        ("ADDED", {"team": "a", "x": "1"}),
    ]
