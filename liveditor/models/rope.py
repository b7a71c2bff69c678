"""3D rotary position embedding of Wan, with in-context positions (the source restarts at 0).

The head dim `d` is split into `(d - 4*(d//6), 2*(d//6), 2*(d//6))` channels for the (frame, row,
column) axes; each axis rotates adjacent channel pairs `(2i, 2i+1)` by `position * theta^(-2i/d_axis)`
(Wan's `rope_params` / `rope_apply`). Angles are computed in float64 and applied in float32.
"""

from __future__ import annotations

from typing import Sequence

import torch


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of `head_dim` given to the (frame, row, column) axes."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _axis_angles(positions: torch.Tensor, axis_dim: int, theta: float) -> torch.Tensor:
    """`[N]` positions -> `[N, axis_dim // 2]` rotation angles (float64)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float64, device=positions.device) / axis_dim)
    return positions.to(torch.float64)[:, None] * inv_freq[None, :]


def grid_angles(grid: Sequence[int], head_dim: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """Rotation angles of the tokens of one latent grid `(f, h, w)` in raster order (frame-major).

    Returns `[f * h * w, head_dim // 2]` float64; positions start at 0 on every axis.
    """
    f, h, w = (int(n) for n in grid)
    dt, dh, dw = rope_axis_dims(head_dim)
    parts = []
    for n, axis_dim, shape in ((f, dt, (f, 1, 1)), (h, dh, (1, h, 1)), (w, dw, (1, 1, w))):
        ang = _axis_angles(torch.arange(n, device=device), axis_dim, theta)
        parts.append(ang.view(*shape, -1).expand(f, h, w, -1))
    return torch.cat(parts, dim=-1).reshape(f * h * w, head_dim // 2)


def in_context_rope(grids: Sequence[Sequence[int]], head_dim: int, theta: float = 10000.0, device=None):
    """`(cos, sin)` `[S, head_dim // 2]` float32 for segments laid out one after another.

    Each segment (target grid, then source grid) gets positions from 0: the source is aligned with
    the target frame by frame, row by row, rather than placed after it in time.
    """
    angles = torch.cat([grid_angles(g, head_dim, theta, device) for g in grids], dim=0)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` `[B, S, H, D]` by `cos, sin` `[S, D // 2]`; returns x's dtype."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
