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

from rdsgate.proxy.durations import parse_duration

from . import webhooks
from .handlers import AdmissionConfig, Config, Runtime, register
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


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the duration must be more than 0")
    return seconds


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
    adm = parser.add_argument_group(
        "Token admission webhooks (docs/access-control.md; the Helm chart sets these)"
    )
    adm.add_argument(
        "--admission-listen",
        default=env("RDSGATE_ADMISSION_LISTEN") or None,
        metavar="HOST:PORT",
        help="serve the webhooks here over HTTPS (env RDSGATE_ADMISSION_LISTEN; default: "
        "0.0.0.0:9443 when --admission-url or --admission-service is given, else off: Tokens "
        "are then not gated)",
    )
    adm.add_argument(
        "--admission-url",
        default=env("RDSGATE_ADMISSION_URL") or None,
        metavar="https://HOST:PORT",
        help="register the webhook configurations with this URL, for an operator outside "
        "the cluster; its certificate is issued by the operator's CA for HOST "
        "(env RDSGATE_ADMISSION_URL)",
    )
    adm.add_argument(
        "--admission-service",
        default=env("RDSGATE_ADMISSION_SERVICE") or None,
        metavar="NAMESPACE/NAME[:PORT]",
        help="register the webhook configurations with this Service (port 443 by default), "
        "certificate for its DNS names (env RDSGATE_ADMISSION_SERVICE)",
    )
    adm.add_argument(
        "--admission-cert-dir",
        default=env("RDSGATE_ADMISSION_CERT_DIR") or None,
        metavar="DIR",
        help="serve with DIR/tls.crt and DIR/tls.key (e.g. cert-manager's Secret), reloaded "
        "when they change; DIR/ca.crt is the caBundle when registering "
        "(env RDSGATE_ADMISSION_CERT_DIR; default: issued by the operator's CA)",
    )
    adm.add_argument(
        "--admission-configuration",
        default=env("RDSGATE_ADMISSION_CONFIGURATION") or webhooks.DEFAULT_CONFIGURATION,
        metavar="NAME",
        help="the name of the Validating- and MutatingWebhookConfiguration "
        "(env RDSGATE_ADMISSION_CONFIGURATION; default %(default)s)",
    )
    adm.add_argument(
        "--admission-timeout",
        type=int,
        default=env("RDSGATE_ADMISSION_TIMEOUT") or str(webhooks.TIMEOUT_SECONDS),
        metavar="SECONDS",
        help="the configurations' timeoutSeconds, 1 to 30 (env RDSGATE_ADMISSION_TIMEOUT; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--access-recheck-interval",
        type=float,
        default=env("RDSGATE_ACCESS_RECHECK_INTERVAL") or "300",
        metavar="SECONDS",
        help="ask the API server again at least this often whether each Token's requester "
        "may still bind its Roles (env RDSGATE_ACCESS_RECHECK_INTERVAL; default %(default)s)",
    )
    parser.add_argument(
        "--request-timeout",
        type=_duration,
        default=env("RDSGATE_REQUEST_TIMEOUT") or "1h",
        metavar="DURATION",
        help="a Token waiting for an approval longer than this expires (env "
        "RDSGATE_REQUEST_TIMEOUT; default %(default)s)",
    )
    parser.add_argument(
        "--require-verified-requester",
        action="store_true",
        default=(env("RDSGATE_REQUIRE_VERIFIED_REQUESTER") or "").lower() in ("1", "true", "yes"),
        help="Tokens without a requester stamped at admission (from before the webhooks) "
        "grant nothing (env RDSGATE_REQUIRE_VERIFIED_REQUESTER=true)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def parse_admission(args: argparse.Namespace) -> AdmissionConfig | None:
    """The webhook settings, or None when they are off; ValueError says what is wrong."""
    if args.admission_url and args.admission_service:
        raise ValueError("give --admission-url or --admission-service, not both")
    target: webhooks.Target | None = None
    if args.admission_url:
        target = webhooks.Target(url=webhooks.parse_url(args.admission_url))
    elif args.admission_service:
        target = webhooks.Target(service=webhooks.parse_service(args.admission_service))
    listen = args.admission_listen or ("0.0.0.0:9443" if target or args.admission_cert_dir else "")
    if not listen:
        return None
    if not 1 <= args.admission_timeout <= 30:
        raise ValueError("--admission-timeout must be 1 to 30 seconds (the API server's range)")
    cert_dir = Path(args.admission_cert_dir) if args.admission_cert_dir else None
    if cert_dir is not None and not (cert_dir / "tls.crt").is_file():
        raise ValueError(f"--admission-cert-dir {cert_dir}: no tls.crt there")
    return AdmissionConfig(
        listen=webhooks.parse_listen(listen),
        target=target,
        cert_dir=cert_dir,
        configuration=args.admission_configuration,
        timeout=args.admission_timeout,
    )


def parse_config(args: argparse.Namespace) -> Config:
    namespaces = [ns for arg in (args.namespaces or []) for ns in _split(arg)]
    if not namespaces:
        namespaces = _split(os.environ.get("RDSGATE_WATCH_NAMESPACES"))
    allowed = [image for arg in (args.allowed_proxy_images or []) for image in _split(arg)]
    if not allowed:
        allowed = _split(os.environ.get("RDSGATE_ALLOWED_PROXY_IMAGES"))
    if not 1 <= args.access_recheck_interval <= 300:
        raise ValueError("--access-recheck-interval must be 1 to 300 seconds")
    return Config(
        proxy_image=args.proxy_image,
        operator_namespace=args.operator_namespace,
        namespaces=tuple(dict.fromkeys(namespaces)),
        cluster_domain=args.cluster_domain,
        resync_interval=args.resync_interval,
        diagnose_interval=args.diagnose_interval,
        tokenreview_binding=args.proxy_tokenreview_binding,
        allowed_proxy_images=tuple(dict.fromkeys(allowed)) or (image_repository(args.proxy_image),),
        admission=parse_admission(args),
        access_recheck_interval=args.access_recheck_interval,
        require_verified_requester=args.require_verified_requester,
        request_timeout=args.request_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = parse_config(args)
    except ValueError as exc:
        parser.error(str(exc))

    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="object" if args.log_format == "json" else None,
    )
    if not args.verbose:
        # kopf logs every handler success per object at INFO; keep its warnings and errors.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        # One access-log line per AdmissionReview; the webhooks' metric counts them.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("rdsgate").info(
        "starting rdsgate-operator %s, watching %s",
        _version(),
        ", ".join(config.namespaces) or "all namespaces",
    )
    if config.admission is None:
        logging.getLogger("rdsgate").warning(
            "the Token admission webhooks are off (no --admission-listen): whoever may create "
            "a Token may name any Role, and Tokens carry no verified requester "
            "(docs/access-control.md)"
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
