"""Triton forward kernel of ISA attention and its launch glue.

One program owns one query block of one (batch, head). It reads Q, K and V in place through block
tables (no gathered copies), runs one online softmax over

  * `n_exact` KV blocks attended token by token (masked where a segment's last block is partial;
    a block's first token and length are computed from its index, `_span`), then
  * centroid terms, one per other KV-set block: the launch walks the KV set's slots in order and
    gives the exact ones a -inf bias (`CentroidTerms`); key `k_mean[j]`, value `v_mean[j]`, logit
    bias `log n_j` (so its weight is `n_j * exp(q . k_mean[j] * scale)`),

and writes `out = acc / l (+ gate * out_c[block])` to the block's own tokens. Centroid terms take
part in the running max and in every rescaling like any other column.

The exact-block loop is software-pipelined deeper than the rest (`ForwardTuning.exact_stages`,
explained there).

The same kernel serves three roles, chosen by the tables it is given:
  * the full path (every KV-set block exact, no centroids; one table shared by all query blocks),
  * the Taylor path (a few exact blocks and the centroids of the rest, per query block),
  * the merge of a dense-SDPA partial result (`MergeRows`) with the KV blocks that the dense call
    did not cover (used when cuDNN runs the full path over gathered KV): merge programs, numbered
    after the launch's other programs, as a launch of their own or appended to the Taylor launch
    (in the serial order, where this kernel runs the Taylor path: `isa_function.launch_taylor`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST: Triton's CPU interpreter multiplies bf16 operands wrongly, so tests upcast there.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _rows(X, b, h, s_b, s_h, s_row, rows, ok, HEAD_DIM: tl.constexpr):
    """Tile `X[b, rows, h, :]` `[len(rows), HEAD_DIM]` (any strides), zeros where `ok` is false."""
    offs_d = tl.arange(0, HEAD_DIM)
    return tl.load(X + b * s_b + h * s_h + rows[:, None] * s_row + offs_d[None, :], mask=ok[:, None], other=0.0)


@triton.jit
def _span(blk, num_target, seq_len, NUM_TARGET_BLOCKS, BLOCK: tl.constexpr):
    """First token and real length of block `blk` (`BlockGeometry`'s layout, in arithmetic: target
    blocks first, then context blocks, each segment blocked on its own). Computing them instead of
    loading them from a table keeps a K/V tile's address one load away from the block index, so the
    software pipeliner can prefetch the tile."""
    in_ctx = blk >= NUM_TARGET_BLOCKS
    start = tl.where(in_ctx, num_target + (blk - NUM_TARGET_BLOCKS) * BLOCK, blk * BLOCK)
    end = tl.where(in_ctx, seq_len, num_target)
    return start, tl.minimum(end - start, BLOCK)


def span_geometry(num_target: int, seq_len: int, block_size: int) -> tuple[int, int, int]:
    """The launch arguments `_span` takes: `(num_target, seq_len, number of target blocks)`."""
    return num_target, seq_len, -(-num_target // block_size)


@triton.jit
def _online_update(s, v, m_i, l_i, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # s: [BM, BN] logits in log2 units (masked columns at -inf); v: [BN, D].
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PRECISION, UPCAST)
    return m_new, l_i, acc


@triton.jit
def isa_fwd_kernel(
    Q, K, V, O,  # [B, S, H, D], any strides with unit stride over D
    QUERY_BLOCKS,  # [B, H, NQ] int32: the query block each program owns
    EXACT_BLOCKS,  # [B, H, NQ, NE] int32 (stride over NQ may be 0: one shared table)
    KV_K_MEAN, KV_V_MEAN,  # [B, H, NC, D] (q dtype): block means of the KV set, in its slot order
    KV_BIAS,  # [B, H, NQ, NC] fp32: log2 of each KV-set block's token count, -inf where the query block attends it exactly
    #           and at the padding slots (NC is a multiple of BLOCK)
    GATE, OUT_C,  # gate [B, S, H] fp32 (broadcast strides allowed); out_c [B, H, nb, D] fp32
    INIT_O, INIT_LSE,  # [B, H, NQM * BLOCK, D], [B, H, NQM * BLOCK] (natural log); only with HAS_MERGE
    LSE,  # [B, H, S] fp32, natural-log log-sum-exp of the routed softmax; only with STORE_LSE
    MERGE_QUERY_BLOCKS, MERGE_EXACT_BLOCKS,  # [B, H, NQM], [B, H, 1, NEM] int32; only with HAS_MERGE
    sq_b, sq_s, sq_h,
    sk_b, sk_s, sk_h,
    sv_b, sv_s, sv_h,
    so_b, so_s, so_h,
    sqb_b, sqb_h,
    se_b, se_h, se_q,
    skm_b, skm_h, skm_n,
    svm_b, svm_h, svm_n,
    sx_b, sx_h, sx_q,
    sg_b, sg_s, sg_h,
    soc_b, soc_h, soc_n,
    sio_b, sio_h, sio_s,
    sil_b, sil_h,
    sl_b, sl_h,
    smq_b, smq_h,
    sme_b, sme_h,
    H, NE, NC, scale,
    NQ, NE_MERGE,  # programs from NQ on are merge programs (HAS_MERGE), each with NE_MERGE exact blocks
    num_target, seq_len, n_target_blocks,  # the block geometry (see `_span`)
    kv_num_target, kv_seq_len, kv_n_target_blocks,  # the geometry of K and V's blocks (`launch_isa_fwd`'s kv_geometry)
    BLOCK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HAS_GATE: tl.constexpr,
    HAS_CENTROIDS: tl.constexpr,  # False compiles the centroid loop out (fewer registers)
    STORE_LSE: tl.constexpr,
    HAS_MERGE: tl.constexpr,  # the launch has merge programs (INIT_O, INIT_LSE, MERGE_*)
    EXACT_STAGES: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    b64 = b.to(tl.int64)

    if HAS_MERGE:
        is_merge = pid_q >= NQ
        pid_m = pid_q - NQ  # the merge program's slot in INIT_O (negative for the other programs)
        qb = tl.load(tl.where(is_merge, MERGE_QUERY_BLOCKS + b64 * smq_b + h * smq_h + pid_m,
                              QUERY_BLOCKS + b64 * sqb_b + h * sqb_h + pid_q))
    else:
        qb = tl.load(QUERY_BLOCKS + b64 * sqb_b + h * sqb_h + pid_q)
    q_start, q_len = _span(qb, num_target, seq_len, n_target_blocks, BLOCK)
    q_start = q_start.to(tl.int64)

    offs_m = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    q = _rows(Q, b64, h, sq_b, sq_h, sq_s, q_start + offs_m, row_ok, HEAD_DIM)
    qk_scale = scale * 1.4426950408889634  # exp2 units

    if HAS_MERGE:
        # Masked by program role: any other program reads nothing here and starts from zero.
        rows = pid_m.to(tl.int64) * BLOCK + offs_m
        init_ok = row_ok & is_merge
        init_lse = tl.load(INIT_LSE + b64 * sil_b + h * sil_h + rows, mask=init_ok, other=0.0).to(tl.float32)
        m_i = tl.where(is_merge, init_lse * 1.4426950408889634, -1.0e30)
        l_i = tl.where(is_merge, tl.full([BLOCK], 1.0, dtype=tl.float32), 0.0)
        acc = _rows(INIT_O, b64, h, sio_b, sio_h, sio_s, rows, init_ok, HEAD_DIM).to(tl.float32)
    else:
        m_i = tl.full([BLOCK], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK], dtype=tl.float32)
        acc = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)

    # Exact KV blocks, token by token.
    if HAS_MERGE:
        exact_row = tl.where(is_merge, MERGE_EXACT_BLOCKS + b64 * sme_b + h * sme_h,
                             EXACT_BLOCKS + b64 * se_b + h * se_h + pid_q.to(tl.int64) * se_q)
        n_exact = tl.where(is_merge, NE_MERGE, NE)
        n_cent = tl.where(is_merge, 0, NC)
    else:
        exact_row = EXACT_BLOCKS + b64 * se_b + h * se_h + pid_q.to(tl.int64) * se_q
        n_exact = NE
        n_cent = NC
    offs_n = tl.arange(0, BLOCK)
    for j in tl.range(0, n_exact, num_stages=EXACT_STAGES):
        kb = tl.load(exact_row + j)
        start, length = _span(kb, kv_num_target, kv_seq_len, kv_n_target_blocks, BLOCK)
        col_ok = offs_n < length
        tok = start.to(tl.int64) + offs_n
        k = _rows(K, b64, h, sk_b, sk_h, sk_s, tok, col_ok, HEAD_DIM)
        v = _rows(V, b64, h, sv_b, sv_h, sv_s, tok, col_ok, HEAD_DIM)
        # Padding columns of a partial block get a -inf bias (one fused multiply-add per logit).
        bias = tl.where(col_ok, 0.0, float("-inf"))
        s = _dot(q, tl.trans(k), DOT_PRECISION, UPCAST) * qk_scale + bias[None, :]
        m_i, l_i, acc = _online_update(s, v, m_i, l_i, acc, DOT_PRECISION, UPCAST)

    # Centroid terms: every KV-set slot not attended exactly, BLOCK slots at a time. Walking the
    # slots in order (the exact ones get a -inf bias) reads contiguous tiles of the KV set's block
    # means instead of gathering them through a per-query-block index list, which measured 1.7x
    # faster on an H100. A centroid column's weight is n_j * exp(logit): a log2(n_j) bias in exp2
    # units. The bias is one fp32 table, so its load is prefetched with the tiles.
    if HAS_CENTROIDS:
        # NC is a multiple of BLOCK (padding slots carry a -inf bias), so no load needs a mask:
        # masked tile loads cost a compare, a predicate move and a select per element.
        bias_row = KV_BIAS + b64 * sx_b + h * sx_h + pid_q.to(tl.int64) * sx_q
        km_base = KV_K_MEAN + b64 * skm_b + h * skm_h
        vm_base = KV_V_MEAN + b64 * svm_b + h * svm_h
        offs_c = tl.arange(0, BLOCK)
        for c0 in range(0, n_cent, BLOCK):
            slot = c0 + offs_c
            kc = tl.load(km_base + slot[:, None] * skm_n + offs_d[None, :])
            vc = tl.load(vm_base + slot[:, None] * svm_n + offs_d[None, :])
            bias = tl.load(bias_row + slot)
            s = _dot(q, tl.trans(kc), DOT_PRECISION, UPCAST) * qk_scale + bias[None, :]
            m_i, l_i, acc = _online_update(s, vc, m_i, l_i, acc, DOT_PRECISION, UPCAST)

    out = acc / l_i[:, None]
    if HAS_GATE:
        g = tl.load(GATE + b64 * sg_b + h * sg_h + (q_start + offs_m) * sg_s, mask=row_ok, other=0.0)
        oc = tl.load(OUT_C + b64 * soc_b + h * soc_h + qb.to(tl.int64) * soc_n + offs_d)
        out += g[:, None] * oc[None, :]
    o_ptrs = O + b64 * so_b + h * so_h + (q_start + offs_m)[:, None] * so_s + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None])
    if STORE_LSE:
        lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
        tl.store(LSE + b64 * sl_b + h * sl_h + q_start + offs_m, lse, mask=row_ok)


@dataclass(frozen=True)
class ForwardTuning:
    """Launch parameters of `isa_fwd_kernel` (`launch_isa_fwd(..., tuning=...)`; the benchmark's
    `--sweep` times a few, `kernels/bench.py` `SWEEP`).

    `exact_stages` is the software-pipelining depth of the exact-block loop alone. That loop's tile
    addresses hang on a block index loaded in the loop, so at the kernel-wide depth of 3 Triton (3.6)
    issues each K/V tile one step ahead and waits for every copy in flight at the top of each step;
    at 5 the tiles are issued two steps ahead. That takes three tile buffers, as many as the centroid
    loop already holds: shared memory grows by 512 bytes to 115,712 per program (bf16, D=128, Triton
    3.6), and two programs still fit per H100 SM, with no byte to spare; `scripts/isa_ir.py --check`
    (a CPU test runs it) fails if that is lost. Depth 5 measured 1.09x faster than 3 on the Taylor
    launch at the Wan2.2-14B shape and even at 1.3B (docs/benchmarks.md, fifth session).
    """

    num_warps: int = 4
    num_stages: int = 3
    exact_stages: int = 5

    def __post_init__(self) -> None:
        for name in ("num_warps", "num_stages", "exact_stages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ForwardTuning.{name} must be a positive int, got {value!r}")

    @property
    def label(self) -> str:
        """`num_warps,num_stages,exact_stages`, as the benchmark's rows name a tuning."""
        return f"{self.num_warps},{self.num_stages},{self.exact_stages}"


DEFAULT_TUNING = ForwardTuning()


def interpreter_needs_upcast(dtype: torch.dtype) -> bool:
    """True under TRITON_INTERPRET=1 for bf16, whose dot the interpreter gets wrong."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and dtype == torch.bfloat16


def _strides(t: torch.Tensor | None, n: int):
    return tuple(t.stride()[:n]) if t is not None else (0,) * n


class CentroidTerms(NamedTuple):
    """What the Taylor path's centroid terms read: the KV set's block means in slot order and, for
    every query block of the launch, each slot's logit bias."""

    k_mean: torch.Tensor  # [B, H, nc, D], q's dtype; nc: the KV set's size rounded up to a multiple of the block size
    v_mean: torch.Tensor  # [B, H, nc, D], q's dtype
    bias: torch.Tensor  # [B, H, NQ, nc] fp32: log2 of the block's token count, -inf where attended exactly and at padding slots

    @staticmethod
    def absent(q: torch.Tensor) -> "CentroidTerms":
        """Typed placeholders for a launch without centroid terms (no slots)."""
        return CentroidTerms(q, q, q.new_empty((1, 1, 1, 0), dtype=torch.float32))


class MergeRows(NamedTuple):
    """Merge programs of a launch (`launch_isa_fwd(..., merge=...)`): the query blocks a dense call
    covered, the KV blocks it left out (one table shared by all), and its partial result."""

    query_blocks: torch.Tensor  # [B, H, NQM] int32
    exact_blocks: torch.Tensor  # [B, H, 1, NEM] int32
    init_out: torch.Tensor  # [B, H, NQM * BLOCK, D]
    init_lse: torch.Tensor  # [B, H, NQM * BLOCK] fp32, natural log


def launch_isa_fwd(
    q, k, v, out,
    query_blocks, exact_blocks,
    num_target: int,
    scale: float,
    block_size: int,
    centroids: CentroidTerms | None = None,
    gate=None, out_c=None,
    lse=None,
    merge: MergeRows | None = None,
    tuning: ForwardTuning = DEFAULT_TUNING,
    kv_geometry: tuple[int, int, int] | None = None,
):
    """Launch `isa_fwd_kernel` over `query_blocks` `[B, H, NQ]`, then, when `merge` is given, over its
    query blocks as merge programs of the same launch (`NQ` may be 0: a merge-only launch).

    `exact_blocks` `[B, H, NQ or 1, NE]` gives each program the KV blocks it attends token by token
    (a size-1 third dimension is shared by all query blocks); `centroids`, when given, adds a
    centroid term for every other KV-set slot. Blocks follow
    `BlockGeometry(num_target, S - num_target, block_size)`. `gate` is `[B, S, H]` fp32 (broadcast
    strides allowed), `out_c` `[B, H, nb, D]` fp32. `tuning`: the launch parameters (`ForwardTuning`).
    `kv_geometry`, `(num_target, seq_len, number of target blocks)` as `span_geometry` gives them, is
    where k's and v's blocks lie when k and v are not laid out as q (the release's KV sequence,
    `kernels/release.py`); by default q's geometry.
    """
    B, S, H, D = q.shape
    NQ = query_blocks.shape[-1]
    NQM = merge.query_blocks.shape[-1] if merge is not None else 0
    if NQ + NQM == 0 or B * H == 0:
        return
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have unit stride over head_dim")
    NE = exact_blocks.shape[-1]
    se = exact_blocks.stride()
    se_q = 0 if exact_blocks.shape[2] == 1 else se[2]
    if centroids is None:  # the centroid loop is compiled out
        centroids = CentroidTerms.absent(q)
        NC = 0
    else:
        NC = centroids.k_mean.shape[2]
        if NC % block_size or centroids.bias.shape[-1] != NC:
            raise ValueError(f"centroid tables must have a multiple of block_size={block_size} slots "
                             f"(k_mean {tuple(centroids.k_mean.shape)}, bias {tuple(centroids.bias.shape)}); pad with -inf biases")
    has_gate = gate is not None
    has_merge = NQM > 0
    store_lse = lse is not None
    dummy = centroids.bias
    # Typed placeholders when there are no merge programs.
    m_qb, m_ex, init_out, init_lse = merge if has_merge else (query_blocks, exact_blocks, None, None)
    num_warps, num_stages = tuning.num_warps, tuning.num_stages
    # A loop of at most one block (a merge-only launch) gains nothing from the deeper pipeline.
    exact_stages = tuning.exact_stages if NE > 1 else num_stages
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    grid = (NQ + NQM, B * H)
    isa_fwd_kernel[grid](
        q, k, v, out,
        query_blocks, exact_blocks,
        centroids.k_mean, centroids.v_mean, centroids.bias,
        gate if has_gate else dummy, out_c if has_gate else dummy,
        init_out if has_merge else dummy, init_lse if has_merge else dummy,
        lse if store_lse else dummy,
        m_qb, m_ex,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        *query_blocks.stride()[:2],
        se[0], se[1], se_q,
        *centroids.k_mean.stride()[:3], *centroids.v_mean.stride()[:3],
        *centroids.bias.stride()[:3],
        *_strides(gate, 3),
        *_strides(out_c, 3),
        *_strides(init_out, 3),
        *_strides(init_lse, 2),
        *_strides(lse, 2),
        *m_qb.stride()[:2],
        *m_ex.stride()[:2],
        H, NE, NC, float(scale),
        NQ, m_ex.shape[-1] if has_merge else 0,
        *span_geometry(num_target, S, block_size),
        *(kv_geometry if kv_geometry is not None else span_geometry(num_target, S, block_size)),
        BLOCK=block_size,
        HEAD_DIM=D,
        HAS_GATE=has_gate,
        HAS_CENTROIDS=NC > 0,
        STORE_LSE=store_lse,
        HAS_MERGE=has_merge,
        EXACT_STAGES=exact_stages,
        DOT_PRECISION=precision,
        UPCAST=interpreter_needs_upcast(q.dtype),
        num_warps=num_warps,
        num_stages=num_stages,
    )
