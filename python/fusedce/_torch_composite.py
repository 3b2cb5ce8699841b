"""fusedce.torch's losses written with PyTorch's own differentiable operations, for the
derivatives that PyTorch's custom operators cannot give.

fusedce.torch runs its kernels as ``torch.library`` custom operators with a registered
backward. PyTorch (2.13) takes such an operator's backward for first derivatives in eager
mode and under ``torch.compile``, but not:

- under ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``, ``jacfwd``, ``hessian``,
  ``jvp``): the operator raises an error about ``setup_context``, or under ``jvp`` /
  ``jacfwd`` quietly gives a zero tangent;
- in forward-mode AD (``torch.autograd.forward_ad``): the tangent is quietly dropped;
- for second derivatives (``create_graph=True``): the gradient comes out as a constant, so
  that a second derivative quietly misses the loss's curvature.

So the public functions of fusedce.torch check :func:`under_transform` first and, when it
holds (or, for the losses, when the class weights require grad: :func:`computes_here`),
compute here instead: the same formulas and conventions (fusedce's where they differ from PyTorch's;
fusedce.reference, which these lines follow), in plain PyTorch operations that every
transform can see through, at PyTorch's speed and memory. A backward asked to build a graph
in eager mode raises instead (:func:`first_order`) where it has nothing to build it from
(the fused losses keep the gradient, not the logits). The rule for the dtype of a loss
(:func:`loss_dtype`, autocast) lives here too, shared by every torch wrapper.

The inputs are already checked by the public functions (types, options, devices); the
checks below are the ones the kernels make while they run (shapes, class indices).
"""

from __future__ import annotations

import functools

import torch
from torch.autograd import forward_ad

from ._direct import check_class_indices, compute_dtype

__all__ = ["under_transform", "loss_dtype", "weight_wants_grad", "computes_here",
           "building_graph", "first_order", "cross_entropy", "nll_loss", "softmax",
           "log_softmax", "softmax_backward", "log_softmax_backward", "linear_cross_entropy"]


def _has_tangent(t):
    return isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None


def under_transform(*tensors):
    """True when a torch.func transform is running, or when one of `tensors` carries a
    forward-mode tangent: the cases that PyTorch's custom operators get wrong (above).
    While torch.compile traces, the transform test is one Dynamo evaluates when no
    transform runs (None); inside one it cannot, and breaks the graph there (an error with
    fullgraph=True), so that this function runs eagerly and answers below."""
    if torch.compiler.is_compiling():
        if torch._C._functorch.maybe_current_level() is not None:
            return True
    elif torch._C._are_functorch_transforms_active():
        return True
    # forward_ad keeps the innermost dual level in this module-level variable; below 0 no
    # dual level is open, and no tensor can carry a tangent
    if getattr(forward_ad, "_current_level", -1) >= 0:
        return any(_has_tangent(t) for t in tensors)
    return False


def building_graph(*grads):
    """True in an eager backward asked to record a graph (``create_graph=True``) for a
    second derivative. Tracers (torch.compile, make_fx) call backwards with recording on
    and with fake tensors; those calls are not such a request."""
    return (torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and all(g is None or type(g) is torch.Tensor for g in grads))


def loss_dtype(input):
    """The dtype a loss of `input` comes back in: the input's (PyTorch's convention) or,
    while autocast is on for its device, float32 for float16 / bfloat16 input, as PyTorch's
    autocast gives its losses (it runs them in float32). The kernels compute such losses in
    float32 either way; only the rounding of the result differs."""
    if input.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(
            input.device.type):
        return torch.float32
    return input.dtype


def weight_wants_grad(weight):
    """True when the class weights are to be differentiated: the kernels' backward gives
    the logits' (and soft targets') gradients only, so such calls compute here too
    (PyTorch itself refuses it for class-index targets)."""
    return weight is not None and weight.requires_grad and torch.is_grad_enabled()


def computes_here(*tensors, weight=None):
    """The test every fusedce.torch loss makes first: under a transform or a forward-mode
    tangent (of `tensors` or `weight`), or with class weights to differentiate, the call
    is computed here rather than by the operators."""
    return under_transform(*tensors, weight) or weight_wants_grad(weight)


_UNDER_TORCH_FUNC = ("use torch.func (grad, jacrev, jacfwd, hessian, jvp, vmap), under which "
                     "fusedce.torch computes with PyTorch's differentiable operations, or "
                     "torch.nn.functional")


def first_order(name, remedy=_UNDER_TORCH_FUNC):
    """Decorator for the backward functions of fusedce.torch: runs them without recording
    a graph and refuses to be asked for one (:func:`building_graph`), where they would
    otherwise hand back a gradient that a second derivative sees as a constant."""
    def decorate(backward):
        @functools.wraps(backward)
        def run(ctx, *grads):
            if building_graph(*grads):
                raise RuntimeError(
                    f"fusedce.torch.{name}: second derivatives are not available in eager "
                    "autograd (a backward with create_graph=True): the backward runs "
                    f"fusedce's kernels, which autograd cannot differentiate again; {remedy}")
            with torch.no_grad():
                return backward(ctx, *grads)
        return run
    return decorate


# ------------------------------------------------------------------------------------------
# Checks the kernels make while they run
# ------------------------------------------------------------------------------------------


def _values(t):
    """The plain tensor under torch.func's wrappers (a vmapped tensor unwraps to all of its
    batch), so that a check can read values that the transform would not let it read."""
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    while is_wrapped(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


def _check_shape(t, shape, name, what):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), got {tuple(t.shape)}")


def _check_class_indices(target, classes, ignore_index):
    """Raises IndexError for a class index outside [0, C) other than ignore_index; inside a
    compiled function (forward-mode AD there), whose values are not known while tracing,
    the graph checks them when it runs (RuntimeError)."""
    if target.dtype not in (torch.int32, torch.int64):
        raise TypeError("target must hold class indices (int64 or int32) or class "
                        f"probabilities (floating point), got {target.dtype}")
    if torch.compiler.is_compiling():
        bad = (target != ignore_index) & ((target < 0) | (target >= classes))
        torch._assert_async(~bad.any(), "target holds a class index outside [0, C) that is "
                            "not ignore_index")
        return
    check_class_indices(_values(target), classes, ignore_index)


def _check_weight(weight, classes):
    if weight is not None:
        if not weight.is_floating_point():
            raise TypeError(f"weight must be a floating point tensor, got {weight.dtype}")
        _check_shape(weight, (classes,), "weight", "one weight per class")


# ------------------------------------------------------------------------------------------
# The losses (batched layout: the classes at dim 1 of an (N, C, d1, ...) input)
# ------------------------------------------------------------------------------------------


def _classes_last(t):
    return t.movedim(1, -1) if t.dim() > 1 else t


def _reduce(per_row, reduction, numerator_terms, dtype):  # dtype: of the result
    """`per_row` reduced; for "mean", `numerator_terms` is a list of (sum, divisor) pairs
    and the mean is their sum of quotients, 0 where the first divisor (the total weight)
    is 0 (fusedce's convention: a mean over nothing is 0 with a zero gradient)."""
    if reduction == "none":
        return per_row.to(dtype)
    if reduction == "sum":
        return per_row.sum().to(dtype)
    (total, weight), *rest = numerator_terms
    some = weight != 0
    mean = total / torch.where(some, weight, 1)
    for part, count in rest:
        mean = mean + part / torch.where(some, count, 1)
    return torch.where(some, mean, torch.zeros_like(mean)).to(dtype)


def cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                  softcap):
    """fusedce.torch.cross_entropy's loss (batched input; options already checked).

    Per row, over the logits capped first (``x = c tanh(raw / c)`` for softcap c), the
    loss is ``-sum_c coeff_c log_softmax(x)_c + z_loss lse(x)^2`` with coeff the smoothed,
    weighted target distribution:
      class index t:  coeff_c = (1 - eps) w_t [c == t] + eps / C w_c   (0 on ignored rows)
      probabilities q: coeff_c = w_c ((1 - eps) q_c + eps / C)
    "mean" divides the cross-entropy terms by the total weight of the counted rows (their
    number for probabilities) and the z-loss terms by the number of counted rows.
    """
    cd = compute_dtype(input.dtype)
    classes = input.shape[1]
    rows_shape = input.shape[:1] + input.shape[2:]
    _check_weight(weight, classes)
    x = _classes_last(input).to(cd)
    w = None if weight is None else weight.to(cd)
    eps = label_smoothing
    if target.is_floating_point():
        _check_shape(target, input.shape, "target", "class probabilities, shaped like input")
        q = _classes_last(target).to(cd)
        coeff = (1 - eps) * q + eps / classes
        if w is not None:
            coeff = coeff * w
        counted = None
        total_weight = torch.tensor(float(x.numel() // classes if classes else 0), dtype=cd,
                                    device=x.device)
    else:
        _check_shape(target, rows_shape, "target", "input's shape without dimension 1")
        _check_class_indices(target, classes, ignore_index)
        counted = target != ignore_index
        t = torch.where(counted, target, 0).long()
        w_t = counted.to(cd) if w is None else torch.where(counted, w[t], 0)
        is_target = t.unsqueeze(-1) == torch.arange(classes, device=x.device)
        coeff = torch.where(is_target, ((1 - eps) * w_t).unsqueeze(-1), 0)
        if eps:
            spread = torch.full((classes,), eps / classes, dtype=cd, device=x.device)
            if w is not None:
                spread = spread * w
            coeff = coeff + torch.where(counted.unsqueeze(-1), spread, 0)
        total_weight = w_t.sum()
        # ignored rows: neither their values (NaN, all -inf) nor their gradient count
        x = torch.where(counted.unsqueeze(-1), x, 0)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    logp = torch.log_softmax(x, dim=-1)
    # a class whose coefficient is 0 adds nothing, also where its logit is -inf (where
    # 0 * -inf would be NaN); elsewhere d loss / d coeff_c is -log p_c as it stands
    logp = torch.where((coeff == 0) & (logp == float("-inf")), 0, logp)
    per_row = -(coeff * logp).sum(dim=-1)
    terms = [(per_row.sum(), total_weight)]
    if z_loss:
        z = z_loss * torch.logsumexp(x, dim=-1) ** 2
        if counted is not None:
            z = torch.where(counted, z, 0)
            count = counted.sum().to(cd)
        else:
            count = total_weight
        per_row = per_row + z
        terms.append((z.sum(), count))
    return _reduce(per_row, reduction, terms, loss_dtype(input))


def nll_loss(input, target, weight, ignore_index, reduction):
    """fusedce.torch.nll_loss (batched input): ``-w_t input_t`` per row, 0 on ignored rows
    (whatever their values); "mean" divides by the total weight of the counted rows."""
    cd = compute_dtype(input.dtype)
    classes = input.shape[1]
    _check_weight(weight, classes)
    _check_shape(target, input.shape[:1] + input.shape[2:], "target",
                 "input's shape without dimension 1")
    _check_class_indices(target, classes, ignore_index)
    logp = _classes_last(input).to(cd)
    counted = target != ignore_index
    t = torch.where(counted, target, 0).long()
    w_t = counted.to(cd) if weight is None else torch.where(counted, weight.to(cd)[t], 0)
    picked = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    per_row = -w_t * torch.where(w_t != 0, picked, 0)
    return _reduce(per_row, reduction, [(per_row.sum(), w_t.sum())], loss_dtype(input))


def softmax_backward(grad, output, dim):
    """d input from d output for ``output = softmax(input)``: ``y (g - sum(g y))``, in
    operations that a second derivative can go through (``output`` is the saved result,
    whose own derivative leads back to the input)."""
    cd = compute_dtype(output.dtype)
    g, y = grad.to(cd), output.to(cd)
    return (y * (g - (g * y).sum(dim, keepdim=True))).to(output.dtype)


def log_softmax_backward(grad, output, dim):
    """As :func:`softmax_backward` for ``output = log_softmax(input)``: ``g - exp(y) sum(g)``."""
    cd = compute_dtype(output.dtype)
    g, y = grad.to(cd), output.to(cd)
    return (g - torch.exp(y) * g.sum(dim, keepdim=True)).to(output.dtype)


def softmax(input, dim):
    return torch.softmax(input.to(compute_dtype(input.dtype)), dim).to(input.dtype)


def log_softmax(input, dim):
    return torch.log_softmax(input.to(compute_dtype(input.dtype)), dim).to(input.dtype)


def linear_cross_entropy(input, linear_weight, linear_bias, target, weight, ignore_index,
                         reduction, label_smoothing, z_loss, softcap):
    """fusedce.torch.linear_cross_entropy: :func:`cross_entropy` of ``input @ linear_weight.T
    + linear_bias`` (the logits held whole; computed in float32 for half inputs, as the
    fused path does), the classes last."""
    if linear_weight.dim() != 2:
        raise ValueError("linear_weight must be 2-D (classes, features), got shape "
                         f"{tuple(linear_weight.shape)}")
    features = input.shape[-1]
    classes = linear_weight.shape[0]
    _check_shape(linear_weight, (classes, features), "linear_weight",
                 f"{features} = the last dimension of input")
    for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"{name} must have the dtype of input ({input.dtype}), got {t.dtype}")
    if linear_bias is not None:
        _check_shape(linear_bias, (classes,), "linear_bias", "one value per row of linear_weight")
    if target.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"target must hold class indices (int32 or int64), got {target.dtype}")
    _check_shape(target, input.shape[:-1], "target", "input's shape without its last dimension")
    cd = compute_dtype(input.dtype)
    bias = None if linear_bias is None else linear_bias.to(cd)
    logits = torch.nn.functional.linear(input.to(cd), linear_weight.to(cd), bias)
    loss = cross_entropy(logits.reshape(-1, classes), target.reshape(-1), weight, ignore_index,
                         reduction, label_smoothing, z_loss, softcap)
    loss = loss.reshape(target.shape) if reduction == "none" else loss
    return loss.to(loss_dtype(input))
