"""Timing helpers shared by the fusedce benchmark scripts.

Everything here is plain Python: a `measure` function (warm-up, then an adaptive
number of repetitions, median of wall-clock times from `time.perf_counter`), a small
progress reporter that writes to stderr (so a table printed on stdout stays clean),
and a description of the machine for the report header.

`measure` takes an optional `setup` callable, run before every repetition and not
timed (e.g. to refresh a scratch buffer that an in-place kernel overwrites), and an
optional `sync` callable run after every repetition inside the timed region (e.g.
a device synchronisation for GPU work).
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional


@dataclass
class Measurement:
    """Wall-clock times of one benchmarked callable, in seconds."""

    times: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def reps(self) -> int:
        return len(self.times)

    @property
    def median_ms(self) -> float:
        return self.median * 1e3

    def as_dict(self) -> dict:
        return {
            "median_ms": self.median_ms,
            "min_ms": min(self.times) * 1e3,
            "max_ms": max(self.times) * 1e3,
            "reps": self.reps,
            "times_ms": [t * 1e3 for t in self.times],
        }


def _timed_call(fn: Callable[[], object], setup, sync) -> float:
    if setup is not None:
        setup()
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - start


def measure(
    fn: Callable[[], object],
    *,
    setup: Optional[Callable[[], object]] = None,
    sync: Optional[Callable[[], object]] = None,
    min_time: float = 0.3,
    min_reps: int = 3,
    max_reps: int = 10_000,
    warmup: int = 1,
    reps: Optional[int] = None,
) -> Measurement:
    """Time `fn()`: `warmup` untimed calls, then enough timed calls to fill about
    `min_time` seconds (at least `min_reps`, at most `max_reps`), or exactly `reps`
    calls when given. Returns every timed repetition; use `.median`.

    The first call of a kernel often pays one-time costs (thread pool start-up, page
    faults of freshly allocated memory), so warm-up calls are not counted. When one
    warm-up call already takes longer than `min_time`, a single warm-up is enough.
    The garbage collector is paused while timing.
    """
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        estimate = None
        for i in range(warmup):
            estimate = _timed_call(fn, setup, sync)
            if estimate >= min_time:
                break
        if reps is None:
            if estimate is None:
                # No warm-up: the first timed call is the estimate.
                first = _timed_call(fn, setup, sync)
                result = Measurement([first])
                estimate = first
            else:
                result = Measurement()
            wanted = math.ceil(min_time / max(estimate, 1e-9))
            wanted = max(min_reps, min(max_reps, wanted))
        else:
            result = Measurement()
            wanted = reps
        while result.reps < wanted:
            result.times.append(_timed_call(fn, setup, sync))
        return result
    finally:
        if gc_was_enabled:
            gc.enable()


class Progress:
    """One line per step on stderr, with the time elapsed since the start."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        self.stream.write(f"[{self.elapsed:7.1f}s] {message}\n")
        self.stream.flush()


def fmt_ms(ms: Optional[float]) -> str:
    """A time in milliseconds with about four significant digits."""
    if ms is None:
        return "-"
    if ms >= 1000:
        return f"{ms:,.0f}"
    if ms >= 100:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(r: Optional[float]) -> str:
    if r is None or not math.isfinite(r):
        return "-"
    if r >= 100:
        return f"{r:.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x"


def cpu_model() -> str:
    """The CPU's model name, as lscpu (or /proc/cpuinfo) reports it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def last_level_cache_bytes() -> Optional[int]:
    """Size of the largest CPU cache (Linux sysfs, else sysconf); None when unknown."""
    sizes = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            try:
                with open(os.path.join(base, entry, "size")) as f:
                    text = f.read().strip().upper()
            except OSError:
                continue
            scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            digits = text.rstrip("KMG")
            if digits.isdigit():
                sizes.append(int(digits) * scale)
    except OSError:
        pass
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            size = os.sysconf(name)
        except (ValueError, OSError, AttributeError):
            continue
        if size and size > 0:
            sizes.append(int(size))
    return max(sizes) if sizes else None


class OtherLoad:
    """How much CPU other processes used while something ran (Linux /proc/stat).

    Busy time of the whole machine minus this process's own CPU time (all its threads),
    divided by the wall time: the average number of cores other work kept busy. Timings
    taken while it is well above 0 are suspect on a small machine.

        probe = OtherLoad(); probe.start(); ...; cores = probe.stop()   # None if unknown
    """

    def __init__(self):
        self._t0 = None

    @staticmethod
    def _machine_busy_seconds():
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        busy = sum(ticks) - ticks[3] - ticks[4]
        return busy / os.sysconf("SC_CLK_TCK")

    def _sample(self):
        busy = self._machine_busy_seconds()
        own = os.times()
        return busy, own.user + own.system, time.perf_counter()

    def start(self):
        self._t0 = self._sample()

    def stop(self) -> Optional[float]:
        if self._t0 is None or self._t0[0] is None:
            return None
        busy1, own1, wall1 = self._sample()
        busy0, own0, wall0 = self._t0
        wall = wall1 - wall0
        if busy1 is None or wall <= 0.25:  # clock ticks are 10 ms: too coarse below this
            return None
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / wall)
