"""Rank helpers and batch gathers for contrastive losses under torch.distributed.

Every function works without an initialised process group: the world size is
then 1, the rank 0 and a gather returns its input unchanged. Gathers
concatenate along dim 0 in rank order, so rank ``r``'s rows sit at
``[r * B, (r + 1) * B)`` of the result.

NOTE: every rank must pass a tensor of the same shape, as
``torch.distributed.all_gather`` requires (use ``drop_last=True`` loaders).
The shapes are not compared across ranks, because that would cost one more
collective per call.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "get_rank", "get_world_size", "gather_with_grad", "gather_no_grad"]


def is_distributed() -> bool:
    """Return True when torch.distributed is available and its default group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Rank of this process in the default group, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the default group, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks so that gradients flow back to every rank.

    Uses ``torch.distributed.nn.functional.all_gather``, whose backward sums the
    gradient that each rank computes for a slice and returns the sum to the
    slice's owner. A loss that every rank computes over the gathered batch
    therefore gives rank ``r`` the gradient ``world_size * dL/dx_r``, and
    DDP's gradient averaging turns that back into the single-process gradient.

    Args:
        x: (B, ...) local tensor.

    Returns:
        (world_size * B, ...) tensor; ``x`` itself when not distributed.
    """
    if get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather_no_grad(x: torch.Tensor, keep_local_grad: bool = True) -> torch.Tensor:
    """Concatenate ``x`` from all ranks without a gradient path to other ranks.

    Args:
        x: (B, ...) local tensor.
        keep_local_grad: put ``x`` itself in this rank's slot so gradients
            still reach the local rows. With False the whole result is detached.

    Returns:
        (world_size * B, ...) tensor; ``x`` itself (or ``x.detach()``) when not
        distributed.
    """
    if get_world_size() == 1:
        return x if keep_local_grad else x.detach()
    parts = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    if keep_local_grad:
        parts[get_rank()] = x
    return torch.cat(parts, dim=0)
