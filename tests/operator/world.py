"""The reconciler's test world: a `Reconciler` on an emulated API, and example resources.

Not a conftest: each module chooses its own `k8s_api` (a private one, so that no operator
process acts on its namespaces meanwhile) and makes its `reconciler` fixture from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kubernetes
import yaml

from rdsgate.operator.handlers import Config, Reconciler
from rdsgate.operator.kube import Kube
from tests.fixtures.k8s import EXAMPLES_DIR, OPERATOR_NAMESPACE, ApiServer


@contextmanager
def reconciler_for(api: ApiServer) -> Iterator[Reconciler]:
    configuration = kubernetes.client.Configuration()
    configuration.host = api.url
    client = kubernetes.client.ApiClient(configuration)
    kube = Kube(client)
    try:
        yield Reconciler(
            kube,
            Config("rdsgate:test", OPERATOR_NAMESPACE),
            Reconciler.load_ca(kube, OPERATOR_NAMESPACE),
        )
    finally:
        client.close()


def example(name: str, namespace: str) -> dict[str, Any]:
    """One of deploy/examples, placed in `namespace`."""
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / name).read_text())
    doc["metadata"]["namespace"] = namespace
    return doc


def token(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    """A Token for the examples' app-rw Role."""
    return {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Token",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"roles": ["app-rw"], **spec},
    }
