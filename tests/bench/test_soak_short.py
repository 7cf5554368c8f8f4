"""The CI version of `make soak`: two minutes of mixed load through one rdsgate-proxy,
with an access-file reload every 10 s and a revocation every 40 s (`bench/soak.py`).

It fails on any unexpected client error, a reload the proxy did not apply, a revoked
Token whose sessions go on or whose secret still logs in, an invalid reload, a Traceback
in the proxy's log, or more than 10 % growth of the proxy's RSS or open descriptors
between the start (after the warm-up) and the end. (RSS grew 80-94 % here before ended
sessions stopped waiting for a full garbage collection to free their TLS buffers.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rdsgate.lab.postgres import PostgresNotInstalled, find_bin_dir

REPO = Path(__file__).resolve().parents[2]
MINUTES = 2
MAX_GROWTH = 0.10


@pytest.mark.timeout(240)
def test_two_minutes_of_churn_reloads_and_revocations_leave_no_growth() -> None:
    try:
        find_bin_dir()
    except PostgresNotInstalled as exc:
        pytest.skip(str(exc))
    cmd = [sys.executable, str(REPO / "bench" / "soak.py"), "--minutes", str(MINUTES), "--json"]

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=230, cwd=REPO, check=False)

    assert proc.stdout, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["unexpected_errors"] == 0, (doc["error_samples"], proc.stderr[-3000:])
    assert doc["failures"] == [], proc.stderr[-3000:]
    assert (doc["reload_every_s"], doc["revoke_every_s"]) == (10, 40)
    assert doc["reloads"] >= 8, doc
    assert doc["revocations"] >= 2, doc  # the warm-up's and at least one after it
    assert doc["proxy"]["audit_session_revoked"] >= doc["revocations"]
    assert doc["proxy"]["reloads_invalid"] == 0
    assert doc["refused_as_expected"] > 0  # wrong passwords were tried, and refused
    assert doc["logins"] > 500 and doc["copies"] > 0 and doc["cancels"] > 0, doc
    assert doc["start"]["sessions"] == doc["end"]["sessions"] == 20
    assert doc["fd_growth"] <= MAX_GROWTH, (doc["start"], doc["end"])
    assert doc["rss_growth"] <= MAX_GROWTH, (doc["start"], doc["end"])
    assert proc.returncode == 0, proc.stderr[-3000:]
