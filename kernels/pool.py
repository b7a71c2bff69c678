"""Block pooling of q, k and v in one pass: per-block sums `[B, H, nb, D]` in fp32.

The plan's first step reads every token once; doing q, k and v in one launch instead of a dozen
reductions keeps it at one pass over the inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def pool_blocks_kernel(
    X0, X1, X2, OUT0, OUT1, OUT2, BLOCK_START, BLOCK_LEN,
    sx_b, sx_s, sx_h,
    so_b, so_h, so_n,
    H, NUM_INPUTS: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    start = tl.load(BLOCK_START + blk).to(tl.int64)
    length = tl.load(BLOCK_LEN + blk)
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs < length
    src = b * sx_b + h * sx_h + (start + offs)[:, None] * sx_s + offs_d[None, :]
    dst = b * so_b + h * so_h + blk.to(tl.int64) * so_n + offs_d
    tl.store(OUT0 + dst, tl.sum(tl.load(X0 + src, mask=ok[:, None], other=0.0).to(tl.float32), 0))
    if NUM_INPUTS > 1:
        tl.store(OUT1 + dst, tl.sum(tl.load(X1 + src, mask=ok[:, None], other=0.0).to(tl.float32), 0))
    if NUM_INPUTS > 2:
        tl.store(OUT2 + dst, tl.sum(tl.load(X2 + src, mask=ok[:, None], other=0.0).to(tl.float32), 0))


def pool_blocks_many(xs, geom):
    """Per-block fp32 sums of each `[B, S, H, D]` tensor in `xs` (1 to 3 of the same shape and strides)."""
    x0 = xs[0]
    B, _, H, D = x0.shape
    nb = geom.num_blocks
    outs = [torch.empty((B, H, nb, D), dtype=torch.float32, device=x0.device) for _ in xs]
    if nb == 0 or B * H == 0:
        return outs
    if any(x.stride() != x0.stride() for x in xs) or x0.stride(-1) != 1:
        raise ValueError("pool_blocks_many needs inputs of equal strides with unit stride over head_dim")
    padded = list(xs) + [x0] * (3 - len(xs))
    opadded = outs + [outs[0]] * (3 - len(outs))
    pool_blocks_kernel[(nb, B * H)](
        *padded, *opadded, geom.block_start, geom.block_len,
        *x0.stride()[:3], *outs[0].stride()[:3],
        H, NUM_INPUTS=len(xs), BLOCK=triton.next_power_of_2(geom.block_size), HEAD_DIM=D, num_warps=4,
    )
    return outs
