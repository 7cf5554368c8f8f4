"""`bench/run.py` end to end in a few seconds, so the benchmark cannot rot between releases.

The real numbers come from `make bench`; this proves the rig still starts PostgreSQL,
pgbouncer and rdsgate-proxy, drives pgbench through each, times new connections through
rdsgate and straight to the RDS Proxy stand-in (with its log-in delay), holds idle
sessions open through rdsgate, prints only the documented JSON on stdout and leaves no
process or directory behind.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.connect_latency import LOGIN_DELAY, warm_counts
from bench.run import LAYERS, CpuUse, Results, analyse_stacks
from rdsgate.lab.postgres import PostgresNotInstalled, find_bin_dir

REPO = Path(__file__).resolve().parents[2]
TARGETS = {"direct", "pgbouncer", "rdsgate"}
CONNECTIONS = 20
IDLE_SESSIONS = 50


def _missing_programs() -> str | None:
    try:
        find_bin_dir()
    except PostgresNotInstalled as exc:
        return str(exc)
    if shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
        return (
            "pgbouncer is not installed; `scripts/system-deps postgres pgbouncer` "
            "(which `make bench` runs) installs it"
        )
    if shutil.which("pgbench") is None and not list(
        Path("/usr/lib/postgresql").glob("*/bin/pgbench")
    ):
        return "pgbench is not installed; `scripts/system-deps postgres` installs it"
    return None


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


@pytest.mark.timeout(120)
def test_a_quick_run_measures_every_target_and_cleans_up() -> None:
    missing = _missing_programs()
    if missing:
        pytest.skip(missing)
    cmd = [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--duration", "1"]
    cmd += ["--clients", "1", "--scale", "1", "--copy-mb", "5", "--json"]
    cmd += ["--connections", str(CONNECTIONS), "--idle-sessions", str(IDLE_SESSIONS)]

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=REPO, check=False)

    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # fails if anything but the JSON reached stdout
    assert set(doc) == {
        "pinning_classified",
        "tps",
        "connect_rate",
        "copy_mb_s",
        "proxy_cpu_us",
        "cpu_us_per_connection",
        "tps_audit",
        "connect_latency_ms",
        "idle_rss_mib_2000",
        "idle_bytes_per_session",
        "idle_sessions",
        "idle_rss_mib",
        "idle_rss_baseline_mib",
        "machine",
    }
    assert doc["pinning_classified"] is True  # the default, as a user runs it
    assert set(doc["tps"]) == TARGETS
    for target, by_clients in doc["tps"].items():
        assert set(by_clients) == {"1"}, target
        assert by_clients["1"] > 0, target
    assert set(doc["connect_rate"]) == TARGETS
    assert all(rate > 0 for rate in doc["connect_rate"].values()), doc["connect_rate"]
    assert set(doc["copy_mb_s"]) == TARGETS
    assert all(rate > 0 for rate in doc["copy_mb_s"].values()), doc["copy_mb_s"]
    assert set(doc["proxy_cpu_us"]) == {"pgbouncer", "rdsgate"}
    assert set(doc["proxy_cpu_us"]["rdsgate"]) == {"c=1", "connect", "copy"}
    assert doc["cpu_us_per_connection"] == {
        t: doc["proxy_cpu_us"][t]["connect"] for t in ("pgbouncer", "rdsgate")
    }
    assert all(us > 0 for us in doc["cpu_us_per_connection"].values())
    # Audited by default; without c=8 or c=32 in the run, the client counts it had.
    assert doc["tps_audit"] == {"1": doc["tps"]["rdsgate"]["1"]}

    latency = doc["connect_latency_ms"]
    assert set(latency) == {"rdsgate", "rds-proxy-direct"}
    for target, stats in latency.items():
        assert stats["n"] == CONNECTIONS, target
        assert 0 < stats["p50"] <= stats["p99"], (target, stats)
        assert stats["mean"] > 0, (target, stats)
    # Every direct log-in waited for the stand-in's log-in delay.
    assert latency["rds-proxy-direct"]["p50"] >= LOGIN_DELAY * 1000
    warm = latency["rdsgate"].get("warm")
    if warm is not None:  # one hit or one miss per measured log-in
        assert set(warm) >= {"hit", "miss"}, warm
        assert warm["hit"] + warm["miss"] == CONNECTIONS, warm

    # Not the target's 2,000 sessions: measured, but not reported as if it were.
    assert doc["idle_sessions"] == IDLE_SESSIONS
    assert doc["idle_rss_mib_2000"] is None
    assert doc["idle_bytes_per_session"] > 0
    assert doc["idle_rss_mib"] > doc["idle_rss_baseline_mib"] > 0
    work = re.search(r"work dir: (\S+)", proc.stderr)
    assert work, proc.stderr
    assert not Path(work.group(1)).exists()
    assert _processes_mentioning(work.group(1)) == []


def test_own_time_counts_only_the_busy_event_loop_thread(tmp_path: Path) -> None:
    loop = "<module> (rdsgate-proxy:1);Runner.run (asyncio/runners.py:86);uv_run (core.c:464)"
    raw = tmp_path / "stacks.txt"
    raw.write_text(
        f"{loop};UVStream__try_write (loop.c:1);write (libc.so.6) 6\n"
        f"{loop};AuditLog.flush (proxy/audit.py:40);os_write (libpython3.11.so);write (libc.so.6) 2\n"
        f"{loop};ClientLeg.data_received (proxy/relay.py:79) 1\n"
        f"{loop};SSL_write_ex (libssl.so.3);0x7f00 (libcrypto.so.3) 1\n"
        f"{loop};uv__io_poll (linux.c:1452);epoll_pwait (libc.so.6) 50\n"
        "thread_run (libpython3.11.so);_worker (concurrent/futures/thread.py:69) 30\n"
    )

    profile = analyse_stacks(raw)

    assert (profile.busy, profile.idle, profile.other_threads) == (10, 50, 30)
    assert profile.native
    assert dict(profile.layers) == {LAYERS[0]: 6, LAYERS[4]: 2, LAYERS[5]: 1, LAYERS[2]: 1}
    assert profile.top[0] == ("write (libc.so.6) < UVStream__try_write", 6)
    assert ("SSL_write_ex (libssl.so.3) > [libcrypto.so.3]", 1) in profile.top


def test_tps_audit_names_c8_and_c32_and_is_absent_without_the_audit() -> None:
    cpu = CpuUse(user_s=1.0, sys_s=0.5, elapsed_s=3.0, tps=100.0)
    results = Results(["rdsgate"], [1, 8, 32])
    results.tps["rdsgate"] = {1: 10.0, 8: 80.0, 32: 320.0}
    results.cpu["rdsgate"] = {"connect": cpu}

    doc = results.as_json()

    assert doc["tps_audit"] == {"8": 80.0, "32": 320.0}
    assert doc["cpu_us_per_connection"] == {"rdsgate": 5000.0}
    results.audit_queries = False
    assert "tps_audit" not in results.as_json()


def test_warm_counts_reads_hits_and_misses_from_prometheus_text() -> None:
    text = (
        "# HELP rdsgate_upstream_warm_total Log-ins that took a warm upstream connection\n"
        "# TYPE rdsgate_upstream_warm_total counter\n"
        'rdsgate_upstream_warm_total{result="hit"} 17.0\n'
        'rdsgate_upstream_warm_total{result="miss"} 3.0\n'
        'rdsgate_upstream_warm_created{result="hit"} 1.7e+09\n'
        "rdsgate_upstream_warm_idle 2.0\n"
    )

    assert warm_counts(text) == {"hit": 17, "miss": 3}
    assert warm_counts("rdsgate_connections_active 0.0\n") is None
