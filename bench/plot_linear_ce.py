#!/usr/bin/env python3
"""Time and peak extra memory of fused linear + cross-entropy against N, as a plot.

    python bench/plot_linear_ce.py                       # N = 1024 .. 8192, docs/linear_ce.png
    python bench/plot_linear_ce.py --n 512,1024 --out /tmp/lce.png --quick

Runs bench/linear_ce.py once per N (each run its own process, with --json) and draws two
panels: forward + backward time and peak extra memory, for the three GEMMs alone, fusedce
and PyTorch's two F.linear_cross_entropy paths. Other arguments go to bench/linear_ce.py
unchanged (--h, --v, --threads, --ignore, ...). Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
STYLE = {"gemms": ("three GEMMs (floor)", "k--"), "fused": ("fusedce fused", "o-"),
         "torch_ref": ("torch F.linear_cross_entropy", "s-"),
         "torch_chunked": ("torch, chunked options", "^-")}


def run(n, extra, quick):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "r.json")
        argv = [sys.executable, os.path.join(HERE, "linear_ce.py"), "--n", str(n),
                "--json", path] + (["--quick"] if quick else []) + extra
        print(f"N={n}: {' '.join(argv[1:])}", file=sys.stderr)
        subprocess.run(argv, check=True, stdout=sys.stderr)
        with open(path) as f:
            return json.load(f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="1024,2048,4096,8192", help="comma-separated row counts")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "docs", "linear_ce.png"))
    ap.add_argument("--quick", action="store_true", help="pass --quick to linear_ce.py")
    args, extra = ap.parse_known_args(argv)
    ns = [int(v) for v in args.n.split(",")]
    results = [run(n, extra, args.quick) for n in ns]

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, (label, style) in STYLE.items():
        pts = [(n, r["results"][method]) for n, r in zip(ns, results)
               if method in r["results"]]
        if not pts:
            continue
        ax_t.plot([n for n, _ in pts], [m["median_ms"] / 1e3 for _, m in pts], style,
                  label=label)
        mem = [(n, m["peak_extra_mib"]) for n, m in pts if m["peak_extra_mib"] is not None]
        if mem:
            ax_m.plot([n for n, _ in mem], [v for _, v in mem], style, label=label)
    a = results[0]["args"]
    title = (f"H={a['h']}, V={a['v']}, {a['dtype']}, {a['threads']} threads, "
             f"{a['ignore']:.0%} ignored")
    for ax, what in ((ax_t, "forward + backward time (s)"), (ax_m, "peak extra memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N (rows)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle("Fused linear + cross-entropy: " + title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}", file=sys.stderr)
    for n, r in zip(ns, results):
        row = ", ".join(f"{m} {v['median_ms']:.0f} ms / {v['peak_extra_mib'] or 0:.0f} MiB"
                        for m, v in r["results"].items())
        print(f"N={n}: {row}")


if __name__ == "__main__":
    sys.exit(main())
