"""Coarse (block-pooled) attention on the GPU: `P_c = softmax(q_mean k_mean^T * scale)` and
`out_c = P_c v_mean`, as two Triton kernels.

The block means are fp32 and the plan's top-k decisions are checked against fp32 scores, so the
products run as `tf32x3` (three tensor-core TF32 products that recover fp32 accuracy, about 1e-6
relative) rather than plain TF32. PyTorch's fp32 `matmul` takes a SIMT GEMM (no tensor cores) plus
separate scale and softmax passes: at the Wan2.1-1.3B shape about 0.27 ms against these kernels'
few tens of microseconds (docs/benchmarks.md).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from liveditor.isa.plan import coarse_probs as coarse_probs_reference

_BM = 64
_BN = 64


@triton.jit
def _coarse_probs_kernel(
    QM, KM, P,  # [B, H, nb, D] fp32 (any strides, unit stride over D), P [B, H, nb, nb] fp32
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sp_b, sp_h, sp_n,
    H, NB, qk_scale,  # qk_scale = scale * log2(e)
    HEAD_DIM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    rows = pid_m * BM + tl.arange(0, BM)
    cols = tl.arange(0, BN)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < NB
    qm = tl.load(QM + b * sq_b + h * sq_h + rows[:, None] * sq_n + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    k_base = KM + b * sk_b + h * sk_h
    # Pass 1: row maximum and sum of exp2, online.
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    for n0 in range(0, NB, BN):
        col_ok = (n0 + cols) < NB
        km = tl.load(k_base + (n0 + cols)[:, None] * sk_n + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        s = tl.dot(qm, tl.trans(km), input_precision=PRECISION) * qk_scale
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
        m_i = m_new
    # Pass 2: the normalised probabilities.
    inv_l = 1.0 / l_i
    p_base = P + b * sp_b + h * sp_h + rows[:, None] * sp_n
    for n0 in range(0, NB, BN):
        col_ok = (n0 + cols) < NB
        km = tl.load(k_base + (n0 + cols)[:, None] * sk_n + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        s = tl.dot(qm, tl.trans(km), input_precision=PRECISION) * qk_scale
        p = tl.exp2(s - m_i[:, None]) * inv_l[:, None]
        tl.store(p_base + (n0 + cols)[None, :], p, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _probs_matmul_kernel(
    P, V, O,  # P [B, H, M, N] fp32, V [B, H, N, D] fp32, O [B, H, M, D] fp32
    sp_b, sp_h, sp_m, sv_b, sv_h, sv_n, so_b, so_h, so_m,
    H, M, N,
    HEAD_DIM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    rows = pid_m * BM + tl.arange(0, BM)
    cols = tl.arange(0, BN)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < M
    acc = tl.zeros([BM, HEAD_DIM], dtype=tl.float32)
    for n0 in range(0, N, BN):
        col_ok = (n0 + cols) < N
        p = tl.load(P + b * sp_b + h * sp_h + rows[:, None] * sp_m + (n0 + cols)[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        v = tl.load(V + b * sv_b + h * sv_h + (n0 + cols)[:, None] * sv_n + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        acc += tl.dot(p, v, input_precision=PRECISION)
    tl.store(O + b * so_b + h * so_h + rows[:, None] * so_m + offs_d[None, :], acc, mask=row_ok[:, None])


def _precision() -> str:
    # Triton's CPU interpreter computes fp32 products exactly; "ieee" is its fp32 spelling.
    return "ieee" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "tf32x3"


def _usable(*tensors: torch.Tensor) -> bool:
    t = tensors[0]
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return (
        (t.is_cuda or interpret)
        and all(x.dtype == torch.float32 and x.stride(-1) == 1 for x in tensors)
        and t.shape[-1] in (16, 32, 64, 128, 256)
        and os.environ.get("LIVEDITOR_COARSE_TRITON", "1") != "0"
        and not torch.compiler.is_compiling()
    )


def coarse_probs(q_mean: torch.Tensor, k_mean: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """`softmax(q_mean k_mean^T * scale)` `[B, H, nb, nb]` for fp32 block means `[B, H, nb, D]`;
    the Triton kernel on CUDA (and under the interpreter), `liveditor.isa.plan.coarse_probs`
    otherwise (other dtypes, head dims that are not a power of two, `LIVEDITOR_COARSE_TRITON=0`)."""
    if not _usable(q_mean, k_mean):
        return coarse_probs_reference(q_mean, k_mean, scale)
    B, H, nb, D = q_mean.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    probs = torch.empty((B, H, nb, nb), dtype=torch.float32, device=q_mean.device)
    if nb == 0 or B * H == 0:
        return probs
    _coarse_probs_kernel[(triton.cdiv(nb, _BM), B * H)](
        q_mean, k_mean, probs, *q_mean.stride()[:3], *k_mean.stride()[:3], *probs.stride()[:3],
        H, nb, scale * 1.4426950408889634,
        HEAD_DIM=D, BM=_BM, BN=_BN, PRECISION=_precision(), num_warps=4, num_stages=2,
    )
    return probs


def probs_matmul(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`probs @ v` for fp32 `[B, H, M, N]` and `[B, H, N, D]` (the coarse output `out_c`), with the
    same dispatch as `coarse_probs`."""
    if not _usable(v, probs) or probs.stride(-1) != 1:
        return probs @ v
    B, H, M, N = probs.shape
    D = v.shape[-1]
    out = torch.empty((B, H, M, D), dtype=torch.float32, device=v.device)
    if M == 0 or B * H == 0:
        return out
    if N == 0:
        return out.zero_()
    _probs_matmul_kernel[(triton.cdiv(M, _BM), B * H)](
        probs, v, out, *probs.stride()[:3], *v.stride()[:3], *out.stride()[:3], H, M, N,
        HEAD_DIM=D, BM=_BM, BN=_BN, PRECISION=_precision(), num_warps=4, num_stages=2,
    )
    return out
