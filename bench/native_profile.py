"""Where rdsgate-proxy's CPU goes below Python: a `perf` profile split by library.

py-spy shows Python frames, but most of the proxy's CPU per transaction is under them: in
the kernel's socket calls, OpenSSL, uvloop and the interpreter itself. `perf record -e
cpu-clock` samples the process without hardware counters (which VMs often lack), and
`perf report --sort dso` splits the samples by shared object. Multiplied by the proxy's
CPU per transaction measured in the same run, each share becomes microseconds per
transaction per layer, which can be compared between 8 and 32 clients: a layer that costs
more per transaction at 32 clients for the same work shows what grows with sessions.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: shared-object name fragments → the layer they are reported as, first match wins
LAYERS: Sequence[tuple[str, str]] = (
    ("[kernel", "kernel (socket calls, wake-ups)"),
    ("libpython", "CPython interpreter"),
    ("libcrypto", "OpenSSL libcrypto"),
    ("libssl", "OpenSSL libssl"),
    ("_ssl.cpython", "Python's _ssl"),
    ("loop.cpython", "uvloop"),
    ("libc.so", "libc (malloc, memcpy)"),
)
OTHER = "other"
SAMPLE_HZ = 999

_DSO_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S.*?)\s*$")


class PerfUnavailable(RuntimeError):
    """perf is missing or may not sample this process; the message says which."""


@dataclass(frozen=True)
class LayerProfile:
    """One profiled run: proxy CPU per unit (transaction or connection), split by layer."""

    label: str
    us_per_unit: float
    shares: Mapping[str, float]
    samples: int

    def us(self, layer: str) -> float:
        return self.us_per_unit * self.shares.get(layer, 0.0)


def find_perf() -> Path:
    """`perf`, checked to sample a process here (it may exist and still be refused)."""
    found = shutil.which("perf")
    if found is None:
        raise PerfUnavailable("perf not found: install Debian's linux-perf to use --perf")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.data"
        cmd = [found, "record", "-e", "cpu-clock", "-q", "-o", str(out), "--", "true"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode:
            raise PerfUnavailable(
                f"perf record failed ({proc.returncode}): {proc.stderr.strip()[-500:]} "
                "(see /proc/sys/kernel/perf_event_paranoid)"
            )
    return Path(found)


def record(perf: Path, pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    """Starts sampling `pid` for `seconds`; wait for the returned process to finish."""
    cmd = [str(perf), "record", "-e", "cpu-clock", "-F", str(SAMPLE_HZ), "-q"]
    cmd += ["-p", str(pid), "-o", str(out), "--", "sleep", str(seconds)]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def layer_of(dso: str) -> str:
    for fragment, layer in LAYERS:
        if fragment in dso:
            return layer
    return OTHER


def parse_report(text: str) -> tuple[dict[str, float], int]:
    """`perf report --sort dso --stdio` → ({layer: share 0..1}, samples)."""
    shares: dict[str, float] = {}
    samples = 0
    for line in text.splitlines():
        if line.startswith("# Samples:"):
            count = line.split(":", 1)[1].split()[0]
            samples = int(float(count.rstrip("KM")) * (1000 if count.endswith("K") else 1))
            continue
        match = _DSO_LINE.match(line)
        if match is None or line.startswith("#"):
            continue
        layer = layer_of(match.group(2))
        shares[layer] = shares.get(layer, 0.0) + float(match.group(1)) / 100
    return shares, samples


def analyse(perf: Path, data: Path, label: str, us_per_unit: float) -> LayerProfile:
    cmd = [str(perf), "report", "-i", str(data), "--sort", "dso", "--stdio", "-g", "none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode:
        raise PerfUnavailable(f"perf report failed: {proc.stderr.strip()[-500:]}")
    shares, samples = parse_report(proc.stdout)
    return LayerProfile(label, us_per_unit, shares, samples)


def layers_in_order(profiles: Sequence[LayerProfile]) -> list[str]:
    """The layers seen, in `LAYERS` order, then "other"."""
    seen = {layer for p in profiles for layer in p.shares}
    return [layer for _, layer in LAYERS if layer in seen] + ([OTHER] if OTHER in seen else [])
