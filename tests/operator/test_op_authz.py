"""Whether a requester may still bind: SubjectAccessReviews against the emulator's RBAC.

`BindChecker` asks the API server (the emulator, over HTTP) and remembers answers; these
tests change the RBAC objects and the reachability of the API server under it, and read
the verdicts a compile or an admission would act on. The recheck test drives the real
`Reconciler` while another compile of the namespace is running.
"""

from __future__ import annotations

import threading
from typing import Any

import kubernetes
import pytest

from rdsgate.lab.postgres import free_port
from rdsgate.operator.admission import Requester, stamp
from rdsgate.operator.authz import BindChecker
from rdsgate.operator.handlers import Config, Reconciler
from rdsgate.operator.kube import Kube
from tests.fixtures.k8s import OPERATOR_NAMESPACE, RBAC_V1, Api, ApiServer, wait_for

ALICE = Requester("alice", ("devs",))


def kube_at(url: str) -> Kube:
    configuration = kubernetes.client.Configuration()
    configuration.host = url
    return Kube(kubernetes.client.ApiClient(configuration))


@pytest.fixture
def api(private_k8s_api: ApiServer) -> Api:
    return Api(private_k8s_api.url)


def grant_bind(api: Api, ns: str, role: str) -> None:
    api.create(
        {
            "apiVersion": RBAC_V1,
            "kind": "Role",
            "metadata": {"name": f"bind-{role}", "namespace": ns},
            "rules": [
                {
                    "apiGroups": ["rdsgate.dev"],
                    "resources": ["roles"],
                    "resourceNames": [role],
                    "verbs": ["bind"],
                }
            ],
        }
    )
    api.create(
        {
            "apiVersion": RBAC_V1,
            "kind": "RoleBinding",
            "metadata": {"name": f"bind-{role}", "namespace": ns},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": f"bind-{role}",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "devs"}
            ],
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_answers_are_reused_only_while_young_enough(private_k8s_api: ApiServer, api: Api) -> None:
    grant_bind(api, "authz-1", "app-ro")
    clock = Clock()
    checker = BindChecker(kube_at(private_k8s_api.url), clock)
    first = checker.may(ALICE, "authz-1", "app-ro", max_age=300)
    assert first.allowed is True and not first.failed
    assert 'RoleBinding "bind-app-ro/authz-1"' in first.reason
    assert checker.may(ALICE, "authz-1", "app-rw", max_age=300).allowed is False

    api.delete("RoleBinding", "authz-1", "bind-app-ro", api_version=RBAC_V1)
    clock.now += 299
    assert checker.may(ALICE, "authz-1", "app-ro", max_age=300).allowed is True  # cached
    clock.now += 1
    assert checker.may(ALICE, "authz-1", "app-ro", max_age=300).allowed is False
    # Admission asks every time (max_age 0).
    grant_bind(api, "authz-1", "app-rw")
    assert checker.may(ALICE, "authz-1", "app-rw").allowed is True


def test_when_the_api_server_does_not_answer(private_k8s_api: ApiServer, api: Api) -> None:
    """An earlier answer stands for a while (an outage must not revoke everyone), flagged as
    a failure so the compile retries; past the limit, at admission, or with no earlier
    answer, the verdict is unknown."""
    grant_bind(api, "authz-2", "app-ro")
    clock = Clock()
    checker = BindChecker(kube_at(private_k8s_api.url), clock)
    assert checker.may(ALICE, "authz-2", "app-ro").allowed is True
    checker.kube = kube_at(f"http://127.0.0.1:{free_port()}")  # nothing listens there

    clock.now += 500
    stale = checker.may(ALICE, "authz-2", "app-ro", max_age=300, stale_limit=900)
    assert (stale.allowed, stale.failed) == (True, True)
    at_admission = checker.may(ALICE, "authz-2", "app-ro")
    assert (at_admission.allowed, at_admission.failed) == (None, True)
    assert "the API server did not answer a SubjectAccessReview" in at_admission.reason
    clock.now += 400
    expired = checker.may(ALICE, "authz-2", "app-ro", max_age=300, stale_limit=900)
    assert (expired.allowed, expired.failed) == (None, True)
    never = checker.may(ALICE, "authz-2", "app-rw", max_age=300, stale_limit=900)
    assert never.allowed is None


@pytest.fixture
def reconciler(private_k8s_api: ApiServer) -> Reconciler:
    kube = kube_at(private_k8s_api.url)
    return Reconciler(
        kube,
        Config("rdsgate:test", OPERATOR_NAMESPACE),
        Reconciler.load_ca(kube, OPERATOR_NAMESPACE),
    )


def reviews(server: ApiServer) -> int:
    return sum(1 for c in server.emulator.calls if c.resource == "subjectaccessreviews")


def test_a_recheck_asked_while_a_compile_waits_is_done_by_that_compile(
    private_k8s_api: ApiServer, api: Api, reconciler: Reconciler
) -> None:
    """The timer's recheck must not be lost when a compile of the namespace is already
    queued: the queued compile asks every requester afresh."""
    ns = "authz-3"
    token: dict[str, Any] = {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Token",
        "metadata": {"name": "t", "namespace": ns},
        "spec": {"roles": ["app-ro"], "subject": {"serviceAccount": {"name": "web"}}},
    }
    token["metadata"]["annotations"] = stamp(
        {"username": "alice", "groups": ["devs"]}, reconciler.stamp_key, ns, "t"
    )
    api.create(token)
    grant_bind(api, ns, "app-ro")
    reconciler.sync_access(ns)  # asks once and remembers the answer
    asked = reviews(private_k8s_api)
    reconciler.sync_access(ns)
    assert reviews(private_k8s_api) == asked, "a second compile reuses the answer"

    slot = reconciler._slot(("ns", ns))
    with slot.lock:  # a compile is running ...
        waiting = threading.Thread(target=reconciler.sync_access, args=(ns,))
        waiting.start()  # ... and another is queued behind it
        wait_for(lambda: slot.queued, "the second compile to queue", 5)
        reconciler.recheck_access(ns, 0)  # returns at once: a compile is queued
    waiting.join(10)
    assert reviews(private_k8s_api) == asked + 1, "the queued compile asked afresh"
    assert ns in reconciler._rechecked_at
