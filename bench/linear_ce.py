#!/usr/bin/env python3
"""Fused linear + cross-entropy (forward + backward) against its three GEMMs and PyTorch.

    python bench/linear_ce.py                 # N=4096, H=512, V=32000, float32, 2 threads
    python bench/linear_ce.py --quick         # a few seconds: N=1024, H=256, V=8000
    python bench/linear_ce.py --n 8192 --v 128256 --threads 1 --ignore 0.25 --chunk-size 512

Inputs: x (N, H), W (V, H) (no bias), int64 targets with a fraction --ignore of them equal
to ignore_index (-100), reduction "mean". Timed, each a forward and a backward giving the
gradients of x and W:

  gemms          the three GEMMs alone, full batch: L = x @ W.T, gx = L @ W, gW = L.T @ x,
                 with the BLAS fusedce uses (SciPy's when installed, else NumPy's). The
                 floor: what any implementation that does the GEMMs must pay. The logits L
                 go into a buffer allocated once, outside the timing (in the floor's
                 favour: materialising them per call would cost it 500 MiB of fresh pages);
                 gx and gW, returned like every method's gradients, into new arrays per
                 call as the other methods' are: first-touch page faults of fresh memory
                 are a cost of returning new gradients, not of the fusion (on this VM up
                 to 0.56 s of system time for the fused call's 110 MiB when memory freed
                 earlier had gone back to the host: docs/fusion.md), and a floor that
                 skipped them would charge them to the others.
  gemms_reuse    the same GEMMs with gx and gW, too, in buffers allocated once: what the
                 floor costs when nothing is allocated per call (the floor's definition
                 before 2026-12-02), for comparison.
  fused          fusedce.linear_cross_entropy_with_grad (chunked; ignored rows dropped).
  torch ref      F.linear_cross_entropy(options=None) + torch.autograd.grad (whole logits).
  torch chunked  F.linear_cross_entropy(options=torch.nn.LinearCrossEntropyOptions())
                 (PyTorch's own chunked path, its "auto" chunking) + torch.autograd.grad.

Time: the four run in interleaved rounds (bench/_timing.py's measure_interleaved): a warm-up
call each, then in every round a short batch of each in turn, the order rotating; a time is
the median over rounds of each round's fastest call, and "x gemms" the median of the
per-round ratios (± half their range).

Peak extra memory: each method runs in a subprocess of its own (this script with --child).
There the inputs are created, the method is called once (warm-up: thread pools, BLAS
buffers) and its results dropped; then the kernel's peak-RSS mark is reset (writing 5 to
/proc/self/clear_refs), the RSS read (VmRSS), the method called again and the peak read
(VmHWM). Peak extra = VmHWM - VmRSS before the call: everything the call had mapped at its
worst moment, its returned gradients included, the inputs excluded. glibc's malloc is told
to return every block over 128 KiB to the system when freed (MALLOC_MMAP_THRESHOLD_=131072),
so memory freed by the warm-up cannot hide the second call's peak. Linux only.

The thread count (--threads, default 2) is set through the environment before NumPy, SciPy
and PyTorch load (OPENBLAS/OMP/MKL_NUM_THREADS), and through fusedce.set_num_threads and
torch.set_num_threads. Prints a markdown table on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

METHODS = ("gemms", "gemms_reuse", "fused", "torch_ref", "torch_chunked")
LABELS = {"gemms": "three GEMMs (floor)", "gemms_reuse": "three GEMMs, outputs reused",
          "fused": "fusedce fused",
          "torch_ref": "torch reference", "torch_chunked": "torch chunked"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="rows (default 4096; --quick 1024)")
    ap.add_argument("--h", type=int, default=None, help="hidden size (default 512; --quick 256)")
    ap.add_argument("--v", type=int, default=None, help="classes (default 32000; --quick 8000)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ignore", type=float, default=0.1, help="fraction of ignored targets")
    ap.add_argument("--chunk-size", type=int, default=None, help="fusedce's chunk_size")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (default 3; --quick 5)")
    ap.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick = args.quick
    args.n = args.n or (1024 if quick else 4096)
    args.h = args.h or (256 if quick else 512)
    args.v = args.v or (8000 if quick else 32000)
    args.rounds = args.rounds or (5 if quick else 3)
    if min(args.n, args.h, args.v, args.threads) < 1:
        ap.error("--n, --h, --v and --threads must be at least 1")
    if not 0.0 <= args.ignore < 1.0:
        ap.error("--ignore must be in [0, 1)")
    args.methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        ap.error(f"--methods: unknown {bad}; choose from {list(METHODS)}")
    if args.no_torch:
        args.methods = [m for m in args.methods if not m.startswith("torch")]
    return args


def set_thread_env(threads):
    """Before NumPy/SciPy/PyTorch load: their BLAS and OpenMP pools read these."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


# ----------------------------------------------------------------------------- the methods


class Bench:
    """The inputs and one callable per method (each returns what it computed)."""

    def __init__(self, args):
        import numpy as np

        import fusedce

        self.np, self.fc, self.args = np, fusedce, args
        fusedce.set_num_threads(args.threads)
        dt = np.dtype(args.dtype)
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((args.n, args.h)).astype(dt)
        self.w = (rng.standard_normal((args.v, args.h)) / np.sqrt(args.h)).astype(dt)
        t = rng.integers(0, args.v, size=args.n, dtype=np.int64)
        t[rng.random(args.n) < args.ignore] = -100
        self.t = t
        self.torch = self.F = None
        if any(m.startswith("torch") for m in args.methods):
            import torch
            import torch.nn.functional as F

            torch.set_num_threads(args.threads)
            self.torch, self.F = torch, F
            self.xt = torch.from_numpy(self.x).requires_grad_()
            self.wt = torch.from_numpy(self.w).requires_grad_()
            self.tt = torch.from_numpy(self.t)
        self.gemm_bufs = None

    def fn(self, method):
        return getattr(self, method)

    def gemms(self, reuse=False):
        np = self.np
        dt = self.x.dtype
        n, h, v = self.args.n, self.args.h, self.args.v
        if self.gemm_bufs is None:
            self.gemm_bufs = {"logits": np.empty((n, v), dt)}
        bufs = self.gemm_bufs
        logits = bufs["logits"]
        if reuse:
            if "gx" not in bufs:
                bufs["gx"], bufs["gw"] = np.empty((n, h), dt), np.empty((v, h), dt)
            gx, gw = bufs["gx"], bufs["gw"]
        else:
            gx, gw = np.empty((n, h), dt), np.empty((v, h), dt)
        gemm = self.fc.linear._scipy_gemm(self.x.dtype)
        if gemm is None:
            np.matmul(self.x, self.w.T, out=logits)
            np.matmul(logits, self.w, out=gx)
            np.matmul(logits.T, self.x, out=gw)
            return gx, gw
        # The BLAS fusedce's GEMMs use (SciPy's), the same column-major calls on the same
        # C-ordered memory: two OpenBLAS libraries taking turns would slow both (their idle
        # worker threads spin), which would measure the libraries, not the fusion.
        x, w = self.x, self.w
        gemm(1.0, w.T, x.T, c=logits.T, trans_a=1, overwrite_c=1)   # logits = x @ w.T
        gemm(1.0, w.T, logits.T, c=gx.T, overwrite_c=1)             # gx = logits @ w
        gemm(1.0, x.T, logits.T, c=gw.T, trans_b=1, overwrite_c=1)  # gw = logits.T @ x
        return gx, gw

    def gemms_reuse(self):
        return self.gemms(reuse=True)

    def drop_gemm_buffers(self):
        self.gemm_bufs = None

    def fused(self):
        return self.fc.linear_cross_entropy_with_grad(self.x, self.w, self.t,
                                                      chunk_size=self.args.chunk_size)

    def _torch(self, options):
        loss = self.F.linear_cross_entropy(self.xt, self.wt, self.tt, options=options)
        gx, gw = self.torch.autograd.grad(loss, (self.xt, self.wt))
        return loss.detach(), gx, gw

    def torch_ref(self):
        return self._torch(None)

    def torch_chunked(self):
        return self._torch(self.torch.nn.LinearCrossEntropyOptions())

    def check(self):
        """The fused results against PyTorch's reference path (float32: loose tolerances)."""
        np = self.np
        loss, gx, gw, _ = self.fused()
        if self.torch is None:
            return "no torch: not checked"
        ref_loss, ref_gx, ref_gw = self.torch_ref()
        errs = [abs(float(loss) - float(ref_loss)) / max(1.0, abs(float(ref_loss))),
                float(np.abs(gx - ref_gx.numpy()).max() / max(1e-30, np.abs(ref_gx.numpy()).max())),
                float(np.abs(gw - ref_gw.numpy()).max() / max(1e-30, np.abs(ref_gw.numpy()).max()))]
        tol = 1e-4 if self.x.dtype == np.float32 else 1e-10
        verdict = "agree" if max(errs) < tol else "DISAGREE"
        return (f"fused vs torch reference: {verdict} (relative max errors: loss {errs[0]:.1e}, "
                f"grad x {errs[1]:.1e}, grad W {errs[2]:.1e})")


# ----------------------------------------------------------------------------- memory


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(args):
    """Runs in its own process: the peak extra memory of one method (see the module doc)."""
    import gc

    bench = Bench(args)
    fn = bench.fn(args.child)
    result = fn()
    del result
    if args.child.startswith("gemms"):
        bench.drop_gemm_buffers()  # its outputs count as the call's memory, as for the others
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    before = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    print(json.dumps({"method": args.child, "rss_before_mib": before / 1024,
                      "peak_extra_mib": (peak - before) / 1024}))


def measure_memory(args, method, argv):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(f"memory of {method} failed:\n{proc.stderr[-2000:]}\n")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_mib"]


# ----------------------------------------------------------------------------- main


def child_argv(args):
    argv = ["--n", str(args.n), "--h", str(args.h), "--v", str(args.v), "--dtype", args.dtype,
            "--threads", str(args.threads), "--ignore", str(args.ignore),
            "--methods", ",".join(args.methods)]
    if args.chunk_size is not None:
        argv += ["--chunk-size", str(args.chunk_size)]
    return argv


def main(argv=None):
    args = parse_args(argv)
    set_thread_env(args.threads)
    if args.child:
        return child(args)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _timing import (Op, OtherLoad, Progress, cpu_model, fmt_ms, fmt_ratio,
                         measure_interleaved, ratio_of)

    progress = Progress()
    bench = Bench(args)
    fc = bench.fc
    progress(f"N={args.n} H={args.h} V={args.v} {args.dtype}, {args.threads} threads, "
             f"{args.ignore:.0%} ignored; checking")
    check = bench.check() if "fused" in args.methods else ""
    progress(check)

    memory = {}
    if not args.no_memory:
        for m in args.methods:
            progress(f"memory: {m} (subprocess)")
            memory[m] = measure_memory(args, m, child_argv(args))

    progress("timing (interleaved rounds)")
    ops = [Op(m, bench.fn(m)) for m in args.methods]
    load = OtherLoad()
    load.start()
    times = measure_interleaved(ops, rounds=args.rounds, min_time=0.5 if args.quick else 1.0,
                                min_reps=1)
    other = load.stop()
    bench.drop_gemm_buffers()

    floor = times.get("gemms")
    print("# Fused linear + cross-entropy, forward + backward (grads of x and W)\n")
    print(f"N={args.n}, H={args.h}, V={args.v}, {args.dtype}, {args.threads} threads, "
          f"{args.ignore:.0%} of targets ignored, reduction mean; fusedce {fc.__version__} "
          f"({fc.simd_level()}), chunk_size={args.chunk_size or 'auto'}; {cpu_model()}\n")
    print("| method | time (ms) | x gemms | peak extra (MiB) |")
    print("|---|---:|---:|---:|")
    rows = {}
    for m in args.methods:
        t = times.get(m)
        if not hasattr(t, "median_ms"):
            print(f"| {LABELS[m]} | failed: {t!r} | - | - |")
            continue
        r = ratio_of(t, floor) if floor is not None and m != "gemms" else None
        mem = memory.get(m)
        rows[m] = {"median_ms": t.median_ms, "x_gemms": None if r is None else r.value,
                   "peak_extra_mib": mem, "times_ms": [v * 1e3 for v in t.times]}
        print(f"| {LABELS[m]} | {fmt_ms(t.median_ms)} | "
              f"{'1.00x' if m == 'gemms' else fmt_ratio(r)} | "
              f"{'-' if mem is None else f'{mem:.0f}'} |")
    print()
    notes = [check]
    if other is not None:
        notes.append(f"other processes kept {other:.2f} cores busy on average while timing"
                     + (" (timings suspect)" if other > 0.25 else ""))
    print("\n".join(f"- {n}" for n in notes if n))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows, "check": check,
                       "other_load_cores": other}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
