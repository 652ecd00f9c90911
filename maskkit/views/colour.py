"""Batched colour augmentation with explicit, generator-drawn per-sample parameters.

Images are float RGB in [0, 1], shape (B, 3, H, W). The jitter and
grayscale operations are kornia's functional ops with torchvision's formulas: brightness multiplies,
contrast blends with the grayscale mean, saturation blends with the grayscale
image, and hue shifts the HSV hue by a fraction of a full turn. They run in that
fixed order (torchvision shuffles the order on every call). Then come grayscale,
Gaussian blur and solarize at threshold 0.5 without a brightness shift, each
applied to a random subset of the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)

from maskkit.views.blur import blur_kernel_size, gaussian_blur
from maskkit.views.boxes import _check_range

__all__ = ["ColourSpec", "ColourParams", "sample_colour_params", "apply_colour"]


def _check_probability(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ColourSpec:
    """Colour augmentation settings of one view. The defaults change nothing.

    Attributes:
        brightness, contrast, saturation: jitter strengths ``s``. The factor is
            drawn from U[max(0, 1 - s), 1 + s].
        hue: hue jitter strength in [0, 0.5]. The shift is drawn from U[-hue, hue]
            turns of the hue circle.
        jitter_p: probability of applying the colour jitter to a sample.
        grayscale_p: probability of converting a sample to grayscale (3 channels kept).
        blur_p: probability of a Gaussian blur.
        blur_sigma: range of the blur standard deviation, in pixels of the view.
        solarize_p: probability of inverting the values at or above 0.5.
    """

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def __post_init__(self):
        for name in ("brightness", "contrast", "saturation"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.hue) <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue!r}")
        for name in ("jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            object.__setattr__(self, name, _check_probability(name, getattr(self, name)))
        object.__setattr__(self, "blur_sigma", _check_range("blur_sigma", self.blur_sigma, 0.0, math.inf,
                                                             positive=True))

    @classmethod
    def aclip(cls) -> "ColourSpec":
        """A-CLIP's online-view colour augmentation (no flip is part of it)."""
        return cls(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, jitter_p=0.8, grayscale_p=0.2,
                   blur_p=0.1, blur_sigma=(0.1, 2.0), solarize_p=0.2)

    @classmethod
    def simclr(cls) -> "ColourSpec":
        """SLIP's SimCLR-view colour augmentation."""
        return cls(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, jitter_p=0.8, grayscale_p=0.2,
                   blur_p=0.5, blur_sigma=(0.1, 2.0), solarize_p=0.0)

    @property
    def jitters(self) -> bool:
        """Whether the colour jitter can change an image."""
        strength = self.brightness + self.contrast + self.saturation + self.hue
        return self.jitter_p > 0 and strength > 0


@dataclass
class ColourParams:
    """Per-sample colour parameters, each a tensor with the batch as its first dimension.

    Attributes:
        jitter: (B,) bool, samples that get the colour jitter.
        brightness, contrast, saturation: (B,) multiplicative factors.
        hue: (B,) hue shift in turns.
        grayscale, blur, solarize: (B,) bool, samples that get each operation.
        sigma: (B,) blur standard deviation in pixels.
    """

    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    grayscale: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor


def sample_colour_params(spec: ColourSpec, batch_size: int, generator: Optional[torch.Generator],
                         device=None) -> ColourParams:
    """Draw the colour parameters of a batch in one call on ``generator`` (on ``device``)."""
    draws = torch.rand((batch_size, 9), generator=generator, device=device)

    def factor(strength: float, column: int) -> torch.Tensor:
        low = max(0.0, 1.0 - strength)
        return low + (1.0 + strength - low) * draws[:, column]

    sigma_low, sigma_high = spec.blur_sigma
    return ColourParams(
        jitter=draws[:, 0] < spec.jitter_p,
        brightness=factor(spec.brightness, 1),
        contrast=factor(spec.contrast, 2),
        saturation=factor(spec.saturation, 3),
        hue=(2.0 * draws[:, 4] - 1.0) * spec.hue,
        grayscale=draws[:, 5] < spec.grayscale_p,
        blur=draws[:, 6] < spec.blur_p,
        sigma=sigma_low + (sigma_high - sigma_low) * draws[:, 7],
        solarize=draws[:, 8] < spec.solarize_p,
    )


def _select(mask: torch.Tensor, changed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], changed, original)


def apply_colour(images: torch.Tensor, spec: ColourSpec, params: ColourParams) -> torch.Tensor:
    """Apply colour augmentation with the given per-sample parameters.

    Operations whose probability (or strength) in ``spec`` is zero are skipped
    entirely. The others run on the whole batch and ``torch.where`` keeps the
    result only for the selected samples, so unselected samples are returned
    bit for bit and no data-dependent indexing forces a host sync.

    Args:
        images: (B, 3, H, W) float RGB in [0, 1].
        spec: which operations can apply, and their strengths.
        params: per-sample parameters from :func:`sample_colour_params`.

    Returns:
        (B, 3, H, W) images in [0, 1].
    """
    if spec.jitters:
        jittered = images
        if spec.brightness > 0:
            jittered = adjust_brightness_accumulative(jittered, params.brightness)
        if spec.contrast > 0:
            jittered = adjust_contrast_with_mean_subtraction(jittered, params.contrast)
        if spec.saturation > 0:
            jittered = adjust_saturation_with_gray_subtraction(jittered, params.saturation)
        if spec.hue > 0:
            jittered = adjust_hue(jittered, params.hue * (2.0 * math.pi))
        images = _select(params.jitter, jittered, images)

    if spec.grayscale_p > 0:
        gray = rgb_to_grayscale(images).expand_as(images)
        images = _select(params.grayscale, gray, images)

    if spec.blur_p > 0:
        height, width = images.shape[-2:]
        kernel = (blur_kernel_size(height), blur_kernel_size(width))
        sigma = params.sigma[:, None].expand(-1, 2)
        blurred = gaussian_blur(images, sigma, kernel)
        images = _select(params.blur, blurred, images)

    if spec.solarize_p > 0:
        # kornia.enhance.solarize turns a float threshold into a device tensor with a blocking copy, so the
        # same formula (invert values at or above 0.5, no brightness shift) is written out here.
        images = _select(params.solarize, torch.where(images < 0.5, images, 1.0 - images), images)
    return images
