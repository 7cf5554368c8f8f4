"""Access decisions: allow and deny rules, patterns, label selectors, options, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rdsgate.proxy.access import AccessPolicy, parse_access, secret_digest
from rdsgate.proxy.errors import ConfigError
from rdsgate.proxy.rbac import authorize

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
PROD = {"env": "prod", "team": "shop"}


def policy(role_docs: list[dict[str, Any]], **grant: Any) -> AccessPolicy:
    g = {
        "identity": "shop/app",
        "secretSha256": secret_digest("s3cret"),
        "roles": [r["name"] for r in role_docs],
    }
    g.update(grant)
    return parse_access({"version": 1, "roles": role_docs, "grants": [g]})


def decide(p: AccessPolicy, user: str, db: str, labels: dict[str, str] = PROD) -> tuple[bool, str]:
    d = authorize(p, p.by_identity["shop/app"], labels, user, db, NOW)
    return d.allowed, d.reason


APP_RW: dict[str, Any] = {
    "name": "app-rw",
    "allow": {
        "databases": {"matchLabels": {"env": "prod"}},
        "databaseNames": ["orders", "orders_*"],
        "databaseUsers": ["app", "^app_[a-z]+$"],
    },
    "deny": {"databaseUsers": ["postgres"]},
}


@pytest.mark.parametrize(
    ("user", "db", "allowed"),
    [
        ("app", "orders", True),
        ("app_reader", "orders", True),
        ("app_reader", "orders_2024", True),
        ("app_1", "orders", False),
        ("app", "billing", False),
        ("postgres", "orders", False),
    ],
)
def test_exact_glob_and_regex_patterns(user: str, db: str, allowed: bool) -> None:
    assert decide(policy([APP_RW]), user, db)[0] is allowed


def test_deny_names_the_rule_that_refused() -> None:
    role = dict(APP_RW, allow={**APP_RW["allow"], "databaseUsers": ["*"]})
    allowed, reason = decide(policy([role]), "postgres", "orders")
    assert not allowed
    assert reason == "role 'app-rw' denies database user 'postgres' (deny.databaseUsers 'postgres')"


def test_no_allow_lists_the_roles() -> None:
    allowed, reason = decide(policy([APP_RW]), "app", "billing")
    assert not allowed
    assert "no role allows database user 'app' on database 'billing'" in reason
    assert "'app-rw'" in reason


def test_label_selector_scopes_allow() -> None:
    assert not decide(policy([APP_RW]), "app", "orders", {"env": "dev"})[0]


def test_omitted_databases_allows_nothing_and_empty_selector_allows_all() -> None:
    none = {"name": "r", "allow": {"databaseNames": ["*"], "databaseUsers": ["*"]}}
    every = {
        "name": "r",
        "allow": {"databases": {}, "databaseNames": ["*"], "databaseUsers": ["*"]},
    }
    assert not decide(policy([none]), "app", "orders")[0]
    assert decide(policy([every]), "app", "orders")[0]


def test_match_expressions() -> None:
    role = {
        "name": "r",
        "allow": {
            "databases": {
                "matchExpressions": [
                    {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                    {"key": "pci", "operator": "DoesNotExist"},
                ]
            },
            "databaseNames": ["*"],
            "databaseUsers": ["*"],
        },
    }
    p = policy([role])
    assert decide(p, "a", "b", {"env": "staging"})[0]
    assert not decide(p, "a", "b", {"env": "staging", "pci": "yes"})[0]
    assert not decide(p, "a", "b", {"env": "dev"})[0]


def test_deny_in_another_role_wins() -> None:
    blocker = {"name": "no-prod", "deny": {"databases": {"matchLabels": {"env": "prod"}}}}
    allowed, reason = decide(policy([APP_RW, blocker]), "app", "orders")
    assert not allowed
    assert "role 'no-prod' denies every login to this Database" in reason
    assert decide(policy([APP_RW, blocker]), "app", "orders", {"env": "prod", "x": "1"})[0] is False


def test_deny_database_names() -> None:
    role = dict(APP_RW, deny={"databaseNames": ["^orders_[0-9]+$"]})
    allowed, reason = decide(policy([role]), "app", "orders_2024")
    assert not allowed
    assert "denies database 'orders_2024'" in reason


def test_expired_grant_is_refused() -> None:
    p = policy([APP_RW], expiresAt=(NOW - timedelta(seconds=1)).isoformat())
    allowed, reason = decide(p, "app", "orders")
    assert not allowed
    assert reason.startswith("token expired at 2026-11-25T11:59:59")


def test_missing_role_is_named() -> None:
    p = policy([APP_RW], roles=["app-rw", "gone"])
    _, reason = decide(p, "app", "billing")
    assert "roles not found: 'gone'" in reason
    assert decide(p, "app", "orders")[0]


def test_most_restrictive_options_win() -> None:
    a = dict(
        APP_RW, options={"maxConnections": 50, "maxSessionDuration": "8h", "auditQueries": False}
    )
    b = {
        "name": "b",
        "options": {"maxConnections": 5, "maxSessionDuration": "1h", "auditQueries": True},
    }
    d = authorize(
        policy([a, b]), policy([a, b]).by_identity["shop/app"], PROD, "app", "orders", NOW
    )
    assert d.allowed
    assert d.options.max_connections == 5
    assert d.options.max_session_duration == 3600
    assert d.options.audit_queries is True


def test_audit_off_only_when_no_role_asks_for_it() -> None:
    a = dict(APP_RW, options={"auditQueries": False})
    p = policy([a])
    d = authorize(p, p.by_identity["shop/app"], PROD, "app", "orders", NOW)
    assert d.options.audit_queries is False


def test_secret_lookup_is_by_digest() -> None:
    p = policy([APP_RW])
    grant = p.grant_for_secret("s3cret")
    assert grant is not None
    assert grant.identity == "shop/app"
    assert p.grant_for_secret("s3cret ") is None


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"version": 2}, "version: Input should be 1"),
        (
            {"version": 1, "roles": [{"name": "r", "allow": {"databaseUsers": ["^(x$"]}}]},
            "invalid regular expression",
        ),
        ({"version": 1, "roles": [{"name": "r"}, {"name": "r"}]}, "duplicate role name 'r'"),
        (
            {"version": 1, "grants": [{"identity": "a", "roles": []}]},
            "exactly one of secretSha256, publicKeySha256 and serviceAccount",
        ),
        (
            {"version": 1, "grants": [{"identity": "a", "secretSha256": "xyz"}]},
            "grants.0.secretSha256",
        ),
        (
            {
                "version": 1,
                "roles": [
                    {
                        "name": "r",
                        "allow": {
                            "databases": {"matchExpressions": [{"key": "a", "operator": "In"}]}
                        },
                    }
                ],
            },
            "needs at least one value",
        ),
        ({"version": 1, "rolez": []}, "rolez: unknown field"),
        (
            {
                "version": 1,
                "grants": [
                    {
                        "identity": f"shop/{n}",
                        "serviceAccount": {"namespace": "shop", "name": "web"},
                    }
                    for n in ("a", "b")
                ],
            },
            "duplicate grant serviceAccount 'shop/web'",
        ),
    ],
)
def test_invalid_access_files_say_what_is_wrong(doc: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_access(doc)
    assert any(problem in p for p in info.value.problems), info.value.problems
