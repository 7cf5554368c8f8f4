"""Diagnostics: each failure mode of IAM access to RDS Proxy, named with its evidence and its fix.

One engine behind `rdsgate diagnose`, the proxy's start-up and periodic checks, and the
Database conditions. Every check returns a `Finding` (findings.py). Checks share one `Run`
(run.py), whose steps (credentials, DNS, TCP, TLS, the RDS API) are computed once, on
first use, so a subset of checks only does the work it needs.

The checks follow the troubleshooting section of the Teleport RDS Proxy guide: no
credentials (and the IMDSv2 hop limit behind them on EKS), endpoint timeouts, legacy
Common-Name certificates, sts:AssumeRole AccessDenied, refused IAM logins, policy size
limits, plus the RDS Proxy's own configuration and target health. One module a check,
in the order they run:

- credentials.py      credentials               the credential chain's source, confirmed by STS
- metadata.py         imds                      the instance metadata service, its hop limit
- assume_role.py      assume-role               sts:AssumeRole of aws.assumeRoleArn
- endpoint.py         endpoint-dns, -tcp        the endpoint resolves and connects
- upstream_tls.py     upstream-tls              TLS, and the endpoint's certificate
- rds_proxy.py        rds-proxy-auth, -targets  the RDS Proxy's auth settings and targets
- iam_login.py        iam-login                 a PostgreSQL log-in with an IAM auth token
- iam_policy_size.py  iam-policy-size           the identity's IAM policy limits

What they share: the policy documents that the fixes print (policies.py; the data plane
cannot import the operator, so `rdsgate.operator.iam` builds its sizing and attaching on
them), the credential chain's sources (credential_chain.py), certificate parsing
(certificates.py) and the wording of AWS errors (aws_errors.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from ..config import ProxyConfig
from .assume_role import check_assume_role
from .credentials import check_credentials
from .endpoint import check_endpoint_dns, check_endpoint_tcp
from .findings import CHECK_TITLES, CHECKS, CONDITION_CHECKS, Finding, Status, conditions, failed
from .iam_login import check_iam_login
from .iam_policy_size import check_iam_policy_size
from .metadata import check_imds
from .policies import (
    INLINE_LIMITS,
    MANAGED_PER_PRINCIPAL,
    MANAGED_POLICY_LIMIT,
    POLICY_VERSION,
    assume_role_permission_policy,
    assume_role_trust_policy,
    connect_policy,
    connect_statement,
    dbuser_arn,
    partition,
    policy,
    policy_size,
    principal_for_trust,
)
from .rds_proxy import check_rds_proxy_auth, check_rds_proxy_targets
from .run import Options, Run, Target
from .upstream_tls import check_upstream_tls

__all__ = [
    "CHECKS",
    "CHECK_TITLES",
    "CONDITION_CHECKS",
    "INLINE_LIMITS",
    "MANAGED_PER_PRINCIPAL",
    "MANAGED_POLICY_LIMIT",
    "POLICY_VERSION",
    "Finding",
    "Options",
    "Status",
    "Target",
    "assume_role_permission_policy",
    "assume_role_trust_policy",
    "conditions",
    "connect_policy",
    "connect_statement",
    "dbuser_arn",
    "diagnose",
    "failed",
    "partition",
    "policy",
    "policy_size",
    "principal_for_trust",
    "run_startup_checks",
    "run_startup_checks_async",
]


_CHECK_FUNCS: dict[str, Callable[[Run], Finding]] = {
    "credentials": check_credentials,
    "imds": check_imds,
    "assume-role": check_assume_role,
    "endpoint-dns": check_endpoint_dns,
    "endpoint-tcp": check_endpoint_tcp,
    "upstream-tls": check_upstream_tls,
    "rds-proxy-auth": check_rds_proxy_auth,
    "rds-proxy-targets": check_rds_proxy_targets,
    "iam-login": check_iam_login,
    "iam-policy-size": check_iam_policy_size,
}


def diagnose(target: Target, options: Options | None = None) -> list[Finding]:
    """Runs the checks in order (all, or `options.only`); blocking, seconds at most.

    Network waits are bounded by the endpoint's connectTimeout and the IMDS timeout
    (botocore's AWS_METADATA_SERVICE_TIMEOUT); AWS API calls are not retried.
    """
    options = options or Options()
    unknown = set(options.only or ()) - set(CHECKS)
    if unknown:
        raise ValueError(
            f"unknown check {', '.join(sorted(unknown))}: choose from {', '.join(CHECKS)}"
        )
    run = Run(target, options)
    findings: list[Finding] = []
    for check in CHECKS:
        if options.only is not None and check not in options.only:
            continue
        try:
            findings.append(_CHECK_FUNCS[check](run))
        except Exception as exc:  # a check must never take the others down
            findings.append(
                Finding(
                    check,
                    Status.FAIL,
                    f"the check itself failed: {type(exc).__name__}: {exc}",
                    "CheckError",
                )
            )
    return findings


def run_startup_checks(
    config: ProxyConfig, *, db_users: Sequence[str] = (), db_name: str = "postgres"
) -> list[Finding]:
    """The checks the proxy runs at start-up and periodically (blocking; use a thread).

    Without `db_users` no login is attempted; the IAM policy-size check is left to the CLI.
    """
    only = [c for c in CHECKS if c != "iam-policy-size"]
    return diagnose(
        Target.from_config(config), Options(db_users=db_users, db_name=db_name, only=only)
    )


async def run_startup_checks_async(
    config: ProxyConfig, *, db_users: Sequence[str] = (), db_name: str = "postgres"
) -> list[Finding]:
    """`run_startup_checks` in a worker thread, for the proxy's event loop."""
    return await asyncio.to_thread(run_startup_checks, config, db_users=db_users, db_name=db_name)
