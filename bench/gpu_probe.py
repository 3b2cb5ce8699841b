"""Where the GPU time of fusedce goes: the kernels alone, and the Python around them.

    python3 bench/gpu_probe.py [--kernels-only] [--out FILE]

1. Kernels alone: each row op is called through fusedce._core with its structs built once,
   20 launches back to back between two CUDA events (no Python work between launches, so
   the GPU never waits for the host): the time of one launch, as a ratio to a
   device-to-device copy of the same bytes (fwd+bwd, softmax) or to a read (torch.sum,
   loss only), measured in the same run. Run it once as it is and once with
   FUSEDCE_CUDA_SIMPLE=1 (the v1 streaming kernel everywhere) to compare the two kernels
   shape by shape; FUSEDCE_CUDA_TRACE=1 prints which kernel, team and grid each shape took.
2. The Python around them (skipped with --kernels-only): host microseconds per call of the
   public functions on a tiny input (65536 x 10 float32), the GPU synchronised only at the
   end, against the kernel alone and PyTorch eager; then a cProfile of the public fused call.
"""
import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import Report  # noqa: E402
from gpu import cuda_time  # noqa: E402

SHAPES = [(8192, 32000), (8192, 128256), (4096, 262144), (32768, 600), (16384, 1000),
          (65536, 128), (65536, 10)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def events_ms(fn, reps):
    """Median over 3 trials of (time of `reps` back-to-back calls) / reps, in ms."""
    return cuda_time(fn, 3, warmup=2, batch=reps)


def kernels(say):
    from fusedce import _core

    codes = {torch.float32: _core.DType.float32, torch.bfloat16: _core.DType.bfloat16}
    dev = torch.cuda.current_device()
    launch = _core.Launch(dev, torch.cuda.current_stream().cuda_stream)
    options = _core.LossOptions(0, -100, 0.0, 0.0, 0.0)
    say("| logits | dtype | copy ms | fwd+bwd / copy | in place / copy | loss only / read | "
        "softmax / copy | fwd+bwd GB/s |")
    say("|---|---|---:|---:|---:|---:|---:|---:|")
    for n, c in SHAPES:
        for dname, dt in DTYPES.items():
            torch.manual_seed(0)
            x = torch.randn(n, c, device="cuda", dtype=dt)
            y = torch.empty_like(x)
            xi = x.clone()
            t = torch.randint(0, c, (n,), device="cuda", dtype=torch.int64)
            loss = torch.empty(n, device="cuda", dtype=torch.float32)
            g = torch.full((1,), 1.0 / n, device="cuda", dtype=torch.float32)
            nbytes = x.numel() * x.element_size()
            reps = max(3, min(50, int(2e9 / nbytes)))
            rows = _core.Rows(x.data_ptr(), n, c, c, codes[dt])
            rows_y = _core.Rows(y.data_ptr(), n, c, c, codes[dt])
            rows_i = _core.Rows(xi.data_ptr(), n, c, c, codes[dt])
            target = _core.Target(_core.TargetKind.class_index, t.data_ptr(), _core.DType.int64, 1)
            stats = _core.RowStats(loss=loss.data_ptr(), grad=g.data_ptr(), grad_stride=0)
            stats_i = _core.RowStats(loss=loss.data_ptr(), grad=g.data_ptr(), grad_stride=0)
            copy = events_ms(lambda: y.copy_(x), reps)
            read = events_ms(lambda: torch.sum(x, dtype=torch.float32), reps)
            fb = events_ms(lambda: _core.cross_entropy_with_grad(rows, target, options, stats, rows_y, launch), reps)
            # in place: the gradient of a gradient after the first call (finite; same work)
            ip = events_ms(lambda: _core.cross_entropy_with_grad(rows_i, target, options, stats_i, rows_i, launch), reps)
            fw = events_ms(lambda: _core.cross_entropy_forward(rows, target, options, stats, launch), reps)
            sm = events_ms(lambda: _core.softmax_forward(rows, rows_y, False, launch), reps)
            say(f"| {n} x {c} | {dname} | {copy:.3f} | {fb / copy:.2f} | {ip / copy:.2f} | "
                f"{fw / read:.2f} | {sm / copy:.2f} | {2 * nbytes / (fb * 1e-3) / 1e9:.0f} |")
            del x, y, xi
            torch.cuda.empty_cache()


def host_overhead(say):
    import fusedce
    import fusedce.torch as ft
    from fusedce import _core

    n, c = 65536, 10
    x = torch.randn(n, c, device="cuda")
    t = torch.randint(0, c, (n,), device="cuda")
    g = torch.empty_like(x)
    xr = x.clone().requires_grad_(True)
    loss = torch.empty(n, device="cuda")
    gf = torch.full((1,), 1.0 / n, device="cuda")
    launch = _core.Launch(0, torch.cuda.current_stream().cuda_stream)
    opts = _core.LossOptions(0, -100, 0.0, 0.0, 0.0)
    rows = _core.Rows(x.data_ptr(), n, c, c, _core.DType.float32)
    rows_g = _core.Rows(g.data_ptr(), n, c, c, _core.DType.float32)
    target = _core.Target(_core.TargetKind.class_index, t.data_ptr(), _core.DType.int64, 1)
    stats = _core.RowStats(loss=loss.data_ptr(), grad=gf.data_ptr(), grad_stride=0)

    def eager():
        xr.grad = None
        F.cross_entropy(xr, t).backward()

    def ft_step():
        xr.grad = None
        ft.cross_entropy(xr, t).backward()

    calls = {
        "_core.cross_entropy_with_grad (kernel launch only)":
            lambda: _core.cross_entropy_with_grad(rows, target, opts, stats, rows_g, launch),
        "fusedce.cross_entropy_with_grad(out=, validate_targets=False)":
            lambda: fusedce.cross_entropy_with_grad(x, t, out=g, validate_targets=False),
        "fusedce.cross_entropy_with_grad(out=) (targets validated)":
            lambda: fusedce.cross_entropy_with_grad(x, t, out=g),
        "fusedce.cross_entropy(reduction='none', validate_targets=False)":
            lambda: fusedce.cross_entropy(x, t, reduction="none", validate_targets=False),
        "fusedce.cross_entropy (mean, validate_targets=False)":
            lambda: fusedce.cross_entropy(x, t, validate_targets=False),
        "fusedce.torch.cross_entropy + backward": ft_step,
        "torch F.cross_entropy + backward": eager,
    }
    say(f"Host time per call, {n} x {c} float32, 200 calls, one synchronisation at the end "
        "(the GPU work of these calls is ~10 us each):")
    say()
    say("| call | us per call (host) | us per call (events, sync each call) |")
    say("|---|---:|---:|")
    for name, fn in calls.items():
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            fn()
        torch.cuda.synchronize()
        host = (time.perf_counter() - t0) / 200 * 1e6
        ev = []
        for _ in range(20):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ev.append(a.elapsed_time(b) * 1e3)
        say(f"| {name} | {host:.0f} | {statistics.median(ev):.0f} |")
    say()
    for title, fn in (("fusedce.cross_entropy_with_grad(out=, validate_targets=False)",
                       calls["fusedce.cross_entropy_with_grad(out=, validate_targets=False)"]),
                      ("fusedce.torch.cross_entropy + backward", ft_step)):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            fn()
        torch.cuda.synchronize()
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(35)
        say(f"cProfile of 200 calls of {title}, by own time:")
        say("```")
        say(s.getvalue())
        say("```")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels-only", action="store_true")
    ap.add_argument("--out", default="bench/results/gpu_probe.md")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    import fusedce

    say = Report()

    simple = os.environ.get("FUSEDCE_CUDA_SIMPLE", "") not in ("", "0")
    say(f"# fusedce GPU probe on {torch.cuda.get_device_name()}, "
        f"{'v1 streaming kernel everywhere (FUSEDCE_CUDA_SIMPLE=1)' if simple else 'default kernels'}")
    say()
    say(f"torch {torch.__version__}, fusedce {getattr(fusedce, '__version__', '?')}")
    say()
    try:
        kernels(say)
    finally:
        say()
        if not args.kernels_only:
            host_overhead(say)
        say.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
