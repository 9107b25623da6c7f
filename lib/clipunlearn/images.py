"""Batched image operations with per-image parameters: circular shifts, Gaussian blur, the valid pixel range.

Helpers of the synthetic-image generation (paper B) and the Lipschitz loss; they import nothing of the package.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def roll_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Return ``images [B, C, H, W]`` rolled circularly by per-image ``shifts [B, 2]`` = (dy, dx).

    Same as ``torch.roll(images[i], (dy_i, dx_i), dims=(1, 2))`` for every image, in one gather.
    """
    b, c, h, w = images.shape
    shifts = shifts.to(images.device)
    rows = (torch.arange(h, device=images.device).view(1, h) - shifts[:, :1]) % h  # [B, H]
    cols = (torch.arange(w, device=images.device).view(1, w) - shifts[:, 1:]) % w  # [B, W]
    out = images.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w))
    return out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def _gaussian_kernel(sigma: float, truncate: float, *, dtype, device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_blur(images: torch.Tensor, *, sigma: float = 0.5, truncate: float = 4.0) -> torch.Tensor:
    """Return ``images [B, C, H, W]`` blurred by a separable Gaussian of ``sigma`` pixels.

    Matches ``scipy.ndimage.gaussian_filter1d`` along H then W (mode "reflect", i.e.
    edge-symmetric padding, radius ``int(truncate * sigma + 0.5)``), as the original code.
    """
    k = _gaussian_kernel(sigma, truncate, dtype=images.dtype, device=images.device)
    r = (len(k) - 1) // 2
    if r == 0:
        return images.clone()
    b, c, h, w = images.shape
    x = images.reshape(b * c, 1, h, w)
    x = torch.cat([x[:, :, :r].flip(2), x, x[:, :, -r:].flip(2)], dim=2)
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    x = torch.cat([x[..., :r].flip(3), x, x[..., -r:].flip(3)], dim=3)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return x.reshape(b, c, h, w)


def pixel_bounds(mean: Sequence[float], std: Sequence[float], *, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Return the valid model-space range ``((0 - mean) / std, (1 - mean) / std)`` as ``[1, 3, 1, 1]`` tensors.

    The project's one pixel-range helper (``losses.lipschitz_bounds`` applies it to a model's normalisation).
    """
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s


def clamp_to_range(images: torch.Tensor, *, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Return ``images`` clamped per channel to the valid pixel range in model space."""
    lo, hi = pixel_bounds(mean, std, device=images.device)
    return torch.maximum(torch.minimum(images, hi.to(images.dtype)), lo.to(images.dtype))


def image_generator(seed: int, index: int) -> torch.Generator:
    """Return the CPU generator of image ``index`` for ``seed`` (independent streams via numpy SeedSequence)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def minmax_rescale(images: torch.Tensor) -> torch.Tensor:
    """Return every image of ``[B, C, H, W]`` rescaled to [0, 1] by its own minimum and maximum (all channels)."""
    flat = images.flatten(1)
    low, high = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
    return (images - low) / (high - low).clamp_min(1e-12)
