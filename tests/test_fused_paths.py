"""The CPU kernel's large-output paths: streaming stores, the gradient of one row written
while the next row is read (csrc/cpu/cross_entropy.h), the unaligned heads and tails.

They only run for outputs of at least the streaming threshold (by default 16 MiB with rows
of 2 KiB or more, the last-level cache with shorter rows; conftest.py sets 16 MiB for every
test, and most tests here 2 MiB with outputs just over it) with rows of at least 512 bytes
(in place: rows of at least 1 MiB), so the parity tests' small shapes never reach them
(below it, out= asks for the gradient's lines a few rows ahead when rows are at most 4 KiB:
test_the_same_bits_streamed_or_not). Checked here: the same values as the reference, and bit
for bit the same values whatever the thread count, the SIMD alignment of the output, or
whether the gradient goes to out= or over the logits. Streamed, a row's whole cache lines
take streaming stores and the partial lines at its ends plain ones.
"""

import os

import numpy as np
import pytest

import fusedce
import fusedce.reference as ref
from conftest import TEST_STREAMING_BYTES, need

# The tests below that take the streamed paths set the threshold to 2 MiB (streaming_from_2mib)
# and use outputs just over it: the same paths as at the suite's 16 MiB, in an eighth of the
# time (these tests run again under the sanitizers in CI, where they took minutes).
SMALL_THRESHOLD = 2 << 20


@pytest.fixture
def streaming_from_2mib():
    fusedce._core.set_streaming_threshold_bytes(SMALL_THRESHOLD)
    try:
        yield
    finally:
        fusedce._core.set_streaming_threshold_bytes(TEST_STREAMING_BYTES)


# 140 x 4100 float32 = 2.2 MiB with 16.4 KiB rows: streamed. 4100 is not a multiple of a
# vector, so rows start at every alignment; 4096 columns keep every row aligned (pipelined).
# 17 rows of 1 MiB + 16 bytes: streamed in place too (rows too long to stay in cache).
SHAPES = [(140, 4100), (140, 4096), (17, 262148)]
OPTIONS = [dict(), dict(label_smoothing=0.1), dict(weight="w"), dict(label_smoothing=0.05, weight="w"),
           dict(probs=True)]


def _case(shape, opts, seed=0):
    rng = np.random.default_rng(seed)
    n, c = shape
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    if opts.get("probs"):
        t = rng.random(shape).astype(np.float32)
        t /= t.sum(axis=1, keepdims=True)
    else:
        t = rng.integers(0, c, n)
        t[::9] = -100  # ignored rows between pipelined ones
    kw = {k: v for k, v in opts.items() if k != "probs"}
    if kw.get("weight") == "w":
        kw["weight"] = (rng.random(c) + 0.5).astype(np.float32)
    return x, t, kw


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_large_fused_gradient_matches_reference_and_is_deterministic(streaming_from_2mib, shape, opts):
    x, t, kw = _case(shape, opts)
    assert x.nbytes >= SMALL_THRESHOLD
    want_loss, want_grad = ref.cross_entropy_with_grad(x, t, reduction="sum", **kw)
    before = fusedce.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            fusedce.set_num_threads(threads)
            results.append(fusedce.cross_entropy_with_grad(x, t, reduction="sum", **kw))
            # an output buffer offset by one float: every row starts at another alignment
            buf = np.empty(x.size + 1, np.float32)[1:].reshape(x.shape)
            results.append(fusedce.cross_entropy_with_grad(x, t, reduction="sum", out=buf, **kw))
            scratch = x.copy()
            results.append(fusedce.cross_entropy_with_grad(scratch, t, reduction="sum", inplace=True, **kw))
    finally:
        fusedce.set_num_threads(before)
    loss, grad = results[0]
    # float32 kernels against the float64 reference: a few ulp of the values involved
    np.testing.assert_allclose(grad, want_grad, rtol=2e-5, atol=2e-7)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-5)
    for other_loss, other_grad in results[1:]:
        assert np.array_equal(other_grad, grad), "gradient depends on threads or layout"
        assert other_loss == loss


# Rows of at least 768 KiB of float32 share one scratch row with the row before them
# (kSharedScratchRowBytes), whose chunks they overwrite in mirrored order: the layout of a
# row's exps alternates from row to row. 196613 classes: just over the threshold, and not a
# whole number of chunks or vectors.
LONG = (196613, 262148)


@pytest.mark.parametrize("c", LONG)
@pytest.mark.parametrize("opts", [dict(), dict(label_smoothing=0.05, weight="w"), dict(probs=True),
                                  dict(softcap=20.0, z_loss=1e-4)], ids=["plain", "w-ls", "probs", "cap-z"])
def test_long_rows_give_the_bits_of_each_row_alone(streaming_from_2mib, c, opts):
    """Each row of a batch of long rows (pipelined, one shared scratch row) gets the bits it
    gets alone (no row before it), streamed out= or not, and in place."""
    x, t, kw = _case((6, c), opts, seed=4)
    if not opts.get("probs"):
        t[4] = -100  # an ignored row between pipelined ones
        if "label_smoothing" not in kw:  # (smoothing over -inf logits gives an infinite loss)
            x[2, :5000] = -np.inf  # a first chunk of -inf only: its exps are zeros
            t[2] = 6000
    alone = [fusedce.cross_entropy_with_grad(x[i:i + 1], t[i:i + 1], reduction="none", **kw) for i in range(6)]
    want_loss = np.concatenate([loss for loss, _ in alone])
    want_grad = np.concatenate([grad for _, grad in alone])
    assert np.isfinite(want_loss).all() and np.isfinite(want_grad).all()
    results = []
    before = fusedce.get_num_threads()
    try:
        fusedce.set_num_threads(1)  # (two threads may take a row each: nothing pipelined)
        for threshold in (1 << 50, SMALL_THRESHOLD):  # out= not streamed, then streamed
            fusedce._core.set_streaming_threshold_bytes(threshold)
            out = np.full_like(x, np.nan)
            results.append(("out=", fusedce.cross_entropy_with_grad(x, t, reduction="none", out=out, **kw)))
        results.append(("in place", fusedce.cross_entropy_with_grad(x.copy(), t, reduction="none", inplace=True,
                                                                     **kw)))
    finally:
        fusedce._core.set_streaming_threshold_bytes(SMALL_THRESHOLD)
        fusedce.set_num_threads(before)
    for what, (loss, grad) in results:
        assert loss.tobytes() == want_loss.tobytes(), what
        assert grad.tobytes() == want_grad.tobytes(), what
    ref_loss, ref_grad = ref.cross_entropy_with_grad(x, t, reduction="none", **kw)
    np.testing.assert_allclose(want_loss, ref_loss, rtol=2e-5)
    np.testing.assert_allclose(want_grad, ref_grad, rtol=2e-5, atol=2e-7)


# float16 / bfloat16 rows of 16.4 KiB, 2.2 MiB in all: streamed, the heads and tails aligned
# for 32-byte half stores; and 17 rows of 1 MiB + 16 bytes, streamed in place too. Their
# results must be the float32 results rounded once.
HALF_SHAPES = [((140, 8200), np.float16), ((140, 8192), "bfloat16"), ((17, 524296), "bfloat16")]


@pytest.mark.parametrize("shape,dtype", HALF_SHAPES,
                         ids=["8200-float16", "8192-bfloat16", "524296-bfloat16"])
@pytest.mark.parametrize("opts", OPTIONS[:3], ids=lambda o: "-".join(o) or "plain")
def test_large_half_gradient_is_float32_rounded_once(streaming_from_2mib, shape, dtype, opts):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    x32, t, kw = _case(shape, opts)
    x = x32.astype(dtype)
    assert x.nbytes >= SMALL_THRESHOLD
    x32 = x.astype(np.float32)  # the half values, exactly
    want_loss, want_grad = fusedce.cross_entropy_with_grad(x32, t, reduction="sum", **kw)
    want_grad = want_grad.astype(dtype)
    before = fusedce.get_num_threads()
    try:
        for threads in (1, 2):
            fusedce.set_num_threads(threads)
            buf = np.empty(x.size + 1, dtype)[1:].reshape(x.shape)  # 2 bytes off alignment
            scratch = x.copy()
            for kind, got in (("out", fusedce.cross_entropy_with_grad(x, t, reduction="sum", **kw)),
                              ("offset out", fusedce.cross_entropy_with_grad(
                                  x, t, reduction="sum", out=buf, **kw)),
                              ("in place", fusedce.cross_entropy_with_grad(
                                  scratch, t, reduction="sum", inplace=True, **kw))):
                loss, grad = got
                what = f"{threads} threads, {kind}"
                assert loss == want_loss, what
                assert np.array_equal(grad.view(np.uint16), want_grad.view(np.uint16)), what
    finally:
        fusedce.set_num_threads(before)


# Rows of 601 classes, just over 2 MiB: streamed (SMALL_THRESHOLD), each row starting at
# another offset in its cache line; in place they are not streamed (short rows). float64,
# float32, bfloat16.
MEDIUM = [(440, np.float64), (880, np.float32), (1750, "bfloat16")]


@pytest.mark.parametrize("rows,dtype", MEDIUM, ids=["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("opts", [dict(), dict(label_smoothing=0.05, weight="w"), dict(probs=True),
                                  dict(softcap=20.0, z_loss=1e-4)], ids=["plain", "w-ls", "probs", "cap-z"])
def test_streamed_partial_lines_match_in_place_at_every_simd_level(simd_level, streaming_from_2mib, rows,
                                                                  dtype, opts):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    x, t, kw = _case((rows, 601), opts)
    x = x.astype(dtype)
    assert x.nbytes >= SMALL_THRESHOLD  # streamed out=
    if opts.get("probs"):
        t = t.astype(dtype)
    if "weight" in kw:
        kw["weight"] = kw["weight"].astype(np.float64 if dtype == np.float64 else np.float32)
    scratch = x.copy()
    want_loss, want = fusedce.cross_entropy_with_grad(scratch, t, reduction="sum", inplace=True, **kw)
    for offset in (0, 1):  # the array's own alignment, then one element off it
        buf = np.empty(x.size + offset, x.dtype)[offset:].reshape(x.shape)
        loss, grad = fusedce.cross_entropy_with_grad(x, t, reduction="sum", out=buf, **kw)
        assert loss == want_loss, f"{simd_level}, offset {offset}"
        assert np.array_equal(grad.view(np.uint8), want.view(np.uint8)), f"{simd_level}, offset {offset}"
    ref_loss, ref_grad = ref.cross_entropy_with_grad(x.astype(np.float64), t.astype(np.float64) if opts.get("probs") else t,
                                                     reduction="sum", **kw)
    tol = 2e-5 if dtype in (np.float32, np.float64) else 1e-2  # bfloat16: 8 bits of mantissa
    np.testing.assert_allclose(loss, ref_loss, rtol=tol)
    np.testing.assert_allclose(grad.astype(np.float64), ref_grad, rtol=tol, atol=tol * np.abs(ref_grad).max())


def _at_page_offset(shape, dtype, offset):
    """An empty array of `shape` whose data starts `offset` bytes past a page boundary."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + offset + 8192, np.uint8)
    start = (-raw.ctypes.data) % 4096 + offset
    return raw[start:start + nbytes].view(dtype).reshape(shape)


# Rows of 4 KiB (1024 float32, 2048 bfloat16), 2.4 MiB: streamed out=. Row r's logits and
# row r - 1's gradient, written while row r is read, then lie at the same distance in a page
# as out= lies from the logits, and within 512 bytes of it the carry starts with a few lines
# before the sweep (carry_lead_elems in csrc/cpu/rowwise.h, against 4K aliasing).
@pytest.mark.parametrize("dtype,cols", [(np.float32, 1024), ("bfloat16", 2048)], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("opts", [dict(), dict(label_smoothing=0.05, weight="w")], ids=["plain", "w-ls"])
def test_gradient_bits_do_not_depend_on_where_out_lies_in_its_page(simd_level, streaming_from_2mib, dtype,
                                                                    cols, opts):
    if dtype == "bfloat16":
        dtype = need("ml_dtypes").bfloat16
    x0, t, kw = _case((600, cols), opts)
    x = _at_page_offset(x0.shape, dtype, 16)  # where NumPy's large arrays start
    x[...] = x0.astype(dtype)
    assert x.nbytes >= SMALL_THRESHOLD
    results = {}
    for offset in (16 + 2048, 16, 16 + 64, 16 + 256, 16 + 448, 16 + 4096 - 64, 16 + 2):
        out = _at_page_offset(x.shape, dtype, offset)
        out[...] = np.nan
        loss, grad = fusedce.cross_entropy_with_grad(x, t, reduction="sum", out=out, **kw)
        results[offset] = (np.asarray(loss).tobytes(), grad.view(np.uint8).tobytes())
    inplace = x.copy()
    loss, grad = fusedce.cross_entropy_with_grad(inplace, t, reduction="sum", inplace=True, **kw)
    want = (np.asarray(loss).tobytes(), grad.view(np.uint8).tobytes())
    for offset, got in results.items():
        assert got == want, f"{simd_level}: out= {offset} bytes past a page, logits 16"


@pytest.mark.parametrize("c", [10, 48, 96, 97, 300])  # the small-class path up to 96, then rows
@pytest.mark.parametrize("tdtype", [np.int32, np.int64])
def test_unvalidated_out_of_range_targets_give_nan_rows(c, tdtype):
    """With validate_targets=False an out-of-range class index is never read: its row's loss
    and gradient are NaN and every other row is exact (docs/api.md)."""
    rng = np.random.default_rng(3)
    n = 37  # not a multiple of any SIMD width: the scalar tail rows are covered too
    x = rng.standard_normal((n, c)).astype(np.float32)
    t = rng.integers(0, c, n).astype(tdtype)
    bad = [1, 20, 36]
    t[bad] = [c, -5, 10**6]
    t[5] = 0
    kw = dict(ignore_index=0, label_smoothing=0.1, weight=rng.random(c) + 0.5)
    loss, grad = fusedce.cross_entropy_with_grad(x, t, reduction="none", validate_targets=False, **kw)
    assert np.isnan(loss[bad]).all() and np.isnan(grad[bad]).all()
    good = np.setdiff1d(np.arange(n), bad)
    want_loss, want_grad = ref.cross_entropy_with_grad(x[good], t[good], reduction="none", **kw)
    np.testing.assert_allclose(loss[good], want_loss, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(grad[good], want_grad, rtol=2e-5, atol=1e-6)
    assert loss[5] == 0 and np.all(grad[5] == 0), "target 0 is ignore_index here"
    nll = fusedce.nll_loss(x, t, reduction="none", validate_targets=False, ignore_index=0)
    assert np.isnan(nll[bad]).all() and np.isfinite(nll[good]).all()
    with pytest.raises(IndexError, match="target"):
        fusedce.cross_entropy(x, t, **kw)


@pytest.mark.parametrize("shape", [(1100, 600), (140, 4100), (17, 262148)], ids=["600", "4100", "262148"])
def test_large_softmax_is_the_same_streamed_or_in_place(streaming_from_2mib, shape):
    """softmax's large outputs are streamed too (in place only for rows of 1 MiB or more)."""
    x, _, _ = _case(shape, {})
    assert x.nbytes >= SMALL_THRESHOLD
    want = ref.softmax(x)
    got = fusedce.softmax(x)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-30)
    buf = np.empty(x.size + 1, np.float32)[1:].reshape(x.shape)  # rows at other alignments
    assert np.array_equal(fusedce.softmax(x, out=buf), got), "out= at an offset"
    y = x.copy()
    assert fusedce.softmax(y, out=y) is y
    assert np.array_equal(y, got), "in place"


def _llc_bytes():
    """The last-level cache as the C library or Linux reports it (0 where neither does)."""
    try:
        size = os.sysconf("SC_LEVEL3_CACHE_SIZE")
        if size > 0:
            return size
    except (ValueError, OSError, AttributeError):
        pass
    largest = 0
    for index in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            break
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:].upper(), 1)
        digits = text.rstrip("KkMm")
        if digits.isdigit():
            largest = max(largest, int(digits) * scale)
    return largest


def test_streaming_thresholds_follow_the_rows_and_the_last_level_cache():
    core = fusedce._core
    assert core.streaming_threshold_bytes(2048) == TEST_STREAMING_BYTES  # (set by conftest.py)
    assert core.streaming_threshold_bytes(512) == TEST_STREAMING_BYTES
    try:
        core.set_streaming_threshold_bytes(0)  # the default
        llc = max(16 << 20, _llc_bytes())
        assert core.short_row_streaming_threshold_bytes() == llc
        assert core.streaming_threshold_bytes(2047) == llc
        assert core.streaming_threshold_bytes(2048) == 16 << 20
        assert core.streaming_threshold_bytes(1 << 20) == 16 << 20
        core.set_streaming_threshold_bytes(12345)
        assert core.streaming_threshold_bytes(512) == core.streaming_threshold_bytes(8192) == 12345
        with pytest.raises(ValueError, match="bytes"):
            core.set_streaming_threshold_bytes(-1)
        assert core.streaming_threshold_bytes(512) == 12345
    finally:
        core.set_streaming_threshold_bytes(TEST_STREAMING_BYTES)
    assert "streaming:" in fusedce.show_config(print_it=False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(1100, 4100), (32800, 130)])  # long rows; short, unaligned
def test_the_same_bits_streamed_or_not(shape, dtype):
    """The threshold only chooses the stores: out= below and above it gives the same bits
    (short rows not streamed ask for their lines ahead: kWriteAheadRows)."""
    x, t, kw = _case(shape, dict(label_smoothing=0.1))
    if dtype == "bfloat16":
        x = x.astype(need("ml_dtypes").bfloat16)
    results = []
    try:
        for threshold in (1 << 50, TEST_STREAMING_BYTES):  # not streamed, then streamed
            fusedce._core.set_streaming_threshold_bytes(threshold)
            out = np.full_like(x, np.nan)
            loss, _ = fusedce.cross_entropy_with_grad(x, t, out=out, reduction="sum", **kw)
            results.append((np.asarray(loss), out))
    finally:
        fusedce._core.set_streaming_threshold_bytes(TEST_STREAMING_BYTES)
    (loss0, g0), (loss1, g1) = results
    assert loss0.tobytes() == loss1.tobytes()
    assert g0.view(np.uint8).tobytes() == g1.view(np.uint8).tobytes()
    g_ref = ref.cross_entropy_with_grad(x.astype(np.float64), t, reduction="sum", **kw)[1]
    rtol = 2.0**-8 if dtype == "bfloat16" else 1e-5  # (bfloat16: the gradient rounded once)
    np.testing.assert_allclose(g0.astype(np.float64), g_ref, rtol=rtol, atol=1e-6)
