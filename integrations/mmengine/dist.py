"""Start torch.distributed for MMEngine's ``pytorch`` launcher, on GPUs or CPUs.

MMEngine 0.10.7's ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` and
its DDP wrapper defaults to ``device_ids=[LOCAL_RANK]``, so a CPU run under
``torchrun`` fails. :func:`init_distributed` starts the process group itself
(gloo on CPUs, NCCL on GPUs) before the Runner is built. The Runner then
finds it already initialised. :func:`ddp_wrapper_cfg` gives the matching
``model_wrapper_cfg``.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as torch_dist

__all__ = ["init_distributed", "ddp_wrapper_cfg", "launched_by_torchrun"]

logger = logging.getLogger(__name__)

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Return whether the torchrun environment variables (RANK, WORLD_SIZE, ...) are all set."""
    return all(key in os.environ for key in _ENV_KEYS)


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> str:
    """Initialise the default process group from torchrun's environment and return its backend.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or None to pick NCCL when CUDA is
            available and gloo otherwise.
        timeout_s: collective timeout in seconds.

    On GPUs the process uses ``cuda:LOCAL_RANK``. Calling it again after the
    group exists returns the existing backend.
    """
    if torch_dist.is_initialized():
        return torch_dist.get_backend()
    missing = [key for key in _ENV_KEYS if key not in os.environ]
    if missing:
        raise RuntimeError(f"--launcher pytorch needs the torchrun environment, but {', '.join(missing)} "
                           "is not set; start the command with torchrun --nproc_per_node N")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo', 'nccl' or None, got {backend!r}")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'nccl' needs CUDA, but no GPU is visible; use backend='gloo'")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch_dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    logger.info("started %s process group: rank %d of %d", backend, torch_dist.get_rank(),
                torch_dist.get_world_size())
    return backend


def ddp_wrapper_cfg(find_unused_parameters: bool = False) -> dict:
    """``model_wrapper_cfg`` for MMEngine's DDP wrapper: ``device_ids=None`` on CPUs, the local GPU otherwise."""
    device_ids = [int(os.environ.get("LOCAL_RANK", 0))] if torch.cuda.is_available() else None
    return dict(type="MMDistributedDataParallel", device_ids=device_ids,
                broadcast_buffers=False, find_unused_parameters=find_unused_parameters)
