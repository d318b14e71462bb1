"""Data-parallel training across processes (torchrun): gloo on CPU, nccl on CUDA.

The contrastive loss must see the *global* batch: every rank gathers the features of all
ranks (its own slice keeps its autograd graph), computes the loss over the global logits,
and scales it by the world size so that DDP's gradient averaging yields the gradient of the
single-process loss on the same global batch. The logit scales enter the loss whole on
every rank, so their gradient is scaled by 1/W to undo that factor. BatchNorm statistics are per process on CPU
(PyTorch's SyncBatchNorm runs only on accelerators); on CUDA BatchNorm is synchronised.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns whether one exists."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return is_distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def _sizes(n: int, device: torch.device) -> list[int]:
    mine = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, mine)
    return [int(s) for s in sizes]


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """All ranks' features `[sum of B_r, D]` in rank order; this rank's slice keeps its gradient.

    Ranks may hold different numbers of rows (a sample that failed to load is dropped on its
    rank only): rows are padded to the largest count for the collective and cut back after."""
    if not is_distributed():
        return x
    sizes = _sizes(x.shape[0], x.device)
    flat = x.detach()
    if flat.shape[0] < max(sizes):
        flat = torch.cat([flat, flat.new_zeros(max(sizes) - flat.shape[0], *flat.shape[1:])])
    parts = [torch.zeros_like(flat) for _ in sizes]
    dist.all_gather(parts, flat.contiguous())
    parts = [p[:n] for p, n in zip(parts, sizes)]
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def gather_objects(items: list) -> list:
    """All ranks' lists concatenated in rank order (pickled: for small metadata such as captions)."""
    if not is_distributed():
        return list(items)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def shard(batch: list[int]) -> list[int]:
    """This rank's contiguous share of a global batch (sizes equal across ranks)."""
    w, r = world_size(), rank()
    per = len(batch) // w
    return batch[r * per : (r + 1) * per]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
