"""Block pooling of q, k and v in one pass: per-block sums or means `[B, H, nb, D]` in fp32.

The plan's first step reads every token once; doing q, k and v in one launch instead of a dozen
reductions keeps it at one pass over the inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def pool_blocks_kernel(
    X0, X1, X2, OUT0, OUT1, OUT2, COPY1, COPY2, BLOCK_START, BLOCK_LEN,
    sx_b, sx_s, sx_h,
    so_b, so_h, so_n,
    sc_b, sc_s, sc_h,
    H, num_copy_blocks,
    NUM_INPUTS: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, COPY: tl.constexpr, MEAN: tl.constexpr,
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
    # Means divide the fp32 sums by the token count, as `sum / count` would afterwards (same rounding).
    div = length.to(tl.float32) if MEAN else 1.0
    src = b * sx_b + h * sx_h + (start + offs)[:, None] * sx_s + offs_d[None, :]
    dst = b * so_b + h * so_h + blk.to(tl.int64) * so_n + offs_d
    tl.store(OUT0 + dst, tl.sum(tl.load(X0 + src, mask=ok[:, None], other=0.0).to(tl.float32), 0) / div)
    if NUM_INPUTS > 1:
        x1 = tl.load(X1 + src, mask=ok[:, None], other=0.0)
        tl.store(OUT1 + dst, tl.sum(x1.to(tl.float32), 0) / div)
    if NUM_INPUTS > 2:
        x2 = tl.load(X2 + src, mask=ok[:, None], other=0.0)
        tl.store(OUT2 + dst, tl.sum(x2.to(tl.float32), 0) / div)
    if COPY:
        # The first `num_copy_blocks` blocks' tokens of X1 and X2, as read for their sums, copied
        # to the same token positions of COPY1 and COPY2.
        if blk < num_copy_blocks:
            cp = b * sc_b + h * sc_h + (start + offs)[:, None] * sc_s + offs_d[None, :]
            tl.store(COPY1 + cp, x1, mask=ok[:, None])
            tl.store(COPY2 + cp, x2, mask=ok[:, None])


def pool_blocks_many(xs, geom, copy_to=None, mean: bool = False):
    """Per-block fp32 sums (`mean=True`: means) of each `[B, S, H, D]` tensor in `xs` (1 to 3 of the
    same shape and strides), each `[B, H, nb, D]`.

    `copy_to`, optional, is two `[B, >= num_target, H, D]` tensors (unit stride over head_dim, equal
    strides) that receive the target tokens of `xs[1]` and `xs[2]` in the same pass: the dense
    call's KV set (`kernels/isa_function.py`) without a second read of k and v.
    """
    x0 = xs[0]
    B, _, H, D = x0.shape
    nb = geom.num_blocks
    outs = [torch.empty((B, H, nb, D), dtype=torch.float32, device=x0.device) for _ in xs]
    if nb == 0 or B * H == 0:
        return outs
    if any(x.stride() != x0.stride() for x in xs) or x0.stride(-1) != 1:
        raise ValueError("pool_blocks_many needs inputs of equal strides with unit stride over head_dim")
    if copy_to is not None:
        c1, c2 = copy_to
        if len(xs) != 3:
            raise ValueError(f"copy_to needs three inputs (q, k, v), got {len(xs)}")
        for name, c, x in (("copy_to[0]", c1, xs[1]), ("copy_to[1]", c2, xs[2])):
            if c.dtype != x.dtype or c.shape[0] != B or c.shape[1] < geom.num_target or c.shape[2:] != (H, D):
                raise ValueError(f"{name} must be [{B}, >= {geom.num_target}, {H}, {D}] {x.dtype}, got "
                                 f"{list(c.shape)} {c.dtype}")
        if c1.stride() != c2.stride() or c1.stride(-1) != 1:
            raise ValueError("copy_to needs two tensors of equal strides with unit stride over head_dim")
    padded = list(xs) + [x0] * (3 - len(xs))
    opadded = outs + [outs[0]] * (3 - len(outs))
    copies = copy_to if copy_to is not None else (outs[0], outs[0])
    pool_blocks_kernel[(nb, B * H)](
        *padded, *opadded, *copies, geom.block_start, geom.block_len,
        *x0.stride()[:3], *outs[0].stride()[:3],
        *(copy_to[0].stride()[:3] if copy_to is not None else (0, 0, 0)),
        H, geom.num_target_blocks,
        NUM_INPUTS=len(xs), BLOCK=triton.next_power_of_2(geom.block_size), HEAD_DIM=D, COPY=copy_to is not None,
        MEAN=mean, num_warps=4,
    )
    return outs


@triton.jit
def _add_scaled_row(G, DM, tok, row, ok, inv):
    g = tl.load(G + tok, mask=ok[:, None], other=0.0).to(tl.float32)
    g += (tl.load(DM + row) * inv)[None, :]
    tl.store(G + tok, g.to(G.dtype.element_ty), mask=ok[:, None])


@triton.jit
def add_block_means_grad_kernel(
    G0, G1, G2, DM0, DM1, DM2, BLOCK_START, BLOCK_LEN,
    sg_b, sg_s, sg_h,
    sd_b, sd_h, sd_n,
    H, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
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
    inv = 1.0 / length.to(tl.float32)
    tok = b * sg_b + h * sg_h + (start + offs)[:, None] * sg_s + offs_d[None, :]
    row = b * sd_b + h * sd_h + blk.to(tl.int64) * sd_n + offs_d
    _add_scaled_row(G0, DM0, tok, row, ok, inv)
    _add_scaled_row(G1, DM1, tok, row, ok, inv)
    _add_scaled_row(G2, DM2, tok, row, ok, inv)


def add_block_means_grad(grads, mean_grads, geom_start, geom_len, block_size: int):
    """In place: `grad[t] += d_mean[block(t)] / n_block` for three `[B, S, H, D]` gradients of equal
    strides, given `[B, H, nb, D]` gradients of the block means (the pooling's backward)."""
    g0 = grads[0]
    B, _, H, D = g0.shape
    nb = geom_start.shape[0]
    if nb == 0 or B * H == 0:
        return
    mean_grads = [m.to(torch.float32).contiguous() for m in mean_grads]
    add_block_means_grad_kernel[(nb, B * H)](
        *grads, *mean_grads, geom_start, geom_len,
        *g0.stride()[:3], *mean_grads[0].stride()[:3],
        H, BLOCK=triton.next_power_of_2(block_size), HEAD_DIM=D, num_warps=4,
    )
