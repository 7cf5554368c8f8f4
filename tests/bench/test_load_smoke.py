"""`bench/load.py` end to end at a tiny size, so the load benchmark cannot rot.

The figures come from a full run (1,000 sessions, 10^6 rows of COPY); this proves the
rig still drives sessions and COPYs direct and through rdsgate-proxy, checks every
answer, compares the checksums, prints only the documented JSON and cleans up. It fails
when a transaction's answer or a COPY's bytes differ through the proxy (the script exits
1 and reports the errors), or when a figure is missing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rdsgate.lab.postgres import PostgresNotInstalled, find_bin_dir

REPO = Path(__file__).resolve().parents[2]
SESSIONS = 20
TRANSACTIONS = 10
ROWS = 5000


@pytest.mark.timeout(90)
def test_a_tiny_load_run_checks_every_answer_and_compares_checksums() -> None:
    try:
        find_bin_dir()
    except PostgresNotInstalled as exc:
        pytest.skip(str(exc))
    cmd = [sys.executable, str(REPO / "bench" / "load.py"), "--json"]
    cmd += ["--sessions", str(SESSIONS), "--transactions", str(TRANSACTIONS)]
    cmd += ["--copy-rows", str(ROWS), "--copy-background", "4", "--client-processes", "1"]

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=80, cwd=REPO, check=False)

    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # fails if anything but the JSON reached stdout
    assert doc["errors"] == 0, doc["error_samples"]
    assert set(doc["active"]) == {"direct", "rdsgate"}
    for target, phase in doc["active"].items():
        assert phase["errors"] == 0, target
        assert phase["transactions"] == SESSIONS * TRANSACTIONS, target
        assert phase["tps"] > 0, target
        for stat in ("query_ms", "transaction_ms"):
            lat = phase[stat]
            assert lat["n"] == SESSIONS * TRANSACTIONS, (target, stat)
            assert 0 < lat["p50"] <= lat["p99"], (target, stat, lat)
        # A transaction is three round trips, its UPDATE one of them.
        assert phase["transaction_ms"]["p50"] > phase["query_ms"]["p50"], target
    copy = doc["copy"]
    assert copy["rows"] == ROWS
    assert copy["checksums_equal"] is True
    assert set(copy["out_md5"].values()) == set(copy["in_md5"].values()) == {copy["source_md5"]}
    assert all(copy[k][t] > 0 for k in ("out_mb_s", "in_mb_s") for t in ("direct", "rdsgate"))
    assert copy["background"]["errors"] == 0
    assert copy["background"]["sessions"] == 4
    work = re.search(r"work dir: (\S+)", proc.stderr)
    assert work, proc.stderr
    assert not Path(work.group(1)).exists()
