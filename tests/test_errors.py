"""Bad input raises TypeError / ValueError / IndexError naming the argument (docs/api.md).

Each row of BAD is (call, exception type, regex the message must contain). Shapes are tiny:
logits X is (4, 3) float32, T its int64 targets.
"""

import numpy as np
import pytest

import fusedce

N, C = 4, 3
X = np.linspace(-1, 1, N * C, dtype=np.float32).reshape(N, C)
X64 = X.astype(np.float64)
T = np.array([0, 1, 2, 1], np.int64)
Q = np.full((N, C), 1 / C, np.float32)


def ro(a):
    """A read-only copy of a."""
    a = np.array(a)
    a.flags.writeable = False
    return a


f = fusedce

BAD = [
    # --- logits / x / pred dtype and kind
    pytest.param(lambda: f.cross_entropy(X.astype(np.int32), T), TypeError, "logits",
                 id="int-logits"),
    pytest.param(lambda: f.cross_entropy(X.astype(np.complex64), T), TypeError, "logits",
                 id="complex-logits"),
    pytest.param(lambda: f.cross_entropy(X.astype(object), T), TypeError, "logits",
                 id="object-logits"),
    pytest.param(lambda: f.cross_entropy(np.array([["a", "b"], ["c", "d"]]), T[:2]), TypeError,
                 "logits", id="string-logits"),
    pytest.param(lambda: f.cross_entropy(X.astype(bool), T), TypeError, "logits",
                 id="bool-logits"),
    pytest.param(lambda: f.softmax(X.astype(np.int64)), TypeError, r"\bx\b", id="int-softmax"),
    pytest.param(lambda: f.mse_loss(X.astype(np.int32), X), TypeError, "pred", id="int-pred"),
    pytest.param(lambda: f.cross_entropy(np.float32(1.0), np.int64(0)), ValueError, "logits",
                 id="0d-logits"),
    pytest.param(lambda: f.softmax(np.float64(1.0)), ValueError, r"\bx\b", id="0d-softmax"),
    # --- index targets
    pytest.param(lambda: f.cross_entropy(X, T.astype(bool)), TypeError, "target",
                 id="bool-target"),
    pytest.param(lambda: f.cross_entropy(X, T.astype(np.int16)), TypeError, "target",
                 id="int16-target"),
    pytest.param(lambda: f.cross_entropy(X, T.astype(np.float32)), ValueError, "target",
                 id="float-index-target-wrong-shape"),
    pytest.param(lambda: f.cross_entropy(X, T[:3]), ValueError, "target",
                 id="target-too-short"),
    pytest.param(lambda: f.cross_entropy(X, T[:, None]), ValueError, "target",
                 id="target-extra-dim"),
    pytest.param(lambda: f.cross_entropy(X[None], T[None, :3]), ValueError, "target",
                 id="target-3d-mismatch"),
    pytest.param(lambda: f.cross_entropy(X, np.array([0, 1, 3, 1])), IndexError, "target",
                 id="target-equals-C"),
    pytest.param(lambda: f.cross_entropy(X, np.array([0, -1, 2, 1])), IndexError, "target",
                 id="target-negative"),
    pytest.param(lambda: f.cross_entropy(X, np.array([0, 1, 2, 1]) + 2**40), IndexError,
                 "target", id="target-huge"),
    pytest.param(lambda: f.cross_entropy(X, np.array([0, 9, 2, -1]), ignore_index=-1),
                 IndexError, "target", id="target-out-of-range-with-ignore"),
    pytest.param(lambda: f.cross_entropy_with_grad(X, np.array([0, 1, 5, 1], np.int32)),
                 IndexError, "target", id="with-grad-target-range"),
    pytest.param(lambda: f.cross_entropy_backward(1.0, X, np.array([0, 1, 3, 1])), IndexError,
                 "target", id="backward-target-range"),
    pytest.param(lambda: f.nll_loss(X, np.array([0, 1, 7, 1])), IndexError, "target",
                 id="nll-target-range"),
    pytest.param(lambda: f.nll_loss_backward(1.0, X, np.array([-5, 1, 2, 1])), IndexError,
                 "target", id="nll-backward-target-range"),
    # --- probability targets
    pytest.param(lambda: f.cross_entropy(X, np.full((N, C + 1), 0.25, np.float32)), ValueError,
                 "target", id="prob-target-wrong-C"),
    pytest.param(lambda: f.cross_entropy(X, Q.T.copy()), ValueError, "target",
                 id="prob-target-transposed"),
    pytest.param(lambda: f.cross_entropy(X, Q.astype(np.complex64)), TypeError, "target",
                 id="complex-target"),
    # --- weight
    pytest.param(lambda: f.cross_entropy(X, T, weight=np.ones(C + 1)), ValueError, "weight",
                 id="weight-length"),
    pytest.param(lambda: f.cross_entropy(X, T, weight=np.ones((1, C))), ValueError, "weight",
                 id="weight-2d"),
    pytest.param(lambda: f.cross_entropy(X, T, weight=np.array([1.0, np.nan, 1.0])),
                 ValueError, "weight", id="weight-nan"),
    pytest.param(lambda: f.cross_entropy(X, T, weight=np.array([1.0, np.inf, 1.0])),
                 ValueError, "weight", id="weight-inf"),
    pytest.param(lambda: f.nll_loss(X, T, weight=np.ones(2)), ValueError, "weight",
                 id="nll-weight-length"),
    pytest.param(lambda: f.cross_entropy(X, T, weight=np.array(["a", "b", "c"])), TypeError,
                 "weight", id="weight-strings"),
    # --- options
    pytest.param(lambda: f.cross_entropy(X, T, reduction="avg"), ValueError, "reduction",
                 id="reduction-avg"),
    pytest.param(lambda: f.cross_entropy(X, T, reduction="MEAN"), ValueError, "reduction",
                 id="reduction-upper"),
    # None is the wrong kind of value as much as a bad option value: either type is fine
    pytest.param(lambda: f.cross_entropy(X, T, reduction=None), (TypeError, ValueError),
                 "reduction", id="reduction-none-object"),
    pytest.param(lambda: f.mse_loss(X, X, reduction="elementwise"), ValueError, "reduction",
                 id="mse-reduction"),
    pytest.param(lambda: f.nll_loss_backward(1.0, X, T, reduction="avg"), ValueError,
                 "reduction", id="nll-backward-reduction"),
    pytest.param(lambda: f.cross_entropy(X, T, label_smoothing=-0.1), ValueError,
                 "label_smoothing", id="smoothing-negative"),
    pytest.param(lambda: f.cross_entropy(X, T, label_smoothing=1.5), ValueError,
                 "label_smoothing", id="smoothing-above-1"),
    pytest.param(lambda: f.cross_entropy(X, T, label_smoothing=float("nan")), ValueError,
                 "label_smoothing", id="smoothing-nan"),
    pytest.param(lambda: f.cross_entropy_with_grad(X, T, label_smoothing=float("inf")),
                 ValueError, "label_smoothing", id="smoothing-inf"),
    pytest.param(lambda: f.cross_entropy(X, T, label_smoothing="0.1"), TypeError,
                 "label_smoothing", id="smoothing-string"),
    pytest.param(lambda: f.cross_entropy(X, T, ignore_index=1.5), TypeError, "ignore_index",
                 id="ignore-index-float"),
    pytest.param(lambda: f.cross_entropy(X, T, ignore_index="x"), TypeError, "ignore_index",
                 id="ignore-index-string"),
    pytest.param(lambda: f.cross_entropy(X, T, foo=1), TypeError, "foo",
                 id="unknown-keyword"),
    pytest.param(lambda: f.softmax(X, dim=0), TypeError, "dim", id="unknown-keyword-softmax"),
    # --- axis
    pytest.param(lambda: f.cross_entropy(X, T, axis=2), IndexError, "axis", id="axis-2"),
    pytest.param(lambda: f.cross_entropy(X, T, axis=-3), IndexError, "axis", id="axis-neg3"),
    pytest.param(lambda: f.softmax(X, 5), IndexError, "axis", id="softmax-axis"),
    pytest.param(lambda: f.log_softmax_backward(X, X, axis=-7), IndexError, "axis",
                 id="log-softmax-backward-axis"),
    pytest.param(lambda: f.cross_entropy(X, T, axis=1.0), TypeError, "axis", id="axis-float"),
    # --- out= / inplace=
    pytest.param(lambda: f.cross_entropy_backward(1.0, X, T, out=np.empty((N, C + 1),
                                                                       np.float32)),
                 ValueError, "out", id="out-wrong-shape"),
    pytest.param(lambda: f.cross_entropy_backward(1.0, X, T, out=np.empty((N, C))),
                 TypeError, "out", id="out-wrong-dtype"),
    pytest.param(lambda: f.cross_entropy_with_grad(X, T, out=ro(np.empty((N, C), np.float32))),
                 ValueError, "out", id="out-read-only"),
    pytest.param(lambda: f.cross_entropy_with_grad(X, T, out=np.empty((C, N), np.float32)),
                 ValueError, "out", id="with-grad-out-shape"),
    pytest.param(lambda: f.softmax(X, out=np.empty((N, C), np.float64)), TypeError, "out",
                 id="softmax-out-dtype"),
    pytest.param(lambda: f.log_softmax(X, out=[[0.0] * C] * N), TypeError, "out",
                 id="out-list"),
    pytest.param(lambda: f.mse_loss_backward(1.0, X, X, out=np.empty(N, np.float32)),
                 ValueError, "out", id="mse-out-shape"),
    pytest.param(lambda: f.nll_loss_backward(1.0, X, T, out=ro(np.empty((N, C), np.float32))),
                 ValueError, "out", id="nll-out-read-only"),
    pytest.param(lambda: f.cross_entropy_with_grad(ro(X), T, inplace=True), ValueError,
                 "logits", id="inplace-read-only"),
    pytest.param(lambda: f.cross_entropy_with_grad(X.astype(np.int32), T, inplace=True),
                 TypeError, "logits", id="inplace-int"),
    # --- upstream gradients, lse, second operands
    pytest.param(lambda: f.cross_entropy_backward(np.ones(N + 1, np.float32), X, T,
                                                  reduction="none"),
                 ValueError, "grad_loss", id="grad-loss-shape-none"),
    pytest.param(lambda: f.cross_entropy_backward(np.ones(N, np.float32), X, T,
                                                  reduction="mean"),
                 ValueError, "grad_loss", id="grad-loss-array-for-mean"),
    pytest.param(lambda: f.cross_entropy_with_grad(X, T, reduction="none",
                                                   grad_loss=np.ones((N, 1), np.float32)),
                 ValueError, "grad_loss", id="with-grad-grad-loss-shape"),
    pytest.param(lambda: f.nll_loss_backward(np.ones(2), X, T, reduction="none"), ValueError,
                 "grad_loss", id="nll-grad-loss-shape"),
    pytest.param(lambda: f.mse_loss_backward(np.ones(N), X, X, reduction="none"), ValueError,
                 "grad_loss", id="mse-grad-loss-shape"),
    pytest.param(lambda: f.cross_entropy_backward(1.0, X, T, lse=np.zeros(N + 1, np.float32)),
                 ValueError, "lse", id="lse-wrong-shape"),
    pytest.param(lambda: f.cross_entropy_backward(1.0, X, T, lse=np.zeros((N, C), np.float32)),
                 ValueError, "lse", id="lse-2d"),
    pytest.param(lambda: f.mse_loss(X, X[:, :2]), ValueError, "target", id="mse-shape"),
    pytest.param(lambda: f.mse_loss_backward(1.0, X, X.T), ValueError, "target",
                 id="mse-backward-shape"),
    pytest.param(lambda: f.softmax_backward(X, X64), TypeError, r"\by\b",
                 id="softmax-backward-mixed-dtype"),
    pytest.param(lambda: f.log_softmax_backward(X, X[:, :2]), ValueError, r"\by\b|grad",
                 id="log-softmax-backward-shape"),
    pytest.param(lambda: f.softmax_backward(X.astype(np.int32), X), TypeError, "grad",
                 id="softmax-backward-int-grad"),
    # --- configuration
    pytest.param(lambda: f.set_simd_level("sse9"), ValueError, r"sse9|name",
                 id="simd-level-unknown"),
    pytest.param(lambda: f.set_num_threads(0), ValueError, r"thread|\bn\b",
                 id="zero-threads"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_error_leaves_inputs_alone():
    x, t = X.copy(), np.array([0, 1, 3, 1])
    with pytest.raises(IndexError):
        f.cross_entropy_with_grad(x, t, inplace=True)
    np.testing.assert_array_equal(x, X)


def test_sequences_are_accepted():
    """Plain Python lists go through np.asarray: float lists are logits, int lists targets."""
    loss = f.cross_entropy([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]], [1, 2])
    from fusedce import reference as ref
    want = ref.cross_entropy(np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]), np.array([1, 2]))
    np.testing.assert_allclose(loss, want, rtol=1e-10)
