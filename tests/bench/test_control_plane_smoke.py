"""`bench/control_plane.py` tiny (20 Tokens, 2 Databases, 300 grants), so it cannot rot.

The real figures (1,000 Tokens, 50 Databases, 10,000 grants) come from running it by hand;
this proves it still starts the API emulator, the real operator and two proxies, sees the
operator converge and a Role edit reach every bundle, counts the operator's requests,
prints only the documented JSON on stdout and leaves no process or directory behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("rdsgate-bench-cp-*")}


def _processes() -> set[str]:
    """Processes working in a directory of this bench (the proxies' config is there)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "rdsgate-bench-cp-" in args or "rdsgate:bench" in args:
            found.add(f"{cmdline.parent.name} {args}")
    return found


@pytest.mark.timeout(120)
def test_a_tiny_run_converges_counts_requests_and_cleans_up() -> None:
    before, running = _leftovers(), _processes()
    cmd = [sys.executable, str(REPO / "bench" / "control_plane.py"), "--json", "--quiet", "0.5"]
    cmd += ["--tokens", "20", "--databases", "2", "--grants", "300", "--timeout", "60"]

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=REPO, check=False)

    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # fails if anything but the JSON reached stdout
    assert set(doc) == {"operator", "access_file", "machine"}
    op = doc["operator"]
    assert (op["tokens"], op["databases"]) == (20, 2)
    assert 0 < op["converge_s"] < 60 and 0 < op["role_edit_s"] < 60
    requests = op["requests"]
    # One compile at least lists the namespace's Databases, Roles, Tokens, Token Secrets and
    # access Secrets (one request each, however many Tokens) and writes the edited access
    # Secrets; a Database reconcile reads and applies its children.
    assert requests["role_edit"] >= 5 + 2
    assert requests["database_reconcile"] >= 6
    assert requests["converge"] > requests["role_edit"]
    assert op["requests"]["converge_reconciles"]["access"] >= 1
    assert op["operator_rss_mib"] > 20
    af = doc["access_file"]
    assert af["grants"] == 300 and af["secret_limit_bytes"] == 1024 * 1024
    assert af["bytes_per_grant"]["gzip"] < af["bytes_per_grant"]["yaml"]
    assert af["grants_that_fit"]["gzip"] > af["grants_that_fit"]["yaml"] > 1000
    assert af["proxy_rss_mib"]["large"] > 20 and af["reload_s"] > 0
    assert af["listener_stall_s"] > 0
    assert "converged after" in proc.stderr  # progress goes to stderr
    assert _processes() <= running  # the operator and the proxies were stopped
    assert _leftovers() <= before
