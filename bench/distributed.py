#!/usr/bin/env python3
"""Vocab-parallel cross-entropy on one machine (gloo, CPU): fusedce against all-gathering.

    python bench/distributed.py            # 2 ranks, N=2048, V=128256, float32
    python bench/distributed.py --quick    # N=256, V=32000
    python bench/distributed.py --ranks 2 --n 1024 --v 65536 --repeats 5

Each rank holds (N, V / ranks) logits and the same N targets; one step is a forward and a
backward giving the rank's shard gradient, loss "mean". Methods:

  fusedce      fusedce.torch.distributed.vocab_parallel_cross_entropy: a small all_gather
               (validation, offsets), all_reduce MAX of N values, all_reduce SUM of 2N values;
               one read of the shard forward, one read + one write backward.
  gather+torch all_gather the logits shards (each rank gets all N x V), F.cross_entropy on
               them, the shard's slice of the gradient (autograd through the all_gather's
               copy: torch.cat of the gathered shards, so the backward slices it back).
  gather+fused the same all_gather, then fusedce.torch.cross_entropy (fused kernel).

Time per step: the median over --repeats steps (after one warm-up) of the slowest rank's time
(ranks synchronised by a barrier before each step). Bytes communicated per step and rank:
counted from the tensors handed to the collectives (what the rank sends; an all_gather also
receives (ranks - 1) times its input). One thread per rank (the ranks share the machine).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from datetime import timedelta


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, args, outdir):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import fusedce
    import fusedce.torch as ft
    from fusedce.torch import distributed as D

    torch.set_num_threads(1)
    fusedce.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=300))
    n, v = args.n, args.v
    per = -(-v // world)
    lo, hi = rank * per, min(v, (rank + 1) * per)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, v, (n,), generator=g)
    shard = torch.randn(n, hi - lo, generator=torch.Generator().manual_seed(rank + 1))
    sizes = [min(v, (r + 1) * per) - r * per for r in range(world)]

    # count the bytes handed to collectives
    sent = {"bytes": 0}
    real = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}

    def counting(name):
        def call(*a, **k):
            t = a[1] if name == "all_gather" else a[0]
            sent["bytes"] += t.numel() * t.element_size()
            return real[name](*a, **k)
        return call

    for name in real:
        setattr(dist, name, counting(name))

    class _Gather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            parts = [torch.empty(n, s) for s in sizes]
            dist.all_gather(parts, x.contiguous())
            return torch.cat(parts, 1)

        @staticmethod
        def backward(ctx, grad):
            return grad[:, lo:hi]

    def step_fused():
        x = shard.detach().requires_grad_(True)
        D.vocab_parallel_cross_entropy(x, target).backward()
        return x.grad

    def step_gather(fn):
        def step():
            x = shard.detach().requires_grad_(True)
            fn(_Gather.apply(x), target).backward()
            return x.grad
        return step

    methods = {"fusedce": step_fused, "gather+torch": step_gather(F.cross_entropy),
               "gather+fused": step_gather(ft.cross_entropy)}
    results = {}
    for name, step in methods.items():
        step()  # warm-up
        times = []
        sent["bytes"] = 0
        for _ in range(args.repeats):
            real["all_reduce"](torch.zeros(1))  # barrier (not counted)
            t0 = time.perf_counter()
            step()
            dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            real["all_reduce"](dt, op=dist.ReduceOp.MAX)
            times.append(float(dt))
        times.sort()
        results[name] = (times[len(times) // 2], sent["bytes"] / args.repeats)
    dist.destroy_process_group()
    if rank == 0:
        import pickle
        with open(os.path.join(outdir, "r.pkl"), "wb") as f:
            pickle.dump(results, f)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--v", type=int, default=128256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.n, args.v, args.repeats = 256, 32000, 3
    import multiprocessing as mp
    import pickle
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as outdir:
        port = _free_port()
        procs = [ctx.Process(target=_worker, args=(r, args.ranks, port, args, outdir))
                 for r in range(args.ranks)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(1800)
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                sys.exit("a rank hung")
        with open(os.path.join(outdir, "r.pkl"), "rb") as f:
            results = pickle.load(f)
    mib = args.n * args.v * 4 / 2**20
    print(f"{args.ranks} ranks (gloo, one thread each), N={args.n}, V={args.v}, float32 "
          f"({mib:.0f} MiB of logits in all), forward+backward, loss 'mean'\n")
    print("| method | time / step | x fusedce | bytes sent / step / rank |")
    print("|---|---|---|---|")
    base = results["fusedce"][0]
    for name, (t, b) in results.items():
        print(f"| {name} | {t * 1e3:.1f} ms | {t / base:.2f}x | {b / 1024:.1f} KiB |")


if __name__ == "__main__":
    main()
