"""Measure masked inference: image-encoding time and retrieval recall against the keep ratio.

Trains a small open_clip model on the embedded train split with the custom-loop
API (FLIP-style random masking, so masked inference needs no teacher), then
encodes the embedded test split at several ``eval_keep_ratio`` values and
writes one JSON record per ratio::

    python -m maskkit.integrations.open_clip.masked_inference --steps 300 --out masked_inference.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

__all__ = ["SMALL_MODEL", "train_small_model", "measure", "main"]

logger = logging.getLogger(__name__)

# Small enough to train on a CPU in minutes: 64 px images, patch 8, width 128, 4 layers.
SMALL_MODEL = {"embed_dim": 128,
               "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32,
                              "mlp_ratio": 4.0},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3}}


def train_small_model(steps: int, batch_size: int = 128, keep_ratio: float = 0.5, seed: int = 0):
    """Train SMALL_MODEL with the ``flip`` preset; return (method, tokenizer)."""
    import open_clip

    from maskkit.data.embedded import EmbeddedDataset
    from maskkit.integrations.open_clip.api import prepare

    torch.manual_seed(seed)
    model = open_clip.CLIP(**SMALL_MODEL)
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=16)
    data = EmbeddedDataset("train", image_size=64)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    method = prepare(model, "flip", keep_ratio=keep_ratio, input_normalized=False, seed=seed)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 50))
    step = 0
    while step < steps:
        for batch in loader:
            losses = method(batch["image"], tokenizer(batch["text"]))
            loss = sum(value for key, value in losses.items() if key.startswith("loss_"))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(method.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % 50 == 0:
                logger.info("step %d loss %.3f", step, loss.item())
            if step >= steps:
                break
    method.eval()
    return method, tokenizer


@torch.no_grad()
def measure(method, tokenizer, keep_ratios: Sequence[Optional[float]], batch_size: int = 250,
            repeats: int = 3) -> list[dict]:
    """Encode the embedded test split at each keep ratio; return time per image and recall@k."""
    from maskkit.data.embedded import CAPTIONS_PER_IMAGE, EmbeddedDataset
    from maskkit.evaluation.retrieval import retrieval_recall
    from maskkit.views.generators import CLIP_MEAN, CLIP_STD

    data = EmbeddedDataset("test", image_size=64)
    images, _ = data.render(range(len(data)))
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    images = (images.float() / 255.0 - mean) / std
    captions = [text for index in range(len(data)) for text in data.captions(index)]
    text_to_image = torch.arange(len(data)).repeat_interleave(CAPTIONS_PER_IMAGE)
    text_features = torch.cat([method.encode_text(tokenizer(captions[i:i + 1000]), normalize=True)
                               for i in range(0, len(captions), 1000)])

    records = []
    for ratio in keep_ratios:
        method.selector.eval_keep_ratio = ratio
        method.selector.generator = torch.Generator().manual_seed(0)
        method.encode_image(images[:batch_size])  # warm-up, untimed
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            features = torch.cat([method.encode_image(images[i:i + batch_size], normalize=True)
                                  for i in range(0, len(images), batch_size)])
            timings.append(time.perf_counter() - start)
        recall = retrieval_recall(features, text_features, text_to_image)
        records.append({"eval_keep_ratio": ratio, "ms_per_image": 1000 * min(timings) / len(images), **recall})
    method.selector.eval_keep_ratio = None
    return records


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of the small model")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size")
    parser.add_argument("--out", type=Path, default=Path("masked_inference.json"), help="JSON file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    method, tokenizer = train_small_model(args.steps, batch_size=args.batch_size)
    records = measure(method, tokenizer, [None, 0.75, 0.5, 0.25])
    summary = {"steps": args.steps, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
               "records": records}
    args.out.write_text(json.dumps(summary, indent=1))
    for record in records:
        logger.info("%s", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
