"""``maskkit masks``: draw the patches a trained method keeps in each view.

The method runs one training-mode forward without gradients on a few images.
A hook on the student's vision tower records each view it encodes and the
selector's ``keep_idx`` for that pass; the figure shows one row per image and
one column per view, with dropped patches dimmed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from maskkit.cli_config import load_recipe_config

__all__ = ["draw_masks", "load_model_for_recipe", "capture_views"]

logger = logging.getLogger(__name__)

# Brightness of dropped patches in the figure, relative to kept ones.
DROPPED_BRIGHTNESS = 0.25


def _usage_error(message: str) -> Exception:
    from maskkit.cli import UsageError

    return UsageError(message)


def load_model_for_recipe(cfg, checkpoint: Path):
    """Build the recipe's ``MaskKitCLIP`` on the CPU and load ``checkpoint`` into it.

    Accepts MMEngine checkpoints of the whole model and plain open_clip state
    dicts (as ``maskkit export`` writes), which load into the host model only.
    """
    from mmengine.registry import init_default_scope

    from maskkit.integrations.mmengine import MODELS
    from maskkit.integrations.mmengine.compat import load_checkpoint_file

    init_default_scope(cfg.get("default_scope", "maskkit"))
    model_cfg = cfg.model.copy()
    model_cfg.setdefault("total_steps", 1)
    model = MODELS.build(model_cfg)
    try:
        state = load_checkpoint_file(checkpoint, map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise _usage_error(f"failed to read checkpoint {checkpoint}: {error}") from error
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {key.removeprefix("module."): value for key, value in state.items() if torch.is_tensor(value)}

    target = model if any(key.startswith("method.") for key in state) else model.method.model
    missing, unexpected = target.load_state_dict(state, strict=False)
    if unexpected or (target is model.method.model and missing):
        raise _usage_error(f"checkpoint {checkpoint} does not match recipe {cfg.filename}: "
                           f"{len(missing)} missing and {len(unexpected)} unexpected keys "
                           f"(first: {(list(missing) + list(unexpected))[:3]})")
    if missing:
        logger.warning("checkpoint %s lacks %d entries of the model (first: %s); they keep their initial values",
                       checkpoint, len(missing), list(missing)[:3])
    return model


def _read_images(paths: Sequence[Path], image_size: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    from maskkit.data.samples import resize_center_crop

    tensors = []
    for path in paths:
        if not path.is_file():
            raise _usage_error(f"--images: file not found: {path}")
        try:
            with Image.open(path) as image:
                tensors.append(resize_center_crop(image, image_size))
        except (UnidentifiedImageError, OSError) as error:
            raise _usage_error(f"--images: failed to read {path}: {error}") from error
    return torch.stack(tensors)


def _validation_images(cfg, count: int) -> torch.Tensor:
    from maskkit.integrations.mmengine import DATASETS

    loader = cfg.get("val_dataloader")
    if not loader:
        raise _usage_error("the recipe has no validation data to take images from; pass --images FILE ...")
    dataset = DATASETS.build(loader["dataset"])
    samples = [dataset[index] for index in range(min(count, len(dataset)))]
    images = [sample["image"] for sample in samples if isinstance(sample, dict)]
    if not images:
        raise _usage_error("the validation set returned no readable images; pass --images FILE ...")
    return torch.stack(images)


def capture_views(method, images: torch.Tensor, texts: torch.Tensor, seed: int = 0):
    """Run one forward of ``method`` and return ``[(view images, keep_idx or None, grid)]`` per student pass."""
    from maskkit.towers import find_vision_tower, tower_grid

    tower = find_vision_tower(method.model)
    records = []

    def record(module, args, output):
        view = args[0].detach()
        selector = method.selector
        keep_idx = getattr(selector, "keep_idx", None) if selector is not None else None
        grid = tower_grid(tower, tuple(view.shape[-2:]))
        full = keep_idx is None or keep_idx.shape[1] == grid[0] * grid[1]
        records.append((view, None if full else keep_idx.detach().clone(), grid))

    handle = tower.register_forward_hook(record)
    # Show attentive selection even when the checkpoint is from the teacher warm-up.
    method.step = max(method.step, method.teacher_warmup_steps)
    try:
        method.train()
        with torch.no_grad():
            method(images, texts, seed=seed)
    finally:
        handle.remove()
        method.eval()
    return records


def _patch_mask(keep_idx: torch.Tensor | None, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel brightness (B, 1, H, W): 1 on kept patches, ``DROPPED_BRIGHTNESS`` elsewhere."""
    if keep_idx is None:
        return torch.ones(1, 1, *size)
    kept = torch.full((keep_idx.shape[0], grid[0] * grid[1]), DROPPED_BRIGHTNESS)
    kept.scatter_(1, keep_idx.cpu(), 1.0)
    return torch.nn.functional.interpolate(kept.view(-1, 1, *grid), size=size, mode="nearest")


def _displayable(view: torch.Tensor) -> torch.Tensor:
    """Rescale each image of a (B, 3, H, W) batch to [0, 1] for display."""
    view = view.float().cpu()
    low = view.amin(dim=(1, 2, 3), keepdim=True)
    high = view.amax(dim=(1, 2, 3), keepdim=True)
    return (view - low) / (high - low).clamp_min(1e-6)


def draw_masks(recipe: str, checkpoint: Path, out: Path, cfg_options: Sequence[str] = (),
               images: Sequence[Path] | None = None, num_images: int = 8) -> Path:
    """Write a PNG grid of the views ``checkpoint``'s method makes and the patches it keeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maskkit.integrations.mmengine.datasets import get_cached_tokenizer

    if not checkpoint.is_file():
        raise _usage_error(f"checkpoint not found: {checkpoint}")
    if num_images < 1:
        raise _usage_error(f"--num-images must be >= 1, got {num_images}")
    cfg, _ = load_recipe_config(recipe, cfg_options)
    model = load_model_for_recipe(cfg, checkpoint)
    method = model.method
    from maskkit.towers import find_vision_tower, tower_image_size

    image_size = tower_image_size(find_vision_tower(method.model))[0]
    batch = _read_images(images, image_size) if images else _validation_images(cfg, num_images)
    context_length = int(getattr(method.model, "context_length", 77))
    texts = get_cached_tokenizer("ViT-B-16", context_length)(["an image"] * batch.shape[0])
    records = capture_views(method, batch, texts)

    rows, columns = batch.shape[0], 1 + len(records)
    figure, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 1.8 * rows), squeeze=False)
    panels = [("input", batch.float() / 255.0)]
    for index, (view, keep_idx, grid) in enumerate(records):
        shown = _displayable(view) * _patch_mask(keep_idx, grid, tuple(view.shape[-2:]))
        label = f"view {index + 1}" + ("" if keep_idx is None else f": {keep_idx.shape[1]}/{grid[0] * grid[1]} kept")
        panels.append((label, shown))
    for column, (label, pictures) in enumerate(panels):
        for row in range(rows):
            axis = axes[row][column]
            axis.imshow(pictures[row].permute(1, 2, 0).clamp(0, 1).numpy())
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(label, fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
