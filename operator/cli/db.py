"""`rdsgate db ls | connect | logout`: a person's access to Databases, through short-lived Tokens.

`connect` checks locally what the proxy will check (the Role rules, with the proxy's own
`rbac.authorize`), makes (or reuses) the caller's key pair for the Database, creates a
Token for its public key labelled as the caller's (or reuses one), waits for the operator
to sign a client certificate into the Token's status and for the proxy to load the grant,
forwards a local port to a proxy pod through the Kubernetes API (no kubectl needed) and
runs psql with a `PG*` environment that presents that certificate and verifies the
proxy's for `<db>.<ns>.svc`. No password exists and no Secret is read. `ls` shows what the
caller's roles allow and their Tokens; `logout` deletes the caller's CLI Tokens and key
pairs. Who the caller is, and which Tokens are theirs: `caller.py`; the key: `keypair.py`;
access requests (`connect --request --reason`): `tokens.py` and `approval.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rdsgate.proxy.durations import format_duration, parse_duration

from ..objects import spec_of
from ..status import parse_timestamp
from .approval import approval_roles, program
from .errors import CliError
from .exitcodes import (
    EXIT_DENIED,
    EXIT_EPILOG,
    EXIT_ERROR,
    EXIT_NO_PSQL,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_USAGE,
)
from .keypair import cache_dir, issued_by, key_pair
from .kubeapi import custom_path
from .kubeconfig import add_cluster_options
from .progress import Backoff, Progress
from .resources import (
    Session,
    access_on,
    caller_tokens,
    check_ready,
    choose_roles,
    condition,
    get_database,
    labels_of,
    list_roles,
    name_of,
    open_session,
    prefer_bindable,
    token_expired,
    token_expires_at,
    unique,
)
from .tokens import CA_CONFIG_MAP, Asking, obtain_token, read_ca, requested_by

if TYPE_CHECKING:
    from .portforward import PortForwarder


SERVICE_PORT = 5432
DEFAULT_TTL = "1h"
DEFAULT_TIMEOUT = "2m"
#: The last line of `--print-env` output: scripts wait for it.
_MARKER = "# rdsgate:"


CONNECT_DESCRIPTION = """\
Connect psql to a Database as DB_USER to DB_NAME, with a short-lived Token of your own.

Steps: the Database must exist and be Ready; your roles must allow DB_USER on DB_NAME on
it (checked here first, with the proxy's own rules); the proxies' CA is read from the
ConfigMap rdsgate-ca; your key pair for the Database is made (ECDSA P-256) or reused, in
~/.cache/rdsgate/<context>/<namespace>/<database>/tls.key (mode 0600; the private key
never leaves this machine); a Token is created for its public key (spec.publicKey,
labelled rdsgate.dev/created-by=rdsgate-cli and rdsgate.dev/owner=<you>; a granted one of
yours for the same Database, user, database name, roles and key is reused instead); the
operator signs a client certificate for the key into the Token's status, saved next to
the key as <token>.crt; a local port is forwarded to a Ready proxy pod through the
Kubernetes API (pods/portforward, as kubectl port-forward does); once the proxy accepts
the certificate, psql runs with PGSSLCERT/PGSSLKEY/PGSSLROOTCERT, PGHOST=<db>.<ns>.svc,
PGHOSTADDR=127.0.0.1 and PGSSLMODE=verify-full: the proxy's certificate is verified for
the Service name while the connection goes through the forward. There is no password, and
no Secret is read.

Roles: --role R (repeatable) names the Token's roles; without it, the Token gets every
Role in the namespace that on its own allows DB_USER on DB_NAME on this Database (of
those, the ones you may `bind`, when the API server says so). Creating a Token naming a
Role you may not bind is refused by the API server (exit 5, in its words).

Access requests: with --request --reason "why", the Token carries your reason (annotation
rdsgate.dev/request-reason) and may name Roles you may only `request`. If one of its Roles
requires approval (spec.options.requireApproval), or you may only request it, the Token
waits until someone else with the verb `approve` on it runs `rdsgate requests approve`:
this prints whom to ask and waits (no --timeout while a person decides; the operator's
--request-timeout, 1h by default, expires the request), then connects as usual. A denial
or the expiry ends it at once (exit 5, exit 6), with who and why. Ctrl-C leaves the
request pending; the same command takes it up again (`db connect` reuses your pending or
approved request for the same login, roles and key instead of asking anew). Without
--request, a Role that requires approval is refused by the API server.

--print-env prints `export PG...=...` lines (shell-quoted) instead of running psql, then a
line starting with "# rdsgate:". With a port-forward the command then keeps forwarding in
the foreground until interrupted (Ctrl-C, SIGTERM); with --address it exits at once.
Use it from a script like this:

  rdsgate db connect orders --db-user app --db-name orders --print-env > pg.env &
  until grep -q '^# rdsgate:' pg.env; do sleep 0.2; done
  . ./pg.env && psql -c 'select 1'; kill %1

Arguments after `--` go to psql, e.g. `-- -c 'select 1'`.
"""


# Arguments


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the duration must be more than 0")
    return seconds


def _ttl(text: str) -> str:
    _duration(text)
    return text.strip()


_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _database_name(text: str) -> str:
    """A Database's name (a DNS subdomain): also a directory name under the cache."""
    if len(text) > 253 or not _NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Database name (lowercase letters, digits, '-' and '.')"
        )
    return text


def _reason(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("say why you need the access")
    return text.strip()


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, like 10.0.3.7:5432, not {text!r}")
    return host, int(port)


class _Parser(argparse.ArgumentParser):
    """Hands everything after `--` to `passthrough` verbatim: argparse alone would bind an
    empty list to a trailing `nargs="*"` positional as soon as it meets NAME, and then
    refuse `-- -c 'select 1'` after options (bpo-14191)."""

    passthrough: str | None = None

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        rest: list[str] = []
        argv = list(sys.argv[1:] if args is None else args)
        if self.passthrough and "--" in argv:
            cut = argv.index("--")
            argv, rest = argv[:cut], argv[cut + 1 :]
        parsed, extras = super().parse_known_args(argv, namespace)
        if self.passthrough:
            setattr(parsed, self.passthrough, rest)
        return parsed, extras


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = _Parser(add_help=False)
    add_cluster_options(common)
    formatter = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "db",
        help="list Databases, connect psql to one, log out (also: kubectl rdsgate db ...)",
        description="A person's access to Databases: short-lived Tokens, port-forward, psql.",
        epilog=EXIT_EPILOG,
        formatter_class=formatter,
    )
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: the context's)")
    db_sub = p.add_subparsers(
        dest="db_command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    ls = db_sub.add_parser(
        "ls",
        parents=[common],
        help="the Databases, whether they are Ready, and what your roles allow on each",
        description="List the Databases of the namespace with their engine, endpoint and Ready\n"
        "condition, and the database users and names your roles allow on each: the roles\n"
        "of your unexpired CLI Tokens plus any --role (with neither, every Role in the\n"
        "namespace, which is what `db connect` picks from).",
        epilog=EXIT_EPILOG,
        formatter_class=formatter,
    )
    ls.add_argument(
        "--role", action="append", default=[], metavar="ROLE", help="also show ROLE's access"
    )
    ls.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="(default: table)",
    )
    ls.set_defaults(func=run_ls)

    con = db_sub.add_parser(
        "connect",
        parents=[common],
        usage="%(prog)s NAME --db-user DB_USER --db-name DB_NAME [--request --reason REASON] "
        "[options] [-- PSQL_ARGS ...]",
        help="psql to a Database through a port-forward, with a short-lived Token",
        description=CONNECT_DESCRIPTION,
        epilog=EXIT_EPILOG,
        formatter_class=formatter,
    )
    con.add_argument("name", metavar="NAME", type=_database_name, help="the Database")
    con.add_argument("--db-user", required=True, metavar="DB_USER", help="database user")
    con.add_argument("--db-name", required=True, metavar="DB_NAME", help="database name")
    con.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="ROLE",
        help="a Role for the Token (repeatable; default: every Role that allows the login)",
    )
    con.add_argument(
        "--ttl", type=_ttl, default=DEFAULT_TTL, help=f"the Token's lifetime ({DEFAULT_TTL})"
    )
    con.add_argument(
        "--request",
        action="store_true",
        help="ask for access that needs someone's approval, and wait for it (with --reason)",
    )
    con.add_argument(
        "--reason",
        type=_reason,
        metavar="REASON",
        help="why you need the access (with --request): the approver reads it, the audit "
        "trail keeps it",
    )
    con.add_argument(
        "--print-env", action="store_true", help="print the PG* environment instead of psql"
    )
    con.add_argument(
        "--local-port", type=int, default=0, metavar="PORT", help="local port (default: any free)"
    )
    con.add_argument(
        "--address",
        type=_address,
        metavar="HOST:PORT",
        help="connect to the Service directly (in-cluster or VPN) instead of a port-forward",
    )
    con.add_argument(
        "--timeout",
        type=_duration,
        default=_duration(DEFAULT_TIMEOUT),
        metavar="DURATION",
        help=f"how long to wait for the Token and the proxy ({DEFAULT_TIMEOUT})",
    )
    con.set_defaults(func=run_connect, psql_args=[])
    assert isinstance(con, _Parser)
    con.passthrough = "psql_args"

    out = db_sub.add_parser(
        "logout",
        parents=[common],
        help="delete your CLI Tokens (for NAME, or all) and your key pairs",
        description="Delete the Tokens that `db connect` created for you in the namespace (all\n"
        "of them, or those for Database NAME) and your key pairs and certificates for\n"
        "those Databases under ~/.cache/rdsgate/. Tokens others created are never touched.",
        epilog=EXIT_EPILOG,
        formatter_class=formatter,
    )
    out.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        type=_database_name,
        help="only the Tokens and the key pair for this Database",
    )
    out.set_defaults(func=run_logout)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# db ls


def _patterns_cell(allowed: list[str], denied: list[str], blocked: list[str]) -> str:
    if blocked:
        return f"none (denied by {', '.join(blocked)})"
    if not allowed:
        return "-"
    text = ", ".join(allowed)
    return text + (f" (not {', '.join(denied)})" if denied else "")


def run_ls(args: argparse.Namespace) -> int:
    s = open_session(args)
    ns, now = s.ns, datetime.now(UTC)
    databases = s.api.list(custom_path(ns, "databases"), f"list the Databases of namespace {ns}")
    roles = list_roles(s.api, ns)
    tokens = [t for t in caller_tokens(s.api, ns, s.caller) if not token_expired(t, now)]
    for name in args.role:
        if name not in roles:
            known = ", ".join(sorted(roles)) or "none"
            raise CliError(f"Role {ns}/{name} not found (Roles in {ns}: {known})", EXIT_NOT_FOUND)
    from_tokens = unique([str(r) for t in tokens for r in spec_of(t).get("roles") or []])
    names = unique([*from_tokens, *args.role])
    basis = "your Tokens" + (" and --role" if args.role else "") if from_tokens else "--role"
    if not names:
        names, basis = sorted(roles), "every Role in the namespace (you have no Tokens here)"
    chosen = [roles[n] for n in names if n in roles]

    rows = []
    for db in sorted(databases, key=name_of):
        ready = condition(db, "Ready") or {}
        spec = spec_of(db)
        rows.append(
            {
                "name": name_of(db),
                "namespace": ns,
                "engine": spec.get("engine", "postgres"),
                "endpoint": spec.get("endpoint"),
                "service": f"{name_of(db)}.{ns}.svc:{SERVICE_PORT}",
                "readOnlyService": (
                    f"{name_of(db)}-ro.{ns}.svc:{SERVICE_PORT}"
                    if spec.get("readOnlyEndpoint")
                    else None
                ),
                "labels": labels_of(db),
                "ready": {
                    "status": ready.get("status", "Unknown"),
                    "reason": ready.get("reason"),
                    "message": ready.get("message"),
                },
                "access": access_on(labels_of(db), chosen),
                "pinning": list((db.get("status") or {}).get("pinning") or []),
                "tokens": [
                    {
                        "name": name_of(t),
                        "databaseUser": spec_of(t).get("databaseUser"),
                        "databaseName": spec_of(t).get("databaseName"),
                        "roles": list(spec_of(t).get("roles") or []),
                        "expiresAt": (t.get("status") or {}).get("expiresAt"),
                        "requestedBy": requested_by(t),
                    }
                    for t in tokens
                    if spec_of(t).get("database") == name_of(db)
                ],
            }
        )
    doc = {
        "namespace": ns,
        "caller": {"username": s.caller.username, "source": s.caller.source},
        "roles": {"basis": basis, "names": names},
        "databases": rows,
    }
    if args.output == "json":
        print(json.dumps(doc, indent=2))
        return 0
    if args.output == "yaml":
        import yaml

        print(yaml.safe_dump(doc, sort_keys=False), end="")
        return 0
    _print_table(rows, ns, basis, names, s)
    return 0


def _print_table(
    rows: list[dict[str, Any]], ns: str, basis: str, names: list[str], s: Session
) -> None:
    out = Console(highlight=False)
    if not out.is_terminal:  # piped: one line per row, as kubectl prints, never wrapped
        out = Console(highlight=False, width=4096)
    if not rows:
        s.err.print(Text(f"No Databases in namespace {ns}."))
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "ENGINE", "ENDPOINT", "READY", "USERS", "DATABASES", "ROLES"):
        table.add_column(column, overflow="fold")
    notes: list[str] = []
    for row in rows:
        ready = row["ready"]
        ready_text = Text("True", style="green")
        if ready["status"] != "True":
            ready_text = Text(str(ready["status"]), style="red")
            if ready["reason"]:
                ready_text.append(f" ({ready['reason']})")
            if ready["message"]:
                notes.append(f"{row['name']}: {ready['message']}")
        if row["readOnlyService"]:
            notes.append(f"{row['name']}: read-only endpoint served as {row['readOnlyService']}")
        access = row["access"]
        table.add_row(
            Text(row["name"]),
            Text(str(row["engine"])),
            Text(str(row["endpoint"] or "-")),
            ready_text,
            Text(
                _patterns_cell(
                    access["databaseUsers"], access["deniedDatabaseUsers"], access["deniedBy"]
                )
            ),
            Text(
                _patterns_cell(
                    access["databaseNames"], access["deniedDatabaseNames"], access["deniedBy"]
                )
            ),
            Text(", ".join(access["roles"]) or "-"),
        )
    out.print(table)
    for note in notes:
        out.print(Text(note), soft_wrap=True)
    tokens = [(row["name"], t) for row in rows for t in row["tokens"]]
    if tokens:
        out.print()
        out.print(_tokens_table(tokens))
    pinned = [(row["name"], p) for row in rows for p in row["pinning"]]
    if pinned:
        out.print()
        out.print(pinning_table(pinned))
    caption = f"Access for {s.caller.username} from {basis}: {', '.join(names) or 'no roles'}."
    out.print(Text(caption, style="dim"), soft_wrap=True)


def pinning_table(pinned: Sequence[tuple[str, Mapping[str, Any]]]) -> Table:
    """Who makes RDS Proxy pin sessions, and why (a Database's `status.pinning`): the
    statements counted by its proxies since they started, most first."""
    table = Table(
        box=None,
        pad_edge=False,
        header_style="bold",
        title="Pinning RDS Proxy sessions",
        title_justify="left",
    )
    for column in ("DATABASE", "IDENTITY", "REASON", "STATEMENTS"):
        table.add_column(column, overflow="fold")
    for db_name, entry in pinned:
        table.add_row(
            Text(db_name),
            Text(str(entry.get("identity", "?"))),
            Text(str(entry.get("reason", "?"))),
            Text(str(entry.get("statements", 0))),
        )
    return table


def _tokens_table(tokens: list[tuple[str, dict[str, Any]]]) -> Table:
    """The caller's Tokens, with who asked for each as the API server recorded it."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("TOKEN", "DATABASE", "USER", "DB-NAME", "ROLES", "EXPIRES", "REQUESTED-BY"):
        table.add_column(column, overflow="fold")
    for database, token in tokens:
        expires = token["expiresAt"]
        if isinstance(expires, str):
            with contextlib.suppress(ValueError):
                expires = _when(parse_timestamp(expires))
        table.add_row(
            Text(token["name"]),
            Text(database),
            Text(str(token["databaseUser"] or "-")),
            Text(str(token["databaseName"] or "-")),
            Text(", ".join(token["roles"]) or "-"),
            Text(str(expires or "-")),
            Text(
                token["requestedBy"] or "not recorded", style="" if token["requestedBy"] else "dim"
            ),
        )
    return table


# db connect


def _resolve_address(host: str, port: int) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise CliError(f"cannot resolve --address host {host!r}: {exc}", EXIT_USAGE) from exc
    return str(infos[0][4][0])


def pg_env(
    *,
    db: str,
    ns: str,
    hostaddr: str,
    port: int,
    user: str,
    dbname: str,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
) -> dict[str, str]:
    """libpq's environment: PGHOST names the Service for verify-full, PGHOSTADDR is dialled,
    the client certificate is the credential (no password)."""
    return {
        "PGHOST": f"{db}.{ns}.svc",
        "PGHOSTADDR": hostaddr,
        "PGPORT": str(port),
        "PGUSER": user,
        "PGDATABASE": dbname,
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": str(ca_file),
        "PGSSLCERT": str(cert_file),
        "PGSSLKEY": str(key_file),
    }


def wait_for_grant(
    env: Mapping[str, str],
    backoff: Backoff,
    timeout: float,
    progress: Progress,
    forwarder: PortForwarder | None,
) -> None:
    """Logs in through the proxy until it accepts the Token (it may not have loaded it yet)."""
    from . import pgprobe

    def attempt() -> pgprobe.Probe:
        return pgprobe.login(
            address=env["PGHOSTADDR"],
            port=int(env["PGPORT"]),
            server_name=env["PGHOST"],
            ca_file=Path(env["PGSSLROOTCERT"]),
            cert_file=Path(env["PGSSLCERT"]),
            key_file=Path(env["PGSSLKEY"]),
            user=env["PGUSER"],
            dbname=env["PGDATABASE"],
            timeout=max(1.0, min(10.0, backoff.remaining)),
        )

    with contextlib.ExitStack() as stack:
        update: Callable[[str], None] | None = None
        while True:
            probe = attempt()
            if probe.ok:
                return
            if probe.tls_error:
                raise CliError(f"cannot log in through the proxy: {probe.message}", EXIT_ERROR)
            if probe.sqlstate == "28000":
                raise CliError(f"the proxy refused the login: {probe.message}", EXIT_DENIED)
            if not (probe.grant_not_loaded or probe.unreachable):
                progress.warn(f"a test log-in failed ({probe.sqlstate}): {probe.message}")
                return
            why = probe.message
            if probe.unreachable and forwarder is not None and forwarder.last_error:
                why = forwarder.last_error
            if backoff.expired:
                hint = (
                    "the proxy has not loaded the new grant yet (the kubelet refreshes Secret "
                    "volumes within about a minute; try a longer --timeout)"
                    if probe.grant_not_loaded
                    else "the proxy cannot be reached"
                )
                raise CliError(f"{hint} within {format_duration(timeout)}: {why}", EXIT_TIMEOUT)
            text = (
                "Waiting for the proxy to load the new grant…"
                if probe.grant_not_loaded
                else f"Waiting for the proxy: {why}"
            )
            if update is None:
                update = stack.enter_context(progress.waiting(text))
            update(text)
            backoff.sleep()


def _psql_env(env: Mapping[str, str]) -> dict[str, str]:
    """The user's environment without PG* settings that would change the connection."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")} | dict(env)


def _run_psql(psql: str, env: Mapping[str, str], args: Sequence[str]) -> int:
    """psql in the foreground; Ctrl-C is psql's (it cancels the query), not ours."""

    def keep_forwarding(signum: int, frame: FrameType | None) -> None:
        """A handler (not SIG_IGN, which psql would inherit): Ctrl-C reaches psql only."""

    previous = signal.signal(signal.SIGINT, keep_forwarding)
    try:
        return subprocess.call([psql, *args], env=_psql_env(env))
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_env(env: Mapping[str, str], marker: str) -> None:
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    print(f"{_MARKER} {marker}")
    sys.stdout.flush()


def _serve_until_stopped() -> None:
    """Blocks until SIGINT, SIGTERM or SIGHUP; the forward serves meanwhile."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    previous = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _check_request_args(args: argparse.Namespace) -> None:
    if args.reason is not None and not args.request:
        raise CliError(
            "--reason goes with --request (ask for access that needs an approval): add "
            "--request, or leave out --reason",
            EXIT_USAGE,
        )
    if args.request and args.reason is None:
        raise CliError(
            '--request needs --reason "why you need it": the approver reads it, and it goes '
            "into the audit trail",
            EXIT_USAGE,
        )


def run_connect(args: argparse.Namespace) -> int:
    _check_request_args(args)
    psql = None
    if not args.print_env:
        psql = shutil.which("psql")
        if psql is None:
            raise CliError(
                "psql is not installed (or not on PATH). Install the PostgreSQL client: "
                "apt-get install postgresql-client (Debian/Ubuntu), dnf install postgresql "
                "(Fedora/RHEL), brew install libpq && brew link --force libpq (macOS); "
                "or use --print-env to get the PG* environment for another client",
                EXIT_NO_PSQL,
            )
    s = open_session(args)
    ns, name = s.ns, args.name
    progress = Progress(s.err)
    db = get_database(s.api, ns, name)
    check_ready(db, ns)
    now = datetime.now(UTC)
    known = list_roles(s.api, ns)
    roles = choose_roles(known, args.role, db, ns, args.db_user, args.db_name, now)
    if not args.role:
        roles = prefer_bindable(
            s.api, ns, roles, ("bind", "request") if args.request else ("bind",)
        )
    argv = getattr(args, "argv", None)
    asking = Asking(
        args.reason if args.request else None,
        approval_roles(known, roles),
        f"{program()} {shlex.join(sys.argv[1:] if argv is None else argv)}",
    )
    ca_pem = read_ca(s)
    keys = key_pair(cache_dir(s.cluster.context, ns) / name)
    if keys.created:
        progress.done(f"Made your key pair for Database {ns}/{name}: {keys.key_file}")
    backoff = Backoff(time.monotonic() + args.timeout)
    grantee = obtain_token(
        s,
        name,
        args.db_user,
        args.db_name,
        roles,
        args.ttl,
        keys,
        backoff,
        args.timeout,
        progress,
        asking,
    )
    token_name = name_of(grantee.token)
    expires = token_expires_at(grantee.token)
    verb = "Reusing" if grantee.reused else "Granted" if grantee.approved_by else "Created"
    progress.done(
        f"{verb} Token {ns}/{token_name} (roles {', '.join(roles)}"
        + (f"; approved by {grantee.approved_by}" if grantee.approved_by else "")
        + (f"; expires {_when(expires)}" if expires else "")
        + ")"
    )
    if not issued_by(grantee.certificate.pem, ca_pem):
        raise CliError(
            f"the ConfigMap {ns}/{CA_CONFIG_MAP} does not hold the CA that signed your "
            f"certificate (status.certificate of Token {ns}/{token_name}): not trusting it to "
            "verify the proxy. Someone changed it; the operator puts it back within moments, "
            "or ask an administrator",
            EXIT_ERROR,
        )
    ca_file = keys.save_ca(ca_pem)
    cert_file = keys.save_certificate(token_name, grantee.certificate.pem)
    forwarder: PortForwarder | None = None
    try:
        if args.address is not None:
            host, port = args.address
            hostaddr = _resolve_address(host, port)
            route = f"direct to {host}:{port}"
        else:
            from .portforward import PortForwarder

            forwarder = PortForwarder(
                s.cluster,
                name,
                SERVICE_PORT,
                local_port=args.local_port,
                on_error=progress.warn,
            )
            target = forwarder.start()
            hostaddr, port = forwarder.local_host, forwarder.local_port
            route = f"forwarding {hostaddr}:{port} to pod {ns}/{target.pod}:{target.port}"
            progress.done(route[0].upper() + route[1:])
        env = pg_env(
            db=name,
            ns=ns,
            hostaddr=hostaddr,
            port=port,
            user=args.db_user,
            dbname=args.db_name,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=keys.key_file,
        )
        wait_for_grant(env, backoff, args.timeout, progress, forwarder)
        if args.print_env:
            if forwarder is None:
                _print_env(env, f"{route}; Token {ns}/{token_name}")
                return 0
            _print_env(
                env, f"{route}; Token {ns}/{token_name}; stop with Ctrl-C or kill {os.getpid()}"
            )
            _serve_until_stopped()
            return 0
        assert psql is not None
        return _run_psql(psql, env, args.psql_args)
    finally:
        if forwarder is not None:
            forwarder.close()


# db logout


def run_logout(args: argparse.Namespace) -> int:
    s = open_session(args)
    ns = s.ns
    out = Console(highlight=False, soft_wrap=True, markup=False)
    tokens = [
        t
        for t in caller_tokens(s.api, ns, s.caller)
        if args.name is None or spec_of(t).get("database") == args.name
    ]
    removed = 0
    for token in sorted(tokens, key=name_of):
        name = name_of(token)
        spec = spec_of(token)
        if s.api.delete(custom_path(ns, "tokens", name), f"delete Token {ns}/{name}"):
            removed += 1
            out.print(
                f"Deleted Token {ns}/{name} (Database {spec.get('database')}, "
                f"user {spec.get('databaseUser')}, database {spec.get('databaseName')})"
            )
    base = cache_dir(s.cluster.context, ns)
    if args.name is not None:
        directories = [base / args.name] if (base / args.name).is_dir() else []
    else:
        directories = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
        removed += 1
        out.print(f"Removed {directory} (your key pair)")
    if not removed:
        what = f" for Database {args.name}" if args.name else ""
        out.print(
            f"Nothing to remove: no Tokens of yours ({s.caller.username}) from `rdsgate db "
            f"connect`{what} in namespace {ns}, and no key pair."
        )
    return 0
