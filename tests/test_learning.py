"""Every preset learns: a short run on real images lowers its loss.

Each run trains a tiny open_clip model (32 px images, 8 px patches) for 20
AdamW steps on one fixed batch of 16 images from the embedded data set
(Fashion-MNIST items on textured backgrounds) with their captions. The views
and masks change every step, so the loss falls only if the composed step
trains the model through them.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_open_clip
from maskkit.method import build_method
from maskkit.presets import list_presets

STEPS = 20
BATCH = 16
IMAGE_SIZE = 32
CONTEXT = 16


@pytest.fixture(scope="module")
def batch():
    from maskkit.data.embedded import EmbeddedDataset
    from maskkit.data.tokenizer import get_tokenizer

    dataset = EmbeddedDataset("train", image_size=IMAGE_SIZE)
    # Two samples from each of eight classes, so the batch has several distinct captions.
    indices = [int((dataset.labels == label).nonzero()[0][k]) for k in range(2) for label in range(8)]
    images, _ = dataset.render(indices)
    texts = get_tokenizer("ViT-B-16", context_length=CONTEXT)([dataset.captions(i)[0] for i in indices])
    return images, texts


def _train(preset: str, images: torch.Tensor, texts: torch.Tensor) -> list[dict[str, float]]:
    torch.manual_seed(0)
    model = tiny_open_clip(image_size=IMAGE_SIZE, context_length=CONTEXT)
    method = build_method(preset, model, total_steps=STEPS, seed=0, head_hidden_dim=64, head_out_dim=32)
    method.train()
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3,
                                  weight_decay=0.0)
    history = []
    for step in range(STEPS):
        result = method(images, texts)
        losses = {key: value for key, value in result.items() if key.startswith("loss_")}
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), 1.0)
        optimizer.step()
        method.update_teacher(step)
        history.append({"total": total.item(), **{key: value.item() for key, value in losses.items()}})
    return history


def _mean(history, key, part):
    rows = history[:5] if part == "first" else history[-5:]
    return sum(row[key] for row in rows) / len(rows)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("preset", list_presets())
def test_preset_loss_falls(preset, batch):
    history = _train(preset, *batch)
    assert all(torch.isfinite(torch.tensor(row["total"])) for row in history)
    first, last = _mean(history, "total", "first"), _mean(history, "total", "last")
    assert last < 0.9 * first, (preset, first, last)
    clip_first, clip_last = _mean(history, "loss_clip", "first"), _mean(history, "loss_clip", "last")
    assert clip_last < clip_first, (preset, clip_first, clip_last)
