"""q/k preparation of the editor DiT in one pass: Wan's RMSNorm over the full width, then 3D RoPE.

`liveditor.models.rope.apply_rope(RMSNorm(x).view(B, S, H, D), cos, sin)` in PyTorch is a dozen
passes over `[B, S, dim]` (float32 casts, square, mean, scale, weight, the pair rotation); this
kernel reads each token's row once and writes the rotated heads once, with the same rounding
steps (normalised in float32, rounded to the input dtype, times the weight, rotated in float32,
rounded again). Only the reduction order of the mean square differs from PyTorch's.

Inference only: `norm_rope` uses the kernel on CUDA when no gradient is needed and the PyTorch
path otherwise (training, CPU). Registered as a custom op so `torch.compile` calls it as is.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def rms_norm_rope_kernel(
    X, W, COS, SIN, OUT,
    S, n_pairs, sx_row, so_row, eps,
    HALF: tl.constexpr, BLOCK: tl.constexpr, HAS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # one token of one batch element: B * S rows
    s = row % S
    i = tl.arange(0, BLOCK)  # channel pair (2i, 2i + 1) of the row
    ok = i < n_pairs
    x_even = tl.load(X + row * sx_row + 2 * i, mask=ok, other=0.0)
    x_odd = tl.load(X + row * sx_row + 2 * i + 1, mask=ok, other=0.0)
    dtype = x_even.dtype
    y_even = x_even.to(tl.float32)
    y_odd = x_odd.to(tl.float32)
    if HAS_NORM:
        mean_square = (tl.sum(y_even * y_even, 0) + tl.sum(y_odd * y_odd, 0)) / (2 * n_pairs)
        r = 1.0 / tl.sqrt(mean_square + eps)
        y_even = (y_even * r).to(dtype).to(tl.float32)
        y_odd = (y_odd * r).to(dtype).to(tl.float32)
        if HAS_WEIGHT:
            y_even = (y_even * tl.load(W + 2 * i, mask=ok, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
            y_odd = (y_odd * tl.load(W + 2 * i + 1, mask=ok, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
    j = s * HALF + i % HALF  # the pair's angle: position s, pair i mod D/2 of its head
    c = tl.load(COS + j, mask=ok, other=0.0)
    sn = tl.load(SIN + j, mask=ok, other=0.0)
    tl.store(OUT + row * so_row + 2 * i, (y_even * c - y_odd * sn).to(dtype), mask=ok)
    tl.store(OUT + row * so_row + 2 * i + 1, (y_even * sn + y_odd * c).to(dtype), mask=ok)


@torch.library.custom_op("liveditor::rms_norm_rope", mutates_args=())
def rms_norm_rope(x: torch.Tensor, weight: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                  num_heads: int, eps: float, norm: bool) -> torch.Tensor:
    """`x` `[B, S, dim]` (unit last stride) -> `[B, S, H, D]`: RMSNorm over `dim` (when `norm`, times
    `weight` when given), then RoPE with `cos, sin` `[S, D // 2]` float32 on every head."""
    B, S, dim = x.shape
    D = dim // num_heads
    out = torch.empty((B, S, num_heads, D), dtype=x.dtype, device=x.device)
    if B * S == 0:
        return out
    x2 = x.reshape(B * S, dim)
    n_pairs = dim // 2
    rms_norm_rope_kernel[(B * S,)](
        x2, weight if weight is not None else x2, cos.contiguous(), sin.contiguous(), out,
        S, n_pairs, x2.stride(0), dim, float(eps),
        HALF=D // 2, BLOCK=triton.next_power_of_2(n_pairs), HAS_NORM=norm, HAS_WEIGHT=weight is not None,
        num_warps=4 if n_pairs <= 1024 else 8,
    )
    return out


@rms_norm_rope.register_fake
def _(x, weight, cos, sin, num_heads, eps, norm):
    B, S, dim = x.shape
    return x.new_empty((B, S, num_heads, dim // num_heads))
