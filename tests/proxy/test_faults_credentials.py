"""Faults of the proxy's AWS credential sources (issue 14, faults 3 and 4).

The credential endpoint goes away while IAM auth tokens are cached; the IRSA token file
is rotated as the kubelet rotates it while the role session runs out. Each test says what
a client sees, what is audited and counted, and which log-ins carry on. Endpoints and the
moment a refresh is due are compressed into seconds as `tests/fixtures/credsources.py`
explains; the proxy is configured the way a user would (`aws.tokenReuse`, environment).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from rdsgate.lab.aws import AwsLab, DbIdentity
from rdsgate.lab.imds import ImdsSettings, RoleCredentials
from rdsgate.lab.kubelet import ProjectedVolume
from rdsgate.lab.rdsproxy import RdsProxyStandIn
from tests.fixtures.credsources import ContainerCredentials, InstanceMetadata, WebIdentitySts
from tests.fixtures.k8s import wait_for
from tests.fixtures.lab import RdsIam
from tests.fixtures.proxy import APP_SECRET, REPORTING_SECRET, RunningProxy

Start = Callable[..., RunningProxy]

#: Seconds a signed IAM auth token serves new log-ins in these tests (aws.tokenReuse).
TOKEN_REUSE = 8
#: Warm upstream connections would serve log-ins without any token: off, so every log-in
#: here goes through the token cache or a new signature.
NO_WARM = {"upstream": {"warm": {"perKey": 0}}}
PASSWORDS = {"app": APP_SECRET, "reporting": REPORTING_SECRET}


def login(proxy: RunningProxy, user: str) -> str:
    """Logs in as `user` (with its Token's secret) and returns current_user."""

    async def go() -> str:
        conn = await asyncpg.connect(proxy.url(user=user, password=PASSWORDS[user]), timeout=15)
        try:
            return str(await conn.fetchval("select current_user"))
        finally:
            await conn.close()

    return asyncio.run(go())


def refusal(proxy: RunningProxy, user: str) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as info:
        login(proxy, user)
    return info.value


def readyz(proxy: RunningProxy) -> tuple[int, str]:
    return proxy.http("/readyz")


def refused_for_credentials(
    proxy: RunningProxy, user: str, source: str, failures: int
) -> asyncpg.PostgresError:
    """`user` is refused with 08001 naming the credential source; `failures` so far."""
    err = refusal(proxy, user)
    assert err.sqlstate == "08001"
    assert err.message.startswith(f"cannot get AWS credentials from {source}: ")
    assert proxy.metric("rdsgate_upstream_errors_total", {"kind": "credentials"}) == failures
    return err


def cached_token_serves_until_due(proxy: RunningProxy, source: str) -> None:
    """With the credential source gone, app logs in on its cached token (nothing is signed)
    and the proxy stays ready; once the token is due for renewal /readyz turns 503 naming
    the source, and app is refused too."""
    hits = proxy.metric("rdsgate_iam_token_cache_hits_total")
    assert login(proxy, "app") == "app"
    assert proxy.metric("rdsgate_iam_token_cache_hits_total") == hits + 1
    assert proxy.metric("rdsgate_iam_token_mints_total") == 1
    wait_for(
        lambda: any("use the IAM auth tokens already signed" in line for line in proxy.logs),
        "the proxy to notice the outage and say it serves cached tokens",
    )
    assert readyz(proxy)[0] == 200, readyz(proxy)
    assert proxy.metric("rdsgate_ready") == 1

    def unready() -> str | None:
        status, text = readyz(proxy)
        return text if status == 503 else None

    body = wait_for(
        unready,
        "/readyz to turn 503 once the cached token is due for renewal",
        timeout=TOKEN_REUSE + 10,
    )
    assert f"aws: cannot get AWS credentials from {source}: " in body
    assert proxy.metric("rdsgate_ready") == 0
    refused_for_credentials(proxy, "app", source, failures=2)


def test_pod_identity_endpoint_outage_serves_cached_tokens_then_fails_and_recovers(
    start_proxy: Start, aws: AwsLab, rds_iam: RdsIam
) -> None:
    """Pod Identity's agent goes away with a token for `app` cached and none for `reporting`.

    app keeps logging in on its cached token and /readyz stays 200 while it is valid;
    reporting, with nothing cached, gets 08001 naming EKS Pod Identity and its endpoint.
    Once app's token is due for renewal /readyz turns 503 with the same words and app gets
    08001 too; when the agent is back both log in again, with no restart.
    """
    role = rds_iam.role("app", "reporting")
    with ContainerCredentials(role.credentials, lifetime=599) as agent:
        env = aws.env() | {"AWS_CONTAINER_CREDENTIALS_FULL_URI": agent.full_uri}
        proxy = start_proxy({"aws": {"tokenReuse": f"{TOKEN_REUSE}s"}, **NO_WARM}, env=env)
        assert login(proxy, "app") == "app"
        assert proxy.metric("rdsgate_iam_token_mints_total") == 1

        agent.gate.close()
        mark = len(proxy.audit)
        source = f"EKS Pod Identity ({agent.full_uri})"

        # No token for reporting: it must be signed, and the credentials cannot be had.
        err = refused_for_credentials(proxy, "reporting", source, failures=1)
        failed = proxy.wait_audit("session.failed", start=mark)
        assert failed["db_user"] == "reporting"
        assert failed["identity"] == "shop/reporting"
        assert failed["sqlstate"] == "08001"
        assert failed["reason"] == err.message

        cached_token_serves_until_due(proxy, source)

        # The agent is back: readiness and log-ins recover by themselves.
        agent.gate.open()
        wait_for(lambda: readyz(proxy)[0] == 200, "/readyz to recover", timeout=15)
        assert "AWS credentials available again" in "\n".join(proxy.logs)
        assert login(proxy, "app") == "app"
        assert login(proxy, "reporting") == "reporting"
        assert proxy.metric("rdsgate_iam_token_mints_total") == 3
        failures = [(e["db_user"], e["sqlstate"]) for e in proxy.events("session.failed", mark)]
        assert failures == [("reporting", "08001"), ("app", "08001")]


def test_irsa_token_rotation_refreshes_credentials_with_no_failed_login(
    start_proxy: Start, aws: AwsLab, rds_proxy: RdsProxyStandIn, tmp_path: Path
) -> None:
    """The kubelet swaps the projected token and the old one expires; so does the session.

    STS here refuses the old token once it is rotated away (as it does once the token's
    `exp` has passed), and the role session is due for renewal 2 s after each
    AssumeRoleWithWebIdentity. Log-ins run all the while: none may fail, and after the
    rotation a new session is obtained with the new token and used to sign.
    """
    caller = aws.create_user(f"irsa-unused-{os.urandom(3).hex()}")
    role = aws.create_connect_role(["app"], trusted=[caller.arn], resource_id=rds_proxy.resource_id)
    volume = ProjectedVolume(tmp_path / "eks.amazonaws.com" / "serviceaccount")
    with WebIdentitySts(aws.endpoint_url, lifetime=602) as sts:
        old = sts.issue()
        volume.write({"token": old})
        env = aws.env() | {
            "AWS_ROLE_ARN": role.arn,
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(volume.path("token")),
            "AWS_ROLE_SESSION_NAME": "rdsgate-orders",
            "AWS_ENDPOINT_URL_STS": sts.url,
        }
        proxy = start_proxy({"aws": {"tokenReuse": "1s"}, **NO_WARM}, env=env)
        assert login(proxy, "app") == "app"
        first = sts.calls_with(old)
        assert first and all(c.status == 200 for c in first)
        mark = len(proxy.audit)
        rejections = len(rds_proxy.rejections_since(0))

        new = sts.issue()
        volume.write({"token": new})
        sts.revoke(old)
        # The last session got with the old token must be renewed from this moment on.
        old_session_due = sts.calls_with(old)[-1].at + (sts.lifetime - 600)

        def refreshed() -> bool:
            # Log in continuously across the rotation and past the old session's end.
            assert login(proxy, "app") == "app"
            return bool(sts.calls_with(new)) and time.monotonic() > old_session_due + 1

        wait_for(refreshed, "the old session's end, and a session got with the new token")
        assert login(proxy, "app") == "app"
        assert all(c.status == 200 for c in sts.calls_with(new))
        assert sts.calls_with(new)[0].access_key_id != first[-1].access_key_id
        assert [c for c in sts.calls_with(old) if c.status != 200] == []
        assert proxy.events("session.failed", mark) == []
        assert proxy.events("auth.denied", mark) == []
        assert rds_proxy.rejections_since(rejections) == []
        assert proxy.metric("rdsgate_upstream_errors_total", {"kind": "credentials"}) == 0
        assert readyz(proxy)[0] == 200


def test_sts_outage_with_irsa_serves_cached_tokens_then_fails_and_recovers(
    start_proxy: Start, aws: AwsLab, rds_proxy: RdsProxyStandIn, tmp_path: Path
) -> None:
    """STS goes away with IRSA, a token for `app` cached and none for `reporting`.

    As with Pod Identity: app keeps logging in on its cached token and /readyz stays 200
    while it is valid; reporting gets 08001 naming IRSA, the role and the token file. Once
    app's token is due for renewal /readyz turns 503 with the same words and app gets 08001
    too; when STS is back both log in again, with no restart.
    """
    caller = aws.create_user(f"irsa-unused-{os.urandom(3).hex()}")
    role = aws.create_connect_role(
        ["app", "reporting"], trusted=[caller.arn], resource_id=rds_proxy.resource_id
    )
    volume = ProjectedVolume(tmp_path / "eks.amazonaws.com" / "serviceaccount")
    with WebIdentitySts(aws.endpoint_url, lifetime=602) as sts:
        volume.write({"token": sts.issue()})
        token_file = volume.path("token")
        env = aws.env() | {
            "AWS_ROLE_ARN": role.arn,
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
            "AWS_ROLE_SESSION_NAME": "rdsgate-orders",
            "AWS_ENDPOINT_URL_STS": sts.url,
        }
        proxy = start_proxy({"aws": {"tokenReuse": f"{TOKEN_REUSE}s"}, **NO_WARM}, env=env)
        assert login(proxy, "app") == "app"
        assert proxy.metric("rdsgate_iam_token_mints_total") == 1
        sessions = len(sts.calls)
        # The role session is due for renewal (botocore: 600 s before it ends) from here on.
        due = sts.calls[-1].at + (sts.lifetime - 600)

        sts.gate.close()
        wait_for(lambda: time.monotonic() > due, "the role session to be due for renewal")
        mark = len(proxy.audit)
        source = (
            f"IRSA (web identity) (sts:AssumeRoleWithWebIdentity of {role.arn} "
            f"with the token in {token_file})"
        )

        # No token for reporting, and the role session is due for renewal: no STS, no login.
        err = refused_for_credentials(proxy, "reporting", source, failures=1)
        failed = proxy.wait_audit("session.failed", start=mark)
        assert failed["db_user"] == "reporting"
        assert failed["sqlstate"] == "08001"
        assert failed["reason"] == err.message

        cached_token_serves_until_due(proxy, source)
        assert len(sts.calls) == sessions  # nothing reached STS while it was away

        # STS is back: a new role session, then readiness and log-ins, by themselves.
        sts.gate.open()
        wait_for(lambda: readyz(proxy)[0] == 200, "/readyz to recover", timeout=15)
        assert "AWS credentials available again" in "\n".join(proxy.logs)
        assert login(proxy, "app") == "app"
        assert login(proxy, "reporting") == "reporting"
        assert proxy.metric("rdsgate_iam_token_mints_total") == 3
        assert [c.status for c in sts.calls[sessions:]] == [200] * (len(sts.calls) - sessions)
        assert len(sts.calls) > sessions
        failures = [(e["db_user"], e["sqlstate"]) for e in proxy.events("session.failed", mark)]
        assert failures == [("reporting", "08001"), ("app", "08001")]


def instance_profile(role: DbIdentity, expires_in: float) -> Callable[[], RoleCredentials]:
    """What IMDS serves for the node's role: the session's keys, expiring `expires_in` s on."""
    c = role.credentials

    def served() -> RoleCredentials:
        expiry = datetime.now(UTC) + timedelta(seconds=expires_in)
        return RoleCredentials(c.access_key_id, c.secret_access_key, c.session_token or "", expiry)

    return served


def test_imds_outage_is_bridged_by_botocore_static_stability(
    start_proxy: Start, aws: AwsLab, rds_iam: RdsIam
) -> None:
    """IMDS goes away; the instance profile's credentials are still good, so nothing fails.

    IMDS reports the credentials expiring in 602 s, the lifetime at which IRSA and Pod
    Identity above are due for renewal 2 s later. botocore treats IMDS credentials
    differently (its IMDS static stability): any that IMDS hands out with less than 15 min
    plus 2-10 min of jitter left are extended to that, so it asks IMDS again no sooner than
    7 min after the last answer. Until then an outage of IMDS is invisible: log-ins with
    no cached token sign new ones, /readyz stays 200, nothing is counted or refused.
    """
    role = rds_iam.role("app", "reporting")
    settings = ImdsSettings(region=aws.region, credentials=instance_profile(role, 602))
    with InstanceMetadata(settings) as imds:
        env = aws.env() | {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint}
        del env["AWS_EC2_METADATA_DISABLED"]
        proxy = start_proxy({"aws": {"tokenReuse": "1s"}, **NO_WARM}, env=env)
        assert login(proxy, "app") == "app"
        role_path = f"/latest/meta-data/iam/security-credentials/{settings.role_name}"
        fetched = [r for r in imds.server.requests if r.path == role_path]
        assert fetched and all(r.with_token and r.status == 200 for r in fetched)
        served = time.monotonic()
        mark = len(proxy.audit)

        imds.gate.close()
        # Past the moment an IRSA or Pod Identity session of this lifetime is due for renewal.
        wait_for(lambda: time.monotonic() > served + 3, "the reported lifetime to be < 600 s")
        assert login(proxy, "reporting") == "reporting"  # no cached token: a new signature
        assert login(proxy, "app") == "app"  # its token is past aws.tokenReuse: signed anew
        assert proxy.metric("rdsgate_iam_token_mints_total") == 3
        assert proxy.events("session.failed", mark) == []
        assert proxy.metric("rdsgate_upstream_errors_total", {"kind": "credentials"}) == 0
        assert readyz(proxy)[0] == 200
        assert not any("AWS credentials not available" in line for line in proxy.logs)
