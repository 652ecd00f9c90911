"""Gaussian blur with a per-sample sigma that never reads the sigma values on the host."""

from __future__ import annotations

import torch
from kornia.filters import filter2d_separable

__all__ = ["gaussian_blur", "blur_kernel_size"]


def blur_kernel_size(side: int) -> int:
    """Return an odd Gaussian kernel size of about 10% of ``side`` pixels, at least 3 (23 for 224)."""
    return max(3, int(0.1 * side) // 2 * 2 + 1)


def _kernel_1d(size: int, sigma: torch.Tensor) -> torch.Tensor:
    offsets = torch.arange(size, device=sigma.device, dtype=sigma.dtype) - size // 2
    weights = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: tuple[int, int],
                  border_type: str = "reflect") -> torch.Tensor:
    """Blur each sample with its own Gaussian, as two 1-D passes (kornia ``filter2d_separable``).

    kornia 0.9's ``gaussian_blur2d`` checks ``sigma > 0`` with ``bool(...)``,
    which waits for the device when ``sigma`` is a device tensor. This function
    skips that check, so the caller must pass positive values. A sigma of 1e-3 or
    less gives an exact identity kernel.

    Args:
        images: (B, C, H, W) floating-point images.
        sigma: (B, 2) standard deviations ``(sigma_y, sigma_x)`` in pixels, positive.
        kernel_size: odd ``(k_h, k_w)``. Reflect padding needs ``k // 2`` below the side.
        border_type: kornia padding mode.

    Returns:
        (B, C, H, W) blurred images.
    """
    sigma = sigma.to(device=images.device, dtype=torch.float32)
    kernel_y = _kernel_1d(kernel_size[0], sigma[:, 0])
    kernel_x = _kernel_1d(kernel_size[1], sigma[:, 1])
    return filter2d_separable(images, kernel_x.to(images.dtype), kernel_y.to(images.dtype), border_type)
