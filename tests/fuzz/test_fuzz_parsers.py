"""A short `make fuzz` in CI: the start-up parser, the frontend scanner and the two file
loaders each get generated inputs, and every one must end cleanly (see `bench/fuzz.py`
for the invariant: a parse, "needs more data", `ProtocolViolation` (08P01) for wire
input; acceptance with finite durations, or `ConfigError` naming the field, for files).

`RDSGATE_FUZZ_SEED` picks another seed; the default is fixed so CI is repeatable.
"""

from __future__ import annotations

import os

import pytest

from bench.fuzz import TARGETS, FileInput, Result, check_file, check_startup, run_target
from bench.fuzz import WireInput as Input
from rdsgate.proxy import wire

SEED = int(os.environ.get("RDSGATE_FUZZ_SEED", "14"))
COUNTS = {"startup": 10_000, "scanner": 10_000, "access": 500, "config": 500}


def _report(result: Result) -> str:
    return "\n".join(result.failures) + f"\noutcomes: {dict(result.outcomes)}"


@pytest.mark.parametrize("target", list(COUNTS))
def test_generated_inputs_end_cleanly(target: str) -> None:
    result = run_target(TARGETS[target], COUNTS[target], SEED, hang_seconds=2.0)
    assert (result.crashes, result.hangs) == (0, 0), _report(result)
    assert result.inputs == COUNTS[target]
    # The generator reaches past the first length check: several distinct outcomes,
    # clean refusals among them.
    assert len(result.outcomes) >= 3, _report(result)
    refused = sum(n for label, n in result.outcomes.items() if label.startswith(("08P01", "ref")))
    assert refused > COUNTS[target] // 40, _report(result)


def test_the_oracle_catches_a_wrong_parse() -> None:
    """A StartupMessage whose length covers only part of its parameters is not a clean
    parse of the whole: the oracle must tell a packet cut short from a good one."""
    good = Input([wire.startup_message({"user": "app"})])
    assert check_startup(good) == "startup"
    assert check_startup(Input([good.data[:-1]])) == "needs more data"
    short = (len(good.data) - 4).to_bytes(4, "big") + good.data[4:]
    assert check_startup(Input([short])).startswith("08P01: invalid startup packet layout")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("limits: {maxSessionDuration: .nan}", "limits.maxSessionDuration"),
        ("limits: {idleTimeout: .inf}", "limits.idleTimeout"),
        ("limits: {startupTimeout: " + "9" * 400 + "s}", "limits.startupTimeout"),
        ("limits: {drainTimeout: " + "9" * 400 + "}", "limits.drainTimeout"),
    ],
)
def test_durations_no_timer_accepts_are_refused_by_name(text: str, field: str) -> None:
    """NaN, infinity and numbers past float were accepted as durations, and crashed
    sessions at their first timer (`call_later(nan)`: ValueError)."""
    base = (
        "database: {name: orders}\ntls: {certFile: /c, keyFile: /k}\n"
        "upstream: {endpoint: 'db:5432'}\naws: {region: eu-west-1}\naccess: {file: /a}\n"
    )
    assert check_file(FileInput(base + text, (field,)), "config") == "refused, field named"
    role = "version: 1\nroles: [{name: r, options: {maxSessionDuration: .nan}}]\n"
    assert check_file(FileInput(role, ("roles.0.options.maxSessionDuration",)), "access") == (
        "refused, field named"
    )
