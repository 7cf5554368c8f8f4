"""Idempotent apply: the merge patch that makes an object carry what the operator renders."""

from __future__ import annotations

from typing import Any

from rdsgate.operator.kube import covers, merge_patch, owned_by, strip_none

DESIRED: dict[str, Any] = {
    "metadata": {"name": "x", "labels": {"a": "1"}, "annotations": {"gone": None}},
    "spec": {
        "replicas": 2,
        "paused": False,
        "template": {"spec": {"containers": [{"name": "proxy", "image": "i:1", "args": ["--x"]}]}},
    },
}


def stored() -> dict[str, Any]:
    """DESIRED as an API server returns it: defaults and bookkeeping added."""
    return {
        "metadata": {"name": "x", "labels": {"a": "1", "other": "kept"}, "resourceVersion": "7"},
        "spec": {
            "replicas": 2,
            "paused": False,
            "revisionHistoryLimit": 10,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "proxy",
                            "image": "i:1",
                            "args": ["--x"],
                            "terminationMessagePath": "/dev/termination-log",
                        }
                    ],
                    "dnsPolicy": "ClusterFirst",
                }
            },
        },
        "status": {"replicas": 2},
    }


def test_defaults_and_foreign_fields_are_not_drift() -> None:
    assert covers(stored(), DESIRED)
    assert merge_patch(stored(), DESIRED) == {}


def test_a_changed_scalar_is_patched_alone() -> None:
    current = stored()
    current["spec"]["replicas"] = 5
    assert merge_patch(current, DESIRED) == {"spec": {"replicas": 2}}


def test_a_changed_list_entry_replaces_the_whole_list() -> None:
    current = stored()
    current["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    current["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "s"})
    assert merge_patch(current, DESIRED) == {
        "spec": {
            "template": {"spec": {"containers": DESIRED["spec"]["template"]["spec"]["containers"]}}
        }
    }


def test_a_none_removes_a_key_that_is_present() -> None:
    current = stored()
    current["metadata"]["annotations"] = {"gone": "yes", "kept": "yes"}
    assert merge_patch(current, DESIRED) == {"metadata": {"annotations": {"gone": None}}}


def test_booleans_are_not_numbers() -> None:
    assert not covers({"a": 0}, {"a": False})
    assert not covers({"a": 1}, {"a": True})
    assert covers({"a": 1}, {"a": 1.0})


def test_a_missing_map_is_sent_whole_without_nones() -> None:
    assert merge_patch({}, {"data": {"a": "1", "b": None}}) == {"data": {"a": "1"}}
    assert strip_none({"a": [{"b": None, "c": 1}], "d": None}) == {"a": [{"c": 1}]}


def test_owned_by() -> None:
    obj = {"metadata": {"ownerReferences": [{"uid": "u1"}, {"uid": "u2"}]}}
    assert owned_by(obj, "u2")
    assert not owned_by(obj, "u3")
    assert not owned_by({"metadata": {}}, "u1")
