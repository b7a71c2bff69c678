"""The Taylor launch's centroid tables in one launch (`centroid_terms`), and their PyTorch reference.

For the Taylor query blocks of a plan, the forward and backward kernels read (`CentroidTerms`):
  * the KV set's block means of k and v in slot order, `[B, H, nc, D]` in the attention dtype, and
  * a logit bias per query block and slot, `[B, H, NT, nc]` fp32: log2 of the block's token count,
    -inf where that query block attends the block exactly and at the padding slots.
`nc` is the KV set's size rounded up to a multiple of the block size; padding slots repeat block 0
with a -inf bias, so the kernels' centroid loops need no bounds masks.

In PyTorch this is about a dozen small launches (pad, index, expand, fill, a slot map, scatters,
gathers, casts); at the Wan2.1-1.3B shape they sit between the dense call and the Taylor launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from liveditor.isa.plan import exact_kv_slots
from liveditor.kernels.isa_fwd import CentroidTerms


@triton.jit
def _bias_row(LOG2_LEN, kv_row, ex_row, bias_row, n_target_blocks, n_kv, n_exact, nc,
              NCP: tl.constexpr, NEP: tl.constexpr, KP: tl.constexpr):
    """One query block's biases: log2 of each slot's token count, -inf at its exact blocks and at
    the padding slots. The whole row is stored, then -inf over it at the exact blocks' slots: a
    target block's slot is its index, a kept context block's the number of target blocks plus
    its rank among the kept ones (`kv_blocks` is every target block, then the kept context
    blocks in ascending order)."""
    slots = tl.arange(0, NCP)
    in_kv = slots < n_kv
    blk = tl.load(kv_row + slots, mask=in_kv, other=0)
    bias = tl.where(in_kv, tl.load(LOG2_LEN + blk, mask=in_kv, other=0.0), float("-inf"))
    tl.store(bias_row + slots, bias, mask=slots < nc)
    offs_e = tl.arange(0, NEP)
    ex = tl.load(ex_row + offs_e, mask=offs_e < n_exact, other=0)
    offs_k = tl.arange(0, KP)
    kept = tl.load(kv_row + n_target_blocks + offs_k, mask=offs_k < n_kv - n_target_blocks, other=2147483647)
    rank = tl.sum((kept[None, :] < ex[:, None]).to(tl.int32), axis=1)
    ex_slot = tl.where(ex < n_target_blocks, ex, n_target_blocks + rank)
    tl.debug_barrier()  # the row's stores land before the -inf ones over them
    tl.store(bias_row + ex_slot, tl.full((NEP,), float("-inf"), tl.float32), mask=offs_e < n_exact)


@triton.jit
def _mean_rows(K_MEAN, V_MEAN, K_OUT, V_OUT, kv_row, src_bh, dst_bh, sm_n, so_n, chunk, n_kv, nc,
               CHUNK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Slots `[chunk * CHUNK, (chunk + 1) * CHUNK)` of both means tables (padding slots: block 0)."""
    slots = chunk * CHUNK + tl.arange(0, CHUNK)
    blk = tl.load(kv_row + slots, mask=slots < n_kv, other=0).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    src = src_bh + blk[:, None] * sm_n + offs_d[None, :]
    dst = dst_bh + slots.to(tl.int64)[:, None] * so_n + offs_d[None, :]
    ok = (slots < nc)[:, None]
    tl.store(K_OUT + dst, tl.load(K_MEAN + src).to(K_OUT.dtype.element_ty), mask=ok)
    tl.store(V_OUT + dst, tl.load(V_MEAN + src).to(V_OUT.dtype.element_ty), mask=ok)


@triton.jit
def centroid_terms_kernel(
    K_MEAN, V_MEAN, LOG2_LEN, KV_BLOCKS, EXACT, K_OUT, V_OUT, BIAS,
    sm_b, sm_h, sm_n,
    skv_b, skv_h,
    se_b, se_h, se_t,
    so_b, so_h, so_n,
    sbias_b, sbias_h, sbias_t,
    H, NT, n_target_blocks, n_kv, n_exact, nc,
    NCP: tl.constexpr, NEP: tl.constexpr, KP: tl.constexpr, CHUNK: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    """Programs `t < NT` write query block t's bias row; the others copy one chunk of `CHUNK` slots
    of both means."""
    t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    kv_row = KV_BLOCKS + b * skv_b + h * skv_h
    if t < NT:
        t64 = t.to(tl.int64)
        _bias_row(LOG2_LEN, kv_row, EXACT + b * se_b + h * se_h + t64 * se_t,
                  BIAS + b * sbias_b + h * sbias_h + t64 * sbias_t, n_target_blocks, n_kv, n_exact, nc, NCP, NEP, KP)
    else:
        _mean_rows(K_MEAN, V_MEAN, K_OUT, V_OUT, kv_row, b * sm_b + h * sm_h, b * so_b + h * so_h, sm_n, so_n,
                   t - NT, n_kv, nc, CHUNK, HEAD_DIM)


def _check(k_mean, v_mean, block_len, kv_blocks, taylor_exact):
    if k_mean.shape != v_mean.shape or k_mean.dim() != 4:
        raise ValueError(f"k_mean and v_mean must be equal [B, H, nb, D] tensors, got {tuple(k_mean.shape)} and "
                         f"{tuple(v_mean.shape)}")
    B, H, nb, D = k_mean.shape
    if kv_blocks.dim() != 3 or tuple(kv_blocks.shape[:2]) != (B, H):
        raise ValueError(f"kv_blocks must be [{B}, {H}, n_kv], got {tuple(kv_blocks.shape)}")
    if taylor_exact.dim() != 4 or tuple(taylor_exact.shape[:2]) != (B, H):
        raise ValueError(f"taylor_exact must be [{B}, {H}, NT, n_exact], got {tuple(taylor_exact.shape)}")
    if block_len.shape != (nb,):
        raise ValueError(f"block_len must be [{nb}] (one entry per block of the means), got {tuple(block_len.shape)}")


def centroid_terms_reference(k_mean, v_mean, block_len, kv_blocks, taylor_exact, block_size: int,
                             dtype: torch.dtype | None = None) -> CentroidTerms:
    """`centroid_terms` in plain PyTorch (any device): the specification the kernel is tested against."""
    _check(k_mean, v_mean, block_len, kv_blocks, taylor_exact)
    B, H, n_kv = kv_blocks.shape
    NT = taylor_exact.shape[2]
    D = k_mean.shape[-1]
    dtype = dtype or k_mean.dtype
    n_pad = -n_kv % block_size
    slots = torch.nn.functional.pad(kv_blocks.long(), (0, n_pad))
    rows = slots.unsqueeze(-1).expand(B, H, n_kv + n_pad, D)
    bias = block_len.to(torch.float32).log2()[slots].unsqueeze(2).expand(B, H, NT, n_kv + n_pad).contiguous()
    bias[..., n_kv:] = float("-inf")
    bias.scatter_(3, exact_kv_slots(kv_blocks, taylor_exact, block_len.shape[0]), float("-inf"))
    return CentroidTerms(k_mean.gather(2, rows).to(dtype), v_mean.gather(2, rows).to(dtype), bias)


def centroid_terms(k_mean, v_mean, block_len, kv_blocks, taylor_exact, block_size: int, num_target_blocks: int,
                   dtype: torch.dtype | None = None) -> CentroidTerms:
    """The centroid tables (module docstring) for the Taylor query blocks whose exact KV blocks are
    `taylor_exact` `[B, H, NT, n_exact]`, over the KV set `kv_blocks` `[B, H, n_kv]`, from the block
    means `[B, H, nb, D]` (any float dtype; the tables take `dtype`, by default theirs) and the
    blocks' token counts `block_len` `[nb]`. One Triton launch; `centroid_terms_reference` is its
    PyTorch statement.

    `kv_blocks` must have the plan's layout (`ISAPlan.kv_blocks`): the `num_target_blocks` target
    blocks in order, then the kept context blocks ascending; the kernel finds slots by it."""
    _check(k_mean, v_mean, block_len, kv_blocks, taylor_exact)
    if not 0 <= num_target_blocks <= kv_blocks.shape[-1]:
        raise ValueError(f"num_target_blocks must be in [0, n_kv={kv_blocks.shape[-1]}], got {num_target_blocks}")
    B, H, nb, D = k_mean.shape
    n_kv = kv_blocks.shape[-1]
    NT, NE = taylor_exact.shape[2:]
    dtype = dtype or k_mean.dtype
    nc = n_kv + (-n_kv % block_size)
    dev = k_mean.device
    k_out = torch.empty((B, H, nc, D), dtype=dtype, device=dev)
    v_out = torch.empty_like(k_out)
    bias = torch.empty((B, H, NT, nc), dtype=torch.float32, device=dev)
    if B * H == 0 or nc == 0:
        return CentroidTerms(k_out, v_out, bias)
    if k_mean.stride() != v_mean.stride() or k_mean.stride(-1) != 1:
        k_mean, v_mean = k_mean.contiguous(), v_mean.contiguous()
    kv_blocks = kv_blocks if kv_blocks.stride(-1) == 1 else kv_blocks.contiguous()
    taylor_exact = taylor_exact if taylor_exact.stride(-1) == 1 else taylor_exact.contiguous()
    log2_len = block_len.to(torch.float32).log2()  # PyTorch's log2, so the kernel matches the reference bit for bit
    chunk = 8  # mean rows per program (one warp each)
    centroid_terms_kernel[(NT + triton.cdiv(nc, chunk), B * H)](
        k_mean, v_mean, log2_len, kv_blocks, taylor_exact, k_out, v_out, bias,
        *k_mean.stride()[:3], *kv_blocks.stride()[:2], *taylor_exact.stride()[:3], *k_out.stride()[:3],
        *bias.stride()[:3],
        H, NT, num_target_blocks, n_kv, NE, nc,
        NCP=triton.next_power_of_2(nc), NEP=max(16, triton.next_power_of_2(NE)),
        KP=max(16, triton.next_power_of_2(n_kv - num_target_blocks)), CHUNK=chunk, HEAD_DIM=D, num_warps=1,
    )
    return CentroidTerms(k_out, v_out, bias)
