"""Objectives under 2-process DDP (gloo, CPU) against one process with the whole batch.

Each rank gets half of the batch, runs a small model whose features feed an
objective, and DDP averages the gradients. What must hold, with N = 2B:

- clip without ``local_loss``: every rank computes the full N x N loss, so each
  rank's loss equals the single-process loss.
- clip with ``local_loss``, simclr and byol: each rank computes the mean over
  its own rows, so the mean of the rank losses equals the single-process loss.
- In all these cases the gathered-with-gradient backward gives rank r
  ``world_size * dL/dx_r``, and DDP's average then equals the single-process
  parameter gradient.
- clip with ``gather_with_grad=False``: the feature path gets
  ``1 / world_size`` of the single-process gradient, while the logit scale, which
  every rank uses in full, keeps the whole gradient.

SimCLR and BYOL use LayerNorm heads because SyncBatchNorm needs a GPU.
"""

from __future__ import annotations

import math
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from maskkit.losses import BYOLObjective, CLIPObjective, SimCLRObjective

WORLD_SIZE = 2
BATCH = 8  # whole batch; each rank gets BATCH // WORLD_SIZE rows
CASES = ("clip", "clip_local", "clip_no_grad_gather", "simclr", "byol")


class ToyModel(nn.Module):
    """Linear image and text encoders feeding one objective, shaped like the method's outputs."""

    def __init__(self, objective: nn.Module):
        super().__init__()
        self.image_encoder = nn.Linear(12, 16)
        self.image_projection = nn.Linear(16, 8)
        self.text_encoder = nn.Linear(10, 8)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.objective = objective

    def forward(self, images: torch.Tensor, texts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pooled = {f"view{v + 1}": self.image_encoder(images[v]) for v in range(images.shape[0])}
        outputs = {
            "pooled": pooled,
            "image_features": {name: F.normalize(self.image_projection(x), dim=-1) for name, x in pooled.items()},
            "text_features": F.normalize(self.text_encoder(texts), dim=-1),
            "logit_scale": self.logit_scale.clamp(max=math.log(100)).exp(),
            "teacher_outputs": {"byol_projector": target},
        }
        return sum(value for key, value in self.objective(outputs).items() if key.startswith("loss_"))


def build_objective(case: str) -> nn.Module:
    if case == "clip":
        return CLIPObjective(views={"view1": 0.5, "view2": 0.5})
    if case == "clip_local":
        return CLIPObjective(views={"view1": 0.5, "view2": 0.5}, local_loss=True)
    if case == "clip_no_grad_gather":
        return CLIPObjective(views={"view1": 1.0}, gather_with_grad=False)
    if case == "simclr":
        return SimCLRObjective(in_dim=16, hidden_dim=32, out_dim=8, norm="layer")
    if case == "byol":
        return BYOLObjective(in_dim=16, hidden_dim=32, out_dim=8, norm="layer")
    raise ValueError(case)


def run_case(case: str, rank: int, world_size: int) -> dict:
    """Forward and backward on this rank's rows; returns the loss and the parameter gradients."""
    torch.manual_seed(0)
    model = ToyModel(build_objective(case))
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, BATCH, 12, generator=generator)
    texts = torch.randn(BATCH, 10, generator=generator)
    target = torch.randn(BATCH, 8, generator=generator)

    rows = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    # simclr and byol leave the toy model's text encoder and image projection unused.
    unused = case in ("simclr", "byol")
    wrapped = DistributedDataParallel(model, find_unused_parameters=unused) if world_size > 1 else model
    loss = wrapped(images[:, rows], texts[rows], target[rows])
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss.detach(), "grads": grads}


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE, timeout=timedelta(seconds=120))
    try:
        results = {case: run_case(case, rank, WORLD_SIZE) for case in CASES}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        # Both ranks finish their collectives before either tears down gloo: a rank that exits
        # first while the other still runs gloo's threads can abort with "terminate called".
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def single_process(case: str) -> dict:
    return run_case(case, rank=0, world_size=1)


def assert_grads_close(actual: dict, expected: dict, scale: dict | None = None) -> None:
    assert sorted(actual) == sorted(expected)
    for name, grad in expected.items():
        factor = (scale or {}).get(name, 1.0)
        torch.testing.assert_close(actual[name], factor * grad, rtol=1e-5, atol=1e-5, msg=f"gradient of {name}")


pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_clip_full_matrix_matches_single_process(rank_results):
    reference = single_process("clip")
    for result in rank_results:
        torch.testing.assert_close(result["clip"]["loss"], reference["loss"], rtol=1e-5, atol=1e-5)
        # DDP leaves the averaged gradient on every rank.
        assert_grads_close(result["clip"]["grads"], reference["grads"])


@pytest.mark.parametrize("case", ["clip_local", "simclr", "byol"])
def test_local_rows_match_single_process(rank_results, case):
    reference = single_process(case)
    mean_loss = sum(result[case]["loss"] for result in rank_results) / WORLD_SIZE
    torch.testing.assert_close(mean_loss, reference["loss"], rtol=1e-5, atol=1e-5)
    for result in rank_results:
        assert_grads_close(result[case]["grads"], reference["grads"])


def test_clip_local_loss_differs_per_rank(rank_results):
    # Guards the comparison above: each rank really computes only its own rows.
    assert not torch.allclose(rank_results[0]["clip_local"]["loss"], rank_results[1]["clip_local"]["loss"])


def test_clip_no_grad_gather_scales_feature_gradient(rank_results):
    reference = single_process("clip_no_grad_gather")
    feature_scale = {name: 1.0 / WORLD_SIZE for name in reference["grads"] if name != "logit_scale"}
    for result in rank_results:
        torch.testing.assert_close(result["clip_no_grad_gather"]["loss"], reference["loss"], rtol=1e-5, atol=1e-5)
        assert_grads_close(result["clip_no_grad_gather"]["grads"], reference["grads"], scale=feature_scale)
