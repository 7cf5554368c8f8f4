"""Access changes reach a running proxy: hot reload, revocation and per-identity options.

The access file is rewritten the way the kubelet updates a Secret volume (a new `..data`
directory swapped in by rename), exactly what a proxy in a pod sees.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psycopg
import pytest

from rdsgate.lab.postgres import PostgresServer
from rdsgate.proxy.access import secret_digest
from rdsgate.proxy.session import CLOSE_GRACE
from tests.fixtures.proxy import APP_SECRET, DEFAULT_ACCESS, REPORTING_SECRET, RunningProxy

Start = Callable[..., RunningProxy]
NEW_SECRET = "new-token-5a5a5a5a5a"


def access(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DEFAULT_ACCESS)
    doc.update(changes)
    return doc


def grant(identity: str, secret: str, roles: list[str], **extra: Any) -> dict[str, Any]:
    return {"identity": identity, "secretSha256": secret_digest(secret), "roles": roles, **extra}


def role(name: str, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "allow": {"databases": {}, "databaseNames": ["orders"], "databaseUsers": ["app"]},
    }
    base.update(extra)
    return base


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def can_log_in(proxy: RunningProxy, secret: str, user: str = "app") -> bool:
    try:
        with psycopg.connect(proxy.dsn(user=user, password=secret)) as conn:
            conn.execute("select 1")
        return True
    except psycopg.OperationalError:
        return False


def test_a_new_token_works_without_a_restart(start_proxy: Start) -> None:
    proxy = start_proxy()
    assert not can_log_in(proxy, NEW_SECRET)
    doc = access()
    doc["grants"].append(grant("shop/new", NEW_SECRET, ["orders-rw"]))
    proxy.set_access(doc)
    wait_until(lambda: can_log_in(proxy, NEW_SECRET))
    assert proxy.metric("rdsgate_access_grants") == 4


def test_an_invalid_file_is_rejected_and_the_old_one_stays(start_proxy: Start) -> None:
    proxy = start_proxy()
    before = proxy.metric("rdsgate_access_reloads_total", {"result": "invalid"})
    proxy.set_access("version: 1\nroles: [{name: broken, allow: {databaseUsers: ['^(x$']}}]\n")
    wait_until(
        lambda: proxy.metric("rdsgate_access_reloads_total", {"result": "invalid"}) == before + 1
    )
    rejected = [line for line in proxy.logs if "access file rejected" in line]
    assert rejected
    assert "the previous one" in rejected[0]
    assert "invalid regular expression" in rejected[0]
    assert can_log_in(proxy, APP_SECRET)
    assert proxy.http("/readyz")[0] == 200


def test_removed_grant_ends_its_sessions_only(start_proxy: Start) -> None:
    proxy = start_proxy()
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as app,
        psycopg.connect(
            proxy.dsn(user="reporting", password=REPORTING_SECRET), autocommit=True
        ) as reporting,
    ):
        reporting.execute("select 1")
        doc = access()
        doc["grants"] = [g for g in doc["grants"] if g["identity"] != "shop/reporting"]
        proxy.set_access(doc)
        revoked = proxy.wait_audit("session.revoked")
        assert revoked["identity"] == "shop/reporting"
        assert revoked["reason"] == "its Token's grant was removed"
        with pytest.raises(psycopg.errors.AdminShutdown, match="access revoked: its Token's grant"):
            reporting.execute("select 1")
        assert app.execute("select 'unaffected'").fetchone() == ("unaffected",)
    assert not can_log_in(proxy, REPORTING_SECRET, user="reporting")


def test_a_revoked_statement_stops_running_upstream(start_proxy: Start, pg: PostgresServer) -> None:
    """A session cut mid-statement (CLOSE_GRACE passed) has its statement cancelled too:
    the database would otherwise run it to the end for nobody."""
    proxy = start_proxy()
    outcome: list[BaseException] = []

    def running() -> bool:
        return bool(
            pg.execute(
                "select 1 from pg_stat_activity where usename = 'reporting'"
                " and query = 'select pg_sleep(60)' and state = 'active'"
            ).strip()
        )

    with psycopg.connect(
        proxy.dsn(user="reporting", password=REPORTING_SECRET), autocommit=True
    ) as busy:

        def sleep() -> None:
            try:
                busy.execute("select pg_sleep(60)")
            except psycopg.Error as exc:
                outcome.append(exc)

        worker = threading.Thread(target=sleep)
        worker.start()
        wait_until(running)
        doc = access()
        doc["grants"] = [g for g in doc["grants"] if g["identity"] != "shop/reporting"]
        revoked_at = time.monotonic()
        proxy.set_access(doc)
        worker.join(20)
        assert outcome, "the revoked session's statement was not interrupted"
        wait_until(lambda: not running(), timeout=5)
        assert time.monotonic() - revoked_at < CLOSE_GRACE + 5
    # Logged once the upstream has closed the cancel connection, which may come after.
    wait_until(lambda: any("cancelled the statement still running" in x for x in proxy.logs))


def test_a_role_that_now_denies_ends_the_session(start_proxy: Start) -> None:
    proxy = start_proxy()
    with psycopg.connect(proxy.dsn(), autocommit=True) as app:
        doc = access()
        doc["roles"][0]["deny"] = {"databaseNames": ["orders"]}
        proxy.set_access(doc)
        with pytest.raises(psycopg.errors.AdminShutdown) as info:
            wait_until(lambda: app.execute("select 1") is None)
    assert (
        "access revoked: role 'orders-rw' denies database 'orders' (deny.databaseNames 'orders')"
        in str(info.value)
    )


def test_a_grant_expiring_during_a_session(start_proxy: Start) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    doc = access()
    doc["grants"].append(grant("shop/brief", NEW_SECRET, ["orders-rw"], expiresAt=soon))
    proxy = start_proxy(access=doc)
    with psycopg.connect(proxy.dsn(password=NEW_SECRET), autocommit=True) as conn:
        revoked = proxy.wait_audit("session.revoked", timeout=10)
        assert revoked["reason"].startswith("token expired at ")
        with pytest.raises(psycopg.errors.AdminShutdown, match="access revoked: token expired"):
            conn.execute("select 1")


def test_reloads_under_load_disturb_nobody_still_allowed(start_proxy: Start) -> None:
    """50 sessions query while the file changes 20 times; the 5 revoked at the end go."""
    doc = access()
    doc["roles"].append(role("doomed-role"))
    doc["grants"].append(grant("shop/doomed", NEW_SECRET, ["doomed-role"]))
    proxy = start_proxy(access=doc)
    stop = asyncio.Event()

    async def worker(secret: str) -> tuple[int, list[str]]:
        conn = await asyncpg.connect(proxy.url(password=secret))
        done, errors = 0, []
        try:
            while not stop.is_set():
                try:
                    assert await conn.fetchval("select $1::int + 1", done) == done + 1
                    done += 1
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    break
        finally:
            if not conn.is_closed():
                await conn.close()
        return done, errors

    def reloaded() -> float:
        return proxy.metric("rdsgate_access_reloads_total", {"result": "ok"})

    async def churn() -> None:
        for i in range(20):
            changed = copy.deepcopy(doc)
            changed["grants"].append(grant(f"shop/extra-{i}", f"extra-secret-{i}", ["orders-ro"]))
            changed["roles"][0]["options"] = {"maxConnections": 100 + i}
            before = await asyncio.to_thread(reloaded)
            await asyncio.to_thread(proxy.set_access, changed)

            def applied(before: float = before) -> bool:
                return reloaded() > before

            await asyncio.to_thread(wait_until, applied)
        final = copy.deepcopy(doc)
        final["grants"] = [g for g in final["grants"] if g["identity"] != "shop/doomed"]
        await asyncio.to_thread(proxy.set_access, final)

    async def main() -> list[tuple[int, list[str]]]:
        tasks = [asyncio.create_task(worker(APP_SECRET)) for _ in range(50)]
        tasks += [asyncio.create_task(worker(NEW_SECRET)) for _ in range(5)]
        await churn()
        await asyncio.to_thread(
            wait_until,
            lambda: len([e for e in proxy.events("session.end") if e["reason"] == "revoked"]) == 5,
            15,
        )
        stop.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    allowed, doomed = results[:50], results[50:]
    assert all(errors == [] for _, errors in allowed), [e for _, e in allowed if e]
    assert all(done > 0 for done, _ in allowed), allowed
    # asyncpg reports a FATAL that arrives between two of its queries as an internal
    # error (it does the same when PostgreSQL ends a session); the audit trail says why.
    assert all(len(errors) == 1 for _, errors in doomed), doomed
    revoked = proxy.events("session.revoked")
    assert {e["identity"] for e in revoked} == {"shop/doomed"}
    assert {e["reason"] for e in revoked} == {"its Token's grant was removed"}
    assert proxy.metric("rdsgate_access_reloads_total", {"result": "ok"}) >= 21


def test_max_connections_per_identity(start_proxy: Start) -> None:
    doc = access()
    doc["roles"].append(role("two-at-most", options={"maxConnections": 2}))
    doc["grants"].append(grant("shop/limited", NEW_SECRET, ["two-at-most"]))
    proxy = start_proxy(access=doc)
    with (
        psycopg.connect(proxy.dsn(password=NEW_SECRET)),
        psycopg.connect(proxy.dsn(password=NEW_SECRET)),
    ):
        for _ in range(3):  # refusals must not free a slot of the live sessions
            with pytest.raises(psycopg.OperationalError, match="may not log in"):
                psycopg.connect(proxy.dsn(user="postgres", password=NEW_SECRET))
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(proxy.dsn(password=NEW_SECRET))
        assert "too many connections for shop/limited: its roles allow 2 (maxConnections)" in str(
            info.value
        )
        assert can_log_in(proxy, APP_SECRET)
    assert can_log_in(proxy, NEW_SECRET)


def test_max_session_duration_of_a_role(start_proxy: Start) -> None:
    doc = access()
    doc["roles"].append(role("brief-sessions", options={"maxSessionDuration": "1s"}))
    doc["grants"].append(grant("shop/brief", NEW_SECRET, ["brief-sessions"]))
    proxy = start_proxy(access=doc)
    with (
        psycopg.connect(proxy.dsn(password=NEW_SECRET), autocommit=True) as brief,
        psycopg.connect(proxy.dsn(), autocommit=True) as normal,
    ):
        end = proxy.wait_audit("session.end", lambda e: e["reason"] == "max_session_duration")
        assert end["identity"] == "shop/brief"
        with pytest.raises(psycopg.errors.AdminShutdown, match="maximum session duration of 1s"):
            brief.execute("select 1")
        assert normal.execute("select 1").fetchone() == (1,)


def test_a_role_cannot_lengthen_sessions_beyond_the_proxy_limit(start_proxy: Start) -> None:
    doc = access()
    doc["roles"].append(role("long-sessions", options={"maxSessionDuration": "7d"}))
    doc["grants"].append(grant("shop/long", NEW_SECRET, ["long-sessions"]))
    proxy = start_proxy({"limits": {"maxSessionDuration": "1s"}}, access=doc)
    with psycopg.connect(proxy.dsn(password=NEW_SECRET), autocommit=True) as conn:
        proxy.wait_audit("session.end", lambda e: e["reason"] == "max_session_duration")
        with pytest.raises(psycopg.errors.AdminShutdown, match="maximum session duration of 1s"):
            conn.execute("select 1")


def test_audit_queries_off_for_one_identity_only(start_proxy: Start) -> None:
    doc = access()
    doc["roles"].append(role("quiet", options={"auditQueries": False}))
    doc["grants"].append(grant("shop/quiet", NEW_SECRET, ["quiet"]))
    proxy = start_proxy(access=doc)
    with psycopg.connect(proxy.dsn(password=NEW_SECRET)) as quiet:
        quiet.execute("select 'from the quiet one'")
    with psycopg.connect(proxy.dsn()) as loud:
        loud.execute("select 'from the loud one'")
    proxy.wait_audit("session.query", lambda e: "loud one" in e["sql"])
    proxy.wait_audit("session.end", lambda e: e["identity"] == "shop/quiet")
    assert not [e for e in proxy.events("session.query") if e["identity"] == "shop/quiet"]


def test_a_withdrawn_grant_ends_its_sessions_with_the_operators_reason(
    start_proxy: Start,
) -> None:
    """The operator lists a grant whose requester lost `bind` under `revoked`, with why."""
    proxy = start_proxy()
    with psycopg.connect(
        proxy.dsn(user="reporting", password=REPORTING_SECRET), autocommit=True
    ) as reporting:
        reporting.execute("select 1")
        why = 'alice may no longer bind Role "orders-ro" in namespace "shop"'
        doc = access()
        doc["grants"] = [g for g in doc["grants"] if g["identity"] != "shop/reporting"]
        doc["revoked"] = [{"identity": "shop/reporting", "reason": why}]
        proxy.set_access(doc)
        revoked = proxy.wait_audit("session.revoked")
        assert (revoked["identity"], revoked["reason"]) == ("shop/reporting", why)
        with pytest.raises(psycopg.errors.AdminShutdown) as ended:
            reporting.execute("select 1")
        assert ended.value.sqlstate == "57P01"
        assert str(ended.value).strip().endswith(f"access revoked: {why}")


def test_every_audit_event_of_a_grant_names_its_requester(start_proxy: Start) -> None:
    doc = access()
    for g in doc["grants"]:
        if g["identity"] == "shop/orders-app":
            g["requestedBy"] = "arn:aws:sts::111122223333:assumed-role/Dev/alice"
    proxy = start_proxy(access=doc)
    mark = len(proxy.audit)
    with psycopg.connect(proxy.dsn(), autocommit=True) as app:
        app.execute("select 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(user="postgres"))
    proxy.wait_audit("auth.denied", start=mark)
    proxy.wait_audit("session.end", start=mark)
    events = [e for e in proxy.audit[mark:] if e.get("identity") == "shop/orders-app"]
    assert {e["event"] for e in events} >= {
        "session.start",
        "session.query",
        "session.end",
        "auth.denied",
    }
    assert {e["requested_by"] for e in events} == {
        "arn:aws:sts::111122223333:assumed-role/Dev/alice"
    }
    with psycopg.connect(proxy.dsn(user="reporting", password=REPORTING_SECRET)) as other:
        other.execute("select 1")
    start = proxy.wait_audit("session.start", lambda e: e["identity"] == "shop/reporting")
    assert start["requested_by"] is None, "a grant from before the webhooks names nobody"


def test_an_approved_grant_names_its_approver_and_both_reasons(start_proxy: Start) -> None:
    doc = access()
    for g in doc["grants"]:
        if g["identity"] == "shop/orders-app":
            g |= {
                "requestedBy": "alice",
                "approvedBy": "bob",
                "approvalReason": "INC-4711 confirmed",
                "requestReason": "INC-4711: fix a stuck order",
            }
    proxy = start_proxy(access=doc)
    mark = len(proxy.audit)
    with psycopg.connect(proxy.dsn(), autocommit=True) as app:
        app.execute("select 1")
    end = proxy.wait_audit("session.end", start=mark)
    events = [e for e in proxy.audit[mark:] if e.get("identity") == "shop/orders-app"]
    assert {e["event"] for e in events} >= {"session.start", "session.query", "session.end"}
    for e in events:
        assert (e["requested_by"], e["approved_by"], e["approval_reason"], e["request_reason"]) == (
            "alice",
            "bob",
            "INC-4711 confirmed",
            "INC-4711: fix a stuck order",
        )
    assert end["approved_by"] == "bob"
    with psycopg.connect(proxy.dsn(user="reporting", password=REPORTING_SECRET)) as other:
        other.execute("select 1")
    start = proxy.wait_audit("session.start", lambda e: e["identity"] == "shop/reporting")
    assert "approved_by" not in start, "no approval, no approval fields"
