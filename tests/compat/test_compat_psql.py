"""psql through rdsgate-proxy behaves as it does against PostgreSQL directly.

People run scripts and `\\copy` with psql against whatever endpoint they are given; what
they see is psql's output, its error messages and its exit code, which scripts and CI jobs
rely on. Each test runs the same psql command against both targets and compares all three.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.compat.conftest import Target, Targets

pytestmark = pytest.mark.timeout(60)

PSQL_TIMEOUT = 30


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def psql(t: Target, cwd: Path, *args: str) -> Run:
    exe = shutil.which("psql")
    assert exe, "psql is not installed: `scripts/system-deps postgres` (run by `make test`)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(
        [exe, "-X", "-d", t.dsn(), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env | {"PGCLIENTENCODING": "UTF8"},
        timeout=PSQL_TIMEOUT,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def workdir(base: Path, t: Target) -> Path:
    path = base / t.name
    path.mkdir()
    return path


# -- \copy ----------------------------------------------------------------------------------


def rows() -> list[tuple[int, str, str | None]]:
    out: list[tuple[int, str, str | None]] = []
    for i in range(1, 1001):
        name = f"name {i}"
        if i % 5 == 0:
            name = f'comma, "quoted" {i}'
        elif i % 7 == 0:
            name = f"line\nbreak\ttab {i}"
        elif i % 11 == 0:
            name = f"ünïcødé ✓ {i}"
        note: str | None = f"back\\slash {i}"
        if i % 3 == 0:
            note = None
        elif i % 4 == 0:
            note = ""
        out.append((i, name, note))
    return out


def csv_value(value: str | None) -> str:
    """PostgreSQL's CSV output: NULL is empty, an empty string is quoted."""
    if value is None:
        return ""
    if value == "" or any(c in value for c in ',"\n\r') or value == "\\.":
        return '"' + value.replace('"', '""') + '"'
    return value


def text_value(value: str | None) -> str:
    """PostgreSQL's text COPY output."""
    if value is None:
        return "\\N"
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


COPY_SCRIPT = """\
create temp table pc (id int, name text, note text);
\\copy pc from 'in.csv' with (format csv)
select count(*) as rows, count(note) as notes, sum(length(name)) as name_chars from pc;
\\copy (select * from pc order by id) to 'out.csv' with (format csv)
\\copy pc to 'out.txt'
"""


def test_psql_copy_in_and_out(targets: Targets, tmp_path: Path) -> None:
    data = rows()
    csv = "".join(f"{i},{csv_value(name)},{csv_value(note)}\n" for i, name, note in data)
    text = "".join(f"{i}\t{text_value(name)}\t{text_value(note)}\n" for i, name, note in data)
    runs = {}
    files = {}
    for t in targets:
        cwd = workdir(tmp_path, t)
        (cwd / "in.csv").write_text(csv, encoding="utf-8")
        (cwd / "copy.sql").write_text(COPY_SCRIPT)
        runs[t.name] = psql(t, cwd, "-f", "copy.sql")
        files[t.name] = {
            "out.csv": (cwd / "out.csv").read_text(encoding="utf-8"),
            "out.txt": (cwd / "out.txt").read_text(encoding="utf-8"),
        }
    name_chars = sum(len(name) for _, name, _ in data)
    notes = sum(note is not None for _, _, note in data)
    expected = Run(
        0,
        "CREATE TABLE\nCOPY 1000\n"
        " rows | notes | name_chars \n"
        "------+-------+------------\n"
        f" 1000 |   {notes} |      {name_chars}\n"
        "(1 row)\n\nCOPY 1000\nCOPY 1000\n",
        "",
    )
    assert runs == {"proxy": expected, "direct": expected}
    assert files["proxy"] == files["direct"]
    assert files["direct"] == {"out.csv": csv, "out.txt": text}


# -- a script with errors -------------------------------------------------------------------

SCRIPT = """\
select 1 as one;
select 1/0;
\\echo after the error
create temp table s (id int primary key);
insert into s values (1);
insert into s values (1);
begin;
select nosuchcolumn from s;
select 'in an aborted transaction';
rollback;
\\set x 41
select :x + 1 as answer, count(*) as ids from s;
"""

FULL_OUT = (
    " one \n"
    "-----\n"
    "   1\n"
    "(1 row)\n"
    "\n"
    "after the error\n"
    "CREATE TABLE\n"
    "INSERT 0 1\n"
    "BEGIN\n"
    "ROLLBACK\n"
    " answer | ids \n"
    "--------+-----\n"
    "     42 |   1\n"
    "(1 row)\n"
    "\n"
)

FULL_ERR = """\
psql:script.sql:2: ERROR:  division by zero
psql:script.sql:6: ERROR:  duplicate key value violates unique constraint "s_pkey"
DETAIL:  Key (id)=(1) already exists.
psql:script.sql:8: ERROR:  column "nosuchcolumn" does not exist
LINE 1: select nosuchcolumn from s;
               ^
psql:script.sql:9: ERROR:  current transaction is aborted, commands ignored until end of transaction block
"""


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param((), Run(0, FULL_OUT, FULL_ERR), id="carry-on"),
        pytest.param(
            ("-v", "ON_ERROR_STOP=1"),
            Run(3, FULL_OUT[: FULL_OUT.index("after")], FULL_ERR.splitlines(keepends=True)[0]),
            id="on-error-stop",
        ),
    ],
)
def test_psql_script_with_errors(
    targets: Targets, tmp_path: Path, options: tuple[str, ...], expected: Run
) -> None:
    runs = {}
    for t in targets:
        cwd = workdir(tmp_path, t)
        (cwd / "script.sql").write_text(SCRIPT)
        runs[t.name] = psql(t, cwd, *options, "-f", "script.sql")
    assert runs == {"proxy": expected, "direct": expected}
