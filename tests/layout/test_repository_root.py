"""Python run from the repository root must find the standard library, not our folders.

The top-level `operator/` and `proxy/` hold `rdsgate.operator` and `rdsgate.proxy`
(pyproject's package-dir). With an `__init__.py` they were regular packages, and a Python
started in the root (`python -m pytest`, `python -m build`, any script) put the root first
on `sys.path` and imported `./operator` for the standard library's `operator`. Without one
they are namespace portions, which lose to every regular module on the path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_in_root(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_no_top_level_package_can_shadow_the_standard_library() -> None:
    shadowing = sorted(
        d.name
        for d in ROOT.iterdir()
        if d.is_dir()
        and d.name in sys.stdlib_module_names
        and ((d / "__init__.py").exists() or any(d.glob("__init__.*")))
    )
    assert shadowing == [], f"regular packages named like standard modules: {shadowing}"


def test_the_standard_operator_module_imports_from_the_root() -> None:
    # -c puts the current directory first on sys.path, as `python -m` does; -I would not.
    done = run_in_root(
        "-c",
        "import sys; sys.modules.pop('operator', None); import operator; "
        "print(operator.eq(1, 1), operator.__spec__.origin)",
    )
    assert done.returncode == 0, done.stderr
    result, origin = done.stdout.split()
    assert result == "True"
    assert not origin.startswith(str(ROOT)), origin


def test_pytest_collects_from_the_root() -> None:
    done = run_in_root("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " tests collected" in done.stdout.splitlines()[-1], done.stdout[-500:]
