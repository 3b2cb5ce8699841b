"""Timing helpers shared by the fusedce benchmark scripts.

Everything here is plain Python: a `measure` function (warm-up, then an adaptive
number of repetitions, median of wall-clock times from `time.perf_counter`), a
`measure_interleaved` function that times several callables in alternating rounds (so
that a kernel and the copy it is divided by are measured close together in time), a
`Ratio` of two such measurements with its spread, a small progress reporter that writes
to stderr (so a table printed on stdout stays clean), a `Report` that prints lines and
keeps them for a file, and a description of the machine for the report header.

`measure` takes an optional `setup` callable, run before every repetition and not
timed (e.g. to refresh a scratch buffer that an in-place kernel overwrites), and an
optional `sync` callable run after every repetition inside the timed region (e.g.
a device synchronisation for GPU work).
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence


_GROUPS = itertools.count(1)


@dataclass
class Measurement:
    """Wall-clock times of one benchmarked callable, in seconds.

    `times` holds every timed repetition in the order they ran, `rounds` the round each
    one belongs to (empty: one round, as `measure` gives). `group` names the
    `measure_interleaved` call that took them: two measurements of one group ran their
    round r at about the same moment, so they can be compared round by round. `anchor`
    (optional) is a measurement of the same group that gauges the machine's speed (a
    plain copy): `ratio_of` compares measurements of different groups through theirs.
    """

    times: List[float] = field(default_factory=list)
    rounds: List[int] = field(default_factory=list)
    group: Optional[int] = None
    anchor: Optional["Measurement"] = field(default=None, repr=False, compare=False)

    def by_round(self) -> Dict[int, float]:
        """The fastest call of each round, {round: seconds}: other work on the machine
        only ever adds time to a call, so the fastest of a short batch is the one it
        disturbed least. Without rounds (`measure`): {0: the median call}."""
        if not self.rounds:
            return {0: statistics.median(self.times)}
        per: Dict[int, List[float]] = {}
        for r, t in zip(self.rounds, self.times):
            per.setdefault(r, []).append(t)
        return {r: min(v) for r, v in sorted(per.items())}

    @property
    def median(self) -> float:
        """The median over the rounds of each round's fastest call (`measure`: the
        median call)."""
        return statistics.median(self.by_round().values())

    @property
    def reps(self) -> int:
        return len(self.times)

    @property
    def n_rounds(self) -> int:
        return len(set(self.rounds)) if self.rounds else 1

    @property
    def median_ms(self) -> float:
        return self.median * 1e3

    def as_dict(self) -> dict:
        return {
            "median_ms": self.median_ms,
            "min_ms": min(self.times) * 1e3,
            "max_ms": max(self.times) * 1e3,
            "reps": self.reps,
            "rounds": self.n_rounds,
            "group": self.group,
            "round_ms": {r: t * 1e3 for r, t in self.by_round().items()},
            "times_ms": [t * 1e3 for t in self.times],
            "round_of_rep": list(self.rounds),
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


@dataclass
class Op:
    """One callable for `measure_interleaved`.

    setup: run before every call, untimed. prepare: run before each batch of calls (and
    before the warm-up), untimed, when the op before it had another prepare: e.g. set
    the thread count its batch runs with. warmup: untimed calls before the first round
    (0: the first timed call, in round 0, is the estimate). min_rounds: when `max_time`
    limits a slow op to fewer rounds than the others, it still takes part in at least
    this many (spread over the run).
    """

    name: str
    fn: Callable[[], object]
    setup: Optional[Callable[[], object]] = None
    prepare: Optional[Callable[[], object]] = None
    warmup: int = 1
    min_rounds: int = 3


def _spread_rounds(n: int, total: int) -> List[int]:
    """n of the rounds 0 .. total-1, evenly spread, the first (and for n > 1 the last)
    included."""
    if n >= total:
        return list(range(total))
    if n <= 1:
        return [0]
    return sorted({round(i * (total - 1) / (n - 1)) for i in range(n)})


def measure_interleaved(
    ops: Sequence[Op],
    *,
    rounds: int = 5,
    min_time: float = 0.3,
    min_reps: int = 3,
    max_reps: int = 10_000,
    max_time: Optional[float] = None,
    reps: Optional[int] = None,
    sync: Optional[Callable[[], object]] = None,
) -> Dict[str, object]:
    """Time several callables in `rounds` alternating rounds: each round runs a short
    batch of every op, one op after the other, and the order rotates from round to
    round. Two ops' batches of one round are then at most one round apart in time, so
    a ratio of their times taken round by round (see `Ratio`) follows a machine whose
    speed moves from second to second (other processes, other tenants of a VM), where
    two measurements taken one after the other in blocks would not.

    Per op: `warmup` untimed calls (see `Op`), which also estimate its time; then about
    `min_time` seconds of timed calls spread over the rounds, at least one call per
    round, and at least `min_reps` per round where that many fit in twice the op's
    share of a round (so that a round's fastest call is likely an undisturbed one), at
    most `max_reps` in all. With `max_time`, an op slower than max_time / rounds takes
    part in only about max_time / (its time) rounds (at least its `min_rounds`), spread
    over the run. `reps` instead asks for exactly that many calls per op, spread over
    the rounds.

    Returns {op name: Measurement}, or the exception an op raised (it is then left out
    of the following rounds). The garbage collector is paused while timing.
    """
    group = next(_GROUPS)
    out: Dict[str, object] = {}
    plan: Dict[str, tuple] = {}  # name -> (rounds it runs in, calls per round)

    def make_plan(op, estimate):
        if reps is not None:
            n = max(1, min(rounds, reps))
            return set(_spread_rounds(n, rounds)), max(1, math.ceil(reps / n))
        estimate = max(estimate, 1e-9)
        n = rounds
        if max_time is not None:
            n = min(rounds, max(op.min_rounds, int(max_time // estimate)))
        n = max(1, n)
        share = min_time / n
        k = max(1, math.ceil(share / estimate), min(min_reps, int(2 * share // estimate)))
        return set(_spread_rounds(n, rounds)), max(1, min(k, max_reps // n))

    prepared = [None]  # the prepare callable run last

    def prepare(op):
        if op.prepare is not None and op.prepare is not prepared[0]:
            op.prepare()
            prepared[0] = op.prepare

    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        live = []
        for op in ops:
            try:
                prepare(op)
                estimate = None
                for _ in range(op.warmup):
                    estimate = _timed_call(op.fn, op.setup, sync)
                    if estimate >= min_time:
                        break
            except Exception as exc:  # one broken op must not end the others
                out[op.name] = exc
                continue
            out[op.name] = Measurement(group=group)
            if estimate is not None:
                plan[op.name] = make_plan(op, estimate)
            live.append(op)
        for r in range(rounds):
            shift = r % len(live) if live else 0
            for op in live[shift:] + live[:shift]:
                m = out[op.name]
                if not isinstance(m, Measurement):
                    continue  # failed in an earlier round
                if op.name in plan and r not in plan[op.name][0]:
                    continue
                try:
                    prepare(op)
                    done = 0
                    if op.name not in plan:  # no warm-up: the first call is the estimate
                        first = _timed_call(op.fn, op.setup, sync)
                        m.times.append(first)
                        m.rounds.append(r)
                        plan[op.name] = make_plan(op, first)
                        done = 1
                    which, k = plan[op.name]
                    if r not in which:
                        continue
                    for _ in range(k - done):
                        m.times.append(_timed_call(op.fn, op.setup, sync))
                        m.rounds.append(r)
                except Exception as exc:
                    out[op.name] = exc
        return out
    finally:
        if gc_was_enabled:
            gc.enable()


def _quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of values, linear between order statistics."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@dataclass
class Ratio:
    """a / b for two measurements, with a spread that says how far it can be trusted.

    When both come from one `measure_interleaved` call (same group), each round gives a
    ratio of two batches timed moments apart; `value` is the median of those per-round
    ratios and `lo` .. `hi` their range (with SPREAD_QUANTILE > 0, the range of the
    middle ones, SPREAD_QUANTILE to 1 - SPREAD_QUANTILE); `paired` is True. When they
    come from different calls but each has an anchor in its own group, a / b = (a / a's
    anchor) / (b / b's anchor): a machine that got slower between the two calls slows
    the anchors alike, so that drift drops out; `lo` .. `hi` is then lo_a / hi_b ..
    hi_a / lo_b. Otherwise `value` is the ratio of the two medians and `lo` .. `hi` is
    formed the same way from each one's own spread over its rounds. `n` is the number of
    rounds it rests on (the fewer of the two; 1: no spread known).
    """

    value: float
    lo: float
    hi: float
    n: int
    paired: bool

    @property
    def spread(self) -> Optional[float]:
        """Half the width of lo .. hi relative to value (0.05 = +-5 %); None if unknown."""
        if self.n < 2 or not self.value > 0:
            return None
        return (self.hi - self.lo) / 2 / self.value

    def as_dict(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "rounds": self.n,
                "paired": self.paired}


# 0: a ratio's spread is the whole range of its per-round ratios. On a busy machine the
# speed moves over seconds, so the rounds of one run are alike and the next run differs
# more than they do: a narrower band (the quartiles, 0.25) left most of the next runs'
# figures outside it.
SPREAD_QUANTILE = 0.0


def ratio_of(a: Optional[Measurement], b: Optional[Measurement]) -> Optional[Ratio]:
    """Ratio(a / b) or None when either is missing."""
    if not isinstance(a, Measurement) or not isinstance(b, Measurement):
        return None
    if a.group is None or a.group != b.group:
        ta, tb = a.anchor, b.anchor
        if (isinstance(ta, Measurement) and isinstance(tb, Measurement)
                and ta.group == a.group and tb.group == b.group and a.group is not None):
            xa, xb = ratio_of(a, ta), ratio_of(b, tb)
            if xa is not None and xb is not None and xb.value > 0 and xb.lo > 0:
                return Ratio(xa.value / xb.value, xa.lo / xb.hi, xa.hi / xb.lo,
                             min(xa.n, xb.n), False)
    ra, rb = a.by_round(), b.by_round()
    q = SPREAD_QUANTILE
    common = sorted(set(ra) & set(rb)) if a.group is not None and a.group == b.group else []
    if common and all(rb[r] > 0 for r in common):
        per = [ra[r] / rb[r] for r in common]
        return Ratio(statistics.median(per), _quantile(per, q), _quantile(per, 1 - q),
                     len(per), True)
    va, vb = list(ra.values()), list(rb.values())
    if not va or not vb or min(vb) <= 0:
        return None
    n = min(len(va), len(vb))
    return Ratio(statistics.median(va) / statistics.median(vb),
                 _quantile(va, q) / _quantile(vb, 1 - q),
                 _quantile(va, 1 - q) / _quantile(vb, q), n, False)


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


class Report:
    """Lines printed on stdout as they come (a cut-off run still shows them) and kept, to be
    written to a file at the end: ``say(line)``, then ``say.write(path)``."""

    def __init__(self):
        self.lines: List[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def write(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            fh.write("\n".join(self.lines) + "\n")


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


def fmt_ratio(r) -> str:
    """A ratio (a float or a Ratio) as '2.43x'; a Ratio with a known spread as
    '2.43x ±6%'."""
    if isinstance(r, Ratio):
        spread = r.spread
        text = fmt_ratio(r.value)
        if spread is None or text == "-":
            return text
        return f"{text} ±{spread * 100:.0f}%"
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
