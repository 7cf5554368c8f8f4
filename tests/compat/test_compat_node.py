"""node-postgres (`pg`) and `pg-copy-streams` through rdsgate-proxy, compared with direct.

Node.js services reach Postgres through node-postgres, whose protocol code is its own (no
libpq): TLS with a CA bundle, the extended protocol for parameters and named statements,
and COPY streams. tests/compat/node/compat.js does all of it against one target and prints
JSON; this test runs it against both targets and compares.

`make test` installs node and npm (scripts/system-deps node) and the pinned packages
(`make node-deps`, from package-lock.json); CI does, so their absence fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import Target, Targets
from tests.compat.data import sha

pytestmark = pytest.mark.timeout(90)

NODE_DIR = Path(__file__).parent / "node"
NODE_TIMEOUT = 30
COPY_ROWS = 20_000
INSTALL_HINT = (
    "`make test` installs them: `scripts/system-deps node` (Debian's nodejs and npm) and "
    "`make node-deps` (npm ci --prefix tests/compat/node)."
)


def node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed, so node-postgres cannot be tested. {INSTALL_HINT}")
    if not (NODE_DIR / "node_modules" / "pg-copy-streams").is_dir():
        pytest.fail(f"{NODE_DIR}/node_modules lacks pg and pg-copy-streams. {INSTALL_HINT}")
    return node


def run_node(node: str, t: Target) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    args = ["--host", t.host, "--port", str(t.port), "--user", t.user, "--database", t.dbname]
    args += ["--ca", str(t.ca_file), "--copy-rows", str(COPY_ROWS)]
    proc = subprocess.run(
        [node, str(NODE_DIR / "compat.js"), *args],
        capture_output=True,
        text=True,
        env=env | {"COMPAT_PGPASSWORD": t.password},
        timeout=NODE_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"compat.js against {t.name} failed:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def expected_copy_csv() -> bytes:
    return "".join(
        f'{i},"name, ""{i}""",{"" if i % 3 == 0 else f"note {i}"}\n'
        for i in range(1, COPY_ROWS + 1)
    ).encode()


def test_node_postgres_queries_and_copy_streams(targets: Targets) -> None:
    node = node_executable()
    got = {t.name: run_node(node, t) for t in targets}
    big = bytes(i % 251 for i in range(2 * 1024 * 1024))
    csv = expected_copy_csv()
    expected = {
        "query": {
            "command": "SELECT",
            "rowCount": 1,
            "fields": [
                ["one", 23],
                ["two", 25],
                ["nothing", 25],
                ["num", 1700],
                ["at", 1184],
                ["b", 17],
                ["arr", 1007],
                ["doc", 3802],
            ],
            "rows": [
                {
                    "one": 1,
                    "two": "two",
                    "nothing": None,
                    "num": "1.5",
                    "at": "2024-02-29T23:59:59.000Z",
                    "b": {"hex": "00ff"},
                    "arr": [1, 2, 3],
                    "doc": {"k": [1, "x"]},
                }
            ],
        },
        "params": {
            "rows": [
                {"sum": 42, "label": "ünï'quote", "data": {"hex": "0001ff"}, "was_null": True}
            ],
            "named": [0, 2, 4],
            "preparedOnServer": 1,
        },
        "error": {"code": "22012", "message": "division by zero", "severity": "ERROR"},
        "afterError": "still usable",
        "large": {
            "bytes": len(big),
            "equal": True,
            "md5": hashlib.md5(big).hexdigest(),  # noqa: S324 -- PostgreSQL's md5()
        },
        "copyIn": COPY_ROWS,
        "copyCheck": [{"n": COPY_ROWS, "notes": COPY_ROWS - COPY_ROWS // 3}],
        "copyOut": {
            "rowCount": COPY_ROWS,
            "bytes": len(csv),
            "sha256": sha(csv),
            "head": csv[:120].decode(),
        },
    }
    assert got == {"proxy": expected, "direct": expected}
