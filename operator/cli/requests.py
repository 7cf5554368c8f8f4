"""`rdsgate requests ls | approve | deny`: access requests, seen and decided by people.

A request is a Token that waits (or waited) for someone's approval: `db connect --request
--reason` makes one (docs/access-requests.md). `ls` lists them with where each stands (the
operator's `Approved` condition). `approve` and `deny` record a decision the way the API
server takes it: a JSON merge patch of the Token's annotations, `rdsgate.dev/approved-by`
and `rdsgate.dev/approval-reason` (or `denied-by` and `denial-reason`). The operator's
admission webhooks check it (the caller has the verb `approve` on the Token's Roles, is not
its requester, and the request is still pending) and write the caller's username, as the
API server authenticated them, over the `approved-by` value sent. A refusal is shown in
the API server's words, with the exit code "denied".
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..objects import meta_of, spec_of
from ..status import parse_timestamp
from .approval import (
    APPROVAL_REASON,
    APPROVED_BY,
    DENIAL_REASON,
    DENIED_BY,
    PENDING,
    program,
    standing,
)
from .errors import CliError
from .exitcodes import EXIT_DENIED, EXIT_ERROR, EXIT_NOT_FOUND, EXIT_USAGE
from .kubeapi import custom_path, custom_path_all, status_message
from .kubeconfig import add_cluster_options
from .resources import name_of, open_session
from .tokens import requested_by

REQUESTS_EPILOG = f"""\
exit codes:
  0  done
  {EXIT_ERROR}  the Kubernetes API refused a request (or the rdsgate operator's webhooks did not
     answer)
  {EXIT_USAGE}  bad arguments, or an unusable kubeconfig / unreachable Kubernetes API
  {EXIT_NOT_FOUND}  the Token does not exist (or the rdsgate CRDs are not installed)
  {EXIT_DENIED}  the API server refused the decision: you lack the verb approve on one of the
     Token's Roles, it is your own request, it is not pending, it expired, or it was
     decided already (its message says which)
  130  interrupted
"""


def _reason(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("say why (it goes into the audit trail)")
    return text.strip()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_cluster_options(common)
    formatter = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "requests",
        help="access requests: list them, approve or deny one (also: kubectl rdsgate requests ...)",
        description="Access requests: Tokens that wait for someone's approval before they grant\n"
        "anything (`rdsgate db connect --request --reason`). Listing them needs list on\n"
        "tokens.rdsgate.dev; approving or denying needs patch on tokens.rdsgate.dev and the\n"
        "verb approve on roles.rdsgate.dev for the Token's Roles (docs/cli.md).",
        epilog=REQUESTS_EPILOG,
        formatter_class=formatter,
    )
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: the context's)")
    req_sub = p.add_subparsers(dest="requests_command", metavar="COMMAND", required=True)

    ls = req_sub.add_parser(
        "ls",
        parents=[common],
        help="pending and recent requests, with requester, Roles, reason, age and state",
        description="List the access requests of the namespace (or, with -A, of every\n"
        "namespace): Tokens that wait or waited for an approval, or that carry a request\n"
        "reason. Pending ones first, then newest first. STATE is the operator's Approved\n"
        "condition: Pending, Approved, Denied, Expired (not answered in time), NotRequired\n"
        "(asked with a reason, but nothing needed an approval), Unknown (the operator has\n"
        "not looked at it yet). APPROVER is who approved, or denied, it.",
        epilog=REQUESTS_EPILOG,
        formatter_class=formatter,
    )
    ls.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="the requests of every namespace (-n is ignored)",
    )
    ls.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="(default: table)",
    )
    ls.set_defaults(func=run_ls)

    for verb, says in (
        ("approve", "grant the access it asks for (its TTL runs from now)"),
        ("deny", "refuse it (the requester's `db connect` ends at once)"),
    ):
        cmd = req_sub.add_parser(
            verb,
            parents=[common],
            help=f"{verb} a pending request: {says}",
            description=f"{verb.capitalize()} the pending access request NAME (a Token of the "
            f"namespace):\n{says}.\n\n"
            "You need the verb approve on roles.rdsgate.dev for the Token's Roles that\n"
            "require approval, and patch on tokens.rdsgate.dev; it may not be your own\n"
            "request. The API server records you as the approver (whatever a client sends)\n"
            "and your --reason on the Token; the audit events of the access name both.",
            epilog=REQUESTS_EPILOG,
            formatter_class=formatter,
        )
        cmd.add_argument("name", metavar="NAME", help="the Token (see `requests ls`)")
        cmd.add_argument(
            "--reason",
            required=True,
            type=_reason,
            metavar="REASON",
            help="why (required; the requester sees it, the audit trail keeps it)",
        )
        cmd.set_defaults(func=run_decide, approve=verb == "approve")


# requests ls


def human_age(seconds: float) -> str:
    """An age as kubectl prints one: 45s, 3m12s, 25m, 5h3m, 30h, 3d4h, 12d."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    return f"{d}d"


def _created(token: Mapping[str, Any]) -> datetime | None:
    value = meta_of(token).get("creationTimestamp")
    if not isinstance(value, str):
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def request_row(token: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """What `requests ls` says about one request (its JSON form)."""
    st = standing(token)
    spec = spec_of(token)
    status = token.get("status") if isinstance(token.get("status"), Mapping) else {}
    created = _created(token)
    return {
        "namespace": str(meta_of(token).get("namespace") or ""),
        "name": name_of(token),
        "requestedBy": requested_by(token),
        "roles": [str(r) for r in spec.get("roles") or []],
        "database": spec.get("database"),
        "databaseUser": spec.get("databaseUser"),
        "databaseName": spec.get("databaseName"),
        "ttl": (status or {}).get("ttl") or spec.get("ttl"),
        "reason": st.request_reason,
        "createdAt": meta_of(token).get("creationTimestamp"),
        "age": human_age((now - created).total_seconds()) if created else None,
        "state": st.shown_state,
        "approver": st.decided_by,
        "decisionReason": st.decision_reason,
        "decidedAt": st.decided_at.strftime("%Y-%m-%dT%H:%M:%SZ") if st.decided_at else None,
        "expiresAt": (status or {}).get("expiresAt"),
        "message": st.message or None,
    }


def _order(row: Mapping[str, Any]) -> tuple[bool, float]:
    created = row["createdAt"]
    try:
        stamp = parse_timestamp(created).timestamp() if isinstance(created, str) else 0.0
    except ValueError:
        stamp = 0.0
    return row["state"] != PENDING, -stamp


def run_ls(args: argparse.Namespace) -> int:
    s = open_session(args)
    now = datetime.now(UTC)
    if args.all_namespaces:
        tokens = s.api.list(custom_path_all("tokens"), "list the Tokens of every namespace")
        where = "any namespace"
    else:
        tokens = s.api.list(custom_path(s.ns, "tokens"), f"list the Tokens of namespace {s.ns}")
        where = f"namespace {s.ns}"
    live = [t for t in tokens if not meta_of(t).get("deletionTimestamp")]
    rows = sorted(
        (request_row(t, now) for t in live if standing(t).is_request),
        key=_order,
    )
    if args.output == "json":
        print(json.dumps({"requests": rows}, indent=2))
        return 0
    if args.output == "yaml":
        import yaml

        print(yaml.safe_dump({"requests": rows}, sort_keys=False), end="")
        return 0
    if not rows:
        s.err.print(Text(f"No access requests in {where}."), soft_wrap=True)
        return 0
    _print_table(rows)
    return 0


_STATE_STYLE = {"Pending": "yellow", "Approved": "green", "Denied": "red", "Expired": "red"}


def _print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    out = Console(highlight=False)
    if not out.is_terminal:  # piped: one line per row, as kubectl prints, never wrapped
        out = Console(highlight=False, width=4096)
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ("NAMESPACE", "NAME", "REQUESTER", "ROLES", "DATABASE", "USER", "AGE", "STATE")
    for column in (*columns, "APPROVER", "REASON"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            Text(row["namespace"]),
            Text(row["name"]),
            Text(row["requestedBy"] or "not recorded", style="" if row["requestedBy"] else "dim"),
            Text(", ".join(row["roles"]) or "-"),
            Text(str(row["database"] or "-")),
            Text(str(row["databaseUser"] or "-")),
            Text(row["age"] or "-"),
            Text(row["state"], style=_STATE_STYLE.get(row["state"], "")),
            Text(row["approver"] or "-"),
            Text(row["reason"] or "-"),
        )
    out.print(table)
    pending = [r for r in rows if r["state"] == PENDING]
    if pending:
        first = pending[0]
        hint = (
            f"{program()} requests approve {first['name']} -n {first['namespace']} "
            f'--reason "..."  (or deny)'
        )
        out.print(Text(f"Decide on a pending request: {hint}", style="dim"), soft_wrap=True)


# requests approve | deny


def _login(token: Mapping[str, Any]) -> str:
    spec = spec_of(token)
    status = token.get("status") if isinstance(token.get("status"), Mapping) else {}
    parts = [
        f"database user {spec.get('databaseUser') or 'any allowed'}",
        f"on {spec.get('databaseName') or 'any allowed database'}",
    ]
    if spec.get("database"):
        parts.append(f"of Database {spec.get('database')}")
    ttl = (status or {}).get("ttl") or spec.get("ttl")
    text = " ".join(parts)
    return text + (f", for {ttl}" if ttl else "")


def run_decide(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException

    s = open_session(args)
    ns, name, approve = s.ns, args.name, bool(args.approve)
    by_key, reason_key = (APPROVED_BY, APPROVAL_REASON) if approve else (DENIED_BY, DENIAL_REASON)
    verb = "approve" if approve else "deny"
    what = f"{verb} Token {ns}/{name}"
    path = custom_path(ns, "tokens", name)
    seen = s.api.get(path, f"read Token {ns}/{name}")
    if seen is None:
        raise CliError(
            f"Token {ns}/{name} not found ({program()} requests ls -n {ns} lists the requests)",
            EXIT_NOT_FOUND,
        )
    # The value of approved-by is the webhook's to write (the caller as the API server
    # authenticated them); ours is only what makes this an approval. The resourceVersion
    # makes it a decision on exactly the Token looked at: not on one deleted and made again
    # under the same name meanwhile, nor on one changed since.
    patch = {
        "metadata": {
            "resourceVersion": meta_of(seen).get("resourceVersion"),
            "annotations": {by_key: s.caller.username, reason_key: args.reason},
        }
    }
    try:
        token = s.api.merge_patch(custom_path(ns, "tokens", name), patch)
    except ApiException as exc:
        message = status_message(exc)
        if exc.status == 404:
            raise CliError(
                f"Token {ns}/{name} not found ({program()} requests ls -n {ns} lists the requests)",
                EXIT_NOT_FOUND,
            ) from exc
        if "failed calling webhook" in message:
            raise CliError(
                f"cannot {what}: {message} - is the rdsgate operator running? (its admission "
                "webhooks record every decision)",
                EXIT_ERROR,
            ) from exc
        if exc.status == 409:
            raise CliError(
                f"cannot {what}: it changed after it was read (or was made again under the same "
                f"name); look at it again ({program()} requests ls -n {ns}) and decide anew",
                EXIT_ERROR,
            ) from exc
        if exc.status in (403, 422):
            raise CliError(f"cannot {what}: {message}", EXIT_DENIED) from exc
        raise s.api.error(exc, what) from exc
    annotations = meta_of(token).get("annotations") or {}
    decided_by = annotations.get(by_key) or s.caller.username
    roles = [str(r) for r in spec_of(token).get("roles") or []]
    noun = "Role" if len(roles) == 1 else "Roles"
    requester = requested_by(token) or "someone (not recorded)"
    asked = standing(token).request_reason
    out = Console(highlight=False, soft_wrap=True)
    out.print(
        Text.assemble(
            ("✓ ", "green"),
            f"{decided_by} {'approved' if approve else 'denied'} {ns}/{name}: {requester}'s "
            f"request for {noun} {', '.join(roles) or '-'} ({_login(token)})",
        )
    )
    out.print(Text(f"  asked because: {asked or '-'}"))
    out.print(Text(f"  {'approved' if approve else 'denied'} because: {args.reason}"))
    return 0
