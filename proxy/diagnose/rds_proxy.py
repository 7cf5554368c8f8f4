"""The rds-proxy-auth and rds-proxy-targets checks: the RDS Proxy's auth settings and targets."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .aws_errors import denied, error_code, error_text
from .findings import Finding, Status
from .run import Run


def check_rds_proxy_auth(run: Run) -> Finding:
    proxy = run.db_proxy
    if isinstance(proxy, str):
        status = Status.SKIP
        reason = "NotChecked"
        if proxy.startswith("no RDS Proxy"):
            status, reason = Status.WARN, "ProxyNotFound"
        return Finding(
            "rds-proxy-auth",
            status,
            proxy,
            reason,
            fix="Check upstream.endpoint and aws.region (and aws.proxyResourceId)."
            if status is Status.WARN
            else None,
        )
    name = str(proxy.get("DBProxyName"))
    auth = [dict(a) for a in proxy.get("Auth", [])]
    default_scheme = proxy.get("DefaultAuthScheme")
    evidence: dict[str, Any] = {
        "name": name,
        "arn": proxy.get("DBProxyArn"),
        "engineFamily": proxy.get("EngineFamily"),
        "status": proxy.get("Status"),
        "requireTLS": proxy.get("RequireTLS"),
        "defaultAuthScheme": default_scheme,
        "auth": [
            {k: a.get(k) for k in ("AuthScheme", "IAMAuth", "SecretArn", "UserName") if a.get(k)}
            for a in auth
        ],
    }
    if proxy.get("EngineFamily") not in (None, "POSTGRESQL"):
        return Finding(
            "rds-proxy-auth",
            Status.FAIL,
            f"RDS Proxy {name} is for {proxy.get('EngineFamily')}, not PostgreSQL",
            "WrongEngine",
            evidence,
            "Point the Database at an RDS Proxy with EngineFamily POSTGRESQL.",
        )
    if default_scheme == "IAM_AUTH":
        return Finding(
            "rds-proxy-auth",
            Status.PASS,
            f"RDS Proxy {name} uses end-to-end IAM authentication (DefaultAuthScheme "
            "IAM_AUTH); no secrets are needed",
            "EndToEndIAM",
            evidence,
        )
    modify = (
        f"aws rds modify-db-proxy --db-proxy-name {name} --auth "
        "AuthScheme=SECRETS,SecretArn=SECRET_ARN,IAMAuth=REQUIRED"
    )
    if not auth:
        return Finding(
            "rds-proxy-auth",
            Status.FAIL,
            f"RDS Proxy {name} has no Secrets Manager secrets: it cannot log in to the database",
            "NoSecrets",
            evidence,
            "Create a secret per database user (aws secretsmanager create-secret --name "
            'rdsproxy_USER --secret-string \'{"username":"USER","password":"…"}\') and '
            f"add them with IAM auth required: {modify}",
        )
    secret_problems: list[str] = []
    sm = run.client(run.session, "secretsmanager")
    for entry in auth[:20]:
        arn = entry.get("SecretArn")
        if not arn:
            continue
        try:
            sm.describe_secret(SecretId=arn)
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                secret_problems.append(f"{arn} does not exist")
            elif not denied(exc):
                secret_problems.append(f"{arn}: {error_text(exc)}")
        except BotoCoreError:
            break
    evidence["secretProblems"] = secret_problems
    disabled = [a.get("SecretArn") or "?" for a in auth if a.get("IAMAuth") == "DISABLED"]
    users = set(run.options.db_users)
    named = {str(a["UserName"]): a for a in auth if a.get("UserName")}
    missing_users = sorted(u for u in users if named and u not in named)
    if secret_problems:
        return Finding(
            "rds-proxy-auth",
            Status.FAIL,
            f"RDS Proxy {name} refers to secrets that are missing: {'; '.join(secret_problems)}",
            "SecretMissing",
            evidence,
            f"Recreate the secrets or replace them in the proxy's auth: {modify}",
        )
    if len(disabled) == len(auth):
        return Finding(
            "rds-proxy-auth",
            Status.FAIL,
            f"RDS Proxy {name} has IAM authentication DISABLED for every secret: it refuses "
            "IAM auth tokens",
            "IAMAuthDisabled",
            evidence,
            f"Require IAM authentication for the users rdsgate logs in as: {modify} "
            "(one AuthScheme=… entry per secret).",
        )
    if missing_users:
        return Finding(
            "rds-proxy-auth",
            Status.FAIL,
            f"RDS Proxy {name} has no secret for {', '.join(missing_users)}",
            "NoSecretForUser",
            evidence,
            f"Add a secret for each of them with IAM auth required: {modify}",
        )
    if disabled:
        return Finding(
            "rds-proxy-auth",
            Status.WARN,
            f"RDS Proxy {name} requires IAM auth for {len(auth) - len(disabled)} of "
            f"{len(auth)} secrets; IAM auth is DISABLED for {', '.join(disabled)}",
            "IAMAuthPartlyDisabled",
            evidence,
            f"Users of those secrets cannot log in through rdsgate; if they should: {modify}",
        )
    return Finding(
        "rds-proxy-auth",
        Status.PASS,
        f"RDS Proxy {name}: IAM authentication {auth[0].get('IAMAuth', 'REQUIRED')} for all "
        f"{len(auth)} secrets, and the secrets exist",
        "IAMAuthRequired",
        evidence,
    )


_TARGET_REASONS = {
    "AUTH_FAILURE": (
        "the proxy cannot log in to the database with its secret: the password in the "
        "secret must match the user's database password, and the proxy's IAM role must "
        "read the secret (secretsmanager:GetSecretValue, kms:Decrypt) and trust "
        "rds.amazonaws.com"
    ),
    "CONNECTION_FAILED": (
        "the proxy cannot reach the database: the database's security group must allow "
        "the proxy's security group on the database port"
    ),
    "UNREACHABLE": "the database is not reachable from the proxy's subnets",
    "PENDING_PROXY_CAPACITY": "the proxy is scaling; wait and check again",
    "INVALID_REPLICATION_STATE": "the target is not in a state that accepts connections",
}


def check_rds_proxy_targets(run: Run) -> Finding:
    proxy = run.db_proxy
    if isinstance(proxy, str):
        return Finding("rds-proxy-targets", Status.SKIP, proxy, "NotChecked")
    name = str(proxy.get("DBProxyName"))
    try:
        out = run.client(run.session, "rds").describe_db_proxy_targets(DBProxyName=name)
    except (BotoCoreError, ClientError) as exc:
        return Finding(
            "rds-proxy-targets",
            Status.SKIP,
            f"rds:DescribeDBProxyTargets failed: {error_text(exc)}",
            "NotChecked",
        )
    targets = [
        {
            "type": t.get("Type"),
            "resource": t.get("RdsResourceId"),
            "endpoint": t.get("Endpoint"),
            "state": t.get("TargetHealth", {}).get("State"),
            "reason": t.get("TargetHealth", {}).get("Reason"),
            "description": t.get("TargetHealth", {}).get("Description"),
        }
        for t in out.get("Targets", [])
        if t.get("Type") != "TRACKED_CLUSTER" or t.get("TargetHealth")
    ]
    evidence: dict[str, Any] = {"proxy": name, "targets": targets}
    if not targets:
        return Finding(
            "rds-proxy-targets",
            Status.FAIL,
            f"RDS Proxy {name} has no targets: it has no database to connect to",
            "NoTargets",
            evidence,
            f"aws rds register-db-proxy-targets --db-proxy-name {name} "
            "--db-instance-identifiers DB (or --db-cluster-identifiers CLUSTER)",
        )
    available = [t for t in targets if t["state"] == "AVAILABLE"]
    bad = [t for t in targets if t["state"] not in ("AVAILABLE", "REGISTERING")]
    registering = [t for t in targets if t["state"] == "REGISTERING"]

    def describe(t: dict[str, Any]) -> str:
        why = f" ({t['reason']}: {t['description'] or ''})".replace(": )", ")")
        return f"{t['resource']} {t['state']}" + (why if t["reason"] else "")

    fixes = sorted(
        {_TARGET_REASONS[str(t["reason"])] for t in bad if t["reason"] in _TARGET_REASONS}
    )
    fix = "; ".join(fixes) + "." if fixes else None
    if bad and not available:
        return Finding(
            "rds-proxy-targets",
            Status.FAIL,
            f"no target of RDS Proxy {name} is available: " + ", ".join(describe(t) for t in bad),
            "TargetsUnavailable",
            evidence,
            fix,
        )
    if bad or registering:
        return Finding(
            "rds-proxy-targets",
            Status.WARN,
            f"RDS Proxy {name}: {len(available)} of {len(targets)} targets available; "
            + ", ".join(describe(t) for t in bad + registering),
            "TargetsDegraded",
            evidence,
            fix,
        )
    return Finding(
        "rds-proxy-targets",
        Status.PASS,
        f"RDS Proxy {name}: {len(available)} of {len(targets)} targets available",
        "TargetsAvailable",
        evidence,
    )
