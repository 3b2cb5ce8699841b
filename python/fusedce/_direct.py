"""The direct way for PyTorch CUDA tensors: the plain cross-entropy call straight from the
tensors to the kernels.

The general way (the array layer: DLPack exchanges with CuPy, a dozen small CuPy operations
for "mean" and the upstream factor) measured 0.7-1.4 ms of host time per call on an H200,
against ~10 us for the kernel of a 65536 x 10 batch (docs/gpu.md in the source repository). For the plain call, 2-D
logits with contiguous classes against class indices, with no class weights, no smoothing
and no soft-cap, both fusedce.torch and the NumPy API (given PyTorch CUDA tensors) come here
instead: the tensors' memory goes into the kernels' structs (``_arrays.tensor_rows``), with a
few PyTorch operations on per-row vectors around one kernel call. The numbers are the
general way's: its target check (IndexError), its float64 sums, its 0 for a "mean" over no
counted row, its rounding of the upstream factor.

``ops`` and ``launch`` default to the CUDA kernels on PyTorch's current stream, and to the
CPU kernels for host tensors (which the tests use; fusedce.torch keeps the array layer on
the CPU, which measured cheaper per call there); the tests
(tests/test_torch_direct.py in the source repository) pass fusedce.emulated's kernels and
host tensors.
"""

from __future__ import annotations

import torch

from . import _arrays
from ._arrays import _core

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_INDEX_DTYPES = (torch.int64, torch.int32)


def compute_dtype(dtype):
    """The dtype a loss is computed in: float32 for the half types."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_class_indices(target, classes, ignore_index):
    """IndexError naming the first class index of `target` (a plain tensor) outside
    [0, classes) that is not ignore_index (one host synchronisation)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= classes))
    if bool(bad.any()):
        first = int(target.reshape(-1)[int(torch.argmax(bad.reshape(-1).to(torch.uint8)))])
        raise IndexError(f"target holds class index {first}, outside [0, {classes}) and not "
                         f"ignore_index={ignore_index}")


def empty_like(logits):
    """A fresh gradient tensor for ``logits`` (contiguous)."""
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _divide(value, denom):
    """value / denom for a 0-d tensor ``denom``, and 0 where it is 0 ("mean" over no counted
    row: fusedce's 0, not NaN), on the device: no synchronisation."""
    nonzero = denom != 0
    return torch.where(nonzero, value / torch.where(nonzero, denom, 1.0), 0.0)


def plain(logits, target, weight, label_smoothing, softcap, device_types=("cuda",)) -> bool:
    """Whether a call can go the direct way: PyTorch tensors on a device of ``device_types``
    ("cpu" in the tests: the CPU kernels take host pointers alike), 2-D logits with
    contiguous classes (at least one), a 1-D int32/int64 target on the same device, no class
    weights, no smoothing, no soft-cap. Tensors whose negation is pending (a "neg view",
    whose memory holds the values unnegated) are left to the general way, which resolves
    it."""
    return (isinstance(logits, torch.Tensor) and isinstance(target, torch.Tensor)
            and logits.device.type in device_types and target.device == logits.device
            and logits.dim() == 2 and logits.shape[1] > 0 and logits.stride(1) == 1
            and logits.dtype in _DTYPES and target.dim() == 1 and target.dtype in _INDEX_DTYPES
            and not logits.is_neg() and not target.is_neg()
            and weight is None and label_smoothing == 0.0 and softcap is None)


def _extent(t):
    """The bytes [start, stop) of a 2-D tensor with non-negative strides."""
    if t.numel() == 0:
        return 0, 0
    stop = t.data_ptr() + ((t.shape[0] - 1) * t.stride(0) + (t.shape[1] - 1) * t.stride(1) + 1) * t.element_size()
    return t.data_ptr(), stop


def usable_out(out, logits) -> bool:
    """Whether ``out`` can take the gradient directly: a tensor like the logits (device,
    dtype, shape, contiguous classes) that is either the logits themselves, element for
    element, or shares none of their bytes."""
    if not (isinstance(out, torch.Tensor) and out.device == logits.device and out.dtype == logits.dtype
            and out.shape == logits.shape and out.stride(1) == 1 and not out.is_neg()):
        return False
    if out.data_ptr() == logits.data_ptr() and out.stride() == logits.stride():
        return True
    a0, a1 = _extent(out)
    b0, b1 = _extent(logits)
    return not (a0 < b1 and b0 < a1)


def cross_entropy(input, target, ignore_index, reduction, z_loss, grad_out=None, grad_scale=1.0,
                  validate=True, loss_dtype=None, ops=None, launch=None):
    """The loss of 2-D logits against class indices, and with ``grad_out`` (a tensor like
    ``input``, or ``input`` itself) their gradient times ``grad_scale``, by one kernel call.
    The loss comes in ``loss_dtype`` (default: the input's dtype, PyTorch's convention).
    ``validate``: check the targets first (one host synchronisation; IndexError)."""
    ops = _core if ops is None else ops
    x = input.detach()
    n, c = x.shape
    t = target.detach().contiguous()
    cdtype = compute_dtype(x.dtype)
    none_ignored = False
    if validate and n:  # the general way's check, one synchronisation for both ends
        lo, hi = torch.aminmax(t)
        lo, hi = torch.stack((lo, hi)).tolist()
        none_ignored = not (lo <= ignore_index <= hi)
        if lo < 0 or hi >= c:
            check_class_indices(t, c, ignore_index)
    # "mean" divides by the number of counted rows: n when none is ignored (known without a
    # pass), else counted on the device (no synchronisation)
    denom = None
    if reduction == "mean":
        denom = float(n) if none_ignored else (t != ignore_index).sum(dtype=torch.float64)
    # every row's upstream factor: grad_scale / denom for "mean" (0 where denom is 0)
    if denom is None:
        factor = torch.full((1,), grad_scale, dtype=cdtype, device=x.device)
    elif isinstance(denom, float):
        factor = torch.full((1,), grad_scale / denom if denom else 0.0, dtype=cdtype, device=x.device)
    else:
        factor = _divide(grad_scale, denom).to(cdtype).reshape(1)
    losses = torch.empty(n, dtype=cdtype, device=x.device)
    if n:
        stats = _core.RowStats(loss=losses.data_ptr(), grad=factor.data_ptr(), grad_stride=0)
        options = _core.LossOptions(0, ignore_index, 0.0, z_loss, 0.0)
        if launch is None and x.device.type == "cuda":
            dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
            launch = _core.Launch(dev, torch.cuda.current_stream(dev).cuda_stream)
        elif launch is None:  # host tensors: the CPU kernels
            launch = _core.Launch()
        rows, index = _arrays.tensor_rows(x), _arrays.tensor_index_target(t)
        if grad_out is None:
            ops.cross_entropy_forward(rows, index, options, stats, launch)
        else:
            ops.cross_entropy_with_grad(rows, index, options, stats,
                                        _arrays.tensor_rows(grad_out.detach()), launch)
    loss_dtype = x.dtype if loss_dtype is None else loss_dtype
    if reduction == "none":
        return losses.to(loss_dtype)
    if x.device.type == "cpu":  # the array layer's own sum on the host: the same bits
        total = torch.tensor(_core.sum_as_double(losses.data_ptr(), n, _arrays._torch_code(cdtype))
                             if n else 0.0, dtype=torch.float64)
    else:
        total = losses.sum(dtype=torch.float64)
    if reduction == "mean":
        if isinstance(denom, float):
            total = total / denom if denom else total * 0.0
        else:
            total = _divide(total, denom)
    return total.to(cdtype).to(loss_dtype)
