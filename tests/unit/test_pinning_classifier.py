"""The pinning classifier (`proxy/pinning.py`), the scanner's `named`/`large` flags, the
bounded per-identity counts, the operator's merge into `status.pinning` and the CLI table."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from rdsgate.operator.cli.db import pinning_table
from rdsgate.operator.diagnosis import pinning_summary
from rdsgate.proxy import pinning, wire
from rdsgate.proxy.pinning import PinningStats, classify, classify_sql

PINS: list[tuple[str, str]] = [
    ("SET search_path = app", "set"),
    ("set statement_timeout to 0", "set"),
    ("SET SESSION work_mem = '1MB'", "set"),
    ("SET ROLE reporting", "set"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "set"),
    ("RESET ALL", "set"),
    ("reset search_path", "set"),
    ("select set_config('search_path', 'x', false)", "set"),
    ("SELECT set_config('a.b', $1, $2)", "set"),
    ("PREPARE q (int) AS SELECT $1", "prepared_statement"),
    ("EXECUTE q(1)", "prepared_statement"),
    ("DEALLOCATE ALL", "prepared_statement"),
    ("CREATE TEMP TABLE t (a int)", "temporary_object"),
    ("create temporary sequence s", "temporary_object"),
    ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", "temporary_object"),
    ("CREATE LOCAL TEMPORARY TABLE t (a int)", "temporary_object"),
    ("CREATE TABLE pg_temp.t (a int)", "temporary_object"),
    ("SELECT * INTO TEMP t FROM x", "temporary_object"),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "cursor"),
    ("declare c no scroll cursor for select 1", "cursor"),
    ("DISCARD ALL", "discard"),
    ("LISTEN channel", "listen"),
    ("LOAD 'auto_explain'", "load"),
    ("SELECT nextval('s')", "sequence_function"),
    ("select pg_catalog.setval('s', 1)", "sequence_function"),
    ("INSERT INTO t VALUES (currval('s'))", "sequence_function"),
    ("SELECT pg_advisory_lock(1)", "advisory_lock"),
    ("SELECT pg_try_advisory_lock(1, 2)", "advisory_lock"),
    ("select PG_ADVISORY_LOCK_SHARED (1)", "advisory_lock"),
    ("SELECT pg_advisory_unlock_all()", "advisory_lock"),
    # comments, whitespace, parentheses and case before the keyword
    ("  \n\t-- why\n/* a */ SeT x = 1", "set"),
    ("/* one */ /* two */ LISTEN x", "listen"),
    ("((SELECT pg_advisory_lock(1)))", "advisory_lock"),
    # several statements in one simple query: the first that pins
    ("SELECT 1; SET x = 1", "set"),
    ("BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT", "cursor"),
    ("select ';'; listen x;", "listen"),
]

NO_PIN: list[str] = [
    "SET LOCAL search_path = app",
    "set local statement_timeout = 0",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET CONSTRAINTS ALL DEFERRED",
    "BEGIN; SET LOCAL x = 1; COMMIT",
    "select set_config('a.b', 'c', true)",
    "SELECT pg_advisory_xact_lock(1)",
    "select pg_try_advisory_xact_lock_shared(1)",
    "PREPARE TRANSACTION 'tx1'",
    "SELECT 'SET x = 1'",
    "select 'nextval(' || 'x'",
    'select "nextval"',
    "select 1 -- pg_advisory_lock(1)",
    "select /* LISTEN x; */ 1",
    "select $$ SET x $$, $tag$ nextval('s') $tag$",
    "select E'it\\'s nextval('",
    "SELECT selectivity FROM settings",
    "select reset_count, listener, loaded from x",
    "CREATE TABLE t (a int)",
    "create view temp_view as select 1",
    "INSERT INTO temp VALUES (1)",
    "INSERT INTO temperature SELECT 1",
    "DO $$ BEGIN PERFORM pg_advisory_lock(1); END $$",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
    "CLOSE ALL",
    "UNLISTEN *",
    "",
    ";",
    "   ",
    "/* never closed",
    "'never closed",
]


@pytest.mark.parametrize(("sql", "reason"), PINS)
def test_statements_that_pin(sql: str, reason: str) -> None:
    assert classify_sql(sql) == reason


@pytest.mark.parametrize("sql", NO_PIN)
def test_statements_that_do_not_pin(sql: str) -> None:
    assert classify_sql(sql) is None


def test_every_reason_is_a_known_label() -> None:
    assert {reason for _, reason in PINS} | {"named_statement", "large_statement"} == set(
        pinning.REASONS
    )


def _parse(name: bytes, sql: bytes) -> bytes:
    return wire.frame(wire.Message(b"P", name + b"\x00" + sql + b"\x00\x00\x00"))


@pytest.mark.parametrize("chunk", [1, 3, 64, 100_000])
def test_the_scanner_tells_named_from_unnamed_statements(chunk: int) -> None:
    data = _parse(b"", b"select 1") + _parse(b"_pg3_0", b"select 2") + _parse(b"", b"set x=1")
    scanner = wire.FrontendScanner()
    out: list[wire.Statement] = []
    for i in range(0, len(data), chunk):
        out += scanner.feed(data[i : i + chunk]) or []
    assert [(s.sql, s.named) for s in out] == [
        ("select 1", False),
        ("select 2", True),
        ("set x=1", False),
    ]
    assert [classify(s) for s in out] == [None, "named_statement", "set"]


@pytest.mark.parametrize("chunk", [7, 5000, 1_000_000])
def test_statements_over_16_kb_are_large_even_when_cut_for_the_audit(chunk: int) -> None:
    big = "select '" + "x" * 16_400 + "'"
    small = "select '" + "x" * 16_000 + "'"
    data = wire.query(big) + wire.query(small) + _parse(b"", big.encode())
    scanner = wire.FrontendScanner(max_sql=8192)
    out: list[wire.Statement] = []
    for i in range(0, len(data), chunk):
        out += scanner.feed(data[i : i + chunk]) or []
    assert [(s.large, s.truncated) for s in out] == [(True, True), (False, True), (True, True)]
    assert [classify(s) for s in out] == ["large_statement", None, "large_statement"]


@settings(max_examples=400, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("SETsetLOCAL ;'\"$/*-()\nnextval_pg,x")), max_size=200)
)
def test_the_classifier_never_raises(sql: str) -> None:
    result = classify_sql(sql)
    assert result is None or result in pinning.REASONS


@given(st.text(max_size=300))
def test_the_classifier_never_raises_on_any_text(sql: str) -> None:
    assert classify_sql(sql) in (None, *pinning.REASONS)


@pytest.mark.parametrize(
    "unit",
    ["/*", "$a$", "'", "E'\\", '"', "nextval(", "set_config((", "--\n;", "; SET x;"],
)
def test_adversarial_text_takes_linear_time(unit: str) -> None:
    """The relay classifies up to `audit.maxQueryBytes` of a client's text: no input may
    make that quadratic (unterminated comments and quotes, many openers)."""
    sql = "select 1; " + unit * (8192 // len(unit))
    started = time.perf_counter()
    classify_sql(sql)
    assert time.perf_counter() - started < 0.05


def test_per_identity_counts_are_bounded() -> None:
    stats = PinningStats(max_keys=2)
    for ident, reason in [("a", "set"), ("a", "set"), ("b", "listen"), ("c", "set"), ("a", "x")]:
        stats.add(ident, reason)
    assert stats.snapshot() == {
        "pinning": [
            {"identity": "a", "reason": "set", "statements": 2},
            {"identity": "b", "reason": "listen", "statements": 1},
        ],
        "overflow": 2,
    }


def test_the_operator_sums_pods_and_keeps_the_top_ten() -> None:
    pods: dict[str, list[dict[str, Any]]] = {
        "pod-a": [{"identity": f"ns/t{i}", "reason": "set", "statements": i} for i in range(12)],
        "pod-b": [
            {"identity": "ns/t1", "reason": "set", "statements": 100},
            {"identity": "ns/t1", "reason": "named_statement", "statements": 5},
            {"identity": "bad"},  # an entry in no known form is skipped
        ],
    }
    top = pinning_summary(pods)
    assert len(top) == 10
    assert top[0] == {"identity": "ns/t1", "reason": "set", "statements": 101}
    assert top[1] == {"identity": "ns/t11", "reason": "set", "statements": 11}
    assert {"identity": "ns/t1", "reason": "named_statement", "statements": 5} in top
    assert [e["statements"] for e in top] == sorted((e["statements"] for e in top), reverse=True)
    assert pinning_summary({}) == []


def test_the_cli_table_names_identity_reason_and_count() -> None:
    console = Console(width=200, record=True)
    console.print(
        pinning_table(
            [
                ("orders", {"identity": "shop/orders-app", "reason": "set", "statements": 7}),
                (
                    "orders",
                    {"identity": "shop/batch", "reason": "named_statement", "statements": 2},
                ),
            ]
        )
    )
    lines = [line.split() for line in console.export_text().splitlines() if line.strip()]
    assert lines[0][:3] == ["Pinning", "RDS", "Proxy"]
    assert lines[1] == ["DATABASE", "IDENTITY", "REASON", "STATEMENTS"]
    assert lines[2] == ["orders", "shop/orders-app", "set", "7"]
    assert lines[3] == ["orders", "shop/batch", "named_statement", "2"]
