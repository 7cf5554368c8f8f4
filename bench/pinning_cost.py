"""What pinning insight costs on the data path: ns per statement for the classifier
(`proxy/pinning.py`), which the relay runs on every Q and P the frontend scanner reports.

Two streams: the statements `pgbench -S` sends (one simple query per transaction) and a
mixed application stream (transactions with parameters, function calls, `SET LOCAL`, a
few pinning statements). The figure compares with the proxy CPU per transaction in the
README's Performance table (about 80 µs at c=8). The `scan+classify` row adds the
scanner's own work (which audit already pays when `audit.queries` is on), to show the
cost with query audit off, when the scanner runs for pinning alone.

    .venv/bin/python -m bench.pinning_cost [--seconds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence

from rdsgate.proxy import wire
from rdsgate.proxy.pinning import classify

#: Proxy CPU per transaction with every query audited (README, Performance: c=8, perf).
CPU_PER_TRANSACTION_NS = 80_000


def pgbench_select_stream(n: int, seed: int = 1) -> list[wire.Statement]:
    rnd = random.Random(seed)
    return [
        wire.Statement(
            "query",
            f"SELECT abalance FROM pgbench_accounts WHERE aid = {rnd.randint(1, 1_000_000)};",  # noqa: S608
            False,
        )
        for _ in range(n)
    ]


_MIXED: Sequence[tuple[str, bool]] = (
    ("BEGIN", False),
    ("select o.id, o.total, c.name from orders o join customers c on c.id = o.customer_id "
     "where o.id = $1", False),
    ("update orders set status = $1, updated_at = now() where id = $2", False),
    ("insert into order_events (order_id, kind, at) values ($1, $2, now())", False),
    ("COMMIT", False),
    ("SET LOCAL statement_timeout = '5s'", False),
    ("select count(*) from orders where customer_id = $1 and created_at > now() - "
     "interval '30 days'", False),
    ("/* dashboard */ select date_trunc('day', created_at), sum(total) from orders "
     "group by 1 order by 1 desc limit 30", False),
    ("select id from outbox where sent_at is null order by id limit 100 for update skip locked",
     False),
    ("select $1::int", True),  # a driver's named statement: pins
    ("SET search_path TO app, public", False),  # pins
    ("select pg_advisory_xact_lock(hashtext($1))", False),
)  # fmt: skip


def mixed_stream(n: int, seed: int = 2) -> list[wire.Statement]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        sql, named = _MIXED[rnd.randrange(len(_MIXED))]
        out.append(wire.Statement("parse" if "$" in sql else "query", sql, False, named))
    return out


def _frames(stream: Sequence[wire.Statement]) -> list[bytes]:
    return [wire.query(st.sql) for st in stream]


def _per_item_ns(fn: Callable[[], None], items: int, seconds: float) -> float:
    """The best of several runs, in ns per item (the least disturbed by other work)."""
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        started = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - started) / items)
        if time.perf_counter() > deadline:
            return best


def measure(seconds: float = 2.0, n: int = 20_000) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name, stream in (("pgbench -S", pgbench_select_stream(n)), ("mixed", mixed_stream(n))):
        frames = _frames(stream)

        def run_classify(stream: list[wire.Statement] = stream) -> None:
            for st in stream:
                classify(st)

        def run_scan(frames: list[bytes] = frames) -> None:
            scanner = wire.FrontendScanner()
            for data in frames:
                scanner.feed(data)

        def run_scan_classify(frames: list[bytes] = frames) -> None:
            scanner = wire.FrontendScanner()
            for data in frames:
                for st in scanner.feed(data) or ():
                    classify(st)

        classify_ns = _per_item_ns(run_classify, n, seconds)
        scan_ns = _per_item_ns(run_scan, n, seconds)
        both_ns = _per_item_ns(run_scan_classify, n, seconds)
        results[name] = {
            "classify_ns": round(classify_ns, 1),
            "scan_ns": round(scan_ns, 1),
            "scan_classify_ns": round(both_ns, 1),
            "classify_share_of_transaction": round(classify_ns / CPU_PER_TRANSACTION_NS, 5),
            "pinning_share": round(sum(classify(st) is not None for st in stream) / n, 3),
        }
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = measure(args.seconds)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'stream':<12} {'classify':>10} {'scan':>10} {'scan+classify':>14} "
          f"{'classify / 80 µs':>17} {'pinning':>8}")  # fmt: skip
    for name, r in results.items():
        print(
            f"{name:<12} {r['classify_ns']:>8.0f}ns {r['scan_ns']:>8.0f}ns "
            f"{r['scan_classify_ns']:>12.0f}ns {r['classify_share_of_transaction']:>16.2%} "
            f"{r['pinning_share']:>8.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
