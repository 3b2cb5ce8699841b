"""Train a softmax classifier on scikit-learn's bundled handwritten digits with fusedce.

Run it with ``python -m fusedce.demo`` (or ``python -m fusedce``). It needs scikit-learn
for the data (``pip install 'fusedce[demo]'``); nothing is downloaded: the 1797 8x8 digit
images ship inside scikit-learn.

The model is multinomial logistic regression, ``logits = X W + b``, trained by minibatch
SGD with momentum on the mean cross-entropy plus an L2 penalty on ``W``. The loss and its
gradient with respect to the logits come from one fused call,
``fusedce.cross_entropy_with_grad``; the rest of the backward pass is two matrix products.
The L2 strength defaults to ``1 / (C * n_train)`` with ``C = 1``, which makes the objective
the one scikit-learn's ``LogisticRegression()`` minimises (up to the constant factor
``C * n_train``), so the two should reach the same test accuracy. The demo fits that
``LogisticRegression`` (L-BFGS) on the same split and prints the test and training accuracy
and the time of both, side by side.

The logits of every minibatch are kept, and after training the same batches go through
fusedce, the NumPy reference (``fusedce.reference.cross_entropy_with_grad``) and, when
PyTorch is installed, ``torch.nn.functional.cross_entropy`` forward and backward; the demo
reports the time each took (each library alone on the cores, best of three sweeps). These
batches are tiny (64 x 10), so the timings measure per-call overhead as much as arithmetic;
``bench/cpu.py`` in fusedce's source repository measures large shapes.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import numpy as np

import fusedce
from fusedce import reference

__all__ = ["load_split", "train", "logistic_regression", "main"]

_NO_SKLEARN = (
    "fusedce.demo needs scikit-learn for its bundled handwritten-digits data set "
    "(nothing is downloaded).\nInstall it with:  pip install 'fusedce[demo]'   "
    "(or: pip install scikit-learn)"
)


def have_sklearn():
    """True when scikit-learn can be imported."""
    return importlib.util.find_spec("sklearn") is not None


def load_split(seed=0, test_size=0.25):
    """The digits data, split (stratified, fixed seed) and standardised on the training part.

    Returns ``(X_train, X_test, y_train, y_test)``: float64 features with zero mean and unit
    variance over the training rows (constant pixels stay 0), int64 labels 0..9.

    Raises:
        ImportError: scikit-learn is not installed.

    >>> X_train, X_test, y_train, y_test = load_split(seed=0)
    >>> X_train.shape, X_test.shape, sorted(set(y_test.tolist())) == list(range(10))
    ((1347, 64), (450, 64), True)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X.astype(np.float64), y.astype(np.int64), test_size=test_size, random_state=seed,
        stratify=y)
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std[std == 0] = 1.0
    return (X_train - mean) / std, (X_test - mean) / std, y_train, y_test


def _bar(done, total, width=24):
    filled = int(round(width * done / total)) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _torch_fn():
    """PyTorch's cross_entropy forward+backward on a logits array, or None without torch."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch
    import torch.nn.functional as F

    def loss_and_grad(logits, target):
        x = torch.from_numpy(logits).requires_grad_()
        loss = F.cross_entropy(x, torch.from_numpy(target))
        loss.backward()
        return loss.item(), x.grad.numpy()

    return loss_and_grad


def time_on_batches(batches, repeats=3):
    """Seconds each implementation needs for loss+gradient over all `batches` (best of
    `repeats` sweeps), and the largest gradient difference from the NumPy reference.

    Each implementation runs alone over the whole list, so that one library's worker
    threads never compete with another's for the cores.
    """
    out_buf = np.empty_like(batches[0][0]) if batches else None

    def fused(x, t):
        out = out_buf if out_buf.shape == x.shape else None
        return fusedce.cross_entropy_with_grad(x, t, out=out)

    impls = {"fusedce": fused, "numpy reference": reference.cross_entropy_with_grad}
    torch_fn = _torch_fn()
    if torch_fn is not None:
        impls["torch"] = torch_fn
    seconds = {}
    for name, fn in impls.items():
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for x, t in batches:
                fn(x, t)
            best = min(best, time.perf_counter() - start)
        seconds[name] = best
    max_diff = 0.0
    for x, t in batches:
        ours = np.array(fused(x, t)[1])
        theirs = reference.cross_entropy_with_grad(x, t)[1]
        max_diff = max(max_diff, float(np.max(np.abs(ours - theirs))))
    return seconds, max_diff


def train(epochs=30, batch_size=64, lr=0.1, momentum=0.9, l2=None, seed=0, compare=True,
          verbose=True, file=None):
    """Train the digits classifier; returns a dict of metrics.

    Args:
        epochs: passes over the training set. The learning rate follows a cosine schedule
            from ``lr`` down to 0 over them.
        batch_size: minibatch rows (the training set is shuffled every epoch).
        lr, momentum: SGD with heavy-ball momentum.
        l2: L2 penalty on the weights (not the bias); None means ``1 / n_train``, the
            penalty of scikit-learn's ``LogisticRegression(C=1.0)``.
        seed: the train/test split and the shuffling.
        compare: after training, time fusedce, the NumPy reference and PyTorch (if
            installed) on the logits of every minibatch of the run.
        verbose: print a progress bar and the loss per epoch to ``file`` (stdout).

    Returns:
        dict with ``test_accuracy`` and ``train_accuracy`` (fractions), ``test_loss``,
        ``losses`` (mean training loss per epoch), ``objective`` (final mean loss + penalty
        on the training set), ``train_seconds`` (the training loop's wall time, without the
        comparison), ``seconds`` (total loss+gradient time per implementation:
        ``"fusedce"``, ``"numpy reference"``, ``"torch"`` when available), ``calls``
        (batches timed), ``max_grad_diff`` (largest difference between fusedce's and the
        reference's gradients), ``weights`` and ``bias``.

    Raises:
        ImportError: scikit-learn is not installed.

    >>> m = train(epochs=3, compare=False, verbose=False)
    >>> len(m["losses"]), m["losses"][-1] < m["losses"][0], m["test_accuracy"] > 0.9
    (3, True, True)
    """
    out = file if file is not None else sys.stdout
    X_train, X_test, y_train, y_test = load_split(seed)
    n, d = X_train.shape
    k = int(y_train.max()) + 1
    lam = 1.0 / n if l2 is None else float(l2)
    rng = np.random.default_rng(seed)
    W = np.zeros((d, k))
    b = np.zeros(k)
    vW = np.zeros_like(W)
    vb = np.zeros_like(b)
    recorded = []  # (logits, target) of every minibatch, for the timing comparison
    losses = []
    steps_per_epoch = -(-n // batch_size)
    total_steps = epochs * steps_per_epoch
    step = 0
    grad_buf = np.empty((batch_size, k))  # fusedce writes the gradient here (out=)
    started = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(n)
        epoch_loss = 0.0
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            xb, yb = X_train[rows], y_train[rows]
            logits = xb @ W + b
            out_buf = grad_buf[:len(rows)]
            loss, dlogits = fusedce.cross_entropy_with_grad(logits, yb, out=out_buf)
            if compare:
                recorded.append((logits, yb))
            # backward through logits = xb W + b, plus the L2 term; then SGD with momentum
            gW = xb.T @ dlogits + lam * W
            gb = dlogits.sum(axis=0)
            rate = lr * 0.5 * (1.0 + np.cos(np.pi * step / total_steps))
            vW = momentum * vW - rate * gW
            vb = momentum * vb - rate * gb
            W += vW
            b += vb
            epoch_loss += float(loss) * len(rows)
            step += 1
        losses.append(epoch_loss / n)
        if verbose:
            print(f"epoch {epoch + 1:3d}/{epochs} {_bar(epoch + 1, epochs)} "
                  f"loss {losses[-1]:.4f}", file=out, flush=True)
    train_seconds = time.perf_counter() - started
    seconds, max_diff = time_on_batches(recorded) if compare else ({}, 0.0)
    # the predicted class is the argmax of the logits: fusedce returns it with the loss
    test_loss, test_pred = fusedce.cross_entropy(X_test @ W + b, y_test, return_argmax=True)
    train_loss, train_pred = fusedce.cross_entropy(X_train @ W + b, y_train,
                                                   return_argmax=True)
    return {
        "test_accuracy": float(np.mean(test_pred == y_test)),
        "train_accuracy": float(np.mean(train_pred == y_train)),
        "test_loss": float(test_loss),
        "losses": losses,
        "objective": float(train_loss) + 0.5 * lam * float(np.sum(W * W)),
        "train_seconds": train_seconds,
        "seconds": seconds,
        "calls": len(recorded),
        "max_grad_diff": max_diff,
        "weights": W,
        "bias": b,
    }


def logistic_regression(seed=0, max_iter=1000):
    """scikit-learn's ``LogisticRegression()`` (L2, ``C=1``, L-BFGS) fitted on the split of
    :func:`load_split`: the baseline the demo's classifier is compared with.

    Returns a dict with ``test_accuracy`` and ``train_accuracy`` (fractions), ``seconds``
    (wall time of ``fit``) and ``iterations`` (L-BFGS iterations run).

    Raises:
        ImportError: scikit-learn is not installed.

    >>> m = logistic_regression(seed=0)
    >>> m["test_accuracy"] > 0.9, m["iterations"] < 1000
    (True, True)
    """
    from sklearn.linear_model import LogisticRegression

    X_train, X_test, y_train, y_test = load_split(seed)
    started = time.perf_counter()
    model = LogisticRegression(max_iter=max_iter).fit(X_train, y_train)
    seconds = time.perf_counter() - started
    return {
        "test_accuracy": float(model.score(X_test, y_test)),
        "train_accuracy": float(model.score(X_train, y_train)),
        "seconds": seconds,
        "iterations": int(np.max(model.n_iter_)),
    }


def _three_digits(seconds):
    # three significant digits, never rounded to 0 nor in e-notation: a short run of the
    # fused kernels can take a few milliseconds
    return np.format_float_positional(seconds, precision=3, unique=False, fractional=False,
                                      trim="-")


def main(argv=None):
    """Command-line entry point: ``python -m fusedce.demo [--epochs N] ...``.

    Returns the exit status: 0, or 1 when scikit-learn is missing (with a message on stderr
    saying how to install it).

    >>> main(["--epochs", "1", "--no-compare"])  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    fusedce ...
    epoch   1/1 [########################] loss ...
    test accuracy on the 450 held-out digits...
    fusedce, minibatch SGD, 1 epoch ...% ...% ... s
    scikit-learn LogisticRegression, L-BFGS, ... iterations ...% ...% ... s
    ...
    0
    """
    parser = argparse.ArgumentParser(
        prog="python -m fusedce.demo",
        description="Train a softmax classifier on scikit-learn's bundled digits with "
                    "fusedce's fused cross-entropy and gradient.")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compare", action="store_true",
                        help="skip timing the NumPy reference and PyTorch")
    args = parser.parse_args(argv)
    if not have_sklearn():
        print(_NO_SKLEARN, file=sys.stderr)
        return 1
    print(f"fusedce {getattr(fusedce, '__version__', '?')}: softmax regression on the "
          f"scikit-learn digits (8x8 images, 10 classes), SIMD: {fusedce.simd_level()}, "
          f"threads: {fusedce.get_num_threads()}")
    m = train(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
              compare=not args.no_compare)
    sk = logistic_regression(seed=args.seed)
    n_test = len(load_split(args.seed)[3])
    epochs = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
    rows = [(f"fusedce, minibatch SGD, {epochs}", m, m["train_seconds"]),
            (f"scikit-learn LogisticRegression, L-BFGS, {sk['iterations']} iterations", sk,
             sk["seconds"])]
    width = max(len(name) for name, _, _ in rows)
    print(f"test accuracy on the {n_test} held-out digits, for the same L2-regularised "
          "objective:")
    print(f"  {'':{width}s}  {'test':>7s}  {'train':>7s}  {'time':>9s}")
    for name, r, sec in rows:
        print(f"  {name:{width}s}  {100 * r['test_accuracy']:6.2f}%  "
              f"{100 * r['train_accuracy']:6.2f}%  {_three_digits(sec):>7s} s")
    print(f"  (fusedce's time: its whole training loop, in Python; its test loss: "
          f"{m['test_loss']:.4f})")
    if m["calls"]:
        base = m["seconds"]["fusedce"]
        print(f"loss + gradient on the {m['calls']} minibatches of the run ({args.batch_size} "
              f"x 10 logits; each library alone, best of 3 sweeps):")
        for name, sec in m["seconds"].items():
            ratio = "" if name == "fusedce" else f"  ({sec / base:.1f}x fusedce's time)"
            print(f"  {name:16s} {1e3 * sec:8.2f} ms total, {1e6 * sec / m['calls']:7.1f} us "
                  f"per call{ratio}")
        if "torch" not in m["seconds"]:
            print("  (PyTorch is not installed: its timing is skipped)")
        print("  (batches this small time the per-call overhead more than the arithmetic; "
              "bench/cpu.py, in fusedce's source repository, times large logits)")
        print(f"  largest difference between fusedce's and the reference's gradient: "
              f"{m['max_grad_diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
