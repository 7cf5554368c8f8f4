"""`bench/run.py` end to end in a few seconds, so the benchmark cannot rot between releases.

The real numbers come from `make bench`; this proves the rig still starts PostgreSQL,
pgbouncer and rdsgate-proxy, drives pgbench through each, prints only the documented JSON
on stdout and leaves no process or directory behind.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import LAYERS, analyse_stacks
from rdsgate.lab.postgres import PostgresNotInstalled, find_bin_dir

REPO = Path(__file__).resolve().parents[2]
TARGETS = {"direct", "pgbouncer", "rdsgate"}


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

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=REPO, check=False)

    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # fails if anything but the JSON reached stdout
    assert set(doc) == {"tps", "connect_rate", "copy_mb_s", "proxy_cpu_us", "machine"}
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
