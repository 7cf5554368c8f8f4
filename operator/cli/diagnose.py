"""`rdsgate diagnose`: every check of `rdsgate.proxy.diagnose`, as a table with the fixes.

Runs from a pod (with `--config`, the proxy's own config file) or from a laptop (with
`--database`, reading the Database resource through the kubeconfig and building the same
inputs the operator renders). Exits 1 when a check fails, 2 when the inputs are unusable.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rdsgate.proxy.access import LabelSelector
from rdsgate.proxy.config import load_config
from rdsgate.proxy.diagnose import (
    CHECKS,
    Finding,
    Options,
    Status,
    Target,
    conditions,
    diagnose,
    failed,
)
from rdsgate.proxy.errors import ConfigError

from .errors import CliError
from .kubeconfig import connect

GROUP, VERSION = "rdsgate.dev", "v1alpha1"
_STYLE = {
    Status.PASS: "bold green",
    Status.FAIL: "bold red",
    Status.WARN: "bold yellow",
    Status.SKIP: "dim",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diagnose",
        help="check credentials, IMDS, the endpoint, TLS, AssumeRole, IAM login and RDS Proxy",
        description="Find why rdsgate cannot reach or log in to RDS Proxy, with the fix.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="a proxy config file (as in the ConfigMap)")
    src.add_argument("--database", metavar="NAME", help="a Database resource (via kubeconfig)")
    p.add_argument("--namespace", "-n", help="namespace of --database (default: kubeconfig's)")
    p.add_argument("--context", help="kubeconfig context for --database")
    p.add_argument(
        "--db-user",
        action="append",
        default=[],
        metavar="USER",
        help="database user to try an IAM login as (repeatable)",
    )
    p.add_argument("--db-name", default="postgres", help="database for the login (postgres)")
    p.add_argument("--instance-id", help="EC2 instance to read metadata options of")
    p.add_argument(
        "--check",
        action="append",
        choices=CHECKS,
        metavar="CHECK",
        help=f"run only these checks (repeatable): {', '.join(CHECKS)}",
    )
    p.add_argument("--json", action="store_true", help="print findings and conditions as JSON")
    p.set_defaults(func=run)


def _selector_matches(selector: Any, labels: Mapping[str, str]) -> bool:
    """A Role's `databases` selector as the proxy's rbac reads it: omitted matches none."""
    if selector is None:
        return False
    return LabelSelector.model_validate(selector).matches(labels)


def load_database(
    name: str, namespace: str | None, context: str | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Database resource and the Roles of its namespace, through the kubeconfig."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    cluster = connect(context, namespace)
    namespace = cluster.namespace
    api = client.CustomObjectsApi(cluster.api)
    try:
        db = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "databases", name)
        roles = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "roles")["items"]
    except ApiException as exc:
        if exc.status == 404:
            raise CliError(f"Database {namespace}/{name} not found", exit_code=2) from exc
        raise CliError(f"the Kubernetes API refused: {exc.status} {exc.reason}", 2) from exc
    except OSError as exc:
        raise CliError(f"cannot reach the Kubernetes API: {exc}", exit_code=2) from exc
    return dict(db), [dict(r) for r in roles]


def allowed_user_patterns(db: Mapping[str, Any], roles: Sequence[Mapping[str, Any]]) -> list[str]:
    """The databaseUsers patterns of every Role whose allow rule selects this Database."""
    labels = dict(db.get("metadata", {}).get("labels") or {})
    out: list[str] = []
    for role in roles:
        allow = (role.get("spec") or {}).get("allow") or {}
        if _selector_matches(allow.get("databases"), labels):
            for pattern in allow.get("databaseUsers") or []:
                if str(pattern) not in out:
                    out.append(str(pattern))
    return out


def target_from_database(db: Mapping[str, Any]) -> Target:
    """The inputs the operator would render for this Database (caBundle to a temp file)."""
    from rdsgate.operator.render import Database, proxy_config

    from ..status import InvalidSpec

    try:
        config = proxy_config(Database(db))
    except InvalidSpec as exc:
        raise CliError(f"the Database is not valid: {exc}", exit_code=2) from exc
    upstream = config.upstream
    bundle = ((db.get("spec") or {}).get("tls") or {}).get("caBundle")
    if bundle:
        fd, path = tempfile.mkstemp(prefix="rdsgate-ca-", suffix=".pem")
        with os.fdopen(fd, "w") as f:
            f.write(str(bundle))
        atexit.register(os.unlink, path)
        tls = upstream.tls.model_copy(update={"ca_file": Path(path)})
        upstream = upstream.model_copy(update={"tls": tls})
    return Target(database=config.database, upstream=upstream, aws=config.aws)


def _target(args: argparse.Namespace) -> Target:
    if args.config is not None:
        try:
            return Target.from_config(load_config(args.config))
        except ConfigError as exc:
            raise CliError(f"{exc.source}: " + "; ".join(exc.problems), exit_code=2) from exc
    db, _ = load_database(args.database, args.namespace, args.context)
    return target_from_database(db)


def render(findings: Sequence[Finding], console: Console) -> None:
    """The table of checks, then the fix of each failed or warned check, unwrapped."""
    table = Table(title="rdsgate diagnose", show_lines=False, expand=False)
    table.add_column("Check", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Finding")
    for f in findings:
        table.add_row(f.title, Text(f.status.value.upper(), style=_STYLE[f.status]), f.summary)
    console.print(table)
    fixes = [f for f in findings if f.fix and f.status in (Status.FAIL, Status.WARN)]
    for f in fixes:
        console.print()
        console.print(Text(f"Fix for {f.title} ({f.reason}):", style="bold"))
        console.print(Text(f.fix or ""), soft_wrap=True)
    total = {s: sum(1 for f in findings if f.status is s) for s in Status}
    console.print()
    checks = f"{len(findings)} check" + ("" if len(findings) == 1 else "s")
    console.print(
        f"{checks}: {total[Status.PASS]} pass, {total[Status.FAIL]} fail, "
        f"{total[Status.WARN]} warn, {total[Status.SKIP]} skip",
        highlight=False,
    )


def run(args: argparse.Namespace) -> int:
    target = _target(args)
    options = Options(
        db_users=tuple(args.db_user),
        db_name=args.db_name,
        instance_id=args.instance_id,
        only=tuple(args.check) if args.check else None,
    )
    findings = diagnose(target, options)
    if args.json:
        out = {
            "database": {"name": target.database.name, "namespace": target.database.namespace},
            "endpoint": target.upstream.endpoint,
            "failed": failed(findings),
            "findings": [f.to_dict() for f in findings],
            "conditions": conditions(findings),
        }
        print(json.dumps(out, indent=2, default=str))
    else:
        console = Console(highlight=False, width=max(120, Console().width))
        render(findings, console)
        if args.config is None:  # a Database: what its proxies saw pin RDS Proxy sessions
            _render_pinning(args, console)
    return 1 if failed(findings) else 0


def _render_pinning(args: argparse.Namespace, console: Console) -> None:
    from .db import pinning_table

    db, _ = load_database(args.database, args.namespace, args.context)
    pinned = (db.get("status") or {}).get("pinning") or []
    if pinned:
        console.print()
        console.print(pinning_table([(str(args.database), p) for p in pinned]))
