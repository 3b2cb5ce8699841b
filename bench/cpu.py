#!/usr/bin/env python3
"""CPU benchmark of fusedce against the memory floor, PyTorch and the NumPy reference.

    python bench/cpu.py                  # default shapes, 1 thread and all cores
    python bench/cpu.py --quick          # 5-15 s: small shapes (smoke test / demo)
    python bench/cpu.py --shapes 8192x32000 --threads 1
    python bench/cpu.py --plot fusion.png --out table.md --json raw.json

    python bench/cpu.py --dtype bfloat16 --shapes 8192x32000 --threads 1   # half rows

Prints markdown tables on stdout; progress goes to stderr. For every shape (logits N x C
of --dtype, float32 by default; int64 class targets, reduction="mean") and every thread
count it times (bytes are counted at the dtype's width: a float16 or bfloat16 copy moves
half the bytes of a float32 one):

  floors     copy: np.copyto of the logits into a preallocated, already-touched buffer
             (read + write of N x C: the bytes a forward+backward must move);
             read: x.max(), one streaming read of the logits (NumPy's SIMD max reaches
             memory bandwidth here; sum/add.reduce are compute-bound on one core).
             At t > 1 threads each floor is also run on t Python threads, one contiguous
             chunk each (NumPy releases the GIL), and the faster of the two is the floor.
  fused      fusedce.cross_entropy (forward only);
             fusedce.cross_entropy_with_grad(out=preallocated) and (inplace=True on a
             scratch copy refreshed from the logits before each repetition, untimed);
             the same out= call on 16 x 10 logits of the dtype, whose time is almost all
             the per-call cost outside the kernel (Python, argument checks).
  unfused    our own kernels one after the other: log_softmax(out=) -> nll_loss for
             the forward; then nll_loss_backward(out=) -> log_softmax_backward(out=).
  torch      F.cross_entropy forward (no_grad) and forward + torch.autograd.grad
             (torch optional: its columns are skipped when it does not import).
  numpy      fusedce.reference.cross_entropy_with_grad (float64 NumPy, single-threaded;
             one repetition on big shapes; skipped above --ref-max-elems unless --all).

Timing: every op of a shape at every thread count, the floors included (and of several
shapes when they are small: --group-mb), is timed together in interleaved rounds (5; 9
with --quick): a warm-up call each, then in every round a short batch of each op in turn
(~0.3 s per op in all; 0.1 s with --quick). A time is the median over the rounds of each
round's fastest call (other work only ever adds time to a call). A ratio (time / floor,
or one op over another) is the median of the per-round ratios, each from two batches
timed moments apart, so a machine whose speed drifts slows both alike; the tables print
it with its spread: ±, half the range of the per-round ratios relative to the median.
The NumPy reference runs in rounds of its own, with a one-thread copy as its floor.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import (  # noqa: E402
    SPREAD_QUANTILE,
    Measurement,
    Op,
    OtherLoad,
    Progress,
    cpu_model,
    fmt_ms,
    fmt_ratio,
    last_level_cache_bytes,
    measure_interleaved,
    ratio_of,
    usable_cores,
)

DEFAULT_SHAPES = ("4096x1000,8192x32000,1024x128256,65536x10,512x262144,"
                  "32768x600,65536x128,16384x2000,64x1000000")
QUICK_SHAPES = "2048x1000,8192x10"
PLOT_CLASSES = (10, 100, 1000, 10000, 32000, 128256)

# Names of the timed operations, in table order.
FLOOR_COPY, FLOOR_READ = "copy", "read"
FUSED_FWD, FUSED_FB, FUSED_FB_INPLACE = "fused_fwd", "fused_fwdbwd", "fused_fwdbwd_inplace"
FUSED_CALL = "fused_fwdbwd_16x10"  # the per-call cost: the out= call on 16 x 10 logits
CALL_SHAPE = (16, 10)
UNFUSED_FWD, UNFUSED_FB = "unfused_fwd", "unfused_fwdbwd"
TORCH_FWD, TORCH_FB = "torch_fwd", "torch_fwdbwd"
# --lm-options: the fused forward+backward with z-loss, a softcap, both (out= and in place),
# and PyTorch computing the same loss with its own ops
LM_Z, LM_CAP, LM_BOTH, LM_BOTH_INPLACE, LM_TORCH = (
    "fused_fwdbwd_zloss", "fused_fwdbwd_softcap", "fused_fwdbwd_both",
    "fused_fwdbwd_both_inplace", "torch_fwdbwd_both")
LM_Z_LOSS, LM_SOFTCAP = 1e-4, 30.0
NUMPY_FB = "numpy_fwdbwd"
NUMPY_COPY = "numpy_copy"  # the copy timed in the reference's own rounds


# ----------------------------------------------------------------------------- setup


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            n, c = (int(v) for v in item.split("x"))
        except ValueError:
            raise SystemExit(f"--shapes: cannot read {item!r}; expected NxC, e.g. 8192x32000")
        if n < 1 or c < 1:
            raise SystemExit(f"--shapes: {item!r} must have N >= 1 and C >= 1")
        shapes.append((n, c))
    if not shapes:
        raise SystemExit("--shapes: no shape given")
    return shapes


def parse_threads(text, cores):
    if text is None:
        return [1, cores] if cores > 1 else [1]
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        t = cores if item in ("all", "max") else int(item)
        if t < 1:
            raise SystemExit("--threads: thread counts must be >= 1")
        if t not in out:
            out.append(t)
    return out


def import_torch(enabled):
    if not enabled:
        return None, None
    try:
        import torch
        import torch.nn.functional as F
    except Exception as exc:  # torch is optional; any import failure means "no torch"
        sys.stderr.write(f"torch not available ({type(exc).__name__}: {exc}); "
                         "skipping PyTorch columns\n")
        return None, None
    return torch, F


def logit_dtype(name):
    """The NumPy dtype of --dtype NAME (bfloat16 from ml_dtypes)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise SystemExit("--dtype bfloat16 needs ml_dtypes: pip install ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def make_inputs(n, c, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c), dtype=np.float32)
    x *= 3.0
    if np.dtype(dtype) != np.float32:
        x = x.astype(dtype)
    target = rng.integers(0, c, size=n, dtype=np.int64)
    return x, target


def as_torch(a):
    """A CPU tensor sharing a's memory (NumPy has no bfloat16: through its bits)."""
    import torch
    if a.dtype.itemsize == 2 and a.dtype != np.float16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def readable(a):
    """a, or for half types its 16-bit patterns: the same bytes, which NumPy's max reads at
    memory speed (its float16 / ml_dtypes max converts each value)."""
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a


def touched_like(x):
    """A preallocated buffer shaped like x whose pages are already mapped."""
    buf = np.empty_like(x)
    np.copyto(buf, x)
    return buf


class Floors:
    """Copy and read floors run on t Python threads over contiguous chunks."""

    def __init__(self, threads):
        self.threads = threads
        self.pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()

    def _chunks(self, a):
        flat = a.reshape(-1)
        return np.array_split(flat, self.threads) if self.threads > 1 else [flat]

    def copy_fn(self, src, dst):
        if self.pool is None:
            return lambda: np.copyto(dst, src)
        pairs = list(zip(self._chunks(src), self._chunks(dst)))
        pool = self.pool

        def run():
            list(pool.map(lambda p: np.copyto(p[1], p[0]), pairs))
        return run

    def read_fn(self, src):
        src = readable(src)
        if self.pool is None:
            return lambda: src.max()
        parts = [p for p in self._chunks(src) if p.size]
        pool = self.pool

        def run():
            return max(pool.map(lambda p: p.max(), parts))
        return run


# ----------------------------------------------------------------------------- measuring


class Runner:
    def __init__(self, args, fc, torch, F, progress):
        self.args = args
        self.fc = fc
        self.torch = torch
        self.F = F
        self.progress = progress
        self.records = []  # raw results for --json
        self.context = {}  # shape and threads of what is being timed, for the records
        self.noisy = set()  # (shape, threads, op) timed while other processes were busy

    def timed(self, items):
        """Measure ops interleaved in rounds (measure_interleaved); store and report them.
        items: (label, context, key, Op) tuples, Op names unique. Returns {op name:
        Measurement}; an op that failed is left out."""
        a = self.args
        opts = dict(rounds=a.rounds, min_time=a.min_time, min_reps=a.min_reps,
                    max_time=3 * a.min_time)
        if a.reps is not None:
            opts["reps"] = a.reps
        labels = list(dict.fromkeys(label for label, _, _, _ in items))
        self.progress(f"timing {len(items)} ops in {a.rounds} interleaved rounds: "
                      + ", ".join(labels))
        probe = OtherLoad()
        probe.start()
        try:
            got = measure_interleaved([op for _, _, _, op in items], **opts)
        except MemoryError:
            self.progress(f"{items[0][0]}...: out of memory, skipped")
            return {}
        other = probe.stop()
        busy = other is not None and other > a.max_other_load
        res = {}
        for label, context, key, op in items:
            m = got.get(op.name)
            if isinstance(m, MemoryError):
                self.progress(f"{label} {key}: out of memory, skipped")
            elif isinstance(m, Exception):  # keep going: one broken op must not end a run
                self.progress(f"{label} {key}: FAILED ({type(m).__name__}: {m})")
                self.records.append(dict(context, op=key, error=f"{type(m).__name__}: {m}"))
            elif isinstance(m, Measurement) and m.reps:
                self.progress(f"{label} {key:<22} {fmt_ms(m.median_ms):>9} ms  "
                              f"({m.reps} reps in {m.n_rounds} rounds)")
                self.records.append(dict(context, op=key, other_load_cores=other,
                                         **m.as_dict()))
                res[op.name] = m
                if busy:
                    self.noisy.add((tuple(context.get("shape", ())), context.get("threads"),
                                    key))
        if busy:
            self.progress(f"other processes kept {other:.2f} cores busy during those "
                          "timings: noisy")
        return res

    def set_threads(self, threads):
        self.fc.set_num_threads(threads)
        if self.torch is not None:
            self.torch.set_num_threads(threads)

    def setting_ops(self, x, target, bufs, threads, label, sweep=False):
        """The ops of one (shape, threads) setting: [(key, Op)], Op names prefixed with
        label, and the Floors objects to close afterwards. With sweep=True (the --plot
        sweep) only the copy floor and the forward+backward ops."""
        fc, torch, F = self.fc, self.torch, self.F
        out, scratch, dlogp = bufs
        prepare = functools.partial(self.set_threads, threads)

        # The floor for t threads is the faster of the copy (read) on one thread and on t
        # threads: for small arrays the thread hand-off costs more than it saves.
        floors = {ft: Floors(ft) for ft in sorted({1, threads})}
        ops = []
        for key in ([FLOOR_COPY] if sweep else [FLOOR_COPY, FLOOR_READ]):
            for ft, fl in floors.items():
                fn = fl.copy_fn(x, out) if key == FLOOR_COPY else fl.read_fn(x)
                ops.append((f"{key} ({ft} thr)", fn, None))
        if not sweep:
            ops.append((FUSED_FWD, lambda: fc.cross_entropy(x, target), None))
        ops.append((FUSED_FB, lambda: fc.cross_entropy_with_grad(x, target, out=out), None))
        if not sweep:
            xs, ts = make_inputs(*CALL_SHAPE, self.args.seed, x.dtype)
            outs = touched_like(xs)
            ops.append((FUSED_CALL, lambda: fc.cross_entropy_with_grad(xs, ts, out=outs), None))
        if not sweep and not self.args.no_inplace:
            ops.append((FUSED_FB_INPLACE,
                        lambda: fc.cross_entropy_with_grad(scratch, target, inplace=True),
                        lambda: np.copyto(scratch, x)))
        if self.args.lm_options and not sweep:
            z, cap = dict(z_loss=LM_Z_LOSS), dict(softcap=LM_SOFTCAP)
            both = dict(z, **cap)
            ops += [(LM_Z, lambda: fc.cross_entropy_with_grad(x, target, out=out, **z), None),
                    (LM_CAP, lambda: fc.cross_entropy_with_grad(x, target, out=out, **cap), None),
                    (LM_BOTH, lambda: fc.cross_entropy_with_grad(x, target, out=out, **both), None),
                    (LM_BOTH_INPLACE,
                     lambda: fc.cross_entropy_with_grad(scratch, target, inplace=True, **both),
                     lambda: np.copyto(scratch, x))]
            if torch is not None:
                ops.append((LM_TORCH, self._torch_lm_fb(x, target), None))
        if not self.args.no_unfused:
            if not sweep:
                ops.append((UNFUSED_FWD, self._unfused(x, target, bufs, backward=False), None))
            ops.append((UNFUSED_FB, self._unfused(x, target, bufs), None))
        if torch is not None:
            xt = as_torch(x)
            tt = torch.from_numpy(target)

            def torch_fwd():
                with torch.no_grad():
                    return F.cross_entropy(xt, tt)

            if not sweep:
                ops.append((TORCH_FWD, torch_fwd, None))
            ops.append((TORCH_FB, self._torch_fb(x, target), None))
        return ([(key, Op(f"{label} {key}", fn, setup=setup, prepare=prepare))
                 for key, fn, setup in ops], list(floors.values()))

    # Several (shape, threads) settings: every op of every setting, floors included, timed
    # together in interleaved rounds, so that each ratio to a floor comes from timings
    # taken moments apart, and each setting's rounds spread over the whole call.
    def run_settings(self, settings, sweep=False):
        """settings: dicts with x, target, bufs, threads, label, context. Returns one
        {op: Measurement} per setting."""
        items, per_setting, to_close = [], [], []
        try:
            for st in settings:
                ops, floors = self.setting_ops(st["x"], st["target"], st["bufs"],
                                               st["threads"], st["label"], sweep)
                to_close += floors
                items += [(st["label"], st["context"], key, op) for key, op in ops]
                per_setting.append(ops)
            got = self.timed(items)
        finally:
            for fl in to_close:
                fl.close()
        results = []
        for ops in per_setting:
            mine = {key: got.get(op.name) for key, op in ops}
            # the one-thread copy, timed in every round, anchors this setting's timings
            # for comparisons with other calls' (the NumPy reference's rounds)
            anchor = mine.get(f"{FLOOR_COPY} (1 thr)")
            for m in mine.values():
                if m is not None:
                    m.anchor = anchor
            res = {}
            for fkey in ([FLOOR_COPY] if sweep else [FLOOR_COPY, FLOOR_READ]):
                variants = [m for key, m in mine.items()
                            if key.startswith(fkey + " (") and m is not None]
                res[fkey] = min(variants, key=lambda m: m.median) if variants else None
            res.update({key: m for key, m in mine.items()
                        if not key.startswith((FLOOR_COPY + " (", FLOOR_READ + " ("))})
            results.append(res)
        return results

    def run_setting(self, x, target, bufs, threads, label, sweep=False):
        context = dict(self.context, shape=list(x.shape), threads=threads)
        return self.run_settings([dict(x=x, target=target, bufs=bufs, threads=threads,
                                       label=label, context=context)], sweep=sweep)[0]

    def _unfused(self, x, target, bufs, backward=True):
        """Our own kernels one after the other, into preallocated buffers."""
        fc = self.fc
        out, logp, dlogp = bufs

        def forward():
            fc.log_softmax(x, out=logp)
            return fc.nll_loss(logp, target)

        def forward_backward():
            fc.log_softmax(x, out=logp)
            loss = fc.nll_loss(logp, target)
            fc.nll_loss_backward(1.0, logp, target, out=dlogp)
            fc.log_softmax_backward(dlogp, logp, out=out)
            return loss

        return forward_backward if backward else forward

    def _torch_fb(self, x, target):
        """PyTorch forward + backward: F.cross_entropy, then autograd.grad (a fresh
        gradient each time, as after zero_grad(set_to_none=True))."""
        torch, F = self.torch, self.F
        xg = as_torch(x).requires_grad_(True)
        tt = torch.from_numpy(target)

        def run():
            loss = F.cross_entropy(xg, tt)
            (grad,) = torch.autograd.grad(loss, xg)
            return grad

        return run

    def _torch_lm_fb(self, x, target):
        """PyTorch forward + backward of the same z-loss + softcap loss, with its own ops
        (F.cross_entropy of softcap * tanh(x / softcap), plus z_loss * mean(lse^2))."""
        torch, F = self.torch, self.F
        xg = as_torch(x).requires_grad_(True)
        tt = torch.from_numpy(target)

        def run():
            xc = LM_SOFTCAP * torch.tanh(xg / LM_SOFTCAP)
            loss = F.cross_entropy(xc, tt) + LM_Z_LOSS * torch.logsumexp(xc, 1).square().mean()
            (grad,) = torch.autograd.grad(loss, xg)
            return grad

        return run

    def check(self, x, target, bufs, label):
        """Cheap sanity check that every path computes the same loss and gradient."""
        fc, torch, F = self.fc, self.torch, self.F
        out, scratch, dlogp = bufs
        try:
            # unfused: logp in scratch, dlogp, gradient in out; then fused gradient over dlogp
            fc.log_softmax(x, out=scratch)
            loss_u = fc.nll_loss(scratch, target)
            fc.nll_loss_backward(1.0, scratch, target, out=dlogp)
            fc.log_softmax_backward(dlogp, scratch, out=out)
            loss_f, _ = fc.cross_entropy_with_grad(x, target, out=dlogp)
            # gradient entries are O(1/N) for reduction="mean": scale the difference by N;
            # compare at most ~4096 rows spread over the batch (no N x C temporary)
            step = max(1, x.shape[0] // 4096)
            diff = out[::step].astype(np.float32) - dlogp[::step].astype(np.float32)
            grad_rel = float(np.max(np.abs(diff))) * x.shape[0]
            losses = {"fused": float(loss_f), "unfused": float(loss_u)}
            if torch is not None:
                with torch.no_grad():
                    losses["torch"] = float(F.cross_entropy(as_torch(x),
                                                            torch.from_numpy(target)))
        except Exception as exc:
            self.progress(f"{label} check FAILED ({type(exc).__name__}: {exc})")
            return
        ref = losses["fused"]
        # half rows: the unfused path stores log_softmax rounded to the half type, and
        # PyTorch computes a half loss (8 bits of mantissa in bfloat16)
        half = x.dtype.itemsize == 2
        loss_tol, grad_tol = (2e-2, 5e-2) if half else (1e-4, 1e-3)
        bad = [k for k, v in losses.items() if not abs(v - ref) <= loss_tol * max(1.0, abs(ref))]
        if grad_rel > grad_tol:
            bad.append("gradient")
        msg = ", ".join(f"{k} {v:.6f}" for k, v in losses.items())
        status = "MISMATCH in " + ", ".join(bad) if bad else "ok"
        self.progress(f"{label} check {status}: loss {msg}; "
                      f"max |grad fused - unfused| * N = {grad_rel:.2e}")
        self.records.append(dict(self.context, op="check", losses=losses,
                                 grad_maxdiff_times_n=grad_rel, ok=not bad))

    def run_reference(self, x, target, out, label, context):
        """The NumPy reference, interleaved with a one-thread copy of the logits into out
        (its floor, measured in the same rounds). Returns (reference, copy) Measurements."""
        ref = self.fc.reference
        self.set_threads(1)
        got = self.timed([
            (label, context, NUMPY_COPY, Op(f"{label} {NUMPY_COPY}", lambda: np.copyto(out, x))),
            # no warm-up (it is slow and has no one-time costs); on big shapes one call
            (label, context, NUMPY_FB,
             Op(f"{label} {NUMPY_FB}", lambda: ref.cross_entropy_with_grad(x, target),
                warmup=0, min_rounds=self.args.ref_rounds)),
        ])
        copy, m = got.get(f"{label} {NUMPY_COPY}"), got.get(f"{label} {NUMPY_FB}")
        for each in (copy, m):
            if each is not None:
                each.anchor = copy
        return m, copy


def shape_groups(shapes, budget_bytes):
    """Consecutive shapes whose logits and buffers (4 x N x C float32) fit in budget_bytes
    together, timed in the same rounds; a bigger shape stands alone."""
    groups, size = [], 0
    for n, c in shapes:
        need = 16 * n * c
        if groups and size + need <= budget_bytes:
            groups[-1].append((n, c))
            size += need
        else:
            groups.append([(n, c)])
            size = need
    return groups


def run_shapes(runner, shapes, threads_list, args):
    """All shapes x thread counts. Returns {(n, c): {threads: {op: Measurement}}}.
    Small consecutive shapes are timed together: every thread count of every shape of a
    group in the same interleaved rounds."""
    results = {}
    progress = runner.progress
    index = {shape: i for i, shape in enumerate(shapes, 1)}
    for group in shape_groups(shapes, args.group_mb * 2**20):
        data, settings = {}, []
        for n, c in group:
            label0 = f"({index[(n, c)]}/{len(shapes)}) {n}x{c}"
            progress(f"{label0}: generating {n * c * args.itemsize / 2**20:.0f} MiB of logits")
            x, target = make_inputs(n, c, args.seed, args.logit_dtype)
            bufs = (touched_like(x), touched_like(x), touched_like(x))
            data[(n, c)] = (label0, x, target, bufs)
            for t in threads_list:
                settings.append(dict(x=x, target=target, bufs=bufs, threads=t,
                                     label=f"{label0} t={t}",
                                     context={"shape": [n, c], "threads": t}))
        got = runner.run_settings(settings)
        del settings
        for (n, c), (label0, x, target, bufs) in data.items():
            results[(n, c)] = {t: got.pop(0) for t in threads_list}
            if not args.no_check:
                # the agreement check, once per shape, at the last thread count
                runner.context = {"shape": [n, c], "threads": threads_list[-1]}
                runner.set_threads(threads_list[-1])
                runner.check(x, target, bufs, f"{label0} t={threads_list[-1]}")
        del x, target, bufs
        for n, c in group:
            # free two of the three buffers before the reference (~40 bytes a logit)
            label0, x, target, bufs = data.pop((n, c))
            out = bufs[0]
            del bufs
            gc.collect()
            ref = ref_copy = None
            if args.no_reference:
                pass
            elif n * c > args.ref_max_elems and not args.all:
                progress(f"{label0}: numpy reference skipped ({n * c:,} elements > "
                         f"--ref-max-elems {args.ref_max_elems:,}; use --all)")
            else:
                ref, ref_copy = runner.run_reference(x, target, out, f"{label0} numpy",
                                                     {"shape": [n, c], "threads": 1})
            for t in threads_list:
                results[(n, c)][t][NUMPY_FB] = ref
                results[(n, c)][t][NUMPY_COPY] = ref_copy
            del x, target, out
            gc.collect()
    return results


# ----------------------------------------------------------------------------- report


def ratio(a, b):
    """Ratio a / b of two Measurements (round by round where they ran in the same
    rounds, else through the one-thread copies of their own rounds), or None."""
    return ratio_of(a, b)


def cell(m, rat=None, noisy=False):
    """'ms (ratio ±spread)' for a Measurement m and its Ratio to a floor."""
    if m is None:
        return "-"
    text = fmt_ms(m.median_ms)
    if rat is not None:
        text += f" ({fmt_ratio(rat)})"
    return text + "*" if noisy else text


def json_ratios(r):
    """The table's ratios of one shape and thread count, for --json."""
    pairs = {f"{k}/read": (r.get(k), r.get(FLOOR_READ))
             for k in (FUSED_FWD, UNFUSED_FWD, TORCH_FWD)}
    pairs.update({f"{k}/copy": (r.get(k), r.get(FLOOR_COPY))
                  for k in (FUSED_FB, FUSED_FB_INPLACE, UNFUSED_FB, TORCH_FB)})
    pairs[f"{TORCH_FWD}/{FUSED_FWD}"] = (r.get(TORCH_FWD), r.get(FUSED_FWD))
    pairs[f"{TORCH_FB}/{FUSED_FB}"] = (r.get(TORCH_FB), r.get(FUSED_FB))
    pairs[f"{NUMPY_FB}/copy"] = (r.get(NUMPY_FB), r.get(FLOOR_COPY))
    pairs[f"{NUMPY_FB}/{FUSED_FB}"] = (r.get(NUMPY_FB), r.get(FUSED_FB))
    out = {k: ratio(a, b) for k, (a, b) in pairs.items()}
    return {k: v.as_dict() for k, v in out.items() if v is not None}


def noisy_test(noisy):
    """is_noisy(n, c, threads, op): was that timing taken while other work ran?"""
    def is_noisy(n, c, t, op):
        for shape, threads, key in noisy:
            if shape != (n, c) or (threads != t and op != NUMPY_FB):
                continue
            if key == op or key.startswith(op + " ("):
                return True
        return False
    return is_noisy


def shape_label(n, c, itemsize=4):
    mib = n * c * itemsize / 2**20
    size = f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB" if mib >= 1 else \
        f"{mib * 1024:.0f} KiB"
    return f"{n}x{c} ({size})"


def render(results, threads_list, meta, has_torch, has_ref, cache_bytes, noisy=()):
    nz = noisy_test(noisy)
    lines = []
    add = lines.append

    def table_head(head):
        add("| " + " | ".join(head) + " |")
        add("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")

    def floor_row(n, c, t, r, floor_key, keys):
        """shape, threads, the floor's time, then each op's time with its ratio to it."""
        floor = r.get(floor_key)
        return ([shape_label(n, c, meta["itemsize"]), str(t), cell(floor, None, nz(n, c, t, floor_key))]
                + [cell(r.get(k), ratio(r.get(k), floor), nz(n, c, t, k)) for k in keys])
    add("## fusedce CPU benchmark")
    add("")
    add(f"- machine: {meta['cpu']}, {meta['cores']} cores usable; "
        f"fusedce {meta['fusedce']} (SIMD {meta['simd']}), numpy {meta['numpy']}"
        + (f", torch {meta['torch']}" if has_torch else f", torch {meta['torch'] or 'absent'}"))
    if meta.get("streaming_mib") is not None:
        long_rows, short_rows = meta["streaming_mib"]
        add(f"- outputs are written with streaming stores from {long_rows:.0f} MiB with rows of 4 KiB "
            f"or more, from {short_rows:.0f} MiB with shorter rows (--stream-mib sets both)")
    add(f"- {meta['dtype']} logits N x C (normal * 3), int64 targets, reduction=\"mean\"; "
        f"times in ms (median over {meta['rounds']} interleaved rounds)")
    load = meta.get("other_load_at_start")
    if load is not None:
        add(f"- other processes kept {load:.2f} of {meta['cores']} cores busy at the start"
            + (" (busy machine: expect wide spreads)" if load > meta["max_other_load"] else ""))
    add("")
    add("### Forward (loss only): ms (time / one streaming read)")
    add("")
    head = ["shape", "threads", "read", "fused", "unfused (ours)"]
    if has_torch:
        head += ["torch", "fused vs torch"]
    table_head(head)
    for (n, c), per in results.items():
        for t in threads_list:
            r = per[t]
            keys = (FUSED_FWD, UNFUSED_FWD) + ((TORCH_FWD,) if has_torch else ())
            row = floor_row(n, c, t, r, FLOOR_READ, keys)
            if has_torch:
                row.append(fmt_ratio(ratio(r.get(TORCH_FWD), r.get(FUSED_FWD))))
            add("| " + " | ".join(row) + " |")
    add("")
    add("### Forward + backward (loss and gradient): ms (time / copy of the logits)")
    add("")
    head = ["shape", "threads", "copy", "fused out=", "fused inplace", "unfused (ours)",
            f"call {CALL_SHAPE[0]}x{CALL_SHAPE[1]} (us)"]
    if has_torch:
        head.append("torch")
    if has_ref:
        head.append("numpy ref")
    if has_torch:
        head.append("fused vs torch")
    if has_ref:
        head.append("fused vs numpy")
    table_head(head)
    for (n, c), per in results.items():
        for t in threads_list:
            r = per[t]
            keys = ((FUSED_FB, FUSED_FB_INPLACE, UNFUSED_FB) + ((TORCH_FB,) if has_torch else ())
                    + ((NUMPY_FB,) if has_ref else ()))
            row = floor_row(n, c, t, r, FLOOR_COPY, keys)
            call = r.get(FUSED_CALL)  # after the unfused column (see head)
            row.insert(6, "-" if call is None else f"{call.median_ms * 1000:.0f}")
            if has_torch:
                row.append(fmt_ratio(ratio(r.get(TORCH_FB), r.get(FUSED_FB))))
            if has_ref:
                row.append(fmt_ratio(ratio(r.get(NUMPY_FB), r.get(FUSED_FB))))
            add("| " + " | ".join(row) + " |")
    add("")
    add("Floors: copy = np.copyto into a touched buffer (read + write of N x C), "
        "read = x.max(); at t threads each floor is the faster of 1 and t threads. "
        "numpy ref = fusedce.reference (float64, single-threaded; '-' = skipped). "
        "fused = cross_entropy / cross_entropy_with_grad(out=); "
        "unfused = log_softmax -> nll_loss [-> nll_loss_backward -> log_softmax_backward]. "
        f"call = the fused out= call on {CALL_SHAPE[0]} x {CALL_SHAPE[1]} logits: its time is "
        "almost all per-call cost outside the kernel (Python, argument checks).")
    add("")
    q = round(SPREAD_QUANTILE * 100)
    band = "range" if q == 0 else f"{q}th to {100 - q}th percentile"
    add(f"Times: median over {meta['rounds']} interleaved rounds of each round's fastest "
        "call; every op of the shapes timed together (floors included) runs a short batch "
        "in each round. Ratios: median over the rounds of the ratio of the two times "
        f"measured in the same round; ±x% is half the {band} of those per-round ratios, "
        "relative to the median (no ± = one measurement). The numpy ref runs in its own "
        "rounds with its own one-thread copy; ratios to it compare each side's ratio to "
        "the one-thread copy of its own rounds.")
    if (load or 0) > meta["max_other_load"]:
        add("")
        add("The machine was busy: its speed moves over seconds, so a run's rounds are more "
            "alike than two runs are, and another run may land outside the ± shown.")
    if noisy:
        add("")
        add(f"\\* other processes kept more than {meta['max_other_load']} cores busy during "
            "this measurement: treat it as noisy.")

    if meta.get("lm_options"):
        add("")
        add("### Language-model options: forward + backward, ms (time / copy of the logits)")
        add("")
        add(f"z_loss={LM_Z_LOSS}, softcap={LM_SOFTCAP}; torch = F.cross_entropy of "
            "softcap * tanh(x / softcap) plus z_loss * mean(logsumexp^2), PyTorch ops.")
        add("")
        head = ["shape", "threads", "copy", "fused", "+z_loss", "+softcap", "+both",
                "+both inplace"]
        if has_torch:
            head += ["torch (both)", "fused (both) vs torch"]
        table_head(head)
        for (n, c), per in results.items():
            for t in threads_list:
                r = per[t]
                keys = (FUSED_FB, LM_Z, LM_CAP, LM_BOTH, LM_BOTH_INPLACE)
                keys += (LM_TORCH,) if has_torch else ()
                row = floor_row(n, c, t, r, FLOOR_COPY, keys)
                if has_torch:
                    row.append(fmt_ratio(ratio(r.get(LM_TORCH), r.get(LM_BOTH))))
                add("| " + " | ".join(row) + " |")

    # Thread scaling of the fused forward+backward.
    t_lo, t_hi = min(threads_list), max(threads_list)
    if t_hi > t_lo:
        parts = []
        for (n, c), per in results.items():
            s = ratio(per[t_lo].get(FUSED_FB), per[t_hi].get(FUSED_FB))
            sc = ratio(per[t_lo].get(FLOOR_COPY), per[t_hi].get(FLOOR_COPY))
            if s is not None:
                parts.append(f"{n}x{c} {fmt_ratio(s)} (copy {fmt_ratio(sc)})")
        add("")
        add(f"Fused forward+backward, {t_hi} threads vs {t_lo}: " + "; ".join(parts) + ".")

    targets = target_lines(results, threads_list, has_torch, cache_bytes, meta)
    if targets:
        add("")
        add("### Targets (issue 2, section 5; issue 12)")
        add("")
        lines.extend(targets)
    return "\n".join(lines) + "\n"


def target_lines(results, threads_list, has_torch, cache_bytes, meta):
    """Pass/fail against the CPU targets, for the shapes (and dtype) that were measured."""
    out = []
    itemsize = meta["itemsize"]

    def line(what, r, op, bound, digits):
        ok = r.value <= bound if op == "<=" else r.value >= bound
        spread = r.spread
        text = f"- {what} = {r.value:.{digits}f}"
        if spread is not None:
            text += f" ±{spread * 100:.0f}%"
        text += f" (target {op} {bound}): {'met' if ok else 'NOT met'}"
        if spread is not None and r.lo <= bound <= r.hi:
            text += " (the target is within the spread)"
        out.append(text)

    if meta["dtype"] == "bfloat16":  # issue 12
        big = results.get((8192, 32000), {}).get(1)
        if big:
            r = ratio(big.get(FUSED_FB_INPLACE), big.get(FLOOR_COPY))
            if r is not None:
                line("8192x32000 bfloat16, 1 thread, fused fwd+bwd in place / bfloat16 copy",
                     r, "<=", 1.5, 2)
            r = ratio(big.get(TORCH_FB), big.get(FUSED_FB_INPLACE))
            if r is not None:
                line("8192x32000 bfloat16, 1 thread, torch fwd+bwd / fused in place", r, ">=",
                     10, 1)
    if meta["dtype"] != "float32":
        return out
    for shape, threads, op in (((32768, 600), (1,), FUSED_FB), ((65536, 128), (1,), FUSED_FB),
                               ((16384, 2000), (1,), FUSED_FB),
                               ((512, 262144), (1, 2), FUSED_FB),
                               ((64, 1000000), (1,), FUSED_FB)):  # issue 12
        for t in threads:
            r = results.get(shape, {}).get(t)
            rr = r and ratio(r.get(op), r.get(FLOOR_COPY))
            if rr is not None:
                line(f"{shape[0]}x{shape[1]}, {t} thread{'s' if t > 1 else ''}, fused fwd+bwd "
                     "out= / copy", rr, "<=", 1.5, 2)
    big = results.get((8192, 32000), {}).get(1)
    if big:
        r = ratio(big.get(FUSED_FB), big.get(FLOOR_COPY))
        if r is not None:
            line("8192x32000, 1 thread, fused fwd+bwd / copy", r, "<=", 1.5, 2)
        r = ratio(big.get(FUSED_FWD), big.get(FLOOR_READ))
        if r is not None:
            line("8192x32000, 1 thread, fused fwd / read", r, "<=", 1.5, 2)
        r = ratio(big.get(TORCH_FB), big.get(FUSED_FB))
        if r is not None:
            line("8192x32000, 1 thread, torch fwd+bwd / fused", r, ">=", 10, 1)
    small = results.get((65536, 10), {}).get(1)
    if small:
        r = ratio(small.get(TORCH_FB), small.get(FUSED_FB))
        if r is not None:
            line("65536x10, 1 thread, torch fwd+bwd / fused", r, ">=", 20, 1)
    t_hi = max(threads_list)
    if t_hi > 1 and 1 in threads_list:
        limit = cache_bytes or 0
        for (n, c), per in results.items():
            if n * c * itemsize <= limit:
                continue  # in cache: not one of the out-of-cache shapes the target names
            s = ratio(per[1].get(FUSED_FB), per[t_hi].get(FUSED_FB))
            if s is not None:
                line(f"{n}x{c}, fused fwd+bwd {t_hi} threads / 1 thread speed-up", s, ">=",
                     1.6, 2)
    return out


# ----------------------------------------------------------------------------- plot


def run_sweep(runner, args, threads):
    """Fraction of copy bandwidth against C, at a fixed total size of the logits."""
    total = int(args.plot_mb * 2**20)
    classes = PLOT_CLASSES if not args.quick else (10, 100, 1000, 10000)
    sweep = []
    for c in classes:
        n = max(1, total // (args.itemsize * c))
        label = f"plot C={c} ({n}x{c}) t={threads}"
        runner.progress(f"{label}: generating")
        x, target = make_inputs(n, c, args.seed, args.logit_dtype)
        bufs = (touched_like(x), touched_like(x), touched_like(x))
        runner.context = {"shape": [n, c], "threads": threads, "sweep": True}
        res = runner.run_setting(x, target, bufs, threads, label, sweep=True)
        out = bufs[0]
        del bufs
        gc.collect()
        if not args.no_reference:
            res[NUMPY_FB], res[NUMPY_COPY] = runner.run_reference(
                x, target, out, label, dict(runner.context, threads=1))
        # ms of each op, and each op's time over the copy (value, lo, hi; see Ratio)
        point = {"n": n, "c": c, "x_copy": {}}
        for key, m in res.items():
            point[key] = m.median_ms if m is not None else None
            floor = res.get(NUMPY_COPY) if key == NUMPY_FB else res.get(FLOOR_COPY)
            r = ratio(m, floor) if key not in (FLOOR_COPY, NUMPY_COPY) else None
            if r is not None:
                point["x_copy"][key] = r.as_dict()
        sweep.append(point)
        del x, target, out
        gc.collect()
    return sweep


def draw(sweep, path, meta, threads, plot_mb):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        sys.stderr.write(f"--plot: matplotlib not available ({exc}); no plot written\n")
        return False
    series = [
        (FUSED_FB, "fusedce fused fwd+bwd", "o-"),
        (UNFUSED_FB, "fusedce unfused (log_softmax, nll, backward ops)", "s--"),
        (TORCH_FB, "PyTorch F.cross_entropy fwd+bwd", "^-"),
        (NUMPY_FB, "NumPy reference (float64)", "v:"),
    ]
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, name, style in series:
        xs, ys = [], []
        for p in sweep:
            r = p["x_copy"].get(key)
            if r is not None and r["value"] > 0:
                xs.append(p["c"])
                ys.append(1.0 / r["value"])
        if xs:
            ax.plot(xs, ys, style, label=name)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.text(sweep[0]["c"], 1.05, "copy of the logits (memory floor)", color="gray", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of classes C (N x C %s = %g MiB)" % (meta.get("dtype", "float32"), plot_mb))
    ax.set_ylabel("throughput / copy throughput (higher is better)")
    ax.set_title(f"forward+backward, {threads} thread{'s' if threads > 1 else ''}: "
                 f"{meta['cpu']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(
        description="fusedce CPU benchmark: fused vs unfused vs PyTorch vs NumPy, "
                    "against copy and read floors. Table on stdout, progress on stderr.")
    p.add_argument("--shapes", help=f"comma-separated NxC (default {DEFAULT_SHAPES})")
    p.add_argument("--quick", action="store_true",
                   help=f"small fast run ({QUICK_SHAPES}, short timings): smoke test / demo")
    p.add_argument("--threads", help="comma-separated thread counts, 'all' = every usable "
                                     "core (default 1,all)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of repetitions per measurement, spread over the rounds "
                        "(default 0.3; 0.1 with --quick)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds: every op of the shapes timed together, floors "
                        "included, runs a short batch in each (default 5; 9 with --quick)")
    p.add_argument("--group-mb", type=float, default=256,
                   help="time consecutive shapes in the same rounds while their logits and "
                        "buffers (16 bytes a logit) fit in this many MiB (default 256)")
    p.add_argument("--min-reps", type=int, default=3,
                   help="at least this many repetitions per round where they fit in twice "
                        "the op's share of a round (default 3)")
    p.add_argument("--reps", type=int, default=None,
                   help="exactly this many repetitions per measurement, spread over the rounds")
    p.add_argument("--all", action="store_true",
                   help="run the NumPy reference on every shape, however large")
    p.add_argument("--ref-max-elems", type=int, default=150_000_000,
                   help="skip the NumPy reference above this many logits unless --all "
                        "(default 150M: it needs ~40 bytes and ~45 ns per logit)")
    p.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    p.add_argument("--no-reference", action="store_true", help="do not time the NumPy reference")
    p.add_argument("--no-unfused", action="store_true", help="do not time our unfused ops")
    p.add_argument("--no-inplace", action="store_true", help="do not time inplace=True")
    p.add_argument("--no-check", action="store_true",
                   help="skip the loss/gradient agreement check after each setting")
    p.add_argument("--lm-options", action="store_true",
                   help="also time the fused forward+backward with z_loss, softcap and both "
                        "(and PyTorch computing the same loss)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="dtype of the logits (default float32; bfloat16 needs ml_dtypes)")
    p.add_argument("--simd", help="fusedce.set_simd_level(SIMD) first (avx512_bf16, avx512, avx2, portable)")
    p.add_argument("--stream-mib", type=float, metavar="MIB",
                   help="write outputs of at least MIB MiB with streaming stores, whatever their "
                        "rows (default: 16 MiB with rows of 4 KiB or more, the last-level cache "
                        "with shorter rows; 0 restores it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="FILE.md", help="also write the tables to this file")
    p.add_argument("--json", metavar="FILE", help="write raw numbers (every repetition) here")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also sweep C and plot throughput / copy throughput (needs matplotlib)")
    p.add_argument("--plot-mb", type=float, default=None,
                   help="size of the logits in the --plot sweep, MiB (default 256; 16 w/ --quick)")
    p.add_argument("--plot-threads", type=int, default=1, help="threads for the --plot sweep")
    p.add_argument("--plot-only", action="store_true", help="with --plot: only the sweep, no table")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--max-other-load", type=float, default=0.15,
                   help="flag a timing as noisy (* in the table) when other processes kept "
                        "more than this many cores busy meanwhile (default 0.15)")
    args = p.parse_args(argv)

    if args.min_time is None:
        args.min_time = 0.1 if args.quick else 0.3
    if args.rounds is None:
        args.rounds = 9 if args.quick else 5
    if args.rounds < 1 or args.min_time <= 0:
        raise SystemExit("--rounds must be >= 1 and --min-time > 0")
    # the NumPy reference takes part in this many rounds however slow it is (one call
    # of it takes seconds on the default shapes)
    args.ref_rounds = 3 if args.quick else 1
    if args.plot_only and not args.plot:
        raise SystemExit("--plot-only needs --plot FILE.png")
    if args.plot_mb is None:
        args.plot_mb = 16 if args.quick else 256
    shapes = parse_shapes(args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES))
    args.logit_dtype = logit_dtype(args.dtype)
    args.itemsize = args.logit_dtype.itemsize
    cores = usable_cores()
    threads_list = parse_threads(args.threads, cores)

    try:
        import fusedce as fc
        import fusedce.reference  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"cannot import fusedce ({exc}); install it first: pip install .")
    if args.simd:
        fc.set_simd_level(args.simd)
    core = getattr(fc, "_core", None)
    if args.stream_mib is not None and core is not None:
        core.set_streaming_threshold_bytes(int(args.stream_mib * 2**20))
    torch, F = import_torch(not args.no_torch)

    meta = {
        "cpu": cpu_model(),
        "cores": cores,
        "fusedce": getattr(fc, "__version__", "?"),
        "simd": fc.simd_level() if hasattr(fc, "simd_level") else "?",
        "streaming_mib": ((core.streaming_threshold_bytes(4096) / 2**20,
                           core.streaming_threshold_bytes(512) / 2**20)
                          if hasattr(core, "streaming_threshold_bytes") else None),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else
        ("not timed (--no-torch)" if args.no_torch else None),
        "python": sys.version.split()[0],
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "min_time_s": args.min_time,
        "rounds": args.rounds,
        "lm_options": args.lm_options,
        "dtype": args.dtype,
        "itemsize": args.itemsize,
        "max_other_load": args.max_other_load,
    }
    progress = Progress(quiet=args.quiet)
    probe = OtherLoad()
    probe.start()
    time.sleep(0.5)
    meta["other_load_at_start"] = probe.stop()
    if (meta["other_load_at_start"] or 0) > args.max_other_load:
        progress(f"warning: other processes are keeping {meta['other_load_at_start']:.2f} "
                 f"cores busy: timings (above all at {max(threads_list)} threads) will be noisy")
    progress(f"fusedce CPU benchmark: {len(shapes)} shapes x threads {threads_list}; "
             f"{meta['cpu']}, SIMD {meta['simd']}, torch {meta['torch'] or 'absent'}")

    runner = Runner(args, fc, torch, F, progress)
    results, table = {}, ""
    if not args.plot_only:
        results = run_shapes(runner, shapes, threads_list, args)
        has_ref = any(per[t].get(NUMPY_FB) is not None
                      for per in results.values() for t in threads_list)
        table = render(results, threads_list, meta, torch is not None, has_ref,
                       last_level_cache_bytes(), runner.noisy)
        if runner.noisy:
            progress(f"{len(runner.noisy)} timings were taken while other processes were busy "
                     "(marked * in the table)")

    sweep = None
    if args.plot:
        sweep = run_sweep(runner, args, args.plot_threads)
        if draw(sweep, args.plot, meta, args.plot_threads, args.plot_mb):
            progress(f"plot written to {args.plot}")

    sys.stdout.write(table)
    sys.stdout.flush()
    if args.out and table:
        with open(args.out, "w") as f:
            f.write(table)
        progress(f"table written to {args.out}")
    if args.json:
        raw = {
            "meta": meta,
            "threads": threads_list,
            "results": [
                {"shape": [n, c], "threads": t,
                 "median_ms": {k: m.median_ms for k, m in per[t].items() if m is not None},
                 "ratios": json_ratios(per[t])}
                for (n, c), per in results.items() for t in threads_list
            ],
            "measurements": runner.records,
            "sweep": sweep,
        }
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1, default=str)
        progress(f"raw numbers written to {args.json}")
    progress(f"done in {progress.elapsed:.0f} s")


if __name__ == "__main__":
    main()
