"""Block gather and scatter between `[B, S, H, D]` tokens and a `[B, H, L, D]` buffer of whole blocks.

Used only when the full path runs through a dense SDPA call (cuDNN), which needs its queries and
its KV set contiguous per head (gather), and whose key gradients go back to their tokens (scatter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def gather_blocks_kernel(
    X, OUT, BLOCKS, BLOCK_START, BLOCK_LEN,
    sx_b, sx_s, sx_h,
    so_b, so_h, so_s,
    sb_b, sb_h,
    H, out_offset,
    BLOCK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    ZERO_PAD: tl.constexpr,
    SCATTER: tl.constexpr,
):
    slot = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    blk = tl.load(BLOCKS + b * sb_b + h * sb_h + slot)
    start = tl.load(BLOCK_START + blk).to(tl.int64)
    length = tl.load(BLOCK_LEN + blk)
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    dst = out_offset + slot.to(tl.int64) * BLOCK + offs
    if SCATTER:
        # Buffer rows back to their tokens; a partial block's padding rows are dropped.
        ok = (offs < length)[:, None]
        x = tl.load(OUT + b * so_b + h * so_h + dst[:, None] * so_s + offs_d[None, :], mask=ok, other=0.0)
        tl.store(X + b * sx_b + h * sx_h + (start + offs)[:, None] * sx_s + offs_d[None, :], x, mask=ok)
    else:
        # Padding rows of a partial block are zeros (ZERO_PAD) or repeat its last token; either way
        # they are computed and never read back.
        rows = start + tl.minimum(offs, length - 1)
        if ZERO_PAD:
            x = tl.load(X + b * sx_b + h * sx_h + rows[:, None] * sx_s + offs_d[None, :], mask=(offs < length)[:, None], other=0.0)
        else:
            x = tl.load(X + b * sx_b + h * sx_h + rows[:, None] * sx_s + offs_d[None, :])
        tl.store(OUT + b * so_b + h * so_h + dst[:, None] * so_s + offs_d[None, :], x)


def _launch(tokens, buffer, blocks, block_start, block_len, block_size: int, offset: int, zero_pad: bool, scatter: bool):
    """One program per (block, batch x head), copying between `tokens` `[B, S, H, D]` and `buffer` `[B, H, L, D]`."""
    B, _, H, D = tokens.shape
    n = blocks.shape[-1]
    if n == 0:
        return
    gather_blocks_kernel[(n, B * H)](
        tokens, buffer, blocks, block_start, block_len,
        *tokens.stride()[:3], *buffer.stride()[:3], *blocks.stride()[:2],
        H, offset,
        BLOCK=block_size, HEAD_DIM=D, ZERO_PAD=zero_pad, SCATTER=scatter, num_warps=4,
    )


def token_major(B: int, L: int, H: int, D: int, dtype, device) -> torch.Tensor:
    """A `[B, H, L, D]` view of a new `[B, L, H, D]` buffer: the layout of q, k and v themselves.
    cuDNN attention measured about 2% faster with all its operands in one layout than with the
    queries head-major and the keys token-major (H100, 1.3B shape)."""
    return torch.empty((B, L, H, D), dtype=dtype, device=device).transpose(1, 2)


def gather_blocks(x: torch.Tensor, blocks: torch.Tensor, block_start, block_len, block_size: int, out=None, out_offset: int = 0, zero_pad: bool = True):
    """Tokens of `blocks` `[B, H, n]` from `x` `[B, S, H, D]` into `out` `[B, H, >= out_offset + n * bs, D]`
    (by default a `token_major` buffer)."""
    B, _, H, D = x.shape
    if out is None:
        out = token_major(B, blocks.shape[-1] * block_size, H, D, x.dtype, x.device)
    _launch(x, out, blocks, block_start, block_len, block_size, out_offset, zero_pad, scatter=False)
    return out


def scatter_blocks(src: torch.Tensor, blocks: torch.Tensor, block_start, block_len, block_size: int, out: torch.Tensor, src_offset: int = 0):
    """Inverse of `gather_blocks`: rows `src_offset + slot * bs + i` of `src` `[B, H, L, D]` into the
    tokens of `blocks` `[B, H, n]` in `out` `[B, S, H, D]` (padding rows of partial blocks dropped)."""
    _launch(out, src, blocks, block_start, block_len, block_size, src_offset, zero_pad=True, scatter=True)
    return out
