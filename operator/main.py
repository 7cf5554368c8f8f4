"""`rdsgate-operator`: runs the kopf operator that turns Databases, Roles and Tokens into proxies.

Every flag has an environment variable, so a Deployment (or the Helm chart) can configure
it either way; flags win. Logs are JSON lines by default (one object per line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import kopf

from .handlers import Config, Runtime, register
from .render import image_repository

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _version() -> str:
    try:
        return version("rdsgate")
    except PackageNotFoundError:
        return "0.0.0"


def default_proxy_image() -> str:
    return f"ghcr.io/rdsgate/rdsgate:{_version()}"


def default_operator_namespace() -> str:
    """The namespace the operator runs in: env, else the pod's ServiceAccount, else rdsgate."""
    for var in ("RDSGATE_OPERATOR_NAMESPACE", "POD_NAMESPACE"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or "rdsgate"
    except OSError:
        return "rdsgate"


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="rdsgate-operator",
        description="The rdsgate operator: Database, Role and Token resources into proxies.",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        default=None,
        metavar="NS",
        help="a namespace to watch (repeat or comma-separate; env RDSGATE_WATCH_NAMESPACES); "
        "default: all namespaces",
    )
    parser.add_argument(
        "--proxy-image",
        default=env("RDSGATE_PROXY_IMAGE") or default_proxy_image(),
        help="the rdsgate-proxy image for Databases that do not set spec.proxy.image "
        "(env RDSGATE_PROXY_IMAGE; default %(default)s)",
    )
    parser.add_argument(
        "--allowed-proxy-image",
        dest="allowed_proxy_images",
        action="append",
        default=None,
        metavar="IMAGE",
        help="an image a Database may name in spec.proxy.image: a repository (every tag and "
        "digest of it) or an exact reference; repeat or comma-separate (env "
        "RDSGATE_ALLOWED_PROXY_IMAGES); default: the repository of --proxy-image",
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "text"],
        default=env("RDSGATE_LOG_FORMAT") or "json",
        help="json lines (default) or text (env RDSGATE_LOG_FORMAT)",
    )
    parser.add_argument(
        "--operator-namespace",
        default=default_operator_namespace(),
        help="where the CA Secret rdsgate-ca lives (env RDSGATE_OPERATOR_NAMESPACE or "
        "POD_NAMESPACE; default: the pod's namespace, else rdsgate)",
    )
    parser.add_argument(
        "--cluster-domain",
        default=env("RDSGATE_CLUSTER_DOMAIN") or "cluster.local",
        help="the cluster DNS domain in the proxies' server certificates (default %(default)s)",
    )
    parser.add_argument(
        "--resync-interval",
        type=float,
        default=float(env("RDSGATE_RESYNC_INTERVAL") or 300),
        help="seconds between full reconciles of each Database "
        "(env RDSGATE_RESYNC_INTERVAL; default %(default)s)",
    )
    parser.add_argument(
        "--diagnose-interval",
        type=float,
        default=float(env("RDSGATE_DIAGNOSE_INTERVAL") or 60),
        help="seconds between collecting the proxies' diagnostics into Database conditions "
        "(env RDSGATE_DIAGNOSE_INTERVAL; default %(default)s)",
    )
    parser.add_argument(
        "--proxy-tokenreview-binding",
        default=env("RDSGATE_PROXY_TOKENREVIEW_BINDING") or None,
        metavar="NAME",
        help="a ClusterRoleBinding granting tokenreviews create, whose subjects the operator "
        "keeps equal to the proxies' ServiceAccounts so they can check ServiceAccount tokens "
        "(env RDSGATE_PROXY_TOKENREVIEW_BINDING; the Helm chart creates and names it)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("RDSGATE_METRICS_PORT") or 8081),
        help="serve the operator's Prometheus metrics on this port, 0 for none "
        "(env RDSGATE_METRICS_PORT; default %(default)s)",
    )
    parser.add_argument(
        "--liveness",
        default=env("RDSGATE_LIVENESS") or None,
        metavar="URL",
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def parse_config(args: argparse.Namespace) -> Config:
    namespaces = [ns for arg in (args.namespaces or []) for ns in _split(arg)]
    if not namespaces:
        namespaces = _split(os.environ.get("RDSGATE_WATCH_NAMESPACES"))
    allowed = [image for arg in (args.allowed_proxy_images or []) for image in _split(arg)]
    if not allowed:
        allowed = _split(os.environ.get("RDSGATE_ALLOWED_PROXY_IMAGES"))
    return Config(
        proxy_image=args.proxy_image,
        operator_namespace=args.operator_namespace,
        namespaces=tuple(dict.fromkeys(namespaces)),
        cluster_domain=args.cluster_domain,
        resync_interval=args.resync_interval,
        diagnose_interval=args.diagnose_interval,
        tokenreview_binding=args.proxy_tokenreview_binding,
        allowed_proxy_images=tuple(dict.fromkeys(allowed)) or (image_repository(args.proxy_image),),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = parse_config(args)
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="object" if args.log_format == "json" else None,
    )
    if not args.verbose:
        # kopf logs every handler success per object at INFO; keep its warnings and errors.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("rdsgate").info(
        "starting rdsgate-operator %s, watching %s",
        _version(),
        ", ".join(config.namespaces) or "all namespaces",
    )
    registry = kopf.OperatorRegistry()
    runtime = Runtime(config)
    if args.metrics_port:
        runtime.metrics.serve(args.metrics_port)
    register(registry, runtime)
    try:
        asyncio.run(
            kopf.operator(
                registry=registry,
                standalone=True,
                clusterwide=not config.namespaces,
                namespaces=config.namespaces,
                liveness_endpoint=args.liveness,
            )
        )
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A startup handler's PermanentError carries a message for the user; say only that.
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, kopf.PermanentError):
            cause = cause.__cause__
        if cause is None:
            raise
        logging.getLogger("rdsgate").error("cannot start: %s", cause)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
