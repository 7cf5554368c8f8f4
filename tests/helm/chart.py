"""The Helm chart under test: finding helm, rendering the chart, and reading what it renders.

helm comes from a package registry (scripts/get-helm, run by `make test`) into .venv/bin; a
helm on PATH is used otherwise. Every helm run gets its own HELM_*_HOME and no cluster, so
nothing outside the test's temporary directory is read or written.

Also here: the rules the chart's bindings give the operator's ServiceAccount (`grants_for`),
with the verbs and resource names they grant, to compare the chart's RBAC with the API calls
the operator makes; rules are matched by tests/fixtures/rbac.py, as the API server's RBAC
authorizer matches them.
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
from tests.fixtures.rbac import (
    Attributes,
    Rule,
    aggregated_rules,
    authorize,
    service_account_username,
)

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


@dataclass(frozen=True)
class Subject:
    """What a binding's subject names: a ServiceAccount (with its namespace), a User or a
    Group."""

    kind: str  # ServiceAccount, User, Group
    name: str
    namespace: str = ""

    def named_by(self, subject: Mapping[str, Any]) -> bool:
        return (
            subject.get("kind") == self.kind
            and subject.get("name") == self.name
            and (self.kind != "ServiceAccount" or subject.get("namespace") == self.namespace)
        )


#: Kubernetes' own user-facing ClusterRoles as the API server bootstraps them (their own rules
#: left out: only how they aggregate). `view` carries the aggregate-to-edit label and `edit`
#: the aggregate-to-admin one, so a role aggregated into `view` reaches `edit` and `admin` too.
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"
KUBERNETES_USER_ROLES: list[dict[str, Any]] = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {AGGREGATE + into: "true"} if into else {}},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {AGGREGATE + name: "true"}}]},
        "rules": [],
    }
    for name, into in (("admin", ""), ("edit", "admin"), ("view", "edit"))
]


def aggregated(docs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The objects with every aggregated ClusterRole's rules filled in, as the API server's
    clusterrole-aggregation controller writes them (tests/fixtures/rbac.py)."""
    rules = aggregated_rules(d for d in docs if d["kind"] == "ClusterRole")
    return [
        dict(d, rules=rules[d["metadata"]["name"]])
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] in rules
        else dict(d)
        for d in docs
    ]


def grants_of(docs: Sequence[Mapping[str, Any]], subjects: Iterable[Subject]) -> list[Grant]:
    """Every rule the bindings among `docs` give to any of `subjects` (aggregated
    ClusterRoles filled in)."""
    wanted = list(subjects)
    docs = aggregated(docs)
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): [
            Rule.of(r) for r in d.get("rules") or ()
        ]
        for d in docs
        if d["kind"] in ("ClusterRole", "Role")
    }
    assert not any(r.non_resource_urls for rules in roles.values() for r in rules), (
        "the chart grants no non-resource URLs"
    )
    grants: list[Grant] = []
    for binding in docs:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        subjects_named = binding.get("subjects") or ()
        if not any(w.named_by(s) for w in wanted for s in subjects_named):
            continue
        ref = binding["roleRef"]
        binding_ns = binding["metadata"].get("namespace")
        role_ns = binding_ns if ref["kind"] == "Role" else None
        rules = roles[(ref["kind"], role_ns, ref["name"])]
        scope = None if binding["kind"] == "ClusterRoleBinding" else binding_ns
        grants += [Grant(rule, scope, f"{ref['kind']}/{ref['name']}") for rule in rules]
    return grants


def grants_for(
    docs: Sequence[Mapping[str, Any]], namespace: str, service_account: str
) -> list[Grant]:
    """Every rule the chart's bindings give to the ServiceAccount namespace/name."""
    return grants_of(docs, [Subject("ServiceAccount", service_account, namespace)])


def may(
    docs: Sequence[Mapping[str, Any]],
    user: str,
    groups: Iterable[str],
    verb: str,
    resource: str,
    namespace: str = "",
    name: str = "",
    group: str = "",
) -> bool:
    """Whether the RBAC objects among `docs` allow `user` (in `groups`, system:authenticated
    added) one request, decided by tests/fixtures/rbac.py as the API server decides it:
    `resource` is "plural" or "plural/subresource", `namespace` "" for a cluster-scoped
    request, and `bind` is asked like any verb (as the webhook's SubjectAccessReview asks
    it: verb bind on roles.rdsgate.dev NAME)."""
    plural, _, subresource = resource.partition("/")
    request = Attributes(verb, group, plural, subresource, namespace, name)
    allowed, _ = authorize(docs, user, [*groups, "system:authenticated"], request)
    return allowed


def service_account_may(
    docs: Sequence[Mapping[str, Any]], verb: str, resource: str, **request: str
) -> bool:
    """`may` for the chart's ServiceAccount (the operator), with a ServiceAccount's groups."""
    sa = one(docs, "ServiceAccount")["metadata"]
    ns = sa["namespace"]
    user = service_account_username(ns, sa["name"])
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]
    return may(docs, user, groups, verb, resource, **request)


#: What every authenticated user may GET (the system:discovery ClusterRole's URLs): kopf's and
#: the kubernetes client's API discovery needs nothing from the chart.
DISCOVERY_URLS = ("/api", "/apis", "/healthz", "/livez", "/readyz", "/version", "/openapi")


def is_discovery(call: ApiCall) -> bool:
    path = call.path.rstrip("/") or "/"
    return call.verb == "get" and any(
        path == url or path.startswith(url + "/") for url in DISCOVERY_URLS
    )
