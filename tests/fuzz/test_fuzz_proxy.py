"""Fuzzing the running proxy: generated start-up input over real TCP + TLS, and broken
access files swapped into its Secret volume.

Each connection must end in an ErrorResponse with a start-up SQLSTATE (08P01 for the
malformed, 28000/0A000/28P01 for a well-formed start-up the proxy refuses) or a clean
close, promptly; afterwards the proxy has no session left, logged no crash, and serves a
normal log-in. `RDSGATE_FUZZ_PROXY_INPUTS` sets the count (`make fuzz` runs more).
"""

from __future__ import annotations

import json
import os
import ssl
import time
from collections import Counter

import psycopg
import yaml

from bench.fuzz import SEED_ACCESS, WireInput, check_startup, file_input, input_rng, startup_input
from rdsgate.lab.rdsproxy import wait_for
from rdsgate.proxy import wire
from rdsgate.proxy.access import parse_access
from rdsgate.proxy.config import parse_yaml
from rdsgate.proxy.errors import ConfigError
from tests.fixtures.proxy import DEFAULT_ACCESS, RunningProxy
from tests.fixtures.rawpg import RawClient

SEED = int(os.environ.get("RDSGATE_FUZZ_SEED", "14"))
INPUTS = int(os.environ.get("RDSGATE_FUZZ_PROXY_INPUTS", "150"))
#: What a start-up may end in; anything else (XX000 above all) is a crash the client saw.
START_UP_SQLSTATES = {"08P01", "28000", "28P01", "0A000"}
#: Labels of the sans-IO model for input after which the proxy waits for more.
WAITS = {"needs more data", "startup", "negotiation"}
#: How long a connection the proxy must end may stay open.
CLOSE_DEADLINE = 5.0


def _answers(client: RawClient, deadline: float) -> tuple[list[wire.Message], bool]:
    """The proxy's messages until it closes (True) or the deadline passes (False)."""
    got: list[wire.Message] = []
    while True:
        msg = client.reader.read_message()
        if msg is not None:
            got.append(msg)
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return got, False
        client.sock.settimeout(remaining)
        try:
            data = client.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError):
            return got, True
        except TimeoutError:
            return got, False
        if not data:
            return got, True
        client.reader.feed(data)


def _one(proxy: RunningProxy, inp: WireInput, direct: bool) -> tuple[str, str]:
    """Sends one input inside TLS; returns (the model's label, what the proxy did)."""
    label = check_startup(inp)
    client = RawClient(proxy.port, proxy.ca_file)
    try:
        if direct:
            client.direct_tls()
        else:
            client.start_tls()
        for chunk in inp.chunks:
            if chunk:
                client.send(chunk)
        waits = label in WAITS or not inp.data
        if waits and label != "startup":
            return label, "client left"  # nothing to answer yet: the proxy must just let go
        got, closed = _answers(client, time.monotonic() + CLOSE_DEADLINE)
    except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
        return label, "closed"  # the proxy closed while we were still sending
    finally:
        client.sock.close()
    errors = [wire.parse_fields(m.body).get("C", "?") for m in got if m.type == b"E"]
    bad = [m.type for m in got if m.type not in (b"E", b"R", b"v")]
    assert not bad, f"{inp.chunks!r}: unexpected messages {bad} ({label})"
    assert set(errors) <= START_UP_SQLSTATES, f"{inp.chunks!r}: {errors} ({label})"
    if label == "startup" and any(m.type == b"R" for m in got):
        return label, "asked for a password"  # a well-formed start-up: not our business
    assert closed, f"{inp.chunks!r}: still open after {CLOSE_DEADLINE}s ({label}, got {got})"
    if label.startswith("08P01"):
        assert errors, f"{inp.chunks!r}: closed without the 08P01 error ({label})"
    return label, (errors[0] if errors else "closed")


def test_malformed_start_ups_over_tls_end_in_08P01_or_a_close(proxy: RunningProxy) -> None:
    mark = len(proxy.audit)
    seen: Counter[str] = Counter()
    started = time.monotonic()
    for i in range(INPUTS):
        rng = input_rng(SEED, "proxy", i)
        label, outcome = _one(proxy, startup_input(rng), direct=rng.random() < 0.3)
        seen[outcome] += 1
        if label.startswith("08P01") and outcome != "08P01":
            seen["model said 08P01, proxy said " + outcome] += 1
    elapsed = time.monotonic() - started
    print(f"{INPUTS} inputs in {elapsed:.1f}s ({INPUTS / elapsed:.0f}/s): {dict(seen)}")
    assert seen["08P01"] > INPUTS // 10, seen
    # Every session ended: nothing hangs on in start-up.
    assert wait_for(lambda: proxy.metric("rdsgate_connections_active") == 0, timeout=15), (
        proxy.metric("rdsgate_connections_active")
    )
    crashes = [line for line in proxy.logs if "crashed" in line or "Traceback" in line]
    assert not crashes, "\n".join(proxy.logs[-40:])
    # The audit trail has each 08P01 the clients saw, with its SQLSTATE.
    assert wait_for(
        lambda: sum(1 for e in proxy.audit[mark:] if e.get("sqlstate") == "08P01") >= seen["08P01"]
    )
    assert proxy.process.poll() is None
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("select 'still serving'").fetchone() == ("still serving",)


def _invalid_metric(proxy: RunningProxy) -> float:
    return proxy.metric("rdsgate_access_reloads_total", {"result": "invalid"})


def _rejections(proxy: RunningProxy, since: int) -> list[str]:
    """The messages of the proxy's log lines (JSON) that report a refused access file."""
    found = []
    for line in proxy.logs[since:]:
        message = str(json.loads(line).get("message", "")) if line.startswith("{") else line
        if "access file rejected" in message:
            found.append(message)
    return found


def test_broken_access_files_leave_the_last_good_one_in_force(proxy: RunningProxy) -> None:
    """Generated bad access files are each refused, with the loader's problems (which
    name the field) in the log; log-ins keep working on the last good file."""
    rejected = 0
    index = 0
    while rejected < 6:
        inp = file_input(input_rng(SEED, "proxy-access", index), SEED_ACCESS)
        index += 1
        try:
            parse_access(parse_yaml(inp.text, "a"), "a")
            continue  # a mutation the loader accepts is no test of keeping the old file
        except ConfigError as exc:
            problems = exc.problems
        before, logs = _invalid_metric(proxy), len(proxy.logs)
        proxy.set_access(inp.text)

        def refused(b: float = before, n: int = logs) -> bool:
            return _invalid_metric(proxy) > b and bool(_rejections(proxy, n))

        assert wait_for(refused), (inp.text, proxy.logs[logs:])
        message = _rejections(proxy, logs)[0]
        assert "the previous one" in message, message
        # The problem as the loader words it (naming the field, or the YAML position).
        assert problems[0].splitlines()[0] in message, (problems, message)
        rejected += 1
        with psycopg.connect(proxy.dsn()) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    assert proxy.http("/readyz")[0] == 200
    assert proxy.metric("rdsgate_access_grants") == 3
    crashes = [line for line in proxy.logs if "Traceback" in line]
    assert not crashes, "\n".join(proxy.logs[-40:])
    # Putting the good file back is taken as a reload, not as nothing.
    ok_before = proxy.metric("rdsgate_access_reloads_total", {"result": "ok"})
    proxy.set_access(yaml.safe_dump(DEFAULT_ACCESS))
    assert wait_for(
        lambda: proxy.metric("rdsgate_access_reloads_total", {"result": "ok"}) > ok_before
    )
