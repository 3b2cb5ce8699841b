"""Vocab-parallel cross-entropy: the shard kernels against the reference (one process), and
fusedce.torch.distributed over gloo process groups of 2 and 3 ranks against F.cross_entropy
and fusedce.reference on the gathered logits.

Each process group is started once per test and runs a batch of cases (start-up costs
seconds); every wait is bounded: init_process_group and the collectives time out after 60 s
and the parent kills the workers after its own deadline.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
import traceback
from datetime import timedelta

import numpy as np
import pytest

import fusedce
from fusedce import reference, shard

from conftest import need

# ----------------------------------------------------------------------------------------
# The shard kernels, single process


def _case(seed, n=37, c_total=300, dtype=np.float32):
    r = np.random.default_rng(seed)
    x = (r.standard_normal((n, c_total)) * 3).astype(dtype)
    t = r.integers(0, c_total, n)
    t[::7] = -100
    w = r.uniform(0.2, 2.0, c_total).astype(dtype)
    return x, t, w


SPLITS = [(0, 300), (0, 5), (5, 300), (100, 137), (299, 300), (60, 61)]


@pytest.mark.parametrize("lo,hi", SPLITS)
@pytest.mark.parametrize("options", [{}, {"weight": True}, {"softcap": 4.0},
                                     {"weight": True, "softcap": 2.5}])
def test_shard_stats_match_the_reference(simd_level, lo, hi, options):
    for dtype, rtol in ((np.float32, 2e-5), (np.float64, 1e-12)):
        x, t, w = _case(1, dtype=dtype)
        w = w if options.get("weight") else None
        kw = dict(class_offset=lo, total_classes=x.shape[1], weight=w,
                  softcap=options.get("softcap"), return_dot=True)
        got = shard.cross_entropy_shard_stats(x[:, lo:hi], t, **kw)
        want = reference.cross_entropy_shard_stats(x[:, lo:hi], t, **kw)
        for g, wv in zip(got, want):
            assert g.dtype == wv.dtype
            np.testing.assert_allclose(g, wv, rtol=rtol, atol=rtol * 10)


@pytest.mark.parametrize("lo,hi", SPLITS)
@pytest.mark.parametrize("options", [{}, {"weight": True, "label_smoothing": 0.1},
                                     {"z_loss": 1e-3, "softcap": 3.0},
                                     {"weight": True, "label_smoothing": 0.2, "z_loss": 0.01,
                                      "softcap": 5.0}])
def test_shard_backward_matches_the_reference(simd_level, lo, hi, options):
    for dtype, rtol in ((np.float32, 3e-5), (np.float64, 1e-11)):
        x, t, w = _case(2, dtype=dtype)
        w = w if options.get("weight") else None
        cap = options.get("softcap")
        capped = x if cap is None else cap * np.tanh(x.astype(np.float64) / cap)
        lse = np.log(np.exp(capped.astype(np.float64)).sum(1)).astype(dtype)
        g = np.random.default_rng(3).uniform(0.5, 1.5, x.shape[0]).astype(dtype)
        kw = dict(class_offset=lo, total_classes=x.shape[1], weight=w, softcap=cap,
                  label_smoothing=options.get("label_smoothing", 0.0),
                  z_loss=options.get("z_loss", 0.0))
        got = shard.cross_entropy_shard_backward(g, x[:, lo:hi], t, lse, **kw)
        want = reference.cross_entropy_shard_backward(g, x[:, lo:hi], t, lse, **kw)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
        # the shards' gradients put side by side are the single-device gradient
        if (lo, hi) == (100, 137):
            parts = [shard.cross_entropy_shard_backward(g, x[:, a:b], t, lse, **{
                **kw, "class_offset": a}) for a, b in ((0, 100), (100, 137), (137, 300))]
            whole = fusedce.cross_entropy_backward(
                g, x, t, weight=w, reduction="none", label_smoothing=kw["label_smoothing"],
                z_loss=kw["z_loss"], softcap=cap)
            np.testing.assert_allclose(np.concatenate(parts, 1), whole, rtol=1e-4,
                                       atol=1e-5 if dtype == np.float32 else 1e-10)


def test_small_class_shards_avoid_the_small_class_path():
    """A shard of few classes with an offset: the small-class path would take the target
    as local; the result must still be the reference's."""
    x, t, _ = _case(4, n=64, c_total=40)
    lse = np.log(np.exp(x.astype(np.float64)).sum(1)).astype(np.float32)
    for lo, hi in ((0, 20), (20, 40)):
        got = shard.cross_entropy_shard_backward(1.0, x[:, lo:hi], t, lse, class_offset=lo,
                                                 total_classes=40)
        want = reference.cross_entropy_shard_backward(1.0, x[:, lo:hi], t, lse,
                                                      class_offset=lo, total_classes=40)
        np.testing.assert_allclose(got, want, rtol=3e-5, atol=3e-6)


def test_shard_kernels_check_their_arguments():
    x, t, w = _case(5)
    with pytest.raises(ValueError, match="class_offset"):
        shard.cross_entropy_shard_stats(x[:, :50], t, class_offset=260, total_classes=300)
    with pytest.raises(ValueError, match="weight must have shape \\(300,\\)"):
        shard.cross_entropy_shard_stats(x[:, :50], t, class_offset=0, total_classes=300,
                                        weight=w[:50])
    bad = t.copy()
    bad[3] = 300
    with pytest.raises(IndexError, match="300"):
        shard.cross_entropy_shard_stats(x[:, :50], bad, class_offset=0, total_classes=300)


def _emulated_shard_problem(dtype, n, total, seed):
    """Logits (a masked class per row), global targets (ignored rows, the first and last
    class, one out of range: validation off), weights, upstream factors."""
    r = np.random.default_rng(seed)
    x = (r.standard_normal((n, total)) * 3).astype(dtype)
    x[np.arange(n), r.integers(0, total, n)] = -np.inf
    t = r.integers(0, total, n)
    x[np.arange(n), t] = r.standard_normal(n).astype(dtype)  # a finite target logit
    t[::5] = -100
    t[1], t[2], t[-1] = 0, total - 1, total + 3  # first class, last class, out of range
    w = r.uniform(0.2, 2.0, total)
    g = r.uniform(0.5, 1.5, n)
    return x, t, w, g


def _shard_check(fe, x, t, w, g, splits, opts, dtype_name):
    """Every shard of `splits`: the emulated stats and gradient against the reference, the
    out-of-range row NaN, and the shards' statistics combined into the whole row's lse."""
    cdt = np.float64 if dtype_name == "float64" else np.float32
    tight = dtype_name in ("float32", "float64")
    stol = 1e-12 if dtype_name == "float64" else 2e-5  # statistics: float64 / float32 sums
    gtol = {"float64": 1e-10, "float32": 2e-5, "float16": 2e-3, "bfloat16": 8e-3}[dtype_name]
    total, bad = x.shape[1], t == x.shape[1] + 3
    cap, w = opts.get("softcap"), (w.astype(cdt) if opts.get("weight") else None)
    x64 = x.astype(np.float64)
    xc = x64 if cap is None else cap * np.tanh(x64 / cap)
    lse = np.log(np.exp(xc).sum(1)).astype(cdt)
    t_ref = np.where(bad, -100, t)  # the reference has no out-of-range rows
    kw = dict(total_classes=total, weight=w, softcap=cap)
    bkw = dict(kw, label_smoothing=opts.get("label_smoothing", 0.0), z_loss=opts.get("z_loss", 0.0))
    parts = []
    for lo, hi in splits:
        xs = x[:, lo:hi]
        got = fe.cross_entropy_shard_stats(xs, t, class_offset=lo, return_dot=True,
                                           validate_targets=False, **kw)
        want = reference.cross_entropy_shard_stats(xs.astype(np.float64), t_ref, class_offset=lo,
                                                   return_dot=True, **kw)
        # the dot, a sum of C terms w_c x_c, carries rounding on the scale of sum_c |w_c x_c|
        wsh = np.ones(hi - lo) if w is None else w[lo:hi].astype(np.float64)
        size = np.where(np.isfinite(xc[:, lo:hi]), np.abs(wsh * xc[:, lo:hi]), 0).sum(1)[~bad]
        for name, gv, wv in zip(("max", "sum", "target", "dot"), got, want):
            assert gv.dtype == cdt, name
            if name == "target":
                assert np.all(np.isnan(gv[bad])), (lo, hi)
            gv, wv = gv[~bad].astype(np.float64), wv[~bad]  # (the reference ignores the bad row)
            scale = 1.0 + (size if name == "dot" else 0.0)
            with np.errstate(invalid="ignore"):
                ok = (gv == wv) | (np.abs(gv - wv) <= stol * (np.abs(wv) + scale))
            assert ok.all(), (name, lo, hi, gv[~ok], wv[~ok])
        if np.any(bad):  # the out-of-range row's max and sum are still those of its logits
            np.testing.assert_allclose(got[0][bad], np.max(xc[bad, lo:hi], 1), rtol=stol)
        parts.append(got)
        grad = fe.cross_entropy_shard_backward(g.astype(cdt), xs, t, lse, class_offset=lo,
                                               validate_targets=False, **bkw)
        assert grad.dtype == x.dtype and grad.shape == xs.shape
        want_g = reference.cross_entropy_shard_backward(g, xs.astype(np.float64), t_ref, lse.astype(np.float64),
                                                        class_offset=lo, **bkw)
        gg = grad.astype(np.float64)
        assert np.all(np.isnan(gg[bad])), (lo, hi)
        assert np.all(gg[t == -100] == 0)
        ok = ~bad
        scale = float(np.abs(want_g[ok]).max(initial=0)) or 1.0
        np.testing.assert_allclose(gg[ok], want_g[ok], rtol=gtol, atol=gtol * scale * (1 if tight else 2),
                                   err_msg=f"grad {lo}:{hi} {opts}")
    # the shards' statistics combined: the whole row's lse and target logit
    m = np.stack([p[0] for p in parts]).astype(np.float64)
    sm = np.stack([p[1] for p in parts]).astype(np.float64)
    M = m.max(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        comb = M + np.log((sm * np.exp(m - np.where(np.isfinite(M), M, 0))).sum(0))
    keep = (t != -100) & ~bad
    np.testing.assert_allclose(comb[keep], lse[keep], rtol=stol * 10, atol=stol * 10)
    xt = np.stack([p[2] for p in parts]).astype(np.float64).sum(0)
    np.testing.assert_allclose(xt[keep], xc[keep, t[keep]], rtol=stol, atol=stol)


EMULATED_SHARD_OPTIONS = [
    {},
    {"weight": True, "label_smoothing": 0.1},
    {"softcap": 4.0, "z_loss": 1e-3},
    {"weight": True, "label_smoothing": 0.2, "z_loss": 0.01, "softcap": 2.5},
]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("i", range(len(EMULATED_SHARD_OPTIONS)))
def test_shard_kernels_emulated(dtype, i):
    """The CUDA shard kernels (fusedce.emulated), small shards on sub-warp teams: uneven
    splits (one class, the first and last class), every option, both targets in other shards
    and out of range; the larger team paths are in test_emulated_paths.py."""
    fe = pytest.importorskip("fusedce.emulated", exc_type=ImportError)
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        npd = ml_dtypes.bfloat16
    else:
        npd = np.dtype(dtype)
    opts = EMULATED_SHARD_OPTIONS[i]
    x, t, w, g = _emulated_shard_problem(npd, 11, 70, seed=6 + i)
    splits = [(0, 30), (30, 50), (50, 51), (51, 70)] if i % 2 == 0 else [(0, 1), (1, 69), (69, 70)]
    _shard_check(fe, x, t, w, g, splits, opts, dtype)


# ----------------------------------------------------------------------------------------
# Process groups


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, job, outdir):
    """Runs job(rank, world) in a gloo group; writes its result or its error."""
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    fusedce.set_num_threads(1)
    result = None
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=timedelta(seconds=60))
        try:
            result = ("ok", job(rank, world))
        finally:
            dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        result = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
    with open(os.path.join(outdir, f"{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def run_group(job, world, timeout=150):
    """job(rank, world) on `world` spawned processes; their results, by rank."""
    need("torch")
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as outdir:
        port = _free_port()
        procs = [ctx.Process(target=_worker, args=(r, world, port, job, outdir))
                 for r in range(world)]
        for p in procs:
            p.start()
        import time
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.kill()
            p.join(5)
        assert not hung, f"{len(hung)} rank(s) still running after {timeout} s"
        out = []
        for r in range(world):
            with open(os.path.join(outdir, f"{r}.pkl"), "rb") as f:
                out.append(pickle.load(f))
    return out


def _ok(results):
    for status, value in results:
        assert status == "ok", value
    return [v for _, v in results]


# The cases every group runs (each a dict of options); the jobs are module-level functions
# so that spawned processes can import them.
CASES = [
    dict(reduction="mean"),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(reduction="mean", weight=True),
    dict(reduction="sum", label_smoothing=0.1),
    dict(reduction="mean", label_smoothing=0.2, weight=True),
    dict(reduction="none", label_smoothing=0.3, weight=True),
    dict(reduction="mean", all_ignored=True),
    dict(reduction="mean", weight=True, z_loss=1e-2),
    dict(reduction="sum", softcap=5.0, z_loss=1e-3, label_smoothing=0.1),
    dict(reduction="none", softcap=3.0, weight=True),
    dict(reduction="mean", dtype="float64", label_smoothing=0.05, z_loss=1e-3),
    dict(reduction="mean", shape3d=True),
    dict(reduction="mean", class_offset=True),
]


def _sizes(world, total):
    # uneven shards: 2 ranks 70/107, 3 ranks 40/90/47
    return {2: [70, 107], 3: [40, 90, 47]}[world] if total == 177 else None


def _problem(case, world, seed):
    import torch
    g = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.get("dtype", "float32"))
    total = 177
    n = 29
    x = torch.randn(n, total, generator=g, dtype=dtype) * 3
    t = torch.randint(0, total, (n,), generator=g)
    t[::5] = -100
    t[1] = 0            # first class (rank 0)
    t[2] = total - 1    # last class (last rank)
    if case.get("all_ignored"):
        t[:] = -100
    w = torch.rand(total, generator=g, dtype=dtype) + 0.2 if case.get("weight") else None
    return x, t, w


def _reference_loss(case, x, t, w):
    """F.cross_entropy (PyTorch's options) or fusedce.reference (z_loss, softcap), and the
    gradient of the loss (upstream: 1, or a fixed ramp for "none")."""
    import torch
    import torch.nn.functional as F
    red = case["reduction"]
    up = (torch.linspace(0.5, 1.5, t.numel(), dtype=x.dtype) if red == "none"
          else torch.tensor(1.0, dtype=x.dtype))
    if case.get("z_loss") or case.get("softcap") or case.get("all_ignored"):
        kw = dict(weight=None if w is None else w.numpy(), reduction=red,
                  label_smoothing=case.get("label_smoothing", 0.0),
                  z_loss=case.get("z_loss", 0.0), softcap=case.get("softcap"))
        loss = reference.cross_entropy(x.numpy(), t.numpy(), **kw)
        grad = reference.cross_entropy_backward(up.numpy(), x.numpy(), t.numpy(), **kw)
        return torch.as_tensor(np.asarray(loss)), torch.as_tensor(grad), up
    xr = x.clone().requires_grad_(True)
    loss = F.cross_entropy(xr, t, weight=w, reduction=red,
                           label_smoothing=case.get("label_smoothing", 0.0))
    loss.backward(up)
    return loss.detach(), xr.grad, up


def job_cases(rank, world):
    import torch
    import fusedce.torch  # noqa: F401
    from fusedce.torch import distributed as D
    report = []
    for i, case in enumerate(CASES):
        x, t, w = _problem(case, world, 100 + i)
        sizes = _sizes(world, x.shape[1])
        lo = sum(sizes[:rank])
        hi = lo + sizes[rank]
        want_loss, want_grad, up = _reference_loss(case, x, t, w)
        shard_x = x[:, lo:hi].clone().requires_grad_(True)
        xin, tin = shard_x, t
        if case.get("shape3d"):  # (..., C_shard) with two row dimensions
            xin = shard_x.reshape(29, 1, -1)
            tin = t.reshape(29, 1)
        kw = dict(reduction=case["reduction"], label_smoothing=case.get("label_smoothing", 0.0),
                  z_loss=case.get("z_loss", 0.0), softcap=case.get("softcap"), weight=w)
        if case.get("class_offset"):
            kw["class_offset"] = lo
        loss = D.vocab_parallel_cross_entropy(xin, tin, **kw)
        loss.backward(up.reshape(loss.shape) if case["reduction"] == "none" else up)
        tol = 1e-10 if x.dtype == torch.float64 else 2e-5
        ok_loss = torch.allclose(loss.double().reshape(-1), want_loss.double().reshape(-1),
                                 rtol=tol * 10, atol=tol * 10)
        ok_grad = torch.allclose(shard_x.grad.double(), want_grad[:, lo:hi].double(),
                                 rtol=tol * 10, atol=tol)
        report.append((i, bool(ok_loss), bool(ok_grad), float(loss.detach().double().sum()),
                       float(want_loss.double().sum())))
    return report


def job_bad_input(rank, world):
    """Each bad call must raise on every rank (and leave the group usable)."""
    import torch
    import fusedce.torch  # noqa: F401
    from fusedce.torch import distributed as D
    x = torch.randn(6, 10 + rank)
    t = torch.tensor([0, 1, 2, 3, 4, 5])
    total = sum(10 + r for r in range(world))
    calls = {
        "weight_length": lambda: D.vocab_parallel_cross_entropy(x, t, weight=torch.ones(total - 1)),
        "target_range": lambda: D.vocab_parallel_cross_entropy(
            x, torch.tensor([0, 1, 2, 3, 4, total])),
        "rows": lambda: D.vocab_parallel_cross_entropy(torch.randn(6 + rank, 10 + rank),
                                                       torch.zeros(6 + rank, dtype=torch.long)),
        "one_rank_bad_dtype": lambda: D.vocab_parallel_cross_entropy(
            x, t.float() if rank == world - 1 else t),
        "target_differs": lambda: D.vocab_parallel_cross_entropy(x, t + (rank == 0)),
        "offsets_do_not_tile": lambda: D.vocab_parallel_cross_entropy(x, t, class_offset=0),
        # no formulas in PyTorch's operations for these: refused on every rank, not a
        # zero or missing derivative
        "under_torch_func": lambda: torch.func.grad(
            lambda z: D.vocab_parallel_cross_entropy(z, t))(x),
        "weight_requires_grad": lambda: D.vocab_parallel_cross_entropy(
            x, t, weight=torch.ones(total, requires_grad=True)),
        "second_derivative": lambda: torch.autograd.grad(
            D.vocab_parallel_cross_entropy(xg := x.clone().requires_grad_(), t), xg,
            create_graph=True),
    }
    out = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = None
        except (TypeError, ValueError, IndexError, RuntimeError) as e:
            out[name] = type(e).__name__
    # still in step: a good call after the bad ones
    out["after"] = float(D.vocab_parallel_cross_entropy(x, t))
    return out


def job_linear(rank, world):
    import torch
    import torch.nn.functional as F
    import fusedce.torch  # noqa: F401
    from fusedce.torch import distributed as D
    report = []
    g = torch.Generator().manual_seed(7)
    n, h, v = 23, 16, 61
    sizes = {2: [30, 31], 3: [20, 25, 16]}[world]
    lo = sum(sizes[:rank])
    hi = lo + sizes[rank]
    x = torch.randn(n, h, generator=g)
    W = torch.randn(v, h, generator=g) / 4
    b = torch.randn(v, generator=g)
    t = torch.randint(0, v, (n,), generator=g)
    t[::4] = -100
    wt = torch.rand(v, generator=g) + 0.5
    for red, ls, weight, chunk in (("mean", 0.0, None, None), ("sum", 0.1, wt, 5),
                                   ("none", 0.0, wt, 7), ("mean", 0.2, wt, 4)):
        up = torch.linspace(0.5, 1.5, n) if red == "none" else torch.tensor(1.0)
        xr, Wr, br = (a.clone().requires_grad_(True) for a in (x, W, b))
        ref = F.cross_entropy(xr @ Wr.T + br, t, weight=weight, reduction=red, label_smoothing=ls)
        ref.backward(up)
        xs = x.clone().requires_grad_(True)
        Ws = W[lo:hi].clone().requires_grad_(True)
        bs = b[lo:hi].clone().requires_grad_(True)
        loss = D.vocab_parallel_linear_cross_entropy(xs, Ws, t, linear_bias_shard=bs, weight=weight,
                                                     reduction=red, label_smoothing=ls,
                                                     chunk_size=chunk)
        loss.backward(up)
        report.append((red, bool(torch.allclose(loss, ref.detach(), rtol=1e-4, atol=1e-5)),
                       bool(torch.allclose(xs.grad, xr.grad, rtol=1e-4, atol=1e-5)),
                       bool(torch.allclose(Ws.grad, Wr.grad[lo:hi], rtol=1e-4, atol=1e-5)),
                       bool(torch.allclose(bs.grad, br.grad[lo:hi], rtol=1e-4, atol=1e-5))))
    return report


def job_example(rank, world):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    import vocab_parallel
    return vocab_parallel.main()


@pytest.mark.parametrize("world", [2, 3])
def test_vocab_parallel_cross_entropy_matches_the_gathered_loss(world):
    results = _ok(run_group(job_all, world))
    cases = [r["cases"] for r in results]
    for rank_report in cases:
        for i, ok_loss, ok_grad, got, want in rank_report:
            assert ok_loss, (CASES[i], got, want)
            assert ok_grad, CASES[i]
    # the loss is the same on every rank
    assert len({tuple(r[3] for r in rep) for rep in cases}) == 1
    for r in results:
        bad = dict(r["bad"])
        assert bad.pop("after") == results[0]["bad"]["after"]  # the group still works
        assert all(v is not None for v in bad.values()), bad  # every bad call raised...
        assert (bad["under_torch_func"] == bad["second_derivative"]
                == bad["weight_requires_grad"] == "RuntimeError"), bad
        assert r["bad"] == results[0]["bad"] or _only_dtype_differs(r["bad"], results[0]["bad"])
        for red, *oks in r["linear"]:
            assert all(oks), (red, oks)
    if world == 2:
        assert results[0]["example"] == results[1]["example"]


def _only_dtype_differs(a, b):
    """The rank given a bad dtype raises TypeError, the others ValueError."""
    return {k for k in a if a[k] != b[k]} <= {"one_rank_bad_dtype"}


def job_all(rank, world):
    out = {"cases": job_cases(rank, world), "bad": job_bad_input(rank, world),
           "linear": job_linear(rank, world)}
    if world == 2:
        out["example"] = job_example(rank, world)
    return out
