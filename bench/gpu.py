"""GPU benchmark for fusedce (issue 4): fused cross-entropy forward+backward against the memory
floor (a device-to-device copy of the same bytes, measured in the same run) and against
PyTorch eager, torch.compile and Liger-Kernel; then fused linear + cross-entropy against its
three GEMMs, PyTorch's F.linear_cross_entropy and Liger-Kernel (--no-linear skips it).

    python3 bench/gpu.py --out bench/results/gpu.md [--repeats 20] [--quick]

Times are CUDA-event medians over `repeats` calls after warm-up, on the current stream.
Bytes counted are the minimum: fwd+bwd and softmax read the logits once and write once;
the loss-only forward reads once. "x copy" is the time over a copy of the logits (read +
write), "x read" the time over one streaming read (torch.sum of the logits). Extra memory is
torch.cuda.max_memory_allocated() during one call minus what was allocated before it, less
the outputs the call must produce (loss vector, gradient when not in-place).
"""
import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import Report  # noqa: E402

SHAPES = [(8192, 32000), (8192, 128256), (4096, 262144), (16384, 1000), (65536, 10)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cuda_time(fn, repeats, warmup=3, batch=1):
    """Median over `repeats` trials of the time of `batch` calls between two CUDA events,
    per call, in ms. batch=1 times each call as a caller sees it (host time included when
    the GPU waits for it); a larger batch keeps the GPU busy, so only the kernels count
    (bench/gpu_probe.py)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(batch):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / batch)
    return statistics.median(times)


def extra_memory(fn, produced_bytes=0):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    keep = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del keep
    return max(0, peak - before - produced_bytes)


LINEAR_SHAPES = [(8192, 4096, 128256), (16384, 2048, 32000)]  # N, H, V


def linear_section(args, say):
    """Fused linear + cross-entropy forward + backward (gradients of x and W) on the GPU,
    bfloat16 and float32, 10% of targets ignored: the three GEMMs alone (the floor), fusedce
    (fusedce.torch.linear_cross_entropy: cuBLAS through CuPy, the fused kernel in place per
    chunk), PyTorch's F.linear_cross_entropy (reference and chunked options) and
    Liger-Kernel's fused linear cross-entropy when importable. UNTESTED: written without a
    GPU (the CPU twin is bench/linear_ce.py)."""
    import fusedce.torch as ft

    liger = None
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyLoss)
        liger = LigerFusedLinearCrossEntropyLoss()
    except Exception:  # noqa: BLE001
        pass
    say()
    say("## Fused linear + cross-entropy, forward + backward (gradients of x and W)")
    say()
    say("| N x H x V | dtype | implementation | ms | x gemms | extra MiB |")
    say("|---|---|---|---:|---:|---:|")
    shapes = LINEAR_SHAPES[:1] if args.quick else LINEAR_SHAPES
    for (n, h, v) in shapes:
        for dname, dt in DTYPES.items():
            torch.manual_seed(0)
            x = (torch.randn(n, h, device="cuda") / h ** 0.5).to(dt).requires_grad_(True)
            w = torch.randn(v, h, device="cuda").to(dt).requires_grad_(True)
            t = torch.randint(0, v, (n,), device="cuda")
            t[torch.rand(n, device="cuda") < 0.1] = -100
            grads_bytes = (x.numel() + w.numel()) * x.element_size()
            logits = torch.empty(n, v, device="cuda", dtype=dt)
            gx, gw = torch.empty_like(x), torch.empty_like(w)

            def gemms():
                torch.matmul(x.detach(), w.detach().T, out=logits)
                torch.matmul(logits, w.detach(), out=gx)
                torch.matmul(logits.T, x.detach(), out=gw)
                return gx

            def step(fn):
                def run():
                    x.grad = w.grad = None
                    loss = fn()
                    return torch.autograd.grad(loss, (x, w))
                return run

            runs = [("three GEMMs (floor)", gemms, 0),
                    ("fusedce linear_cross_entropy",
                     step(lambda: ft.linear_cross_entropy(x, w, t)), grads_bytes)]
            if hasattr(F, "linear_cross_entropy"):  # (PyTorch 2.13 on; 2.11 has none)
                runs.append(("torch F.linear_cross_entropy",
                             step(lambda: F.linear_cross_entropy(x, w, t)), grads_bytes))
            if hasattr(torch.nn, "LinearCrossEntropyOptions"):
                runs.append(("torch chunked options", step(lambda: F.linear_cross_entropy(
                    x, w, t, options=torch.nn.LinearCrossEntropyOptions())), grads_bytes))
            if liger is not None:
                runs.append(("Liger fused linear CE", step(lambda: liger(w, x, t)), grads_bytes))
            floor = None
            for name, fn, produced in runs:
                try:
                    ms = cuda_time(fn, max(3, args.repeats // 4), warmup=2)
                    extra = extra_memory(fn, produced)
                except Exception as e:  # noqa: BLE001
                    say(f"| {n} x {h} x {v} | {dname} | {name} FAILED: {type(e).__name__} | | | |")
                    torch.cuda.empty_cache()
                    continue
                floor = floor or ms
                say(f"| {n} x {h} x {v} | {dname} | {name} | {ms:.2f} | {ms / floor:.2f} | "
                    f"{extra / 2**20:.0f} |")
                torch.cuda.empty_cache()
            del x, w, t, logits, gx, gw
            torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/gpu.md")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="first two shapes only")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--no-linear", action="store_true",
                    help="skip the fused linear + cross-entropy section")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    import fusedce

    say = Report()

    dev = torch.cuda.get_device_name()
    say(f"# fusedce GPU benchmark on {dev}")
    say()
    say(f"torch {torch.__version__}, fusedce {getattr(fusedce, '__version__', '?')}, repeats {args.repeats}")
    try:
        say("fusedce: " + " ".join(str(fusedce.show_config(print_it=False)).split()))
    except Exception as e:  # noqa: BLE001
        say(f"fusedce.show_config failed: {e}")
    liger = None
    try:
        from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss

        liger = LigerCrossEntropyLoss()
        say("Liger-Kernel: imported (LigerCrossEntropyLoss, computes the gradient in place)")
    except Exception as e:  # noqa: BLE001
        say(f"Liger-Kernel: NOT importable ({type(e).__name__}: {e}); its rows are left out")
    compiled = None
    if not args.no_compile:
        try:
            def step(x, t):
                loss = F.cross_entropy(x, t)
                (g,) = torch.autograd.grad(loss, x)
                return loss, g

            compiled = torch.compile(step)
        except Exception as e:  # noqa: BLE001
            say(f"torch.compile: unavailable ({e})")
    say()
    say("| logits | dtype | implementation | ms | GB/s | x copy | x read | extra MiB |")
    say("|---|---|---|---:|---:|---:|---:|---:|")
    summary = []

    shapes = SHAPES[:2] if args.quick else SHAPES
    for (n, c) in shapes:
        for dname, dt in DTYPES.items():
            torch.manual_seed(0)
            try:
                x = torch.randn(n, c, device="cuda", dtype=dt)
            except torch.OutOfMemoryError:
                say(f"| {n} x {c} | {dname} | (out of memory) | | | | | |")
                continue
            t = torch.randint(0, c, (n,), device="cuda", dtype=torch.int64)
            nbytes = x.numel() * x.element_size()
            y = torch.empty_like(x)
            t_copy = cuda_time(lambda: y.copy_(x), args.repeats)
            t_read = cuda_time(lambda: torch.sum(x, dtype=torch.float32), args.repeats)
            loss_bytes = n * 4

            def row(name, ms, moved, extra, show_read=False):
                gbs = moved / (ms * 1e-3) / 1e9
                r = f"{ms / t_read:.2f}" if show_read else ""
                say(f"| {n} x {c} | {dname} | {name} | {ms:.3f} | {gbs:.0f} | {ms / t_copy:.2f} | {r} | {extra / 2**20:.1f} |")

            row("device copy (floor)", t_copy, 2 * nbytes, 0)
            row("torch.sum (read floor)", t_read, nbytes, 0, show_read=True)
            res = {}

            # fusedce, separate gradient buffer. Target validation is off: it costs a host
            # synchronisation (documented), and the kernels never read out of bounds anyway.
            g = torch.empty_like(x)
            nv = dict(validate_targets=False)
            try:
                f = lambda: fusedce.cross_entropy_with_grad(x, t, out=g, **nv)  # noqa: E731
                res["fused"] = cuda_time(f, args.repeats)
                row("fusedce ce fwd+bwd (out=)", res["fused"], 2 * nbytes, extra_memory(f, loss_bytes))
                import fusedce.torch as ft
                xa = x.detach().clone().requires_grad_(True)

                def fused_autograd():
                    xa.grad = None
                    ft.cross_entropy(xa, t).backward()
                    return xa.grad

                res["fused_torch"] = cuda_time(fused_autograd, args.repeats)
                row("fusedce.torch ce fwd+bwd (autograd)", res["fused_torch"], 2 * nbytes,
                    extra_memory(fused_autograd, nbytes))
                del xa
                xi = x.clone()
                fi = lambda: fusedce.cross_entropy_with_grad(xi, t, inplace=True, **nv)  # noqa: E731
                res["fused_inplace"] = cuda_time(fi, args.repeats)
                row("fusedce ce fwd+bwd (inplace)", res["fused_inplace"], 2 * nbytes, extra_memory(fi, loss_bytes))
                del xi
                ff = lambda: fusedce.cross_entropy(x, t, reduction="none", **nv)  # noqa: E731
                ms = cuda_time(ff, args.repeats)
                row("fusedce ce forward (loss only)", ms, nbytes, extra_memory(ff, loss_bytes), show_read=True)
                for name, fn in (("softmax", fusedce.softmax), ("log_softmax", fusedce.log_softmax)):
                    fs = lambda fn=fn: fn(x, out=y)  # noqa: E731
                    ms = cuda_time(fs, args.repeats)
                    row(f"fusedce {name} forward", ms, 2 * nbytes, extra_memory(fs))
            except Exception as e:  # noqa: BLE001
                say(f"| {n} x {c} | {dname} | fusedce FAILED: {type(e).__name__}: {str(e)[:80]} | | | | | |")
            del g

            # PyTorch eager (the gradient is freshly allocated each step, as in training)
            xr = x.detach().clone().requires_grad_(True)

            def eager():
                xr.grad = None
                loss = F.cross_entropy(xr, t)
                loss.backward()
                return xr.grad

            try:
                res["eager"] = cuda_time(eager, args.repeats)
                row("torch eager F.cross_entropy fwd+bwd", res["eager"], 2 * nbytes, extra_memory(eager, nbytes))
            except torch.OutOfMemoryError:
                say(f"| {n} x {c} | {dname} | torch eager: out of memory | | | | | |")
            xr.grad = None
            torch.cuda.empty_cache()

            if compiled is not None:
                try:
                    fc = lambda: compiled(xr, t)  # noqa: E731
                    res["compile"] = cuda_time(fc, args.repeats, warmup=2)
                    row("torch.compile fwd+bwd", res["compile"], 2 * nbytes, extra_memory(fc, nbytes))
                except Exception as e:  # noqa: BLE001
                    say(f"| {n} x {c} | {dname} | torch.compile FAILED: {type(e).__name__} | | | | | |")
                torch.cuda.empty_cache()
            del xr

            if liger is not None:
                xl = x.detach().clone().requires_grad_(True)

                def lig():
                    xl.grad = None
                    loss = liger(xl, t)
                    loss.backward()
                    return xl.grad

                try:
                    res["liger"] = cuda_time(lig, args.repeats)
                    row("Liger-Kernel CE fwd+bwd", res["liger"], 2 * nbytes, extra_memory(lig))
                except Exception as e:  # noqa: BLE001
                    say(f"| {n} x {c} | {dname} | Liger FAILED: {type(e).__name__}: {str(e)[:60]} | | | | | |")
                del xl
            if "fused" in res:
                comp = ", ".join(f"{k} {v / res['fused']:.2f}x" for k, v in res.items() if k not in ("fused",))
                summary.append(f"- {n} x {c} {dname}: fusedce fwd+bwd {res['fused'] / t_copy:.2f}x copy; "
                               f"others / fusedce: {comp}")
            del x, y, t
            torch.cuda.empty_cache()

    say()
    say("Speed-ups (competitor time / fusedce out= time; inplace listed as fused_inplace):")
    say()
    for s in summary:
        say(s)
    if not args.no_linear:
        linear_section(args, say)
    say.write(args.out)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
