"""fusedce.torch under torch.compile and torch.export: the torch.library operators.

Most tests compile with backend="aot_eager" (Dynamo and AOTAutograd trace the forward and
the backward, nothing is code-generated), which is what decides whether a graph breaks;
one test runs inductor. Compile counts use torch._dynamo.testing's counters.
"""

import pytest

from conftest import need

torch = need("torch")
import torch._dynamo.testing  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fusedce.torch as ft  # noqa: E402

ops = torch.ops.fusedce
C = 5


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _counter(backend="aot_eager"):
    return torch._dynamo.testing.CompileCounterWithBackend(backend)


def _targets(kind, n, gen, dtype=torch.float64):
    if kind == "prob":
        return torch.softmax(torch.randn(n, C, generator=gen, dtype=dtype), 1)
    t = torch.randint(0, C, (n,), generator=gen)
    t[::4] = -100  # a quarter of the rows ignored
    return t


def _grads(run, module, target, upstream=None):
    """The loss `run(target)` and the gradients of `module`'s parameters (and of a
    probability target, made to require grad) after one backward."""
    module.zero_grad()
    t = target.detach().requires_grad_() if target.is_floating_point() else target
    loss = run(t)
    loss.backward(torch.ones_like(loss) if upstream is None else upstream)
    grads = [p.grad.clone() for p in module.parameters()]
    if t.is_floating_point():
        grads.append(t.grad.clone())
    return loss.detach(), grads


def _assert_same(got, want, rtol=1e-6, atol=1e-7):
    (l1, g1), (l2, g2) = got, want
    torch.testing.assert_close(l1, l2, rtol=rtol, atol=atol)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, C)).to(dtype)


def _op_names(counter):
    """The fusedce operators in the graphs Dynamo handed to the backend."""
    names = set()
    for gm in counter.graphs:
        for node in gm.graph.nodes:
            name = str(node.target).removesuffix(".default")  # an op or its overload
            if node.op == "call_function" and name.startswith("fusedce."):
                names.add(name.removeprefix("fusedce."))
    return names


# ------------------------------------------------------------------------------ opcheck

CE_CASES = {
    "index": dict(kind="index", weighted=False, opts=(-100, "mean", 0.0, 0.0, None)),
    "weights+ignore+smoothing": dict(kind="index", weighted=True,
                                     opts=(-100, "mean", 0.2, 0.0, None)),
    "z_loss+softcap sum": dict(kind="index", weighted=True, opts=(-100, "sum", 0.1, 1e-2, 2.5)),
    "none": dict(kind="index", weighted=False, opts=(3, "none", 0.0, 0.0, None)),
    "prob": dict(kind="prob", weighted=True, opts=(-100, "mean", 0.1, 0.0, None)),
    "prob none z_loss+softcap": dict(kind="prob", weighted=False,
                                     opts=(-100, "none", 0.0, 1e-3, 4.0)),
}


def _ce_case(name, dtype):
    case = CE_CASES[name]
    gen = torch.Generator().manual_seed(len(name))
    x = 2 * torch.randn(7, C, 3, generator=gen, dtype=dtype)
    if case["kind"] == "prob":
        t = torch.softmax(torch.randn(7, C, 3, generator=gen, dtype=dtype), 1)
    else:
        t = torch.randint(0, C, (7, 3), generator=gen)
        t[::3, 0] = case["opts"][0]  # some rows ignored
    w = torch.rand(C, generator=gen, dtype=dtype) + 0.5 if case["weighted"] else None
    return x, t, w, case["opts"]


@pytest.mark.parametrize("case,dtype", [
    pytest.param(case, dtype, id=f"{case}-{str(dtype)[6:]}")
    for case, dtype in [(case, torch.float64) for case in CE_CASES]
    + [("weights+ignore+smoothing", torch.float32), ("prob none z_loss+softcap", torch.float32)]])
def test_opcheck_cross_entropy_ops(case, dtype):
    x, t, w, opts = _ce_case(case, dtype)
    soft = t.is_floating_point()
    xg = x.clone().requires_grad_()
    tg = t.clone().requires_grad_() if soft else t
    torch.library.opcheck(ops.cross_entropy_with_grad, (xg, tg, w, *opts))
    torch.library.opcheck(ops.cross_entropy, (xg, tg, w, *opts))
    torch.library.opcheck(ops.cross_entropy, (x, tg, w, *opts))  # only a soft target's grad
    loss = ops.cross_entropy(x, t, w, *opts)
    upstream = torch.rand(loss.shape, dtype=dtype) + 0.5
    torch.library.opcheck(ops.cross_entropy_backward, (upstream, x, t, w, *opts))
    # the mutating form: no autograd of its own (eager inplace=True wraps it), mutation declared
    torch.library.opcheck(ops.cross_entropy_with_grad_, (x.clone(), t, w, *opts))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_opcheck_nll_softmax_ops(dtype):
    # float64 with every dim and option set; float32 with a few
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, C, 2, generator=gen, dtype=dtype)
    logp = torch.log_softmax(x, 1)
    t = torch.randint(0, C, (6, 2), generator=gen)
    t[0, 0] = 2
    w = torch.rand(C, generator=gen, dtype=dtype) + 0.5
    cases = [(None, -100, "mean"), (w, 2, "none"), (w, -100, "sum"), (w, 2, "mean")]
    dims = (0, 1, 2)
    if dtype == torch.float32:
        cases, dims = cases[1:2], (1,)
    for weight, ignore, reduction in cases:
        args = (t, weight, ignore, reduction)
        torch.library.opcheck(ops.nll_loss, (logp.clone().requires_grad_(), *args))
        up = torch.rand(ops.nll_loss(logp, *args).shape, generator=gen, dtype=dtype)
        torch.library.opcheck(ops.nll_loss_backward, (up, logp, *args))
    up = torch.randn(x.shape, generator=gen, dtype=dtype)
    for dim in dims:
        torch.library.opcheck(ops.softmax, (x.clone().requires_grad_(), dim))
        torch.library.opcheck(ops.log_softmax, (x.clone().requires_grad_(), dim))
        torch.library.opcheck(ops.softmax_backward, (up, torch.softmax(x, dim), dim))
        torch.library.opcheck(ops.log_softmax_backward, (up, torch.log_softmax(x, dim), dim))


def test_operators_alone_have_correct_gradients():
    # the wrappers call cross_entropy only when no logits gradient is wanted; called
    # directly, its derivative recomputes from the logits (fusedce::cross_entropy_backward)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, C, generator=gen, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(4, C, generator=gen, dtype=torch.float64), 1)
    q.requires_grad_()
    t = torch.tensor([0, 4, -100, 2])
    w = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
    for target in (t, q):
        for opts in [(-100, "none", 0.1, 1e-2, 2.0), (-100, "mean", 0.0, 0.0, None)]:
            for op in (ops.cross_entropy, lambda *a: ops.cross_entropy_with_grad(*a)[0]):
                inputs = (x, target) if target is q else (x,)
                assert torch.autograd.gradcheck(
                    lambda *a: op(a[0], a[1] if len(a) > 1 else t, w, *opts), inputs)
    assert torch.autograd.gradcheck(lambda x: ops.nll_loss(x, t, w, -100, "mean"), (x,))
    assert torch.autograd.gradcheck(lambda x: ops.log_softmax(x, 0), (x,))


# ------------------------------------------------------------------------------ compile


TRAIN_CASES = {
    "cross_entropy": lambda y, t: ft.cross_entropy(y, t, label_smoothing=0.1),
    "weighted z_loss softcap": lambda y, t: ft.cross_entropy(
        y, t, weight=torch.linspace(0.5, 2.0, C, dtype=y.dtype), z_loss=1e-2, softcap=3.0),
    "module none": ft.CrossEntropyLoss(reduction="none", label_smoothing=0.2),
    "prob targets": lambda y, q: ft.cross_entropy(y, q, label_smoothing=0.05),
    "log_softmax+nll": lambda y, t: ft.nll_loss(ft.log_softmax(y, 1), t, reduction="sum"),
    "softmax": lambda y, t: (ft.softmax(y, dim=1) ** 2).sum(),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_compiled_training_step_matches_eager(case):
    loss_fn = TRAIN_CASES[case]
    gen = torch.Generator().manual_seed(3)
    model = _model()
    x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    t = _targets("prob" if case == "prob targets" else "index", 16, gen)
    upstream = torch.rand(16, generator=gen, dtype=torch.float64) if "none" in case else None
    counter = _counter()
    compiled = torch.compile(lambda y, t: loss_fn(y, t), fullgraph=True, backend=counter)
    got = _grads(lambda t: compiled(model(x), t), model, t, upstream)
    want = _grads(lambda t: loss_fn(model(x), t), model, t, upstream)
    _assert_same(got, want)
    assert counter.frame_count == 1
    expected = {"log_softmax+nll": {"log_softmax", "nll_loss"},
                "softmax": {"softmax"}}.get(case, {"cross_entropy_with_grad"})
    assert _op_names(counter) == expected


def test_compiled_whole_model_and_loss_with_scaled_upstream():
    gen = torch.Generator().manual_seed(4)
    model = _model(torch.float32)
    x, t = torch.randn(12, 6, generator=gen), _targets("index", 12, gen)

    def step(x, t):
        return 2.5 * ft.cross_entropy(model(x), t, label_smoothing=0.1)

    counter = _counter()
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    for _ in range(2):  # the second call reuses the compiled graphs
        _assert_same(_grads(lambda t: compiled(x, t), model, t),
                     _grads(lambda t: step(x, t), model, t), rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 1
    ref = torch.nn.functional.cross_entropy(model(x), t, label_smoothing=0.1) * 2.5
    torch.testing.assert_close(compiled(x, t), ref)


def test_inductor_training_step():
    # kept small: with a cold cache, inductor's C++ compiles take tens of seconds on 2 cores
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = torch.nn.Linear(6, C, bias=False)
    x, t = torch.randn(32, 6, generator=gen), _targets("index", 32, gen)

    def loss_fn(y, t):
        return ft.cross_entropy(y, t, label_smoothing=0.1, z_loss=1e-3)

    compiled = torch.compile(loss_fn, fullgraph=True, backend="inductor")
    _assert_same(_grads(lambda t: compiled(model(x), t), model, t),
                 _grads(lambda t: loss_fn(model(x), t), model, t), rtol=1e-5, atol=1e-6)


def test_no_gradient_wanted_compiles_the_loss_only_operator():
    gen = torch.Generator().manual_seed(6)
    model = _model()
    x, t = torch.randn(8, 6, generator=gen, dtype=torch.float64), _targets("index", 8, gen)
    counter = _counter()
    compiled = torch.compile(lambda x, t: ft.cross_entropy(model(x), t), fullgraph=True,
                             backend=counter)
    with torch.no_grad():
        loss = compiled(x, t)
    assert _op_names(counter) == {"cross_entropy"}
    torch.testing.assert_close(loss, F.cross_entropy(model(x), t))
    loss = compiled(x, t)  # grad mode is guarded on: a second graph, with the gradient
    assert counter.frame_count == 2
    assert _op_names(counter) == {"cross_entropy", "cross_entropy_with_grad"}
    assert loss.requires_grad


@pytest.mark.parametrize("how", ["dynamic=True", "mark_dynamic", "automatic"])
def test_dynamic_batch_sizes_do_not_recompile_each_size(how):
    gen = torch.Generator().manual_seed(7)
    model = _model(torch.float32)

    def step(x, t):
        return ft.cross_entropy(model(x), t, label_smoothing=0.1) + ft.nll_loss(
            ft.log_softmax(model(x), 1), t)

    counter = _counter()
    compiled = torch.compile(step, fullgraph=True, backend=counter,
                             dynamic=True if how == "dynamic=True" else None)
    counts = []
    for n in (5, 9, 13, 20, 31):  # not 6, the feature count: a batch of 6 would share its symbol
        x, t = torch.randn(n, 6, generator=gen), _targets("index", n, gen)
        if how == "mark_dynamic":
            torch._dynamo.mark_dynamic(x, 0)
            torch._dynamo.mark_dynamic(t, 0)
        _assert_same(_grads(lambda t: compiled(x, t), model, t),
                     _grads(lambda t: step(x, t), model, t), rtol=1e-5, atol=1e-6)
        counts.append(counter.frame_count)
    # one graph for all sizes; "automatic": static first, one dynamic recompile at the second
    # size. (A first count of 2 with dynamic=True is Dynamo specialising the float defaults
    # it first traced as symbols: an empty graph, then the real one.)
    assert counts[-1] == counts[1 if how == "automatic" else 0], counts
    assert counts[-1] <= 2, counts


def test_unbatched_bfloat16_and_probability_target_under_compile():
    gen = torch.Generator().manual_seed(8)
    counter = _counter()
    # a 1-D input with a 0-d target
    x1 = torch.randn(C, generator=gen, dtype=torch.float64, requires_grad=True)
    f1 = torch.compile(lambda x: ft.cross_entropy(x, torch.tensor(3), reduction="none"),
                       fullgraph=True, backend=counter)
    (g1,) = torch.autograd.grad(f1(x1), x1)
    (g2,) = torch.autograd.grad(F.cross_entropy(x1, torch.tensor(3), reduction="none"), x1)
    torch.testing.assert_close(g1, g2)
    # bfloat16 (through float32 on the CPU)
    xb = torch.randn(10, C, generator=gen).to(torch.bfloat16).requires_grad_()
    t = _targets("index", 10, gen)
    fb = torch.compile(lambda x, t: ft.cross_entropy(x, t), fullgraph=True, backend=counter)
    lb = fb(xb, t)
    (gb,) = torch.autograd.grad(lb, xb)
    (gr,) = torch.autograd.grad(ft.cross_entropy(xb, t), xb)
    assert lb.dtype == gb.dtype == torch.bfloat16
    torch.testing.assert_close(gb, gr)
    # d loss / d (probability target)
    x = torch.randn(6, C, generator=gen, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(6, C, generator=gen, dtype=torch.float64), 1)
    q.requires_grad_()
    fq = torch.compile(lambda x, q: ft.cross_entropy(x, q, label_smoothing=0.1, softcap=2.0),
                       fullgraph=True, backend=counter)
    got = torch.autograd.grad(fq(x, q), (x, q))
    want = torch.autograd.grad(ft.cross_entropy(x, q, label_smoothing=0.1, softcap=2.0), (x, q))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_inplace_under_compile():
    gen = torch.Generator().manual_seed(9)
    model = _model(torch.float32)
    x, t = torch.randn(8, 6, generator=gen), _targets("index", 8, gen)

    def step(x, t):
        return ft.cross_entropy(model(x), t, inplace=True)

    # with a gradient to compute it cannot be compiled: fullgraph=True says why ...
    with pytest.raises(RuntimeError, match=r"inplace=True\) is not supported under torch.compile"):
        torch.compile(step, fullgraph=True, backend="aot_eager")(x, t)
    # ... and without fullgraph the call runs eagerly (a graph break), inplace as in eager
    counter = _counter()
    _assert_same(_grads(lambda t: torch.compile(step, backend=counter)(x, t), model, t),
                 _grads(lambda t: F.cross_entropy(model(x), t), model, t), rtol=1e-5, atol=1e-6)
    # without a gradient to compute, inplace=True leaves the input alone, compiled too
    with torch.no_grad():
        logits = model(x)
        before = logits.clone()
        f = torch.compile(lambda y, t: ft.cross_entropy(y, t, inplace=True), fullgraph=True,
                          backend="aot_eager")
        torch.testing.assert_close(f(logits, t), F.cross_entropy(before, t))
    assert torch.equal(logits, before)


# ------------------------------------------------------------------------------ export


class _Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = _model(torch.float32)
        self.loss = ft.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-3)

    def forward(self, x, t):
        return self.loss(self.body(x), t)


def test_torch_export():
    gen = torch.Generator().manual_seed(10)
    model = _Classifier()
    x, t = torch.randn(8, 6, generator=gen), _targets("index", 8, gen)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (x, t), dynamic_shapes=({0: batch}, {0: batch}))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert "fusedce.cross_entropy_with_grad.default" in targets
    exported = ep.module()
    x2, t2 = torch.randn(13, 6, generator=gen), _targets("index", 13, gen)
    for xi, ti in ((x, t), (x2, t2)):
        want = _grads(lambda ti: model(xi, ti), model, ti)
        got = _grads(lambda ti: exported(xi, ti), exported, ti)
        _assert_same(got, want, rtol=1e-5, atol=1e-6)
    # an inference export holds the loss-only operator and survives decompositions
    with torch.no_grad():
        ep = torch.export.export(model, (x, t)).run_decompositions()
        targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
        assert "fusedce.cross_entropy.default" in targets
        torch.testing.assert_close(ep.module()(x, t), model(x, t))


# ------------------------------------------------------------------------------ linear CE


def _linear_case(gen, dtype=torch.float64, n=9, h=4, v=7, bias=True):
    x = torch.randn(n, h, generator=gen, dtype=dtype, requires_grad=True)
    w = torch.randn(v, h, generator=gen, dtype=dtype, requires_grad=True)
    b = torch.randn(v, generator=gen, dtype=dtype, requires_grad=True) if bias else None
    t = torch.randint(0, v, (n,), generator=gen)
    t[::3] = -100
    return x, w, b, t


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_linear_cross_entropy_ops(reduction, bias):
    gen = torch.Generator().manual_seed(11)
    x, w, b, t = _linear_case(gen, bias=bias)
    cw = torch.rand(7, generator=gen, dtype=torch.float64) + 0.5
    tail = (-100, reduction, 0.1, 0.01, 3.0, 4)
    for args in ((x, w, b, t, cw) + tail, (x, w, b, t, None) + tail):
        torch.library.opcheck(ops.linear_cross_entropy, args)
        torch.library.opcheck(ops.linear_cross_entropy_with_grad, args)
        g = torch.rand(() if reduction != "none" else (9,), generator=gen, dtype=torch.float64)
        # (no second derivatives: the backward operator is checked on plain tensors)
        plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(ops.linear_cross_entropy_backward, (g,) + plain)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_compiled_linear_cross_entropy_matches_eager_and_pytorch(reduction):
    gen = torch.Generator().manual_seed(12)
    x, w, b, t = _linear_case(gen)
    upstream = torch.rand(9, generator=gen, dtype=torch.float64) if reduction == "none" else None

    def step(x, w, b):
        return ft.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction,
                                       label_smoothing=0.1, chunk_size=4)

    counter = _counter()
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    results = []
    for fn in (compiled, step,
               lambda x, w, b: F.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction,
                                                      label_smoothing=0.1)):
        loss = fn(x, w, b)
        grads = torch.autograd.grad(loss, (x, w, b), upstream if upstream is not None
                                    else torch.ones_like(loss))
        results.append((loss.detach(), list(grads)))
    _assert_same(results[0], results[1], rtol=1e-12, atol=1e-12)
    _assert_same(results[0], results[2], rtol=1e-10, atol=1e-12)
    assert counter.frame_count == 1
    assert "linear_cross_entropy_with_grad" in _op_names(counter)
