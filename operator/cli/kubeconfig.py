"""The user's kubeconfig, read the way kubectl reads it.

`KUBECONFIG` (a list of paths) or `~/.kube/config`, read when a command runs (the
`kubernetes` package reads `KUBECONFIG` only once, at import); the current context or
`--context`; the namespace from `-n`, else the context's, else `default`. Each command gets
its own ApiClient: no global client configuration.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from .errors import CliError

DEFAULT_KUBECONFIG = "~/.kube/config"


@dataclass(frozen=True)
class Cluster:
    api: Any  # kubernetes.client.ApiClient
    namespace: str
    context: str | None


def connect(context: str | None = None, namespace: str | None = None) -> Cluster:
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    path = os.environ.get("KUBECONFIG") or os.path.expanduser(DEFAULT_KUBECONFIG)
    try:
        contexts, active = config.list_kube_config_contexts(config_file=path)
        if context is not None:
            chosen = next((c for c in contexts if c["name"] == context), None)
            if chosen is None:
                names = ", ".join(c["name"] for c in contexts) or "none"
                raise CliError(
                    f"context {context!r} is not in the kubeconfig ({path}); it has: {names}",
                    exit_code=2,
                )
            active = chosen
        api = config.new_client_from_config(config_file=path, context=context)
    except (ConfigException, OSError) as exc:
        raise CliError(f"cannot load the kubeconfig ({path}): {exc}", exit_code=2) from exc
    ns = namespace or (active or {}).get("context", {}).get("namespace") or "default"
    return Cluster(api, ns, context or (active or {}).get("name"))


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """`--context` and `-n/--namespace`, as kubectl spells them, for every command group."""
    group = parser.add_argument_group("cluster (as kubectl)")
    group.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context")
    group.add_argument(
        "-n", "--namespace", default=argparse.SUPPRESS, help="namespace (default: the context's)"
    )
