"""Who "the caller" of a `db` command is, and how Tokens are labelled as theirs.

The caller is the Kubernetes user the kubeconfig authenticates as. The API server says
who that is in a SelfSubjectReview (`authentication.k8s.io/v1`, Kubernetes 1.28+), which
sees through exec plugins and OIDC (on EKS: the IAM ARN or the access entry's username).
An API server without it answers 404; then the kubeconfig context's user name stands in
(on EKS such names are shared by everyone using the same cluster entry, so prefer 1.28+).

Tokens the CLI creates carry `rdsgate.dev/owner=<owner_label(username)>` for server-side
selection, and the full username in the annotation `rdsgate.dev/owner-name`. Whose a Token
is, though, is the API server's word where it has one: the admission webhooks stamp every
new Token with `rdsgate.dev/requested-by` (the user the API server authenticated), and a
Token carrying it is the caller's only when it names the caller. Only a Token without it
(no webhooks installed) falls back to the owner annotation, compared in full, so two
usernames that sanitise to the same label never mix.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CliError
from .kubeconfig import DEFAULT_KUBECONFIG, Cluster

LABEL_CREATED_BY = "rdsgate.dev/created-by"
CREATED_BY_CLI = "rdsgate-cli"
LABEL_OWNER = "rdsgate.dev/owner"
LABEL_DATABASE = "rdsgate.dev/database"
ANNOTATION_OWNER_NAME = "rdsgate.dev/owner-name"
ANNOTATION_OWNER_SOURCE = "rdsgate.dev/owner-source"
#: Set by the API server's admission (operator/admission.py REQUESTED_BY), never by us.
ANNOTATION_REQUESTED_BY = "rdsgate.dev/requested-by"

SOURCE_REVIEW = "SelfSubjectReview"
SOURCE_KUBECONFIG = "kubeconfig"

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_MAX = 63
_HASH_LEN = 10


def owner_label(username: str) -> str:
    """A label value for a username: itself when it is one, else a readable prefix and a
    hash of the whole name (label values: 63 characters of [-A-Za-z0-9_.], alphanumeric
    at both ends)."""
    if len(username) <= _LABEL_MAX and _LABEL_VALUE.match(username):
        return username
    digest = hashlib.sha256(username.encode()).hexdigest()[:_HASH_LEN]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", username)
    readable = readable[: _LABEL_MAX - _HASH_LEN - 1].strip("-_.")
    return f"{readable}-{digest}" if readable else digest


def name_slug(username: str, max_len: int = 20) -> str:
    """The short, DNS-safe part of a username that goes into Token names (audit readability):
    the last path or colon segment, without an email domain (`.../alice@example.com` → alice)."""
    tail = username.rsplit("/", 1)[-1].rsplit(":", 1)[-1].split("@", 1)[0]
    slug = re.sub(r"[^a-z0-9]+", "-", tail.lower()).strip("-")[:max_len].strip("-")
    return slug or "user"


@dataclass(frozen=True)
class Caller:
    username: str
    source: str  # SOURCE_REVIEW or SOURCE_KUBECONFIG

    @property
    def label(self) -> str:
        return owner_label(self.username)

    @property
    def selector(self) -> str:
        """The label selector of the Tokens the CLI created for this caller."""
        return f"{LABEL_CREATED_BY}={CREATED_BY_CLI},{LABEL_OWNER}={self.label}"

    def owns(self, token: Mapping[str, Any]) -> bool:
        """A CLI Token requested by the caller (per the API server), or, on a Token that
        admission did not stamp, labelled and annotated as the caller's."""
        meta = token.get("metadata")
        if not isinstance(meta, Mapping):
            return False
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        if not isinstance(labels, Mapping) or not isinstance(annotations, Mapping):
            return False
        if labels.get(LABEL_CREATED_BY) != CREATED_BY_CLI:
            return False
        requested_by = annotations.get(ANNOTATION_REQUESTED_BY)
        if requested_by is not None:
            return bool(requested_by == self.username)
        return (
            labels.get(LABEL_OWNER) == self.label
            and annotations.get(ANNOTATION_OWNER_NAME) == self.username
        )


def who_am_i(cluster: Cluster) -> Caller:
    """The caller per the API server's SelfSubjectReview, else per the kubeconfig."""
    from kubernetes.client.exceptions import ApiException

    from .kubeapi import KubeApi

    api = KubeApi(cluster)
    try:
        review = api.create(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            raw_errors=True,
        )
    except ApiException as exc:
        if exc.status not in (403, 404, 405):
            raise api.error(exc, "ask the API server who you are (SelfSubjectReview)") from exc
        review = {}
    username = ((review.get("status") or {}).get("userInfo") or {}).get("username")
    if username:
        return Caller(str(username), SOURCE_REVIEW)
    return Caller(_kubeconfig_user(cluster), SOURCE_KUBECONFIG)


def _kubeconfig_user(cluster: Cluster) -> str:
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    path = os.environ.get("KUBECONFIG") or os.path.expanduser(DEFAULT_KUBECONFIG)
    try:
        contexts, active = config.list_kube_config_contexts(config_file=path)
    except (ConfigException, OSError) as exc:
        raise CliError(f"cannot load the kubeconfig ({path}): {exc}", exit_code=2) from exc
    chosen = next((c for c in contexts if c.get("name") == cluster.context), active) or {}
    user = (chosen.get("context") or {}).get("user")
    if not user:
        raise CliError(
            "cannot tell who you are: the API server has no SelfSubjectReview (Kubernetes "
            f"before 1.28) and kubeconfig context {cluster.context!r} names no user",
            exit_code=2,
        )
    return str(user)
