"""The iam-login check: a PostgreSQL log-in with an IAM auth token, as RDS Proxy takes it."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from typing import Any

from .. import wire
from ..aws import TokenMinter
from ..errors import ConfigError, CredentialsUnavailable, ProtocolViolation
from .findings import Finding, Status
from .policies import connect_policy, indent, pretty, principal_for_trust
from .run import NoTLS, Run, ms


@dataclass(frozen=True)
class _Login:
    user: str
    outcome: str  # ok, iam-refused, no-secret, tls-required, database-missing, error
    message: str
    sqlstate: str | None = None
    elapsed_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.user, "outcome": self.outcome, "message": self.message}
        if self.sqlstate:
            out["sqlstate"] = self.sqlstate
        out["elapsedMs"] = self.elapsed_ms
        return out


def _pg_login(
    tls: ssl.SSLSocket, user: str, dbname: str, token: str, deadline: float, started: float
) -> _Login:
    """A PostgreSQL start-up with the IAM token as the cleartext password, as RDS Proxy asks."""
    params = {"user": user, "database": dbname, "application_name": "rdsgate-diagnose"}
    login = wire.ClientLogin(params, token)
    tls.sendall(login.start())
    reader = wire.Reader()
    try:
        while True:
            msg = reader.read_message()
            if msg is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return _Login(user, "error", "the upstream did not finish the log-in in time")
                tls.settimeout(remaining)
                data = tls.recv(65536)
                if not data:
                    return _Login(user, "error", "the upstream closed the connection during log-in")
                reader.feed(data)
                continue
            reply, result = login.handle(msg)
            if reply:
                tls.sendall(reply)
            if result is not None:
                break
    except (TimeoutError, ProtocolViolation) as exc:
        return _Login(user, "error", f"log-in failed: {exc}", elapsed_ms=ms(started))
    if result.ready:
        tls.sendall(wire.terminate())
        return _Login(user, "ok", "logged in", elapsed_ms=ms(started))
    if result.unsupported_auth is not None:
        return _Login(
            user,
            "error",
            f"the upstream asked for authentication method {result.unsupported_auth}, not the "
            "cleartext password that IAM authentication uses",
        )
    fields = result.error or {}
    text, sqlstate = fields.get("M", ""), fields.get("C")
    if sqlstate == "3D000" or result.authenticated:
        outcome = "database-missing" if sqlstate == "3D000" else "error"
    elif "no credentials for the role" in text:
        outcome = "no-secret"
    elif "requires TLS" in text:
        outcome = "tls-required"
    elif sqlstate == "28P01" or "IAM authentication failed" in text:
        outcome = "iam-refused"
    else:
        outcome = "error"
    return _Login(user, outcome, text, sqlstate, ms(started))


def _login(run: Run, user: str, token: str) -> _Login:
    """A log-in over a fresh TLS connection to the endpoint, within connectTimeout + 10 s."""
    started = time.perf_counter()
    deadline = time.monotonic() + run.upstream.connect_timeout + 10
    try:
        with run.open_tls() as tls:
            return _pg_login(tls, user, run.options.db_name, token, deadline, started)
    except (OSError, ssl.SSLError, NoTLS, ConfigError) as exc:
        return _Login(user, "error", f"could not log in: {exc}", elapsed_ms=ms(started))


def check_iam_login(run: Run) -> Finding:
    users = list(dict.fromkeys(run.options.db_users))[: run.options.max_logins]
    if not users:
        return Finding(
            "iam-login",
            Status.SKIP,
            "no database user to try (pass --db-user NAME)",
            "NoUser",
        )
    if not run.has_credentials:
        return Finding(
            "iam-login",
            Status.SKIP,
            "no AWS credentials to sign an IAM auth token with (see the credentials check)",
            "NoCredentials",
        )
    if not run.tls.ok and not run.tls.cert:
        return Finding(
            "iam-login",
            Status.SKIP,
            "the endpoint's TLS is not usable (see upstream-tls)",
            "UpstreamUnavailable",
        )
    if not run.tls.ok:
        return Finding(
            "iam-login",
            Status.SKIP,
            "the endpoint's certificate does not verify (see upstream-tls)",
            "UpstreamUnavailable",
        )
    minter = TokenMinter(run.aws, run.session)
    logins: list[_Login] = []
    for user in users:
        try:
            token = minter.mint(run.host, run.port, user)
        except CredentialsUnavailable as exc:
            logins.append(_Login(user, "error", f"cannot sign a token: {exc.message}"))
            continue
        logins.append(_login(run, user, token))
    ident = run.final_identity
    evidence: dict[str, Any] = {
        "database": run.options.db_name,
        "identity": ident["arn"] if ident else None,
        "logins": [x.to_dict() for x in logins],
    }
    refused = [x for x in logins if x.outcome == "iam-refused"]
    no_secret = [x for x in logins if x.outcome == "no-secret"]
    other = [x for x in logins if x.outcome in ("error", "tls-required")]
    ok = [x for x in logins if x.outcome in ("ok", "database-missing")]
    if refused:
        account, prx = run.resource_account
        names = [x.user for x in refused]
        doc = connect_policy(
            run.aws.region, account or "ACCOUNT_ID", prx or "prx-RESOURCE_ID", names
        )
        evidence["policy"] = doc
        principal = principal_for_trust(ident["arn"]) if ident else "the proxy's role"
        attach = principal.rsplit("/", 1)[-1] if ident else "ROLE"
        kind = "user" if ":user/" in principal else "role"
        cmd = (
            f"rdsgate iam policy --region {run.aws.region} --account {account or 'ACCOUNT_ID'}"
            f" --proxy-resource-id {prx or 'prx-RESOURCE_ID'} "
            + " ".join(f"--db-user {u}" for u in names)
            + f" --attach-to-{kind} {attach}"
        )
        fix = (
            f"{principal} needs rds-db:connect for "
            + ", ".join(names)
            + " on this RDS Proxy (least privilege):\n"
            + indent(pretty(doc))
            + f"\nAttach it with: {cmd}\n"
            + "Also required: IAM authentication REQUIRED for the user's secret on the proxy "
            "(see rds-proxy-auth), and the token signed for this exact endpoint host, port "
            "and region."
        )
        if not prx:
            fix += (
                "\n(Set aws.proxyResourceId / spec.aws.proxyResourceId to the proxy's prx- id "
                "from aws rds describe-db-proxies --query 'DBProxies[].DBProxyArn'.)"
            )
        return Finding(
            "iam-login",
            Status.FAIL,
            "RDS Proxy refused the IAM login for "
            + ", ".join(f"{x.user} ({x.sqlstate}: {x.message})" for x in refused),
            "IAMAuthFailed",
            evidence,
            fix,
        )
    if no_secret:
        return Finding(
            "iam-login",
            Status.FAIL,
            "RDS Proxy has no credentials for "
            + ", ".join(f"{x.user} ({x.message})" for x in no_secret),
            "NoSecretForUser",
            evidence,
            "Create a Secrets Manager secret with the user's database password (aws "
            "secretsmanager create-secret --name rdsproxy_USER --secret-string "
            '\'{"username":"USER","password":"…"}\') and add it to the proxy with '
            "IAMAuth=REQUIRED (aws rds modify-db-proxy --auth …).",
        )
    if other:
        return Finding(
            "iam-login",
            Status.FAIL,
            "IAM login failed: " + "; ".join(f"{x.user}: {x.message}" for x in other),
            "LoginFailed",
            evidence,
            "See upstream-tls and rds-proxy-auth; the evidence holds the server's answer.",
        )
    missing_db = [x for x in ok if x.outcome == "database-missing"]
    summary = f"IAM login to {run.host} succeeded as {', '.join(x.user for x in ok)}"
    if missing_db:
        return Finding(
            "iam-login",
            Status.WARN,
            summary + f", but database {run.options.db_name!r} does not exist",
            "DatabaseMissing",
            evidence,
            "Pass --db-name with a database that exists.",
        )
    return Finding("iam-login", Status.PASS, summary, "LoggedIn", evidence)
