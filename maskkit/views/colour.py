"""Batched colour augmentation with explicit, generator-drawn per-sample parameters.

Images are float RGB in [0, 1], shape (B, 3, H, W). The colour jitter follows
torchvision's ``ColorJitter`` formulas with per-sample factors, written as one
affine colour map per sample so that the whole batch takes a handful of
elementwise passes. It differs from torchvision in three ways:

- Order: always brightness, contrast, saturation, hue. torchvision shuffles the
  four operations on every call.
- Clamping: the result is clamped to [0, 1] after brightness and once at the end.
  torchvision also clamps after contrast and after saturation, so values pushed
  past 0 or 1 by a contrast or saturation factor above 1 are cut there and
  carried on here.
- Hue: the shift turns each colour about the gray axis (1, 1, 1) by
  ``2 * pi * shift``, a 3x3 matrix per sample. This linear stand-in for the HSV
  hue shift keeps the mean of R, G and B and the distance from the gray axis,
  where the HSV shift keeps each pixel's channel maximum and minimum and moves
  only the middle channel. Both leave gray alone and turn colours the same way
  round. The per-channel values, however, differ by about as much as the
  shift changes them. Pure red shifted by 0.1 turn becomes (1.0, 0.6, 0.0) in
  HSV and about (0.87, 0.40, 0.0) here. On uniformly random pixels a 0.05-turn
  shift changes values by 0.05 on average and lands 0.04 from the HSV result.

Brightness multiplies by ``b``. Contrast blends with the mean ``m`` of the
grayscale image: ``c * x + (1 - c) * m``. Saturation blends with the grayscale
image: ``s * x + (1 - s) * gray(x)``. Grayscale is luma, 0.299 R + 0.587 G +
0.114 B. Saturation and the hue turn are linear maps that keep gray, so after
brightness the jitter is one affine map per sample,
``c * (H @ S) @ x + (1 - c) * m``, with ``S`` the saturation matrix and ``H``
the hue turn. Samples that do not get the jitter use factors 1 and shift 0,
which make the matrix exactly the identity and the offset exactly 0, so they
come back bit for bit.

Then come grayscale, Gaussian blur and solarize at threshold 0.5 without a
brightness shift, each applied to a random subset of the batch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
from kornia.color import rgb_to_grayscale

from maskkit.views.blur import blur_kernel_size, gaussian_blur
from maskkit.views.boxes import _check_range

__all__ = ["ColourSpec", "ColourParams", "sample_colour_params", "jitter_colour", "apply_colour"]


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


# Luma weights shared by grayscale, contrast and saturation (ITU-R BT.601, as in torchvision).
LUMA = (0.299, 0.587, 0.114)

# I - 1 w^T: removes the luma part of a colour. Saturation scales this part.
_CHROMA = torch.eye(3, dtype=torch.float64) - torch.tensor(LUMA, dtype=torch.float64).expand(3, 3)
# I - 1 1^T / 3 and the cross product with (1, 1, 1) / sqrt(3): the two parts of a turn about the gray axis.
# With this sign a positive shift turns red towards yellow, as a positive HSV hue shift does.
_OFF_GRAY = torch.eye(3, dtype=torch.float64) - 1.0 / 3.0
_QUARTER_TURN = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], dtype=torch.float64) / math.sqrt(3.0)


@functools.lru_cache(maxsize=None)
def _colour_constants(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Luma weights (3,), then identity, chroma part, off-gray part and quarter turn (3, 3) on ``device``.

    Cached, so the host-to-device copy (and its wait) happens once per device.
    """
    return tuple(value.to(device=device, dtype=dtype)
                 for value in (torch.tensor(LUMA, dtype=torch.float64), torch.eye(3, dtype=torch.float64),
                               _CHROMA, _OFF_GRAY, _QUARTER_TURN))


def jitter_colour(images: torch.Tensor, brightness: Optional[torch.Tensor] = None,
                  contrast: Optional[torch.Tensor] = None, saturation: Optional[torch.Tensor] = None,
                  hue: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Colour-jitter each sample with its own factors (see the module docstring for the formulas).

    Brightness runs first and is clamped to [0, 1]; contrast, saturation and the
    hue turn run as one per-sample affine colour map, clamped at the end.
    Factors 1 and shift 0 return a sample unchanged, bit for bit.

    Args:
        images: (B, 3, H, W) float RGB in [0, 1].
        brightness, contrast, saturation: (B,) non-negative factors, or None to skip the operation.
        hue: (B,) hue shifts in turns of the colour circle, or None to skip.

    Returns:
        (B, 3, H, W) images in [0, 1].
    """
    if brightness is not None:
        images = (images * brightness.to(images.dtype)[:, None, None, None]).clamp_(0.0, 1.0)
    if contrast is None and saturation is None and hue is None:
        return images

    luma, eye, chroma, off_gray, quarter_turn = _colour_constants(images.device, images.dtype)
    ones = torch.ones(images.shape[0], device=images.device, dtype=images.dtype)
    contrast = ones if contrast is None else contrast.to(images.dtype)
    saturation = ones if saturation is None else saturation.to(images.dtype)
    if hue is None:
        cos, sin = ones, torch.zeros_like(ones)
    else:
        angle = hue.to(images.dtype) * (2.0 * math.pi)
        cos, sin = torch.cos(angle), torch.sin(angle)
    # Every (B, 3, 3) matrix below is exactly the identity for factors 1 and shift 0.
    saturate = eye - (1.0 - saturation)[:, None, None] * chroma
    turn = eye + (cos - 1.0)[:, None, None] * off_gray + sin[:, None, None] * quarter_turn
    # The product turn @ saturate, written out elementwise so that no TF32 matmul rounds it on a GPU.
    matrix = contrast[:, None, None] * (turn[:, :, :, None] * saturate[:, None, :, :]).sum(dim=2)

    # Column j of each matrix scales input channel j into all three output channels.
    columns = matrix.transpose(1, 2)[..., None, None]                           # (B, 3 in, 3 out, 1, 1)
    mean = (images.mean(dim=(2, 3)) * luma).sum(dim=1)                           # (B,) grayscale mean
    offset = ((1.0 - contrast) * mean)[:, None, None, None]
    out = torch.addcmul(offset, columns[:, 0], images[:, 0:1])
    out.addcmul_(columns[:, 1], images[:, 1:2]).addcmul_(columns[:, 2], images[:, 2:3])
    return out.clamp_(0.0, 1.0)


def _select(mask: torch.Tensor, changed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], changed, original)


def apply_colour(images: torch.Tensor, spec: ColourSpec, params: ColourParams) -> torch.Tensor:
    """Apply colour augmentation with the given per-sample parameters.

    Operations whose probability (or strength) in ``spec`` is zero are skipped
    entirely. On a GPU the others run on the whole batch and nothing reads the
    per-sample masks on the host, so nothing waits for the device:

    - jitter: samples left out get factors 1 and hue shift 0;
    - grayscale and blur: ``torch.where`` keeps the result for the selected samples;
    - solarize: samples left out get a threshold that no value reaches.

    On the CPU, where reading a mask costs no wait, only the selected samples
    are blurred. Every sample left out of an operation is returned bit for bit.

    Args:
        images: (B, 3, H, W) float RGB in [0, 1].
        spec: which operations can apply, and their strengths.
        params: per-sample parameters from :func:`sample_colour_params`.

    Returns:
        (B, 3, H, W) images in [0, 1].
    """
    if spec.jitters:
        selected = params.jitter

        def factor(strength: float, values: torch.Tensor, identity: float) -> Optional[torch.Tensor]:
            return torch.where(selected, values, identity) if strength > 0 else None

        images = jitter_colour(images, brightness=factor(spec.brightness, params.brightness, 1.0),
                               contrast=factor(spec.contrast, params.contrast, 1.0),
                               saturation=factor(spec.saturation, params.saturation, 1.0),
                               hue=factor(spec.hue, params.hue, 0.0))

    if spec.grayscale_p > 0:
        gray = rgb_to_grayscale(images).expand_as(images)
        images = _select(params.grayscale, gray, images)

    if spec.blur_p > 0:
        height, width = images.shape[-2:]
        kernel = (blur_kernel_size(height), blur_kernel_size(width))
        sigma = params.sigma[:, None].expand(-1, 2)
        if images.device.type == "cpu":
            # On the CPU reading the mask waits for nothing, so only the selected samples are blurred.
            # Indexing with a tensor is used because index_select along dim 0 of a 4-D tensor was ten times
            # slower on the CPU with torch 2.14.
            index = params.blur.nonzero().squeeze(1)
            if index.numel() > 0:
                blurred = gaussian_blur(images[index], sigma[index], kernel)
                images = images.index_copy(0, index, blurred)
        else:
            images = _select(params.blur, gaussian_blur(images, sigma, kernel), images)

    if spec.solarize_p > 0:
        # Values at or above the threshold are inverted, with no brightness shift. Samples left out get a
        # threshold of 2, which no value in [0, 1] reaches. (kornia.enhance.solarize is not used: it turns a
        # float threshold into a device tensor with a blocking copy.)
        threshold = torch.where(params.solarize, 0.5, 2.0).to(images.dtype)[:, None, None, None]
        images = torch.where(images >= threshold, 1.0 - images, images)
    return images
