"""Vocab-parallel cross-entropy with fusedce on two processes (gloo, CPU).

    torchrun --nproc-per-node 2 examples/vocab_parallel.py

Each rank holds half of the classes' logits; the loss is that of the whole batch, the same on
every rank, and each rank gets the gradient of its own half. The logits are never gathered:
per step the ranks exchange O(rows) numbers (a max and a few sums per row).
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

import fusedce.torch  # noqa: F401  (fusedce.torch.distributed)
from fusedce.torch_distributed import vocab_parallel_cross_entropy


def main():
    started_here = not dist.is_initialized()
    if started_here:  # torchrun sets MASTER_ADDR, RANK, WORLD_SIZE...
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)  # the same full problem on every rank, for the check below
    n, vocab = 8, 1000
    logits = torch.randn(n, vocab)
    target = torch.randint(0, vocab, (n,))

    per_rank = -(-vocab // world)  # this rank's contiguous classes
    lo, hi = rank * per_rank, min(vocab, (rank + 1) * per_rank)
    shard = logits[:, lo:hi].clone().requires_grad_(True)

    loss = vocab_parallel_cross_entropy(shard, target, label_smoothing=0.1)
    loss.backward()

    full = logits.clone().requires_grad_(True)
    want = F.cross_entropy(full, target, label_smoothing=0.1)
    want.backward()
    assert torch.allclose(loss, want, atol=1e-6), (loss, want)
    assert torch.allclose(shard.grad, full.grad[:, lo:hi], atol=1e-6)
    print(f"rank {rank}/{world}: loss {loss.item():.6f} (gathered F.cross_entropy "
          f"{want.item():.6f}), gradient of classes [{lo}, {hi}) ok")
    if started_here:
        dist.destroy_process_group()
    return round(loss.item(), 6)


if __name__ == "__main__":
    main()
