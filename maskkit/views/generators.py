"""Shared machinery of the view generators: view specs, input handling and per-rank generators."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
from torch import nn

from maskkit.views.boxes import CropSpec, crop_resize, sample_crop_boxes, whole_image_boxes
from maskkit.views.base import Views
from maskkit.views.colour import ColourSpec, apply_colour, sample_colour_params

__all__ = ["CLIP_MEAN", "CLIP_STD", "ViewSpec", "ViewGenerator", "rank_generator"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Distance between the seeds of neighbouring ranks, so that runs with nearby seeds
# (seed 0 and seed 1) do not share a stream on any rank.
_RANK_SEED_STRIDE = 1_000_003


def rank_generator(seed: int, device: Union[str, torch.device, None] = None) -> torch.Generator:
    """Return a generator on ``device`` seeded with ``seed`` plus an offset for this process's rank.

    The rank is ``torch.distributed.get_rank()`` when a process group is
    initialised and 0 otherwise, so every DDP rank draws different views while a
    run stays reproducible.
    """
    rank = 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
    generator = torch.Generator(device=device if device is not None else "cpu")
    generator.manual_seed(int(seed) + rank * _RANK_SEED_STRIDE)
    return generator


def _as_size(name: str, size) -> Optional[tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    try:
        height, width = (int(item) for item in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair (h, w) of positive ints, got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"{name} must be an int or a pair (h, w) of positive ints, got {size!r}")
    return height, width


@dataclass(frozen=True)
class ViewSpec:
    """Settings of one view.

    Attributes:
        name: the view's name in :class:`~maskkit.views.base.Views`.
        crop: random resized crop, or None for the whole image.
        colour: colour augmentation, or None for none.
        flip_p: probability of a left-right flip.
        size: output size (int or (h, w)), or None for the generator's ``output_size``.
    """

    name: str = "view"
    crop: Optional[CropSpec] = field(default_factory=CropSpec)
    colour: Optional[ColourSpec] = None
    flip_p: float = 0.0
    size: Union[int, tuple[int, int], None] = None

    def __post_init__(self):
        if isinstance(self.crop, dict):
            object.__setattr__(self, "crop", CropSpec(**self.crop))
        if isinstance(self.colour, dict):
            object.__setattr__(self, "colour", ColourSpec(**self.colour))
        if not 0.0 <= float(self.flip_p) <= 1.0:
            raise ValueError(f"flip_p must be a probability in [0, 1], got {self.flip_p!r}")
        object.__setattr__(self, "size", _as_size("size", self.size))


class ViewGenerator(nn.Module):
    """Base class: turns a batch of images into normalised views.

    Args:
        output_size: size of the views (int or (h, w)), or None for the input size.
        mean, std: per-channel statistics used to normalise the output views.
        input_normalized: True when float inputs are already normalised with
            ``input_mean`` / ``input_std``. They are denormalised before cropping
            and colour operations.
        input_mean, input_std: statistics of normalised inputs, by default ``mean`` / ``std``.
        antialias: shrink crops with an antialiasing filter when a view is smaller
            than the input.

    Inputs are (B, 3, H, W) images, either uint8 in [0, 255] or float in [0, 1]
    (or float normalised, with ``input_normalized=True``). They are clamped to
    [0, 1] after conversion. Output views are float32. Mean and std are
    non-persistent buffers: ``.to(device)`` moves them, and they add no
    state-dict keys.
    """

    def __init__(self, output_size=None, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 input_normalized: bool = False, input_mean: Optional[Sequence[float]] = None,
                 input_std: Optional[Sequence[float]] = None, antialias: bool = True):
        super().__init__()
        self.output_size = _as_size("output_size", output_size)
        self.input_normalized = bool(input_normalized)
        self.antialias = bool(antialias)
        for name, values in (("mean", mean), ("std", std), ("input_mean", input_mean), ("input_std", input_std)):
            if values is not None and len(values) != 3:
                raise ValueError(f"{name} must hold 3 per-channel values, got {values!r}")
        if any(value <= 0 for value in std) or (input_std is not None and any(value <= 0 for value in input_std)):
            raise ValueError(f"std and input_std must be positive, got std={std!r}, input_std={input_std!r}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        in_mean = mean if input_mean is None else input_mean
        in_std = std if input_std is None else input_std
        self.register_buffer("input_mean", torch.tensor(in_mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("input_std", torch.tensor(in_std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def to_unit_range(self, images: torch.Tensor) -> torch.Tensor:
        """Validate ``images`` and convert them to float32 RGB in [0, 1]."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
        if images.dtype == torch.uint8:
            if self.input_normalized:
                raise ValueError("images are uint8 but input_normalized=True; pass float normalised images "
                                 "or set input_normalized=False")
            return images.float() / 255.0
        if not images.is_floating_point():
            raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
        images = images.float()
        if self.input_normalized:
            images = images * self.input_std.to(images.device) + self.input_mean.to(images.device)
        return images.clamp(0.0, 1.0)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise [0, 1] images with the output ``mean`` and ``std``."""
        return (images - self.mean.to(images.device)) / self.std.to(images.device)

    def view_size(self, images: torch.Tensor, size: Optional[tuple[int, int]] = None) -> tuple[int, int]:
        """Resolve a view's output size: its own, else the generator's, else the input's."""
        if size is not None:
            return size
        if self.output_size is not None:
            return self.output_size
        return tuple(images.shape[-2:])

    @staticmethod
    def check_generator(generator: Optional[torch.Generator], images: torch.Tensor) -> None:
        """Reject a generator on another device type than ``images``."""
        if generator is not None and torch.device(generator.device).type != images.device.type:
            raise ValueError(f"generator is on {generator.device} but images are on {images.device}; "
                             "create it with torch.Generator(device=images.device) or maskkit.views.rank_generator")

    def render_specs(self, images: torch.Tensor, specs, generator: Optional[torch.Generator],
                     teacher_index: Optional[int] = None) -> Views:
        """Check ``generator``, then make one view of uint8 or float ``images`` per spec, in order."""
        self.check_generator(generator, images)
        images = self.to_unit_range(images)
        rendered = [self.render(images, spec, generator) for spec in specs]
        return Views(views=[view for view, _, _ in rendered],
                     boxes=torch.stack([boxes for _, boxes, _ in rendered]),
                     flipped=torch.stack([flipped for _, _, flipped in rendered]),
                     teacher_index=teacher_index, names=tuple(spec.name for spec in specs))

    def render(self, images: torch.Tensor, spec: ViewSpec, generator: Optional[torch.Generator],
               boxes: Optional[torch.Tensor] = None):
        """Make one view from [0, 1] images.

        Args:
            images: (B, 3, H, W) float images in [0, 1] (see :meth:`to_unit_range`).
            spec: the view's settings.
            generator: source of every random parameter, on the images' device.
            boxes: (B, 4) boxes to use instead of sampling from ``spec.crop``.

        Returns:
            ``(view, boxes, flipped)``: the normalised (B, 3, h, w) view, its (B, 4)
            boxes and a (B,) bool flip mask.
        """
        batch, device = images.shape[0], images.device
        if boxes is None:
            if spec.crop is None:
                boxes = whole_image_boxes(batch, device=device)
            else:
                aspect = images.shape[-1] / images.shape[-2]
                boxes = sample_crop_boxes(batch, spec.crop, generator, device=device, aspect=aspect)
        if spec.flip_p > 0:
            flipped = torch.rand((batch,), generator=generator, device=device) < spec.flip_p
        else:
            flipped = torch.zeros((batch,), dtype=torch.bool, device=device)

        size = self.view_size(images, spec.size)
        view = crop_resize(images, boxes, size, flip=flipped if spec.flip_p > 0 else None,
                           antialias=self.antialias)
        if spec.colour is not None:
            params = sample_colour_params(spec.colour, batch, generator, device=device)
            view = apply_colour(view, spec.colour, params)
        return self.normalize(view), boxes, flipped
